//! Per-tenant schema counters that never go backwards.
//!
//! `pg_stat_user_tables` counts per relation, and a tenant's figure is a sum
//! over its relations. A sum of the server's counters goes down whenever a
//! term leaves it (a table dropped, a tenant restored from a dump under new
//! tables) or restarts (`pg_stat_reset()`, `pg_stat_reset_single_table_counters`,
//! a crash), and Prometheus reads any decrease of a `_total` as a counter
//! reset: `rate()` then adds the whole new total as if it had happened in one
//! scrape interval. So the collector keeps each relation's last-seen
//! counters and adds only their increases to the tenant's own total:
//!
//! - a relation seen for the first time counts from zero (its counters are
//!   what happened since it was created, or since its statistics began);
//! - a relation whose counters went down was reset: what it shows now is
//!   what happened since the reset, and that is its increase (what it did
//!   between the last poll and the reset is lost, never subtracted);
//! - a relation that vanished adds nothing, and leaves the memory.
//!
//! A reset is told per relation by its counters and not by
//! `pg_stat_database.stats_reset`: that timestamp changes for a whole
//! database's reset and for one table's alike, so it cannot say which
//! relations started again from zero, and every relation's own counters
//! can.
//!
//! Memory: one [`RelationCounters`] per relation (table or index) of the
//! watched databases' tenant schemas, and no more: the memory of a database
//! is replaced at each visit by the relations the visit saw, and leaves with
//! the database. About 140 bytes per relation (a 4-byte oid, 14 counters of
//! 8 bytes, the hash table's slack): 14 MB for 10,000 tenants of 5 tables
//! with 5 indexes each.

use std::collections::{BTreeMap, HashMap};

use crate::store::SchemaTotals;

/// Counters kept per relation.
pub const COUNTERS: usize = 14;

/// One relation's cumulative counters, in the order of
/// [`SchemaTotals::counters_mut`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelationCounters(pub [u64; COUNTERS]);

impl RelationCounters {
    /// What happened since `last` (the relation's counters at the previous
    /// visit, `None` when it was not seen then).
    pub fn increase_since(&self, last: Option<&RelationCounters>) -> RelationCounters {
        let Some(last) = last else { return *self };
        let reset = self.0.iter().zip(last.0.iter()).any(|(now, was)| now < was);
        if reset {
            return *self;
        }
        let mut increase = [0u64; COUNTERS];
        for (out, (now, was)) in increase.iter_mut().zip(self.0.iter().zip(last.0.iter())) {
            *out = now - was;
        }
        RelationCounters(increase)
    }
}

/// The last-seen counters of one database's relations, by oid.
#[derive(Debug, Default)]
pub struct RelationMemory {
    last: HashMap<u32, RelationCounters>,
}

impl RelationMemory {
    /// Takes one visit's relations (`(oid, tenant, counters)`), adds each
    /// relation's increase to its tenant in `increases`, and remembers
    /// exactly these relations for the next visit.
    pub fn advance(
        &mut self,
        seen: Vec<(u32, String, RelationCounters)>,
        increases: &mut BTreeMap<String, RelationCounters>,
    ) {
        let mut next = HashMap::with_capacity(seen.len());
        for (oid, tenant, counters) in seen {
            let increase = counters.increase_since(self.last.get(&oid));
            let sum = increases.entry(tenant).or_default();
            for (total, add) in sum.0.iter_mut().zip(increase.0) {
                *total = total.saturating_add(add);
            }
            next.insert(oid, counters);
        }
        self.last = next;
    }

    /// Relations remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// Each tenant's counters on a target: the sum of its relations' increases
/// since tenantwatch first saw them, over every watched database. Kept per
/// target, not per database, so that a database leaving the watched set
/// takes nothing away either.
#[derive(Debug, Default)]
pub struct TenantCounters {
    totals: BTreeMap<String, RelationCounters>,
}

impl TenantCounters {
    /// Adds one visit's increases.
    pub fn add(&mut self, increases: BTreeMap<String, RelationCounters>, max_tenants: usize) {
        for (tenant, increase) in increases {
            let tenant = super::capped_tenant(&self.totals, tenant, max_tenants);
            let sum = self.totals.entry(tenant).or_default();
            for (total, add) in sum.0.iter_mut().zip(increase.0) {
                *total = total.saturating_add(add);
            }
        }
    }

    /// Writes each tenant's counters into its totals, and forgets the
    /// tenants that have no relation left (their series go; a tenant that
    /// comes back starts again from what its new relations show).
    pub fn publish(&mut self, totals: &mut BTreeMap<String, SchemaTotals>) {
        self.totals.retain(|tenant, _| totals.contains_key(tenant));
        for (tenant, schema) in totals.iter_mut() {
            let counters = self.totals.get(tenant).copied().unwrap_or_default();
            for (field, value) in schema.counters_mut().into_iter().zip(counters.0) {
                *field = value;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(value: u64) -> RelationCounters {
        RelationCounters([value; COUNTERS])
    }

    fn visit(
        memory: &mut RelationMemory,
        tenants: &mut TenantCounters,
        seen: &[(u32, &str, u64)],
    ) -> BTreeMap<String, u64> {
        let mut increases = BTreeMap::new();
        let present = seen
            .iter()
            .map(|(_, tenant, _)| (*tenant).to_owned())
            .collect();
        let seen = seen
            .iter()
            .map(|(oid, tenant, value)| (*oid, (*tenant).to_owned(), counters(*value)))
            .collect();
        memory.advance(seen, &mut increases);
        tenants.add(increases, 100);
        // The gauges' pass makes a totals entry for each tenant with a relation.
        let mut totals = memory_tenants(present);
        tenants.publish(&mut totals);
        totals
            .into_iter()
            .map(|(tenant, t)| (tenant, t.n_tup_ins))
            .collect()
    }

    fn seen_tenants(tenants: &TenantCounters) -> Vec<String> {
        tenants.totals.keys().cloned().collect()
    }

    fn memory_tenants(tenants: Vec<String>) -> BTreeMap<String, SchemaTotals> {
        tenants
            .into_iter()
            .map(|t| (t, SchemaTotals::default()))
            .collect()
    }

    #[test]
    fn a_dropped_table_takes_nothing_away() {
        let (mut memory, mut tenants) = (RelationMemory::default(), TenantCounters::default());
        let first = visit(&mut memory, &mut tenants, &[(1, "a", 1000), (2, "a", 10)]);
        assert_eq!(first["a"], 1010);
        // Table 1 is dropped while table 2 goes on.
        let second = visit(&mut memory, &mut tenants, &[(2, "a", 15)]);
        assert_eq!(second["a"], 1015);
        assert_eq!(memory.len(), 1, "the dropped table is forgotten");
    }

    #[test]
    fn a_reset_counts_from_zero_and_never_subtracts() {
        let (mut memory, mut tenants) = (RelationMemory::default(), TenantCounters::default());
        visit(&mut memory, &mut tenants, &[(1, "a", 1000), (2, "a", 500)]);
        // pg_stat_reset(): both start again; 3 and 4 happened since.
        let after = visit(&mut memory, &mut tenants, &[(1, "a", 3), (2, "a", 4)]);
        assert_eq!(after["a"], 1507);
        let later = visit(&mut memory, &mut tenants, &[(1, "a", 13), (2, "a", 4)]);
        assert_eq!(later["a"], 1517);
    }

    #[test]
    fn one_table_reset_is_told_by_any_counter_going_down() {
        let last = RelationCounters([5, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // The scans rose past their old value, the tuples did not: a reset.
        let now = RelationCounters([9, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(now.increase_since(Some(&last)), now);
        let grown = RelationCounters([9, 100, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            grown.increase_since(Some(&last)).0[..3],
            [4, 0, 1],
            "a plain increase is the difference"
        );
    }

    #[test]
    fn a_tenant_with_no_relation_left_is_forgotten() {
        let (mut memory, mut tenants) = (RelationMemory::default(), TenantCounters::default());
        visit(&mut memory, &mut tenants, &[(1, "a", 10), (2, "b", 20)]);
        let mut totals = memory_tenants(vec!["b".into()]);
        tenants.publish(&mut totals);
        assert_eq!(seen_tenants(&tenants), vec!["b".to_owned()]);
    }

    #[test]
    fn a_table_moved_to_another_tenant_adds_its_increase_there() {
        let (mut memory, mut tenants) = (RelationMemory::default(), TenantCounters::default());
        visit(&mut memory, &mut tenants, &[(1, "a", 10), (2, "b", 20)]);
        let after = visit(&mut memory, &mut tenants, &[(1, "b", 12), (2, "b", 20)]);
        assert!(!after.contains_key("a"), "a has no relation left");
        assert_eq!(after["b"], 22);
    }
}

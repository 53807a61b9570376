//! The detail task of a target: per-database work on its own sessions, so
//! that it never delays activity (the cluster task's).
//!
//! A cycle lists the watched databases and visits each in turn, on at most
//! `max_sessions - 1` sessions (with the default 2, one: the session moves
//! from database to database). A visit reads the database's schema
//! statistics and, every `size_interval`, lists its relations (their tables
//! give the drift report) and measures, in batches of `size_batch`, the
//! exact sizes of those whose file or write and vacuum counters changed
//! since their last measurement; every relation is measured again at least
//! every `FULL_SIZE_ROUND` whatever its counters say (an index built or
//! rebuilt changes a size without a write). After each visit the per-tenant
//! figures of every database are merged and published, so a tenant's
//! figures appear within one cycle.
//! A cycle starts every `stats_interval` (60 s by default: the schema
//! statistics are the costly query at 10,000 schemas, activity keeps its
//! `poll_interval`), or when the last one ends if it took longer; its length
//! is exported
//! (`tenantwatch_target_detail_cycle_seconds`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::queries::{self, TableSets};
use super::{PollError, Poller};
use crate::store::targets::carry_over;
use crate::store::{CollectorName, PollErrorKind, SchemaTotals, lock};

/// What the detail task knows of one database.
#[derive(Debug, Default)]
struct DatabaseDetail {
    /// Per tenant, from the last schema statistics, counters carried over
    /// the server's statistics resets ([`carry_over`]).
    totals: BTreeMap<String, SchemaTotals>,
    /// Per tenant, the last schema statistics as the server showed them.
    raw_totals: BTreeMap<String, SchemaTotals>,
    /// Per tenant, exact bytes from the last size measurement.
    sizes: Option<BTreeMap<String, u64>>,
    /// Each relation's bytes and change signature at its last measurement:
    /// an unchanged relation, or one a DDL lock keeps from being measured,
    /// counts with its last size.
    relation_sizes: HashMap<i64, MeasuredRelation>,
    tables: TableSets,
    next_size: Option<Instant>,
    /// When every relation was last measured, changed or not.
    last_full_round: Option<Instant>,
}

/// Longest a relation goes without being measured again.
const FULL_SIZE_ROUND: Duration = Duration::from_secs(3600);

/// A relation's size and what it was measured at.
#[derive(Debug, Clone, Copy)]
struct MeasuredRelation {
    bytes: u64,
    signature: RelationSignature,
}

/// What changes whenever a relation's size can: its file and its write and
/// vacuum counters (see [`queries::SIZE_RELATIONS_SQL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RelationSignature([i64; 5]);

/// Runs the detail cycles until `shutdown`.
pub(super) async fn run(mut poller: Poller, shutdown: CancellationToken) {
    let mut databases: BTreeMap<String, DatabaseDetail> = BTreeMap::new();
    loop {
        let started = Instant::now();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = cycle(&mut poller, &mut databases, &shutdown) => {}
        }
        lock(&poller.status).detail_cycle_seconds = Some(started.elapsed().as_secs_f64());
        let next = started + poller.target.settings.stats_interval;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

/// One visit of every watched database.
async fn cycle(
    poller: &mut Poller,
    databases: &mut BTreeMap<String, DatabaseDetail>,
    shutdown: &CancellationToken,
) {
    let primary = poller.primary_database();
    let started = Instant::now();
    let watched = match poller.watched_databases(&primary).await {
        Ok(watched) => watched,
        Err(err) => {
            poller.record(CollectorName::SchemaStats, started, &Err(err));
            return;
        }
    };
    // Dropped databases (or over the cap) leave, with their figures.
    databases.retain(|name, _| watched.contains(name));
    lock(&poller.status).watched_databases = watched.clone();
    let (mut slowest_stats, mut slowest_sizes) = (Duration::ZERO, None::<Duration>);
    let (mut stats_error, mut sizes_error) = (None, None);
    for database in &watched {
        if shutdown.is_cancelled() {
            return;
        }
        let detail = databases.entry(database.clone()).or_default();
        let visit = Instant::now();
        match visit_stats(poller, database, detail).await {
            Ok(()) => {}
            Err(err) => {
                stats_error.get_or_insert(err);
            }
        }
        slowest_stats = slowest_stats.max(visit.elapsed());
        if detail.next_size.is_none_or(|at| Instant::now() >= at) {
            let measuring = Instant::now();
            if let Err(err) = visit_sizes(poller, database, detail).await {
                sizes_error.get_or_insert(err);
            }
            let took = measuring.elapsed();
            slowest_sizes = Some(slowest_sizes.map_or(took, |s| s.max(took)));
        }
        publish(poller, databases);
    }
    // The collectors' durations are their slowest visit in the cycle: what
    // one database costs, which the slow-poll alert is about; the whole
    // cycle is `detail_cycle_seconds`.
    record_slowest(
        poller,
        CollectorName::SchemaStats,
        slowest_stats,
        stats_error,
    );
    if let Some(slowest) = slowest_sizes {
        record_slowest(poller, CollectorName::Sizes, slowest, sizes_error);
    }
}

fn record_slowest(
    poller: &mut Poller,
    collector: CollectorName,
    slowest: Duration,
    error: Option<PollError>,
) {
    let result = error.map_or(Ok(()), Err);
    let started = Instant::now()
        .checked_sub(slowest)
        .unwrap_or_else(Instant::now);
    poller.record(collector, started, &result);
}

async fn visit_stats(
    poller: &mut Poller,
    database: &str,
    detail: &mut DatabaseDetail,
) -> Result<(), PollError> {
    let rows = poller
        .query(database, queries::SCHEMA_STATS_SQL, &[])
        .await?;
    let mut totals = BTreeMap::new();
    queries::add_schema_rows(
        &mut totals,
        database,
        &rows,
        &poller.attribution,
        poller.target.max_tenants,
    )
    .map_err(|err| PollError::from_pg(err, PollErrorKind::Query))?;
    detail.totals = totals
        .iter()
        .map(|(tenant, raw)| {
            let last = detail.raw_totals.get(tenant).zip(detail.totals.get(tenant));
            (tenant.clone(), carry_over(raw, last))
        })
        .collect();
    detail.raw_totals = totals;
    Ok(())
}

/// Lists the database's relations and measures them, `size_batch` per
/// statement. A failed batch (a lock, a timeout) leaves the last sizes
/// published and retries at the next visit.
async fn visit_sizes(
    poller: &mut Poller,
    database: &str,
    detail: &mut DatabaseDetail,
) -> Result<(), PollError> {
    let rows = poller
        .query(database, queries::SIZE_RELATIONS_SQL, &[])
        .await?;
    let mut relations: Vec<(i64, String, RelationSignature)> = Vec::new();
    let mut tables = TableSets::default();
    for row in rows {
        let read = || -> Result<(i64, String, String, RelationSignature), tokio_postgres::Error> {
            let mut signature = [0i64; 5];
            for (i, part) in signature.iter_mut().enumerate() {
                // Read defensively: a NULL counter is a value like any other.
                *part = row.try_get::<_, Option<i64>>(3 + i)?.unwrap_or(-1);
            }
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                RelationSignature(signature),
            ))
        };
        let (oid, schema, table, signature) =
            read().map_err(|err| PollError::from_pg(err, PollErrorKind::Query))?;
        if poller
            .attribution
            .schema_tenant(database, &schema)
            .is_some()
        {
            tables.add(&poller.attribution, database, &schema, &table);
            relations.push((oid, schema, signature));
        }
    }
    detail.tables = tables;
    let full_round = detail
        .last_full_round
        .is_none_or(|at| at.elapsed() >= FULL_SIZE_ROUND);
    let changed: Vec<i64> = relations
        .iter()
        .filter(|(oid, _, signature)| {
            full_round
                || detail
                    .relation_sizes
                    .get(oid)
                    .is_none_or(|last| last.signature != *signature)
        })
        .map(|(oid, _, _)| *oid)
        .collect();
    let mut measured: HashMap<i64, u64> = HashMap::with_capacity(changed.len());
    for batch in changed.chunks(poller.target.settings.size_batch.max(1)) {
        let rows = poller
            .query(database, queries::SIZE_BATCH_SQL, &[&batch])
            .await?;
        for row in rows {
            if let (Ok(oid), Ok(bytes)) = (row.try_get::<_, i64>(0), row.try_get::<_, i64>(1)) {
                measured.insert(oid, bytes.max(0) as u64);
            }
        }
    }
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    let mut relation_sizes = HashMap::with_capacity(relations.len());
    for (oid, schema, signature) in &relations {
        // Unchanged, under an ACCESS EXCLUSIVE lock (skipped so that the
        // visit does not queue behind it), or dropped since the listing: the
        // last measurement stands, with the signature it was taken at, so a
        // locked relation is measured at the next round. A dropped one
        // leaves the next listing.
        let relation = match measured.get(oid) {
            Some(bytes) => MeasuredRelation {
                bytes: *bytes,
                signature: *signature,
            },
            None => match detail.relation_sizes.get(oid) {
                Some(last) => *last,
                None => continue,
            },
        };
        relation_sizes.insert(*oid, relation);
        if let Some(tenant) = poller.attribution.schema_tenant(database, schema) {
            let tenant = queries::capped_tenant(&sizes, tenant, poller.target.max_tenants);
            let sum = sizes.entry(tenant).or_default();
            *sum = sum.saturating_add(relation.bytes);
        }
    }
    tracing::debug!(
        database,
        relations = relations.len(),
        measured = measured.len(),
        full_round,
        "size round"
    );
    detail.sizes = Some(sizes);
    detail.relation_sizes = relation_sizes;
    detail.next_size = Some(Instant::now() + poller.target.settings.size_interval);
    if full_round {
        detail.last_full_round = Some(Instant::now());
    }
    Ok(())
}

/// Merges every database's figures and publishes them.
fn publish(poller: &Poller, databases: &BTreeMap<String, DatabaseDetail>) {
    let max_tenants = poller.target.max_tenants;
    let mut totals: BTreeMap<String, SchemaTotals> = BTreeMap::new();
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    let mut tables = TableSets::default();
    let mut measured_all = true;
    for detail in databases.values() {
        for (tenant, figures) in &detail.totals {
            let tenant = queries::capped_tenant(&totals, tenant.clone(), max_tenants);
            totals.entry(tenant).or_default().absorb(figures);
        }
        match &detail.sizes {
            Some(measured) => {
                for (tenant, bytes) in measured {
                    let tenant = queries::capped_tenant(&sizes, tenant.clone(), max_tenants);
                    let sum = sizes.entry(tenant).or_default();
                    *sum = sum.saturating_add(*bytes);
                }
            }
            None => measured_all = false,
        }
        tables.absorb(&detail.tables);
    }
    let mut status = lock(&poller.status);
    status.schemas = Some(Arc::new(totals));
    // Exact sizes once every database has been measured; until then the
    // estimates stand (a partial sum would undercount).
    if measured_all {
        status.exact_sizes = Some(Arc::new(sizes));
    }
    status.schema_drift = Some(Arc::new(tables.drift()));
}

//! Server-side statement figures per tenant, from `pg_stat_statements`:
//! the query, and the accounting that turns the view's cumulative counters
//! into per-tenant counters that never go down.
//!
//! The view's counters are per (role, database, query id, top level) entry
//! and can drop at any time: `pg_stat_statements_reset()` empties the view,
//! and an entry evicted when the view is full (`dealloc`) comes back from
//! zero. Each poll adds each entry's increase since the last poll to its
//! tenant; an entry whose counters went down (or that is new) adds what it
//! shows now. So a tenant's counters only grow, and a reset loses at most
//! what happened between the last poll and the reset.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Row;

use crate::attribution::{Attribution, Session};
use crate::store::targets::TOP_STATEMENTS;
use crate::store::{TenantStatements, TopStatement};

/// Every entry of the view with its role and database names. `$1` says
/// whether to fetch the (normalised) query text, cut to 200 characters.
/// Needs PostgreSQL 14 or later (`toplevel`, `total_plan_time`).
pub const STATEMENTS_SQL: &str = "\
SELECT s.userid::int8 AS userid,
       s.dbid::int8 AS dbid,
       COALESCE(s.queryid, 0) AS queryid,
       s.toplevel,
       COALESCE(r.rolname::text, '') AS role,
       COALESCE(d.datname::text, '') AS datname,
       s.calls::float8 AS calls,
       ((s.total_exec_time + s.total_plan_time) / 1000)::float8 AS seconds,
       s.rows::float8 AS rows,
       (s.shared_blks_hit + s.local_blks_hit)::float8 AS blks_hit,
       (s.shared_blks_read + s.local_blks_read)::float8 AS blks_read,
       (s.temp_blks_read + s.temp_blks_written)::float8 AS blks_temp,
       CASE WHEN $1 THEN left(s.query, 200) END AS query
  FROM pg_stat_statements s
  LEFT JOIN pg_roles r ON r.oid = s.userid
  LEFT JOIN pg_database d ON d.oid = s.dbid";

/// (userid, dbid, queryid, toplevel): one entry of the view.
type EntryKey = (i64, i64, i64, bool);

/// One entry's cumulative counters: calls, seconds, rows, blocks hit, read,
/// temp.
type Counters = [f64; 6];

/// One entry of the view.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementRow {
    pub key: EntryKey,
    pub role: String,
    pub database: String,
    pub counters: Counters,
    pub query: Option<String>,
}

/// Reads the rows of [`STATEMENTS_SQL`].
pub fn rows_from(rows: &[Row]) -> Result<Vec<StatementRow>, tokio_postgres::Error> {
    rows.iter()
        .map(|row| {
            Ok(StatementRow {
                key: (
                    row.try_get("userid")?,
                    row.try_get("dbid")?,
                    row.try_get("queryid")?,
                    row.try_get("toplevel")?,
                ),
                role: row.try_get("role")?,
                database: row.try_get("datname")?,
                counters: [
                    row.try_get("calls")?,
                    row.try_get("seconds")?,
                    row.try_get("rows")?,
                    row.try_get("blks_hit")?,
                    row.try_get("blks_read")?,
                    row.try_get("blks_temp")?,
                ],
                query: row.try_get("query")?,
            })
        })
        .collect()
}

/// Entries remembered at most (`pg_stat_statements.max` is 5,000 by
/// default); entries beyond it are not counted.
pub const MAX_ENTRIES: usize = 100_000;

/// What the poller carries from one poll to the next.
#[derive(Debug, Default)]
pub struct StatementAccounts {
    last: HashMap<EntryKey, Counters>,
    totals: BTreeMap<String, TenantStatements>,
}

impl StatementAccounts {
    /// Folds one poll of the view in and returns every tenant's figures.
    pub fn update(
        &mut self,
        rows: &[StatementRow],
        attribution: &Attribution,
        max_tenants: usize,
    ) -> BTreeMap<String, TenantStatements> {
        let mut current: HashMap<EntryKey, Counters> = HashMap::with_capacity(rows.len());
        let mut top: HashMap<String, Vec<TopStatement>> = HashMap::new();
        for row in rows {
            let counters = row
                .counters
                .map(|c| if c.is_finite() { c.max(0.0) } else { 0.0 });
            // Beyond the entries remembered, an entry is not counted at
            // all: counted without a previous value it would add its whole
            // history at every poll.
            if current.len() >= MAX_ENTRIES {
                continue;
            }
            let increase = match self.last.get(&row.key) {
                Some(last) if counters.iter().zip(last).all(|(now, then)| now >= then) => {
                    let mut d = counters;
                    for (d, then) in d.iter_mut().zip(last) {
                        *d -= then;
                    }
                    d
                }
                // New, reset or evicted and back: all it shows is new.
                _ => counters,
            };
            current.insert(row.key, counters);
            let session = Session {
                database: &row.database,
                role: &row.role,
                ..Session::default()
            };
            if attribution.is_maintenance(&session) {
                continue;
            }
            let Some(tenant) = attribution.session_tenant(&session) else {
                continue;
            };
            let tenant = crate::collect::capped_tenant(&self.totals, tenant, max_tenants);
            let totals = self.totals.entry(tenant.clone()).or_default();
            totals.calls += increase[0];
            totals.seconds += increase[1];
            totals.rows += increase[2];
            totals.blocks_hit += increase[3];
            totals.blocks_read += increase[4];
            totals.blocks_temp += increase[5];
            let calls = counters[0];
            top.entry(tenant).or_default().push(TopStatement {
                queryid: row.key.2,
                calls: calls as u64,
                total_seconds: counters[1],
                mean_seconds: if calls > 0.0 {
                    counters[1] / calls
                } else {
                    0.0
                },
                query: row.query.clone(),
            });
        }
        self.last = current;
        let mut out = self.totals.clone();
        for (tenant, figures) in &mut out {
            figures.top = top.remove(tenant).unwrap_or_default();
            figures
                .top
                .sort_by(|a, b| b.total_seconds.total_cmp(&a.total_seconds));
            figures.top.truncate(TOP_STATEMENTS);
        }
        out
    }
}

/// Whether an error of the statements query means the extension is not
/// there: the view is missing in this database (`undefined_table`), or the
/// library is not preloaded (`object_not_in_prerequisite_state`).
pub fn is_extension_missing(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    err.code().is_some_and(|code| {
        *code == SqlState::UNDEFINED_TABLE || *code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::{Rule, RuleSource};

    fn attribution() -> Attribution {
        Attribution::new(vec![Rule {
            source: RuleSource::Role,
            pattern: regex::Regex::new("^app_(?P<tenant>.+)$").unwrap(),
            comment_key: "tenant".into(),
        }])
    }

    fn row(role: &str, queryid: i64, calls: f64, seconds: f64) -> StatementRow {
        StatementRow {
            key: (role.len() as i64, 1, queryid, true),
            role: role.into(),
            database: "app".into(),
            counters: [calls, seconds, calls, 0.0, 0.0, 0.0],
            query: None,
        }
    }

    #[test]
    fn increases_add_up_and_a_reset_never_subtracts() {
        let mut accounts = StatementAccounts::default();
        let a = attribution();
        let polls: [&[StatementRow]; 4] = [
            &[row("app_acme", 1, 10.0, 2.0), row("app_acme", 2, 5.0, 1.0)],
            &[row("app_acme", 1, 15.0, 3.0), row("app_acme", 2, 5.0, 1.0)],
            // pg_stat_statements_reset(): entry 2 gone, entry 1 from zero.
            &[row("app_acme", 1, 4.0, 0.5)],
            &[row("app_acme", 1, 6.0, 0.75), row("app_acme", 2, 1.0, 0.25)],
        ];
        let mut seen = Vec::new();
        for poll in polls {
            let figures = accounts.update(poll, &a, 100);
            seen.push((figures["acme"].calls, figures["acme"].seconds));
        }
        assert_eq!(
            seen,
            vec![(15.0, 3.0), (20.0, 4.0), (24.0, 4.5), (27.0, 5.0)]
        );
    }

    #[test]
    fn unattributed_roles_are_left_out_and_the_top_is_by_time() {
        let mut accounts = StatementAccounts::default();
        let rows = [
            row("app_acme", 1, 10.0, 2.0),
            row("app_acme", 2, 1.0, 9.0),
            row("postgres", 3, 100.0, 100.0),
        ];
        let figures = accounts.update(&rows, &attribution(), 100);
        assert_eq!(figures.len(), 1);
        let top = &figures["acme"].top;
        assert_eq!(top.iter().map(|t| t.queryid).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(top[1].mean_seconds, 0.2);
    }

    #[test]
    fn garbage_counters_count_as_zero() {
        let mut accounts = StatementAccounts::default();
        let mut bad = row("app_acme", 1, f64::NAN, -5.0);
        bad.counters[2] = f64::INFINITY;
        let figures = accounts.update(&[bad], &attribution(), 100);
        assert_eq!(figures["acme"].calls, 0.0);
        assert_eq!(figures["acme"].seconds, 0.0);
        assert_eq!(figures["acme"].rows, 0.0);
    }
}

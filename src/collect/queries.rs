//! The SQL the collectors run, and the typed snapshots made from its rows.
//!
//! Every query is one pass over a catalog or statistics view, grouped on the
//! server where it can be, so the cost does not grow with a round trip per
//! schema or table. Rows are read with `try_get`: a row of an unexpected
//! shape is an error of the poll (`bad_row`), never a panic.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use tokio_postgres::Row;

use super::capped_tenant;
use super::counters::{COUNTERS, RelationCounters};
use crate::attribution::{Attribution, RuleSource, Session};
use crate::store::guard::query_prefix;
use crate::store::targets::OFFENDERS_PER_KIND;
use crate::store::{
    ActivitySnapshot, DatabaseStats, Judged, JudgedActivity, Offence, Offender, SchemaTotals,
};

/// Connection states of `pg_stat_activity.state`, as label values.
pub fn state_label(state: Option<&str>) -> &'static str {
    match state {
        Some("active") => "active",
        Some("idle") => "idle",
        Some("idle in transaction") => "idle_in_transaction",
        Some("idle in transaction (aborted)") => "idle_in_transaction_aborted",
        Some("fastpath function call") => "fastpath",
        Some("disabled") => "disabled",
        _ => "unknown",
    }
}

pub const ACTIVITY_SQL: &str = "\
SELECT pid,
       COALESCE(datname, '') AS datname,
       COALESCE(usename, '') AS usename,
       COALESCE(application_name, '') AS application_name,
       state,
       COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - xact_start), 0)::float8 AS xact_age,
       COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - query_start), 0)::float8 AS query_age,
       COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - state_change), 0)::float8 AS state_age,
       backend_start,
       query_start,
       xact_start,
       state_change,
       COALESCE(wait_event_type = 'Lock', false) AS waiting_on_lock,
       CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) ELSE '{}'::int[] END AS blockers,
       CASE WHEN length(query) <= 2048 THEN COALESCE(query, '')
            ELSE left(query, 1024) || ' ' || right(query, 1024) END AS query,
       COALESCE((SELECT rolsuper FROM pg_roles WHERE oid = usesysid), false) AS superuser
  FROM pg_stat_activity
 WHERE backend_type = 'client backend'";

pub const SETTINGS_SQL: &str = "\
SELECT current_setting('max_connections')::int8,
       current_setting('superuser_reserved_connections')::int8,
       current_setting('server_version'),
       pg_is_in_recovery()";

/// Each standby streaming from this primary: its name (`application_name`,
/// which is the standby's `cluster_name` unless its `primary_conninfo`
/// sets one), replay lag in time and in WAL bytes. A caught-up, idle
/// standby shows no lag time (NULL): 0.
pub const REPLICATION_SQL: &str = "\
SELECT COALESCE(NULLIF(application_name, ''), host(client_addr), pid::text) AS replica,
       COALESCE(EXTRACT(EPOCH FROM replay_lag), 0)::float8 AS lag_seconds,
       COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::float8 AS lag_bytes
  FROM pg_stat_replication
 ORDER BY 1
 LIMIT 100";

/// `pg_database_size` of a batch of databases (those dropped since they
/// were listed are skipped).
pub const DATABASE_SIZE_SQL: &str = "\
SELECT d.datname::text, pg_database_size(d.oid)::int8
  FROM pg_database d
 WHERE d.datname = ANY($1::text[])
   AND d.datallowconn";

/// Databases measured per poll by `pg_database_size`.
pub const DATABASE_SIZE_BATCH: usize = 100;

/// Replay lag of each standby, by name: (seconds, WAL bytes).
pub fn replicas_from_rows(
    rows: &[Row],
) -> Result<BTreeMap<String, (f64, f64)>, tokio_postgres::Error> {
    let mut replicas = BTreeMap::new();
    for row in rows {
        let name: String = row.try_get("replica")?;
        let seconds: f64 = row.try_get("lag_seconds")?;
        let bytes: f64 = row.try_get("lag_bytes")?;
        // Two standbys with one name (a copy of one's settings) sum up.
        let entry = replicas.entry(name).or_insert((0.0, 0.0));
        entry.0 = f64::max(entry.0, seconds.max(0.0));
        entry.1 = f64::max(entry.1, bytes.max(0.0));
    }
    Ok(replicas)
}

/// Distinct database, user and application values kept per target; the rest
/// are summed under `__other__`, because these are metric labels.
pub const MAX_LABEL_VALUES: usize = 100;

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    if let Some(count) = map.get_mut(key) {
        *count += 1;
    } else if map.len() < MAX_LABEL_VALUES {
        map.insert(key.to_owned(), 1);
    } else {
        *map.entry("__other__".into()).or_default() += 1;
    }
}

/// `pg_stat_activity` reduced to counts. tenantwatch's own sessions (`own`
/// process ids) count in the target's connections, under the state
/// `tenantwatch` (they take connection slots like any client), and in no
/// other figure.
pub fn activity_from_rows(
    rows: &[Row],
    attribution: &Attribution,
    own: &std::collections::BTreeSet<i32>,
) -> Result<ActivitySnapshot, tokio_postgres::Error> {
    let mut snapshot = ActivitySnapshot::default();
    let mut tenant_of_pid: HashMap<i32, String> = HashMap::new();
    let mut possible_blockers: HashMap<i32, Offender> = HashMap::new();
    let mut blockers_of_waiting: HashMap<i32, Vec<i32>> = HashMap::new();
    for row in rows {
        let pid: i32 = row.try_get("pid")?;
        let database: &str = row.try_get("datname")?;
        let role: &str = row.try_get("usename")?;
        let application_name: &str = row.try_get("application_name")?;
        let state = state_label(row.try_get::<_, Option<&str>>("state")?);
        let xact_age: f64 = row.try_get("xact_age")?;
        let query_age: f64 = row.try_get("query_age")?;
        let state_age: f64 = row.try_get("state_age")?;
        let waiting: bool = row.try_get("waiting_on_lock")?;
        let blockers: Vec<i32> = row.try_get("blockers")?;
        let query: &str = row.try_get("query")?;
        let superuser: bool = row.try_get("superuser")?;
        let backend_start: Option<SystemTime> = row.try_get("backend_start")?;
        let query_start: Option<SystemTime> = row.try_get("query_start")?;
        let xact_start: Option<SystemTime> = row.try_get("xact_start")?;
        let state_change: Option<SystemTime> = row.try_get("state_change")?;
        if own.contains(&pid) {
            *snapshot.by_state.entry("tenantwatch").or_default() += 1;
            continue;
        }

        *snapshot.by_state.entry(state).or_default() += 1;
        bump(&mut snapshot.by_database, database);
        bump(&mut snapshot.by_user, role);
        bump(&mut snapshot.by_application, application_name);
        if waiting {
            snapshot.lock_waiting += 1;
            blockers_of_waiting.insert(pid, blockers);
        }
        let session = Session {
            database,
            role,
            application_name,
            query,
        };
        if attribution.is_maintenance(&session) {
            snapshot.maintenance += 1;
            continue;
        }
        let Some((tenant, source)) = attribution.session_tenant_by(&session) else {
            continue;
        };
        // Through a transaction-mode pool an idle server connection serves
        // whichever client comes next: the tag of its last query names a
        // tenant that has released it, so it is not charged to one.
        if state == "idle" && source == RuleSource::QueryComment {
            snapshot.pooled += 1;
            continue;
        }
        let activity = snapshot.tenants.entry(tenant.clone()).or_default();
        *activity.connections.entry(state).or_default() += 1;
        let judged = judged(state, backend_start, query_start, xact_start, state_change);
        let tenant_from_client = match source {
            RuleSource::ApplicationName | RuleSource::QueryComment => true,
            RuleSource::Schema | RuleSource::Database | RuleSource::Role => false,
        };
        let offender = |offence, seconds| Offender {
            pid,
            offence,
            seconds,
            query: query_prefix(query),
            superuser,
            application_name: application_name.to_owned(),
            judged,
            tenant_from_client,
        };
        if state == "active" {
            activity
                .offenders
                .push(offender(Offence::LongQuery, query_age));
        }
        if state.starts_with("idle_in_transaction") {
            activity
                .offenders
                .push(offender(Offence::IdleInTransaction, state_age));
        }
        possible_blockers.insert(pid, offender(Offence::LockBlocker, xact_age));
        activity.oldest_transaction_seconds = activity.oldest_transaction_seconds.max(xact_age);
        if state == "active" {
            activity.longest_query_seconds = activity.longest_query_seconds.max(query_age);
        }
        if state.starts_with("idle_in_transaction") {
            // Measured from state_change: how long it has sat idle, not how
            // old the transaction is.
            activity.idle_in_transaction_max_seconds =
                activity.idle_in_transaction_max_seconds.max(state_age);
        }
        if waiting {
            activity.lock_waiting += 1;
        }
        tenant_of_pid.insert(pid, tenant);
    }
    charge_blockers(
        &mut snapshot,
        &tenant_of_pid,
        possible_blockers,
        blockers_of_waiting,
    );
    Ok(snapshot)
}

/// What an order names: the statement if one runs, the idle spell of the
/// transaction if it sits idle (a lock blocker is either); `None` when the
/// row lacks the times that would name it.
fn judged(
    state: &str,
    backend_start: Option<SystemTime>,
    query_start: Option<SystemTime>,
    xact_start: Option<SystemTime>,
    state_change: Option<SystemTime>,
) -> Option<Judged> {
    let activity = match state {
        "active" => JudgedActivity::Statement {
            query_start: query_start?,
        },
        "idle_in_transaction" | "idle_in_transaction_aborted" => JudgedActivity::IdleTransaction {
            xact_start: xact_start?,
            state_change: state_change?,
        },
        _ => return None,
    };
    Some(Judged {
        backend_start: backend_start?,
        activity,
    })
}

/// Lock blockers: the backend at the root of each wait becomes an offender
/// of its tenant, and each waiting backend counts once against every
/// tenant whose root backends it waits on.
///
/// The root, not the direct blocker: `pg_blocking_pids` names the backends
/// a waiter queues behind, and those may be waiting themselves. Behind a
/// row lock the first waiter holds the tuple lock the others queue on while
/// it waits for the transaction holding the row, so the direct blockers of
/// all but one waiter are fellow victims, and the holder looked as if it
/// blocked one backend however long the queue (the soak's lock blocker with
/// four queued updates was never flagged).
fn charge_blockers(
    snapshot: &mut ActivitySnapshot,
    tenant_of_pid: &HashMap<i32, String>,
    mut possible_blockers: HashMap<i32, Offender>,
    blockers_of_waiting: HashMap<i32, Vec<i32>>,
) {
    let roots_of_waiting: Vec<Vec<i32>> = blockers_of_waiting
        .keys()
        .map(|pid| chain_roots(*pid, &blockers_of_waiting))
        .collect();
    let mut blocking_pids: Vec<i32> = roots_of_waiting.iter().flatten().copied().collect();
    blocking_pids.sort_unstable();
    blocking_pids.dedup();
    for pid in blocking_pids {
        if let (Some(tenant), Some(offender)) =
            (tenant_of_pid.get(&pid), possible_blockers.remove(&pid))
            && let Some(activity) = snapshot.tenants.get_mut(tenant)
        {
            activity.offenders.push(offender);
        }
    }
    for activity in snapshot.tenants.values_mut() {
        keep_oldest_offenders(&mut activity.offenders);
    }
    for roots in roots_of_waiting {
        let mut tenants: Vec<&String> = roots
            .iter()
            .filter_map(|pid| tenant_of_pid.get(pid))
            .collect();
        tenants.sort();
        tenants.dedup();
        for tenant in tenants {
            if let Some(activity) = snapshot.tenants.get_mut(tenant) {
                activity.blocking += 1;
            }
        }
    }
}

/// The backends `pid` waits on at the end of its chain: its blockers,
/// followed through those that wait themselves to those that do not. A
/// cycle (a deadlock, until PostgreSQL breaks it) has no root and charges
/// no one.
fn chain_roots(pid: i32, blockers_of_waiting: &HashMap<i32, Vec<i32>>) -> Vec<i32> {
    let mut roots = Vec::new();
    let mut seen = std::collections::BTreeSet::from([pid]);
    let mut next: Vec<i32> = blockers_of_waiting.get(&pid).cloned().unwrap_or_default();
    while let Some(blocker) = next.pop() {
        if !seen.insert(blocker) {
            continue;
        }
        match blockers_of_waiting.get(&blocker) {
            Some(its_blockers) => next.extend(its_blockers),
            None => roots.push(blocker),
        }
    }
    roots
}

/// Keeps the [`OFFENDERS_PER_KIND`] oldest sessions of each offence.
fn keep_oldest_offenders(offenders: &mut Vec<Offender>) {
    offenders.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let mut kept = [0usize; 3];
    offenders.retain(|o| {
        let slot = &mut kept[o.offence as usize];
        *slot += 1;
        *slot <= OFFENDERS_PER_KIND
    });
}

/// Per relation (tables and their indexes), what `pg_stat_user_tables` and
/// `pg_statio_user_tables` are made of, and a size estimate from `pg_class`
/// page counts (heap, indexes, TOAST), in one pass over `pg_class`.
///
/// It calls the `pg_stat_get_*` functions those views are made of directly,
/// on tables and on indexes alike: an index lives in its table's schema, so
/// its row adds the views' index figures to its schema without joining
/// `pg_index` (which dominated the cost at 10,000 schemas). The figures are
/// the views' own; a test compares them. Rows are per relation, not summed
/// per schema, because the counters are cumulative per relation: a dropped
/// table or a reset of its statistics must take nothing away from its
/// tenant's counters, which only per-relation increases can tell
/// ([`super::counters`]).
pub const SCHEMA_STATS_SQL: &str = "\
SELECT n.nspname::text AS schema,
       c.oid::int8 AS relid,
       (c.relkind <> 'i')::int::int8 AS tables,
       (CASE WHEN c.relkind <> 'i' THEN pg_stat_get_numscans(c.oid) ELSE 0 END)::int8 AS seq_scan,
       (CASE WHEN c.relkind = 'i' THEN pg_stat_get_numscans(c.oid) ELSE 0 END)::int8 AS idx_scan,
       (CASE WHEN c.relkind <> 'i' THEN pg_stat_get_tuples_returned(c.oid) ELSE 0 END)::int8 AS seq_tup_read,
       pg_stat_get_tuples_fetched(c.oid)::int8 AS idx_tup_fetch,
       (CASE WHEN c.relkind <> 'i' THEN pg_stat_get_tuples_inserted(c.oid) ELSE 0 END)::int8 AS n_tup_ins,
       (CASE WHEN c.relkind <> 'i' THEN pg_stat_get_tuples_updated(c.oid) ELSE 0 END)::int8 AS n_tup_upd,
       (CASE WHEN c.relkind <> 'i' THEN pg_stat_get_tuples_deleted(c.oid) ELSE 0 END)::int8 AS n_tup_del,
       (CASE WHEN c.relkind <> 'i' THEN pg_stat_get_tuples_hot_updated(c.oid) ELSE 0 END)::int8 AS n_tup_hot_upd,
       (CASE WHEN c.relkind <> 'i' THEN pg_stat_get_live_tuples(c.oid) ELSE 0 END)::int8 AS n_live_tup,
       (CASE WHEN c.relkind <> 'i' THEN pg_stat_get_dead_tuples(c.oid) ELSE 0 END)::int8 AS n_dead_tup,
       (CASE WHEN c.relkind <> 'i' THEN pg_stat_get_blocks_fetched(c.oid) - pg_stat_get_blocks_hit(c.oid) ELSE 0 END)::int8 AS heap_blks_read,
       (CASE WHEN c.relkind <> 'i' THEN pg_stat_get_blocks_hit(c.oid) ELSE 0 END)::int8 AS heap_blks_hit,
       (CASE WHEN c.relkind = 'i' THEN pg_stat_get_blocks_fetched(c.oid) - pg_stat_get_blocks_hit(c.oid) ELSE 0 END)::int8 AS idx_blks_read,
       (CASE WHEN c.relkind = 'i' THEN pg_stat_get_blocks_hit(c.oid) ELSE 0 END)::int8 AS idx_blks_hit,
       (CASE WHEN c.relkind <> 'i' THEN pg_stat_get_vacuum_count(c.oid) + pg_stat_get_autovacuum_count(c.oid) ELSE 0 END)::int8 AS vacuums,
       (CASE WHEN c.relkind <> 'i' THEN pg_stat_get_analyze_count(c.oid) + pg_stat_get_autoanalyze_count(c.oid) ELSE 0 END)::int8 AS analyzes,
       (CASE WHEN c.relkind <> 'i' THEN EXTRACT(EPOCH FROM GREATEST(pg_stat_get_last_vacuum_time(c.oid),
                                                                   pg_stat_get_last_autovacuum_time(c.oid))) END)::float8 AS last_vacuum_unix,
       (CASE WHEN c.relkind <> 'i' THEN EXTRACT(EPOCH FROM GREATEST(pg_stat_get_last_analyze_time(c.oid),
                                                                   pg_stat_get_last_autoanalyze_time(c.oid))) END)::float8 AS last_analyze_unix,
       ((c.relpages::int8 + COALESCE(t.relpages, 0)::int8)
         * current_setting('block_size')::int8)::int8 AS estimated_bytes
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
 WHERE c.relkind IN ('r', 'm', 'p', 'i')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_%'
 ORDER BY n.nspname";

fn nonneg(value: i64) -> u64 {
    value.max(0) as u64
}

/// The later of two optional times.
fn latest(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Adds a database's relation rows ([`SCHEMA_STATS_SQL`]) into per-tenant
/// totals: the gauges (tuples, sizes, tables, schemas, times) summed as the
/// server shows them; each relation's cumulative counters returned with its
/// oid and tenant, for [`super::counters`] to turn into increases.
pub fn add_schema_rows(
    totals: &mut BTreeMap<String, SchemaTotals>,
    database: &str,
    rows: &[Row],
    attribution: &Attribution,
    max_tenants: usize,
) -> Result<Vec<(u32, String, RelationCounters)>, tokio_postgres::Error> {
    let mut relations = Vec::with_capacity(rows.len());
    let mut last_schema: Option<&str> = None;
    for row in rows {
        let schema: &str = row.try_get("schema")?;
        let Some(tenant) = attribution.schema_tenant(database, schema) else {
            continue;
        };
        let tenant = capped_tenant(totals, tenant, max_tenants);
        let t = totals.entry(tenant.clone()).or_default();
        let get = |name: &str| -> Result<u64, tokio_postgres::Error> {
            Ok(nonneg(row.try_get::<_, i64>(name)?))
        };
        // Rows come ordered by schema: a new name is one more schema.
        if last_schema != Some(schema) {
            t.schemas = t.schemas.saturating_add(1);
            last_schema = Some(schema);
        }
        t.tables = t.tables.saturating_add(get("tables")?);
        t.n_live_tup = t.n_live_tup.saturating_add(get("n_live_tup")?);
        t.n_dead_tup = t.n_dead_tup.saturating_add(get("n_dead_tup")?);
        t.last_vacuum_unix = latest(t.last_vacuum_unix, row.try_get("last_vacuum_unix")?);
        t.last_analyze_unix = latest(t.last_analyze_unix, row.try_get("last_analyze_unix")?);
        t.estimated_bytes = t.estimated_bytes.saturating_add(get("estimated_bytes")?);
        let mut counters = RelationCounters::default();
        for (slot, column) in counters.0.iter_mut().zip(COUNTER_COLUMNS) {
            *slot = get(column)?;
        }
        // An oid is 32 bits; the query widens it to int8.
        let oid = u32::try_from(row.try_get::<_, i64>("relid")?).unwrap_or(u32::MAX);
        relations.push((oid, tenant, counters));
    }
    Ok(relations)
}

/// The columns of [`SCHEMA_STATS_SQL`] that are cumulative counters, in the
/// order of [`SchemaTotals::counters_mut`].
const COUNTER_COLUMNS: [&str; COUNTERS] = [
    "seq_scan",
    "idx_scan",
    "seq_tup_read",
    "idx_tup_fetch",
    "n_tup_ins",
    "n_tup_upd",
    "n_tup_del",
    "n_tup_hot_upd",
    "heap_blks_read",
    "heap_blks_hit",
    "idx_blks_read",
    "idx_blks_hit",
    "vacuums",
    "analyzes",
];

/// The relations whose exact size the size collector measures: user tables,
/// materialized views (with their indexes and TOAST via
/// `pg_total_relation_size`), in a stable order for batching, each with
/// what tells whether its size can have changed since it was last measured:
/// its file (`relfilenode`: TRUNCATE, CLUSTER and VACUUM FULL give a new
/// one) and its write and vacuum counters (a table, its TOAST and its
/// indexes only grow through writes to it, and only shrink through a
/// vacuum of it).
pub const SIZE_RELATIONS_SQL: &str = "\
SELECT c.oid::int8, n.nspname::text, c.relname::text,
       c.relfilenode::int8,
       pg_stat_get_tuples_inserted(c.oid)::int8,
       pg_stat_get_tuples_updated(c.oid)::int8,
       pg_stat_get_tuples_deleted(c.oid)::int8,
       (pg_stat_get_vacuum_count(c.oid) + pg_stat_get_autovacuum_count(c.oid))::int8
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'm', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg_toast%'
   AND n.nspname NOT LIKE 'pg_temp%'
 ORDER BY c.oid";

/// Exact sizes of a batch of relations, skipping any that someone holds an
/// AccessExclusiveLock on (DDL, VACUUM FULL): those would make us wait.
pub const SIZE_BATCH_SQL: &str = "\
SELECT c.oid::int8, pg_total_relation_size(c.oid)::int8
  FROM pg_class c
 WHERE c.oid = ANY($1::int8[]::oid[])
   AND NOT EXISTS (SELECT 1 FROM pg_locks l
                    WHERE l.locktype = 'relation' AND l.relation = c.oid
                      AND l.mode = 'AccessExclusiveLock')";

pub const DATABASE_SQL: &str = "\
SELECT datname::text,
       xact_commit::int8, xact_rollback::int8, deadlocks::int8,
       temp_files::int8, temp_bytes::int8, conflicts::int8,
       blks_read::int8, blks_hit::int8
  FROM pg_stat_database
 WHERE datname IS NOT NULL";

pub fn databases_from_rows(
    rows: &[Row],
) -> Result<BTreeMap<String, DatabaseStats>, tokio_postgres::Error> {
    let mut out = BTreeMap::new();
    for row in rows.iter().take(MAX_LABEL_VALUES) {
        let get = |i: usize| -> Result<u64, tokio_postgres::Error> {
            Ok(nonneg(row.try_get::<_, i64>(i)?))
        };
        out.insert(
            row.try_get::<_, String>(0)?,
            DatabaseStats {
                xact_commit: get(1)?,
                xact_rollback: get(2)?,
                deadlocks: get(3)?,
                temp_files: get(4)?,
                temp_bytes: get(5)?,
                conflicts: get(6)?,
                blks_read: get(7)?,
                blks_hit: get(8)?,
            },
        );
    }
    Ok(out)
}

pub const DATABASE_LIST_SQL: &str = "\
SELECT datname::text FROM pg_database
 WHERE datallowconn AND NOT datistemplate
 ORDER BY datname
 LIMIT $1";

#[cfg(test)]
mod tests {
    use super::*;

    /// Who `charge_blockers` charges, tenant by tenant.
    fn blocking_after(
        tenant_of_pid: &[(i32, &str)],
        blockers_of_waiting: &[(i32, &[i32])],
    ) -> BTreeMap<String, u64> {
        let mut snapshot = ActivitySnapshot::default();
        for (_, tenant) in tenant_of_pid {
            snapshot.tenants.entry((*tenant).to_owned()).or_default();
        }
        let tenants = tenant_of_pid
            .iter()
            .map(|(pid, tenant)| (*pid, (*tenant).to_owned()))
            .collect();
        let waiting = blockers_of_waiting
            .iter()
            .map(|(pid, blockers)| (*pid, blockers.to_vec()))
            .collect();
        charge_blockers(&mut snapshot, &tenants, HashMap::new(), waiting);
        snapshot
            .tenants
            .into_iter()
            .map(|(tenant, activity)| (tenant, activity.blocking))
            .collect()
    }

    /// A row lock held by an idle transaction (pid 1, tenant `blocker`) and
    /// four updates of the row queued behind it (tenant `queue`): the first
    /// (pid 2) waits on pid 1's transaction and holds the tuple lock that
    /// pids 3-5 wait on, so `pg_blocking_pids` names pid 2 for them. All
    /// four wait because of pid 1; the queue blocks no one.
    #[test]
    fn a_row_lock_queue_is_charged_to_the_holder_not_to_the_first_waiter() {
        let charged = blocking_after(
            &[
                (1, "blocker"),
                (2, "queue"),
                (3, "queue"),
                (4, "queue"),
                (5, "queue"),
            ],
            &[(2, &[1]), (3, &[2]), (4, &[2, 3]), (5, &[2, 3, 4])],
        );
        assert_eq!(charged["blocker"], 4);
        assert_eq!(charged["queue"], 0);
    }

    #[test]
    fn a_deadlock_cycle_charges_no_one_and_ends() {
        let charged = blocking_after(&[(1, "a"), (2, "b")], &[(1, &[2]), (2, &[1])]);
        assert_eq!(charged["a"], 0);
        assert_eq!(charged["b"], 0);
    }

    #[test]
    fn a_table_lock_charges_its_holder_once_per_waiter() {
        let charged = blocking_after(
            &[(1, "locker"), (2, "x"), (3, "y")],
            &[(2, &[1]), (3, &[1, 2])],
        );
        assert_eq!(charged["locker"], 2);
        assert_eq!(charged["x"], 0);
    }

    #[test]
    fn tenants_beyond_the_cap_fold_into_the_overflow_bucket() {
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..100_000 {
            let tenant = capped_tenant(&totals, format!("t{i}"), 1000);
            *totals.entry(tenant).or_default() += 1;
        }
        // 1,000 tenants of their own, and one bucket for the other 99,000.
        assert_eq!(totals.len(), 1001);
        assert_eq!(totals[crate::event::OVERFLOW_TENANT], 99_000);
        // A tenant already kept keeps its own key.
        assert_eq!(capped_tenant(&totals, "t5".into(), 1000), "t5");
    }
}

/// The tables a tenant has on a target, compared with the most common set:
/// what it lacks (a migration that did not reach it) and what it has more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSets {
    /// Per tenant, its tables: `table` for schema-per-tenant (the schema
    /// name is the tenant's own), `schema.table` for database-per-tenant.
    pub tenants: BTreeMap<String, std::collections::BTreeSet<String>>,
}

/// Tables named per tenant in a drift report, at most.
pub const DRIFT_TABLES_LISTED: usize = 20;

impl TableSets {
    pub fn add(&mut self, attribution: &Attribution, database: &str, schema: &str, table: &str) {
        let Some((tenant, source)) = attribution.schema_tenant_by(database, schema) else {
            return;
        };
        let name = match source {
            crate::attribution::RuleSource::Schema => table.to_owned(),
            _ => format!("{schema}.{table}"),
        };
        self.tenants.entry(tenant).or_default().insert(name);
    }

    /// Adds another database's tables.
    pub fn absorb(&mut self, other: &TableSets) {
        for (tenant, tables) in &other.tenants {
            self.tenants
                .entry(tenant.clone())
                .or_default()
                .extend(tables.iter().cloned());
        }
    }

    /// Each tenant's drift from the most common set: (missing, extra), both
    /// empty for a tenant that has it. No reference, no drift: the most
    /// common set must be shared by two tenants or more and by more tenants
    /// than any other set.
    pub fn drift(&self) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
        let mut counts: HashMap<&std::collections::BTreeSet<String>, usize> = HashMap::new();
        for set in self.tenants.values() {
            *counts.entry(set).or_default() += 1;
        }
        let mut ranked: Vec<(&std::collections::BTreeSet<String>, usize)> =
            counts.into_iter().collect();
        ranked.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let reference = match ranked.as_slice() {
            [(set, n), rest @ ..] if *n >= 2 && rest.first().is_none_or(|(_, m)| m < n) => {
                Some(*set)
            }
            _ => None,
        };
        self.tenants
            .iter()
            .map(|(tenant, set)| {
                let (missing, extra) = match reference {
                    Some(reference) => (
                        reference
                            .difference(set)
                            .take(DRIFT_TABLES_LISTED)
                            .cloned()
                            .collect(),
                        set.difference(reference)
                            .take(DRIFT_TABLES_LISTED)
                            .cloned()
                            .collect(),
                    ),
                    None => (Vec::new(), Vec::new()),
                };
                (tenant.clone(), (missing, extra))
            })
            .collect()
    }
}

#[cfg(test)]
mod drift_tests {
    use super::*;
    use crate::attribution::{Rule, RuleSource};

    fn attribution() -> Attribution {
        Attribution::new(vec![Rule {
            source: RuleSource::Schema,
            pattern: regex::Regex::new("^tenant_(?P<tenant>.+)$").unwrap(),
            comment_key: "tenant".into(),
        }])
    }

    #[test]
    fn the_tenant_a_migration_missed_drifts() {
        let a = attribution();
        let mut sets = TableSets::default();
        for tenant in ["a", "b", "c"] {
            for table in ["orders", "invoices", "payments"] {
                sets.add(&a, "app", &format!("tenant_{tenant}"), table);
            }
        }
        for table in ["orders", "invoices", "legacy"] {
            sets.add(&a, "app", "tenant_d", table);
        }
        sets.add(&a, "app", "public", "schema_migrations");
        let drift = sets.drift();
        assert_eq!(drift.len(), 4);
        assert_eq!(drift["a"], (vec![], vec![]));
        assert_eq!(
            drift["d"],
            (vec!["payments".to_owned()], vec!["legacy".to_owned()])
        );
    }

    #[test]
    fn database_per_tenant_compares_schema_qualified_tables() {
        let a = Attribution::new(vec![Rule {
            source: RuleSource::Database,
            pattern: regex::Regex::new("^tenant_(?P<tenant>[a-z0-9]+)_core$").unwrap(),
            comment_key: "tenant".into(),
        }]);
        let mut sets = TableSets::default();
        for tenant in ["a", "b", "c"] {
            sets.add(&a, &format!("tenant_{tenant}_core"), "public", "orders");
            if tenant != "c" {
                sets.add(&a, &format!("tenant_{tenant}_core"), "audit", "events");
            }
        }
        let drift = sets.drift();
        assert_eq!(drift["c"].0, vec!["audit.events".to_owned()]);
        assert!(drift["a"].0.is_empty() && drift["a"].1.is_empty());
    }

    #[test]
    fn without_a_majority_nobody_drifts() {
        let a = attribution();
        let mut sets = TableSets::default();
        sets.add(&a, "app", "tenant_a", "x");
        sets.add(&a, "app", "tenant_b", "y");
        assert!(
            sets.drift()
                .values()
                .all(|(m, e)| m.is_empty() && e.is_empty())
        );
    }
}

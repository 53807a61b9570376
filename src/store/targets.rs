//! Target statuses: what the PostgreSQL collectors last saw of each target,
//! written by [`crate::collect`] and read by every reader through
//! [`TargetStatuses::snapshot`].
//!
//! A status holds the last successful result of each collector behind an
//! `Arc`, so a snapshot is a cheap clone taken under a short lock, and a
//! reader never waits for a poll. The closed sets a status is labelled with
//! ([`CollectorName`], [`PollErrorKind`], [`SchemaDetail`]) live here, beside
//! the data, so sources and readers share one vocabulary.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::Serialize;

/// The collectors of a target, as the `collector` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CollectorName {
    Connect,
    Activity,
    SchemaStats,
    Database,
    Sizes,
    Statements,
}

impl CollectorName {
    pub const ALL: [CollectorName; 6] = [
        CollectorName::Connect,
        CollectorName::Activity,
        CollectorName::SchemaStats,
        CollectorName::Database,
        CollectorName::Sizes,
        CollectorName::Statements,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CollectorName::Connect => "connect",
            CollectorName::Activity => "activity",
            CollectorName::SchemaStats => "schema_stats",
            CollectorName::Database => "database",
            CollectorName::Sizes => "sizes",
            CollectorName::Statements => "statements",
        }
    }
}

/// Why a poll failed: a closed set, used as the `error` label and in the
/// targets API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PollErrorKind {
    Connect,
    Auth,
    Timeout,
    StatementTimeout,
    LockTimeout,
    Permission,
    ConnectionLost,
    Query,
    /// `pg_stat_statements` is not installed (or not preloaded).
    ExtensionMissing,
}

impl PollErrorKind {
    pub const ALL: [PollErrorKind; 9] = [
        PollErrorKind::Connect,
        PollErrorKind::Auth,
        PollErrorKind::Timeout,
        PollErrorKind::StatementTimeout,
        PollErrorKind::LockTimeout,
        PollErrorKind::Permission,
        PollErrorKind::ConnectionLost,
        PollErrorKind::Query,
        PollErrorKind::ExtensionMissing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PollErrorKind::Connect => "connect",
            PollErrorKind::Auth => "auth",
            PollErrorKind::Timeout => "timeout",
            PollErrorKind::StatementTimeout => "statement_timeout",
            PollErrorKind::LockTimeout => "lock_timeout",
            PollErrorKind::Permission => "permission",
            PollErrorKind::ConnectionLost => "connection_lost",
            PollErrorKind::Query => "query",
            PollErrorKind::ExtensionMissing => "extension_missing",
        }
    }
}

/// How many per-tenant schema series a target exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaDetail {
    /// Size, live and dead tuples, last vacuum time, five tuple counters, two
    /// scan counters, heap blocks read and hit.
    #[default]
    Basic,
    /// Also the size estimate, tables, schemas, last analyze time, HOT
    /// updates, vacuum and analyze counts, index blocks.
    Full,
}

impl SchemaDetail {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaDetail::Basic => "basic",
            SchemaDetail::Full => "full",
        }
    }
}

/// What the readers see of one target: the last successful result of each
/// collector, and health.
#[derive(Debug, Clone, Default)]
pub struct TargetStatus {
    pub name: String,
    /// `host:port/dbname`; never the DSN.
    pub description: String,
    /// Which per-tenant schema series this target exports.
    pub schema_detail: SchemaDetail,
    pub up: bool,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<PollErrorKind>,
    pub server_version: Option<String>,
    /// A standby (`pg_is_in_recovery()`): write-based rules skip it.
    pub in_recovery: Option<bool>,
    /// Per tenant, what `pg_stat_statements` counted (role and database
    /// rules), summed from per-poll increases.
    pub statements: Option<Arc<BTreeMap<String, TenantStatements>>>,
    /// Per tenant, the tables it lacks and has more than the target's most
    /// common set (both empty: no drift), from the last size cycle.
    pub schema_drift: Option<Arc<BTreeMap<String, TableDrift>>>,
    /// `[[targets]] group`: the expected tenants must all be here.
    pub group: Option<String>,
    /// Each standby streaming from it: (replay lag seconds, WAL bytes).
    pub replicas: Option<Arc<BTreeMap<String, (f64, f64)>>>,
    pub max_connections: Option<u64>,
    pub reserved_connections: Option<u64>,
    pub activity: Option<Arc<ActivitySnapshot>>,
    pub schemas: Option<Arc<BTreeMap<String, SchemaTotals>>>,
    /// Exact sizes per tenant from the last complete size cycle.
    pub exact_sizes: Option<Arc<BTreeMap<String, u64>>>,
    pub databases: Option<Arc<BTreeMap<String, DatabaseStats>>>,
    /// `pg_database_size` of each watched database (measured in rotation
    /// on the cluster session).
    pub database_sizes: Option<Arc<BTreeMap<String, u64>>>,
    /// Databases currently watched for schema statistics.
    pub watched_databases: Vec<String>,
    /// How long the last full cycle of per-database detail took.
    pub detail_cycle_seconds: Option<f64>,
    /// Seconds the last run of each collector took.
    pub poll_seconds: BTreeMap<CollectorName, f64>,
    /// Wall-clock time of each collector's last success.
    pub last_poll_success: BTreeMap<CollectorName, SystemTime>,
    /// Errors per (collector, kind) since start.
    pub poll_errors: BTreeMap<(CollectorName, PollErrorKind), u64>,
    /// Polls started since start.
    pub polls: u64,
    /// Moves each time the cluster task finishes a poll or a collector
    /// records a failure: the exposition encodes afresh when it moved, so
    /// `up` and a new error show in the next scrape whatever
    /// `server.metrics_max_age` is.
    pub published: u64,
}

impl TargetStatus {
    /// Marks a result as published (see [`TargetStatus::published`]).
    pub fn publish(&mut self) {
        self.published = self.published.wrapping_add(1);
    }

    /// A status for a target that has not been polled yet.
    pub fn new(name: &str, description: &str, schema_detail: SchemaDetail) -> TargetStatus {
        TargetStatus {
            name: name.to_owned(),
            description: description.to_owned(),
            schema_detail,
            ..TargetStatus::default()
        }
    }

    /// The size of a tenant's schemas on this target: exact from the last
    /// complete size cycle, else the page-count estimate of the last poll.
    /// `None` when the tenant has no schema here.
    pub fn tenant_size(&self, tenant: &str) -> Option<u64> {
        let totals = self.schemas.as_ref()?.get(tenant)?;
        Some(self.size_of(tenant, totals))
    }

    /// As [`TargetStatus::tenant_size`], for a tenant's totals at hand.
    pub fn size_of(&self, tenant: &str, totals: &SchemaTotals) -> u64 {
        self.exact_sizes
            .as_ref()
            .and_then(|sizes| sizes.get(tenant).copied())
            .unwrap_or(totals.estimated_bytes)
    }

    /// Every tenant's size on this target, by the same rule.
    pub fn tenant_sizes(&self) -> impl Iterator<Item = (&String, u64)> {
        self.schemas
            .iter()
            .flat_map(|schemas| schemas.iter())
            .map(|(tenant, totals)| (tenant, self.size_of(tenant, totals)))
    }

    /// Client backends on the target (tenantwatch's own excluded).
    pub fn connections_in_use(&self) -> u64 {
        self.activity
            .as_ref()
            .map(|a| a.by_state.values().sum())
            .unwrap_or(0)
    }
}

impl TenantActivity {
    /// The tenant's backends, whatever their state.
    pub fn total_connections(&self) -> u64 {
        self.connections.values().sum()
    }
}

/// Shared handle on one target's status: the collector writes it, readers
/// copy it.
pub type SharedStatus = Arc<Mutex<TargetStatus>>;

/// Locks a status, ignoring poisoning: a panicking writer leaves a status
/// that is still a valid (if stale) picture.
pub fn lock(status: &SharedStatus) -> MutexGuard<'_, TargetStatus> {
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every target's shared status, in configuration order, and the tenants
/// expected on the targets of a group (`tenants.expected_file`).
#[derive(Debug, Clone, Default)]
pub struct TargetStatuses {
    statuses: Arc<[SharedStatus]>,
    expected: Arc<std::sync::RwLock<Arc<std::collections::BTreeSet<String>>>>,
}

impl TargetStatuses {
    pub fn new(statuses: Vec<SharedStatus>) -> TargetStatuses {
        TargetStatuses {
            statuses: statuses.into(),
            expected: Arc::default(),
        }
    }

    /// The tenants expected on every target with a group.
    pub fn expected(&self) -> Arc<std::collections::BTreeSet<String>> {
        self.expected
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces them (start-up, SIGHUP).
    pub fn set_expected(&self, expected: Arc<std::collections::BTreeSet<String>>) {
        *self
            .expected
            .write()
            .unwrap_or_else(PoisonError::into_inner) = expected;
    }

    /// Tenants expected on `status`'s target (it has a group and was
    /// polled) with no schema or database there; sorted.
    pub fn missing_tenants(&self, status: &TargetStatus) -> Vec<String> {
        let (Some(_), Some(schemas)) = (&status.group, &status.schemas) else {
            return Vec::new();
        };
        self.expected()
            .iter()
            .filter(|tenant| !schemas.contains_key(*tenant))
            .cloned()
            .collect()
    }

    /// A copy of every status, each taken under its lock (cheap: the
    /// collectors' results are behind `Arc`s).
    pub fn snapshot(&self) -> Vec<TargetStatus> {
        self.statuses.iter().map(|s| lock(s).clone()).collect()
    }

    /// The shared handles, for the collectors that write them.
    pub fn handles(&self) -> &[SharedStatus] {
        &self.statuses
    }

    /// A number that moves whenever any target publishes a result
    /// ([`TargetStatus::published`]); cheap: one short lock per target.
    pub fn published(&self) -> u64 {
        self.statuses
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(lock(s).published))
    }
}

/// One tenant's sessions on a target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantActivity {
    pub connections: BTreeMap<&'static str, u64>,
    pub oldest_transaction_seconds: f64,
    pub longest_query_seconds: f64,
    pub idle_in_transaction_max_seconds: f64,
    pub lock_waiting: u64,
    /// Other backends waiting on a lock held by this tenant's sessions.
    pub blocking: u64,
    /// The sessions a guard action could end: the oldest few of each
    /// [`Offence`] (at most [`OFFENDERS_PER_KIND`] each).
    pub offenders: Vec<Offender>,
}

/// Sessions kept per tenant and kind of offence.
pub const OFFENDERS_PER_KIND: usize = 5;

/// Why a session might be ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    /// A query running (its age: since `query_start`).
    LongQuery,
    /// Idle in a transaction (since `state_change`).
    IdleInTransaction,
    /// Holds a lock others wait for (its transaction's age).
    LockBlocker,
}

/// One session of a tenant that may be ended, as the last poll saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Offender {
    pub pid: i32,
    pub offence: Offence,
    pub seconds: f64,
    /// The start of its query (at most 100 characters), as the server
    /// shows it, literal values included: kept for the guard, which shows
    /// it only as `guard.query_text` says (redacted by default).
    pub query: String,
    /// Run by a superuser: never ended.
    pub superuser: bool,
    pub application_name: String,
    /// Which backend, and which of its statements or idle transactions,
    /// the poll saw; `None` when `pg_stat_activity` did not show the
    /// timestamps (a role without `pg_read_all_stats`) or the session was
    /// in no state the guard can name: then it is never ended, because a
    /// pid alone may by then be another statement, or another tenant's.
    pub judged: Option<Judged>,
    /// The tenant came from a field the client sets (`application_name`,
    /// a sqlcommenter tag): anyone connecting can claim it, and behind a
    /// pooler it names the last client, so the guard only ever cancels.
    pub tenant_from_client: bool,
}

/// What the guard judged of a session, re-checked on the server in the
/// statement that signals it: the backend (its pid is reused by the next
/// connection; `backend_start` tells them apart) and the offence's
/// statement or idle transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Judged {
    pub backend_start: SystemTime,
    pub activity: JudgedActivity,
}

/// The part of a session's activity an order names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JudgedActivity {
    /// A running statement (`state = 'active'`), by its `query_start`.
    Statement { query_start: SystemTime },
    /// A transaction sitting idle (`state = 'idle in transaction'`, or its
    /// aborted form), by its `xact_start` and the `state_change` that began
    /// the idle spell: a new statement in the same transaction changes it.
    IdleTransaction {
        xact_start: SystemTime,
        state_change: SystemTime,
    },
}

/// `pg_stat_activity` reduced to counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActivitySnapshot {
    pub by_state: BTreeMap<&'static str, u64>,
    pub by_database: BTreeMap<String, u64>,
    pub by_user: BTreeMap<String, u64>,
    pub by_application: BTreeMap<String, u64>,
    pub lock_waiting: u64,
    /// Idle backends whose only tenant mark is the sqlcommenter tag of
    /// their last query: pooled connections, charged to no tenant.
    pub pooled: u64,
    /// Sessions matched by `[[tenants.exclude]]` (pg_dump, migrations).
    pub maintenance: u64,
    pub tenants: BTreeMap<String, TenantActivity>,
}

/// One tenant's schema figures on a target (summed over its schemas). The
/// gauges are the server's sums; the counters (scans, tuples, blocks,
/// maintenance runs) are the sums of each relation's increases since
/// tenantwatch first saw it, so they never go down while it runs (see
/// `collect::counters`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchemaTotals {
    pub schemas: u64,
    pub tables: u64,
    pub seq_scan: u64,
    pub idx_scan: u64,
    pub seq_tup_read: u64,
    pub idx_tup_fetch: u64,
    pub n_tup_ins: u64,
    pub n_tup_upd: u64,
    pub n_tup_del: u64,
    pub n_tup_hot_upd: u64,
    pub n_live_tup: u64,
    pub n_dead_tup: u64,
    pub heap_blks_read: u64,
    pub heap_blks_hit: u64,
    pub idx_blks_read: u64,
    pub idx_blks_hit: u64,
    pub vacuums: u64,
    pub analyzes: u64,
    /// Unix time of the most recent (auto)vacuum of any of its tables.
    pub last_vacuum_unix: Option<f64>,
    /// Unix time of the most recent (auto)analyze of any of its tables.
    pub last_analyze_unix: Option<f64>,
    /// From `pg_class` page counts, refreshed every poll.
    pub estimated_bytes: u64,
}

impl SchemaTotals {
    /// The cumulative counters, in one fixed order: the collector keeps
    /// them per relation in that order and writes each tenant's
    /// never-decreasing sums back through this.
    pub fn counters_mut(&mut self) -> [&mut u64; 14] {
        [
            &mut self.seq_scan,
            &mut self.idx_scan,
            &mut self.seq_tup_read,
            &mut self.idx_tup_fetch,
            &mut self.n_tup_ins,
            &mut self.n_tup_upd,
            &mut self.n_tup_del,
            &mut self.n_tup_hot_upd,
            &mut self.heap_blks_read,
            &mut self.heap_blks_hit,
            &mut self.idx_blks_read,
            &mut self.idx_blks_hit,
            &mut self.vacuums,
            &mut self.analyzes,
        ]
    }

    /// Adds another set of schemas (another database's) to these.
    pub fn absorb(&mut self, other: &SchemaTotals) {
        self.schemas = self.schemas.saturating_add(other.schemas);
        self.tables = self.tables.saturating_add(other.tables);
        self.seq_scan = self.seq_scan.saturating_add(other.seq_scan);
        self.idx_scan = self.idx_scan.saturating_add(other.idx_scan);
        self.seq_tup_read = self.seq_tup_read.saturating_add(other.seq_tup_read);
        self.idx_tup_fetch = self.idx_tup_fetch.saturating_add(other.idx_tup_fetch);
        self.n_tup_ins = self.n_tup_ins.saturating_add(other.n_tup_ins);
        self.n_tup_upd = self.n_tup_upd.saturating_add(other.n_tup_upd);
        self.n_tup_del = self.n_tup_del.saturating_add(other.n_tup_del);
        self.n_tup_hot_upd = self.n_tup_hot_upd.saturating_add(other.n_tup_hot_upd);
        self.n_live_tup = self.n_live_tup.saturating_add(other.n_live_tup);
        self.n_dead_tup = self.n_dead_tup.saturating_add(other.n_dead_tup);
        self.heap_blks_read = self.heap_blks_read.saturating_add(other.heap_blks_read);
        self.heap_blks_hit = self.heap_blks_hit.saturating_add(other.heap_blks_hit);
        self.idx_blks_read = self.idx_blks_read.saturating_add(other.idx_blks_read);
        self.idx_blks_hit = self.idx_blks_hit.saturating_add(other.idx_blks_hit);
        self.vacuums = self.vacuums.saturating_add(other.vacuums);
        self.analyzes = self.analyzes.saturating_add(other.analyzes);
        let latest = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.last_vacuum_unix = latest(self.last_vacuum_unix, other.last_vacuum_unix);
        self.last_analyze_unix = latest(self.last_analyze_unix, other.last_analyze_unix);
        self.estimated_bytes = self.estimated_bytes.saturating_add(other.estimated_bytes);
    }
}

/// Figures a server counts from its start or its last statistics reset.
pub trait Cumulative: Clone {
    /// The counter fields, in a fixed order.
    fn counters(&self) -> Vec<u64>;
    /// Sets the counter fields, in the order of [`Cumulative::counters`].
    fn set_counters(&mut self, values: &[u64]);
}

/// What to publish for the `raw` figures just read, given the last raw
/// figures and what was published then: each counter grows by its raw
/// increase, or by its whole raw value when it went down (the server's
/// statistics restarted from zero: a crash, a standby restart,
/// `pg_stat_reset`), so a reset on the server is never a reset of
/// tenantwatch's counter (Prometheus' `resets()` and `increase()` over a
/// sum of series would otherwise see one). Without a last reading the raw
/// figures are published as they are.
pub fn carry_over<T: Cumulative>(raw: &T, last: Option<(&T, &T)>) -> T {
    let mut published = raw.clone();
    if let Some((last_raw, last_published)) = last {
        let grown: Vec<u64> = raw
            .counters()
            .into_iter()
            .zip(last_raw.counters())
            .zip(last_published.counters())
            .map(|((now, before), shown)| {
                let increase = if now >= before { now - before } else { now };
                shown.saturating_add(increase)
            })
            .collect();
        published.set_counters(&grown);
    }
    published
}

impl Cumulative for DatabaseStats {
    fn counters(&self) -> Vec<u64> {
        vec![
            self.xact_commit,
            self.xact_rollback,
            self.deadlocks,
            self.temp_files,
            self.temp_bytes,
            self.conflicts,
            self.blks_read,
            self.blks_hit,
        ]
    }

    fn set_counters(&mut self, values: &[u64]) {
        let fields = [
            &mut self.xact_commit,
            &mut self.xact_rollback,
            &mut self.deadlocks,
            &mut self.temp_files,
            &mut self.temp_bytes,
            &mut self.conflicts,
            &mut self.blks_read,
            &mut self.blks_hit,
        ];
        for (field, value) in fields.into_iter().zip(values) {
            *field = *value;
        }
    }
}

/// `pg_stat_database` for one database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatabaseStats {
    pub xact_commit: u64,
    pub xact_rollback: u64,
    pub deadlocks: u64,
    pub temp_files: u64,
    pub temp_bytes: u64,
    pub conflicts: u64,
    pub blks_read: u64,
    pub blks_hit: u64,
}

/// A tenant's tables against its target's most common set: (missing,
/// extra), both empty when it has that set.
pub type TableDrift = (Vec<String>, Vec<String>);

/// A tenant's statements on a target, from `pg_stat_statements`: counters
/// that only grow (a reset of the view or an evicted entry starts its
/// increase from zero, never from a negative difference), and its heaviest
/// statements as the view shows them now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantStatements {
    pub calls: f64,
    /// Execution plus planning time.
    pub seconds: f64,
    pub rows: f64,
    pub blocks_hit: f64,
    pub blocks_read: f64,
    /// Temporary blocks read and written.
    pub blocks_temp: f64,
    /// At most [`TOP_STATEMENTS`], by total time, heaviest first.
    pub top: Vec<TopStatement>,
}

/// Statements listed per tenant.
pub const TOP_STATEMENTS: usize = 10;

/// One statement of a tenant, as `pg_stat_statements` counts it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TopStatement {
    pub queryid: i64,
    pub calls: u64,
    pub total_seconds: f64,
    pub mean_seconds: f64,
    /// The normalised text, at most 200 characters; only with
    /// `statements_text = true`. `pg_stat_statements` replaces the
    /// constants of the statements it plans, not of utility statements
    /// (`ALTER ROLE … PASSWORD '…'`): the API redacts those too.
    pub query: Option<String>,
}

//! PgBouncer statuses: what the PgBouncer pollers last saw of each admin
//! console (`SHOW POOLS`, `STATS`, `DATABASES`, `CLIENTS`, `LISTS`,
//! `CONFIG`), written by [`crate::collect::pgbouncer`] and read by every
//! reader through [`PgBouncerStatuses::snapshot`].
//!
//! Admin consoles of different PgBouncer versions show different columns:
//! a figure whose column is missing is `None` here, and its series is left
//! out rather than reported as zero.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use super::PollErrorKind;

/// One pool (a database and user pair) as `SHOW POOLS` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolFigures {
    pub database: String,
    pub user: String,
    pub clients_active: Option<u64>,
    pub clients_waiting: Option<u64>,
    pub servers_active: Option<u64>,
    pub servers_idle: Option<u64>,
    pub servers_used: Option<u64>,
    pub servers_tested: Option<u64>,
    pub servers_login: Option<u64>,
    /// How long the oldest waiting client has waited (`maxwait` plus
    /// `maxwait_us`).
    pub maxwait_seconds: Option<f64>,
    /// The tenant whose pool this is, by the attribution rules (database,
    /// then role); `None` for a shared pool.
    pub tenant: Option<String>,
}

impl PoolFigures {
    /// The pool's server connections, whatever their state.
    pub fn servers(&self) -> u64 {
        [
            self.servers_active,
            self.servers_idle,
            self.servers_used,
            self.servers_tested,
            self.servers_login,
        ]
        .iter()
        .flatten()
        .fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    /// The server connection states as label values, with their counts.
    pub fn server_states(&self) -> [(&'static str, Option<u64>); 5] {
        [
            ("active", self.servers_active),
            ("idle", self.servers_idle),
            ("used", self.servers_used),
            ("tested", self.servers_tested),
            ("login", self.servers_login),
        ]
    }
}

/// One database entry of `SHOW DATABASES`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolDatabase {
    /// Server connections allowed per user pool of this database.
    pub pool_size: Option<u64>,
    pub reserve_pool: Option<u64>,
    /// `max_db_connections` (0: unlimited).
    pub max_connections: Option<u64>,
    pub current_connections: Option<u64>,
    pub paused: bool,
    pub disabled: bool,
}

/// One database's cumulative traffic from `SHOW STATS`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolTraffic {
    pub queries: Option<u64>,
    pub transactions: Option<u64>,
    pub query_seconds: Option<f64>,
    /// Time clients spent waiting for a server connection.
    pub client_wait_seconds: Option<f64>,
}

/// A tenant's pools on one PgBouncer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantPools {
    /// (database, user) of each pool of the tenant.
    pub pools: Vec<(String, String)>,
    pub waiting_clients: u64,
    pub active_clients: u64,
    pub maxwait_seconds: f64,
    /// Seconds the tenant's clients waited for a server connection since
    /// tenantwatch started (monotonic: summed from per-database deltas, so
    /// a PgBouncer restart or a dropped database never lowers it). Only
    /// for databases whose every pool is the tenant's.
    pub wait_seconds_total: f64,
}

/// What one poll of an admin console saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgBouncerSnapshot {
    /// Per pool, the `database` and `user` values capped at
    /// [`crate::store::MAX_POOL_LABEL_VALUES`] each (the rest under `__other__`).
    pub pools: Vec<PoolFigures>,
    pub databases: BTreeMap<String, PoolDatabase>,
    pub traffic: BTreeMap<String, PoolTraffic>,
    /// Client connections by `application_name` (capped likewise).
    pub clients_by_application: BTreeMap<String, u64>,
    /// Client connections in all (`SHOW LISTS` used and login clients, or
    /// the rows of `SHOW CLIENTS` on a version without them).
    pub client_connections: u64,
    pub max_client_conn: Option<u64>,
    pub tenants: BTreeMap<String, TenantPools>,
}

/// Distinct `database`, `user` and `application` label values kept per
/// PgBouncer; the rest are summed under `__other__`.
pub const MAX_POOL_LABEL_VALUES: usize = 100;

/// What the readers see of one PgBouncer.
#[derive(Debug, Clone, Default)]
pub struct PgBouncerStatus {
    pub name: String,
    /// `host:port`; never the DSN.
    pub description: String,
    pub up: bool,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<PollErrorKind>,
    pub poll_errors: BTreeMap<PollErrorKind, u64>,
    /// Values the admin console sent that were not numbers where numbers
    /// were expected (their series are left out).
    pub bad_values: u64,
    pub poll_seconds: Option<f64>,
    pub polls: u64,
    pub version: Option<String>,
    pub snapshot: Option<Arc<PgBouncerSnapshot>>,
    /// Moves each time a poll finishes, so the exposition encodes afresh
    /// (as [`super::TargetStatus::published`]).
    pub published: u64,
}

impl PgBouncerStatus {
    pub fn new(name: &str, description: &str) -> PgBouncerStatus {
        PgBouncerStatus {
            name: name.to_owned(),
            description: description.to_owned(),
            ..PgBouncerStatus::default()
        }
    }
}

/// Shared handle on one PgBouncer's status.
pub type SharedPgBouncerStatus = Arc<Mutex<PgBouncerStatus>>;

/// Locks a status, ignoring poisoning (a stale picture is still valid).
pub fn lock_pgbouncer(status: &SharedPgBouncerStatus) -> MutexGuard<'_, PgBouncerStatus> {
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every PgBouncer's shared status, in configuration order.
#[derive(Debug, Clone, Default)]
pub struct PgBouncerStatuses(Arc<[SharedPgBouncerStatus]>);

impl PgBouncerStatuses {
    pub fn new(statuses: Vec<SharedPgBouncerStatus>) -> PgBouncerStatuses {
        PgBouncerStatuses(statuses.into())
    }

    /// A copy of every status (cheap: the snapshot is behind an `Arc`).
    pub fn snapshot(&self) -> Vec<PgBouncerStatus> {
        self.0.iter().map(|s| lock_pgbouncer(s).clone()).collect()
    }

    pub fn handles(&self) -> &[SharedPgBouncerStatus] {
        &self.0
    }

    /// A number that moves whenever any PgBouncer poll finishes.
    pub fn published(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(lock_pgbouncer(s).published))
    }
}

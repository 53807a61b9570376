//! The settings one target's poller runs on, with their defaults written
//! once. [`crate::config`] reads `[[targets]]` and builds a [`TargetConfig`].

use std::path::PathBuf;
use std::time::Duration;

use crate::store::SchemaDetail;

/// Defaults of the `[[targets]]` keys.
pub mod defaults {
    use std::time::Duration;

    pub const POLL_INTERVAL: Duration = Duration::from_secs(10);
    pub const SIZE_INTERVAL: Duration = Duration::from_secs(5 * 60);
    pub const STATS_INTERVAL: Duration = Duration::from_secs(60);
    pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const LOCK_TIMEOUT: Duration = Duration::from_secs(1);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const MAX_DATABASES: usize = 100;
    pub const SIZE_BATCH: usize = 2000;
    pub const MAX_SESSIONS: usize = 2;
}

/// Which databases of an instance are watched for schema statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseSelection {
    /// The database the DSN names.
    Dsn,
    List(Vec<String>),
    /// Every database that accepts connections, at most this many.
    All(usize),
}

/// One validated target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub name: String,
    /// Connection settings, password included: never log this.
    pub pg: tokio_postgres::Config,
    /// `host:port/dbname`, the only description of the target that may be
    /// logged or shown.
    pub description: String,
    pub poll_interval: Duration,
    /// How often a detail cycle (schema statistics of every watched
    /// database) starts; activity keeps `poll_interval`.
    pub stats_interval: Duration,
    pub size_interval: Duration,
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    pub connect_timeout: Duration,
    pub databases: DatabaseSelection,
    pub size_batch: usize,
    pub schema_detail: SchemaDetail,
    pub tls_ca_file: Option<PathBuf>,
    /// Most tenants kept per target from schemas (`ingest.max_tenants`);
    /// beyond it their figures sum under `__overflow__`.
    pub max_tenants: usize,
    /// Whether `pg_stat_statements` is read (`statements = "auto"`).
    pub statements: bool,
    /// Whether the top statements carry their text.
    pub statements_text: bool,
    /// `group`: the expected tenants must all exist here.
    pub group: Option<String>,
    /// The most sessions tenantwatch holds on the target: one for the
    /// cluster task, the rest for the per-database detail.
    pub max_sessions: usize,
}

/// `host:port/dbname` from a parsed config: no user, no password, no options.
pub fn describe_pg(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let dbname = pg.get_dbname().or(pg.get_user()).unwrap_or("postgres");
    format!("{host}:{port}/{dbname}")
}

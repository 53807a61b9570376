//! The settings one target's poller runs on: [`TargetSettings`] is a
//! `[[targets]]` entry as the file writes it, with its defaults written once;
//! [`TargetConfig`] adds what `config` resolves outside the file (the
//! connection with its password, the databases to visit).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{Problems, Reload, serde_text};
use crate::store::SchemaDetail;

/// A libpq connection string, `key=value` or `postgresql://` URL. It may
/// hold a password: `Debug` never shows it, and nothing logs it (only host,
/// port and database are, from the parsed connection).
#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(transparent)]
pub struct Dsn(String);

impl Dsn {
    pub fn new(dsn: impl Into<String>) -> Dsn {
        Dsn(dsn.into())
    }

    /// The connection string itself, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Checks that it is given; `config` parses it with the password.
    fn check(&self, key: &str, p: &mut Problems) {
        if self.0.trim().is_empty() {
            p.fail(key, "\"\"", "required: a libpq connection string");
        }
    }
}

impl std::fmt::Debug for Dsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Whether `pg_stat_statements` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementsMode {
    /// When the extension is installed.
    #[default]
    Auto,
    Off,
}

/// `[[targets]]`: one PostgreSQL instance. Every key takes effect at
/// start-up.
#[derive(Debug, Clone, PartialEq, Deserialize, Reload)]
#[serde(default, deny_unknown_fields)]
pub struct TargetSettings {
    /// Name of the target: the `target` label. Unique.
    pub name: String,
    /// libpq connection string, `key=value` or `postgresql://` URL
    /// (required). Never logged: only host, port and database are.
    pub dsn: Dsn,
    /// File holding the password (overrides one in the DSN).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password (overrides one in the DSN).
    pub password_env: Option<String>,
    /// How often activity, schema and database statistics are polled.
    #[serde(with = "serde_text::duration")]
    pub poll_interval: Duration,
    /// How often the per-database detail (schema statistics of every
    /// watched database) goes round; activity keeps `poll_interval`.
    #[serde(with = "serde_text::duration")]
    pub stats_interval: Duration,
    /// How often exact schema sizes are measured (in batches).
    #[serde(with = "serde_text::duration")]
    pub size_interval: Duration,
    /// Server-side `statement_timeout` of our queries; the client gives up
    /// one second later.
    #[serde(with = "serde_text::duration")]
    pub statement_timeout: Duration,
    /// Server-side `lock_timeout` of our queries.
    #[serde(with = "serde_text::duration")]
    pub lock_timeout: Duration,
    /// Time allowed to connect.
    #[serde(with = "serde_text::duration")]
    pub connect_timeout: Duration,
    /// Databases to watch for schema statistics: empty for the DSN's
    /// database, a list of names, or `["*"]` for every database that accepts
    /// connections (at most `max_databases`).
    pub databases: Vec<String>,
    /// Cap on databases watched with `["*"]`.
    pub max_databases: usize,
    /// Relations measured per statement by the size collector.
    pub size_batch: usize,
    /// PEM file of the CA that signed the server's certificate: with it the
    /// certificate and host name are verified (libpq's `verify-full`);
    /// without it `sslmode=prefer|require` encrypts without verifying.
    pub tls_ca_file: Option<PathBuf>,
    /// Per-tenant schema series exported: `basic` (13 per tenant) or `full`
    /// (22 per tenant), to keep 10,000 tenants within one Prometheus.
    pub schema_detail: SchemaDetail,
    /// Per-tenant statement figures from `pg_stat_statements`: `"auto"`
    /// (when the extension is installed) or `"off"`.
    pub statements: StatementsMode,
    /// Include each top statement's text (at most 200 characters) in the
    /// tenant detail.
    pub statements_text: bool,
    /// The most connections tenantwatch holds on the target (at least 2):
    /// one for cluster-wide figures, the others visit the databases in turn.
    pub max_sessions: usize,
    /// The group of targets this one belongs to (one per service, say):
    /// every tenant of `tenants.expected_file` must have a schema or a
    /// database here.
    pub group: Option<String>,
}

impl Default for TargetSettings {
    fn default() -> Self {
        TargetSettings {
            name: String::new(),
            dsn: Dsn::default(),
            password_file: None,
            password_env: None,
            poll_interval: Duration::from_secs(10),
            stats_interval: Duration::from_secs(60),
            size_interval: Duration::from_secs(5 * 60),
            statement_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            databases: Vec::new(),
            max_databases: 100,
            size_batch: 2000,
            tls_ca_file: None,
            schema_detail: SchemaDetail::default(),
            statements: StatementsMode::default(),
            statements_text: false,
            max_sessions: 2,
            group: None,
        }
    }
}

impl TargetSettings {
    /// A target with every optional key at its default.
    pub fn new(name: impl Into<String>, dsn: impl Into<String>) -> TargetSettings {
        TargetSettings {
            name: name.into(),
            dsn: Dsn::new(dsn),
            ..TargetSettings::default()
        }
    }

    /// Checks each key on its own; `key` gives a field's dotted name.
    pub fn check(&self, key: &dyn Fn(&str) -> String, p: &mut Problems) {
        self.dsn.check(&key("dsn"), p);
        if !crate::settings::valid_name(&self.name) {
            p.fail(
                &key("name"),
                format!("{:?}", self.name),
                "must be 1 or more ASCII letters, digits and _-.",
            );
        }
        for (field, value) in [
            ("poll_interval", self.poll_interval),
            ("stats_interval", self.stats_interval),
            ("size_interval", self.size_interval),
            ("statement_timeout", self.statement_timeout),
            ("lock_timeout", self.lock_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            p.positive(&key(field), value);
        }
        p.range(&key("size_batch"), self.size_batch, 1, 100_000);
        p.range(&key("max_sessions"), self.max_sessions, 2, 64);
        if let [all] = self.databases.as_slice()
            && all == "*"
        {
            p.range(&key("max_databases"), self.max_databases, 1, 10_000);
        } else if self.databases.iter().any(|d| d == "*" || d.is_empty()) {
            p.fail(
                &key("databases"),
                format!("{:?}", self.databases),
                "use [\"*\"] alone, or a list of database names",
            );
        }
    }

    /// Which databases the poller visits.
    pub fn database_selection(&self) -> DatabaseSelection {
        match self.databases.as_slice() {
            [] => DatabaseSelection::Dsn,
            [all] if all == "*" => DatabaseSelection::All(self.max_databases),
            list => DatabaseSelection::List(list.to_vec()),
        }
    }
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

/// One validated target: its settings and what they resolve to.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub settings: TargetSettings,
    /// Connection settings, password included: never log this.
    pub pg: tokio_postgres::Config,
    /// `host:port/dbname`, the only description of the target that may be
    /// logged or shown.
    pub description: String,
    pub databases: DatabaseSelection,
    /// Most tenants kept per target from schemas (`ingest.max_tenants`);
    /// beyond it their figures sum under `__overflow__`.
    pub max_tenants: usize,
}

impl TargetConfig {
    /// Whether `pg_stat_statements` is read.
    pub fn statements(&self) -> bool {
        self.settings.statements == StatementsMode::Auto
    }
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

/// `[[pgbouncers]]`: one PgBouncer's admin console. Every key takes effect
/// at start-up.
#[derive(Debug, Clone, PartialEq, Deserialize, Reload)]
#[serde(default, deny_unknown_fields)]
pub struct PgBouncerSettings {
    /// Name of the PgBouncer: the `pgbouncer` label. Unique.
    pub name: String,
    /// libpq connection string to the admin console (`dbname=pgbouncer`)
    /// as a user in `stats_users` (required). Never logged: only host and
    /// port are.
    pub dsn: Dsn,
    /// File holding the password (overrides one in the DSN).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password (overrides one in the DSN).
    pub password_env: Option<String>,
    /// How often the admin console is read.
    #[serde(with = "serde_text::duration")]
    pub poll_interval: Duration,
    /// Time allowed to connect, and to answer each command.
    #[serde(with = "serde_text::duration")]
    pub connect_timeout: Duration,
}

impl Default for PgBouncerSettings {
    fn default() -> Self {
        PgBouncerSettings {
            name: String::new(),
            dsn: Dsn::default(),
            password_file: None,
            password_env: None,
            poll_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl PgBouncerSettings {
    /// An entry with every optional key at its default.
    pub fn new(name: impl Into<String>, dsn: impl Into<String>) -> PgBouncerSettings {
        PgBouncerSettings {
            name: name.into(),
            dsn: Dsn::new(dsn),
            ..PgBouncerSettings::default()
        }
    }

    /// Checks each key on its own; `key` gives a field's dotted name.
    pub fn check(&self, key: &dyn Fn(&str) -> String, p: &mut Problems) {
        self.dsn.check(&key("dsn"), p);
        if !crate::settings::valid_name(&self.name) {
            p.fail(
                &key("name"),
                format!("{:?}", self.name),
                "must be 1 or more ASCII letters, digits and _-.",
            );
        }
        p.positive(&key("poll_interval"), self.poll_interval);
        p.positive(&key("connect_timeout"), self.connect_timeout);
    }
}

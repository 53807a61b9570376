//! Configuration in two layers.
//!
//! [`FileConfig`] mirrors the TOML file exactly (`deny_unknown_fields`, every
//! key optional with a documented default, durations as strings such as
//! `"10s"`). [`Config`] is the validated runtime form, made by
//! `Config::try_from(FileConfig)`, which reports every bad key at once with
//! its value. Environment variables override file keys:
//! `TENANTWATCH__SECTION__KEY=value` (for example
//! `TENANTWATCH__SERVER__LISTEN=0.0.0.0:9645`), and `TENANTWATCH_AUTH_TOKEN`
//! supplies the bearer token without a file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::attribution::{Attribution, Rule, RuleSource};

/// Environment variable holding the bearer token for `/v1/*`.
pub const AUTH_TOKEN_ENV: &str = "TENANTWATCH_AUTH_TOKEN";
/// Prefix of environment variables that override file keys.
pub const ENV_OVERRIDE_PREFIX: &str = "TENANTWATCH__";

/// The configuration file as written.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub server: FileServer,
    pub ingest: FileIngest,
    pub log: FileLog,
    /// PostgreSQL instances to poll, each by name.
    pub targets: Vec<FileTarget>,
    pub tenants: FileTenants,
    pub detect: FileDetect,
    pub ratelimit: FileRateLimit,
    pub api: FileApi,
}

/// `[api]`: the capacity planners' API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileApi {
    /// How much target history (connections, size) is kept for growth fits.
    pub history: String,
    /// Time between two history samples.
    pub history_resolution: String,
    /// Size budget per target for "days until full"; 0 for none.
    pub size_budget_bytes: u64,
    /// Tenants that keep a history for `GET /api/v1/tenants/{tenant}` (about
    /// 35 KB each at the default history and resolution).
    pub history_tenants: usize,
    /// Placement advice keeps every target's share of each load within this
    /// fraction above its fair share.
    pub balance_tolerance: f64,
}

impl Default for FileApi {
    fn default() -> Self {
        FileApi {
            history: "24h".into(),
            history_resolution: "1m".into(),
            size_budget_bytes: 0,
            history_tenants: 1000,
            balance_tolerance: 0.2,
        }
    }
}

/// `[detect]`: problematic-tenant rules.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileDetect {
    /// How often every rule is evaluated.
    pub interval: String,
    /// Half-life of each tenant's query-rate baseline (`rate_spike`).
    pub baseline_half_life: String,
    /// Advice never tightens a quota below this many queries per second.
    pub floor_qps: f64,
    /// After a flag clears, the quota grows back by this factor per interval.
    pub relax_factor: f64,
    /// Per-rule overrides, `[detect.rules.<name>]`.
    pub rules: BTreeMap<String, FileRuleSettings>,
}

impl Default for FileDetect {
    fn default() -> Self {
        FileDetect {
            interval: "10s".into(),
            baseline_half_life: "1h".into(),
            floor_qps: 1.0,
            relax_factor: 2.0,
            rules: BTreeMap::new(),
        }
    }
}

/// `[detect.rules.<name>]`: every key optional; unset keys keep the default.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileRuleSettings {
    pub enabled: Option<bool>,
    pub threshold: Option<f64>,
    pub min: Option<f64>,
    pub factor: Option<f64>,
    #[serde(rename = "for")]
    pub for_: Option<String>,
    pub cooldown: Option<String>,
    pub severity: Option<String>,
    pub tighten: Option<bool>,
}

/// `[ratelimit]`: per-tenant quotas for `POST /v1/ratelimit/check`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileRateLimit {
    pub default_qps: f64,
    pub default_burst: u32,
    /// Always allow, but count what would have been denied.
    pub shadow: bool,
    /// A tenant's limiter is dropped after this long without a check.
    pub idle_ttl: String,
    pub tiers: BTreeMap<String, FileTier>,
    pub tenants: BTreeMap<String, FileTenantQuota>,
}

impl Default for FileRateLimit {
    fn default() -> Self {
        FileRateLimit {
            default_qps: 100.0,
            default_burst: 200,
            shadow: false,
            idle_ttl: "10m".into(),
            tiers: BTreeMap::new(),
            tenants: BTreeMap::new(),
        }
    }
}

/// `[ratelimit.tiers.<name>]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTier {
    pub qps: f64,
    pub burst: u32,
    #[serde(default)]
    pub shadow: bool,
}

/// `[ratelimit.tenants.<tenant>]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileTenantQuota {
    pub tier: Option<String>,
    pub qps: Option<f64>,
    pub burst: Option<u32>,
}

/// `[[targets]]`: one PostgreSQL instance.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTarget {
    /// Name of the target: the `target` label. Unique.
    pub name: String,
    /// libpq connection string, `key=value` or `postgresql://` URL. Never
    /// logged: only host, port and database are.
    pub dsn: String,
    /// File holding the password (overrides one in the DSN).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password (overrides one in the DSN).
    #[serde(default)]
    pub password_env: Option<String>,
    /// How often activity, schema and database statistics are polled.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: String,
    /// How often exact schema sizes are measured (in batches).
    #[serde(default = "default_size_interval")]
    pub size_interval: String,
    /// Server-side `statement_timeout` of our queries; the client gives up
    /// one second later.
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout: String,
    /// Server-side `lock_timeout` of our queries.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: String,
    /// Time allowed to connect.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// Databases to watch for schema statistics: empty for the DSN's
    /// database, a list of names, or `["*"]` for every database that accepts
    /// connections (at most `max_databases`).
    #[serde(default)]
    pub databases: Vec<String>,
    /// Cap on databases watched with `["*"]`.
    #[serde(default = "default_max_databases")]
    pub max_databases: usize,
    /// Relations measured per statement by the size collector.
    #[serde(default = "default_size_batch")]
    pub size_batch: usize,
    /// PEM file of the CA that signed the server's certificate: with it the
    /// certificate and host name are verified (libpq's `verify-full`);
    /// without it `sslmode=prefer|require` encrypts without verifying.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Per-tenant schema series exported: `basic` (13 per tenant) or `full`
    /// (22 per tenant), to keep 10,000 tenants within one Prometheus.
    #[serde(default = "default_schema_detail")]
    pub schema_detail: String,
}

fn default_schema_detail() -> String {
    "basic".into()
}

/// How many per-tenant schema series a target exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaDetail {
    /// Size, live and dead tuples, last vacuum age, five tuple counters, two
    /// scan counters, heap blocks read and hit.
    #[default]
    Basic,
    /// Also the size estimate, tables, schemas, last analyze age, HOT
    /// updates, vacuum and analyze counts, index blocks.
    Full,
}

impl FileTarget {
    /// A target with every optional key at its default.
    pub fn new(name: impl Into<String>, dsn: impl Into<String>) -> FileTarget {
        FileTarget {
            name: name.into(),
            dsn: dsn.into(),
            password_file: None,
            password_env: None,
            poll_interval: default_poll_interval(),
            size_interval: default_size_interval(),
            statement_timeout: default_statement_timeout(),
            lock_timeout: default_lock_timeout(),
            connect_timeout: default_connect_timeout(),
            databases: Vec::new(),
            max_databases: default_max_databases(),
            size_batch: default_size_batch(),
            schema_detail: default_schema_detail(),
            tls_ca_file: None,
        }
    }
}

fn default_poll_interval() -> String {
    "10s".into()
}
fn default_size_interval() -> String {
    "5m".into()
}
fn default_statement_timeout() -> String {
    "5s".into()
}
fn default_lock_timeout() -> String {
    "1s".into()
}
fn default_connect_timeout() -> String {
    "5s".into()
}
fn default_max_databases() -> usize {
    100
}
fn default_size_batch() -> usize {
    2000
}

/// `[tenants]`: how activity and schemas are attributed to tenants.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileTenants {
    /// Ordered rules; the first that matches decides.
    pub rules: Vec<FileRule>,
}

impl Default for FileTenants {
    fn default() -> Self {
        FileTenants {
            rules: vec![
                FileRule {
                    source: "schema".into(),
                    pattern: "^tenant_(?P<tenant>.+)$".into(),
                    key: None,
                },
                FileRule {
                    source: "query_comment".into(),
                    pattern: "^(?P<tenant>.+)$".into(),
                    key: None,
                },
            ],
        }
    }
}

/// `[[tenants.rules]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    /// `schema`, `database`, `role`, `application_name` or `query_comment`.
    pub source: String,
    /// Regular expression with a named group `tenant`.
    pub pattern: String,
    /// For `query_comment`: the sqlcommenter key (default `tenant`).
    #[serde(default)]
    pub key: Option<String>,
}

/// `[server]`: the one HTTP listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileServer {
    /// Address of the HTTP listener (`/metrics`, `/healthz`, `/readyz`,
    /// `/v1/*`). Loopback by default: exposing it is a deliberate choice.
    pub listen: String,
    /// File holding the bearer token that `/v1/*` requires. Unset (and no
    /// `TENANTWATCH_AUTH_TOKEN`) means no token is required.
    pub auth_token_file: Option<PathBuf>,
    /// Concurrent HTTP connections; connections beyond it are closed at once
    /// and counted, so a connection flood cannot exhaust file descriptors.
    pub max_connections: usize,
    /// Time a client has to send its request headers (slowloris guard).
    pub header_read_timeout: String,
    /// Time a client has to send a request body.
    pub body_read_timeout: String,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_grace: String,
}

impl Default for FileServer {
    fn default() -> Self {
        FileServer {
            listen: "127.0.0.1:9645".into(),
            auth_token_file: None,
            max_connections: 1024,
            header_read_timeout: "10s".into(),
            body_read_timeout: "30s".into(),
            shutdown_grace: "10s".into(),
        }
    }
}

/// `[ingest]`: tenant query events over UDP and HTTP, and the tenant store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileIngest {
    /// UDP listener for NDJSON and DogStatsD lines; `""` turns UDP off.
    pub udp_listen: String,
    /// Receive threads on the UDP socket, each with its own store shard.
    pub udp_receivers: usize,
    /// Socket receive buffer requested (`SO_RCVBUF`); it absorbs bursts.
    /// The kernel caps it at `net.core.rmem_max`; the granted size is exported.
    pub udp_recv_buffer_bytes: usize,
    /// Largest datagram accepted; longer ones are refused whole.
    pub max_datagram_bytes: usize,
    /// Largest `POST /v1/events` body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Longest event line accepted.
    pub max_line_bytes: usize,
    /// Most tenants tracked at once; events for more go to `__overflow__`.
    pub max_tenants: usize,
    /// A tenant with no event for this long is forgotten.
    pub tenant_idle_ttl: String,
    /// Window over which `tenantwatch_tenant_db_time_share` is computed.
    pub share_window: String,
}

impl Default for FileIngest {
    fn default() -> Self {
        FileIngest {
            udp_listen: "127.0.0.1:8125".into(),
            udp_receivers: 2,
            udp_recv_buffer_bytes: 8 * 1024 * 1024,
            max_datagram_bytes: 65_507,
            max_body_bytes: 4 * 1024 * 1024,
            max_line_bytes: 4096,
            max_tenants: 10_000,
            tenant_idle_ttl: "15m".into(),
            share_window: "60s".into(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileLog {
    /// `plain` or `json`. The level comes from `TENANTWATCH_LOG` or `RUST_LOG`.
    pub format: String,
}

impl Default for FileLog {
    fn default() -> Self {
        FileLog {
            format: "plain".into(),
        }
    }
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub ingest: IngestConfig,
    pub log_format: LogFormat,
    pub targets: Vec<TargetConfig>,
    pub attribution: Attribution,
    pub detect: crate::detect::DetectSettings,
    pub ratelimit: crate::ratelimit::RatePolicy,
    /// Limiters unused this long are dropped.
    pub ratelimit_idle_ttl: Duration,
    pub api: ApiConfig,
}

/// The validated `[api]`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub history: Duration,
    pub history_resolution: Duration,
    pub size_budget_bytes: u64,
    pub history_tenants: usize,
    pub balance_tolerance: f64,
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
    pub size_interval: Duration,
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    pub connect_timeout: Duration,
    pub databases: DatabaseSelection,
    pub size_batch: usize,
    pub schema_detail: SchemaDetail,
    pub tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub auth_token: Option<Secret>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub udp_listen: Option<SocketAddr>,
    pub udp_receivers: usize,
    pub udp_recv_buffer_bytes: usize,
    pub max_datagram_bytes: usize,
    pub max_body_bytes: usize,
    pub max_line_bytes: usize,
    pub max_tenants: usize,
    pub tenant_idle_ttl: Duration,
    pub share_window: Duration,
}

/// One bad key: its dotted name, the value given, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidKey {
    pub key: String,
    pub value: String,
    pub message: String,
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.key, self.value, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<InvalidKey>),
}

impl Config {
    /// Reads, overrides from the process environment and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_with_env(&text, path, env)
    }

    /// Parses TOML text, applies environment overrides, validates.
    pub fn from_toml_with_env(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        let overrides: Vec<(Vec<String>, &str)> = env
            .iter()
            .filter_map(|(key, value)| {
                let rest = key.strip_prefix(ENV_OVERRIDE_PREFIX)?;
                let path = rest.split("__").map(str::to_ascii_lowercase).collect();
                Some((path, value.as_str()))
            })
            .collect();
        let file: FileConfig = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| parse_error(e.to_string()))?
        } else {
            let mut table: toml::Table =
                toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
            for (key_path, value) in &overrides {
                apply_override(&mut table, key_path, value).map_err(parse_error)?;
            }
            table.try_into().map_err(|e: toml::de::Error| {
                parse_error(format!("after environment overrides: {e}"))
            })?
        };
        let token_from_env = env
            .iter()
            .find(|(key, _)| key == AUTH_TOKEN_ENV)
            .map(|(_, value)| value.clone());
        let mut config = Config::try_from(file)?;
        if let Some(token) = token_from_env.filter(|t| !t.trim().is_empty()) {
            config.server.auth_token = Some(Secret::new(token.trim()));
        }
        Ok(config)
    }
}

fn apply_override(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let key = path.join(".");
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| format!("empty environment override key {key}"))?;
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("environment override {key}: {part} is not a table"))?;
    }
    // Numbers and booleans keep their type; everything else is a string.
    let value = if let Ok(n) = raw.parse::<i64>() {
        toml::Value::Integer(n)
    } else if let Ok(b) = raw.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(raw.to_owned())
    };
    current.insert(last.clone(), value);
    Ok(())
}

/// Collects every bad key instead of stopping at the first.
#[derive(Default)]
struct Validator {
    errors: Vec<InvalidKey>,
}

impl Validator {
    fn fail(&mut self, key: &str, value: impl fmt::Display, message: impl Into<String>) {
        self.errors.push(InvalidKey {
            key: key.to_owned(),
            value: value.to_string(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: &str) -> Duration {
        match humantime::parse_duration(value) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.fail(key, format!("{value:?}"), "must be longer than zero");
                Duration::from_secs(1)
            }
            Err(err) => {
                self.fail(
                    key,
                    format!("{value:?}"),
                    format!("not a duration ({err}); write e.g. \"10s\", \"5m\""),
                );
                Duration::from_secs(1)
            }
        }
    }

    fn addr(&mut self, key: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|err| {
            self.fail(
                key,
                format!("{value:?}"),
                format!("not an IP:port address ({err})"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn range(&mut self, key: &str, value: usize, min: usize, max: usize) -> usize {
        if value < min || value > max {
            self.fail(key, value, format!("must be between {min} and {max}"));
        }
        value
    }
}

impl TryFrom<FileConfig> for Config {
    type Error = ConfigError;

    fn try_from(file: FileConfig) -> Result<Config, ConfigError> {
        let mut v = Validator::default();
        let s = &file.server;
        let auth_token = s
            .auth_token_file
            .as_ref()
            .and_then(|path| match std::fs::read_to_string(path) {
                Ok(token) if !token.trim().is_empty() => Some(Secret::new(token.trim())),
                Ok(_) => {
                    v.fail(
                        "server.auth_token_file",
                        path.display(),
                        "the file is empty",
                    );
                    None
                }
                Err(err) => {
                    v.fail(
                        "server.auth_token_file",
                        path.display(),
                        format!("cannot read it: {err}"),
                    );
                    None
                }
            });
        let server = ServerConfig {
            listen: v.addr("server.listen", &s.listen),
            auth_token,
            max_connections: v.range("server.max_connections", s.max_connections, 1, 1_000_000),
            header_read_timeout: v.duration("server.header_read_timeout", &s.header_read_timeout),
            body_read_timeout: v.duration("server.body_read_timeout", &s.body_read_timeout),
            shutdown_grace: v.duration("server.shutdown_grace", &s.shutdown_grace),
        };

        let i = &file.ingest;
        let udp_listen = if i.udp_listen.trim().is_empty() {
            None
        } else {
            Some(v.addr("ingest.udp_listen", &i.udp_listen))
        };
        let ingest = IngestConfig {
            udp_listen,
            udp_receivers: v.range("ingest.udp_receivers", i.udp_receivers, 1, 64),
            udp_recv_buffer_bytes: v.range(
                "ingest.udp_recv_buffer_bytes",
                i.udp_recv_buffer_bytes,
                4096,
                1 << 30,
            ),
            max_datagram_bytes: v.range(
                "ingest.max_datagram_bytes",
                i.max_datagram_bytes,
                512,
                65_507,
            ),
            max_body_bytes: v.range("ingest.max_body_bytes", i.max_body_bytes, 1024, 1 << 30),
            max_line_bytes: v.range("ingest.max_line_bytes", i.max_line_bytes, 256, 1 << 20),
            max_tenants: v.range("ingest.max_tenants", i.max_tenants, 1, 10_000_000),
            tenant_idle_ttl: v.duration("ingest.tenant_idle_ttl", &i.tenant_idle_ttl),
            share_window: v.duration("ingest.share_window", &i.share_window),
        };
        if ingest.share_window < Duration::from_secs(12) {
            v.fail(
                "ingest.share_window",
                format!("{:?}", i.share_window),
                "must be at least 12s (the window is kept in 12 slots)",
            );
        }

        let log_format = match file.log.format.as_str() {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            other => {
                v.fail(
                    "log.format",
                    format!("{other:?}"),
                    "must be \"plain\" or \"json\"",
                );
                LogFormat::Plain
            }
        };

        let targets = file
            .targets
            .iter()
            .enumerate()
            .filter_map(|(i, target)| validate_target(&mut v, i, target))
            .collect::<Vec<_>>();
        for (i, target) in targets.iter().enumerate() {
            if targets[..i].iter().any(|t| t.name == target.name) {
                v.fail(
                    &format!("targets[{i}].name"),
                    format!("{:?}", target.name),
                    "target names must be unique",
                );
            }
        }
        let attribution = validate_rules(&mut v, &file.tenants.rules);
        let detect = validate_detect(&mut v, &file.detect, ingest.share_window);
        let ratelimit = validate_ratelimit(&mut v, &file.ratelimit);
        let ratelimit_idle_ttl = v.duration("ratelimit.idle_ttl", &file.ratelimit.idle_ttl);
        let api = ApiConfig {
            history: v.duration("api.history", &file.api.history),
            history_resolution: v.duration("api.history_resolution", &file.api.history_resolution),
            size_budget_bytes: file.api.size_budget_bytes,
            history_tenants: v.range("api.history_tenants", file.api.history_tenants, 0, 100_000),
            balance_tolerance: file.api.balance_tolerance,
        };
        if !(api.balance_tolerance.is_finite() && api.balance_tolerance >= 0.0) {
            v.fail(
                "api.balance_tolerance",
                api.balance_tolerance,
                "must be a number >= 0",
            );
        }
        if api.history_resolution > api.history {
            v.fail(
                "api.history_resolution",
                &file.api.history_resolution,
                "must not be longer than api.history",
            );
        }

        if v.errors.is_empty() {
            Ok(Config {
                server,
                ingest,
                log_format,
                targets,
                attribution,
                detect,
                ratelimit,
                ratelimit_idle_ttl,
                api,
            })
        } else {
            Err(ConfigError::Invalid(v.errors))
        }
    }
}

fn validate_target(v: &mut Validator, i: usize, file: &FileTarget) -> Option<TargetConfig> {
    let key = |field: &str| format!("targets[{i}].{field}");
    let errors_before = v.errors.len();
    let name_ok = !file.name.is_empty()
        && file
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !name_ok {
        v.fail(
            &key("name"),
            format!("{:?}", file.name),
            "must be 1 or more ASCII letters, digits and _-.",
        );
    }
    // The DSN may hold a password: its value is never echoed.
    let mut pg: tokio_postgres::Config = match file.dsn.parse() {
        Ok(pg) => pg,
        Err(err) => {
            let reason = err.to_string();
            let reason = if reason.contains(&file.dsn) {
                "cannot be parsed".into()
            } else {
                reason
            };
            v.fail(
                &key("dsn"),
                "<hidden>",
                format!("not a libpq connection string: {reason}"),
            );
            return None;
        }
    };
    if let Some(path) = &file.password_file {
        match std::fs::read_to_string(path) {
            Ok(password) => {
                pg.password(password.trim_end_matches(['\n', '\r']));
            }
            Err(err) => v.fail(
                &key("password_file"),
                path.display(),
                format!("cannot read it: {err}"),
            ),
        }
    }
    if let Some(var) = &file.password_env {
        match std::env::var(var) {
            Ok(password) => {
                pg.password(password);
            }
            Err(_) => v.fail(
                &key("password_env"),
                var,
                "the environment variable is not set",
            ),
        }
    }
    if let Err(err) = crate::collect::tls::connector(file.tls_ca_file.as_deref()) {
        let path = file
            .tls_ca_file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        v.fail(&key("tls_ca_file"), path, err.to_string());
    }
    let connect_timeout = v.duration(&key("connect_timeout"), &file.connect_timeout);
    pg.connect_timeout(connect_timeout);
    pg.application_name("tenantwatch");
    let databases = match file.databases.as_slice() {
        [] => DatabaseSelection::Dsn,
        [all] if all == "*" => {
            DatabaseSelection::All(v.range(&key("max_databases"), file.max_databases, 1, 10_000))
        }
        list => {
            if list.iter().any(|d| d == "*" || d.is_empty()) {
                v.fail(
                    &key("databases"),
                    format!("{list:?}"),
                    "use [\"*\"] alone, or a list of database names",
                );
            }
            DatabaseSelection::List(list.to_vec())
        }
    };
    let target = TargetConfig {
        name: file.name.clone(),
        description: describe_pg(&pg),
        poll_interval: v.duration(&key("poll_interval"), &file.poll_interval),
        size_interval: v.duration(&key("size_interval"), &file.size_interval),
        statement_timeout: v.duration(&key("statement_timeout"), &file.statement_timeout),
        lock_timeout: v.duration(&key("lock_timeout"), &file.lock_timeout),
        connect_timeout,
        databases,
        size_batch: v.range(&key("size_batch"), file.size_batch, 1, 100_000),
        tls_ca_file: file.tls_ca_file.clone(),
        schema_detail: match file.schema_detail.as_str() {
            "basic" => SchemaDetail::Basic,
            "full" => SchemaDetail::Full,
            other => {
                v.fail(
                    &key("schema_detail"),
                    format!("{other:?}"),
                    "must be \"basic\" or \"full\"",
                );
                SchemaDetail::Basic
            }
        },
        pg,
    };
    (v.errors.len() == errors_before).then_some(target)
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

fn validate_detect(
    v: &mut Validator,
    file: &FileDetect,
    window: Duration,
) -> crate::detect::DetectSettings {
    use crate::detect::{DetectSettings, RuleName, Severity};
    let mut settings = DetectSettings {
        interval: v.duration("detect.interval", &file.interval),
        window,
        baseline_half_life: v.duration("detect.baseline_half_life", &file.baseline_half_life),
        floor_qps: file.floor_qps,
        relax_factor: file.relax_factor,
        ..DetectSettings::default()
    };
    if !(file.floor_qps.is_finite() && file.floor_qps > 0.0) {
        v.fail(
            "detect.floor_qps",
            file.floor_qps,
            "must be a number above 0",
        );
    }
    if !(file.relax_factor.is_finite() && file.relax_factor > 1.0) {
        v.fail(
            "detect.relax_factor",
            file.relax_factor,
            "must be a number above 1",
        );
    }
    for (name, over) in &file.rules {
        let Some(rule) = RuleName::parse(name) else {
            let names: Vec<&str> = RuleName::ALL.iter().map(|r| r.as_str()).collect();
            v.fail(
                &format!("detect.rules.{name}"),
                format!("{name:?}"),
                format!("unknown rule; rules are {}", names.join(", ")),
            );
            continue;
        };
        let key = |field: &str| format!("detect.rules.{name}.{field}");
        let Some(r) = settings.rules.get_mut(&rule) else {
            continue;
        };
        if let Some(enabled) = over.enabled {
            r.enabled = enabled;
        }
        for (field, value, target) in [
            ("threshold", over.threshold, &mut r.threshold),
            ("min", over.min, &mut r.min),
            ("factor", over.factor, &mut r.factor),
        ] {
            if let Some(value) = value {
                if value.is_finite() && value >= 0.0 {
                    *target = value;
                } else {
                    v.fail(&key(field), value, "must be a finite number >= 0");
                }
            }
        }
        if let Some(for_) = &over.for_ {
            r.for_ = humantime::parse_duration(for_).unwrap_or_else(|err| {
                v.fail(
                    &key("for"),
                    format!("{for_:?}"),
                    format!("not a duration ({err})"),
                );
                r.for_
            });
        }
        if let Some(cooldown) = &over.cooldown {
            r.cooldown = humantime::parse_duration(cooldown).unwrap_or_else(|err| {
                v.fail(
                    &key("cooldown"),
                    format!("{cooldown:?}"),
                    format!("not a duration ({err})"),
                );
                r.cooldown
            });
        }
        if let Some(severity) = &over.severity {
            match Severity::parse(severity) {
                Some(severity) => r.severity = severity,
                None => v.fail(
                    &key("severity"),
                    format!("{severity:?}"),
                    "must be info, warning or critical",
                ),
            }
        }
        if let Some(tighten) = over.tighten {
            r.tighten = tighten;
        }
    }
    settings
}

fn validate_ratelimit(v: &mut Validator, file: &FileRateLimit) -> crate::ratelimit::RatePolicy {
    use crate::ratelimit::{Rate, RatePolicy, TenantOverride, Tier};
    let mut rate = |key: &str, qps: f64, burst: u32| {
        if !(qps.is_finite() && qps > 0.0) {
            v.fail(&format!("{key}qps"), qps, "must be a number above 0");
        }
        if burst == 0 {
            v.fail(&format!("{key}burst"), burst, "must be at least 1");
        }
        Rate { qps, burst }
    };
    let default = rate("ratelimit.default_", file.default_qps, file.default_burst);
    let tiers = file
        .tiers
        .iter()
        .map(|(name, tier)| {
            let key = format!("ratelimit.tiers.{name}.");
            (
                name.clone(),
                Tier {
                    rate: rate(&key, tier.qps, tier.burst),
                    shadow: tier.shadow,
                },
            )
        })
        .collect::<std::collections::HashMap<_, _>>();
    let mut tenants = std::collections::HashMap::new();
    for (tenant, quota) in &file.tenants {
        let key = format!("ratelimit.tenants.{tenant}");
        if let Some(tier) = &quota.tier
            && !tiers.contains_key(tier)
        {
            v.fail(
                &format!("{key}.tier"),
                format!("{tier:?}"),
                "no such tier in [ratelimit.tiers]",
            );
        }
        if quota.qps.is_some_and(|q| !(q.is_finite() && q > 0.0)) {
            v.fail(
                &format!("{key}.qps"),
                quota.qps.unwrap_or_default(),
                "must be a number above 0",
            );
        }
        if quota.burst == Some(0) {
            v.fail(&format!("{key}.burst"), 0, "must be at least 1");
        }
        tenants.insert(
            tenant.clone(),
            TenantOverride {
                tier: quota.tier.clone(),
                qps: quota.qps,
                burst: quota.burst,
            },
        );
    }
    RatePolicy {
        default,
        shadow: file.shadow,
        tiers,
        tenants,
    }
}

fn validate_rules(v: &mut Validator, rules: &[FileRule]) -> Attribution {
    let mut valid = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let key = |field: &str| format!("tenants.rules[{i}].{field}");
        let source = RuleSource::parse(&rule.source);
        if source.is_none() {
            v.fail(
                &key("source"),
                format!("{:?}", rule.source),
                "must be schema, database, role, application_name or query_comment",
            );
        }
        let pattern = match regex::Regex::new(&rule.pattern) {
            Ok(pattern) if pattern.capture_names().any(|n| n == Some("tenant")) => Some(pattern),
            Ok(_) => {
                v.fail(
                    &key("pattern"),
                    format!("{:?}", rule.pattern),
                    "needs a named group (?P<tenant>...)",
                );
                None
            }
            Err(err) => {
                v.fail(
                    &key("pattern"),
                    format!("{:?}", rule.pattern),
                    format!("not a regular expression: {err}"),
                );
                None
            }
        };
        if rule.key.is_some() && source != Some(RuleSource::QueryComment) {
            v.fail(
                &key("key"),
                format!("{:?}", rule.key),
                "only query_comment rules take a key",
            );
        }
        if let (Some(source), Some(pattern)) = (source, pattern) {
            valid.push(Rule {
                source,
                pattern,
                comment_key: rule.key.clone().unwrap_or_else(|| "tenant".into()),
            });
        }
    }
    Attribution::new(valid)
}

impl Config {
    /// The configuration with every default, listening where the defaults say.
    pub fn defaults() -> Config {
        Config::try_from(FileConfig::default()).expect("the defaults are valid")
    }

    /// A few lines for `check-config`: what the daemon would do.
    pub fn summary(&self) -> String {
        let udp = self
            .ingest
            .udp_listen
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into());
        let mut summary = format!(
            "http listener: {}\n\
             auth token for /v1/*: {}\n\
             udp listener: {} ({} receiver thread(s), {} byte receive buffer requested)\n\
             limits: {} tenants, {} bytes per datagram, {} bytes per body, {} bytes per line\n\
             tenant idle ttl: {}, db time share window: {}\n",
            self.server.listen,
            if self.server.auth_token.is_some() {
                "required"
            } else {
                "not required"
            },
            udp,
            self.ingest.udp_receivers,
            self.ingest.udp_recv_buffer_bytes,
            self.ingest.max_tenants,
            self.ingest.max_datagram_bytes,
            self.ingest.max_body_bytes,
            self.ingest.max_line_bytes,
            humantime::format_duration(self.ingest.tenant_idle_ttl),
            humantime::format_duration(self.ingest.share_window),
        );
        for target in &self.targets {
            summary.push_str(&format!(
                "target {}: {} every {}, sizes every {}, databases {:?}\n",
                target.name,
                target.description,
                humantime::format_duration(target.poll_interval),
                humantime::format_duration(target.size_interval),
                target.databases,
            ));
        }
        if self.targets.is_empty() {
            summary.push_str("targets: none (events only)\n");
        }
        summary.push_str(&format!(
            "tenant rules: {}\n",
            self.attribution.rules().len()
        ));
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_with_env(text, Path::new("test.toml"), env)
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:9645".parse().unwrap());
        assert_eq!(
            config.ingest.udp_listen,
            Some("127.0.0.1:8125".parse().unwrap())
        );
        assert_eq!(config.ingest.max_tenants, 10_000);
        assert_eq!(config.ingest.share_window, Duration::from_secs(60));
        assert!(config.server.auth_token.is_none());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = load("[server]\nlisten_addr = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_addr"), "{err}");
        let err = load("[sever]\n", &[]).unwrap_err().to_string();
        assert!(err.contains("sever"), "{err}");
    }

    #[test]
    fn every_bad_key_is_reported_with_its_value() {
        let err = load(
            "[server]\nlisten = \"nowhere\"\nshutdown_grace = \"soon\"\n\
             [ingest]\nmax_tenants = 0\nmax_datagram_bytes = 100000\nshare_window = \"5s\"\n\
             [log]\nformat = \"xml\"\n",
            &[],
        )
        .unwrap_err();
        let ConfigError::Invalid(errors) = err else {
            panic!("expected validation errors, got {err}");
        };
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.listen",
                "server.shutdown_grace",
                "ingest.max_datagram_bytes",
                "ingest.max_tenants",
                "ingest.share_window",
                "log.format"
            ]
        );
        assert_eq!(errors[0].value, "\"nowhere\"");
        assert_eq!(errors[3].value, "0");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = load("[ingest]\nmax_tenants = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_tenants"), "{err}");
    }

    #[test]
    fn environment_overrides_file_keys() {
        let config = load(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("TENANTWATCH__SERVER__LISTEN", "0.0.0.0:9999"),
                ("TENANTWATCH__INGEST__MAX_TENANTS", "42"),
                ("TENANTWATCH__INGEST__UDP_LISTEN", ""),
                ("TENANTWATCH_AUTH_TOKEN", " s3cret\n"),
                ("UNRELATED", "1"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.listen, "0.0.0.0:9999".parse().unwrap());
        assert_eq!(config.ingest.max_tenants, 42);
        assert_eq!(config.ingest.udp_listen, None);
        assert_eq!(config.server.auth_token, Some(Secret::new("s3cret")));
        let err = load("", &[("TENANTWATCH__SERVER__NOPE", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn token_file_is_read_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("tw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "hunter2\n").unwrap();
        let config = load(&format!("[server]\nauth_token_file = {:?}\n", token), &[]).unwrap();
        assert_eq!(
            config.server.auth_token.as_ref().unwrap().expose(),
            "hunter2"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!config.summary().contains("hunter2"));
        let err = load("[server]\nauth_token_file = \"/nonexistent/token\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("server.auth_token_file"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn example_config_equals_the_defaults() {
        let example = include_str!("../tenantwatch.example.toml");
        let parsed: FileConfig = toml::from_str(example).expect("example parses");
        assert_eq!(parsed, FileConfig::default());
    }

    #[test]
    fn every_example_key_is_documented() {
        let example = include_str!("../tenantwatch.example.toml");
        let docs = include_str!("../docs/configuration.md");
        let table: toml::Table = toml::from_str(example).unwrap();
        let mut keys = Vec::new();
        for (section, value) in &table {
            for key in value.as_table().unwrap().keys() {
                keys.push(format!("{section}.{key}"));
            }
        }
        keys.push("server.auth_token_file".into());
        for key in [
            "name",
            "dsn",
            "password_file",
            "password_env",
            "poll_interval",
            "size_interval",
            "statement_timeout",
            "lock_timeout",
            "connect_timeout",
            "databases",
            "max_databases",
            "size_batch",
            "schema_detail",
            "tls_ca_file",
        ] {
            keys.push(format!("targets.{key}"));
        }
        for key in ["source", "pattern", "key"] {
            keys.push(format!("tenants.rules.{key}"));
        }
        for key in keys {
            assert!(
                docs.contains(&format!("`{key}`")),
                "docs/configuration.md misses `{key}`"
            );
        }
    }
}

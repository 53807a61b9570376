//! The configuration file as written: one serde struct per TOML section,
//! `deny_unknown_fields`, every key optional. Each section's defaults are
//! taken from the settings type of the module that owns it, so a default
//! is written once, in that module.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::capacity::CapacitySettings;
use crate::collect::settings::defaults as target_defaults;
use crate::detect::DetectSettings;
use crate::http::ServerSettings;
use crate::ingest::IngestSettings;
use crate::ratelimit::RatePolicy;
use crate::store::SchemaDetail;
use crate::telemetry::LogFormat;

/// A duration as the file writes it, in the largest unit that divides it:
/// `"10s"`, `"5m"`, `"24h"`, `"250ms"`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// The configuration file as written.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub server: FileServer,
    pub ingest: FileIngest,
    pub log: FileLog,
    /// PostgreSQL instances to poll, each by name.
    pub targets: Vec<FileTarget>,
    /// PgBouncer admin consoles to poll, each by name.
    pub pgbouncers: Vec<FilePgBouncer>,
    pub tenants: FileTenants,
    pub detect: FileDetect,
    pub ratelimit: FileRateLimit,
    pub api: FileApi,
    pub state: FileState,
    pub metrics: FileMetrics,
    pub guard: FileGuard,
}

/// `[guard]`: ending flagged tenants' offending sessions (off by default).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileGuard {
    /// `"off"`, `"dry_run"` or `"enforce"`.
    pub mode: String,
    /// How long a flag stays raised before its sessions are ended.
    pub grace: String,
    pub max_actions_per_minute: u32,
    /// Regular expressions over `application_name`: maintenance sessions
    /// the guard never ends.
    pub exclude_applications: Vec<String>,
}

impl Default for FileGuard {
    fn default() -> Self {
        FileGuard {
            mode: "off".into(),
            grace: "30s".into(),
            max_actions_per_minute: 10,
            exclude_applications: crate::detect::settings::DEFAULT_GUARD_EXCLUDES
                .iter()
                .map(|p| p.to_string())
                .collect(),
        }
    }
}

/// `[metrics]`: how the per-tenant figures are exposed on `/metrics`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileMetrics {
    /// One latency histogram per tenant and kind instead of per tenant.
    pub histogram_by_kind: bool,
    /// Exposed latency histogram bounds in seconds, each one of the
    /// store's 15 bounds.
    pub latency_buckets: Vec<f64>,
}

impl Default for FileMetrics {
    fn default() -> Self {
        let d = crate::metrics::ExpositionSettings::default();
        FileMetrics {
            histogram_by_kind: d.histogram_by_kind,
            latency_buckets: d.latency_buckets,
        }
    }
}

/// `[state]`: what survives a restart.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileState {
    /// Where raised flags, tightened quotas, baselines and the capacity
    /// history are saved; `""` saves nothing.
    pub file: String,
    /// How often the state is saved (and once more on shutdown).
    pub save_interval: String,
}

impl Default for FileState {
    fn default() -> Self {
        FileState {
            file: String::new(),
            save_interval: format_duration(crate::state::DEFAULT_SAVE_INTERVAL),
        }
    }
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
        let d = CapacitySettings::default();
        FileApi {
            history: format_duration(d.history),
            history_resolution: format_duration(d.history_resolution),
            size_budget_bytes: d.size_budget_bytes,
            history_tenants: d.history_tenants,
            balance_tolerance: d.balance_tolerance,
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
        let d = DetectSettings::default();
        FileDetect {
            interval: format_duration(d.interval),
            baseline_half_life: format_duration(d.baseline_half_life),
            floor_qps: d.floor_qps,
            relax_factor: d.relax_factor,
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
    /// `"cancel"`, `"terminate"` or `"none"` (long_query,
    /// idle_in_transaction and lock_blocker only).
    pub guard: Option<String>,
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
    /// `[ratelimit.callers.<name>]`: tokens bound to tenants. With any,
    /// a check needs the write token or a caller's token, and a caller may
    /// only check tenants its patterns match (403 otherwise).
    pub callers: BTreeMap<String, FileCaller>,
    /// Where the limiters' state lives: `"local"` (this instance) or
    /// `"redis"` (shared by every instance using the same Redis).
    pub backend: String,
    /// `[ratelimit.redis]`: the shared store, used with `backend = "redis"`.
    pub redis: FileRedis,
}

/// `[ratelimit.redis]`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileRedis {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
    pub url: String,
    /// Prefix of every key tenantwatch writes.
    pub key_prefix: String,
    /// Longest wait for one answer from Redis before falling back.
    pub timeout: String,
    /// Connections (each multiplexed) to Redis.
    pub pool_size: usize,
    /// With Redis unreachable: `"local"`, `"open"` or `"closed"`.
    pub fail_mode: String,
    /// Instances sharing the quota: `fail_mode = "local"` divides each
    /// quota by this many.
    pub expected_instances: u32,
    /// This instance's name in shared advice (default: host name and HTTP port).
    pub instance: String,
}

impl std::fmt::Debug for FileRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("FileRedis")
            .field("url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .field("fail_mode", &self.fail_mode)
            .field("expected_instances", &self.expected_instances)
            .field("instance", &self.instance)
            .finish()
    }
}

impl Default for FileRedis {
    fn default() -> Self {
        FileRedis {
            url: String::new(),
            key_prefix: "tenantwatch:rl:".into(),
            timeout: "50ms".into(),
            pool_size: 2,
            fail_mode: "local".into(),
            expected_instances: 1,
            instance: String::new(),
        }
    }
}

/// `[ratelimit.callers.<name>]`: one caller of `POST /v1/ratelimit/check`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCaller {
    /// File holding the caller's bearer token.
    pub token_file: PathBuf,
    /// Regular expressions; the caller may check a tenant any of them
    /// matches (anchor them: `^clinic[0-9]+$`).
    pub tenants: Vec<String>,
}

impl Default for FileRateLimit {
    fn default() -> Self {
        let d = RatePolicy::default();
        FileRateLimit {
            default_qps: d.default.qps,
            default_burst: d.default.burst,
            shadow: d.shadow,
            idle_ttl: format_duration(crate::ratelimit::DEFAULT_IDLE_TTL),
            tiers: BTreeMap::new(),
            tenants: BTreeMap::new(),
            callers: BTreeMap::new(),
            backend: "local".into(),
            redis: FileRedis::default(),
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
    /// How often the per-database detail (schema statistics) goes round;
    /// activity keeps `poll_interval`.
    #[serde(default = "default_stats_interval")]
    pub stats_interval: String,
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
    /// Per-tenant statement figures from `pg_stat_statements`: `"auto"`
    /// (when the extension is installed) or `"off"`.
    #[serde(default = "default_statements")]
    pub statements: String,
    /// Include each top statement's text (at most 200 characters) in the
    /// tenant detail.
    #[serde(default)]
    pub statements_text: bool,
    /// The most connections tenantwatch holds on the target (at least 2):
    /// one for cluster-wide figures, the others visit the databases in turn.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// The group of targets this one belongs to (one per service, say):
    /// every tenant of `tenants.expected_file` must have a schema or a
    /// database here.
    #[serde(default)]
    pub group: Option<String>,
}

fn default_max_sessions() -> usize {
    target_defaults::MAX_SESSIONS
}

fn default_statements() -> String {
    "auto".into()
}

fn default_schema_detail() -> String {
    SchemaDetail::default().as_str().into()
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
            stats_interval: default_stats_interval(),
            size_interval: default_size_interval(),
            statement_timeout: default_statement_timeout(),
            lock_timeout: default_lock_timeout(),
            connect_timeout: default_connect_timeout(),
            databases: Vec::new(),
            max_databases: default_max_databases(),
            size_batch: default_size_batch(),
            schema_detail: default_schema_detail(),
            tls_ca_file: None,
            statements: default_statements(),
            statements_text: false,
            max_sessions: default_max_sessions(),
            group: None,
        }
    }
}

fn default_poll_interval() -> String {
    format_duration(target_defaults::POLL_INTERVAL)
}
fn default_stats_interval() -> String {
    format_duration(target_defaults::STATS_INTERVAL)
}
fn default_size_interval() -> String {
    format_duration(target_defaults::SIZE_INTERVAL)
}
fn default_statement_timeout() -> String {
    format_duration(target_defaults::STATEMENT_TIMEOUT)
}
fn default_lock_timeout() -> String {
    format_duration(target_defaults::LOCK_TIMEOUT)
}
fn default_connect_timeout() -> String {
    format_duration(target_defaults::CONNECT_TIMEOUT)
}
fn default_max_databases() -> usize {
    target_defaults::MAX_DATABASES
}
fn default_size_batch() -> usize {
    target_defaults::SIZE_BATCH
}

/// `[[pgbouncers]]`: one PgBouncer's admin console.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePgBouncer {
    /// Name of the PgBouncer: the `pgbouncer` label. Unique.
    pub name: String,
    /// libpq connection string to the admin console (`dbname=pgbouncer`)
    /// as a user in `stats_users`. Never logged: only host and port are.
    pub dsn: String,
    /// File holding the password (overrides one in the DSN).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password (overrides one in the DSN).
    #[serde(default)]
    pub password_env: Option<String>,
    /// How often the admin console is read.
    #[serde(default = "default_pgbouncer_poll_interval")]
    pub poll_interval: String,
    /// Time allowed to connect, and to answer each command.
    #[serde(default = "default_pgbouncer_connect_timeout")]
    pub connect_timeout: String,
}

impl FilePgBouncer {
    /// An entry with every optional key at its default.
    pub fn new(name: impl Into<String>, dsn: impl Into<String>) -> FilePgBouncer {
        FilePgBouncer {
            name: name.into(),
            dsn: dsn.into(),
            password_file: None,
            password_env: None,
            poll_interval: default_pgbouncer_poll_interval(),
            connect_timeout: default_pgbouncer_connect_timeout(),
        }
    }
}

fn default_pgbouncer_poll_interval() -> String {
    format_duration(crate::collect::pgbouncer::defaults::POLL_INTERVAL)
}
fn default_pgbouncer_connect_timeout() -> String {
    format_duration(crate::collect::pgbouncer::defaults::CONNECT_TIMEOUT)
}

/// `[tenants]`: how activity and schemas are attributed to tenants.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileTenants {
    /// Ordered rules; the first that matches decides.
    pub rules: Vec<FileRule>,
    /// One `tenant,tier` per line: each tenant's tier (for
    /// `tenantwatch_tenant_info`, the API, and `[ratelimit.tiers]` quotas).
    /// Re-read on SIGHUP.
    pub tiers_file: Option<PathBuf>,
    /// One tenant id per line: the tenants that must have a schema or a
    /// database on every target with a `group`. Re-read on SIGHUP.
    pub expected_file: Option<PathBuf>,
    /// Sessions that are maintenance, not a tenant's work (pg_dump,
    /// migration tools, vacuum scripts): never charged to a tenant.
    pub exclude: Vec<FileExclude>,
}

/// `[[tenants.exclude]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileExclude {
    /// `application_name`, `role` or `database`.
    pub source: String,
    /// Regular expression matched against that source.
    pub pattern: String,
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
            tiers_file: None,
            expected_file: None,
            exclude: Vec::new(),
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
    /// File holding the bearer token that `/metrics` and `/api/v1/*`
    /// require (or `TENANTWATCH_READ_TOKEN`). Unset: reads are open.
    pub read_token_file: Option<PathBuf>,
    /// Serve a non-loopback `listen` without a write token, on purpose.
    pub allow_unauthenticated: bool,
    /// Concurrent HTTP connections; connections beyond it are closed at once
    /// and counted, so a connection flood cannot exhaust file descriptors.
    pub max_connections: usize,
    /// Time a client has to send its request headers (slowloris guard).
    pub header_read_timeout: String,
    /// Time a client has to send a request body.
    pub body_read_timeout: String,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_grace: String,
    /// On SIGTERM/SIGINT, how long the listener keeps serving after
    /// `/readyz` turns 503, so load balancers stop routing first.
    pub shutdown_delay: String,
    /// A response that makes no write progress for this long (the client
    /// stopped reading) has its connection closed.
    pub write_timeout: String,
    /// Longest a connection stays open (it then finishes its request).
    pub request_timeout: String,
    /// Heavy requests (exposition encode, API views, large event bodies)
    /// at once; beyond it, 503 with Retry-After.
    pub max_heavy_requests: usize,
    /// A scrape within this long of the last encode reuses its bytes.
    pub metrics_max_age: String,
    /// PEM certificate chain: with `tls_key_file`, the listener serves TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for FileServer {
    fn default() -> Self {
        let d = ServerSettings::default();
        FileServer {
            listen: d.listen.to_string(),
            auth_token_file: None,
            read_token_file: None,
            allow_unauthenticated: d.allow_unauthenticated,
            max_connections: d.max_connections,
            header_read_timeout: format_duration(d.header_read_timeout),
            body_read_timeout: format_duration(d.body_read_timeout),
            shutdown_grace: format_duration(d.shutdown_grace),
            shutdown_delay: format_duration(d.shutdown_delay),
            write_timeout: format_duration(d.write_timeout),
            request_timeout: format_duration(d.request_timeout),
            max_heavy_requests: d.max_heavy_requests,
            metrics_max_age: format_duration(d.metrics_max_age),
            tls_cert_file: None,
            tls_key_file: None,
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
    /// Lowest DogStatsD sample rate accepted; a line sampled more sparsely
    /// is refused (`invalid_sample_rate`), since `1/rate` weighs it.
    pub min_sample_rate: f64,
    /// Most tenants tracked at once; events for more go to `__overflow__`.
    pub max_tenants: usize,
    /// A tenant with no event for this long is forgotten.
    pub tenant_idle_ttl: String,
    /// Window over which `tenantwatch_tenant_db_time_share` is computed.
    pub share_window: String,
    /// Endpoints kept per tenant; more count under `__other__`.
    pub max_endpoints_per_tenant: usize,
    /// Instances (pods) kept; more count under `__other__`.
    pub max_instances: usize,
}

impl Default for FileIngest {
    fn default() -> Self {
        let d = IngestSettings::default();
        FileIngest {
            udp_listen: d.udp_listen.map(|a| a.to_string()).unwrap_or_default(),
            udp_receivers: d.udp_receivers,
            udp_recv_buffer_bytes: d.udp_recv_buffer_bytes,
            max_datagram_bytes: d.max_datagram_bytes,
            max_body_bytes: d.max_body_bytes,
            max_line_bytes: d.max_line_bytes,
            min_sample_rate: d.min_sample_rate,
            max_tenants: d.max_tenants,
            tenant_idle_ttl: format_duration(d.tenant_idle_ttl),
            share_window: format_duration(d.share_window),
            max_endpoints_per_tenant: d.max_endpoints_per_tenant,
            max_instances: d.max_instances,
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
            format: LogFormat::default().as_str().into(),
        }
    }
}

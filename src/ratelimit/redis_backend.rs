//! The Redis backend: GCRA run atomically in Redis by one Lua script (loaded
//! once, called by its SHA), so every instance using the same Redis spends
//! one quota per tenant; and the exchange of rate-limit advice between
//! instances.
//!
//! Redis is an outside service that can be slow or gone. Every call is
//! bounded by `ratelimit.redis.timeout`; the first connection failure or
//! timeout marks the backend down, checks then go straight to the fail mode
//! (no waiting on a dead Redis), and a prober retries every
//! [`PROBE_INTERVAL`] until Redis answers again. An error reply about one
//! key (`WRONGTYPE`, a script error) is that check's alone: it is decided
//! by the fail mode, counted (`response`), and the backend stays up. Every
//! check decided without Redis is counted by why.
//!
//! Keys: tenant ids are chosen by clients, so they live in a namespace of
//! their own, apart from tenantwatch's own keys (a tenant named `advice`
//! once shared the advice set's key):
//!
//! - `<key_prefix>t:<tenant>`: a tenant's GCRA state (a hash), expiring when
//!   its bucket is full again;
//! - `<key_prefix>meta:{advice}`: the set of instances sharing advice, and
//!   `<key_prefix>meta:{advice}:<instance>`: each one's advice. The `{advice}`
//!   hash tag keeps them in one Redis Cluster slot (one `MGET` reads them);
//! - `<key_prefix>meta:{fleet}` and `<key_prefix>meta:{fleet}:<instance>`:
//!   likewise, each replica's window figures for the fleet view
//!   ([`crate::detect::fleet`]).
//!
//! No key of one namespace can be spelled in the other: every tenant key
//! starts `t:` after the prefix, every own key `meta:`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, Script, ServerErrorKind, Value};

/// How often the prober retries a Redis marked down.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// At most one warning per this long about a Redis that keeps failing.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a check does while Redis cannot answer (`ratelimit.redis.fail_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// This instance's own limiter, at quota ÷ `expected_instances`.
    Local,
    /// Allow every check.
    Open,
    /// Deny every check.
    Closed,
}

impl FailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Local => "local",
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        }
    }
}

/// `[ratelimit.redis]`: the shared store, used with `backend = "redis"`.
/// Every key takes effect at start-up.
#[derive(Clone, PartialEq, serde::Deserialize, crate::settings::Reload)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
    pub url: String,
    /// Prefix of every key tenantwatch writes (at most 128 bytes).
    pub key_prefix: String,
    /// Longest wait for one answer from Redis before falling back.
    #[serde(with = "crate::settings::serde_text::duration")]
    pub timeout: Duration,
    /// Connections (each multiplexed) to Redis.
    pub pool_size: usize,
    /// With Redis unreachable: `"local"`, `"open"` or `"closed"`.
    pub fail_mode: FailMode,
    /// Instances sharing the quota: `fail_mode = "local"` divides each
    /// quota by this many.
    pub expected_instances: u32,
    /// This instance's name in shared advice (`""`: host name and HTTP
    /// port, filled in by `config`).
    pub instance: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: String::new(),
            key_prefix: "tenantwatch:rl:".into(),
            timeout: Duration::from_millis(50),
            pool_size: 2,
            fail_mode: FailMode::Local,
            expected_instances: 1,
            instance: String::new(),
        }
    }
}

impl RedisSettings {
    /// Checks each key on its own; the URL is named, never shown.
    pub fn check(&self, p: &mut crate::settings::Problems) {
        if self.url.trim().is_empty() {
            p.fail(
                "ratelimit.redis.url",
                "\"\"",
                "must be set with ratelimit.backend = \"redis\", e.g. \"redis://127.0.0.1:6379\"",
            );
        } else if let Err(err) = ::redis::Client::open(self.url.trim()) {
            p.fail(
                "ratelimit.redis.url",
                "<redacted>",
                format!("not a Redis URL ({:?})", err.kind()),
            );
        }
        p.positive("ratelimit.redis.timeout", self.timeout);
        p.range("ratelimit.redis.pool_size", self.pool_size, 1, 64);
        p.range(
            "ratelimit.redis.expected_instances",
            self.expected_instances as usize,
            1,
            10_000,
        );
        if self.key_prefix.len() > 128 {
            p.fail(
                "ratelimit.redis.key_prefix",
                format!("{:?}", self.key_prefix),
                "must be at most 128 bytes",
            );
        }
        if self.instance.len() > 200 || self.instance.chars().any(char::is_control) {
            p.fail(
                "ratelimit.redis.instance",
                format!("{:?}", self.instance),
                "must be at most 200 printable characters",
            );
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
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

/// The machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`),
/// for the default instance name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "tenantwatch".into())
}

/// Why a check was not decided by Redis: the `error` label of
/// `tenantwatch_ratelimit_backend_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendError {
    /// No answer within `ratelimit.redis.timeout`.
    Timeout,
    /// Could not connect, or the connection broke.
    Connection,
    /// Redis answered with an error or an unexpected reply.
    Response,
    /// Redis was already known to be down: not asked.
    Unavailable,
}

impl BackendError {
    pub const ALL: [BackendError; 4] = [
        BackendError::Timeout,
        BackendError::Connection,
        BackendError::Response,
        BackendError::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendError::Timeout => "timeout",
            BackendError::Connection => "connection",
            BackendError::Response => "response",
            BackendError::Unavailable => "unavailable",
        }
    }

    fn of(err: &RedisError) -> BackendError {
        if err.is_timeout() {
            BackendError::Timeout
        } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
            BackendError::Connection
        } else {
            BackendError::Response
        }
    }
}

/// One GCRA test to run in Redis, in the local limiter's units.
#[derive(Debug, Clone, Copy)]
pub struct GcraCall {
    pub emission_interval_ns: u64,
    pub tolerance_ns: u64,
    pub additional_ns: u64,
}

/// Redis's answer to one GCRA test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcraReply {
    Allowed { remaining: u32 },
    NotUntil(Duration),
}

/// A batch of GCRA tests answered by Redis: each test's reply, or its own
/// error (`Response`: an error reply about its key).
pub type GcraReplies = Vec<Result<GcraReply, BackendError>>;

/// The connections, the script, and whether Redis is answering.
pub struct RedisBackend {
    settings: RedisSettings,
    connections: Vec<ConnectionManager>,
    /// The exchanges of advice and window figures: a connection of their
    /// own, so a large reply (about 0.3 MB per replica at 10,000 tenants)
    /// never holds up a check queued behind it.
    exchange_connection: ConnectionManager,
    next: AtomicUsize,
    gcra: Script,
    up: Arc<AtomicBool>,
    errors: [AtomicU64; 4],
    last_warning: Mutex<Option<Instant>>,
    /// The last warning about an error reply (Redis up, a key or the
    /// script wrong): logged at most once per [`LOG_EVERY`].
    last_reply_warning: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("settings", &self.settings)
            .field("up", &self.is_up())
            .finish()
    }
}

impl RedisBackend {
    /// Prepares the connections; they connect on first use, so a Redis
    /// down at start-up does not stop the daemon (checks fall back).
    pub fn new(settings: RedisSettings) -> Result<RedisBackend, RedisError> {
        let client = redis::Client::open(settings.url.as_str())?;
        // Reconnect quickly and keep trying: the prober asks every 100 ms,
        // and a check never waits longer than the timeout anyway.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(settings.timeout))
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_number_of_retries(2);
        let connections = (0..settings.pool_size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let exchange_config = config.set_response_timeout(Some(exchange_timeout(&settings)));
        let exchange_connection = ConnectionManager::new_lazy_with_config(client, exchange_config)?;
        Ok(RedisBackend {
            settings,
            connections,
            exchange_connection,
            next: AtomicUsize::new(0),
            gcra: Script::new(include_str!("gcra.lua")),
            up: Arc::new(AtomicBool::new(true)),
            errors: Default::default(),
            last_warning: Mutex::new(None),
            last_reply_warning: Mutex::new(None),
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Whether the last call to Redis succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Checks not decided by Redis since start, by why.
    pub fn errors(&self) -> [(BackendError, u64); 4] {
        BackendError::ALL.map(|e| (e, self.errors[e as usize].load(Ordering::Relaxed)))
    }

    /// Counts `checks` decisions made without Redis because of `error`.
    pub fn count_fallback(&self, error: BackendError, checks: usize) {
        self.errors[error as usize].fetch_add(checks as u64, Ordering::Relaxed);
    }

    fn connection(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[i].clone()
    }

    /// A tenant's GCRA key: in the tenants' namespace, apart from ours.
    pub fn tenant_key(&self, tenant: &str) -> String {
        format!("{}t:{tenant}", self.settings.key_prefix)
    }

    /// The set of instances sharing advice; each one's advice is under
    /// this key, `:`, its name (one hash tag: one Cluster slot).
    pub fn advice_key(&self) -> String {
        format!("{}meta:{{advice}}", self.settings.key_prefix)
    }

    /// Runs one GCRA test per call in one round trip (a pipeline). The
    /// batch fails as a whole (and the backend is marked down) only when
    /// Redis cannot be reached or does not answer in time; an error reply
    /// fails only its own test, or the batch without marking it down if
    /// the replies cannot be told apart.
    pub async fn gcra(&self, calls: &[(&str, GcraCall)]) -> Result<GcraReplies, BackendError> {
        if !self.is_up() {
            return Err(BackendError::Unavailable);
        }
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let invocations: Vec<_> = calls
            .iter()
            .map(|(tenant, call)| {
                let mut invocation = self.gcra.key(self.tenant_key(tenant));
                invocation
                    .arg(call.emission_interval_ns)
                    .arg(call.tolerance_ns)
                    .arg(call.additional_ns);
                invocation
            })
            .collect();
        // Each script call's reply on its own: one key's error reply
        // (WRONGTYPE) is that call's, not the batch's.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for invocation in &invocations {
            pipe.invoke_script(invocation);
        }
        let mut connection = self.connection();
        let run = async {
            let replies = pipe.query_async::<Vec<Value>>(&mut connection).await?;
            if replies.iter().any(is_no_script) {
                // Redis restarted or flushed its scripts: load, retry once.
                self.gcra.load_async(&mut connection).await?;
                return pipe.query_async::<Vec<Value>>(&mut connection).await;
            }
            Ok(replies)
        };
        let replies = match tokio::time::timeout(self.settings.timeout, run).await {
            Ok(Ok(replies)) if replies.len() == calls.len() => replies,
            Ok(Ok(_)) => return Err(self.reply_error("wrong number of replies")),
            Ok(Err(err)) => {
                return Err(match BackendError::of(&err) {
                    error @ (BackendError::Timeout | BackendError::Connection) => {
                        self.failed(error, &err.to_string())
                    }
                    BackendError::Response | BackendError::Unavailable => {
                        self.reply_error(&err.to_string())
                    }
                });
            }
            Err(_) => return Err(self.failed(BackendError::Timeout, "no answer in time")),
        };
        Ok(replies
            .into_iter()
            .zip(calls)
            .map(
                |(reply, (tenant, _))| match <(i64, i64)>::from_redis_value(reply) {
                    Ok((allowed, n)) => {
                        let n = u64::try_from(n).unwrap_or(0);
                        Ok(if allowed == 1 {
                            GcraReply::Allowed {
                                remaining: u32::try_from(n).unwrap_or(u32::MAX),
                            }
                        } else {
                            GcraReply::NotUntil(Duration::from_nanos(n))
                        })
                    }
                    Err(err) => {
                        let detail = format!("tenant {tenant}: {err}");
                        Err(self.reply_error(&detail))
                    }
                },
            )
            .collect())
    }

    /// Redis answered, with an error about a key or the script: logged at
    /// most once per [`LOG_EVERY`]; the backend stays up (the caller counts
    /// the checks it decides without Redis).
    fn reply_error(&self, detail: &str) -> BackendError {
        if log_due(&self.last_reply_warning) {
            tracing::warn!(
                error = BackendError::Response.as_str(),
                detail,
                fail_mode = self.settings.fail_mode.as_str(),
                "Redis rate-limit backend answered an error; that check falls back"
            );
        }
        BackendError::Response
    }

    /// Marks Redis down (starting the prober on the transition) and logs,
    /// at most once per [`LOG_EVERY`].
    fn failed(&self, error: BackendError, detail: &str) -> BackendError {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error = error.as_str(),
                detail,
                fail_mode = self.settings.fail_mode.as_str(),
                "Redis rate-limit backend failed; checks fall back until it answers again"
            );
            *self
                .last_warning
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            self.spawn_prober();
        } else {
            if log_due(&self.last_warning) {
                tracing::warn!(
                    error = error.as_str(),
                    detail,
                    "Redis rate-limit backend still failing"
                );
            }
        }
        error
    }

    /// Retries every [`PROBE_INTERVAL`] until Redis answers on every
    /// connection (loading the script, so the first check after recovery
    /// needs no reload), then marks it up.
    fn spawn_prober(&self) {
        let up = self.up.clone();
        let script = self.gcra.clone();
        let mut connections = self.connections.clone();
        let timeout = self.settings.timeout.max(Duration::from_millis(250));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (a synchronous caller): the next check retries.
            self.up.store(true, Ordering::Relaxed);
            return;
        };
        runtime.spawn(async move {
            let down_since = Instant::now();
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                if Arc::strong_count(&up) == 1 {
                    return; // The backend is gone (shutdown).
                }
                let mut answered = 0;
                for connection in &mut connections {
                    let load = script.load_async(connection);
                    if let Ok(Ok(_)) = tokio::time::timeout(timeout, load).await {
                        answered += 1;
                    }
                }
                if answered == connections.len() {
                    up.store(true, Ordering::Relaxed);
                    tracing::info!(
                        down_for = ?down_since.elapsed(),
                        "Redis rate-limit backend answers again"
                    );
                    return;
                }
            }
        });
    }

    /// Connects every check connection and loads the script on it, so the
    /// first checks need no connection set-up within their short timeout
    /// (readiness waits for the detector's first evaluation, which calls
    /// this first). A connection that does not answer is left to connect
    /// on first use, as before.
    pub async fn warm_up(&self) {
        let timeout = exchange_timeout(&self.settings);
        for connection in &self.connections {
            let mut connection = connection.clone();
            let load = self.gcra.load_async(&mut connection);
            let _ = tokio::time::timeout(timeout, load).await;
        }
    }

    /// Publishes this instance's advice (opaque JSON, kept for `ttl`) and
    /// returns every live instance's, this one's included: `(instance,
    /// json)`. Instances whose advice expired are forgotten.
    pub async fn exchange_advice(
        &self,
        own: &str,
        ttl: Duration,
    ) -> Result<Vec<(String, String)>, BackendError> {
        let shared = self
            .exchange(&self.advice_key(), own.as_bytes(), ttl)
            .await?;
        Ok(shared
            .into_iter()
            .map(|(name, bytes)| (name, String::from_utf8_lossy(&bytes).into_owned()))
            .collect())
    }

    /// The set of replicas sharing window figures (the fleet view); each
    /// one's figures are under this key, `:`, its name.
    pub fn figures_key(&self) -> String {
        format!("{}meta:{{fleet}}", self.settings.key_prefix)
    }

    /// Publishes this replica's encoded window figures (kept for `ttl`) and
    /// returns every live replica's, this one's included.
    pub async fn exchange_figures(
        &self,
        own: &[u8],
        ttl: Duration,
    ) -> Result<Vec<(String, Vec<u8>)>, BackendError> {
        self.exchange(&self.figures_key(), own, ttl).await
    }

    /// The exchange both advice and figures go through: `own` is written
    /// under `<set>:<instance>` for `ttl` and the instance added to `set`
    /// (one round trip), then every member's value is read with one `MGET`
    /// (a second); members whose value expired leave the set (a rare
    /// third).
    async fn exchange(
        &self,
        set: &str,
        own: &[u8],
        ttl: Duration,
    ) -> Result<Vec<(String, Vec<u8>)>, BackendError> {
        if !self.is_up() {
            self.count_fallback(BackendError::Unavailable, 1);
            return Err(BackendError::Unavailable);
        }
        let own_key = format!("{set}:{}", self.settings.instance);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut connection = self.exchange_connection.clone();
        let run = async {
            let (names,): (Vec<String>,) = redis::pipe()
                .cmd("SET")
                .arg(&own_key)
                .arg(own)
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .cmd("SADD")
                .arg(set)
                .arg(&self.settings.instance)
                .ignore()
                // The set goes too once no instance has published for a TTL.
                .cmd("PEXPIRE")
                .arg(set)
                .arg(ttl_ms)
                .ignore()
                .cmd("SMEMBERS")
                .arg(set)
                .query_async(&mut connection)
                .await?;
            let keys: Vec<String> = names.iter().map(|name| format!("{set}:{name}")).collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut connection)
                .await?;
            let (live, gone): (Vec<_>, Vec<_>) = names
                .into_iter()
                .zip(values)
                .partition(|(_, value)| value.is_some());
            if !gone.is_empty() {
                let gone: Vec<String> = gone.into_iter().map(|(name, _)| name).collect();
                redis::cmd("SREM")
                    .arg(set)
                    .arg(gone)
                    .exec_async(&mut connection)
                    .await?;
            }
            Ok::<_, RedisError>(
                live.into_iter()
                    .filter_map(|(name, value)| Some((name, value?)))
                    .collect(),
            )
        };
        // A slow or failed exchange is not a dead Redis: it is counted and
        // logged, and this evaluation judges alone, but checks carry on
        // (their own calls mark Redis down when it is).
        let failure = match tokio::time::timeout(exchange_timeout(&self.settings), run).await {
            Ok(Ok(shared)) => return Ok(shared),
            Ok(Err(err)) => {
                let error = BackendError::of(&err);
                self.exchange_failed(error, &err.to_string())
            }
            Err(_) => self.exchange_failed(BackendError::Timeout, "no answer in time"),
        };
        self.count_fallback(failure, 1);
        Err(failure)
    }

    /// Logs a failed exchange, at most once per [`LOG_EVERY`].
    fn exchange_failed(&self, error: BackendError, detail: &str) -> BackendError {
        if log_due(&self.last_reply_warning) {
            tracing::warn!(
                error = error.as_str(),
                detail,
                "Exchange of advice and window figures through Redis failed; judging alone until it answers"
            );
        }
        error
    }
}

/// Whether a warning kept at most once per [`LOG_EVERY`] in `last` is due
/// now; if so, `last` becomes now.
fn log_due(last: &std::sync::Mutex<Option<Instant>>) -> bool {
    let mut last = last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let due = last.is_none_or(|at| at.elapsed() >= LOG_EVERY);
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// The longest an exchange of advice or figures may take: two round trips
/// and a rare third, each carrying up to a few megabytes, so well above
/// the checks' `ratelimit.redis.timeout`.
fn exchange_timeout(settings: &RedisSettings) -> Duration {
    (settings.timeout * 3).max(Duration::from_secs(2))
}

/// A pipeline reply saying the script is not loaded.
fn is_no_script(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(err) if err.kind() == Some(ServerErrorKind::NoScript))
}

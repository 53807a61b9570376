//! Rate-limit decisions per tenant, with GCRA (the generic cell rate
//! algorithm, as governor, redis_rate and envoy's limiters run it).
//!
//! Each tenant has one theoretical arrival time (TAT); its effective quota
//! is the per-tenant override, else its tier, else the default, tightened by
//! the detector's advice while the tenant is flagged. A quota change (advice,
//! reload) keeps what the tenant has spent, rescaled to the new rate, so a
//! tightened tenant gets no fresh burst. The
//! arithmetic is governor's, to the nanosecond, so answers are unchanged.
//! Limiters live in a sharded map bounded by `max_tenants`: a new tenant
//! beyond it evicts the least recently used limiter of its shard, and idle
//! ones are pruned, so 100,000 distinct keys cannot grow memory without
//! bound and no tenant shares another's bucket. Shadow mode (global or per
//! tier) always allows but counts what would have been denied.
//!
//! With `ratelimit.backend = "redis"` (`redis_backend`) the same GCRA runs
//! in Redis, shared by every instance; this map then keeps the decision
//! counts and, while Redis cannot answer, the fallback limiters.

use std::borrow::Cow;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use std::time::Duration;

use std::time::Instant;

mod redis_backend;
mod settings;

pub use settings::{Backend, CallerSettings, RateLimitSettings, RlsSettings, TierSettings};

pub use redis_backend::{
    BackendError, FailMode, GcraCall, GcraReply, RedisBackend, RedisSettings, host_name,
};

const SHARDS: usize = 16;

/// Highest quota a policy may give, in checks per second: one cell per
/// nanosecond, the resolution of the limiter's clock.
pub const MAX_QPS: f64 = 1e9;

/// A quota: sustained rate and burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub qps: f64,
    pub burst: u32,
}

impl Rate {
    /// Nanoseconds between two cells (`T` of GCRA), at least 1.
    pub fn emission_interval_ns(self) -> u64 {
        ((1e9 / self.qps.clamp(0.001, MAX_QPS)) as u64).max(1)
    }

    /// How far ahead of now the TAT may run (`tau`): one interval per cell
    /// of burst beyond the first (a full bucket spends `burst` cells at once).
    pub fn tolerance_ns(self) -> u64 {
        self.emission_interval_ns()
            .saturating_mul(u64::from(self.burst.max(1) - 1))
    }

    /// How long an empty bucket takes to fill: one interval per cell.
    fn refill(self) -> Duration {
        Duration::from_nanos(
            self.emission_interval_ns()
                .saturating_mul(u64::from(self.burst.max(1))),
        )
    }
}

/// One tenant's GCRA state: its theoretical arrival time, in nanoseconds
/// since the limiter's epoch (0 = never used). Public as the reference the
/// Redis script (`gcra.lua`) is tested against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gcra {
    tat: u64,
}

/// The outcome of one GCRA test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; this many cells of burst remain.
    Allowed { remaining: u32 },
    /// Denied; retry after this long.
    NotUntil(Duration),
    /// The cost exceeds the whole burst: never allowed.
    TooCostly,
}

impl Gcra {
    /// Carries the state over to a new quota: the cells already spent
    /// beyond `now` stay spent, counted in the new rate's intervals. A
    /// drained bucket stays drained (no fresh burst when advice tightens or
    /// relaxes), and the wait scales with the new rate.
    pub fn rescale(&mut self, from: Rate, to: Rate, now: u64) {
        // Only the interval matters; skipping an unchanged one also keeps
        // the float round trip from moving the TAT by a nanosecond.
        if self.tat > now && from.emission_interval_ns() != to.emission_interval_ns() {
            let cells = (self.tat - now) as f64 / from.emission_interval_ns() as f64;
            let ahead = cells * to.emission_interval_ns() as f64;
            self.tat = now.saturating_add(ahead.min(u64::MAX as f64 / 2.0) as u64);
        }
    }

    /// The cost's cells beyond the first, in nanoseconds; `None` when the
    /// cost exceeds the whole burst (never allowed, whatever the state).
    fn additional_ns(rate: Rate, cost: NonZeroU32) -> Option<u64> {
        let additional = rate
            .emission_interval_ns()
            .saturating_mul(u64::from(cost.get() - 1));
        (additional <= rate.tolerance_ns()).then_some(additional)
    }

    /// Tests `cost` cells at `now` and, when allowed, spends them.
    pub fn check(&mut self, rate: Rate, cost: NonZeroU32, now: u64) -> Verdict {
        let t = rate.emission_interval_ns();
        let tau = rate.tolerance_ns();
        let Some(additional) = Self::additional_ns(rate, cost) else {
            return Verdict::TooCostly;
        };
        let tat = if self.tat == 0 { now } else { self.tat };
        let earliest = tat.saturating_add(additional).saturating_sub(tau);
        if now < earliest {
            return Verdict::NotUntil(Duration::from_nanos(earliest - now));
        }
        let next = tat.max(now).saturating_add(t).saturating_add(additional);
        self.tat = next;
        // governor's StateSnapshot::remaining_burst_capacity.
        let measured = now.saturating_add(t);
        let remaining = (measured.saturating_add(tau).saturating_sub(next)).min(tau) / t;
        Verdict::Allowed {
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        }
    }
}

/// A tier of `[ratelimit.tiers.<name>]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub rate: Rate,
    pub shadow: bool,
}

/// `[ratelimit.tenants.<tenant>]`: a tier, or a quota of its own (keys
/// left out come from the tier, else the default).
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantOverride {
    pub tier: Option<String>,
    pub qps: Option<f64>,
    pub burst: Option<u32>,
}

/// The configured quotas.
#[derive(Debug, Clone, PartialEq)]
pub struct RatePolicy {
    pub default: Rate,
    pub shadow: bool,
    pub tiers: HashMap<String, Tier>,
    pub tenants: HashMap<String, TenantOverride>,
    /// Tenant -> tier from `tenants.tiers_file`, below the overrides'
    /// `tier`. A tier without `[ratelimit.tiers]` quotas is a label only.
    pub tenant_tiers: HashMap<String, String>,
}

impl Default for RatePolicy {
    fn default() -> Self {
        RatePolicy {
            default: Rate {
                qps: 100.0,
                burst: 200,
            },
            shadow: false,
            tiers: HashMap::new(),
            tenants: HashMap::new(),
            tenant_tiers: HashMap::new(),
        }
    }
}

/// A caller of `POST /v1/ratelimit/check` bound to some tenants
/// (`[ratelimit.callers.<name>]`): a router or application may spend only
/// its own tenants' quotas.
#[derive(Clone)]
pub struct Caller {
    pub name: String,
    /// The caller's bearer token; compared in constant time by the listener,
    /// never printed.
    pub token: String,
    pub tenants: Vec<regex::Regex>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("tenants", &self.tenants)
            .finish()
    }
}

impl Caller {
    pub fn may_check(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|pattern| pattern.is_match(tenant))
    }
}

/// A tenant's quota before advice: the rate, the policy name and whether
/// decisions are shadowed.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseQuota {
    pub rate: Rate,
    pub policy: Cow<'static, str>,
    pub shadow: bool,
}

impl RatePolicy {
    /// The tenant's tier: its override's, else the tiers file's.
    pub fn tier_of(&self, tenant: &str) -> Option<&str> {
        self.tenants
            .get(tenant)
            .and_then(|o| o.tier.as_deref())
            .or_else(|| self.tenant_tiers.get(tenant).map(String::as_str))
    }

    /// Every tenant with a tier, and the tier, by tenant.
    pub fn tiers_by_tenant(&self) -> std::collections::BTreeMap<&str, &str> {
        let mut tiers: std::collections::BTreeMap<&str, &str> = self
            .tenant_tiers
            .iter()
            .map(|(t, tier)| (t.as_str(), tier.as_str()))
            .collect();
        for (tenant, over) in &self.tenants {
            if let Some(tier) = &over.tier {
                tiers.insert(tenant, tier);
            }
        }
        tiers
    }

    pub fn base_quota(&self, tenant: &str) -> BaseQuota {
        self.base_quota_in(tenant, None)
    }

    /// [`RatePolicy::base_quota`], with `tier` (a gateway's claim) as the
    /// tier of a tenant the configuration gives none; ignored when it names
    /// no tier of `[ratelimit.tiers]`.
    pub fn base_quota_in(&self, tenant: &str, tier: Option<&str>) -> BaseQuota {
        let over = self.tenants.get(tenant);
        let claimed = tier.and_then(|name| self.tiers.get_key_value(name).map(|(k, _)| k.as_str()));
        let tier_name = self.tier_of(tenant).or(claimed);
        let tier = tier_name.and_then(|name| self.tiers.get(name));
        let mut rate = tier.map(|t| t.rate).unwrap_or(self.default);
        if let Some(o) = over {
            rate.qps = o.qps.unwrap_or(rate.qps);
            rate.burst = o.burst.unwrap_or(rate.burst);
        }
        let policy = match (
            over.is_some_and(|o| o.qps.is_some() || o.burst.is_some()),
            tier_name,
        ) {
            (true, _) => Cow::Owned(format!("tenant:{tenant}")),
            (false, Some(name)) if tier.is_some() => Cow::Owned(format!("tier:{name}")),
            // The common case allocates nothing: checks are a hot path.
            _ => Cow::Borrowed("default"),
        };
        BaseQuota {
            rate,
            policy,
            shadow: self.shadow || tier.is_some_and(|t| t.shadow),
        }
    }
}

/// What `POST /v1/ratelimit/check` answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What the caller should do (always true in shadow mode).
    pub allowed: bool,
    /// Whether the limiter itself said no (differs from `!allowed` in shadow mode).
    pub limited: bool,
    pub rate: Rate,
    pub remaining: u32,
    pub retry_after: Duration,
    pub policy: Cow<'static, str>,
    pub reason: &'static str,
    /// Who decided: `"redis"` or `"local"` (this instance).
    pub backend: &'static str,
}

/// One check: a tenant, its cost and, from a gateway, a claimed tier
/// ([`RatePolicy::base_quota_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask<'a> {
    pub tenant: &'a str,
    pub cost: u32,
    pub tier: Option<&'a str>,
}

impl<'a> Ask<'a> {
    pub fn new(tenant: &'a str, cost: u32) -> Ask<'a> {
        Ask {
            tenant,
            cost,
            tier: None,
        }
    }
}

/// How a check reached the limiter: the `protocol` label of
/// `tenantwatch_ratelimit_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /v1/ratelimit/check`.
    Http,
    /// Envoy's `ShouldRateLimit` over gRPC (`ratelimit.grpc_listen`).
    Grpc,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Http, Protocol::Grpc];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Why a `ShouldRateLimit` request was refused with a gRPC status instead
/// of answered: the `reason` label of
/// `tenantwatch_ratelimit_grpc_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcRefusal {
    /// No token, or an unknown one, while tokens are configured.
    Unauthenticated,
    /// A caller's token, for a tenant it is not bound to.
    Forbidden,
    /// A `domain` other than `ratelimit.rls.domain`.
    UnknownDomain,
    /// No descriptor, too many, a bad tenant id or cost.
    Invalid,
    /// Beyond `server.max_connections`, or the TLS handshake failed or
    /// timed out: the connection was closed.
    Connection,
}

impl GrpcRefusal {
    pub const ALL: [GrpcRefusal; 5] = [
        GrpcRefusal::Unauthenticated,
        GrpcRefusal::Forbidden,
        GrpcRefusal::UnknownDomain,
        GrpcRefusal::Invalid,
        GrpcRefusal::Connection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GrpcRefusal::Unauthenticated => "unauthenticated",
            GrpcRefusal::Forbidden => "forbidden",
            GrpcRefusal::UnknownDomain => "unknown_domain",
            GrpcRefusal::Invalid => "invalid",
            GrpcRefusal::Connection => "connection",
        }
    }
}

/// What the gRPC service counts besides decisions.
#[derive(Debug, Default)]
pub struct GrpcCounts {
    refused: [AtomicU64; GrpcRefusal::ALL.len()],
    untenanted: AtomicU64,
}

impl GrpcCounts {
    pub fn refused(&self, reason: GrpcRefusal) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A descriptor without the tenant entry, answered `OK` unspent.
    pub fn untenanted(&self) {
        self.untenanted.fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals by reason, for the exposition.
    pub fn refusals(&self) -> [(GrpcRefusal, u64); GrpcRefusal::ALL.len()] {
        GrpcRefusal::ALL.map(|r| (r, self.refused[r as usize].load(Ordering::Relaxed)))
    }

    pub fn untenanted_descriptors(&self) -> u64 {
        self.untenanted.load(Ordering::Relaxed)
    }
}

/// Decision counters of one tenant through one protocol.
#[derive(Debug, Default)]
pub struct ProtocolCounts {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub shadow_denied: AtomicU64,
}

impl ProtocolCounts {
    /// Whether any decision was counted here.
    pub fn any(&self) -> bool {
        [&self.allowed, &self.denied, &self.shadow_denied]
            .iter()
            .any(|c| c.load(Ordering::Relaxed) > 0)
    }
}

/// Decision counters per tenant, by protocol.
#[derive(Debug, Default)]
pub struct DecisionCounts {
    by_protocol: [ProtocolCounts; 2],
}

impl DecisionCounts {
    pub fn of(&self, protocol: Protocol) -> &ProtocolCounts {
        match protocol {
            Protocol::Http => &self.by_protocol[0],
            Protocol::Grpc => &self.by_protocol[1],
        }
    }
}

struct Entry {
    gcra: Gcra,
    rate: Rate,
    counts: Arc<DecisionCounts>,
    /// Nanoseconds since the epoch of the last check.
    last_used: u64,
}

/// One shard's limiters. foldhash, seeded per map at random: several
/// times faster than SipHash on tenant ids, and the shard's size is capped
/// by `max_tenants` besides.
type LimiterMap = HashMap<Box<str>, Entry, foldhash::fast::RandomState>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The limiters of every tenant.
pub struct RateLimits {
    shards: Vec<Mutex<LimiterMap>>,
    /// Read on every check, replaced on reload: an `ArcSwap`, so readers
    /// never write a shared cache line (an `RwLock` and an `Arc` clone per
    /// check did, on every core at once).
    policy: ArcSwap<RatePolicy>,
    /// Effective qps for tenants the detector tightened.
    advice: ArcSwap<HashMap<String, f64>>,
    /// Time 0 of every limiter's clock.
    epoch: Instant,
    max_tenants: usize,
    idle_ttl: Duration,
    /// Limiters in all shards.
    entries: std::sync::atomic::AtomicUsize,
    /// Limiters evicted for a new tenant.
    evicted: AtomicU64,
    /// The shared store, with `ratelimit.backend = "redis"`.
    redis: Option<RedisBackend>,
    /// The gRPC service's refusals and untenanted descriptors.
    grpc: GrpcCounts,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("tracked", &self.tracked())
            .finish()
    }
}

impl RateLimits {
    pub fn new(policy: RatePolicy, max_tenants: usize, idle_ttl: Duration) -> RateLimits {
        RateLimits {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            policy: ArcSwap::from_pointee(policy),
            advice: ArcSwap::from_pointee(HashMap::new()),
            epoch: Instant::now(),
            max_tenants,
            idle_ttl,
            entries: Default::default(),
            evicted: AtomicU64::new(0),
            redis: None,
            grpc: GrpcCounts::default(),
        }
    }

    /// Decides in Redis from now on ([`RateLimits::decide`]).
    pub fn with_redis(mut self, backend: RedisBackend) -> RateLimits {
        self.redis = Some(backend);
        self
    }

    /// What the gRPC service counts besides decisions.
    pub fn grpc(&self) -> &GrpcCounts {
        &self.grpc
    }

    /// The Redis backend, when configured.
    pub fn redis(&self) -> Option<&RedisBackend> {
        self.redis.as_ref()
    }

    pub fn policy(&self) -> Arc<RatePolicy> {
        self.policy.load_full()
    }

    /// Replaces the quotas (SIGHUP); limiters pick the new ones up on their
    /// next check.
    pub fn set_policy(&self, policy: RatePolicy) {
        self.policy.store(Arc::new(policy));
    }

    /// Replaces the detector's advice: tenant -> effective qps.
    pub fn set_advice(&self, advice: HashMap<String, f64>) {
        self.advice.store(Arc::new(advice));
    }

    pub fn advice(&self) -> Arc<HashMap<String, f64>> {
        self.advice.load_full()
    }

    /// The quota a tenant gets now: its base quota, tightened by advice.
    pub fn effective(&self, tenant: &str) -> (BaseQuota, Rate) {
        self.effective_in(tenant, None)
    }

    /// [`RateLimits::effective`] with a claimed tier
    /// ([`RatePolicy::base_quota_in`]).
    fn effective_in(&self, tenant: &str, tier: Option<&str>) -> (BaseQuota, Rate) {
        let base = self.policy.load().base_quota_in(tenant, tier);
        let mut rate = base.rate;
        if let Some(qps) = self.advice.load().get(tenant).copied()
            && qps < rate.qps
        {
            // Keep the burst's length in time: scale it with the rate.
            rate.burst = ((rate.burst as f64 * qps / rate.qps).round() as u32).max(1);
            rate.qps = qps;
        }
        (base, rate)
    }

    fn shard(&self, tenant: &str) -> &Mutex<LimiterMap> {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = foldhash::fast::FixedState::with_seed(0x7465_6e61_6e74).build_hasher();
        hasher.write(tenant.as_bytes());
        &self.shards[hasher.finish() as usize % SHARDS]
    }

    fn tracked(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Nanoseconds since the epoch, never 0 (0 means "never used").
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Decides whether `tenant` may spend `cost` units now, with this
    /// instance's own limiter.
    /// Counted as an HTTP check.
    pub fn check(&self, tenant: &str, cost: u32) -> Decision {
        self.check_via(Ask::new(tenant, cost), Protocol::Http)
    }

    fn check_via(&self, ask: Ask<'_>, protocol: Protocol) -> Decision {
        let (base, rate) = self.effective_in(ask.tenant, ask.tier);
        self.decide_locally(ask.tenant, ask.cost, base, rate, "local", protocol)
    }

    /// Decides one check, as [`RateLimits::decide`] does.
    pub async fn decide_one(&self, tenant: &str, cost: u32, protocol: Protocol) -> Decision {
        let ask = Ask::new(tenant, cost);
        if self.redis.is_none() {
            return self.check_via(ask, protocol);
        }
        // One decision per check, always: the local one is never reached.
        match self.decide(&[ask], protocol).await.pop() {
            Some(decision) => decision,
            None => self.check_via(ask, protocol),
        }
    }

    /// Decides each `(tenant, cost)`: in Redis (one round trip for all)
    /// with the Redis backend, else as [`RateLimits::check`]. While Redis
    /// cannot answer, `ratelimit.redis.fail_mode` decides. Each decision
    /// is counted under `protocol`.
    pub async fn decide(&self, asks: &[Ask<'_>], protocol: Protocol) -> Vec<Decision> {
        let Some(redis) = &self.redis else {
            return asks
                .iter()
                .map(|&ask| self.check_via(ask, protocol))
                .collect();
        };
        let quotas: Vec<(BaseQuota, Rate)> = asks
            .iter()
            .map(|ask| self.effective_in(ask.tenant, ask.tier))
            .collect();
        let checks: Vec<(&str, u32)> = asks.iter().map(|a| (a.tenant, a.cost)).collect();
        // A cost above the burst is refused without asking Redis.
        let additional: Vec<Option<u64>> = checks
            .iter()
            .zip(&quotas)
            .map(|(&(_, cost), &(_, rate))| Gcra::additional_ns(rate, nonzero(cost)))
            .collect();
        let calls: Vec<(&str, GcraCall)> = checks
            .iter()
            .zip(&quotas)
            .zip(&additional)
            .filter_map(|((&(tenant, _), &(_, rate)), additional)| {
                Some((
                    tenant,
                    GcraCall {
                        emission_interval_ns: rate.emission_interval_ns(),
                        tolerance_ns: rate.tolerance_ns(),
                        additional_ns: (*additional)?,
                    },
                ))
            })
            .collect();
        let settings = redis.settings();
        match redis.gcra(&calls).await {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                checks
                    .iter()
                    .zip(quotas)
                    .zip(additional)
                    .map(|((&(tenant, cost), (base, rate)), additional)| {
                        let verdict = match additional.and_then(|_| replies.next()) {
                            None => Verdict::TooCostly,
                            Some(Ok(GcraReply::Allowed { remaining })) => {
                                Verdict::Allowed { remaining }
                            }
                            Some(Ok(GcraReply::NotUntil(wait))) => Verdict::NotUntil(wait),
                            // An error reply about this tenant's key: this
                            // check alone is decided without Redis.
                            Some(Err(error)) => {
                                redis.count_fallback(error, 1);
                                return self.fall_back(
                                    settings, error, tenant, cost, base, rate, protocol,
                                );
                            }
                        };
                        self.record(tenant, base, rate, verdict, "redis", protocol)
                    })
                    .collect()
            }
            Err(error) => {
                redis.count_fallback(error, checks.len());
                checks
                    .iter()
                    .zip(quotas)
                    .map(|(&(tenant, cost), (base, rate))| {
                        self.fall_back(settings, error, tenant, cost, base, rate, protocol)
                    })
                    .collect()
            }
        }
    }

    /// A check Redis could not decide (because of `error`), as `fail_mode`
    /// says.
    #[allow(clippy::too_many_arguments)]
    fn fall_back(
        &self,
        settings: &RedisSettings,
        error: BackendError,
        tenant: &str,
        cost: u32,
        base: BaseQuota,
        rate: Rate,
        protocol: Protocol,
    ) -> Decision {
        match settings.fail_mode {
            FailMode::Local => {
                // This instance's share of the quota, burst included.
                let instances = f64::from(settings.expected_instances.max(1));
                let share = Rate {
                    qps: rate.qps / instances,
                    burst: ((f64::from(rate.burst) / instances).round() as u32).max(1),
                };
                self.decide_locally(tenant, cost, base, share, "local", protocol)
            }
            FailMode::Open => Decision {
                reason: match error {
                    BackendError::Response => {
                        "rate-limit backend error for this check (fail_mode open: allowed)"
                    }
                    BackendError::Timeout
                    | BackendError::Connection
                    | BackendError::Unavailable => {
                        "rate-limit backend unavailable (fail_mode open: allowed)"
                    }
                },
                ..self.record(
                    tenant,
                    base,
                    rate,
                    Verdict::Allowed { remaining: 0 },
                    "local",
                    protocol,
                )
            },
            FailMode::Closed => {
                let wait = Verdict::NotUntil(Duration::from_secs(1));
                Decision {
                    reason: match error {
                        BackendError::Response => {
                            "rate-limit backend error for this check (fail_mode closed: denied)"
                        }
                        BackendError::Timeout
                        | BackendError::Connection
                        | BackendError::Unavailable => {
                            "rate-limit backend unavailable (fail_mode closed: denied)"
                        }
                    },
                    ..self.record(tenant, base, rate, wait, "local", protocol)
                }
            }
        }
    }

    /// Runs `f` on the tenant's limiter, made (evicting the least recently
    /// used one when full) if it has none, carried over to `rate` if the
    /// quota changed.
    fn with_entry<R>(&self, tenant: &str, rate: Rate, f: impl FnOnce(&mut Entry, u64) -> R) -> R {
        let now = self.now_ns();
        let touch = |entry: &mut Entry| {
            if entry.rate != rate {
                // The quota changed (advice, reload): keep what was spent.
                entry.gcra.rescale(entry.rate, rate, now);
                entry.rate = rate;
            }
            entry.last_used = now;
            f(entry, now)
        };
        let mut shard = lock(self.shard(tenant));
        if let Some(entry) = shard.get_mut(tenant) {
            return touch(entry);
        }
        if self.entries.load(Ordering::Relaxed) >= self.max_tenants {
            self.evict_least_recent(&mut shard);
        }
        self.entries.fetch_add(1, Ordering::Relaxed);
        let entry = shard.entry(tenant.into()).or_insert(Entry {
            gcra: Gcra::default(),
            rate,
            counts: Arc::default(),
            last_used: now,
        });
        touch(entry)
    }

    /// This instance's GCRA test, counted.
    fn decide_locally(
        &self,
        tenant: &str,
        cost: u32,
        base: BaseQuota,
        rate: Rate,
        backend: &'static str,
        protocol: Protocol,
    ) -> Decision {
        self.with_entry(tenant, rate, |entry, now| {
            let verdict = entry.gcra.check(rate, nonzero(cost), now);
            conclude(base, rate, verdict, entry.counts.of(protocol), backend)
        })
    }

    /// Counts a verdict reached elsewhere (Redis, or a fail mode).
    fn record(
        &self,
        tenant: &str,
        base: BaseQuota,
        rate: Rate,
        verdict: Verdict,
        backend: &'static str,
        protocol: Protocol,
    ) -> Decision {
        self.with_entry(tenant, rate, |entry, _| {
            conclude(base, rate, verdict, entry.counts.of(protocol), backend)
        })
    }

    /// Makes room for a new tenant: drops the least recently used limiter
    /// of its shard (of the fullest other shard when its own is empty).
    fn evict_least_recent(&self, shard: &mut LimiterMap) {
        let victim = shard
            .iter()
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(tenant, _)| tenant.clone());
        if let Some(victim) = victim {
            shard.remove(&victim);
            self.entries.fetch_sub(1, Ordering::Relaxed);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        // An empty shard over a full map is possible only with a tiny
        // max_tenants; the cap is then exceeded by at most SHARDS.
    }

    /// Drops limiters unused for `idle_ttl`. Returns how many were dropped.
    pub fn prune(&self) -> usize {
        let now = self.now_ns();
        let ttl = u64::try_from(self.idle_ttl.as_nanos()).unwrap_or(u64::MAX);
        let mut pruned = 0;
        for shard in &self.shards {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|_, entry| now.saturating_sub(entry.last_used) < ttl);
            pruned += before - shard.len();
            self.entries
                .fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
        pruned
    }

    /// Limiters evicted to make room for a new tenant since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Decision counts and effective qps per tenant, for the exposition.
    pub fn snapshot(&self) -> Vec<(String, Rate, Arc<DecisionCounts>)> {
        let mut out: Vec<_> = self
            .shards
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .iter()
                    .map(|(tenant, entry)| (tenant.to_string(), entry.rate, entry.counts.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn tracked_limiters(&self) -> usize {
        self.tracked()
    }
}

/// A cost of at least one cell.
fn nonzero(cost: u32) -> NonZeroU32 {
    NonZeroU32::new(cost.max(1)).unwrap_or(NonZeroU32::MIN)
}

/// Turns a verdict into the answer, and counts it.
fn conclude(
    base: BaseQuota,
    rate: Rate,
    verdict: Verdict,
    counts: &ProtocolCounts,
    backend: &'static str,
) -> Decision {
    let (limited, remaining, retry_after, reason) = match verdict {
        Verdict::Allowed { remaining } => (false, remaining, Duration::ZERO, "within quota"),
        Verdict::NotUntil(wait) => (true, 0, wait, "quota exceeded"),
        Verdict::TooCostly => (true, 0, rate.refill(), "cost exceeds the burst"),
    };
    let counter = match (limited, base.shadow) {
        (false, _) => &counts.allowed,
        (true, true) => &counts.shadow_denied,
        (true, false) => &counts.denied,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Decision {
        allowed: !limited || base.shadow,
        limited,
        rate,
        remaining,
        retry_after,
        policy: base.policy,
        reason: if limited && base.shadow {
            "quota exceeded (shadow mode: allowed)"
        } else {
            reason
        },
        backend,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{Just, Strategy, prop_assert_eq};

    use super::*;

    fn policy() -> RatePolicy {
        let mut policy = RatePolicy {
            default: Rate {
                qps: 10.0,
                burst: 5,
            },
            ..RatePolicy::default()
        };
        policy.tiers.insert(
            "gold".into(),
            Tier {
                rate: Rate {
                    qps: 1000.0,
                    burst: 100,
                },
                shadow: false,
            },
        );
        policy.tiers.insert(
            "trial".into(),
            Tier {
                rate: Rate { qps: 1.0, burst: 1 },
                shadow: true,
            },
        );
        policy.tenants.insert(
            "clinic1".into(),
            TenantOverride {
                tier: Some("gold".into()),
                ..Default::default()
            },
        );
        policy.tenants.insert(
            "big".into(),
            TenantOverride {
                qps: Some(50.0),
                burst: Some(7),
                ..Default::default()
            },
        );
        policy.tenants.insert(
            "t1".into(),
            TenantOverride {
                tier: Some("trial".into()),
                ..Default::default()
            },
        );
        policy
    }

    #[test]
    fn quotas_come_from_override_tier_or_default() {
        let policy = policy();
        assert_eq!(
            policy.base_quota("clinic1").rate,
            Rate {
                qps: 1000.0,
                burst: 100
            }
        );
        assert_eq!(policy.base_quota("clinic1").policy, "tier:gold");
        assert_eq!(
            policy.base_quota("big").rate,
            Rate {
                qps: 50.0,
                burst: 7
            }
        );
        assert_eq!(policy.base_quota("big").policy, "tenant:big");
        assert_eq!(
            policy.base_quota("other").rate,
            Rate {
                qps: 10.0,
                burst: 5
            }
        );
        assert_eq!(policy.base_quota("other").policy, "default");
        assert!(policy.base_quota("t1").shadow);
    }

    #[test]
    fn the_burst_is_allowed_then_denied_with_a_retry_time() {
        let limits = RateLimits::new(policy(), 100, Duration::from_secs(60));
        for i in 0..5 {
            let d = limits.check("other", 1);
            assert!(d.allowed, "check {i}");
            assert_eq!(d.remaining, 4 - i);
        }
        let d = limits.check("other", 1);
        assert!(!d.allowed && d.limited);
        assert!(d.retry_after > Duration::ZERO && d.retry_after <= Duration::from_millis(100));
        let d = limits.check("other", 50);
        assert!(!d.allowed);
        assert_eq!(d.reason, "cost exceeds the burst");
    }

    #[test]
    fn a_claimed_tier_counts_only_for_a_tenant_without_one() {
        let policy = policy();
        assert_eq!(
            policy.base_quota_in("newcomer", Some("gold")).policy,
            "tier:gold"
        );
        assert_eq!(
            policy.base_quota_in("newcomer", Some("nope")).policy,
            "default"
        );
        assert_eq!(
            policy.base_quota_in("newcomer", None),
            policy.base_quota("newcomer")
        );
        for tenant in policy.tenants.keys() {
            assert_eq!(
                policy.base_quota_in(tenant, Some("gold")),
                policy.base_quota(tenant),
                "{tenant}"
            );
        }
    }

    #[test]
    fn decisions_are_counted_by_protocol() {
        let limits = RateLimits::new(policy(), 100, Duration::from_secs(60));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(limits.decide(&[Ask::new("p", 1), Ask::new("p", 1)], Protocol::Grpc));
        limits.check("p", 1);
        let (_, _, counts) = limits
            .snapshot()
            .into_iter()
            .find(|(t, _, _)| t == "p")
            .unwrap();
        assert_eq!(counts.of(Protocol::Grpc).allowed.load(Ordering::Relaxed), 2);
        assert_eq!(counts.of(Protocol::Http).allowed.load(Ordering::Relaxed), 1);
        assert!(counts.of(Protocol::Grpc).any());
    }

    #[test]
    fn shadow_mode_allows_but_counts() {
        let limits = RateLimits::new(policy(), 100, Duration::from_secs(60));
        assert!(limits.check("t1", 1).allowed);
        let d = limits.check("t1", 1);
        assert!(d.allowed && d.limited);
        let counts = limits.snapshot();
        let (_, _, c) = counts.iter().find(|(t, _, _)| t == "t1").unwrap();
        let c = c.of(Protocol::Http);
        assert_eq!(c.shadow_denied.load(Ordering::Relaxed), 1);
        assert_eq!(c.allowed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn advice_tightens_and_scales_the_burst() {
        let limits = RateLimits::new(policy(), 100, Duration::from_secs(60));
        limits.set_advice(HashMap::from([("big".to_string(), 5.0)]));
        let (base, rate) = limits.effective("big");
        assert_eq!(base.rate.qps, 50.0);
        assert_eq!(rate, Rate { qps: 5.0, burst: 1 });
        // Advice never loosens a quota.
        limits.set_advice(HashMap::from([("big".to_string(), 500.0)]));
        assert_eq!(limits.effective("big").1.qps, 50.0);
    }

    #[test]
    fn limiter_memory_is_bounded_by_max_tenants_and_pruned() {
        let limits = RateLimits::new(policy(), 1000, Duration::ZERO);
        for i in 0..100_000 {
            limits.check(&format!("tenant{i}"), 1);
        }
        // At most 1,000 limiters; each new tenant evicted the least recent.
        assert!(limits.tracked_limiters() <= 1000 + SHARDS);
        assert!(limits.tracked_limiters() >= 1000);
        assert_eq!(limits.evicted(), 100_000 - limits.tracked_limiters() as u64);
        let held = limits.tracked_limiters();
        assert_eq!(limits.prune(), held);
        assert_eq!(limits.tracked_limiters(), 0);
    }

    #[test]
    fn no_tenant_shares_a_bucket_once_the_map_is_full() {
        let limits = RateLimits::new(policy(), 16, Duration::from_secs(60));
        for i in 0..1000 {
            limits.check(&format!("flood{i}"), 1);
        }
        // A real tenant arriving after the flood has its own full burst.
        for i in 0..5 {
            let d = limits.check("latecomer", 1);
            assert!(d.allowed, "check {i}");
            assert_eq!(d.remaining, 4 - i);
        }
    }

    #[test]
    fn a_quota_change_keeps_the_limiters_state() {
        let limits = RateLimits::new(policy(), 100, Duration::from_secs(60));
        for _ in 0..5 {
            assert!(limits.check("other", 1).allowed);
        }
        assert!(!limits.check("other", 1).allowed);
        // Advice tightens, then relaxes again: neither hands out a new burst.
        limits.set_advice(HashMap::from([("other".to_string(), 5.0)]));
        assert!(!limits.check("other", 1).allowed);
        limits.set_advice(HashMap::new());
        assert!(!limits.check("other", 1).allowed);
        // A looser quota shortens the wait in proportion: 1000/s, burst 100
        // turns five spent cells into 5 ms of debt, well within the burst.
        let mut policy = policy();
        policy.default = Rate {
            qps: 1000.0,
            burst: 100,
        };
        limits.set_policy(policy);
        assert!(limits.check("other", 1).allowed);
    }

    /// governor's direct limiter, on a fake clock, answering with its state.
    type Governor = governor::RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        governor::clock::FakeRelativeClock,
        governor::middleware::StateInformationMiddleware,
    >;

    /// governor's limiter on a fake clock, for `rate`: one cell every
    /// `emission_interval_ns`, `burst` cells at once.
    fn governor_for(rate: Rate) -> (Governor, governor::clock::FakeRelativeClock) {
        let clock = governor::clock::FakeRelativeClock::default();
        let quota = governor::Quota::with_period(Duration::from_nanos(rate.emission_interval_ns()))
            .expect("the interval is at least 1 ns")
            .allow_burst(NonZeroU32::new(rate.burst.max(1)).expect("at least 1"));
        let limiter = governor::RateLimiter::direct_with_clock(quota, clock.clone())
            .with_middleware::<governor::middleware::StateInformationMiddleware>();
        (limiter, clock)
    }

    /// governor's answer for `cost` cells now, as a [`Verdict`].
    fn governor_verdict(
        limiter: &Governor,
        clock: &governor::clock::FakeRelativeClock,
        cost: NonZeroU32,
    ) -> Verdict {
        use governor::clock::Clock as _;
        match limiter.check_n(cost) {
            Ok(Ok(state)) => Verdict::Allowed {
                remaining: state.remaining_burst_capacity(),
            },
            Ok(Err(not_until)) => Verdict::NotUntil(not_until.wait_time_from(clock.now())),
            Err(governor::InsufficientCapacity(_)) => Verdict::TooCostly,
        }
    }

    #[test]
    fn gcra_answers_as_governor_does() {
        // 10/s, burst 5: T = 100 ms, tau = 400 ms.
        let rate = Rate {
            qps: 10.0,
            burst: 5,
        };
        let (limiter, clock) = governor_for(rate);
        let one = NonZeroU32::MIN;
        let mut g = Gcra::default();
        let ms = 1_000_000;
        let mut now = 0;
        let mut both = |g: &mut Gcra, at: u64, cost: NonZeroU32| {
            clock.advance(Duration::from_nanos(at - now));
            now = at;
            let ours = g.check(rate, cost, at);
            assert_eq!(ours, governor_verdict(&limiter, &clock, cost), "at {at} ns");
            ours
        };
        for left in (0..5).rev() {
            assert_eq!(both(&mut g, ms, one), Verdict::Allowed { remaining: left });
        }
        assert_eq!(
            both(&mut g, ms, one),
            Verdict::NotUntil(Duration::from_millis(100))
        );
        // 100 ms later one cell is back.
        assert_eq!(
            both(&mut g, 101 * ms, one),
            Verdict::Allowed { remaining: 0 }
        );
        let six = NonZeroU32::new(6).unwrap();
        assert_eq!(both(&mut g, 10_000 * ms, six), Verdict::TooCostly);
        // A whole-number quota has governor's own interval too.
        assert_eq!(
            governor::Quota::per_second(NonZeroU32::new(7).unwrap()).replenish_interval(),
            Duration::from_nanos(Rate { qps: 7.0, burst: 1 }.emission_interval_ns())
        );
    }

    proptest::proptest! {
        /// On any schedule (random quota and burst, random gaps between
        /// arrivals from none to three emission intervals, random costs up
        /// to beyond the burst), the GCRA allows and denies exactly as
        /// governor does on a fake clock, with the same remaining burst and
        /// the same wait.
        #[test]
        fn gcra_decides_as_governor_on_random_schedules(
            qps in proptest::prop_oneof![
                0.01f64..10.0,
                10.0f64..1e6,
                (1u32..100_000).prop_map(f64::from),
                Just(MAX_QPS),
            ],
            burst in proptest::prop_oneof![Just(1u32), 1u32..20, 20u32..5_000],
            start in 0u64..5_000_000_000,
            steps in proptest::collection::vec(
                (
                    proptest::prop_oneof![Just(0.0f64), 0.0f64..0.5, 0.0f64..3.0],
                    proptest::prop_oneof![4 => Just(0.0f64), 1 => 0.0f64..1.2],
                ),
                1..200,
            ),
        ) {
            let rate = Rate { qps, burst };
            let t = rate.emission_interval_ns();
            let (limiter, clock) = governor_for(rate);
            let mut g = Gcra::default();
            let mut now = start;
            clock.advance(Duration::from_nanos(start));
            for (i, (gap, share)) in steps.into_iter().enumerate() {
                let gap = (gap * t as f64) as u64;
                clock.advance(Duration::from_nanos(gap));
                now += gap;
                let cost = NonZeroU32::new(1 + (share * f64::from(burst)) as u32).unwrap();
                let ours = g.check(rate, cost, now);
                let theirs = governor_verdict(&limiter, &clock, cost);
                prop_assert_eq!(ours, theirs, "step {} at {} ns, cost {}", i, now, cost);
            }
        }
    }
}

//! Rate-limit decisions per tenant, with governor's GCRA.
//!
//! Each tenant gets its own direct limiter, built from its effective quota:
//! the per-tenant override, else its tier, else the default, tightened by
//! the detector's advice while the tenant is flagged. Limiters live in a
//! sharded map bounded by `max_tenants` (tenants beyond it share one
//! overflow limiter at the default quota) and idle ones are pruned, so
//! 100,000 distinct keys cannot grow memory without bound. Shadow mode
//! (global or per tier) always allows but counts what would have been denied.

use std::borrow::Cow;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::event::OVERFLOW_TENANT;

/// A tenant's limiter is dropped after this long without a check
/// (`ratelimit.idle_ttl`).
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(10 * 60);

const SHARDS: usize = 16;

/// A quota: sustained rate and burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub qps: f64,
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Quota {
        let burst = NonZeroU32::new(self.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs_f64(1.0 / self.qps.max(0.001));
        Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

/// A tier of `[ratelimit.tiers.<name>]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub rate: Rate,
    pub shadow: bool,
}

/// `[ratelimit.tenants.<tenant>]`.
#[derive(Debug, Clone, PartialEq, Default)]
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
        }
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
    pub fn base_quota(&self, tenant: &str) -> BaseQuota {
        let over = self.tenants.get(tenant);
        let tier_name = over.and_then(|o| o.tier.as_deref());
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
}

/// Decision counters per tenant.
#[derive(Debug, Default)]
pub struct DecisionCounts {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub shadow_denied: AtomicU64,
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, MonotonicClock, StateInformationMiddleware>;

struct Entry {
    limiter: Limiter,
    rate: Rate,
    counts: Arc<DecisionCounts>,
    last_used: <MonotonicClock as Clock>::Instant,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The limiters of every tenant.
pub struct RateLimits {
    shards: Vec<Mutex<HashMap<Box<str>, Entry>>>,
    policy: RwLock<Arc<RatePolicy>>,
    /// Effective qps for tenants the detector tightened.
    advice: RwLock<Arc<HashMap<String, f64>>>,
    clock: MonotonicClock,
    max_tenants: usize,
    idle_ttl: Duration,
    /// Limiters in all shards.
    entries: std::sync::atomic::AtomicUsize,
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
            policy: RwLock::new(Arc::new(policy)),
            advice: RwLock::new(Arc::new(HashMap::new())),
            clock: MonotonicClock,
            max_tenants,
            idle_ttl,
            entries: Default::default(),
        }
    }

    pub fn policy(&self) -> Arc<RatePolicy> {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the quotas (SIGHUP); limiters pick the new ones up on their
    /// next check.
    pub fn set_policy(&self, policy: RatePolicy) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
    }

    /// Replaces the detector's advice: tenant -> effective qps.
    pub fn set_advice(&self, advice: HashMap<String, f64>) {
        *self.advice.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(advice);
    }

    pub fn advice(&self) -> Arc<HashMap<String, f64>> {
        self.advice
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The quota a tenant gets now: its base quota, tightened by advice.
    pub fn effective(&self, tenant: &str) -> (BaseQuota, Rate) {
        let base = self.policy().base_quota(tenant);
        let mut rate = base.rate;
        if let Some(qps) = self.advice().get(tenant).copied()
            && qps < rate.qps
        {
            // Keep the burst's length in time: scale it with the rate.
            rate.burst = ((rate.burst as f64 * qps / rate.qps).round() as u32).max(1);
            rate.qps = qps;
        }
        (base, rate)
    }

    fn shard(&self, tenant: &str) -> &Mutex<HashMap<Box<str>, Entry>> {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = foldhash::fast::FixedState::with_seed(0x7465_6e61_6e74).build_hasher();
        hasher.write(tenant.as_bytes());
        &self.shards[hasher.finish() as usize % SHARDS]
    }

    fn tracked(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Decides whether `tenant` may spend `cost` units now.
    pub fn check(&self, tenant: &str, cost: u32) -> Decision {
        let now = self.clock.now();
        let mut key = tenant;
        let mut shard = lock(self.shard(tenant));
        if !shard.contains_key(tenant) && self.entries.load(Ordering::Relaxed) >= self.max_tenants {
            // Full: tenants beyond the cap share one limiter at its quota.
            drop(shard);
            key = OVERFLOW_TENANT;
            shard = lock(self.shard(key));
        }
        let (base, rate) = self.effective(key);
        let entry = shard.entry(key.into()).or_insert_with(|| {
            self.entries.fetch_add(1, Ordering::Relaxed);
            Entry {
                limiter: RateLimiter::direct_with_clock(rate.quota(), self.clock.clone())
                    .with_middleware(),
                rate,
                counts: Arc::default(),
                last_used: now,
            }
        });
        if entry.rate != rate {
            // The quota changed (advice, reload): start a limiter with it.
            entry.limiter =
                RateLimiter::direct_with_clock(rate.quota(), self.clock.clone()).with_middleware();
            entry.rate = rate;
        }
        entry.last_used = now;
        let cost = NonZeroU32::new(cost.max(1)).unwrap_or(NonZeroU32::MIN);
        let (limited, remaining, retry_after, reason) = match entry.limiter.check_n(cost) {
            Ok(Ok(snapshot)) => (
                false,
                snapshot.remaining_burst_capacity(),
                Duration::ZERO,
                "within quota",
            ),
            Ok(Err(not_until)) => (true, 0, not_until.wait_time_from(now), "quota exceeded"),
            Err(_) => (
                true,
                0,
                rate.quota().burst_size_replenished_in(),
                "cost exceeds the burst",
            ),
        };
        let allowed = !limited || base.shadow;
        let counter = match (limited, base.shadow) {
            (false, _) => &entry.counts.allowed,
            (true, true) => &entry.counts.shadow_denied,
            (true, false) => &entry.counts.denied,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Decision {
            allowed,
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
        }
    }

    /// Drops limiters unused for `idle_ttl`. Returns how many were dropped.
    pub fn prune(&self) -> usize {
        let now = self.clock.now();
        let mut pruned = 0;
        for shard in &self.shards {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|_, entry| now.duration_since(entry.last_used) < self.idle_ttl);
            pruned += before - shard.len();
            self.entries
                .fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
        pruned
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

#[cfg(test)]
mod tests {
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
    fn shadow_mode_allows_but_counts() {
        let limits = RateLimits::new(policy(), 100, Duration::from_secs(60));
        assert!(limits.check("t1", 1).allowed);
        let d = limits.check("t1", 1);
        assert!(d.allowed && d.limited);
        let counts = limits.snapshot();
        let (_, _, c) = counts.iter().find(|(t, _, _)| t == "t1").unwrap();
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
        // 1,000 tenants plus the shared overflow limiter.
        assert_eq!(limits.tracked_limiters(), 1001);
        assert_eq!(limits.prune(), 1001);
        assert_eq!(limits.tracked_limiters(), 0);
    }
}

//! `[ratelimit]` as the file writes it: quotas, tiers, per-tenant
//! overrides and callers (applied on reload), and the backend (at start-up).
//! [`RateLimitSettings::policy`] turns the quotas into the [`RatePolicy`]
//! the limiters run on.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{MAX_QPS, Rate, RatePolicy, RedisSettings, TenantOverride, Tier};
use crate::settings::{Problems, Reload, serde_text};

/// Where the limiters' state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// This instance's own limiters.
    #[default]
    Local,
    /// Shared by every instance using the same Redis (`[ratelimit.redis]`).
    Redis,
}

/// `[ratelimit]`: per-tenant quotas for `POST /v1/ratelimit/check`.
#[derive(Debug, Clone, PartialEq, Deserialize, Reload)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Checks per second of a tenant with no tier and no override.
    #[reload(live)]
    pub default_qps: f64,
    /// Checks a tenant may spend at once (at least 1).
    #[reload(live)]
    pub default_burst: u32,
    /// Always allow, but count what would have been denied.
    #[reload(live)]
    pub shadow: bool,
    /// A tenant's limiter is dropped after this long without a check.
    #[serde(with = "serde_text::duration")]
    pub idle_ttl: Duration,
    /// `[ratelimit.tiers.<name>]`: quotas by tier.
    #[reload(live)]
    pub tiers: BTreeMap<String, TierSettings>,
    /// `[ratelimit.tenants.<tenant>]`: one tenant's tier or quota.
    #[reload(live)]
    pub tenants: BTreeMap<String, TenantOverride>,
    /// `[ratelimit.callers.<name>]`: tokens bound to tenants. With any,
    /// a check needs the write token or a caller's token, and a caller may
    /// only check tenants its patterns match (403 otherwise).
    #[reload(live)]
    pub callers: BTreeMap<String, CallerSettings>,
    /// Where the limiters' state lives: `"local"` (this instance) or
    /// `"redis"` (shared by every instance using the same Redis).
    pub backend: Backend,
    /// `[ratelimit.redis]`: the shared store, used with `backend = "redis"`.
    #[reload(nested)]
    pub redis: RedisSettings,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        let policy = RatePolicy::default();
        RateLimitSettings {
            default_qps: policy.default.qps,
            default_burst: policy.default.burst,
            shadow: policy.shadow,
            idle_ttl: Duration::from_secs(10 * 60),
            tiers: BTreeMap::new(),
            tenants: BTreeMap::new(),
            callers: BTreeMap::new(),
            backend: Backend::Local,
            redis: RedisSettings::default(),
        }
    }
}

/// `[ratelimit.tiers.<name>]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSettings {
    pub qps: f64,
    pub burst: u32,
    /// Always allow this tier's tenants, counting what would be denied.
    #[serde(default)]
    pub shadow: bool,
}

/// `[ratelimit.callers.<name>]`: one caller of `POST /v1/ratelimit/check`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerSettings {
    /// File holding the caller's bearer token.
    pub token_file: PathBuf,
    /// Regular expressions; the caller may check a tenant any of them
    /// matches (anchor them: `^clinic[0-9]+$`).
    pub tenants: Vec<String>,
}

impl RateLimitSettings {
    /// Checks every quota; a tenant's tier must exist.
    pub fn check(&self, p: &mut Problems) {
        let rate = |p: &mut Problems, key: &str, qps: f64, burst: u32| {
            p.finite_above(&format!("{key}qps"), qps, 0.0, MAX_QPS);
            if burst == 0 {
                p.fail(&format!("{key}burst"), burst, "must be at least 1");
            }
        };
        rate(
            p,
            "ratelimit.default_",
            self.default_qps,
            self.default_burst,
        );
        p.positive("ratelimit.idle_ttl", self.idle_ttl);
        for (name, tier) in &self.tiers {
            rate(p, &format!("ratelimit.tiers.{name}."), tier.qps, tier.burst);
        }
        for (tenant, quota) in &self.tenants {
            let key = format!("ratelimit.tenants.{tenant}");
            if let Some(tier) = &quota.tier
                && !self.tiers.contains_key(tier)
            {
                p.fail(
                    &format!("{key}.tier"),
                    format!("{tier:?}"),
                    "no such tier in [ratelimit.tiers]",
                );
            }
            if let Some(qps) = quota.qps {
                p.finite_above(&format!("{key}.qps"), qps, 0.0, MAX_QPS);
            }
            if quota.burst == Some(0) {
                p.fail(&format!("{key}.burst"), 0, "must be at least 1");
            }
        }
        for (name, caller) in &self.callers {
            if caller.tenants.is_empty() {
                p.fail(
                    &format!("ratelimit.callers.{name}.tenants"),
                    "[]",
                    "list at least one tenant pattern",
                );
            }
        }
        if self.backend == Backend::Redis {
            self.redis.check(p);
        }
    }

    /// The quotas the limiters run on, with each tenant's tier from
    /// `tenants.tiers_file`.
    pub fn policy(&self, tenant_tiers: HashMap<String, String>) -> RatePolicy {
        RatePolicy {
            default: Rate {
                qps: self.default_qps,
                burst: self.default_burst,
            },
            shadow: self.shadow,
            tiers: self
                .tiers
                .iter()
                .map(|(name, tier)| {
                    let rate = Rate {
                        qps: tier.qps,
                        burst: tier.burst,
                    };
                    let shadow = tier.shadow;
                    (name.clone(), Tier { rate, shadow })
                })
                .collect(),
            tenants: self
                .tenants
                .iter()
                .map(|(tenant, quota)| (tenant.clone(), quota.clone()))
                .collect(),
            tenant_tiers,
        }
    }
}

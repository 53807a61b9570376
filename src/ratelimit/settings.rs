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
    /// Envoy's rate-limit service (`ShouldRateLimit` over gRPC, with the
    /// gRPC health service) listens here; `""` (the default) turns it off.
    #[serde(with = "serde_text::optional_addr")]
    pub grpc_listen: Option<std::net::SocketAddr>,
    /// `[ratelimit.rls]`: how Envoy's descriptors map to tenants.
    #[reload(nested)]
    pub rls: RlsSettings,
}

/// `[ratelimit.rls]`: how a `ShouldRateLimit` request's descriptors map to
/// tenants and tiers. A descriptor is a list of `(key, value)` entries
/// that Envoy's route actions build from the request.
#[derive(Debug, Clone, PartialEq, Deserialize, Reload)]
#[serde(default, deny_unknown_fields)]
pub struct RlsSettings {
    /// The `domain` Envoy's filter sends; a request for another domain is
    /// refused (`INVALID_ARGUMENT`), so two filters cannot share quotas by
    /// mistake.
    pub domain: String,
    /// The descriptor entry key whose value is the tenant. A descriptor
    /// without it is none of tenantwatch's business: answered `OK`, spent
    /// nowhere, counted.
    pub tenant_key: String,
    /// Descriptor entry keys whose value names a tier of
    /// `[ratelimit.tiers]` (the first present wins): the tier of a tenant
    /// the configuration gives no tier of its own. A configured tier or
    /// override always wins, and a value naming no tier is ignored.
    pub tier_keys: Vec<String>,
}

impl Default for RlsSettings {
    fn default() -> Self {
        RlsSettings {
            domain: "tenantwatch".into(),
            tenant_key: "tenant".into(),
            tier_keys: Vec::new(),
        }
    }
}

impl RlsSettings {
    /// The tenant a descriptor names, and the tier its entries select.
    pub fn read<'a>(
        &self,
        entries: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> (Option<&'a str>, Option<&'a str>) {
        let tenant = entries
            .clone()
            .find(|(key, _)| *key == self.tenant_key)
            .map(|(_, value)| value);
        let tier = self.tier_keys.iter().find_map(|tier_key| {
            entries
                .clone()
                .find(|(key, _)| key == tier_key)
                .map(|(_, value)| value)
        });
        (tenant, tier)
    }

    fn check(&self, p: &mut Problems) {
        if self.domain.is_empty() {
            p.fail("ratelimit.rls.domain", "\"\"", "must not be empty");
        }
        if self.tenant_key.is_empty() {
            p.fail("ratelimit.rls.tenant_key", "\"\"", "must not be empty");
        }
        if self
            .tier_keys
            .iter()
            .any(|k| k.is_empty() || *k == self.tenant_key)
        {
            p.fail(
                "ratelimit.rls.tier_keys",
                format!("{:?}", self.tier_keys),
                "keys must be non-empty and differ from tenant_key",
            );
        }
    }
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
            grpc_listen: None,
            rls: RlsSettings::default(),
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
        self.rls.check(p);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_names_its_tenant_and_the_first_tier_claim() {
        let rls = RlsSettings {
            tier_keys: vec!["plan".into(), "tier".into()],
            ..RlsSettings::default()
        };
        let entries = [
            ("path", "/x"),
            ("tier", "silver"),
            ("tenant", "acme"),
            ("plan", "gold"),
        ];
        assert_eq!(
            rls.read(entries.iter().copied()),
            (Some("acme"), Some("gold"))
        );
        let entries = [("remote_address", "10.0.0.1")];
        assert_eq!(rls.read(entries.iter().copied()), (None, None));
    }

    #[test]
    fn the_mapping_is_checked() {
        let mut p = Problems::default();
        RlsSettings {
            domain: String::new(),
            tenant_key: "tenant".into(),
            tier_keys: vec!["tenant".into()],
        }
        .check(&mut p);
        let text = format!("{p:?}");
        assert!(
            text.contains("ratelimit.rls.domain") && text.contains("ratelimit.rls.tier_keys"),
            "{text}"
        );
    }
}

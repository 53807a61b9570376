//! The exposition of the detector's flags and the rate limiter's decisions
//! and quotas.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::encode::{counter_u64, family, gauge};
use crate::detect::{Flag, SharedJudgement, read_judgement};
use crate::ratelimit::{Protocol, RateLimits};

/// Exposes the detector's flags and the rate limiter's decisions.
#[derive(Debug)]
pub struct DetectCollector {
    pub judgement: SharedJudgement,
    pub limits: Arc<RateLimits>,
    pub guard_log: crate::store::guard::SharedGuardLog,
}

impl Collector for DetectCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_flags(&mut encoder)?;
        self.encode_limiters(&mut encoder)?;
        self.encode_backend(&mut encoder)?;
        self.encode_fleet(&mut encoder)?;
        self.encode_guard(&mut encoder)
    }
}

impl DetectCollector {
    /// The raised flags, with their values and thresholds.
    fn encode_flags(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let judgement = read_judgement(&self.judgement);
        type FlagField = fn(&Flag) -> f64;
        let flag_families: [(&str, &str, FlagField); 3] = [
            (
                "tenantwatch_tenant_flagged",
                "1 while the tenant is flagged by the rule named in reason.",
                |_| 1.0,
            ),
            (
                "tenantwatch_tenant_flag_value",
                "The observed value of each raised flag (its threshold is in tenantwatch_tenant_flag_threshold).",
                |f| f.value,
            ),
            (
                "tenantwatch_tenant_flag_threshold",
                "The threshold each raised flag's value crossed.",
                |f| f.threshold,
            ),
        ];
        for (name, help, field) in flag_families {
            let mut metric = family(encoder, name, help, MetricType::Gauge)?;
            for flag in &judgement.flags {
                let labels = [
                    ("tenant", flag.tenant.as_str()),
                    ("reason", flag.reason.as_str()),
                    ("severity", flag.severity.as_str()),
                ];
                gauge(&mut metric, &labels, field(flag))?;
            }
        }
        Ok(())
    }

    /// Tiers, decisions, effective quotas and the limiter map.
    fn encode_limiters(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let policy = self.limits.policy();
        let mut metric = family(
            encoder,
            "tenantwatch_tenant_info",
            "1 for each tenant with a tier ([ratelimit.tenants] or tenants.tiers_file), labelled with it: join on tenant to group any tenant series by tier.",
            MetricType::Gauge,
        )?;
        for (tenant, tier) in policy.tiers_by_tenant() {
            gauge(&mut metric, &[("tenant", tenant), ("tier", tier)], 1.0)?;
        }

        let limiters = self.limits.snapshot();
        let mut metric = family(
            encoder,
            "tenantwatch_ratelimit_decisions",
            "Rate-limit answers per tenant: allowed, denied, or shadow_denied (allowed in shadow mode, over quota), by protocol: http (POST /v1/ratelimit/check) or grpc (Envoy's ShouldRateLimit).",
            MetricType::Counter,
        )?;
        for (tenant, _, counts) in &limiters {
            for protocol in Protocol::ALL {
                let counts = counts.of(protocol);
                // gRPC series only for tenants checked over gRPC: a tenant
                // checked over HTTP alone keeps its three series.
                if protocol == Protocol::Grpc && !counts.any() {
                    continue;
                }
                for (decision, counter) in [
                    ("allowed", &counts.allowed),
                    ("denied", &counts.denied),
                    ("shadow_denied", &counts.shadow_denied),
                ] {
                    let labels = [
                        ("tenant", tenant.as_str()),
                        ("decision", decision),
                        ("protocol", protocol.as_str()),
                    ];
                    counter_u64(&mut metric, &labels, counter.load(Ordering::Relaxed))?;
                }
            }
        }
        let grpc = self.limits.grpc();
        let mut metric = family(
            encoder,
            "tenantwatch_ratelimit_grpc_refused",
            "ShouldRateLimit requests refused with a gRPC status instead of a decision, and gRPC connections closed at once, by why: unauthenticated, forbidden, unknown_domain, invalid, connection.",
            MetricType::Counter,
        )?;
        for (reason, count) in grpc.refusals() {
            counter_u64(&mut metric, &[("reason", reason.as_str())], count)?;
        }
        let mut metric = family(
            encoder,
            "tenantwatch_ratelimit_grpc_untenanted_descriptors",
            "ShouldRateLimit descriptors without the ratelimit.rls.tenant_key entry: answered OK, no quota spent.",
            MetricType::Counter,
        )?;
        metric.encode_counter::<NoLabelSet, _, u64>(&grpc.untenanted_descriptors(), None)?;
        let mut metric = family(
            encoder,
            "tenantwatch_tenant_ratelimit_qps",
            "The tenant's effective quota in checks per second (tightened while flagged).",
            MetricType::Gauge,
        )?;
        for (tenant, rate, _) in &limiters {
            gauge(&mut metric, &[("tenant", tenant.as_str())], rate.qps)?;
        }
        let mut metric = family(
            encoder,
            "tenantwatch_ratelimit_limiters",
            "Per-tenant rate limiters held in memory (at most ingest.max_tenants).",
            MetricType::Gauge,
        )?;
        metric.encode_gauge(&(limiters.len() as i64))?;
        let mut metric = family(
            encoder,
            "tenantwatch_ratelimit_limiters_evicted",
            "Limiters dropped, least recently used first, to make room for a new tenant at ingest.max_tenants.",
            MetricType::Counter,
        )?;
        metric.encode_counter::<NoLabelSet, _, u64>(&self.limits.evicted(), None)?;
        Ok(())
    }

    /// Whether the rate-limit backend answers, and why it did not.
    fn encode_backend(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let redis = self.limits.redis();
        let mut metric = family(
            encoder,
            "tenantwatch_ratelimit_backend_up",
            "1 while the rate-limit backend answers (always 1 for backend=\"local\"); 0 while checks fall back to ratelimit.redis.fail_mode.",
            MetricType::Gauge,
        )?;
        let (backend, up) = match redis {
            Some(redis) => ("redis", redis.is_up()),
            None => ("local", true),
        };
        gauge(
            &mut metric,
            &[("backend", backend)],
            f64::from(u8::from(up)),
        )?;
        let mut metric = family(
            encoder,
            "tenantwatch_ratelimit_backend_errors",
            "Checks the Redis backend did not decide (each decided by ratelimit.redis.fail_mode instead), and failed advice exchanges, by why: timeout, connection, response (an error reply: about one key it fails that check only), unavailable (already known down).",
            MetricType::Counter,
        )?;
        // Zeros with the local backend, so panels and alerts find the series.
        let errors = redis
            .map(|r| r.errors())
            .unwrap_or_else(|| crate::ratelimit::BackendError::ALL.map(|error| (error, 0)));
        for (error, count) in errors {
            counter_u64(&mut metric, &[("error", error.as_str())], count)?;
        }
        Ok(())
    }

    /// The fleet view: whom the judgement answers for, and what the last
    /// exchange of window figures cost.
    fn encode_fleet(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let judgement = read_judgement(&self.judgement);
        let fleet = &judgement.fleet;
        let mut metric = family(
            encoder,
            "tenantwatch_fleet_view_up",
            "1 while flags, advice and shares are judged on every live replica's figures (Redis backend answering); 0 while on this replica's alone.",
            MetricType::Gauge,
        )?;
        let up = fleet.scope == crate::detect::fleet::Scope::Fleet;
        metric.encode_gauge(&i64::from(up))?;
        let mut metric = family(
            encoder,
            "tenantwatch_fleet_replicas",
            "Replicas whose window figures the last evaluation summed (1 in replica scope).",
            MetricType::Gauge,
        )?;
        metric.encode_gauge(&(fleet.replicas as i64))?;
        let mut metric = family(
            encoder,
            "tenantwatch_fleet_exchange_bytes",
            "Bytes of window figures this replica wrote to (sent) and read from (received) Redis in the last evaluation.",
            MetricType::Gauge,
        )?;
        for (direction, bytes) in [
            ("sent", fleet.bytes_sent),
            ("received", fleet.bytes_received),
        ] {
            gauge(&mut metric, &[("direction", direction)], bytes as f64)?;
        }
        Ok(())
    }

    /// The guard's actions, by what was sent and what came of it.
    fn encode_guard(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard_counts = self
            .guard_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counts();
        let mut metric = family(
            encoder,
            "tenantwatch_guard_actions",
            "Guard actions on flagged tenants' sessions (or would-be actions in dry_run), by rule, action sent (cancel, terminate) and result (ok, dry_run, gone, changed, permission, error, rate_limited, dropped).",
            MetricType::Counter,
        )?;
        for ((tenant, rule, action, result), count) in &guard_counts {
            let labels = [
                ("tenant", tenant.as_str()),
                ("rule", *rule),
                ("action", action.as_str()),
                ("result", result.as_str()),
            ];
            counter_u64(&mut metric, &labels, *count)?;
        }
        Ok(())
    }
}

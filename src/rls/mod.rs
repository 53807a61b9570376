//! Envoy's rate-limit service: `envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit` over gRPC on `ratelimit.grpc_listen`, with the gRPC
//! health service, so Envoy's `envoy.filters.http.ratelimit` filter (and
//! Istio through an `EnvoyFilter`) asks tenantwatch before a tenant's request.
//!
//! A request's descriptors map to checks by `[ratelimit.rls]`: the entry
//! keyed `tenant_key` names the tenant, the first of `tier_keys` present
//! may claim a tier, `hits_addend` is the cost. Each check is decided by
//! [`RateLimits::decide`], the function `POST /v1/ratelimit/check` uses: the
//! same quotas, tiers, overrides, shadow mode, advice, backend (Redis
//! included: one quota whichever protocol spends it) and counts, under
//! `protocol="grpc"`. Callers' tokens come in the `authorization` metadata
//! and are judged as the HTTP check judges them.
//!
//! An edge like `http`: it reads the rate limiter, and the listener's
//! tokens and TLS from `http`; nothing imports it but `daemon`.
//!
//! The listener (`server`, `connection`, `wire`) speaks gRPC over HTTP/2
//! with the `h2` crate directly, as the HTTP listener's check lane skips
//! hyper: a call costs about three quarters of what tonic's server stack
//! cost (docs/performance.md). The messages are generated from `proto/`
//! (Envoy's protos, trimmed; see `proto/README.md`) by
//! `scripts/gen-rls-proto.sh` and committed; the tonic client half serves
//! the tests and the load generator.

use std::sync::Arc;
use std::time::Duration;

use crate::http::{SpendDenied, Tokens, rate_limit_headers};
use crate::ratelimit::{Ask, Decision, GrpcRefusal, Protocol, RateLimits, RlsSettings};

mod connection;
mod server;
mod wire;

pub use connection::Health;
pub use server::{GrpcListener, serve};
/// A message as gRPC frames it (for the load generator's requests).
pub use wire::framed;
use wire::{Code as GrpcCode, Status};

/// The rate-limit service's full name, as the health service knows it.
pub const SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// The messages and service of Envoy's rate-limit protocol, as
/// tonic-prost-build wrote them (the client, for tests and the load
/// generator; the listener uses the messages only).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod generated {
    include!("generated/mod.rs");
}

use generated::envoy::config::core::v3::HeaderValue;
use generated::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse, rate_limit_response,
};
use rate_limit_response::{Code, DescriptorStatus, RateLimit, rate_limit::Unit};

/// Most descriptors in one request (Envoy sends one per matching action).
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries in one descriptor.
pub const MAX_ENTRIES: usize = 32;
/// Highest `hits_addend`, as the HTTP check's highest cost.
pub const MAX_HITS: u32 = 1_000_000;

/// What the service decides with.
pub struct RlsState {
    pub limits: Arc<RateLimits>,
    /// The HTTP listener's state, for its tokens (the same write and
    /// callers' tokens) and TLS configuration.
    pub app: Arc<crate::http::AppState>,
    pub settings: RlsSettings,
}

impl std::fmt::Debug for RlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RlsState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A request refused before anything was spent.
#[derive(Debug)]
struct Refused {
    reason: GrpcRefusal,
    detail: String,
}

impl Refused {
    fn invalid(detail: String) -> Refused {
        Refused {
            reason: GrpcRefusal::Invalid,
            detail,
        }
    }

    fn into_status(self) -> Status {
        let code = match self.reason {
            GrpcRefusal::Unauthenticated => GrpcCode::Unauthenticated,
            GrpcRefusal::Forbidden => GrpcCode::PermissionDenied,
            GrpcRefusal::UnknownDomain | GrpcRefusal::Invalid | GrpcRefusal::Connection => {
                GrpcCode::InvalidArgument
            }
        };
        Status::new(code, self.detail)
    }
}

/// One descriptor read: the check it asks for, or none of ours.
type Read<'a> = Option<Ask<'a>>;

impl RlsState {
    /// Reads and authorizes a request: one entry per descriptor, `None`
    /// for a descriptor without the tenant entry.
    fn read<'a>(
        &self,
        request: &'a RateLimitRequest,
        tokens: &Tokens,
        bearer: Option<&str>,
    ) -> Result<Vec<Read<'a>>, Refused> {
        if request.domain != self.settings.domain {
            return Err(Refused {
                reason: GrpcRefusal::UnknownDomain,
                detail: format!(
                    "domain {:?} is not {:?} (ratelimit.rls.domain)",
                    truncated(&request.domain),
                    self.settings.domain
                ),
            });
        }
        let count = request.descriptors.len();
        if !(1..=MAX_DESCRIPTORS).contains(&count) {
            return Err(Refused::invalid(format!(
                "a request holds 1 to {MAX_DESCRIPTORS} descriptors, not {count}"
            )));
        }
        if request.hits_addend > MAX_HITS {
            return Err(Refused::invalid(format!(
                "hits_addend must be at most {MAX_HITS}"
            )));
        }
        // Envoy sends 0 for "not set": one hit.
        let cost = request.hits_addend.max(1);
        // Who may spend at all is known before the descriptors are read.
        if tokens.may_spend(bearer, "") == Err(SpendDenied::Unauthenticated) {
            return Err(Refused {
                reason: GrpcRefusal::Unauthenticated,
                detail: "a token is needed in the authorization metadata (Bearer <token>)".into(),
            });
        }
        let mut asks = Vec::with_capacity(count);
        for (i, descriptor) in request.descriptors.iter().enumerate() {
            if descriptor.entries.len() > MAX_ENTRIES {
                return Err(Refused::invalid(format!(
                    "descriptors[{i}] has more than {MAX_ENTRIES} entries"
                )));
            }
            let entries = descriptor
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()));
            let (tenant, tier) = self.settings.read(entries);
            let Some(tenant) = tenant else {
                asks.push(None);
                continue;
            };
            if let Err(reject) = crate::event::validate_tenant(tenant) {
                return Err(Refused::invalid(format!(
                    "descriptors[{i}] {}: {}",
                    self.settings.tenant_key, reject.detail
                )));
            }
            if tokens.may_spend(bearer, tenant) == Err(SpendDenied::Forbidden) {
                return Err(Refused {
                    reason: GrpcRefusal::Forbidden,
                    detail: format!(
                        "this caller's token is not bound to tenant {tenant:?} ([ratelimit.callers])"
                    ),
                });
            }
            asks.push(Some(Ask { tenant, cost, tier }));
        }
        Ok(asks)
    }

    /// Answers a request: decides every tenant descriptor in one call (one
    /// Redis round trip), `OK` for the others.
    async fn answer(
        &self,
        request: &RateLimitRequest,
        bearer: Option<&str>,
    ) -> Result<RateLimitResponse, Refused> {
        let tokens = self.app.listener.tokens.get();
        let read = self.read(request, &tokens, bearer)?;
        drop(tokens);
        let asks: Vec<Ask<'_>> = read.iter().flatten().copied().collect();
        let mut decisions = self.limits.decide(&asks, Protocol::Grpc).await.into_iter();
        let mut decided = Vec::with_capacity(asks.len());
        let statuses = read
            .iter()
            .map(|ask| match ask.and_then(|_| decisions.next()) {
                Some(decision) => {
                    let status = descriptor_status(&decision);
                    decided.push(decision);
                    status
                }
                None => {
                    self.limits.grpc().untenanted();
                    DescriptorStatus {
                        code: Code::Ok as i32,
                        ..DescriptorStatus::default()
                    }
                }
            })
            .collect::<Vec<_>>();
        let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            response_headers_to_add: binding(&decided).map(headers).unwrap_or_default(),
            ..RateLimitResponse::default()
        })
    }
}

/// A descriptor's answer: `OVER_LIMIT` only when the check is denied (in
/// shadow mode, `OK`), the quota as a rate per unit, what remains of the
/// burst, and how long until the bucket is full again (when denied, until
/// the next request would pass).
fn descriptor_status(decision: &Decision) -> DescriptorStatus {
    let (requests_per_unit, unit) = per_unit(decision.rate.qps);
    let until_reset = if decision.limited {
        decision.retry_after
    } else {
        let spent = decision.rate.burst.saturating_sub(decision.remaining);
        Duration::from_secs_f64((f64::from(spent) / decision.rate.qps).min(1e9))
    };
    DescriptorStatus {
        code: if decision.allowed {
            Code::Ok
        } else {
            Code::OverLimit
        } as i32,
        current_limit: Some(RateLimit {
            name: decision.policy.to_string(),
            requests_per_unit,
            unit: unit as i32,
        }),
        limit_remaining: decision.remaining,
        duration_until_reset: Some(prost_types::Duration {
            seconds: until_reset.as_secs() as i64,
            nanos: until_reset.subsec_nanos() as i32,
        }),
        quota: None,
    }
}

/// A rate in the smallest of Envoy's units that holds at least one whole
/// request, rounded down: 0.5 qps is 30 per minute, 100.5 qps 100 per second.
fn per_unit(qps: f64) -> (u32, Unit) {
    [
        (1.0, Unit::Second),
        (60.0, Unit::Minute),
        (3600.0, Unit::Hour),
        (86_400.0, Unit::Day),
    ]
    .into_iter()
    .map(|(seconds, unit)| ((qps * seconds).floor(), unit))
    .find(|(n, _)| *n >= 1.0)
    .map(|(n, unit)| (n.min(f64::from(u32::MAX)) as u32, unit))
    .unwrap_or((1, Unit::Day))
}

/// The decision whose headers the client sees: the first denied, else the
/// one with the least remaining.
fn binding(decided: &[Decision]) -> Option<&Decision> {
    decided
        .iter()
        .find(|d| !d.allowed)
        .or_else(|| decided.iter().min_by_key(|d| d.remaining))
}

/// The HTTP check's `RateLimit` headers (and `Retry-After` when denied),
/// for Envoy to add to its response.
fn headers(decision: &Decision) -> Vec<HeaderValue> {
    let mut out = Vec::with_capacity(3);
    rate_limit_headers(decision, |name, value| {
        out.push(HeaderValue {
            key: name.as_str().to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
            raw_value: Vec::new(),
        });
    });
    out
}

/// At most 64 bytes of an outside string, for an error message.
pub(crate) fn truncated(text: &str) -> &str {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_given_in_the_smallest_unit_that_holds_a_request() {
        assert_eq!(per_unit(100.0), (100, Unit::Second));
        assert_eq!(per_unit(0.5), (30, Unit::Minute));
        assert_eq!(per_unit(0.001), (3, Unit::Hour));
        assert_eq!(per_unit(100.5), (100, Unit::Second));
        assert_eq!(per_unit(1e-7), (1, Unit::Day));
        assert_eq!(per_unit(1e12), (u32::MAX, Unit::Second));
    }

    #[test]
    fn long_outside_strings_are_cut_on_a_character() {
        let long = "é".repeat(100);
        assert_eq!(truncated(&long).len(), 64);
        assert_eq!(truncated("envoy"), "envoy");
    }
}

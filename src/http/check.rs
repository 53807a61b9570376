//! `POST /v1/ratelimit/check`: asks the rate limiter and answers with the
//! decision, the IETF draft `RateLimit-Policy`/`RateLimit` headers and
//! `Retry-After`.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::AppState;
use super::auth::{SpendDenied, may_spend, unauthorized};
use super::reply::{Body, json, problem};
use crate::ratelimit::Decision;

/// Largest body of a rate-limit check (a batch of 100 fits).
const MAX_CHECK_BODY_BYTES: usize = 16 * 1024;

/// Most checks in one batch.
pub const MAX_BATCH_CHECKS: usize = 100;

/// The body: one check (`tenant`, `cost`) or a batch (`checks`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    tenant: Option<String>,
    cost: Option<u32>,
    checks: Option<Vec<OneCheck>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OneCheck {
    tenant: String,
    #[serde(default = "one")]
    cost: u32,
}

fn one() -> u32 {
    1
}

#[derive(Serialize)]
struct CheckReply<'a> {
    allowed: bool,
    tenant: &'a str,
    limit: u32,
    qps: f64,
    remaining: u32,
    retry_after_ms: u64,
    policy: &'a str,
    reason: &'a str,
    backend: &'a str,
}

impl<'a> CheckReply<'a> {
    fn new(tenant: &'a str, decision: &'a Decision) -> CheckReply<'a> {
        CheckReply {
            allowed: decision.allowed,
            tenant,
            limit: decision.rate.burst,
            qps: decision.rate.qps,
            remaining: decision.remaining,
            retry_after_ms: decision.retry_after.as_millis() as u64,
            policy: &decision.policy,
            reason: decision.reason,
            backend: decision.backend,
        }
    }
}

#[derive(Serialize)]
struct BatchReply<'a> {
    /// True when every check is allowed.
    allowed: bool,
    results: Vec<CheckReply<'a>>,
}

/// The checks a body asks for (and whether it is a batch), validated, or
/// what is wrong with it (a 400).
fn parse_checks(body: &[u8]) -> Result<(Vec<OneCheck>, bool), String> {
    let body: CheckBody = serde_json::from_slice(body).map_err(|err| {
        format!("expected {{\"tenant\": \"...\", \"cost\": 1}} or {{\"checks\": [...]}}: {err}")
    })?;
    let (checks, batch) = match body {
        CheckBody {
            tenant: Some(tenant),
            cost,
            checks: None,
        } => (
            vec![OneCheck {
                tenant,
                cost: cost.unwrap_or(1),
            }],
            false,
        ),
        CheckBody {
            tenant: None,
            cost: None,
            checks: Some(checks),
        } => (checks, true),
        CheckBody {
            checks: Some(_), ..
        } => {
            return Err("give either tenant (and cost) or checks, not both".into());
        }
        CheckBody { .. } => return Err("missing field `tenant` (or `checks`)".into()),
    };
    if batch && !(1..=MAX_BATCH_CHECKS).contains(&checks.len()) {
        return Err(format!(
            "checks must hold 1 to {MAX_BATCH_CHECKS} checks, not {}",
            checks.len()
        ));
    }
    for (i, check) in checks.iter().enumerate() {
        let at = if batch {
            format!("checks[{i}].")
        } else {
            String::new()
        };
        if let Err(reject) = crate::event::validate_tenant(&check.tenant) {
            return Err(format!("{at}tenant: {}", reject.detail));
        }
        if check.cost == 0 || check.cost > 1_000_000 {
            return Err(format!("{at}cost must be between 1 and 1000000"));
        }
    }
    Ok((checks, batch))
}

/// `POST /v1/ratelimit/check`: 200 when allowed, 429 when denied, with the
/// IETF draft `RateLimit-Policy` and `RateLimit` headers and `Retry-After`.
/// A batch (`{"checks": [...]}`) answers every check in `results`, 429 when
/// any is denied, with `Retry-After` the longest wait.
pub(super) async fn ratelimit_check(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    // Who may spend at all is known before the body; which tenant, after.
    if may_spend(state, &parts.headers, "") == Err(SpendDenied::Unauthenticated) {
        return unauthorized();
    }
    let collect = Limited::new(body, MAX_CHECK_BODY_BYTES).collect();
    let body = match tokio::time::timeout(state.limits.body_read_timeout, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("a check body is at most {MAX_CHECK_BODY_BYTES} bytes"),
            );
        }
        Err(_) => {
            return problem(
                StatusCode::REQUEST_TIMEOUT,
                "the request body was not received in time",
            );
        }
    };
    let (checks, batch) = match parse_checks(&body) {
        Ok(parsed) => parsed,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, &detail),
    };
    if let Some(check) = checks
        .iter()
        .find(|c| may_spend(state, &parts.headers, &c.tenant) == Err(SpendDenied::Forbidden))
    {
        return problem(
            StatusCode::FORBIDDEN,
            &format!(
                "this caller's token is not bound to tenant {:?} ([ratelimit.callers])",
                check.tenant
            ),
        );
    }
    let asked: Vec<(&str, u32)> = checks.iter().map(|c| (c.tenant.as_str(), c.cost)).collect();
    let decisions = state.rate_limits.decide(&asked).await;
    let all_allowed = decisions.iter().all(|d| d.allowed);
    let status = if all_allowed {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let longest_wait = decisions
        .iter()
        .filter(|d| !d.allowed)
        .map(|d| d.retry_after)
        .max();
    let mut response = match (batch, decisions.first()) {
        (false, Some(decision)) => {
            let mut response = json(status, &CheckReply::new(&checks[0].tenant, decision));
            rate_limit_headers(response.headers_mut(), decision);
            response
        }
        _ => json(
            status,
            &BatchReply {
                allowed: all_allowed,
                results: checks
                    .iter()
                    .zip(&decisions)
                    .map(|(check, decision)| CheckReply::new(&check.tenant, decision))
                    .collect(),
            },
        ),
    };
    if let Some(wait) = longest_wait {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// draft-ietf-httpapi-ratelimit-headers: the policy (quota q over window w
/// seconds) and the current state (remaining r, seconds until reset t).
fn rate_limit_headers(headers: &mut HeaderMap, decision: &Decision) {
    let window = (decision.rate.burst as f64 / decision.rate.qps)
        .ceil()
        .max(1.0) as u64;
    let reset = if decision.limited {
        decision.retry_after.as_secs_f64().ceil() as u64
    } else {
        0
    };
    let policy_name = decision.policy.replace('"', "");
    if let Ok(value) = HeaderValue::from_str(&format!(
        "\"{policy_name}\";q={};w={window}",
        decision.rate.burst
    )) {
        headers.insert("ratelimit-policy", value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!(
        "\"{policy_name}\";r={};t={reset}",
        decision.remaining
    )) {
        headers.insert("ratelimit", value);
    }
}

//! `POST /v1/ratelimit/check`: asks the rate limiter and answers with the
//! decision, the IETF draft `RateLimit-Policy`/`RateLimit` headers and
//! `Retry-After`.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::AppState;
use super::auth::{SpendDenied, may_spend, unauthorized};
use super::reply::{Body, json, problem};

/// Largest body of a rate-limit check.
const MAX_CHECK_BODY_BYTES: usize = 4096;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
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
}

/// `POST /v1/ratelimit/check`: 200 when allowed, 429 when denied, with the
/// IETF draft `RateLimit-Policy` and `RateLimit` headers and `Retry-After`.
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
                "a check body is at most 4096 bytes",
            );
        }
        Err(_) => {
            return problem(
                StatusCode::REQUEST_TIMEOUT,
                "the request body was not received in time",
            );
        }
    };
    let request: CheckRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"tenant\": \"...\", \"cost\": 1}}: {err}"),
            );
        }
    };
    if let Err(reject) = crate::event::validate_tenant(&request.tenant) {
        return problem(
            StatusCode::BAD_REQUEST,
            &format!("tenant: {}", reject.detail),
        );
    }
    if request.cost == 0 || request.cost > 1_000_000 {
        return problem(
            StatusCode::BAD_REQUEST,
            "cost must be between 1 and 1000000",
        );
    }
    if may_spend(state, &parts.headers, &request.tenant) == Err(SpendDenied::Forbidden) {
        return problem(
            StatusCode::FORBIDDEN,
            &format!(
                "this caller's token is not bound to tenant {:?} ([ratelimit.callers])",
                request.tenant
            ),
        );
    }
    let decision = state.rate_limits.check(&request.tenant, request.cost);
    let retry_after_ms = decision.retry_after.as_millis() as u64;
    let status = if decision.allowed {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let mut response = json(
        status,
        &CheckReply {
            allowed: decision.allowed,
            tenant: &request.tenant,
            limit: decision.rate.burst,
            qps: decision.rate.qps,
            remaining: decision.remaining,
            retry_after_ms,
            policy: &decision.policy,
            reason: decision.reason,
        },
    );
    // draft-ietf-httpapi-ratelimit-headers: the policy (quota q over window w
    // seconds) and the current state (remaining r, seconds until reset t).
    let window = (decision.rate.burst as f64 / decision.rate.qps)
        .ceil()
        .max(1.0) as u64;
    let reset = if decision.limited {
        decision.retry_after.as_secs_f64().ceil() as u64
    } else {
        0
    };
    let headers = response.headers_mut();
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
    if !decision.allowed {
        let seconds = decision.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

//! `POST /v1/ratelimit/check`: asks the rate limiter and answers with the
//! decision, the IETF draft `RateLimit-Policy`/`RateLimit` headers and
//! `Retry-After`.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::borrow::Cow;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::AppState;
use super::auth::{SpendDenied, may_spend, unauthorized};
use super::reply::{Body, json_bytes, problem};
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

/// Writes one check's answer as JSON: `allowed`, `tenant`, `limit`, `qps`,
/// `remaining`, `retry_after_ms`, `policy`, `reason`, `backend`. Written
/// directly (a check is a hot path; serde's generic serializer was a third
/// of a check's instructions); a test compares it with serde_json's.
fn write_reply(out: &mut Vec<u8>, tenant: &str, decision: &Decision) {
    let mut integers = itoa::Buffer::new();
    out.extend_from_slice(b"{\"allowed\":");
    out.extend_from_slice(if decision.allowed { b"true" } else { b"false" });
    out.extend_from_slice(b",\"tenant\":");
    write_json_str(out, tenant);
    out.extend_from_slice(b",\"limit\":");
    out.extend_from_slice(integers.format(decision.rate.burst).as_bytes());
    out.extend_from_slice(b",\"qps\":");
    write_json_f64(out, decision.rate.qps);
    out.extend_from_slice(b",\"remaining\":");
    out.extend_from_slice(integers.format(decision.remaining).as_bytes());
    out.extend_from_slice(b",\"retry_after_ms\":");
    let retry_after_ms = decision.retry_after.as_millis() as u64;
    out.extend_from_slice(integers.format(retry_after_ms).as_bytes());
    out.extend_from_slice(b",\"policy\":");
    write_json_str(out, &decision.policy);
    out.extend_from_slice(b",\"reason\":");
    write_json_str(out, decision.reason);
    out.extend_from_slice(b",\"backend\":");
    write_json_str(out, decision.backend);
    out.push(b'}');
}

/// A JSON string: copied as is when nothing needs escaping (tenant ids
/// never do), else escaped by serde_json.
fn write_json_str(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, text).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// A finite number as JSON (quotas are validated finite; anything else
/// would be `null`, as serde_json writes it).
fn write_json_f64(out: &mut Vec<u8>, value: f64) {
    if value.is_finite() {
        out.extend_from_slice(dtoa::Buffer::new().format(value).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
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
    let mut body = Vec::with_capacity(256 * decisions.len());
    match (batch, decisions.first()) {
        (false, Some(decision)) => write_reply(&mut body, &checks[0].tenant, decision),
        _ => {
            body.extend_from_slice(b"{\"allowed\":");
            body.extend_from_slice(if all_allowed { b"true" } else { b"false" });
            body.extend_from_slice(b",\"results\":[");
            for (i, (check, decision)) in checks.iter().zip(&decisions).enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                write_reply(&mut body, &check.tenant, decision);
            }
            body.extend_from_slice(b"]}");
        }
    }
    let mut response = json_bytes(status, body);
    if let (false, Some(decision)) = (batch, decisions.first()) {
        rate_limit_headers(response.headers_mut(), decision);
    }
    if let Some(wait) = longest_wait {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// `RateLimit-Policy`, parsed once.
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`, parsed once.
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

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
    // A quoted policy name: a quote inside would end it early.
    let name: Cow<'_, str> = if decision.policy.contains('"') {
        Cow::Owned(decision.policy.replace('"', ""))
    } else {
        Cow::Borrowed(&decision.policy)
    };
    let mut integers = itoa::Buffer::new();
    let quoted = |capacity: usize| {
        let mut value = String::with_capacity(name.len() + capacity);
        value.push('"');
        value.push_str(&name);
        value.push('"');
        value
    };
    let mut policy = quoted(24);
    policy.push_str(";q=");
    policy.push_str(integers.format(decision.rate.burst));
    policy.push_str(";w=");
    policy.push_str(integers.format(window));
    if let Ok(value) = HeaderValue::try_from(policy) {
        headers.insert(RATELIMIT_POLICY, value);
    }
    let mut state = quoted(24);
    state.push_str(";r=");
    state.push_str(integers.format(decision.remaining));
    state.push_str(";t=");
    state.push_str(integers.format(reset));
    if let Ok(value) = HeaderValue::try_from(state) {
        headers.insert(RATELIMIT, value);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ratelimit::Rate;

    fn decision(policy: &str, qps: f64) -> Decision {
        Decision {
            allowed: false,
            limited: true,
            rate: Rate { qps, burst: 7 },
            remaining: 0,
            retry_after: Duration::from_micros(1_500_250),
            policy: Cow::Owned(policy.into()),
            reason: "quota exceeded",
            backend: "redis",
        }
    }

    #[test]
    fn the_direct_writer_says_what_serde_json_says() {
        for (policy, qps) in [
            ("default", 100.0),
            ("tier:gold", 0.001),
            ("tenant:a/b@c", 1e9),
            ("tier:odd \"quoted\" \\ tab\t name é", 33.333333333333336),
        ] {
            let d = decision(policy, qps);
            let mut written = Vec::new();
            write_reply(&mut written, "clinic-1.eu:x", &d);
            let written: serde_json::Value = serde_json::from_slice(&written).unwrap();
            let expected = serde_json::json!({
                "allowed": d.allowed,
                "tenant": "clinic-1.eu:x",
                "limit": d.rate.burst,
                "qps": d.rate.qps,
                "remaining": d.remaining,
                "retry_after_ms": 1500,
                "policy": policy,
                "reason": d.reason,
                "backend": d.backend,
            });
            assert_eq!(written, expected, "{policy}");
        }
    }

    #[test]
    fn rate_limit_headers_quote_the_policy_without_its_quotes() {
        let mut headers = HeaderMap::new();
        rate_limit_headers(&mut headers, &decision("tier:\"gold\"", 3.5));
        assert_eq!(headers["ratelimit-policy"], "\"tier:gold\";q=7;w=2");
        assert_eq!(headers["ratelimit"], "\"tier:gold\";r=0;t=2");
    }
}

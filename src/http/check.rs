//! `POST /v1/ratelimit/check`: asks the rate limiter and answers with the
//! decision, the IETF draft `RateLimit-Policy`/`RateLimit` headers and
//! `Retry-After`.

use std::borrow::Cow;
use std::cell::RefCell;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::auth::{SpendDenied, may_spend, may_spend_as, unauthorized};
use super::body::{BodyError, read_body};
use super::reply::{Body, json_bytes, problem};
use super::{AppState, CheckState};
use crate::ratelimit::{Ask, Decision, Protocol};

/// Largest body of a rate-limit check (a batch of 100 fits).
const MAX_CHECK_BODY_BYTES: usize = 16 * 1024;

/// Most checks in one batch.
pub const MAX_BATCH_CHECKS: usize = 100;

/// The body: one check (`tenant`, `cost`) or a batch (`checks`). Tenant ids
/// borrow from the body unless they hold escapes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody<'a> {
    #[serde(borrow)]
    tenant: Option<Cow<'a, str>>,
    cost: Option<u32>,
    #[serde(borrow)]
    checks: Option<Vec<OneCheck<'a>>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OneCheck<'a> {
    #[serde(borrow)]
    tenant: Cow<'a, str>,
    #[serde(default = "one")]
    cost: u32,
}

fn one() -> u32 {
    1
}

/// What one request asks: a single check (no allocation, and the
/// `RateLimit` headers in the answer) or a batch.
enum Asked<'a> {
    One(OneCheck<'a>),
    Batch(Vec<OneCheck<'a>>),
}

impl<'a> Asked<'a> {
    fn checks(&self) -> &[OneCheck<'a>] {
        match self {
            Asked::One(check) => std::slice::from_ref(check),
            Asked::Batch(checks) => checks,
        }
    }
}

/// One check's answer as JSON.
#[derive(serde::Serialize)]
struct Reply<'a> {
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

/// Appends one check's answer: `allowed`, `tenant`, `limit`, `qps`,
/// `remaining`, `retry_after_ms`, `policy`, `reason`, `backend`. serde_json
/// writes straight into `out` (the thread's scratch buffer, whose capacity
/// is kept), so a check allocates nothing here.
fn write_reply(out: &mut Vec<u8>, tenant: &str, decision: &Decision) {
    let reply = Reply {
        allowed: decision.allowed,
        tenant,
        limit: decision.rate.burst,
        qps: decision.rate.qps,
        remaining: decision.remaining,
        retry_after_ms: decision.retry_after.as_millis() as u64,
        policy: &decision.policy,
        reason: decision.reason,
        backend: decision.backend,
    };
    // Writing into a Vec cannot fail, and every field serializes.
    let _ = serde_json::to_writer(&mut *out, &reply);
}

/// The check or batch a body asks for, validated, or what is wrong with it
/// (a 400).
fn parse_checks(body: &[u8]) -> Result<Asked<'_>, String> {
    if let Some((tenant, cost)) = parse_plain_check(body) {
        return validate(Asked::One(OneCheck {
            tenant: Cow::Borrowed(tenant),
            cost,
        }));
    }
    let body: CheckBody<'_> = serde_json::from_slice(body).map_err(|err| {
        format!("expected {{\"tenant\": \"...\", \"cost\": 1}} or {{\"checks\": [...]}}: {err}")
    })?;
    let asked = match body {
        CheckBody {
            tenant: Some(tenant),
            cost,
            checks: None,
        } => Asked::One(OneCheck {
            tenant,
            cost: cost.unwrap_or(1),
        }),
        CheckBody {
            tenant: None,
            cost: None,
            checks: Some(checks),
        } => Asked::Batch(checks),
        CheckBody {
            checks: Some(_), ..
        } => {
            return Err("give either tenant (and cost) or checks, not both".into());
        }
        CheckBody { .. } => return Err("missing field `tenant` (or `checks`)".into()),
    };
    validate(asked)
}

/// The body as clients send it, `{"tenant":"<id>"}` or
/// `{"tenant":"<id>","cost":<n>}` with nothing else (no spaces, no escapes,
/// a plain integer), read without the general parser; `None` for anything
/// else, which serde_json then reads (a property test checks that both agree).
fn parse_plain_check(body: &[u8]) -> Option<(&str, u32)> {
    let rest = body.strip_prefix(b"{\"tenant\":\"")?;
    let end = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    if rest[end] != b'"' {
        return None;
    }
    let tenant = std::str::from_utf8(&rest[..end]).ok()?;
    let cost = match &rest[end + 1..] {
        b"}" => 1,
        more => {
            let digits = more.strip_prefix(b",\"cost\":")?.strip_suffix(b"}")?;
            // JSON has no leading zeros; nine digits cannot overflow.
            let plain = matches!(digits, [b'1'..=b'9', ..] | [b'0'])
                && digits.len() <= 9
                && digits.iter().all(u8::is_ascii_digit);
            if !plain {
                return None;
            }
            digits
                .iter()
                .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'))
        }
    };
    Some((tenant, cost))
}

/// Checks the tenant ids and costs of parsed checks.
fn validate(asked: Asked<'_>) -> Result<Asked<'_>, String> {
    let batch = matches!(asked, Asked::Batch(_));
    let checks = asked.checks();
    if batch && !(1..=MAX_BATCH_CHECKS).contains(&checks.len()) {
        return Err(format!(
            "checks must hold 1 to {MAX_BATCH_CHECKS} checks, not {}",
            checks.len()
        ));
    }
    let at = |i: usize| {
        if batch {
            format!("checks[{i}].")
        } else {
            String::new()
        }
    };
    for (i, check) in checks.iter().enumerate() {
        if let Err(reject) = crate::event::validate_tenant(&check.tenant) {
            return Err(format!("{}tenant: {}", at(i), reject.detail));
        }
        if check.cost == 0 || check.cost > 1_000_000 {
            return Err(format!("{}cost must be between 1 and 1000000", at(i)));
        }
    }
    Ok(asked)
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
    let body = match read_body(
        body,
        MAX_CHECK_BODY_BYTES,
        state.listener.server.body_read_timeout,
    )
    .await
    {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("a check body is at most {MAX_CHECK_BODY_BYTES} bytes"),
            );
        }
        Err(BodyError::TimedOut) => {
            return problem(
                StatusCode::REQUEST_TIMEOUT,
                "the request body was not received in time",
            );
        }
        Err(BodyError::Unreadable) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
    };
    let asked = match parse_checks(&body) {
        Ok(asked) => asked,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, &detail),
    };
    if let Some(check) = asked
        .checks()
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
    match asked {
        Asked::One(check) => decide_single(&state.check, check).await.into_response(),
        Asked::Batch(checks) => answer_batch(&state.check, &checks).await,
    }
}

/// A single check, answered as [`ratelimit_check`] answers it, for the
/// check lane (`lane`), which holds the whole request and its bearer token;
/// `None` for anything else (a batch, a body in error, a token that may
/// not spend), which the lane leaves to [`ratelimit_check`] to answer.
pub(super) async fn answer_single<'a>(
    state: &AppState,
    bearer: Option<&str>,
    body: &'a [u8],
) -> Option<SingleAnswer<'a>> {
    let Ok(Asked::One(check)) = parse_checks(body) else {
        return None;
    };
    may_spend_as(state, bearer, &check.tenant).ok()?;
    Some(decide_single(&state.check, check).await)
}

async fn decide_single<'a>(state: &CheckState, check: OneCheck<'a>) -> SingleAnswer<'a> {
    let decision = state
        .rate_limits
        .decide_one(&check.tenant, check.cost, Protocol::Http)
        .await;
    SingleAnswer {
        tenant: check.tenant,
        decision,
    }
}

/// A single check's answer: the status, the headers (`Content-Type`, the
/// `RateLimit` pair and, when denied, `Retry-After`) and the JSON body.
/// Made into a hyper response, or written out by the check lane without
/// allocating.
pub(super) struct SingleAnswer<'a> {
    tenant: Cow<'a, str>,
    decision: Decision,
}

impl SingleAnswer<'_> {
    pub(super) fn status(&self) -> StatusCode {
        status_of(self.decision.allowed)
    }

    /// Calls `header` with each header, in order (`Content-Length` and
    /// `Date` are the server's): the content type, then
    /// [`rate_limit_headers`].
    pub(super) fn headers(&self, mut header: impl FnMut(&HeaderName, &[u8])) {
        header(&header::CONTENT_TYPE, b"application/json");
        rate_limit_headers(&self.decision, header);
    }

    pub(super) fn write_body(&self, out: &mut Vec<u8>) {
        write_reply(out, &self.tenant, &self.decision);
    }

    fn into_response(self) -> Response<Body> {
        let body = with_scratch(|body| {
            self.write_body(body);
            Bytes::copy_from_slice(body)
        });
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        self.headers(|name, value| {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.insert(name.clone(), value);
            }
        });
        response
    }
}

/// The `RateLimit` pair of a decision, and `Retry-After` when it is
/// denied. The pair follows draft-ietf-httpapi-ratelimit-headers: the
/// policy (quota q over window w seconds) and the current state (remaining
/// r, seconds until reset t). The HTTP check answers with them; the gRPC
/// service (`crate::rls`) hands them to Envoy to add to its response.
pub fn rate_limit_headers(decision: &Decision, mut header: impl FnMut(&HeaderName, &[u8])) {
    let window = (decision.rate.burst as f64 / decision.rate.qps)
        .ceil()
        .max(1.0) as u64;
    let reset = if decision.limited {
        decision.retry_after.as_secs_f64().ceil() as u64
    } else {
        0
    };
    let mut integers = itoa::Buffer::new();
    if let Some(value) = policy_header(&decision.policy, decision.rate.burst, window) {
        header(&RATELIMIT_POLICY, value.as_bytes());
    }
    with_scratch(|value| {
        write_quoted_policy(value, &decision.policy);
        value.extend_from_slice(b";r=");
        value.extend_from_slice(integers.format(decision.remaining).as_bytes());
        value.extend_from_slice(b";t=");
        value.extend_from_slice(integers.format(reset).as_bytes());
        if is_header_value(value) {
            header(&RATELIMIT, value);
        }
    });
    if !decision.allowed {
        let seconds = retry_after_seconds(decision.retry_after);
        header(&header::RETRY_AFTER, integers.format(seconds).as_bytes());
    }
}

/// What `HeaderValue::from_bytes` accepts: no control characters but tab.
fn is_header_value(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| (b >= 32 && b != 127) || b == b'\t')
}

/// A batch's answer: every decision in `results`, 429 when any is denied,
/// with `Retry-After` the longest wait.
async fn answer_batch(state: &CheckState, checks: &[OneCheck<'_>]) -> Response<Body> {
    let asked: Vec<Ask<'_>> = checks
        .iter()
        .map(|c| Ask::new(c.tenant.as_ref(), c.cost))
        .collect();
    let decisions = state.rate_limits.decide(&asked, Protocol::Http).await;
    let all_allowed = decisions.iter().all(|d| d.allowed);
    let body = with_scratch(|body| {
        body.extend_from_slice(b"{\"allowed\":");
        body.extend_from_slice(if all_allowed { b"true" } else { b"false" });
        body.extend_from_slice(b",\"results\":[");
        for (i, (check, decision)) in checks.iter().zip(&decisions).enumerate() {
            if i > 0 {
                body.push(b',');
            }
            write_reply(body, &check.tenant, decision);
        }
        body.extend_from_slice(b"]}");
        Bytes::copy_from_slice(body)
    });
    let mut response = json_bytes(status_of(all_allowed), body);
    let longest_wait = decisions
        .iter()
        .filter(|d| !d.allowed)
        .map(|d| d.retry_after)
        .max();
    if let Some(wait) = longest_wait {
        retry_after(&mut response, wait);
    }
    response
}

fn status_of(allowed: bool) -> StatusCode {
    if allowed {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    }
}

/// `Retry-After` in whole seconds, at least 1.
fn retry_after(response: &mut Response<Body>, wait: std::time::Duration) {
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_seconds(wait)),
    );
}

fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

thread_local! {
    /// Where answers are written before they are copied out at their exact
    /// size: one allocation per answer instead of a growing buffer and a
    /// shared handle around it.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// Runs `write` on this thread's empty scratch buffer (a fresh one if it is
/// in use, which a handler never does, as `write` cannot await).
fn with_scratch<R>(write: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            let result = write(&mut buffer);
            // A large batch's answer is not kept for the thread's lifetime.
            buffer.shrink_to(64 * 1024);
            result
        }
        Err(_) => write(&mut Vec::new()),
    })
}

/// `RateLimit-Policy`, parsed once.
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`, parsed once.
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A `RateLimit-Policy` value as last written on this thread, and what it
/// was written from.
struct PolicyHeader {
    policy: String,
    burst: u32,
    window: u64,
    value: HeaderValue,
}

thread_local! {
    /// The policy header is the same for every tenant on one quota: kept,
    /// and shared by reference count while the quota stays the same.
    static LAST_POLICY_HEADER: RefCell<Option<PolicyHeader>> = const { RefCell::new(None) };
}

/// `"<policy>";q=<burst>;w=<window>`, or `None` if the policy name cannot
/// be a header value.
fn policy_header(policy: &str, burst: u32, window: u64) -> Option<HeaderValue> {
    LAST_POLICY_HEADER.with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        if let Some(kept) = last.as_ref()
            && kept.burst == burst
            && kept.window == window
            && kept.policy == policy
        {
            return Some(kept.value.clone());
        }
        let mut integers = itoa::Buffer::new();
        let value = with_scratch(|value| {
            write_quoted_policy(value, policy);
            value.extend_from_slice(b";q=");
            value.extend_from_slice(integers.format(burst).as_bytes());
            value.extend_from_slice(b";w=");
            value.extend_from_slice(integers.format(window).as_bytes());
            HeaderValue::from_bytes(value)
        })
        .ok()?;
        *last = Some(PolicyHeader {
            policy: policy.to_owned(),
            burst,
            window,
            value: value.clone(),
        });
        Some(value)
    })
}

/// The policy name in quotes, without quotes of its own (one would end it
/// early).
fn write_quoted_policy(out: &mut Vec<u8>, policy: &str) {
    out.push(b'"');
    out.extend(policy.bytes().filter(|&b| b != b'"'));
    out.push(b'"');
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
    fn the_answer_holds_every_field() {
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
        // The bytes, as the hand-written writer this replaced wrote them.
        let mut written = Vec::new();
        write_reply(&mut written, "acme", &decision("default", 100.0));
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "{\"allowed\":false,\"tenant\":\"acme\",\"limit\":7,\"qps\":100.0,\"remaining\":0,\
             \"retry_after_ms\":1500,\"policy\":\"default\",\"reason\":\"quota exceeded\",\
             \"backend\":\"redis\"}"
        );
    }

    #[test]
    fn rate_limit_headers_quote_the_policy_without_its_quotes() {
        let answer = SingleAnswer {
            tenant: Cow::Borrowed("acme"),
            decision: decision("tier:\"gold\"", 3.5),
        };
        let response = answer.into_response();
        let headers = response.headers();
        assert_eq!(headers["ratelimit-policy"], "\"tier:gold\";q=7;w=2");
        assert_eq!(headers["ratelimit"], "\"tier:gold\";r=0;t=2");
        assert_eq!(headers["retry-after"], "2");
        assert_eq!(headers["content-type"], "application/json");
    }

    /// What serde_json makes of a body: `(tenant, cost)` for a single check.
    fn parsed_by_serde(body: &[u8]) -> Option<(String, u32)> {
        match serde_json::from_slice::<CheckBody<'_>>(body).ok()? {
            CheckBody {
                tenant: Some(tenant),
                cost,
                checks: None,
            } => Some((tenant.into_owned(), cost.unwrap_or(1))),
            _ => None,
        }
    }

    #[test]
    fn the_plain_reader_takes_the_common_bodies_and_leaves_the_rest() {
        assert_eq!(
            parse_plain_check(br#"{"tenant":"acme"}"#),
            Some(("acme", 1))
        );
        assert_eq!(
            parse_plain_check(br#"{"tenant":"acme","cost":25}"#),
            Some(("acme", 25))
        );
        for other in [
            &br#"{"tenant": "acme"}"#[..],
            br#"{"tenant":"ac\"me"}"#,
            br#"{"tenant":"acme","cost":007}"#,
            br#"{"tenant":"acme","cost":1.0}"#,
            br#"{"tenant":"acme","cost":9999999999}"#,
            br#"{"tenant":"acme"} "#,
            br#"{"cost":1,"tenant":"acme"}"#,
        ] {
            assert_eq!(
                parse_plain_check(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    proptest::proptest! {
        /// Whatever the plain reader accepts, serde_json reads the same way.
        #[test]
        fn the_plain_reader_agrees_with_serde_json(
            tenant in "([a-z0-9.:é-]{0,12}|[a-z\"\\\\ \t\u{0}-\u{1f}]{0,4})",
            cost in proptest::option::of("(-?[0-9]{1,11}(\\.[0-9])?|0[0-9]+| 7|true)"),
            tail in "( |\n|,|)",
        ) {
            let mut body = format!("{{\"tenant\":\"{tenant}\"");
            if let Some(cost) = &cost {
                body.push_str(&format!(",\"cost\":{cost}"));
            }
            body.push('}');
            body.push_str(&tail);
            if let Some((tenant, cost)) = parse_plain_check(body.as_bytes()) {
                proptest::prop_assert_eq!(
                    parsed_by_serde(body.as_bytes()),
                    Some((tenant.to_owned(), cost)),
                    "{}", body
                );
            }
        }
    }
}

//! The HTTP listener (hyper 1, HTTP/1.1): `/metrics`, `/healthz`, `/readyz`
//! and `POST /v1/events`.
//!
//! Every connection is bounded: a cap on concurrent connections (excess
//! connections are closed at once and counted), a header-read timeout, a body
//! size limit and a body-read timeout. Errors are RFC 9457 problem details.
//! On shutdown the listener stops accepting, open connections are told to
//! close after their current request, and the server waits for them up to
//! the grace period.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::event::RejectReason;
use crate::ingest::{IngestStats, Source, ingest_payload};
use crate::metrics::{self, HttpLabels, HttpMetrics};
use crate::store::Store;
use crate::telemetry::RateLimitedWarn;

/// At most this many refused lines are listed in a `/v1/events` reply; the
/// count of all of them is always given.
const MAX_LISTED_REJECTS: usize = 100;

/// Media types `POST /v1/events` accepts. Each line's format is detected by
/// its first byte, so all of them mean the same.
const EVENT_MEDIA_TYPES: [&str; 6] = [
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/json",
    "text/plain",
    "application/octet-stream",
];

type Body = Full<Bytes>;

/// What the request handlers share.
#[derive(Debug)]
pub struct AppState {
    pub registry: Registry,
    pub store: Arc<Store>,
    pub stats: Arc<IngestStats>,
    pub http_metrics: HttpMetrics,
    /// True once every listener is bound, false again while draining.
    pub ready: AtomicBool,
    pub limits: HttpLimits,
    pub auth_token: Option<crate::config::Secret>,
    /// Store shards `[first, first + count)` serve HTTP requests, round robin.
    pub http_shards: (usize, usize),
    pub next_shard: AtomicUsize,
    pub rate_limits: Arc<crate::ratelimit::RateLimits>,
    pub judgement: crate::detect::SharedJudgement,
    pub targets: Vec<crate::collect::SharedStatus>,
    /// Samples for the capacity view and the tenant detail.
    pub histories: crate::capacity::SharedTargetHistories,
    pub tenant_histories: crate::capacity::SharedTenantHistories,
    pub api: crate::config::ApiConfig,
}

/// Size and time limits of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_line_bytes: usize,
    pub shutdown_grace: Duration,
}

/// Serves `listener` until `shutdown`, then drains open connections for at
/// most the grace period.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    let accept_warn = RateLimitedWarn::new(Duration::from_secs(10));
    loop {
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    if let Some(suppressed) = accept_warn.should_log() {
                        tracing::warn!(error = %err, suppressed, "HTTP accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            state.http_metrics.connections_rejected.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn_state = state.clone();
        let service = service_fn(move |req| handle(conn_state.clone(), req));
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(state.limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Connection errors (resets, timeouts) are the client's business.
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(state.limits.shutdown_grace) => {
            tracing::warn!(grace = ?state.limits.shutdown_grace, "Grace period over; closing open HTTP connections");
        }
    }
}

async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (endpoint, response) = route(&state, req).await;
    state
        .http_metrics
        .requests
        .get_or_create(&HttpLabels {
            endpoint,
            code: response.status().as_u16(),
        })
        .inc();
    Ok(response)
}

async fn route(state: &AppState, req: Request<Incoming>) -> (&'static str, Response<Body>) {
    let path = req.uri().path();
    let (endpoint, allowed): (&'static str, &'static str) = match path {
        "/metrics" => ("metrics", "GET, HEAD"),
        "/healthz" => ("healthz", "GET, HEAD"),
        "/readyz" => ("readyz", "GET, HEAD"),
        "/v1/events" => ("events", "POST"),
        "/v1/ratelimit/check" => ("ratelimit_check", "POST"),
        "/api/v1/flags" => ("flags", "GET, HEAD"),
        "/api/v1/advice" => ("advice", "GET, HEAD"),
        "/api/v1/tenants" => ("tenants", "GET, HEAD"),
        "/api/v1/targets" => ("targets", "GET, HEAD"),
        "/api/v1/capacity" => ("capacity", "GET, HEAD"),
        "/api/v1/openapi.json" => ("openapi", "GET, HEAD"),
        p if p.starts_with("/api/v1/tenants/") => ("tenant", "GET, HEAD"),
        _ => {
            let detail = format!("no endpoint at {path}");
            return ("unknown", problem(StatusCode::NOT_FOUND, &detail));
        }
    };
    let method_ok = match allowed {
        "POST" => req.method() == Method::POST,
        _ => req.method() == Method::GET || req.method() == Method::HEAD,
    };
    if !method_ok {
        let mut response = problem(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} accepts {allowed}"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
        return (endpoint, response);
    }
    let response = match endpoint {
        "metrics" => {
            let body = metrics::encode(&state.registry);
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "healthz" => text(StatusCode::OK, "ok\n"),
        "readyz" => {
            if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "flags" => json(
            StatusCode::OK,
            &serde_json::json!({ "flags": crate::detect::read_judgement(&state.judgement).flags }),
        ),
        "advice" => json(
            StatusCode::OK,
            &serde_json::json!({ "advice": crate::detect::read_judgement(&state.judgement).advice }),
        ),
        "ratelimit_check" => ratelimit_check(state, req).await,
        "tenants" | "tenant" | "targets" | "capacity" => read_api(state, endpoint, &req),
        "openapi" => {
            let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        _ => post_events(state, req).await,
    };
    (endpoint, response)
}

/// Checks `Authorization: Bearer <token>` when a token is configured.
fn authorized(state: &AppState, req: &Request<Incoming>) -> bool {
    let Some(expected) = &state.auth_token else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .is_some_and(|given| constant_time_eq(given.as_bytes(), expected.expose().as_bytes()))
}

fn unauthorized() -> Response<Body> {
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        "this endpoint requires Authorization: Bearer <token>",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tenantwatch\""),
    );
    response
}

/// Compares without an early exit, so response time says nothing about how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Serialize)]
struct EventsReply {
    accepted: u64,
    rejected_count: u64,
    rejected: Vec<RejectedLine>,
}

#[derive(Serialize)]
struct RejectedLine {
    line: usize,
    reason: &'static str,
    detail: String,
}

async fn post_events(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    if !authorized(state, &req) {
        return unauthorized();
    }
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
        let media_type = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !EVENT_MEDIA_TYPES.contains(&media_type.as_str()) {
            return problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send application/x-ndjson (NDJSON events) or text/plain (DogStatsD lines)",
            );
        }
    }
    let max = state.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return body_too_large(state, max);
    }
    let collect = Limited::new(req.into_body(), max).collect();
    let body = match tokio::time::timeout(state.limits.body_read_timeout, collect).await {
        Err(_) => {
            return problem(
                StatusCode::REQUEST_TIMEOUT,
                "the request body was not received within server.body_read_timeout",
            );
        }
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            return body_too_large(state, max);
        }
        Ok(Err(_)) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };

    let (first, count) = state.http_shards;
    let shard = first + state.next_shard.fetch_add(1, Ordering::Relaxed) % count;
    let mut rejected = Vec::new();
    let outcome = {
        let mut writer = state.store.writer(shard);
        ingest_payload(
            &body,
            state.limits.max_line_bytes,
            Source::Http,
            &mut writer,
            &state.stats,
            |line, reject| {
                if rejected.len() < MAX_LISTED_REJECTS {
                    rejected.push(RejectedLine {
                        line,
                        reason: reject.reason.as_str(),
                        detail: reject.detail.into_owned(),
                    });
                }
            },
        )
    };
    let status = if outcome.accepted > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    json(
        status,
        &EventsReply {
            accepted: outcome.accepted,
            rejected_count: outcome.rejected,
            rejected,
        },
    )
}

fn target_statuses(state: &AppState) -> Vec<crate::collect::TargetStatus> {
    state
        .targets
        .iter()
        .map(|t| crate::collect::lock(t).clone())
        .collect()
}

/// `GET /api/v1/tenants`, `/api/v1/tenants/{tenant}` and `/api/v1/targets`.
fn read_api(state: &AppState, endpoint: &str, req: &Request<Incoming>) -> Response<Body> {
    let targets = target_statuses(state);
    if endpoint == "targets" {
        return json(
            StatusCode::OK,
            &serde_json::json!({ "targets": crate::api::target_views(&targets) }),
        );
    }
    let store = state.store.snapshot();
    let judgement = crate::detect::read_judgement(&state.judgement);
    let rows = crate::api::tenant_rows(&store, &targets, &judgement, &state.rate_limits);
    if endpoint == "capacity" {
        let histories = state
            .histories
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        return json(
            StatusCode::OK,
            &crate::api::capacity(&targets, &histories, &rows, &state.api),
        );
    }
    if endpoint == "tenant" {
        let tenant =
            crate::api::url_decode(req.uri().path().trim_start_matches("/api/v1/tenants/"));
        return match crate::api::tenant_detail(
            &tenant,
            &rows,
            &store,
            &targets,
            &judgement.flags,
            &state.rate_limits,
        ) {
            Some(mut detail) => {
                let histories = state
                    .tenant_histories
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                detail["history"] = serde_json::json!(histories.get(&tenant));
                json(StatusCode::OK, &detail)
            }
            None => problem(
                StatusCode::NOT_FOUND,
                &format!("no tenant {tenant:?} is tracked"),
            ),
        };
    }
    let accept_csv = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    let query = match crate::api::parse_list_query(req.uri().query(), accept_csv) {
        Ok(query) => query,
        Err(bad) => {
            let mut response = problem(
                StatusCode::BAD_REQUEST,
                &format!("parameter {}: {}", bad.name, bad.detail),
            );
            if let Ok(value) = HeaderValue::from_str(&bad.name) {
                response.headers_mut().insert("x-invalid-parameter", value);
            }
            return response;
        }
    };
    let page = crate::api::page(&rows, &query);
    if query.csv {
        let mut response = Response::new(Full::new(Bytes::from(crate::api::csv(&page.tenants))));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        if let Some(cursor) = page
            .next_cursor
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            response.headers_mut().insert("x-next-cursor", cursor);
        }
        return response;
    }
    json(StatusCode::OK, &page)
}

/// The OpenAPI 3.1 description of every endpoint (`GET /api/v1/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

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
async fn ratelimit_check(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    if !authorized(state, &req) {
        return unauthorized();
    }
    let collect = Limited::new(req.into_body(), MAX_CHECK_BODY_BYTES).collect();
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

fn body_too_large(state: &AppState, max: usize) -> Response<Body> {
    state.stats.add_received(Source::Http, 1);
    state
        .stats
        .add_rejected(Source::Http, RejectReason::BodyTooLarge);
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body is larger than ingest.max_body_bytes ({max} bytes)"),
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An RFC 9457 problem details reply.
pub fn problem(status: StatusCode, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = json(status, &body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}

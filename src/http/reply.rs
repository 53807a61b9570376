//! Response builders: plain text, JSON and RFC 9457 problem details.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

pub(super) type Body = Full<Bytes>;

pub(super) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(super) fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    json_bytes(status, body)
}

/// A JSON body already written.
pub(super) fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `GET /`: what this is, which version, and a link to every endpoint, as
/// exporters answer at their root.
pub(super) fn landing_page() -> Response<Body> {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>tenantwatch</title></head>\n\
         <body><h1>tenantwatch {version}</h1>\n\
         <p>Per-tenant observability for multi-tenant PostgreSQL (revision {revision}).</p>\n<ul>\n\
         <li><a href=\"/metrics\">/metrics</a>: the Prometheus exposition</li>\n\
         <li><a href=\"/healthz\">/healthz</a> and <a href=\"/readyz\">/readyz</a>: liveness and readiness</li>\n\
         <li><a href=\"/api/v1/tenants\">/api/v1/tenants</a>, <a href=\"/api/v1/flags\">/api/v1/flags</a>, \
         <a href=\"/api/v1/advice\">/api/v1/advice</a>, <a href=\"/api/v1/guard\">/api/v1/guard</a>, <a href=\"/api/v1/targets\">/api/v1/targets</a>, \
         <a href=\"/api/v1/capacity\">/api/v1/capacity</a>: the planners' API \
         (<a href=\"/api/v1/openapi.json\">OpenAPI</a>)</li>\n\
         <li>POST /v1/events and POST /v1/ratelimit/check: event ingest and rate-limit checks</li>\n\
         </ul></body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
        revision = env!("TENANTWATCH_REVISION"),
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// 503 with `Retry-After`: every permit for heavy work is taken.
pub(super) fn busy() -> Response<Body> {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many heavy requests at once (server.max_heavy_requests); retry shortly",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
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

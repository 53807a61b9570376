//! The HTTP listener (hyper 1, HTTP/1.1): one port for every endpoint in
//! [`Endpoint`]: `/metrics`, `/healthz`, `/readyz`, `POST /v1/events`,
//! `POST /v1/ratelimit/check` and the read API under `/api/v1/`.
//!
//! This module is wiring around the stores and readers: the events endpoint
//! is an ingest source (it calls [`crate::ingest::ingest_payload`]), the
//! others hand a reader's answer back. Every connection is bounded: a cap on
//! concurrent connections (excess connections are closed at once and
//! counted), a header-read timeout, a body size limit and a body-read
//! timeout. Errors are RFC 9457 problem details. On shutdown the listener
//! stops accepting, open connections are told to close after their current
//! request, and the server waits for them up to the grace period.
//!
//! - [`endpoint`]: the closed set of endpoints and their methods;
//! - [`auth`]: the bearer token and its constant-time check;
//! - `events`, `check`, `read`: the handlers; `reply`: response builders.

pub mod auth;
mod check;
pub mod endpoint;
mod events;
mod read;
mod reply;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use auth::{Secret, Tokens};
pub use endpoint::Endpoint;
pub use reply::problem;

use crate::capacity::{CapacitySettings, SharedTargetHistories, SharedTenantHistories};
use crate::detect::SharedJudgement;
use crate::metrics::{self, HttpLabels, HttpMetrics};
use crate::ratelimit::RateLimits;
use crate::store::{IngestStats, Store, TargetStatuses};
use crate::telemetry::RateLimitedWarn;
use reply::{Body, text};

/// The OpenAPI 3.1 description of every endpoint (`GET /api/v1/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// The listener's settings (`[server]`).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Loopback by default: exposing it is a deliberate choice.
    pub listen: SocketAddr,
    /// The bearer token `/v1/*` requires, if any.
    pub auth_token: Option<Secret>,
    /// The bearer token `/metrics` and `/api/v1/*` require, if any.
    pub read_token: Option<Secret>,
    /// Serve a non-loopback listener without a write token, on purpose.
    pub allow_unauthenticated: bool,
    /// Concurrent HTTP connections; excess ones are closed and counted.
    pub max_connections: usize,
    /// Time a client has to send its request headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// Time a client has to send a request body.
    pub body_read_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// On SIGTERM/SIGINT, how long the listener keeps serving after
    /// `/readyz` turns 503 (Kubernetes takes a moment to stop routing).
    pub shutdown_delay: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9645)),
            auth_token: None,
            read_token: None,
            allow_unauthenticated: false,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            shutdown_delay: Duration::from_secs(5),
        }
    }
}

impl ServerSettings {
    /// The tokens these settings require.
    pub fn tokens(&self) -> Tokens {
        Tokens {
            write: self.auth_token.clone(),
            read: self.read_token.clone(),
        }
    }
}

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
    /// The write and read tokens; swapped on reload.
    pub tokens: auth::SharedTokens,
    /// Store shards `[first, first + count)` serve HTTP requests, round robin.
    pub http_shards: (usize, usize),
    pub next_shard: AtomicUsize,
    pub rate_limits: Arc<RateLimits>,
    pub judgement: SharedJudgement,
    pub targets: TargetStatuses,
    /// Samples for the capacity view and the tenant detail.
    pub histories: SharedTargetHistories,
    pub tenant_histories: SharedTenantHistories,
    pub api: CapacitySettings,
}

/// Size and time limits of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_body_bytes: usize,
    pub lines: crate::ingest::LineLimits,
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
    let Some(endpoint) = Endpoint::from_path(path) else {
        let detail = format!("no endpoint at {path}");
        return ("unknown", problem(StatusCode::NOT_FOUND, &detail));
    };
    if endpoint.needs_read_token() && !auth::may_read(state, &req) {
        return (endpoint.as_str(), auth::unauthorized());
    }
    if !endpoint.allows(req.method()) {
        let allowed = endpoint.allowed_methods();
        let mut response = problem(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} accepts {allowed}"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
        return (endpoint.as_str(), response);
    }
    let response = match endpoint {
        Endpoint::Metrics => {
            let body = metrics::encode(&state.registry);
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        Endpoint::Healthz => text(StatusCode::OK, "ok\n"),
        Endpoint::Readyz => {
            if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        Endpoint::Events => events::post_events(state, req).await,
        Endpoint::RatelimitCheck => check::ratelimit_check(state, req).await,
        Endpoint::Flags => read::flags(state),
        Endpoint::Advice => read::advice(state),
        Endpoint::Tenants => read::tenants(state, &req),
        Endpoint::Tenant => read::tenant(state, &req),
        Endpoint::Targets => read::targets(state),
        Endpoint::Capacity => read::capacity(state),
        Endpoint::OpenApi => {
            let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
    };
    (endpoint.as_str(), response)
}

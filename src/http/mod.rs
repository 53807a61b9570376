//! The HTTP listener (hyper 1, HTTP/1.1): one port for every endpoint in
//! [`Endpoint`]: `/metrics`, `/healthz`, `/readyz`, `POST /v1/events`,
//! `POST /v1/ratelimit/check` and the read API under `/api/v1/`.
//!
//! This module is wiring around the stores and readers: the events endpoint
//! is an ingest source (it calls [`crate::ingest::ingest_payload`]), the
//! others hand a reader's answer back. Every connection is bounded: a cap on
//! concurrent connections and one per client address (excess connections
//! are closed at once and counted; a small reserve keeps `/healthz` and
//! `/readyz` answerable when every slot is taken), a
//! header-read timeout, an idle timeout between keep-alive requests, a
//! bounded read buffer, a body size limit and a body-read timeout. Errors
//! are RFC 9457 problem details. On shutdown the listener stops accepting,
//! open connections are told to close after their current request, and the
//! server waits for them up to the grace period.
//!
//! - `admission`: the cap per client address and the probes' reserve;
//! - `clock`: hyper's header-read timer, which also keeps the idle timeout;
//! - [`endpoint`]: the closed set of endpoints and their methods;
//! - [`auth`]: the write, read and caller tokens, compared in constant time;
//! - [`tls`]: TLS on the listener, swapped on reload;
//! - `deadline`: the write deadline that cuts off clients that stop reading;
//! - `events`, `check`, `read`: the handlers; `body`: reading a request
//!   body within its limits; `reply`: response builders;
//! - `lane`: where every connection starts: plain keep-alive rate-limit
//!   checks are answered there without hyper, which takes the connection
//!   at its first other request.
//!
//! Heavy work (an exposition encode, the API views, large event bodies) runs
//! on blocking threads under `server.max_heavy_requests` permits (503 with
//! `Retry-After` beyond), so probes and rate-limit checks stay fast.

/// `AsyncWrite` for a reading-side wrapper `$wrapper<I>` whose writes all
/// go to its `inner` stream unchanged (the check lane's `Rewind`, the
/// header timer's `Watched`).
macro_rules! delegate_async_write {
    ($wrapper:ident) => {
        impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<I> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}
use delegate_async_write;

mod admission;
pub mod auth;
mod body;
mod check;
mod clock;
mod deadline;
pub mod endpoint;
mod events;
mod lane;
mod read;
mod reply;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
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
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{Secret, SpendDenied, Tokens, bearer_token};
pub use check::rate_limit_headers;
pub use endpoint::Endpoint;
pub use reply::problem;

use crate::capacity::{CapacitySettings, SharedTargetHistories, SharedTenantHistories};
use crate::detect::SharedJudgement;
use crate::metrics::{self, HttpLabels, HttpMetrics};
use crate::ratelimit::RateLimits;
use crate::settings::{Problems, Reload, serde_text};
use crate::store::{IngestStats, Store, TargetStatuses};
use crate::telemetry::RateLimitedWarn;
use deadline::WriteDeadline;
use reply::{Body, text};

/// The OpenAPI 3.1 description of every endpoint (`GET /api/v1/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// `[server]`: the one HTTP listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Reload)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address of the HTTP listener (`/metrics`, `/healthz`, `/readyz`,
    /// `/v1/*`). Loopback by default: exposing it is a deliberate choice.
    pub listen: SocketAddr,
    /// File holding the bearer token that `/v1/*` requires. Unset (and no
    /// `TENANTWATCH_AUTH_TOKEN`) means no token is required.
    #[reload(live)]
    pub auth_token_file: Option<PathBuf>,
    /// File holding the bearer token that `/metrics` and `/api/v1/*`
    /// require (or `TENANTWATCH_READ_TOKEN`). Unset: reads are open.
    #[reload(live)]
    pub read_token_file: Option<PathBuf>,
    /// Serve a non-loopback `listen` without a write or a read token, on
    /// purpose (a network policy guards it).
    pub allow_unauthenticated: bool,
    /// Concurrent HTTP connections; connections beyond it are closed at once
    /// and counted, so a connection flood cannot exhaust file descriptors.
    /// 8 more are kept for `/healthz` and `/readyz` only.
    pub max_connections: usize,
    /// Concurrent connections from one client address (an IPv6 client: its
    /// /64); beyond it a new connection is closed at once and counted. 0
    /// means a quarter of `max_connections` (at least 1).
    pub max_connections_per_ip: usize,
    /// Time a client has to send its request headers (slowloris guard): a
    /// new connection from its accept, a keep-alive one from the first
    /// byte of the request.
    #[serde(with = "serde_text::duration")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection that sends nothing for this long after a
    /// response is closed.
    #[serde(with = "serde_text::duration")]
    pub idle_timeout: Duration,
    /// Time a client has to send a request body.
    #[serde(with = "serde_text::duration")]
    pub body_read_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[serde(with = "serde_text::duration")]
    pub shutdown_grace: Duration,
    /// On SIGTERM/SIGINT, how long the listener keeps serving after
    /// `/readyz` turns 503, so load balancers stop routing first (`"0s"`
    /// for none).
    #[serde(with = "serde_text::duration")]
    pub shutdown_delay: Duration,
    /// A response that makes no write progress for this long (the client
    /// stopped reading) has its connection closed.
    #[serde(with = "serde_text::duration")]
    pub write_timeout: Duration,
    /// Longest a connection stays open; then it finishes its request in
    /// flight and closes (keep-alive clients reconnect).
    #[serde(with = "serde_text::duration")]
    pub request_timeout: Duration,
    /// Heavy requests (an exposition encode, API views, large event bodies)
    /// run at once on blocking threads; beyond this many, 503. 0 means half
    /// the CPU cores (at least 1), so a core stays free for the async
    /// workers that answer probes and checks.
    pub max_heavy_requests: usize,
    /// A scrape within this long of the last encode reuses its bytes
    /// unless a collector published a result since (`"0s"`: every scrape
    /// encodes). Concurrent scrapes share one encode whatever it is.
    #[serde(with = "serde_text::duration")]
    pub metrics_max_age: Duration,
    /// PEM certificate chain: with `tls_key_file`, the listener serves TLS.
    /// A renewed certificate is taken on reload; turning TLS on or off
    /// needs a restart.
    #[reload(live)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[reload(live)]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9645)),
            auth_token_file: None,
            read_token_file: None,
            allow_unauthenticated: false,
            max_connections: 1024,
            max_connections_per_ip: 0,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            shutdown_delay: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
            max_heavy_requests: 0,
            metrics_max_age: Duration::from_secs(1),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl ServerSettings {
    /// `max_heavy_requests` with 0 resolved to half the CPU cores.
    pub fn heavy_permits(&self) -> usize {
        if self.max_heavy_requests > 0 {
            return self.max_heavy_requests;
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        (cores / 2).max(1)
    }

    /// `max_connections_per_ip` with 0 resolved to a quarter of
    /// `max_connections` (at least 1).
    pub fn per_ip_connections(&self) -> usize {
        match self.max_connections_per_ip {
            0 => (self.max_connections / 4).max(1),
            n => n,
        }
    }

    /// Checks each key on its own (rules across keys are `config`'s).
    pub fn check(&self, p: &mut Problems) {
        p.range("server.max_connections", self.max_connections, 1, 1_000_000);
        p.range(
            "server.max_connections_per_ip",
            self.max_connections_per_ip,
            0,
            1_000_000,
        );
        p.range(
            "server.max_heavy_requests",
            self.max_heavy_requests,
            0,
            1024,
        );
        for (key, value) in [
            ("server.header_read_timeout", self.header_read_timeout),
            ("server.idle_timeout", self.idle_timeout),
            ("server.body_read_timeout", self.body_read_timeout),
            ("server.shutdown_grace", self.shutdown_grace),
            ("server.write_timeout", self.write_timeout),
            ("server.request_timeout", self.request_timeout),
        ] {
            p.positive(key, value);
        }
    }

    /// The listener's TLS configuration, read from its files: both or
    /// neither.
    pub fn load_tls(&self, p: &mut Problems) -> Option<Arc<rustls::ServerConfig>> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => match tls::server_config(cert, key) {
                Ok(config) => Some(Arc::new(config)),
                Err(err) => {
                    p.fail("server.tls_cert_file", cert.display(), err.to_string());
                    None
                }
            },
            (Some(cert), None) => {
                p.fail(
                    "server.tls_key_file",
                    "<unset>",
                    format!("needed with server.tls_cert_file = {}", cert.display()),
                );
                None
            }
            (None, Some(key)) => {
                p.fail(
                    "server.tls_cert_file",
                    "<unset>",
                    format!("needed with server.tls_key_file = {}", key.display()),
                );
                None
            }
        }
    }
}

/// What the request handlers share, by endpoint family: each handler is
/// given the part it uses.
#[derive(Debug)]
pub struct AppState {
    /// Every connection: limits, tokens, TLS, permits, counters, readiness.
    pub listener: ListenerState,
    /// `POST /v1/events`.
    pub ingest: IngestState,
    /// `POST /v1/ratelimit/check`.
    pub check: CheckState,
    /// `/metrics` and `/api/v1/*`.
    pub read: ReadState,
}

/// What every connection and request uses, whatever its endpoint.
#[derive(Debug)]
pub struct ListenerState {
    /// The `[server]` settings the listener runs on.
    pub server: ServerSettings,
    /// `ingest.max_body_bytes` and the line limits: they bound the read
    /// buffer and `POST /v1/events` bodies.
    pub ingest_limits: IngestLimits,
    /// Permits for heavy work (`server.max_heavy_requests`).
    pub heavy: Arc<Semaphore>,
    pub http_metrics: HttpMetrics,
    /// True once every listener is bound, false again while draining.
    pub ready: AtomicBool,
    /// The write and read tokens; swapped on reload.
    pub tokens: auth::SharedTokens,
    /// TLS on the listener, if configured; swapped on reload.
    pub tls: tls::SharedTls,
}

/// What `POST /v1/events` writes to.
#[derive(Debug)]
pub struct IngestState {
    pub store: Arc<Store>,
    pub stats: Arc<IngestStats>,
    /// Store shards `[first, first + count)` serve HTTP requests, round robin.
    pub http_shards: (usize, usize),
    pub next_shard: AtomicUsize,
}

/// What `POST /v1/ratelimit/check` decides with.
#[derive(Debug)]
pub struct CheckState {
    pub rate_limits: Arc<RateLimits>,
}

/// What `/metrics` and the API read.
#[derive(Debug)]
pub struct ReadState {
    pub exposition: metrics::SharedExposition,
    pub store: Arc<Store>,
    pub rate_limits: Arc<RateLimits>,
    /// The guard's last actions and counts.
    pub guard_log: crate::store::guard::SharedGuardLog,
    pub judgement: SharedJudgement,
    pub targets: TargetStatuses,
    pub pgbouncers: crate::store::PgBouncerStatuses,
    /// Samples for the capacity view and the tenant detail.
    pub histories: SharedTargetHistories,
    pub tenant_histories: SharedTenantHistories,
    pub api: CapacitySettings,
}

/// The ingest limits the listener enforces on bodies and lines.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    pub max_body_bytes: usize,
    pub lines: crate::ingest::LineLimits,
}

/// What the listener reads and writes, from the daemon: its stores,
/// limiters and shared results.
pub struct StateSources {
    pub store: Arc<Store>,
    pub stats: Arc<IngestStats>,
    pub targets: TargetStatuses,
    pub pgbouncers: crate::store::PgBouncerStatuses,
    pub judgement: SharedJudgement,
    pub rate_limits: Arc<RateLimits>,
    pub guard_log: crate::store::guard::SharedGuardLog,
    pub histories: SharedTargetHistories,
    pub tenant_histories: SharedTenantHistories,
    pub capacity_figures: crate::capacity::view::SharedCapacityFigures,
    pub reloads: crate::metrics::ReloadMetrics,
}

/// The settings the listener's state is built on, and what they resolved
/// to (tokens, TLS).
pub struct StateSettings<'a> {
    pub server: &'a ServerSettings,
    pub ingest: &'a crate::ingest::IngestSettings,
    pub metrics: &'a crate::metrics::ExpositionSettings,
    pub api: &'a CapacitySettings,
    pub tokens: Tokens,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Store shards `[first, first + count)` that `POST /v1/events` writes.
    pub http_shards: (usize, usize),
}

impl AppState {
    /// The listener's state, not yet ready (the daemon turns `ready` on
    /// once every listener is bound).
    pub fn new(settings: StateSettings<'_>, sources: StateSources) -> AppState {
        let http_metrics = HttpMetrics::default();
        let exposition = metrics::exposition(
            metrics::Sources {
                store: sources.store.clone(),
                stats: sources.stats.clone(),
                targets: sources.targets.clone(),
                pgbouncers: sources.pgbouncers.clone(),
                judgement: sources.judgement.clone(),
                limits: sources.rate_limits.clone(),
                guard_log: sources.guard_log.clone(),
                reloads: sources.reloads.clone(),
                capacity: sources.capacity_figures.clone(),
            },
            &http_metrics,
            settings.metrics,
        );
        let server = settings.server;
        AppState {
            listener: ListenerState {
                server: server.clone(),
                ingest_limits: IngestLimits {
                    max_body_bytes: settings.ingest.max_body_bytes,
                    lines: settings.ingest.line_limits(),
                },
                heavy: Arc::new(Semaphore::new(server.heavy_permits())),
                http_metrics,
                ready: AtomicBool::new(false),
                tokens: auth::SharedTokens::new(settings.tokens),
                tls: tls::SharedTls::new(settings.tls),
            },
            ingest: IngestState {
                store: sources.store.clone(),
                stats: sources.stats,
                http_shards: settings.http_shards,
                next_shard: AtomicUsize::new(0),
            },
            check: CheckState {
                rate_limits: sources.rate_limits.clone(),
            },
            read: ReadState {
                exposition: metrics::SharedExposition::new(exposition, server.metrics_max_age),
                store: sources.store,
                rate_limits: sources.rate_limits,
                guard_log: sources.guard_log,
                judgement: sources.judgement,
                targets: sources.targets,
                pgbouncers: sources.pgbouncers,
                histories: sources.histories,
                tenant_histories: sources.tenant_histories,
                api: settings.api.clone(),
            },
        }
    }
}

/// Serves `listener` until `shutdown`, then drains open connections for at
/// most the grace period.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    // Cancelled when the grace period is over: what is still open is closed.
    let hard_stop = CancellationToken::new();
    let admission = admission::Admission::new(
        state.listener.server.max_connections,
        state.listener.server.per_ip_connections(),
    );
    for reason in admission::Rejected::ALL {
        rejected(&state, reason, 0);
    }
    let accept_warn = RateLimitedWarn::new(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
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
        let accepted = tokio::time::Instant::now();
        let (slot, probe_only) = match admission.admit(peer.ip()) {
            admission::Admit::Ordinary(slot) => (slot, false),
            admission::Admit::ProbeOnly(slot) => (slot, true),
            admission::Admit::Rejected(reason) => {
                rejected(&state, reason, 1);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let stream = WriteDeadline::new(stream, state.listener.server.write_timeout);
        let ends = ConnectionEnds {
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
            half_close: LISTENER_HALF_CLOSE,
        };
        let conn_state = state.clone();
        // A reserved slot has a short while for its handshake and its probe.
        let handshake_within = if probe_only {
            conn_state
                .listener
                .server
                .header_read_timeout
                .min(admission::PROBE_HEAD_TIMEOUT)
        } else {
            conn_state.listener.server.header_read_timeout
        };
        let tls = state.listener.tls.get();
        connections.spawn(async move {
            let _slot = slot;
            let until = accepted + handshake_within;
            match tls {
                None if probe_only => admission::serve_probe(stream, &conn_state, until).await,
                None => serve_connection(stream, conn_state, ends, accepted).await,
                Some(tls) => {
                    // The handshake has as long as the request headers would.
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    let Ok(Ok(stream)) =
                        tokio::time::timeout_at(until, acceptor.accept(stream)).await
                    else {
                        if probe_only {
                            rejected(&conn_state, admission::Rejected::MaxConnections, 1);
                        }
                        return;
                    };
                    if probe_only {
                        admission::serve_probe(stream, &conn_state, until).await;
                    } else {
                        serve_connection(stream, conn_state, ends, accepted).await;
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    tokio::select! {
        _ = connections.wait() => {}
        _ = tokio::time::sleep(state.listener.server.shutdown_grace) => {
            tracing::warn!(grace = ?state.listener.server.shutdown_grace, "Grace period over; closing open HTTP connections");
            hard_stop.cancel();
        }
    }
}

/// Counts `n` connections closed unserved for `reason` (0: the series
/// exists from the start).
fn rejected(state: &AppState, reason: admission::Rejected, n: u64) {
    state
        .listener
        .http_metrics
        .connections_rejected
        .get_or_create(&metrics::RejectLabels {
            reason: reason.as_str(),
        })
        .inc_by(n);
}

/// Largest read buffer hyper keeps for a connection: room for a request
/// head (hyper refuses a longer one with 431) plus a stretch of body, since
/// bodies are read in pieces. At least 64 KiB, at least one
/// `ingest.max_line_bytes` line plus a head, and never more than a whole
/// `ingest.max_body_bytes` body plus a head; with the defaults 64 KiB, so
/// at most `max_connections` × 64 KiB (64 MiB at 1024 connections) in
/// read buffers, where hyper's default would allow about 400 KiB each.
fn read_buffer_bytes(listener: &ListenerState) -> usize {
    const HEAD: usize = 16 * 1024;
    (64 * 1024)
        .max(listener.ingest_limits.lines.max_line_bytes + HEAD)
        .min(listener.ingest_limits.max_body_bytes + HEAD)
        .max(8192)
}

/// How a connection learns that it must end: shutdown (finish the request
/// in flight) or the end of the grace period (stop now).
struct ConnectionEnds {
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    /// Whether hyper keeps a connection whose client shut its writing side
    /// until the request in flight is answered (hyper's `half_close`). The
    /// listener keeps hyper's default, off ([`LISTENER_HALF_CLOSE`]); the
    /// fuzz harness turns it on, so that an answer made on a blocking
    /// thread is not lost to the end of its input at a moment that varies.
    half_close: bool,
}

/// hyper's default: a client's EOF closes its connection at once.
const LISTENER_HALF_CLOSE: bool = false;

/// Serves HTTP/1.1 on one connection (plain or TLS) until the client
/// closes it, its lifetime (`server.request_timeout`) is over, or the
/// daemon shuts down.
async fn serve_connection<I>(
    io: I,
    state: Arc<AppState>,
    ends: ConnectionEnds,
    accepted: tokio::time::Instant,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let deadline = tokio::time::sleep(state.listener.server.request_timeout);
    tokio::pin!(deadline);
    // Checks first; hyper takes the connection at its first other request.
    let (io, head_started) =
        match lane::serve_checks(io, &state, &ends, deadline.as_mut(), accepted).await {
            lane::LaneEnd::Closed => return,
            lane::LaneEnd::HandOff(io, head_started) => (io, head_started),
        };
    serve_with_hyper(io, state, &ends, deadline, head_started).await;
}

/// Serves the rest of a connection with hyper, until the client closes it,
/// `deadline` (its lifetime) passes, or the daemon shuts down. The first
/// request head began to arrive at `head_started`.
async fn serve_with_hyper<I>(
    io: I,
    state: Arc<AppState>,
    ends: &ConnectionEnds,
    mut deadline: std::pin::Pin<&mut tokio::time::Sleep>,
    head_started: tokio::time::Instant,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_read_timeout = state.listener.server.header_read_timeout;
    let read_buffer = read_buffer_bytes(&state.listener);
    // hyper's header-read timer also keeps the idle timeout (see `clock`).
    let (timer, io) = clock::HeadTimer::new(
        io,
        head_started.into_std(),
        state.listener.server.idle_timeout,
        header_read_timeout,
    );
    let service = service_fn(move |req| handle(state.clone(), req));
    let conn = http1::Builder::new()
        .timer(timer)
        .header_read_timeout(header_read_timeout)
        .half_close(ends.half_close)
        .max_buf_size(read_buffer)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        // Connection errors (resets, timeouts) are the client's business.
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = ends.hard_stop.cancelled() => break,
            // Shutdown, or the connection's time is up: finish the request
            // in flight, then close.
            _ = ends.shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = deadline.as_mut(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// For `fuzz/fuzz_targets/check_lane.rs` only, not an API: one connection
/// served in memory either as the listener serves it (the check lane, then
/// hyper) or by hyper alone, so that the two can be given the same bytes
/// and their answers compared.
#[doc(hidden)]
pub mod fuzzing {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    use super::{AppState, ConnectionEnds, ServerSettings, Tokens};
    use crate::capacity::{CapacitySettings, TenantHistories};
    use crate::ingest::IngestSettings;
    use crate::metrics::{ExpositionSettings, ReloadMetrics};
    use crate::ratelimit::{RateLimits, RatePolicy};
    use crate::store::{IngestStats, MonotonicClock, PgBouncerStatuses, Store, TargetStatuses};

    /// What the listener's state is built from: the sections of a
    /// configuration and what they resolve to.
    pub struct Parts<'a> {
        pub server: &'a ServerSettings,
        pub ingest: &'a IngestSettings,
        pub metrics: &'a ExpositionSettings,
        pub api: &'a CapacitySettings,
        pub ratelimit: RatePolicy,
        pub tokens: Tokens,
    }

    /// The listener's state, as the daemon builds it with no targets: empty
    /// stores, fresh limiters (local), ready.
    pub fn state(parts: Parts<'_>) -> Arc<AppState> {
        const HTTP_SHARDS: usize = 2;
        let store = Arc::new(Store::new(
            HTTP_SHARDS,
            parts.ingest.store_limits(),
            Arc::new(MonotonicClock::new()),
        ));
        let sources = super::StateSources {
            store,
            stats: Arc::new(IngestStats::default()),
            targets: TargetStatuses::new(Vec::new()),
            pgbouncers: PgBouncerStatuses::new(Vec::new()),
            judgement: crate::detect::SharedJudgement::default(),
            rate_limits: Arc::new(RateLimits::new(
                parts.ratelimit,
                parts.ingest.max_tenants,
                Duration::from_secs(600),
            )),
            guard_log: crate::store::guard::SharedGuardLog::default(),
            histories: Default::default(),
            tenant_histories: Arc::new(Mutex::new(TenantHistories::new(
                parts.api.history_len(),
                parts.api.history_tenants,
            ))),
            capacity_figures: Default::default(),
            reloads: ReloadMetrics::default(),
        };
        let settings = super::StateSettings {
            server: parts.server,
            ingest: parts.ingest,
            metrics: parts.metrics,
            api: parts.api,
            tokens: parts.tokens,
            tls: None,
            http_shards: (0, HTTP_SHARDS),
        };
        let state = AppState::new(settings, sources);
        state.listener.ready.store(true, Ordering::Relaxed);
        Arc::new(state)
    }

    /// Which way a connection is served.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Path {
        /// As the listener does: the check lane, then hyper.
        Lane,
        /// hyper from the first byte.
        HyperOnly,
    }

    /// Sends `chunks` on one in-memory connection served by `path` (each
    /// chunk its own write, the server given turns in between), then ends
    /// the client's side, and returns every byte the server wrote until it
    /// closed the connection; `None` if it had not within 10 seconds.
    pub fn exchange(state: &Arc<AppState>, chunks: &[&[u8]], path: Path) -> Option<Vec<u8>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok()?;
        runtime.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (mut from_server, mut to_server) = tokio::io::split(client);
            let ends = ConnectionEnds {
                shutdown: CancellationToken::new(),
                hard_stop: CancellationToken::new(),
                // The end of the input must not race an answer in flight.
                half_close: true,
            };
            let serve = async {
                match path {
                    Path::Lane => {
                        let accepted = tokio::time::Instant::now();
                        super::serve_connection(server, state.clone(), ends, accepted).await
                    }
                    Path::HyperOnly => {
                        let deadline = tokio::time::sleep(state.listener.server.request_timeout);
                        tokio::pin!(deadline);
                        let started = tokio::time::Instant::now();
                        super::serve_with_hyper(server, state.clone(), &ends, deadline, started)
                            .await;
                    }
                }
            };
            let send = async {
                for chunk in chunks {
                    if to_server.write_all(chunk).await.is_err() {
                        break;
                    }
                    for _ in 0..4 {
                        tokio::task::yield_now().await;
                    }
                }
                let _ = to_server.shutdown().await;
            };
            let receive = async {
                let mut received = Vec::new();
                let _ = from_server.read_to_end(&mut received).await;
                received
            };
            let all = async { tokio::join!(serve, send, receive).2 };
            tokio::time::timeout(Duration::from_secs(10), all)
                .await
                .ok()
        })
    }
}

async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (endpoint, response) = route(&state, req).await;
    count_request(&state, endpoint, response.status());
    Ok(response)
}

/// `tenantwatch_http_requests_total`, for hyper's requests and the lane's.
fn count_request(state: &AppState, endpoint: &'static str, status: StatusCode) {
    state
        .listener
        .http_metrics
        .requests
        .get_or_create(&HttpLabels {
            endpoint,
            code: status.as_u16(),
        })
        .inc();
}

async fn route(state: &Arc<AppState>, req: Request<Incoming>) -> (&'static str, Response<Body>) {
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
        Endpoint::Metrics => exposition(state, &req).await,
        Endpoint::Index => reply::landing_page(),
        Endpoint::Healthz => text(StatusCode::OK, "ok\n"),
        Endpoint::Readyz => {
            if state.listener.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        Endpoint::Events => events::post_events(state, req).await,
        Endpoint::RatelimitCheck => check::ratelimit_check(state, req).await,
        Endpoint::Flags => read::flags(&state.read),
        Endpoint::Advice => read::advice(&state.read),
        Endpoint::Guard => read::guard(&state.read),
        Endpoint::Tenants => heavy_read(state, read::View::Tenants, req).await,
        Endpoint::Tenant => heavy_read(state, read::View::Tenant, req).await,
        Endpoint::Targets => heavy_read(state, read::View::Targets, req).await,
        Endpoint::Capacity => heavy_read(state, read::View::Capacity, req).await,
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

/// `GET /metrics`: the shared exposition in the format the scraper's
/// `Accept` asks for ([`metrics::Format::negotiate`]), gzipped when it
/// accepts it (compressed once per exposition, off the async workers).
async fn exposition(state: &AppState, req: &Request<Incoming>) -> Response<Body> {
    let format = metrics::Format::negotiate(
        req.headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let exposition = &state.read.exposition;
    let Ok(encoded) = exposition.current(&state.listener.heavy, format).await else {
        return reply::busy();
    };
    let gzip = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(accepts_gzip);
    let body = if gzip {
        match tokio::task::spawn_blocking(move || encoded.gzip()).await {
            Ok(body) => body,
            Err(_) => return reply::busy(),
        }
    } else {
        encoded.plain.clone()
    };
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(
        header::VARY,
        HeaderValue::from_static("accept, accept-encoding"),
    );
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// Whether an `Accept-Encoding` value accepts gzip (and does not refuse it
/// with `q=0`).
fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let refused = parts.any(|p| p.replace(' ', "").eq_ignore_ascii_case("q=0"));
        (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
    })
}

/// The planners' views, built on a blocking thread under a heavy-work
/// permit (503 when none is free), so a burst of them never stalls the
/// async workers that answer probes and rate-limit checks.
async fn heavy_read(
    state: &Arc<AppState>,
    view: read::View,
    req: Request<Incoming>,
) -> Response<Body> {
    let Ok(permit) = state.listener.heavy.clone().try_acquire_owned() else {
        return reply::busy();
    };
    let (parts, _body) = req.into_parts();
    let state = state.clone();
    let built = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        read::build(&state.read, view, &parts)
    })
    .await;
    built.unwrap_or_else(|_| problem(StatusCode::INTERNAL_SERVER_ERROR, "the view failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory harness of `fuzz/fuzz_targets/check_lane.rs`: on
    /// pipelined checks cut anywhere, and a request the lane leaves to
    /// hyper, both ways answer alike (the fuzz target compares them fully).
    #[test]
    fn the_fuzzing_harness_serves_both_ways() {
        let config = crate::config::Config::from_toml_with_env(
            "[ratelimit]\ndefault_qps = 1000000000.0\ndefault_burst = 2\n",
            std::path::Path::new("test.toml"),
            [("TENANTWATCH_AUTH_TOKEN".to_owned(), "t0ken".to_owned())],
        )
        .unwrap();
        let state = || {
            fuzzing::state(fuzzing::Parts {
                server: &config.settings.server,
                ingest: &config.settings.ingest,
                metrics: &config.settings.metrics,
                api: &config.settings.api,
                ratelimit: config.ratelimit.clone(),
                tokens: config.tokens.clone(),
            })
        };
        let check = |cost: u32| {
            let body = format!("{{\"tenant\":\"acme\",\"cost\":{cost}}}");
            format!(
                "POST /v1/ratelimit/check HTTP/1.1\r\nAuthorization: Bearer t0ken\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        // Within the burst, over it (refused at any rate), then hyper's.
        let stream = format!("{}{}GET /healthz HTTP/1.1\r\n\r\n", check(2), check(3));
        let stream = stream.as_bytes();
        let chunks: Vec<&[u8]> = vec![&stream[..50], &stream[50..130], &stream[130..]];
        let without_date = |bytes: Vec<u8>| -> Vec<String> {
            String::from_utf8(bytes)
                .unwrap()
                .split("\r\n")
                .filter(|line| !line.starts_with("date:"))
                .map(str::to_owned)
                .collect()
        };
        let lane = fuzzing::exchange(&state(), &chunks, fuzzing::Path::Lane).unwrap();
        let hyper = fuzzing::exchange(&state(), &chunks, fuzzing::Path::HyperOnly).unwrap();
        let lane = without_date(lane);
        let text = lane.join("\n");
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        assert!(text.contains("ok\n") || text.ends_with("ok"), "{text}");
        assert_eq!(text.matches("HTTP/1.1 429").count(), 1, "{text}");
        let mut hyper = without_date(hyper);
        let mut lane = lane;
        lane.sort();
        hyper.sort();
        assert_eq!(lane, hyper);
    }

    #[test]
    fn accept_encoding_is_read_like_rfc_9110() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, GZIP;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("identity"));
    }
}

//! One HTTP/2 connection of the gRPC listener, served with the `h2` crate
//! directly: its calls (unary `ShouldRateLimit` and health `Check`, the
//! health `Watch` stream) run inside the connection's own task, so a call
//! decided at once (the local backend) is answered in the same wake-up that
//! read it, and its headers, message and trailers leave in one write.
//!
//! Bounds, each stated here: a request message of at most
//! [`MAX_MESSAGE_BYTES`], [`MAX_STREAMS`] requests in flight, a request
//! answered within [`REQUEST_TIMEOUT`] (or the caller's `grpc-timeout`,
//! when shorter) or `DEADLINE_EXCEEDED`, headers of at most
//! [`MAX_HEADER_BYTES`]. The connection sends GOAWAY and finishes what is
//! in flight when the daemon stops or the connection is
//! `server.request_timeout` old; a peer that does not answer a keep-alive
//! ping within [`PONG_WITHIN`] is dropped.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Ping, PingPong, RecvStream};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::wire::{self, Code, HealthCheckRequest, HealthCheckResponse, ServingStatus, Status};
use super::{RlsState, SERVICE_NAME};
use crate::http::bearer_token;
use crate::ratelimit::GrpcRefusal;

/// Largest request message (a request of 64 descriptors of 32 entries of
/// long values fits).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Requests in flight on one connection (HTTP/2 streams).
pub const MAX_STREAMS: u32 = 256;
/// Longest a request may take, Redis round trip included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest header block of a request.
pub const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// What the health service (`grpc.health.v1.Health`) says of the server
/// (`""`) and of the rate-limit service: serving or not. Starts not
/// serving; `Watch` callers see every change.
#[derive(Debug, Clone)]
pub struct Health(Arc<watch::Sender<bool>>);

impl Default for Health {
    fn default() -> Health {
        Health(Arc::new(watch::Sender::new(false)))
    }
}

impl Health {
    pub fn set_serving(&self, serving: bool) {
        self.0.send_replace(serving);
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }

    pub fn serving(&self) -> bool {
        *self.0.borrow()
    }
}

/// How often an HTTP/2 ping checks that the peer is still there.
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// How long the peer has to answer it.
pub const PONG_WITHIN: Duration = Duration::from_secs(10);

const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// What woke the connection's task.
// One lives at a time, on the stack: boxing the call would cost an
// allocation per call.
#[allow(clippy::large_enum_variant)]
enum Event {
    Call(Result<(http::Request<RecvStream>, SendResponse<Bytes>), h2::Error>),
    Closed,
    Drain,
    Dead,
}

/// Serves `conn` until the peer closes it, it dies, or it has drained.
pub(super) async fn serve(
    conn: impl AsyncRead + AsyncWrite + Unpin,
    state: Arc<RlsState>,
    health: Health,
    shutdown: CancellationToken,
) {
    let settings = &state.app.listener.server;
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES)
        .handshake::<_, Bytes>(conn);
    let mut h2 = match tokio::time::timeout(settings.header_read_timeout, handshake).await {
        Ok(Ok(h2)) => h2,
        Ok(Err(_)) | Err(_) => {
            state.limits.grpc().refused(GrpcRefusal::Connection);
            return;
        }
    };
    let mut keep_alive = KeepAlive::new(h2.ping_pong(), settings.request_timeout);
    let mut calls = FuturesUnordered::new();
    let mut cancelled = pin!(shutdown.cancelled());
    let mut draining = false;
    loop {
        let event = poll_fn(|cx| {
            // Calls first: what they answered leaves with the next poll of
            // the connection, below.
            while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {}
            if !draining && cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            match keep_alive.poll(cx, draining) {
                Poll::Ready(event) => return Poll::Ready(event),
                Poll::Pending => {}
            }
            h2.poll_accept(cx)
                .map(|call| call.map_or(Event::Closed, Event::Call))
        })
        .await;
        match event {
            Event::Call(Ok((request, respond))) => {
                calls.push(call(&state, &health, &shutdown, request, respond));
            }
            Event::Call(Err(error)) => {
                tracing::debug!(%error, "gRPC connection failed");
                return;
            }
            Event::Closed | Event::Dead => return,
            Event::Drain => {
                draining = true;
                h2.graceful_shutdown();
            }
        }
    }
}

/// Keep-alive pings and the connection's age, on one timer.
struct KeepAlive {
    ping: Option<PingPong>,
    timer: Pin<Box<Sleep>>,
    old_at: Instant,
    awaiting_pong: bool,
}

impl KeepAlive {
    fn new(ping: Option<PingPong>, max_age: Duration) -> KeepAlive {
        let now = Instant::now();
        let old_at = now + max_age;
        KeepAlive {
            ping,
            timer: Box::pin(tokio::time::sleep_until(old_at.min(now + PING_EVERY))),
            old_at,
            awaiting_pong: false,
        }
    }

    /// `Drain` once the connection is old, `Dead` when a ping went
    /// unanswered.
    fn poll(&mut self, cx: &mut Context<'_>, draining: bool) -> Poll<Event> {
        if self.awaiting_pong
            && let Some(ping) = &mut self.ping
        {
            match ping.poll_pong(cx) {
                Poll::Ready(Ok(_)) => {
                    self.awaiting_pong = false;
                    self.rearm(Instant::now() + PING_EVERY, draining);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Event::Dead),
                Poll::Pending => {}
            }
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let now = Instant::now();
        if !draining && now >= self.old_at {
            self.rearm(now + PING_EVERY, true);
            return Poll::Ready(Event::Drain);
        }
        if self.awaiting_pong {
            return Poll::Ready(Event::Dead);
        }
        let sent = self
            .ping
            .as_mut()
            .is_some_and(|ping| ping.send_ping(Ping::opaque()).is_ok());
        if sent {
            self.awaiting_pong = true;
            self.rearm(now + PONG_WITHIN, draining);
        } else {
            self.rearm(now + PING_EVERY, draining);
        }
        // The new deadline is polled at the next wake-up.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn rearm(&mut self, at: Instant, draining: bool) {
        let at = if draining { at } else { at.min(self.old_at) };
        self.timer.as_mut().reset(at);
    }
}

/// Which call a request is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    ShouldRateLimit,
    HealthCheck,
    HealthWatch,
}

/// One call, from its request to its trailers.
async fn call(
    state: &RlsState,
    health: &Health,
    shutdown: &CancellationToken,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let (parts, body) = request.into_parts();
    let grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if parts.method != http::Method::POST || !grpc {
        // Not gRPC at all: the specification's answer is HTTP's.
        state.limits.grpc().refused(GrpcRefusal::Invalid);
        let mut response = http::Response::new(());
        *response.status_mut() = if grpc {
            http::StatusCode::METHOD_NOT_ALLOWED
        } else {
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE
        };
        let _ = respond.send_response(response, true);
        return;
    }
    let route = match parts.uri.path() {
        SHOULD_RATE_LIMIT => Route::ShouldRateLimit,
        HEALTH_CHECK => Route::HealthCheck,
        HEALTH_WATCH => Route::HealthWatch,
        path => {
            state.limits.grpc().refused(GrpcRefusal::Invalid);
            let status = Status::new(Code::Unimplemented, format!("no method {path}"));
            return fail(&mut respond, &status);
        }
    };
    let within = parts
        .headers
        .get("grpc-timeout")
        .and_then(|value| wire::timeout(value.as_bytes()))
        .map_or(REQUEST_TIMEOUT, |asked| asked.min(REQUEST_TIMEOUT));
    let bearer = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| bearer_token(value.as_bytes()));
    let mut unary = pin!(unary(state, health, route, bearer, body));
    // Most calls are decided in their first poll (the message came with
    // the headers, the local backend answers at once): no timer for them.
    let answered = match poll_fn(|cx| Poll::Ready(unary.as_mut().poll(cx))).await {
        Poll::Ready(answered) => answered,
        Poll::Pending => tokio::time::timeout(within, unary)
            .await
            .unwrap_or_else(|_| {
                Err(Status::new(
                    Code::DeadlineExceeded,
                    format!("not answered within {within:?}"),
                ))
            }),
    };
    match answered {
        Ok(Reply::Message(message)) => reply(&mut respond, message),
        Ok(Reply::Watch(service)) => watch(health, shutdown, service, respond).await,
        Err(status) => fail(&mut respond, &status),
    }
}

/// A unary call's outcome: its answer, or the start of a `Watch`.
enum Reply {
    Message(Bytes),
    Watch(String),
}

async fn unary(
    state: &RlsState,
    health: &Health,
    route: Route,
    bearer: Option<&str>,
    body: RecvStream,
) -> Result<Reply, Status> {
    let message = match read_message(body).await {
        Ok(message) => message,
        Err(status) => {
            state.limits.grpc().refused(GrpcRefusal::Invalid);
            return Err(status);
        }
    };
    let undecodable = |error: prost::DecodeError| {
        state.limits.grpc().refused(GrpcRefusal::Invalid);
        Status::new(Code::Internal, format!("the request message: {error}"))
    };
    match route {
        Route::ShouldRateLimit => {
            use super::generated::envoy::service::ratelimit::v3::RateLimitRequest;
            let request = RateLimitRequest::decode(message).map_err(undecodable)?;
            match state.answer(&request, bearer).await {
                Ok(answer) => Ok(Reply::Message(wire::framed(&answer))),
                Err(refused) => {
                    state.limits.grpc().refused(refused.reason);
                    Err(refused.into_status())
                }
            }
        }
        Route::HealthCheck => {
            let request = HealthCheckRequest::decode(message).map_err(undecodable)?;
            match health_of(health, &request.service) {
                ServingStatus::ServiceUnknown => Err(Status::new(
                    Code::NotFound,
                    format!("no service {:?}", super::truncated(&request.service)),
                )),
                status => Ok(Reply::Message(wire::framed(&HealthCheckResponse {
                    status: status as i32,
                }))),
            }
        }
        Route::HealthWatch => {
            let request = HealthCheckRequest::decode(message).map_err(undecodable)?;
            Ok(Reply::Watch(request.service))
        }
    }
}

/// The server's (`""`) or the rate-limit service's status; no other
/// service is known.
fn health_of(health: &Health, service: &str) -> ServingStatus {
    if service.is_empty() || service == SERVICE_NAME {
        if health.serving() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    } else {
        ServingStatus::ServiceUnknown
    }
}

/// A unary call's one message, at most [`MAX_MESSAGE_BYTES`], uncompressed.
async fn read_message(mut body: RecvStream) -> Result<Bytes, Status> {
    let mut buffer = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk =
            chunk.map_err(|error| Status::new(Code::Internal, format!("the request: {error}")))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buffer.extend_from_slice(&chunk);
        let too_long = match wire::prefix(&buffer) {
            wire::Prefix::Compressed => {
                return Err(Status::new(
                    Code::Unimplemented,
                    "compressed messages are not accepted (grpc-encoding identity only)",
                ));
            }
            wire::Prefix::Plain(length) => length > MAX_MESSAGE_BYTES,
            wire::Prefix::Short => false,
        };
        if too_long || buffer.len() > wire::PREFIX + MAX_MESSAGE_BYTES {
            return Err(Status::new(
                Code::OutOfRange,
                format!("the request message is larger than {MAX_MESSAGE_BYTES} bytes"),
            ));
        }
    }
    match wire::prefix(&buffer) {
        wire::Prefix::Plain(length) if buffer.len() == wire::PREFIX + length => {
            Ok(buffer.freeze().split_off(wire::PREFIX))
        }
        wire::Prefix::Plain(length) if buffer.len() > wire::PREFIX + length => Err(Status::new(
            Code::Internal,
            "more than one request message in a unary call",
        )),
        _ if buffer.is_empty() => Err(Status::new(Code::Internal, "no request message")),
        _ => Err(Status::new(
            Code::Internal,
            "the request message is cut short",
        )),
    }
}

fn grpc_response() -> http::Response<()> {
    let mut response = http::Response::new(());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_GRPC);
    response
}

fn ok_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::with_capacity(1);
    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    trailers
}

/// Headers, the message and `grpc-status: 0`, queued together.
fn reply(respond: &mut SendResponse<Bytes>, message: Bytes) {
    let Ok(mut stream) = respond.send_response(grpc_response(), false) else {
        return;
    };
    if stream.send_data(message, false).is_ok() {
        let _ = stream.send_trailers(ok_trailers());
    }
}

/// A failed call: one header block holding the status ("Trailers-Only").
fn fail(respond: &mut SendResponse<Bytes>, status: &Status) {
    let mut response = grpc_response();
    let headers = response.headers_mut();
    headers.insert(GRPC_STATUS, HeaderValue::from(status.code as u16));
    if let Ok(message) = HeaderValue::from_str(&wire::message_value(&status.message)) {
        headers.insert(GRPC_MESSAGE, message);
    }
    let _ = respond.send_response(response, true);
}

/// `Watch`: the service's status now and at every change, until the caller
/// cancels or the daemon stops (the stream then ends with status 0).
async fn watch(
    health: &Health,
    shutdown: &CancellationToken,
    service: String,
    mut respond: SendResponse<Bytes>,
) {
    let Ok(mut stream) = respond.send_response(grpc_response(), false) else {
        return;
    };
    let mut changes = health.subscribe();
    loop {
        changes.mark_unchanged();
        let status = health_of(health, &service);
        let message = wire::framed(&HealthCheckResponse {
            status: status as i32,
        });
        if stream.send_data(message, false).is_err() {
            return;
        }
        tokio::select! {
            changed = changes.changed(), if status != ServingStatus::ServiceUnknown => {
                if changed.is_err() {
                    break;
                }
            }
            _ = poll_fn(|cx| stream.poll_reset(cx)) => return,
            () = shutdown.cancelled() => break,
        }
    }
    let _ = stream.send_trailers(ok_trailers());
}

//! The gRPC listener: accepts connections (at most `server.max_connections`
//! at once, TLS as the HTTP listener serves it, handshakes within
//! `server.header_read_timeout`) and hands them to tonic's HTTP/2 server,
//! which routes to the rate-limit service or the health service.
//!
//! Bounds, each stated here: a request message of at most
//! [`MAX_MESSAGE_BYTES`], [`MAX_STREAMS`] requests in flight per
//! connection, a request answered within [`REQUEST_TIMEOUT`] or
//! `DEADLINE_EXCEEDED`, headers of at most [`MAX_HEADER_BYTES`], dead peers
//! found by HTTP/2 keep-alive pings, a connection closed after
//! `server.request_timeout` (clients reconnect), and on shutdown
//! `server.shutdown_grace` for what is in flight.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::transport::server::Connected;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use super::generated::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use super::{Rls, RlsState};
use crate::ratelimit::GrpcRefusal;
use crate::telemetry::RateLimitedWarn;

/// Largest request message (a request of 64 descriptors of 32 entries of
/// long values fits).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Requests in flight on one connection (HTTP/2 streams).
pub const MAX_STREAMS: u32 = 256;
/// Longest a request may take, Redis round trip included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest header block of a request.
pub const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// The gRPC listener, bound by the daemon before anything is spawned.
#[derive(Debug)]
pub struct GrpcListener {
    pub listener: TcpListener,
    pub addr: SocketAddr,
    /// Set to serving once the daemon is ready, not serving while it drains.
    pub health: HealthReporter,
    health_service: HealthService,
}

impl GrpcListener {
    pub async fn bind(addr: SocketAddr) -> io::Result<GrpcListener> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let health = HealthReporter::new();
        let health_service = HealthService::from_health_reporter(health.clone());
        Ok(GrpcListener {
            listener,
            addr,
            health,
            health_service,
        })
    }
}

/// Says the service (and the server as a whole, `""`) is serving or not.
pub async fn set_serving(health: &HealthReporter, serving: bool) {
    use tonic_health::ServingStatus;
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in ["", <RateLimitServiceServer<Rls> as NamedService>::NAME] {
        health.set_service_status(name, status).await;
    }
}

/// Serves until `shutdown`, then lets what is in flight finish within
/// `server.shutdown_grace`.
pub async fn serve(listener: GrpcListener, state: Arc<RlsState>, shutdown: CancellationToken) {
    let server_settings = state.app.listener.server.clone();
    let routes = Routes {
        rls: RateLimitServiceServer::new(Rls(state.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        health: HealthServer::new(listener.health_service),
    };
    // Connections come through a small channel: the accept loop waits
    // (backpressure) while tonic has not taken the last ones.
    let (sender, receiver) = mpsc::channel::<Conn>(64);
    let accept = tokio::spawn(accept(
        listener.listener,
        state.clone(),
        sender,
        shutdown.clone(),
    ));
    let server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(MAX_STREAMS as usize)
        .max_concurrent_streams(MAX_STREAMS)
        .timeout(REQUEST_TIMEOUT)
        .http2_max_header_list_size(MAX_HEADER_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_connection_age(server_settings.request_timeout)
        .tcp_nodelay(true)
        .serve_with_incoming_shutdown(
            routes,
            tokio_stream::wrappers::ReceiverStream::new(receiver).map_ok(),
            shutdown.clone().cancelled_owned(),
        );
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(server_settings.shutdown_grace).await;
        tracing::warn!(grace = ?server_settings.shutdown_grace, "Grace period over; closing open gRPC connections");
    };
    tokio::select! {
        result = server => {
            if let Err(error) = result {
                tracing::error!(%error, "The gRPC server stopped");
            }
        }
        () = grace => {}
    }
    let _ = accept.await;
}

/// Accepts connections until `shutdown`: each takes a slot of
/// `server.max_connections` (none left: closed at once, counted) and, with
/// TLS, its handshake within `server.header_read_timeout`.
async fn accept(
    listener: TcpListener,
    state: Arc<RlsState>,
    sender: mpsc::Sender<Conn>,
    shutdown: CancellationToken,
) {
    let settings = &state.app.listener.server;
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let alpn = AlpnH2::default();
    let warn = RateLimitedWarn::new(Duration::from_secs(10));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    if let Some(suppressed) = warn.should_log() {
                        tracing::warn!(%error, suppressed, "gRPC accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state.limits.grpc().refused(GrpcRefusal::Connection);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = state.app.listener.tls.get() else {
            if sender
                .send(Conn::new(Io::Plain(stream), slot))
                .await
                .is_err()
            {
                return;
            }
            continue;
        };
        let tls = alpn.of(&tls);
        let sender = sender.clone();
        let state = state.clone();
        let within = settings.header_read_timeout;
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            match tokio::time::timeout(within, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let conn = Conn::new(Io::Tls(Box::new(stream)), slot);
                    let _ = sender.send(conn).await;
                }
                Ok(Err(_)) | Err(_) => state.limits.grpc().refused(GrpcRefusal::Connection),
            }
        });
    }
}

/// The listener's TLS configuration with HTTP/2 as its ALPN protocol
/// (gRPC needs it; the HTTP listener offers HTTP/1.1), made again only when
/// the configuration is swapped on reload.
#[derive(Default)]
struct AlpnH2(Mutex<Option<(Arc<ServerConfig>, Arc<ServerConfig>)>>);

impl AlpnH2 {
    fn of(&self, config: &Arc<ServerConfig>) -> Arc<ServerConfig> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((from, h2)) = kept.as_ref()
            && Arc::ptr_eq(from, config)
        {
            return h2.clone();
        }
        let mut h2 = ServerConfig::clone(config);
        h2.alpn_protocols = vec![b"h2".to_vec()];
        let h2 = Arc::new(h2);
        *kept = Some((config.clone(), h2.clone()));
        h2
    }
}

/// A stream of connections that never fails, as tonic wants it.
trait MapOk: Sized {
    fn map_ok(self) -> OkStream<Self>;
}

impl<S> MapOk for S {
    fn map_ok(self) -> OkStream<Self> {
        OkStream(self)
    }
}

struct OkStream<S>(S);

impl<S: tokio_stream::Stream + Unpin> tokio_stream::Stream for OkStream<S> {
    type Item = Result<S::Item, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx).map(|item| item.map(Ok))
    }
}

/// A connection, plain or TLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection holding its slot until it closes.
struct Conn {
    io: Io,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    fn new(io: Io, slot: OwnedSemaphorePermit) -> Conn {
        Conn { io, _slot: slot }
    }
}

impl Connected for Conn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Io::Tls(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(stream) => stream.is_write_vectored(),
            Io::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// Routes a request to the health service or the rate-limit service
/// (which answers `UNIMPLEMENTED` for any other path).
#[derive(Clone)]
struct Routes {
    rls: RateLimitServiceServer<Rls>,
    health: HealthServer<HealthService>,
}

impl Service<http::Request<Body>> for Routes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both services are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let health = <HealthServer<HealthService> as NamedService>::NAME;
        let path = request.uri().path();
        let to_health = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(health))
            .is_some_and(|p| p.starts_with('/'));
        if to_health {
            self.health.call(request)
        } else {
            self.rls.call(request)
        }
    }
}

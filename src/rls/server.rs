//! The gRPC listener: accepts connections (at most `server.max_connections`
//! at once, TLS as the HTTP listener serves it, handshakes within
//! `server.header_read_timeout`) and serves each over HTTP/2
//! ([`super::connection`]), with the health service's state.
//!
//! On shutdown, `server.shutdown_grace` for what is in flight; a
//! connection's own bounds are in [`super::connection`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::RlsState;
use super::connection::Health;
use crate::ratelimit::GrpcRefusal;
use crate::telemetry::RateLimitedWarn;

/// The gRPC listener, bound by the daemon before anything is spawned.
#[derive(Debug)]
pub struct GrpcListener {
    pub listener: TcpListener,
    pub addr: SocketAddr,
    /// Serving once the daemon is ready, not serving while it drains.
    pub health: Health,
}

impl GrpcListener {
    pub async fn bind(addr: SocketAddr) -> io::Result<GrpcListener> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(GrpcListener {
            listener,
            addr,
            health: Health::default(),
        })
    }
}

/// Serves until `shutdown`, then lets what is in flight finish within
/// `server.shutdown_grace`.
pub async fn serve(listener: GrpcListener, state: Arc<RlsState>, shutdown: CancellationToken) {
    let grace = state.app.listener.server.shutdown_grace;
    let connections = TaskTracker::new();
    accept(
        listener.listener,
        &listener.health,
        &state,
        &connections,
        &shutdown,
    )
    .await;
    connections.close();
    // Each connection saw `shutdown` too: it sent GOAWAY and finishes
    // what is in flight.
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?grace, "Grace period over; closing open gRPC connections");
    }
}

/// Accepts connections until `shutdown`: each takes a slot of
/// `server.max_connections` (none left: closed at once, counted) and, with
/// TLS, its handshake within `server.header_read_timeout`.
async fn accept(
    listener: TcpListener,
    health: &Health,
    state: &Arc<RlsState>,
    connections: &TaskTracker,
    shutdown: &CancellationToken,
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
        let tls = state.app.listener.tls.get().map(|tls| alpn.of(&tls));
        let state = state.clone();
        let health = health.clone();
        let shutdown = shutdown.clone();
        let within = settings.header_read_timeout;
        connections.spawn(async move {
            let io = match tls {
                None => Io::Plain(stream),
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    match tokio::time::timeout(within, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => Io::Tls(Box::new(stream)),
                        Ok(Err(_)) | Err(_) => {
                            state.limits.grpc().refused(GrpcRefusal::Connection);
                            return;
                        }
                    }
                }
            };
            let conn = Conn::new(io, slot);
            super::connection::serve(conn, state, health, shutdown).await;
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

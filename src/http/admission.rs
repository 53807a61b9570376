//! Who gets a connection: a cap per client address, the ordinary slots
//! (`server.max_connections`), and a small reserve kept for probes.
//!
//! A client address with `server.max_connections_per_ip` connections open
//! has its next one closed at once. Otherwise the connection takes an
//! ordinary slot, or, when every ordinary slot is taken, one of
//! [`PROBE_SLOTS`] reserved slots: there it has [`PROBE_HEAD_TIMEOUT`] (or
//! `server.header_read_timeout` if shorter, TLS handshake included) to send
//! one request head; `GET`/`HEAD` `/healthz` or `/readyz` is answered and
//! the connection closed, anything else is closed unanswered. So a client
//! holding every ordinary slot cannot make the kubelet restart a healthy
//! pod, and the reserve itself is held only for seconds per connection.
//!
//! IPv4 clients count by address, IPv6 clients by their /64 (one host
//! usually holds a whole /64). The per-address counts are keyed by outside
//! data but bounded: an address is counted only while it has a connection
//! open, so there are never more entries than open connections
//! (`max_connections` + [`PROBE_SLOTS`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::{AppState, Endpoint, count_request};

/// Connections kept beyond `server.max_connections` for probes only.
pub(super) const PROBE_SLOTS: usize = 8;

/// Longest a reserved slot waits for its request head.
pub(super) const PROBE_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes of a probe's request head read in the reserve.
const PROBE_HEAD_BYTES: usize = 2048;

/// The `reason` label of `tenantwatch_http_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejected {
    /// Every ordinary slot was taken (and the request was not a probe, or
    /// the probe reserve was full too).
    MaxConnections,
    /// The client address had `server.max_connections_per_ip` open.
    PerIp,
}

impl Rejected {
    pub(super) const ALL: [Rejected; 2] = [Rejected::MaxConnections, Rejected::PerIp];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Rejected::MaxConnections => "max_connections",
            Rejected::PerIp => "per_ip",
        }
    }
}

/// Where an accepted connection goes.
pub(super) enum Admit {
    /// An ordinary slot: every endpoint, keep-alive.
    Ordinary(Slot),
    /// A reserved slot: one probe request, then closed.
    ProbeOnly(Slot),
    /// Closed at once.
    Rejected(Rejected),
}

/// A connection's hold on its slot and on its address's count; both are
/// given back when it is dropped.
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    _client: ClientHold,
}

/// The connection slots and the per-address counts.
pub(super) struct Admission {
    ordinary: Arc<Semaphore>,
    probes: Arc<Semaphore>,
    per_ip: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Admission {
    pub(super) fn new(max_connections: usize, per_ip: usize) -> Admission {
        Admission {
            ordinary: Arc::new(Semaphore::new(max_connections)),
            probes: Arc::new(Semaphore::new(PROBE_SLOTS)),
            per_ip: per_ip.max(1),
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Where a connection from `peer` goes.
    pub(super) fn admit(&self, peer: IpAddr) -> Admit {
        let key = client_key(peer);
        let client = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let count = open.entry(key).or_insert(0);
            if *count >= self.per_ip {
                return Admit::Rejected(Rejected::PerIp);
            }
            *count += 1;
            ClientHold {
                key,
                open: self.open.clone(),
            }
        };
        if let Ok(permit) = self.ordinary.clone().try_acquire_owned() {
            return Admit::Ordinary(Slot {
                _permit: permit,
                _client: client,
            });
        }
        match self.probes.clone().try_acquire_owned() {
            Ok(permit) => Admit::ProbeOnly(Slot {
                _permit: permit,
                _client: client,
            }),
            Err(_) => Admit::Rejected(Rejected::MaxConnections),
        }
    }

    /// Client addresses counted now (for tests).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One connection counted against its address; the entry goes with the
/// address's last connection.
struct ClientHold {
    key: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ClientHold {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What a client is counted by: its IPv4 address (an IPv4-mapped IPv6
/// address is one), or its IPv6 /64.
fn client_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// Serves one probe on a reserved slot: the request head must arrive
/// before `until`; `GET`/`HEAD` `/healthz` or `/readyz` is answered with
/// `connection: close`, anything else is closed unanswered and counted.
pub(super) async fn serve_probe<I>(mut io: I, state: &AppState, until: Instant)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = [0u8; PROBE_HEAD_BYTES];
    let mut filled = 0;
    let probe = loop {
        let read = tokio::time::timeout_at(until, io.read(&mut head[filled..])).await;
        match read {
            Ok(Ok(n)) if n > 0 => filled += n,
            _ => break None,
        }
        match probe_request(&head[..filled]) {
            Parsed::Probe(endpoint, method) => break Some((endpoint, method)),
            Parsed::Partial if filled < head.len() => continue,
            Parsed::Partial | Parsed::Other => break None,
        }
    };
    let Some((endpoint, head_only)) = probe else {
        super::rejected(state, Rejected::MaxConnections, 1);
        return;
    };
    let (status, body) = match endpoint {
        Endpoint::Healthz => (StatusCode::OK, "ok\n"),
        _ if state
            .listener
            .ready
            .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            (StatusCode::OK, "ready\n")
        }
        _ => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    };
    count_request(state, endpoint.as_str(), status);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(
        b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: ",
    );
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    super::lane::http_date(&mut out);
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    let _ = tokio::time::timeout_at(until, async {
        io.write_all(&out).await?;
        io.shutdown().await
    })
    .await;
}

/// What a reserved slot has received so far.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A probe: its endpoint, and whether it is `HEAD`.
    Probe(Endpoint, bool),
    /// Not a whole head yet.
    Partial,
    /// A whole head that is not a probe, or not HTTP.
    Other,
}

fn probe_request(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    }
    let path = request.path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    let endpoint = match Endpoint::from_path(path) {
        Some(e @ (Endpoint::Healthz | Endpoint::Readyz)) => e,
        _ => return Parsed::Other,
    };
    match request.method {
        Some("GET") => Parsed::Probe(endpoint, false),
        Some("HEAD") => Parsed::Probe(endpoint, true),
        _ => Parsed::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_over_its_cap_is_rejected_and_the_reserve_follows_the_slots() {
        let admission = Admission::new(3, 2);
        let first = admission.admit(ip("10.0.0.1"));
        let second = admission.admit(ip("10.0.0.1"));
        assert!(matches!(first, Admit::Ordinary(_)));
        assert!(matches!(second, Admit::Ordinary(_)));
        assert!(matches!(
            admission.admit(ip("10.0.0.1")),
            Admit::Rejected(Rejected::PerIp)
        ));
        let third = admission.admit(ip("10.0.0.2"));
        assert!(matches!(third, Admit::Ordinary(_)));
        // Every ordinary slot taken: the reserve, for probes.
        let probes: Vec<_> = (0..PROBE_SLOTS)
            .map(|i| admission.admit(IpAddr::from([10, 0, 1, i as u8])))
            .collect();
        assert!(probes.iter().all(|a| matches!(a, Admit::ProbeOnly(_))));
        assert!(matches!(
            admission.admit(ip("10.0.2.1")),
            Admit::Rejected(Rejected::MaxConnections)
        ));
        // The counts go with the connections: the map never outgrows them.
        drop((first, second, probes));
        assert_eq!(admission.addresses(), 1);
        assert!(matches!(
            admission.admit(ip("10.0.0.1")),
            Admit::Ordinary(_)
        ));
        drop(third);
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        let admission = Admission::new(10, 1);
        let _held = admission.admit(ip("2001:db8::1"));
        assert!(matches!(
            admission.admit(ip("2001:db8::2")),
            Admit::Rejected(Rejected::PerIp)
        ));
    }

    #[test]
    fn only_probe_requests_are_answered_in_the_reserve() {
        assert_eq!(
            probe_request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Probe(Endpoint::Healthz, false)
        );
        assert_eq!(
            probe_request(b"HEAD /readyz?verbose HTTP/1.1\r\n\r\n"),
            Parsed::Probe(Endpoint::Readyz, true)
        );
        assert_eq!(probe_request(b"GET /healthz HTTP/1.1\r\n"), Parsed::Partial);
        for other in [
            &b"GET /metrics HTTP/1.1\r\n\r\n"[..],
            b"POST /healthz HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert_eq!(probe_request(other), Parsed::Other);
        }
    }
}

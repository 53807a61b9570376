//! UDP ingest: one socket, one or more blocking receive threads.
//!
//! Each thread owns a store shard, so the receive path takes no lock that
//! another thread wants. The first thread always receives; the others
//! (`Backlog`) join only while it falls behind on datagrams that carry
//! several events each: on single-event datagrams a second thread only
//! contends for the socket (and for the cores the senders need).
//!
//! A blocking receive on a plain thread beats an async socket here: there
//! is nothing else for the thread to do, and it saves the readiness round
//! trip per datagram; `recvmmsg` takes every datagram
//! already queued (up to 32) in one system call. The receive buffer is set
//! explicitly (the granted size is exported), a datagram longer than
//! `max_datagram_bytes` is detected with a slot one byte longer and refused
//! whole, a datagram from a sender outside `ingest.udp_allow` is dropped
//! before it is parsed (the source address comes with each datagram from
//! `recvmmsg`, so the check is a few integer comparisons), and the kernel's
//! own drop counter for the socket is read from
//! `/proc/net/udp` by the first receive thread about once a second and left
//! in [`IngestStats`] for the exposition.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::IoSliceMut;
use tokio_util::sync::CancellationToken;

use crate::event::RejectReason;
use crate::ingest::allow::SourceFilter;
use crate::ingest::{LineLimits, ingest_payload};
use crate::store::{IngestStats, Source, Store};
use crate::telemetry::RateLimitedWarn;

/// How often a receive thread wakes up to check for shutdown.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);
/// Longest a receive thread spends draining the socket on shutdown.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// How often the first receive thread refreshes the kernel's drop counter.
const DROPS_REFRESH: Duration = Duration::from_secs(1);

/// A bound UDP ingest socket, before its threads start.
#[derive(Debug)]
pub struct UdpListener {
    socket: UdpSocket,
    pub local_addr: SocketAddr,
    /// The receive buffer the kernel granted (Linux reports twice the
    /// requested size, capped by `net.core.rmem_max`).
    pub granted_recv_buffer_bytes: usize,
    /// The socket's inode, to find its row in `/proc/net/udp`.
    pub inode: Option<u64>,
}

impl UdpListener {
    pub fn bind(addr: SocketAddr, recv_buffer_bytes: usize) -> io::Result<UdpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_recv_buffer_size(recv_buffer_bytes)?;
        socket.bind(&addr.into())?;
        let granted_recv_buffer_bytes = socket.recv_buffer_size()?;
        let socket: UdpSocket = socket.into();
        socket.set_read_timeout(Some(SHUTDOWN_POLL))?;
        let local_addr = socket.local_addr()?;
        let inode = socket_inode(&socket);
        Ok(UdpListener {
            socket,
            local_addr,
            granted_recv_buffer_bytes,
            inode,
        })
    }

    /// Leaves the socket's granted buffer and current kernel drops in
    /// `stats`, for the exposition.
    pub fn publish_socket_figures(&self, stats: &IngestStats) {
        stats.udp_enabled.store(true, Ordering::Relaxed);
        stats
            .udp_recv_buffer_bytes
            .store(self.granted_recv_buffer_bytes as u64, Ordering::Relaxed);
        if let Some(drops) = self.inode.and_then(kernel_drops) {
            stats.udp_kernel_drops.store(drops, Ordering::Relaxed);
        }
    }

    /// Starts `receivers` threads, thread `i` writing to store shard
    /// `first_shard + i`. They stop within 100 ms of `shutdown`.
    pub fn spawn(
        self,
        receivers: usize,
        first_shard: usize,
        limits: UdpLimits,
        store: Arc<Store>,
        stats: Arc<IngestStats>,
        shutdown: CancellationToken,
    ) -> io::Result<Vec<JoinHandle<()>>> {
        let mut handles = Vec::with_capacity(receivers);
        let backlog = Arc::new(Backlog::new());
        for i in 0..receivers.max(1) {
            let socket = self.socket.try_clone()?;
            let (store, stats, shutdown) = (store.clone(), stats.clone(), shutdown.clone());
            let backlog = backlog.clone();
            let limits = limits.clone();
            // The first thread keeps the kernel's drop counter fresh and
            // says when the others are needed.
            let role = if i == 0 {
                Role::First { inode: self.inode }
            } else {
                Role::Helper
            };
            let handle = std::thread::Builder::new()
                .name(format!("tenantwatch-udp-{i}"))
                .spawn(move || {
                    let shard = first_shard + i;
                    let receiver = Receiver {
                        socket: &socket,
                        shard,
                        limits,
                        store: &store,
                        stats: &stats,
                        refused_warn: RateLimitedWarn::new(Duration::from_secs(10)),
                    };
                    receiver.run(role, &backlog, &shutdown);
                })?;
            handles.push(handle);
        }
        Ok(handles)
    }
}

/// Size limits of the UDP path, and the senders it admits.
#[derive(Debug, Clone)]
pub struct UdpLimits {
    pub max_datagram_bytes: usize,
    pub lines: LineLimits,
    pub sources: Arc<SourceFilter>,
}

/// What a receive thread does besides receiving.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// Always receives; refreshes the kernel's drop counter (of the socket
    /// with this inode) and engages the helpers.
    First { inode: Option<u64> },
    /// Receives only while [`Backlog`] says the first thread is behind.
    Helper,
}

/// A batch of at least this many bytes per datagram on average is parsing
/// work enough for a second thread to pay off. Measured on 2 cores
/// (performance.md): at 55 bytes per datagram (one event) two threads
/// sustained 0.75-0.88 of one thread's zero-loss rate; at 1.1 KB (20
/// events) 1.3-1.7 times it.
const HELPER_BYTES_PER_DATAGRAM: usize = 256;

/// How long the helpers stay engaged after the first thread last found a
/// full batch of heavy datagrams (so they do not flap with every batch).
const HELPERS_LINGER: Duration = Duration::from_millis(200);

/// Whether the helper threads are needed: the first thread took a full
/// batch (the socket's queue is backing up) of datagrams heavy enough that
/// parsing, not the socket, is the bottleneck.
#[derive(Debug)]
struct Backlog {
    started: Instant,
    /// Milliseconds since `started` until which the helpers receive.
    engaged_until_ms: AtomicU64,
    wake: Mutex<()>,
    engaged: Condvar,
}

impl Backlog {
    fn new() -> Backlog {
        Backlog {
            started: Instant::now(),
            engaged_until_ms: AtomicU64::new(0),
            wake: Mutex::new(()),
            engaged: Condvar::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn is_engaged(&self) -> bool {
        self.now_ms() < self.engaged_until_ms.load(Ordering::Relaxed)
    }

    /// Called by the first thread after each receive.
    fn after_receive(&self, datagrams: usize, bytes: usize) {
        if datagrams < DATAGRAMS_PER_RECEIVE || bytes < datagrams * HELPER_BYTES_PER_DATAGRAM {
            return;
        }
        let now = self.now_ms();
        let until = now + HELPERS_LINGER.as_millis() as u64;
        let previous = self.engaged_until_ms.swap(until, Ordering::Relaxed);
        if previous <= now {
            // They were idle: wake them (under the lock, so none misses it).
            let _guard = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
            self.engaged.notify_all();
        }
    }

    /// A helper's wait: until engaged, or `timeout` (to look at shutdown).
    fn wait(&self, timeout: Duration) {
        let guard = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.is_engaged() {
            let _ = self.engaged.wait_timeout(guard, timeout);
        }
    }
}

/// One receive thread's socket, shard and limits.
struct Receiver<'a> {
    socket: &'a UdpSocket,
    shard: usize,
    limits: UdpLimits,
    store: &'a Store,
    stats: &'a IngestStats,
    /// Logs refused senders, at most once per 10 s.
    refused_warn: RateLimitedWarn,
}

impl Receiver<'_> {
    fn run(&self, role: Role, backlog: &Backlog, shutdown: &CancellationToken) {
        let mut batch = ReceiveBatch::new(self.limits.max_datagram_bytes);
        let warn = RateLimitedWarn::new(Duration::from_secs(10));
        let mut drops_read = Instant::now();
        // The clock is read once per 1024 receive calls, not per datagram.
        let mut receives_since_check = 0u32;
        while !shutdown.is_cancelled() {
            match role {
                Role::First { inode: Some(inode) } => {
                    receives_since_check += 1;
                    if receives_since_check >= 1024 {
                        receives_since_check = 0;
                        if drops_read.elapsed() >= DROPS_REFRESH {
                            drops_read = Instant::now();
                            if let Some(drops) = kernel_drops(inode) {
                                self.stats.udp_kernel_drops.store(drops, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Role::First { inode: None } => {}
                Role::Helper => {
                    if !backlog.is_engaged() {
                        backlog.wait(SHUTDOWN_POLL);
                        continue;
                    }
                }
            }
            match batch.receive(self.socket) {
                Ok(received) => {
                    let mut bytes = 0;
                    for (source, datagram) in batch.datagrams(received) {
                        bytes += datagram.len();
                        self.record(source, datagram);
                    }
                    if let Role::First { .. } = role {
                        backlog.after_receive(received, bytes);
                    }
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    // Idle: let the next turn look at the drop counter.
                    receives_since_check = 1024;
                }
                Err(err) => {
                    self.stats
                        .udp_receive_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = warn.should_log() {
                        tracing::warn!(error = %err, suppressed, "UDP receive failed");
                    }
                    // Errors such as ECONNREFUSED from a previous send can
                    // repeat; do not spin on them.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        self.drain();
    }

    /// On shutdown, takes what is still queued in the socket's receive
    /// buffer (up to a whole buffer of events that were already accepted by
    /// the kernel), then returns: when the buffer is empty, or after
    /// [`DRAIN_LIMIT`] if senders keep it full.
    fn drain(&self) {
        if self.socket.set_nonblocking(true).is_err() {
            return;
        }
        let started = Instant::now();
        let mut batch = ReceiveBatch::new(self.limits.max_datagram_bytes);
        while let Ok(received) = batch.receive(self.socket) {
            if started.elapsed() > DRAIN_LIMIT {
                break;
            }
            for (source, datagram) in batch.datagrams(received) {
                self.record(source, datagram);
            }
        }
    }

    /// One received datagram: refused whole when its sender is not
    /// admitted (`ingest.udp_allow`) or when it filled its
    /// `max_datagram_bytes + 1` slot (it was truncated), else parsed into
    /// the thread's store shard.
    fn record(&self, source: Option<IpAddr>, datagram: &[u8]) {
        let stats = self.stats;
        stats.udp_datagrams.fetch_add(1, Ordering::Relaxed);
        if !self.limits.sources.admits(source) {
            stats.add_received(Source::Udp, 1);
            stats.add_rejected(Source::Udp, RejectReason::SourceNotAllowed);
            if let Some(suppressed) = self.refused_warn.should_log() {
                tracing::warn!(
                    source = ?source,
                    suppressed,
                    "UDP datagram from a sender outside ingest.udp_allow dropped"
                );
            }
            return;
        }
        if datagram.len() > self.limits.max_datagram_bytes {
            stats.add_received(Source::Udp, 1);
            stats.add_rejected(Source::Udp, RejectReason::DatagramTooLarge);
            return;
        }
        let mut writer = self.store.writer(self.shard);
        ingest_payload(
            datagram,
            self.limits.lines,
            Source::Udp,
            &mut writer,
            stats,
            |_, _| {},
        );
    }
}

/// Datagrams taken per `recvmmsg` call.
const DATAGRAMS_PER_RECEIVE: usize = 32;

/// Buffers for up to [`DATAGRAMS_PER_RECEIVE`] datagrams and the received
/// length of each: one `recvmmsg` system call takes what is queued, where
/// `recv` would take one datagram per call.
struct ReceiveBatch {
    /// One slot of `max_datagram_bytes + 1` per datagram: one that fills
    /// its slot was truncated. The pages of a slot are only touched (and
    /// only count in RSS) as far as datagrams reach.
    buffer: Vec<u8>,
    slot_bytes: usize,
    lengths: [usize; DATAGRAMS_PER_RECEIVE],
    /// The sender of each datagram.
    sources: [Option<IpAddr>; DATAGRAMS_PER_RECEIVE],
    headers: MultiHeaders<SockaddrStorage>,
}

impl ReceiveBatch {
    fn new(max_datagram_bytes: usize) -> ReceiveBatch {
        let slot_bytes = max_datagram_bytes + 1;
        ReceiveBatch {
            buffer: vec![0u8; slot_bytes * DATAGRAMS_PER_RECEIVE],
            slot_bytes,
            lengths: [0; DATAGRAMS_PER_RECEIVE],
            sources: [None; DATAGRAMS_PER_RECEIVE],
            headers: MultiHeaders::preallocate(DATAGRAMS_PER_RECEIVE, None),
        }
    }

    /// Waits (up to the socket's read timeout) for a datagram, then takes
    /// every datagram already queued, up to the batch size, without
    /// waiting for more (`MSG_WAITFORONE`). Returns how many were taken.
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut slots = self.buffer.chunks_mut(self.slot_bytes);
        let mut slices: [[IoSliceMut<'_>; 1]; DATAGRAMS_PER_RECEIVE] =
            std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap_or_default())]);
        let received = recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )
        .map_err(io::Error::from)?;
        let mut count = 0;
        for ((length, source), message) in self
            .lengths
            .iter_mut()
            .zip(self.sources.iter_mut())
            .zip(received)
        {
            *length = message.bytes;
            *source = message.address.as_ref().and_then(source_ip);
            count += 1;
        }
        Ok(count)
    }

    /// The first `received` datagrams of the last [`Self::receive`], each
    /// with its sender; each slice is one byte longer than
    /// `max_datagram_bytes` if the datagram was.
    fn datagrams(&self, received: usize) -> impl Iterator<Item = (Option<IpAddr>, &[u8])> {
        self.buffer
            .chunks(self.slot_bytes)
            .zip(&self.lengths[..received])
            .zip(&self.sources[..received])
            .map(|((slot, length), source)| (*source, &slot[..(*length).min(slot.len())]))
    }
}

/// The IP address of a datagram's sender.
fn source_ip(address: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

/// The inode of a socket, from `/proc/self/fd/N` -> `socket:[INODE]`.
fn socket_inode(socket: &UdpSocket) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Datagrams the kernel dropped for the socket with `inode` because its
/// receive buffer was full: the `drops` column of `/proc/net/udp{,6}`.
pub fn kernel_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|table| parse_drops(&table, inode))
}

fn parse_drops(table: &str, inode: u64) -> Option<u64> {
    // Columns: sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 13 || fields[9].parse::<u64>().ok()? != inode {
            return None;
        }
        fields[12].parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_join_only_behind_heavy_datagrams_and_leave_after_a_while() {
        let backlog = Backlog::new();
        assert!(!backlog.is_engaged());
        // A full batch of single-event datagrams: the socket is the limit.
        backlog.after_receive(DATAGRAMS_PER_RECEIVE, DATAGRAMS_PER_RECEIVE * 55);
        assert!(!backlog.is_engaged());
        // Heavy datagrams, but the queue was not backing up.
        backlog.after_receive(3, 3 * 1100);
        assert!(!backlog.is_engaged());
        // A full batch of heavy datagrams: parsing is the limit.
        backlog.after_receive(DATAGRAMS_PER_RECEIVE, DATAGRAMS_PER_RECEIVE * 1100);
        assert!(backlog.is_engaged());
        // A waiting helper returns at once while engaged.
        let started = Instant::now();
        backlog.wait(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(1));
        std::thread::sleep(HELPERS_LINGER + Duration::from_millis(50));
        assert!(!backlog.is_engaged());
    }

    #[test]
    fn parses_the_drops_column() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            1234: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 55555 2 0000000000000000 17\n\
            1235: 0100007F:1FBE 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 66666 2 0000000000000000 3\n";
        assert_eq!(parse_drops(table, 66666), Some(3));
        assert_eq!(parse_drops(table, 55555), Some(17));
        assert_eq!(parse_drops(table, 1), None);
    }

    #[test]
    fn bound_socket_is_found_in_proc() {
        let listener = UdpListener::bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let inode = listener.inode.expect("inode of a socket");
        assert_eq!(kernel_drops(inode), Some(0));
        assert!(listener.granted_recv_buffer_bytes > 0);
    }

    #[test]
    fn one_receive_takes_every_queued_datagram_and_marks_the_oversized() {
        let listener = UdpListener::bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let max_datagram_bytes = 16;
        let sent: Vec<Vec<u8>> = (0..DATAGRAMS_PER_RECEIVE + 3)
            .map(|i| match i {
                0 => vec![b'x'; 100],
                _ => format!("d{i}").into_bytes(),
            })
            .collect();
        for datagram in &sent {
            sender.send_to(datagram, listener.local_addr).unwrap();
        }
        let mut batch = ReceiveBatch::new(max_datagram_bytes);
        let mut received: Vec<Vec<u8>> = Vec::new();
        while received.len() < sent.len() {
            let count = batch.receive(&listener.socket).unwrap();
            assert!((1..=DATAGRAMS_PER_RECEIVE).contains(&count));
            received.extend(batch.datagrams(count).map(|(source, datagram)| {
                assert_eq!(source, Some(IpAddr::from([127, 0, 0, 1])));
                datagram.to_vec()
            }));
        }
        // The oversized one fills its slot: one byte past the limit.
        assert_eq!(received[0], vec![b'x'; max_datagram_bytes + 1]);
        assert_eq!(received[1..], sent[1..]);
    }
}

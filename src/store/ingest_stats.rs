//! Ingest counters: what every source received and refused, by reason, and
//! the UDP socket's own figures. Written by the sources ([`crate::ingest`]
//! and the HTTP endpoint), read by the exposition.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::event::RejectReason;

/// Where events came from; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Udp = 0,
    Http = 1,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Udp, Source::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Udp => "udp",
            Source::Http => "http",
        }
    }
}

const REASONS: usize = RejectReason::ALL.len();

/// Counters of the ingest path, shared by every source. Plain atomics in
/// fixed arrays: the label sets are closed, so there is nothing to look up.
#[derive(Debug)]
pub struct IngestStats {
    received: [AtomicU64; 2],
    rejected: [[AtomicU64; REASONS]; 2],
    pub udp_datagrams: AtomicU64,
    pub udp_receive_errors: AtomicU64,
    /// The UDP socket, once bound: the receive buffer the kernel granted.
    pub udp_recv_buffer_bytes: AtomicU64,
    /// Datagrams the kernel dropped for the UDP socket (refreshed by a
    /// receive thread about once a second; `u64::MAX` until first read).
    pub udp_kernel_drops: AtomicU64,
    /// Whether a UDP socket is bound at all.
    pub udp_enabled: std::sync::atomic::AtomicBool,
}

impl IngestStats {
    pub fn add_received(&self, source: Source, n: u64) {
        if n > 0 {
            self.received[source as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn add_rejected(&self, source: Source, reason: RejectReason) {
        self.rejected[source as usize][reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn received(&self, source: Source) -> u64 {
        self.received[source as usize].load(Ordering::Relaxed)
    }

    pub fn rejected(&self, source: Source, reason: RejectReason) -> u64 {
        self.rejected[source as usize][reason.index()].load(Ordering::Relaxed)
    }
}

impl Default for IngestStats {
    fn default() -> Self {
        IngestStats {
            received: Default::default(),
            rejected: Default::default(),
            udp_datagrams: AtomicU64::new(0),
            udp_receive_errors: AtomicU64::new(0),
            udp_recv_buffer_bytes: AtomicU64::new(0),
            udp_kernel_drops: AtomicU64::new(u64::MAX),
            udp_enabled: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl IngestStats {
    /// Kernel drops for the UDP socket, once they have been read.
    pub fn udp_kernel_drops(&self) -> Option<u64> {
        match self.udp_kernel_drops.load(Ordering::Relaxed) {
            u64::MAX => None,
            drops => Some(drops),
        }
    }
}

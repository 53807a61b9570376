//! The fleet view: the per-tenant window figures every replica judges on,
//! and their exchange between replicas.
//!
//! UDP senders stick to one replica (kube-proxy keeps a flow on one pod),
//! so each replica sees part of the events. With the Redis backend, every
//! replica publishes its own window figures each `detect.interval` (one
//! key per replica, kept three intervals, so a replica that stops drops
//! out within three intervals) and judges on the sum of every live
//! replica's: shares, flags and advice are then the same on every replica
//! within one interval. With Redis down (or no Redis) a replica judges on
//! its own figures alone, and says so ([`Scope::Replica`]).
//!
//! Only event figures are exchanged. PostgreSQL-side figures are polled by
//! every replica from the same targets and judged per target, so they are
//! never summed across replicas (no double counting).
//!
//! The encoding is compact and bounded (see [`encode`]): at 10,000 active
//! tenants with a few latency buckets each it is about 0.6 MB per replica. The latency buckets are the
//! window's native-histogram buckets (only the populated ones), written and
//! read by `write_buckets` and `read_buckets` only: a change of bucket
//! layout changes those two and [`VERSION`].

use std::collections::HashMap;

use crate::store::{NativeHistogram, SourceSet};

pub use super::inputs::TenantFigures;
use super::inputs::WindowFigures;

/// The first bytes of an encoding, with its version: a replica ignores
/// figures of a version it does not read (during a rolling update).
pub const VERSION: &[u8; 4] = b"twf2";

/// Most tenants read from one replica, and kept in the fleet's sum.
pub const MAX_FLEET_TENANTS: usize = 100_000;

/// Longest tenant id carried (the store admits no longer ones).
const MAX_TENANT_BYTES: usize = u16::MAX as usize;

/// Every tenant's figures, of one replica or of the fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub tenants: HashMap<String, TenantFigures>,
    /// Whether the rates, errors and buckets cover a window (false on a
    /// replica's first evaluation, when only database time is known).
    pub windowed: bool,
}

impl Figures {
    /// All tenants' database time over the window, in milliseconds.
    pub fn total_db_time_ms(&self) -> f64 {
        self.tenants.values().map(|t| t.db_time_ms).sum()
    }

    /// Each tenant's share of all tenants' database time.
    pub fn db_time_shares(&self) -> HashMap<String, f64> {
        let total = self.total_db_time_ms();
        self.tenants
            .iter()
            .map(|(tenant, f)| {
                let share = if total > 0.0 {
                    f.db_time_ms / total
                } else {
                    0.0
                };
                (tenant.clone(), share)
            })
            .collect()
    }

    /// The window figures the rules read.
    pub fn windows(&self) -> HashMap<String, WindowFigures> {
        if !self.windowed {
            return HashMap::new();
        }
        self.tenants
            .iter()
            .map(|(tenant, f)| (tenant.clone(), f.window()))
            .collect()
    }

    /// Adds `other`'s figures; tenants beyond [`MAX_FLEET_TENANTS`] are
    /// left out and counted in the return value.
    pub fn add(&mut self, other: &Figures) -> usize {
        self.windowed |= other.windowed;
        let mut dropped = 0;
        for (tenant, theirs) in &other.tenants {
            let room = self.tenants.len() < MAX_FLEET_TENANTS;
            match self.tenants.get_mut(tenant) {
                Some(mine) => mine.add(theirs),
                None if room => {
                    self.tenants.insert(tenant.clone(), theirs.clone());
                }
                None => dropped += 1,
            }
        }
        dropped
    }
}

/// Whom the flags, advice and shares answer for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every live replica's figures (this one's included), through Redis.
    Fleet,
    /// This replica's figures alone: no Redis backend, or Redis not
    /// answering.
    #[default]
    Replica,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Fleet => "fleet",
            Scope::Replica => "replica",
        }
    }
}

/// What the last exchange gave: for the API and the exposition.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FleetStatus {
    pub scope: Scope,
    /// Replicas whose figures the view holds (1 in replica scope).
    pub replicas: usize,
    /// Bytes this replica published and read in the last exchange.
    #[serde(skip)]
    pub bytes_sent: usize,
    #[serde(skip)]
    pub bytes_received: usize,
    /// Replicas whose figures could not be read in the last exchange.
    #[serde(skip)]
    pub unreadable: usize,
}

impl FleetStatus {
    /// This replica alone.
    pub fn replica() -> FleetStatus {
        FleetStatus {
            scope: Scope::Replica,
            replicas: 1,
            bytes_sent: 0,
            bytes_received: 0,
            unreadable: 0,
        }
    }
}

impl Default for FleetStatus {
    fn default() -> Self {
        FleetStatus::replica()
    }
}

/// Why a replica's figures could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not figures of version {VERSION:?}")]
    Version,
    #[error("cut short")]
    Truncated,
    #[error("more than {MAX_FLEET_TENANTS} tenants")]
    TooMany,
    #[error("a tenant id is not UTF-8")]
    TenantId,
    #[error("a figure is negative or not finite")]
    Figure,
    #[error("bytes left over")]
    Trailing,
}

/// Encodes the active tenants' figures: [`VERSION`], a `u32` count, then per
/// tenant a `u16` id length and the id, `queries`, `errors`, `rate` and
/// `db_time_ms` as `f32`, the sources' bits, whether the window is whole
/// (`0` or `1`), and the buckets
/// (`write_buckets`); little-endian. `f32` keeps 7 significant digits,
/// far finer than any threshold.
pub fn encode(figures: &Figures) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + figures.tenants.len() * 48);
    out.extend_from_slice(VERSION);
    let active: Vec<(&String, &TenantFigures)> = figures
        .tenants
        .iter()
        .filter(|(tenant, f)| f.is_active() && tenant.len() <= MAX_TENANT_BYTES)
        .take(MAX_FLEET_TENANTS)
        .collect();
    out.extend_from_slice(&(active.len() as u32).to_le_bytes());
    for (tenant, f) in active {
        out.extend_from_slice(&(tenant.len() as u16).to_le_bytes());
        out.extend_from_slice(tenant.as_bytes());
        for value in [f.queries, f.errors, f.rate, f.db_time_ms] {
            out.extend_from_slice(&finite_f32(value).to_le_bytes());
        }
        out.push(f.sources.bits());
        out.push(u8::from(f.whole_window));
        write_buckets(&mut out, &f.latency);
    }
    out
}

/// Decodes what [`encode`] wrote, refusing anything else: every figure
/// finite and non-negative, at most [`MAX_FLEET_TENANTS`] tenants.
pub fn decode(bytes: &[u8]) -> Result<Figures, DecodeError> {
    let mut r = Reader(bytes);
    if r.take(VERSION.len())? != VERSION {
        return Err(DecodeError::Version);
    }
    let count = u32::from_le_bytes(r.array()?) as usize;
    if count > MAX_FLEET_TENANTS {
        return Err(DecodeError::TooMany);
    }
    let mut tenants: HashMap<String, TenantFigures> =
        HashMap::with_capacity(count.min(bytes.len() / 20));
    for _ in 0..count {
        let len = u16::from_le_bytes(r.array()?) as usize;
        let tenant = std::str::from_utf8(r.take(len)?).map_err(|_| DecodeError::TenantId)?;
        let [queries, errors, rate, db_time_ms] =
            [r.figure()?, r.figure()?, r.figure()?, r.figure()?];
        let sources = SourceSet::from_bits(r.array::<1>()?[0]);
        let whole_window = match r.array::<1>()?[0] {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::Figure),
        };
        let latency = read_buckets(&mut r)?;
        let f = TenantFigures {
            queries,
            errors,
            rate,
            db_time_ms,
            latency,
            sources,
            whole_window,
        };
        match tenants.get_mut(tenant) {
            Some(existing) => existing.add(&f),
            None => {
                tenants.insert(tenant.to_owned(), f);
            }
        }
    }
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing);
    }
    Ok(Figures {
        tenants,
        windowed: true,
    })
}

/// The window's latency histogram: its schema (`i8`), zero count (`u32`),
/// the number of populated buckets (`u16`), then each as index (`i16`) and
/// count (`u32`). The one place that knows the bucket layout.
fn write_buckets(out: &mut Vec<u8>, latency: &NativeHistogram) {
    out.extend_from_slice(&latency.schema().to_le_bytes());
    out.extend_from_slice(&latency.zero_count().to_le_bytes());
    let buckets: Vec<(i32, u32)> = latency.buckets().collect();
    out.extend_from_slice(&(buckets.len() as u16).to_le_bytes());
    for (index, count) in buckets {
        // A histogram's indexes fit i16 (see `NativeHistogram`).
        out.extend_from_slice(&(index as i16).to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
}

/// `value` as a finite, non-negative `f32` (a plain cast of a huge `f64`
/// is infinite, which [`decode`] refuses).
fn finite_f32(value: f64) -> f32 {
    value.clamp(0.0, f64::from(f32::MAX)) as f32
}

fn read_buckets(r: &mut Reader<'_>) -> Result<NativeHistogram, DecodeError> {
    let schema = i8::from_le_bytes(r.array()?);
    let zero = u32::from_le_bytes(r.array()?);
    let len = usize::from(u16::from_le_bytes(r.array()?));
    if len > crate::store::native::NATIVE_MAX_BUCKETS {
        return Err(DecodeError::Figure);
    }
    let mut buckets = Vec::with_capacity(len);
    for _ in 0..len {
        let index = i16::from_le_bytes(r.array()?);
        let count = u32::from_le_bytes(r.array()?);
        buckets.push((index, count));
    }
    NativeHistogram::from_parts(schema, zero, buckets).ok_or(DecodeError::Figure)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn figure(&mut self) -> Result<f64, DecodeError> {
        let value = f64::from(f32::from_le_bytes(self.array()?));
        if value.is_finite() && value >= 0.0 {
            Ok(value)
        } else {
            Err(DecodeError::Figure)
        }
    }
}

/// Sums this replica's figures with the other live replicas' (`others`,
/// encoded, by replica name; this replica's own entry is skipped). A
/// replica whose figures cannot be read is left out, logged and counted.
pub fn merge(own: &Figures, me: &str, others: &[(String, Vec<u8>)]) -> (Figures, FleetStatus) {
    let mut fleet = own.clone();
    let mut status = FleetStatus {
        scope: Scope::Fleet,
        ..FleetStatus::replica()
    };
    for (replica, bytes) in others {
        status.bytes_received += bytes.len();
        if replica == me {
            continue;
        }
        match decode(bytes) {
            Ok(theirs) => {
                status.replicas += 1;
                let dropped = fleet.add(&theirs);
                if dropped > 0 {
                    tracing::warn!(
                        replica,
                        dropped,
                        "Fleet view full: some tenants of another replica left out"
                    );
                }
            }
            Err(err) => {
                status.unreadable += 1;
                tracing::warn!(
                    replica,
                    error = %err,
                    "Ignoring unreadable window figures shared in Redis"
                );
            }
        }
    }
    (fleet, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Source;
    use proptest::prelude::*;

    fn tenant(queries: f64, db_time_ms: f64) -> TenantFigures {
        let mut latency = NativeHistogram::default();
        if queries > 0.0 {
            latency.observe(0.004, queries);
        }
        TenantFigures {
            queries,
            errors: queries / 10.0,
            rate: queries / 60.0,
            db_time_ms,
            latency,
            sources: SourceSet::of(Source::Udp),
            whole_window: true,
        }
    }

    fn figures(entries: &[(&str, f64, f64)]) -> Figures {
        Figures {
            tenants: entries
                .iter()
                .map(|(t, q, ms)| (t.to_string(), tenant(*q, *ms)))
                .collect(),
            windowed: true,
        }
    }

    #[test]
    fn figures_survive_the_encoding() {
        let own = figures(&[("a", 300.0, 1200.0), ("b", 7.0, 3.5), ("idle", 0.0, 0.0)]);
        let decoded = decode(&encode(&own)).unwrap();
        assert_eq!(decoded.tenants.len(), 2, "idle tenants are not sent");
        assert_eq!(decoded.tenants["a"], own.tenants["a"]);
        assert_eq!(decoded.tenants["b"].queries, 7.0);
        assert_eq!(decoded.tenants["b"].sources, SourceSet::of(Source::Udp));
    }

    /// The skewed split of the issue: 30% of one replica's database time is
    /// 10% of the fleet's once the other replicas' figures are added.
    #[test]
    fn the_merge_sums_every_live_replica() {
        let one = figures(&[("skewed", 30.0, 300.0), ("x", 70.0, 700.0)]);
        let two = figures(&[
            ("skewed", 0.0, 0.0),
            ("x", 10.0, 1000.0),
            ("y", 10.0, 1000.0),
        ]);
        let three = figures(&[("y", 10.0, 0.0), ("z", 10.0, 0.0)]);
        let others = vec![
            ("one".to_string(), encode(&one)),
            ("two".to_string(), encode(&two)),
            ("three".to_string(), encode(&three)),
        ];
        let (fleet, status) = merge(&one, "one", &others);
        assert_eq!(status.scope, Scope::Fleet);
        assert_eq!(status.replicas, 3);
        let shares = fleet.db_time_shares();
        assert!((shares["skewed"] - 0.1).abs() < 1e-9, "{shares:?}");
        assert_eq!(fleet.tenants["x"].queries, 80.0);
        assert_eq!(fleet.tenants["y"].latency.count(), 20);
        assert!((fleet.tenants["x"].rate - 80.0 / 60.0).abs() < 1e-6);
    }

    #[test]
    fn an_unreadable_replica_is_left_out() {
        let own = figures(&[("a", 1.0, 1.0)]);
        let others = vec![("bad".to_string(), b"twf2\xff".to_vec())];
        let (fleet, status) = merge(&own, "me", &others);
        assert_eq!((status.replicas, status.unreadable), (1, 1));
        assert_eq!(fleet, own);
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        assert_eq!(decode(b"twf0"), Err(DecodeError::Version));
        assert_eq!(decode(b"twf2\x01\0\0\0\x01\0"), Err(DecodeError::Truncated));
        let mut bytes = encode(&figures(&[("a", 1.0, 1.0)]));
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(DecodeError::Trailing));
        let mut negative = b"twf2\x01\0\0\0\x01\0a".to_vec();
        negative.extend_from_slice(&(-1.0f32).to_le_bytes());
        assert_eq!(decode(&negative), Err(DecodeError::Figure));
        let too_many = [
            b"twf2".as_slice(),
            &(MAX_FLEET_TENANTS as u32 + 1).to_le_bytes(),
        ]
        .concat();
        assert_eq!(decode(&too_many), Err(DecodeError::TooMany));
    }

    /// 10,000 tenants with realistic ids and four non-empty buckets each
    /// (63 bytes a tenant): the size docs/performance.md quotes.
    #[test]
    fn ten_thousand_tenants_fit_in_two_thirds_of_a_megabyte() {
        let mut many = Figures {
            windowed: true,
            ..Figures::default()
        };
        for i in 0..10_000 {
            let mut f = tenant(100.0, 50.0);
            f.latency.observe(0.05, 10.0);
            f.latency.observe(0.5, 2.0);
            f.latency.observe(20.0, 1.0);
            many.tenants.insert(format!("tenant_{i:05}"), f);
        }
        let bytes = encode(&many).len();
        assert!(bytes <= 630_008, "{bytes} bytes");
        assert_eq!(decode(&encode(&many)).unwrap().tenants.len(), 10_000);
    }

    proptest! {
        /// Whatever Redis holds, decoding never panics and never yields a
        /// non-finite figure.
        #[test]
        fn decoding_any_bytes_is_safe(tail in prop::collection::vec(any::<u8>(), 0..200)) {
            let bytes = [VERSION.as_slice(), &tail].concat();
            if let Ok(figures) = decode(&bytes) {
                for f in figures.tenants.values() {
                    let w = f.window();
                    prop_assert!(w.queries.is_finite() && w.rate.is_finite());
                    prop_assert!(w.p95_seconds.is_none_or(f64::is_finite));
                }
            }
        }
    }
}

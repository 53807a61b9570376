//! Ingest: turns datagrams and request bodies into tenant events.
//!
//! A payload is split into lines; each line is checked (length, UTF-8), its
//! format detected (`{` starts NDJSON, anything else is DogStatsD), parsed
//! and recorded into a store shard. A bad line is counted with its reason and
//! never stops the lines beside it.
//!
//! - [`ndjson`] and [`dogstatsd`] are the two wire-format parsers;
//! - [`udp`] owns the UDP receive threads, and [`allow`] the networks they
//!   admit datagrams from (`ingest.udp_allow`);
//! - the HTTP endpoint lives in [`crate::http`] and calls [`ingest_payload`].

pub mod allow;
pub mod dogstatsd;
pub mod ndjson;
pub mod udp;

use crate::event::{Event, Reject, RejectReason};
use serde::Deserialize;

use crate::settings::{Problems, Reload, serde_text};
use crate::store::{IngestStats, ShardWriter, Source};

/// `[ingest]`: tenant query events over UDP and HTTP, and the tenant
/// store's bounds. Every key takes effect at start-up.
#[derive(Debug, Clone, PartialEq, Deserialize, Reload)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// UDP listener for NDJSON and DogStatsD lines; `""` turns UDP off.
    #[serde(with = "serde_text::optional_addr")]
    pub udp_listen: Option<std::net::SocketAddr>,
    /// Networks (CIDR, or single addresses) whose datagrams are admitted;
    /// any other datagram is dropped before it is parsed and counted
    /// (`reason="source_not_allowed"`). UDP has no token, so this list (and
    /// the network around it) is what stands between a stranger and another
    /// tenant's figures. Defaults to loopback only.
    pub udp_allow: Vec<allow::Cidr>,
    /// Admit datagrams from any sender, whatever `udp_allow` says: for a
    /// listener guarded by the network (a Kubernetes NetworkPolicy). Without
    /// it, a non-loopback `udp_listen` needs `udp_allow` to name a
    /// non-loopback network.
    pub udp_allow_any: bool,
    /// Receive threads on the UDP socket, each with its own store shard.
    pub udp_receivers: usize,
    /// Socket receive buffer requested (`SO_RCVBUF`); it absorbs bursts.
    /// The kernel caps it at `net.core.rmem_max`; the granted size is exported.
    pub udp_recv_buffer_bytes: usize,
    /// Largest datagram accepted; longer ones are refused whole.
    pub max_datagram_bytes: usize,
    /// Largest `POST /v1/events` body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Longest event line accepted.
    pub max_line_bytes: usize,
    /// Lowest DogStatsD sample rate accepted; a line sampled more sparsely
    /// is refused (`invalid_sample_rate`), since `1/rate` weighs it.
    pub min_sample_rate: f64,
    /// Most tenants tracked at once; events for more go to `__overflow__`.
    pub max_tenants: usize,
    /// A tenant with no event for this long is forgotten.
    #[serde(with = "serde_text::duration")]
    pub tenant_idle_ttl: std::time::Duration,
    /// Window over which `tenantwatch_tenant_db_time_ratio` is computed
    /// (at least 12s: it is kept in 12 slots).
    #[serde(with = "serde_text::duration")]
    pub share_window: std::time::Duration,
    /// Endpoints kept per tenant; more count under `__other__`.
    pub max_endpoints_per_tenant: usize,
    /// Instances (pods) kept; more count under `__other__`.
    pub max_instances: usize,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            udp_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8125))),
            udp_allow: vec![
                allow::Cidr::V4 {
                    network: 0x7f00_0000,
                    prefix: 8,
                },
                allow::Cidr::V6 {
                    network: 1,
                    prefix: 128,
                },
            ],
            udp_allow_any: false,
            udp_receivers: 2,
            udp_recv_buffer_bytes: 8 * 1024 * 1024,
            max_datagram_bytes: 65_507,
            max_body_bytes: 4 * 1024 * 1024,
            max_line_bytes: 4096,
            min_sample_rate: 0.001,
            max_tenants: 10_000,
            tenant_idle_ttl: std::time::Duration::from_secs(15 * 60),
            share_window: std::time::Duration::from_secs(60),
            max_endpoints_per_tenant: 20,
            max_instances: 500,
        }
    }
}

impl IngestSettings {
    /// Checks each key on its own.
    pub fn check(&self, p: &mut Problems) {
        self.check_udp_sources(p);
        p.range("ingest.udp_receivers", self.udp_receivers, 1, 64);
        p.range(
            "ingest.udp_recv_buffer_bytes",
            self.udp_recv_buffer_bytes,
            4096,
            1 << 30,
        );
        p.range(
            "ingest.max_datagram_bytes",
            self.max_datagram_bytes,
            512,
            65_507,
        );
        p.range("ingest.max_body_bytes", self.max_body_bytes, 1024, 1 << 30);
        p.range("ingest.max_line_bytes", self.max_line_bytes, 256, 1 << 20);
        p.finite_above("ingest.min_sample_rate", self.min_sample_rate, 0.0, 1.0);
        p.range("ingest.max_tenants", self.max_tenants, 1, 10_000_000);
        p.positive("ingest.tenant_idle_ttl", self.tenant_idle_ttl);
        if self.share_window < std::time::Duration::from_secs(12) {
            p.fail(
                "ingest.share_window",
                format!(
                    "{:?}",
                    humantime::format_duration(self.share_window).to_string()
                ),
                "must be at least 12s (the window is kept in 12 slots)",
            );
        }
        p.range(
            "ingest.max_endpoints_per_tenant",
            self.max_endpoints_per_tenant,
            1,
            1000,
        );
        p.range("ingest.max_instances", self.max_instances, 1, 100_000);
    }
}

impl IngestSettings {
    /// The senders rule, as for the HTTP listener's token: a UDP listener
    /// off loopback must say whom it admits, by naming a network that is
    /// not loopback in `udp_allow`, or by `udp_allow_any = true` on purpose.
    fn check_udp_sources(&self, p: &mut Problems) {
        if self.udp_listen.is_none() {
            return;
        }
        if self.udp_allow.is_empty() && !self.udp_allow_any {
            p.fail(
                "ingest.udp_allow",
                "[]",
                "admits no sender; name the senders' networks, set ingest.udp_allow_any = true, \
                 or turn UDP off with ingest.udp_listen = \"\"",
            );
        }
        let Some(listen) = self.udp_listen else {
            return;
        };
        if !listen.ip().is_loopback()
            && !self.udp_allow_any
            && self.udp_allow.iter().all(allow::Cidr::is_loopback)
        {
            p.fail(
                "ingest.udp_listen",
                format!("{:?}", listen.to_string()),
                "a non-loopback UDP listener needs ingest.udp_allow to name the senders' \
                 networks (UDP carries no token), or ingest.udp_allow_any = true when the \
                 network admits only trusted senders",
            );
        }
    }

    /// The senders the UDP receive threads admit.
    pub fn source_filter(&self) -> allow::SourceFilter {
        if self.udp_allow_any {
            allow::SourceFilter::Any
        } else {
            allow::SourceFilter::Only(self.udp_allow.clone())
        }
    }
}

/// What every line is checked against before it is parsed and recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineLimits {
    pub max_line_bytes: usize,
    pub min_sample_rate: f64,
}

impl IngestSettings {
    /// The limits each line is held to.
    pub fn line_limits(&self) -> LineLimits {
        LineLimits {
            max_line_bytes: self.max_line_bytes,
            min_sample_rate: self.min_sample_rate,
        }
    }

    /// The bounds the tenant store enforces.
    pub fn store_limits(&self) -> crate::store::StoreLimits {
        crate::store::StoreLimits {
            max_tenants: self.max_tenants,
            tenant_idle_ttl: self.tenant_idle_ttl,
            share_window: self.share_window,
            max_endpoints_per_tenant: self.max_endpoints_per_tenant,
            max_instances: self.max_instances,
        }
    }
}

/// What one payload yielded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PayloadOutcome {
    /// Events recorded (a multi-value DogStatsD line counts each value).
    pub accepted: u64,
    /// Lines refused.
    pub rejected: u64,
}

/// Parses every line of `payload` into `writer`, counting into `stats`.
/// `on_reject` gets the 1-based line number and the reason of each refused
/// line (the HTTP endpoint reports them back; UDP ignores them).
pub fn ingest_payload(
    payload: &[u8],
    limits: LineLimits,
    source: Source,
    writer: &mut ShardWriter<'_>,
    stats: &IngestStats,
    mut on_reject: impl FnMut(usize, Reject),
) -> PayloadOutcome {
    let mut outcome = PayloadOutcome::default();
    writer.set_source(source);
    let mut batch = Batch::new();
    for (index, (raw_line, text)) in Lines::of(payload).enumerate() {
        if raw_line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(raw_line.len(), text, limits, &mut batch) {
            Ok(events) => outcome.accepted += events as u64,
            Err(reject) => {
                outcome.rejected += 1;
                stats.add_rejected(source, reject.reason);
                on_reject(index + 1, reject);
            }
        }
        if batch.len() >= BATCH_EVENTS {
            batch.drain(..).for_each(|event| writer.record(&event));
        }
    }
    batch.iter().for_each(|event| writer.record(event));
    stats.add_received(source, outcome.accepted + outcome.rejected);
    outcome
}

/// Events parsed before they are recorded together.
const BATCH_EVENTS: usize = 32;

/// Events parsed from a payload, recorded together: the hash lookups of
/// many events then run back to back, where the processor overlaps their
/// cache misses (the tenant map is larger than the caches at 10,000
/// tenants), instead of each waiting behind a line's parsing.
type Batch<'a> = smallvec::SmallVec<[Event<'a>; BATCH_EVENTS]>;

/// A payload's lines without their `\r\n` or `\n`, each with its text, or
/// `None` when it is not UTF-8. A payload that is UTF-8 as a whole (nearly
/// every one) is checked once, not line by line.
enum Lines<'a> {
    Text(std::str::Split<'a, char>),
    Bytes(std::slice::Split<'a, u8, fn(&u8) -> bool>),
}

impl<'a> Lines<'a> {
    fn of(payload: &'a [u8]) -> Lines<'a> {
        match std::str::from_utf8(payload) {
            Ok(text) => Lines::Text(text.split('\n')),
            Err(_) => Lines::Bytes(payload.split(is_newline as fn(&u8) -> bool)),
        }
    }
}

fn is_newline(byte: &u8) -> bool {
    *byte == b'\n'
}

impl<'a> Iterator for Lines<'a> {
    type Item = (&'a [u8], Option<&'a str>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Lines::Text(lines) => lines.next().map(|line| {
                let line = line.strip_suffix('\r').unwrap_or(line);
                (line.as_bytes(), Some(line))
            }),
            Lines::Bytes(lines) => lines.next().map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                (line, std::str::from_utf8(line).ok())
            }),
        }
    }
}

/// Checks one line (`length` bytes, `text` if it is UTF-8) and parses its
/// events into `batch`; returns how many.
fn parse_line<'a>(
    length: usize,
    text: Option<&'a str>,
    limits: LineLimits,
    batch: &mut Batch<'a>,
) -> Result<usize, Reject> {
    if length > limits.max_line_bytes {
        return Err(Reject::new(
            RejectReason::LineTooLong,
            "line is longer than max_line_bytes",
        ));
    }
    let line = text.ok_or(Reject::new(
        RejectReason::InvalidUtf8,
        "line is not valid UTF-8",
    ))?;
    let line = line.trim();
    if line.starts_with('{') {
        batch.push(ndjson::parse_line(line)?);
        Ok(1)
    } else {
        dogstatsd::parse_line(line, limits.min_sample_rate, |event| batch.push(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ManualClock, Store, StoreLimits};
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn store() -> Store {
        Store::new(
            1,
            StoreLimits {
                max_tenants: 100,
                tenant_idle_ttl: Duration::from_secs(60),
                share_window: Duration::from_secs(60),
                max_endpoints_per_tenant: 20,
                max_instances: 500,
            },
            Arc::new(ManualClock::default()),
        )
    }

    fn limits(max_line_bytes: usize) -> LineLimits {
        LineLimits {
            max_line_bytes,
            min_sample_rate: 0.001,
        }
    }

    #[test]
    fn good_lines_count_beside_bad_ones() {
        let store = store();
        let stats = IngestStats::default();
        let payload = b"{\"tenant\":\"a\",\"kind\":\"read\",\"duration_ms\":1}\r\n\
            \n\
            tenantwatch.query:1:2|ms|#tenant:b\n\
            \xff\xfe\n\
            nonsense\n\
            tenantwatch.rows:3|c|#tenant:a,kind:read";
        let mut rejects = Vec::new();
        let outcome = ingest_payload(
            payload,
            limits(1024),
            Source::Http,
            &mut store.writer(0),
            &stats,
            |line, reject| rejects.push((line, reject.reason)),
        );
        assert_eq!(
            outcome,
            PayloadOutcome {
                accepted: 4,
                rejected: 2
            }
        );
        assert_eq!(
            rejects,
            vec![(4, RejectReason::InvalidUtf8), (5, RejectReason::Malformed)]
        );
        assert_eq!(stats.received(Source::Http), 6);
        assert_eq!(stats.rejected(Source::Http, RejectReason::InvalidUtf8), 1);
        let snapshot = store.snapshot();
        assert_eq!(snapshot.tenants.len(), 2);
        assert_eq!(snapshot.tenants[0].kinds[0].as_ref().unwrap().rows, 3.0);
    }

    #[test]
    fn long_lines_are_refused() {
        let store = store();
        let stats = IngestStats::default();
        let line = format!("tenantwatch.query:1|ms|#tenant:a,pad:{}", "x".repeat(100));
        let outcome = ingest_payload(
            line.as_bytes(),
            limits(64),
            Source::Udp,
            &mut store.writer(0),
            &stats,
            |_, _| {},
        );
        assert_eq!(outcome.rejected, 1);
        assert_eq!(stats.rejected(Source::Udp, RejectReason::LineTooLong), 1);
    }

    fn problems(settings: &IngestSettings) -> Vec<String> {
        let mut p = Problems::default();
        settings.check(&mut p);
        p.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_udp_listener_off_loopback_must_name_its_senders() {
        let mut s = IngestSettings::default();
        assert!(problems(&s).is_empty());
        assert_eq!(
            s.source_filter(),
            allow::SourceFilter::Only(s.udp_allow.clone())
        );
        s.udp_listen = Some("0.0.0.0:8125".parse().unwrap());
        let errors = problems(&s);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("ingest.udp_listen = \"0.0.0.0:8125\""));
        s.udp_allow = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(problems(&s).is_empty());
        s.udp_allow = Vec::new();
        assert!(problems(&s)[0].starts_with("ingest.udp_allow = []"));
        s.udp_allow_any = true;
        assert!(problems(&s).is_empty());
        assert_eq!(s.source_filter(), allow::SourceFilter::Any);
        // UDP off: nothing to admit.
        s.udp_allow_any = false;
        s.udp_allow = IngestSettings::default().udp_allow;
        s.udp_listen = None;
        assert!(problems(&s).is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_every_line_is_counted(
            payload in prop::collection::vec(any::<u8>(), 0..2048)
        ) {
            let store = store();
            let stats = IngestStats::default();
            let outcome = ingest_payload(
                &payload,
                limits(512),
                Source::Udp,
                &mut store.writer(0),
                &stats,
                |_, _| {},
            );
            prop_assert_eq!(stats.received(Source::Udp), outcome.accepted + outcome.rejected);
            prop_assert!(store.tracked() <= 100);
        }
    }
}

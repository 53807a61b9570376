//! The Prometheus exposition: one registry, filled at start-up, encoded on
//! each scrape. A reader: a scrape never queries PostgreSQL or touches a
//! socket.
//!
//! Per-tenant figures are not kept in prometheus-client metric families (a
//! `Family` per tenant would put a lock and a hash lookup on the hot path);
//! each area has one collector that reads its store at scrape time:
//! - [`events`]: the tenant store (queries, errors, rows, latency, share),
//!   written by the direct [`text`] writer rather than prometheus-client
//!   (and by prometheus-client for the protobuf format, with native
//!   histograms);
//! - [`mod@format`]: the formats `/metrics` negotiates (OpenMetrics, text
//!   0.0.4, protobuf);
//! - [`ingest`]: what the ingest sources received and refused;
//! - [`targets`]: what the PostgreSQL collectors last saw;
//! - [`pgbouncers`]: what the PgBouncer pollers last saw;
//! - [`detect`]: flags, rate-limit decisions and quotas;
//! - [`http`]: the listener's own counters;
//! - [`reload`]: configuration reloads;
//! - [`process`]: the process's memory, CPU and descriptors (`process_*`);
//! - [`mod@encode`]: the helpers they share;
//! - [`mod@gzip`]: the gzip form a scrape asks for, compressed in parts.

pub mod detect;
pub mod encode;
pub mod events;
pub mod format;
pub mod gzip;
pub mod http;
pub mod ingest;
pub mod pgbouncers;
pub mod process;
pub mod reload;
pub mod targets;
pub mod text;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub use detect::DetectCollector;
pub use events::{ExpositionSettings, StoreExposition};
pub use format::Format;
pub use gzip::gzip;
pub use http::{HttpLabels, HttpMetrics, RejectLabels};
pub use ingest::IngestCollector;
pub use reload::ReloadMetrics;
pub use targets::TargetCollector;

use crate::detect::SharedJudgement;
use crate::ratelimit::{RateLimits, RatePolicy};
use crate::store::{IngestStats, Store, TargetStatuses};
use encode::{family, gauge};

/// The capacity figures as gauges: what `GET /api/v1/capacity` answers,
/// for alerts and dashboards.
#[derive(Debug)]
struct CapacityCollector {
    figures: crate::capacity::view::SharedCapacityFigures,
}

impl Collector for CapacityCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = self
            .figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut metric = family(
            &mut encoder,
            "tenantwatch_target_connection_headroom",
            "Connections still free on the target: max_connections minus the reserved ones minus those in use (every api.history_resolution).",
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (target, headroom, _) in &figures.targets {
            if let Some(headroom) = headroom {
                gauge(&mut metric, &[("target", target.as_str())], *headroom)?;
            }
        }
        let mut metric = family(
            &mut encoder,
            "tenantwatch_target_time_to_size_budget_seconds",
            "Time until the target's tenant schemas reach api.size_budget_bytes at the growth fitted over api.history; absent without a budget or without growth.",
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (target, _, days) in &figures.targets {
            if let Some(days) = days {
                // Base units: the API speaks days, the exposition seconds.
                let seconds = days * 86_400.0;
                gauge(&mut metric, &[("target", target.as_str())], seconds)?;
            }
        }
        let mut metric = family(
            &mut encoder,
            "tenantwatch_fleet_tenants_fit",
            "How many more tenants of the median footprint (connections, size) fit in the targets' headroom and size budget.",
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        if let Some(fit) = figures.more_tenants_fit {
            metric.encode_gauge(&fit)?;
        }
        Ok(())
    }
}

/// Everything `/metrics` shows: the registry of prometheus-client families
/// and collectors, and the tenant store's families written directly (in
/// text) or through prometheus-client (in protobuf, where its latency
/// histograms carry native buckets).
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
    store: StoreExposition,
    /// The store's families as a prometheus-client collector, for the
    /// protobuf format only.
    store_protobuf: Registry,
    /// Watched for new collector results, which make the next scrape
    /// encode afresh.
    published: (TargetStatuses, crate::store::PgBouncerStatuses),
}

impl Exposition {
    /// A number that moves whenever a PostgreSQL or PgBouncer collector
    /// publishes a result.
    fn published(&self) -> u64 {
        let (targets, pgbouncers) = &self.published;
        targets.published().wrapping_add(pgbouncers.published())
    }
}

/// What the exposition reads.
#[derive(Debug, Clone)]
pub struct Sources {
    pub store: Arc<Store>,
    pub stats: Arc<IngestStats>,
    pub targets: TargetStatuses,
    pub pgbouncers: crate::store::PgBouncerStatuses,
    pub judgement: SharedJudgement,
    pub limits: Arc<RateLimits>,
    pub guard_log: crate::store::guard::SharedGuardLog,
    /// Written by the daemon on each reload.
    pub reloads: ReloadMetrics,
    /// Worked out by the capacity sampler.
    pub capacity: crate::capacity::view::SharedCapacityFigures,
}

impl Sources {
    /// `store` with nothing else behind it (no collectors, no judgement, a
    /// limiter of defaults): what benchmarks and tests encode.
    pub fn of_store(store: Arc<Store>) -> Sources {
        Sources {
            store,
            stats: Arc::new(IngestStats::default()),
            targets: TargetStatuses::default(),
            pgbouncers: Default::default(),
            judgement: Arc::default(),
            limits: Arc::new(RateLimits::new(
                RatePolicy::default(),
                100,
                std::time::Duration::from_secs(60),
            )),
            guard_log: Default::default(),
            reloads: Default::default(),
            capacity: Default::default(),
        }
    }
}

/// Builds the daemon's exposition.
pub fn exposition(
    sources: Sources,
    http: &HttpMetrics,
    settings: &ExpositionSettings,
) -> Exposition {
    let Sources {
        store,
        stats,
        targets,
        pgbouncers,
        judgement,
        limits,
        guard_log,
        reloads,
        capacity,
    } = sources;
    let published = (targets.clone(), pgbouncers.clone());
    let mut registry = registry(stats, http, targets, (judgement, limits, guard_log));
    registry.register_collector(Box::new(CapacityCollector { figures: capacity }));
    registry.register_collector(Box::new(pgbouncers::PgBouncerCollector { pgbouncers }));
    registry.register(
        "tenantwatch_config_last_reload_successful",
        "1 when the last configuration reload (SIGHUP) applied, 0 when it was refused (the running configuration stays).",
        reloads.successful,
    );
    registry.register(
        "tenantwatch_config_last_reload_success_timestamp_seconds",
        "Unix time of start-up or of the last configuration reload that applied.",
        reloads.success_timestamp,
    );
    let mut store_protobuf = Registry::default();
    store_protobuf.register_collector(Box::new(events::reference::ReferenceEncoder::with_native(
        store.clone(),
        settings,
    )));
    Exposition {
        store: StoreExposition::new(store, settings),
        registry,
        store_protobuf,
        published,
    }
}

fn registry(
    stats: Arc<IngestStats>,
    http: &HttpMetrics,
    targets: TargetStatuses,
    (judgement, limits, guard_log): (
        SharedJudgement,
        Arc<RateLimits>,
        crate::store::guard::SharedGuardLog,
    ),
) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "tenantwatch_http_requests",
        "HTTP requests served, by endpoint and status code.",
        http.requests.clone(),
    );
    registry.register(
        "tenantwatch_http_connections_rejected",
        "HTTP connections closed unserved, by reason: max_connections (every slot taken, and not a probe) or per_ip (the client address had server.max_connections_per_ip open).",
        http.connections_rejected.clone(),
    );
    registry.register_collector(Box::new(BuildInfo));
    registry.register_collector(Box::new(process::ProcessCollector));
    registry.register_collector(Box::new(IngestCollector { stats }));
    registry.register_collector(Box::new(TargetCollector { targets }));
    registry.register_collector(Box::new(DetectCollector {
        judgement,
        limits,
        guard_log,
    }));
    registry
}

#[derive(Debug)]
struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = ConstGauge::new(1i64);
        let mut metric = family(
            &mut encoder,
            "tenantwatch_build_info",
            "Always 1; the version and revision labels say which tenantwatch is running.",
            info.metric_type(),
        )?;
        let labels = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("revision", env!("TENANTWATCH_REVISION")),
        ];
        gauge(&mut metric, &labels, 1.0)
    }
}

/// Size of the last exposition, so that a new buffer is allocated once
/// instead of growing (and copying) its way up to tens of megabytes.
static LAST_EXPOSITION_BYTES: AtomicUsize = AtomicUsize::new(64 * 1024);

/// The end of an OpenMetrics exposition.
const EOF_LINE: &str = "# EOF\n";

/// Encodes the exposition in the OpenMetrics text format into a new buffer.
pub fn encode(exposition: &Exposition) -> String {
    let mut out = String::new();
    encode_into(exposition, &mut out);
    out
}

/// Encodes the exposition into `out`, replacing what it held and keeping
/// its allocation: the scrape path hands back the last exposition's buffer,
/// so a steady daemon allocates it once.
pub fn encode_into(exposition: &Exposition, out: &mut String) {
    let expected = LAST_EXPOSITION_BYTES.load(Ordering::Relaxed);
    fit_buffer(out, expected + expected / 8);
    // Writing into a String cannot fail; an error here would be a bug in a
    // collector, and a partial exposition is still better than none.
    if let Err(err) = prometheus_client::encoding::text::encode(out, &exposition.registry) {
        tracing::error!(error = %err, "Failed to encode metrics");
    }
    // The store's families go before the end marker the registry wrote.
    if out.ends_with(EOF_LINE) {
        out.truncate(out.len() - EOF_LINE.len());
    }
    exposition.store.encode(out);
    out.push_str(EOF_LINE);
    LAST_EXPOSITION_BYTES.store(out.len(), Ordering::Relaxed);
}

/// A reused buffer of this capacity or less is kept whatever it is to
/// hold: replacing it would save little.
const SMALLEST_BUFFER_REPLACED: usize = 256 * 1024;

/// Empties `out` and gives it room for at least `wanted` bytes (what the
/// caller expects to write, and an eighth), growing it by exactly what is missing
/// rather than by doubling, and replacing it when it holds more than twice
/// `wanted`. Doubling kept up to twice the largest exposition for good, and
/// a buffer grown for a passing peak (a flood of new tenants, evicted
/// since) kept the peak's pages resident after the exposition shrank (seen
/// in a heap profile of a tenant flood, issue 26).
fn fit_buffer(out: &mut String, wanted: usize) {
    out.clear();
    if out.capacity() > wanted.saturating_mul(2).max(SMALLEST_BUFFER_REPLACED) {
        // Freed before the new one is made: the two are not held at once.
        *out = String::new();
    }
    out.reserve_exact(wanted);
}

/// Encodes the exposition in `format`, reusing `buffer` where it can (the
/// text formats). The text format is converted from an OpenMetrics
/// exposition written into `scratch`, which the caller keeps for the next
/// text encode.
pub fn encode_format(
    exposition: &Exposition,
    format: Format,
    buffer: String,
    scratch: &mut String,
) -> bytes::Bytes {
    match format {
        Format::OpenMetrics => {
            let mut out = buffer;
            encode_into(exposition, &mut out);
            bytes::Bytes::from(out)
        }
        Format::Text => {
            encode_into(exposition, scratch);
            let mut out = buffer;
            // The text form differs from OpenMetrics in a few comment
            // lines per family, either way.
            fit_buffer(&mut out, scratch.len() + scratch.len() / 8);
            format::openmetrics_to_text(scratch, &mut out);
            bytes::Bytes::from(out)
        }
        Format::Protobuf => bytes::Bytes::from(encode_protobuf(exposition)),
    }
}

/// The exposition as length-delimited `io.prometheus.client.MetricFamily`
/// messages, through prometheus-client's protobuf encoder.
pub fn encode_protobuf(exposition: &Exposition) -> Vec<u8> {
    use prometheus_client::encoding::prometheus_protobuf::encode_to_vec;
    let mut out = Vec::new();
    for registry in [&exposition.registry, &exposition.store_protobuf] {
        // As in text: an error would be a collector's bug, and the
        // families of the other registry are still worth sending.
        match encode_to_vec(registry) {
            Ok(families) if out.is_empty() => out = families,
            Ok(families) => out.extend_from_slice(&families),
            Err(err) => tracing::error!(error = %err, "Failed to encode metrics"),
        }
    }
    out
}

/// One encoded exposition in one format, shared by every scraper that asks
/// for that format within its lifetime, and its gzip form, compressed once
/// on first request.
#[derive(Debug)]
pub struct Encoded {
    pub at: std::time::Instant,
    pub format: Format,
    /// [`Exposition::published`] when the encode began.
    published: u64,
    pub plain: bytes::Bytes,
    gzip: std::sync::OnceLock<bytes::Bytes>,
}

impl Encoded {
    /// The exposition gzipped (fast level: scrapes are frequent, and text
    /// exposition compresses about tenfold even so). Heavy the first time:
    /// call it off the async workers.
    pub fn gzip(&self) -> bytes::Bytes {
        self.gzip
            .get_or_init(|| bytes::Bytes::from(gzip(&self.plain)))
            .clone()
    }

    /// The buffer of `plain`, emptied, once no scraper holds this
    /// exposition any more (`None` while one still sends it).
    fn into_buffer(self: Arc<Self>) -> Option<String> {
        let encoded = Arc::into_inner(self)?;
        let mut buffer = Vec::from(encoded.plain.try_into_mut().ok()?);
        buffer.clear();
        String::from_utf8(buffer).ok()
    }
}

/// The exposition, encoded at most once per `max_age` and once
/// for every group of concurrent scrapes (single flight): 200 scrapers cost
/// one encode and share one buffer. Each [`Format`] has its own. A
/// collector result published since the last encode (a poll that failed, a
/// new `up`) makes the next scrape encode afresh: the cache shares work,
/// never a target's health.
#[derive(Debug)]
pub struct SharedExposition {
    exposition: Arc<Exposition>,
    max_age: std::time::Duration,
    last: [tokio::sync::Mutex<Slot>; 3],
}

/// What one format keeps between encodes.
#[derive(Debug, Default)]
struct Slot {
    encoded: Option<Arc<Encoded>>,
    /// The text format's OpenMetrics intermediate, written afresh by each
    /// text encode. Kept, like the exposition's own buffer, so that a
    /// text scrape (curl's, a sidecar's) does not allocate and free a
    /// buffer of the whole exposition every time (issue 26; no effect on
    /// memory was measurable in a tenant-flood test, docs/performance.md).
    scratch: String,
}

/// No permit for heavy work was free: answer 503 and let the client retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl SharedExposition {
    pub fn new(exposition: Exposition, max_age: std::time::Duration) -> SharedExposition {
        SharedExposition {
            exposition: Arc::new(exposition),
            max_age,
            last: Default::default(),
        }
    }

    /// The current exposition in `format`: the last one if it was encoded
    /// after this call began, or is younger than `max_age` with no
    /// collector result published since; else a new one, encoded on a
    /// blocking thread under one of `heavy`'s permits.
    pub async fn current(
        &self,
        heavy: &tokio::sync::Semaphore,
        format: Format,
    ) -> Result<Arc<Encoded>, Busy> {
        let arrived = std::time::Instant::now();
        // Held across the encode on purpose: concurrent scrapers wait for
        // this encode instead of starting their own.
        let mut slot = self.last[format.index()].lock().await;
        let published = self.exposition.published();
        if let Some(encoded) = slot.encoded.as_ref()
            && (encoded.at >= arrived
                || (encoded.at.elapsed() < self.max_age && encoded.published == published))
        {
            return Ok(encoded.clone());
        }
        let _permit = heavy.try_acquire().map_err(|_| Busy)?;
        // The new exposition is written into the last one's buffer when no
        // scraper still sends it. A fresh buffer of several megabytes per
        // encode, freed after the next, made glibc raise its mmap threshold
        // to that size and serve later ones from arenas that keep what is
        // freed: RSS grew with every generation (docs/performance.md). The
        // threshold is now fixed (src/heap.rs), so a fresh buffer would be
        // mapped and faulted at every scrape: kept, it costs neither.
        let buffer = slot
            .encoded
            .take()
            .and_then(Encoded::into_buffer)
            .unwrap_or_default();
        let mut scratch = std::mem::take(&mut slot.scratch);
        let exposition = self.exposition.clone();
        let (plain, scratch) = tokio::task::spawn_blocking(move || {
            let plain = encode_format(&exposition, format, buffer, &mut scratch);
            (plain, scratch)
        })
        .await
        .map_err(|_| Busy)?;
        slot.scratch = scratch;
        let encoded = Arc::new(Encoded {
            at: std::time::Instant::now(),
            format,
            published,
            plain,
            gzip: std::sync::OnceLock::new(),
        });
        slot.encoded = Some(encoded.clone());
        Ok(encoded)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use super::*;
    use crate::event::{Event, QueryKind, Sample};
    use crate::store::{MonotonicClock, StoreLimits};

    pub(super) fn exposition_of_a_few_tenants() -> Exposition {
        let store = Arc::new(Store::new(
            1,
            StoreLimits {
                max_tenants: 100,
                tenant_idle_ttl: Duration::from_secs(900),
                share_window: Duration::from_secs(60),
                max_endpoints_per_tenant: 20,
                max_instances: 500,
            },
            Arc::new(MonotonicClock::new()),
        ));
        {
            let mut writer = store.writer(0);
            for tenant in ["acme", "globex", "initech"] {
                writer.record(&Event {
                    endpoint: None,
                    instance: None,
                    tenant: Cow::Borrowed(tenant),
                    kind: QueryKind::Read,
                    sample: Sample::Query {
                        duration_ms: 3.0,
                        rows: 10.0,
                        error: false,
                        weight: 1.0,
                    },
                });
            }
        }
        exposition(
            Sources::of_store(store),
            &HttpMetrics::default(),
            &ExpositionSettings::default(),
        )
    }

    #[test]
    fn a_buffer_grown_for_a_passing_peak_is_replaced_once_the_exposition_shrinks() {
        // Room for exactly what is asked, not the doubling's twice as much.
        let mut fresh = String::new();
        fit_buffer(&mut fresh, 1_000_000);
        assert_eq!(fresh.capacity(), 1_000_000);
        // Somewhat larger than needed: kept, allocation and all.
        let mut kept = String::with_capacity(500_000);
        kept.push_str("last exposition");
        let at = kept.as_ptr();
        fit_buffer(&mut kept, 300_000);
        assert_eq!(
            (kept.as_ptr(), kept.capacity(), kept.len()),
            (at, 500_000, 0)
        );
        // Grown for a flood of tenants since evicted: replaced.
        let mut peak = String::with_capacity(8 << 20);
        fit_buffer(&mut peak, 300_000);
        assert_eq!(peak.capacity(), 300_000);
        // Small buffers are not worth replacing.
        let mut small = String::with_capacity(200_000);
        fit_buffer(&mut small, 1_000);
        assert_eq!(small.capacity(), 200_000);
    }

    #[test]
    fn the_text_format_writes_into_a_buffer_of_its_own_size() {
        // The text path sizes its buffer from the exposition it converts
        // (the OpenMetrics path from the shared last size, which other
        // tests move).
        let exposition = exposition_of_a_few_tenants();
        let peak = String::with_capacity(8 << 20);
        let text = encode_format(&exposition, Format::Text, peak, &mut String::new());
        let buffer = Vec::from(text.try_into_mut().expect("nothing else holds it"));
        assert!(
            buffer.capacity() < SMALLEST_BUFFER_REPLACED,
            "a {}-byte exposition kept a buffer of {}",
            buffer.len(),
            buffer.capacity()
        );
    }

    /// A fresh encode in `format`: 2 ms on, so that the last one (encoded
    /// before this call began) is not shared.
    async fn encoded_a_moment_later(
        shared: &SharedExposition,
        heavy: &tokio::sync::Semaphore,
        format: Format,
    ) -> Arc<Encoded> {
        std::thread::sleep(Duration::from_millis(2));
        shared
            .current(heavy, format)
            .await
            .expect("a permit is free")
    }

    #[tokio::test]
    async fn a_new_exposition_reuses_the_last_buffer_once_no_scraper_holds_it() {
        let shared = SharedExposition::new(exposition_of_a_few_tenants(), Duration::ZERO);
        let heavy = tokio::sync::Semaphore::new(1);
        let next = || encoded_a_moment_later(&shared, &heavy, Format::OpenMetrics);

        let first = next().await;
        let first_buffer = first.plain.as_ptr();
        // A scraper still sending the first exposition: its buffer stays.
        let sending = first.plain.clone();
        drop(first);
        let second = next().await;
        assert_ne!(second.plain.as_ptr(), first_buffer);
        drop(sending);

        // Sent and dropped: its buffer is handed back for the next encode...
        let second_buffer = second.plain.as_ptr();
        let sent = second.plain.clone();
        drop((second, sent));
        let last = shared.last[Format::OpenMetrics.index()]
            .lock()
            .await
            .encoded
            .take()
            .expect("the last exposition is kept");
        let buffer = last.into_buffer().expect("no scraper holds it");
        assert_eq!(buffer.as_ptr(), second_buffer);
        assert!(buffer.is_empty());
        // ...which writes into it. (With the buffer exactly as long as the
        // last text, a text a byte longer could move it: room is made first,
        // so that what is checked is the reuse, not the allocator's luck.)
        let mut buffer = buffer;
        buffer.reserve(1 << 16);
        let reserved = buffer.as_ptr();
        let third = encode_format(
            &shared.exposition,
            Format::OpenMetrics,
            buffer,
            &mut String::new(),
        );
        assert_eq!(third.as_ptr(), reserved);
        let text = std::str::from_utf8(&third).unwrap();
        assert!(text.contains("tenant=\"initech\""), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn a_text_scrape_converts_from_the_last_text_scrapes_intermediate() {
        let shared = SharedExposition::new(exposition_of_a_few_tenants(), Duration::ZERO);
        let heavy = tokio::sync::Semaphore::new(1);
        let scrape = || encoded_a_moment_later(&shared, &heavy, Format::Text);

        drop(scrape().await);
        // Room made, as above, so that what is checked is the reuse: other
        // tests move the shared size the intermediate is fitted to (but not
        // past what a buffer this size is kept for).
        let kept = {
            let mut slot = shared.last[Format::Text.index()].lock().await;
            let room = SMALLEST_BUFFER_REPLACED - 1024 - slot.scratch.len();
            slot.scratch.reserve_exact(room);
            slot.scratch.as_ptr()
        };
        let second = scrape().await;
        let slot = shared.last[Format::Text.index()].lock().await;
        assert_eq!(slot.scratch.as_ptr(), kept);
        assert!(
            slot.scratch.ends_with("# EOF\n"),
            "the intermediate is OpenMetrics"
        );
        let text = std::str::from_utf8(&second.plain).unwrap();
        assert!(text.contains("tenant=\"initech\""), "{text}");
        assert!(!text.contains("# EOF"));
    }
}

#[cfg(test)]
mod format_tests {
    #![allow(clippy::unwrap_used)]

    use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::{
        MetricFamily, MetricType,
    };
    use prost::Message as _;

    use super::*;

    fn families(mut bytes: &[u8]) -> Vec<MetricFamily> {
        let mut families = Vec::new();
        while !bytes.is_empty() {
            families.push(MetricFamily::decode_length_delimited(&mut bytes).unwrap());
        }
        families
    }

    #[test]
    fn protobuf_carries_every_family_and_native_latency_histograms() {
        let exposition = tests::exposition_of_a_few_tenants();
        let families = families(&encode_protobuf(&exposition));
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        for expected in [
            "tenantwatch_build_info",
            "tenantwatch_events_received_total",
            "tenantwatch_tenant_queries_total",
            "tenantwatch_tenant_db_time_ratio",
            "tenantwatch_tenants_tracked",
        ] {
            assert!(names.contains(&expected), "{expected} in {names:?}");
        }
        let latency = families
            .iter()
            .find(|f| f.name == "tenantwatch_tenant_query_duration_seconds")
            .unwrap();
        assert_eq!(latency.r#type, MetricType::Histogram as i32);
        assert_eq!(latency.metric.len(), 3);
        for metric in &latency.metric {
            let h = metric.histogram.as_ref().unwrap();
            // 3 ms: one observation in bucket ceil(log2(0.003) * 8) = -67.
            assert_eq!((h.schema, h.sample_count), (3, 1));
            assert_eq!(h.positive_span.len(), 1);
            assert_eq!(
                (h.positive_span[0].offset, h.positive_span[0].length),
                (-67, 1)
            );
            assert_eq!(h.positive_delta, [1]);
            assert!((h.sample_sum - 0.003).abs() < 1e-12);
            // And the classic buckets, for scrape_classic_histograms.
            assert_eq!(h.bucket.len(), DEFAULT_CLASSIC_BUCKETS + 1);
        }
    }

    const DEFAULT_CLASSIC_BUCKETS: usize = events::DEFAULT_LATENCY_BUCKETS.len();

    #[test]
    fn the_text_format_is_the_openmetrics_one_less_its_differences() {
        let exposition = tests::exposition_of_a_few_tenants();
        let openmetrics = encode(&exposition);
        let text = encode_format(&exposition, Format::Text, String::new(), &mut String::new());
        let text = std::str::from_utf8(&text).unwrap();
        assert!(!text.contains("# EOF"));
        assert!(text.contains("# TYPE tenantwatch_tenant_queries_total counter\n"));
        assert!(text.contains("# TYPE tenantwatch_tenants_tracked gauge\n"));
        // Same samples, in the same order (but the process's memory,
        // which moved between the two encodes).
        let samples = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with("process_"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(text), samples(&openmetrics));
    }
}

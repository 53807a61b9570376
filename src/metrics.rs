//! The Prometheus exposition: one registry, filled at start-up, encoded on
//! each scrape.
//!
//! Per-tenant figures are not kept in prometheus-client metric families (a
//! `Family` per tenant would put a lock and a hash lookup on the hot path);
//! [`StoreCollector`] reads one [`Store::snapshot`] per scrape instead, and
//! [`IngestCollector`] reads the ingest atomics. A scrape never queries
//! PostgreSQL or touches a socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::event::{QueryKind, RejectReason};
use crate::ingest::udp::kernel_drops;
use crate::ingest::{IngestStats, Source};
use crate::store::{BUCKET_COUNT, LATENCY_BUCKETS_SECONDS, Store, StoreSnapshot};

/// Content type of the exposition prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `tenantwatch_http_requests_total`; `endpoint` is one of a fixed
/// set of route names, never the raw path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub endpoint: &'static str,
    pub code: u16,
}

/// Metrics the HTTP server updates directly.
#[derive(Debug, Default, Clone)]
pub struct HttpMetrics {
    pub requests: Family<HttpLabels, Counter>,
    pub connections_rejected: Counter,
}

/// Starts a metric family in a collector.
pub(crate) fn family<'a>(
    encoder: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
    metric_type: MetricType,
) -> Result<MetricEncoder<'a>, std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, metric_type)
}

pub(crate) fn counter(
    encoder: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    value: f64,
) -> std::fmt::Result {
    let mut encoder = encoder.encode_family(labels)?;
    // Counts are whole numbers unless a sample rate made them fractional;
    // integers format several times faster, which matters at 10,000 tenants.
    if value.fract() == 0.0 && (0.0..9.0e15).contains(&value) {
        encoder.encode_counter::<NoLabelSet, _, u64>(&(value as u64), None)
    } else {
        encoder.encode_counter::<NoLabelSet, _, f64>(&value, None)
    }
}

pub(crate) fn gauge(
    encoder: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    value: f64,
) -> std::fmt::Result {
    encoder.encode_family(labels)?.encode_gauge(&value)
}

/// Exposes the tenant store.
#[derive(Debug)]
pub struct StoreCollector {
    pub store: Arc<Store>,
}

impl StoreCollector {
    fn encode_snapshot(
        snapshot: &StoreSnapshot,
        mut encoder: DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        type Field = fn(&crate::store::KindTotals) -> f64;
        let per_kind: [(&str, &str, Field); 3] = [
            (
                "tenantwatch_tenant_queries",
                "Queries reported by applications, per tenant and kind.",
                |k| k.queries,
            ),
            (
                "tenantwatch_tenant_query_errors",
                "Failed queries reported by applications, per tenant and kind.",
                |k| k.errors,
            ),
            (
                "tenantwatch_tenant_rows",
                "Rows read or written, as reported by applications, per tenant and kind.",
                |k| k.rows,
            ),
        ];
        for (name, help, field) in per_kind {
            let mut metric = family(&mut encoder, name, help, MetricType::Counter)?;
            for tenant in &snapshot.tenants {
                for kind in QueryKind::ALL {
                    if let Some(totals) = &tenant.kinds[kind.index()] {
                        let labels = [("tenant", tenant.tenant.as_str()), ("kind", kind.as_str())];
                        counter(&mut metric, &labels, field(totals))?;
                    }
                }
            }
        }

        let mut metric = family(
            &mut encoder,
            "tenantwatch_tenant_query_duration_seconds",
            "Query latency reported by applications, per tenant and kind.",
            MetricType::Histogram,
        )?;
        let mut buckets = [(0.0, 0u64); BUCKET_COUNT];
        for tenant in &snapshot.tenants {
            for kind in QueryKind::ALL {
                let Some(totals) = &tenant.kinds[kind.index()] else {
                    continue;
                };
                if totals.queries == 0.0 {
                    continue;
                }
                // Weighted (sampled) counts are fractional: round the
                // cumulative counts, which keeps them monotonic, then hand the
                // encoder the differences it expects.
                let (mut cumulative, mut previous) = (0.0, 0u64);
                for (i, slot) in buckets.iter_mut().enumerate() {
                    cumulative += totals.buckets[i];
                    let rounded = cumulative.round() as u64;
                    let bound = LATENCY_BUCKETS_SECONDS
                        .get(i)
                        .copied()
                        .unwrap_or(f64::INFINITY);
                    *slot = (bound, rounded - previous);
                    previous = rounded;
                }
                let labels = [("tenant", tenant.tenant.as_str()), ("kind", kind.as_str())];
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        totals.duration_sum_ms / 1000.0,
                        previous,
                        &buckets,
                        None,
                    )?;
            }
        }

        let mut metric = family(
            &mut encoder,
            "tenantwatch_tenant_db_time_share",
            "The tenant's share of all tenants' reported query time over the sliding window (0 to 1).",
            MetricType::Gauge,
        )?;
        for tenant in &snapshot.tenants {
            gauge(
                &mut metric,
                &[("tenant", tenant.tenant.as_str())],
                tenant.db_time_share,
            )?;
        }

        let mut metric = family(
            &mut encoder,
            "tenantwatch_tenants_tracked",
            "Tenants currently tracked from events (at most ingest.max_tenants; the overflow bucket not counted).",
            MetricType::Gauge,
        )?;
        metric.encode_gauge(&(snapshot.tracked as i64))?;

        let mut metric = family(
            &mut encoder,
            "tenantwatch_tenants_overflow",
            "Events attributed to the __overflow__ tenant because ingest.max_tenants tenants were already tracked.",
            MetricType::Counter,
        )?;
        metric.encode_counter::<NoLabelSet, _, u64>(&snapshot.overflow_events, None)?;

        let mut metric = family(
            &mut encoder,
            "tenantwatch_tenants_evicted",
            "Tenants forgotten after ingest.tenant_idle_ttl without an event.",
            MetricType::Counter,
        )?;
        metric.encode_counter::<NoLabelSet, _, u64>(&snapshot.evicted, None)?;
        Ok(())
    }
}

impl Collector for StoreCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.store.snapshot();
        StoreCollector::encode_snapshot(&snapshot, encoder)
    }
}

/// What the exposition needs to know about the UDP socket, if there is one.
#[derive(Debug, Clone, Copy)]
pub struct UdpSocketInfo {
    pub granted_recv_buffer_bytes: usize,
    pub inode: Option<u64>,
}

/// Exposes the ingest counters and the UDP socket's kernel figures.
#[derive(Debug)]
pub struct IngestCollector {
    pub stats: Arc<IngestStats>,
    pub udp: Option<UdpSocketInfo>,
}

impl Collector for IngestCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = family(
            &mut encoder,
            "tenantwatch_events_received",
            "Event lines received, accepted or not (a multi-value DogStatsD line counts each value).",
            MetricType::Counter,
        )?;
        for source in Source::ALL {
            let value = self.stats.received(source) as f64;
            counter(&mut metric, &[("source", source.as_str())], value)?;
        }

        let mut metric = family(
            &mut encoder,
            "tenantwatch_events_rejected",
            "Event lines (or whole datagrams and bodies) refused, by reason.",
            MetricType::Counter,
        )?;
        for source in Source::ALL {
            for reason in RejectReason::ALL {
                let value = self.stats.rejected(source, reason) as f64;
                let labels = [("source", source.as_str()), ("reason", reason.as_str())];
                counter(&mut metric, &labels, value)?;
            }
        }

        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut metric = family(
            &mut encoder,
            "tenantwatch_udp_datagrams_received",
            "UDP datagrams read from the ingest socket.",
            MetricType::Counter,
        )?;
        metric.encode_counter::<NoLabelSet, _, u64>(&load(&self.stats.udp_datagrams), None)?;

        let mut metric = family(
            &mut encoder,
            "tenantwatch_udp_receive_errors",
            "Errors returned by recv on the UDP ingest socket.",
            MetricType::Counter,
        )?;
        metric.encode_counter::<NoLabelSet, _, u64>(&load(&self.stats.udp_receive_errors), None)?;

        let mut metric = family(
            &mut encoder,
            "tenantwatch_udp_receive_buffer_bytes",
            "Receive buffer the kernel granted to the UDP ingest socket.",
            MetricType::Gauge,
        )?;
        if let Some(udp) = self.udp {
            metric.encode_gauge(&(udp.granted_recv_buffer_bytes as i64))?;
        }

        let mut metric = family(
            &mut encoder,
            "tenantwatch_udp_kernel_drops",
            "Datagrams the kernel dropped for the UDP ingest socket because its buffer was full (/proc/net/udp).",
            MetricType::Counter,
        )?;
        if let Some(drops) = self.udp.and_then(|u| u.inode).and_then(kernel_drops) {
            metric.encode_counter::<NoLabelSet, _, u64>(&drops, None)?;
        }
        Ok(())
    }
}

/// Builds the daemon's registry.
pub fn registry(
    store: Arc<Store>,
    stats: Arc<IngestStats>,
    udp: Option<UdpSocketInfo>,
    http: &HttpMetrics,
    targets: Vec<crate::collect::SharedStatus>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "tenantwatch_http_requests",
        "HTTP requests served, by endpoint and status code.",
        http.requests.clone(),
    );
    registry.register(
        "tenantwatch_http_connections_rejected",
        "HTTP connections closed at once because server.max_connections were open.",
        http.connections_rejected.clone(),
    );
    registry.register_collector(Box::new(BuildInfo));
    registry.register_collector(Box::new(StoreCollector { store }));
    registry.register_collector(Box::new(IngestCollector { stats, udp }));
    registry.register_collector(Box::new(crate::metrics_pg::PgCollector { targets }));
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
            "Always 1; the version label says which tenantwatch is running.",
            info.metric_type(),
        )?;
        gauge(&mut metric, &[("version", env!("CARGO_PKG_VERSION"))], 1.0)
    }
}

/// Size of the last exposition, so the next one is allocated once instead of
/// growing (and copying) its way up to tens of megabytes.
static LAST_EXPOSITION_BYTES: AtomicUsize = AtomicUsize::new(64 * 1024);

/// Encodes the registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let expected = LAST_EXPOSITION_BYTES.load(Ordering::Relaxed);
    let mut out = String::with_capacity(expected + expected / 8);
    // Writing into a String cannot fail; an error here would be a bug in a
    // collector, and a partial exposition is still better than none.
    if let Err(err) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %err, "Failed to encode metrics");
    }
    LAST_EXPOSITION_BYTES.store(out.len(), Ordering::Relaxed);
    out
}

/// Exposes the detector's flags and the rate limiter's decisions.
#[derive(Debug)]
pub struct DetectCollector {
    pub judgement: crate::detect::SharedJudgement,
    pub limits: Arc<crate::ratelimit::RateLimits>,
}

impl Collector for DetectCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let judgement = crate::detect::read_judgement(&self.judgement);
        type FlagField = fn(&crate::detect::Flag) -> f64;
        let flag_families: [(&str, &str, FlagField); 3] = [
            (
                "tenantwatch_tenant_flagged",
                "1 while the tenant is flagged by the rule named in reason.",
                |_| 1.0,
            ),
            (
                "tenantwatch_tenant_flag_value",
                "The observed value of each raised flag (its threshold is in tenantwatch_tenant_flag_threshold).",
                |f| f.value,
            ),
            (
                "tenantwatch_tenant_flag_threshold",
                "The threshold each raised flag's value crossed.",
                |f| f.threshold,
            ),
        ];
        for (name, help, field) in flag_families {
            let mut metric = family(&mut encoder, name, help, MetricType::Gauge)?;
            for flag in &judgement.flags {
                let labels = [
                    ("tenant", flag.tenant.as_str()),
                    ("reason", flag.reason.as_str()),
                ];
                gauge(&mut metric, &labels, field(flag))?;
            }
        }

        let limiters = self.limits.snapshot();
        let mut metric = family(
            &mut encoder,
            "tenantwatch_ratelimit_decisions",
            "POST /v1/ratelimit/check answers per tenant: allowed, denied, or shadow_denied (allowed in shadow mode, over quota).",
            MetricType::Counter,
        )?;
        for (tenant, _, counts) in &limiters {
            for (decision, counter) in [
                ("allowed", &counts.allowed),
                ("denied", &counts.denied),
                ("shadow_denied", &counts.shadow_denied),
            ] {
                let labels = [("tenant", tenant.as_str()), ("decision", decision)];
                counter_u64(&mut metric, &labels, counter.load(Ordering::Relaxed))?;
            }
        }
        let mut metric = family(
            &mut encoder,
            "tenantwatch_tenant_ratelimit_qps",
            "The tenant's effective quota in checks per second (tightened while flagged).",
            MetricType::Gauge,
        )?;
        for (tenant, rate, _) in &limiters {
            gauge(&mut metric, &[("tenant", tenant.as_str())], rate.qps)?;
        }
        let mut metric = family(
            &mut encoder,
            "tenantwatch_ratelimit_limiters",
            "Per-tenant rate limiters held in memory (at most ingest.max_tenants plus one overflow limiter).",
            MetricType::Gauge,
        )?;
        metric.encode_gauge(&(limiters.len() as i64))?;
        Ok(())
    }
}

fn counter_u64(
    encoder: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    value: u64,
) -> std::fmt::Result {
    encoder
        .encode_family(labels)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

//! The Prometheus exposition: one registry, filled at start-up, encoded on
//! each scrape. A reader: a scrape never queries PostgreSQL or touches a
//! socket.
//!
//! Per-tenant figures are not kept in prometheus-client metric families (a
//! `Family` per tenant would put a lock and a hash lookup on the hot path);
//! each area has one collector that reads its store at scrape time:
//! - [`events`]: the tenant store (queries, errors, rows, latency, share);
//! - [`ingest`]: what the ingest sources received and refused;
//! - [`targets`]: what the PostgreSQL collectors last saw;
//! - [`detect`]: flags, rate-limit decisions and quotas;
//! - [`http`]: the listener's own counters;
//! - [`mod@encode`]: the helpers they share.

pub mod detect;
pub mod encode;
pub mod events;
pub mod http;
pub mod ingest;
pub mod targets;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub use detect::DetectCollector;
pub use events::StoreCollector;
pub use http::{HttpLabels, HttpMetrics};
pub use ingest::IngestCollector;
pub use targets::TargetCollector;

use crate::detect::SharedJudgement;
use crate::ratelimit::RateLimits;
use crate::store::{IngestStats, Store, TargetStatuses};
use encode::{family, gauge};

/// Content type of the exposition prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Builds the daemon's registry.
pub fn registry(
    store: Arc<Store>,
    stats: Arc<IngestStats>,
    http: &HttpMetrics,
    targets: TargetStatuses,
    judgement: SharedJudgement,
    limits: Arc<RateLimits>,
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
    registry.register_collector(Box::new(IngestCollector { stats }));
    registry.register_collector(Box::new(TargetCollector { targets }));
    registry.register_collector(Box::new(DetectCollector { judgement, limits }));
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

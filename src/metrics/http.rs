//! The HTTP server's own metrics, updated by the listener directly.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Labels of `tenantwatch_http_requests_total`; `endpoint` is one of a fixed
/// set of route names, never the raw path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub endpoint: &'static str,
    pub code: u16,
}

/// Labels of `tenantwatch_http_connections_rejected_total`: `reason` is
/// `max_connections` or `per_ip`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: &'static str,
}

/// Metrics the HTTP server updates directly.
#[derive(Debug, Default, Clone)]
pub struct HttpMetrics {
    pub requests: Family<HttpLabels, Counter>,
    pub connections_rejected: Family<RejectLabels, Counter>,
}

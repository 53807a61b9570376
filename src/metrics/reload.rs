//! Configuration reloads (SIGHUP), named as Prometheus names its own:
//! whether the last one applied, and when one last did.

use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use prometheus_client::metrics::gauge::Gauge;

/// Updated by the daemon on each reload; registered in the exposition.
#[derive(Debug, Clone)]
pub struct ReloadMetrics {
    /// 1 when the last reload applied (or none was asked), 0 when refused.
    pub successful: Gauge,
    /// Unix seconds of start-up or of the last reload that applied.
    pub success_timestamp: Gauge<f64, AtomicU64>,
}

impl Default for ReloadMetrics {
    fn default() -> Self {
        let metrics = ReloadMetrics {
            successful: Gauge::default(),
            success_timestamp: Gauge::default(),
        };
        metrics.succeeded();
        metrics
    }
}

impl ReloadMetrics {
    pub fn succeeded(&self) {
        self.successful.set(1);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.success_timestamp.set(now);
    }

    pub fn failed(&self) {
        self.successful.set(0);
    }
}

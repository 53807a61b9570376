//! The exposition of the ingest counters and the UDP socket's figures, as
//! the sources left them in [`IngestStats`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::encode::{counter, family};
use crate::event::RejectReason;
use crate::store::{IngestStats, Source};

/// Exposes the ingest counters and the UDP socket's kernel figures.
#[derive(Debug)]
pub struct IngestCollector {
    pub stats: Arc<IngestStats>,
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
        if self.stats.udp_enabled.load(Ordering::Relaxed) {
            metric.encode_gauge(&(load(&self.stats.udp_recv_buffer_bytes) as i64))?;
        }

        let mut metric = family(
            &mut encoder,
            "tenantwatch_udp_kernel_drops",
            "Datagrams the kernel dropped for the UDP ingest socket because its buffer was full (/proc/net/udp).",
            MetricType::Counter,
        )?;
        if let Some(drops) = self.stats.udp_kernel_drops() {
            metric.encode_counter::<NoLabelSet, _, u64>(&drops, None)?;
        }
        Ok(())
    }
}

//! The exposition of the tenant store: per-tenant query counts, errors,
//! rows, latency histograms and database-time share, from one
//! [`Store::snapshot`] per scrape.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::encode::{counter, family, gauge};
use crate::event::QueryKind;
use crate::store::{BUCKET_COUNT, KindTotals, LATENCY_BUCKETS_SECONDS, Store, StoreSnapshot};

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
        type Field = fn(&KindTotals) -> f64;
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

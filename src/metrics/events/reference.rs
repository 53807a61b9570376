//! The store's families through prometheus-client's encoders: in text, the
//! reference the direct writer ([`super::super::text`]) is tested against
//! byte for byte and benchmarked against (`cargo bench --bench scrape`),
//! not served (at 10,000 tenants it takes about four times the direct
//! writer's instructions, too slow for the 50 ms scrape target:
//! `docs/performance.md`, issue 29); in the Prometheus protobuf format, what
//! `/metrics` serves to scrapers that ask for it, the per-tenant latency
//! histograms carrying the store's native buckets beside the classic ones
//! (prometheus-client's text encoder writes the classic ones only).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, MetricEncoder, NativeHistogramBuckets, NoLabelSet,
};
use prometheus_client::metrics::MetricType;

use super::{ExpositionSettings, StoreExposition};
use crate::event::QueryKind;
use crate::metrics::encode::{counter, family, gauge};
use crate::store::native::NATIVE_ZERO_THRESHOLD;
use crate::store::{BUCKET_COUNT, KindTotals, NativeHistogram, Store, StoreSnapshot};

/// The store's families as a prometheus-client collector: served in
/// protobuf; in text, for tests and benchmarks only (the served text is
/// the direct writer's).
#[derive(Debug)]
pub struct ReferenceEncoder(StoreExposition, Native);

/// Whether the per-tenant latency histograms carry native buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Native {
    /// Classic buckets only: what the text formats show.
    Without,
    /// Native buckets beside the classic ones, the count being the native
    /// buckets' (Prometheus refuses a native histogram whose count differs
    /// from its buckets'): for the protobuf format.
    With,
}

impl ReferenceEncoder {
    /// Classic histograms only, as the direct writer writes them.
    pub fn new(store: Arc<Store>, settings: &ExpositionSettings) -> ReferenceEncoder {
        ReferenceEncoder(StoreExposition::new(store, settings), Native::Without)
    }

    /// With native buckets, for the protobuf format.
    pub fn with_native(store: Arc<Store>, settings: &ExpositionSettings) -> ReferenceEncoder {
        ReferenceEncoder(StoreExposition::new(store, settings), Native::With)
    }
}

/// A `[metrics]` family's name, help and type.
struct FamilyDoc {
    name: &'static str,
    help: &'static str,
    metric_type: MetricType,
}

const fn doc(name: &'static str, help: &'static str, metric_type: MetricType) -> FamilyDoc {
    FamilyDoc {
        name,
        help,
        metric_type,
    }
}

impl Collector for ReferenceEncoder {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let snapshot = self.0.snapshot();
        encode_kind_counters(&mut encoder, &snapshot)?;
        self.encode_latency(&mut encoder, &snapshot)?;
        encode_shares(&mut encoder, &snapshot)?;
        self.encode_endpoints(&mut encoder, &snapshot)?;
        self.encode_schema_switches(&mut encoder, &snapshot)?;
        encode_instances(&mut encoder, &snapshot)?;
        encode_totals(&mut encoder, &snapshot)
    }
}

/// Queries, errors and rows per tenant and kind.
fn encode_kind_counters(
    encoder: &mut DescriptorEncoder,
    snapshot: &StoreSnapshot,
) -> std::fmt::Result {
    type Field = fn(&KindTotals) -> f64;
    let per_kind: [(FamilyDoc, Field); 3] = [
        (
            doc(
                "tenantwatch_tenant_queries",
                "Queries reported by applications, per tenant and kind.",
                MetricType::Counter,
            ),
            |k| k.queries,
        ),
        (
            doc(
                "tenantwatch_tenant_query_errors",
                "Failed queries reported by applications, per tenant and kind.",
                MetricType::Counter,
            ),
            |k| k.errors,
        ),
        (
            doc(
                "tenantwatch_tenant_rows",
                "Rows read or written, as reported by applications, per tenant and kind.",
                MetricType::Counter,
            ),
            |k| k.rows,
        ),
    ];
    for (doc, field) in per_kind {
        let mut metric = family(encoder, doc.name, doc.help, doc.metric_type)?;
        for tenant in &snapshot.tenants {
            for kind in QueryKind::ALL {
                if let Some(totals) = &tenant.kinds[kind.index()] {
                    let labels = [("tenant", tenant.tenant.as_str()), ("kind", kind.as_str())];
                    counter(&mut metric, &labels, field(totals))?;
                }
            }
        }
    }
    Ok(())
}

/// Each tenant's share of database time.
fn encode_shares(encoder: &mut DescriptorEncoder, snapshot: &StoreSnapshot) -> std::fmt::Result {
    let mut metric = family(
        encoder,
        "tenantwatch_tenant_db_time_ratio",
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
    Ok(())
}

/// Queries per application instance.
fn encode_instances(encoder: &mut DescriptorEncoder, snapshot: &StoreSnapshot) -> std::fmt::Result {
    let mut metric = family(
        encoder,
        "tenantwatch_instance_queries",
        "Queries reported per application instance (pod), from the events' instance (at most ingest.max_instances, the rest under __other__).",
        MetricType::Counter,
    )?;
    for (instance, queries) in &snapshot.instances {
        // Not `instance`: Prometheus sets that label to the scraped
        // target, and would rename or overwrite ours.
        counter(
            &mut metric,
            &[("app_instance", instance.as_str())],
            *queries,
        )?;
    }
    Ok(())
}

/// The store's own counts: tenants tracked, overflow, evictions, folds.
fn encode_totals(encoder: &mut DescriptorEncoder, snapshot: &StoreSnapshot) -> std::fmt::Result {
    let totals: [(FamilyDoc, u64); 6] = [
        (
            doc(
                "tenantwatch_tenants_tracked",
                "Tenants currently tracked from events (at most ingest.max_tenants; the overflow bucket not counted).",
                MetricType::Gauge,
            ),
            snapshot.tracked as u64,
        ),
        (
            doc(
                "tenantwatch_tenants_exported",
                super::EXPORTED_HELP,
                MetricType::Gauge,
            ),
            super::exported(snapshot),
        ),
        (
            doc(
                "tenantwatch_tenants_overflow",
                "Events attributed to the __overflow__ tenant because ingest.max_tenants tenants were already tracked.",
                MetricType::Counter,
            ),
            snapshot.overflow_events,
        ),
        (
            doc(
                "tenantwatch_tenants_evicted",
                "Tenants forgotten after ingest.tenant_idle_ttl without an event.",
                MetricType::Counter,
            ),
            snapshot.evicted,
        ),
        (
            doc(
                "tenantwatch_endpoints_folded",
                "Events whose endpoint went to __other__ because their tenant had ingest.max_endpoints_per_tenant endpoints.",
                MetricType::Counter,
            ),
            snapshot.endpoints_folded,
        ),
        (
            doc(
                "tenantwatch_instances_folded",
                "Events whose instance went to __other__ because ingest.max_instances instances were tracked.",
                MetricType::Counter,
            ),
            snapshot.instances_folded,
        ),
    ];
    for (doc, value) in totals {
        let mut metric = family(encoder, doc.name, doc.help, doc.metric_type)?;
        match doc.metric_type {
            MetricType::Counter => metric.encode_counter::<NoLabelSet, _, u64>(&value, None)?,
            _ => metric.encode_gauge(&value)?,
        }
    }
    Ok(())
}

/// A classic histogram: sum in seconds, count, and per-bucket (not
/// cumulative) counts by upper bound.
type Classic = (f64, u64, [(f64, u64); BUCKET_COUNT]);

impl ReferenceEncoder {
    /// Query latency per tenant, or per tenant and kind.
    fn encode_latency(
        &self,
        encoder: &mut DescriptorEncoder,
        snapshot: &StoreSnapshot,
    ) -> std::fmt::Result {
        let help = if self.0.by_kind {
            "Query latency reported by applications, per tenant and kind."
        } else {
            "Query latency reported by applications, per tenant (all kinds)."
        };
        let mut metric = family(
            encoder,
            "tenantwatch_tenant_query_duration_seconds",
            help,
            MetricType::Histogram,
        )?;
        for tenant in &snapshot.tenants {
            let id = tenant.tenant.as_str();
            if self.0.by_kind {
                for kind in QueryKind::ALL {
                    if let Some(totals) = &tenant.kinds[kind.index()] {
                        let labels = [("tenant", id), ("kind", kind.as_str())];
                        self.histogram_of(&mut metric, &labels, [Some(totals)].into_iter())?;
                    }
                }
            } else if self.1 == Native::With {
                // Native buckets are kept per tenant, all kinds: they go
                // with the per-tenant histogram (by kind, classic only).
                let kinds = tenant.kinds.iter().map(Option::as_ref);
                let labels = [("tenant", id)];
                let mut metric = metric.encode_family(&labels)?;
                self.native_histogram_of(&mut metric, kinds, &tenant.latency)?;
            } else {
                let kinds = tenant.kinds.iter().map(Option::as_ref);
                self.histogram_of(&mut metric, &[("tenant", id)], kinds)?;
            }
        }
        Ok(())
    }

    /// Queries and latency per tenant and endpoint.
    fn encode_endpoints(
        &self,
        encoder: &mut DescriptorEncoder,
        snapshot: &StoreSnapshot,
    ) -> std::fmt::Result {
        let mut metric = family(
            encoder,
            "tenantwatch_tenant_endpoint_queries",
            "Queries reported with an endpoint, per tenant and endpoint (at most ingest.max_endpoints_per_tenant per tenant, the rest under __other__).",
            MetricType::Counter,
        )?;
        for tenant in &snapshot.tenants {
            for (endpoint, totals) in &tenant.endpoints {
                let labels = [
                    ("tenant", tenant.tenant.as_str()),
                    ("endpoint", endpoint.as_str()),
                ];
                counter(&mut metric, &labels, totals.queries)?;
            }
        }
        let mut metric = family(
            encoder,
            "tenantwatch_tenant_endpoint_duration_seconds",
            "Query latency reported with an endpoint, per tenant and endpoint.",
            MetricType::Histogram,
        )?;
        for tenant in &snapshot.tenants {
            for (endpoint, totals) in &tenant.endpoints {
                let labels = [
                    ("tenant", tenant.tenant.as_str()),
                    ("endpoint", endpoint.as_str()),
                ];
                self.histogram_of(&mut metric, &labels, [Some(totals)].into_iter())?;
            }
        }
        Ok(())
    }

    /// Time to switch a session to each tenant.
    fn encode_schema_switches(
        &self,
        encoder: &mut DescriptorEncoder,
        snapshot: &StoreSnapshot,
    ) -> std::fmt::Result {
        let mut metric = family(
            encoder,
            "tenantwatch_tenant_schema_switch_duration_seconds",
            "Time to switch a session to the tenant (schema_switch events), per tenant; not counted as queries nor database time.",
            MetricType::Histogram,
        )?;
        for tenant in &snapshot.tenants {
            if let Some(totals) = &tenant.schema_switch {
                let labels = [("tenant", tenant.tenant.as_str())];
                self.histogram_of(&mut metric, &labels, [Some(totals)].into_iter())?;
            }
        }
        Ok(())
    }

    /// One histogram merging `kinds`, folded into the exposed bounds.
    /// Nothing when the kinds hold no query.
    fn histogram_of<'a>(
        &self,
        metric: &mut MetricEncoder<'_>,
        labels: &impl EncodeLabelSet,
        kinds: impl Iterator<Item = Option<&'a KindTotals>>,
    ) -> std::fmt::Result {
        let Some((sum, count, buckets)) = self.classic(kinds) else {
            return Ok(());
        };
        let buckets = &buckets[..self.0.bounds.len()];
        metric
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(sum, count, buckets, None)
    }

    /// The classic histogram of [`Self::histogram_of`] with `native`'s
    /// buckets beside it. The count is the native buckets' (they count a
    /// sampled line at its rounded weight, the classic buckets at its exact
    /// weight: the two differ only with fractional weights).
    fn native_histogram_of<'a>(
        &self,
        metric: &mut MetricEncoder<'_>,
        kinds: impl Iterator<Item = Option<&'a KindTotals>>,
        native: &NativeHistogram,
    ) -> std::fmt::Result {
        let Some((sum, count, buckets)) = self.classic(kinds) else {
            return Ok(());
        };
        let buckets = &buckets[..self.0.bounds.len()];
        let (spans, deltas) = native.spans_and_deltas();
        let native_count = native.count();
        let native = prometheus_client::encoding::NativeHistogram {
            schema: i32::from(native.schema()),
            zero_threshold: NATIVE_ZERO_THRESHOLD,
            zero_count: u64::from(native.zero_count()),
            negative: NativeHistogramBuckets {
                spans: &[],
                deltas: &[],
            },
            positive: NativeHistogramBuckets {
                spans: &spans,
                deltas: &deltas,
            },
            created: None,
        };
        let count = if native_count > 0 {
            native_count
        } else {
            count
        };
        metric.encode_histogram_with_native::<NoLabelSet>(sum, count, buckets, None, native)
    }

    /// Sum (seconds), count and per-bucket counts of `kinds` folded into
    /// the exposed bounds; `None` when they hold no query.
    fn classic<'a>(&self, kinds: impl Iterator<Item = Option<&'a KindTotals>>) -> Option<Classic> {
        let mut folded = [0.0f64; BUCKET_COUNT];
        let (mut queries, mut sum_ms) = (0.0, 0.0);
        for totals in kinds.flatten() {
            queries += totals.queries;
            sum_ms += totals.duration_sum_ms;
            for (i, count) in totals.buckets.iter().enumerate() {
                folded[self.0.fold[i]] += count;
            }
        }
        if queries == 0.0 {
            return None;
        }
        // Weighted (sampled) counts are fractional: the cumulative counts
        // are rounded, which keeps them monotonic, and each bucket holds
        // the difference of two rounded cumulative counts.
        let mut buckets = [(0.0f64, 0u64); BUCKET_COUNT];
        let (mut cumulative, mut rounded_before) = (0.0, 0u64);
        for ((slot, bound), count) in buckets.iter_mut().zip(&self.0.bounds).zip(&folded) {
            cumulative += count;
            let rounded = cumulative.round() as u64;
            *slot = (*bound, rounded.saturating_sub(rounded_before));
            rounded_before = rounded;
        }
        Some((sum_ms / 1000.0, rounded_before, buckets))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::borrow::Cow;
    use std::time::Duration;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::event::{Event, Sample};
    use crate::store::{LATENCY_BUCKETS_SECONDS, MonotonicClock, StoreLimits};

    /// A store of several tenants: every kind, fractional (sampled) counts,
    /// endpoints and instances with characters the text format escapes,
    /// schema switches.
    fn store() -> Arc<Store> {
        let store = Arc::new(Store::new(
            2,
            StoreLimits {
                max_tenants: 100,
                tenant_idle_ttl: Duration::from_secs(900),
                share_window: Duration::from_secs(60),
                max_endpoints_per_tenant: 4,
                max_instances: 4,
            },
            Arc::new(MonotonicClock::new()),
        ));
        for shard in 0..2 {
            let mut writer = store.writer(shard);
            for tenant in 0..7 {
                let name = format!("tenant-{tenant}@eu/x");
                for (i, kind) in QueryKind::ALL.into_iter().enumerate() {
                    if (tenant + i) % 3 == 0 {
                        continue;
                    }
                    let endpoint =
                        ["GET /a", "say \"hi\"", "back\\slash", "new\nline"][(tenant + i) % 4];
                    writer.record(&Event {
                        endpoint: Some(Cow::Borrowed(endpoint)),
                        instance: Some(Cow::Owned(format!("pod-{}\"\\", tenant % 3))),
                        tenant: Cow::Borrowed(&name),
                        kind,
                        sample: Sample::Query {
                            duration_ms: (tenant * 37 + i * 11) as f64 * 1.7,
                            rows: 3.0 + tenant as f64,
                            error: tenant % 2 == 0,
                            weight: if tenant == 3 { 2.5 } else { 1.0 },
                        },
                    });
                }
                if tenant % 2 == 1 {
                    writer.record(&Event {
                        endpoint: None,
                        instance: None,
                        tenant: Cow::Borrowed(&name),
                        kind: QueryKind::Read,
                        sample: Sample::SchemaSwitch {
                            duration_ms: 0.4 * tenant as f64,
                            weight: 1.0,
                        },
                    });
                }
            }
        }
        store
    }

    /// The direct writer writes what prometheus-client writes for the
    /// same families, byte for byte, on a store with every kind of family
    /// and label value the text format escapes, in both histogram shapes.
    #[test]
    fn the_direct_writer_writes_what_prometheus_client_writes() {
        for settings in [
            ExpositionSettings::default(),
            ExpositionSettings {
                histogram_by_kind: true,
                latency_buckets: LATENCY_BUCKETS_SECONDS.to_vec(),
                ..ExpositionSettings::default()
            },
        ] {
            let store = store();
            let mut direct = String::new();
            StoreExposition::new(store.clone(), &settings).encode(&mut direct);
            let mut registry = Registry::default();
            registry.register_collector(Box::new(ReferenceEncoder::new(store, &settings)));
            let mut by_crate = String::new();
            prometheus_client::encoding::text::encode(&mut by_crate, &registry).unwrap();
            // prometheus-client ends a whole exposition; the store's
            // families go before the end the registry writes.
            direct.push_str("# EOF\n");
            assert_eq!(direct, by_crate);
            // The store exercised every family and escape.
            for expected in [
                "_bucket{le=\"+Inf\",tenant=\"tenant-3@eu/x\"",
                "endpoint=\"say \\\"hi\\\"\"}",
                "endpoint=\"back\\\\slash\"}",
                "endpoint=\"new\\nline\"}",
                "tenantwatch_tenant_schema_switch_duration_seconds_count{tenant=\"tenant-1@eu/x\"} 2\n",
                "tenantwatch_instance_queries_total{app_instance=\"pod-0\\\"\\\\\"} ",
                "tenantwatch_tenants_tracked 7\n",
            ] {
                assert!(direct.contains(expected), "{expected}");
            }
        }
    }
}

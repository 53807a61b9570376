//! The exposition of the tenant store: per-tenant query counts, errors,
//! rows, latency histograms and database-time share, from one
//! [`Store::snapshot`] per scrape, written by the direct [`super::text`]
//! writer (these families are nearly all of a large exposition).
//!
//! The store keeps every query in its 15 fine latency buckets; the
//! exposition folds them into the configured `metrics.latency_buckets` (a
//! subset of the store's bounds, so folding is exact) and, by default, into
//! one histogram per tenant rather than one per tenant and kind. That keeps
//! a tenant sending all three kinds at 20 samples.
//!
//! A tenant with no event for `metrics.idle_after` leaves the exposition
//! (statsd_exporter's `ttl`): most of a large fleet is idle, and each
//! exported series costs the Prometheus that stores it memory. The store
//! keeps its figures (the API still shows them) until
//! `ingest.tenant_idle_ttl`, so when it sends again its counters come back
//! where they were: Prometheus sees a series that went stale and resumes,
//! never a counter reset. `tenantwatch_tenants_exported` says how many are
//! shown, beside `tenantwatch_tenants_tracked`.

use std::sync::Arc;
use std::time::Duration;

pub mod reference;

use super::text::{header, push_count, push_f64, push_label_value, push_u64};
use crate::event::{OVERFLOW_TENANT, QueryKind};
use crate::settings::serde_text;
use crate::store::{BUCKET_COUNT, KindTotals, LATENCY_BUCKETS_SECONDS, Store, StoreSnapshot};

/// Latency histogram bounds exposed by default, in seconds: one bound at the
/// `TenantwatchTenantLatencyHigh` threshold (1 s), so that alert's decision
/// is exact, and about a factor of 4 between the others.
pub const DEFAULT_LATENCY_BUCKETS: [f64; 7] = [0.001, 0.005, 0.025, 0.1, 0.25, 1.0, 5.0];

/// `[metrics]`: how the per-tenant figures are exposed on `/metrics`.
/// Every key takes effect at start-up.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, crate::settings::Reload)]
#[serde(default, deny_unknown_fields)]
pub struct ExpositionSettings {
    /// One latency histogram per tenant and kind instead of per tenant.
    pub histogram_by_kind: bool,
    /// Exposed latency histogram bounds in seconds, ascending, each one of
    /// the store's 15 bounds ([`LATENCY_BUCKETS_SECONDS`]).
    pub latency_buckets: Vec<f64>,
    /// A tenant with no event for this long leaves the exposition until its
    /// next event (its figures stay in the store and the API, and its
    /// counters continue where they were). `"0s"`: every tracked tenant is
    /// exposed. At least `ingest.share_window` otherwise, so a hidden tenant
    /// holds no database time the others' shares are measured against.
    #[serde(with = "serde_text::duration")]
    pub idle_after: Duration,
}

impl Default for ExpositionSettings {
    fn default() -> Self {
        ExpositionSettings {
            histogram_by_kind: false,
            latency_buckets: DEFAULT_LATENCY_BUCKETS.to_vec(),
            idle_after: Duration::from_secs(600),
        }
    }
}

impl ExpositionSettings {
    /// Checks each key on its own.
    pub fn check(&self, p: &mut crate::settings::Problems) {
        if let Err(message) = Self::validate_buckets(&self.latency_buckets) {
            p.fail(
                "metrics.latency_buckets",
                format!("{:?}", self.latency_buckets),
                message,
            );
        }
    }

    /// Checks `latency_buckets`: not empty, ascending, each a store bound.
    pub fn validate_buckets(buckets: &[f64]) -> Result<(), String> {
        if buckets.is_empty() {
            return Err("must name at least one bound".into());
        }
        if buckets.windows(2).any(|w| w[0] >= w[1]) {
            return Err("bounds must be in ascending order, each once".into());
        }
        if let Some(bad) = buckets
            .iter()
            .find(|b| !LATENCY_BUCKETS_SECONDS.contains(b))
        {
            return Err(format!(
                "{bad} is not one of the store's bounds {LATENCY_BUCKETS_SECONDS:?}"
            ));
        }
        Ok(())
    }
}

/// Exposes the tenant store.
#[derive(Debug)]
pub struct StoreExposition {
    store: Arc<Store>,
    by_kind: bool,
    /// Exposed bounds as the exposition writes them (`le="..."`), the last
    /// being `+Inf`.
    le: Vec<String>,
    /// Exposed bounds, the last being infinity (for [`reference::ReferenceEncoder`]).
    bounds: Vec<f64>,
    /// For each store bucket, the exposed bucket it folds into.
    fold: [usize; BUCKET_COUNT],
    /// `metrics.idle_after` (zero: every tenant).
    idle_after: Duration,
}

impl StoreExposition {
    pub fn new(store: Arc<Store>, settings: &ExpositionSettings) -> StoreExposition {
        let bounds = &settings.latency_buckets;
        let mut fold = [bounds.len(); BUCKET_COUNT];
        for (i, slot) in fold.iter_mut().enumerate() {
            let upper = LATENCY_BUCKETS_SECONDS.get(i).copied();
            if let Some(upper) = upper {
                // A store bucket ends at or below the first exposed bound
                // not smaller than its own; validation makes the bounds a
                // subset of the store's, so nothing straddles two buckets.
                *slot = bounds
                    .iter()
                    .position(|b| *b >= upper)
                    .unwrap_or(bounds.len());
            }
        }
        let mut le: Vec<String> = bounds
            .iter()
            .map(|b| {
                let mut text = String::new();
                push_f64(&mut text, *b);
                text
            })
            .collect();
        le.push("+Inf".into());
        let mut exposed = bounds.clone();
        exposed.push(f64::INFINITY);
        StoreExposition {
            store,
            by_kind: settings.histogram_by_kind,
            le,
            bounds: exposed,
            fold,
            idle_after: settings.idle_after,
        }
    }

    /// The store's tenants to expose: those with an event within
    /// `idle_after`.
    fn snapshot(&self) -> StoreSnapshot {
        let within = (!self.idle_after.is_zero()).then_some(self.idle_after);
        self.store.exposition_snapshot(within)
    }

    /// Appends the store's families to `out`.
    pub fn encode(&self, out: &mut String) {
        let snapshot = self.snapshot();
        self.encode_snapshot(&snapshot, out);
        self.store.recycle(snapshot);
    }

    fn encode_snapshot(&self, snapshot: &StoreSnapshot, out: &mut String) {
        self.encode_kind_counters(snapshot, out);
        self.encode_latency(snapshot, out);
        encode_share(snapshot, out);
        self.encode_endpoints(snapshot, out);
        encode_store_totals(snapshot, out);
    }

    /// Queries, errors and rows per tenant and kind.
    fn encode_kind_counters(&self, snapshot: &StoreSnapshot, out: &mut String) {
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
            header(out, name, help, "counter");
            for tenant in &snapshot.tenants {
                for kind in QueryKind::ALL {
                    if let Some(totals) = &tenant.kinds[kind.index()] {
                        out.push_str(name);
                        out.push_str("_total{tenant=\"");
                        push_label_value(out, &tenant.tenant);
                        out.push_str("\",kind=\"");
                        out.push_str(kind.as_str());
                        out.push_str("\"} ");
                        push_count(out, field(totals));
                        out.push('\n');
                    }
                }
            }
        }
    }

    /// The latency histogram per tenant (and kind with `histogram_by_kind`).
    fn encode_latency(&self, snapshot: &StoreSnapshot, out: &mut String) {
        let name = "tenantwatch_tenant_query_duration_seconds";
        header(
            out,
            name,
            if self.by_kind {
                "Query latency reported by applications, per tenant and kind."
            } else {
                "Query latency reported by applications, per tenant (all kinds)."
            },
            "histogram",
        );
        let mut labels = String::new();
        for tenant in &snapshot.tenants {
            labels.clear();
            labels.push_str("tenant=\"");
            push_label_value(&mut labels, &tenant.tenant);
            labels.push('"');
            if self.by_kind {
                let prefix = labels.len();
                for kind in QueryKind::ALL {
                    if let Some(totals) = &tenant.kinds[kind.index()] {
                        labels.truncate(prefix);
                        labels.push_str(",kind=\"");
                        labels.push_str(kind.as_str());
                        labels.push('"');
                        self.histogram(out, name, &labels, [Some(totals)].into_iter());
                    }
                }
            } else {
                self.histogram(out, name, &labels, tenant.kinds.iter().map(Option::as_ref));
            }
        }
    }

    /// Queries and latency per endpoint, schema switches.
    fn encode_endpoints(&self, snapshot: &StoreSnapshot, out: &mut String) {
        let mut labels = String::new();
        let name = "tenantwatch_tenant_endpoint_queries";
        header(
            out,
            name,
            "Queries reported with an endpoint, per tenant and endpoint (at most ingest.max_endpoints_per_tenant per tenant, the rest under __other__).",
            "counter",
        );
        for tenant in &snapshot.tenants {
            for (endpoint, totals) in &tenant.endpoints {
                out.push_str(name);
                out.push_str("_total{tenant=\"");
                push_label_value(out, &tenant.tenant);
                out.push_str("\",endpoint=\"");
                push_label_value(out, endpoint);
                out.push_str("\"} ");
                push_count(out, totals.queries);
                out.push('\n');
            }
        }
        let name = "tenantwatch_tenant_endpoint_duration_seconds";
        header(
            out,
            name,
            "Query latency reported with an endpoint, per tenant and endpoint.",
            "histogram",
        );
        for tenant in &snapshot.tenants {
            for (endpoint, totals) in &tenant.endpoints {
                labels.clear();
                labels.push_str("tenant=\"");
                push_label_value(&mut labels, &tenant.tenant);
                labels.push_str("\",endpoint=\"");
                push_label_value(&mut labels, endpoint);
                labels.push('"');
                self.histogram(out, name, &labels, [Some(totals)].into_iter());
            }
        }
        let name = "tenantwatch_tenant_schema_switch_duration_seconds";
        header(
            out,
            name,
            "Time to switch a session to the tenant (schema_switch events), per tenant; not counted as queries nor database time.",
            "histogram",
        );
        for tenant in &snapshot.tenants {
            if let Some(totals) = &tenant.schema_switch {
                labels.clear();
                labels.push_str("tenant=\"");
                push_label_value(&mut labels, &tenant.tenant);
                labels.push('"');
                self.histogram(out, name, &labels, [Some(totals)].into_iter());
            }
        }
    }

    /// Writes one histogram (sum, count, cumulative buckets) merging `kinds`.
    /// Nothing when the kinds hold no query.
    fn histogram<'a>(
        &self,
        out: &mut String,
        name: &str,
        labels: &str,
        kinds: impl Iterator<Item = Option<&'a KindTotals>>,
    ) {
        let mut buckets = [0.0f64; BUCKET_COUNT];
        let (mut queries, mut sum_ms) = (0.0, 0.0);
        for totals in kinds.flatten() {
            queries += totals.queries;
            sum_ms += totals.duration_sum_ms;
            for (i, count) in totals.buckets.iter().enumerate() {
                buckets[self.fold[i]] += count;
            }
        }
        if queries == 0.0 {
            return;
        }
        let exposed = &buckets[..self.le.len()];
        // Weighted (sampled) counts are fractional: round the cumulative
        // counts, which keeps them monotonic.
        let count = exposed.iter().sum::<f64>().round() as u64;
        out.push_str(name);
        out.push_str("_sum{");
        out.push_str(labels);
        out.push_str("} ");
        push_f64(out, sum_ms / 1000.0);
        out.push('\n');
        out.push_str(name);
        out.push_str("_count{");
        out.push_str(labels);
        out.push_str("} ");
        push_u64(out, count);
        out.push('\n');
        let mut cumulative = 0.0;
        for (le, bucket) in self.le.iter().zip(exposed) {
            cumulative += bucket;
            // `le` first, then the family's labels, as prometheus-client
            // writes them.
            out.push_str(name);
            out.push_str("_bucket{le=\"");
            out.push_str(le);
            out.push_str("\",");
            out.push_str(labels);
            out.push_str("} ");
            push_u64(out, cumulative.round() as u64);
            out.push('\n');
        }
    }
}

/// Each tenant's share of database time over the window.
fn encode_share(snapshot: &StoreSnapshot, out: &mut String) {
    let name = "tenantwatch_tenant_db_time_ratio";
    header(
        out,
        name,
        "The tenant's share of all tenants' reported query time over the sliding window (0 to 1).",
        "gauge",
    );
    for tenant in &snapshot.tenants {
        out.push_str(name);
        out.push_str("{tenant=\"");
        push_label_value(out, &tenant.tenant);
        out.push_str("\"} ");
        push_f64(out, tenant.db_time_share);
        out.push('\n');
    }
}

const EXPORTED_HELP: &str = "Tenants whose series this exposition shows: those tracked with an event within metrics.idle_after (the overflow bucket not counted).";

/// Tenants in the snapshot, not counting the overflow bucket.
fn exported(snapshot: &StoreSnapshot) -> u64 {
    snapshot
        .tenants
        .iter()
        .filter(|t| t.tenant != OVERFLOW_TENANT)
        .count() as u64
}

/// Per-instance queries and the store's own counts.
fn encode_store_totals(snapshot: &StoreSnapshot, out: &mut String) {
    let name = "tenantwatch_instance_queries";
    header(
        out,
        name,
        "Queries reported per application instance (pod), from the events' instance (at most ingest.max_instances, the rest under __other__).",
        "counter",
    );
    for (instance, queries) in &snapshot.instances {
        out.push_str(name);
        // Not `instance`: Prometheus sets that label to the scraped
        // target, and would rename or overwrite ours.
        out.push_str("_total{app_instance=\"");
        push_label_value(out, instance);
        out.push_str("\"} ");
        push_count(out, *queries);
        out.push('\n');
    }

    let totals: [(&str, &str, &str, u64); 6] = [
        (
            "tenantwatch_tenants_tracked",
            "Tenants currently tracked from events (at most ingest.max_tenants; the overflow bucket not counted).",
            "gauge",
            snapshot.tracked as u64,
        ),
        (
            "tenantwatch_tenants_exported",
            EXPORTED_HELP,
            "gauge",
            exported(snapshot),
        ),
        (
            "tenantwatch_tenants_overflow",
            "Events attributed to the __overflow__ tenant because ingest.max_tenants tenants were already tracked.",
            "counter",
            snapshot.overflow_events,
        ),
        (
            "tenantwatch_tenants_evicted",
            "Tenants forgotten after ingest.tenant_idle_ttl without an event.",
            "counter",
            snapshot.evicted,
        ),
        (
            "tenantwatch_endpoints_folded",
            "Events whose endpoint went to __other__ because their tenant had ingest.max_endpoints_per_tenant endpoints.",
            "counter",
            snapshot.endpoints_folded,
        ),
        (
            "tenantwatch_instances_folded",
            "Events whose instance went to __other__ because ingest.max_instances instances were tracked.",
            "counter",
            snapshot.instances_folded,
        ),
    ];
    for (name, help, metric_type, value) in totals {
        header(out, name, help, metric_type);
        out.push_str(name);
        if metric_type == "counter" {
            out.push_str("_total");
        }
        out.push(' ');
        push_u64(out, value);
        out.push('\n');
    }
}

//! `/metrics` encoding cost with 10,000 tenants doing reads, writes and
//! other queries: one store merge plus the text exposition.
//! `cargo bench --bench scrape`.

// Tests and benches may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tenantwatch::event::{Event, QueryKind, Sample};
use tenantwatch::metrics::{self, HttpMetrics};
use tenantwatch::ratelimit::{RateLimits, RatePolicy};
use tenantwatch::store::{IngestStats, MonotonicClock, Store, StoreLimits, TargetStatuses};

fn bench(c: &mut Criterion) {
    let store = Arc::new(Store::new(
        3,
        StoreLimits {
            max_tenants: 10_000,
            tenant_idle_ttl: Duration::from_secs(900),
            share_window: Duration::from_secs(60),
            max_endpoints_per_tenant: 20,
            max_instances: 500,
        },
        Arc::new(MonotonicClock::new()),
    ));
    for shard in 0..3 {
        let mut writer = store.writer(shard);
        for tenant in 0..10_000 {
            let name = format!("tenant{tenant}");
            for (i, kind) in QueryKind::ALL.into_iter().enumerate() {
                writer.record(&Event {
                    endpoint: None,
                    instance: None,
                    tenant: Cow::Borrowed(&name),
                    kind,
                    sample: Sample::Query {
                        duration_ms: (tenant % 100 + i) as f64 * 3.7,
                        rows: 10.0,
                        error: tenant % 7 == 0,
                        weight: 1.0,
                    },
                });
            }
        }
    }
    // The store's exposition, and nothing else to show.
    let exposition_of = |settings: &metrics::ExpositionSettings| {
        metrics::exposition(
            metrics::Sources {
                store: store.clone(),
                stats: Arc::new(IngestStats::default()),
                targets: TargetStatuses::default(),
                pgbouncers: Default::default(),
                judgement: Arc::default(),
                limits: Arc::new(RateLimits::new(
                    RatePolicy::default(),
                    100,
                    Duration::from_secs(60),
                )),
                guard_log: Default::default(),
                reloads: Default::default(),
                capacity: Default::default(),
            },
            &HttpMetrics::default(),
            settings,
        )
    };
    let registry = exposition_of(&metrics::ExpositionSettings::default());
    let mut group = c.benchmark_group("scrape");
    group.sample_size(10);
    group.bench_function("snapshot_10k_tenants", |b| {
        b.iter(|| black_box(store.snapshot()))
    });
    group.bench_function("encode_10k_tenants", |b| {
        b.iter(|| black_box(metrics::encode(&registry).len()))
    });
    // The shape before the series budget (a histogram per kind with all 15
    // bounds), to compare the writer alone.
    let full = exposition_of(&metrics::ExpositionSettings {
        histogram_by_kind: true,
        latency_buckets: tenantwatch::store::LATENCY_BUCKETS_SECONDS.to_vec(),
        ..metrics::ExpositionSettings::default()
    });
    group.bench_function("encode_10k_tenants_by_kind_15_buckets", |b| {
        b.iter(|| black_box(metrics::encode(&full).len()))
    });
    // The store's families alone, by the direct writer and by
    // prometheus-client's text encoder (the same families, byte for byte),
    // in the same run; each includes the store snapshot it reads.
    let settings = metrics::ExpositionSettings::default();
    let direct = metrics::StoreExposition::new(store.clone(), &settings);
    group.bench_function("store_families_10k_tenants_direct", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(16 << 20);
            direct.encode(&mut out);
            black_box(out.len())
        })
    });
    let mut by_crate = prometheus_client::registry::Registry::default();
    by_crate.register_collector(Box::new(metrics::events::reference::ReferenceEncoder::new(
        store.clone(),
        &settings,
    )));
    group.bench_function("store_families_10k_tenants_prometheus_client", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(16 << 20);
            prometheus_client::encoding::text::encode(&mut out, &by_crate).unwrap();
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

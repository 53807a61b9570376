//! `/metrics` encoding cost with 10,000 tenants doing reads, writes and
//! other queries: one store merge plus the exposition in each format, and
//! its gzip form as Prometheus asks for it; and 100,000 tenants of which
//! 10,000 had an event within `metrics.idle_after`.
//! `cargo bench --bench scrape` (`-- gzip` for the gzip'd scrapes only).
//! `SCRAPE_TENANTS` and `SCRAPE_ACTIVE` (100000 and 10000) size the second
//! store; its sample count is printed once.

// Tests and benches may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tenantwatch::event::{Event, QueryKind, Sample};
use tenantwatch::metrics::{self, HttpMetrics};
use tenantwatch::store::{ManualClock, MonotonicClock, Store, StoreLimits};

/// Records one event of each kind for tenants `range` on each of 3 shards.
fn record_all_kinds(store: &Store, range: std::ops::Range<usize>) {
    for shard in 0..3 {
        let mut writer = store.writer(shard);
        for tenant in range.clone() {
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
}

/// The daemon's exposition of `store` with `settings`, and nothing else to
/// show.
fn exposition_of(
    store: &Arc<Store>,
    settings: &metrics::ExpositionSettings,
) -> metrics::Exposition {
    metrics::exposition(
        metrics::Sources::of_store(store.clone()),
        &HttpMetrics::default(),
        settings,
    )
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The gzip'd scrape: at 10,000 tenants, and at `SCRAPE_TENANTS` of which
/// the last `SCRAPE_ACTIVE` sent an event after the others went idle.
fn bench_gzip(c: &mut Criterion, store_10k: &Arc<Store>) {
    let mut group = c.benchmark_group("gzip");
    group.sample_size(10);
    let served = exposition_of(store_10k, &metrics::ExpositionSettings::default());
    group.bench_function("encode_gzip_10k_tenants", |b| {
        b.iter(|| black_box(metrics::gzip(metrics::encode(&served).as_bytes()).len()))
    });
    // The compression alone, in one part (as before issue 31) and in as
    // many parts as `metrics::gzip` uses on this machine.
    let text = metrics::encode(&served);
    group.bench_function("gzip_10k_tenants_one_part", |b| {
        b.iter(|| black_box(metrics::gzip::gzip_in_parts(text.as_bytes(), 1).len()))
    });
    group.bench_function("gzip_10k_tenants_in_parts", |b| {
        b.iter(|| black_box(metrics::gzip(text.as_bytes()).len()))
    });

    let (tenants, active) = (
        env_count("SCRAPE_TENANTS", 100_000),
        env_count("SCRAPE_ACTIVE", 10_000),
    );
    let clock = Arc::new(ManualClock::default());
    let store = Arc::new(Store::new(
        3,
        StoreLimits {
            max_tenants: tenants,
            tenant_idle_ttl: Duration::from_secs(900),
            share_window: Duration::from_secs(60),
            max_endpoints_per_tenant: 20,
            max_instances: 500,
        },
        clock.clone(),
    ));
    record_all_kinds(&store, 0..tenants);
    let settings = metrics::ExpositionSettings::default();
    clock.advance(settings.idle_after + Duration::from_secs(60));
    record_all_kinds(&store, 0..active);
    let exposition = exposition_of(&store, &settings);
    let text = metrics::encode(&exposition);
    let samples = text.lines().filter(|l| !l.starts_with('#')).count();
    eprintln!(
        "{tenants} tenants, {active} active: {samples} samples, {} bytes, {} gzip'd",
        text.len(),
        metrics::gzip(text.as_bytes()).len()
    );
    let name = format!(
        "encode_gzip_{}k_tenants_{}k_active",
        tenants / 1000,
        active / 1000
    );
    group.bench_function(name, |b| {
        b.iter(|| black_box(metrics::gzip(metrics::encode(&exposition).as_bytes()).len()))
    });
    group.finish();
}

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
    record_all_kinds(&store, 0..10_000);
    bench_gzip(c, &store);
    let registry = exposition_of(&store, &metrics::ExpositionSettings::default());
    let mut group = c.benchmark_group("scrape");
    group.sample_size(10);
    group.bench_function("snapshot_10k_tenants", |b| {
        b.iter(|| black_box(store.snapshot()))
    });
    group.bench_function("encode_10k_tenants", |b| {
        b.iter(|| black_box(metrics::encode(&registry).len()))
    });
    // The other two formats `/metrics` negotiates: text 0.0.4 (OpenMetrics
    // rewritten, runs of samples copied whole) and protobuf (prometheus-client's encoder,
    // with native histograms).
    for format in [metrics::Format::Text, metrics::Format::Protobuf] {
        let name = match format {
            metrics::Format::Text => "encode_10k_tenants_text_004",
            _ => "encode_10k_tenants_protobuf",
        };
        // The text format's OpenMetrics intermediate is kept across
        // encodes, as the daemon keeps it across scrapes.
        let mut scratch = String::new();
        group.bench_function(name, |b| {
            b.iter(|| {
                let encoded =
                    metrics::encode_format(&registry, format, String::new(), &mut scratch);
                black_box(encoded.len())
            })
        });
    }
    // The shape before the series budget (a histogram per kind with all 15
    // bounds), to compare the writer alone.
    let full = exposition_of(
        &store,
        &metrics::ExpositionSettings {
            histogram_by_kind: true,
            latency_buckets: tenantwatch::store::LATENCY_BUCKETS_SECONDS.to_vec(),
            ..metrics::ExpositionSettings::default()
        },
    );
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

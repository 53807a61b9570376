//! Parse + aggregate cost per event: the work a UDP receive thread does for
//! each line, without the socket. `cargo bench --bench ingest`.

// Tests and benches may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tenantwatch::ingest::{LineLimits, ingest_payload};
use tenantwatch::store::{IngestStats, Source};
use tenantwatch::store::{MonotonicClock, Store, StoreLimits};

fn store() -> Store {
    Store::new(
        1,
        StoreLimits {
            max_tenants: 10_000,
            tenant_idle_ttl: Duration::from_secs(900),
            share_window: Duration::from_secs(60),
            max_endpoints_per_tenant: 20,
            max_instances: 500,
        },
        Arc::new(MonotonicClock::new()),
    )
}

/// `lines` event lines over `tenants` tenants, one per line.
fn payload(lines: usize, tenants: usize, json: bool) -> Vec<u8> {
    let kinds = ["read", "write", "other"];
    let mut out = String::new();
    for i in 0..lines {
        let (tenant, kind, ms) = (i % tenants, kinds[i % 3], (i % 500) as f64 / 10.0 + 0.3);
        if json {
            out.push_str(&format!(
                "{{\"tenant\":\"tenant{tenant}\",\"kind\":\"{kind}\",\"duration_ms\":{ms},\"rows\":{i}}}\n"
            ));
        } else {
            out.push_str(&format!(
                "tenantwatch.query:{ms}|ms|#tenant:tenant{tenant},kind:{kind}\n"
            ));
        }
    }
    out.into_bytes()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_and_aggregate");
    for (name, json, per_payload) in [
        ("dogstatsd_1_per_payload", false, 1),
        ("dogstatsd_20_per_payload", false, 20),
        ("ndjson_1_per_payload", true, 1),
        ("ndjson_20_per_payload", true, 20),
    ] {
        // 1,000 payloads cycled over 10,000 tenants, like a busy fleet.
        let payloads: Vec<Vec<u8>> = payload(
            1000 * per_payload,
            std::env::var("BENCH_TENANTS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10_000),
            json,
        )
        .split_inclusive(|b| *b == b'\n')
        .collect::<Vec<_>>()
        .chunks(per_payload)
        .map(|lines| lines.concat())
        .collect();
        let store = store();
        let stats = IngestStats::default();
        group.throughput(Throughput::Elements(per_payload as u64));
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                let payload = &payloads[next % payloads.len()];
                next += 1;
                let mut writer = store.writer(0);
                black_box(ingest_payload(
                    black_box(payload),
                    LineLimits {
                        max_line_bytes: 4096,
                        min_sample_rate: 0.001,
                    },
                    Source::Udp,
                    &mut writer,
                    &stats,
                    |_, _| {},
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

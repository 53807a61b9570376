//! Bytes per tenant in each of the daemon's per-tenant structures, for
//! `scripts/bench-scale.sh` (issue 31).
//!
//! ```text
//! bench_memory [TENANTS] [UDP_SHARDS]
//! ```
//!
//! Builds each structure the way the daemon does at TENANTS tenants
//! (100,000 by default) sending all three kinds, and counts what it holds
//! with a counting global allocator (`stats_alloc`): bytes asked of the
//! allocator, and live allocations (glibc adds 8-16 bytes to each, and
//! rounds small ones up to 32). Structures:
//!
//! - the store, each tenant's events written by UDP_SHARDS receive
//!   threads (2, the default `ingest.udp_receivers`: under load both
//!   threads see every tenant; since issue 31 a tenant has one
//!   accumulator whichever thread writes);
//! - one store snapshot (every reader takes one: the detector each
//!   interval, each scrape, the capacity sampler, each API list);
//! - the detector after a full window of evaluations at the default
//!   interval (window history, baselines);
//! - the rate limiters, every tenant having asked once;
//! - the tenant histories (`api.history_tenants`, 1,000 by default, each
//!   with a day of samples: a fixed cost, not per tenant);
//! - the exposition text of the store's families (every tenant exported);
//! - the API's tenant rows (`GET /api/v1/tenants`).

// Tests and benches may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

#[path = "common/scale.rs"]
mod scale;

use std::alloc::System;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scale::event;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tenantwatch::capacity::{CapacitySettings, TenantHistories, TenantSample};
use tenantwatch::detect::{DetectSettings, Detector, Judgement};
use tenantwatch::event::QueryKind;
use tenantwatch::metrics::{ExpositionSettings, StoreExposition};
use tenantwatch::ratelimit::{RateLimits, RatePolicy};
use tenantwatch::store::{ManualClock, Store, StoreLimits};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live bytes and allocations since a region began.
#[derive(Clone, Copy, Default)]
struct Held {
    bytes: i64,
    allocations: i64,
}

fn held(region: &Region<'_, System>) -> Held {
    let change = region.change();
    Held {
        bytes: change.bytes_allocated as i64 - change.bytes_deallocated as i64,
        allocations: change.allocations as i64 - change.deallocations as i64,
    }
}

struct Table {
    tenants: usize,
    rows: Vec<(String, Held)>,
}

impl Table {
    fn add(&mut self, name: &str, held: Held) {
        self.rows.push((name.to_string(), held));
    }

    fn print(&self, total_rows: usize) {
        let n = self.tenants as f64;
        println!(
            "{:<58} {:>10} {:>12} {:>12}",
            "structure", "MiB", "bytes/tenant", "allocs/tenant"
        );
        let mut total = Held::default();
        for (i, (name, h)) in self.rows.iter().enumerate() {
            println!(
                "{:<58} {:>10.1} {:>12.0} {:>12.2}",
                name,
                h.bytes as f64 / 1048576.0,
                h.bytes as f64 / n,
                h.allocations as f64 / n
            );
            if i < total_rows {
                total.bytes += h.bytes;
                total.allocations += h.allocations;
            }
        }
        println!(
            "{:<58} {:>10.1} {:>12.0} {:>12.2}",
            "kept between scrapes (the rows above the line)",
            total.bytes as f64 / 1048576.0,
            total.bytes as f64 / n,
            total.allocations as f64 / n
        );
    }
}

/// One event of each kind for every tenant, through each UDP shard.
fn record_all(store: &Store, names: &[String], shards: usize, round: usize) {
    for shard in 0..shards {
        let mut writer = store.writer(shard);
        for (i, name) in names.iter().enumerate() {
            for kind in [QueryKind::Read, QueryKind::Write, QueryKind::Other] {
                writer.record(&event(name, kind, i + round));
            }
        }
    }
}

/// `bench_memory churn [ROUNDS]`: tenant churn as the soak's floods make it.
/// Each round 900 new tenant ids reach a store of `max_tenants = 600` (the
/// rest overflow), ten steady tenants keep sending, and four detection
/// intervals pass, each with an evaluation, a history sample and eviction
/// (`tenant_idle_ttl` 30 s): the flood's tenants are gone before the next.
/// Prints the bytes held (allocated less freed) after each round: a leak
/// grows with the rounds, a bounded working set does not.
fn churn(rounds: usize) {
    let detect = DetectSettings::default();
    let clock = Arc::new(ManualClock::default());
    let store = Store::new(
        4,
        StoreLimits {
            max_tenants: 600,
            tenant_idle_ttl: Duration::from_secs(30),
            share_window: detect.window,
            max_endpoints_per_tenant: 20,
            max_instances: 500,
        },
        clock.clone(),
    );
    let mut detector = Detector::new(detect.clone());
    let mut histories = TenantHistories::new(10, 1000);
    let steady: Vec<String> = (0..10).map(|i| format!("steady{i}")).collect();
    let start = Instant::now();
    let region = Region::new(GLOBAL);
    let mut evaluation = 0;
    println!("== tenant churn: bytes held after each round (900 new ids, max_tenants 600)");
    for round in 0..rounds {
        let flood: Vec<String> = (0..900).map(|i| format!("f{round}x{i}")).collect();
        record_all(&store, &flood, 1, round);
        for _ in 0..4 {
            clock.advance(detect.interval);
            record_all(&store, &steady, 2, round);
            let snapshot = store.snapshot();
            let samples = snapshot
                .tenants
                .iter()
                .map(|t| {
                    let sample = TenantSample {
                        unix: evaluation as f64,
                        queries: 1.0,
                        db_time_share: t.db_time_share as f32,
                        connections: 0.0,
                        size_bytes: 0.0,
                    };
                    (t.tenant.clone(), sample)
                })
                .collect();
            histories.record(samples);
            scale::evaluate(
                &mut detector,
                &snapshot,
                start + detect.interval * evaluation,
            );
            drop(snapshot);
            store.evict_idle();
            evaluation += 1;
        }
        let held = held(&region);
        println!(
            "round {round:3}: {:8.1} KiB held in {} allocations, {} tenants tracked",
            held.bytes as f64 / 1024.0,
            held.allocations,
            store.tracked()
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("churn") {
        churn(args.get(1).map_or(40, |a| a.parse().unwrap()));
        return;
    }
    let tenants: usize = args.first().map_or(100_000, |a| a.parse().unwrap());
    let shards: usize = args.get(1).map_or(2, |a| a.parse().unwrap());
    let names: Vec<String> = (0..tenants).map(|i| format!("tenant{i}")).collect();
    let mut table = Table {
        tenants,
        rows: Vec::new(),
    };
    let detect = DetectSettings::default();

    let clock = Arc::new(ManualClock::default());
    let region = Region::new(GLOBAL);
    let store = Store::new(
        shards + 2,
        StoreLimits {
            max_tenants: tenants,
            tenant_idle_ttl: Duration::from_secs(600),
            share_window: detect.window,
            max_endpoints_per_tenant: 20,
            max_instances: 500,
        },
        clock.clone(),
    );
    record_all(&store, &names, shards, 0);
    table.add(
        &format!("store, written by {shards} UDP receive threads"),
        held(&region),
    );

    // The detector over a full window at the default interval, the store
    // moving between evaluations as it does under load.
    let region = Region::new(GLOBAL);
    let mut detector = Detector::new(detect.clone());
    let start = Instant::now();
    let evaluations = (detect.window.as_secs() / detect.interval.as_secs()) as u32 + 3;
    let mut detect_seconds = Vec::new();
    for round in 0..evaluations {
        if round > 0 {
            clock.advance(detect.interval);
            record_all(&store, &names, 1, round as usize);
        }
        let timed = Instant::now();
        let snapshot = store.snapshot();
        scale::evaluate(&mut detector, &snapshot, start + detect.interval * round);
        drop(snapshot);
        detect_seconds.push(timed.elapsed().as_secs_f64());
    }
    // Recording into known tenants allocates nothing: what the region
    // holds is the detector's.
    table.add(
        &format!("detector after {evaluations} evaluations (window history, baselines)"),
        held(&region),
    );

    let region = Region::new(GLOBAL);
    let limits = RateLimits::new(RatePolicy::default(), tenants, Duration::from_secs(600));
    for name in &names {
        limits.check(name, 1);
    }
    table.add("rate limiters (every tenant asked once)", held(&region));

    let capacity = CapacitySettings::default();
    let region = Region::new(GLOBAL);
    let mut histories = TenantHistories::new(capacity.history_len(), capacity.history_tenants);
    let kept: Vec<&String> = names.iter().take(capacity.history_tenants).collect();
    for minute in 0..capacity.history_len() {
        let samples = kept
            .iter()
            .map(|name| {
                let sample = TenantSample {
                    unix: minute as f64 * 60.0,
                    queries: minute as f64,
                    db_time_share: 0.0,
                    connections: 0.0,
                    size_bytes: 0.0,
                };
                ((*name).clone(), sample)
            })
            .collect();
        histories.record(samples);
    }
    table.add(
        &format!(
            "tenant histories ({} tenants x {} samples: fixed)",
            capacity.history_tenants,
            capacity.history_len()
        ),
        held(&region),
    );
    let kept_rows = table.rows.len();

    let region = Region::new(GLOBAL);
    let snapshot = store.snapshot();
    table.add(
        "one store snapshot (while a reader holds it)",
        held(&region),
    );
    drop(snapshot);

    let region = Region::new(GLOBAL);
    let judgement = Judgement::default();
    let summaries = store.summaries();
    let rows = tenantwatch::api::tenant_rows(&summaries, &[], &judgement, &limits);
    drop(summaries);
    table.add(
        "API tenant rows (every tenant's, as GET /api/v1/tenants builds them)",
        held(&region),
    );
    drop(rows);

    let exposition = StoreExposition::new(Arc::new(store), &ExpositionSettings::default());
    let region = Region::new(GLOBAL);
    let mut text = String::new();
    exposition.encode(&mut text);
    text.shrink_to_fit();
    table.add(
        "exposition text of the store's families (every tenant)",
        held(&region),
    );

    println!(
        "== memory per structure at {tenants} tenants x 3 kinds ({shards} UDP receive threads)"
    );
    table.print(kept_rows);
    detect_seconds.sort_by(f64::total_cmp);
    println!(
        "detector evaluation (snapshot + rules), median of {evaluations}: {:.1} ms",
        detect_seconds[detect_seconds.len() / 2] * 1000.0
    );
    drop(histories);
}

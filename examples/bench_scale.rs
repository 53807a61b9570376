//! In-process costs at many tenants, for `scripts/bench-scale.sh` (issue 31).
//!
//! ```text
//! bench_scale [TENANTS] [ROUNDS]
//! ```
//!
//! At TENANTS tenants (100,000 by default) sending all three kinds, on the
//! default detection settings, medians of ROUNDS (9) rounds of:
//!
//! - recording one event of each tenant into a store shard, in batches of
//!   20 consecutive events of different tenants (a UDP datagram's worth),
//!   ns per event;
//! - `Store::snapshot`, which every reader takes;
//! - one detection interval (a snapshot and `Detector::evaluate`), and
//!   what it costs of one core at the default `detect.interval`;
//! - `GET /api/v1/tenants?sort=db_time_share&limit=50` without its HTTP:
//!   the snapshot, the rows and the page.
//!
//! The daemon's own figures over HTTP and UDP are `scripts/bench-scale.sh`'s.

// Tests and benches may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

#[path = "common/scale.rs"]
mod scale;

use std::sync::Arc;
use std::time::{Duration, Instant};

use scale::event;
use tenantwatch::detect::{DetectSettings, Detector, Judgement};
use tenantwatch::event::QueryKind;
use tenantwatch::ratelimit::{RateLimits, RatePolicy};
use tenantwatch::store::{ManualClock, Store, StoreLimits};

/// Records one event of each kind for every tenant (`order` says in which
/// order the tenants come) on `shard`, a writer per 20 events.
fn record_all(store: &Store, names: &[String], order: &[usize], shard: usize, round: usize) {
    let kinds = [QueryKind::Read, QueryKind::Write, QueryKind::Other];
    let events: Vec<(usize, QueryKind)> = kinds
        .iter()
        .flat_map(|kind| order.iter().map(move |i| (*i, *kind)))
        .collect();
    for datagram in events.chunks(20) {
        let mut writer = store.writer(shard);
        for (i, kind) in datagram {
            writer.record(&event(&names[*i], *kind, i + round));
        }
    }
}

fn median_ms(mut seconds: Vec<f64>) -> f64 {
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2] * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tenants: usize = args.first().map_or(100_000, |a| a.parse().unwrap());
    let rounds: usize = args.get(1).map_or(9, |a| a.parse().unwrap());
    let names: Vec<String> = (0..tenants).map(|i| format!("tenant{i}")).collect();
    // A fixed shuffle (an LCG), so consecutive events hit unrelated tenants
    // as a busy fleet's datagrams do.
    let mut order: Vec<usize> = (0..tenants).collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in (1..order.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (seed >> 33) as usize % (i + 1));
    }
    let detect = DetectSettings::default();
    let clock = Arc::new(ManualClock::default());
    let store = Store::new(
        4,
        StoreLimits {
            max_tenants: tenants,
            tenant_idle_ttl: Duration::from_secs(600),
            share_window: detect.window,
            max_endpoints_per_tenant: 20,
            max_instances: 500,
        },
        clock.clone(),
    );
    // Every tenant known on both UDP shards, as under load.
    record_all(&store, &names, &order, 0, 0);
    record_all(&store, &names, &order, 1, 0);

    let mut detector = Detector::new(detect.clone());
    let start = Instant::now();
    let (mut record, mut snapshot_s, mut detect_s) = (Vec::new(), Vec::new(), Vec::new());
    // A window's worth of evaluations first, so the detector holds what it
    // holds in a steady daemon, then the measured rounds.
    let warm = (detect.window.as_secs() / detect.interval.as_secs()) as usize + 1;
    for round in 0..warm + rounds {
        clock.advance(detect.interval);
        let timed = Instant::now();
        record_all(&store, &names, &order, round % 2, round);
        let per_event = timed.elapsed().as_secs_f64() / (3 * tenants) as f64;
        let timed = Instant::now();
        let snapshot = store.snapshot();
        let took_snapshot = timed.elapsed().as_secs_f64();
        scale::evaluate(
            &mut detector,
            &snapshot,
            start + detect.interval * round as u32,
        );
        drop(snapshot);
        if round >= warm {
            record.push(per_event);
            snapshot_s.push(took_snapshot);
            detect_s.push(timed.elapsed().as_secs_f64());
        }
    }

    let limits = RateLimits::new(RatePolicy::default(), tenants, Duration::from_secs(600));
    let query =
        tenantwatch::api::parse_list_query(Some("sort=db_time_share&limit=50"), false).unwrap();
    let judgement = Judgement::default();
    let (mut api_s, mut summaries_s, mut page_s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let timed = Instant::now();
        let summaries = store.summaries();
        summaries_s.push(timed.elapsed().as_secs_f64());
        let page_timed = Instant::now();
        let page = tenantwatch::api::tenant_page(summaries, &[], &judgement, &limits, &query);
        page_s.push(page_timed.elapsed().as_secs_f64());
        let body = serde_json::to_vec(&page).unwrap();
        api_s.push(timed.elapsed().as_secs_f64());
        drop(body);
    }

    let interval_ms = detect.interval.as_secs_f64() * 1000.0;
    let detect_ms = median_ms(detect_s);
    println!("== in-process costs at {tenants} tenants x 3 kinds, medians of {rounds}");
    println!(
        "store record, 20 events per writer: {:.0} ns/event",
        median_ms(record) * 1e6
    );
    println!("Store::snapshot: {:.1} ms", median_ms(snapshot_s));
    println!(
        "detection interval (snapshot + evaluate): {detect_ms:.1} ms = {:.1}% of one core at detect.interval {}",
        detect_ms / interval_ms * 100.0,
        humantime::format_duration(detect.interval)
    );
    println!(
        "GET /api/v1/tenants?sort=db_time_share&limit=50 without HTTP: {:.1} ms \
         (the store's summaries {:.1} ms, then the rows and the page {:.1} ms)",
        median_ms(api_s),
        median_ms(summaries_s),
        median_ms(page_s)
    );
}

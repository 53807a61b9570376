//! Hostile numbers cannot poison the figures: whatever lines arrive (tiny
//! sample rates, huge counts and rows, in any order), every stored figure
//! and every exposed sample stays finite, and one tenant's lines change
//! another tenant's database-time share by at most their own share.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tenantwatch::ingest::{LineLimits, ingest_payload};
use tenantwatch::metrics::{self, HttpMetrics};
use tenantwatch::ratelimit::{RateLimits, RatePolicy};
use tenantwatch::store::{
    IngestStats, ManualClock, Source, Store, StoreLimits, StoreSnapshot, TargetStatuses,
};

const LIMITS: LineLimits = LineLimits {
    max_line_bytes: 4096,
    min_sample_rate: 0.001,
};

fn store() -> Arc<Store> {
    Arc::new(Store::new(
        1,
        StoreLimits {
            max_tenants: 100,
            tenant_idle_ttl: Duration::from_secs(3600),
            share_window: Duration::from_secs(60),
            max_endpoints_per_tenant: 20,
            max_instances: 500,
        },
        Arc::new(ManualClock::default()),
    ))
}

fn ingest(store: &Store, lines: &[String]) {
    let payload = lines.join("\n");
    let stats = IngestStats::default();
    ingest_payload(
        payload.as_bytes(),
        LIMITS,
        Source::Udp,
        &mut store.writer(0),
        &stats,
        |_, _| {},
    );
}

/// Numbers an attacker would send.
fn hostile_number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("30000".to_string()),
        Just("86400000".to_string()),
        Just("1e12".to_string()),
        Just("1e13".to_string()),
        Just("1e308".to_string()),
        Just("1.7976931348623157e308".to_string()),
        Just("-1".to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        (0.0f64..1e6).prop_map(|v| v.to_string()),
    ]
}

fn hostile_rate() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1".to_string()),
        Just("0.5".to_string()),
        Just("0.001".to_string()),
        Just("0.0009".to_string()),
        Just("1e-300".to_string()),
        Just("5e-324".to_string()),
        Just("0".to_string()),
    ]
}

fn hostile_line(tenant: &'static str) -> impl Strategy<Value = String> {
    (hostile_number(), hostile_rate(), hostile_number(), 0..5u8).prop_map(
        move |(value, rate, rows, form)| match form {
            0 => format!("tenantwatch.query:{value}|ms|@{rate}|#tenant:{tenant},rows:{rows}"),
            1 => format!("tenantwatch.rows:{value}|c|@{rate}|#tenant:{tenant}"),
            2 => format!("tenantwatch.errors:{value}|c|@{rate}|#tenant:{tenant}"),
            3 => format!(
                "{{\"tenant\":\"{tenant}\",\"kind\":\"read\",\"duration_ms\":{value},\"rows\":{rows}}}"
            ),
            _ => format!("tenantwatch.query:{value}:{value}|h|@{rate}|#tenant:{tenant},kind:write"),
        },
    )
}

fn assert_finite(snapshot: &StoreSnapshot) {
    for t in &snapshot.tenants {
        assert!(t.db_time_share.is_finite() && (0.0..=1.0).contains(&t.db_time_share));
        assert!(t.window_db_time_ms.is_finite());
        for k in t.kinds.iter().flatten() {
            for v in [k.queries, k.errors, k.rows, k.duration_sum_ms]
                .into_iter()
                .chain(k.buckets)
            {
                assert!(v.is_finite(), "{} has a non-finite figure: {k:?}", t.tenant);
            }
        }
    }
}

fn share(snapshot: &StoreSnapshot, tenant: &str) -> f64 {
    snapshot
        .tenants
        .iter()
        .find(|t| t.tenant == tenant)
        .map_or(0.0, |t| t.db_time_share)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn no_accepted_input_makes_a_figure_non_finite(
        lines in prop::collection::vec(hostile_line("evil"), 1..40),
        repeat in 1..4usize,
    ) {
        let store = store();
        ingest(&store, &["tenantwatch.query:12|ms|#tenant:victim".to_string()]);
        for _ in 0..repeat {
            ingest(&store, &lines);
        }
        let snapshot = store.snapshot();
        assert_finite(&snapshot);
        let registry = metrics::exposition(
            metrics::Sources {
                store: store.clone(),
                stats: Arc::new(IngestStats::default()),
                targets: TargetStatuses::default(),
                pgbouncers: Default::default(),
                judgement: Arc::default(),
                limits: Arc::new(RateLimits::new(RatePolicy::default(), 100, Duration::from_secs(60))),
                guard_log: Default::default(),
                reloads: Default::default(),
                capacity: Default::default(),
            },
            &HttpMetrics::default(),
            &metrics::ExpositionSettings::default(),
        );
        let text = metrics::encode(&registry);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad sample {line}"));
            prop_assert!(value.is_finite(), "non-finite sample: {line}");
        }
    }

    #[test]
    fn one_tenant_moves_anothers_share_by_at_most_its_own(
        lines in prop::collection::vec(hostile_line("evil"), 1..40),
    ) {
        let store = store();
        ingest(&store, &[
            "tenantwatch.query:12|ms|#tenant:victim".to_string(),
            "tenantwatch.query:30|ms|#tenant:other".to_string(),
        ]);
        let before = store.snapshot();
        ingest(&store, &lines);
        let after = store.snapshot();
        assert_finite(&after);
        for tenant in ["victim", "other"] {
            let moved = (share(&before, tenant) - share(&after, tenant)).abs();
            prop_assert!(
                moved <= share(&after, "evil") + 1e-9,
                "{tenant}'s share moved by {moved}, evil holds {}",
                share(&after, "evil")
            );
        }
    }
}

#[test]
fn the_reported_attack_lines_are_refused() {
    let store = store();
    ingest(
        &store,
        &[
            "tenantwatch.query:12|ms|#tenant:victim".to_string(),
            "tenantwatch.query:30000|ms|@5e-324|#tenant:x".to_string(),
            "tenantwatch.rows:1e308|c|#tenant:x".to_string(),
            "{\"tenant\":\"x\",\"kind\":\"read\",\"duration_ms\":1,\"rows\":1e308}".to_string(),
        ],
    );
    let snapshot = store.snapshot();
    assert_eq!(snapshot.tenants.len(), 1, "{:?}", snapshot.tenants);
    assert_eq!(share(&snapshot, "victim"), 1.0);
}

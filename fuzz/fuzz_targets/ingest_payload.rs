//! Whole datagrams or bodies through both parsers into a store: never a
//! panic, every line counted, every stored figure finite.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tenantwatch::ingest::{LineLimits, ingest_payload};
use tenantwatch::store::{IngestStats, ManualClock, Source, Store, StoreLimits};

fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let limits = StoreLimits {
            max_tenants: 1000,
            tenant_idle_ttl: Duration::from_secs(3600),
            share_window: Duration::from_secs(60),
            max_endpoints_per_tenant: 20,
            max_instances: 500,
        };
        Store::new(1, limits, Arc::new(ManualClock::default()))
    })
}

fuzz_target!(|data: &[u8]| {
    let stats = IngestStats::default();
    let limits = LineLimits {
        max_line_bytes: 4096,
        min_sample_rate: 0.001,
    };
    let outcome = ingest_payload(
        data,
        limits,
        Source::Udp,
        &mut store().writer(0),
        &stats,
        |_, _| {},
    );
    assert_eq!(
        stats.received(Source::Udp),
        outcome.accepted + outcome.rejected
    );
    for tenant in store().snapshot().tenants {
        assert!(tenant.db_time_share.is_finite());
        for kind in tenant.kinds.iter().flatten() {
            assert!(kind.queries.is_finite() && kind.rows.is_finite());
            assert!(kind.duration_sum_ms.is_finite() && kind.errors.is_finite());
        }
    }
});

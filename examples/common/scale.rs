//! What the scale benchmarks (`bench_memory`, `bench_scale`) share: the
//! synthetic event they record for every tenant.

use std::borrow::Cow;

use tenantwatch::event::{Event, QueryKind, Sample};

/// The `i`-th event of `tenant`: durations spread over 0.3–50 ms, three
/// rows, one error in fifty.
pub fn event(tenant: &str, kind: QueryKind, i: usize) -> Event<'_> {
    Event {
        tenant: Cow::Borrowed(tenant),
        kind,
        sample: Sample::Query {
            duration_ms: (i % 500) as f64 / 10.0 + 0.3,
            rows: 3.0,
            error: i.is_multiple_of(50),
            weight: 1.0,
        },
        endpoint: None,
        instance: None,
    }
}

/// One detection interval over `snapshot`, at `at`, with no targets and a
/// base quota of 100 for every tenant; what it returns is dropped.
pub fn evaluate(
    detector: &mut tenantwatch::detect::Detector,
    snapshot: &tenantwatch::store::StoreSnapshot,
    at: std::time::Instant,
) {
    let transitions = detector.evaluate(
        at,
        std::time::SystemTime::now(),
        tenantwatch::detect::Observed {
            store: snapshot,
            targets: &[],
            pgbouncers: &[],
        },
        |_| 100.0,
    );
    drop(transitions);
}

//! DogStatsD lines: never a panic; every event emitted is finite and within
//! the documented bounds, its endpoint and instance valid label values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantwatch::event::{MAX_COUNT, MAX_DURATION_MS, Sample};
use tenantwatch::ingest::dogstatsd::parse_line;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_line(line, 0.001, |event| match event.sample {
        Sample::Query {
            duration_ms,
            rows,
            weight,
            ..
        } => {
            assert!((0.0..=MAX_DURATION_MS).contains(&duration_ms));
            assert!((0.0..=MAX_COUNT).contains(&rows));
            assert!((1.0..=1000.0 + 1e-9).contains(&weight), "weight {weight}");
        }
        Sample::Rows(n) | Sample::Errors(n) => {
            assert!(n.is_finite() && n >= 0.0 && n <= MAX_COUNT * 1000.0 + 1.0);
        }
        Sample::SchemaSwitch {
            duration_ms,
            weight,
        } => {
            assert!((0.0..=MAX_DURATION_MS).contains(&duration_ms));
            assert!((1.0..=1000.0 + 1e-9).contains(&weight), "weight {weight}");
        }
    });
    // Endpoint and instance, when given, are valid label values.
    let _ = parse_line(line, 0.001, |event| {
        for label in [&event.endpoint, &event.instance].into_iter().flatten() {
            assert!(
                tenantwatch::event::validate_label(label).is_ok(),
                "{label:?}"
            );
        }
    });
});

//! NDJSON events: never a panic; an accepted event is finite and bounded,
//! its endpoint and instance valid label values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantwatch::event::{MAX_COUNT, MAX_DURATION_MS, Sample};
use tenantwatch::ingest::ndjson::parse_line;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(event) = parse_line(line) {
        assert!(!event.tenant.is_empty());
        if let Sample::Query {
            duration_ms, rows, ..
        } = event.sample
        {
            assert!((0.0..=MAX_DURATION_MS).contains(&duration_ms));
            assert!((0.0..=MAX_COUNT).contains(&rows));
        }
        for label in [&event.endpoint, &event.instance].into_iter().flatten() {
            assert!(
                tenantwatch::event::validate_label(label).is_ok(),
                "{label:?}"
            );
        }
    }
});

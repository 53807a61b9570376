//! The read API's URL handling: paths to endpoints, percent-decoding
//! (percent-encoding's), and the tenant list's query string (form_urlencoded's). Never a panic; a parsed query is within
//! its documented bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantwatch::api::{MAX_LIMIT, parse_list_query, url_decode_path, url_encode};
use tenantwatch::http::Endpoint;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Endpoint::from_path(text);
    let decoded = url_decode_path(text);
    // Encoding then decoding gives the text back.
    assert_eq!(url_decode_path(&url_encode(&decoded)), decoded);
    if let Ok(query) = parse_list_query(Some(text), false) {
        assert!((1..=MAX_LIMIT).contains(&query.limit));
    }
});

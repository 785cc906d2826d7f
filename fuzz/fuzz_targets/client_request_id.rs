//! `x-ms-client-request-id` validation: true only for 1..=100 bytes of `A-Z a-z 0-9 - _ . :`,
//! and for every such value.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use scoregate::proxy::headers::valid_client_request_id;

fn allowed(b: &[u8]) -> bool {
    (1..=100).contains(&b.len())
        && b.iter().all(|c| {
            c.is_ascii_uppercase()
                || c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || b"-_.:".contains(c)
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = HeaderValue::from_bytes(data) else {
        assert!(!allowed(data), "an allowed id is a valid header value");
        return;
    };
    assert_eq!(valid_client_request_id(&v), allowed(data), "{data:?}");
});

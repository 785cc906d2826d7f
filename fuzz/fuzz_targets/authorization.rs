//! The `Authorization` parser. The input is split on `\n` into header values (those that are
//! valid header values; hyper refuses the others before we see them), all named
//! `authorization`.
#![no_main]

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use scoregate::auth::bearer;
use scoregate::error::AuthFailure;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for v in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(AUTHORIZATION, v);
        }
    }
    let values: Vec<&[u8]> = headers
        .get_all(AUTHORIZATION)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let result = bearer(&headers);
    match values.as_slice() {
        [] => assert_eq!(result, Err(AuthFailure::Missing)),
        [v] => match result {
            Ok(cred) => {
                assert!(v.len() > 7 && v[..6].eq_ignore_ascii_case(b"bearer") && v[6] == b' ');
                assert!(!cred.is_empty() && cred == cred.trim_ascii());
                // The credential is the value's own bytes after the scheme, not a copy.
                let start = cred.as_ptr() as usize - v.as_ptr() as usize;
                assert!(start >= 7 && start + cred.len() <= v.len());
                assert_eq!(v[7..].trim_ascii(), cred);
                // Round trip: `Bearer <cred>` gives the same credential.
                let mut again = HeaderMap::new();
                let mut line = b"Bearer ".to_vec();
                line.extend_from_slice(cred);
                again.insert(AUTHORIZATION, HeaderValue::from_bytes(&line).unwrap());
                assert_eq!(bearer(&again), Ok(cred));
            }
            Err(AuthFailure::Missing) => assert!(v.len() >= 7 && v[7..].trim_ascii().is_empty()),
            Err(AuthFailure::Malformed) => {}
            Err(other) => panic!("unexpected failure {other:?}"),
        },
        _ => assert_eq!(result, Err(AuthFailure::Malformed)),
    }
});

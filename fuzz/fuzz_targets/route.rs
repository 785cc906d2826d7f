//! The scoring path router, on any path bytes that are UTF-8 (hyper hands the router a `&str`).
//! What matches is exactly `/api/v1/service/<valid name>/score` or `.../swagger.json`, and every
//! such path matches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scoregate::route::{self, Endpoint};

const PREFIX: &str = "/api/v1/service/";

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    match route::parse(path) {
        Some(r) => {
            let suffix = match r.endpoint {
                Endpoint::Score => "/score",
                Endpoint::Swagger => "/swagger.json",
            };
            assert_eq!(path, format!("{PREFIX}{}{suffix}", r.service));
            assert!(route::valid_service_name(r.service));
        }
        None => {
            // The converse: a canonical path with a valid name is never refused.
            let canonical = path.strip_prefix(PREFIX).and_then(|rest| {
                rest.strip_suffix("/score")
                    .or_else(|| rest.strip_suffix("/swagger.json"))
            });
            if let Some(name) = canonical {
                assert!(!route::valid_service_name(name), "{path:?} must route");
            }
        }
    }
    if route::valid_service_name(path) {
        let b = path.as_bytes();
        assert!((3..=32).contains(&b.len()) && b[0].is_ascii_lowercase() && b[b.len() - 1] != b'-');
        assert!(
            b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        );
    }
});

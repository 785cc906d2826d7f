//! JWT pre-parse and verification on arbitrary credential bytes, for service `iris` with the
//! fixed keys of `scoregate_fuzz::tokens()`: header decode, `crit`, `kid` lookup, signature with
//! the pinned algorithm, claims. The cached and uncached paths must agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scoregate::error::AuthFailure;

fuzz_target!(|data: &[u8]| {
    let tokens = scoregate_fuzz::tokens();
    let uncached = tokens.verify_uncached(data).map(|_| ());
    if std::env::var_os("SCOREGATE_FUZZ_VERBOSE").is_some() {
        eprintln!("{:?} {}", uncached, String::from_utf8_lossy(data));
    }
    if let Err(e) = uncached {
        assert!(
            matches!(e, AuthFailure::InvalidToken | AuthFailure::ExpiredToken),
            "{e:?}"
        );
    }
    // A refused token is never cached, so the cached path gives the same answer.
    assert_eq!(tokens.verify(data).map(|_| ()), uncached);
});

//! JWKS documents (a trusted issuer's keys, from a file or an https URL) on arbitrary bytes, for
//! each algorithm an issuer may be configured with.
#![no_main]

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use scoregate::auth::issuers::parse_jwks;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the algorithm, so every document is tried with each of them.
    let Some((&pick, doc)) = data.split_first() else {
        return;
    };
    let alg = [
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::HS256,
        Algorithm::PS256,
    ][pick as usize % 4];
    if let Ok(keys) = parse_jwks(doc, alg, 7) {
        assert_eq!(keys.generation, 7);
        let _ = keys.key(None);
        let _ = keys.key(Some("kid"));
    }
});

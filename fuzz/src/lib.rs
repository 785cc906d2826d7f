//! Fixtures shared by the fuzz targets: the token verifier of the `jwt` target, built once per
//! process with fixed keys so that the committed seed tokens (`make_seeds.py`, same keys) reach
//! the signature and claims checks in every run, not only the header parse. The keys in this
//! folder are test keys for fuzzing and nothing else.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use scoregate::auth::issuers::TrustedIssuer;
use scoregate::auth::signer::{Signer, SigningSet};
use scoregate::auth::tokens::ServiceTokens;
use scoregate::config::{JwksSource, TokenAlgorithm, TrustedIssuerConfig};
use scoregate::crypto::Secret;
use scoregate::store::plan::generate_signing_key;

/// The service the tokens are checked for (their `aud`).
pub const SERVICE: &str = "iris";
/// `kid` of scoregate's own signing key (ES256, in force).
pub const ES_KID: &str = "fuzz-es256";
/// `kid` of a retired own key (HS256) that still verifies.
pub const HS_KID: &str = "fuzz-hs256";
/// base64url of the HS256 secret (32 bytes).
pub const HS_SECRET: &str = "c2NvcmVnYXRlLWZ1enotaHMyNTYtc2VjcmV0LTMyYg";
/// The external issuer (RS256, JWKS file with one key, kid `idp-rs`).
pub const IDP_ISSUER: &str = "https://idp.example/";
pub const IDP_AUDIENCE: &str = "api://scoring";

const ES_KEY: &str = include_str!("es256.key.pem");
const ES_PUB: &str = include_str!("es256.pub.pem");
const IDP_JWKS: &str = include_str!("idp.jwks.json");

/// The verifier for service `iris`: own keys (ES256 signing, HS256 retired) and one trusted
/// issuer read from a JWKS file. No URL issuer, so no tokio runtime is needed.
pub fn tokens() -> &'static ServiceTokens {
    static TOKENS: OnceLock<ServiceTokens> = OnceLock::new();
    TOKENS.get_or_init(|| {
        // The generator's record, with the fixed material swapped in.
        let mut es = generate_signing_key(TokenAlgorithm::ES256, 0).expect("ES256 key");
        es.kid = ES_KID.into();
        es.private = Secret::new(ES_KEY);
        es.public = ES_PUB.into();
        let mut hs = generate_signing_key(TokenAlgorithm::HS256, 0).expect("HS256 key");
        hs.kid = HS_KID.into();
        hs.private = Secret::new(HS_SECRET);
        hs.retired = Some(1);
        let signer = Arc::new(Signer::new(
            SigningSet::build(&[hs, es]).expect("signing set"),
        ));

        let jwks = std::env::temp_dir().join(format!("scoregate-fuzz-{}.jwks", std::process::id()));
        std::fs::write(&jwks, IDP_JWKS).expect("write JWKS file");
        let issuer = TrustedIssuer::load(&TrustedIssuerConfig {
            issuer: IDP_ISSUER.into(),
            audience: IDP_AUDIENCE.into(),
            algorithm: jsonwebtoken::Algorithm::RS256,
            jwks: JwksSource::File(jwks.clone()),
            // The seed tokens expire in 2100; a day's limit would refuse them before the claims
            // checks (the limit itself is one more check the fuzzer then reaches by mutating exp).
            max_token_lifetime: Duration::from_secs(200 * 365 * 86_400),
        })
        .expect("JWKS file loads");
        let _ = std::fs::remove_file(&jwks);

        let tokens = ServiceTokens::new(
            SERVICE,
            signer.clone(),
            vec![issuer],
            Duration::from_secs(30),
        );
        // The fixture works: a token the signer issues now verifies.
        let t = signer
            .issue(
                SERVICE,
                None,
                Duration::from_secs(600),
                Duration::from_secs(300),
            )
            .expect("issue")
            .access_token;
        tokens
            .verify_uncached(t.as_bytes())
            .expect("a fresh own token verifies");
        tokens
    })
}

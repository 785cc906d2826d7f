//! Trusted external issuers (`[[tokens.trusted_issuers]]`): their JWKS keys, from a file (read at
//! load, failing the start or reload) or an https URL (fetched in the background, refreshed
//! periodically and on an unknown `kid`, rate-limited). A refresh that fails keeps the previous
//! keys; one that succeeds replaces them whenever the document changed, including new material
//! under the same `kid`s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::config::{JwksSource, TrustedIssuerConfig};

/// JWKS URLs are refreshed this often in the background (identity providers rotate keys rarely
/// and publish new ones well ahead).
const JWKS_REFRESH: Duration = Duration::from_secs(10 * 60);
/// An unknown `kid` triggers a refetch at most this often per issuer (a flood of bogus tokens must
/// not turn into a flood of fetches).
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);
/// A JWKS document larger than this is refused.
pub const JWKS_MAX_BYTES: usize = 1024 * 1024;
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The keys of one JWKS document.
pub struct IssuerKeys {
    by_kid: HashMap<String, DecodingKey>,
    /// The only key, when the set has exactly one (tokens without `kid` may use it).
    single: Option<DecodingKey>,
    /// Bumped with every change of the document, so cached verdicts made with older keys lapse.
    pub generation: u64,
    /// SHA-256 of the document, to tell whether a refresh changed anything.
    digest: [u8; 32],
}

impl IssuerKeys {
    /// The key for a token's `kid` (or the only key, for a token without one).
    pub fn key(&self, kid: Option<&str>) -> Option<&DecodingKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None => self.single.as_ref(),
        }
    }
}

/// Parses a JWKS document, keeping the keys usable with `alg`. Errors say why in plain words.
pub fn parse_jwks(bytes: &[u8], alg: Algorithm, generation: u64) -> Result<IssuerKeys, String> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut by_kid = HashMap::new();
    let mut usable = Vec::new();
    for jwk in &set.keys {
        // A key that names another algorithm is not for us.
        if let Some(ka) = jwk.common.key_algorithm
            && ka.to_string() != format!("{alg:?}")
        {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        if let Some(kid) = &jwk.common.key_id {
            by_kid.insert(kid.clone(), key.clone());
        }
        usable.push(key);
    }
    if usable.is_empty() {
        return Err(format!("no usable {alg:?} key in the JWKS"));
    }
    let single = (usable.len() == 1).then(|| usable.pop().unwrap());
    Ok(IssuerKeys {
        by_kid,
        single,
        generation,
        digest: Sha256::digest(bytes).into(),
    })
}

/// An external identity provider whose tokens services may accept.
pub struct TrustedIssuer {
    pub config: TrustedIssuerConfig,
    keys: ArcSwap<IssuerKeys>,
    generations: AtomicU64,
    /// When an unknown `kid` last caused a refetch (the rate limit applies to those only).
    last_refetch: Mutex<Option<Instant>>,
}

impl TrustedIssuer {
    /// Loads an issuer. A JWKS file is read now (blocking: callers off the runtime), and an
    /// error fails the start or reload, keeping the previous keys. A URL issuer starts without
    /// keys; `start_refresh` fetches them.
    pub fn load(config: &TrustedIssuerConfig) -> Result<Arc<TrustedIssuer>, String> {
        let keys = match &config.jwks {
            JwksSource::File(p) => {
                let b = crate::files::read_capped(p, JWKS_MAX_BYTES as u64)
                    .map_err(|e| format!("JWKS file {}: {e}", p.display()))?;
                parse_jwks(&b, config.algorithm, 1)
                    .map_err(|e| format!("JWKS file {}: {e}", p.display()))?
            }
            JwksSource::Url(_) => IssuerKeys {
                by_kid: HashMap::new(),
                single: None,
                generation: 0,
                digest: [0; 32],
            },
        };
        Ok(Arc::new(TrustedIssuer {
            config: config.clone(),
            keys: ArcSwap::from_pointee(keys),
            generations: AtomicU64::new(1),
            last_refetch: Mutex::new(None),
        }))
    }

    /// Starts the background refresh of a URL issuer (on the current runtime); it ends once no
    /// snapshot holds the issuer any more.
    pub fn start_refresh(self: &Arc<Self>) {
        if matches!(self.config.jwks, JwksSource::Url(_)) {
            tokio::spawn(refresh_loop(Arc::downgrade(self)));
        }
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<IssuerKeys>> {
        self.keys.load()
    }

    pub fn generation(&self) -> u64 {
        self.keys.load().generation
    }

    /// Fetches the JWKS URL now; on failure the previous keys stay.
    async fn fetch(&self) {
        let JwksSource::Url(url) = &self.config.jwks else {
            return;
        };
        let result = tokio::time::timeout(JWKS_FETCH_TIMEOUT, fetch_url(url))
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r);
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        match result.and_then(|b| parse_jwks(&b, self.config.algorithm, generation)) {
            Ok(keys) => {
                if keys.digest != self.keys.load().digest {
                    tracing::info!(issuer = %self.config.issuer, kids = ?keys.by_kid.keys().collect::<Vec<_>>(), "JWKS loaded");
                    self.keys.store(Arc::new(keys));
                }
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, url = %url, error = %e, "JWKS fetch failed; keeping the previous keys")
            }
        }
    }

    /// An unknown `kid`: refetch in the background, at most once per `JWKS_MIN_REFETCH`.
    pub fn refetch_soon(self: &Arc<Self>) {
        // Before the first document arrived, the first fetch is still under way (or retrying).
        if !matches!(self.config.jwks, JwksSource::Url(_)) || self.generation() == 0 {
            return;
        }
        {
            let mut last = self.last_refetch.lock().unwrap();
            if last.is_some_and(|t| t.elapsed() < JWKS_MIN_REFETCH) {
                return;
            }
            *last = Some(Instant::now());
        }
        let me = self.clone();
        tokio::spawn(async move { me.fetch().await });
    }
}

async fn refresh_loop(issuer: std::sync::Weak<TrustedIssuer>) {
    loop {
        let Some(i) = issuer.upgrade() else { return };
        i.fetch().await;
        drop(i);
        tokio::time::sleep(JWKS_REFRESH).await;
    }
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;
type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

/// The plain-HTTP JWKS client (`allow_insecure_jwks`).
fn http_client() -> &'static HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http()
    })
}

/// The JWKS client: hyper-util's pooled client over rustls, with the system roots loaded once
/// for the process (on first use: most gateways never fetch a JWKS).
fn https_client() -> &'static HttpsClient {
    static CLIENT: OnceLock<HttpsClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::crypto::provider().clone())
            .with_safe_default_protocol_versions()
            .expect("the provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https)
    })
}

/// GETs a JWKS document (https, or http where the config allowed it).
async fn fetch_url(url: &str) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let req = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let sent = if https {
        https_client().request(req).await
    } else {
        http_client().request(req).await
    };
    let resp = sent.map_err(|e| crate::error::DisplayChain(&e).to_string())?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("HTTP {}", resp.status()));
    }
    Limited::new(resp.into_body(), JWKS_MAX_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("body: {e}"))
}

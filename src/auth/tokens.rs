//! Token auth: JWTs that scoregate issues for a service, or that a trusted external issuer signs.
//!
//! Verification is local and stateless (no call to anything else on the request path):
//! - the algorithm is pinned per key by config, never taken from the token (`alg: none` and
//!   RS/HS confusion fail), `kid` is only a lookup key (`jku`, `x5u`, embedded `jwk` are ignored);
//! - `exp` and `nbf` are checked with the configured leeway, `iss` and `aud` are required: tokens
//!   scoregate issues carry `iss = "scoregate"` and `aud = <service name>`, so a token for service
//!   A is refused on B;
//! - a verified token is cached per service under the SHA-256 of the token until its `exp`, so a
//!   repeated token costs a hash and a lookup, not a signature check. Caches belong to a snapshot
//!   (a reload starts empty ones) and remember which JWKS generation verified an entry (a JWKS
//!   refresh that changes keys invalidates entries verified with the old set).
//!
//! Signing keys live in `<state dir>/token-keys.json` (0600, atomic writes). A change of algorithm
//! mints a new key and `kid`; the old public key keeps verifying what it signed until those tokens
//! expire.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine;
use dashmap::DashMap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::keys::{StoreError, write_atomically};
use crate::config::{JwksSource, TokenAlgorithm, TrustedIssuerConfig};
use crate::error::AuthFailure;

/// `iss` of the tokens scoregate issues.
pub const OWN_ISSUER: &str = "scoregate";
pub const KEYS_FILE: &str = "token-keys.json";
/// Verified tokens kept per service; a client fleet rarely holds more live tokens than this,
/// and 10k entries are ~1 MiB. When full, expired entries are dropped, then new ones not cached.
const CACHE_CAPACITY: usize = 10_000;
/// JWKS URLs are refreshed this often in the background (identity providers rotate keys rarely
/// and publish new ones well ahead).
const JWKS_REFRESH: Duration = Duration::from_secs(10 * 60);
/// An unknown `kid` triggers a refetch at most this often per issuer (a flood of bogus tokens must
/// not turn into a flood of fetches).
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);
/// A JWKS document larger than this is refused.
const JWKS_MAX_BYTES: usize = 1024 * 1024;
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ------------------------------------------------------------------ signing keys

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    alg: String,
    created: u64,
    /// When a newer key replaced it; it keeps verifying until `retired + keep_for`.
    #[serde(default)]
    retired: Option<u64>,
    /// PKCS#8 PEM (ES256, RS256) or base64url secret (HS256).
    private: String,
    /// SPKI PEM (ES256, RS256); empty for HS256.
    #[serde(default)]
    public: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeysFile {
    keys: Vec<StoredKey>,
}

/// A key that verifies scoregate's own tokens.
#[derive(Clone)]
pub struct VerifyKey {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// The token signing keys of this gateway, persisted in the state dir.
pub struct Signer {
    path: PathBuf,
    keys: Mutex<Vec<StoredKey>>,
}

/// The admin API's token answer (contract §2).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expiry_on: u64,
    pub refresh_after: u64,
}

#[derive(Serialize, Deserialize)]
struct OwnClaims {
    iss: String,
    aud: String,
    iat: u64,
    nbf: u64,
    exp: u64,
}

fn generate(alg: TokenAlgorithm) -> Result<StoredKey, String> {
    let kid = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let (private, public) = match alg {
        TokenAlgorithm::HS256 => {
            let mut buf = [0u8; 32];
            crate::tls::provider()
                .secure_random
                .fill(&mut buf)
                .map_err(|e| format!("{e:?}"))?;
            (
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf),
                String::new(),
            )
        }
        TokenAlgorithm::ES256 | TokenAlgorithm::RS256 => {
            let sig = if alg == TokenAlgorithm::ES256 {
                &rcgen::PKCS_ECDSA_P256_SHA256
            } else {
                &rcgen::PKCS_RSA_SHA256
            };
            let kp = rcgen::KeyPair::generate_for(sig).map_err(|e| e.to_string())?;
            (kp.serialize_pem(), kp.public_key_pem())
        }
    };
    Ok(StoredKey {
        kid,
        alg: alg.as_str().into(),
        created: now_s(),
        retired: None,
        private,
        public,
    })
}

fn decoding_key(k: &StoredKey) -> Result<VerifyKey, String> {
    let alg = match k.alg.as_str() {
        "ES256" => Algorithm::ES256,
        "RS256" => Algorithm::RS256,
        "HS256" => Algorithm::HS256,
        other => return Err(format!("unknown algorithm {other}")),
    };
    let key = match alg {
        Algorithm::ES256 => DecodingKey::from_ec_pem(k.public.as_bytes()),
        Algorithm::RS256 => DecodingKey::from_rsa_pem(k.public.as_bytes()),
        _ => {
            let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&k.private)
                .map_err(|e| e.to_string())?;
            Ok(DecodingKey::from_secret(&secret))
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(VerifyKey { alg, key })
}

fn encoding_key(k: &StoredKey) -> Result<EncodingKey, String> {
    match k.alg.as_str() {
        "ES256" => EncodingKey::from_ec_pem(k.private.as_bytes()),
        "RS256" => EncodingKey::from_rsa_pem(k.private.as_bytes()),
        _ => {
            let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&k.private)
                .map_err(|e| e.to_string())?;
            Ok(EncodingKey::from_secret(&secret))
        }
    }
    .map_err(|e| e.to_string())
}

impl Signer {
    /// Opens the key file in `dir`, making a key for `alg` if there is none in force.
    /// `keep_for` is how long a retired key keeps verifying (token lifetime + leeway).
    pub fn open(dir: &Path, alg: TokenAlgorithm, keep_for: Duration) -> Result<Signer, StoreError> {
        let path = dir.join(KEYS_FILE);
        let io = |why: String| StoreError::Io {
            path: path.clone(),
            why,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| io(format!("cannot create the state dir: {e}")))?;
        let file: KeysFile = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| io(format!("unreadable: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeysFile::default(),
            Err(e) => return Err(io(format!("cannot read: {e}"))),
        };
        let signer = Signer {
            path,
            keys: Mutex::new(file.keys),
        };
        signer.ensure(alg, keep_for)?;
        Ok(signer)
    }

    /// Makes `alg` the signing algorithm: a new key (new `kid`) if the current one differs;
    /// retired keys past `keep_for` are dropped. Writes the file only when something changed.
    pub fn ensure(&self, alg: TokenAlgorithm, keep_for: Duration) -> Result<(), StoreError> {
        let mut keys = self.keys.lock().unwrap();
        let mut next = keys.clone();
        let now = now_s();
        let current_ok = next
            .iter()
            .any(|k| k.retired.is_none() && k.alg == alg.as_str());
        if !current_ok {
            for k in next.iter_mut().filter(|k| k.retired.is_none()) {
                k.retired = Some(now);
            }
            next.push(generate(alg).map_err(StoreError::Invalid)?);
        }
        next.retain(|k| k.retired.is_none_or(|r| r + keep_for.as_secs() >= now));
        let changed = next.len() != keys.len() || !current_ok;
        if changed {
            let bytes = serde_json::to_vec_pretty(&KeysFile { keys: next.clone() }).unwrap();
            write_atomically(&self.path, &bytes)?;
            if !current_ok {
                tracing::info!(algorithm = alg.as_str(), "new token signing key");
            }
            *keys = next;
        }
        Ok(())
    }

    /// Every key that verifies scoregate's tokens, by `kid`.
    pub fn verify_keys(&self) -> Result<HashMap<String, VerifyKey>, String> {
        let keys = self.keys.lock().unwrap();
        keys.iter()
            .map(|k| Ok((k.kid.clone(), decoding_key(k)?)))
            .collect()
    }

    /// Issues a token for `service`.
    pub fn issue(
        &self,
        service: &str,
        lifetime: Duration,
        refresh_after: Duration,
    ) -> Result<TokenResponse, String> {
        let key = {
            let keys = self.keys.lock().unwrap();
            keys.iter()
                .rev()
                .find(|k| k.retired.is_none())
                .cloned()
                .ok_or("no signing key in force")?
        };
        let mut header = Header::new(decoding_key(&key)?.alg);
        header.kid = Some(key.kid.clone());
        let now = now_s();
        let claims = OwnClaims {
            iss: OWN_ISSUER.into(),
            aud: service.into(),
            iat: now,
            nbf: now,
            exp: now + lifetime.as_secs(),
        };
        let token = jsonwebtoken::encode(&header, &claims, &encoding_key(&key)?)
            .map_err(|e| e.to_string())?;
        Ok(TokenResponse {
            access_token: token,
            token_type: "Bearer",
            expiry_on: claims.exp,
            refresh_after: now + refresh_after.as_secs(),
        })
    }
}

// ------------------------------------------------------------------ trusted issuers

/// The keys of one JWKS document.
struct IssuerKeys {
    by_kid: HashMap<String, DecodingKey>,
    /// The only key, when the set has exactly one (tokens without `kid` may use it).
    single: Option<DecodingKey>,
    generation: u64,
}

/// An external identity provider whose tokens services may accept.
pub struct TrustedIssuer {
    pub config: TrustedIssuerConfig,
    keys: ArcSwap<IssuerKeys>,
    generations: AtomicU64,
    /// When an unknown `kid` last caused a refetch (the rate limit applies to those only).
    last_refetch: Mutex<Option<Instant>>,
}

fn parse_jwks(bytes: &[u8], alg: Algorithm, generation: u64) -> Result<IssuerKeys, String> {
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
    })
}

impl TrustedIssuer {
    /// Loads an issuer. A JWKS file must load now (an error fails the start or reload, keeping
    /// the previous keys); a URL is fetched in the background and refreshed periodically.
    pub fn load(config: &TrustedIssuerConfig) -> Result<Arc<TrustedIssuer>, String> {
        let keys = match &config.jwks {
            JwksSource::File(p) => {
                let b = std::fs::read(p).map_err(|e| format!("JWKS file {}: {e}", p.display()))?;
                parse_jwks(&b, config.algorithm, 1)
                    .map_err(|e| format!("JWKS file {}: {e}", p.display()))?
            }
            JwksSource::Url(_) => IssuerKeys {
                by_kid: HashMap::new(),
                single: None,
                generation: 0,
            },
        };
        let issuer = Arc::new(TrustedIssuer {
            config: config.clone(),
            keys: ArcSwap::from_pointee(keys),
            generations: AtomicU64::new(1),
            last_refetch: Mutex::new(None),
        });
        if let JwksSource::Url(_) = &config.jwks {
            tokio::spawn(refresh_loop(Arc::downgrade(&issuer)));
        }
        Ok(issuer)
    }

    fn generation(&self) -> u64 {
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
                let old = self.keys.load();
                let same = old.by_kid.len() == keys.by_kid.len()
                    && keys.by_kid.keys().all(|k| old.by_kid.contains_key(k));
                if !same || old.generation == 0 {
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
    fn refetch_soon(self: &Arc<Self>) {
        if !matches!(self.config.jwks, JwksSource::Url(_)) {
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

/// GET a JWKS document over http or https (system roots).
async fn fetch_url(url: &str) -> Result<bytes::Bytes, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper_util::rt::TokioIo;
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("URL has no host")?.to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, uri.authority().unwrap().as_str())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = if https {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider().clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name =
            rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(c);
        s.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(c);
        s.send_request(req).await.map_err(|e| e.to_string())?
    };
    if resp.status() != http::StatusCode::OK {
        return Err(format!("HTTP {}", resp.status()));
    }
    Limited::new(resp.into_body(), JWKS_MAX_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("body: {e}"))
}

// ------------------------------------------------------------------ per-service verification

/// Which key set verified a cached token, so a changed JWKS invalidates the entry.
#[derive(Clone, Copy)]
enum Source {
    Own,
    Issuer { index: usize, generation: u64 },
}

/// A verified token's cache entry.
#[derive(Clone, Copy)]
pub struct CacheEntry {
    exp: u64,
    source: Source,
}

#[derive(Deserialize)]
struct Exp {
    exp: u64,
}

/// Token verification for one service (part of a snapshot).
pub struct ServiceTokens {
    audience: String,
    own: Arc<HashMap<String, VerifyKey>>,
    issuers: Vec<Arc<TrustedIssuer>>,
    leeway: u64,
    cache: DashMap<[u8; 32], CacheEntry>,
}

impl ServiceTokens {
    pub fn new(
        service: &str,
        own: Arc<HashMap<String, VerifyKey>>,
        issuers: Vec<Arc<TrustedIssuer>>,
        leeway: Duration,
    ) -> Self {
        ServiceTokens {
            audience: service.into(),
            own,
            issuers,
            leeway: leeway.as_secs(),
            cache: DashMap::new(),
        }
    }

    /// Verifies a token for this service: a cache hit, else a full check (then cached).
    pub fn verify(&self, token: &[u8]) -> Result<(), AuthFailure> {
        let hash: [u8; 32] = Sha256::digest(token).into();
        let now = now_s();
        if let Some(e) = self.cache.get(&hash) {
            let current = match e.source {
                Source::Own => true,
                Source::Issuer { index, generation } => {
                    self.issuers[index].generation() == generation
                }
            };
            if now < e.exp && current {
                return Ok(());
            }
        }
        let entry = self.verify_uncached(token)?;
        if entry.exp > now {
            if self.cache.len() >= CACHE_CAPACITY {
                self.cache.retain(|_, e| e.exp > now);
            }
            if self.cache.len() < CACHE_CAPACITY {
                self.cache.insert(hash, entry);
            }
        }
        Ok(())
    }

    /// The full check: signature with a pinned algorithm, `exp`/`nbf` with leeway, `iss`, `aud`.
    /// (The cache-miss path; public so the benchmarks can measure it.)
    pub fn verify_uncached(&self, token: &[u8]) -> Result<CacheEntry, AuthFailure> {
        let token = std::str::from_utf8(token).map_err(|_| AuthFailure::InvalidToken)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::InvalidToken)?;
        if let Some(kid) = &header.kid
            && let Some(k) = self.own.get(kid)
        {
            let v = self.validation(k.alg, OWN_ISSUER, &self.audience);
            let data = jsonwebtoken::decode::<Exp>(token, &k.key, &v).map_err(map_err)?;
            return Ok(CacheEntry {
                exp: data.claims.exp,
                source: Source::Own,
            });
        }
        let mut unknown_kid = Vec::new();
        for (index, issuer) in self.issuers.iter().enumerate() {
            let keys = issuer.keys.load();
            let key = match &header.kid {
                Some(kid) => keys.by_kid.get(kid),
                None => keys.single.as_ref(),
            };
            let Some(key) = key else {
                unknown_kid.push(issuer);
                continue;
            };
            let v = self.validation(
                issuer.config.algorithm,
                &issuer.config.issuer,
                &issuer.config.audience,
            );
            match jsonwebtoken::decode::<Exp>(token, key, &v) {
                Ok(data) => {
                    return Ok(CacheEntry {
                        exp: data.claims.exp,
                        source: Source::Issuer {
                            index,
                            generation: keys.generation,
                        },
                    });
                }
                Err(e) => return Err(map_err(e)),
            }
        }
        // Nobody knows this key: the issuer may have rotated; look again (rate-limited).
        for issuer in unknown_kid {
            issuer.refetch_soon();
        }
        Err(AuthFailure::InvalidToken)
    }

    fn validation(&self, alg: Algorithm, iss: &str, aud: &str) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[iss]);
        v.set_audience(&[aud]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.cache.len()
    }
}

fn map_err(e: jsonwebtoken::errors::Error) -> AuthFailure {
    match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthFailure::ExpiredToken,
        _ => AuthFailure::InvalidToken,
    }
}

/// Hex SHA-256 of a token, for logs that must identify a token without revealing it.
pub fn fingerprint(token: &[u8]) -> String {
    Sha256::digest(token)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("scoregate-tok-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn tokens_for(signer: &Signer, service: &str) -> ServiceTokens {
        ServiceTokens::new(
            service,
            Arc::new(signer.verify_keys().unwrap()),
            vec![],
            Duration::from_secs(0),
        )
    }

    #[test]
    fn each_algorithm_issues_and_verifies_and_binds_the_service() {
        for alg in [
            TokenAlgorithm::ES256,
            TokenAlgorithm::RS256,
            TokenAlgorithm::HS256,
        ] {
            let d = dir();
            let signer = Signer::open(&d, alg, Duration::from_secs(3600)).unwrap();
            let t = signer
                .issue("iris", Duration::from_secs(60), Duration::from_secs(45))
                .unwrap();
            let h = jsonwebtoken::decode_header(&t.access_token).unwrap();
            assert_eq!(format!("{:?}", h.alg), alg.as_str());
            assert!(h.kid.is_some());
            let iris = tokens_for(&signer, "iris");
            assert_eq!(iris.verify(t.access_token.as_bytes()), Ok(()));
            assert_eq!(iris.cached(), 1);
            assert_eq!(iris.verify(t.access_token.as_bytes()), Ok(()));
            let other = tokens_for(&signer, "other");
            assert_eq!(
                other.verify(t.access_token.as_bytes()),
                Err(AuthFailure::InvalidToken)
            );
            // The key survives a reopen.
            let again = Signer::open(&d, alg, Duration::from_secs(3600)).unwrap();
            assert_eq!(
                tokens_for(&again, "iris").verify(t.access_token.as_bytes()),
                Ok(())
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(d.join(KEYS_FILE))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
    }

    #[test]
    fn an_algorithm_change_mints_a_new_kid_and_old_tokens_keep_verifying() {
        let d = dir();
        let signer = Signer::open(&d, TokenAlgorithm::ES256, Duration::from_secs(3600)).unwrap();
        let old = signer
            .issue("iris", Duration::from_secs(60), Duration::from_secs(45))
            .unwrap();
        signer
            .ensure(TokenAlgorithm::RS256, Duration::from_secs(3600))
            .unwrap();
        let new = signer
            .issue("iris", Duration::from_secs(60), Duration::from_secs(45))
            .unwrap();
        let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
        assert_ne!(kid(&old.access_token), kid(&new.access_token));
        let v = tokens_for(&signer, "iris");
        assert_eq!(v.verify(old.access_token.as_bytes()), Ok(()));
        assert_eq!(v.verify(new.access_token.as_bytes()), Ok(()));
    }
}

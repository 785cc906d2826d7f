//! TLS: loading the operator's certificates and choosing one per handshake by SNI.
//!
//! Certificates are loaded and checked completely (chain present, key parses and matches the
//! leaf, the entry's CNAME is among the leaf's SANs, validity) before anything is published. The
//! resolver reads the current set from an `ArcSwap`, so a reload changes what new handshakes get
//! while established connections keep the certificate they were made with.
//!
//! Crypto provider: aws-lc-rs, chosen by measurement (README, "Crypto provider").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{CertificateConfig, TlsConfig};
use crate::crypto::provider;

/// Resumption cache entries (TLS 1.2 session ids / TLS 1.3 stateful fallback); tickets cover
/// most clients statelessly. 4096 entries × ~200 B is under 1 MiB.
const SESSION_CACHE_ENTRIES: usize = 4096;

/// One loaded certificate entry, ready to serve.
#[derive(Debug)]
pub struct LoadedCert {
    pub cname: String,
    /// DNS SANs of the leaf, lowercased; `*.x` entries are wildcards.
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Hex serial of the leaf (`01:ab:...`), for logs and tests.
    pub serial: String,
    pub chain_len: usize,
}

/// All certificates in force; the first is the default.
#[derive(Debug)]
pub struct CertStore {
    pub certs: Vec<LoadedCert>,
}

impl CertStore {
    /// The certificate for an SNI name: exact SAN match first, then a wildcard SAN, else the first.
    pub fn pick(&self, sni: Option<&str>) -> &LoadedCert {
        if let Some(name) = sni {
            if let Some(c) = self
                .certs
                .iter()
                .find(|c| c.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
            {
                return c;
            }
            if let Some(c) = self
                .certs
                .iter()
                .find(|c| c.names.iter().any(|n| wildcard_match(n, name)))
            {
                return c;
            }
        }
        &self.certs[0]
    }
}

/// One INFO line per certificate entry: which leaf is served (serial) and until when, so that an
/// operator sees in the log that a renewal took effect.
pub fn log_certificates(store: &CertStore, what: &str) {
    for c in &store.certs {
        tracing::info!(
            cname = %c.cname,
            serial = %c.serial,
            not_after = %humantime::format_rfc3339_seconds(c.not_after),
            "{what}"
        );
    }
}

/// `*.example.com` matches exactly one label in front of `example.com` (RFC 6125 §6.4.3).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    match name.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        None => false,
    }
}

fn san_matches(names: &[String], cname: &str) -> bool {
    names
        .iter()
        .any(|n| n.eq_ignore_ascii_case(cname) || wildcard_match(n, cname))
}

/// A certificate entry that cannot be served, and why.
#[derive(Debug, thiserror::Error)]
#[error("tls.certificates[{index}] ({cname}): {problem}")]
pub struct TlsError {
    pub index: usize,
    pub cname: String,
    pub problem: CertProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum CertProblem {
    #[error("no [[tls.certificates]] entry")]
    NoEntries,
    #[error("cannot read certificate file {}: {source}", .path.display())]
    ReadCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad PEM in certificate file {}: {why}", .path.display())]
    BadPem { path: PathBuf, why: String },
    #[error("certificate file {} holds no CERTIFICATE block (expected the full chain, leaf first)", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("cannot read key file {}: {source}", .path.display())]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {} is encrypted: scoregate needs a password-free key (see README, 'Using a real certificate')", .path.display())]
    EncryptedKey { path: PathBuf },
    #[error("key file {} holds no usable private key (PKCS#8, PKCS#1 RSA or SEC1 EC PEM)", .path.display())]
    NoKey { path: PathBuf },
    #[error("key file {}: this kind of key is not supported ({why})", .path.display())]
    UnsupportedKey { path: PathBuf, why: String },
    #[error("key file {} does not match the certificate in {} (their public keys differ)", .key.display(), .cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("certificate {}: cannot parse the leaf: {why}", .path.display())]
    BadLeaf { path: PathBuf, why: String },
    #[error("cname {cname:?} is not among the certificate's subject alternative names {names:?} (is {} the right leaf, first in the file?)", .path.display())]
    CnameNotInSans {
        cname: String,
        names: Vec<String>,
        path: PathBuf,
    },
    #[error("certificate {} {what} (tls.strict = true)", .path.display())]
    Validity { path: PathBuf, what: String },
}

/// Loads every certificate entry; any error fails the whole set (nothing half-loaded is served).
/// Blocking (file reads): callers on the runtime use `spawn_blocking`.
pub fn load_all(tls: &TlsConfig) -> Result<CertStore, TlsError> {
    if tls.certificates.is_empty() {
        return Err(TlsError {
            index: 0,
            cname: String::new(),
            problem: CertProblem::NoEntries,
        });
    }
    let mut certs = Vec::with_capacity(tls.certificates.len());
    for (index, entry) in tls.certificates.iter().enumerate() {
        let c = load_one(entry, tls.strict).map_err(|problem| TlsError {
            index,
            cname: entry.cname.clone(),
            problem,
        })?;
        certs.push(c);
    }
    Ok(CertStore { certs })
}

/// Every entry checked, each with its own verdict (for `scoregate check`, which reports all of
/// them, not only the first failing one).
pub fn check_each(tls: &TlsConfig) -> Vec<Result<LoadedCert, TlsError>> {
    tls.certificates
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            load_one(entry, tls.strict).map_err(|problem| TlsError {
                index,
                cname: entry.cname.clone(),
                problem,
            })
        })
        .collect()
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertProblem> {
    let bytes = crate::files::read_capped(path, crate::files::MAX_PEM_FILE).map_err(|source| {
        CertProblem::ReadCert {
            path: path.into(),
            source,
        }
    })?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| CertProblem::BadPem {
            path: path.into(),
            why: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertProblem::NoCertificate { path: path.into() });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertProblem> {
    let text =
        crate::files::read_text_capped(path, crate::files::MAX_PEM_FILE).map_err(|source| {
            CertProblem::ReadKey {
                path: path.into(),
                source,
            }
        })?;
    if text.contains("ENCRYPTED") {
        return Err(CertProblem::EncryptedKey { path: path.into() });
    }
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|_| CertProblem::NoKey { path: path.into() })
}

fn load_one(entry: &CertificateConfig, strict: bool) -> Result<LoadedCert, CertProblem> {
    let chain = read_chain(&entry.cert)?;
    let key = read_key(&entry.key)?;
    let signing_key =
        provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertProblem::UnsupportedKey {
                path: entry.key.clone(),
                why: e.to_string(),
            })?;
    let chain_len = chain.len();
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|_| CertProblem::KeyMismatch {
            key: entry.key.clone(),
            cert: entry.cert.clone(),
        })?;
    let (_, leaf) =
        x509_parser::parse_x509_certificate(certified.cert[0].as_ref()).map_err(|e| {
            CertProblem::BadLeaf {
                path: entry.cert.clone(),
                why: e.to_string(),
            }
        })?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.push(d.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string(),
                        16 => {
                            std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string()
                        }
                        _ => continue,
                    };
                    names.push(ip);
                }
                _ => {}
            }
        }
    }
    if !san_matches(&names, &entry.cname) {
        return Err(CertProblem::CnameNotInSans {
            cname: entry.cname.clone(),
            names,
            path: entry.cert.clone(),
        });
    }
    let ts = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let not_before = ts(leaf.validity().not_before.timestamp());
    let not_after = ts(leaf.validity().not_after.timestamp());
    let now = SystemTime::now();
    let problem = if now > not_after {
        Some(format!(
            "has expired ({})",
            humantime::format_rfc3339_seconds(not_after)
        ))
    } else if now < not_before {
        Some(format!(
            "is not valid yet (from {})",
            humantime::format_rfc3339_seconds(not_before)
        ))
    } else {
        None
    };
    if let Some(what) = problem {
        if strict {
            return Err(CertProblem::Validity {
                path: entry.cert.clone(),
                what,
            });
        }
        tracing::warn!(cname = %entry.cname, file = %entry.cert.display(), "certificate {what}");
    }
    Ok(LoadedCert {
        cname: entry.cname.clone(),
        names,
        serial: leaf.raw_serial_as_string(),
        key: Arc::new(certified),
        not_before,
        not_after,
        chain_len,
    })
}

/// Picks the certificate for each handshake from the current `CertStore`.
#[derive(Debug)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl SniResolver {
    pub fn new(store: CertStore) -> Self {
        SniResolver {
            store: ArcSwap::from_pointee(store),
        }
    }

    /// Makes a new set of certificates serve new handshakes.
    pub fn publish(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }

    pub fn current(&self) -> Arc<CertStore> {
        self.store.load_full()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.store.load().pick(hello.server_name()).key.clone())
    }
}

/// The rustls server config: TLS 1.2 and 1.3, ALPN h2 and http/1.1, session tickets.
/// Built once per process; certificate changes go through the resolver, so tickets and the
/// session cache survive reloads.
pub fn server_config(resolver: Arc<SniResolver>) -> Arc<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's cipher suite order (aws-lc-rs's: AES-GCM first, with hardware support)
    // rather than the client's.
    cfg.ignore_client_order = true;
    cfg.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer");
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 11, testssl): the client's cipher order was preferred.
    #[test]
    fn the_server_prefers_its_own_cipher_order() {
        let cfg = server_config(Arc::new(SniResolver::new(CertStore { certs: vec![] })));
        assert!(cfg.ignore_client_order);
        assert_eq!(cfg.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn wildcards_match_one_label() {
        assert!(wildcard_match("*.example.com", "a.example.com"));
        assert!(wildcard_match("*.example.com", "A.EXAMPLE.com"));
        assert!(!wildcard_match("*.example.com", "example.com"));
        assert!(!wildcard_match("*.example.com", "a.b.example.com"));
        assert!(!wildcard_match("*.example.com", ".example.com"));
        assert!(!wildcard_match("example.com", "example.com"));
    }
}

//! Throwaway certificate authorities and certificates (rcgen), for `scoregate demo` and tests.
//! Real deployments load the operator's certificate from PEM files (see `tls`).

use std::path::{Path, PathBuf};

#[cfg(test)]
use rustls_pki_types::pem::PemObject;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A self-signed CA that signs leaf certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// Options for a leaf certificate.
#[derive(Debug, Clone, Default)]
pub struct LeafOptions {
    /// RSA 2048 instead of ECDSA P-256.
    pub rsa: bool,
    pub serial: Option<u64>,
    /// Validity as (year, month, day) pairs; rcgen's defaults (1975..4096) when `None`.
    pub not_before: Option<(i32, u8, u8)>,
    pub not_after: Option<(i32, u8, u8)>,
    /// Valid from an hour ago for this long (overrides `not_before`/`not_after`).
    pub valid_for: Option<std::time::Duration>,
}

/// How long the demo's throwaway certificates are valid: long enough for any demo, short
/// enough that a leaked one soon stops mattering (Let's Encrypt's lifetime).
pub const DEMO_VALIDITY: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);

/// A leaf certificate with its chain and key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    /// Leaf first, then the CA: what `cert =` takes.
    pub chain_pem: String,
    /// PKCS#8.
    pub key_pem: String,
}

impl Ca {
    pub fn new(common_name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn leaf(&self, names: &[&str], opts: &LeafOptions) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().expect("DNS name")),
            })
            .collect();
        // Only what the key type needs: an ECDSA key only signs; an RSA key may also be used
        // for key encipherment (TLS 1.2 RSA key exchange, which rustls never offers, but
        // clients that check expect it).
        params.key_usages = if opts.rsa {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if let Some(s) = opts.serial {
            params.serial_number = Some(s.into());
        }
        if let Some((y, m, d)) = opts.not_before {
            params.not_before = rcgen::date_time_ymd(y, m, d);
        }
        if let Some((y, m, d)) = opts.not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        if let Some(valid) = opts.valid_for {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + valid;
        }
        let key = if opts.rsa {
            KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key")
        } else {
            KeyPair::generate().expect("EC key")
        };
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let cert_pem = cert.pem();
        Leaf {
            chain_pem: format!("{cert_pem}{}", self.cert_pem()),
            cert_pem,
            key_pem: key.serialize_pem(),
        }
    }
}

/// Paths of a written certificate set.
pub struct WrittenCert {
    pub ca: PathBuf,
    pub chain: PathBuf,
    pub key: PathBuf,
}

/// Writes `ca.pem`, `fullchain.pem` and `key.pem` (0600) for `names` into `dir`.
pub fn write_demo_certs(dir: &Path, names: &[&str]) -> std::io::Result<WrittenCert> {
    std::fs::create_dir_all(dir)?;
    let ca = Ca::new("scoregate demo CA (throwaway)");
    let leaf = ca.leaf(
        names,
        &LeafOptions {
            valid_for: Some(DEMO_VALIDITY),
            ..LeafOptions::default()
        },
    );
    let out = WrittenCert {
        ca: dir.join("ca.pem"),
        chain: dir.join("fullchain.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&out.ca, ca.cert_pem())?;
    std::fs::write(&out.chain, &leaf.chain_pem)?;
    crate::files::write_atomically(&out.key, leaf.key_pem.as_bytes())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 11, testssl): the demo certificate was valid until 4096 and an ECDSA
    /// leaf claimed key encipherment.
    #[test]
    fn demo_certificates_last_90_days_with_only_the_usages_their_key_needs() {
        let dir = std::env::temp_dir().join(format!("sg-demo-cert-{}", std::process::id()));
        let w = write_demo_certs(&dir, &["localhost"]).unwrap();
        let pem = crate::files::read_text_capped(&w.chain, crate::files::MAX_PEM_FILE).unwrap();
        let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let v = leaf.validity();
        let days = (v.not_after.timestamp() - v.not_before.timestamp()) / 86_400;
        assert!((89..=91).contains(&days), "{days} days");
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_encipherment());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

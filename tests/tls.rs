//! TLS: certificate loading (key forms, mismatches, empty chains, expiry) and SNI choice.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use scoregate::certgen::LeafOptions;
use scoregate::config::{AuthMode, CertificateConfig, Config};
use scoregate_testkit::*;

/// Accepts any certificate, so a test can look at what the server presents for any name.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        scoregate::crypto::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn serial_for(addr: std::net::SocketAddr, sni: Option<&str>) -> String {
    let mut cfg =
        rustls::ClientConfig::builder_with_provider(scoregate::crypto::provider().clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth();
    cfg.enable_sni = sni.is_some();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.unwrap_or("localhost").to_string()).unwrap();
    let tls = tokio::time::timeout(
        STEP,
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .unwrap()
    .unwrap();
    serial_of(tls.get_ref().1.peer_certificates().unwrap()[0].as_ref())
}

fn base_config(pki: &Pki, certs: Vec<CertificateConfig>) -> Config {
    let mut c = Config::new_in_code(
        "(test)",
        "127.0.0.1:0".parse().unwrap(),
        certs,
        tempdir("state"),
    );
    let _ = pki;
    c.services = vec![service(
        "iris",
        AuthMode::None,
        &["http://127.0.0.1:9".into()],
    )];
    c
}

#[tokio::test]
async fn sni_picks_the_certificate_by_san_and_the_first_is_the_default() {
    let pki = Pki::new();
    let (default, d) = pki.cert("localhost", &["localhost"], &LeafOptions::default());
    let (a, la) = pki.cert(
        "a.example.test",
        &["a.example.test", "alt.example.test"],
        &LeafOptions::default(),
    );
    let (w, lw) = pki.cert("api.wild.test", &["*.wild.test"], &LeafOptions::default());
    let gw = Gw::start(base_config(&pki, vec![default, a, w])).await;
    assert_eq!(
        serial_for(gw.addr, Some("a.example.test")).await,
        leaf_serial(&la)
    );
    assert_eq!(
        serial_for(gw.addr, Some("ALT.example.test")).await,
        leaf_serial(&la)
    );
    assert_eq!(
        serial_for(gw.addr, Some("x.wild.test")).await,
        leaf_serial(&lw)
    );
    assert_eq!(
        serial_for(gw.addr, Some("x.y.wild.test")).await,
        leaf_serial(&d),
        "a wildcard is one label"
    );
    assert_eq!(
        serial_for(gw.addr, Some("unknown.test")).await,
        leaf_serial(&d)
    );
    assert_eq!(serial_for(gw.addr, None).await, leaf_serial(&d));
    // And a verifying client gets a chain it trusts for each name.
    assert_eq!(
        presented_serial(&pki.client(), gw.addr, "a.example.test").await,
        leaf_serial(&la)
    );
    gw.stop().await;
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn pkcs8_pkcs1_and_sec1_keys_all_load_and_serve() {
    let pki = Pki::new();
    for (rsa, marker) in [
        (false, "BEGIN EC PRIVATE KEY"),
        (true, "BEGIN RSA PRIVATE KEY"),
    ] {
        let (mut entry, _) = pki.cert(
            "localhost",
            &["localhost"],
            &LeafOptions {
                rsa,
                ..Default::default()
            },
        );
        // As generated: PKCS#8.
        assert!(
            std::fs::read_to_string(&entry.key)
                .unwrap()
                .contains("BEGIN PRIVATE KEY")
        );
        let gw = Gw::start(base_config(&pki, vec![entry.clone()])).await;
        pki.client().connect(gw.addr, &[b"http/1.1"]).await;
        gw.stop().await;
        // The traditional form: SEC1 for EC, PKCS#1 for RSA.
        let trad = entry.key.with_extension("trad.pem");
        openssl(&[
            "pkey",
            "-in",
            p(&entry.key),
            "-traditional",
            "-out",
            p(&trad),
        ]);
        assert!(std::fs::read_to_string(&trad).unwrap().contains(marker));
        entry.key = trad;
        let gw = Gw::start(base_config(&pki, vec![entry])).await;
        pki.client().connect(gw.addr, &[b"http/1.1"]).await;
        gw.stop().await;
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn load_error(c: Config) -> String {
    match scoregate::tls::load_all(&c.tls) {
        Ok(_) => panic!("expected the certificate to be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_certificates_are_refused_at_load_with_a_clear_reason() {
    let pki = Pki::new();
    let (a, _) = pki.cert("localhost", &["localhost"], &LeafOptions::default());
    let (b, _) = pki.cert("localhost", &["localhost"], &LeafOptions::default());
    // Key of another certificate.
    let mismatched = CertificateConfig {
        key: b.key.clone(),
        ..a.clone()
    };
    assert!(load_error(base_config(&pki, vec![mismatched])).contains("does not match"));
    // Empty chain.
    let empty = pki.dir.join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").unwrap();
    let e = load_error(base_config(
        &pki,
        vec![CertificateConfig {
            cert: empty,
            ..a.clone()
        }],
    ));
    assert!(e.contains("no CERTIFICATE"), "{e}");
    // A certificate file given as the key.
    let e = load_error(base_config(
        &pki,
        vec![CertificateConfig {
            key: a.cert.clone(),
            ..a.clone()
        }],
    ));
    assert!(e.contains("no usable private key"), "{e}");
    // Missing file.
    let e = load_error(base_config(
        &pki,
        vec![CertificateConfig {
            cert: pki.dir.join("nope.pem"),
            ..a.clone()
        }],
    ));
    assert!(e.contains("nope.pem"), "{e}");
    // CNAME not among the SANs.
    let e = load_error(base_config(
        &pki,
        vec![CertificateConfig {
            cname: "other.test".into(),
            ..a.clone()
        }],
    ));
    assert!(
        e.contains("not among the certificate's subject alternative names"),
        "{e}"
    );
    // Encrypted key.
    let enc = pki.dir.join("enc.pem");
    openssl(&[
        "pkey",
        "-in",
        p(&a.key),
        "-aes256",
        "-passout",
        "pass:secret",
        "-out",
        p(&enc),
    ]);
    let e = load_error(base_config(
        &pki,
        vec![CertificateConfig {
            key: enc,
            ..a.clone()
        }],
    ));
    assert!(e.contains("encrypted"), "{e}");
}

#[test]
fn expired_or_future_leaf_warns_or_fails_when_strict() {
    let pki = Pki::new();
    let expired = LeafOptions {
        not_before: Some((2020, 1, 1)),
        not_after: Some((2021, 1, 1)),
        ..Default::default()
    };
    let future = LeafOptions {
        not_before: Some((2090, 1, 1)),
        not_after: Some((2091, 1, 1)),
        ..Default::default()
    };
    for (opts, word) in [(expired, "expired"), (future, "not valid yet")] {
        let (e, _) = pki.cert("localhost", &["localhost"], &opts);
        let mut c = base_config(&pki, vec![e]);
        assert!(
            scoregate::tls::load_all(&c.tls).is_ok(),
            "not strict: a warning only"
        );
        c.tls.strict = true;
        let err = load_error(c);
        assert!(err.contains(word), "{err}");
    }
}

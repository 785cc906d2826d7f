//! Which crypto provider makes the cheaper TLS server? Full handshakes (no resumption) and
//! resumed ones, in memory, timing only the server side's work, for aws-lc-rs and ring, with an
//! ECDSA P-256 and an RSA 2048 certificate. This is the measurement behind the README's
//! "Crypto provider" section. Run: `cargo bench --bench handshake`.
// Criterion timing measures real time outside any runtime.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use scoregate::certgen::{Ca, LeafOptions};

fn configs(
    provider: Arc<CryptoProvider>,
    rsa: bool,
    ca: &Ca,
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let leaf = ca.leaf(
        &["localhost"],
        &LeafOptions {
            rsa,
            ..Default::default()
        },
    );
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// One handshake; returns the time spent in the server's calls only.
fn handshake(server_cfg: &Arc<ServerConfig>, client_cfg: &Arc<ClientConfig>) -> Duration {
    let mut client = ClientConnection::new(
        client_cfg.clone(),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
    let mut server_time = Duration::ZERO;
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..10 {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let t = Instant::now();
        if !buf.is_empty() {
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets().unwrap();
        }
        let mut out = Vec::with_capacity(8192);
        while server.wants_write() {
            server.write_tls(&mut out).unwrap();
        }
        server_time += t.elapsed();
        if !out.is_empty() {
            let mut rd = &out[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets().unwrap();
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            break;
        }
    }
    assert!(!server.is_handshaking());
    server_time
}

fn benches(c: &mut Criterion) {
    let ca = Ca::new("bench CA");
    let providers: [(&str, Arc<CryptoProvider>); 2] = [
        (
            "aws-lc-rs",
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        ),
        ("ring", Arc::new(rustls::crypto::ring::default_provider())),
    ];
    for (name, p) in &providers {
        for (kind, rsa) in [("ECDSA P-256", false), ("RSA 2048", true)] {
            let (s, cl) = configs(p.clone(), rsa, &ca);
            c.bench_function(
                &format!("TLS 1.3 full handshake, server CPU, {kind}, {name}"),
                |b| b.iter_custom(|n| (0..n).map(|_| handshake(&s, &cl)).sum()),
            );
        }
    }
}

criterion_group! {
    name = handshake_benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    targets = benches
}
criterion_main!(handshake_benches);

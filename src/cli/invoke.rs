//! `scoregate invoke NAME --data JSON`: one scoring request through the gateway, as a client
//! sends it (like `az ml online-endpoint invoke`), with what the operator already has.
//!
//! - **Where**: `--url`, else the config's first listen address (an unspecified address via
//!   loopback) with the first certificate's `cname` as TLS server name and `Host` — so a name
//!   that does not resolve here yet (`scoring.example.com`) still works, as `curl --resolve`
//!   would — else (no config, or `--admin` without `--config`, as with `scoregate demo`) the
//!   `scoringUri` the admin API reports.
//! - **Trust**: `--ca`, else the system's roots plus the CA certificates in the config's first
//!   certificate file (`make-certs.sh` writes its CA there, after the leaf).
//! - **Credential**: `--key`, else from the admin API by the service's auth mode: the primary
//!   key (`listKeys`), a new token (`token`), or none.
//!
//! The status and `x-ms-request-id` go to stderr and the answer's body to stdout, so the body can
//! be piped; a non-2xx status exits 1.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::admin::call;
use super::args::{AdminOptions, GlobalArgs, InvokeArgs};
use super::{UsageError, path_segment};
use crate::config::Config;

/// The largest request body read from a file, and the largest answer read: Azure ML's (and the
/// gateway's default) body limit.
const MAX_BODY: u64 = crate::config::DEFAULT_MAX_BODY;
/// The header a request names its deployment in (contract §8).
const DEPLOYMENT_HEADER: &str = "azureml-model-deployment";

/// Where the request goes.
#[derive(Debug)]
struct Target {
    /// Tried in order until one connects.
    addrs: Vec<SocketAddr>,
    server_name: ServerName<'static>,
    /// `Host`: `name[:port]`.
    authority: String,
    path: String,
    /// The chain file whose CA certificates are trusted (from the config).
    chain: Option<PathBuf>,
}

pub fn run(args: InvokeArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let body = match (&args.data, &args.request_file) {
        (Some(d), _) => {
            serde_json::from_str::<serde::de::IgnoredAny>(d)
                .map_err(|e| UsageError(format!("--data is not JSON: {e}")))?;
            Bytes::from(d.clone())
        }
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin().take(MAX_BODY).read_to_end(&mut buf)?;
            Bytes::from(buf)
        }
        (None, Some(p)) => Bytes::from(
            crate::files::read_capped(p, MAX_BODY)
                .with_context(|| format!("cannot read --request-file {}", p.display()))?,
        ),
        (None, None) => {
            return Err(UsageError("give --data JSON or --request-file FILE".into()).into());
        }
    };
    let opts = args.admin.clone().with(global);
    // With --admin and no --config, the gateway is the one that admin API runs: a default config
    // file in this folder may describe another one.
    let config = if opts.config.explicit || opts.admin.is_none() {
        opts.config.load_if_present()?
    } else {
        None
    };
    let timeout = args.timeout;
    super::runtime()?.block_on(async {
        tokio::time::timeout(timeout, invoke(&args, &opts, config.as_ref(), body))
            .await
            .map_err(|_| {
                anyhow!(
                    "no answer within {} (--timeout)",
                    humantime::format_duration(timeout)
                )
            })?
    })
}

async fn invoke(
    args: &InvokeArgs,
    opts: &AdminOptions,
    config: Option<&Config>,
    body: Bytes,
) -> anyhow::Result<()> {
    let name = &args.name;
    // The service as the admin API sees it, when its auth mode or its scoring URI is needed.
    let admin = if args.key.is_none() || (args.url.is_none() && config.is_none()) {
        let client = opts.client(config, true)?;
        let info = call(
            &client,
            Method::GET,
            &format!("/v1/services/{}", path_segment(name)),
            None,
        )
        .await?;
        Some((client, info))
    } else {
        None
    };
    let target = match (&args.url, config, &admin) {
        (Some(u), _, _) => Target::from_url(u).await?,
        (None, Some(c), _) => Target::from_config(c, name)?,
        (None, None, Some((_, info))) => {
            let uri = info["scoringUri"]
                .as_str()
                .context("the admin API reports no scoringUri")?;
            Target::from_url(uri).await?
        }
        (None, None, None) => unreachable!("the admin API is asked when there is no config"),
    };
    let credential = match (&args.key, &admin) {
        (Some(k), _) => Some(k.clone()),
        (None, Some((client, info))) => match info["authMode"].as_str() {
            Some("key") => {
                let keys = call(
                    client,
                    Method::POST,
                    &format!("/v1/services/{}/listKeys", path_segment(name)),
                    None,
                )
                .await?;
                Some(field(&keys, "primaryKey")?)
            }
            Some("token") => {
                let t = call(
                    client,
                    Method::POST,
                    &format!("/v1/services/{}/token", path_segment(name)),
                    None,
                )
                .await?;
                Some(field(&t, "accessToken")?)
            }
            _ => None,
        },
        (None, None) => unreachable!("the admin API is asked when there is no --key"),
    };
    let tls = client_config(args.ca.as_deref(), target.chain.as_deref())?;
    let stream = connect(&target, tls).await?;

    let mut req = Request::builder()
        .method(Method::POST)
        .uri(&target.path)
        .header(header::HOST, &target.authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("scoregate-invoke/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(c) = &credential {
        let mut v = header::HeaderValue::from_str(&format!("Bearer {c}"))
            .map_err(|_| UsageError("the key is not a valid header value".into()))?;
        v.set_sensitive(true);
        req = req.header(header::AUTHORIZATION, v);
    }
    if let Some(d) = &args.deployment {
        let v = header::HeaderValue::from_str(d)
            .map_err(|_| UsageError(format!("--deployment {d:?} is not a valid header value")))?;
        req = req.header(DEPLOYMENT_HEADER, v);
    }
    let req = req.body(Full::new(body))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Ends with the command's runtime.
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .context("the gateway closed the connection without an answer")?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY as usize)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the answer: {e}"))?
        .to_bytes();
    let status = parts.status;
    eprintln!(
        "status: {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    eprintln!(
        "x-ms-request-id: {}",
        parts
            .headers
            .get("x-ms-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
    );
    {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&body);
        if !body.ends_with(b"\n") {
            let _ = out.write_all(b"\n");
        }
    }
    if !status.is_success() {
        bail!(
            "the gateway answered {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
    }
    Ok(())
}

fn field(v: &serde_json::Value, name: &str) -> anyhow::Result<String> {
    v[name]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("the admin API's answer lacks {name}"))
}

impl Target {
    /// A scoring URI: its host resolved here, and named as it is written.
    async fn from_url(url: &str) -> anyhow::Result<Target> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| UsageError(format!("{url:?} is not a URL")))?;
        if uri.scheme_str() != Some("https") {
            return Err(UsageError(format!("{url:?}: the scoring URI is https://")).into());
        }
        let authority = uri.authority().context("the URL has no host")?.clone();
        let host = authority.host().trim_matches(['[', ']']).to_string();
        let port = authority.port_u16().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .collect();
        Ok(Target {
            addrs,
            server_name: server_name(&host)?,
            authority: authority.to_string(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            chain: None,
        })
    }

    /// The gateway this config runs: its first listen address, named as its first certificate.
    fn from_config(config: &Config, service: &str) -> anyhow::Result<Target> {
        let mut addr = *config
            .listen
            .addresses
            .first()
            .context("the config has no listen address")?;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let cert = config.tls.certificates.first();
        let name = cert.map_or("localhost", |c| c.cname.as_str());
        let authority = match addr.port() {
            443 => name.to_string(),
            p => format!("{name}:{p}"),
        };
        Ok(Target {
            addrs: vec![addr],
            server_name: server_name(name)?,
            authority,
            path: format!("/api/v1/service/{}/score", path_segment(service)),
            chain: cert.map(|c| c.cert.clone()),
        })
    }
}

fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(host.to_string())
        .map_err(|_| anyhow!("{host:?} is not a valid TLS server name"))
}

/// `--ca` alone, or the system's roots and the CA certificates of the served chain.
fn client_config(
    ca: Option<&std::path::Path>,
    chain: Option<&std::path::Path>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = |p: &std::path::Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let bytes = crate::files::read_capped(p, crate::files::MAX_PEM_FILE)
            .with_context(|| format!("cannot read {}", p.display()))?;
        CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("{}: bad PEM: {e}", p.display()))
    };
    match ca {
        Some(p) => {
            let certs = pem(p)?;
            if certs.is_empty() {
                bail!("--ca {}: no CERTIFICATE in it", p.display());
            }
            for c in certs {
                roots.add(c).with_context(|| {
                    format!("--ca {}: not a usable CA certificate", p.display())
                })?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            // The leaf is never a trust anchor; what follows it in the served chain is the CA
            // (intermediate or root) the gateway presents itself.
            if let Some(Ok(certs)) = chain.map(pem) {
                for c in certs.into_iter().skip(1) {
                    let _ = roots.add(c);
                }
            }
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(crate::crypto::provider().clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

async fn connect(
    target: &Target,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut last = None;
    for a in &target.addrs {
        match TcpStream::connect(a).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return TlsConnector::from(tls)
                    .connect(target.server_name.clone(), tcp)
                    .await
                    .map_err(|e| tls_error(&e, target));
            }
            Err(e) => last = Some(anyhow!("cannot connect to the gateway at {a}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("{} has no address", target.authority)))
}

/// A TLS failure, with what to do about the common ones.
fn tls_error(e: &std::io::Error, target: &Target) -> anyhow::Error {
    let name = server_name_str(&target.server_name);
    let hint = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            "; the gateway's certificate is signed by a CA this client does not trust: pass --ca \
             FILE (the CA certificate, e.g. certs-example/out/ca.pem or the demo's CA cert)"
                .to_string()
        }
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "; the certificate is not valid for {name}: pass --url with a name among its SANs"
        ),
        _ => String::new(),
    };
    anyhow!("TLS handshake with {name} failed: {e}{hint}")
}

fn server_name_str(n: &ServerName<'_>) -> String {
    match n {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => "the gateway".into(),
    }
}

//! The bench's setup: where the load goes, which TLS roots it trusts, and the credential it sends.
//!
//! For `--target` that is a gateway already running; for the built-in run `Setup` owns a temp dir
//! (certificate and config), the built-in backend and the gateway as a child process
//! (`scoregate serve`), and removes all three when dropped — also on error, panic or Ctrl-C.
//! This is the only part of the bench that uses the gateway's library (certificate generation,
//! config validation, the crypto provider) and its admin client (readiness, a token).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, StatusCode, Uri};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::time::Instant;

use super::backend::BackendGuard;
use super::insecure::NoVerify;
use super::procfs::cpu_ticks;
use super::{AuthKind, BenchArgs, KEY1, KEY2};
use crate::admin_client::{AdminClient, RawResponse};

const SERVICE: &str = "iris";
/// Built-in gateway: how long it may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// One admin call (a readiness poll, the token): the gateway is local and answers in milliseconds.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the load goes.
pub(super) struct Target {
    pub(super) url: String,
    pub(super) addr: SocketAddr,
    pub(super) authority: http::uri::Authority,
    pub(super) path: http::uri::PathAndQuery,
    pub(super) server_name: ServerName<'static>,
}

pub(super) enum Verify {
    Roots(Arc<rustls::RootCertStore>),
    Insecure,
}

pub(super) struct Setup {
    pub(super) target: Target,
    pub(super) verify: Verify,
    pub(super) auth: Option<HeaderValue>,
    pub(super) auth_label: &'static str,
    pub(super) gateway_label: String,
    pub(super) gateway_pid: Option<u32>,
    pub(super) backend_tid: Option<u32>,
    /// Built-in: the scoring requests the backend got (live ones and mirrored copies).
    pub(super) backend_counts: Option<Arc<super::backend::Counts>>,
    /// Built-in: the gateway's admin address (its `/metrics`).
    pub(super) admin: Option<SocketAddr>,
    // Dropped in this order: the gateway is killed, then the backend stops, then the files go.
    _child: Option<ChildGuard>,
    /// With `--store`: the config whose Redis prefix is purged after the run.
    store: Option<crate::config::Config>,
    _backend: Option<BackendGuard>,
    _dir: Option<TempDir>,
}

impl Setup {
    /// A gateway that is already running.
    pub(super) async fn external(args: &BenchArgs, url: &str) -> anyhow::Result<Setup> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--target {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            bail!("--target must be an https:// URL");
        }
        if args.store.is_some() {
            bail!(
                "--store configures the built-in gateway: a --target gateway has its own [state]"
            );
        }
        if args.deployments != 1 || args.mirror.is_some() {
            bail!(
                "--deployments and --mirror configure the built-in gateway: a --target gateway has its own deployments"
            );
        }
        let authority = uri.authority().context("--target has no host")?.clone();
        let host = authority.host().trim_matches(['[', ']']).to_string();
        let port = authority.port_u16().unwrap_or(443);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let sni = args.sni.clone().unwrap_or(host);
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|_| anyhow!("{sni:?} is not a valid TLS server name"))?;
        let verify = if args.insecure {
            Verify::Insecure
        } else if let Some(ca) = &args.ca {
            Verify::Roots(Arc::new(roots_from_pem(ca)?))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            Verify::Roots(Arc::new(roots))
        };
        let given = [
            args.key.is_some(),
            args.key_file.is_some(),
            args.token_file.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            bail!("give at most one of --key, --key-file, --token-file");
        }
        let (credential, auth_label) = if let Some(k) = &args.key {
            (Some(k.clone()), "key")
        } else if let Some(f) = &args.key_file {
            (Some(read_trimmed(f)?), "key")
        } else if let Some(f) = &args.token_file {
            (Some(read_trimmed(f)?), "token")
        } else {
            (None, "none")
        };
        let gateway_label = match args.pid {
            Some(pid) => {
                if cpu_ticks(pid).is_none() {
                    bail!("--pid {pid}: no such process (or /proc is not readable)");
                }
                format!("gateway pid {pid}")
            }
            None => "running gateway, no --pid: CPU and RSS not measured".into(),
        };
        Ok(Setup {
            target: Target {
                url: url.to_string(),
                addr,
                authority,
                path,
                server_name,
            },
            verify,
            auth: credential.map(|c| bearer(&c)).transpose()?,
            auth_label,
            gateway_label,
            gateway_pid: args.pid,
            backend_tid: None,
            backend_counts: None,
            admin: None,
            _child: None,
            store: None,
            _backend: None,
            _dir: None,
        })
    }

    /// Throwaway certificate, built-in backend, and the gateway as a child process.
    pub(super) async fn builtin(args: &BenchArgs) -> anyhow::Result<Setup> {
        let dir = TempDir::new()?;
        let state = match &args.store {
            None => "[state]\ndir = \"state\"\n".to_string(),
            Some(url) => {
                // Files, not the config, hold the URL (it may carry a password) and the key.
                write_private(&dir.0.join("redis-url"), url)?;
                write_private(&dir.0.join("seal-key"), &crate::crypto::generate_key())?;
                // With a shared store the gateway never makes its admin token.
                write_private(&dir.0.join("admin-token"), &crate::crypto::generate_key())?;
                format!(
                    "[state]\ndir = \"state\"\nstore = \"redis\"\n\n[state.redis]\nurl_file = \"redis-url\"\nsecret_key_file = \"seal-key\"\nprefix = \"scoregate-bench-{}-{}:\"\n",
                    std::process::id(),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                )
            }
        };
        let certs = crate::certgen::write_demo_certs(&dir.0.join("certs"), &["localhost"])?;
        let backend = BackendGuard::start(
            usize::from(args.deployments) + usize::from(args.mirror.is_some()),
        )?;
        let deployments = deployments_toml(args, &backend.addrs);
        let (port, admin_port) = free_ports()?;
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let auth = match args.auth {
            AuthKind::Key => "key",
            AuthKind::Token => "token",
        };
        let keys = match args.auth {
            AuthKind::Key => format!("primary_key = \"{KEY1}\"\nsecondary_key = \"{KEY2}\"\n"),
            AuthKind::Token => String::new(),
        };
        let toml = format!(
            r#"# Written by `scoregate bench` for one run; removed with its folder afterwards.
[listen]
address = "127.0.0.1:{port}"

[[tls.certificates]]
cname = "localhost"
cert = "certs/fullchain.pem"
key = "certs/key.pem"

[admin]
address = "{admin_addr}"
token_file = "admin-token"

{state}
[runtime]
worker_threads = {threads}

[server]
drain_timeout = "1s"

[log]
access = {access}

[[service]]
name = "{SERVICE}"
auth = "{auth}"
max_body = "1MiB"
{keys}{deployments}{rate_limit}"#,
            threads = args.gateway_threads,
            access = args.access_log,
            rate_limit = if args.rate_limit {
                "\n[[service.rate_limit]]\nby = \"client\"\nrequests = 1000000\nper = \"1s\"\nburst = 1000\n"
            } else {
                ""
            },
        );
        let config_path = dir.0.join("scoregate.toml");
        let config = crate::config::Config::parse(&toml, &config_path).map_err(|e| {
            if args.store.is_some() {
                anyhow!("--store: {e}")
            } else {
                anyhow!("the bench's own gateway config is invalid: {e}")
            }
        })?;
        std::fs::write(&config_path, &toml)?;
        let log_path = dir.0.join("gateway.log");
        let log = std::fs::File::create(&log_path)?;
        let exe = std::env::current_exe().context("cannot find the scoregate binary")?;
        let child = std::process::Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} serve", exe.display()))?;
        let mut child = ChildGuard(child);
        let pid = child.0.id();
        wait_ready(admin_addr, &mut child, &log_path).await?;
        let credential = match args.auth {
            AuthKind::Key => KEY1.to_string(),
            AuthKind::Token => {
                let admin_token = read_trimmed(&dir.0.join("admin-token"))?;
                let RawResponse { status, body, .. } =
                    AdminClient::for_addr(admin_addr, Some(admin_token))
                        .with_timeout(ADMIN_TIMEOUT)
                        .send(
                            Method::POST,
                            &format!("/v1/services/{SERVICE}/token"),
                            Bytes::new(),
                        )
                        .await?;
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                match v["accessToken"].as_str() {
                    Some(t) if status.is_success() => t.to_string(),
                    _ => bail!(
                        "the gateway's admin API gave no token ({status}): {}",
                        String::from_utf8_lossy(&body)
                    ),
                }
            }
        };
        let threads = if args.gateway_threads == 0 {
            "one worker thread per core".to_string()
        } else {
            format!("{} worker thread(s)", args.gateway_threads)
        };
        let sni = args.sni.clone().unwrap_or_else(|| "localhost".into());
        Ok(Setup {
            target: Target {
                url: format!("https://localhost:{port}/api/v1/service/{SERVICE}/score"),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                authority: format!("localhost:{port}").parse()?,
                path: format!("/api/v1/service/{SERVICE}/score").parse()?,
                server_name: ServerName::try_from(sni.clone())
                    .map_err(|_| anyhow!("{sni:?} is not a valid TLS server name"))?,
            },
            verify: Verify::Roots(Arc::new(roots_from_pem(&certs.ca)?)),
            auth: Some(bearer(&credential)?),
            auth_label: auth,
            gateway_label: format!(
                "built-in gateway pid {pid}, {threads}, {} store{}",
                if args.store.is_some() {
                    "redis"
                } else {
                    "file"
                },
                match (args.deployments, args.mirror) {
                    (1, None) => String::new(),
                    (n, None) => format!(", {n} deployments"),
                    (n, Some(p)) => format!(", {n} deployment(s) + a {p} % mirror"),
                }
            ),
            gateway_pid: Some(pid),
            backend_tid: backend.tid,
            backend_counts: Some(backend.counts.clone()),
            admin: Some(admin_addr),
            _child: Some(child),
            store: args.store.is_some().then_some(config),
            _backend: Some(backend),
            _dir: Some(dir),
        })
    }
}

impl Setup {
    /// Stops the built-in gateway and, with `--store`, deletes its keys from Redis; a note for
    /// the report if that failed (the prefix is named so that it can be deleted by hand).
    pub(super) async fn finish(mut self) -> Option<String> {
        drop(self._child.take());
        let config = self.store.take()?;
        match crate::store::admin::purge(&config).await {
            Ok(_) => None,
            Err(e) => Some(format!(
                "the bench's keys under {:?} were not deleted from Redis: {e}",
                match &config.store {
                    crate::config::StoreConfig::Redis(r) => r.prefix.as_str(),
                    crate::config::StoreConfig::File => "",
                }
            )),
        }
    }
}

/// The service's backends in the built-in config: `backends = [...]` for one deployment (the
/// shape of every run before `--deployments`, so its numbers stay comparable), else blue and
/// green split 50/50 and, with `--mirror`, a `candidate` deployment that gets the copies. Each
/// deployment has its own port of the built-in backend (a URL may be in one deployment only).
fn deployments_toml(args: &BenchArgs, addrs: &[SocketAddr]) -> String {
    if args.deployments == 1 && args.mirror.is_none() {
        return format!("backends = [\"http://{}\"]\n", addrs[0]);
    }
    let names: &[&str] = if args.deployments == 1 {
        &["blue"]
    } else {
        &["blue", "green"]
    };
    let share = 100 / names.len();
    let mut traffic: Vec<String> = names.iter().map(|n| format!("{n} = {share}")).collect();
    let mut out = String::new();
    if let Some(p) = args.mirror {
        traffic.push("candidate = 0".into());
        out.push_str(&format!("mirror_traffic = {{ candidate = {p} }}\n"));
    }
    out.insert_str(0, &format!("traffic = {{ {} }}\n", traffic.join(", ")));
    let all = names
        .iter()
        .copied()
        .chain(args.mirror.map(|_| "candidate"));
    for (name, addr) in all.zip(addrs) {
        out.push_str(&format!(
            "\n[[service.deployment]]\nname = \"{name}\"\nbackends = [\"http://{addr}\"]\n"
        ));
    }
    out
}

impl Setup {
    /// Built-in gateway: `scoregate_mirror_requests_total` of the service by `result` (every
    /// result the gateway exposes, 0s included), read from its `/metrics`.
    pub(super) async fn mirror_results(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let admin = self.admin.context("no built-in gateway")?;
        let RawResponse { status, body, .. } = AdminClient::for_addr(admin, None)
            .with_timeout(ADMIN_TIMEOUT)
            .send(Method::GET, "/metrics", Bytes::new())
            .await?;
        if !status.is_success() {
            bail!("the gateway's /metrics answered {status}");
        }
        Ok(mirror_results(&String::from_utf8_lossy(&body)))
    }
}

/// The `result` label and value of every `scoregate_mirror_requests_total` line of the bench's
/// service in a Prometheus text exposition.
fn mirror_results(text: &str) -> Vec<(String, u64)> {
    let service = format!("service=\"{SERVICE}\"");
    text.lines()
        .filter_map(|l| l.strip_prefix("scoregate_mirror_requests_total{"))
        .filter_map(|l| {
            let (labels, value) = l.split_once("} ")?;
            if !labels.split(',').any(|x| x == service) {
                return None;
            }
            let result = labels
                .split(',')
                .find_map(|x| x.strip_prefix("result=\""))?
                .strip_suffix('"')?;
            Some((result.to_string(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// Writes a file only its owner can read (the Redis URL may hold a password).
fn write_private(p: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .with_context(|| format!("cannot write {}", p.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn bearer(credential: &str) -> anyhow::Result<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {credential}"))
        .context("the credential is not a valid header value")?;
    v.set_sensitive(true);
    Ok(v)
}

fn read_trimmed(p: &Path) -> anyhow::Result<String> {
    Ok(
        crate::files::read_text_capped(p, crate::files::MAX_SMALL_FILE)
            .with_context(|| format!("cannot read {}", p.display()))?
            .trim()
            .to_string(),
    )
}

fn roots_from_pem(p: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let pem = crate::files::read_capped(p, crate::files::MAX_PEM_FILE)
        .with_context(|| format!("cannot read {}", p.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.with_context(|| format!("{}: bad PEM", p.display()))?)?;
    }
    if roots.is_empty() {
        bail!("{}: no certificate in it", p.display());
    }
    Ok(roots)
}

/// Two distinct free loopback ports (bound together, then released for the child to take).
fn free_ports() -> std::io::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// Polls the admin API's `/readyz` until 200; fails early if the child exits.
async fn wait_ready(admin: SocketAddr, child: &mut ChildGuard, log: &Path) -> anyhow::Result<()> {
    let admin = AdminClient::for_addr(admin, None).with_timeout(ADMIN_TIMEOUT);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.0.try_wait()? {
            bail!(
                "the gateway exited at start ({status}); its log:\n{}",
                log_tail(log)
            );
        }
        if let Ok(r) = admin.send(Method::GET, "/readyz", Bytes::new()).await
            && r.status == StatusCode::OK
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the gateway was not ready within {}s; its log:\n{}",
                READY_TIMEOUT.as_secs(),
                log_tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_tail(p: &Path) -> String {
    let s = crate::files::read_text_capped(p, crate::files::MAX_STORE_FILE).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The child gateway: killed (and reaped) when dropped, also on error, panic or Ctrl-C.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temp dir removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let d = std::env::temp_dir().join(format!(
            "scoregate-bench-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&d)?;
        Ok(TempDir(d))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The load generator's TLS client: the trusted roots (or, with `--insecure`, no verification),
/// one ALPN protocol, and session resumption on or off.
pub(super) fn client_config(
    verify: &Verify,
    alpn: &[u8],
    resumption: bool,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = crate::crypto::provider().clone();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?;
    let mut cfg = match verify {
        Verify::Roots(r) => builder.with_root_certificates(r.clone()),
        Verify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider))),
    }
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    if !resumption {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let argv = std::iter::once("bench").chain(extra.iter().copied());
        <Cli as clap::Parser>::parse_from(argv).bench
    }

    /// The built-in service's deployments parse as a valid config: one `backends` service by
    /// default, blue/green 50/50, and a candidate that gets the mirror share.
    #[test]
    fn built_in_deployments_are_a_valid_config() {
        let addrs: Vec<SocketAddr> = (1..=3)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], 5000 + p)))
            .collect();
        for (extra, deployments, mirror) in [
            (&[][..], vec!["default"], None),
            (&["--deployments", "2"][..], vec!["blue", "green"], None),
            (
                &["--deployments", "2", "--mirror", "10"][..],
                vec!["blue", "green", "candidate"],
                Some(10),
            ),
            (&["--mirror", "5"][..], vec!["blue", "candidate"], Some(5)),
        ] {
            let toml = format!(
                "[listen]\naddress = \"127.0.0.1:1\"\n[[tls.certificates]]\ncname = \"localhost\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n[[service]]\nname = \"{SERVICE}\"\nauth = \"none\"\n{}",
                deployments_toml(&args(extra), &addrs)
            );
            let c = crate::config::Config::parse(&toml, Path::new("bench.toml"))
                .unwrap_or_else(|e| panic!("{extra:?}: {e}\n{toml}"));
            let svc = c.service(SERVICE).unwrap();
            assert_eq!(svc.deployment_names(), deployments, "{extra:?}");
            assert_eq!(
                svc.mirror_traffic.get("candidate").copied(),
                mirror,
                "{extra:?}"
            );
            if deployments.len() > 1 {
                assert_eq!(svc.traffic.values().sum::<u8>(), 100, "{extra:?}");
            }
        }
    }

    #[test]
    fn mirror_results_are_read_from_the_metrics_text() {
        let text = "# TYPE scoregate_mirror_requests_total counter\n\
scoregate_mirror_requests_total{deployment=\"candidate\",result=\"same\",service=\"iris\"} 12\n\
scoregate_mirror_requests_total{deployment=\"candidate\",result=\"error\",service=\"iris\"} 0\n\
scoregate_mirror_requests_total{deployment=\"x\",result=\"same\",service=\"other\"} 5\n";
        assert_eq!(
            mirror_results(text),
            [("same".to_string(), 12), ("error".to_string(), 0)]
        );
    }
}

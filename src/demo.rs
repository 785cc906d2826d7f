//! `scoregate demo`: a complete local setup with no files needed — a throwaway CA and `localhost`
//! certificate in a temp dir, the built-in sample model, the gateway on 127.0.0.1:8443 — and a
//! curl command and CLI commands (`keys list`, `invoke`) that work when pasted.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{AuthMode, CertificateConfig, Config, DeploymentConfig, ServiceConfig};
use crate::sample_model::Model;
use crate::server::announce::{program, shell_word};

pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// The demo's temp dir (throwaway keys and certificates): removed when the demo ends, however
/// it ends — also when it cannot start.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo until Ctrl-C (or SIGTERM), then stops cleanly and removes its temp dir.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let tmp = TempDir(std::env::temp_dir().join(format!("scoregate-demo-{}", std::process::id())));
    let dir = tmp.0.clone();
    let certs = crate::certgen::write_demo_certs(&dir.join("certs"), &["localhost", "127.0.0.1"])?;
    let model = crate::sample_model::spawn().await?;
    // A second deployment, a slightly different ("retrained") model: live weight 0, half of the
    // live requests mirrored to it and compared (contract §8).
    let candidate = crate::sample_model::spawn_model(Model::Retrained).await?;
    let mut config = Config::new_in_code(
        "(demo)",
        opts.listen,
        vec![CertificateConfig {
            cname: "localhost".into(),
            cert: certs.chain.clone(),
            key: certs.key.clone(),
        }],
        dir.join("state"),
    );
    config.admin.address = opts.admin;
    let mut iris = ServiceConfig::new("iris", AuthMode::Key, vec![]).with_deployments(
        vec![
            DeploymentConfig::new("blue", vec![format!("http://{model}").parse()?]),
            DeploymentConfig::new("green", vec![format!("http://{candidate}").parse()?]),
        ],
        &[("blue", 100)],
    );
    iris.mirror_traffic = [("green".to_string(), 50)].into();
    config.services.push(iris);
    let drain = config.server.drain_timeout;
    let server = crate::server::start(config).await.map_err(|e| {
        if e.to_string().contains("cannot listen on") {
            e.context(format!(
                "is another scoregate demo running? Pick another port: scoregate demo --listen 127.0.0.1:{}",
                opts.listen.port().wrapping_add(1).max(1024)
            ))
        } else {
            e
        }
    })?;
    let keys = server.shared.keys("iris")?;
    let port = server.addrs[0].port();
    let uri = format!("https://localhost:{port}/api/v1/service/iris/score");
    let word = |p: &std::path::Path| shell_word(&p.display().to_string());
    let ca = word(&certs.ca);
    let admin_flags = format!(
        "--admin http://{} --admin-token-file {}",
        server.admin_addr,
        word(&server.shared.snapshot().config.admin.token_file)
    );
    let program = shell_word(&program());
    println!(
        r#"
scoregate demo is running (Ctrl-C to stop)

  scoring URI   {uri}
  primary key   {primary}
  secondary key {secondary}
  CA cert       {ca}
  deployments   blue: built-in iris classifier (logistic regression) at http://{model}, 100 % of live traffic
                green: a retrained variant at http://{candidate}, 50 % of live requests mirrored to it
  admin API     http://{admin}  (token in {token})

Score two flowers:

  curl --cacert {ca} \
    -H "Authorization: Bearer {primary}" \
    -H "Content-Type: application/json" \
    -d '{{"data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}}' \
    {uri}

Or with the CLI (the keys, then a scoring call that fetches a key itself):

  {program} keys list iris {admin_flags}
  {program} invoke iris {admin_flags} --ca {ca} \
    --data '{{"data": [[5.1, 3.5, 1.4, 0.2]]}}'

Roll out green (see README, "Rolling out a new model"): try it with a pinned request, read how
its mirrored answers compare, then give it live traffic (or take it back):

  curl --cacert {ca} -H "Authorization: Bearer {primary}" -H "azureml-model-deployment: green" \
    -H "Content-Type: application/json" -d '{{"data": [[6.0, 2.9, 4.5, 1.5]]}}' {uri}
  curl -s http://{admin}/metrics | grep scoregate_mirror_
  {program} traffic iris {admin_flags}
  {program} traffic iris blue=90 green=10 --mirror none {admin_flags}
  {program} traffic iris blue=100 green=0 {admin_flags}
"#,
        primary = keys.primary.expose(),
        secondary = keys.secondary.expose(),
        admin = server.admin_addr,
        token = word(&server.shared.snapshot().config.admin.token_file),
    );
    crate::signals::wait_for_stop().await;
    println!("stopping...");
    server.shutdown(drain).await;
    drop(tmp);
    Ok(())
}

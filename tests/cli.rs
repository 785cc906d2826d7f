//! The `scoregate` binary: `check` on good and bad configs, and the admin CLI commands against a
//! running gateway.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use scoregate::certgen::LeafOptions;
use scoregate::config::AuthMode;
use scoregate_testkit::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scoregate"))
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("runs");
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into(),
        String::from_utf8_lossy(&stderr).into(),
    )
}

/// The binary's allocator has the options `.cargo/config.toml` builds into it (README, "Memory and
/// the allocator"): freed pages returned by a background thread after a second. A build that
/// lost them (`cargo install`, which does not read that file) would keep jemalloc's ten seconds
/// (the background thread comes from the crate's feature). jemalloc prints its options at exit
/// when asked to (not `max_background_threads`, which this cannot check).
#[test]
#[cfg_attr(not(feature = "jemalloc"), ignore = "built on the system allocator")]
fn the_allocator_returns_freed_memory_after_a_second() {
    let (ok, _, stderr) = run(bin()
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true"));
    assert!(ok, "{stderr}");
    for option in ["opt.background_thread: true", "opt.dirty_decay_ms: 1000"] {
        assert!(
            stderr.contains(option),
            "no {option:?} in jemalloc's options:\n{stderr}"
        );
    }
}

/// A folder with certs and a valid config; returns (dir, config path, config text).
fn fixture(pki: &Pki) -> (PathBuf, PathBuf, String) {
    let dir = tempdir("cli");
    let leaf = pki
        .ca
        .leaf(&["scoring.example.test"], &LeafOptions::default());
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    std::fs::write(dir.join("certs/fullchain.pem"), &leaf.chain_pem).unwrap();
    std::fs::write(dir.join("certs/key.pem"), &leaf.key_pem).unwrap();
    let text = r#"
[listen]
address = "127.0.0.1:8443"

[[tls.certificates]]
cname = "scoring.example.test"
cert = "certs/fullchain.pem"
key = "certs/key.pem"

[admin]
address = "127.0.0.1:9090"

[state]
dir = "state"

[[service]]
name = "iris"
auth = "key"
backends = ["http://127.0.0.1:5001"]
scoring_timeout = "30s"
"#
    .to_string();
    let path = dir.join("scoregate.toml");
    std::fs::write(&path, &text).unwrap();
    (dir, path, text)
}

fn check(path: &Path) -> (bool, String, String) {
    run(bin().arg("check").arg("--config").arg(path))
}

#[test]
fn check_accepts_a_good_config_and_prints_what_it_would_serve() {
    let pki = Pki::new();
    let (dir, path, _) = fixture(&pki);
    let (ok, out, err) = check(&path);
    assert!(ok, "{out}{err}");
    assert!(out.contains("scoring.example.test"), "{out}");
    assert!(out.contains("iris") && out.contains("auth=key"), "{out}");
    let abs_cert = std::fs::canonicalize(dir.join("certs/fullchain.pem")).unwrap();
    assert!(
        out.contains(abs_cert.to_str().unwrap()),
        "absolute paths: {out}"
    );
    assert!(out.contains("expires"), "{out}");
}

#[test]
fn check_prints_each_services_rate_limits() {
    let pki = Pki::new();
    let (_dir, path, text) = fixture(&pki);
    std::fs::write(
        &path,
        format!("{text}\n[[service.rate_limit]]\nrequests = 100\nper = \"1m\"\nby = \"client\"\n\n[[service.rate_limit]]\nrequests = 5\nper = \"1s\"\nby = \"credential\"\nburst = 10\nname = \"per-key\"\n"),
    )
    .unwrap();
    let (ok, out, err) = check(&path);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("rate_limit \"client\" by client: 100 per 60s, burst 100"),
        "{out}"
    );
    assert!(
        out.contains("rate_limit \"per-key\" by credential: 5 per 1s, burst 10"),
        "{out}"
    );
}

/// Regression (issue 11): `check` said ok for configs that `serve` then refused — a missing or
/// bad JWKS file, an unwritable state dir, an empty admin token file. It now runs the same
/// loading as the start, and reports every problem (and every certificate entry) in one run.
#[test]
fn check_runs_the_same_validation_as_the_start() {
    let pki = Pki::new();
    let (dir, path, text) = fixture(&pki);
    // A JWKS file that is missing, an admin token file that is empty, a state dir that is a file,
    // and two certificate entries that both fail: five problems, all reported.
    std::fs::write(dir.join("admin-token"), "\n").unwrap();
    std::fs::write(dir.join("state-is-a-file"), "x").unwrap();
    let bad = text
        .replace("dir = \"state\"", "dir = \"state-is-a-file\"")
        .replace(
            "[admin]\naddress = \"127.0.0.1:9090\"",
            "[admin]\naddress = \"127.0.0.1:9090\"\ntoken_file = \"admin-token\"",
        )
        .replace(
            "[[tls.certificates]]",
            "[tokens]\n[[tokens.trusted_issuers]]\nissuer = \"https://idp.example.test/\"\naudience = \"api://x\"\nalgorithm = \"RS256\"\njwks = \"missing-jwks.json\"\n\n[[tls.certificates]]\ncname = \"a.example.test\"\ncert = \"certs/none.pem\"\nkey = \"certs/key.pem\"\n\n[[tls.certificates]]",
        )
        .replace("cert = \"certs/fullchain.pem\"", "cert = \"certs/also-missing.pem\"");
    std::fs::write(&path, &bad).unwrap();
    let (ok, out, err) = check(&path);
    assert!(!ok, "{out}");
    for needle in [
        "5 problems",
        "tokens.trusted_issuers[0].jwks",
        "missing-jwks.json",
        "admin.token_file",
        "is empty",
        "state.dir",
        "tls.certificates[0]",
        "tls.certificates[1]",
    ] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}

/// An expired certificate is a warning in the summary line; `--strict` makes it a failure.
#[test]
fn check_counts_warnings_and_strict_fails_on_them() {
    let pki = Pki::new();
    let (dir, path, _) = fixture(&pki);
    let soon = pki.ca.leaf(
        &["scoring.example.test"],
        &LeafOptions {
            not_before: Some((2020, 1, 1)),
            not_after: Some((2021, 1, 1)),
            ..Default::default()
        },
    );
    std::fs::write(dir.join("certs/fullchain.pem"), &soon.chain_pem).unwrap();
    std::fs::write(dir.join("certs/key.pem"), &soon.key_pem).unwrap();
    let (ok, out, err) = check(&path);
    assert!(ok, "{out}{err}");
    assert!(out.trim_end().ends_with("ok, 1 warning"), "{out}");
    assert!(err.contains("has expired"), "{err}");
    let (ok, _, err) = run(bin().args(["check", "--strict", "--config"]).arg(&path));
    assert!(!ok && err.contains("--strict"), "{err}");

    // Valid, but for less than 30 days more: a warning too, with the days left.
    let soon = pki.ca.leaf(
        &["scoring.example.test"],
        &LeafOptions {
            valid_for: Some(std::time::Duration::from_secs(10 * 86_400)),
            ..Default::default()
        },
    );
    std::fs::write(dir.join("certs/fullchain.pem"), &soon.chain_pem).unwrap();
    std::fs::write(dir.join("certs/key.pem"), &soon.key_pem).unwrap();
    let (ok, out, err) = check(&path);
    assert!(ok, "{out}{err}");
    assert!(out.trim_end().ends_with("ok, 1 warning"), "{out}");
    assert!(err.contains("expires in 9 days: renew it"), "{err}");
}

/// Every unknown key in one run, each with its line and the known key it was probably meant
/// to be; the summary counts them with the other problems.
#[test]
fn check_reports_every_unknown_key_with_a_suggestion() {
    let pki = Pki::new();
    let (_dir, path, text) = fixture(&pki);
    let bad = text
        .replace("[listen]\n", "[listen]\nadress = \"127.0.0.1:8443\"\n")
        .replace(
            "scoring_timeout = \"30s\"",
            "scoring_timout = \"30s\"\nmax-body = \"1MiB\"",
        )
        .replace("[state]\n", "[state]\ndirectory = \"x\"\n")
        + "\n[limits]\nmax_conections = 5\n";
    std::fs::write(&path, &bad).unwrap();
    let (ok, out, err) = check(&path);
    assert!(!ok, "{out}");
    assert!(err.contains("5 problems"), "{err}");
    for needle in [
        "listen.adress: unknown key (line 3); did you mean `address`?",
        "state.directory: unknown key",
        "service[0].scoring_timout: unknown key",
        "did you mean `scoring_timeout`?",
        "service[0].max-body: unknown key",
        "did you mean `max_body`?",
        "limits.max_conections: unknown key",
        "did you mean `max_connections`?",
    ] {
        assert!(err.contains(needle), "{needle:?} in: {err}");
    }
    // In file order.
    let at = |n: &str| err.find(n).unwrap();
    assert!(at("listen.adress") < at("state.directory"));
    assert!(at("service[0].max-body") < at("limits.max_conections"));
}

#[test]
fn check_rejects_each_kind_of_bad_config_naming_the_problem() {
    let pki = Pki::new();
    let (dir, path, text) = fixture(&pki);
    let other = pki
        .ca
        .leaf(&["scoring.example.test"], &LeafOptions::default());
    std::fs::write(dir.join("certs/other-key.pem"), &other.key_pem).unwrap();
    let cases: Vec<(String, &[&str])> = vec![
        (
            format!("{text}\n[limits]\nmax_conections = 5\n"),
            &["max_conections"],
        ),
        (
            text.replace("scoring_timeout = \"30s\"", "scoring_timeout = \"soon\""),
            &["service[0].scoring_timeout", "soon"],
        ),
        (
            text.replace("name = \"iris\"", "name = \"Iris_1\""),
            &["service[0].name"],
        ),
        (
            text.replace("auth = \"key\"", "auth = \"key+token\""),
            &["service[0].auth"],
        ),
        (
            text.replace(
                "auth = \"key\"",
                "auth = \"token\"\nprimary_key = \"abcdefghijabcdefghijabcdefghij0123\"",
            ),
            &["service[0].primary_key", "never both"],
        ),
        (
            text.replace("http://127.0.0.1:5001", "127.0.0.1:5001"),
            &["service[0].backends[0]"],
        ),
        (
            format!(
                "{text}\n[[service]]\nname = \"iris\"\nbackends = [\"http://127.0.0.1:5002\"]\n"
            ),
            &["defined twice"],
        ),
        (
            text.replace("certs/fullchain.pem", "certs/missing.pem"),
            &["missing.pem"],
        ),
        (
            text.replace("certs/key.pem", "certs/other-key.pem"),
            &["does not match"],
        ),
        (
            text.replace(
                "cname = \"scoring.example.test\"",
                "cname = \"other.example.test\"",
            ),
            &["other.example.test", "subject alternative names"],
        ),
        (
            text.replace(
                "address = \"127.0.0.1:8443\"",
                "address = \"localhost:8443\"",
            ),
            &["listen.address[0]"],
        ),
        (
            text.replace("[listen]", "[listen]\nallow = [\"10.0.0.0/40\"]"),
            &["listen.allow[0]"],
        ),
        (
            format!(
                "{text}\n[[service.rate_limit]]\nrequests = 10\nper = \"1500ms\"\nby = \"client\"\n"
            ),
            &["service[0].rate_limit[0].per", "whole seconds"],
        ),
        ("this is not toml".into(), &["TOML parse error"]),
    ];
    for (i, (bad, needles)) in cases.iter().enumerate() {
        std::fs::write(&path, bad).unwrap();
        let (ok, out, err) = check(&path);
        assert!(!ok, "case {i} must fail: {out}");
        assert!(
            err.contains(path.to_str().unwrap()),
            "case {i}: the error names the file: {err}"
        );
        for n in *needles {
            assert!(err.contains(n), "case {i}: expected {n:?} in: {err}");
        }
    }
    let (ok, _, err) = check(&dir.join("nope.toml"));
    assert!(
        !ok && err.contains("nope.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_a_restart_and_presets_apply() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut svc = service("iris", AuthMode::Key, &[backend.url()]);
    let preset = "preset-secondary-key-0123456789abcdef".to_string();
    svc.secondary_key = Some(scoregate::crypto::Secret::new(preset.clone()));
    let cfg = config(&pki, vec![svc]);
    let gw = Gw::start(cfg.clone()).await;
    let (primary, secondary) = gw.keys("iris");
    assert_eq!(secondary, preset);
    let id = gw.server.shared.record("iris").unwrap().id;
    gw.stop().await;
    let gw = Gw::start(cfg).await;
    assert_eq!(gw.keys("iris"), (primary.clone(), preset.clone()));
    assert_eq!(gw.server.shared.record("iris").unwrap().id, id);
    let mut c = pki.client().h1(gw.addr).await;
    assert_eq!(c.score("iris", &primary, "{}").await.status, 200);
    assert_eq!(c.score("iris", &preset, "{}").await.status, 200);
    gw.stop().await;
}

fn admin_cmd(gw: &Gw, token_file: &Path, args: &[&str]) -> (bool, String, String) {
    let mut c = bin();
    c.args(args)
        .arg("--admin")
        .arg(format!("http://{}", gw.admin))
        .arg("--admin-token-file")
        .arg(token_file)
        .env_remove("SCOREGATE_ADMIN_TOKEN");
    run(&mut c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_lists_shows_and_rotates_keys_against_a_running_gateway() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(config(
        &pki,
        vec![service("iris", AuthMode::Key, &[backend.url()])],
    ))
    .await;
    let token_file = gw.server.shared.snapshot().config.admin.token_file.clone();
    let (old_primary, secondary) = gw.keys("iris");

    let (ok, out, err) = admin_cmd(&gw, &token_file, &["service", "list"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "iris");
    let (ok, out, _) = admin_cmd(&gw, &token_file, &["service", "show", "iris"]);
    assert!(ok);
    let svc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(svc["authMode"], "key");
    assert_eq!(
        svc["scoringUri"],
        format!(
            "https://localhost:{}/api/v1/service/iris/score",
            gw.addr.port()
        )
    );

    let (ok, out, _) = admin_cmd(&gw, &token_file, &["keys", "list", "iris", "--value"]);
    assert!(ok);
    assert_eq!(out, format!("{old_primary}\n{secondary}\n"));

    // Rotation: regenerate the primary; the old primary stops working at once, the secondary not.
    let (ok, new_primary, err) = admin_cmd(
        &gw,
        &token_file,
        &["keys", "regen", "iris", "--key", "primary", "--print-value"],
    );
    assert!(ok, "{err}");
    let new_primary = new_primary.trim().to_string();
    assert_eq!(new_primary.len(), 43);
    assert_ne!(new_primary, old_primary);
    let mut c = pki.client().h1(gw.addr).await;
    assert_eq!(c.score("iris", &old_primary, "{}").await.status, 401);
    assert_eq!(c.score("iris", &secondary, "{}").await.status, 200);
    assert_eq!(c.score("iris", &new_primary, "{}").await.status, 200);

    // A chosen value, from stdin so it never shows in `ps`.
    let chosen = "chosen-secondary-value-0123456789ABCDEF_-";
    let mut cmd = bin();
    cmd.args([
        "keys",
        "regen",
        "iris",
        "--key",
        "secondary",
        "--value",
        "-",
    ])
    .arg("--admin")
    .arg(format!("http://{}", gw.admin))
    .arg("--admin-token-file")
    .arg(&token_file)
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(chosen.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(c.score("iris", chosen, "{}").await.status, 200);
    assert_eq!(c.score("iris", &secondary, "{}").await.status, 401);

    // Bad values are refused with the reason; the keys in force stay.
    let (ok, _, err) = admin_cmd(
        &gw,
        &token_file,
        &[
            "keys", "regen", "iris", "--key", "primary", "--value", "short",
        ],
    );
    assert!(!ok && err.contains("400"), "{err}");
    assert_eq!(c.score("iris", &new_primary, "{}").await.status, 200);
    // The token may also come from the environment.
    let token = std::fs::read_to_string(&token_file).unwrap();
    let (ok, _, err) = run(bin()
        .args(["service", "show", "iris", "--admin"])
        .arg(format!("http://{}", gw.admin))
        .env("SCOREGATE_ADMIN_TOKEN", token.trim()));
    assert!(ok, "{err}");
    // A wrong token is refused.
    let wrong = tempdir("tok").join("t");
    std::fs::write(&wrong, "wrong").unwrap();
    let (ok, _, err) = admin_cmd(&gw, &wrong, &["service", "list"]);
    assert!(!ok && err.contains("401"), "{err}");
    gw.stop().await;
}

/// Regression (issue 11): a demo that could not start (its port taken) left its temp dir, with
/// keys in it, behind; it now removes it and suggests another port.
/// `scoregate token NAME --subject S`: the token's `sub` is S (its rate-limit subject).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_cli_takes_a_subject() {
    use base64::Engine;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(config(
        &pki,
        vec![service("tok", AuthMode::Token, &[backend.url()])],
    ))
    .await;
    let token_file = gw.server.shared.snapshot().config.admin.token_file.clone();
    let claims = |jwt: &str| -> serde_json::Value {
        let payload = jwt.trim().split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let (ok, out, err) = admin_cmd(
        &gw,
        &token_file,
        &["token", "tok", "--subject", "alice@example.com", "--value"],
    );
    assert!(ok, "{err}");
    let c = claims(&out);
    assert_eq!(c["sub"], "alice@example.com");
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()));
    let (ok, out, _) = admin_cmd(&gw, &token_file, &["token", "tok", "--value"]);
    assert!(ok);
    assert_eq!(claims(&out)["sub"].as_str().unwrap().len(), 36, "a UUID");
    let (ok, _, err) = admin_cmd(&gw, &token_file, &["token", "tok", "--subject", "a b"]);
    assert!(!ok && err.contains("subject"), "{err}");
    gw.stop().await;
}

#[test]
fn a_demo_that_cannot_start_cleans_up_and_suggests_another_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let child = bin()
        .args(["demo", "--listen", &addr.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot listen on") && err.contains("--listen 127.0.0.1:"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("scoregate-demo-{pid}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
}

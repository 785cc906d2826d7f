//! Deployments (contract §8) against the real gateway, with recording backends and a real TLS
//! client: the weighted split within a computed bound, pinning (also to a weight-0 deployment),
//! `DeploymentNotFound` and `NoTraffic`, the `azureml-model-deployment` header to the backend and
//! on every answer after the choice (413, 429, 502, 504 and the backend's), the `deployment`
//! metric label, the admin API's view and `PUT .../traffic` with its rules, and the split kept
//! across a restart with the latest action winning against the config.
// Integration tests time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::Duration;

use scoregate::config::{AuthMode, DeploymentConfig, RateLimitBy, RateLimitConfig, ServiceConfig};
use scoregate_testkit::metrics::{metrics, value};
use scoregate_testkit::*;
use serde_json::{Value, json};

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;
const PIN: &str = "azureml-model-deployment";

/// A backend that says who it is in its body.
async fn named(name: &'static str) -> Backend {
    Backend::with(move |_| Reply::ok(&format!(r#"{{"from":"{name}"}}"#))).await
}

fn dep(name: &str, b: &Backend) -> DeploymentConfig {
    DeploymentConfig::new(name, vec![b.url().parse().unwrap()])
}

/// `iris` (auth none) with deployments blue and green at the given weights.
fn blue_green(blue: &Backend, green: &Backend, wb: u8, wg: u8) -> ServiceConfig {
    service("iris", AuthMode::None, &[]).with_deployments(
        vec![dep("blue", blue), dep("green", green)],
        &[("blue", wb), ("green", wg)],
    )
}

async fn score(conn: &mut Conn, pin: Option<&str>) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    if let Some(p) = pin {
        h.push((PIN, p));
    }
    conn.send("POST", "/api/v1/service/iris/score", &h, BODY)
        .await
}

async fn admin(gw: &Gw, method: &str, path: &str, body: &str) -> Resp {
    admin_request(gw.admin, method, path, Some(&gw.admin_token()), body).await
}

async fn put_traffic(gw: &Gw, body: Value) -> Resp {
    admin(gw, "PUT", "/v1/services/iris/traffic", &body.to_string()).await
}

/// Over `n` unpinned requests at weights 70/30, each deployment's share is within 4.5σ of its
/// weight (σ = √(n·p·(1−p))), every answer names the deployment whose backend gave it, and each
/// backend was told its own deployment's name.
#[tokio::test]
async fn the_split_follows_the_weights_and_every_answer_names_its_deployment() {
    let (blue, green) = (named("blue").await, named("green").await);
    let pki = Pki::new();
    let gw = Gw::start(config(&pki, vec![blue_green(&blue, &green, 70, 30)])).await;
    let mut conn = pki.client().h2(gw.addr).await;
    let n = 3000usize;
    let mut to_green = 0usize;
    for _ in 0..n {
        let r = score(&mut conn, None).await;
        assert_eq!(r.status, 200);
        let from = r.json()["from"].as_str().unwrap().to_string();
        assert_eq!(
            r.header(PIN),
            from,
            "the header names the deployment that answered"
        );
        to_green += usize::from(from == "green");
    }
    let (p, nf) = (0.3, n as f64);
    let sigma = (nf * p * (1.0 - p)).sqrt();
    let dev = (to_green as f64 - nf * p).abs();
    assert!(
        dev <= 4.5 * sigma,
        "green got {to_green} of {n}: {dev:.0} from {:.0}, over 4.5σ = {:.0}",
        nf * p,
        4.5 * sigma
    );
    assert_eq!(blue.scored() + green.scored(), n);
    for (b, name) in [(&blue, "blue"), (&green, "green")] {
        let told: Vec<_> = b
            .seen()
            .into_iter()
            .filter(|s| s.method == "POST")
            .collect();
        assert!(told.iter().all(|s| s.headers[PIN] == name));
    }
    // The request counter carries the deployment.
    let m = metrics(&gw).await;
    let green_ok = value(
        &m,
        "scoregate_requests_total",
        &[
            ("service", "iris"),
            ("deployment", "green"),
            ("code", "backend"),
        ],
    );
    assert_eq!(green_ok as usize, to_green);
    gw.stop().await;
}

/// Pinning: exact name, whatever the weight (a weight-0 deployment too); a name that is not a
/// pinnable deployment is 404 `DeploymentNotFound` without listing any; an empty or repeated
/// header is 400; all weights 0 without a pin is 404 `NoTraffic`; refusals before the choice
/// carry no deployment header.
#[tokio::test]
async fn pins_go_where_they_say_and_refusals_name_no_deployment() {
    let (blue, green) = (named("blue").await, named("green").await);
    let hidden = named("hidden").await;
    let pki = Pki::new();
    let mut svc = blue_green(&blue, &green, 100, 0);
    let mut h = dep("hidden", &hidden);
    h.pinnable = false;
    svc.deployments.push(h);
    svc.traffic.insert("hidden".into(), 0);
    let only = named("only").await;
    let mut idle = service("idle", AuthMode::None, &[])
        .with_deployments(vec![dep("only", &only)], &[("only", 0)]);
    idle.name = "idle".into();
    let plain = service("plain", AuthMode::None, &[blue.url()]);
    let gw = Gw::start(config(&pki, vec![svc, idle, plain])).await;
    let mut c = pki.client().h1(gw.addr).await;

    for _ in 0..20 {
        let r = score(&mut c, Some("green")).await;
        assert_eq!((r.status, r.header(PIN)), (200, "green"));
    }
    assert_eq!(green.scored(), 20);

    // (Surrounding whitespace is not part of a header value, RFC 9110 §5.5: "green " pins green.)
    for bad in ["hidden", "Green", "gree", "red", "default"] {
        let r = score(&mut c, Some(bad)).await;
        if bad == "green " {
            eprintln!("DEBUG {:?} {:?} {:?}", r.status, r.headers, r.body);
        }
        assert_eq!(
            (r.status, r.code().as_str()),
            (404, "DeploymentNotFound"),
            "{bad:?}"
        );
        assert_eq!(r.header(PIN), "", "no deployment was chosen");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        for name in ["blue", "green", "hidden"] {
            assert!(!msg.contains(name), "the message lists {name}: {msg}");
        }
    }
    assert_eq!(hidden.scored(), 0);

    let r = score(&mut c, Some("")).await;
    assert_eq!((r.status, r.code().as_str()), (400, "BadRequest"));
    let r = c
        .send(
            "POST",
            "/api/v1/service/iris/score",
            &[(PIN, "blue"), (PIN, "green")],
            BODY,
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (400, "BadRequest"));

    let idle_score = |pin: Option<&'static str>| {
        let mut h = vec![("content-type", "application/json")];
        if let Some(p) = pin {
            h.push((PIN, p));
        }
        h
    };
    let r = c
        .send(
            "POST",
            "/api/v1/service/idle/score",
            &idle_score(None),
            BODY,
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "NoTraffic"));
    assert_eq!(r.header(PIN), "");
    let r = c
        .send(
            "POST",
            "/api/v1/service/idle/score",
            &idle_score(Some("only")),
            BODY,
        )
        .await;
    assert_eq!((r.status, r.header(PIN)), (200, "only"));

    // A backends service is one deployment, "default", and only it may be pinned.
    let r = c
        .send(
            "POST",
            "/api/v1/service/plain/score",
            &[(PIN, "default")],
            BODY,
        )
        .await;
    assert_eq!((r.status, r.header(PIN)), (200, "default"));
    let r = c
        .send(
            "POST",
            "/api/v1/service/plain/score",
            &[(PIN, "blue")],
            BODY,
        )
        .await;
    assert_eq!(r.code(), "DeploymentNotFound");
    let r = c
        .send("GET", "/api/v1/service/plain/swagger.json", &[], "")
        .await;
    assert_eq!((r.status, r.header(PIN)), (200, "default"));
    // Counted before the choice: deployment "".
    let m = metrics(&gw).await;
    assert_eq!(
        value(
            &m,
            "scoregate_requests_total",
            &[
                ("service", "iris"),
                ("deployment", ""),
                ("code", "DeploymentNotFound")
            ],
        ),
        5.0
    );
    gw.stop().await;
}

/// Every answer after the choice names the deployment: a backend's (its own header replaced),
/// 413, 429, 502 and 504; a 401 (before the choice) does not.
#[tokio::test]
async fn gateway_errors_after_the_choice_carry_the_deployment() {
    let liar = Backend::with(|_| {
        let mut r = Reply::ok("{}");
        r.headers.push((PIN.into(), "someone-else".into()));
        r
    })
    .await;
    let slow = Backend::with(|_| {
        let mut r = Reply::ok("{}");
        r.delay = Duration::from_secs(3);
        r
    })
    .await;
    let dead = refused_port();
    let pki = Pki::new();
    let mut fast = dep("fast", &liar);
    fast.scoring_timeout = None;
    let mut sleepy = dep("sleepy", &slow);
    sleepy.scoring_timeout = Some(Duration::from_millis(300));
    let gone = DeploymentConfig::new("gone", vec![format!("http://{dead}").parse().unwrap()]);
    let mut svc = service("iris", AuthMode::Key, &[])
        .with_deployments(vec![fast, sleepy, gone], &[("fast", 100)]);
    svc.max_body = 1000;
    svc.rate_limits = vec![RateLimitConfig::new(
        "svc",
        RateLimitBy::Service,
        1000,
        Duration::from_secs(1),
        1000,
    )];
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let (key, _) = gw.keys("iris");
    let auth = format!("Bearer {key}");
    let mut c = pki.client().h1(gw.addr).await;
    async fn go(c: &mut Conn, auth: &str, pin: &str, body: &str, with_key: bool) -> Resp {
        let mut h = vec![(PIN, pin), ("content-type", "application/json")];
        if with_key {
            h.push(("authorization", auth));
        }
        c.send("POST", "/api/v1/service/iris/score", &h, body).await
    }
    let r = go(&mut c, &auth, "fast", BODY, true).await;
    assert_eq!((r.status, r.header(PIN)), (200, "fast"));
    assert_eq!(r.headers.get_all(PIN).iter().count(), 1);
    let r = go(&mut c, &auth, "fast", &"x".repeat(2000), true).await;
    assert_eq!((r.status, r.header(PIN)), (413, "fast"));
    let r = go(&mut c, &auth, "gone", BODY, true).await;
    assert_eq!((r.status, r.header(PIN)), (502, "gone"));
    let r = go(&mut c, &auth, "sleepy", BODY, true).await;
    assert_eq!((r.status, r.header(PIN)), (504, "sleepy"));
    let r = go(&mut c, &auth, "fast", BODY, false).await;
    assert_eq!((r.status, r.header(PIN)), (401, ""));
    gw.stop().await;

    // 429: the limit phase runs after the choice.
    let b = named("blue").await;
    let mut svc = service("iris", AuthMode::None, &[])
        .with_deployments(vec![dep("blue", &b)], &[("blue", 100)]);
    svc.rate_limits = vec![RateLimitConfig::new(
        "svc",
        RateLimitBy::Service,
        1,
        Duration::from_secs(3600),
        1,
    )];
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let mut c = pki.client().h1(gw.addr).await;
    assert_eq!(score(&mut c, None).await.status, 200);
    let r = score(&mut c, None).await;
    assert_eq!((r.status, r.header(PIN)), (429, "blue"));
    gw.stop().await;
}

fn traffic_of(v: &Value) -> (Value, Value) {
    (v["traffic"].clone(), v["mirrorTraffic"].clone())
}

/// The admin API: GET shows the split, the mirror and each deployment's state (a backends
/// service: `{"default": 100}`, `{}`, one deployment); PUT replaces what it is given, keeps what
/// it is not, refuses each broken rule with 400 `InvalidTraffic` changing nothing, bumps
/// `updatedAt`, and requests follow at once.
#[tokio::test]
async fn put_traffic_replaces_checks_and_takes_effect() {
    let (blue, green) = (named("blue").await, named("green").await);
    let canary = named("canary").await;
    let pki = Pki::new();
    let mut svc = blue_green(&blue, &green, 100, 0);
    svc.deployments.push(dep("canary", &canary));
    svc.traffic.insert("canary".into(), 0);
    let plain = service("plain", AuthMode::None, &[blue.url()]);
    let gw = Gw::start(config(&pki, vec![svc, plain])).await;

    let v = admin(&gw, "GET", "/v1/services/plain", "").await.json();
    assert_eq!(traffic_of(&v), (json!({"default": 100}), json!({})));
    assert_eq!(
        v["deployments"],
        json!([{"name": "default", "state": "Succeeded"}])
    );
    let v = admin(&gw, "GET", "/v1/services/iris", "").await.json();
    assert_eq!(
        traffic_of(&v),
        (json!({"blue": 100, "green": 0, "canary": 0}), json!({}))
    );
    assert_eq!(v["deployments"].as_array().unwrap().len(), 3);
    let updated = v["updatedAt"].as_str().unwrap().to_string();
    let list = admin(&gw, "GET", "/v1/services", "").await.json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|s| s["traffic"]["blue"] == 100)
    );

    // Broken rules: 400 InvalidTraffic, nothing changes.
    let broken = [
        json!({"traffic": {"blue": 50, "green": 40}}),
        json!({"traffic": {"blue": 50, "red": 50}}),
        json!({"mirrorTraffic": {"red": 10}}),
        json!({"mirrorTraffic": {"green": 10, "canary": 10}}),
        json!({"mirrorTraffic": {"green": 51}}),
        json!({"mirrorTraffic": {"blue": 10}}),
        json!({"traffic": {"blue": 50.5, "green": 49.5}}),
        json!({"traffic": {"blue": -1, "green": 101}}),
        json!({"traffic": {"blue": "100"}}),
        json!({"traffic": {"blue": 101}}),
        json!({"traffic": [100]}),
    ];
    for b in broken {
        let r = put_traffic(&gw, b.clone()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "InvalidTraffic"),
            "{b}"
        );
    }
    let r = put_traffic(&gw, json!({"traffic": {"blue": 100}, "other": 1})).await;
    assert_eq!(r.status, 400);
    let v = admin(&gw, "GET", "/v1/services/iris", "").await.json();
    assert_eq!(v["traffic"], json!({"blue": 100, "green": 0, "canary": 0}));
    assert_eq!(v["updatedAt"], updated);

    // Replace: omitted deployments get 0; the mirror left out keeps its value.
    tokio::time::sleep(Duration::from_millis(1100)).await; // updatedAt has whole seconds
    let r = put_traffic(
        &gw,
        json!({"traffic": {"green": 100}, "mirrorTraffic": {"canary": 20}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        traffic_of(&r.json()),
        (
            json!({"blue": 0, "green": 100, "canary": 0}),
            json!({"canary": 20})
        )
    );
    let r = put_traffic(&gw, json!({"traffic": {"blue": 10, "green": 90}})).await;
    assert_eq!(r.json()["mirrorTraffic"], json!({"canary": 20}));
    let v = admin(&gw, "GET", "/v1/services/iris", "").await.json();
    assert_eq!(v["traffic"], json!({"blue": 10, "green": 90, "canary": 0}));
    assert_ne!(v["updatedAt"], updated, "a change bumps updatedAt");
    // A mirror with live weight is refused; `{}` clears the mirror.
    let r = put_traffic(&gw, json!({"traffic": {"canary": 100}})).await;
    assert_eq!(r.code(), "InvalidTraffic");
    let r = put_traffic(&gw, json!({"traffic": {"green": 100}, "mirrorTraffic": {}})).await;
    assert_eq!(traffic_of(&r.json()).1, json!({}));
    // Requests follow the new split at once.
    let mut c = pki.client().h1(gw.addr).await;
    let before = blue.count();
    for _ in 0..30 {
        assert_eq!(score(&mut c, None).await.header(PIN), "green");
    }
    assert_eq!(blue.count(), before);
    // Unknown service: 404; wrong method: 405.
    let r = admin(&gw, "PUT", "/v1/services/nope/traffic", r#"{"traffic":{}}"#).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        admin(&gw, "GET", "/v1/services/iris/traffic", "")
            .await
            .status,
        405
    );
    gw.stop().await;
}

/// The split set through the API survives a restart (file store); against the config the latest
/// action wins: an unchanged config keeps the stored split, a changed one replaces it, and a
/// stored split that no longer fits the deployments gives way to the config's.
#[tokio::test]
async fn the_split_survives_a_restart_and_the_latest_action_wins() {
    let (blue, green) = (named("blue").await, named("green").await);
    let pki = Pki::new();
    let cfg = config(&pki, vec![blue_green(&blue, &green, 100, 0)]);

    let gw = Gw::start(cfg.clone()).await;
    let r = put_traffic(&gw, json!({"traffic": {"blue": 40, "green": 60}})).await;
    assert_eq!(r.status, 200);
    gw.stop().await;

    // Same config: the stored split stays.
    let gw = Gw::start(cfg.clone()).await;
    assert_eq!(
        traffic_of(&admin(&gw, "GET", "/v1/services/iris", "").await.json()).0,
        json!({"blue": 40, "green": 60})
    );
    let mut c = pki.client().h1(gw.addr).await;
    let r = score(&mut c, Some("green")).await;
    assert_eq!(r.status, 200);
    gw.stop().await;

    // The config's traffic changed: the config wins.
    let mut changed = cfg.clone();
    changed.services[0] = blue_green(&blue, &green, 0, 100);
    let gw = Gw::start(changed.clone()).await;
    assert_eq!(
        traffic_of(&admin(&gw, "GET", "/v1/services/iris", "").await.json()).0,
        json!({"blue": 0, "green": 100})
    );
    // ... and a later PUT wins again, until the config changes.
    let r = put_traffic(&gw, json!({"traffic": {"blue": 90, "green": 10}})).await;
    assert_eq!(r.status, 200);
    gw.stop().await;
    let gw = Gw::start(changed.clone()).await;
    assert_eq!(
        traffic_of(&admin(&gw, "GET", "/v1/services/iris", "").await.json()).0,
        json!({"blue": 90, "green": 10})
    );
    gw.stop().await;

    // A stored split naming a deployment that is gone gives way to the config's.
    let mut fewer = changed.clone();
    fewer.services[0] = service("iris", AuthMode::None, &[])
        .with_deployments(vec![dep("blue", &blue)], &[("blue", 100)]);
    // (The config's split changed too; either way the stored 90/10 cannot stay.)
    let gw = Gw::start(fewer).await;
    assert_eq!(
        traffic_of(&admin(&gw, "GET", "/v1/services/iris", "").await.json()).0,
        json!({"blue": 100})
    );
    gw.stop().await;
}

/// A deployment is `Unhealthy` while it has no available backend; the service is `Unhealthy`
/// while a deployment with live weight has none, and not for a weight-0 one.
#[tokio::test]
async fn states_follow_the_live_deployments() {
    let blue = named("blue").await;
    let dead = refused_port();
    let pki = Pki::new();
    let mut gone = DeploymentConfig::new("gone", vec![format!("http://{dead}").parse().unwrap()]);
    gone.health.period = Some(Duration::from_millis(100));
    gone.health.timeout = Some(Duration::from_millis(100));
    gone.health.failure_threshold = Some(1);
    let svc = service("iris", AuthMode::None, &[])
        .with_deployments(vec![dep("blue", &blue), gone], &[("blue", 100)]);
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let mut v = Value::Null;
    for _ in 0..50 {
        v = admin(&gw, "GET", "/v1/services/iris", "").await.json();
        if v["deployments"][1]["state"] == "Unhealthy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        v["deployments"][1],
        json!({"name": "gone", "state": "Unhealthy"})
    );
    assert_eq!(
        v["deployments"][0],
        json!({"name": "blue", "state": "Succeeded"})
    );
    assert_eq!(v["state"], "Degraded");
    let r = put_traffic(&gw, json!({"traffic": {"gone": 100}})).await;
    assert_eq!(r.status, 200);
    let v = admin(&gw, "GET", "/v1/services/iris", "").await.json();
    assert_eq!(v["state"], "Unhealthy");
    gw.stop().await;
}

fn traffic_cli(gw: &Gw, args: &[&str]) -> (bool, Value, String) {
    let token_file = gw.server.shared.snapshot().config.admin.token_file.clone();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .arg("traffic")
        .args(args)
        .arg("--admin")
        .arg(format!("http://{}", gw.admin))
        .arg("--admin-token-file")
        .arg(token_file)
        .env_remove("SCOREGATE_ADMIN_TOKEN")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `scoregate traffic`: shows both maps; sets only what it is given (the split, `--mirror`,
/// `--mirror none`); a broken rule fails with the admin API's `InvalidTraffic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traffic_command_shows_and_sets_the_split_and_the_mirror() {
    let (blue, green) = (named("blue").await, named("green").await);
    let pki = Pki::new();
    let gw = Gw::start(config(&pki, vec![blue_green(&blue, &green, 100, 0)])).await;
    let (ok, v, err) = traffic_cli(&gw, &["iris"]);
    assert!(ok, "{err}");
    assert_eq!(
        v,
        json!({"traffic": {"blue": 100, "green": 0}, "mirrorTraffic": {}})
    );
    let (ok, v, err) = traffic_cli(&gw, &["iris", "blue=40", "green=60"]);
    assert!(ok, "{err}");
    assert_eq!(
        v,
        json!({"traffic": {"blue": 40, "green": 60}, "mirrorTraffic": {}})
    );
    let (ok, v, err) = traffic_cli(&gw, &["iris", "--mirror", "green=10", "blue=100"]);
    assert!(ok, "{err}");
    assert_eq!(
        v,
        json!({"traffic": {"blue": 100, "green": 0}, "mirrorTraffic": {"green": 10}})
    );
    let (ok, v, _) = traffic_cli(&gw, &["iris", "--mirror", "none"]);
    assert!(ok);
    assert_eq!(v["mirrorTraffic"], json!({}));
    assert_eq!(v["traffic"], json!({"blue": 100, "green": 0}));
    let (ok, _, err) = traffic_cli(&gw, &["iris", "blue=50"]);
    assert!(!ok);
    assert!(
        err.contains("InvalidTraffic") && err.contains("sum"),
        "{err}"
    );
    let (ok, _, err) = traffic_cli(&gw, &["iris", "blue"]);
    assert!(!ok && err.contains("DEPLOYMENT=PERCENT"), "{err}");
    gw.stop().await;
}

/// `scoregate demo` serves iris as two deployments with a mirror, and the rollout commands its
/// banner prints work when pasted: a request pinned to green, the comparison in `/metrics`,
/// `traffic` shown and changed to a canary split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_rolls_out_green_as_printed() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner: Vec<String> = vec![];
    while !banner.iter().any(|l| l.contains("blue=100 green=0")) {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => banner.push(l),
            Err(e) => {
                let _ = child.kill();
                panic!("no banner ({e}): {banner:?}")
            }
        }
    }
    let text = banner.join("\n").replace("\\\n", " ");
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in {text}"))
            .trim()
            .to_string()
    };
    let sh = |cmd: &str| {
        let out = Command::new("sh")
            .args(["-c", cmd])
            .env_remove("SCOREGATE_CONFIG")
            .env_remove("SCOREGATE_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A pinned request goes to green, the candidate.
    let pinned = line("azureml-model-deployment: green");
    let out = sh(&pinned.replace("curl ", "curl -s -i "));
    assert!(out.contains("azureml-model-deployment: green"), "{out}");
    assert!(out.contains("\"versicolor\""), "{out}");
    // Live requests are mirrored to green and compared: the retrained model differs.
    let curl_score = text
        .split("Score two flowers:")
        .nth(1)
        .unwrap()
        .lines()
        .find(|l| l.trim_start().starts_with("curl"))
        .unwrap()
        .trim()
        .replace("curl ", "curl -s ");
    for _ in 0..20 {
        sh(&curl_score);
    }
    let metrics_cmd = line("grep scoregate_mirror_");
    let mut seen = String::new();
    for _ in 0..50 {
        seen = sh(&format!("{metrics_cmd} || true"));
        if seen.contains("result=\"different_body\"")
            && !seen.contains("result=\"different_body\",service=\"iris\"} 0")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        seen.contains("scoregate_mirror_requests_total{deployment=\"green\",result=\"different_body\",service=\"iris\"}"),
        "{seen}"
    );
    let shown: Value = serde_json::from_str(&sh(&line(" traffic iris --admin"))).unwrap();
    assert_eq!(
        shown,
        json!({"traffic": {"blue": 100, "green": 0}, "mirrorTraffic": {"green": 50}})
    );
    let canary: Value = serde_json::from_str(&sh(&line("blue=90 green=10 --mirror none"))).unwrap();
    assert_eq!(
        canary,
        json!({"traffic": {"blue": 90, "green": 10}, "mirrorTraffic": {}})
    );
    let back: Value = serde_json::from_str(&sh(&line("blue=100 green=0"))).unwrap();
    assert_eq!(back["traffic"], json!({"blue": 100, "green": 0}));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the demo did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! Traffic splits in a fleet (contract §8 with `store = "redis"`): a `PUT .../traffic` through
//! one replica is in force on the others (the changed record is re-read and the snapshot
//! rebuilt), and a replica started later starts with it. A real `redis-server` per test.
// Integration tests time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::Duration;

use scoregate::config::{AuthMode, Config, DeploymentConfig};
use scoregate_testkit::fleet::eventually;
use scoregate_testkit::redis::{Redis, use_redis};
use scoregate_testkit::*;
use serde_json::json;

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

fn fleet_config(pki: &Pki, redis: &Redis, blue: &Backend, green: &Backend) -> Config {
    let svc = service("iris", AuthMode::None, &[]).with_deployments(
        vec![
            DeploymentConfig::new("blue", vec![blue.url().parse().unwrap()]),
            DeploymentConfig::new("green", vec![green.url().parse().unwrap()]),
        ],
        &[("blue", 100)],
    );
    let mut c = config(pki, vec![svc]);
    use_redis(&mut c, redis, "test:", 1);
    c
}

async fn deployment_of_next(client: &TlsClient, gw: &Gw) -> String {
    let r = client
        .h1(gw.addr)
        .await
        .send(
            "POST",
            "/api/v1/service/iris/score",
            &[("content-type", "application/json")],
            BODY,
        )
        .await;
    assert_eq!(r.status, 200);
    r.header("azureml-model-deployment").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_set_through_one_replica_is_in_force_on_every_replica() {
    let redis = Redis::start();
    let pki = Pki::new();
    let (blue, green) = (Backend::start().await, Backend::start().await);
    let a = Gw::start(fleet_config(&pki, &redis, &blue, &green)).await;
    let b = Gw::start(fleet_config(&pki, &redis, &blue, &green)).await;
    let client = pki.client();
    assert_eq!(deployment_of_next(&client, &b).await, "blue");

    let r = admin_request(
        a.admin,
        "PUT",
        "/v1/services/iris/traffic",
        Some(&a.admin_token()),
        &json!({"traffic": {"green": 100}}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-scoregate-store"), "up");
    let took = eventually("B routes to green", Duration::from_secs(5), async || {
        deployment_of_next(&client, &b).await == "green"
    })
    .await;
    // The change notification, not the 2 s resync.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let v = admin_request(
        b.admin,
        "GET",
        "/v1/services/iris",
        Some(&b.admin_token()),
        "",
    )
    .await
    .json();
    assert_eq!(v["traffic"], json!({"blue": 0, "green": 100}));
    for _ in 0..20 {
        assert_eq!(deployment_of_next(&client, &b).await, "green");
    }

    // A replica that starts later (same config) starts with the stored split.
    let c = Gw::start(fleet_config(&pki, &redis, &blue, &green)).await;
    assert_eq!(deployment_of_next(&client, &c).await, "green");
    for gw in [a, b, c] {
        gw.stop().await;
    }
}

//! Unit tests of the error responses: every code listed, status, headers and JSON body.

use super::*;
use http_body_util::BodyExt;

async fn body_json(r: Response<Full<Bytes>>) -> serde_json::Value {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&b).unwrap()
}

#[tokio::test]
async fn error_shape_and_headers() {
    let r = GatewayError::Unauthorized {
        reason: AuthFailure::WrongKey,
        token_mode: false,
    }
    .to_response();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(r.headers()["content-type"], "application/json");
    let j = body_json(r).await;
    assert_eq!(j["error"]["code"], "Unauthorized");
    assert!(j["error"]["message"].as_str().unwrap().len() > 10);

    let r = GatewayError::Unauthorized {
        reason: AuthFailure::InvalidToken,
        token_mode: true,
    }
    .to_response();
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );

    let r = GatewayError::MethodNotAllowed(Endpoint::Score).to_response();
    assert_eq!(
        (r.status().as_u16(), &r.headers()["allow"]),
        (405, &HeaderValue::from_static("POST"))
    );

    let r = GatewayError::TooManyRequests {
        retry_after: 7,
        policy: "client".into(),
    }
    .to_response();
    assert_eq!(
        (r.status().as_u16(), &r.headers()["retry-after"]),
        (429, &HeaderValue::from_static("7"))
    );
    assert_eq!(body_json(r).await["error"]["code"], "TooManyRequests");

    let r = GatewayError::Overloaded(Overload::QueueFull).to_response();
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(body_json(r).await["error"]["code"], "ServiceOverloaded");
}

#[test]
fn every_code_is_listed_and_sides_and_reach_are_consistent() {
    let all = [
        GatewayError::BadRequest("x"),
        GatewayError::NotFound,
        GatewayError::ServiceNotFound("x".into()),
        GatewayError::MethodNotAllowed(Endpoint::Score),
        GatewayError::Forbidden,
        GatewayError::Unauthorized {
            reason: AuthFailure::Missing,
            token_mode: false,
        },
        GatewayError::RequestTimeout(Duration::from_secs(1)),
        GatewayError::PayloadTooLarge { limit: 1 },
        GatewayError::TooManyRequests {
            retry_after: 2,
            policy: "client".into(),
        },
        GatewayError::Overloaded(Overload::WaitExpired),
        GatewayError::BackendUnavailable(BackendError::NoneAvailable),
        GatewayError::BackendUnavailable(BackendError::Exchange("x".into())),
        GatewayError::ScoringTimeout(Duration::from_secs(1)),
        GatewayError::StoreUnavailable,
        GatewayError::DeploymentNotFound,
        GatewayError::NoTraffic,
    ];
    for e in &all {
        assert!(CODES.contains(&e.code()), "{}", e.code());
        assert_eq!(e.side() == Side::Client, e.status().is_client_error());
    }
    assert!(!all[8].reached_backend());
    assert!(!all[10].reached_backend());
    assert!(all[11].reached_backend());
    assert!(!all[14].reached_backend() && !all[15].reached_backend());
    assert_eq!(all[14].status(), 404);
    assert_eq!(all[15].code(), "NoTraffic");
}

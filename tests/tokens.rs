//! Token mode against the real gateway: issuance, every attack the issue lists, trusted external
//! issuers (JWKS file with reload, JWKS URL with refetch on an unknown kid), admin auth.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use scoregate::config::{AuthMode, Config};
use scoregate_testkit::*;
use serde_json::{Value, json};

const BODY: &str = "{}";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn admin(gw: &Gw, method: &str, path: &str, token: Option<&str>, body: &str) -> Resp {
    admin_request(gw.admin, method, path, token, body).await
}

async fn get_token(gw: &Gw, service: &str) -> Value {
    let r = admin(
        gw,
        "POST",
        &format!("/v1/services/{service}/token"),
        Some(&gw.admin_token()),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()
}

/// The gateway's current signing key, read from its state dir, to forge tokens that are signed
/// correctly but wrong in one claim.
fn own_key(gw: &Gw) -> (String, String, String, String) {
    let dir = gw.server.shared.snapshot().config.state_dir.clone();
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    let k = v["signing"]["keys"].as_array().unwrap().last().unwrap();
    (
        k["kid"].as_str().unwrap().into(),
        k["alg"].as_str().unwrap().into(),
        k["private"].as_str().unwrap().into(),
        k["public"].as_str().unwrap().into(),
    )
}

fn sign_es256(kid: &str, private_pem: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(
        &h,
        claims,
        &EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn claims(iss: &str, aud: &str, nbf: u64, exp: u64) -> Value {
    json!({"iss": iss, "aud": aud, "iat": nbf, "nbf": nbf, "exp": exp})
}

async fn status(c: &mut Conn, service: &str, token: &str) -> (u16, String) {
    let r = c.score(service, token, BODY).await;
    (r.status, r.header("www-authenticate").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_tokens_work_and_every_forgery_is_refused() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut cfg = config(
        &pki,
        vec![
            service("iris", AuthMode::Token, &[backend.url()]),
            service("other", AuthMode::Token, &[backend.url()]),
            service("keyed", AuthMode::Key, &[backend.url()]),
        ],
    );
    cfg.tokens.leeway = Duration::ZERO;
    let gw = Gw::start(cfg).await;
    let t = get_token(&gw, "iris").await;
    let token = t["accessToken"].as_str().unwrap().to_string();
    assert_eq!(t["tokenType"], "Bearer");
    let exp = t["expiryOn"].as_u64().unwrap();
    let refresh = t["refreshAfter"].as_u64().unwrap();
    assert!(
        exp >= now() + 3590 && exp <= now() + 3610,
        "1h lifetime: {t}"
    );
    assert!(refresh < exp && refresh >= now() + 45 * 60 - 10, "{t}");

    let mut c = pki.client().h1(gw.addr).await;
    assert_eq!(status(&mut c, "iris", &token).await.0, 200);
    assert_eq!(status(&mut c, "iris", &token).await.0, 200, "cached path");
    assert!(
        backend
            .seen()
            .iter()
            .all(|s| s.headers.get("authorization").is_none())
    );

    let invalid = "Bearer error=\"invalid_token\"";
    // A token for iris on another service.
    assert_eq!(status(&mut c, "other", &token).await, (401, invalid.into()));
    // Tampered signature / payload.
    let parts: Vec<&str> = token.split('.').collect();
    let mut sig = B64.decode(parts[2]).unwrap();
    sig[5] ^= 1;
    let tampered = format!("{}.{}.{}", parts[0], parts[1], B64.encode(&sig));
    assert_eq!(
        status(&mut c, "iris", &tampered).await,
        (401, invalid.into())
    );
    let mut payload: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    payload["aud"] = json!("other");
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(payload.to_string()),
        parts[2]
    );
    assert_eq!(status(&mut c, "other", &swapped).await.0, 401);
    // alg: none.
    let (kid, alg, private, public) = own_key(&gw);
    assert_eq!(alg, "ES256");
    let none_header = B64.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string());
    let body = B64.encode(claims("scoregate", "iris", now(), now() + 600).to_string());
    assert_eq!(
        status(&mut c, "iris", &format!("{none_header}.{body}."))
            .await
            .0,
        401
    );
    // HS256 signed with the public key as the secret (algorithm confusion).
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.clone());
    let confused = jsonwebtoken::encode(
        &h,
        &claims("scoregate", "iris", now(), now() + 600),
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    assert_eq!(status(&mut c, "iris", &confused).await.0, 401);
    // Correctly signed, but expired / not yet valid / wrong aud / wrong iss / unknown kid.
    let n = now();
    for (what, claims, k) in [
        (
            "expired",
            claims("scoregate", "iris", n - 600, n - 60),
            kid.as_str(),
        ),
        (
            "not yet valid",
            claims("scoregate", "iris", n + 600, n + 1200),
            kid.as_str(),
        ),
        (
            "wrong aud",
            claims("scoregate", "other", n, n + 600),
            kid.as_str(),
        ),
        (
            "wrong iss",
            claims("someone-else", "iris", n, n + 600),
            kid.as_str(),
        ),
        (
            "unknown kid",
            claims("scoregate", "iris", n, n + 600),
            "not-a-kid",
        ),
    ] {
        let forged = sign_es256(k, &private, &claims);
        assert_eq!(
            status(&mut c, "iris", &forged).await,
            (401, invalid.into()),
            "{what}"
        );
    }
    // The same key with good claims passes: the refusals above were for the claims.
    let good = sign_es256(&kid, &private, &claims("scoregate", "iris", n, n + 600));
    assert_eq!(status(&mut c, "iris", &good).await.0, 200);
    // A key in token mode, a token in key mode.
    let (key, _) = gw.keys("keyed");
    assert_eq!(status(&mut c, "iris", &key).await, (401, invalid.into()));
    assert_eq!(
        status(&mut c, "keyed", &token).await,
        (401, "Bearer".into())
    );
    assert_eq!(status(&mut c, "keyed", &key).await.0, 200);
    // No credential at all: plain `Bearer` challenge.
    let r = c
        .send("POST", "/api/v1/service/iris/score", &[], BODY)
        .await;
    assert_eq!((r.status, r.header("www-authenticate")), (401, "Bearer"));

    // Token calls on a key-mode service and key calls on a token-mode one are 400.
    let at = gw.admin_token();
    assert_eq!(
        admin(&gw, "POST", "/v1/services/keyed/token", Some(&at), "")
            .await
            .status,
        400
    );
    assert_eq!(
        admin(&gw, "POST", "/v1/services/iris/listKeys", Some(&at), "")
            .await
            .status,
        400
    );
    assert_eq!(
        admin(&gw, "POST", "/v1/services/nosuch/token", Some(&at), "")
            .await
            .status,
        404
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_key_survives_a_restart() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let cfg = config(
        &pki,
        vec![service("iris", AuthMode::Token, &[backend.url()])],
    );
    let gw = Gw::start(cfg.clone()).await;
    let token = get_token(&gw, "iris").await["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    gw.stop().await;
    let gw = Gw::start(cfg).await;
    let mut c = pki.client().h1(gw.addr).await;
    assert_eq!(status(&mut c, "iris", &token).await.0, 200);
    gw.stop().await;
}

/// An external identity provider: ES256 keys, JWKS, tokens.
struct Idp {
    keys: Vec<(String, rcgen::KeyPair)>,
}

impl Idp {
    fn new(kids: &[&str]) -> Idp {
        Idp {
            keys: kids
                .iter()
                .map(|k| {
                    (
                        k.to_string(),
                        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
                    )
                })
                .collect(),
        }
    }

    fn jwks(&self, only: &[&str]) -> String {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .filter(|(k, _)| only.contains(&k.as_str()))
            .map(|(kid, kp)| {
                let raw = kp.public_key_raw();
                json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                       "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65])})
            })
            .collect();
        json!({ "keys": keys }).to_string()
    }

    fn token(&self, kid: &str, iss: &str, aud: &str) -> String {
        self.token_with(kid, &claims(iss, aud, now(), now() + 600))
    }

    fn token_with(&self, kid: &str, claims: &Value) -> String {
        let kp = &self.keys.iter().find(|(k, _)| k == kid).unwrap().1;
        sign_es256(kid, &kp.serialize_pem(), claims)
    }
}

fn write_config(
    path: &Path,
    pki_cert: &scoregate::config::CertificateConfig,
    backend: &str,
    jwks: &str,
    extra: &str,
) {
    let text = format!(
        r#"
[listen]
address = "127.0.0.1:0"
[[tls.certificates]]
cname = "localhost"
cert = "{cert}"
key = "{key}"
[admin]
address = "127.0.0.1:0"
[state]
dir = "state"
[tokens]
leeway = "0s"
[[tokens.trusted_issuers]]
issuer = "https://idp.example.test/"
audience = "api://scoring"
algorithm = "ES256"
jwks = "{jwks}"
allow_insecure_jwks = {insecure}
[[tokens.trusted_issuers]]
issuer = "https://other-idp.example.test/"
audience = "api://scoring"
algorithm = "ES256"
jwks = "other-jwks.json"
[[service]]
name = "iris"
auth = "token"
backends = ["{backend}"]
[[service]]
name = "strict"
auth = "token"
backends = ["{backend}"]
trusted_issuers = ["https://other-idp.example.test/"]
{extra}
"#,
        insecure = jwks.starts_with("http://"),
        cert = pki_cert.cert.display(),
        key = pki_cert.key.display(),
    );
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_issuer_from_a_jwks_file_with_rotation_by_reload() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let dir = tempdir("idp");
    let (cert, _) = pki.cert(
        "localhost",
        &["localhost"],
        &scoregate::certgen::LeafOptions::default(),
    );
    let idp = Idp::new(&["k1", "k2", "k3"]);
    let other = Idp::new(&["o1"]);
    std::fs::write(dir.join("idp-jwks.json"), idp.jwks(&["k1", "k2"])).unwrap();
    std::fs::write(dir.join("other-jwks.json"), other.jwks(&["o1"])).unwrap();
    let path = dir.join("scoregate.toml");
    write_config(&path, &cert, &backend.url(), "idp-jwks.json", "");
    let gw = Gw::start(Config::load(&path).unwrap()).await;
    let mut c = pki.client().h1(gw.addr).await;
    let iss = "https://idp.example.test/";
    let aud = "api://scoring";
    // Two keys in the JWKS, each picked by kid.
    let t1 = idp.token("k1", iss, aud);
    assert_eq!(status(&mut c, "iris", &t1).await.0, 200);
    assert_eq!(
        status(&mut c, "iris", &idp.token("k2", iss, aud)).await.0,
        200
    );
    // Not yet published key, wrong audience, wrong issuer.
    assert_eq!(
        status(&mut c, "iris", &idp.token("k3", iss, aud)).await.0,
        401
    );
    assert_eq!(
        status(&mut c, "iris", &idp.token("k1", iss, "api://else"))
            .await
            .0,
        401
    );
    assert_eq!(
        status(&mut c, "iris", &idp.token("k1", "https://evil/", aud))
            .await
            .0,
        401
    );
    // Regression (issue 11): a token that lives longer than max_token_lifetime (24 h by
    // default), from now or from its iat, is refused — a year-9999 token is not cached forever.
    for (iat, exp) in [(now(), 253_402_300_799), (now(), now() + 2 * 86_400)] {
        let mut cl = claims(iss, aud, now(), exp);
        cl["iat"] = json!(iat);
        assert_eq!(
            status(&mut c, "iris", &idp.token_with("k1", &cl)).await.0,
            401
        );
    }
    // A service that names its issuers accepts only those.
    assert_eq!(status(&mut c, "strict", &t1).await.0, 401);
    let o = other.token("o1", "https://other-idp.example.test/", aud);
    assert_eq!(status(&mut c, "strict", &o).await.0, 200);
    assert_eq!(
        status(&mut c, "iris", &o).await.0,
        200,
        "iris accepts every trusted issuer"
    );

    // Rotation: k1 removed, k3 added; after reload k1 stops working at once (even though cached).
    std::fs::write(dir.join("idp-jwks.json"), idp.jwks(&["k2", "k3"])).unwrap();
    let r = admin(&gw, "POST", "/v1/reload", Some(&gw.admin_token()), "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        status(&mut c, "iris", &t1).await.0,
        401,
        "a removed kid stops working at once"
    );
    assert_eq!(
        status(&mut c, "iris", &idp.token("k3", iss, aud)).await.0,
        200
    );
    // A broken JWKS file fails the reload and keeps the previous keys.
    std::fs::write(dir.join("idp-jwks.json"), "{ not json").unwrap();
    let r = admin(&gw, "POST", "/v1/reload", Some(&gw.admin_token()), "").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "InvalidConfig"),
        "{:?}",
        r.body
    );
    assert_eq!(
        status(&mut c, "iris", &idp.token("k3", iss, aud)).await.0,
        200
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_issuer_from_a_jwks_url_is_refetched_on_an_unknown_kid() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let idp = std::sync::Arc::new(Idp::new(&["k1", "k2"]));
    let published = std::sync::Arc::new(std::sync::Mutex::new(vec!["k1"]));
    let (i2, p2) = (idp.clone(), published.clone());
    let jwks_server = Backend::with(move |_| {
        let only = p2.lock().unwrap().clone();
        Reply::ok(&i2.jwks(&only))
    })
    .await;
    let dir = tempdir("idp-url");
    let (cert, _) = pki.cert(
        "localhost",
        &["localhost"],
        &scoregate::certgen::LeafOptions::default(),
    );
    let other = Idp::new(&["o1"]);
    std::fs::write(dir.join("other-jwks.json"), other.jwks(&["o1"])).unwrap();
    let path = dir.join("scoregate.toml");
    write_config(
        &path,
        &cert,
        &backend.url(),
        &format!("{}/jwks.json", jwks_server.url()),
        "",
    );
    let gw = Gw::start(Config::load(&path).unwrap()).await;
    let mut c = pki.client().h1(gw.addr).await;
    let (iss, aud) = ("https://idp.example.test/", "api://scoring");
    // The first fetch happens in the background at start.
    let t1 = idp.token("k1", iss, aud);
    let mut ok = false;
    for _ in 0..50 {
        if status(&mut c, "iris", &t1).await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the JWKS URL was fetched");
    // The IdP publishes k2; a token with k2 triggers a refetch, after which it passes.
    published.lock().unwrap().push("k2");
    let fetches_before = jwks_server.count();
    let t2 = idp.token("k2", iss, aud);
    let mut passed = false;
    for _ in 0..50 {
        if status(&mut c, "iris", &t2).await.0 == 200 {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(passed, "unknown kid caused a refetch");
    assert_eq!(
        jwks_server.count(),
        fetches_before + 1,
        "refetches are rate-limited to one"
    );
    gw.stop().await;
}

/// Regression (issue 11): a JWKS over plain http:// (anyone on the path could hand out signing
/// keys) is a config error unless `allow_insecure_jwks = true`.
#[test]
fn an_http_jwks_url_needs_allow_insecure_jwks() {
    let dir = tempdir("insecure-jwks");
    let pki = Pki::new();
    let (cert, _) = pki.cert(
        "localhost",
        &["localhost"],
        &scoregate::certgen::LeafOptions::default(),
    );
    std::fs::write(dir.join("other-jwks.json"), "{}").unwrap();
    let path = dir.join("scoregate.toml");
    write_config(
        &path,
        &cert,
        "http://127.0.0.1:1",
        "http://idp.example.test/jwks",
        "",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("allow_insecure_jwks = true\n", "");
    std::fs::write(&path, text).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("tokens.trusted_issuers[0].jwks") && e.contains("allow_insecure_jwks"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_admin_token() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(config(
        &pki,
        vec![service("iris", AuthMode::Key, &[backend.url()])],
    ))
    .await;
    for (m, p) in [
        ("GET", "/v1/services"),
        ("GET", "/v1/services/iris"),
        ("POST", "/v1/services/iris/listKeys"),
        ("POST", "/v1/services/iris/regenerateKeys"),
        ("POST", "/v1/reload"),
    ] {
        for tok in [None, Some("wrong-token")] {
            let r = admin(&gw, m, p, tok, r#"{"keyType":"Primary"}"#).await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (401, "Unauthorized"),
                "{m} {p} {tok:?}"
            );
        }
    }
    // Open endpoints.
    assert_eq!(admin(&gw, "GET", "/healthz", None, "").await.status, 200);
    assert_eq!(admin(&gw, "GET", "/readyz", None, "").await.status, 200);
    // The token file is 0600.
    use std::os::unix::fs::PermissionsExt;
    let tf = gw.server.shared.snapshot().config.admin.token_file.clone();
    assert_eq!(
        std::fs::metadata(&tf).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Bad keyType / keyValue are 400 and change nothing.
    let before = gw.keys("iris");
    let at = gw.admin_token();
    for body in [
        r#"{"keyType":"Tertiary"}"#,
        r#"{"keyType":"Primary","keyValue":"short"}"#,
        r#"{"keyType":"Primary","keyValue":"has spaces in it but is long enough 0123456789"}"#,
        "not json",
    ] {
        let r = admin(
            &gw,
            "POST",
            "/v1/services/iris/regenerateKeys",
            Some(&at),
            body,
        )
        .await;
        assert_eq!((r.status, r.code().as_str()), (400, "BadRequest"), "{body}");
    }
    assert_eq!(gw.keys("iris"), before);
    // The service shape.
    let r = admin(&gw, "GET", "/v1/services/iris", Some(&at), "").await;
    let v = r.json();
    for k in [
        "id",
        "name",
        "state",
        "authMode",
        "createdAt",
        "updatedAt",
        "scoringUri",
        "swaggerUri",
    ] {
        assert!(v.get(k).is_some(), "{k} in {v}");
    }
    assert_eq!(v["state"], "Succeeded");
    assert!(v["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        admin(&gw, "GET", "/v1/services/nosuch", Some(&at), "")
            .await
            .code(),
        "ServiceNotFound"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_regenerations_both_land() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let cfg = config(&pki, vec![service("iris", AuthMode::Key, &[backend.url()])]);
    let gw = Gw::start(cfg.clone()).await;
    let at = gw.admin_token();
    let p = "concurrent-primary-0123456789abcdefghij";
    let s = "concurrent-secondary-0123456789abcdefgh";
    let bp = format!(r#"{{"keyType":"Primary","keyValue":"{p}"}}"#);
    let bs = format!(r#"{{"keyType":"Secondary","keyValue":"{s}"}}"#);
    let (a, b) = tokio::join!(
        admin(
            &gw,
            "POST",
            "/v1/services/iris/regenerateKeys",
            Some(&at),
            &bp
        ),
        admin(
            &gw,
            "POST",
            "/v1/services/iris/regenerateKeys",
            Some(&at),
            &bs
        ),
    );
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(gw.keys("iris"), (p.to_string(), s.to_string()));
    gw.stop().await;
    let gw = Gw::start(cfg).await;
    assert_eq!(
        gw.keys("iris"),
        (p.to_string(), s.to_string()),
        "both survived in the store"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_key_store_write_answers_500_and_keeps_the_old_keys() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(config(
        &pki,
        vec![service("iris", AuthMode::Key, &[backend.url()])],
    ))
    .await;
    let at = gw.admin_token();
    let (primary, secondary) = gw.keys("iris");
    // Take the state dir away (root ignores permissions, so remove it instead).
    let state = gw.server.shared.snapshot().config.state_dir.clone();
    std::fs::remove_dir_all(&state).unwrap();
    let r = admin(
        &gw,
        "POST",
        "/v1/services/iris/regenerateKeys",
        Some(&at),
        r#"{"keyType":"Primary"}"#,
    )
    .await;
    assert_eq!(r.status, 500, "{:?}", r.body);
    assert!(r.json()["error"]["code"].is_string());
    assert_eq!(gw.keys("iris"), (primary.clone(), secondary));
    let mut c = pki.client().h1(gw.addr).await;
    assert_eq!(
        status(&mut c, "iris", &primary).await.0,
        200,
        "the old primary is still in force"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_cli_prints_the_response_or_the_bare_jwt() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(config(
        &pki,
        vec![service("iris", AuthMode::Token, &[backend.url()])],
    ))
    .await;
    let tf = gw.server.shared.snapshot().config.admin.token_file.clone();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_scoregate"))
            .args(["token", "iris"])
            .args(extra)
            .arg("--admin")
            .arg(format!("http://{}", gw.admin))
            .arg("--admin-token-file")
            .arg(&tf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let v: Value = serde_json::from_str(&run(&[])).unwrap();
    assert_eq!(v["tokenType"], "Bearer");
    let bare = run(&["--value"]).trim().to_string();
    assert_eq!(bare.split('.').count(), 3);
    let mut c = pki.client().h1(gw.addr).await;
    assert_eq!(status(&mut c, "iris", &bare).await.0, 200);
    gw.stop().await;
}

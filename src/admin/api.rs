//! The admin API's routes (contract §2). Every error is an `AdminError`, answered in the
//! contract's JSON shape.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::auth::keys::{KeyPair, KeySlot};
use crate::config::AuthMode;
use crate::crypto::Secret;
use crate::error::AdminError;
use crate::state::{Shared, Snapshot, WriteError};

/// Admin request bodies are small JSON documents.
const MAX_ADMIN_BODY: usize = 64 * 1024;

type AdminResponse = Response<Full<Bytes>>;

fn json(status: StatusCode, v: &Value) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn authorized(token: &str, req: &Request<Incoming>) -> bool {
    crate::auth::bearer(req.headers()).is_ok_and(|cred| bool::from(cred.ct_eq(token.as_bytes())))
}

/// The answers while the gateway is still starting (waiting for its shared store): alive, not
/// ready, nothing else yet.
pub fn starting(req: &Request<Incoming>) -> AdminResponse {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: starting (waiting for the shared store)\n".into(),
        ),
        _ => AdminError::store_unavailable(
            "The gateway is still starting: its shared store has not answered yet",
        )
        .to_response(),
    }
}

pub async fn route(shared: &Arc<Shared>, token: &str, req: Request<Incoming>) -> AdminResponse {
    let mut r = match api(shared, token, req).await {
        Ok(r) => r,
        Err(e) => e.to_response(),
    };
    // With a shared store, every answer says whether it could reach it (reads answer from
    // memory either way).
    if let Some(redis) = shared.store.redis() {
        r.headers_mut().insert(
            "x-scoregate-store",
            header::HeaderValue::from_static(if redis.is_up() { "up" } else { "unreachable" }),
        );
    }
    r
}

async fn api(
    shared: &Arc<Shared>,
    token: &str,
    req: Request<Incoming>,
) -> Result<AdminResponse, AdminError> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return Ok(text(StatusCode::OK, "text/plain", "ok\n".into())),
        (&Method::GET, "/readyz") => {
            return Ok(if shared.is_ready() {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            });
        }
        (&Method::GET, "/metrics") => {
            // Off the workers: a scrape must not hold up the requests queued behind it.
            let s = shared.clone();
            let body = tokio::task::spawn_blocking(move || s.metrics.render())
                .await
                .expect("rendering the metrics does not panic");
            return Ok(text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            ));
        }
        _ => {}
    }
    if !path.starts_with("/v1/") {
        return Err(AdminError::not_found());
    }
    if !authorized(token, &req) {
        return Err(AdminError::unauthorized());
    }
    let body = Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|_| AdminError::bad_request("Request body unreadable or too large."))?
        .to_bytes();
    let snap = shared.snapshot();
    let segs: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    match (&method, segs.as_slice()) {
        (&Method::GET, ["services"]) => {
            let mut names: Vec<&String> = snap.services.keys().collect();
            names.sort();
            let list: Vec<Value> = names
                .iter()
                .filter_map(|n| service_json(shared, &snap, n))
                .collect();
            Ok(json(StatusCode::OK, &Value::Array(list)))
        }
        (&Method::GET, ["services", name]) => service_json(shared, &snap, name)
            .map(|v| json(StatusCode::OK, &v))
            .ok_or_else(|| AdminError::unknown_service(name)),
        (&Method::POST, ["services", name, "listKeys"]) => {
            let keys = shared.keys(name).map_err(write_error)?;
            let mut v = keys_json(&keys);
            if query_flag(query.as_deref(), "usage")?
                && let Some(u) = shared.key_usage(name)
            {
                v["usage"] = usage_json(&u);
            }
            Ok(json(StatusCode::OK, &v))
        }
        (&Method::POST, ["services", name, "regenerateKeys"]) => {
            regenerate(shared, name, &body).await
        }
        (&Method::POST, ["services", name, "token"]) => issue_token(shared, &snap, name, &body),
        (&Method::PUT, ["services", name, "traffic"]) => set_traffic(shared, name, &body).await,
        // The effective config (start-time settings as running), secrets redacted: `nginx -T`.
        (&Method::GET, ["config"]) => Ok(json(StatusCode::OK, &snap.config.redacted_json())),
        (&Method::GET, ["replicas"]) => Ok(json(
            StatusCode::OK,
            &serde_json::to_value(match shared.store.redis() {
                // Read now: the list kept from the last registration (every 5 s) could still
                // name a replica whose registration has expired.
                Some(r) => r.live_replicas().await.unwrap_or_else(|_| r.replicas()),
                None => vec![shared.replica_info()],
            })
            .unwrap(),
        )),
        (&Method::POST, ["reload"]) => match crate::reload::reload(shared).await {
            Ok(report) => Ok(json(StatusCode::OK, &serde_json::to_value(report).unwrap())),
            Err(crate::reload::ReloadError::Build(crate::state::BuildError::Store(e)))
                if e.is_unavailable() =>
            {
                Err(AdminError::store_unavailable(&e.to_string()))
            }
            Err(e) if e.is_invalid_input() => Err(AdminError::new(
                StatusCode::BAD_REQUEST,
                "InvalidConfig",
                e.to_string(),
            )),
            Err(e) => Err(AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ReloadFailed",
                e.to_string(),
            )),
        },
        (
            _,
            ["services"]
            | ["services", _]
            | [
                "services",
                _,
                "listKeys" | "regenerateKeys" | "token" | "traffic",
            ]
            | ["reload"]
            | ["config"]
            | ["replicas"],
        ) => Err(AdminError::method_not_allowed()),
        _ => Err(AdminError::not_found()),
    }
}

fn keys_json(k: &KeyPair) -> Value {
    json!({"primaryKey": k.primary.expose(), "secondaryKey": k.secondary.expose()})
}

/// `?NAME=true|false` (or a bare `?NAME`); anything else in the query is a 400.
fn query_flag(query: Option<&str>, name: &str) -> Result<bool, AdminError> {
    let mut on = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "true")) {
            (n, "true") if n == name => on = true,
            (n, "false") if n == name => on = false,
            _ => {
                return Err(AdminError::bad_request(format!(
                    "Unknown query parameter or value {pair:?}: this call takes {name}=true or {name}=false."
                )));
            }
        }
    }
    Ok(on)
}

/// `listKeys?usage=true`: per key, the requests this replica authenticated with it since it came
/// into force (`since`), and when it was last used; times RFC 3339 UTC.
fn usage_json(u: &[crate::auth::keys::Usage; 2]) -> Value {
    let t = |secs: u64| {
        crate::store::plan::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    };
    let one = |u: &crate::auth::keys::Usage| json!({"requests": u.requests, "lastUsed": u.last_used.map(t), "since": t(u.since)});
    json!({"primary": one(&u[0]), "secondary": one(&u[1])})
}

fn write_error(e: WriteError) -> AdminError {
    match e {
        WriteError::UnknownService(n) => AdminError::unknown_service(&n),
        WriteError::NotKeyMode(n) => {
            AdminError::bad_request(format!("Service '{n}' is not in key mode."))
        }
        WriteError::Invalid(why) => AdminError::bad_request(why),
        WriteError::InvalidTraffic(e) => invalid_traffic(e.to_string()),
        WriteError::Build(why) => {
            tracing::error!(error = %why, "a stored change does not build");
            AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "WriteFailed",
                "The change was stored but could not be put in force; see the gateway's log.",
            )
        }
        WriteError::Store(e) if e.is_unavailable() => {
            tracing::warn!(error = %e, "admin write refused: the shared store is unreachable");
            AdminError::store_unavailable(&e.to_string())
        }
        WriteError::Store(e) => {
            tracing::error!(error = %e, "state store write failed; the old keys stay in force");
            AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "KeyStoreWriteFailed",
                "Could not write the key store; the old keys stay in force.",
            )
        }
    }
}

fn invalid_traffic(why: impl Into<String>) -> AdminError {
    AdminError::new(StatusCode::BAD_REQUEST, "InvalidTraffic", why)
}

/// A weight map of `PUT .../traffic`: deployment names to JSON integers from 0 to 100.
fn weights(
    member: &str,
    v: Option<&Value>,
) -> Result<Option<std::collections::BTreeMap<String, u32>>, AdminError> {
    let Some(v) = v else { return Ok(None) };
    let obj = v.as_object().ok_or_else(|| {
        invalid_traffic(format!(
            "{member} must be an object of deployment names to whole percentages"
        ))
    })?;
    let mut out = std::collections::BTreeMap::new();
    for (name, w) in obj {
        match w.as_u64() {
            Some(w) if w <= 100 => {
                out.insert(name.clone(), w as u32);
            }
            _ => {
                return Err(invalid_traffic(format!(
                    "{member}: the value of {name:?} must be a whole number from 0 to 100"
                )));
            }
        }
    }
    Ok(Some(out))
}

/// `PUT /v1/services/NAME/traffic` with `{"traffic": {...}, "mirrorTraffic": {...}}` (contract
/// §8): each member given replaces that whole map; 200 with both in force, or 400
/// `InvalidTraffic` and nothing changed.
async fn set_traffic(
    shared: &Shared,
    name: &str,
    body: &[u8],
) -> Result<AdminResponse, AdminError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        AdminError::bad_request(format!(
            "Expected {{\"traffic\": {{...}}, \"mirrorTraffic\": {{...}}}}: {e}"
        ))
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| AdminError::bad_request("Expected a JSON object."))?;
    if let Some(k) = obj
        .keys()
        .find(|k| *k != "traffic" && *k != "mirrorTraffic")
    {
        return Err(AdminError::bad_request(format!(
            "Unknown member {k:?}: only \"traffic\" and \"mirrorTraffic\"."
        )));
    }
    let traffic = weights("traffic", obj.get("traffic"))?;
    let mirror = weights("mirrorTraffic", obj.get("mirrorTraffic"))?;
    let (t, m) = shared
        .set_traffic(name, traffic.as_ref(), mirror.as_ref())
        .await
        .map_err(write_error)?;
    Ok(json(
        StatusCode::OK,
        &json!({"traffic": t, "mirrorTraffic": m}),
    ))
}

/// A token's subject (`sub`), from the optional body `{"subject": "..."}`: 1 to 128 characters
/// of `A-Z a-z 0-9 - _ . : @` (contract §7). `None`: no body (a random UUID is used).
fn token_subject(body: &[u8]) -> Result<Option<String>, AdminError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        subject: Option<String>,
    }
    if body.trim_ascii().is_empty() {
        return Ok(None);
    }
    let req: Req = serde_json::from_slice(body)
        .map_err(|e| AdminError::bad_request(format!("Expected {{\"subject\": optional}}: {e}")))?;
    match req.subject {
        Some(s)
            if !(1..=128).contains(&s.len())
                || !s.bytes().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'@')
                }) =>
        {
            Err(AdminError::bad_request(
                "subject must be 1 to 128 characters of A-Z a-z 0-9 - _ . : @",
            ))
        }
        s => Ok(s),
    }
}

fn issue_token(
    shared: &Shared,
    snap: &Snapshot,
    name: &str,
    body: &[u8],
) -> Result<AdminResponse, AdminError> {
    let svc = snap
        .service(name)
        .ok_or_else(|| AdminError::unknown_service(name))?;
    if svc.config.auth != AuthMode::Token {
        return Err(AdminError::bad_request(format!(
            "Service '{name}' is not in token mode."
        )));
    }
    let subject = token_subject(body)?;
    let t = &snap.config.tokens;
    match shared
        .signer
        .issue(name, subject.as_deref(), t.lifetime, t.refresh_after)
    {
        Ok(resp) => Ok(json(StatusCode::OK, &serde_json::to_value(resp).unwrap())),
        Err(e) => {
            tracing::error!(error = %e, "token signing failed");
            Err(AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "TokenIssueFailed",
                "Could not sign a token.",
            ))
        }
    }
}

async fn regenerate(shared: &Shared, name: &str, body: &[u8]) -> Result<AdminResponse, AdminError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Req {
        key_type: String,
        key_value: Option<String>,
    }
    let req: Req = serde_json::from_slice(body).map_err(|e| {
        AdminError::bad_request(format!(
            "Expected {{\"keyType\": \"Primary\"|\"Secondary\", \"keyValue\": optional}}: {e}"
        ))
    })?;
    let slot = match req.key_type.as_str() {
        "Primary" => KeySlot::Primary,
        "Secondary" => KeySlot::Secondary,
        other => {
            return Err(AdminError::bad_request(format!(
                "keyType must be \"Primary\" or \"Secondary\", not {other:?}."
            )));
        }
    };
    if let Some(v) = &req.key_value {
        crate::config::validate_key_value(v).map_err(AdminError::bad_request)?;
    }
    let pair = shared
        .regenerate_key(name, slot, req.key_value.map(Secret::new))
        .await
        .map_err(write_error)?;
    tracing::info!(service = name, key = slot.as_str(), "key regenerated");
    Ok(json(StatusCode::OK, &keys_json(&pair)))
}

/// The service shape of `GET /v1/services/NAME`.
pub fn service_json(shared: &Shared, snap: &Snapshot, name: &str) -> Option<Value> {
    let svc = snap.service(name)?;
    let rec = shared.record(name)?;
    let base = scoring_base(shared, snap);
    let deployments: Vec<Value> = svc
        .deployments
        .iter()
        .map(|d| json!({"name": d.name, "state": d.state()}))
        .collect();
    let backends: Vec<Value> = svc
        .deployments
        .iter()
        .flat_map(|d| d.upstream.backends.iter())
        .map(|b| backend_json(&b.view()))
        .collect();
    Some(json!({
        "id": rec.id,
        "name": name,
        "state": svc.state(),
        "authMode": svc.config.auth.as_str(),
        "createdAt": rec.created_at,
        "updatedAt": rec.updated_at,
        "scoringUri": format!("{base}/api/v1/service/{name}/score"),
        "swaggerUri": format!("{base}/api/v1/service/{name}/swagger.json"),
        "backends": backends,
        "traffic": svc.routing.traffic,
        "mirrorTraffic": svc.routing.mirror_traffic,
        "deployments": deployments,
    }))
}

/// One backend of `GET /v1/services/NAME`: `{"url", "up", "consecutiveFailures", "lastError",
/// "lastErrorAt", "inFlight"}` (`lastError`/`lastErrorAt` null until a failure).
fn backend_json(b: &crate::proxy::backend::BackendView) -> Value {
    json!({
        "url": b.url,
        "up": b.up,
        "consecutiveFailures": b.consecutive_failures,
        "lastError": b.last_error.as_ref().map(|e| e.message.as_str()),
        "lastErrorAt": b.last_error.as_ref().map(|e| crate::store::plan::rfc3339(e.at)),
        "inFlight": b.in_flight,
    })
}

/// `https://<CNAME>[:port]`, or `listen.public_url` when set.
pub fn scoring_base(shared: &Shared, snap: &Snapshot) -> String {
    let c = &snap.config;
    if let Some(u) = &c.listen.public_url {
        return u.clone();
    }
    let cname = c
        .tls
        .certificates
        .first()
        .map_or("localhost", |x| x.cname.as_str());
    let port = shared
        .bound
        .get()
        .and_then(|b| b.first())
        .or(c.listen.addresses.first())
        .map(|a| a.port());
    match port {
        Some(443) | None => format!("https://{cname}"),
        Some(p) => format!("https://{cname}:{p}"),
    }
}

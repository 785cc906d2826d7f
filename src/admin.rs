//! The admin listener (contract §2): plain HTTP for operators, loopback by default.
//!
//! `/healthz`, `/readyz` and `/metrics` are open; everything under `/v1` needs the admin token
//! (`Authorization: Bearer <token>`, compared in constant time). The token is read from
//! `admin.token_file`, or generated there (0600) when the file is missing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::keys::{KeyType, StoreError};
use crate::config::AdminConfig;
use crate::error::json_error;
use crate::state::{Gateway, Snapshot};

/// Admin request bodies are small JSON documents.
const MAX_ADMIN_BODY: usize = 64 * 1024;

type AdminResponse = Response<Full<Bytes>>;

pub struct AdminListener {
    gw: Arc<Gateway>,
    listener: TcpListener,
    token: Arc<String>,
    pub local_addr: SocketAddr,
}

/// Reads the admin token, generating it (0600) if the file does not exist.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let t = t.trim().to_string();
            anyhow::ensure!(
                !t.is_empty(),
                "admin token file {} is empty",
                path.display()
            );
            Ok(t)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let t = crate::auth::keys::generate_key();
            crate::auth::keys::write_atomically(path, format!("{t}\n").as_bytes())?;
            tracing::info!(path = %path.display(), "generated a new admin token");
            Ok(t)
        }
        Err(e) => anyhow::bail!("cannot read admin token file {}: {e}", path.display()),
    }
}

pub async fn bind(gw: Arc<Gateway>, cfg: &AdminConfig) -> anyhow::Result<AdminListener> {
    let token = load_or_create_token(&cfg.token_file)?;
    let listener = TcpListener::bind(cfg.address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on admin address {}: {e}", cfg.address))?;
    let local_addr = listener.local_addr()?;
    tracing::info!(address = %local_addr, token_file = %cfg.token_file.display(), "admin listener ready");
    Ok(AdminListener {
        gw,
        listener,
        token: Arc::new(token),
        local_addr,
    })
}

impl AdminListener {
    pub async fn serve(self, mut stop: watch::Receiver<bool>) {
        let graceful = GracefulShutdown::new();
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new());
        loop {
            let (tcp, _) = tokio::select! {
                r = self.listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = stop.changed() => break,
            };
            let gw = self.gw.clone();
            let token = self.token.clone();
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                let token = token.clone();
                async move { Ok::<_, Infallible>(route(&gw, &token, req).await) }
            });
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), svc));
            tokio::spawn(conn);
        }
        graceful.shutdown().await;
    }
}

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

async fn route(gw: &Gateway, token: &str, req: Request<Incoming>) -> AdminResponse {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => {
            return if gw.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            };
        }
        (&Method::GET, "/metrics") => {
            return text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                gw.metrics.render(),
            );
        }
        _ => {}
    }
    if !path.starts_with("/v1/") {
        return json_error(StatusCode::NOT_FOUND, "NotFound", "No such admin endpoint.");
    }
    if !authorized(token, &req) {
        let mut r = json_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "The admin API needs 'Authorization: Bearer <admin token>' (see admin.token_file).",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let body = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "Request body unreadable or too large.",
            );
        }
    };
    let snap = gw.snapshot();
    let segs: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    match (&method, segs.as_slice()) {
        (&Method::GET, ["services"]) => {
            let mut names: Vec<&String> = snap.services.keys().collect();
            names.sort();
            let list: Vec<Value> = names
                .iter()
                .filter_map(|n| service_json(gw, &snap, n))
                .collect();
            json(StatusCode::OK, &Value::Array(list))
        }
        (&Method::GET, ["services", name]) => match service_json(gw, &snap, name) {
            Some(v) => json(StatusCode::OK, &v),
            None => unknown_service(name),
        },
        (&Method::POST, ["services", name, "listKeys"]) => match gw.keystore.keys(name) {
            Ok(k) => json(
                StatusCode::OK,
                &json!({"primaryKey": k.primary, "secondaryKey": k.secondary}),
            ),
            Err(e) => store_error(e),
        },
        (&Method::POST, ["services", name, "regenerateKeys"]) => regenerate(gw, name, &body),
        (&Method::POST, ["services", name, "token"]) => issue_token(gw, &snap, name),
        (&Method::POST, ["reload"]) => match crate::reload::reload(gw).await {
            Ok(report) => json(StatusCode::OK, &serde_json::to_value(report).unwrap()),
            Err(crate::reload::ReloadError::Invalid(why)) => {
                json_error(StatusCode::BAD_REQUEST, "InvalidConfig", &why)
            }
            Err(crate::reload::ReloadError::Failed(why)) => {
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "ReloadFailed", &why)
            }
        },
        (
            _,
            ["services"]
            | ["services", _]
            | ["services", _, "listKeys" | "regenerateKeys" | "token"],
        ) => json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "Wrong method for this admin endpoint.",
        ),
        _ => json_error(StatusCode::NOT_FOUND, "NotFound", "No such admin endpoint."),
    }
}

fn issue_token(gw: &Gateway, snap: &Snapshot, name: &str) -> AdminResponse {
    let Some(svc) = snap.service(name) else {
        return unknown_service(name);
    };
    if svc.config.auth != crate::config::AuthMode::Token {
        return json_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Service '{name}' is not in token mode."),
        );
    }
    let t = &snap.config.tokens;
    match gw.signer.issue(name, t.lifetime, t.refresh_after) {
        Ok(resp) => json(StatusCode::OK, &serde_json::to_value(resp).unwrap()),
        Err(e) => {
            tracing::error!(error = %e, "token signing failed");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "TokenIssueFailed",
                "Could not sign a token.",
            )
        }
    }
}

fn unknown_service(name: &str) -> AdminResponse {
    json_error(
        StatusCode::NOT_FOUND,
        "ServiceNotFound",
        &format!("Service '{name}' does not exist."),
    )
}

fn store_error(e: StoreError) -> AdminResponse {
    match e {
        StoreError::UnknownService(n) => unknown_service(&n),
        StoreError::NotKeyMode(n) => json_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Service '{n}' is not in key mode."),
        ),
        StoreError::Invalid(why) => json_error(StatusCode::BAD_REQUEST, "BadRequest", &why),
        StoreError::Io { .. } => {
            tracing::error!(error = %e, "key store write failed; old keys stay in force");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "KeyStoreWriteFailed",
                "Could not write the key store; the old keys stay in force.",
            )
        }
    }
}

fn regenerate(gw: &Gateway, name: &str, body: &[u8]) -> AdminResponse {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Req {
        key_type: String,
        key_value: Option<String>,
    }
    let req: Req = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "Expected {{\"keyType\": \"Primary\"|\"Secondary\", \"keyValue\": optional}}: {e}"
                ),
            );
        }
    };
    let which = match req.key_type.as_str() {
        "Primary" => KeyType::Primary,
        "Secondary" => KeyType::Secondary,
        other => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("keyType must be \"Primary\" or \"Secondary\", not {other:?}."),
            );
        }
    };
    match gw
        .keystore
        .regenerate(name, which, req.key_value.as_deref())
    {
        Ok(k) => {
            tracing::info!(service = name, key = which.as_str(), "key regenerated");
            json(
                StatusCode::OK,
                &json!({"primaryKey": k.primary, "secondaryKey": k.secondary}),
            )
        }
        Err(e) => store_error(e),
    }
}

/// The service shape of `GET /v1/services/NAME`.
pub fn service_json(gw: &Gateway, snap: &Snapshot, name: &str) -> Option<Value> {
    let svc = snap.service(name)?;
    let rec = gw.keystore.record(name)?;
    let base = scoring_base(gw, snap);
    let state = if svc.upstream.any_healthy() {
        "Succeeded"
    } else {
        "Unhealthy"
    };
    Some(json!({
        "id": rec.id,
        "name": name,
        "state": state,
        "authMode": svc.config.auth.as_str(),
        "createdAt": rec.created_at,
        "updatedAt": rec.updated_at,
        "scoringUri": format!("{base}/api/v1/service/{name}/score"),
        "swaggerUri": format!("{base}/api/v1/service/{name}/swagger.json"),
    }))
}

/// `https://<CNAME>[:port]`, or `listen.public_url` when set.
pub fn scoring_base(gw: &Gateway, snap: &Snapshot) -> String {
    let c = &snap.config;
    if let Some(u) = &c.listen.public_url {
        return u.clone();
    }
    let cname = c
        .tls
        .certificates
        .first()
        .map_or("localhost", |x| x.cname.as_str());
    let port = gw
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

//! Gateway errors, and the one place that turns them into the contract's JSON responses.
//!
//! Every refusal the gateway makes itself is a `GatewayError`. Its variant decides the status,
//! the `code`, extra headers (`WWW-Authenticate`, `Allow`, `Retry-After`), the `code` label of
//! `scoregate_requests_total` and the access log's `status`, so that the response, the log and
//! the metrics never disagree. Each error also says which side failed (`Side`: the client, the
//! backend, or the gateway itself) and whether the backend may have seen the request
//! (`reached_backend`), after Pingora's `ErrorSource` and `RetryType`. Causes are kept as typed
//! sources (`BackendError`), never flattened into strings.
//!
//! The admin API's errors (`AdminError`, in `admin`) share the JSON shape (`json_error`).

mod admin;

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::route::Endpoint;
pub use admin::AdminError;

/// A boxed error cause from a lower layer (a connect error, a hyper error).
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why a credential was refused; also the `reason` label of auth-failure metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    WrongKey,
    InvalidToken,
    ExpiredToken,
    WrongMode,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 6] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::WrongKey,
        AuthFailure::InvalidToken,
        AuthFailure::ExpiredToken,
        AuthFailure::WrongMode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::WrongKey => "wrong_key",
            AuthFailure::InvalidToken => "invalid_token",
            AuthFailure::ExpiredToken => "expired_token",
            AuthFailure::WrongMode => "wrong_mode",
        }
    }
}

/// Which side of the gateway a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something the gateway refuses (4xx).
    Client,
    /// The backend could not be reached, broke the exchange, or took too long.
    Backend,
    /// The gateway itself declined: overloaded, or its shared store is out of reach.
    Gateway,
}

/// Why every backend was full (503 `ServiceOverloaded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// `limits.max_in_flight` requests are in progress across the gateway.
    InFlightCap,
    /// Every backend is at its limit and the wait queue is full.
    QueueFull,
    /// Every backend stayed at its limit for `max_request_wait_time`.
    WaitExpired,
}

impl Overload {
    fn as_str(self) -> &'static str {
        match self {
            Overload::InFlightCap => "too many requests in flight",
            Overload::QueueFull => "every backend is busy and the wait queue is full",
            Overload::WaitExpired => "every backend stayed busy for max_request_wait_time",
        }
    }
}

/// Why a request got no answer from a backend (502 `BackendUnavailable`).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No backend is available: every one fails its health check or is backed off.
    #[error("no backend is available")]
    NoneAvailable,
    /// No connection could be made (after the one retry on another backend, when there was one).
    #[error("cannot connect to the backend")]
    Connect(#[source] BoxError),
    /// The exchange broke after the request was (maybe) sent: a reset, a malformed answer.
    #[error("the backend broke the exchange")]
    Exchange(#[source] BoxError),
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no route for this path")]
    NotFound,
    #[error("no service named {0:?}")]
    ServiceNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed(Endpoint),
    #[error("client address not allowed for this service")]
    Forbidden,
    #[error("credential refused: {}", .reason.as_str())]
    Unauthorized {
        reason: AuthFailure,
        token_mode: bool,
    },
    #[error("request body stalled for {0:?}")]
    RequestTimeout(Duration),
    #[error("request body over {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// A rate limit of the service (contract §7); `policy` is the refusing policy with the
    /// longest wait, `retry_after` that wait in whole seconds, rounded up.
    #[error("rate limit {policy:?}: retry after {retry_after}s")]
    TooManyRequests {
        retry_after: u32,
        policy: std::sync::Arc<str>,
    },
    /// `azureml-model-deployment` names no pinnable deployment of the service (contract §8).
    #[error("no such deployment")]
    DeploymentNotFound,
    /// No deployment takes live traffic and the request pins none (contract §8).
    #[error("no deployment takes live traffic")]
    NoTraffic,
    #[error("overloaded: {}", .0.as_str())]
    Overloaded(Overload),
    #[error("backend unavailable")]
    BackendUnavailable(#[source] BackendError),
    #[error("backend did not answer within {0:?}")]
    ScoringTimeout(Duration),
    /// A replica started from its cache has no record of this key- or token-mode service while
    /// the shared store is unreachable (contract §6).
    #[error("the shared store is unreachable and this replica has no record of the service")]
    StoreUnavailable,
}

/// Every error code the gateway can answer with, for metrics and tests.
pub const CODES: [&str; 15] = [
    "BadRequest",
    "NotFound",
    "ServiceNotFound",
    "MethodNotAllowed",
    "Forbidden",
    "Unauthorized",
    "RequestTimeout",
    "PayloadTooLarge",
    "TooManyRequests",
    "DeploymentNotFound",
    "NoTraffic",
    "ServiceOverloaded",
    "BackendUnavailable",
    "ScoringTimeout",
    "StoreUnavailable",
];

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotFound
            | GatewayError::ServiceNotFound(_)
            | GatewayError::DeploymentNotFound
            | GatewayError::NoTraffic => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Forbidden => StatusCode::FORBIDDEN,
            GatewayError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::BackendUnavailable(_) => StatusCode::BAD_GATEWAY,
            GatewayError::ScoringTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The contract's `code`; also the `code` label of the request counter.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "BadRequest",
            GatewayError::NotFound => "NotFound",
            GatewayError::ServiceNotFound(_) => "ServiceNotFound",
            GatewayError::MethodNotAllowed(_) => "MethodNotAllowed",
            GatewayError::Forbidden => "Forbidden",
            GatewayError::Unauthorized { .. } => "Unauthorized",
            GatewayError::RequestTimeout(_) => "RequestTimeout",
            GatewayError::PayloadTooLarge { .. } => "PayloadTooLarge",
            GatewayError::TooManyRequests { .. } => "TooManyRequests",
            GatewayError::DeploymentNotFound => "DeploymentNotFound",
            GatewayError::NoTraffic => "NoTraffic",
            GatewayError::Overloaded(_) => "ServiceOverloaded",
            GatewayError::BackendUnavailable(_) => "BackendUnavailable",
            GatewayError::ScoringTimeout(_) => "ScoringTimeout",
            GatewayError::StoreUnavailable => "StoreUnavailable",
        }
    }

    /// The index of `code()` in `CODES` (the metrics' label slot).
    pub fn code_index(&self) -> usize {
        CODES
            .iter()
            .position(|c| *c == self.code())
            .expect("every code is listed")
    }

    pub fn side(&self) -> Side {
        match self {
            GatewayError::BadRequest(_)
            | GatewayError::NotFound
            | GatewayError::ServiceNotFound(_)
            | GatewayError::MethodNotAllowed(_)
            | GatewayError::Forbidden
            | GatewayError::Unauthorized { .. }
            | GatewayError::RequestTimeout(_)
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::TooManyRequests { .. }
            | GatewayError::DeploymentNotFound
            | GatewayError::NoTraffic => Side::Client,
            GatewayError::Overloaded(_) | GatewayError::StoreUnavailable => Side::Gateway,
            GatewayError::BackendUnavailable(_) | GatewayError::ScoringTimeout(_) => Side::Backend,
        }
    }

    /// Whether a backend may have received (part of) the request. `false` means a retry cannot
    /// make a model score twice: the gateway itself retries a failed connect on another backend
    /// only then, and clients may safely retry such answers.
    pub fn reached_backend(&self) -> bool {
        match self {
            GatewayError::BackendUnavailable(BackendError::Exchange(_))
            | GatewayError::ScoringTimeout(_) => true,
            // A streamed body cut off at the limit or a stalled upload was being sent.
            GatewayError::PayloadTooLarge { .. } | GatewayError::RequestTimeout(_) => true,
            _ => false,
        }
    }

    /// What the client reads: what happened and what to do about it. Never echoes credentials.
    fn message(&self) -> String {
        match self {
            GatewayError::BadRequest(why) => format!("Bad request: {why}."),
            GatewayError::NotFound => {
                "No such endpoint. Scoring URLs look like /api/v1/service/<name>/score.".into()
            }
            GatewayError::ServiceNotFound(name) => format!(
                "Service '{name}' does not exist. Check the service name in the scoring URI."
            ),
            GatewayError::MethodNotAllowed(e) => {
                format!("This endpoint takes {} only.", e.allow_header())
            }
            GatewayError::Forbidden => {
                "Your network address is not allowed to call this service.".into()
            }
            GatewayError::Unauthorized { reason, token_mode } => {
                unauthorized_message(*reason, *token_mode).into()
            }
            GatewayError::RequestTimeout(t) => format!(
                "The request body stopped arriving for {}. Send the body without pauses.",
                humantime::format_duration(*t)
            ),
            GatewayError::PayloadTooLarge { limit } => {
                format!("The request body is larger than this service's limit of {limit} bytes.")
            }
            GatewayError::TooManyRequests {
                retry_after,
                policy,
            } => format!(
                "Rate limit '{policy}' of this service reached. Retry after {retry_after} second{}.",
                if *retry_after == 1 { "" } else { "s" }
            ),
            // The message names no deployment: which ones exist is not the client's business.
            GatewayError::DeploymentNotFound => "The deployment named in the azureml-model-deployment header does not exist for this service or cannot be pinned. Check the header's value, or leave it out to use the service's traffic split.".into(),
            GatewayError::NoTraffic => "No deployment of this service takes live traffic. Name a deployment in the azureml-model-deployment header, or ask the operator to set a traffic split.".into(),
            GatewayError::Overloaded(what) => format!(
                "The service is overloaded ({}). Retry after the time in Retry-After.",
                what.as_str()
            ),
            GatewayError::BackendUnavailable(_) => {
                "The model backend could not be reached or broke its response. Retry later.".into()
            }
            GatewayError::ScoringTimeout(t) => format!(
                "The model did not answer within the scoring timeout of {}.",
                humantime::format_duration(*t)
            ),
            GatewayError::StoreUnavailable => {
                "This gateway cannot check credentials for the service right now (its shared store is unreachable). Retry after the time in Retry-After.".into()
            }
        }
    }

    /// The one function from an error to its response: status, JSON body, and the headers the
    /// code calls for. The per-request headers (`x-ms-request-id`, ...) and the decision to
    /// close an HTTP/1.1 connection after it (which also depends on what is left of the request
    /// body) are added by `gateway::respond`.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut resp = json_error(self.status(), self.code(), &self.message());
        let h = resp.headers_mut();
        match self {
            GatewayError::Unauthorized { reason, token_mode } => {
                let v = if *token_mode && *reason != AuthFailure::Missing {
                    "Bearer error=\"invalid_token\""
                } else {
                    "Bearer"
                };
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
            }
            GatewayError::MethodNotAllowed(e) => {
                h.insert(header::ALLOW, HeaderValue::from_static(e.allow_header()));
            }
            GatewayError::Overloaded(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::StoreUnavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            GatewayError::TooManyRequests { retry_after, .. } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        resp
    }
}

fn unauthorized_message(reason: AuthFailure, token_mode: bool) -> &'static str {
    match (reason, token_mode) {
        (AuthFailure::Missing, _) => {
            "Authorization header missing. Send 'Authorization: Bearer <key or token>'."
        }
        (AuthFailure::Malformed, _) => {
            "Authorization header malformed. Send 'Authorization: Bearer <key or token>'."
        }
        (AuthFailure::WrongMode, true) => {
            "This service takes tokens, not keys. Get a token and send it as 'Bearer <token>'."
        }
        (AuthFailure::WrongMode, false) => {
            "This service takes keys, not tokens. Send the primary or secondary key."
        }
        (AuthFailure::ExpiredToken, _) => "The token has expired. Get a new token.",
        (_, true) => "The token is not valid for this service.",
        (_, false) => "The key is not valid for this service.",
    }
}

/// The contract's error shape, `{"error": {"code", "message"}}` as `application/json`, for the
/// gateway's and the admin API's errors alike.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Formats an error with its sources (`a: b: c`), for logs.
pub struct DisplayChain<'a>(pub &'a (dyn StdError + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

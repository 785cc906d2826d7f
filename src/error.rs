//! Gateway errors and the one place that turns them into the contract's JSON responses.
//!
//! Every refusal the gateway makes itself is a `GatewayError`. Its variant decides the status,
//! the `code`, extra headers (`WWW-Authenticate`, `Allow`, `Retry-After`) and the metric label,
//! so the response, the access log and the metrics never disagree.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::route::Endpoint;

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

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
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
    #[error("request body over {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),
    #[error("backend did not answer within {0:?}")]
    ScoringTimeout(std::time::Duration),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotFound | GatewayError::ServiceNotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Forbidden => StatusCode::FORBIDDEN,
            GatewayError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::BackendUnavailable(_) => StatusCode::BAD_GATEWAY,
            GatewayError::ScoringTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "BadRequest",
            GatewayError::NotFound => "NotFound",
            GatewayError::ServiceNotFound(_) => "ServiceNotFound",
            GatewayError::MethodNotAllowed(_) => "MethodNotAllowed",
            GatewayError::Forbidden => "Forbidden",
            GatewayError::Unauthorized { .. } => "Unauthorized",
            GatewayError::PayloadTooLarge { .. } => "PayloadTooLarge",
            GatewayError::Overloaded(_) => "ServiceOverloaded",
            GatewayError::BackendUnavailable(_) => "BackendUnavailable",
            GatewayError::ScoringTimeout(_) => "ScoringTimeout",
        }
    }

    /// What the client reads: what happened and what to do about it. Never echoes credentials.
    fn message(&self) -> String {
        match self {
            GatewayError::BadRequest(why) => format!("Bad request: {why}."),
            GatewayError::NotFound => {
                "No such endpoint. Scoring URLs look like /api/v1/service/<name>/score.".into()
            }
            GatewayError::ServiceNotFound(name) => {
                format!("Service '{name}' does not exist. Check the service name in the scoring URI.")
            }
            GatewayError::MethodNotAllowed(e) => format!(
                "This endpoint takes {} only.",
                e.allow_header()
            ),
            GatewayError::Forbidden => "Your network address is not allowed to call this service.".into(),
            GatewayError::Unauthorized { reason, token_mode } => match (reason, token_mode) {
                (AuthFailure::Missing, _) => {
                    "Authorization header missing. Send 'Authorization: Bearer <key or token>'.".into()
                }
                (AuthFailure::Malformed, _) => {
                    "Authorization header malformed. Send 'Authorization: Bearer <key or token>'.".into()
                }
                (AuthFailure::WrongMode, true) => {
                    "This service takes tokens, not keys. Get a token and send it as 'Bearer <token>'.".into()
                }
                (AuthFailure::WrongMode, false) => {
                    "This service takes keys, not tokens. Send the primary or secondary key.".into()
                }
                (AuthFailure::ExpiredToken, _) => "The token has expired. Get a new token.".into(),
                (_, true) => "The token is not valid for this service.".into(),
                (_, false) => "The key is not valid for this service.".into(),
            },
            GatewayError::PayloadTooLarge { limit } => {
                format!("The request body is larger than this service's limit of {limit} bytes.")
            }
            GatewayError::Overloaded(what) => {
                format!("The service is overloaded ({what}). Retry after the time in Retry-After.")
            }
            GatewayError::BackendUnavailable(_) => {
                "The model backend could not be reached or broke its response. Retry later.".into()
            }
            GatewayError::ScoringTimeout(t) => format!(
                "The model did not answer within the scoring timeout of {}.",
                humantime::format_duration(*t)
            ),
        }
    }

    /// Builds the contract's JSON error response.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.message() }
        });
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
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
            _ => {}
        }
        resp
    }
}

/// A JSON error for the admin API, in the same shape as the gateway's.
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

#[cfg(test)]
mod tests {
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

        let r = GatewayError::Overloaded("queue full").to_response();
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(body_json(r).await["error"]["code"], "ServiceOverloaded");
    }
}

//! `AdminError`: an error of the admin API (status, code, message, and the headers some of them
//! carry), answered in the contract's JSON error shape (`json_error`).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::json_error;

/// An error of the admin API: its status, code and message, answered as `json_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `Retry-After` in seconds (503 `StoreUnavailable`).
    pub retry_after: Option<u32>,
}

impl AdminError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AdminError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", "No such admin endpoint.")
    }

    pub fn unknown_service(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ServiceNotFound",
            format!("Service '{name}' does not exist."),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "Wrong method for this admin endpoint.",
        )
    }

    /// 503 `StoreUnavailable` with `Retry-After` (contract §6): the shared store is unreachable
    /// or did not acknowledge a write in time; this replica applied nothing.
    pub fn store_unavailable(why: &str) -> Self {
        AdminError {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "StoreUnavailable",
                format!(
                    "{why}. Nothing was applied here; if the write reached the store it takes effect fleet-wide at the next sync, so read the state back before retrying."
                ),
            )
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "The admin API needs 'Authorization: Bearer <admin token>' (see admin.token_file).",
        )
    }

    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut r = json_error(self.status, self.code, &self.message);
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

//! Authentication of scoring requests: `Authorization: Bearer <credential>`, checked against the
//! service's auth mode. Keys (`keys`) and tokens (`tokens`) are never both on for one service.

pub mod issuers;
pub mod keys;
pub mod signer;
pub mod tokens;

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::error::{AuthFailure, GatewayError};
use keys::{KeySlot, SharedKeys};

/// How one service authenticates, resolved when the snapshot is built.
pub enum ServiceAuth {
    None,
    /// A key- or token-mode service this replica has no record of while the shared store is
    /// unreachable (it started from its cache): 503 `StoreUnavailable` until the store answers.
    Unavailable,
    Key(SharedKeys),
    Token(tokens::ServiceTokens),
}

/// Who the request turned out to be (the access log's `auth` field, the key-use metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Not checked yet (the request was refused before authentication).
    Unchecked,
    Anonymous,
    Key(KeySlot),
    /// A verified token, and whose it is (`by = "credential"` rate limits).
    Token(tokens::Subject),
    Failed(AuthFailure),
}

impl AuthOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthOutcome::Unchecked => "-",
            AuthOutcome::Anonymous => "none",
            AuthOutcome::Key(KeySlot::Primary) => "key:primary",
            AuthOutcome::Key(KeySlot::Secondary) => "key:secondary",
            AuthOutcome::Token(_) => "token",
            AuthOutcome::Failed(f) => f.as_str(),
        }
    }
}

/// The credential of `Authorization: Bearer <credential>`. The scheme is case-insensitive
/// (RFC 9110 §11.1); exactly one `Authorization` header is accepted.
pub fn bearer(headers: &HeaderMap) -> Result<&[u8], AuthFailure> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let v = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    let v = v.as_bytes();
    if v.len() < 7 || !v[..6].eq_ignore_ascii_case(b"bearer") || v[6] != b' ' {
        return Err(AuthFailure::Malformed);
    }
    let cred = v[7..].trim_ascii();
    if cred.is_empty() {
        return Err(AuthFailure::Missing);
    }
    Ok(cred)
}

/// A JWT has exactly two dots; keys (base64url) have none.
fn looks_like_jwt(cred: &[u8]) -> bool {
    cred.iter().filter(|&&c| c == b'.').count() == 2
}

impl ServiceAuth {
    pub fn is_token(&self) -> bool {
        matches!(self, ServiceAuth::Token(_))
    }

    /// Checks the request's credential. A key is refused in token mode and a token in key mode.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<AuthOutcome, GatewayError> {
        let token_mode = self.is_token();
        let refuse = |reason| GatewayError::Unauthorized { reason, token_mode };
        match self {
            ServiceAuth::None => Ok(AuthOutcome::Anonymous),
            ServiceAuth::Unavailable => Err(GatewayError::StoreUnavailable),
            ServiceAuth::Key(keys) => {
                let cred = bearer(headers).map_err(refuse)?;
                match keys.check(cred) {
                    Some(which) => Ok(AuthOutcome::Key(which)),
                    None if looks_like_jwt(cred) => Err(refuse(AuthFailure::WrongMode)),
                    None => Err(refuse(AuthFailure::WrongKey)),
                }
            }
            ServiceAuth::Token(t) => {
                let cred = bearer(headers).map_err(refuse)?;
                if !looks_like_jwt(cred) {
                    return Err(refuse(AuthFailure::WrongMode));
                }
                t.verify(cred).map(AuthOutcome::Token).map_err(refuse)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(v: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in v {
            m.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn bearer_forms() {
        assert_eq!(bearer(&h(&["Bearer abc"])), Ok(&b"abc"[..]));
        assert_eq!(bearer(&h(&["bearer abc"])), Ok(&b"abc"[..]));
        assert_eq!(bearer(&h(&["BEARER abc "])), Ok(&b"abc"[..]));
        assert_eq!(bearer(&h(&[])), Err(AuthFailure::Missing));
        assert_eq!(bearer(&h(&["Bearer "])), Err(AuthFailure::Missing));
        assert_eq!(bearer(&h(&["abc"])), Err(AuthFailure::Malformed));
        assert_eq!(bearer(&h(&["Basic abc"])), Err(AuthFailure::Malformed));
        assert_eq!(bearer(&h(&["Bearerabc"])), Err(AuthFailure::Malformed));
        assert_eq!(
            bearer(&h(&["Bearer a", "Bearer b"])),
            Err(AuthFailure::Malformed)
        );
    }

    proptest::proptest! {
        /// `Bearer <credential>` in any case of the scheme gives back the credential.
        #[test]
        fn bearer_round_trips(cred in "[!-~]{1,200}", scheme in "[bB][eE][aA][rR][eE][rR]") {
            let headers = h(&[&format!("{scheme} {cred}")]);
            proptest::prop_assert_eq!(bearer(&headers), Ok(cred.as_bytes()));
        }

        /// Any header value: never a panic, and a credential only behind a bearer scheme.
        #[test]
        fn any_header_value_is_safe(v in "[ -~]{0,64}") {
            let headers = h(&[&v]);
            if let Ok(c) = bearer(&headers) {
                proptest::prop_assert!(v[..6].eq_ignore_ascii_case("bearer") && v.as_bytes()[6] == b' ');
                proptest::prop_assert!(!c.is_empty() && v.trim_end().ends_with(std::str::from_utf8(c).unwrap()));
            }
        }
    }
}

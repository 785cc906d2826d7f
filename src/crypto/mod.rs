//! The process's one crypto provider (aws-lc-rs, chosen by measurement: README, "Crypto
//! provider"), random bytes from it, and `Secret`, the type that holds key material so that it
//! never reaches a log through `Debug`.

pub mod seal;

use std::fmt;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use rustls::crypto::CryptoProvider;
use subtle::ConstantTimeEq;

/// The one crypto provider of the process (rustls panics if two are compiled in and none is
/// chosen explicitly, so every TLS config is built with this one).
pub fn provider() -> &'static Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Fills `buf` from the provider's CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    provider()
        .secure_random
        .fill(buf)
        .expect("the system random generator failed");
}

/// 32 random bytes, URL-safe base64 without padding (43 characters): service keys, admin tokens.
pub fn generate_key() -> String {
    let mut buf = [0u8; 32];
    fill_random(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Key material or a password: printed as `***` by `Debug` and `Display`, compared in constant
/// time. `expose` is the one way to the value, so every use of a secret is greppable.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}

impl Eq for Secret {}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "hunter2-hunter2");
        assert_eq!(s, Secret::new("hunter2-hunter2"));
        assert_ne!(s, Secret::new("hunter2"));
    }

    #[test]
    fn generated_keys_are_43_url_safe_characters() {
        let k = generate_key();
        assert_eq!(k.len(), 43);
        assert!(
            k.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(k, generate_key());
    }
}

//! The config as operators read it (`GET /v1/config`, `scoregate config show`, like `nginx -T`):
//! the effective values as JSON, with every secret redacted.
//!
//! The config types derive `Serialize` (`Config::redacted_json`); the helpers here are what
//! their fields name in `serialize_with`. `Secret` deliberately has no `Serialize` of its own: a secret field that does
//! not name `redacted` does not compile, so no secret reaches this view by accident (and none can
//! be silently redacted in a file that must keep it). File *paths* are shown; what the gateway
//! read from files (a Redis URL from `url_file`, the sealing keys) is not.

use std::fmt::Display;
use std::time::Duration;

use serde::Serializer;
use serde::ser::SerializeSeq;

use crate::crypto::Secret;

/// What a redacted secret reads as.
pub const REDACTED: &str = "(redacted)";

/// The URL without `user:password@`, for logs, `check`, the store cache's `source` and this view.
pub fn display_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// A duration as the config writes it: `"25s"`, `"500ms"`, `"1h 30m"`.
pub fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// An optional duration as written (`"500ms"`), or null when unset.
pub fn duration_option<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration(d, s),
        None => s.serialize_none(),
    }
}

/// A list of values by their `Display` (CIDRs, URLs).
pub fn display_list<T: Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for x in v {
        seq.serialize_element(&x.to_string())?;
    }
    seq.end()
}

pub fn redacted<S: Serializer>(_: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(REDACTED)
}

/// `null` when unset: whether a secret is set is not itself secret.
pub fn redacted_option<S: Serializer>(v: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

/// A URL without `user:password@`.
pub fn without_credentials<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&display_url(url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn secrets_are_redacted_and_settings_read_as_written() {
        let dir = std::env::temp_dir().join(format!("scoregate-view-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sealing = "sealing-key-content-0123456789ab"; // 32 bytes, raw
        std::fs::write(dir.join("store-key"), sealing).unwrap();
        let text = r#"
[listen]
address = "127.0.0.1:8443"
[[tls.certificates]]
cname = "scoring.example.test"
cert = "certs/fullchain.pem"
key = "certs/key.pem"
[state]
store = "redis"
[state.redis]
url = "redis://scoregate:redis-password-42@redis.internal:6379/0"
prefix = "sg"
secret_key_file = "store-key"
[tokens]
[[tokens.trusted_issuers]]
issuer = "https://idp.example.test/"
audience = "api://x"
algorithm = "RS256"
jwks = "https://jwks-user:jwks-password@idp.example.test/keys"
[[service]]
name = "iris"
backends = ["http://10.0.0.5:5001"]
max_request_wait_time = "750ms"
primary_key = "preset-primary-key-value-0123456789abcdef"
"#;
        let config = Config::parse(text, &dir.join("scoregate.toml")).unwrap();
        let v = config.redacted_json();
        let all = v.to_string();
        for secret in [
            "preset-primary-key-value-0123456789abcdef",
            "redis-password-42",
            sealing,
            "jwks-password",
        ] {
            assert!(!all.contains(secret), "{secret} leaked: {all}");
        }
        let svc = &v["services"][0];
        assert_eq!(svc["primary_key"], REDACTED);
        assert_eq!(svc["secondary_key"], serde_json::Value::Null);
        assert_eq!(svc["max_request_wait_time"], "750ms");
        assert_eq!(svc["auth"], "key");
        assert_eq!(svc["backends"][0], "http://10.0.0.5:5001/");
        assert_eq!(v["store"]["store"], "redis");
        assert_eq!(v["store"]["url"], REDACTED);
        assert_eq!(v["store"]["display_url"], "redis://redis.internal:6379/0");
        assert_eq!(v["store"]["secret_key"], REDACTED);
        assert_eq!(
            v["tokens"]["trusted_issuers"][0]["jwks"]["url"],
            "https://idp.example.test/keys"
        );
        assert_eq!(v["server"]["drain_timeout"], "25s");
        assert_eq!(v["listen"]["addresses"][0], "127.0.0.1:8443");
        // Paths are shown, absolute.
        assert_eq!(
            Path::new(v["tls"]["certificates"][0]["cert"].as_str().unwrap()),
            dir.join("certs/fullchain.pem")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

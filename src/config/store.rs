//! Validation of `[state]`'s store settings: `store = "file" | "redis"` and `[state.redis]`
//! (contract §6). The URL and the sealing keys are read from their files here (the config is
//! loaded off the runtime); problems name their key and never print a password.

use std::path::Path;

use super::defaults::*;
use super::raw::{RawRedis, RawState};
use super::types::{RedisConfig, StoreConfig};
use super::validate::Validator;
pub use super::view::display_url;
use crate::crypto::Secret;

/// The first problem with a Redis URL, in words that never repeat it (it may hold a password).
fn url_problem(url: &str) -> Option<&'static str> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Some("must start with redis:// or rediss://");
    }
    if url.contains('#') {
        return Some(
            "must not have a #fragment (one that turns off certificate verification is refused)",
        );
    }
    let lower = url.to_ascii_lowercase();
    if lower.contains("insecure") || lower.contains("verify") || lower.contains("skip") {
        return Some("must not carry parameters that change certificate verification");
    }
    if url.contains(char::is_whitespace) {
        return Some("must not contain whitespace");
    }
    if fred::prelude::Config::from_url(url).is_err() {
        return Some("is not a Redis URL like redis://[user:password@]host[:port][/db]");
    }
    None
}

impl Validator {
    pub(super) fn store(&mut self, raw: &RawState) -> StoreConfig {
        match raw.store.as_deref() {
            None | Some("file") => {
                if raw.redis.is_some() {
                    self.problem("state.redis", "is set but state.store is not \"redis\"");
                }
                StoreConfig::File
            }
            Some("redis") => match &raw.redis {
                Some(r) => StoreConfig::Redis(Box::new(self.redis(r))),
                None => {
                    self.problem(
                        "state.redis",
                        "state.store = \"redis\" needs a [state.redis] table (url or url_file, prefix, secret_key_file)",
                    );
                    StoreConfig::File
                }
            },
            Some(other) => {
                self.problem(
                    "state.store",
                    format!("{other:?} is not one of \"file\", \"redis\""),
                );
                StoreConfig::File
            }
        }
    }

    fn read_secret_file(&mut self, key: &str, p: &str) -> Option<Secret> {
        let path = self.path(p);
        match crate::files::read_text_capped(&path, crate::files::MAX_SMALL_FILE) {
            Ok(t) if t.trim().is_empty() => {
                self.problem(key, format!("{} is empty", path.display()));
                None
            }
            Ok(t) => Some(Secret::new(t.trim().to_string())),
            Err(e) => {
                self.problem(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    fn redis(&mut self, r: &RawRedis) -> RedisConfig {
        let url = match (&r.url, &r.url_file) {
            (Some(_), Some(_)) => {
                self.problem("state.redis.url", "set url or url_file, not both");
                None
            }
            (Some(u), None) => Some(Secret::new(u.trim().to_string())),
            (None, Some(f)) => self.read_secret_file("state.redis.url_file", f),
            (None, None) => {
                self.problem(
                    "state.redis.url_file",
                    "needs url_file (a file holding redis:// or rediss://) or url",
                );
                None
            }
        };
        let url_key = if r.url.is_some() {
            "state.redis.url"
        } else {
            "state.redis.url_file"
        };
        if let Some(u) = &url
            && let Some(why) = url_problem(u.expose())
        {
            self.problem(url_key, format!("the Redis URL {why}"));
        }
        let prefix = r.prefix.clone().unwrap_or_default();
        if prefix.is_empty() {
            self.problem(
                "state.redis.prefix",
                "is required: every key and channel starts with it (several fleets can share one Redis)",
            );
        } else if prefix.len() > 64 || !prefix.bytes().all(|c| c.is_ascii_graphic()) {
            self.problem(
                "state.redis.prefix",
                "must be 1 to 64 printable characters without spaces",
            );
        }
        let secret_key = r
            .secret_key_file
            .as_deref()
            .and_then(|f| self.read_secret_file("state.redis.secret_key_file", f));
        if r.secret_key_file.is_none() && !r.allow_plaintext_secrets {
            self.problem(
                "state.redis.secret_key_file",
                "is required (32 bytes, raw or base64: `openssl rand -base64 32`) unless allow_plaintext_secrets = true",
            );
        }
        let previous_secret_key = r
            .previous_secret_key_file
            .as_deref()
            .and_then(|f| self.read_secret_file("state.redis.previous_secret_key_file", f));
        for (k, v) in [
            ("state.redis.secret_key_file", &secret_key),
            ("state.redis.previous_secret_key_file", &previous_secret_key),
        ] {
            if let Some(v) = v
                && let Err(e) =
                    crate::crypto::seal::Sealer::new("check", Some(v.expose().as_bytes()), None)
            {
                self.problem(k, e);
            }
        }
        let file = |v: &mut Validator, p: &Option<String>| p.as_deref().map(|p| v.path(p));
        let ca_file = file(self, &r.ca_file);
        let client_cert = file(self, &r.client_cert);
        let client_key = file(self, &r.client_key);
        if client_cert.is_some() != client_key.is_some() {
            self.problem(
                "state.redis.client_cert",
                "client_cert and client_key go together",
            );
        }
        let tls = url
            .as_ref()
            .is_some_and(|u| u.expose().starts_with("rediss://"));
        if !tls && (ca_file.is_some() || client_cert.is_some()) {
            self.problem(
                "state.redis.ca_file",
                "ca_file and client certificates need a rediss:// URL",
            );
        }
        for (k, p) in [
            ("state.redis.ca_file", &ca_file),
            ("state.redis.client_cert", &client_cert),
            ("state.redis.client_key", &client_key),
        ] {
            if let Some(p) = p
                && !Path::new(p).is_file()
            {
                self.problem(k, format!("{} is not a readable file", p.display()));
            }
        }
        let timeout = self.duration(
            "state.redis.timeout",
            r.timeout.as_deref(),
            DEFAULT_STORE_TIMEOUT,
        );
        let resync = self.duration(
            "state.redis.resync",
            r.resync.as_deref(),
            DEFAULT_STORE_RESYNC,
        );
        let max_staleness = self.duration(
            "state.redis.max_staleness",
            r.max_staleness.as_deref(),
            DEFAULT_MAX_STALENESS,
        );
        let rate_limit_timeout = self.duration(
            "state.redis.rate_limit_timeout",
            r.rate_limit_timeout.as_deref(),
            DEFAULT_RATE_LIMIT_TIMEOUT,
        );
        for (k, v) in [
            ("state.redis.timeout", timeout),
            ("state.redis.resync", resync),
            ("state.redis.rate_limit_timeout", rate_limit_timeout),
        ] {
            if v.is_zero() {
                self.problem(k, "must be more than 0s");
            }
        }
        if !max_staleness.is_zero() && max_staleness < resync {
            self.problem(
                "state.redis.max_staleness",
                "must be 0s (off) or at least state.redis.resync",
            );
        }
        let url = url.unwrap_or_default();
        RedisConfig {
            display_url: display_url(url.expose()),
            url,
            prefix,
            secret_key,
            previous_secret_key,
            allow_plaintext_secrets: r.allow_plaintext_secrets,
            ca_file,
            client_cert,
            client_key,
            timeout,
            resync,
            max_staleness,
            rate_limit_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_display_url_has_no_credentials() {
        assert_eq!(
            display_url("redis://gw:s3cret@redis.example:6379/0"),
            "redis://redis.example:6379/0"
        );
        assert_eq!(display_url("rediss://:pw@h:1"), "rediss://h:1");
        assert_eq!(display_url("redis://h:1"), "redis://h:1");
        assert_eq!(
            url_problem("redis://h:1#insecure"),
            Some(
                "must not have a #fragment (one that turns off certificate verification is refused)"
            )
        );
        assert!(url_problem("http://h:1").is_some());
        assert!(url_problem("rediss://h:1/?insecure=true").is_some());
        assert!(url_problem("redis://user:pw@h:6379/0").is_none());
    }
}

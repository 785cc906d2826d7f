//! A real `redis-server` for one test: on a free loopback port, without persistence
//! (`--save "" --appendonly no`), stopped when dropped. Tests that need one call
//! `Redis::start()`; it panics with a clear message when `redis-server` is not installed
//! (`.ci/run` installs Debian's package).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scoregate::config::{Config, RedisConfig, StoreConfig};
use scoregate::crypto::Secret;

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// `--requirepass`: the default user's password (`cli` authenticates with it).
    password: Option<String>,
    /// More `redis-server` arguments.
    extra: Vec<String>,
}

impl Redis {
    /// A fresh, empty Redis.
    pub fn start() -> Redis {
        Self::start_with(None, &[])
    }

    /// A fresh, empty Redis whose default user needs `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> Redis {
        Self::start_with(Some(password.to_string()), &[])
    }

    /// A fresh node with cluster mode on (`INFO` says `cluster_enabled:1`), no slots assigned.
    pub fn start_cluster_node() -> Redis {
        Self::start_with(
            None,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ],
        )
    }

    fn start_with(password: Option<String>, extra: &[&str]) -> Redis {
        let mut r = Redis {
            port: super::fleet::reserve_port(),
            child: None,
            dir: super::tempdir("redis"),
            password,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.to_str().unwrap(),
                "--loglevel",
                "warning",
            ])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass".to_string(), p.clone()]),
            )
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        let t = Instant::now();
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(t.elapsed() < super::STEP, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL without credentials.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The URL with `user:password@` (`user` may be empty: the default user).
    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}/0", self.port)
    }

    /// Runs `redis-cli` against it; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["-a".to_string(), p.clone(), "--no-auth-warning".into()]),
            )
            .args(args)
            .stderr(Stdio::null())
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// SIGKILL: connections are refused at once.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: connections stay open and nothing answers (the harder outage).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Started again on the same port, empty (a Redis without persistence after a restart).
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        self.start_again();
    }

    /// Writes a snapshot (`SAVE`) that the next `start_again` loads: a Redis with persistence.
    pub fn save(&self) {
        assert_eq!(self.cli(&["SAVE"]).trim(), "OK");
    }

    /// Started again on the same port (after `kill`), with the data of the last `save`, if any.
    pub fn start_again(&mut self) {
        self.kill();
        let t = Instant::now();
        while std::net::TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            assert!(t.elapsed() < super::STEP, "the port stays taken");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.spawn();
    }

    /// One field of a hash (`HGET`), `None` when absent.
    pub fn hget(&self, key: &str, field: &str) -> Option<String> {
        let out = self.cli(&["HGET", key, field]);
        let v = out.strip_suffix('\n').unwrap_or(&out);
        (!v.is_empty()).then(|| v.to_string())
    }

    /// Every key under `prefix`, with its type.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", &format!("{prefix}*")])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Everything stored under `prefix`, as text (for checks that no secret leaks into it).
    pub fn dump(&self, prefix: &str) -> String {
        let mut out = String::new();
        for k in self.keys(prefix) {
            let t = self.cli(&["TYPE", &k]);
            let v = match t.trim() {
                "hash" => self.cli(&["HGETALL", &k]),
                "string" => self.cli(&["GET", &k]),
                "set" => self.cli(&["SMEMBERS", &k]),
                "zset" => self.cli(&["ZRANGE", &k, "0", "-1"]),
                _ => String::new(),
            };
            out.push_str(&format!("{k}\n{v}\n"));
        }
        out
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.thaw();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 32-byte sealing key, base64, as `secret_key_file` holds it.
pub fn sealing_key(byte: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// Points `config` at `redis` with `prefix` and the sealing key made from `key_byte`, with a
/// short resync so that tests see convergence quickly.
pub fn use_redis(config: &mut Config, redis: &Redis, prefix: &str, key_byte: u8) {
    config.store = StoreConfig::Redis(Box::new(RedisConfig {
        url: Secret::new(redis.url()),
        display_url: redis.url(),
        prefix: prefix.into(),
        secret_key: Some(Secret::new(sealing_key(key_byte))),
        previous_secret_key: None,
        allow_plaintext_secrets: false,
        ca_file: None,
        client_cert: None,
        client_key: None,
        timeout: Duration::from_millis(250),
        resync: Duration::from_secs(2),
        max_staleness: Duration::ZERO,
        rate_limit_timeout: Duration::from_millis(50),
    }));
    // A shared store never generates the admin token: it must exist.
    if !config.admin.token_file.exists() {
        if let Some(d) = config.admin.token_file.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&config.admin.token_file, "test-admin-token-0123456789\n").unwrap();
    }
}

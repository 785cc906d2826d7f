//! Every default of the config, as a named constant with the reason for its value. The README's
//! config reference lists the same values.

use std::time::Duration;

/// Default path of the config file, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/scoregate.toml";
/// Public HTTPS port of the examples; any unprivileged port works.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
/// The admin API is for operators on the host: loopback only unless told otherwise.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
/// Relative to the config file, like every path in it.
pub const DEFAULT_ADMIN_TOKEN_FILE: &str = "admin-token";
/// Next to the config folder (not inside it), so a read-only config mount keeps working.
pub const DEFAULT_STATE_DIR: &str = "../state";
/// One store command: Redis answers in well under a millisecond on a LAN; a command that has not
/// answered in 250 ms is a store in trouble, and admin writes should say so rather than hang.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(250);
/// A full re-read of the shared store, in case a change notification was lost (pub/sub is
/// at-most-once): the longest a change takes to reach every replica, and the wait before a new
/// signing key signs.
pub const DEFAULT_STORE_RESYNC: Duration = Duration::from_secs(30);
/// 0: a replica that cannot reach the store stays ready on its last known state.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::ZERO;
/// A fleet-wide rate-limit decision waits at most this long for the store, then is made locally:
/// a scoring request must never stall on the store.
pub const DEFAULT_RATE_LIMIT_TIMEOUT: Duration = Duration::from_millis(50);
/// 0 = one tokio worker per core (tokio's own default).
pub const DEFAULT_WORKER_THREADS: usize = 0;
/// 0 = no per-backend cap, as Azure ML's own front end without `replica_max_concurrent_requests`;
/// set it to the number of requests a model replica can score at once (azmlinfsrv: its workers).
pub const DEFAULT_MAX_CONCURRENT_PER_BACKEND: usize = 0;
/// Probe from the start: azmlinfsrv answers `GET /` as soon as it listens.
pub const DEFAULT_HEALTH_INITIAL_DELAY: Duration = Duration::ZERO;
/// Azure ML's default scoring timeout.
pub const DEFAULT_SCORING_TIMEOUT: Duration = Duration::from_secs(60);
/// Azure ML's request body limit.
pub const DEFAULT_MAX_BODY: u64 = 100 * 1024 * 1024;
/// Azure ML's default queue wait before it answers 503.
pub const DEFAULT_MAX_REQUEST_WAIT: Duration = Duration::from_millis(500);
/// azmlinfsrv's scoring route.
pub const DEFAULT_SCORE_PATH: &str = "/score";
/// Long enough for a slow client on a mobile link, short enough that slowloris cannot pin sockets.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx's large_client_header_buffers is 4×8 KiB; 16 KiB fits any sane header block incl. JWTs.
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 16 * 1024;
/// Browsers send ~15 headers; 100 matches hyper's own default and leaves room for proxies' extras.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Idle keep-alive connections cost memory (~24 KiB each, BENCHMARKS.md); clients reconnect cheaply with resumption.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A full TLS handshake takes a few RTTs; 10 s covers bad mobile links and stops half-open floods.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounded by file descriptors (ulimit) and ~24 KiB per idle connection: 10k ≈ 240 MiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Enough parallel scoring calls per client connection; h2's own default (unbounded) invites abuse.
pub const DEFAULT_H2_MAX_STREAMS: u32 = 128;
/// One client address may hold a tenth of the default connection cap: a NAT'd office with a few
/// hundred users stays far below it, one host opening thousands of connections cannot lock
/// everyone else out.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 1_000;
/// A request body must deliver its next KiB within this (a trickling upload holds a backend
/// slot): 10 s covers a stalled mobile link; it is a minimum rate of about 100 B/s.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most `max_header_size` may be: far past any real header block, and within what hyper and
/// the HTTP/2 SETTINGS field (u32) can hold.
pub const MAX_HEADER_SIZE_LIMIT: u64 = 16 * 1024 * 1024;
/// External issuers' tokens: a day is longer than any access token an identity provider issues
/// (Azure AD: 60–90 min), and short enough that a mis-issued long-lived token is refused.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Requests in flight across all services, beyond which new ones get 503 at once (0: no cap).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// In-flight requests get this long to finish on SIGTERM (Kubernetes' default grace is 30 s).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
/// Short-lived tokens, as Azure ML's (1 h).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Clients are told to refresh at three quarters of a token's lifetime (45 min of 1 h): early
/// enough that a slow refresh never leaves them holding an expired token.
pub fn default_refresh_after(lifetime: Duration) -> Duration {
    lifetime * 3 / 4
}
/// Clock skew tolerated on `exp`/`nbf`; jsonwebtoken's 60 s is more than NTP-synced hosts need.
pub const DEFAULT_TOKEN_LEEWAY: Duration = Duration::from_secs(30);
/// Health-check defaults follow Azure ML's liveness probe settings.
pub const DEFAULT_HEALTH_PATH: &str = "/";
pub const DEFAULT_HEALTH_PERIOD: Duration = Duration::from_secs(10);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_FAILURES: u32 = 3;
pub const DEFAULT_HEALTH_SUCCESSES: u32 = 1;
/// The one deployment of a service configured with `backends` (contract §8).
pub const DEFAULT_DEPLOYMENT: &str = "default";
/// Envoy's shadowing buffer: a copy needs the whole body in memory, so only bodies up to 1 MiB
/// are copied (typical scoring payloads are a few KiB).
pub const DEFAULT_MIRROR_MAX_BODY: u64 = 1024 * 1024;
/// Float noise between two builds of one model (another BLAS, another CPU) stays far below one
/// part in a million; a real change of a model does not.
pub const DEFAULT_MIRROR_TOLERANCE: f64 = 1e-6;
/// Copies in flight per service: enough to keep a candidate busy at a 50 % share of a modest
/// service, few enough that copies never crowd out anything.
pub const DEFAULT_MIRROR_MAX_IN_FLIGHT: usize = 16;
/// Copies waiting for a place: a short burst is absorbed, a slow candidate sheds copies
/// (`skipped_busy`) instead of building a backlog.
pub const DEFAULT_MIRROR_QUEUE: usize = 64;

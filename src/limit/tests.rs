//! Unit tests of the rate limits: request keys, tables across reloads, many policies, and the
//! fleet limiter's fallback.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::*;
use crate::auth::tokens::Subject;
use crate::config::{AuthMode, ServiceConfig};
use fleet::SharedBuckets;
use gcra::NS;

fn service(limits: Vec<RateLimitConfig>) -> ServiceConfig {
    let mut s = ServiceConfig::new("iris", AuthMode::Key, vec![]);
    s.rate_limits = limits;
    s
}

fn rl(name: &str, by: RateLimitBy, requests: u64, per: u64, burst: u64) -> RateLimitConfig {
    RateLimitConfig::new(name, by, requests, Duration::from_secs(per), burst)
}

fn built(reg: &Registry, sc: &ServiceConfig) -> ServiceLimits {
    let mut p = Pending::default();
    let l = reg.build(sc, &mut p);
    reg.publish(p);
    l
}

const A: AuthOutcome = AuthOutcome::Key(KeySlot::Primary);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn keys_tell_clients_and_credentials_apart() {
    let k = |s| key(RateLimitBy::Client, ip(s), A);
    assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
    assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"), "one /64");
    assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
    assert_ne!(k("0.0.0.0"), k("::"));
    let c = |a| key(RateLimitBy::Credential, ip("10.0.0.1"), a);
    assert_ne!(c(A), c(AuthOutcome::Key(KeySlot::Secondary)));
    assert_ne!(
        c(AuthOutcome::Token(Subject(7))),
        c(AuthOutcome::Token(Subject(8)))
    );
    assert_eq!(key(RateLimitBy::Service, ip("10.0.0.1"), A), 0);
}

#[test]
fn a_reload_keeps_buckets_of_kept_policies_only() {
    let reg = Registry::new(&prometheus::Registry::new());
    let sc = service(vec![
        rl("client", RateLimitBy::Client, 1, 60, 1),
        rl("other", RateLimitBy::Client, 1, 60, 1),
    ]);
    let l1 = built(&reg, &sc);
    // The limiter's clock: `publish` converts kept buckets at its own "now".
    let now = l1.now();
    assert!(l1.check_at(now, ip("10.0.0.1"), A).is_ok());
    assert!(l1.check_at(now, ip("10.0.0.1"), A).is_err());
    // Same config: still empty. `other` renamed: starts full, but `client` still refuses.
    let mut sc2 = sc.clone();
    sc2.rate_limits[1].name = "renamed".into();
    let l2 = built(&reg, &sc2);
    let e = l2.check_at(now, ip("10.0.0.1"), A).unwrap_err();
    assert_eq!(&*e.policy, "client");
    // A bigger burst applies to the kept bucket: its level (0) is kept, the new rate
    // refills it.
    let mut sc3 = sc2.clone();
    sc3.rate_limits[0] = rl("client", RateLimitBy::Client, 60, 60, 5);
    let l3 = built(&reg, &sc3);
    assert!(l3.check_at(now, ip("10.0.0.1"), A).is_err());
    assert!(l3.check_at(now + 2 * NS, ip("10.0.0.1"), A).is_ok());
    // Removing the policy and adding it back starts it full (once no snapshot holds it).
    drop((l1, l2, l3));
    built(&reg, &service(vec![]));
    let l5 = built(&reg, &sc);
    assert!(l5.check_at(now, ip("10.0.0.1"), A).is_ok());
}

#[test]
fn many_policies_take_all_or_nothing_beyond_the_inline_ones() {
    let reg = Registry::new(&prometheus::Registry::new());
    let mut limits: Vec<RateLimitConfig> = (0..10)
        .map(|i| rl(&format!("p{i}"), RateLimitBy::Client, 5, 60, 5))
        .collect();
    limits.push(rl("svc", RateLimitBy::Service, 1, 60, 1));
    let l = built(&reg, &service(limits));
    let now = NS;
    let ok = l.check_at(now, ip("10.0.0.1"), A).unwrap().unwrap();
    assert_eq!((ok.remaining, ok.reset), (4, 0));
    let e = l.check_at(now, ip("10.0.0.2"), A).unwrap_err();
    assert_eq!((&*e.policy, e.retry_after), ("svc", 60));
    // The refused request took nothing from its client's ten buckets.
    assert_eq!(l.policies[0].table.len(), 1);
}

/// A store that answers as told: `Some(answer)`, or fails.
struct FakeStore {
    up: AtomicBool,
    replicas: AtomicU64,
    answer: Mutex<Option<fleet::Answer>>,
    calls: AtomicU64,
}

impl SharedBuckets for FakeStore {
    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
    fn live_replicas(&self) -> u64 {
        self.replicas.load(Ordering::Relaxed)
    }
    fn prefix(&self) -> &str {
        "p:"
    }
    fn take(
        self: Arc<Self>,
        keys: Vec<String>,
        params: &[i64],
        _timeout: Duration,
    ) -> fleet::Pending {
        assert_eq!(params.len(), 2 * keys.len());
        self.calls.fetch_add(1, Ordering::Relaxed);
        let a = self.answer.lock().unwrap().clone();
        Box::pin(async move { a.ok_or_else(|| "down".to_string()) })
    }
}

#[tokio::test]
async fn the_fleet_limiter_falls_back_by_the_outage_rules() {
    let prom = prometheus::Registry::new();
    let reg = Registry::new(&prom);
    let store = Arc::new(FakeStore {
        up: AtomicBool::new(true),
        replicas: AtomicU64::new(3),
        answer: Mutex::new(None),
        calls: AtomicU64::new(0),
    });
    reg.share(store.clone(), Duration::from_millis(50));
    let sc = service(vec![
        rl("client", RateLimitBy::Client, 100, 60, 100),
        rl("svc", RateLimitBy::Service, 10, 60, 10),
    ]);
    let l = built(&reg, &sc);
    assert!(l.is_shared());
    assert_eq!(
        l.shared.iter().map(|p| &*p.stem).collect::<Vec<_>>(),
        ["p:rl:iris:client:client:", "p:rl:iris:svc:service:"]
    );
    // A service without policies is never shared: nothing to ask the store.
    assert!(!built(&reg, &service(vec![])).is_shared());
    let degraded = || reg.metrics.degraded.get();
    let c = ip("10.0.0.1");

    // The store answers: its verdict, shown as decide reads it.
    *store.answer.lock().unwrap() = Some(fleet::Answer {
        admitted: true,
        now_us: 5_000_000,
        tats_us: vec![0, 0],
    });
    let shown = l.check_shared(c, A).await.unwrap().unwrap();
    assert_eq!((shown.policy, shown.remaining), (0, 99));
    assert_eq!(degraded(), 0);
    assert_eq!(l.policies[1].table.len(), 0, "nothing kept locally");

    // It fails: decided locally, `svc` divided by 3 live replicas (ceil(10 / 3) = 4).
    *store.answer.lock().unwrap() = None;
    for _ in 0..4 {
        assert!(l.check_shared(c, A).await.is_ok());
    }
    let e = l.check_shared(c, A).await.unwrap_err();
    assert_eq!((&*e.policy, e.retry_after), ("svc", 15));
    assert_eq!(degraded(), 1);

    // Unreachable: not even asked, still the same local buckets (the same outage).
    store.up.store(false, Ordering::Relaxed);
    let calls = store.calls.load(Ordering::Relaxed);
    assert!(l.check_shared(c, A).await.is_err());
    assert_eq!(store.calls.load(Ordering::Relaxed), calls);

    // Back: shared again, the gauge 0.
    store.up.store(true, Ordering::Relaxed);
    *store.answer.lock().unwrap() = Some(fleet::Answer {
        admitted: true,
        now_us: 6_000_000,
        tats_us: vec![0, 0],
    });
    assert!(l.check_shared(c, A).await.is_ok());
    assert_eq!(degraded(), 0);

    // The next outage starts full; now with one live replica: `svc` at its full 10.
    *store.answer.lock().unwrap() = None;
    store.replicas.store(0, Ordering::Relaxed);
    for i in 0..10 {
        assert!(l.check_shared(c, A).await.is_ok(), "request {i}");
    }
    assert!(l.check_shared(c, A).await.is_err());
    assert_eq!(degraded(), 1);
}

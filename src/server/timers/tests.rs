//! Unit tests of the connection timers: header read, idle, send, cancelled streams.

use super::*;
use std::time::Duration;

fn limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        ..Limits::default()
    }
}

fn activity(h2: bool) -> Activity {
    Activity::new(h2, prometheus::IntCounter::new("t", "t").unwrap())
}

async fn advance(s: u64) {
    tokio::time::advance(Duration::from_secs(s)).await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_http1_connection_runs_out_of_header_time() {
    let act = activity(false);
    let l = limits();
    assert!(act.check(&l).is_ok());
    advance(9).await;
    assert!(act.check(&l).is_ok());
    advance(1).await;
    assert_eq!(act.check(&l), Err(Expired::HeaderRead));
}

#[tokio::test(start_paused = true)]
async fn keep_alive_waits_idle_time_then_a_first_byte_starts_the_header_timer() {
    let act = Arc::new(activity(false));
    let l = limits();
    drop(InUse::begin(act.clone()));
    // Idle after a request: only the idle timer runs.
    advance(30).await;
    assert!(act.check(&l).is_ok());
    // A byte of the next request arrives: from now on the head must complete in time.
    act.on_read();
    advance(10).await;
    assert_eq!(act.check(&l), Err(Expired::HeaderRead));
    // Without a byte, the idle timer decides.
    let act = Arc::new(activity(false));
    drop(InUse::begin(act.clone()));
    advance(59).await;
    assert!(act.check(&l).is_ok());
    advance(1).await;
    assert_eq!(act.check(&l), Err(Expired::Idle));
}

#[tokio::test(start_paused = true)]
async fn nothing_expires_while_a_request_runs_but_a_blocked_write_does() {
    let act = Arc::new(activity(true));
    let l = limits();
    let busy = InUse::begin(act.clone());
    advance(600).await;
    assert!(act.check(&l).is_ok(), "a long request is not idle");
    act.on_write(true);
    advance(59).await;
    assert!(act.check(&l).is_ok());
    act.on_write(false);
    advance(59).await;
    assert!(act.check(&l).is_ok(), "a write that went through resets it");
    act.on_write(true);
    advance(60).await;
    assert_eq!(act.check(&l), Err(Expired::Send));
    drop(busy);
}

#[tokio::test(start_paused = true)]
async fn the_next_look_is_never_past_a_deadline() {
    let act = activity(false);
    let l = limits();
    let next = act.check(&l).unwrap();
    assert!(next <= Instant::now() + l.header_read_timeout);
}

/// Regression (issue 11): an HTTP/2 response body held up by the client's flow control (hyper
/// never asks it for data) counts as a client that stopped reading; one waiting on the
/// backend does not.
#[tokio::test(start_paused = true)]
async fn a_stream_the_client_does_not_read_expires_but_one_waiting_on_the_backend_does_not() {
    let act = Arc::new(activity(true));
    let l = limits();
    let stuck = InUse::begin(act.clone()).responding();
    advance(59).await;
    assert!(act.check(&l).is_ok());
    advance(1).await;
    assert_eq!(act.check(&l), Err(Expired::Send));
    drop(stuck);
    let waiting = InUse::begin(act.clone()).responding();
    waiting
        .progress
        .as_ref()
        .unwrap()
        .waiting_on_backend
        .store(true, Ordering::Relaxed);
    for _ in 0..10 {
        advance(30).await;
        assert!(act.check(&l).is_ok(), "the backend is slow, not the client");
    }
}

/// Regression (issue 11): an HTTP/2 client that cancels most of its accepted streams wakes the
/// connection to close it; one that cancels a few does not.
#[tokio::test(start_paused = true)]
async fn most_streams_cancelled_closes_the_connection() {
    let act = Arc::new(activity(true));
    for _ in 0..100 {
        let mut done = InUse::begin(act.clone());
        done.complete = true;
    }
    for _ in 0..(CANCELLED_STREAMS_MIN - 1) {
        drop(InUse::begin(act.clone()));
    }
    let kicked = tokio::time::timeout(Duration::from_millis(10), act.kick.notified()).await;
    assert!(
        kicked.is_err(),
        "a few cancellations among many answers are normal"
    );
    let act = Arc::new(activity(true));
    for _ in 0..CANCELLED_STREAMS_MIN {
        drop(InUse::begin(act.clone()));
    }
    let kicked = tokio::time::timeout(Duration::from_millis(10), act.kick.notified()).await;
    assert!(kicked.is_ok());
    assert_eq!(act.cancelled_metric.get(), CANCELLED_STREAMS_MIN);
}

#[tokio::test(start_paused = true)]
async fn an_http1_connection_may_be_parked_a_while_after_its_last_request() {
    let act = Arc::new(activity(false));
    let after = Duration::from_secs(1);
    let look_again = |act: &Activity| act.park_due(after).unwrap() - Instant::now();
    // Before its first request, and while one runs: only a time to look again.
    assert_eq!(look_again(&act), after);
    let busy = InUse::begin(act.clone());
    advance(5).await;
    assert_eq!(look_again(&act), after);
    drop(busy);
    // Idle: parkable from `after` past the request's end.
    let ended = Instant::now();
    tokio::time::advance(Duration::from_millis(400)).await;
    assert_eq!(act.park_due(after), Some(ended + after));
    // A byte of the next request: not parkable while its head arrives.
    act.on_read();
    advance(5).await;
    assert_eq!(look_again(&act), after);
    // A blocked write after the last request: not parkable until it goes through.
    drop(InUse::begin(act.clone()));
    act.on_write(true);
    advance(5).await;
    assert_eq!(look_again(&act), after);
    act.on_write(false);
    assert!(act.park_due(after).unwrap() <= Instant::now());
    // HTTP/2 connections are never parked.
    assert_eq!(activity(true).park_due(after), None);
}

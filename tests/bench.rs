//! `scoregate bench` drives its built-in gateway: with the file store, and with `--store` against
//! a real redis-server, whose keys it removes afterwards.
// Integration tests time real processes with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::process::Command;

use scoregate_testkit::redis::Redis;

/// Runs a short keep-alive bench and returns its JSON report. `extra` may replace the defaults
/// (`--connections 4`, one gateway thread, 1 s after a 200 ms warm-up).
fn bench(extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["bench", "--quiet", "--json"];
    for (flag, default) in [
        ("--duration", "1s"),
        ("--warmup", "200ms"),
        ("--connections", "4"),
        ("--gateway-threads", "1"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args(args)
        .args(extra)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn assert_served(r: &serde_json::Value) {
    assert_eq!(r["errors"]["total"], 0, "{r}");
    assert!(r["requests"].as_u64().unwrap() > 50, "{r}");
    assert!(r["gateway_cpu_us_per_req"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["notes"], serde_json::json!([]), "{r}");
}

#[test]
fn bench_drives_its_built_in_gateway_with_the_file_store() {
    for auth in ["key", "token"] {
        let r = bench(&["--auth", auth]);
        assert_served(&r);
        assert_eq!(r["auth"], auth);
        assert!(
            r["gateway"].as_str().unwrap().ends_with("file store"),
            "{r}"
        );
    }
}

#[test]
fn bench_store_runs_against_redis_and_leaves_no_key_behind() {
    let redis = Redis::start();
    let commands = || -> u64 {
        let info = redis.cli(&["INFO", "stats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .expect("INFO stats has total_commands_processed")
            .trim()
            .parse()
            .unwrap()
    };
    for auth in ["key", "token"] {
        let before = commands();
        let r = bench(&["--auth", auth, "--store", &redis.url()]);
        assert_served(&r);
        assert!(
            r["gateway"].as_str().unwrap().ends_with("redis store"),
            "{r}"
        );
        // The gateway kept its state there (the writes, reads and heartbeats of a start), and
        // the bench deleted its throwaway prefix afterwards.
        assert!(commands() > before + 10, "the gateway did not use Redis");
        assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0", "keys left behind");
    }
}

#[test]
fn bench_store_refuses_a_running_gateway_and_a_bad_url() {
    let out = Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args([
            "bench",
            "--target",
            "https://127.0.0.1:9/api/v1/service/iris/score",
            "--store",
            "redis://127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--store configures the built-in"));
    let out = Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args(["bench", "--store", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--store") && err.contains("redis://"), "{err}");
}

/// `--deployments 2 --mirror 10`: the built-in service splits live traffic over blue and green
/// and mirrors about 10 % of it to a candidate; the report counts the copies that reached the
/// backend (about a tenth of the live requests) and the gateway's results for them.
#[test]
fn bench_measures_a_split_with_a_mirror() {
    let r = bench(&["--deployments", "2", "--mirror", "10"]);
    assert_served(&r);
    assert_eq!(r["deployments"], 2, "{r}");
    let m = &r["mirror"];
    assert_eq!(m["percent"], 10, "{r}");
    let live = m["live_at_backend"].as_u64().unwrap();
    let copies = m["copies_at_backend"].as_u64().unwrap();
    // Every live request reached a backend (some that completed just outside the window may
    // count on either side).
    assert!(live > 50, "{r}");
    // 10 % of at least 50: a binomial draw, well inside 5σ of its mean.
    let (n, p) = (live as f64, 0.1);
    let sd = (n * p * (1.0 - p)).sqrt();
    assert!(copies > 0, "no copy was sent: {r}");
    assert!(
        (copies as f64 - n * p).abs() <= 5.0 * sd + 2.0,
        "{copies} copies for {live} live requests: {r}"
    );
    let same = m["results"]["same"].as_u64().unwrap();
    assert!(same > 0, "the copies compared `same`: {r}");
    assert!(
        r["gateway"].as_str().unwrap().contains("10 % mirror"),
        "{r}"
    );

    // Without the options: one deployment, no mirror section.
    let r = bench(&[]);
    assert_eq!(r["deployments"], 1, "{r}");
    assert_eq!(r["mirror"], serde_json::Value::Null, "{r}");
}

#[test]
fn bench_deployments_and_mirror_refuse_a_running_gateway_and_bad_values() {
    for args in [&["--deployments", "2"][..], &["--mirror", "10"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_scoregate"))
            .args([
                "bench",
                "--target",
                "https://127.0.0.1:9/api/v1/service/iris/score",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("configure the built-in gateway"), "{err}");
    }
    for args in [
        &["--mirror", "51"][..],
        &["--mirror", "0"],
        &["--deployments", "3"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_scoregate"))
            .arg("bench")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
    }
}

/// `--rate` is an open loop: the report never holds more than the schedule offered in the
/// window (a closed loop with 16 connections answers several times that, even in a debug build),
/// and `--timeline` has one line per measured second whose counts add up to the report's.
#[test]
fn bench_at_a_fixed_rate_offers_that_rate_and_writes_a_timeline() {
    let dir = scoregate_testkit::tempdir("bench-rate");
    for mode in ["keepalive", "h2", "handshake"] {
        let tl = dir.join(format!("{mode}.jsonl"));
        let r = bench(&[
            "--mode",
            mode,
            "--rate",
            "50",
            "--duration",
            "2s",
            // Enough in flight that a slow CI machine's handshakes do not fall behind.
            "--connections",
            "16",
            "--timeline",
            tl.to_str().unwrap(),
        ]);
        assert_eq!(r["errors"]["total"], 0, "{r}");
        assert_eq!(r["offered_rate"], 50.0, "{r}");
        let n = r["requests"].as_u64().unwrap();
        // 100 slots fall in the window; a few due in the warm-up (the first ones open their
        // connections) may finish inside it.
        assert!(
            (50..=110).contains(&n),
            "{mode}: {n} requests at 50/s for 2 s: {r}"
        );
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&tl)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{mode}: {lines:?}");
        let ok: u64 = lines.iter().map(|l| l["ok"].as_u64().unwrap()).sum();
        assert_eq!(ok, n, "{mode}: {lines:?}");
        assert!(lines.iter().all(|l| l["errors"] == 0), "{mode}: {lines:?}");
        assert!(
            lines[0]["p99_ms"].as_f64().unwrap() > 0.0,
            "{mode}: {lines:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_refuses_a_bad_rate_and_a_rate_in_idle_mode() {
    for args in [
        &["bench", "--rate", "0"][..],
        &["bench", "--rate=-5"],
        &["bench", "--rate", "fast"],
        &["bench", "--mode", "idle", "--rate", "10"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_scoregate"))
            .args(args)
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("rate"), "{args:?}: {err}");
    }
}

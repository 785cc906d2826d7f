//! The run's report: the aligned table and summary lines on stdout, or one JSON object with
//! `--json`; and the progress line on stderr (rewritten in place on a terminal).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::{Value, json};

use super::Mode;
use super::procfs::CpuUse;
use super::stats::Stats;

/// Everything a run measured, and what it was run against.
pub(super) struct Report {
    pub(super) mode: Mode,
    pub(super) url: String,
    pub(super) auth: &'static str,
    pub(super) connections: usize,
    pub(super) streams: usize,
    pub(super) duration: Duration,
    pub(super) warmup: Duration,
    pub(super) resume: bool,
    /// `--rate`: the offered rate of an open-loop run.
    pub(super) rate: Option<f64>,
    /// TLS handshakes made over the whole run (warm-up included), and how many were resumed.
    pub(super) handshakes: u64,
    pub(super) resumed: u64,
    pub(super) client_threads: usize,
    pub(super) gateway: String,
    pub(super) gateway_pid: Option<u32>,
    pub(super) stats: Stats,
    pub(super) cpu: Option<CpuUse>,
    pub(super) rss_kb: Option<u64>,
    pub(super) idle: Option<IdleReport>,
    /// Built-in gateway: its service's live deployments (`--deployments`).
    pub(super) deployments: Option<u8>,
    /// Built-in gateway with `--mirror`: what the copies did.
    pub(super) mirror: Option<MirrorReport>,
    pub(super) notes: Vec<String>,
}

/// The copies of a `--mirror` run. The gateway's CPU per request stays per *live* request (the
/// copies' share of it is the difference to a run without `--mirror`); this says how many
/// copies there were.
pub(super) struct MirrorReport {
    /// The mirror share asked for, in percent.
    pub(super) percent: u8,
    /// Live requests and mirrored copies that reached the built-in backend within the measured
    /// window.
    pub(super) live: u64,
    pub(super) copies: u64,
    /// `scoregate_mirror_requests_total` by result over the whole run (warm-up included), read
    /// from the gateway's `/metrics` after the load stopped.
    pub(super) results: Vec<(String, u64)>,
}

impl MirrorReport {
    /// Copies per live request in the window, in percent.
    fn share(&self) -> Option<f64> {
        (self.live > 0).then(|| self.copies as f64 * 100.0 / self.live as f64)
    }

    fn json(&self) -> Value {
        let results: serde_json::Map<String, Value> = self
            .results
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "percent": self.percent,
            "live_at_backend": self.live,
            "copies_at_backend": self.copies,
            "copies_pct_of_live": self.share().map(|x| round(x, 2)),
            "results": results,
        })
    }

    fn print(&self) {
        let results: Vec<String> = self
            .results
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "Mirror {} %: {} copies reached the candidate in the window, {} % of {} live requests at the backends; gateway CPU above is per live request. Results over the whole run: {}.",
            self.percent,
            self.copies,
            opt(self.share(), 1),
            self.live,
            if results.is_empty() {
                "none".to_string()
            } else {
                results.join(", ")
            }
        );
    }
}

/// What idle mode measured.
pub(super) struct IdleReport {
    pub(super) requested: usize,
    /// Held right after the handshake, without a request.
    pub(super) fresh: bool,
    pub(super) opened: usize,
    pub(super) open_s: f64,
    pub(super) hold: Duration,
    pub(super) rss_before_kb: Option<u64>,
    pub(super) rss_open_kb: Option<u64>,
    pub(super) rss_after_close_kb: Option<u64>,
    /// Gateway CPU while opening (handshake + one request per connection).
    pub(super) cpu_open_s: Option<f64>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    fn protocol(&self) -> &'static str {
        if self.mode == Mode::H2 {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        }
    }

    fn rps(&self) -> f64 {
        self.stats.ok as f64 / self.duration.as_secs_f64()
    }

    fn per_req_us(&self, s: Option<f64>) -> Option<f64> {
        s.filter(|_| self.stats.ok > 0)
            .map(|s| s * 1e6 / self.stats.ok as f64)
    }

    fn quantile_ms(&self, q: f64) -> Option<f64> {
        (self.stats.ok > 0).then(|| ms(self.stats.hist.value_at_quantile(q)))
    }

    pub(super) fn json(&self) -> Value {
        let mut v = json!({
            "mode": self.mode.as_str(),
            "protocol": self.protocol(),
            "auth": self.auth,
            "target": self.url,
            "gateway": self.gateway,
            "gateway_pid": self.gateway_pid,
            "client_threads": self.client_threads,
            "tls_handshakes": self.handshakes,
            "tls_resumed": self.resumed,
            "errors": self.stats.errors.json(),
            "notes": self.notes,
        });
        if let Some(i) = &self.idle {
            let delta = i
                .rss_before_kb
                .zip(i.rss_open_kb)
                .map(|(a, b)| b as i64 - a as i64);
            v["connections"] = json!(i.requested);
            v["idle"] = json!({
                "requested": i.requested,
                "fresh": i.fresh,
                "opened": i.opened,
                "failed": self.stats.errors.total(),
                "open_s": round(i.open_s, 3),
                "hold_s": i.hold.as_secs_f64(),
                "rss_before_kb": i.rss_before_kb,
                "rss_open_kb": i.rss_open_kb,
                "delta_kb": delta,
                "kib_per_conn": delta.filter(|_| i.opened > 0).map(|d| round(d as f64 / i.opened as f64, 2)),
                "rss_after_close_kb": i.rss_after_close_kb,
                "gateway_cpu_s": i.cpu_open_s,
                "gateway_cpu_us_per_conn": i.cpu_open_s.filter(|_| i.opened > 0).map(|s| round(s * 1e6 / i.opened as f64, 1)),
            });
            return v;
        }
        v["deployments"] = json!(self.deployments);
        v["mirror"] = json!(self.mirror.as_ref().map(MirrorReport::json));
        let h = &self.stats.hist;
        let lat = (self.stats.ok > 0).then(|| {
            json!({
                "p50": ms(h.value_at_quantile(0.5)),
                "p90": ms(h.value_at_quantile(0.9)),
                "p99": ms(h.value_at_quantile(0.99)),
                "p999": ms(h.value_at_quantile(0.999)),
                "max": ms(h.max()),
                "mean": round(h.mean() / 1000.0, 3),
            })
        });
        let cpu = self.cpu.as_ref();
        v["connections"] = json!(self.connections);
        if self.mode == Mode::H2 {
            v["streams"] = json!(self.streams);
        }
        if self.mode == Mode::Handshake {
            v["resume"] = json!(self.resume);
        }
        v["offered_rate"] = json!(self.rate);
        v["duration_s"] = json!(self.duration.as_secs_f64());
        v["warmup_s"] = json!(self.warmup.as_secs_f64());
        v["requests"] = json!(self.stats.ok);
        v["rps"] = json!(round(self.rps(), 1));
        v["latency_ms"] = json!(lat);
        let r1 = |x: Option<f64>| x.map(|x| round(x, 1));
        v["gateway_cpu_s"] = json!(cpu.and_then(|c| c.gateway_s));
        v["gateway_cpu_us_per_req"] = json!(r1(self.per_req_us(cpu.and_then(|c| c.gateway_s))));
        v["gateway_cpu_pct"] = json!(cpu.and_then(|c| {
            c.gateway_s
                .map(|g| round(g * 100.0 / c.wall_s.max(1e-9), 1))
        }));
        v["gateway_rss_kb"] = json!(self.rss_kb);
        v["backend_cpu_us_per_req"] = json!(r1(self.per_req_us(cpu.and_then(|c| c.backend_s))));
        v["loadgen_cpu_us_per_req"] = json!(r1(self.per_req_us(cpu.and_then(|c| c.loadgen_s))));
        v
    }

    pub(super) fn print(&self) {
        let e = &self.stats.errors;
        println!();
        if let Some(i) = &self.idle {
            let mib = |k: Option<u64>| opt(k.map(|k| k as f64 / 1024.0), 1);
            let delta = i
                .rss_before_kb
                .zip(i.rss_open_kb)
                .map(|(a, b)| b as f64 - a as f64);
            let per = delta.filter(|_| i.opened > 0).map(|d| d / i.opened as f64);
            let cpu = i
                .cpu_open_s
                .filter(|_| i.opened > 0)
                .map(|s| s * 1e6 / i.opened as f64);
            table(
                &[
                    "mode",
                    "auth",
                    "conns",
                    "opened",
                    "open s",
                    "RSS before MiB",
                    "RSS with conns MiB",
                    "KiB/conn",
                    "RSS after close MiB",
                    "errors",
                    "gw CPU µs/conn",
                ],
                &[vec![
                    "idle".into(),
                    self.auth.into(),
                    i.requested.to_string(),
                    i.opened.to_string(),
                    format!("{:.2}", i.open_s),
                    mib(i.rss_before_kb),
                    mib(i.rss_open_kb),
                    opt(per, 1),
                    mib(i.rss_after_close_kb),
                    e.total().to_string(),
                    opt(cpu, 0),
                ]],
            );
            println!(
                "\n{} idle TLS connections (HTTP/1.1, {}) held {}; RSS read from {}.",
                i.opened,
                if i.fresh {
                    "no request, handshake only"
                } else {
                    "one request each"
                },
                humantime::format_duration(i.hold),
                self.gateway
            );
        } else {
            let cpu = self.cpu.as_ref();
            let conns = if self.mode == Mode::H2 {
                format!("{}×{}", self.connections, self.streams)
            } else {
                self.connections.to_string()
            };
            let unit = if self.mode == Mode::Handshake {
                "conn/s"
            } else {
                "req/s"
            };
            table(
                &[
                    "mode",
                    "auth",
                    "conns",
                    unit,
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "p99.9 ms",
                    "errors",
                    "gw CPU µs/req",
                    "gw RSS MiB",
                ],
                &[vec![
                    self.mode.as_str().into(),
                    self.auth.into(),
                    conns,
                    format!("{:.0}", self.rps()),
                    opt(self.quantile_ms(0.5), 2),
                    opt(self.quantile_ms(0.9), 2),
                    opt(self.quantile_ms(0.99), 2),
                    opt(self.quantile_ms(0.999), 2),
                    e.total().to_string(),
                    opt(self.per_req_us(cpu.and_then(|c| c.gateway_s)), 1),
                    opt(self.rss_kb.map(|k| k as f64 / 1024.0), 1),
                ]],
            );
            println!(
                "\n{} requests in {} ({} over TLS{}; {} warm-up not counted), max {} ms.",
                self.stats.ok,
                humantime::format_duration(self.duration),
                self.protocol(),
                match self.mode {
                    Mode::Handshake => format!(
                        ", a new connection per request; {} of {} handshakes resumed",
                        self.resumed, self.handshakes
                    ),
                    _ => ", keep-alive".into(),
                },
                humantime::format_duration(self.warmup),
                opt((self.stats.ok > 0).then(|| ms(self.stats.hist.max())), 2),
            );
            if let Some(r) = self.rate {
                println!(
                    "Open loop at {r} req/s offered: latency counts from when each request was due."
                );
            }
            if let Some(c) = cpu {
                println!(
                    "CPU µs/req: gateway {}, backend {}, load generator {} ({} client threads); gateway busy {} % of one core.",
                    opt(self.per_req_us(c.gateway_s), 1),
                    opt(self.per_req_us(c.backend_s), 1),
                    opt(self.per_req_us(c.loadgen_s), 1),
                    self.client_threads,
                    opt(c.gateway_s.map(|g| g * 100.0 / c.wall_s.max(1e-9)), 0),
                );
            }
            if let Some(m) = &self.mirror {
                m.print();
            }
            println!("Target {} ({}).", self.url, self.gateway);
        }
        if e.total() > 0 {
            println!("Errors: {}.", e.summary());
            for (k, m) in &e.first {
                println!("  first {k} error: {m}");
            }
            if let Some(h) = e.hint() {
                println!("Hint: {h}.");
            }
        }
        for n in &self.notes {
            println!("Note: {n}");
        }
    }
}

/// Prints an aligned table (first column left, the rest right-aligned).
fn table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let out: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i].saturating_sub(c.chars().count());
                if i == 0 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(header.to_vec());
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Writes the progress line to stderr: in place on a terminal, else one line each.
pub(super) fn progress(line: &str) {
    let mut e = std::io::stderr().lock();
    if e.is_terminal() {
        let _ = write!(e, "\r\x1b[2K{line}");
    } else {
        let _ = writeln!(e, "{line}");
    }
    let _ = e.flush();
}

/// Clears the progress line (on a terminal; elsewhere the lines stay).
pub(super) fn clear_progress() {
    let mut e = std::io::stderr().lock();
    if e.is_terminal() {
        let _ = write!(e, "\r\x1b[2K");
        let _ = e.flush();
    }
}

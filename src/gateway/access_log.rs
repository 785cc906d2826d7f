//! The access-log line (README, "Logs"): one per request, with target `access`.
//!
//! The line is an ordinary `tracing` event, so any subscriber sees it, filters it and formats it
//! (the tests install their own). The `scoregate` binary, whose subscriber writes plain text or
//! JSON to stderr, turns on [`write_directly`] instead: then the line is formatted by hand into a
//! reused per-thread buffer and written to stderr with one `write(2)`, byte for byte as
//! `tracing_subscriber::fmt` would write it (a test compares the two). The subscriber's field
//! visitor, `core::fmt` for every field, Debug-escaping strings character by character and the
//! date computation for every line made the log cost 22 % of a keep-alive request (issue 16).
//! `SCOREGATE_LOG` and `[log] access` still decide whether a line is written: the caller asks
//! `tracing::enabled!` first.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// The fields of one line, in the order they are written.
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub client: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub service: &'a str,
    pub deployment: &'a str,
    pub status: u16,
    pub code: &'a str,
    pub outcome: &'a str,
    pub latency_us: Option<u64>,
    pub duration_us: u64,
    pub backend: &'a str,
    pub backend_us: Option<u64>,
    pub bytes_in: Option<u64>,
    pub bytes_out: u64,
    pub auth: &'a str,
    pub rate_limited_by: &'a str,
    pub mirrored: bool,
}

static DIRECT: OnceLock<LogFormat> = OnceLock::new();

/// A Unix second and its `YYYY-MM-DDTHH:MM:SS`.
type Second = Option<(u64, [u8; 19])>;

/// From now on, write access lines to stderr by hand in `format`, as the process's
/// `tracing_subscriber::fmt` subscriber (writing to stderr, no ANSI colours, no spans) would.
/// Only for a process whose subscriber is exactly that; set once.
pub fn write_directly(format: LogFormat) {
    let _ = DIRECT.set(format);
}

thread_local! {
    /// The line being written, and the formatted second it started with (a cache: the date
    /// changes once a second, the requests many times).
    static LINE: RefCell<(Vec<u8>, Second)> = const { RefCell::new((Vec::new(), None)) };
}

impl AccessLine<'_> {
    /// Writes the line: by hand when [`write_directly`] was called, else as a `tracing` event.
    pub fn log(&self) {
        match DIRECT.get() {
            Some(&format) => {
                let written = LINE.with_borrow_mut(|(buf, second)| {
                    buf.clear();
                    if !self.format(format, SystemTime::now(), second, buf) {
                        return false;
                    }
                    // One write, as tracing_subscriber's writer does; a failed write of a log
                    // line has nowhere to be reported.
                    let _ = std::io::stderr().lock().write_all(buf);
                    true
                });
                if !written {
                    self.event();
                }
            }
            None => self.event(),
        }
    }

    /// The line as a `tracing` event.
    fn event(&self) {
        tracing::info!(
            target: "access",
            request_id = self.request_id,
            client = %self.client,
            method = self.method,
            path = self.path,
            service = self.service,
            deployment = self.deployment,
            status = self.status,
            code = self.code,
            outcome = self.outcome,
            latency_us = self.latency_us,
            duration_us = self.duration_us,
            backend = self.backend,
            backend_us = self.backend_us,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            auth = self.auth,
            rate_limited_by = self.rate_limited_by,
            mirrored = self.mirrored,
        );
    }

    /// Formats the line at `now` into `buf`; false for a time this does not format (before 1970
    /// or after 9999: the event path handles those).
    fn format(
        &self,
        format: LogFormat,
        now: SystemTime,
        second: &mut Second,
        buf: &mut Vec<u8>,
    ) -> bool {
        let Ok(since) = now.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let secs = since.as_secs();
        let date = match *second {
            Some((s, d)) if s == secs => d,
            _ => match date_time(secs) {
                Some(d) => {
                    *second = Some((secs, d));
                    d
                }
                None => return false,
            },
        };
        match format {
            LogFormat::Text => {
                buf.extend_from_slice(&date);
                buf.push(b'.');
                push_micros(buf, since.subsec_micros());
                buf.extend_from_slice(b"Z  INFO access: ");
                let mut f = Text(buf, false);
                self.fields(&mut f);
                buf.push(b'\n');
            }
            LogFormat::Json => {
                buf.extend_from_slice(b"{\"timestamp\":\"");
                buf.extend_from_slice(&date);
                buf.push(b'.');
                push_micros(buf, since.subsec_micros());
                buf.extend_from_slice(b"Z\",\"level\":\"INFO\"");
                let mut f = Json(buf);
                self.fields(&mut f);
                buf.extend_from_slice(b",\"target\":\"access\"}\n");
            }
        }
        true
    }

    fn fields(&self, f: &mut impl Fields) {
        f.str("request_id", self.request_id);
        f.ip("client", self.client);
        f.str("method", self.method);
        f.str("path", self.path);
        f.str("service", self.service);
        f.str("deployment", self.deployment);
        f.u64("status", u64::from(self.status));
        f.str("code", self.code);
        f.str("outcome", self.outcome);
        if let Some(v) = self.latency_us {
            f.u64("latency_us", v);
        }
        f.u64("duration_us", self.duration_us);
        f.str("backend", self.backend);
        if let Some(v) = self.backend_us {
            f.u64("backend_us", v);
        }
        if let Some(v) = self.bytes_in {
            f.u64("bytes_in", v);
        }
        f.u64("bytes_out", self.bytes_out);
        f.str("auth", self.auth);
        f.str("rate_limited_by", self.rate_limited_by);
        f.bool("mirrored", self.mirrored);
    }
}

/// One way to write fields: `tracing_subscriber`'s text (`name=value`, strings Debug-quoted,
/// separated by spaces) or its flattened JSON (`,"name":value`).
trait Fields {
    fn str(&mut self, name: &str, v: &str);
    fn u64(&mut self, name: &str, v: u64);
    fn ip(&mut self, name: &str, v: IpAddr);
    fn bool(&mut self, name: &str, v: bool);
}

/// The buffer, and whether a field was written (fields are separated by one space).
struct Text<'a>(&'a mut Vec<u8>, bool);

impl Text<'_> {
    fn name(&mut self, name: &str) {
        if self.1 {
            self.0.push(b' ');
        }
        self.1 = true;
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'=');
    }
}

impl Fields for Text<'_> {
    fn str(&mut self, name: &str, v: &str) {
        self.name(name);
        if plain(v) {
            self.0.push(b'"');
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(b'"');
        } else {
            let _ = write!(self.0, "{v:?}");
        }
    }
    fn u64(&mut self, name: &str, v: u64) {
        self.name(name);
        push_u64(self.0, v);
    }
    fn ip(&mut self, name: &str, v: IpAddr) {
        self.name(name);
        let _ = write!(self.0, "{v}");
    }
    fn bool(&mut self, name: &str, v: bool) {
        self.name(name);
        self.0.extend_from_slice(if v { b"true" } else { b"false" });
    }
}

struct Json<'a>(&'a mut Vec<u8>);

impl Json<'_> {
    fn name(&mut self, name: &str) {
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b"\":");
    }
}

impl Fields for Json<'_> {
    fn str(&mut self, name: &str, v: &str) {
        self.name(name);
        if plain(v) {
            self.0.push(b'"');
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(b'"');
        } else {
            serde_json::to_writer(&mut *self.0, v).expect("a string serializes");
        }
    }
    fn u64(&mut self, name: &str, v: u64) {
        self.name(name);
        push_u64(self.0, v);
    }
    fn ip(&mut self, name: &str, v: IpAddr) {
        self.name(name);
        let _ = write!(self.0, "\"{v}\"");
    }
    fn bool(&mut self, name: &str, v: bool) {
        self.name(name);
        self.0.extend_from_slice(if v { b"true" } else { b"false" });
    }
}

/// Printable ASCII without `"` and `\`: written as it is, quoted, by both Rust's Debug and JSON.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

fn push_micros(buf: &mut Vec<u8>, micros: u32) {
    let mut d = [b'0'; 6];
    let mut v = micros;
    for c in d.iter_mut().rev() {
        *c = b'0' + (v % 10) as u8;
        v /= 10;
    }
    buf.extend_from_slice(&d);
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time, as tracing_subscriber's `SystemTime` timer
/// writes it for the years 0 to 9999; `None` past 9999.
fn date_time(secs: u64) -> Option<[u8; 19]> {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(i64::try_from(days).ok()?);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let mut out = *b"0000-00-00T00:00:00";
    let put = |out: &mut [u8; 19], at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(&mut out, 0, 4, y as u64);
    put(&mut out, 5, 2, m);
    put(&mut out, 8, 2, d);
    put(&mut out, 11, 2, rem / 3600);
    put(&mut out, 14, 2, rem % 3600 / 60);
    put(&mut out, 17, 2, rem % 60);
    Some(out)
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe as i64 + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the binary's tracing_subscriber::fmt subscriber (main.rs, `init_logging`, without
    /// ANSI) writes for the line's event.
    fn by_tracing(line: &AccessLine<'_>, format: LogFormat) -> String {
        let cap = Capture::default();
        let w = cap.clone();
        let b = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || w.clone());
        match format {
            LogFormat::Json => {
                tracing::subscriber::with_default(b.json().flatten_event(true).finish(), || {
                    line.event()
                })
            }
            LogFormat::Text => tracing::subscriber::with_default(b.finish(), || line.event()),
        }
        String::from_utf8(cap.0.lock().unwrap().clone()).unwrap()
    }

    fn by_hand(line: &AccessLine<'_>, format: LogFormat, now: SystemTime) -> String {
        let mut buf = Vec::new();
        let mut second = None;
        assert!(line.format(format, now, &mut second, &mut buf));
        String::from_utf8(buf).unwrap()
    }

    /// The text and JSON lines, minus the timestamp (the two were made at different times).
    fn without_time(s: &str) -> String {
        let s = s.trim_start_matches("{\"timestamp\":\"");
        let at = s.find('Z').expect("a timestamp");
        s[at..].to_string()
    }

    fn sample<'a>(path: &'a str, service: &'a str) -> AccessLine<'a> {
        AccessLine {
            request_id: "0b7c4d1e-8f7a-4c3b-9d2e-1f0a2b3c4d5e",
            client: "192.0.2.7".parse().unwrap(),
            method: "POST",
            path,
            service,
            deployment: "blue",
            status: 200,
            code: "backend",
            outcome: "complete",
            latency_us: Some(1234),
            duration_us: 1300,
            backend: "http://127.0.0.1:8000",
            backend_us: Some(1100),
            bytes_in: Some(203),
            bytes_out: 21,
            auth: "primary",
            rate_limited_by: "-",
            mirrored: false,
        }
    }

    #[test]
    fn the_hand_written_line_is_tracing_subscribers_line() {
        let odd = "/api/v1/service/x\"y\\z/\u{7f}\t\u{1b}[31mé日/score";
        let mut lines = vec![
            sample("/api/v1/service/iris/score", "iris"),
            sample(odd, "-"),
        ];
        let mut gone = sample("/api/v1/service/iris/score", "iris");
        gone.client = "2001:db8::1".parse().unwrap();
        gone.status = 499;
        gone.code = "client_gone";
        gone.latency_us = None;
        gone.backend_us = None;
        gone.bytes_in = None;
        gone.mirrored = true;
        gone.duration_us = u64::MAX;
        gone.bytes_out = 0;
        lines.push(gone);
        for line in &lines {
            for format in [LogFormat::Text, LogFormat::Json] {
                let want = by_tracing(line, format);
                let got = by_hand(line, format, SystemTime::now());
                assert_eq!(without_time(&got), without_time(&want), "{format:?}");
                if format == LogFormat::Json {
                    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
                    assert_eq!(v["path"], line.path);
                }
            }
        }
    }

    #[test]
    fn the_timestamp_is_tracing_subscribers_timestamp() {
        let line = sample("/", "-");
        let mut second = None;
        // 2024-02-29 (a leap day), the last second of 1999, the epoch, and now.
        let times = [
            UNIX_EPOCH + Duration::new(1_709_210_096, 7_000),
            UNIX_EPOCH + Duration::new(946_684_799, 999_999_999),
            UNIX_EPOCH,
            SystemTime::now(),
        ];
        let want = [
            "2024-02-29T12:34:56.000007Z",
            "1999-12-31T23:59:59.999999Z",
            "1970-01-01T00:00:00.000000Z",
        ];
        for (i, t) in times.iter().enumerate() {
            let mut buf = Vec::new();
            assert!(line.format(LogFormat::Text, *t, &mut second, &mut buf));
            let got = String::from_utf8(buf).unwrap();
            if let Some(w) = want.get(i) {
                assert!(got.starts_with(w), "{got}");
            }
            // The same second again comes from the cache, and the same.
            let mut again = Vec::new();
            assert!(line.format(LogFormat::Text, *t, &mut second, &mut again));
            assert_eq!(String::from_utf8(again).unwrap(), got);
        }
        // Against the subscriber's own timer, to the minute (once more if a minute began
        // between the two).
        let same_minute = || {
            let theirs = by_tracing(&line, LogFormat::Text);
            let mine = by_hand(&line, LogFormat::Text, SystemTime::now());
            (theirs[..16] == mine[..16], format!("{theirs}\n{mine}"))
        };
        let (same, lines) = same_minute();
        assert!(same || same_minute().0, "{lines}");
    }
}

//! The comparison of a mirrored answer with the live one (contract §8, "Comparison"), pure: two
//! answers and a tolerance in, a [`Verdict`] out. No I/O, no metrics, no clock.
//!
//! Rules, in order:
//! 1. Different statuses: [`Verdict::DifferentStatus`] (the bodies are not looked at).
//! 2. Byte-identical bodies: [`Verdict::Same`].
//! 3. When both answers have a JSON media type ([`is_json_media_type`]) and both bodies parse as
//!    JSON (RFC 8259, UTF-8, at most [`MAX_DEPTH`] nested arrays and objects, every number finite
//!    as an `f64`), they are compared as JSON values: object member order is ignored, array order
//!    is not, strings compare after unescaping (`"\u00e9"` equals `"é"`), and numbers compare with
//!    the tolerance (below). A difference is reported with the path of the first place where the
//!    values differ, depth first in the live body's order.
//! 4. Otherwise the bodies differ byte for byte, without a path.
//!
//! **Numbers.** `a` and `b` are equal when `|a−b| ≤ tolerance·max(|a|,|b|)` or `|a−b| ≤ 1e-12`, so
//! `1` equals `1.0`. When both are written as integers that fit `i64` or `u64`, the difference is
//! computed exactly (in `i128`): with tolerance 0, `9007199254740993` and `9007199254740992` differ,
//! although both round to the same `f64`. Otherwise (a fraction or an exponent on either side, or an
//! integer beyond `u64`) both are compared as `f64`, so an integer beyond 2^53 equals the float it
//! rounds to. The tolerance is meant to be finite and ≥ 0; NaN makes only the 1e-12 rule apply.
//!
//! **Paths.** `$` is the whole body; `[3]` an array element; `.name` an object member whose name is
//! an ASCII identifier (`[A-Za-z_][A-Za-z0-9_]*`), every other name is bracket-quoted as a JSON
//! string: `$["model version"]`, `$["a\"b"]`, `$[""]`. So `$.predictions[3]`,
//! `$.outputs["0"].score`. A member present in one object only is a difference at that member's
//! path; arrays of different lengths whose common part is equal differ at the first index only
//! one of them has. Paths hold member names (which come from the body) but never values.
//!
//! **Repeated member names.** An object that repeats a name keeps the last value (as serde_json
//! reads it), at the position of that last occurrence.
//!
//! **Depth.** serde_json's own recursion limit refuses 128 nested containers (its counter starts at
//! 128 and fails when it reaches 0, so 127 is its maximum); the contract allows 128. This module
//! therefore parses with its own small parser, which accepts exactly what serde_json's
//! `from_slice` accepts up to that depth (fuzzed against it by `fuzz/fuzz_targets/compare.rs`) and
//! borrows every string without escapes from the body.
//!
//! **Allocation.** The two parsed trees (vectors of members and elements, and strings that had
//! escapes) and, on a difference, the path. Nothing else; no global state.

use std::borrow::Cow;
use std::cmp::Ordering;

/// The deepest nesting of arrays and objects compared as JSON (contract §8); a body nested
/// deeper is compared byte for byte. `[[1]]` has depth 2, a scalar depth 0.
pub const MAX_DEPTH: usize = 128;

/// Two numbers this close are equal whatever the relative tolerance (contract §8).
const ABSOLUTE_TOLERANCE: f64 = 1e-12;

/// One side's answer: its status, whether its `Content-Type` is a JSON media type, and its body.
pub struct Answer<'a> {
    pub status: u16,
    /// The response has a JSON media type (see [`is_json_media_type`]).
    pub json: bool,
    pub body: &'a [u8],
}

/// The result of comparing a mirrored answer with the live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Same,
    DifferentStatus,
    /// Same status, different bodies. `path` is the first JSON path at which they differ (see the
    /// module doc), or `None` when the bodies were compared byte for byte.
    DifferentBody {
        path: Option<String>,
    },
}

/// Compares the mirror's answer with the live one under the rules of the module doc. `tolerance`
/// is the relative tolerance for numbers (`mirror_tolerance`).
pub fn compare(live: &Answer<'_>, mirror: &Answer<'_>, tolerance: f64) -> Verdict {
    if live.status != mirror.status {
        return Verdict::DifferentStatus;
    }
    if live.body == mirror.body {
        return Verdict::Same;
    }
    if live.json
        && mirror.json
        && let Some(l) = parse(live.body)
        && let Some(m) = parse(mirror.body)
    {
        return match diff(&l, &m, tolerance) {
            None => Verdict::Same,
            Some(reversed) => Verdict::DifferentBody {
                path: Some(render(&reversed)),
            },
        };
    }
    Verdict::DifferentBody { path: None }
}

/// Whether a `Content-Type` value names a JSON media type: `application/json` or
/// `application/<anything>+json` (RFC 6839 §3.1), case-insensitive, parameters ignored.
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let sub = subtype.as_bytes();
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case(b"json")
            || (sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case(b"+json")))
}

/// A parsed JSON value; strings without escapes borrow from the body.
#[derive(Debug)]
enum Json<'a> {
    Null,
    Bool(bool),
    Num(Num),
    Str(Cow<'a, str>),
    Arr(Vec<Json<'a>>),
    Obj(Object<'a>),
}

/// A JSON number as written: an integer that fits `u64` or `i64`, or else an `f64`.
#[derive(Debug, Clone, Copy)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

/// An object's members in body order (repeated names removed, the last kept), and their indices
/// sorted by name for lookups.
#[derive(Debug)]
struct Object<'a> {
    members: Vec<(Cow<'a, str>, Json<'a>)>,
    by_name: Vec<usize>,
}

impl<'a> Object<'a> {
    fn new(mut members: Vec<(Cow<'a, str>, Json<'a>)>) -> Self {
        let sort = |members: &[(Cow<'a, str>, Json<'a>)]| {
            let mut by_name: Vec<usize> = (0..members.len()).collect();
            by_name.sort_by(|&a, &b| members[a].0.cmp(&members[b].0).then(a.cmp(&b)));
            by_name
        };
        let mut by_name = sort(&members);
        let repeated = |w: &[usize], m: &[(Cow<'a, str>, Json<'a>)]| m[w[0]].0 == m[w[1]].0;
        if by_name.windows(2).any(|w| repeated(w, &members)) {
            let mut keep = vec![true; members.len()];
            for w in by_name.windows(2) {
                if repeated(w, &members) {
                    keep[w[0]] = false;
                }
            }
            let mut i = 0;
            members.retain(|_| {
                i += 1;
                keep[i - 1]
            });
            by_name = sort(&members);
        }
        Object { members, by_name }
    }

    fn get(&self, name: &str) -> Option<&Json<'a>> {
        self.by_name
            .binary_search_by(|&i| self.members[i].0.as_ref().cmp(name))
            .ok()
            .map(|p| &self.members[self.by_name[p]].1)
    }
}

/// Parses a whole body as one JSON value (surrounding whitespace allowed), or `None`.
fn parse(body: &[u8]) -> Option<Json<'_>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    p.whitespace();
    let value = p.value(0)?;
    p.whitespace();
    (p.at == p.bytes.len()).then_some(value)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.at += usize::from(hit);
        hit
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// One value starting at the current byte; `depth` is the number of containers around it.
    fn value(&mut self, depth: usize) -> Option<Json<'a>> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(Json::Str),
            b't' => self.literal(b"true", Json::Bool(true)),
            b'f' => self.literal(b"false", Json::Bool(false)),
            b'n' => self.literal(b"null", Json::Null),
            b'-' | b'0'..=b'9' => self.number().map(Json::Num),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8], value: Json<'a>) -> Option<Json<'a>> {
        self.bytes[self.at..].starts_with(word).then(|| {
            self.at += word.len();
            value
        })
    }

    fn array(&mut self, depth: usize) -> Option<Json<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.whitespace();
        let mut items = Vec::new();
        if self.eat(b']') {
            return Some(Json::Arr(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.whitespace();
            if self.eat(b']') {
                return Some(Json::Arr(items));
            }
            if !self.eat(b',') {
                return None;
            }
            self.whitespace();
        }
    }

    fn object(&mut self, depth: usize) -> Option<Json<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.whitespace();
        let mut members = Vec::new();
        if self.eat(b'}') {
            return Some(Json::Obj(Object::new(members)));
        }
        loop {
            if self.peek() != Some(b'"') {
                return None;
            }
            let name = self.string()?;
            self.whitespace();
            if !self.eat(b':') {
                return None;
            }
            self.whitespace();
            members.push((name, self.value(depth)?));
            self.whitespace();
            if self.eat(b'}') {
                return Some(Json::Obj(Object::new(members)));
            }
            if !self.eat(b',') {
                return None;
            }
            self.whitespace();
        }
    }

    /// A string starting at its opening quote; borrowed unless it has escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.at += 1;
        let start = self.at;
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(Cow::Borrowed(&self.text[start..self.at - 1]));
                }
                b'\\' => break,
                c if c < 0x20 => return None,
                _ => self.at += 1,
            }
        }
        let mut out = String::from(&self.text[start..self.at]);
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    self.at += 1;
                    let c = match self.peek()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            self.at += 1;
                            out.push(self.unicode_escape()?);
                            continue;
                        }
                        _ => return None,
                    };
                    self.at += 1;
                    out.push(c);
                }
                c if c < 0x20 => return None,
                _ => {
                    let run = self.at;
                    while self
                        .peek()
                        .is_some_and(|c| c != b'"' && c != b'\\' && c >= 0x20)
                    {
                        self.at += 1;
                    }
                    out.push_str(&self.text[run..self.at]);
                }
            }
        }
    }

    /// The four hex digits after `\u`, and a second `\uXXXX` for a surrogate pair; a lone
    /// surrogate is an error (as in serde_json).
    fn unicode_escape(&mut self) -> Option<char> {
        let high = self.hex4()?;
        if !(0xD800..0xDC00).contains(&high) {
            return char::from_u32(high);
        }
        if self.bytes.get(self.at..self.at + 2)? != b"\\u" {
            return None;
        }
        self.at += 2;
        let low = self.hex4()?;
        if !(0xDC00..0xE000).contains(&low) {
            return None;
        }
        char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        let mut v = 0;
        for &d in digits {
            v = v * 16 + char::from(d).to_digit(16)?;
        }
        self.at += 4;
        Some(v)
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; an integer as `u64`/`i64` when it fits,
    /// else an `f64`, which must be finite.
    fn number(&mut self) -> Option<Num> {
        let start = self.at;
        let negative = self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        let mut integer = true;
        if self.eat(b'.') {
            integer = false;
            if self.digits() == 0 {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            integer = false;
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        let text = &self.text[start..self.at];
        if integer {
            if negative {
                if let Ok(v) = text.parse() {
                    return Some(Num::I(v));
                }
            } else if let Ok(v) = text.parse() {
                return Some(Num::U(v));
            }
        }
        let v: f64 = text.parse().ok()?;
        v.is_finite().then_some(Num::F(v))
    }
}

impl Num {
    fn exact(self) -> Option<i128> {
        match self {
            Num::U(v) => Some(i128::from(v)),
            Num::I(v) => Some(i128::from(v)),
            Num::F(_) => None,
        }
    }

    fn float(self) -> f64 {
        match self {
            Num::U(v) => v as f64,
            Num::I(v) => v as f64,
            Num::F(v) => v,
        }
    }
}

/// The tolerance rule of the module doc; symmetric in `a` and `b`.
fn numbers_equal(a: Num, b: Num, tolerance: f64) -> bool {
    if let (Some(x), Some(y)) = (a.exact(), b.exact()) {
        let d = x.abs_diff(y);
        return d == 0 || d as f64 <= tolerance * x.unsigned_abs().max(y.unsigned_abs()) as f64;
    }
    let (x, y) = (a.float(), b.float());
    let d = (x - y).abs();
    x == y || d <= tolerance * x.abs().max(y.abs()) || d <= ABSOLUTE_TOLERANCE
}

/// One step of a path.
#[derive(Debug)]
enum Step<'t> {
    Index(usize),
    Name(&'t str),
}

/// The first difference between `live` and `mirror`, depth first in the live value's order, as
/// the path's steps from the difference up to the root (reversed, so each level pushes one step
/// on the way back). `None` when they are equal.
fn diff<'t>(live: &'t Json<'_>, mirror: &'t Json<'_>, tolerance: f64) -> Option<Vec<Step<'t>>> {
    let equal = match (live, mirror) {
        (Json::Null, Json::Null) => true,
        (Json::Bool(a), Json::Bool(b)) => a == b,
        (Json::Num(a), Json::Num(b)) => numbers_equal(*a, *b, tolerance),
        (Json::Str(a), Json::Str(b)) => a == b,
        (Json::Arr(a), Json::Arr(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if let Some(mut path) = diff(x, y, tolerance) {
                    path.push(Step::Index(i));
                    return Some(path);
                }
            }
            return match a.len().cmp(&b.len()) {
                Ordering::Equal => None,
                _ => Some(vec![Step::Index(a.len().min(b.len()))]),
            };
        }
        (Json::Obj(a), Json::Obj(b)) => {
            for (name, x) in &a.members {
                let Some(y) = b.get(name) else {
                    return Some(vec![Step::Name(name)]);
                };
                if let Some(mut path) = diff(x, y, tolerance) {
                    path.push(Step::Name(name));
                    return Some(path);
                }
            }
            // Every live name is in the mirror's object; a longer one has a name the live lacks.
            return b
                .members
                .iter()
                .find(|(name, _)| a.get(name).is_none())
                .map(|(name, _)| vec![Step::Name(name)]);
        }
        _ => false,
    };
    (!equal).then(Vec::new)
}

/// `$` followed by the steps (given leaf first), in the syntax of the module doc.
fn render(reversed: &[Step<'_>]) -> String {
    use std::fmt::Write;
    let mut out = String::from("$");
    for step in reversed.iter().rev() {
        match step {
            Step::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
            Step::Name(name) if is_identifier(name) => {
                out.push('.');
                out.push_str(name);
            }
            Step::Name(name) => {
                out.push_str("[\"");
                for c in name.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        c if c < ' ' || c == '\u{7f}' => {
                            let _ = write!(out, "\\u{:04x}", u32::from(c));
                        }
                        c => out.push(c),
                    }
                }
                out.push_str("\"]");
            }
        }
    }
    out
}

fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests;

//! From TOML text to `raw::RawConfig`, reporting every unknown key in one run.
//!
//! serde's `deny_unknown_fields` stops at the first unknown key, so a file with three typos
//! would take three runs of `check` to clean. Here the document is parsed once into toml's
//! spanned tree; each unknown-key error names a key and where it is, so that key is taken out of
//! the tree and the rest is read again, until the file reads clean or fails for another reason.
//! Each unknown key is reported with its path, its line and, when a known key is close to it,
//! a "did you mean". Another kind of error (a value of the wrong type) still ends the reading:
//! it is reported after the unknown keys found before it (serde reads a table's keys in name
//! order), and `validate` reports every problem with the values that do read.

use serde::Deserialize;
use toml::de::{DeTable, DeValue, Deserializer};

use super::raw::RawConfig;

/// More unknown keys than this in one file: the rest are not listed.
const MAX_UNKNOWN: usize = 50;

/// The raw config, or every problem found reading it (unknown keys first, in file order).
pub fn raw_config(text: &str) -> Result<RawConfig, Vec<String>> {
    let mut root = DeTable::parse(text).map_err(|e| vec![e.to_string().trim_end().to_string()])?;
    // (line, message) of each unknown key taken out.
    let mut unknown: Vec<(usize, String)> = Vec::new();
    let finish = |mut unknown: Vec<(usize, String)>, last: Option<String>| {
        unknown.sort_by_key(|(line, _)| *line);
        let mut all: Vec<String> = unknown.into_iter().map(|(_, m)| m).collect();
        all.extend(last);
        all
    };
    loop {
        let mut e = match RawConfig::deserialize(Deserializer::from(root.clone())) {
            Ok(raw) if unknown.is_empty() => return Ok(raw),
            Ok(_) => return Err(finish(unknown, None)),
            Err(e) => e,
        };
        e.set_input(Some(text));
        let found = unknown_field(e.message()).zip(e.span());
        let taken = found.and_then(|((name, expected), span)| {
            let path = take_key(root.get_mut(), &span, "")?;
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            Some((line, describe(&path, name, &expected, line)))
        });
        match taken {
            Some(u) if unknown.len() < MAX_UNKNOWN => unknown.push(u),
            Some(_) => {
                let more = format!("more than {MAX_UNKNOWN} unknown keys; the rest are not listed");
                return Err(finish(unknown, Some(more)));
            }
            None => return Err(finish(unknown, Some(e.to_string().trim_end().to_string()))),
        }
    }
}

/// serde's "unknown field `x`, expected ..." (from `deny_unknown_fields`): the key and the keys
/// that would have been accepted there.
fn unknown_field(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, expected) = rest.split_once('`')?;
    // "`a`", "`a` or `b`", "one of `a`, `b`, `c`", or "there are no fields".
    let expected = expected.split('`').skip(1).step_by(2).collect();
    Some((name, expected))
}

/// Takes the key whose name lies at `span` out of the tree; returns its dotted path
/// (`service[0].max_body`).
fn take_key(
    table: &mut DeTable<'_>,
    span: &std::ops::Range<usize>,
    prefix: &str,
) -> Option<String> {
    let hit = table
        .keys()
        .find(|k| k.span() == *span)
        .map(|k| k.get_ref().to_string());
    if let Some(name) = hit {
        table.remove(name.as_str());
        return Some(join(prefix, &name));
    }
    for (k, v) in table.iter_mut() {
        let here = join(prefix, k.get_ref());
        if let Some(p) = take_in_value(v.get_mut(), span, &here) {
            return Some(p);
        }
    }
    None
}

fn take_in_value(v: &mut DeValue<'_>, span: &std::ops::Range<usize>, here: &str) -> Option<String> {
    match v {
        DeValue::Table(t) => take_key(t, span, here),
        DeValue::Array(a) => a
            .iter_mut()
            .enumerate()
            .find_map(|(i, x)| take_in_value(x.get_mut(), span, &format!("{here}[{i}]"))),
        _ => None,
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn describe(path: &str, name: &str, expected: &[&str], line: usize) -> String {
    let mut m = format!("{path}: unknown key (line {line})");
    match suggest(name, expected) {
        Some(s) => m.push_str(&format!("; did you mean `{s}`?")),
        None if expected.is_empty() => m.push_str("; this table takes no keys"),
        None => m.push_str(&format!("; the keys here are {}", expected.join(", "))),
    }
    m
}

/// The known key closest to `name`, when it is close enough to be the one meant: a typo
/// (`max_conections`), a different separator or case (`drain-timeout`), or a word dropped or
/// added (`timeout` for `scoring_timeout` is not suggested; too far).
fn suggest<'a>(name: &str, expected: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let n = norm(name);
    expected
        .iter()
        .map(|e| (strsim::damerau_levenshtein(&n, &norm(e)), *e))
        .filter(|(d, e)| *d <= (e.len().max(name.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_is_reported_with_a_suggestion() {
        let text = r#"
[listen]
adress = "127.0.0.1:8443"

[limits]
max_conections = 5

[server]
drain-timeout = "10s"

[[service]]
name = "iris"
backends = ["http://127.0.0.1:5001"]
scoring_timout = "1s"

[[service]]
name = "other"
backends = ["http://127.0.0.1:5002"]
colour = "blue"
"#;
        let problems = raw_config(text).unwrap_err();
        assert_eq!(
            problems,
            [
                "listen.adress: unknown key (line 3); did you mean `address`?",
                "limits.max_conections: unknown key (line 6); did you mean `max_connections`?",
                "server.drain-timeout: unknown key (line 9); did you mean `drain_timeout`?",
                "service[0].scoring_timout: unknown key (line 14); did you mean `scoring_timeout`?",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(problems[4..].iter().cloned())
            .collect::<Vec<_>>()
        );
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(
            problems[4].starts_with("service[1].colour: unknown key (line 19); the keys here are "),
            "{}",
            problems[4]
        );
        assert!(problems[4].contains("backends"), "{}", problems[4]);
    }

    #[test]
    fn other_errors_still_come_through_after_the_unknown_keys() {
        // Keys are read in name order, so a bad value ends the reading of keys after it: this
        // one sits in a table read after the unknown key's.
        let text = "[listen]\nadress = \"x\"\n[server]\ndrain_timeout = 5\n";
        let problems = raw_config(text).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].starts_with("listen.adress"), "{problems:#?}");
        assert!(problems[1].contains("line 4"), "{problems:#?}");
        let problems = raw_config("this is not toml").unwrap_err();
        assert!(problems[0].contains("TOML parse error"), "{problems:?}");
        assert!(raw_config("[listen]\naddress = \"127.0.0.1:1\"\n").is_ok());
    }
}

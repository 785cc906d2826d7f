//! A stand-in for `mirror::compare` (being written on another branch, with property tests):
//! the same interface and rules (contract §8), kept private until that module is merged.

/// One answer: its status, whether its media type is JSON, its body.
pub struct Answer<'a> {
    pub status: u16,
    pub json: bool,
    pub body: &'a [u8],
}

/// How a mirrored answer compares with the live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Same,
    DifferentStatus,
    /// `path`: the first differing JSON path (`$.predictions[3]`), `None` when compared byte
    /// for byte.
    DifferentBody {
        path: Option<String>,
    },
}

/// The most nesting a body may have to be compared as JSON.
const MAX_DEPTH: usize = 128;

pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Compares statuses, then bodies: as JSON when both are JSON and parse, else byte for byte.
pub fn compare(live: &Answer<'_>, mirror: &Answer<'_>, tolerance: f64) -> Verdict {
    if live.status != mirror.status {
        return Verdict::DifferentStatus;
    }
    if live.json && mirror.json {
        let a = serde_json::from_slice::<serde_json::Value>(live.body);
        let b = serde_json::from_slice::<serde_json::Value>(mirror.body);
        if let (Ok(a), Ok(b)) = (a, b)
            && depth(&a) <= MAX_DEPTH
            && depth(&b) <= MAX_DEPTH
        {
            let mut path = "$".to_string();
            return if first_difference(&a, &b, tolerance, &mut path) {
                Verdict::DifferentBody { path: Some(path) }
            } else {
                Verdict::Same
            };
        }
    }
    if live.body == mirror.body {
        Verdict::Same
    } else {
        Verdict::DifferentBody { path: None }
    }
}

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

fn numbers_equal(a: f64, b: f64, tol: f64) -> bool {
    let d = (a - b).abs();
    d <= tol * a.abs().max(b.abs()) || d <= 1e-12
}

/// True when `a` and `b` differ; `path` then names the first place (depth first).
fn first_difference(
    a: &serde_json::Value,
    b: &serde_json::Value,
    tol: f64,
    path: &mut String,
) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => !numbers_equal(x, y, tol),
            _ => x != y,
        },
        (V::Array(x), V::Array(y)) => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if first_difference(p, q, tol, path) {
                    return true;
                }
                path.truncate(len);
            }
            if x.len() != y.len() {
                path.push_str(&format!("[{}]", x.len().min(y.len())));
                return true;
            }
            false
        }
        (V::Object(x), V::Object(y)) => {
            for (k, p) in x {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                match y.get(k) {
                    Some(q) if !first_difference(p, q, tol, path) => path.truncate(len),
                    _ => return true,
                }
            }
            if let Some(k) = y.keys().find(|k| !x.contains_key(*k)) {
                path.push('.');
                path.push_str(k);
                return true;
            }
            false
        }
        _ => a != b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(body: &str) -> Answer<'_> {
        Answer {
            status: 200,
            json: true,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn json_rules() {
        assert_eq!(compare(&j("1"), &j("1.0"), 1e-6), Verdict::Same);
        assert_eq!(
            compare(&j(r#"{"a":1,"b":[1,2]}"#), &j(r#"{"b":[1,2],"a":1}"#), 0.0),
            Verdict::Same
        );
        assert_eq!(
            compare(
                &j(r#"{"predictions":[0,1,2,3]}"#),
                &j(r#"{"predictions":[0,1,2,4]}"#),
                1e-6
            ),
            Verdict::DifferentBody {
                path: Some("$.predictions[3]".into())
            }
        );
        let mut other = j("1");
        other.status = 500;
        assert_eq!(compare(&j("1"), &other, 1e-6), Verdict::DifferentStatus);
        let bytes = |b: &'static str| Answer {
            status: 200,
            json: false,
            body: b.as_bytes(),
        };
        assert_eq!(
            compare(&bytes("1"), &bytes("1.0"), 1e-6),
            Verdict::DifferentBody { path: None }
        );
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(!is_json_media_type("text/plain"));
    }
}

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

fn json(status: u16, body: &str) -> Answer<'_> {
    Answer {
        status,
        json: true,
        body: body.as_bytes(),
    }
}

/// Compares two JSON bodies (status 200, JSON media type) with tolerance 1e-6.
fn cmp(live: &str, mirror: &str) -> Verdict {
    compare(&json(200, live), &json(200, mirror), 1e-6)
}

fn at(path: &str) -> Verdict {
    Verdict::DifferentBody {
        path: Some(path.to_owned()),
    }
}

const BYTES: Verdict = Verdict::DifferentBody { path: None };

#[test]
fn different_statuses_win_over_bodies() {
    assert_eq!(
        compare(&json(200, "{}"), &json(500, "{}"), 1e-6),
        Verdict::DifferentStatus
    );
    assert_eq!(
        compare(&json(200, "1"), &json(404, "2"), 1e-6),
        Verdict::DifferentStatus
    );
}

#[test]
fn integers_equal_their_floats_and_tolerance_is_relative() {
    assert_eq!(cmp("1", "1.0"), Verdict::Same);
    assert_eq!(cmp("[1, -0]", "[1e0, 0.0]"), Verdict::Same);
    assert_eq!(cmp("100", "100.00001"), Verdict::Same); // 1e-7 relative
    assert_eq!(cmp("100", "100.001"), at("$")); // 1e-5 relative
    assert_eq!(cmp("{\"p\":0.5}", "{\"p\":0.5000004}"), Verdict::Same);
    assert_eq!(cmp("{\"p\":0.5}", "{\"p\":0.5000006}"), at("$.p"));
    // The absolute floor: tiny numbers near 0 are equal even with tolerance 0.
    assert_eq!(
        compare(&json(200, "1e-13"), &json(200, "0"), 0.0),
        Verdict::Same
    );
    assert_eq!(compare(&json(200, "1e-11"), &json(200, "0"), 0.0), at("$"));
    assert_eq!(
        compare(&json(200, "[0.1]"), &json(200, "[0.1000001]"), 0.0),
        at("$[0]")
    );
}

#[test]
fn integers_beyond_2_pow_53_compare_exactly_as_integers() {
    let exact = |a: &str, b: &str, tol| compare(&json(200, a), &json(200, b), tol);
    // Both round to the same f64; as integers they differ by 1.
    assert_eq!(exact("9007199254740993", "9007199254740992", 0.0), at("$"));
    assert_eq!(
        exact("9007199254740993", "9007199254740992", 1e-9),
        Verdict::Same
    );
    assert_eq!(
        exact("18446744073709551615", "18446744073709551614", 0.0),
        at("$")
    );
    assert_eq!(
        exact("18446744073709551615", "-9223372036854775808", 2.0),
        Verdict::Same
    );
    assert_eq!(
        exact("18446744073709551615", "-9223372036854775808", 1.0),
        at("$")
    );
    assert_eq!(
        exact("-9223372036854775808", "-9223372036854775807", 0.0),
        at("$")
    );
    // An integer against a float: both as f64 (documented), so these are equal.
    assert_eq!(
        exact("9007199254740993", "9007199254740992.0", 0.0),
        Verdict::Same
    );
    // Beyond u64: f64 on both sides.
    assert_eq!(
        exact("123456789012345678901234", "123456789012345678901235", 0.0),
        Verdict::Same
    );
}

#[test]
fn member_order_is_ignored_array_order_is_not() {
    assert_eq!(
        cmp(
            r#"{"a":1,"b":[1,2],"c":{"x":null,"y":true}}"#,
            r#"{"c":{"y":true,"x":null},"b":[1,2],"a":1}"#
        ),
        Verdict::Same
    );
    assert_eq!(
        cmp(
            r#"{"predictions":["setosa","virginica"]}"#,
            r#"{"predictions":["virginica","setosa"]}"#
        ),
        at("$.predictions[0]")
    );
}

#[test]
fn the_first_difference_in_the_live_body_order_is_reported() {
    // Two differences: $.b.x comes first in the live body, $.a first in the mirror's.
    assert_eq!(
        cmp(r#"{"b":{"x":1},"a":2}"#, r#"{"a":3,"b":{"x":2}}"#),
        at("$.b.x")
    );
    assert_eq!(
        cmp(r#"{"a":3,"b":{"x":2}}"#, r#"{"b":{"x":1},"a":2}"#),
        at("$.a")
    );
    // Depth first: everything under [0] before [1].
    assert_eq!(cmp("[[1,[2,3]],[4]]", "[[1,[2,9]],[5]]"), at("$[0][1][1]"));
}

#[test]
fn members_in_one_object_only_and_arrays_of_other_lengths() {
    assert_eq!(cmp(r#"{"a":1,"b":2}"#, r#"{"a":1}"#), at("$.b"));
    assert_eq!(cmp(r#"{"a":1}"#, r#"{"a":1,"c":{"d":1},"b":2}"#), at("$.c"));
    // A live member missing in the mirror is found before the mirror's extra one.
    assert_eq!(cmp(r#"{"a":1,"b":2}"#, r#"{"c":1,"a":1}"#), at("$.b"));
    assert_eq!(cmp("[1,2]", "[1,2,3]"), at("$[2]"));
    assert_eq!(cmp("[1,2,3]", "[1,2]"), at("$[2]"));
    assert_eq!(cmp("[1,2,3]", "[1,5]"), at("$[1]"));
    assert_eq!(cmp("[]", "{}"), at("$"));
    assert_eq!(cmp(r#"{"a":[]}"#, r#"{"a":{}}"#), at("$.a"));
}

#[test]
fn types_never_equal_each_other() {
    let values = ["null", "true", "false", "0", "\"0\"", "[]", "{}", "\"\""];
    for (i, a) in values.iter().enumerate() {
        for (j, b) in values.iter().enumerate() {
            let expect = if i == j { Verdict::Same } else { at("$") };
            assert_eq!(cmp(a, b), expect, "{a} vs {b}");
        }
    }
}

#[test]
fn names_that_are_not_identifiers_are_bracket_quoted() {
    assert_eq!(cmp(r#"{"_ok9":1}"#, r#"{"_ok9":2}"#), at("$._ok9"));
    assert_eq!(
        cmp(r#"{"a b":{"x\"y":1}}"#, r#"{"a b":{"x\"y":2}}"#),
        at(r#"$["a b"]["x\"y"]"#)
    );
    assert_eq!(cmp(r#"{"1a":1}"#, r#"{"1a":2}"#), at(r#"$["1a"]"#));
    assert_eq!(cmp(r#"{"":1}"#, r#"{"":2}"#), at(r#"$[""]"#));
    assert_eq!(cmp(r#"{"é":1}"#, r#"{"é":2}"#), at(r#"$["é"]"#));
    assert_eq!(
        cmp(r#"{"a\\b\u0001":1}"#, r#"{"a\\b\u0001":2}"#),
        at(r#"$["a\\b\u0001"]"#)
    );
    assert_eq!(
        cmp(
            r#"{"outputs":{"0":{"score":1}}}"#,
            r#"{"outputs":{"0":{"score":2}}}"#
        ),
        at(r#"$.outputs["0"].score"#)
    );
}

#[test]
fn strings_compare_unescaped() {
    assert_eq!(cmp(r#""\u00e9\/\n""#, "\"é/\\u000a\""), Verdict::Same);
    assert_eq!(cmp(r#""\ud83d\ude00""#, "\"😀\""), Verdict::Same);
    assert_eq!(cmp(r#"{"\u0061":1}"#, r#"{"a":1}"#), Verdict::Same);
    assert_eq!(cmp(r#""a""#, r#""A""#), at("$"));
}

#[test]
fn a_repeated_member_name_keeps_its_last_value() {
    assert_eq!(cmp(r#"{"a":1,"a":2}"#, r#"{"a":2}"#), Verdict::Same);
    assert_eq!(cmp(r#"{"a":1,"a":2}"#, r#"{"a":1}"#), at("$.a"));
    assert_eq!(
        cmp(r#"{"a":1,"b":1,"a":2,"b":3}"#, r#"{"b":3,"a":2}"#),
        Verdict::Same
    );
    // The last occurrence's position orders the walk: b comes before a here.
    assert_eq!(cmp(r#"{"a":0,"b":1,"a":2}"#, r#"{"a":5,"b":6}"#), at("$.b"));
}

#[test]
fn without_a_json_media_type_or_json_bodies_compares_bytes() {
    let text = |body: &'static str| Answer {
        status: 200,
        json: false,
        body: body.as_bytes(),
    };
    assert_eq!(compare(&text("1"), &text("1.0"), 1e-6), BYTES);
    assert_eq!(compare(&text("1"), &json(200, "1.0"), 1e-6), BYTES);
    assert_eq!(compare(&json(200, "1"), &text("1.0"), 1e-6), BYTES);
    assert_eq!(compare(&text("ok"), &text("ok"), 1e-6), Verdict::Same);
    assert_eq!(compare(&text(""), &text(""), 1e-6), Verdict::Same);
    // Both JSON media types, one body that does not parse.
    assert_eq!(cmp("{\"a\":1}", "{\"a\":1"), BYTES);
    assert_eq!(cmp("not json", "not json"), Verdict::Same);
    assert_eq!(cmp("", "{}"), BYTES);
    for bad in [
        "01",
        "1.",
        ".5",
        "-",
        "+1",
        "1e",
        "1e+",
        "0x1",
        "1e400",
        "-1e400",
        "NaN",
        "Infinity",
        "[1,]",
        "{\"a\":1,}",
        "{a:1}",
        "{'a':1}",
        "[1 2]",
        "{\"a\" 1}",
        "[",
        "]",
        "\"abc",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"a\tb\"",
        "tru",
        "nul",
        "true false",
        "\u{feff}1",
        "1 //",
        "[] x",
    ] {
        assert_eq!(cmp(bad, "[\"x\"]"), BYTES, "{bad:?} must not parse");
        assert!(
            serde_json::from_str::<Value>(bad).is_err(),
            "serde_json agrees that {bad:?} is not JSON"
        );
    }
    assert_eq!(
        compare(
            &Answer {
                status: 200,
                json: true,
                body: b"\"\xff\""
            },
            &json(200, "\"x\""),
            1e-6
        ),
        BYTES
    );
}

#[test]
fn whitespace_around_and_between_tokens_is_allowed() {
    assert_eq!(
        cmp(" \t\r\n{ \"a\" : [ 1 , 2 ] }\n", "{\"a\":[1,2]}"),
        Verdict::Same
    );
}

fn nested(depth: usize, leaf: &str) -> String {
    format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn depth_128_is_compared_as_json_129_as_bytes() {
    let path = format!("${}", "[0]".repeat(MAX_DEPTH));
    assert_eq!(cmp(&nested(128, "1"), &nested(128, "2")), at(&path));
    assert_eq!(cmp(&nested(128, "1"), &nested(128, "1.0")), Verdict::Same);
    assert_eq!(cmp(&nested(129, "1"), &nested(129, "1.0")), BYTES);
    assert_eq!(cmp(&nested(128, "1"), &nested(129, "1")), BYTES);
    let objects = |depth: usize, leaf: &str| {
        format!("{}{leaf}{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    };
    assert_eq!(cmp(&objects(128, "1"), &objects(128, "1.0")), Verdict::Same);
    assert_eq!(cmp(&objects(129, "1"), &objects(129, "1.0")), BYTES);
    // Why not serde_json: its recursion limit stops one level short of the contract's 128.
    assert!(serde_json::from_str::<Value>(&nested(127, "1")).is_ok());
    assert!(serde_json::from_str::<Value>(&nested(128, "1")).is_err());
}

#[test]
fn json_media_types() {
    for yes in [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        " application/json ;charset=utf-8",
        "application/problem+json",
        "application/vnd.api+JSON; v=1",
    ] {
        assert!(is_json_media_type(yes), "{yes}");
    }
    for no in [
        "",
        "json",
        "text/json",
        "text/plain",
        "application/jsonx",
        "application/json-seq",
        "application/+json",
        "application/x-ndjson",
        "application",
        "multipart/form-data; type=application/json",
        "application/ json",
    ] {
        assert!(!is_json_media_type(no), "{no}");
    }
}

// ---- property tests ----

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-c_]{1,2}|.{0,3}", inner), 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Writes `v` as JSON with each object's members in an order drawn from `seed`.
fn shuffled(v: &Value, seed: &mut u64, out: &mut String) {
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                shuffled(x, seed, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut members: Vec<_> = m.iter().collect();
            for i in (1..members.len()).rev() {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                members.swap(i, (*seed >> 33) as usize % (i + 1));
            }
            out.push('{');
            for (i, (k, x)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(" , ");
                }
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push(':');
                shuffled(x, seed, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&serde_json::to_string(scalar).unwrap()),
    }
}

/// Every node's path: steps as `Err(index)` or `Ok(name)`.
type Steps = Vec<Result<String, usize>>;

fn all_paths(v: &Value, here: &mut Steps, out: &mut Vec<Steps>) {
    out.push(here.clone());
    match v {
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                here.push(Err(i));
                all_paths(x, here, out);
                here.pop();
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                here.push(Ok(k.clone()));
                all_paths(x, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'v>(v: &'v mut Value, steps: &[Result<String, usize>]) -> &'v mut Value {
    steps.iter().fold(v, |v, s| match s {
        Err(i) => &mut v[*i],
        Ok(k) => &mut v[k.as_str()],
    })
}

fn render_steps(steps: &[Result<String, usize>]) -> String {
    let steps: Vec<Step<'_>> = steps
        .iter()
        .rev()
        .map(|s| match s {
            Err(i) => Step::Index(*i),
            Ok(k) => Step::Name(k),
        })
        .collect();
    render(&steps)
}

/// Follows a path written by `render` through `v`; `None` where nothing is at that path.
fn follow<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    let mut rest = path.strip_prefix('$').expect("a path starts with $");
    let mut v = v;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[\"") {
            // A JSON string up to its closing quote: parse it with serde_json.
            let mut de = serde_json::Deserializer::from_str(&rest[1..]).into_iter::<String>();
            let name = de.next().unwrap().unwrap();
            let used = de.byte_offset();
            assert!(r[used - 2..].starts_with("\"]"));
            rest = &r[used..];
            v = v.as_object()?.get(&name)?;
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap();
            v = v.as_array()?.get(r[..end].parse::<usize>().unwrap())?;
            rest = &r[end + 1..];
        } else {
            let r = rest.strip_prefix('.').expect("a step is [..] or .name");
            let end = r.find(['.', '[']).unwrap_or(r.len());
            v = v.as_object()?.get(&r[..end])?;
            rest = &r[end..];
        }
    }
    Some(v)
}

/// A value that differs from `v` beyond any tolerance below 0.5: a number far from it, or a
/// value of another type.
fn changed(v: &Value) -> Value {
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap();
            Value::from(if x.abs() < 1.0 { x + 10.0 } else { x / 3.0 })
        }
        Value::String(_) => Value::Null,
        _ => Value::String("mutated".into()),
    }
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn verdict(live: &[u8], mirror: &[u8], tolerance: f64) -> Verdict {
    let answer = |body| Answer {
        status: 200,
        json: true,
        body,
    };
    compare(&answer(live), &answer(mirror), tolerance)
}

proptest! {
    #[test]
    fn a_value_equals_itself(v in arb_json(), tol in prop_oneof![Just(0.0), 0.0..0.1]) {
        // Compact against pretty, so the byte-identical shortcut is not what answers.
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        prop_assert_eq!(verdict(&body(&v), &pretty, tol), Verdict::Same);
    }

    #[test]
    fn member_order_never_matters(v in arb_json(), seed in any::<u64>()) {
        let mut text = String::new();
        shuffled(&v, &mut seed.clone(), &mut text);
        prop_assert_eq!(verdict(&body(&v), text.as_bytes(), 0.0), Verdict::Same);
        prop_assert_eq!(verdict(text.as_bytes(), &body(&v), 0.0), Verdict::Same);
    }

    #[test]
    fn one_change_is_reported_at_its_path(
        v in arb_json(),
        which in any::<prop::sample::Index>(),
        kind in 0..3u8,
        seed in any::<u64>(),
        tol in prop_oneof![Just(0.0), 0.0..0.1],
    ) {
        let mut paths = Vec::new();
        all_paths(&v, &mut Vec::new(), &mut paths);
        let steps = which.get(&paths).clone();
        let mut mutated = v.clone();
        match (kind, steps.split_last()) {
            // Remove an object member, or an array's last element.
            (0, Some((Ok(name), parent))) => {
                node_mut(&mut mutated, parent).as_object_mut().unwrap().remove(name);
            }
            (0, Some((Err(i), parent)))
                if node_mut(&mut mutated, parent).as_array().unwrap().len() == i + 1 =>
            {
                node_mut(&mut mutated, parent).as_array_mut().unwrap().pop();
            }
            _ => {
                let node = node_mut(&mut mutated, &steps);
                *node = changed(node);
            }
        }
        let path = render_steps(&steps);
        let mut shuffled_text = String::new();
        shuffled(&mutated, &mut seed.clone(), &mut shuffled_text);
        for (live, mirror) in [
            (body(&v), body(&mutated)),
            (body(&mutated), body(&v)),
            (body(&v), shuffled_text.into_bytes()),
        ] {
            let got = verdict(&live, &mirror, tol);
            prop_assert_eq!(&got, &Verdict::DifferentBody { path: Some(path.clone()) });
            // The path leads to a real difference in both values.
            let (l, m): (Value, Value) =
                (serde_json::from_slice(&live).unwrap(), serde_json::from_slice(&mirror).unwrap());
            let (a, b) = (follow(&l, &path), follow(&m, &path));
            prop_assert!(a != b, "{path}: {a:?} vs {b:?}");
            if let (Some(a), Some(b)) = (a, b) {
                prop_assert_eq!(verdict(&body(a), &body(b), tol), at("$"));
            }
        }
    }

    #[test]
    fn tolerance_is_symmetric(
        a in any::<f64>().prop_filter("finite", |f| f.is_finite()),
        scale in -0.2f64..0.2,
        ints in any::<(i64, u64)>(),
        tol in prop_oneof![Just(0.0), 0.0..0.1],
        v in arb_json(),
        w in arb_json(),
    ) {
        let same = |x: &[u8], y: &[u8]| verdict(x, y, tol) == Verdict::Same;
        let b = a * (1.0 + scale);
        let (x, y) = (body(&json!([a])), body(&json!([b])));
        prop_assert_eq!(same(&x, &y), same(&y, &x));
        // Well inside and well outside the tolerance.
        if scale.abs() < tol / 2.0 || (a - b).abs() <= 1e-12 {
            prop_assert!(same(&x, &y));
        }
        if scale.abs() > tol * 2.0 + 1e-9 && a.abs() > 1e-6 {
            prop_assert!(!same(&x, &y));
        }
        let (i, u) = (body(&json!(ints.0)), body(&json!(ints.1)));
        prop_assert_eq!(same(&i, &u), same(&u, &i));
        prop_assert_eq!(same(&body(&v), &body(&w)), same(&body(&w), &body(&v)));
    }

    #[test]
    fn parses_what_serde_json_parses(v in arb_json(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        // Mangle a valid document by one byte; the parser agrees with serde_json on acceptance
        // (checked through compare: a body that parses equals itself with a trailing space).
        let mut text = body(&v);
        let i = cut.index(text.len() + 1);
        text.insert(i, byte);
        let mut spaced = text.clone();
        spaced.push(b' ');
        let parses = verdict(&text, &spaced, 0.0) == Verdict::Same;
        prop_assert_eq!(parses, serde_json::from_slice::<Value>(&text).is_ok(), "{}", String::from_utf8_lossy(&text));
    }
}

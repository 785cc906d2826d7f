//! The mirror's comparison on two arbitrary bodies, both with a JSON media type. Input: one byte
//! for the tolerance, then the live body, a `0xff` byte (never inside UTF-8), the mirror's body.
//! Never panics; a body equals itself; `Same` is symmetric; a path comes only from two bodies
//! that parse; and the module's own parser accepts exactly what serde_json accepts (up to
//! serde_json's lower depth limit), seen through compare: a body that parses equals itself with a
//! trailing space.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scoregate::mirror::compare::{Answer, Verdict, compare};

const TOLERANCES: [f64; 4] = [0.0, 1e-9, 1e-6, 0.1];

fn json(body: &[u8]) -> Answer<'_> {
    Answer { status: 200, json: true, body }
}

/// Whether `compare` treated `body` as JSON.
fn parses(body: &[u8]) -> bool {
    let mut spaced = body.to_vec();
    spaced.push(b' ');
    compare(&json(body), &json(&spaced), 0.0) == Verdict::Same
}

fuzz_target!(|data: &[u8]| {
    let Some((&t, rest)) = data.split_first() else {
        return;
    };
    let tol = TOLERANCES[usize::from(t) % TOLERANCES.len()];
    let (live, mirror) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, rest),
    };
    let verdict = compare(&json(live), &json(mirror), tol);
    let back = compare(&json(mirror), &json(live), tol);
    assert_eq!(verdict == Verdict::Same, back == Verdict::Same);
    assert_eq!(compare(&json(live), &json(live), tol), Verdict::Same);
    let (l, m) = (parses(live), parses(mirror));
    match &verdict {
        Verdict::DifferentBody { path: Some(p) } => assert!(l && m && p.starts_with('$')),
        Verdict::DifferentBody { path: None } => assert!(!(l && m), "both parse: a path is due"),
        Verdict::Same => assert!(live == mirror || (l && m)),
        Verdict::DifferentStatus => unreachable!("equal statuses"),
    }
    // serde_json's recursion limit is 127 nested containers; below that the parsers agree.
    for body in [live, mirror] {
        if body.iter().filter(|&&b| b == b'[' || b == b'{').count() < 127 {
            let serde = serde_json::from_slice::<serde_json::Value>(body).is_ok();
            assert_eq!(parses(body), serde, "{:?}", String::from_utf8_lossy(body));
        }
    }
});

//! The mirror's comparison (src/mirror/compare.rs) on two typical iris answers: three flowers'
//! predictions and class probabilities, the mirror's with its members in the other order and
//! probabilities off by about 1e-9 (equal under the default tolerance), and the same with one
//! prediction different (the path of the difference is built). Also byte-identical bodies (the
//! shortcut) and the byte-for-byte fallback.
//! Run: `cargo bench --bench compare`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use scoregate::mirror::compare::{Answer, compare};

const LIVE: &str = r#"{"predictions": ["setosa", "versicolor", "virginica"], "probabilities": [[0.9734217415, 0.0265770036, 0.0000012549], [0.0121838213, 0.8612443027, 0.1265718760], [0.0000127931, 0.0833159004, 0.9166713065]]}"#;
const MIRROR: &str = r#"{"probabilities":[[0.9734217422,0.0265770031,0.0000012549],[0.0121838211,0.8612443034,0.1265718755],[0.0000127931,0.0833159011,0.9166713058]],"predictions":["setosa","versicolor","virginica"]}"#;
const MIRROR_DIFFERENT: &str = r#"{"probabilities":[[0.9734217422,0.0265770031,0.0000012549],[0.0121838211,0.8612443034,0.1265718755],[0.0000127931,0.0833159011,0.9166713058]],"predictions":["setosa","virginica","virginica"]}"#;

fn answer(body: &str, json: bool) -> Answer<'_> {
    Answer {
        status: 200,
        json,
        body: body.as_bytes(),
    }
}

fn benches(c: &mut Criterion) {
    let live = answer(LIVE, true);
    let mut group = c.benchmark_group("mirror/compare iris answers");
    group.bench_function("same (other member order, numbers within 1e-6)", |b| {
        let mirror = answer(MIRROR, true);
        b.iter(|| compare(black_box(&live), black_box(&mirror), 1e-6))
    });
    group.bench_function("different at $.predictions[1]", |b| {
        let mirror = answer(MIRROR_DIFFERENT, true);
        b.iter(|| compare(black_box(&live), black_box(&mirror), 1e-6))
    });
    group.bench_function("byte-identical", |b| {
        let mirror = answer(LIVE, true);
        b.iter(|| compare(black_box(&live), black_box(&mirror), 1e-6))
    });
    group.bench_function("not JSON media types (bytes)", |b| {
        let (l, m) = (answer(LIVE, false), answer(MIRROR, false));
        b.iter(|| compare(black_box(&l), black_box(&m), 1e-6))
    });
    group.finish();
}

criterion_group!(compare_benches, benches);
criterion_main!(compare_benches);

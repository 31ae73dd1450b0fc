//! Evaluating (and parsing) a 5-atom label expression.
//!
//! Run with `cargo bench -p hodei-domain --bench label`. Target: under
//! 200 ns per evaluation.

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hodei_domain::LabelExpr;

const EXPRESSION: &str = "linux && (java-17 || java-21) && !windows && git";

fn bench(c: &mut Criterion) {
    let expr = LabelExpr::parse(EXPRESSION).unwrap();
    let matching: BTreeSet<String> = ["git", "java-17", "linux", "maven-3.8"]
        .map(String::from)
        .into();
    let failing: BTreeSet<String> = ["git", "linux", "node-18", "npm", "yarn"]
        .map(String::from)
        .into();
    assert!(expr.matches(&matching));
    assert!(!expr.matches(&failing));
    c.bench_function("evaluate/5-atom expression/match", |b| {
        b.iter(|| black_box(&expr).matches(black_box(&matching)))
    });
    c.bench_function("evaluate/5-atom expression/no match", |b| {
        b.iter(|| black_box(&expr).matches(black_box(&failing)))
    });
    c.bench_function("parse/5-atom expression", |b| {
        b.iter(|| LabelExpr::parse(black_box(EXPRESSION)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

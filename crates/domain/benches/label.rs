//! Evaluating (and parsing) a 5-atom label expression.
//!
//! Run with `cargo bench -p hodei-domain --bench label`. Target: under
//! 200 ns per evaluation. Each benchmark is measured in wall-clock time
//! (`label/...`) and in the thread's CPU time (`label_cpu_time/...`).

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::measurement::Measurement;
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use hodei_domain::LabelExpr;

#[path = "support/cpu_time.rs"]
mod cpu_time;

const EXPRESSION: &str = "linux && (java-17 || java-21) && !windows && git";

fn bench<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let expr = LabelExpr::parse(EXPRESSION).unwrap();
    let matching: BTreeSet<String> = ["git", "java-17", "linux", "maven-3.8"]
        .map(String::from)
        .into();
    let failing: BTreeSet<String> = ["git", "linux", "node-18", "npm", "yarn"]
        .map(String::from)
        .into();
    assert!(expr.matches(&matching));
    assert!(!expr.matches(&failing));
    let mut g = c.benchmark_group(group);
    if group.ends_with("cpu_time") {
        // Linux updates a running thread's CPU time only every few
        // milliseconds: long, equal samples keep that error small.
        g.sampling_mode(SamplingMode::Flat);
    }
    g.bench_function("evaluate 5-atom expression (match)", |b| {
        b.iter(|| black_box(&expr).matches(black_box(&matching)))
    });
    g.bench_function("evaluate 5-atom expression (no match)", |b| {
        b.iter(|| black_box(&expr).matches(black_box(&failing)))
    });
    g.bench_function("parse 5-atom expression", |b| {
        b.iter(|| LabelExpr::parse(black_box(EXPRESSION)))
    });
    g.finish();
}

fn wall(c: &mut Criterion) {
    bench(c, "label");
}

fn cpu(c: &mut Criterion<cpu_time::CpuTime>) {
    bench(c, "label_cpu_time");
}

criterion_group!(wall_clock, wall);
criterion_group! {
    name = cpu_clock;
    config = cpu_time::criterion();
    targets = cpu
}
criterion_main!(wall_clock, cpu_clock);

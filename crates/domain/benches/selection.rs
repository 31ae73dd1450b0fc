//! Template selection among 1,000 templates for a 5-atom label expression.
//!
//! Run with `cargo bench -p hodei-domain --bench selection`. Target: under
//! 100 µs per selection. Each benchmark is measured in wall-clock time
//! (`selection/...`) and in the thread's CPU time
//! (`selection_cpu_time/...`).

use std::hint::black_box;

use criterion::measurement::Measurement;
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use hodei_domain::selection::{WorkerRequirements, select};
use hodei_domain::{
    CpuQuantity, LabelExpr, MemoryQuantity, ResourceRequirements, TemplateId, WorkerTemplate,
};

#[path = "support/cpu_time.rs"]
mod cpu_time;

const EXPRESSION: &str = "linux && (java-17 || java-21) && !windows && git";

/// 1,000 templates with 4 to 7 capabilities each, drawn deterministically
/// from a pool of 20 labels so that about a fifth of them match.
fn templates() -> Vec<WorkerTemplate> {
    const POOL: [&str; 20] = [
        "linux",
        "windows",
        "git",
        "java-17",
        "java-21",
        "maven-3.8",
        "gradle",
        "node-18",
        "npm",
        "yarn",
        "docker",
        "kubernetes",
        "helm",
        "python-3.11",
        "pip",
        "poetry",
        "go-1.21",
        "rust",
        "arm64",
        "gpu",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64: deterministic, no dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..1000)
        .map(|i| {
            let count = 4 + (next() % 4) as usize;
            let mut caps = vec![if next() % 5 == 0 { "windows" } else { "linux" }];
            caps.extend((0..count).map(|_| POOL[(next() % POOL.len() as u64) as usize]));
            let resources = ResourceRequirements::new(
                CpuQuantity::from_millis(250 * (1 + next() % 16)),
                MemoryQuantity::from_bytes((256 << 20) * (1 + next() % 32)),
            );
            WorkerTemplate::new(
                TemplateId::new(format!("t-{i:04}")).unwrap(),
                "img",
                resources,
            )
            .unwrap()
            .with_capabilities(caps)
            .unwrap()
        })
        .collect()
}

fn bench<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let templates = templates();
    let label = LabelExpr::parse(EXPRESSION).unwrap();
    let with_minimums = WorkerRequirements::new()
        .with_label(label.clone())
        .with_min_cpu(CpuQuantity::parse("500m").unwrap())
        .with_min_memory(MemoryQuantity::parse("1Gi").unwrap());
    let labels_only = WorkerRequirements::new().with_label(label);
    for r in [&with_minimums, &labels_only] {
        let s = select(&templates, r);
        eprintln!(
            "{} candidates, {} rejected",
            s.candidates().len(),
            s.rejected().len()
        );
    }
    let mut g = c.benchmark_group(group);
    if group.ends_with("cpu_time") {
        // Linux updates a running thread's CPU time only every few
        // milliseconds: long, equal samples keep that error small.
        g.sampling_mode(SamplingMode::Flat);
    }
    // Labels only: every template's capabilities are evaluated.
    g.bench_function("1000 templates, 5-atom expression", |b| {
        b.iter(|| {
            select(black_box(&templates), black_box(&labels_only))
                .candidates()
                .len()
        })
    });
    // With minimums, templates short of cpu or memory skip the evaluation.
    g.bench_function(
        "1000 templates, 5-atom expression, min cpu and memory",
        |b| {
            b.iter(|| {
                select(black_box(&templates), black_box(&with_minimums))
                    .candidates()
                    .len()
            })
        },
    );
    g.finish();
}

fn wall(c: &mut Criterion) {
    bench(c, "selection");
}

fn cpu(c: &mut Criterion<cpu_time::CpuTime>) {
    bench(c, "selection_cpu_time");
}

criterion_group!(wall_clock, wall);
criterion_group! {
    name = cpu_clock;
    config = cpu_time::criterion();
    targets = cpu
}
criterion_main!(wall_clock, cpu_clock);

//! Template selection among 1,000 templates for a 5-atom label expression.
//!
//! Run with `cargo bench -p hodei-domain --bench selection`. Target: under
//! 100 µs per selection.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hodei_domain::selection::{WorkerRequirements, select};
use hodei_domain::{
    CpuQuantity, LabelExpr, MemoryQuantity, ResourceRequirements, TemplateId, WorkerTemplate,
};

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

fn bench(c: &mut Criterion) {
    let templates = templates();
    let requirements = WorkerRequirements::new()
        .with_label(LabelExpr::parse(EXPRESSION).unwrap())
        .with_min_cpu(CpuQuantity::parse("500m").unwrap())
        .with_min_memory(MemoryQuantity::parse("1Gi").unwrap());
    let selection = select(&templates, &requirements);
    eprintln!(
        "{} candidates, {} rejected",
        selection.candidates().len(),
        selection.rejected().len()
    );
    c.bench_function(
        "select/1000 templates/5-atom expression + min cpu and memory",
        |b| {
            b.iter(|| {
                select(black_box(&templates), black_box(&requirements))
                    .candidates()
                    .len()
            })
        },
    );
    // Labels only: every template's capabilities are evaluated.
    let labels_only = WorkerRequirements::new().with_label(LabelExpr::parse(EXPRESSION).unwrap());
    c.bench_function("select/1000 templates/5-atom expression", |b| {
        b.iter(|| {
            select(black_box(&templates), black_box(&labels_only))
                .candidates()
                .len()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

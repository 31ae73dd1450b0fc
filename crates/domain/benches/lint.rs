//! Linting a large Jenkinsfile: 1 MB of declarative pipeline text with
//! every construct the parser knows, valid and with thousands of errors.
//! Target: under 50 ms.
//!
//! Measured twice: in wall-clock time (criterion's default) and in the
//! thread's CPU time (from `/proc/thread-self/schedstat`), which stays
//! meaningful on a machine shared with other builds.

use std::hint::black_box;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hodei_domain::pipeline::parse;

/// One stage of the generated pipeline; `{n}` makes its name unique.
const STAGE: &str = r#"
        stage('Build {n}') {
            agent { label 'linux && (java-17 || java-11) && !windows' }
            environment {
                TARGET = "out/${BUILD_NUMBER}/{n}"
                TOKEN = credentials('deploy-token')
            }
            options { timeout(time: 10, unit: 'MINUTES'); retry(2) }
            when {
                beforeAgent true
                anyOf { branch 'main'; branch pattern: 'release-*', comparator: 'GLOB' }
            }
            steps {
                // Build and package.
                sh 'make -j4 all'
                sh(script: "make install DESTDIR=${TARGET}", label: 'install')
                dir('docs') {
                    withEnv(['LANG=C', "OUT=${TARGET}/docs"]) {
                        sh '''
                            make html
                            cp -r _build "$OUT"
                        '''
                    }
                }
                writeFile file: 'version.txt', text: "{n}\n"
                echo "stage {n} done"
            }
            post {
                failure { echo 'stage {n} failed' }
                always { sh 'rm -rf tmp' }
            }
        }
"#;

/// A valid pipeline of at least `bytes` bytes.
fn pipeline_of(bytes: usize) -> String {
    let mut text = String::from("pipeline {\n    agent any\n    stages {\n");
    let mut n = 0;
    while text.len() < bytes {
        text.push_str(&STAGE.replace("{n}", &n.to_string()));
        n += 1;
    }
    text.push_str("    }\n    post { always { echo 'done' } }\n}\n");
    text
}

fn lint(c: &mut Criterion) {
    let source = pipeline_of(1 << 20);
    let parsed = parse("bench", &source);
    assert!(
        parsed.diagnostics.is_empty(),
        "the benchmark pipeline must be valid: {:?}",
        parsed.diagnostics.first()
    );
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Bytes(source.len() as u64));
    group.sample_size(20);
    group.bench_function("lint_1mb", |b| {
        b.iter(|| parse("bench", black_box(&source)))
    });
    // The same text with three errors in every stage: reporting stays linear.
    let broken = source
        .replace("sh 'make -j4 all'", "junit 'reports/*.xml'")
        .replace("branch 'main'", "tag 'v*'")
        .replace("retry(2)", "retry(0)");
    let errors = parse("bench", &broken).diagnostics.len();
    assert!(
        errors > 2_000,
        "expected errors in every stage, got {errors}"
    );
    group.throughput(Throughput::Bytes(broken.len() as u64));
    group.bench_function("lint_1mb_with_errors", |b| {
        b.iter(|| parse("bench", black_box(&broken)))
    });
    group.finish();
}

fn lint_cpu(c: &mut Criterion<CpuTime>) {
    let source = pipeline_of(1 << 20);
    let mut group = c.benchmark_group("pipeline_cpu_time");
    group.throughput(Throughput::Bytes(source.len() as u64));
    group.sample_size(20);
    group.bench_function("lint_1mb", |b| {
        b.iter(|| parse("bench", black_box(&source)))
    });
    group.finish();
}

/// The CPU time of the current thread, in nanoseconds, where Linux tells it.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// Criterion measurement of the thread's CPU time (wall time where
/// `/proc/thread-self/schedstat` does not exist).
struct CpuTime;

impl Measurement for CpuTime {
    type Intermediate = (Option<u64>, std::time::Instant);
    type Value = u64;

    fn start(&self) -> Self::Intermediate {
        (thread_cpu_ns(), std::time::Instant::now())
    }

    fn end(&self, (cpu, wall): Self::Intermediate) -> u64 {
        match (cpu, thread_cpu_ns()) {
            (Some(start), Some(end)) => end.saturating_sub(start),
            _ => u64::try_from(wall.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a.saturating_add(*b)
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuTimeFormatter
    }
}

/// Formats nanoseconds of CPU time as ms and byte throughputs as MiB/s.
struct CpuTimeFormatter;

impl ValueFormatter for CpuTimeFormatter {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        for v in values.iter_mut() {
            *v /= 1e6;
        }
        "ms (cpu)"
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let bytes = match throughput {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n as f64,
            Throughput::Elements(n) | Throughput::ElementsAndBytes { elements: n, .. } => *n as f64,
            Throughput::Bits(n) => *n as f64 / 8.0,
        };
        for v in values.iter_mut() {
            *v = bytes * 1e9 / *v / (1024.0 * 1024.0);
        }
        "MiB/s (cpu)"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

criterion_group!(benches, lint);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(CpuTime);
    targets = lint_cpu
}
criterion_main!(benches, cpu);

//! Linting a large Jenkinsfile: 1 MB of declarative pipeline text with
//! every construct the parser knows, valid and with thousands of errors.
//! Target: under 50 ms.

use std::hint::black_box;

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

criterion_group!(benches, lint);
criterion_main!(benches);

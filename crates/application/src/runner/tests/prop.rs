//! Random pipelines with random step outcomes and a random cancel: every run
//! ends, every acquired worker is released exactly once, every started stage
//! finishes, and every requested worker ends ready or failed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

use super::fake::Fake;
use super::{Recorder, request};
use crate::runner::{PipelineRunner, RunStatus, RunnerConfig};

#[derive(Debug, Clone)]
enum Body {
    Steps(Vec<String>),
    Stages(Vec<StageSpec>),
    Parallel {
        fail_fast: bool,
        branches: Vec<StageSpec>,
    },
}

#[derive(Debug, Clone)]
struct StageSpec {
    agent: Option<&'static str>,
    retry: bool,
    timeout: bool,
    when: Option<bool>,
    post: bool,
    body: Body,
}

fn step() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("sh 'ok'".to_string()),
        1 => (1..4i32).prop_map(|n| format!("sh 'exit {n}'")),
        1 => Just("sh 'lose'".to_string()),
        1 => Just("timeout(time: 5, unit: 'SECONDS') { sh 'hang' }".to_string()),
        1 => (0..100u32).prop_map(|n| format!("retry(2) {{ sh 'fail-once k{n}' }}")),
        1 => Just("echo \"build ${BUILD_NUMBER}\"".to_string()),
        1 => Just("error 'stop'".to_string()),
        1 => Just("sleep 2".to_string()),
        1 => Just("dir('sub') { writeFile file: 'a', text: 'b' }".to_string()),
        1 => Just("withEnv(['A=b']) { sh 'say $A' }".to_string()),
    ]
}

fn agent() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        4 => Just(None),
        2 => Just(Some("any")),
        1 => Just(Some("{ label 'broken' }")),
        1 => Just(Some("{ label 'slow' }")),
    ]
}

fn stage() -> impl Strategy<Value = StageSpec> {
    let leaf = prop::collection::vec(step(), 1..4).prop_map(Body::Steps);
    let body = leaf.prop_recursive(2, 8, 3, |inner| {
        let spec = (agent(), any::<bool>(), inner)
            .prop_map(|(agent, post, body)| StageSpec {
                agent,
                retry: false,
                timeout: false,
                when: None,
                post,
                body,
            })
            .boxed();
        prop_oneof![
            prop::collection::vec(spec.clone(), 1..3).prop_map(Body::Stages),
            (any::<bool>(), prop::collection::vec(spec, 1..3)).prop_map(|(fail_fast, branches)| {
                Body::Parallel {
                    fail_fast,
                    branches,
                }
            }),
        ]
    });
    (
        agent(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(any::<bool>()),
        any::<bool>(),
        body,
    )
        .prop_map(|(agent, retry, timeout, when, post, body)| StageSpec {
            agent,
            retry,
            timeout,
            when,
            post,
            body,
        })
}

/// Renders the spec; stages get unique names from `counter`. Inside a
/// parallel branch, where Jenkins refuses another `parallel`, a parallel
/// body is rendered as sequential stages.
fn render(spec: &StageSpec, counter: &mut usize, in_parallel: bool, out: &mut String) {
    *counter += 1;
    out.push_str(&format!("stage('S{counter}') {{\n"));
    // Jenkins refuses an agent on a stage with `parallel`.
    let parallel = matches!(spec.body, Body::Parallel { .. }) && !in_parallel;
    if let Some(agent) = spec.agent
        && !parallel
    {
        out.push_str(&format!("agent {agent}\n"));
    }
    if spec.retry || spec.timeout {
        out.push_str("options {\n");
        if spec.retry {
            out.push_str("retry(2)\n");
        }
        if spec.timeout {
            out.push_str("timeout(time: 3, unit: 'SECONDS')\n");
        }
        out.push_str("}\n");
    }
    if let Some(before_agent) = spec.when {
        out.push_str(&format!(
            "when {{ beforeAgent {before_agent}\n branch 'main' }}\n"
        ));
    }
    match &spec.body {
        Body::Steps(steps) => {
            out.push_str("steps {\n");
            for step in steps {
                out.push_str(step);
                out.push('\n');
            }
            out.push_str("}\n");
        }
        Body::Stages(children)
        | Body::Parallel {
            branches: children, ..
        } if !parallel => {
            out.push_str("stages {\n");
            for child in children {
                render(child, counter, in_parallel, out);
            }
            out.push_str("}\n");
        }
        Body::Stages(_) => {}
        Body::Parallel {
            fail_fast,
            branches,
        } => {
            if *fail_fast {
                out.push_str("failFast true\n");
            }
            out.push_str("parallel {\n");
            for branch in branches {
                render(branch, counter, true, out);
            }
            out.push_str("}\n");
        }
    }
    if spec.post {
        out.push_str("post { always { echo 'post' }\n failure { sh 'ok' } }\n");
    }
    out.push_str("}\n");
}

fn pipeline(stages: &[StageSpec]) -> String {
    let mut out = String::from(
        "pipeline {\nagent any\noptions { timeout(time: 1, unit: 'HOURS') }\nstages {\n",
    );
    let mut counter = 0;
    for stage in stages {
        render(stage, &mut counter, false, &mut out);
    }
    out.push_str("}\npost { always { sh 'ok' }\n aborted { echo 'aborted' } }\n}\n");
    out
}

fn check(stages: &[StageSpec], cancel_after: Option<u64>, branch: bool) {
    let text = pipeline(stages);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("no runtime: {error}"),
    };
    runtime.block_on(async {
        let fake = Fake::new();
        let output = Arc::new(Recorder::default());
        let mut request = request(&text);
        if branch {
            request.job.branch = Some("main".into());
        }
        let cancel = CancellationToken::new();
        if let Some(after) = cancel_after {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                cancel.cancel();
            });
        }
        let runner = PipelineRunner::new(Arc::new(fake.clone()), RunnerConfig::default());
        let result = tokio::time::timeout(
            Duration::from_secs(24 * 3600),
            runner.run(request, output.clone(), cancel),
        )
        .await
        .unwrap_or_else(|_| panic!("the run did not end:\n{text}\n{:#?}", fake.log()));
        fake.assert_released_once();

        let lines = output.lines();
        let mut open: BTreeMap<String, i32> = BTreeMap::new();
        let mut provisioning: BTreeMap<String, i32> = BTreeMap::new();
        for line in &lines {
            if let Some(stage) = line.strip_prefix("start ") {
                *open.entry(stage.to_string()).or_default() += 1;
            } else if let Some(rest) = line.strip_prefix("finish ") {
                let stage = rest.split(": ").next().unwrap_or_default();
                *open.entry(stage.to_string()).or_default() -= 1;
            } else if let Some(rest) = line.strip_prefix("provision ") {
                let (segment, phase) = rest.split_once(": ").unwrap_or_default();
                let delta = if phase == "requested" {
                    1
                } else if phase.starts_with("ready") || phase.starts_with("failed") {
                    -1
                } else {
                    0
                };
                *provisioning.entry(segment.to_string()).or_default() += delta;
            }
        }
        assert!(
            open.values().all(|n| *n == 0),
            "stages started and finished: {open:?}\n{text}"
        );
        assert!(
            provisioning.values().all(|n| *n == 0),
            "workers requested and settled: {provisioning:?}\n{text}"
        );
        assert_eq!(
            lines.last().map(|l| l.starts_with("system : Finished: ")),
            Some(true)
        );
        if result.status == RunStatus::Success {
            assert!(
                result.stages.iter().all(|s| !matches!(
                    s.status,
                    crate::runner::StageStatus::Failure { .. }
                        | crate::runner::StageStatus::Aborted { .. }
                )),
                "a successful run has no failed stage: {:#?}\n{text}",
                result.stages
            );
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_run_ends_and_releases_every_worker_once(
        stages in prop::collection::vec(stage(), 1..4),
        cancel_after in prop::option::of(0u64..6_000),
        branch in any::<bool>(),
    ) {
        check(&stages, cancel_after, branch);
    }
}

//! The runner against an in-memory provider whose steps do what their
//! script says (see [`fake`]). Time is paused: timeouts and sleeps are
//! deterministic, and a deadlock ends in the harness' own timeout instead of
//! hanging.

mod fake;
mod prop;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hodei_domain::JobId;
use hodei_domain::pipeline::{BuildResult, parse};
use tokio_util::sync::CancellationToken;

use self::fake::{Call, Fake};
use super::*;

/// Records events as short lines.
#[derive(Debug, Default)]
struct Recorder {
    lines: Mutex<Vec<String>>,
}

impl RunOutput for Recorder {
    fn event(&self, event: RunEvent<'_>) {
        let line = match event {
            RunEvent::StageStarted { stage } => format!("start {stage}"),
            RunEvent::StageFinished { stage, status } => format!("finish {stage}: {status}"),
            RunEvent::StepStarted {
                stage, description, ..
            } => format!("step {stage}: {description}"),
            RunEvent::Log { stage, data, .. } => {
                format!("log {stage}: {}", String::from_utf8_lossy(data).trim_end())
            }
            RunEvent::StepFinished { stage, outcome, .. } => format!("ended {stage}: {outcome:?}"),
            RunEvent::System { stage, line } => format!("system {stage}: {line}"),
            RunEvent::Provisioning { segment, phase, .. } => match phase {
                ProvisionPhase::Requested => format!("provision {segment}: requested"),
                ProvisionPhase::Ready { worker, .. } => {
                    format!("provision {segment}: ready {worker}")
                }
                ProvisionPhase::Failed { reason } => {
                    format!("provision {segment}: failed {reason}")
                }
                ProvisionPhase::Released { worker, .. } => {
                    format!("provision {segment}: released {worker}")
                }
            },
        };
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(line);
        }
    }
}

impl Recorder {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn has(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l == line)
    }

    fn last_position(&self, line: &str) -> usize {
        self.lines()
            .iter()
            .rposition(|l| l == line)
            .unwrap_or_else(|| panic!("no line {line:?} in {:#?}", self.lines()))
    }

    fn position(&self, line: &str) -> usize {
        self.lines()
            .iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no line {line:?} in {:#?}", self.lines()))
    }
}

fn request(text: &str) -> RunRequest {
    let parsed = parse("Jenkinsfile", text);
    let pipeline = match parsed.into_result() {
        Ok(pipeline) => pipeline,
        Err(error) => panic!("test pipeline is invalid:\n{error}"),
    };
    let job = JobContext {
        job_id: JobId::new("job-1").expect("valid id"),
        job_name: "demo".into(),
        build_number: 7,
        branch: None,
        parameters: BTreeMap::new(),
    };
    let mut request = match RunRequest::new(job, pipeline) {
        Ok(request) => request,
        Err(errors) => panic!("test pipeline cannot be planned: {errors:?}"),
    };
    request.source = Arc::from(&b"tar"[..]);
    request
}

struct Outcome {
    result: RunResult,
    output: Arc<Recorder>,
    fake: Fake,
}

impl Outcome {
    fn stage(&self, name: &str) -> &StageStatus {
        match self.result.stage(name) {
            Some(stage) => &stage.status,
            None => panic!("no stage {name} in {:#?}", self.result.stages),
        }
    }
}

async fn run_request(fake: &Fake, request: RunRequest, cancel: CancellationToken) -> Outcome {
    let output = Arc::new(Recorder::default());
    let runner = PipelineRunner::new(Arc::new(fake.clone()), RunnerConfig::default());
    let result = tokio::time::timeout(
        Duration::from_secs(24 * 3600),
        runner.run(request, output.clone(), cancel),
    )
    .await
    .unwrap_or_else(|_| panic!("the run did not end; calls: {:#?}", fake.log()));
    fake.assert_released_once();
    Outcome {
        result,
        output,
        fake: fake.clone(),
    }
}

async fn run(text: &str) -> Outcome {
    run_with(text, |_| {}).await
}

async fn run_with(text: &str, setup: impl FnOnce(&mut RunRequest)) -> Outcome {
    let mut request = request(text);
    setup(&mut request);
    run_request(&Fake::new(), request, CancellationToken::new()).await
}

fn failure(reason: &str, exit_code: Option<i32>) -> RunStatus {
    RunStatus::Failure {
        reason: reason.into(),
        exit_code,
    }
}

#[tokio::test(start_paused = true)]
async fn stages_run_in_order_on_the_top_level_worker() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('One') { steps { sh 'say one' } }
    stage('Two') { steps { sh 'two'; echo 'between' } }
    stage('Three') { steps { writeFile file: 'out.txt', text: 'three' } }
  }
}"#)
    .await;
    assert_eq!(out.result.status, RunStatus::Success);
    assert_eq!(
        out.fake.log(),
        [
            "acquire w1",
            "step w1 say one",
            "step w1 two",
            "step w1 write out.txt: three",
            "release w1"
        ]
    );
    let names: Vec<_> = out.result.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["One", "Two", "Three"]);
    assert!(
        out.result
            .stages
            .iter()
            .all(|s| s.status == StageStatus::Success && s.attempts == 1)
    );
    assert!(out.output.position("finish One: success") < out.output.position("start Two"));
    assert!(out.output.position("finish Two: success") < out.output.position("start Three"));
    assert!(out.output.has("log One: one"));
    assert!(out.output.has("system Two: between"));
    assert_eq!(
        out.output.lines().last().map(String::as_str),
        Some("system : Finished: SUCCESS")
    );
    assert!(out.output.has("system One: [Pipeline] stage (One)"));
    assert!(
        out.output.position("provision 1: requested")
            < out.output.position("provision 1: ready w1")
    );
    assert!(out.output.has("provision 1: released w1"));
    assert!(matches!(
        out.fake.calls()[0],
        Call::Acquire {
            segment: 0,
            skip_checkout: false,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failing_step_fails_the_job_skips_later_stages_and_runs_failure_posts() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('Build') {
      steps { sh 'exit 3'; sh 'never' }
      post {
        success { echo 'stage success' }
        failure { echo 'stage failure' }
      }
    }
    stage('Deploy') { steps { sh 'deploy' } }
  }
  post {
    success { echo 'pipeline success' }
    always { sh 'cleanup' }
    failure { echo 'pipeline failure' }
  }
}"#)
    .await;
    assert_eq!(
        out.result.status,
        failure("script returned exit code 3", Some(3))
    );
    assert_eq!(
        *out.stage("Build"),
        StageStatus::Failure {
            reason: "script returned exit code 3".into(),
            exit_code: Some(3)
        }
    );
    assert_eq!(
        *out.stage("Deploy"),
        StageStatus::Skipped(SkipReason::EarlierFailure)
    );
    assert_eq!(
        out.fake.log(),
        [
            "acquire w1",
            "step w1 exit 3",
            "step w1 cleanup",
            "release w1"
        ]
    );
    assert!(out.output.has("system Build: stage failure"));
    assert!(
        out.output
            .has("system : ERROR: script returned exit code 3")
    );
    assert!(out.output.has("system : Finished: FAILURE"));
    assert!(!out.output.has("system Build: stage success"));
    assert!(out.output.has("system : pipeline failure"));
    assert!(!out.output.has("system : pipeline success"));
    assert!(
        out.output
            .has("system Deploy: Stage \"Deploy\" skipped due to earlier failure(s)")
    );
    // `always` runs before `failure`, whatever the order in the file.
    assert!(
        out.output.position("system : [Pipeline] post (always)")
            < out.output.position("system : pipeline failure")
    );
}

#[tokio::test(start_paused = true)]
async fn a_stage_with_its_own_agent_gets_its_own_worker_released_right_after_it() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('A') { steps { sh 'a' } }
    stage('B') {
      agent { label 'docker' }
      options { skipDefaultCheckout() }
      steps { sh 'b' }
      post { always { sh 'b-post' } }
    }
    stage('C') { steps { sh 'c' } }
  }
}"#)
    .await;
    assert_eq!(out.result.status, RunStatus::Success);
    assert_eq!(
        out.fake.log(),
        [
            "acquire w1",
            "step w1 a",
            "acquire w2",
            "step w2 b",
            "step w2 b-post",
            "release w2",
            "step w1 c",
            "release w1"
        ]
    );
    let acquires: Vec<_> = out
        .fake
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Acquire {
                segment,
                agent,
                skip_checkout,
                ..
            } => Some((segment, agent, skip_checkout)),
            _ => None,
        })
        .collect();
    assert_eq!(
        acquires,
        [(0, "any".into(), false), (1, "label 'docker'".into(), true)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_top_level_worker_is_acquired_only_when_a_step_needs_it() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('Say') { steps { echo 'no worker yet' } }
    stage('Work') { steps { sh 'work' } }
  }
}"#)
    .await;
    assert!(
        out.output.position("system Say: no worker yet")
            < out.output.position("provision 1: requested")
    );
    assert_eq!(out.fake.log(), ["acquire w1", "step w1 work", "release w1"]);
}

#[tokio::test(start_paused = true)]
async fn a_provisioning_failure_fails_the_stage_with_the_providers_reason() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('A') { steps { sh 'a' } }
    stage('B') { agent { label 'broken' }; steps { sh 'b' } }
    stage('C') { steps { sh 'c' } }
  }
  post { always { sh 'post' } }
}"#)
    .await;
    let reason = "worker w-broken could not be provisioned: image pull failed: no such image";
    assert_eq!(out.result.status, failure(reason, None));
    assert_eq!(
        *out.stage("C"),
        StageStatus::Skipped(SkipReason::EarlierFailure)
    );
    assert_eq!(
        out.fake.log(),
        ["acquire w1", "step w1 a", "step w1 post", "release w1"]
    );
    assert!(out.output.has(&format!("provision 2: failed {reason}")));
}

#[tokio::test(start_paused = true)]
async fn a_failed_top_level_agent_fails_the_job_and_post_steps_needing_it() {
    let out = run(r#"
pipeline {
  agent { label 'broken' }
  stages { stage('A') { steps { sh 'a' } } }
  post { always { echo 'post runs'; sh 'needs worker' } }
}"#)
    .await;
    assert!(
        matches!(&out.result.status, RunStatus::Failure { reason, .. } if reason.contains("image pull failed"))
    );
    assert!(out.output.has("system : post runs"));
    assert!(out.fake.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn parallel_branches_run_at_the_same_time() {
    // Branch A only ends once branch B has started: run one after the
    // other, this would never end.
    let out = run(r#"
pipeline {
  agent none
  stages {
    stage('Checks') {
      parallel {
        stage('A') { agent any; steps { sh 'await B' } }
        stage('B') { agent any; steps { sh 'await await B'; sh 'B' } }
      }
    }
    stage('After') { agent any; steps { sh 'after' } }
  }
}"#)
    .await;
    assert_eq!(out.result.status, RunStatus::Success);
    let log = out.fake.log();
    assert_eq!(log.len(), 10, "{log:?}");
    assert_eq!(log[8], "step w3 after");
    for stage in ["Checks", "A", "B", "After"] {
        assert_eq!(*out.stage(stage), StageStatus::Success);
    }
}

#[tokio::test(start_paused = true)]
async fn parallel_branches_without_an_agent_share_the_enclosing_worker() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('Checks') {
      parallel {
        stage('A') { steps { sh 'await B' } }
        stage('B') { steps { sh 'B' } }
      }
    }
  }
}"#)
    .await;
    assert_eq!(out.result.status, RunStatus::Success);
    let acquires = out
        .fake
        .log()
        .iter()
        .filter(|l| l.starts_with("acquire"))
        .count();
    assert_eq!(acquires, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_branch_without_fail_fast_lets_the_others_finish() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('Checks') {
      parallel {
        stage('A') { steps { sh 'after B exit 4' } }
        stage('B') { steps { sh 'B'; sleep 10; sh 'B2' } }
      }
    }
  }
}"#)
    .await;
    assert_eq!(
        out.result.status,
        failure("script returned exit code 4", Some(4))
    );
    assert_eq!(*out.stage("B"), StageStatus::Success);
    assert!(
        out.output
            .position("finish A: failure: script returned exit code 4")
            < out.output.last_position("step B: sh")
    );
    assert_eq!(out.fake.steps().last().map(|(_, s)| s.as_str()), Some("B2"));
}

#[tokio::test(start_paused = true)]
async fn fail_fast_cancels_the_running_siblings() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('Checks') {
      failFast true
      parallel {
        stage('Slow') { steps { sh 'hang' }; post { aborted { echo 'slow aborted' } } }
        stage('Broken') { steps { sh 'after hang exit 2' } }
      }
    }
    stage('Later') { steps { sh 'later' } }
  }
}"#)
    .await;
    assert_eq!(
        out.result.status,
        failure("script returned exit code 2", Some(2))
    );
    assert_eq!(
        *out.stage("Slow"),
        StageStatus::Aborted {
            reason: "failed in branch Broken".into()
        }
    );
    assert_eq!(
        *out.stage("Later"),
        StageStatus::Skipped(SkipReason::EarlierFailure)
    );
    assert!(out.fake.log().contains(&"cancel w1".to_string()));
    assert!(out.output.has("system Slow: slow aborted"));
}

#[tokio::test(start_paused = true)]
async fn parallels_always_fail_fast_applies_to_every_parallel() {
    let out = run(r#"
pipeline {
  agent any
  options { parallelsAlwaysFailFast() }
  stages {
    stage('Checks') {
      parallel {
        stage('Slow') { steps { sh 'hang' } }
        stage('Broken') { steps { sh 'after hang exit 2' } }
      }
    }
  }
}"#)
    .await;
    assert!(matches!(out.stage("Slow"), StageStatus::Aborted { .. }));
}

/// Runs a one-stage pipeline whose stage has `when { <conditions> }` and
/// says whether the stage's step ran.
async fn when_runs(conditions: &str, branch: Option<&str>) -> bool {
    let text = format!(
        r#"
pipeline {{
  agent any
  environment {{ DEPLOY = 'yes' }}
  stages {{
    stage('S') {{
      environment {{ STAGE_VAR = 'on' }}
      when {{ {conditions} }}
      steps {{ sh 'ran' }}
    }}
  }}
}}"#
    );
    let out = run_with(&text, |r| r.job.branch = branch.map(str::to_string)).await;
    assert_eq!(out.result.status, RunStatus::Success, "{conditions}");
    let ran = out.fake.steps().iter().any(|(_, s)| s == "ran");
    let skipped = *out.stage("S") == StageStatus::Skipped(SkipReason::When);
    assert_eq!(ran, !skipped, "{conditions}");
    ran
}

#[tokio::test(start_paused = true)]
async fn when_conditions_decide_whether_a_stage_runs() {
    let cases: &[(&str, Option<&str>, bool)] = &[
        ("branch 'main'", Some("main"), true),
        ("branch 'main'", Some("dev"), false),
        ("branch 'main'", None, false),
        ("branch 'release-*'", Some("release-1.0"), true),
        (
            "branch pattern: 'release-*', comparator: 'GLOB'",
            Some("hotfix"),
            false,
        ),
        (
            "branch pattern: 'feature/**', comparator: 'GLOB'",
            Some("feature/a/b"),
            true,
        ),
        (
            "branch pattern: 'release-*', comparator: 'EQUALS'",
            Some("release-1"),
            false,
        ),
        (
            "branch pattern: 'release-*', comparator: 'EQUALS'",
            Some("release-*"),
            true,
        ),
        (
            "branch pattern: 'release-\\\\d+', comparator: 'REGEXP'",
            Some("release-12"),
            true,
        ),
        (
            "branch pattern: 'release-\\\\d+', comparator: 'REGEXP'",
            Some("release-12x"),
            false,
        ),
        ("environment name: 'DEPLOY', value: 'yes'", None, true),
        ("environment name: 'DEPLOY', value: 'no'", None, false),
        ("environment name: 'STAGE_VAR', value: 'on'", None, true),
        ("environment name: 'BUILD_NUMBER', value: '7'", None, true),
        ("not { branch 'main' }", Some("dev"), true),
        ("not { branch 'main' }", Some("main"), false),
        (
            "allOf { branch 'main'; environment name: 'DEPLOY', value: 'yes' }",
            Some("main"),
            true,
        ),
        (
            "allOf { branch 'main'; environment name: 'DEPLOY', value: 'no' }",
            Some("main"),
            false,
        ),
        ("anyOf { branch 'main'; branch 'dev' }", Some("dev"), true),
        ("anyOf { branch 'main'; branch 'dev' }", Some("qa"), false),
        (
            "branch 'main'\n environment name: 'DEPLOY', value: 'yes'",
            Some("main"),
            true,
        ),
        (
            "branch 'main'\n environment name: 'DEPLOY', value: 'no'",
            Some("main"),
            false,
        ),
    ];
    for (conditions, branch, expected) in cases {
        assert_eq!(
            when_runs(conditions, *branch).await,
            *expected,
            "when {{ {conditions} }} on {branch:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_invalid_regexp_fails_the_stage_with_its_position() {
    let out = run_with(
        r#"
pipeline {
  agent any
  stages {
    stage('S') {
      when { branch pattern: 'release-(', comparator: 'REGEXP' }
      steps { sh 'ran' }
    }
  }
}"#,
        |r| r.job.branch = Some("main".into()),
    )
    .await;
    assert!(
        matches!(&out.result.status, RunStatus::Failure { reason, .. }
        if reason.starts_with("6:14: branch pattern 'release-(' is not a valid regular expression")),
        "{:?}",
        out.result.status
    );
}

#[tokio::test(start_paused = true)]
async fn when_is_evaluated_after_the_agent_unless_before_agent() {
    let text = |before: &str| {
        format!(
            r#"
pipeline {{
  agent none
  stages {{
    stage('S') {{
      agent {{ label 'linux' }}
      when {{ {before} branch 'main' }}
      steps {{ sh 'ran' }}
    }}
  }}
}}"#
        )
    };
    let after = run_with(&text(""), |r| r.job.branch = Some("dev".into())).await;
    assert_eq!(*after.stage("S"), StageStatus::Skipped(SkipReason::When));
    assert_eq!(after.fake.log(), ["acquire w1", "release w1"]);

    let before = run_with(&text("beforeAgent true\n"), |r| {
        r.job.branch = Some("dev".into())
    })
    .await;
    assert_eq!(*before.stage("S"), StageStatus::Skipped(SkipReason::When));
    assert!(before.fake.log().is_empty());
}

#[tokio::test(start_paused = true)]
async fn environment_layers_and_interpolation() {
    let out = run_with(
        r#"
pipeline {
  agent any
  environment {
    A = 'pipeline'
    B = "${A}-b"
    P = "param ${PARAM}"
  }
  stages {
    stage('S') {
      environment {
        A = 'stage'
        C = "${env.A}-c-${B}"
      }
      steps {
        withEnv(["D=${C}-d", 'A=with']) {
          sh "echo $A $B $C $D $BUILD_NUMBER $JOB_NAME $BRANCH_NAME $P"
          sh 'echo $A'
        }
        sh "echo ${A}"
      }
    }
  }
}"#,
        |r| {
            r.job.branch = Some("main".into());
            r.job.parameters.insert("PARAM".into(), "given".into());
            r.job
                .parameters
                .insert("BUILD_NUMBER".into(), "overridden".into());
        },
    )
    .await;
    assert_eq!(out.result.status, RunStatus::Success);
    let requests = out.fake.requests();
    let scripts: Vec<_> = out.fake.steps().into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        scripts,
        [
            "echo with pipeline-b stage-c-pipeline-b stage-c-pipeline-b-d 7 demo main param given",
            "echo $A",
            "echo stage"
        ]
    );
    let env = &requests[0].environment;
    let expected = [
        ("A", "with"),
        ("B", "pipeline-b"),
        ("C", "stage-c-pipeline-b"),
        ("D", "stage-c-pipeline-b-d"),
        ("BUILD_NUMBER", "7"),
        ("JOB_NAME", "demo"),
        ("BRANCH_NAME", "main"),
        ("PARAM", "given"),
        ("P", "param given"),
    ];
    for (name, value) in expected {
        assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
    }
    assert_eq!(
        requests[2].environment.get("A").map(String::as_str),
        Some("stage")
    );
    assert_eq!(requests[2].environment.get("D"), None);
    assert_eq!(requests[0].stage, "S");
}

#[tokio::test(start_paused = true)]
async fn credentials_come_from_the_secrets_resolver() {
    let text = r#"
pipeline {
  agent any
  environment { TOKEN = credentials('deploy-token') }
  stages {
    stage('S') {
      environment { OTHER = credentials('other') }
      steps { sh 'use' }
    }
    stage('T') { steps { sh 'next' } }
  }
}"#;
    let out = run_with(text, |r| {
        let secrets: BTreeMap<String, String> = [
            ("deploy-token".to_string(), "s3cret".to_string()),
            ("other".to_string(), "x".to_string()),
        ]
        .into();
        r.secrets = Arc::new(secrets);
    })
    .await;
    assert_eq!(out.result.status, RunStatus::Success);
    let env = &out.fake.requests()[0].environment;
    assert_eq!(env.get("TOKEN").map(String::as_str), Some("s3cret"));

    let out = run_with(text, |r| {
        let secrets: BTreeMap<String, String> =
            [("deploy-token".to_string(), "s3cret".to_string())].into();
        r.secrets = Arc::new(secrets);
    })
    .await;
    let reason = "7:21: no credentials with id 'other' for environment variable OTHER";
    assert_eq!(out.result.status, failure(reason, None));
    assert_eq!(
        *out.stage("T"),
        StageStatus::Skipped(SkipReason::EarlierFailure)
    );
    assert!(out.fake.steps().is_empty());

    let out = run(text).await;
    assert!(
        matches!(&out.result.status, RunStatus::Failure { reason, .. } if reason.contains("'deploy-token'"))
    );
    assert_eq!(
        *out.stage("S"),
        StageStatus::Skipped(SkipReason::EarlierFailure)
    );
}

#[tokio::test(start_paused = true)]
async fn dir_nests_and_reaches_the_step_request() {
    let out = run(r#"
pipeline {
  agent any
  environment { SUB = 'lib' }
  stages {
    stage('S') {
      steps {
        dir('web') {
          sh 'one'
          dir("${SUB}") { writeFile file: 'x.txt', text: "in ${SUB}" }
          dir('/abs') { sh 'two' }
        }
        sh 'root'
      }
    }
  }
}"#)
    .await;
    let dirs: Vec<_> = out
        .fake
        .requests()
        .into_iter()
        .map(|r| (r.dir, describe(&r.action)))
        .collect();
    assert_eq!(
        dirs,
        [
            ("web".into(), "one".into()),
            ("web/lib".into(), "write x.txt: in lib".into()),
            ("/abs".into(), "two".into()),
            (String::new(), "root".into()),
        ]
    );
}

fn describe(action: &crate::worker_link::StepAction) -> String {
    match action {
        crate::worker_link::StepAction::Sh { script } => script.clone(),
        crate::worker_link::StepAction::WriteFile { path, text } => format!("write {path}: {text}"),
    }
}

#[tokio::test(start_paused = true)]
async fn retry_reruns_its_body_and_stage_retry_reruns_the_stage() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('Steps') { steps { retry(3) { sh 'pre'; sh 'fail-once a' } } }
    stage('Stage') {
      options { retry(2) }
      steps { sh 'fail-once b' }
    }
  }
}"#)
    .await;
    assert_eq!(out.result.status, RunStatus::Success);
    let scripts: Vec<_> = out.fake.steps().into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        scripts,
        [
            "pre",
            "fail-once a",
            "pre",
            "fail-once a",
            "fail-once b",
            "fail-once b"
        ]
    );
    assert_eq!(out.result.stage("Stage").map(|s| s.attempts), Some(2));
    assert!(out.output.has("system Steps: Retrying (attempt 2 of 3)"));
    assert!(
        out.output
            .has("system Stage: Retrying stage Stage (attempt 2 of 2)")
    );
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_after_its_attempts() {
    let out = run(r#"
pipeline {
  agent any
  stages { stage('S') { steps { retry(2) { sh 'exit 5' } } } }
}"#)
    .await;
    assert_eq!(
        out.result.status,
        failure("script returned exit code 5", Some(5))
    );
    assert_eq!(out.fake.steps().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_lost_worker_fails_the_stage_and_stage_retry_gets_a_new_one() {
    let out = run(r#"
pipeline {
  agent none
  stages {
    stage('S') {
      agent any
      options { retry(2) }
      steps { sh 'lose-once s' }
    }
  }
}"#)
    .await;
    assert_eq!(out.result.status, RunStatus::Success);
    assert_eq!(
        out.fake.log(),
        [
            "acquire w1",
            "step w1 lose-once s",
            "release w1",
            "acquire w2",
            "step w2 lose-once s",
            "release w2"
        ]
    );

    let out = run(r#"
pipeline {
  agent any
  stages { stage('S') { steps { sh 'lose' } }; stage('T') { steps { sh 't' } } }
  post { always { sh 'post' } }
}"#)
    .await;
    assert_eq!(
        out.result.status,
        failure("worker w1 was lost: no heartbeat for 30s", None)
    );
    // The lost worker is released once; post gets a new one.
    assert_eq!(
        out.fake.log(),
        [
            "acquire w1",
            "step w1 lose",
            "release w1",
            "acquire w2",
            "step w2 post",
            "release w2"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_step_cancels_its_running_step_and_aborts() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('S') {
      steps { timeout(time: 5, unit: 'SECONDS') { sh 'hang' } }
      post { aborted { echo 'stage aborted' } }
    }
    stage('T') { steps { sh 't' } }
  }
  post { aborted { echo 'pipeline aborted' } }
}"#)
    .await;
    let reason = "timeout of 5 SECONDS exceeded".to_string();
    assert_eq!(
        out.result.status,
        RunStatus::Aborted {
            reason: reason.clone()
        }
    );
    assert_eq!(*out.stage("S"), StageStatus::Aborted { reason });
    assert_eq!(*out.stage("T"), StageStatus::Skipped(SkipReason::Aborted));
    assert_eq!(
        out.fake.log(),
        ["acquire w1", "step w1 hang", "cancel w1", "release w1"]
    );
    assert!(out.output.has("system S: Timeout has been exceeded"));
    assert!(out.output.has("system S: stage aborted"));
    assert!(out.output.has("system : pipeline aborted"));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_inside_retry_is_retried_and_sleep_is_interruptible() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('S') {
      steps { retry(2) { timeout(time: 1, unit: 'MINUTES') { sleep 3600 } } }
    }
  }
}"#)
    .await;
    assert_eq!(
        out.result.status,
        RunStatus::Aborted {
            reason: "timeout of 1 MINUTES exceeded".into()
        }
    );
    assert!(out.output.has("system S: Retrying (attempt 2 of 2)"));
}

#[tokio::test(start_paused = true)]
async fn stage_and_pipeline_timeouts() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('S') {
      options { timeout(time: 2, unit: 'MINUTES') }
      steps { sh 'hang' }
    }
  }
}"#)
    .await;
    assert_eq!(
        out.result.status,
        RunStatus::Aborted {
            reason: "timeout of 2 MINUTES exceeded".into()
        }
    );

    let out = run(r#"
pipeline {
  agent any
  options { timeout(time: 1, unit: 'HOURS') }
  stages {
    stage('S') { steps { sh 'short' } }
    stage('T') { steps { timeout(time: 2, unit: 'HOURS') { sh 'hang' } } }
  }
  post { always { sh 'post' } }
}"#)
    .await;
    assert_eq!(
        out.result.status,
        RunStatus::TimedOut {
            after: Duration::from_secs(3600)
        }
    );
    assert_eq!(
        out.fake.log(),
        [
            "acquire w1",
            "step w1 short",
            "step w1 hang",
            "cancel w1",
            "step w1 post",
            "release w1"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_error_step_fails_the_stage_with_its_message() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('S') { steps { echo 'before'; error "broken build ${BUILD_NUMBER}"; sh 'never' } }
    stage('T') { steps { sh 'never' } }
  }
}"#)
    .await;
    assert_eq!(out.result.status, failure("broken build 7", None));
    assert!(out.fake.steps().is_empty());
    assert!(out.output.has("system S: ERROR: broken build 7"));
}

#[tokio::test(start_paused = true)]
async fn sh_return_status_does_not_fail_the_step() {
    let out = run(r#"
pipeline {
  agent any
  stages { stage('S') { steps { sh script: 'exit 9', returnStatus: true; sh 'next' } } }
}"#)
    .await;
    assert_eq!(out.result.status, RunStatus::Success);
    assert_eq!(out.fake.steps().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn cancelling_mid_step_cancels_it_and_aborts_the_run() {
    let fake = Fake::new();
    let cancel = CancellationToken::new();
    let request = request(
        r#"
pipeline {
  agent any
  stages {
    stage('S') { agent { label 'own' }; steps { sh 'hang' } }
    stage('T') { steps { sh 't' } }
  }
  post {
    aborted { echo 'was aborted' }
    always { sh 'post' }
  }
}"#,
    );
    let run = tokio::spawn({
        let fake = fake.clone();
        let cancel = cancel.clone();
        async move { run_request(&fake, request, cancel).await }
    });
    fake.started("hang").await;
    cancel.cancel();
    let out = match run.await {
        Ok(out) => out,
        Err(error) => panic!("the run panicked: {error}"),
    };
    assert_eq!(
        out.result.status,
        RunStatus::Aborted {
            reason: "cancelled".into()
        }
    );
    assert_eq!(*out.stage("T"), StageStatus::Skipped(SkipReason::Aborted));
    assert!(out.output.has("system : was aborted"));
    // No worker was provisioned for the pipeline before the cancel, and
    // none is provisioned after it: the post step needing one fails.
    assert_eq!(
        out.fake.log(),
        ["acquire w1", "step w1 hang", "cancel w1", "release w1"]
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_while_provisioning_drops_the_request() {
    let fake = Fake::new();
    let cancel = CancellationToken::new();
    let request = request(
        r#"
pipeline {
  agent { label 'slow' }
  stages { stage('S') { steps { sh 's' } } }
  post { always { echo 'post runs' } }
}"#,
    );
    let run = tokio::spawn({
        let fake = fake.clone();
        let cancel = cancel.clone();
        async move { run_request(&fake, request, cancel).await }
    });
    // Let the runner ask for the worker, then cancel while it is pending.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fake.provisioning(), 1);
    cancel.cancel();
    let out = match run.await {
        Ok(out) => out,
        Err(error) => panic!("the run panicked: {error}"),
    };
    assert_eq!(
        out.result.status,
        RunStatus::Aborted {
            reason: "cancelled".into()
        }
    );
    assert_eq!(
        *out.stage("S"),
        StageStatus::Aborted {
            reason: "cancelled".into()
        }
    );
    assert!(out.output.has("provision 1: requested"));
    assert!(out.output.has("provision 1: failed cancelled"));
    assert!(out.output.has("system : post runs"));
    // The provisioning was abandoned (the provider cleans up), nothing was
    // acquired, nothing is left to release.
    assert_eq!(fake.provisioning(), 0);
    assert!(fake.log().is_empty());
}

#[tokio::test(start_paused = true)]
async fn provisioning_and_running_steps_are_reported_as_they_happen() {
    let fake = Fake::new();
    let output = Arc::new(Recorder::default());
    let request = request(
        r#"
pipeline {
  agent { label 'slow' }
  stages { stage('S') { steps { sh 'gate step' } } }
}"#,
    );
    let run = tokio::spawn({
        let runner = PipelineRunner::new(Arc::new(fake.clone()), RunnerConfig::default());
        let output = output.clone();
        async move { runner.run(request, output, CancellationToken::new()).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(output.has("provision 1: requested"));
    assert!(!output.has("provision 1: ready w1"));
    fake.open("provision");
    fake.started("gate step").await;
    assert!(output.has("provision 1: ready w1"));
    assert!(output.has("step S: sh"));
    assert!(!output.lines().iter().any(|l| l.starts_with("ended S")));
    fake.open("step");
    let result = match run.await {
        Ok(result) => result,
        Err(error) => panic!("the run panicked: {error}"),
    };
    assert_eq!(result.status, RunStatus::Success);
    assert!(output.has("ended S: Success"));
    fake.assert_released_once();
}

#[tokio::test(start_paused = true)]
async fn pipeline_post_runs_after_stage_failures_in_jenkins_order() {
    let out = run_with(
        r#"
pipeline {
  agent any
  stages { stage('S') { steps { sh 'exit 1' } } }
  post {
    cleanup { echo 'cleanup' }
    regression { echo 'regression' }
    fixed { echo 'fixed' }
    changed { echo 'changed' }
    unsuccessful { echo 'unsuccessful' }
    always { echo 'always' }
    failure { error 'post failed too' }
    success { echo 'success' }
  }
}"#,
        |r| r.previous_result = Some(BuildResult::Success),
    )
    .await;
    let echoed: Vec<_> = out
        .output
        .lines()
        .into_iter()
        .filter_map(|l| l.strip_prefix("system : ").map(str::to_string))
        .filter(|l| !l.starts_with('['))
        .collect();
    assert_eq!(
        echoed,
        [
            "always",
            "changed",
            "regression",
            "ERROR: post failed too",
            "Error when executing failure post condition: post failed too",
            "unsuccessful",
            "cleanup",
            "ERROR: script returned exit code 1",
            "Finished: FAILURE"
        ]
    );
    // The first failure stays the reason.
    assert_eq!(
        out.result.status,
        failure("script returned exit code 1", Some(1))
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_post_step_fails_a_successful_run() {
    let out = run_with(
        r#"
pipeline {
  agent any
  stages { stage('S') { steps { sh 'ok' }; post { success { sh 'exit 2' } } } }
  post { fixed { echo 'fixed' }; failure { echo 'failure seen' } }
}"#,
        |r| r.previous_result = Some(BuildResult::Failure),
    )
    .await;
    assert_eq!(
        out.result.status,
        failure("script returned exit code 2", Some(2))
    );
    assert!(out.output.has("system : failure seen"));
    assert!(!out.output.has("system : fixed"));
}

#[tokio::test(start_paused = true)]
async fn nested_stages_run_in_order_and_are_skipped_together() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('Outer') {
      stages {
        stage('In1') { steps { sh 'one' } }
        stage('In2') { steps { sh 'exit 1' } }
        stage('In3') { steps { sh 'three' } }
      }
    }
    stage('Later') {
      stages { stage('L1') { steps { sh 'l1' } } }
    }
  }
}"#)
    .await;
    let statuses: Vec<_> = out
        .result
        .stages
        .iter()
        .map(|s| format!("{} {}", s.name, s.status))
        .collect();
    assert_eq!(
        statuses,
        [
            "Outer failure: script returned exit code 1",
            "In1 success",
            "In2 failure: script returned exit code 1",
            "In3 skipped due to earlier failure(s)",
            "Later skipped due to earlier failure(s)",
            "L1 skipped due to earlier failure(s)",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn skip_default_checkout_reaches_the_provider() {
    let out = run(r#"
pipeline {
  agent any
  options { skipDefaultCheckout() }
  stages { stage('S') { steps { sh 's' } } }
}"#)
    .await;
    assert!(matches!(
        out.fake.calls()[0],
        Call::Acquire {
            skip_checkout: true,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_stage_skipped_by_when_skips_its_nested_stages() {
    let out = run(r#"
pipeline {
  agent any
  stages {
    stage('Release') {
      when { branch 'main' }
      parallel {
        stage('Publish') { steps { sh 'publish' } }
        stage('Tag') { steps { sh 'tag' } }
      }
    }
    stage('After') { steps { sh 'after' } }
  }
}"#)
    .await;
    assert_eq!(out.result.status, RunStatus::Success);
    for stage in ["Release", "Publish", "Tag"] {
        assert_eq!(
            *out.stage(stage),
            StageStatus::Skipped(SkipReason::When),
            "{stage}"
        );
    }
    assert_eq!(*out.stage("After"), StageStatus::Success);
    assert_eq!(out.fake.steps().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_examples_run() {
    let out = run(include_str!("../../../../examples/hello/Jenkinsfile")).await;
    assert_eq!(out.result.status, RunStatus::Success);
    assert!(out.output.has("system Hello: Hello from Hodei"));

    let out = run(include_str!("../../../../examples/seed/Jenkinsfile")).await;
    assert_eq!(out.result.status, RunStatus::Success);
    assert!(out.output.has("system : pipeline finished"));
    let scripts: Vec<_> = out.fake.steps().into_iter().map(|(_, s)| s).collect();
    assert!(
        scripts.contains(&"docker build -t myapp:7 .".to_string()),
        "{scripts:?}"
    );

    let text = include_str!("../../../../examples/parallel/Jenkinsfile");
    let out = run(text).await;
    assert_eq!(out.result.status, RunStatus::Success);
    assert_eq!(
        *out.stage("Release"),
        StageStatus::Skipped(SkipReason::When)
    );
    // Four branches on four workers; Release's worker is acquired for its
    // `when` (no beforeAgent) and released.
    let acquired = out
        .fake
        .log()
        .iter()
        .filter(|l| l.starts_with("acquire"))
        .count();
    assert_eq!(acquired, 5);
    let out = run_with(text, |r| r.job.branch = Some("release-2.0".into())).await;
    assert_eq!(*out.stage("Release"), StageStatus::Success);

    let out = run(include_str!(
        "../../../../examples/post-failure/Jenkinsfile"
    ))
    .await;
    assert_eq!(
        out.result.status,
        failure("script returned exit code 1", Some(1))
    );
    for line in [
        "system Test: stage Test failed, see report.txt",
        "system : the pipeline failed",
        "system : always runs",
    ] {
        assert!(out.output.has(line), "{line}");
    }
    assert!(!out.output.has("system : not printed"));
    let scripts: Vec<_> = out.fake.steps().into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        scripts,
        [
            "write report.txt: tests: 3 passed, 1 failed\n",
            "cat \"$REPORT\"; exit 1",
            "echo \"result is not success\"",
            "rm -f \"$REPORT\""
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn huge_durations_do_not_overflow() {
    let out = run(r#"
pipeline {
  agent any
  options { timeout(time: 9223372036854775807, unit: 'DAYS') }
  stages {
    stage('S') {
      options { timeout(time: 9223372036854775807, unit: 'HOURS') }
      steps {
        timeout(time: 1, unit: 'SECONDS') { sleep(time: 9223372036854775807, unit: 'DAYS') }
      }
    }
  }
}"#)
    .await;
    assert_eq!(
        out.result.status,
        RunStatus::Aborted {
            reason: "timeout of 1 SECONDS exceeded".into()
        }
    );
}

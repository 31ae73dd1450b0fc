//! Unit tests of [`CreateAndExecuteJob`] with mockall mocks of its ports and
//! a scripted worker link.

use std::sync::Mutex as StdMutex;

use async_trait::async_trait;
use hodei_domain::JobStatusKind;
use hodei_domain::pipeline::AgentKind;
use tokio::sync::Notify;

use super::journal::line_cost;
use super::*;
use crate::events::MockEventPublisher;
use crate::id_generator::MockIdGenerator;
use crate::jobs::{LogEntry, MockJobRepository};
use crate::provider::SegmentRequest;
use crate::worker_link::{
    Assignment, LinkError, LogSink, StepAction, StepOutcome, StepRequest, WorkerLink,
};

mockall::mock! {
    Provider {}

    #[async_trait]
    impl WorkerProvider for Provider {
        async fn acquire(&self, request: SegmentRequest) -> Result<Arc<dyn WorkerLink>, ProvisionError>;
        async fn check(&self, agent: &AgentKind) -> Result<(), ProvisionError>;
        async fn release(&self, worker: &WorkerId, reason: &str);
    }
}

/// Time from tokio.
struct TokioClock(tokio::time::Instant);

#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.elapsed().as_millis() as u64)
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A worker whose steps follow their script: `exit N` fails with N,
/// `block` runs until cancelled, `chunks` writes `a\nb` then `c\n`, anything
/// else prints `out: SCRIPT`.
#[derive(Debug)]
struct FakeLink {
    id: WorkerId,
    cancelled: Notify,
}

#[async_trait]
impl WorkerLink for FakeLink {
    fn worker_id(&self) -> &WorkerId {
        &self.id
    }

    async fn assign(&self, _assignment: Assignment) -> Result<(), LinkError> {
        Ok(())
    }

    async fn run_step(
        &self,
        request: StepRequest,
        sink: Arc<dyn LogSink>,
    ) -> Result<StepOutcome, LinkError> {
        let StepAction::Sh { script } = &request.action else {
            return Ok(StepOutcome::Success);
        };
        let id = request.step_id.as_str();
        if let Some(code) = script.strip_prefix("exit ") {
            return Ok(StepOutcome::Failed {
                exit_code: code.parse().unwrap_or(1),
            });
        }
        match script.as_str() {
            "block" => {
                self.cancelled.notified().await;
                Ok(StepOutcome::Cancelled)
            }
            _ if script.starts_with("bytewise ") => {
                // The output one byte per chunk, on both streams.
                for byte in format!("{script}\n").bytes() {
                    sink.log(id, LogStream::Stdout, &[byte]);
                    sink.log(id, LogStream::Stderr, &[byte]);
                }
                Ok(StepOutcome::Success)
            }
            _ if script.starts_with("flood ") => {
                // Many lines, letting other tasks (the log writer, the
                // watchers) run after each.
                let count: usize = script["flood ".len()..].parse().unwrap_or(0);
                for i in 0..count {
                    let line = format!("{id} line {i:05} of {count}\n");
                    sink.log(id, LogStream::Stdout, line.as_bytes());
                    tokio::task::yield_now().await;
                }
                Ok(StepOutcome::Success)
            }
            "chunks" => {
                sink.log(id, LogStream::Stdout, b"a\nb");
                sink.log(id, LogStream::Stdout, b"c\n");
                sink.log(id, LogStream::Stderr, b"no newline");
                Ok(StepOutcome::Success)
            }
            other => {
                sink.log(id, LogStream::Stdout, format!("out: {other}\n").as_bytes());
                Ok(StepOutcome::Success)
            }
        }
    }

    async fn cancel_step(&self, _step_id: &str, _reason: &str) -> Result<(), LinkError> {
        self.cancelled.notify_one();
        Ok(())
    }

    async fn shutdown(&self, _reason: &str) -> Result<(), LinkError> {
        Ok(())
    }
}

/// What the mocks saw.
#[derive(Default)]
struct Seen {
    saved: StdMutex<Vec<Job>>,
    logs: StdMutex<Vec<LogChunk>>,
    events: StdMutex<Vec<DomainEvent>>,
    released: StdMutex<Vec<String>>,
    stages: StdMutex<Vec<StageSummary>>,
}

struct Setup {
    jobs: CreateAndExecuteJob,
    seen: Arc<Seen>,
}

enum Provide {
    Link,
    Fail(ProvisionError),
}

fn setup_with(
    config: JobsConfig,
    check: Result<(), ProvisionError>,
    provide: Provide,
    save_fails: bool,
) -> Setup {
    let seen = Arc::new(Seen::default());
    let mut repo = MockJobRepository::new();
    let s = seen.clone();
    repo.expect_save().returning(move |job| {
        if save_fails {
            return Err(JobRepositoryError::Backend("disk full".into()));
        }
        lock(&s.saved).push(job);
        Ok(())
    });
    let s = seen.clone();
    repo.expect_save_queued().returning(move |job, _| {
        if save_fails {
            return Err(JobRepositoryError::Backend("disk full".into()));
        }
        lock(&s.saved).push(job);
        Ok(())
    });
    let s = seen.clone();
    repo.expect_find_by_id()
        .returning(move |id| Ok(lock(&s.saved).iter().rev().find(|j| j.id() == id).cloned()));
    repo.expect_list().returning(|_| Ok(Vec::new()));
    repo.expect_next_build_number().returning(|_| Ok(7));
    let s = seen.clone();
    repo.expect_save_stages().returning(move |_, stages| {
        *lock(&s.stages) = stages;
        Ok(())
    });
    let s = seen.clone();
    repo.expect_find_stages()
        .returning(move |_| Ok(lock(&s.stages).clone()));
    let s = seen.clone();
    repo.expect_append_log().returning(move |_, chunk| {
        let mut logs = lock(&s.logs);
        logs.push(chunk);
        Ok(logs.len() as u64 - 1)
    });
    let s = seen.clone();
    repo.expect_read_logs().returning(move |_, from, limit| {
        Ok(lock(&s.logs)
            .iter()
            .enumerate()
            .skip(from as usize)
            .take(limit)
            .map(|(i, chunk)| LogEntry {
                seq: i as u64,
                chunk: chunk.clone(),
            })
            .collect())
    });
    let mut events = MockEventPublisher::new();
    let s = seen.clone();
    events
        .expect_publish()
        .returning(move |event| lock(&s.events).push(event));
    let mut ids = MockIdGenerator::new();
    ids.expect_new_job_id()
        .returning(|| JobId::new("job-1").unwrap());
    let mut provider = MockProvider::new();
    provider.expect_check().returning(move |_| check.clone());
    match provide {
        Provide::Link => {
            let link: Arc<dyn WorkerLink> = Arc::new(FakeLink {
                id: WorkerId::new("w-1").unwrap(),
                cancelled: Notify::new(),
            });
            provider
                .expect_acquire()
                .returning(move |_| Ok(link.clone()));
        }
        Provide::Fail(error) => {
            provider
                .expect_acquire()
                .returning(move |_| Err(error.clone()));
        }
    }
    let s = seen.clone();
    provider
        .expect_release()
        .returning(move |worker, _| lock(&s.released).push(worker.to_string()));
    let jobs = CreateAndExecuteJob::new(
        config,
        JobPorts {
            jobs: Arc::new(repo),
            events: Arc::new(events),
            clock: Arc::new(TokioClock(tokio::time::Instant::now())),
            ids: Arc::new(ids),
            provider: Arc::new(provider),
            secrets: Arc::new(BTreeMap::from([(
                "deploy-key".to_owned(),
                "s3cr3t-value".to_owned(),
            )])),
        },
    );
    Setup { jobs, seen }
}

fn setup() -> Setup {
    setup_with(JobsConfig::default(), Ok(()), Provide::Link, false)
}

fn submission(steps: &str) -> Submission {
    Submission {
        name: "demo".into(),
        file: "Jenkinsfile".into(),
        pipeline: format!(
            "pipeline {{\n  agent any\n  stages {{\n    stage('Build') {{\n      steps {{\n        {steps}\n      }}\n    }}\n  }}\n  post {{\n    failure {{ echo 'post failure' }}\n  }}\n}}\n"
        ),
        ..Submission::default()
    }
}

/// Runs the submission to its end; returns the final status and the
/// journal.
async fn run_to_end(setup: &Setup, steps: &str) -> (JobStatus, Vec<JobUpdate>) {
    let submitted = setup.jobs.submit(submission(steps)).await.unwrap();
    assert_eq!(submitted.build_number, 7);
    let status = setup.jobs.wait(&submitted.job_id).await.unwrap();
    let mut watch = setup.jobs.watch(&submitted.job_id, 0).await.unwrap();
    let mut updates = Vec::new();
    while let Some(update) = watch.next().await {
        updates.push(update);
    }
    (status, updates)
}

fn statuses(updates: &[JobUpdate]) -> Vec<JobStatusKind> {
    updates
        .iter()
        .filter_map(|u| match &u.kind {
            UpdateKind::Status(s) => Some(s.kind()),
            _ => None,
        })
        .collect()
}

fn lines(updates: &[JobUpdate]) -> Vec<String> {
    updates
        .iter()
        .filter_map(|u| match &u.kind {
            UpdateKind::Log { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_successful_job_is_stored_journaled_and_published() {
    let setup = setup();
    let (status, updates) = run_to_end(&setup, "sh 'echo hi'").await;
    assert_eq!(status, JobStatus::Succeeded);
    // Provisioning while its worker is created.
    assert_eq!(
        statuses(&updates),
        [
            JobStatusKind::Queued,
            JobStatusKind::Running,
            JobStatusKind::Provisioning,
            JobStatusKind::Running,
            JobStatusKind::Succeeded
        ]
    );
    let seqs: Vec<u64> = updates.iter().map(|u| u.seq).collect();
    assert_eq!(seqs, (0..updates.len() as u64).collect::<Vec<_>>());
    assert!(
        lines(&updates).contains(&"out: echo hi".to_owned()),
        "{updates:#?}"
    );
    let stored: Vec<Vec<u8>> = lock(&setup.seen.logs)
        .iter()
        .map(|c| c.data.clone())
        .collect();
    assert!(stored.contains(&b"out: echo hi\n".to_vec()));
    let saved: Vec<JobStatusKind> = lock(&setup.seen.saved)
        .iter()
        .map(|j| j.status().kind())
        .collect();
    assert_eq!(
        saved,
        [
            JobStatusKind::Queued,
            JobStatusKind::Running,
            JobStatusKind::Provisioning,
            JobStatusKind::Running,
            JobStatusKind::Succeeded
        ]
    );
    let names: Vec<&str> = lock(&setup.seen.events)
        .iter()
        .map(DomainEvent::name)
        .collect::<Vec<_>>()
        .clone();
    assert_eq!(names.first(), Some(&"job_queued"));
    assert_eq!(names.last(), Some(&"job_finished"));
    assert!(names.contains(&"stage_started") && names.contains(&"stage_finished"));
    assert_eq!(*lock(&setup.seen.released), ["w-1"]);
    let stages = setup.jobs.stages(&JobId::new("job-1").unwrap()).await;
    assert_eq!(stages.len(), 1);
    assert_eq!(stages[0].result, Some(StageResult::Success));
    assert!(setup.jobs.running_jobs().is_empty());
    assert_eq!(setup.jobs.waiting_segments(), 0);
}

#[tokio::test]
async fn output_is_split_into_lines() {
    let setup = setup();
    let (_, updates) = run_to_end(&setup, "sh 'chunks'").await;
    let all = lines(&updates);
    let step_lines: Vec<&String> = all
        .iter()
        .filter(|l| ["a", "bc", "no newline"].contains(&l.as_str()))
        .collect();
    assert_eq!(step_lines, ["a", "bc", "no newline"]);
}

#[tokio::test]
async fn a_failing_step_fails_the_job_with_its_exit_code_and_runs_post() {
    let setup = setup();
    let (status, updates) = run_to_end(&setup, "sh 'exit 2'").await;
    let JobStatus::Failed { reason } = &status else {
        panic!("expected a failure, got {status:?}");
    };
    assert!(reason.contains("exit code 2"), "{reason}");
    assert!(
        lines(&updates).iter().any(|l| l.contains("post failure")),
        "{updates:#?}"
    );
}

#[tokio::test]
async fn a_provisioning_failure_fails_the_job_with_the_backend_reason() {
    let error = ProvisionError::Failed {
        worker: WorkerId::new("w-1").unwrap(),
        reason: "image not found".into(),
    };
    let setup = setup_with(JobsConfig::default(), Ok(()), Provide::Fail(error), false);
    let (status, updates) = run_to_end(&setup, "sh 'echo hi'").await;
    let JobStatus::Failed { reason } = &status else {
        panic!("expected a failure, got {status:?}");
    };
    assert!(reason.contains("image not found"), "{reason}");
    let failed = updates.iter().any(|u| {
        matches!(&u.kind, UpdateKind::Worker { phase: WorkerPhase::Failed, message, .. } if message.contains("image not found"))
    });
    assert!(failed, "{updates:#?}");
    assert_eq!(setup.jobs.waiting_segments(), 0);
}

#[tokio::test]
async fn cancel_aborts_with_the_given_reason_and_releases_the_worker() {
    let setup = setup();
    let submitted = setup.jobs.submit(submission("sh 'block'")).await.unwrap();
    let mut watch = setup.jobs.watch(&submitted.job_id, 0).await.unwrap();
    // Wait until the step runs.
    while let Some(update) = watch.next().await {
        if matches!(
            update.kind,
            UpdateKind::Worker {
                phase: WorkerPhase::Ready,
                ..
            }
        ) {
            break;
        }
    }
    let at_cancel = setup
        .jobs
        .cancel(&submitted.job_id, "stopped by a test")
        .await
        .unwrap();
    assert_eq!(at_cancel, JobStatus::Running);
    let status = setup.jobs.wait(&submitted.job_id).await.unwrap();
    assert_eq!(
        status,
        JobStatus::Aborted {
            reason: "stopped by a test".into()
        }
    );
    assert_eq!(*lock(&setup.seen.released), ["w-1"]);
    // A finished job keeps its status.
    let again = setup.jobs.cancel(&submitted.job_id, "again").await.unwrap();
    assert_eq!(again, status);
}

#[tokio::test]
async fn the_global_job_timeout_ends_the_job_timed_out() {
    let config = JobsConfig {
        job_timeout: Some(Duration::from_millis(50)),
        ..JobsConfig::default()
    };
    let setup = setup_with(config, Ok(()), Provide::Link, false);
    let (status, _) = run_to_end(&setup, "sh 'block'").await;
    assert_eq!(status, JobStatus::TimedOut);
    assert_eq!(*lock(&setup.seen.released), ["w-1"]);
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_stored() {
    async fn check(setup: &Setup, submission: Submission, expected: &str) {
        let err = setup.jobs.submit(submission).await.unwrap_err();
        assert!(
            err.to_string().starts_with(expected),
            "{err} should start with {expected}"
        );
        assert!(lock(&setup.seen.saved).is_empty());
    }
    let setup = setup();
    check(
        &setup,
        Submission {
            name: String::new(),
            ..submission("sh 'x'")
        },
        "job name \"\"",
    )
    .await;
    check(
        &setup,
        Submission {
            pipeline: "pipeline {\n  agent any\n}\n".into(),
            ..submission("")
        },
        "Jenkinsfile:1:1: ",
    )
    .await;
    check(
        &setup,
        Submission {
            file: "ci/Jenkinsfile".into(),
            pipeline:
                "pipeline {\n  agent any\n  stages { stage('A') { steps { script { } } } }\n}\n"
                    .into(),
            ..submission("")
        },
        "ci/Jenkinsfile:3:",
    )
    .await;

    let no_match = ProvisionError::NoMatch {
        agent: "label 'gpu'".into(),
        reasons: "local: lacks label gpu".into(),
    };
    let setup = setup_with(JobsConfig::default(), Err(no_match), Provide::Link, false);
    check(
        &setup,
        submission("sh 'x'"),
        "Jenkinsfile:2:3: no worker template matches label 'gpu': local: lacks label gpu",
    )
    .await;
}

#[tokio::test]
async fn a_store_failure_refuses_the_submission() {
    let setup = setup_with(JobsConfig::default(), Ok(()), Provide::Link, true);
    let err = setup.jobs.submit(submission("sh 'x'")).await.unwrap_err();
    assert!(matches!(err, JobsError::Store(_)), "{err:?}");
    assert!(setup.jobs.running_jobs().is_empty());
}

#[tokio::test]
async fn watchers_get_history_from_any_position_and_unknown_jobs_are_not_found() {
    let setup = setup();
    let (_, updates) = run_to_end(&setup, "sh 'echo hi'").await;
    let id = JobId::new("job-1").unwrap();
    let mut watch = setup.jobs.watch(&id, 2).await.unwrap();
    let mut tail = Vec::new();
    while let Some(update) = watch.next().await {
        tail.push(update);
    }
    assert_eq!(tail.as_slice(), &updates[2..]);
    let unknown = setup
        .jobs
        .watch(&JobId::new("job-x").unwrap(), 0)
        .await
        .unwrap_err();
    assert!(matches!(unknown, JobsError::NotFound(_)), "{unknown:?}");
}

#[tokio::test]
async fn an_evicted_journal_is_rebuilt_from_the_repository() {
    let config = JobsConfig {
        kept_journals: 0,
        ..JobsConfig::default()
    };
    let setup = setup_with(config, Ok(()), Provide::Link, false);
    let (status, _) = run_to_end(&setup, "sh 'echo hi'").await;
    assert_eq!(status, JobStatus::Succeeded);
    let mut watch = setup
        .jobs
        .watch(&JobId::new("job-1").unwrap(), 0)
        .await
        .unwrap();
    let mut rebuilt = Vec::new();
    while let Some(update) = watch.next().await {
        rebuilt.push(update);
    }
    assert_eq!(
        statuses(&rebuilt),
        [
            JobStatusKind::Queued,
            JobStatusKind::Running,
            JobStatusKind::Succeeded
        ]
    );
    assert!(
        lines(&rebuilt).contains(&"out: echo hi".to_owned()),
        "{rebuilt:#?}"
    );
    // The stages come from the repository, as the pump kept them.
    let stages = setup.jobs.stages(&JobId::new("job-1").unwrap()).await;
    let names: Vec<(&str, Option<StageResult>)> =
        stages.iter().map(|s| (s.name.as_str(), s.result)).collect();
    assert_eq!(names, [("Build", Some(StageResult::Success))]);
    let seqs: Vec<u64> = rebuilt.iter().map(|u| u.seq).collect();
    assert_eq!(seqs, (0..rebuilt.len() as u64).collect::<Vec<_>>());
    // From any position, as the live journal would be.
    let mut watch = setup
        .jobs
        .watch(&JobId::new("job-1").unwrap(), 3)
        .await
        .unwrap();
    let mut tail = Vec::new();
    while let Some(update) = watch.next().await {
        tail.push(update);
    }
    assert_eq!(tail, rebuilt[3..]);
}

#[tokio::test]
async fn journals_past_the_byte_budget_are_rebuilt_and_smaller_ones_kept() {
    let started = |budget: usize| async move {
        let config = JobsConfig {
            kept_journal_bytes: budget,
            ..JobsConfig::default()
        };
        let setup = setup_with(config, Ok(()), Provide::Link, false);
        run_to_end(&setup, "sh 'echo hi'").await;
        let mut watch = setup
            .jobs
            .watch(&JobId::new("job-1").unwrap(), 0)
            .await
            .unwrap();
        let mut updates = Vec::new();
        while let Some(update) = watch.next().await {
            updates.push(update);
        }
        // Only the journal in memory has stage events.
        updates
            .iter()
            .any(|u| matches!(u.kind, UpdateKind::StageStarted { .. }))
    };
    assert!(started(64 * 1024).await);
    assert!(!started(4).await);
}

#[tokio::test]
async fn recover_fails_started_jobs_and_runs_queued_ones_again() {
    let pipeline = submission("sh 'again'").pipeline;
    let stored =
        |id: &str, at: u64| Job::new(JobId::new(id).unwrap(), "demo", 1, &pipeline, Timestamp(at));
    let mut running = stored("r-1", 1);
    running.start(Timestamp(2)).unwrap();
    let mut provisioning = stored("p-1", 1);
    provisioning
        .transition(JobStatus::Provisioning, Timestamp(2))
        .unwrap();
    let queued = [stored("q-2", 4), stored("q-1", 3)];

    let seen = Arc::new(Seen::default());
    let mut repo = MockJobRepository::new();
    repo.expect_list().returning(move |filter| {
        Ok(match filter.status {
            Some(JobStatusKind::Running) => vec![running.clone()],
            Some(JobStatusKind::Provisioning) => vec![provisioning.clone()],
            Some(JobStatusKind::Queued) => queued.to_vec(),
            _ => Vec::new(),
        })
    });
    repo.expect_queued_submission().returning(|id| {
        Ok((id.as_str() == "q-1").then(|| QueuedSubmission {
            file: "Jenkinsfile".into(),
            branch: Some("main".into()),
            source: Arc::from(&b""[..]),
        }))
    });
    let s = seen.clone();
    repo.expect_save().returning(move |job| {
        lock(&s.saved).push(job);
        Ok(())
    });
    let s = seen.clone();
    repo.expect_find_by_id()
        .returning(move |id| Ok(lock(&s.saved).iter().rev().find(|j| j.id() == id).cloned()));
    repo.expect_append_log().returning(|_, _| Ok(0));
    repo.expect_save_stages().returning(|_, _| Ok(()));
    let mut events = MockEventPublisher::new();
    let s = seen.clone();
    events
        .expect_publish()
        .returning(move |event| lock(&s.events).push(event));
    let mut provider = MockProvider::new();
    let link: Arc<dyn WorkerLink> = Arc::new(FakeLink {
        id: WorkerId::new("w-1").unwrap(),
        cancelled: Notify::new(),
    });
    provider
        .expect_acquire()
        .returning(move |_| Ok(link.clone()));
    provider.expect_release().returning(|_, _| ());
    let jobs = CreateAndExecuteJob::new(
        JobsConfig::default(),
        JobPorts {
            jobs: Arc::new(repo),
            events: Arc::new(events),
            clock: Arc::new(TokioClock(tokio::time::Instant::now())),
            ids: Arc::new(MockIdGenerator::new()),
            provider: Arc::new(provider),
            secrets: Arc::new(BTreeMap::<String, String>::new()),
        },
    );

    let recovered = jobs.recover("server restarted").await.unwrap();
    let ids = |list: &[JobId]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(ids(&recovered.failed), ["r-1", "p-1", "q-2"]);
    assert_eq!(ids(&recovered.requeued), ["q-1"]);

    let q1 = JobId::new("q-1").unwrap();
    assert_eq!(jobs.wait(&q1).await.unwrap(), JobStatus::Succeeded);
    let mut watch = jobs.watch(&q1, 0).await.unwrap();
    let mut updates = Vec::new();
    while let Some(update) = watch.next().await {
        updates.push(update);
    }
    assert!(
        lines(&updates).contains(&"out: again".to_owned()),
        "{updates:#?}"
    );

    let last_status = |id: &str| {
        lock(&seen.saved)
            .iter()
            .rev()
            .find(|j| j.id().as_str() == id)
            .map(|j| j.status().clone())
    };
    assert_eq!(
        last_status("r-1"),
        Some(JobStatus::Failed {
            reason: "server restarted".into()
        })
    );
    assert_eq!(
        last_status("p-1"),
        Some(JobStatus::Failed {
            reason: "server restarted".into()
        })
    );
    assert_eq!(
        last_status("q-2"),
        Some(JobStatus::Failed {
            reason: "server restarted; the job's submission was not kept".into()
        })
    );
    assert!(lock(&seen.events).iter().any(|e| matches!(
        e,
        DomainEvent::JobFinished { job, status: JobStatus::Failed { .. } } if job.as_str() == "r-1"
    )));
}

#[tokio::test]
async fn shutdown_aborts_running_jobs_and_refuses_new_ones() {
    let setup = setup();
    let submitted = setup.jobs.submit(submission("sh 'block'")).await.unwrap();
    setup.jobs.shutdown("server stopping").await;
    let status = setup.jobs.wait(&submitted.job_id).await.unwrap();
    assert_eq!(
        status,
        JobStatus::Aborted {
            reason: "server stopping".into()
        }
    );
    let err = setup.jobs.submit(submission("sh 'x'")).await.unwrap_err();
    assert!(matches!(err, JobsError::ShuttingDown), "{err:?}");
}

/// Stages that share a name under different parents (parallel branches,
/// nested `stages`) are told apart by their paths: in stage events, in
/// log lines and in the job's stage summary.
#[tokio::test]
async fn stages_sharing_a_name_have_distinct_paths() {
    let setup = setup();
    let pipeline = "\
pipeline {
  agent any
  stages {
    stage('Test') {
      parallel {
        stage('linux') {
          stages {
            stage('build') { steps { sh 'linux build' } }
            stage('test') { steps { sh 'linux test' } }
          }
        }
        stage('mac') {
          stages {
            stage('build') { steps { sh 'mac build' } }
            stage('test') { steps { sh 'exit 3' } }
          }
        }
      }
    }
    stage('build') { steps { sh 'dist build' } }
  }
}
";
    let submitted = setup
        .jobs
        .submit(Submission {
            name: "demo".into(),
            file: "Jenkinsfile".into(),
            pipeline: pipeline.into(),
            ..Submission::default()
        })
        .await
        .unwrap();
    let status = setup.jobs.wait(&submitted.job_id).await.unwrap();
    assert_eq!(status.kind(), JobStatusKind::Failed);
    let mut watch = setup.jobs.watch(&submitted.job_id, 0).await.unwrap();
    let mut started = Vec::new();
    let mut finished = Vec::new();
    let mut output = Vec::new();
    while let Some(update) = watch.next().await {
        match update.kind {
            UpdateKind::StageStarted { path, stage } => {
                assert_eq!(path.last(), Some(&stage));
                started.push(path.join("/"));
            }
            UpdateKind::StageFinished {
                path,
                result,
                stage,
                ..
            } => {
                assert_eq!(path.last(), Some(&stage));
                finished.push(format!("{} {result}", path.join("/")));
            }
            UpdateKind::Log {
                path,
                step_id: Some(_),
                data,
                ..
            } => output.push(format!(
                "{}: {}",
                path.join("/"),
                String::from_utf8_lossy(&data)
            )),
            _ => {}
        }
    }
    started.sort();
    assert_eq!(
        started,
        [
            "Test",
            "Test/linux",
            "Test/linux/build",
            "Test/linux/test",
            "Test/mac",
            "Test/mac/build",
            "Test/mac/test",
            "build",
        ]
    );
    finished.sort();
    assert_eq!(
        finished,
        [
            "Test failure",
            "Test/linux success",
            "Test/linux/build success",
            "Test/linux/test success",
            "Test/mac failure",
            "Test/mac/build success",
            "Test/mac/test failure",
            "build skipped",
        ]
    );
    output.sort();
    assert_eq!(
        output,
        [
            "Test/linux/build: out: linux build",
            "Test/linux/test: out: linux test",
            "Test/mac/build: out: mac build",
        ]
    );
    let mut summary: Vec<String> = setup
        .jobs
        .stages(&submitted.job_id)
        .await
        .into_iter()
        .map(|s| format!("{} {:?}", s.path.join("/"), s.result))
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        [
            "Test Some(Failure)",
            "Test/linux Some(Success)",
            "Test/linux/build Some(Success)",
            "Test/linux/test Some(Success)",
            "Test/mac Some(Failure)",
            "Test/mac/build Some(Success)",
            "Test/mac/test Some(Failure)",
            "build Some(Skipped)",
        ]
    );
}

/// Each worker a job waits for, with no segment running steps, makes the
/// job `Provisioning` (stored and journaled); a worker that cannot be had
/// leaves it so until the job ends.
#[tokio::test]
async fn the_job_is_provisioning_while_it_waits_for_a_worker() {
    let setup = setup();
    let pipeline = "\
pipeline {
  agent none
  stages {
    stage('One') { agent any; steps { sh 'one' } }
    stage('Two') { agent any; steps { sh 'two' } }
  }
}
";
    let submitted = setup
        .jobs
        .submit(Submission {
            name: "demo".into(),
            file: "Jenkinsfile".into(),
            pipeline: pipeline.into(),
            ..Submission::default()
        })
        .await
        .unwrap();
    assert_eq!(
        setup.jobs.wait(&submitted.job_id).await.unwrap(),
        JobStatus::Succeeded
    );
    let mut watch = setup.jobs.watch(&submitted.job_id, 0).await.unwrap();
    let mut updates = Vec::new();
    while let Some(update) = watch.next().await {
        updates.push(update);
    }
    use JobStatusKind::{Provisioning, Queued, Running, Succeeded};
    assert_eq!(
        statuses(&updates),
        [
            Queued,
            Running,
            Provisioning,
            Running,
            Provisioning,
            Running,
            Succeeded
        ]
    );
    let saved: Vec<JobStatusKind> = lock(&setup.seen.saved)
        .iter()
        .map(|j| j.status().kind())
        .collect();
    assert_eq!(saved, statuses(&updates));

    let failing = setup_with(
        JobsConfig::default(),
        Ok(()),
        Provide::Fail(ProvisionError::Failed {
            worker: WorkerId::new("w-9").unwrap(),
            reason: "image not found".into(),
        }),
        false,
    );
    let (status, updates) = run_to_end(&failing, "sh 'echo hi'").await;
    assert_eq!(status.kind(), JobStatusKind::Failed);
    assert_eq!(
        statuses(&updates),
        [Queued, Running, Provisioning, JobStatusKind::Failed]
    );
}

#[tokio::test]
async fn bound_secrets_are_masked_in_stored_and_streamed_lines_and_messages() {
    let setup = setup();
    let mut submitted = submission(
        "sh \"echo ${KEY}\"\n        sh \"bytewise [${KEY}]\"\n        echo \"echoed ${KEY}\"\n        error \"failed with ${KEY}\"",
    );
    submitted.pipeline = submitted.pipeline.replace(
        "agent any\n",
        "agent any\n  environment { KEY = credentials('deploy-key') }\n",
    );
    let job = setup.jobs.submit(submitted).await.unwrap().job_id;
    let status = setup.jobs.wait(&job).await.unwrap();
    assert_eq!(
        status,
        JobStatus::Failed {
            reason: "failed with ****".into()
        }
    );
    let mut watch = setup.jobs.watch(&job, 0).await.unwrap();
    let mut updates = Vec::new();
    while let Some(update) = watch.next().await {
        updates.push(update);
    }
    let streamed = lines(&updates);
    for expected in ["out: echo ****", "bytewise [****]", "echoed ****"] {
        assert!(
            streamed.iter().any(|l| l == expected),
            "{expected:?} in {streamed:#?}"
        );
    }
    let stored: Vec<String> = lock(&setup.seen.logs)
        .iter()
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect();
    let everything = format!("{updates:?} {stored:?} {:?}", lock(&setup.seen.saved));
    assert!(!everything.contains("s3cr3t"), "{everything}");
    assert!(
        stored.iter().any(|l| l == "bytewise [****]\n"),
        "{stored:#?}"
    );
}

#[tokio::test]
async fn unknown_credentials_and_oversized_pipelines_are_refused_with_their_position() {
    let config = JobsConfig {
        max_stages: 2,
        max_pipeline_bytes: 400,
        ..JobsConfig::default()
    };
    let setup = setup_with(config, Ok(()), Provide::Link, false);
    let check = |submission: Submission, expected: &'static str| {
        let jobs = setup.jobs.clone();
        async move {
            let err = jobs.submit(submission).await.unwrap_err().to_string();
            assert_eq!(err, expected);
        }
    };
    let mut unknown = submission("sh 'true'");
    unknown.pipeline = unknown.pipeline.replace(
        "stage('Build') {\n",
        "stage('Build') {\n      environment { K = credentials('nope') }\n",
    );
    check(
        unknown,
        "Jenkinsfile:5:21: no credentials with id 'nope' for environment variable K; \
         the server's credentials are configured with [credentials] or HODEI_CREDENTIAL_<ID>",
    )
    .await;
    let three = Submission {
        pipeline: "pipeline { agent any; stages {\n stage('a') { steps { sh 'x' } }\n stage('b') { steps { sh 'x' } }\n stage('c') { steps { sh 'x' } } } }".into(),
        ..submission("")
    };
    check(
        three,
        "Jenkinsfile:4:2: the stage count is 3 stages, above the server's limit max_stages = 2",
    )
    .await;
    let long = submission(&"echo 'x'\n".repeat(50));
    check(
        long,
        "Jenkinsfile: the pipeline text is 597 bytes, above the server's limit max_pipeline_bytes = 400",
    )
    .await;
    assert!(lock(&setup.seen.saved).is_empty());
}

/// Two stages, each printing `lines` lines, with runner lines between.
fn flood(lines: usize) -> Submission {
    Submission {
        pipeline: format!(
            "pipeline {{\n  agent any\n  stages {{\n    stage('A') {{ steps {{ echo 'a'\n sh 'flood {lines}' }} }}\n    stage('B') {{ steps {{ sh 'flood {lines}'\n echo 'b' }} }}\n  }}\n}}\n"
        ),
        ..submission("")
    }
}

/// The updates without their times.
fn untimed(updates: &[JobUpdate]) -> Vec<(u64, UpdateKind)> {
    updates.iter().map(|u| (u.seq, u.kind.clone())).collect()
}

async fn watch_all(jobs: &CreateAndExecuteJob, id: &JobId, from: u64) -> Vec<JobUpdate> {
    let mut watch = jobs.watch(id, from).await.unwrap();
    let mut updates = Vec::new();
    while let Some(update) = watch.next().await {
        updates.push(update);
    }
    updates
}

/// The journal of a job that floods its log, with nothing evicted.
async fn flood_reference(count: usize) -> Vec<(u64, UpdateKind)> {
    let setup = setup_with(
        JobsConfig {
            live_journal_bytes: usize::MAX,
            ..JobsConfig::default()
        },
        Ok(()),
        Provide::Link,
        false,
    );
    let id = setup.jobs.submit(flood(count)).await.unwrap().job_id;
    assert_eq!(setup.jobs.wait(&id).await.unwrap(), JobStatus::Succeeded);
    let journal = lock(&setup.jobs.inner.journals).by_job[&id].clone();
    assert_eq!(journal.evicted_lines(), 0);
    let updates = watch_all(&setup.jobs, &id, 0).await;
    assert!(lines(&updates).len() > 2 * count, "{}", updates.len());
    untimed(&updates)
}

const FLOOD_BUDGET: usize = 16 * 1024;

fn flood_setup() -> Setup {
    setup_with(
        JobsConfig {
            live_journal_bytes: FLOOD_BUDGET,
            ..JobsConfig::default()
        },
        Ok(()),
        Provide::Link,
        false,
    )
}

#[tokio::test]
async fn a_running_job_keeps_its_budget_of_log_in_memory_and_watchers_miss_nothing() {
    let reference = flood_reference(1000).await;
    let setup = flood_setup();
    let id = setup.jobs.submit(flood(1000)).await.unwrap().job_id;
    let journal = lock(&setup.jobs.inner.journals).by_job[&id].clone();
    // A watcher from the start, reading while lines are evicted.
    let during = {
        let jobs = setup.jobs.clone();
        let id = id.clone();
        tokio::spawn(async move { watch_all(&jobs, &id, 0).await })
    };
    assert_eq!(setup.jobs.wait(&id).await.unwrap(), JobStatus::Succeeded);
    let during = during.await.unwrap();

    // 2000 lines of about 200 bytes each went through a 16 KiB journal:
    // at most the budget and the line just journaled were ever in memory.
    let line = reference
        .iter()
        .map(|(seq, kind)| {
            line_cost(&JobUpdate {
                seq: *seq,
                at: Timestamp(0),
                kind: kind.clone(),
            })
        })
        .max()
        .unwrap();
    assert!(
        journal.peak_log_bytes() <= FLOOD_BUDGET + line,
        "peak {} over {FLOOD_BUDGET} + {line}",
        journal.peak_log_bytes()
    );
    assert!(journal.log_bytes() <= FLOOD_BUDGET);
    assert!(
        journal.evicted_lines() > 1900,
        "{}",
        journal.evicted_lines()
    );

    // Every update exactly once, in order, with its stage: while the job
    // ran, after it ended, and from any position.
    assert_eq!(untimed(&during), reference);
    let after = watch_all(&setup.jobs, &id, 0).await;
    assert_eq!(untimed(&after), reference);
    for from in [1, 7, 500, 1999, reference.len() as u64 - 3] {
        let tail = watch_all(&setup.jobs, &id, from).await;
        assert_eq!(untimed(&tail), reference[from as usize..], "from {from}");
    }
    // The evicted lines are the stored ones, with their times.
    let stored = lock(&setup.seen.logs).clone();
    let mut stored_lines = stored.iter();
    for update in &after {
        if let UpdateKind::Log { data, .. } = &update.kind {
            let chunk = stored_lines.next().unwrap();
            assert_eq!(chunk.data, [data.as_slice(), b"\n"].concat());
            assert_eq!(chunk.at, update.at);
        }
    }
    assert!(stored_lines.next().is_none());
    // What the journal says of the stages survives eviction.
    let stages: Vec<(String, Option<StageResult>)> = setup
        .jobs
        .stages(&id)
        .await
        .into_iter()
        .map(|s| (s.name, s.result))
        .collect();
    assert_eq!(
        stages,
        [
            ("A".to_owned(), Some(StageResult::Success)),
            ("B".to_owned(), Some(StageResult::Success))
        ]
    );
}

#[tokio::test]
async fn a_watcher_that_falls_behind_eviction_still_gets_everything() {
    let reference = flood_reference(1000).await;
    let setup = flood_setup();
    let id = setup.jobs.submit(flood(1000)).await.unwrap().job_id;
    let journal = lock(&setup.jobs.inner.journals).by_job[&id].clone();
    let mut slow = setup.jobs.watch(&id, 0).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(slow.next().await.unwrap());
    }
    // The job goes on while the watcher waits; its next updates leave
    // memory.
    while journal.evicted_lines() < 300 && setup.jobs.running_jobs().contains(&id) {
        tokio::task::yield_now().await;
    }
    assert!(journal.evicted_lines() >= 300);
    assert!(setup.jobs.running_jobs().contains(&id));
    while let Some(update) = slow.next().await {
        seen.push(update);
    }
    assert_eq!(untimed(&seen), reference);
    assert!(
        journal.evicted_lines() > 1900,
        "{}",
        journal.evicted_lines()
    );
}

#[tokio::test]
async fn lines_the_store_has_not_confirmed_stay_in_memory() {
    let journal = Journal::new(1024);
    let (writer, mut written) = mpsc::unbounded_channel();
    let line = |i: u32| {
        let data = format!("line {i}").into_bytes();
        (
            UpdateKind::Log {
                stage: "Build".into(),
                path: vec!["Build".into()],
                step_id: Some("s1".into()),
                stream: LogStream::Stdout,
                data: data.clone(),
            },
            LogChunk {
                at: Timestamp(u64::from(i)),
                step_id: Some("s1".into()),
                stream: LogStream::Stdout,
                data,
            },
        )
    };
    journal.push(Timestamp(0), UpdateKind::Status(JobStatus::Running));
    for i in 0..100 {
        let (kind, chunk) = line(i);
        journal.push_line(Timestamp(u64::from(i)), kind, chunk, &writer);
    }
    // Handed to the writer in order, and all kept: none is stored yet.
    for i in 0..100 {
        let Some(Pumped::Log(chunk)) = written.recv().await.map(|item| *item) else {
            panic!("expected line {i}");
        };
        assert_eq!(chunk.data, format!("line {i}").into_bytes());
    }
    assert_eq!(journal.evicted_lines(), 0);
    assert!(journal.log_bytes() > 10 * 1024);
    // Stored lines past the budget go; the others stay.
    journal.stored(10);
    assert_eq!(journal.evicted_lines(), 10);
    journal.stored(100);
    assert!(journal.log_bytes() <= 1024, "{}", journal.log_bytes());
    assert!(journal.evicted_lines() > 90);
    assert_eq!(journal.status(), Some(JobStatus::Running));
}

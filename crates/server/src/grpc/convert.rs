//! Protobuf ↔ domain conversions, by hand, at the edge. Nothing below the
//! server crate sees a generated type.

use std::collections::BTreeMap;

use hodei_application::submit::{JobUpdate, StageSummary, UpdateKind, WorkerPhase};
use hodei_application::worker_link::{LogStream, StepAction, StepOutcome, StepRequest};
use hodei_domain::{
    CpuQuantity, Job, JobStatus, JobStatusKind, MemoryQuantity, ResourcesSpec, StageResult,
    TemplateId, Worker, WorkerKind, WorkerTemplate, WorkerTemplateSpec,
};
use hodei_proto::v1 as pb;

/// A worker's stream as the application names it.
pub fn log_stream_from_proto(stream: i32) -> LogStream {
    match pb::LogStream::try_from(stream) {
        Ok(pb::LogStream::Stderr) => LogStream::Stderr,
        Ok(pb::LogStream::System) => LogStream::System,
        _ => LogStream::Stdout,
    }
}

/// The protocol's name for a stream.
pub fn log_stream_to_proto(stream: LogStream) -> pb::LogStream {
    match stream {
        LogStream::Stdout => pb::LogStream::Stdout,
        LogStream::Stderr => pb::LogStream::Stderr,
        LogStream::System => pb::LogStream::System,
    }
}

/// How a step ended, from the worker's `StepFinished`.
pub fn step_outcome_from_proto(finished: &pb::StepFinished) -> StepOutcome {
    let message = || {
        if finished.message.is_empty() {
            "the worker could not run the step".to_owned()
        } else {
            finished.message.clone()
        }
    };
    match pb::StepOutcome::try_from(finished.outcome) {
        Ok(pb::StepOutcome::Success) => StepOutcome::Success,
        Ok(pb::StepOutcome::Failed) => StepOutcome::Failed {
            exit_code: finished.exit_code,
        },
        Ok(pb::StepOutcome::Cancelled) => StepOutcome::Cancelled,
        Ok(pb::StepOutcome::TimedOut) => StepOutcome::Error {
            message: format!("the worker's step time limit passed: {}", message()),
        },
        Ok(pb::StepOutcome::Error | pb::StepOutcome::Unspecified) | Err(_) => {
            StepOutcome::Error { message: message() }
        }
    }
}

/// A leaf step as the worker receives it.
pub fn run_step_to_proto(request: StepRequest, segment_id: String) -> pb::RunStep {
    let action = match request.action {
        StepAction::Sh { script } => pb::run_step::Action::Sh(pb::ShAction { script }),
        StepAction::WriteFile { path, text } => {
            pb::run_step::Action::WriteFile(pb::WriteFileAction { path, text })
        }
    };
    pb::RunStep {
        step_id: request.step_id,
        segment_id,
        action: Some(action),
        environment: request.environment.into_iter().collect(),
        dir: request.dir,
        timeout_ms: 0,
    }
}

/// A job status and its message.
pub fn job_status_to_proto(status: &JobStatus) -> (pb::JobStatus, String) {
    match status {
        JobStatus::Queued => (pb::JobStatus::Queued, String::new()),
        JobStatus::Provisioning => (pb::JobStatus::Provisioning, String::new()),
        JobStatus::Running => (pb::JobStatus::Running, String::new()),
        JobStatus::Succeeded => (pb::JobStatus::Success, String::new()),
        JobStatus::Failed { reason } => (pb::JobStatus::Failure, reason.clone()),
        JobStatus::Aborted { reason } => (pb::JobStatus::Aborted, reason.clone()),
        JobStatus::TimedOut => (
            pb::JobStatus::TimedOut,
            "the job's time limit passed".into(),
        ),
    }
}

/// The status a `ListJobs` filter names; `None` for unspecified.
pub fn job_status_kind_from_proto(status: i32) -> Option<JobStatusKind> {
    Some(match pb::JobStatus::try_from(status).ok()? {
        pb::JobStatus::Queued => JobStatusKind::Queued,
        pb::JobStatus::Provisioning => JobStatusKind::Provisioning,
        pb::JobStatus::Running => JobStatusKind::Running,
        pb::JobStatus::Success => JobStatusKind::Succeeded,
        pb::JobStatus::Failure => JobStatusKind::Failed,
        pb::JobStatus::Aborted => JobStatusKind::Aborted,
        pb::JobStatus::TimedOut => JobStatusKind::TimedOut,
        pb::JobStatus::Unspecified => return None,
    })
}

/// A stage's result.
pub fn stage_result_to_proto(result: StageResult) -> pb::StageResult {
    match result {
        StageResult::Success => pb::StageResult::Success,
        StageResult::Failure => pb::StageResult::Failure,
        StageResult::Aborted => pb::StageResult::Aborted,
        StageResult::TimedOut => pb::StageResult::TimedOut,
        StageResult::Skipped => pb::StageResult::Skipped,
    }
}

/// A job with its stages.
pub fn job_to_proto(job: &Job, stages: &[StageSummary]) -> pb::Job {
    let (status, message) = job_status_to_proto(job.status());
    pb::Job {
        id: job.id().to_string(),
        name: job.name().to_owned(),
        build_number: job.build_number(),
        status: status as i32,
        message,
        created_at_ms: job.created_at().0,
        started_at_ms: job.started_at().map_or(0, |t| t.0),
        finished_at_ms: job.finished_at().map_or(0, |t| t.0),
        stages: stages
            .iter()
            .map(|s| pb::StageSummary {
                path: s.path.clone(),
                result: s
                    .result
                    .map_or(pb::StageResult::Unspecified, stage_result_to_proto)
                    as i32,
                started_at_ms: s.started_at.0,
                finished_at_ms: s.finished_at.map_or(0, |t| t.0),
            })
            .collect(),
        parameters: job
            .parameters()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A journal entry as a `JobEvent`.
pub fn update_to_proto(update: JobUpdate) -> pb::JobEvent {
    use pb::job_event::Kind;
    let kind = match update.kind {
        UpdateKind::Status(status) => {
            let (status, message) = job_status_to_proto(&status);
            Kind::Status(pb::StatusChanged {
                status: status as i32,
                message,
            })
        }
        UpdateKind::StageStarted { path, .. } => Kind::Stage(pb::StageEvent {
            path,
            kind: pb::StageEventKind::Started as i32,
            result: pb::StageResult::Unspecified as i32,
            message: String::new(),
        }),
        UpdateKind::StageFinished {
            path,
            result,
            message,
            ..
        } => Kind::Stage(pb::StageEvent {
            path,
            kind: pb::StageEventKind::Finished as i32,
            result: stage_result_to_proto(result) as i32,
            message,
        }),
        UpdateKind::Log {
            path,
            step_id,
            stream,
            data,
            ..
        } => Kind::Log(pb::LogLine {
            stage: path,
            step_id: step_id.unwrap_or_default(),
            stream: log_stream_to_proto(stream) as i32,
            text: String::from_utf8_lossy(&data).into_owned(),
        }),
        UpdateKind::Worker {
            segment,
            agent,
            worker,
            template,
            phase,
            message,
        } => Kind::Worker(pb::WorkerEvent {
            worker_id: worker.map(|w| w.to_string()).unwrap_or_default(),
            template_id: template.map(|t| t.to_string()).unwrap_or_default(),
            state: match phase {
                WorkerPhase::Requested => "provisioning",
                WorkerPhase::Ready => "connected",
                WorkerPhase::Released => "destroyed",
                WorkerPhase::Failed => "failed",
            }
            .to_owned(),
            message: if message.is_empty() {
                format!("worker {segment}: {agent}")
            } else {
                message
            },
        }),
    };
    pb::JobEvent {
        sequence: update.seq,
        timestamp_ms: update.at.0,
        kind: Some(kind),
    }
}

/// A template as the admin API shows it.
pub fn template_to_proto(template: &WorkerTemplate) -> pb::WorkerTemplate {
    let resources = template.resources();
    pb::WorkerTemplate {
        id: template.id().to_string(),
        name: template.name().to_owned(),
        description: template.description().to_owned(),
        image: template.image().to_owned(),
        capabilities: template.capabilities().iter().cloned().collect(),
        resources: Some(pb::Resources {
            cpu: resources.cpu().to_string(),
            memory: resources.memory().to_string(),
            cpu_limit: resources
                .cpu_limit()
                .map(|q| q.to_string())
                .unwrap_or_default(),
            memory_limit: resources
                .memory_limit()
                .map(|q| q.to_string())
                .unwrap_or_default(),
            storage: resources
                .storage()
                .map(|q| q.to_string())
                .unwrap_or_default(),
        }),
        environment: template
            .environment()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        timeout_minutes: template.timeout_minutes(),
        max_concurrent_jobs: template.max_concurrent_jobs(),
    }
}

/// A template sent to `PutTemplate`, validated; the error names the field.
pub fn template_from_proto(template: pb::WorkerTemplate) -> Result<WorkerTemplate, String> {
    let id = TemplateId::new(template.id.as_str()).map_err(|e| format!("template.id: {e}"))?;
    let resources = template
        .resources
        .ok_or_else(|| "template.resources: expected cpu and memory".to_owned())?;
    let cpu = |field: &str, value: &str| {
        CpuQuantity::parse(value).map_err(|e| format!("template.resources.{field}: {e}"))
    };
    let memory = |field: &str, value: &str| {
        MemoryQuantity::parse(value).map_err(|e| format!("template.resources.{field}: {e}"))
    };
    let optional = |value: &str| (!value.is_empty()).then(|| value.to_owned());
    let spec = WorkerTemplateSpec {
        id,
        name: optional(&template.name),
        description: template.description,
        image: template.image,
        capabilities: template.capabilities,
        resources: ResourcesSpec {
            cpu: cpu("cpu", &resources.cpu)?,
            memory: memory("memory", &resources.memory)?,
            cpu_limit: optional(&resources.cpu_limit)
                .map(|v| cpu("cpu_limit", &v))
                .transpose()?,
            memory_limit: optional(&resources.memory_limit)
                .map(|v| memory("memory_limit", &v))
                .transpose()?,
            storage: optional(&resources.storage)
                .map(|v| memory("storage", &v))
                .transpose()?,
        },
        environment: template.environment.into_iter().collect::<BTreeMap<_, _>>(),
        timeout_minutes: if template.timeout_minutes == 0 {
            30
        } else {
            template.timeout_minutes
        },
        max_concurrent_jobs: if template.max_concurrent_jobs == 0 {
            5
        } else {
            template.max_concurrent_jobs
        },
        // The admin API does not carry it: templates put through it run
        // as their image's user unless the backend says otherwise.
        run_as_user: None,
    };
    WorkerTemplate::try_from(spec).map_err(|e| format!("template.{}: {e}", e.field()))
}

/// A worker record as the admin API shows it.
pub fn worker_to_proto(
    worker: &Worker,
    capabilities: Vec<String>,
    backend: &str,
    last_heartbeat_ms: u64,
) -> pb::WorkerInfo {
    let (template_id, job_id, capabilities) = match worker.kind() {
        WorkerKind::Ephemeral { template, job, .. } => {
            (template.to_string(), job.to_string(), capabilities)
        }
        WorkerKind::Static { labels } => (
            String::new(),
            worker
                .current_job()
                .map(|j| j.to_string())
                .unwrap_or_default(),
            labels.iter().cloned().collect(),
        ),
    };
    pb::WorkerInfo {
        id: worker.id().to_string(),
        name: worker.name().to_owned(),
        ephemeral: worker.is_ephemeral(),
        template_id,
        job_id,
        state: worker.state().kind().as_str().to_owned(),
        capabilities,
        backend: if worker.is_ephemeral() {
            backend.to_owned()
        } else {
            "static".to_owned()
        },
        created_at_ms: worker.created_at().0,
        last_heartbeat_ms,
    }
}

#[cfg(test)]
mod tests {
    use hodei_domain::Timestamp;

    use super::*;

    #[test]
    fn step_outcomes() {
        fn check(outcome: pb::StepOutcome, exit_code: i32, message: &str, expected: StepOutcome) {
            let finished = pb::StepFinished {
                step_id: "s".into(),
                exit_code,
                outcome: outcome as i32,
                message: message.into(),
                duration_ms: 1,
            };
            assert_eq!(step_outcome_from_proto(&finished), expected);
        }
        check(pb::StepOutcome::Success, 0, "", StepOutcome::Success);
        check(
            pb::StepOutcome::Failed,
            3,
            "script returned exit code 3",
            StepOutcome::Failed { exit_code: 3 },
        );
        check(pb::StepOutcome::Cancelled, 143, "", StepOutcome::Cancelled);
        check(
            pb::StepOutcome::Error,
            -1,
            "dir: expected a relative path",
            StepOutcome::Error {
                message: "dir: expected a relative path".into(),
            },
        );
        check(
            pb::StepOutcome::Unspecified,
            -1,
            "",
            StepOutcome::Error {
                message: "the worker could not run the step".into(),
            },
        );
    }

    #[test]
    fn template_round_trip_and_field_errors() {
        let template = WorkerTemplate::builtins().remove(0);
        let back = template_from_proto(template_to_proto(&template)).unwrap();
        assert_eq!(back, template);

        let check = |edit: fn(&mut pb::WorkerTemplate), expected: &str| {
            let mut proto = template_to_proto(&template);
            edit(&mut proto);
            let err = template_from_proto(proto).unwrap_err();
            assert!(
                err.starts_with(expected),
                "{err} should start with {expected}"
            );
        };
        check(|t| t.id = "Bad Id".into(), "template.id: ");
        check(|t| t.resources = None, "template.resources: expected cpu");
        check(
            |t| t.resources.as_mut().unwrap().cpu = "lots".into(),
            "template.resources.cpu: ",
        );
        check(
            |t| t.resources.as_mut().unwrap().memory_limit = "1Ki".into(),
            "template.",
        );
    }

    #[test]
    fn statuses_and_updates() {
        assert_eq!(
            job_status_to_proto(&JobStatus::Failed {
                reason: "exit 2".into()
            }),
            (pb::JobStatus::Failure, "exit 2".to_owned())
        );
        assert_eq!(
            job_status_kind_from_proto(pb::JobStatus::Success as i32),
            Some(JobStatusKind::Succeeded)
        );
        assert_eq!(job_status_kind_from_proto(99), None);
        let event = update_to_proto(JobUpdate {
            seq: 7,
            at: Timestamp(5),
            kind: UpdateKind::Log {
                stage: "Build".into(),
                path: vec!["Build".into()],
                step_id: Some("3".into()),
                stream: LogStream::Stderr,
                data: b"caf\xc3\xa9 \xff".to_vec(),
            },
        });
        assert_eq!(event.sequence, 7);
        let Some(pb::job_event::Kind::Log(line)) = event.kind else {
            panic!("expected a log line, got {event:?}");
        };
        assert_eq!(line.stage, ["Build"]);
        assert_eq!(line.text, "café \u{fffd}");
        assert_eq!(line.stream, pb::LogStream::Stderr as i32);
    }
}

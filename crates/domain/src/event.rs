//! Domain events: what happened to jobs and workers, one value per
//! transition, for watchers, metrics and logs.
//!
//! Events are plain data. Publishing them is the application's business
//! (its `EventPublisher` port); they carry no secrets (never a token).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, TemplateId, WorkerId};
use crate::job::JobStatus;

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageResult {
    /// Every step passed.
    Success,
    /// A step failed.
    Failure,
    /// Cancelled.
    Aborted,
    /// Its `timeout` ran out.
    TimedOut,
    /// Skipped (its `when` was false, or an earlier stage failed).
    Skipped,
}

impl fmt::Display for StageResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StageResult::Success => "success",
            StageResult::Failure => "failure",
            StageResult::Aborted => "aborted",
            StageResult::TimedOut => "timed out",
            StageResult::Skipped => "skipped",
        })
    }
}

/// Something that happened to a job or a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DomainEvent {
    /// A job was submitted.
    JobQueued {
        /// The job.
        job: JobId,
        /// Its name.
        name: String,
        /// Its build number.
        build_number: u64,
    },
    /// A job's pipeline started running.
    JobStarted {
        /// The job.
        job: JobId,
    },
    /// A stage started.
    StageStarted {
        /// The job.
        job: JobId,
        /// The stage's name.
        stage: String,
    },
    /// A stage ended.
    StageFinished {
        /// The job.
        job: JobId,
        /// The stage's name.
        stage: String,
        /// How it ended.
        result: StageResult,
    },
    /// A job ended.
    JobFinished {
        /// The job.
        job: JobId,
        /// Its final status.
        status: JobStatus,
    },
    /// A job segment waits for a slot: a template's `max_concurrent_jobs`
    /// or the server's global cap is reached.
    WorkerWaiting {
        /// The job.
        job: JobId,
        /// The template it waits for.
        template: TemplateId,
        /// Which cap, in words (`template java-maven allows 2 workers at
        /// once`).
        reason: String,
    },
    /// An ephemeral worker was recorded for a job segment.
    WorkerRequested {
        /// The worker.
        worker: WorkerId,
        /// The job it is bound to.
        job: JobId,
        /// Its template.
        template: TemplateId,
    },
    /// The backend accepted the worker; waiting for it to connect.
    WorkerProvisioning {
        /// The worker.
        worker: WorkerId,
        /// The backend's name for it.
        backend_id: String,
    },
    /// The worker connected with its token.
    WorkerConnected {
        /// The worker.
        worker: WorkerId,
    },
    /// The worker was given a job segment.
    WorkerAssigned {
        /// The worker.
        worker: WorkerId,
        /// The job.
        job: JobId,
        /// The segment.
        segment: String,
    },
    /// A static worker finished its segment and is idle again.
    WorkerReleased {
        /// The worker.
        worker: WorkerId,
        /// Why it was released.
        reason: String,
    },
    /// A worker could not be provisioned or failed.
    WorkerFailed {
        /// The worker.
        worker: WorkerId,
        /// The job it was for, if any.
        job: Option<JobId>,
        /// The backend's reason.
        reason: String,
    },
    /// A connected worker was lost.
    WorkerLost {
        /// The worker.
        worker: WorkerId,
        /// Why.
        reason: String,
    },
    /// A worker was told to stop and its backend object deleted.
    WorkerDestroyed {
        /// The worker.
        worker: WorkerId,
        /// Why it was destroyed (job finished, provisioning failed,
        /// lifetime exceeded...).
        reason: String,
    },
    /// Deleting a worker's backend object failed; the orphan collector
    /// will retry.
    WorkerDeleteFailed {
        /// The worker.
        worker: WorkerId,
        /// The backend's error.
        error: String,
    },
}

impl DomainEvent {
    /// The job the event concerns, when it names one.
    pub fn job(&self) -> Option<&JobId> {
        match self {
            DomainEvent::JobQueued { job, .. }
            | DomainEvent::JobStarted { job }
            | DomainEvent::StageStarted { job, .. }
            | DomainEvent::StageFinished { job, .. }
            | DomainEvent::JobFinished { job, .. }
            | DomainEvent::WorkerWaiting { job, .. }
            | DomainEvent::WorkerRequested { job, .. }
            | DomainEvent::WorkerAssigned { job, .. } => Some(job),
            DomainEvent::WorkerFailed { job, .. } => job.as_ref(),
            DomainEvent::WorkerProvisioning { .. }
            | DomainEvent::WorkerConnected { .. }
            | DomainEvent::WorkerReleased { .. }
            | DomainEvent::WorkerLost { .. }
            | DomainEvent::WorkerDestroyed { .. }
            | DomainEvent::WorkerDeleteFailed { .. } => None,
        }
    }

    /// The worker the event concerns, when it names one.
    pub fn worker(&self) -> Option<&WorkerId> {
        match self {
            DomainEvent::WorkerRequested { worker, .. }
            | DomainEvent::WorkerProvisioning { worker, .. }
            | DomainEvent::WorkerConnected { worker }
            | DomainEvent::WorkerAssigned { worker, .. }
            | DomainEvent::WorkerReleased { worker, .. }
            | DomainEvent::WorkerFailed { worker, .. }
            | DomainEvent::WorkerLost { worker, .. }
            | DomainEvent::WorkerDestroyed { worker, .. }
            | DomainEvent::WorkerDeleteFailed { worker, .. } => Some(worker),
            _ => None,
        }
    }

    /// The event's name in snake case (`worker_connected`), for logs and
    /// metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            DomainEvent::JobQueued { .. } => "job_queued",
            DomainEvent::JobStarted { .. } => "job_started",
            DomainEvent::StageStarted { .. } => "stage_started",
            DomainEvent::StageFinished { .. } => "stage_finished",
            DomainEvent::JobFinished { .. } => "job_finished",
            DomainEvent::WorkerWaiting { .. } => "worker_waiting",
            DomainEvent::WorkerRequested { .. } => "worker_requested",
            DomainEvent::WorkerProvisioning { .. } => "worker_provisioning",
            DomainEvent::WorkerConnected { .. } => "worker_connected",
            DomainEvent::WorkerAssigned { .. } => "worker_assigned",
            DomainEvent::WorkerReleased { .. } => "worker_released",
            DomainEvent::WorkerFailed { .. } => "worker_failed",
            DomainEvent::WorkerLost { .. } => "worker_lost",
            DomainEvent::WorkerDestroyed { .. } => "worker_destroyed",
            DomainEvent::WorkerDeleteFailed { .. } => "worker_delete_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(event: DomainEvent, name: &str, job: Option<&str>, worker: Option<&str>) {
        assert_eq!(event.name(), name);
        assert_eq!(event.job().map(JobId::as_str), job, "{event:?}");
        assert_eq!(event.worker().map(WorkerId::as_str), worker, "{event:?}");
    }

    #[test]
    fn accessors() {
        let j = || JobId::new("j-1").unwrap();
        let w = || WorkerId::new("w-1").unwrap();
        check(
            DomainEvent::JobFinished {
                job: j(),
                status: JobStatus::Succeeded,
            },
            "job_finished",
            Some("j-1"),
            None,
        );
        check(
            DomainEvent::WorkerRequested {
                worker: w(),
                job: j(),
                template: TemplateId::new("go-build").unwrap(),
            },
            "worker_requested",
            Some("j-1"),
            Some("w-1"),
        );
        check(
            DomainEvent::WorkerFailed {
                worker: w(),
                job: None,
                reason: "x".into(),
            },
            "worker_failed",
            None,
            Some("w-1"),
        );
        check(
            DomainEvent::WorkerDeleteFailed {
                worker: w(),
                error: "x".into(),
            },
            "worker_delete_failed",
            None,
            Some("w-1"),
        );
        check(
            DomainEvent::StageFinished {
                job: j(),
                stage: "Build".into(),
                result: StageResult::Skipped,
            },
            "stage_finished",
            Some("j-1"),
            None,
        );
    }
}

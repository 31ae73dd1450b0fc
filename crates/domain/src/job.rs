//! Jobs: one run of a pipeline, and the state machine of its status.
//!
//! ```text
//! Queued ──▶ Running | Provisioning
//! Running ◀──▶ Provisioning
//! Running | Provisioning ──▶ Succeeded | Failed | Aborted | TimedOut
//! Queued ──▶ Failed | Aborted               (before it ever ran)
//! ```
//!
//! A started job is `Provisioning` while it waits for a worker with no
//! segment running steps (its first worker, or the worker of a stage with
//! its own agent), and `Running` otherwise.
//!
//! The domain has no clock: every transition takes the current
//! [`Timestamp`] from the caller.
//!
//! ```
//! use hodei_domain::job::{Job, JobStatus, Timestamp};
//! use hodei_domain::JobId;
//!
//! let mut job = Job::new(JobId::new("j-1")?, "hello", 1, "pipeline { }", Timestamp(10));
//! job.start(Timestamp(20))?;
//! job.finish(JobStatus::Succeeded, Timestamp(30))?;
//! assert!(job.start(Timestamp(40)).is_err());
//! assert_eq!(job.duration_millis(), Some(10));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::JobId;

/// A moment, in milliseconds since the Unix epoch. Supplied by the
/// application's clock; the domain never reads the time itself.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum JobStatus {
    /// Submitted, waiting to start.
    Queued,
    /// Started, and waiting for a worker to be created and connect, with
    /// no segment running steps.
    Provisioning,
    /// Its pipeline is running.
    Running,
    /// Every stage passed.
    Succeeded,
    /// A step or the infrastructure failed.
    Failed {
        /// Why, for the user (a step's exit code, a worker's provisioning
        /// failure, ...).
        reason: String,
    },
    /// Cancelled.
    Aborted {
        /// Who or what cancelled it.
        reason: String,
    },
    /// A `timeout` (pipeline option or server limit) ran out.
    TimedOut,
}

/// A [`JobStatus`] without its data, for filters and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatusKind {
    /// [`JobStatus::Queued`].
    Queued,
    /// [`JobStatus::Provisioning`].
    Provisioning,
    /// [`JobStatus::Running`].
    Running,
    /// [`JobStatus::Succeeded`].
    Succeeded,
    /// [`JobStatus::Failed`].
    Failed,
    /// [`JobStatus::Aborted`].
    Aborted,
    /// [`JobStatus::TimedOut`].
    TimedOut,
}

impl JobStatusKind {
    /// The lower-case name used in messages and listings (`timed_out`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatusKind::Queued => "queued",
            JobStatusKind::Provisioning => "provisioning",
            JobStatusKind::Running => "running",
            JobStatusKind::Succeeded => "succeeded",
            JobStatusKind::Failed => "failed",
            JobStatusKind::Aborted => "aborted",
            JobStatusKind::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for JobStatusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JobStatus {
    /// The status without its data.
    pub fn kind(&self) -> JobStatusKind {
        match self {
            JobStatus::Queued => JobStatusKind::Queued,
            JobStatus::Provisioning => JobStatusKind::Provisioning,
            JobStatus::Running => JobStatusKind::Running,
            JobStatus::Succeeded => JobStatusKind::Succeeded,
            JobStatus::Failed { .. } => JobStatusKind::Failed,
            JobStatus::Aborted { .. } => JobStatusKind::Aborted,
            JobStatus::TimedOut => JobStatusKind::TimedOut,
        }
    }

    /// True once the job has ended; a final status never changes.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            JobStatus::Queued | JobStatus::Provisioning | JobStatus::Running
        )
    }

    /// Whether a job may go from `self` to `next`.
    pub fn can_become(&self, next: &JobStatus) -> bool {
        use JobStatusKind as K;
        matches!(
            (self.kind(), next.kind()),
            (
                K::Queued,
                K::Running | K::Provisioning | K::Failed | K::Aborted
            ) | (
                K::Running | K::Provisioning,
                K::Succeeded | K::Failed | K::Aborted | K::TimedOut
            ) | (K::Running, K::Provisioning)
                | (K::Provisioning, K::Running)
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobStatus::Failed { reason } | JobStatus::Aborted { reason } => {
                write!(f, "{}: {reason}", self.kind())
            }
            _ => f.write_str(self.kind().as_str()),
        }
    }
}

/// A refused job transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The status machine does not allow going from `from` to `to`.
    #[error("job {job} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The job.
        job: JobId,
        /// Its current status.
        from: JobStatusKind,
        /// The refused next status.
        to: JobStatusKind,
    },
}

/// One run of a pipeline.
///
/// Fields that the status machine guards (status and the times it sets) are
/// private; change them with [`Job::start`], [`Job::finish`] and
/// [`Job::transition`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    id: JobId,
    name: String,
    build_number: u64,
    pipeline: String,
    parameters: BTreeMap<String, String>,
    environment: BTreeMap<String, String>,
    status: JobStatus,
    created_at: Timestamp,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
}

impl Job {
    /// A queued job named `name` (`JOB_NAME`) with build number
    /// `build_number` (`BUILD_NUMBER`) that runs `pipeline` (the
    /// Jenkinsfile text).
    pub fn new(
        id: JobId,
        name: impl Into<String>,
        build_number: u64,
        pipeline: impl Into<String>,
        created_at: Timestamp,
    ) -> Self {
        Job {
            id,
            name: name.into(),
            build_number,
            pipeline: pipeline.into(),
            parameters: BTreeMap::new(),
            environment: BTreeMap::new(),
            status: JobStatus::Queued,
            created_at,
            started_at: None,
            finished_at: None,
        }
    }

    /// Sets the parameters the job was submitted with.
    pub fn with_parameters(mut self, parameters: BTreeMap<String, String>) -> Self {
        self.parameters = parameters;
        self
    }

    /// Sets the environment the job was submitted with.
    pub fn with_environment(mut self, environment: BTreeMap<String, String>) -> Self {
        self.environment = environment;
        self
    }

    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// The job's name (`JOB_NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The build number (`BUILD_NUMBER`).
    pub fn build_number(&self) -> u64 {
        self.build_number
    }

    /// The pipeline text as submitted.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Parameters given at submission.
    pub fn parameters(&self) -> &BTreeMap<String, String> {
        &self.parameters
    }

    /// Environment given at submission.
    pub fn environment(&self) -> &BTreeMap<String, String> {
        &self.environment
    }

    /// The current status.
    pub fn status(&self) -> &JobStatus {
        &self.status
    }

    /// When it was submitted.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// When it left the queue (to run or to wait for its first worker),
    /// if it did.
    pub fn started_at(&self) -> Option<Timestamp> {
        self.started_at
    }

    /// When it ended, if it did.
    pub fn finished_at(&self) -> Option<Timestamp> {
        self.finished_at
    }

    /// Milliseconds from start to end, once both happened.
    pub fn duration_millis(&self) -> Option<u64> {
        Some(self.finished_at?.millis_since(self.started_at?))
    }

    /// Moves to `next` at `now`, recording the start or end time.
    ///
    /// # Errors
    /// [`JobError::InvalidTransition`] when the status machine (see the
    /// module docs) does not allow it; the job is left unchanged.
    pub fn transition(&mut self, next: JobStatus, now: Timestamp) -> Result<(), JobError> {
        if !self.status.can_become(&next) {
            return Err(JobError::InvalidTransition {
                job: self.id.clone(),
                from: self.status.kind(),
                to: next.kind(),
            });
        }
        if matches!(next, JobStatus::Running | JobStatus::Provisioning) {
            self.started_at.get_or_insert(now);
        } else if next.is_final() {
            self.finished_at = Some(now);
        }
        self.status = next;
        Ok(())
    }

    /// Queued → Running.
    ///
    /// # Errors
    /// [`JobError::InvalidTransition`] unless the job is queued.
    pub fn start(&mut self, now: Timestamp) -> Result<(), JobError> {
        self.transition(JobStatus::Running, now)
    }

    /// Ends the job with a final status.
    ///
    /// # Errors
    /// [`JobError::InvalidTransition`] if `status` is not final or the job
    /// cannot reach it (already ended, or `Succeeded`/`TimedOut` for a job
    /// that never ran).
    pub fn finish(&mut self, status: JobStatus, now: Timestamp) -> Result<(), JobError> {
        if !status.is_final() {
            return Err(JobError::InvalidTransition {
                job: self.id.clone(),
                from: self.status.kind(),
                to: status.kind(),
            });
        }
        self.transition(status, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> JobStatus {
        JobStatus::Failed {
            reason: "exit code 2".into(),
        }
    }

    fn aborted() -> JobStatus {
        JobStatus::Aborted {
            reason: "cancelled by user".into(),
        }
    }

    fn job_in(path: &[JobStatus]) -> Job {
        let mut job = Job::new(
            JobId::new("j-1").unwrap(),
            "build",
            7,
            "pipeline {}",
            Timestamp(1),
        );
        for (i, status) in path.iter().enumerate() {
            job.transition(status.clone(), Timestamp(10 + i as u64))
                .unwrap();
        }
        job
    }

    /// Applies `next` to a job that went through `path`; `expected` is the
    /// error message, if any.
    fn check(path: &[JobStatus], next: JobStatus, expected: Result<(), &str>) {
        let mut job = job_in(path);
        let before = job.clone();
        let got = job.transition(next.clone(), Timestamp(100));
        let refused = got.is_err();
        assert_eq!(
            got.map_err(|e| e.to_string()),
            expected.map_err(str::to_owned),
            "{path:?} then {next:?}"
        );
        if refused {
            assert_eq!(job, before, "a refused transition changes nothing");
        } else {
            assert_eq!(job.status(), &next);
        }
    }

    #[test]
    fn transitions() {
        use JobStatus::{Provisioning, Queued, Running, Succeeded, TimedOut};
        check(&[], Running, Ok(()));
        check(&[], failed(), Ok(()));
        check(&[], aborted(), Ok(()));
        check(
            &[],
            Succeeded,
            Err("job j-1 cannot go from queued to succeeded"),
        );
        check(
            &[],
            TimedOut,
            Err("job j-1 cannot go from queued to timed_out"),
        );
        check(&[], Queued, Err("job j-1 cannot go from queued to queued"));
        check(&[Running], Succeeded, Ok(()));
        check(&[Running], failed(), Ok(()));
        check(&[Running], aborted(), Ok(()));
        check(&[Running], TimedOut, Ok(()));
        check(
            &[Running],
            Running,
            Err("job j-1 cannot go from running to running"),
        );
        check(
            &[Running],
            Queued,
            Err("job j-1 cannot go from running to queued"),
        );
        check(&[], Provisioning, Ok(()));
        check(&[Provisioning], Running, Ok(()));
        check(&[Running], Provisioning, Ok(()));
        check(&[Provisioning, Running, Provisioning], Running, Ok(()));
        for end in [Succeeded, failed(), aborted(), TimedOut] {
            check(&[Provisioning], end, Ok(()));
        }
        check(
            &[Provisioning],
            Provisioning,
            Err("job j-1 cannot go from provisioning to provisioning"),
        );
        check(
            &[Provisioning],
            Queued,
            Err("job j-1 cannot go from provisioning to queued"),
        );
        for end in [Succeeded, failed(), aborted(), TimedOut] {
            for next in [
                Queued,
                Provisioning,
                Running,
                Succeeded,
                failed(),
                aborted(),
                TimedOut,
            ] {
                let msg = format!("job j-1 cannot go from {} to {}", end.kind(), next.kind());
                check(&[Running, end.clone()], next, Err(&msg));
            }
        }
    }

    #[test]
    fn times_are_recorded() {
        let mut job = job_in(&[]);
        assert_eq!(job.started_at(), None);
        job.start(Timestamp(50)).unwrap();
        assert_eq!(job.started_at(), Some(Timestamp(50)));
        assert_eq!(job.duration_millis(), None);
        job.finish(failed(), Timestamp(80)).unwrap();
        assert_eq!(job.finished_at(), Some(Timestamp(80)));
        assert_eq!(job.duration_millis(), Some(30));
        assert_eq!(job.status().to_string(), "failed: exit code 2");
    }

    #[test]
    fn the_start_time_is_when_the_job_left_the_queue() {
        let mut job = job_in(&[]);
        job.transition(JobStatus::Provisioning, Timestamp(20))
            .unwrap();
        assert_eq!(job.started_at(), Some(Timestamp(20)));
        job.transition(JobStatus::Running, Timestamp(30)).unwrap();
        job.transition(JobStatus::Provisioning, Timestamp(40))
            .unwrap();
        job.transition(JobStatus::Running, Timestamp(50)).unwrap();
        assert_eq!(job.started_at(), Some(Timestamp(20)));
        job.finish(JobStatus::Succeeded, Timestamp(60)).unwrap();
        assert_eq!(job.duration_millis(), Some(40));
    }

    #[test]
    fn finish_needs_a_final_status() {
        let mut job = job_in(&[]);
        assert_eq!(
            job.finish(JobStatus::Running, Timestamp(5))
                .unwrap_err()
                .to_string(),
            "job j-1 cannot go from queued to running"
        );
        assert_eq!(job.status(), &JobStatus::Queued);
    }

    #[test]
    fn aborted_before_start_has_no_start_time() {
        let mut job = job_in(&[]);
        job.finish(aborted(), Timestamp(9)).unwrap();
        assert_eq!(job.started_at(), None);
        assert_eq!(job.finished_at(), Some(Timestamp(9)));
        assert_eq!(job.duration_millis(), None);
    }
}

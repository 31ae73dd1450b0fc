//! The [`JobRepository`] port: where jobs and their logs are kept.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use hodei_domain::{Job, JobId, JobStatusKind, StageResult, Timestamp};

use crate::worker_link::LogStream;

/// Why a job repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JobRepositoryError {
    /// No job has this id.
    #[error("no job with id \"{0}\"")]
    NotFound(JobId),
    /// The store behind the repository failed.
    #[error("job store failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Which jobs [`JobRepository::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in this status.
    pub status: Option<JobStatusKind>,
    /// Only jobs with this name.
    pub name: Option<String>,
    /// At most this many jobs (newest first); `None` for all.
    pub limit: Option<usize>,
}

/// A piece of a job's log as produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// When it was received.
    pub at: Timestamp,
    /// The step that produced it; `None` for the server's own lines
    /// (stage headers, provisioning messages).
    pub step_id: Option<String>,
    /// Which stream it came from.
    pub stream: LogStream,
    /// The bytes, as produced (not necessarily whole lines).
    pub data: Vec<u8>,
}

/// A stored [`LogChunk`] with its position in the job's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Position in the job's log, from 0, without gaps.
    pub seq: u64,
    /// The chunk.
    pub chunk: LogChunk,
}

/// A stage as seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSummary {
    /// The stage name.
    pub name: String,
    /// Its path from the top.
    pub path: Vec<String>,
    /// How it ended; `None` while it runs.
    pub result: Option<StageResult>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
}

/// What a queued job needs to run that its [`Job`] record does not hold.
/// A store that survives restarts keeps it while the job is queued, so a
/// restarted server can run the job ([`JobRepository::save_queued`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct QueuedSubmission {
    /// The pipeline file's name, for error messages (`Jenkinsfile`).
    pub file: String,
    /// The branch being built.
    pub branch: Option<String>,
    /// The workspace source as an uncompressed tar archive; empty for none.
    pub source: Arc<[u8]>,
}

impl fmt::Debug for QueuedSubmission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedSubmission")
            .field("file", &self.file)
            .field("branch", &self.branch)
            .field("source_bytes", &self.source.len())
            .finish()
    }
}

/// Stores jobs and their logs. Used as `Arc<dyn JobRepository>`.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait JobRepository: Send + Sync {
    /// Adds `job`, or replaces the job with the same id.
    async fn save(&self, job: Job) -> Result<(), JobRepositoryError>;

    /// Adds a newly queued `job` with what it needs to run. A store that
    /// survives restarts keeps `submission` until the job leaves `Queued`
    /// ([`JobRepository::queued_submission`]); the default only saves the
    /// job, for stores that forget everything on restart anyway.
    async fn save_queued(
        &self,
        job: Job,
        submission: QueuedSubmission,
    ) -> Result<(), JobRepositoryError> {
        let _ = submission;
        self.save(job).await
    }

    /// What [`JobRepository::save_queued`] kept for a job that is still
    /// queued; `None` when nothing was kept (or the job has left `Queued`).
    async fn queued_submission(
        &self,
        id: &JobId,
    ) -> Result<Option<QueuedSubmission>, JobRepositoryError> {
        let _ = id;
        Ok(None)
    }

    /// Replaces the job's stages as seen so far. The default keeps
    /// nothing, for stores that forget everything on restart anyway (the
    /// stages of a job whose journal is in memory come from the journal).
    async fn save_stages(
        &self,
        job: &JobId,
        stages: Vec<StageSummary>,
    ) -> Result<(), JobRepositoryError> {
        let _ = (job, stages);
        Ok(())
    }

    /// The stages [`JobRepository::save_stages`] kept (empty when none).
    async fn find_stages(&self, job: &JobId) -> Result<Vec<StageSummary>, JobRepositoryError> {
        let _ = job;
        Ok(Vec::new())
    }

    /// The job with this id, if any.
    async fn find_by_id(&self, id: &JobId) -> Result<Option<Job>, JobRepositoryError>;

    /// Jobs matching `filter`, newest (latest `created_at`) first.
    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, JobRepositoryError>;

    /// The next build number for jobs named `name`: 1 for the first, then
    /// one more than the last handed out.
    async fn next_build_number(&self, name: &str) -> Result<u64, JobRepositoryError>;

    /// Appends `chunk` to the job's log and returns its sequence number.
    ///
    /// # Errors
    /// [`JobRepositoryError::NotFound`] if the job is unknown.
    async fn append_log(&self, job: &JobId, chunk: LogChunk) -> Result<u64, JobRepositoryError>;

    /// Up to `limit` log entries of the job starting at sequence number
    /// `from`, in order.
    ///
    /// # Errors
    /// [`JobRepositoryError::NotFound`] if the job is unknown.
    async fn read_logs(
        &self,
        job: &JobId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, JobRepositoryError>;
}

//! The port through which use cases talk to a connected worker.
//!
//! A worker connects to the server over some transport (gRPC in the `hodei`
//! binary) and is then reachable through a [`WorkerGateway`]. The pipeline
//! runner walks stages, `when`, `post`, `retry`, `timeout`, `dir`, `withEnv`,
//! `echo`, `error` and `sleep` itself and sends only *leaf actions* (a shell
//! script, a file to write) to the worker through its [`WorkerLink`]. Several
//! actions may be in flight on one link at once (parallel branches sharing a
//! worker).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hodei_domain::{JobId, TemplateId, WorkerId};

/// What a worker is asked to do for one leaf step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepAction {
    /// Run `script` with `sh -e -c`.
    Sh {
        /// The script, already interpolated.
        script: String,
    },
    /// Write `text` to `path` (relative to the step's directory).
    WriteFile {
        /// Destination, relative to the step's directory.
        path: String,
        /// Content.
        text: String,
    },
}

/// One leaf step sent to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRequest {
    /// Unique within the job; log lines and results refer to it.
    pub step_id: String,
    /// Name of the stage the step belongs to, for log headers.
    pub stage: String,
    /// What to do.
    pub action: StepAction,
    /// The full, layered environment of the step (pipeline, stage, `withEnv`,
    /// build variables). The worker adds `WORKSPACE` and `WORKER_NAME`.
    pub environment: BTreeMap<String, String>,
    /// Directory relative to the job's workspace (`dir` steps); empty for the
    /// workspace itself.
    pub dir: String,
}

/// The job segment a worker is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The job.
    pub job_id: JobId,
    /// The job's name (`JOB_NAME`).
    pub job_name: String,
    /// The job's build number (`BUILD_NUMBER`).
    pub build_number: u64,
    /// The segment of the job's plan this worker runs.
    pub segment_id: String,
    /// The workspace source as a tar archive; empty for none.
    pub source: Arc<[u8]>,
    /// `options { skipDefaultCheckout() }`: do not unpack the source.
    pub skip_checkout: bool,
}

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Produced by the server itself (`echo`, stage headers, provisioning).
    System,
}

/// How a leaf step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Exit status 0.
    Success,
    /// The script ran and exited non-zero.
    Failed {
        /// The exit code (or 128 + signal).
        exit_code: i32,
    },
    /// Cancelled at the server's request.
    Cancelled,
    /// The worker could not run the step (bad directory, spawn failure...).
    Error {
        /// What went wrong, in the worker's words.
        message: String,
    },
}

/// Receives a step's output as the worker produces it.
pub trait LogSink: Send + Sync {
    /// Called for each chunk of output, in order per step.
    fn log(&self, step_id: &str, stream: LogStream, data: &[u8]);
}

/// Failure of the link itself, not of the step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The worker disconnected or stopped answering heartbeats.
    #[error("worker {worker} was lost: {reason}")]
    Lost {
        /// The lost worker.
        worker: WorkerId,
        /// Why it is considered lost.
        reason: String,
    },
    /// The worker did not connect before the deadline.
    #[error("worker {worker} did not connect within {after:?}")]
    NotConnected {
        /// The worker that was waited for.
        worker: WorkerId,
        /// How long was waited.
        after: Duration,
    },
}

/// A connected worker, bound to one job segment.
#[async_trait]
pub trait WorkerLink: Send + Sync + fmt::Debug {
    /// The worker on the other end.
    fn worker_id(&self) -> &WorkerId;

    /// The template the worker was created from; `None` for a static
    /// worker (and for links that do not know it).
    fn template_id(&self) -> Option<&TemplateId> {
        None
    }

    /// Binds the worker to a job segment and hands it the workspace source;
    /// returns once the worker has unpacked it and is ready for steps.
    async fn assign(&self, assignment: Assignment) -> Result<(), LinkError>;

    /// Runs one leaf step, streaming its output to `sink`; returns when the
    /// step has ended. Dropping the future does not stop the step: use
    /// [`WorkerLink::cancel_step`].
    async fn run_step(
        &self,
        request: StepRequest,
        sink: Arc<dyn LogSink>,
    ) -> Result<StepOutcome, LinkError>;

    /// Asks the worker to kill a running step (its whole process group).
    async fn cancel_step(&self, step_id: &str, reason: &str) -> Result<(), LinkError>;

    /// Tells the worker its segment is over; an ephemeral worker exits.
    async fn shutdown(&self, reason: &str) -> Result<(), LinkError>;
}

/// Where connected workers are found.
#[async_trait]
pub trait WorkerGateway: Send + Sync {
    /// Waits until `worker` has connected with a valid token, for at most
    /// `deadline`.
    async fn wait_connected(
        &self,
        worker: &WorkerId,
        deadline: Duration,
    ) -> Result<Arc<dyn WorkerLink>, LinkError>;
}

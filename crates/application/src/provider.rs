//! The [`WorkerProvider`] port: how the pipeline runner gets a worker for an
//! agent segment and gives it back.
//!
//! The runner knows nothing of templates, backends or caps: it asks for a
//! worker for a [`SegmentRequest`] and receives a connected, assigned
//! [`WorkerLink`]; when the segment is over it releases the worker, which is
//! then destroyed at once (ephemeral) or returned to the idle pool (static).
//! `EphemeralWorkerManager` is the implementation.

use std::sync::Arc;

use async_trait::async_trait;
use hodei_domain::pipeline::{AgentKind, Segment};
use hodei_domain::{JobId, WorkerId};

use crate::worker_link::WorkerLink;

/// What the runner asks a worker for.
#[derive(Debug, Clone)]
pub struct SegmentRequest {
    /// The job.
    pub job_id: JobId,
    /// The job's name (`JOB_NAME`).
    pub job_name: String,
    /// The job's build number (`BUILD_NUMBER`).
    pub build_number: u64,
    /// The agent segment (its agent says which worker is needed).
    pub segment: Segment,
    /// The workspace source as a tar archive; empty for none.
    pub source: Arc<[u8]>,
    /// `options { skipDefaultCheckout() }`.
    pub skip_checkout: bool,
}

/// Why no worker could be had for a segment. Each message is meant for the
/// user reading the job's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    /// No template (and no static worker) can satisfy the agent; the message
    /// lists every template with the reason it was rejected.
    #[error("no worker template matches {agent}: {reasons}")]
    NoMatch {
        /// The agent, as written.
        agent: String,
        /// Every template with its rejection reason.
        reasons: String,
    },
    /// The backend could not start the worker, or it died before connecting;
    /// the reason is the backend's own.
    #[error("worker {worker} could not be provisioned: {reason}")]
    Failed {
        /// The worker that was being created.
        worker: WorkerId,
        /// The backend's reason (exit status and last lines, pod reason...).
        reason: String,
    },
    /// The worker did not connect before the provisioning deadline.
    #[error("worker {worker} did not connect within {seconds}s")]
    DeadlineExceeded {
        /// The worker that was waited for.
        worker: WorkerId,
        /// The deadline, in seconds.
        seconds: u64,
    },
    /// The job was cancelled while its worker was being provisioned.
    #[error("cancelled while provisioning")]
    Cancelled,
}

/// Hands out workers for agent segments.
#[async_trait]
pub trait WorkerProvider: Send + Sync {
    /// Gets a worker for `request`: an idle matching static worker, else a
    /// new ephemeral one (waiting, not failing, while caps are reached). The
    /// returned link has been assigned the segment and unpacked the source.
    ///
    /// Dropping the future cancels the provisioning (a cancelled job): the
    /// provider deletes whatever it had started and no worker is left bound
    /// to the segment; the pipeline runner relies on this.
    async fn acquire(&self, request: SegmentRequest)
    -> Result<Arc<dyn WorkerLink>, ProvisionError>;

    /// Whether a worker for `agent` can be had at all (a template or a
    /// registered static worker matches), without creating anything: a
    /// submission is refused at plan time with the reason when not. Caps
    /// that are reached do not count: they only make the segment wait. The
    /// default says yes.
    async fn check(&self, agent: &AgentKind) -> Result<(), ProvisionError> {
        let _ = agent;
        Ok(())
    }

    /// Gives a worker back after its segment: an ephemeral worker is told to
    /// stop and its backend object deleted right away. Never fails: a
    /// deletion error is logged, published as an event, and left to the
    /// orphan collector.
    async fn release(&self, worker: &WorkerId, reason: &str);
}

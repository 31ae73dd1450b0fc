//! The [`IdGenerator`] port: fresh ids and secrets. Randomness lives in the
//! adapter; the application only asks.

use hodei_domain::{JobId, WorkerId};

use crate::orchestrator::OneTimeToken;

/// Makes fresh identifiers and one-time tokens. Used as
/// `Arc<dyn IdGenerator>`.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait IdGenerator: Send + Sync {
    /// A job id never handed out before.
    fn new_job_id(&self) -> JobId;

    /// A worker id never handed out before.
    fn new_worker_id(&self) -> WorkerId;

    /// A fresh, unguessable one-time registration token.
    fn new_token(&self) -> OneTimeToken;
}

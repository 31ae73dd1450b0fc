//! The [`WorkerRepository`] port: where the server records its workers.

use async_trait::async_trait;
use hodei_domain::{Worker, WorkerId};

/// Why a worker repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerRepositoryError {
    /// No worker has this id.
    #[error("no worker with id \"{0}\"")]
    NotFound(WorkerId),
    /// The store behind the repository failed.
    #[error("worker store failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Stores worker records, ephemeral and static. Used as
/// `Arc<dyn WorkerRepository>`.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait WorkerRepository: Send + Sync {
    /// Adds `worker`, or replaces the record with the same id.
    async fn save(&self, worker: Worker) -> Result<(), WorkerRepositoryError>;

    /// The worker with this id, if any.
    async fn find_by_id(&self, id: &WorkerId) -> Result<Option<Worker>, WorkerRepositoryError>;

    /// Every recorded worker, oldest first.
    async fn list(&self) -> Result<Vec<Worker>, WorkerRepositoryError>;

    /// Forgets the worker. Idempotent: an unknown id is `Ok`.
    async fn delete(&self, id: &WorkerId) -> Result<(), WorkerRepositoryError>;

    /// Static workers that are connected and run nothing, oldest first.
    async fn find_idle_static(&self) -> Result<Vec<Worker>, WorkerRepositoryError>;
}

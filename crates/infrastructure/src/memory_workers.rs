//! [`InMemoryWorkerRepository`]: worker records in memory.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use hodei_application::workers::{WorkerRepository, WorkerRepositoryError};
use hodei_domain::{Worker, WorkerId};

/// Keeps worker records in memory; nothing survives a restart.
#[derive(Debug, Default)]
pub struct InMemoryWorkerRepository {
    workers: Mutex<BTreeMap<WorkerId, Worker>>,
}

impl InMemoryWorkerRepository {
    /// An empty repository.
    pub fn new() -> Self {
        Self::default()
    }

    fn workers(&self) -> MutexGuard<'_, BTreeMap<WorkerId, Worker>> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sorted(&self, keep: impl Fn(&Worker) -> bool) -> Vec<Worker> {
        let mut list: Vec<Worker> = self
            .workers()
            .values()
            .filter(|w| keep(w))
            .cloned()
            .collect();
        list.sort_by(|a, b| {
            a.created_at()
                .cmp(&b.created_at())
                .then_with(|| a.id().cmp(b.id()))
        });
        list
    }
}

#[async_trait]
impl WorkerRepository for InMemoryWorkerRepository {
    async fn save(&self, worker: Worker) -> Result<(), WorkerRepositoryError> {
        self.workers().insert(worker.id().clone(), worker);
        Ok(())
    }

    async fn find_by_id(&self, id: &WorkerId) -> Result<Option<Worker>, WorkerRepositoryError> {
        Ok(self.workers().get(id).cloned())
    }

    async fn list(&self) -> Result<Vec<Worker>, WorkerRepositoryError> {
        Ok(self.sorted(|_| true))
    }

    async fn delete(&self, id: &WorkerId) -> Result<(), WorkerRepositoryError> {
        self.workers().remove(id);
        Ok(())
    }

    async fn find_idle_static(&self) -> Result<Vec<Worker>, WorkerRepositoryError> {
        Ok(self.sorted(Worker::is_idle_static))
    }
}

#[cfg(test)]
mod tests {
    use hodei_domain::{JobId, TemplateId, Timestamp, WorkerState};

    use super::*;

    fn ids(workers: &[Worker]) -> Vec<&str> {
        workers.iter().map(|w| w.id().as_str()).collect()
    }

    #[tokio::test]
    async fn records_round_trip() {
        let repo = InMemoryWorkerRepository::new();
        let mut e = Worker::ephemeral(
            WorkerId::new("e-1").unwrap(),
            "e",
            TemplateId::new("go-build").unwrap(),
            JobId::new("j").unwrap(),
            "1",
            Timestamp(5),
        );
        let s2 =
            Worker::registered_static(WorkerId::new("s-2").unwrap(), "s2", ["linux"], Timestamp(2));
        let mut s3 =
            Worker::registered_static(WorkerId::new("s-3").unwrap(), "s3", ["linux"], Timestamp(3));
        s3.assign(JobId::new("j").unwrap(), Timestamp(4)).unwrap();
        for w in [e.clone(), s3.clone(), s2.clone()] {
            repo.save(w).await.unwrap();
        }
        assert_eq!(ids(&repo.list().await.unwrap()), ["s-2", "s-3", "e-1"]);
        assert_eq!(ids(&repo.find_idle_static().await.unwrap()), ["s-2"]);

        e.transition(WorkerState::Provisioning, Timestamp(6))
            .unwrap();
        repo.save(e.clone()).await.unwrap();
        assert_eq!(repo.find_by_id(e.id()).await.unwrap(), Some(e.clone()));

        repo.delete(e.id()).await.unwrap();
        repo.delete(e.id()).await.unwrap();
        assert_eq!(repo.find_by_id(e.id()).await.unwrap(), None);
        assert_eq!(ids(&repo.list().await.unwrap()), ["s-2", "s-3"]);
    }
}

//! [`InMemoryJobRepository`]: jobs and their logs in memory, for tests and
//! the embedded server.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use hodei_application::jobs::{JobFilter, JobRepository, JobRepositoryError, LogChunk, LogEntry};
use hodei_domain::{Job, JobId};

/// Keeps jobs and their whole logs in memory; nothing survives a restart.
#[derive(Debug, Default)]
pub struct InMemoryJobRepository {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    jobs: BTreeMap<JobId, Entry>,
    build_numbers: HashMap<String, u64>,
}

#[derive(Debug)]
struct Entry {
    job: Job,
    logs: Vec<LogEntry>,
}

impl InMemoryJobRepository {
    /// An empty repository.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl JobRepository for InMemoryJobRepository {
    async fn save(&self, job: Job) -> Result<(), JobRepositoryError> {
        let mut state = self.state();
        let counter = state
            .build_numbers
            .entry(job.name().to_owned())
            .or_default();
        *counter = (*counter).max(job.build_number());
        match state.jobs.get_mut(job.id()) {
            Some(entry) => entry.job = job,
            None => {
                state.jobs.insert(
                    job.id().clone(),
                    Entry {
                        job,
                        logs: Vec::new(),
                    },
                );
            }
        }
        Ok(())
    }

    async fn find_by_id(&self, id: &JobId) -> Result<Option<Job>, JobRepositoryError> {
        Ok(self.state().jobs.get(id).map(|e| e.job.clone()))
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, JobRepositoryError> {
        let state = self.state();
        let mut jobs: Vec<&Job> = state
            .jobs
            .values()
            .map(|e| &e.job)
            .filter(|j| filter.status.is_none_or(|s| j.status().kind() == s))
            .filter(|j| filter.name.as_deref().is_none_or(|n| j.name() == n))
            .collect();
        jobs.sort_by(|a, b| {
            b.created_at()
                .cmp(&a.created_at())
                .then_with(|| b.id().cmp(a.id()))
        });
        let limit = filter.limit.unwrap_or(usize::MAX);
        Ok(jobs.into_iter().take(limit).cloned().collect())
    }

    async fn next_build_number(&self, name: &str) -> Result<u64, JobRepositoryError> {
        let mut state = self.state();
        let counter = state.build_numbers.entry(name.to_owned()).or_default();
        *counter += 1;
        Ok(*counter)
    }

    async fn append_log(&self, job: &JobId, chunk: LogChunk) -> Result<u64, JobRepositoryError> {
        let mut state = self.state();
        let entry = state
            .jobs
            .get_mut(job)
            .ok_or_else(|| JobRepositoryError::NotFound(job.clone()))?;
        let seq = entry.logs.len() as u64;
        entry.logs.push(LogEntry { seq, chunk });
        Ok(seq)
    }

    async fn read_logs(
        &self,
        job: &JobId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, JobRepositoryError> {
        let state = self.state();
        let entry = state
            .jobs
            .get(job)
            .ok_or_else(|| JobRepositoryError::NotFound(job.clone()))?;
        let start = usize::try_from(from).unwrap_or(usize::MAX);
        Ok(entry.logs.iter().skip(start).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use hodei_application::worker_link::LogStream;
    use hodei_domain::{JobStatus, JobStatusKind, Timestamp};

    use super::*;

    fn job(id: &str, name: &str, created: u64) -> Job {
        Job::new(
            JobId::new(id).unwrap(),
            name,
            1,
            "pipeline {}",
            Timestamp(created),
        )
    }

    async fn repo() -> InMemoryJobRepository {
        let repo = InMemoryJobRepository::new();
        repo.save(job("a", "build", 1)).await.unwrap();
        let mut b = job("b", "deploy", 2);
        b.start(Timestamp(3)).unwrap();
        repo.save(b).await.unwrap();
        repo.save(job("c", "build", 3)).await.unwrap();
        repo
    }

    async fn check(filter: JobFilter, expected: &[&str]) {
        let repo = repo().await;
        let got: Vec<String> = repo
            .list(&filter)
            .await
            .unwrap()
            .iter()
            .map(|j| j.id().to_string())
            .collect();
        assert_eq!(got, expected, "{filter:?}");
    }

    #[tokio::test]
    async fn list_filters_newest_first() {
        check(JobFilter::default(), &["c", "b", "a"]).await;
        check(
            JobFilter {
                limit: Some(2),
                ..JobFilter::default()
            },
            &["c", "b"],
        )
        .await;
        check(
            JobFilter {
                name: Some("build".into()),
                ..JobFilter::default()
            },
            &["c", "a"],
        )
        .await;
        check(
            JobFilter {
                status: Some(JobStatusKind::Running),
                ..JobFilter::default()
            },
            &["b"],
        )
        .await;
        check(
            JobFilter {
                status: Some(JobStatusKind::Succeeded),
                ..JobFilter::default()
            },
            &[],
        )
        .await;
    }

    #[tokio::test]
    async fn save_replaces_and_keeps_logs() {
        let repo = repo().await;
        let id = JobId::new("a").unwrap();
        repo.append_log(&id, chunk("one")).await.unwrap();
        let mut a = repo.find_by_id(&id).await.unwrap().unwrap();
        a.finish(
            JobStatus::Aborted {
                reason: "cancelled".into(),
            },
            Timestamp(9),
        )
        .unwrap();
        repo.save(a.clone()).await.unwrap();
        assert_eq!(repo.find_by_id(&id).await.unwrap(), Some(a));
        assert_eq!(repo.read_logs(&id, 0, 10).await.unwrap().len(), 1);
        assert_eq!(
            repo.find_by_id(&JobId::new("zz").unwrap()).await.unwrap(),
            None
        );
    }

    fn chunk(text: &str) -> LogChunk {
        LogChunk {
            at: Timestamp(5),
            step_id: Some("s1".into()),
            stream: LogStream::Stdout,
            data: text.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn logs_are_sequenced_and_paged() {
        let repo = repo().await;
        let id = JobId::new("b").unwrap();
        for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
            assert_eq!(repo.append_log(&id, chunk(text)).await.unwrap(), i as u64);
        }
        let page: Vec<(u64, Vec<u8>)> = repo
            .read_logs(&id, 1, 5)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, e.chunk.data))
            .collect();
        assert_eq!(page, [(1, b"two".to_vec()), (2, b"three".to_vec())]);
        assert!(repo.read_logs(&id, 3, 5).await.unwrap().is_empty());
        assert_eq!(repo.read_logs(&id, 0, 1).await.unwrap().len(), 1);
        let unknown = JobId::new("nope").unwrap();
        assert_eq!(
            repo.append_log(&unknown, chunk("x"))
                .await
                .unwrap_err()
                .to_string(),
            "no job with id \"nope\""
        );
        assert!(repo.read_logs(&unknown, 0, 1).await.is_err());
    }

    #[tokio::test]
    async fn build_numbers_count_per_name() {
        let repo = InMemoryJobRepository::new();
        assert_eq!(repo.next_build_number("build").await.unwrap(), 1);
        assert_eq!(repo.next_build_number("build").await.unwrap(), 2);
        assert_eq!(repo.next_build_number("deploy").await.unwrap(), 1);
        let restored = Job::new(
            JobId::new("x").unwrap(),
            "deploy",
            41,
            "pipeline {}",
            Timestamp(1),
        );
        repo.save(restored).await.unwrap();
        assert_eq!(repo.next_build_number("deploy").await.unwrap(), 42);
    }
}

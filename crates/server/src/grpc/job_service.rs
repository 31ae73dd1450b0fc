//! `JobService`: submit, watch, get, list and cancel jobs, over the
//! [`CreateAndExecuteJob`] use case.

use std::pin::Pin;
use std::sync::Arc;

use hodei_application::jobs::{JobFilter, JobRepository};
use hodei_application::submit::{CreateAndExecuteJob, JobsError, Submission};
use hodei_domain::JobId;
use hodei_infrastructure::source::SourceError;
use hodei_proto::v1::job_service_server::{JobService, JobServiceServer};
use hodei_proto::v1::{self as pb, submit_request};
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use super::convert;

/// Jobs listed when the request gives no limit.
const DEFAULT_LIST_LIMIT: usize = 100;

/// Most bytes of encoded events one `Watch` stream queues ahead of a slow
/// client (an event larger than this is queued alone). With the page of
/// stored log the watcher may hold, this bounds what one stream costs.
pub const WATCH_QUEUE_BYTES: usize = 256 * 1024;

/// The tonic implementation of `JobService`.
#[derive(Clone)]
pub struct JobServiceImpl {
    jobs: CreateAndExecuteJob,
    repository: Arc<dyn JobRepository>,
    max_source_bytes: u64,
}

impl std::fmt::Debug for JobServiceImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobServiceImpl")
            .field("max_source_bytes", &self.max_source_bytes)
            .finish_non_exhaustive()
    }
}

impl JobServiceImpl {
    /// The service over `jobs`, reading stored jobs from `repository`, and
    /// refusing sources larger than `max_source_bytes`.
    pub fn new(
        jobs: CreateAndExecuteJob,
        repository: Arc<dyn JobRepository>,
        max_source_bytes: u64,
    ) -> Self {
        JobServiceImpl {
            jobs,
            repository,
            max_source_bytes,
        }
    }

    /// As a tonic service.
    pub fn into_service(self) -> JobServiceServer<Self> {
        JobServiceServer::new(self)
    }
}

/// The sending end of [`event_queue`].
struct EventSender {
    tx: mpsc::UnboundedSender<(pb::JobEvent, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    max: usize,
}

impl EventSender {
    /// Queues `event` once the queue has room for its encoded size; `false`
    /// when the stream is gone.
    async fn send(&self, event: pb::JobEvent) -> bool {
        let size = event.encoded_len().clamp(1, self.max);
        let Ok(permit) = self
            .budget
            .clone()
            .acquire_many_owned(u32::try_from(size).unwrap_or(u32::MAX))
            .await
        else {
            return false;
        };
        self.tx.send((event, permit)).is_ok()
    }
}

/// A queue of events holding at most `bytes` of them (encoded), or one
/// larger event alone: each event holds permits for its size until the
/// stream hands it on.
fn event_queue(bytes: usize) -> (EventSender, WatchEvents) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(bytes));
    let events = UnboundedReceiverStream::new(rx).map(|(event, permit)| {
        drop(permit);
        Ok(event)
    });
    (
        EventSender {
            tx,
            budget,
            max: bytes,
        },
        Box::pin(events),
    )
}

type WatchEvents = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

fn status_of(error: JobsError) -> Status {
    match error {
        JobsError::InvalidName(_)
        | JobsError::Invalid(_)
        | JobsError::Unsatisfiable { .. }
        | JobsError::UnknownCredentials { .. } => Status::invalid_argument(error.to_string()),
        JobsError::TooLarge { .. } => Status::resource_exhausted(error.to_string()),
        JobsError::NotFound(_) => Status::not_found(error.to_string()),
        JobsError::ShuttingDown => Status::unavailable(error.to_string()),
        JobsError::Store(_) => {
            tracing::error!(error = %error, "job store failed");
            Status::internal(error.to_string())
        }
    }
}

fn job_id(value: &str) -> Result<JobId, Status> {
    JobId::new(value).map_err(|e| Status::invalid_argument(format!("job_id: {e}")))
}

/// The job name when the header gives none: the pipeline file's directory.
fn default_name(path: &str) -> String {
    let path = std::path::Path::new(path);
    path.parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("pipeline")
        .to_owned()
}

#[tonic::async_trait]
impl JobService for JobServiceImpl {
    async fn submit(
        &self,
        request: Request<Streaming<pb::SubmitRequest>>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::SubmitRequest {
                part: Some(submit_request::Part::Header(header)),
            }) => header,
            _ => {
                return Err(Status::invalid_argument(
                    "expected the submit header as the first message",
                ));
            }
        };
        if header.source_size > self.max_source_bytes {
            return Err(Status::resource_exhausted(format!(
                "source_size: the source archive has {} bytes, more than the server's limit of {} bytes",
                header.source_size, self.max_source_bytes
            )));
        }
        let expected = usize::try_from(header.source_size)
            .map_err(|_| Status::resource_exhausted("source_size: too large"))?;
        let mut source = Vec::with_capacity(expected);
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(submit_request::Part::Source(chunk)) => {
                    if source.len() + chunk.data.len() > expected {
                        return Err(Status::invalid_argument(format!(
                            "source: received more than the announced source_size of {expected} bytes"
                        )));
                    }
                    source.extend_from_slice(&chunk.data);
                }
                Some(submit_request::Part::Header(_)) => {
                    return Err(Status::invalid_argument(
                        "header: expected one header, at the start",
                    ));
                }
                None => {
                    return Err(Status::invalid_argument(
                        "expected a header or a source chunk",
                    ));
                }
            }
        }
        if source.len() != expected {
            return Err(Status::invalid_argument(format!(
                "source: received {} bytes, expected source_size {expected}",
                source.len()
            )));
        }
        if !source.is_empty() {
            // Refused here, not on every worker: a bad archive would fail
            // each checkout of the job.
            match hodei_infrastructure::source::check_archive(&source, self.max_source_bytes) {
                Ok(_) => {}
                Err(e @ SourceError::ArchiveTooLarge { .. }) => {
                    return Err(Status::resource_exhausted(e.to_string()));
                }
                Err(e) => return Err(Status::invalid_argument(e.to_string())),
            }
        }
        let file = if header.pipeline_path.is_empty() {
            "Jenkinsfile".to_owned()
        } else {
            header.pipeline_path.clone()
        };
        let name = if header.pipeline_name.is_empty() {
            default_name(&file)
        } else {
            header.pipeline_name
        };
        let environment: std::collections::BTreeMap<String, String> =
            header.environment.into_iter().collect();
        let branch = environment.get("BRANCH_NAME").cloned();
        let submission = Submission {
            name,
            file,
            pipeline: header.pipeline_text,
            parameters: header.parameters.into_iter().collect(),
            environment,
            source,
            branch,
        };
        let submitted = self.jobs.submit(submission).await.map_err(status_of)?;
        Ok(Response::new(pb::SubmitResponse {
            job_id: submitted.job_id.to_string(),
            build_number: submitted.build_number,
        }))
    }

    type WatchStream = WatchEvents;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        let id = job_id(&request.job_id)?;
        let mut watch = self
            .jobs
            .watch(&id, request.from_sequence)
            .await
            .map_err(status_of)?;
        let (tx, events) = event_queue(WATCH_QUEUE_BYTES);
        tokio::spawn(async move {
            while let Some(update) = watch.next().await {
                if !tx.send(convert::update_to_proto(update)).await {
                    break;
                }
            }
        });
        Ok(Response::new(events))
    }

    async fn get(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = job_id(&request.into_inner().job_id)?;
        let job = self
            .repository
            .find_by_id(&id)
            .await
            .map_err(|e| status_of(e.into()))?
            .ok_or_else(|| status_of(JobsError::NotFound(id.clone())))?;
        let stages = self.jobs.stages(&id).await;
        Ok(Response::new(convert::job_to_proto(&job, &stages)))
    }

    async fn list(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let request = request.into_inner();
        let mut statuses = Vec::new();
        for status in &request.statuses {
            match convert::job_status_kind_from_proto(*status) {
                Some(kind) => statuses.push(kind),
                None if *status == pb::JobStatus::Provisioning as i32 => {}
                None => {
                    return Err(Status::invalid_argument(format!(
                        "statuses: unknown job status {status}"
                    )));
                }
            }
        }
        let limit = if request.limit == 0 {
            DEFAULT_LIST_LIMIT
        } else {
            request.limit as usize
        };
        let filter = JobFilter {
            status: if statuses.len() == 1 {
                Some(statuses[0])
            } else {
                None
            },
            name: None,
            limit: if statuses.len() > 1 {
                None
            } else {
                Some(limit)
            },
        };
        let jobs = self
            .repository
            .list(&filter)
            .await
            .map_err(|e| status_of(e.into()))?;
        let mut listed = Vec::new();
        for job in jobs
            .iter()
            .filter(|j| request.statuses.is_empty() || statuses.contains(&j.status().kind()))
            .take(limit)
        {
            let stages = self.jobs.stages(job.id()).await;
            listed.push(convert::job_to_proto(job, &stages));
        }
        let jobs = listed;
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let request = request.into_inner();
        let id = job_id(&request.job_id)?;
        let reason = if request.reason.is_empty() {
            "cancelled by the user".to_owned()
        } else {
            request.reason
        };
        let status = self.jobs.cancel(&id, &reason).await.map_err(status_of)?;
        let (status, _) = convert::job_status_to_proto(&status);
        Ok(Response::new(pb::CancelJobResponse {
            status: status as i32,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(bytes: usize) -> pb::JobEvent {
        pb::JobEvent {
            sequence: 1,
            kind: Some(pb::job_event::Kind::Log(pb::LogLine {
                text: "x".repeat(bytes),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_watch_queue_holds_a_bounded_number_of_bytes() {
        let (tx, mut events) = event_queue(10_000);
        let tx = Arc::new(tx);
        assert!(tx.send(line(4_000)).await);
        assert!(tx.send(line(4_000)).await);
        // A third line does not fit until the client takes one.
        let third = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(line(4_000)).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!third.is_finished());
        assert!(tx.budget.available_permits() < 4_000);
        events.next().await.unwrap().unwrap();
        assert!(third.await.unwrap());
        // An event larger than the whole queue goes alone.
        events.next().await.unwrap().unwrap();
        events.next().await.unwrap().unwrap();
        assert!(tx.send(line(50_000)).await);
        assert_eq!(tx.budget.available_permits(), 0);
        events.next().await.unwrap().unwrap();
        assert_eq!(tx.budget.available_permits(), 10_000);
        // A gone client ends the sender.
        drop(events);
        assert!(!tx.send(line(1)).await);
    }

    #[test]
    fn default_names() {
        fn check(path: &str, expected: &str) {
            assert_eq!(default_name(path), expected);
        }
        check("examples/hello/Jenkinsfile", "hello");
        check("Jenkinsfile", "pipeline");
        check("/Jenkinsfile", "pipeline");
        check("", "pipeline");
    }
}

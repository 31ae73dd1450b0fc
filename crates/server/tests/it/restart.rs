//! A server started on the data directory of one that ended without
//! cleaning up (killed, crashed): what its store says is taken over.

use std::sync::Arc;

use hodei_application::jobs::{JobRepository, LogChunk, QueuedSubmission};
use hodei_application::worker_link::LogStream;
use hodei_application::workers::WorkerRepository;
use hodei_domain::{Job, JobId, TemplateId, Timestamp, Worker, WorkerId};
use hodei_infrastructure::SqliteStore;
use hodei_proto::v1 as pb;
use hodei_proto::v1::admin_service_client::AdminServiceClient;
use hodei_server::app::{RESTART_REASON, Server};

use super::support;

const PIPELINE: &str =
    "pipeline { agent any\n stages { stage('Read') { steps { sh 'cat greeting.txt' } } } }\n";

#[test]
fn queued_jobs_run_again_running_ones_fail_and_recorded_workers_go() {
    support::run(async {
        let data = tempfile::tempdir().unwrap();
        let settings = support::settings(data.path());
        {
            let store = SqliteStore::open(settings.store_path()).unwrap();
            let queued = Job::new(
                JobId::new("queued-1").unwrap(),
                "restart",
                1,
                PIPELINE,
                Timestamp(1),
            );
            let source = support::source(&[("greeting.txt", "hello again\n")]);
            store
                .save_queued(
                    queued,
                    QueuedSubmission {
                        file: "Jenkinsfile".into(),
                        branch: None,
                        source: Arc::from(source),
                    },
                )
                .await
                .unwrap();
            let mut running = Job::new(
                JobId::new("running-1").unwrap(),
                "restart",
                2,
                PIPELINE,
                Timestamp(2),
            );
            running.start(Timestamp(3)).unwrap();
            JobRepository::save(&store, running.clone()).await.unwrap();
            let line = LogChunk {
                at: Timestamp(4),
                step_id: Some("1".into()),
                stream: LogStream::Stdout,
                data: b"written before the crash\n".to_vec(),
            };
            store.append_log(running.id(), line).await.unwrap();
            let worker = Worker::ephemeral(
                WorkerId::new("w-of-the-previous-run").unwrap(),
                "hodei-local-w",
                TemplateId::new("local").unwrap(),
                running.id().clone(),
                "1",
                Timestamp(3),
            );
            WorkerRepository::save(&store, worker).await.unwrap();
        }

        let handle = Server::start(settings).await.unwrap();
        let server = support::TestServer::adopt(handle, data);
        let mut jobs = server.jobs().await;

        let queued = support::watch(&mut jobs, "queued-1", 0).await;
        assert_eq!(
            queued.status.clone().unwrap().0,
            pb::JobStatus::Success,
            "{:#?}",
            queued.lines
        );
        assert!(queued.has_line("hello again"), "{:#?}", queued.lines);

        let running = support::watch(&mut jobs, "running-1", 0).await;
        assert_eq!(
            running.status.clone().unwrap(),
            (pb::JobStatus::Failure, RESTART_REASON.to_owned())
        );
        assert!(
            running.has_line("written before the crash"),
            "{:#?}",
            running.lines
        );

        // The next build of the name follows the stored ones.
        let messages = support::submission(
            "restart",
            PIPELINE,
            support::source(&[("greeting.txt", "3\n")]),
        );
        let submitted = jobs
            .submit(tokio_stream::iter(messages))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(submitted.build_number, 3);
        let job = jobs
            .get(pb::GetJobRequest {
                job_id: submitted.job_id,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(job.build_number, 3);

        let mut admin = AdminServiceClient::new(server.channel().await);
        let workers = admin
            .list_workers(pb::ListWorkersRequest {})
            .await
            .unwrap()
            .into_inner()
            .workers;
        assert!(
            workers.iter().all(|w| w.id != "w-of-the-previous-run"),
            "{workers:#?}"
        );
        server.stop().await;
    });
}

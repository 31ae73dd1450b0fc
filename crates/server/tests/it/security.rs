//! What the server refuses and hides: the client API's bearer token and
//! the one-time tokens of workers.

use hodei_proto::v1 as pb;
use hodei_proto::v1::admin_service_client::AdminServiceClient;
use hodei_proto::v1::job_service_client::JobServiceClient;
use hodei_server::config::Secret;
use tonic::metadata::MetadataValue;

use super::cli_run::{hodei, tag};
use super::support::{Watched, record, run, start_with, submission, submit, watch};

const CLIENT_TOKEN: &str = "cl1ent-t0ken-value";

/// A request carrying `token` as its bearer token (none when `None`).
fn request<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

#[test]
fn the_client_api_requires_the_bearer_token_and_never_echoes_it() {
    run(async {
        let server = start_with(|s| s.client_token = Secret::new(CLIENT_TOKEN)).await;
        let channel = server.channel().await;
        let mut jobs = JobServiceClient::new(channel.clone());
        let mut admin = AdminServiceClient::new(channel);

        for (token, expected) in [
            (None, "requires a bearer token"),
            (Some("cl1ent-t0ken-valuE"), "wrong bearer token"),
            (Some(""), "wrong bearer token"),
        ] {
            let refused = jobs
                .list(request(pb::ListJobsRequest::default(), token))
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
            assert!(refused.message().contains(expected), "{refused:?}");
            let refused = admin
                .list_workers(request(pb::ListWorkersRequest {}, token))
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
            for said in [refused.message(), &format!("{refused:?}")] {
                assert!(!said.contains("t0ken"), "{said}");
            }
        }
        let refused = jobs
            .submit(request(
                tokio_stream::iter(submission("x", "pipeline {}", Vec::new())),
                None,
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);

        // With the token, a job runs: its worker connects with its own
        // one-time token, not the client's.
        let messages = submission(
            "authorized",
            "pipeline { agent any; stages { stage('A') { steps { sh 'echo ran' } } } }",
            Vec::new(),
        );
        let job = jobs
            .submit(request(tokio_stream::iter(messages), Some(CLIENT_TOKEN)))
            .await
            .unwrap()
            .into_inner()
            .job_id;
        let mut stream = jobs
            .watch(request(
                pb::WatchRequest {
                    job_id: job,
                    from_sequence: 0,
                },
                Some(CLIENT_TOKEN),
            ))
            .await
            .unwrap()
            .into_inner();
        let mut watched = Watched::default();
        while let Some(event) = stream.message().await.unwrap() {
            record(&mut watched, &event);
        }
        assert_eq!(
            watched.status.as_ref().map(|s| s.0),
            Some(pb::JobStatus::Success),
            "{watched:?}"
        );
        assert!(watched.has_line("ran"));
        admin
            .list_workers(request(pb::ListWorkersRequest {}, Some(CLIENT_TOKEN)))
            .await
            .unwrap();

        // The CLI sends --token or HODEI_TOKEN.
        let url = server.handle.grpc_url();
        // Run without blocking the runtime the server shares.
        let cli = async |extra: &[&str], env: Option<&str>| {
            let mut command = hodei(&tag());
            command.args(["jobs", "list", "--server", &url]).args(extra);
            if let Some(token) = env {
                command.env("HODEI_TOKEN", token);
            }
            let out = tokio::process::Command::from(command)
                .output()
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (code, _, stderr) = cli(&[], None).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("requires a bearer token"), "{stderr}");
        let (code, _, stderr) = cli(&["--token", "n0t-it"], None).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("wrong bearer token"), "{stderr}");
        assert!(!stderr.contains("n0t-it"), "{stderr}");
        let (code, stdout, stderr) = cli(&["--token", CLIENT_TOKEN], None).await;
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("authorized"), "{stdout}");
        let (code, stdout, stderr) = cli(&[], Some(CLIENT_TOKEN)).await;
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("authorized"), "{stdout}");
        server.stop().await;
    });
}

const SECRET: &str = "s3cr3t-Value-42";

#[test]
fn credentials_reach_steps_as_environment_and_never_appear_in_logs() {
    run(async {
        let server = start_with(|s| {
            s.credentials.insert(
                "deploy-key".to_owned(),
                Secret::new(SECRET).expect("a secret"),
            );
        })
        .await;
        let mut client = server.jobs().await;
        let pipeline = r#"pipeline {
  agent any
  environment { KEY = credentials('deploy-key') }
  stages {
    stage('Use') {
      steps {
        sh 'test "$KEY" = "$(printf "s3cr3t-%s" Value-42)" && echo "the value arrived"'
        sh 'echo "plain $KEY"; echo "to stderr $KEY" >&2; printf "%s" "$KEY" | fold -w 3; echo; printf "[%s]" "$KEY" | head -c 9; sleep 0.2; printf "%s\n" "$KEY" | tail -c +9'
        echo "echoed ${KEY}"
        error "failed with ${KEY}"
      }
    }
  }
}"#;
        let job = submit(&mut client, pipeline, Vec::new()).await.unwrap();
        let watched = watch(&mut client, &job, 0).await;
        let (status, message) = watched.status.clone().expect("a final status");
        assert_eq!(status, pb::JobStatus::Failure, "{watched:#?}");
        assert_eq!(message, "failed with ****");
        for expected in [
            "the value arrived",
            "plain ****",
            "to stderr ****",
            "echoed ****",
        ] {
            assert!(
                watched.has_line(expected),
                "{expected:?} in {:#?}",
                watched.lines
            );
        }
        let everything = format!("{:?}", watched.events);
        assert!(!everything.contains(SECRET), "{everything}");
        // What the store kept, as `hodei jobs logs` reads it after the job.
        let again = watch(&mut client, &job, 0).await;
        assert!(!format!("{:?}", again.events).contains(SECRET));
        let got = client
            .get(pb::GetJobRequest {
                job_id: job.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!format!("{got:?}").contains(SECRET), "{got:?}");

        // An unknown id is refused at submission, with its position.
        let refused = submit(
            &mut client,
            "pipeline { agent any\n environment { X = credentials('nope') }\n stages { stage('A') { steps { sh 'true' } } } }",
            Vec::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().starts_with(
                "Jenkinsfile:2:16: no credentials with id 'nope' for environment variable X"
            ),
            "{}",
            refused.message()
        );
        server.stop().await;
    });
}

#[test]
fn input_limits_are_refused_with_the_setting_and_long_lines_are_cut() {
    run(async {
        let server = start_with(|s| {
            s.max_pipeline_bytes = 2048;
            s.max_stages = 2;
            s.max_log_line_bytes = 1024;
            s.max_grpc_message_bytes = 64 * 1024;
        })
        .await;
        let mut client = server.jobs().await;
        let check = async |client: &mut JobServiceClient<tonic::transport::Channel>,
                           pipeline: String,
                           expected: &str| {
            let refused = submit(client, &pipeline, Vec::new()).await.unwrap_err();
            assert_eq!(
                refused.code(),
                tonic::Code::ResourceExhausted,
                "{refused:?}"
            );
            assert!(refused.message().contains(expected), "{refused:?}");
        };
        let padded = |bytes: usize| {
            format!(
                "pipeline {{ agent any; stages {{ stage('A') {{ steps {{ sh 'true' }} }} }} }}\n//{}",
                "x".repeat(bytes)
            )
        };
        check(
            &mut client,
            padded(3000),
            "above the server's limit max_pipeline_bytes = 2048",
        )
        .await;
        // Past the gRPC limit the message is refused before it is read
        // whole, with gRPC's own words.
        let refused = submit(&mut client, &padded(100 * 1024), Vec::new())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
        assert!(
            refused.message().contains(
                "message length too large: found 102498 bytes, the limit is: 65536 bytes"
            ),
            "{refused:?}"
        );
        check(
            &mut client,
            "pipeline { agent any; stages {\n stage('a') { steps { sh 'true' } }\n stage('b') { steps { sh 'true' } }\n stage('c') { steps { sh 'true' } } } }".to_owned(),
            "Jenkinsfile:4:2: the stage count is 3 stages, above the server's limit max_stages = 2",
        )
        .await;

        let job = submit(
            &mut client,
            "pipeline { agent any; stages { stage('A') { steps { sh 'head -c 5000 /dev/zero | tr -c y y; echo; echo short' } } } }",
            Vec::new(),
        )
        .await
        .unwrap();
        let watched = watch(&mut client, &job, 0).await;
        assert_eq!(
            watched.status.as_ref().map(|s| s.0),
            Some(pb::JobStatus::Success),
            "{watched:#?}"
        );
        let pieces: Vec<usize> = watched
            .lines
            .iter()
            .filter(|l| l.starts_with('y'))
            .map(String::len)
            .collect();
        assert_eq!(pieces, [1024, 1024, 1024, 1024, 904]);
        assert!(watched.has_line("short"));
        server.stop().await;
    });
}

#[test]
fn malformed_worker_streams_are_refused_and_the_server_keeps_serving() {
    use hodei_proto::v1::worker_service_client::WorkerServiceClient;
    run(async {
        let server = start_with(|s| {
            s.max_grpc_message_bytes = 64 * 1024;
            s.max_pipeline_bytes = 32 * 1024;
            s.static_worker_token = Secret::new("st4tic-secret");
        })
        .await;
        let mut workers = WorkerServiceClient::new(server.channel().await);
        let connect = async |workers: &mut WorkerServiceClient<tonic::transport::Channel>,
                             first: pb::worker_message::Kind| {
            let message = pb::WorkerMessage { kind: Some(first) };
            match workers.connect(tokio_stream::iter(vec![message])).await {
                Ok(response) => {
                    // Refusals may also come as the stream's first item.
                    let mut stream = response.into_inner();
                    stream.message().await.expect_err("the stream is refused")
                }
                Err(status) => status,
            }
        };
        let refused = connect(
            &mut workers,
            pb::worker_message::Kind::StepStarted(pb::StepStarted {
                step_id: "s-1".into(),
                started_at_ms: 0,
            }),
        )
        .await;
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("expected hello as the first message")
        );
        let refused = connect(
            &mut workers,
            pb::worker_message::Kind::Hello(pb::Hello {
                worker_id: "w-huge".into(),
                name: "n".repeat(200 * 1024),
                ..Default::default()
            }),
        )
        .await;
        assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
        assert!(
            refused.message().contains("the limit is: 65536 bytes"),
            "{refused:?}"
        );
        let refused = connect(
            &mut workers,
            pb::worker_message::Kind::Hello(pb::Hello {
                worker_id: "w-unknown".into(),
                token: "guess3d".into(),
                ephemeral: true,
                ..Default::default()
            }),
        )
        .await;
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(!refused.message().contains("guess3d"));

        // A registered stream that says hello again is ended, with the
        // reason, after its welcome.
        let hello = pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
                worker_id: "w-twice".into(),
                token: "st4tic-secret".into(),
                name: "twice".into(),
                capabilities: vec!["linux".into()],
                ephemeral: false,
                protocol_version: 1,
                ..Default::default()
            })),
        };
        let mut stream = workers
            .connect(tokio_stream::iter(vec![hello.clone(), hello]))
            .await
            .expect("the first hello is accepted")
            .into_inner();
        let welcome = stream
            .message()
            .await
            .expect("a welcome")
            .expect("a message");
        assert!(
            matches!(welcome.kind, Some(pb::server_message::Kind::Welcome(_))),
            "{welcome:?}"
        );
        let refused = loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{refused:?}"
        );
        assert!(
            refused.message().contains("already registered")
                && refused.message().contains("one hello"),
            "{refused:?}"
        );

        let mut client = server.jobs().await;
        let job = submit(
            &mut client,
            "pipeline { agent any; stages { stage('A') { steps { sh 'echo still serving' } } } }",
            Vec::new(),
        )
        .await
        .unwrap();
        let watched = watch(&mut client, &job, 0).await;
        assert!(watched.has_line("still serving"), "{watched:#?}");
        server.stop().await;
    });
}

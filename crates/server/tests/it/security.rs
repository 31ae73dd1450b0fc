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

//! End to end: a server in-process on 127.0.0.1 port 0, real gRPC, the real
//! `hodei-worker` binary as local processes. After every test no worker
//! process remains (checked by pid and by the `WORKER_ID` in process
//! environments).

use std::path::Path;
use std::time::Duration;

use hodei_proto::v1 as pb;
use hodei_proto::v1::worker_service_client::WorkerServiceClient;

use crate::support::{
    self, assert_no_worker_process, live_worker_processes, run, source, start, start_with, submit,
    watch, watch_until_line,
};

fn status_of(watched: &support::Watched) -> (pb::JobStatus, String) {
    watched.status.clone().expect("the job reported a status")
}

/// Submits `pipeline` (no source), watches it to its end and checks that
/// it succeeded.
async fn run_to_success(
    client: &mut hodei_proto::v1::job_service_client::JobServiceClient<tonic::transport::Channel>,
    pipeline: &str,
) -> support::Watched {
    let job = submit(client, pipeline, Vec::new()).await.unwrap();
    let watched = watch(client, &job, 0).await;
    assert_eq!(
        status_of(&watched).0,
        pb::JobStatus::Success,
        "{watched:#?}"
    );
    watched
}

#[test]
fn hello_world() {
    run(async {
        let server = start().await;
        let mut client = server.jobs().await;
        let pipeline = "pipeline {\n  agent any\n  stages {\n    stage('Hello') {\n      steps {\n        sh 'echo hello world'\n      }\n    }\n  }\n}\n";
        let job = submit(&mut client, pipeline, Vec::new()).await.unwrap();
        let watched = watch(&mut client, &job, 0).await;
        assert_eq!(
            status_of(&watched).0,
            pb::JobStatus::Success,
            "{watched:#?}"
        );
        assert!(watched.has_line("hello world"), "{:?}", watched.lines);
        assert_eq!(watched.stages.get("Hello"), Some(&pb::StageResult::Success));
        let sequences: Vec<u64> = watched.events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (0..sequences.len() as u64).collect::<Vec<_>>());

        // A watcher joining late gets the whole history, from any position.
        let late = watch(&mut client, &job, 0).await;
        assert_eq!(late.events, watched.events);
        let tail = watch(&mut client, &job, 2).await;
        assert_eq!(tail.events.as_slice(), &watched.events[2..]);

        let got = client
            .get(pb::GetJobRequest {
                job_id: job.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.status, pb::JobStatus::Success as i32);
        assert_eq!(got.build_number, 1);
        assert_eq!(got.stages.len(), 1);
        assert_eq!(got.stages[0].result, pb::StageResult::Success as i32);
        let listed = client
            .list(pb::ListJobsRequest {
                statuses: vec![pb::JobStatus::Success as i32],
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.jobs.len(), 1);
        assert_eq!(listed.jobs[0].id, job);

        let created = server.stop().await;
        assert_eq!(created.len(), 1);
    });
}

#[test]
fn http_health_readiness_and_metrics() {
    run(async {
        let server = start().await;
        let mut client = server.jobs().await;
        let job = submit(
            &mut client,
            "pipeline { agent any; stages { stage('A') { steps { sh 'true' } } } }",
            Vec::new(),
        )
        .await
        .unwrap();
        let watched = watch(&mut client, &job, 0).await;
        assert_eq!(status_of(&watched).0, pb::JobStatus::Success);

        let addr = server.handle.http_addr();
        let (code, body) = http_get(addr, "/healthz").await;
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        let (code, body) = http_get(addr, "/readyz").await;
        assert_eq!((code, body.as_str()), (200, "ready\n"));
        let (code, body) = http_get(addr, "/metrics").await;
        assert_eq!(code, 200);
        for expected in [
            "hodei_queue_depth 0",
            "hodei_jobs_finished_total{result=\"succeeded\"} 1",
            "hodei_provisioning_seconds_count 1",
        ] {
            assert!(body.contains(expected), "{expected:?} in {body}");
        }
        let (code, _) = http_get(addr, "/nothing").await;
        assert_eq!(code, 404);
        server.stop().await;
    });
}

/// A minimal HTTP/1.1 GET; returns the status code and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn a_step_reads_a_file_of_the_submitted_source() {
    run(async {
        let server = start().await;
        let mut client = server.jobs().await;
        let archive = source(&[("data/input.txt", "from the submitted source\n")]);
        let pipeline = "pipeline {\n  agent any\n  stages {\n    stage('Read') {\n      steps {\n        sh 'cat data/input.txt'\n      }\n    }\n  }\n}\n";
        let job = submit(&mut client, pipeline, archive).await.unwrap();
        let watched = watch(&mut client, &job, 0).await;
        assert_eq!(
            status_of(&watched).0,
            pb::JobStatus::Success,
            "{watched:#?}"
        );
        assert!(
            watched.has_line("from the submitted source"),
            "{:?}",
            watched.lines
        );
        server.stop().await;
    });
}

#[test]
fn a_failing_step_fails_the_job_with_its_exit_code_and_runs_post_failure() {
    run(async {
        let server = start().await;
        let mut client = server.jobs().await;
        let pipeline = "pipeline {\n  agent any\n  stages {\n    stage('Build') {\n      steps {\n        sh 'echo building; exit 3'\n      }\n    }\n    stage('Later') {\n      steps { sh 'echo never' }\n    }\n  }\n  post {\n    failure { echo 'post failure ran' }\n    success { echo 'post success ran' }\n  }\n}\n";
        let job = submit(&mut client, pipeline, Vec::new()).await.unwrap();
        let watched = watch(&mut client, &job, 0).await;
        let (status, message) = status_of(&watched);
        assert_eq!(status, pb::JobStatus::Failure, "{watched:#?}");
        assert!(message.contains("exit code 3"), "{message}");
        assert!(watched.has_line("building"));
        assert!(watched.has_line("post failure ran"), "{:?}", watched.lines);
        assert!(!watched.has_line("post success ran"));
        assert!(!watched.has_line("never"));
        assert_eq!(watched.stages.get("Build"), Some(&pb::StageResult::Failure));
        assert_eq!(watched.stages.get("Later"), Some(&pb::StageResult::Skipped));
        server.stop().await;
    });
}

#[test]
fn two_stages_with_their_own_agents_get_two_workers_each_destroyed() {
    run(async {
        let server = start().await;
        let mut client = server.jobs().await;
        let pipeline = "pipeline {\n  agent none\n  stages {\n    stage('One') {\n      agent any\n      steps { sh 'echo \"first on $WORKER_NAME\"' }\n    }\n    stage('Two') {\n      agent any\n      steps { sh 'echo \"second on $WORKER_NAME\"' }\n    }\n  }\n}\n";
        let job = submit(&mut client, pipeline, Vec::new()).await.unwrap();
        let watched = watch(&mut client, &job, 0).await;
        assert_eq!(
            status_of(&watched).0,
            pb::JobStatus::Success,
            "{watched:#?}"
        );
        let first = watched.lines.iter().find(|l| l.starts_with("first on "));
        let second = watched.lines.iter().find(|l| l.starts_with("second on "));
        let (Some(first), Some(second)) = (first, second) else {
            panic!("both stages printed: {:?}", watched.lines);
        };
        assert_ne!(first["first on ".len()..], second["second on ".len()..]);
        let created = server.handle.created_workers();
        assert_eq!(created.len(), 2, "{created:?}");
        assert_ne!(created[0].worker_id, created[1].worker_id);
        // Destroyed when their stages ended, not only at shutdown.
        assert_no_worker_process(&created).await;
        let destroyed: Vec<&pb::WorkerEvent> = watched
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(pb::job_event::Kind::Worker(w)) if w.state == "destroyed" => Some(w),
                _ => None,
            })
            .collect();
        assert_eq!(destroyed.len(), 2, "{:?}", watched.events);
        // Once a worker is known, its events name the template it came from.
        let worker_events: Vec<(&str, &str)> = watched
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(pb::job_event::Kind::Worker(w)) => {
                    Some((w.state.as_str(), w.template_id.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            worker_events,
            [
                ("provisioning", ""),
                ("connected", "local"),
                ("destroyed", "local"),
                ("provisioning", ""),
                ("connected", "local"),
                ("destroyed", "local"),
            ]
        );
        server.stop().await;
    });
}

#[test]
fn parallel_branches_really_overlap() {
    run(async {
        let server = start().await;
        let mut client = server.jobs().await;
        // Each branch announces itself and then waits for the other's file:
        // neither can finish unless both run at the same time. The loop's
        // own bound (20 s) fails the job instead of hanging.
        let wait_for = |mine: &str, other: &str| {
            format!(
                "touch {mine}; i=0; while [ ! -f {other} ]; do i=$((i+1)); if [ $i -gt 200 ]; then echo \"no {other}\"; exit 1; fi; sleep 0.1; done; echo \"{mine} saw {other}\""
            )
        };
        let pipeline = format!(
            "pipeline {{\n  agent any\n  stages {{\n    stage('Both') {{\n      parallel {{\n        stage('A') {{\n          steps {{ sh '{}' }}\n        }}\n        stage('B') {{\n          steps {{ sh '{}' }}\n        }}\n      }}\n    }}\n  }}\n}}\n",
            wait_for("a.ready", "b.ready"),
            wait_for("b.ready", "a.ready"),
        );
        let job = submit(&mut client, &pipeline, Vec::new()).await.unwrap();
        let watched = watch(&mut client, &job, 0).await;
        assert_eq!(
            status_of(&watched).0,
            pb::JobStatus::Success,
            "{watched:#?}"
        );
        assert!(watched.has_line("a.ready saw b.ready"));
        assert!(watched.has_line("b.ready saw a.ready"));
        for branch in ["Both/A", "Both/B", "Both"] {
            assert_eq!(
                watched.stages.get(branch),
                Some(&pb::StageResult::Success),
                "{branch} in {:?}",
                watched.stages
            );
        }
        let a_line = watched.events.iter().find_map(|e| match &e.kind {
            Some(pb::job_event::Kind::Log(line)) if line.text.contains("a.ready saw") => {
                Some(line.stage.clone())
            }
            _ => None,
        });
        assert_eq!(a_line, Some(vec!["Both".to_owned(), "A".to_owned()]));
        server.stop().await;
    });
}

#[test]
fn cancel_kills_the_running_step_and_destroys_the_worker() {
    run(async {
        let server = start().await;
        let mut client = server.jobs().await;
        let pipeline = "pipeline {\n  agent any\n  stages {\n    stage('Long') {\n      steps { sh 'echo \"step pid $$\"; sleep 300' }\n    }\n  }\n  post {\n    aborted { echo 'post aborted ran' }\n  }\n}\n";
        let job = submit(&mut client, pipeline, Vec::new()).await.unwrap();
        let seen = watch_until_line(&mut client, &job, "step pid ").await;
        let pid: u32 = seen
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("step pid "))
            .and_then(|p| p.trim().parse().ok())
            .expect("the step printed its pid");
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        let answer = client
            .cancel(pb::CancelJobRequest {
                job_id: job.clone(),
                reason: "stopped by the test".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status, pb::JobStatus::Running as i32);
        let watched = watch(&mut client, &job, 0).await;
        let (status, message) = status_of(&watched);
        assert_eq!(status, pb::JobStatus::Aborted, "{watched:#?}");
        assert_eq!(message, "stopped by the test");
        assert!(watched.has_line("post aborted ran"), "{:?}", watched.lines);
        let created = server.handle.created_workers();
        assert_eq!(created.len(), 1);
        assert_no_worker_process(&created).await;
        assert!(
            live_worker_processes(&created).is_empty(),
            "the step's shell {pid} is gone"
        );
        // Cancelling a finished job answers its final status.
        let again = client
            .cancel(pb::CancelJobRequest {
                job_id: job.clone(),
                reason: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.status, pb::JobStatus::Aborted as i32);
        server.stop().await;
    });
}

#[test]
fn local_workers_connect_on_the_servers_unix_socket() {
    run(async {
        // Workers told a TCP address nothing listens on (a documentation
        // address) can only reach the server through its socket.
        let server = start_with(|s| s.advertise_host = Some("192.0.2.1".into())).await;
        let mut client = server.jobs().await;
        let pipeline =
            "pipeline { agent any; stages { stage('S') { steps { sh 'echo via socket' } } } }";
        let watched = run_to_success(&mut client, pipeline).await;
        assert!(watched.has_line("via socket"), "{:?}", watched.lines);
        server.stop().await;
    });
}

#[test]
fn steps_run_in_the_workspace_or_in_their_dir_in_parallel_too() {
    run(async {
        let server = start().await;
        let mut client = server.jobs().await;
        // The worker process moves into its workspace: steps there start
        // without a change of directory, steps in a `dir` with one,
        // parallel branches in different directories run at the same time,
        // and a step after one that replaced the workspace runs in the new
        // one.
        let pipeline = r#"pipeline {
  agent any
  stages {
    stage('Root') { steps { sh 'echo "root $(pwd) $WORKSPACE"' } }
    stage('Both') {
      parallel {
        stage('A') { steps { dir('a') { sh 'echo "in-a $(pwd)"' } } }
        stage('B') { steps { dir('b/c') { sh 'echo "in-b $(pwd)"' } } }
        stage('Top') { steps { sh 'echo "top $(pwd)"' } }
      }
    }
    stage('Again') { steps { sh 'echo "again $(pwd)"; ls -d a b/c' } }
    stage('Replace') {
      steps { sh 'cd / && rm -rf "$WORKSPACE" && mkdir "$WORKSPACE" && touch "$WORKSPACE/fresh"' }
    }
    stage('Fresh') { steps { sh 'echo "fresh $(ls)"' } }
  }
}
"#;
        let watched = run_to_success(&mut client, pipeline).await;
        let line = |prefix: &str| -> String {
            watched
                .lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no `{prefix}` line in {:?}", watched.lines))
                .trim()
                .to_owned()
        };
        let root = line("root ");
        let (pwd, workspace) = root.split_once(' ').expect("two paths");
        assert_eq!(pwd, workspace, "{:?}", watched.lines);
        assert!(Path::new(workspace).is_absolute(), "{workspace}");
        assert_eq!(line("in-a "), format!("{workspace}/a"));
        assert_eq!(line("in-b "), format!("{workspace}/b/c"));
        assert_eq!(line("top "), workspace);
        assert_eq!(line("again "), workspace);
        // A step that replaced the workspace: the next one runs in the new
        // directory, not in the removed one.
        assert_eq!(line("fresh "), "fresh");
        assert!(
            !Path::new(workspace).exists(),
            "the workspace outlived its job"
        );
        server.stop().await;
    });
}

#[test]
fn what_a_step_leaves_running_ends_with_its_job_even_with_no_trace_of_the_worker() {
    run(async {
        let server = start().await;
        let mut client = server.jobs().await;
        // A daemon in a session of its own, with an empty environment (no
        // `WORKER_ID` to find it by), whose parent exits at once.
        let pipeline = r#"pipeline {
  agent any
  stages {
    stage('Daemon') {
      steps { sh 'env -i setsid sh -c "sleep 300 >/dev/null 2>&1 & echo daemon \\$!"' }
    }
  }
}
"#;
        let watched = run_to_success(&mut client, pipeline).await;
        let daemon: u32 = watched
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("daemon "))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no daemon pid in {:?}", watched.lines));
        let mut running = true;
        for _ in 0..100 {
            running = hodei_infrastructure::local::is_live(daemon);
            if !running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!running, "the step's daemon {daemon} outlived its job");
        assert_no_worker_process(&server.handle.created_workers()).await;
        server.stop().await;
    });
}

#[test]
fn a_worker_killed_mid_step_fails_the_job_with_a_clear_reason() {
    run(async {
        let server = start().await;
        let mut client = server.jobs().await;
        let pipeline = "pipeline {\n  agent any\n  stages {\n    stage('Long') {\n      steps { sh 'echo started; sleep 300' }\n    }\n  }\n}\n";
        let job = submit(&mut client, pipeline, Vec::new()).await.unwrap();
        watch_until_line(&mut client, &job, "started").await;
        let created = server.handle.created_workers();
        assert_eq!(created.len(), 1);
        let status = std::process::Command::new("kill")
            .args(["-KILL", &created[0].backend_id])
            .status()
            .unwrap();
        assert!(status.success());
        let watched = watch(&mut client, &job, 0).await;
        let (status, message) = status_of(&watched);
        assert_eq!(status, pb::JobStatus::Failure, "{watched:#?}");
        assert!(
            message.contains(&format!("worker {} was lost", created[0].worker_id)),
            "{message}"
        );
        assert_no_worker_process(&created).await;
        server.stop().await;
    });
}

#[test]
fn a_worker_that_cannot_start_fails_the_job_with_its_reason() {
    run(async {
        let server = start_with(|s| {
            s.worker_binary = Some("/nonexistent/dir/hodei-worker".into());
        })
        .await;
        let mut client = server.jobs().await;
        let job = submit(
            &mut client,
            "pipeline { agent any; stages { stage('A') { steps { sh 'true' } } } }",
            Vec::new(),
        )
        .await
        .unwrap();
        let watched = watch(&mut client, &job, 0).await;
        let (status, message) = status_of(&watched);
        assert_eq!(status, pb::JobStatus::Failure, "{watched:#?}");
        assert!(
            message.contains("/nonexistent/dir/hodei-worker"),
            "{message}"
        );
        let failed = watched.events.iter().any(
            |e| matches!(&e.kind, Some(pb::job_event::Kind::Worker(w)) if w.state == "failed"),
        );
        assert!(failed, "{:?}", watched.events);
        server.stop().await;
    });
}

#[test]
fn a_wrong_token_is_refused() {
    run(async {
        let server = start().await;
        let mut worker = WorkerServiceClient::new(server.channel().await);
        let hello = pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
                worker_id: "w-intruder".into(),
                token: "guessed-secret".into(),
                name: "intruder".into(),
                protocol_version: 1,
                ..Default::default()
            })),
        };
        let refused = worker
            .connect(tokio_stream::iter(vec![hello]))
            .await
            .expect_err("the connection is refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(!refused.message().contains("guessed-secret"));

        let not_hello = pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Heartbeat(pb::Heartbeat {
                sent_at_ms: 1,
            })),
        };
        let refused = worker
            .connect(tokio_stream::iter(vec![not_hello]))
            .await
            .expect_err("a stream without hello is refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        server.stop().await;
    });
}

#[test]
fn bad_pipelines_and_unservable_agents_are_refused_at_submission() {
    run(async {
        let server = start().await;
        let mut client = server.jobs().await;
        let refused = submit(
            &mut client,
            "pipeline {\n  agent any\n  stages {\n    stage('A') {\n      steps { sh }\n    }\n  }\n}\n",
            Vec::new(),
        )
        .await
        .expect_err("a broken pipeline is refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().starts_with("Jenkinsfile:5:"),
            "{}",
            refused.message()
        );

        let refused = submit(
            &mut client,
            "pipeline {\n  agent { docker { image 'maven:3' } }\n  stages {\n    stage('A') { steps { sh 'true' } }\n  }\n}\n",
            Vec::new(),
        )
        .await
        .expect_err("a docker agent cannot run on the local backend");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused
                .message()
                .starts_with("Jenkinsfile:2:3: no worker template matches"),
            "{}",
            refused.message()
        );
        assert!(
            refused.message().contains("maven:3"),
            "{}",
            refused.message()
        );

        let refused = submit(
            &mut client,
            "pipeline {\n  agent { label 'no-such-tool-here' }\n  stages {\n    stage('A') { steps { sh 'true' } }\n  }\n}\n",
            Vec::new(),
        )
        .await
        .expect_err("a label the host lacks is refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("no-such-tool-here"),
            "{}",
            refused.message()
        );
        let refused = submit(
            &mut client,
            "pipeline { agent any; stages { stage('A') { steps { sh 'true' } } } }",
            b"this is not a tar archive, just some bytes that are long enough".repeat(20),
        )
        .await
        .expect_err("a source that is not a tar archive is refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().starts_with("source archive"),
            "{}",
            refused.message()
        );

        let listed = client
            .list(pb::ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(listed.jobs.is_empty(), "nothing was stored");
        let created = server.stop().await;
        assert!(created.is_empty());
    });
}

#[test]
fn shutdown_cancels_running_jobs_and_leaves_no_worker() {
    run(async {
        let server = start().await;
        let mut client = server.jobs().await;
        let job = submit(
            &mut client,
            "pipeline { agent any; stages { stage('Long') { steps { sh 'echo started; sleep 300' } } } }",
            Vec::new(),
        )
        .await
        .unwrap();
        watch_until_line(&mut client, &job, "started").await;
        let stopping = tokio::time::Instant::now();
        let created = server.stop().await;
        assert_eq!(created.len(), 1);
        assert!(stopping.elapsed() < Duration::from_secs(60));
    });
}

/// A worker lost in the middle of a stage with `options { retry }`: its
/// backend object (the process) is deleted and the stage runs again on a
/// new worker.
#[test]
fn a_lost_worker_is_deleted_and_stage_retry_runs_the_stage_on_a_new_worker() {
    run(async {
        let server = start_with(|s| s.worker_lost_after = Duration::from_secs(2)).await;
        let marker = tempfile::tempdir().unwrap();
        let marker = marker.path().join("first-attempt");
        let mut client = server.jobs().await;
        let pipeline = format!(
            "pipeline {{ agent none; stages {{ stage('Flaky') {{ agent any; options {{ retry(2) }}; steps {{ sh 'if [ -e {m} ]; then echo second attempt; else touch {m}; echo started; sleep 300; fi' }} }} }} }}",
            m = marker.display()
        );
        let job = submit(&mut client, &pipeline, Vec::new()).await.unwrap();
        watch_until_line(&mut client, &job, "started").await;
        let first = server.handle.created_workers();
        assert_eq!(first.len(), 1);
        let status = std::process::Command::new("kill")
            .args(["-STOP", &first[0].backend_id])
            .status()
            .unwrap();
        assert!(status.success());
        let watched = watch(&mut client, &job, 0).await;
        assert_eq!(
            status_of(&watched).0,
            pb::JobStatus::Success,
            "{watched:#?}"
        );
        assert!(watched.has_line("second attempt"), "{watched:#?}");
        assert!(
            watched.has_line("no message from the worker for 2s"),
            "{watched:#?}"
        );
        let created = server.handle.created_workers();
        assert_eq!(created.len(), 2);
        assert_no_worker_process(&first).await;
        server.stop().await;
    });
}

#[test]
fn a_silent_worker_is_lost_after_worker_lost_after() {
    run(async {
        let server = start_with(|s| s.worker_lost_after = Duration::from_secs(2)).await;
        let mut client = server.jobs().await;
        let job = submit(
            &mut client,
            "pipeline { agent any; stages { stage('Long') { steps { sh 'echo started; sleep 300' } } } }",
            Vec::new(),
        )
        .await
        .unwrap();
        watch_until_line(&mut client, &job, "started").await;
        let created = server.handle.created_workers();
        assert_eq!(created.len(), 1);
        // A stopped worker keeps its connection open but says nothing.
        let status = std::process::Command::new("kill")
            .args(["-STOP", &created[0].backend_id])
            .status()
            .unwrap();
        assert!(status.success());
        let watched = watch(&mut client, &job, 0).await;
        let (status, message) = status_of(&watched);
        assert_eq!(status, pb::JobStatus::Failure, "{watched:#?}");
        assert!(
            message.contains("no message from the worker for 2s"),
            "{message}"
        );
        assert_no_worker_process(&created).await;
        server.stop().await;
    });
}

#[test]
fn admin_lists_workers_and_manages_templates() {
    use hodei_proto::v1::admin_service_client::AdminServiceClient;
    run(async {
        let server = start().await;
        let mut admin = AdminServiceClient::new(server.channel().await);
        let templates = admin
            .list_templates(pb::ListTemplatesRequest {})
            .await
            .unwrap()
            .into_inner()
            .templates;
        let ids: Vec<&str> = templates.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["local"]);
        assert!(templates[0].capabilities.iter().any(|c| c == "linux"));

        let mut extra = templates[0].clone();
        extra.id = "local-small".into();
        extra.max_concurrent_jobs = 1;
        let put = admin
            .put_template(pb::PutTemplateRequest {
                template: Some(extra.clone()),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!put.replaced);
        let put = admin
            .put_template(pb::PutTemplateRequest {
                template: Some(extra),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(put.replaced);
        let mut bad = templates[0].clone();
        bad.id = "bad".into();
        bad.resources.as_mut().unwrap().memory = "lots".into();
        let refused = admin
            .put_template(pb::PutTemplateRequest {
                template: Some(bad),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().starts_with("template.resources.memory: "),
            "{}",
            refused.message()
        );
        admin
            .delete_template(pb::DeleteTemplateRequest {
                id: "local-small".into(),
            })
            .await
            .unwrap();
        let missing = admin
            .delete_template(pb::DeleteTemplateRequest {
                id: "local-small".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);

        let mut client = server.jobs().await;
        let job = submit(
            &mut client,
            "pipeline { agent any; stages { stage('Long') { steps { sh 'echo started; sleep 300' } } } }",
            Vec::new(),
        )
        .await
        .unwrap();
        watch_until_line(&mut client, &job, "started").await;
        let workers = admin
            .list_workers(pb::ListWorkersRequest {})
            .await
            .unwrap()
            .into_inner()
            .workers;
        assert_eq!(workers.len(), 1, "{workers:?}");
        assert_eq!(workers[0].job_id, job);
        assert_eq!(workers[0].template_id, "local");
        assert_eq!(workers[0].backend, "local");
        assert_eq!(workers[0].state, "busy");
        assert!(workers[0].ephemeral);
        assert!(workers[0].last_heartbeat_ms > 0);
        server.stop().await;
    });
}

#[test]
fn a_source_over_the_limit_is_refused() {
    run(async {
        let server = start_with(|s| s.max_source_bytes = 4096).await;
        let mut client = server.jobs().await;
        let big = "x".repeat(8192);
        let refused = submit(
            &mut client,
            "pipeline { agent any; stages { stage('A') { steps { sh 'true' } } } }",
            source(&[("big.txt", big.as_str())]),
        )
        .await
        .expect_err("the source is too large");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("limit of 4096 bytes"),
            "{}",
            refused.message()
        );
        server.stop().await;
    });
}

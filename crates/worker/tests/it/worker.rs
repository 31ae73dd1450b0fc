//! The worker against the scripted server.

use std::time::Duration;

use hodei_proto::v1::{
    Cancel, CancelStep, FinishSegment, RunStep, ShAction, Shutdown, StepOutcome, WriteFileAction,
    run_step, server_message, worker_message,
};
use hodei_worker::{Outcome, Token, WorkerError};

use crate::support::{TestServer, alive, block_on, gone, outcome, read_when_written, spawn_worker};

#[test]
fn hello_carries_token_and_identity() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let mut config = server.config("w-hello", root.path());
        config.ephemeral = true;
        let worker = spawn_worker(config);
        let conn = server.accept().await;
        assert_eq!(conn.hello.worker_id, "w-hello");
        assert_eq!(conn.hello.token, crate::support::TOKEN);
        assert_eq!(conn.hello.name, "w-hello-name");
        assert_eq!(conn.hello.capabilities, ["linux", "test"]);
        assert!(conn.hello.ephemeral);
        assert_eq!(conn.hello.protocol_version, 1);
        assert_eq!(conn.hello.version, env!("CARGO_PKG_VERSION"));
        assert!(conn.hello.resume.is_none());
        conn.send(server_message::Kind::Shutdown(Shutdown {
            reason: "done".into(),
        }))
        .await;
        drop(conn);
        assert_eq!(
            outcome(worker).await.unwrap(),
            Outcome::Shutdown {
                reason: "done".into()
            }
        );
    });
}

#[test]
fn wrong_token_is_refused_without_retry() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let mut config = server.config("w-bad", root.path());
        config.token = Token::new("wrong");
        match outcome(spawn_worker(config)).await {
            Err(WorkerError::Refused(message)) => assert_eq!(message, "invalid worker token"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    });
}

#[test]
fn output_streams_before_the_step_ends() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let worker = spawn_worker(server.config("w-stream", root.path()));
        let mut conn = server.accept().await;
        let ws = conn.assign_empty("seg").await;
        // The step prints, then waits for a file only the test creates after
        // it has seen the first line: the line must arrive while it runs.
        conn.sh(
            "seg",
            "s1",
            "echo first; echo oops >&2; while [ ! -f \"$WORKSPACE/go\" ]; do sleep 0.01; done; echo second",
        )
        .await;
        assert!(matches!(
            conn.recv().await,
            worker_message::Kind::StepStarted(_)
        ));
        let mut seen = String::new();
        let mut chunks = 0;
        while !(seen.contains("first\n") && seen.contains("oops\n")) {
            match conn.recv().await {
                worker_message::Kind::LogChunk(chunk) => {
                    assert_eq!(chunk.sequence, chunks);
                    chunks += 1;
                    seen.push_str(&String::from_utf8_lossy(&chunk.data));
                }
                other => panic!("expected output before the step ends, got {other:?}"),
            }
        }
        std::fs::write(ws.join("go"), "").unwrap();
        let (rest, finished) = conn.step_result_from("s1", chunks).await;
        assert_eq!(rest, "second\n");
        assert_eq!(finished.exit_code, 0);
        assert_eq!(finished.outcome, StepOutcome::Success as i32);
        conn.send(server_message::Kind::Shutdown(Shutdown {
            reason: "end".into(),
        }))
        .await;
        drop(conn);
        outcome(worker).await.unwrap();
    });
}

#[test]
fn exit_codes_and_outcomes() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let worker = spawn_worker(server.config("w-codes", root.path()));
        let mut conn = server.accept().await;
        conn.assign_empty("seg").await;
        let cases: &[(&str, i32, StepOutcome, &str)] = &[
            ("true", 0, StepOutcome::Success, ""),
            (
                "exit 3",
                3,
                StepOutcome::Failed,
                "script returned exit code 3",
            ),
            (
                "false; echo unreachable",
                1,
                StepOutcome::Failed,
                "script returned exit code 1",
            ),
            (
                "kill -TERM $$",
                143,
                StepOutcome::Failed,
                "script killed by signal 15",
            ),
            (
                "exit 255",
                255,
                StepOutcome::Failed,
                "script returned exit code 255",
            ),
        ];
        for (i, (script, code, result, message)) in cases.iter().enumerate() {
            let id = format!("s{i}");
            conn.sh("seg", &id, script).await;
            let (output, finished) = conn.step_result(&id).await;
            assert_eq!(output, "", "{script}");
            assert_eq!(finished.exit_code, *code, "{script}");
            assert_eq!(finished.outcome, *result as i32, "{script}");
            assert_eq!(finished.message, *message, "{script}");
        }
        conn.send(server_message::Kind::Shutdown(Shutdown {
            reason: "end".into(),
        }))
        .await;
        drop(conn);
        outcome(worker).await.unwrap();
    });
}

#[test]
fn large_output_arrives_whole_and_in_order() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let worker = spawn_worker(server.config("w-big", root.path()));
        let mut conn = server.accept().await;
        conn.assign_empty("seg").await;
        // 200,000 numbered lines (about 1.3 MB): many chunks, nothing lost.
        conn.sh(
            "seg",
            "big",
            "i=0; while [ $i -lt 200000 ]; do echo $i; i=$((i + 1)); done",
        )
        .await;
        let (output, finished) = conn.step_result("big").await;
        assert_eq!(finished.outcome, StepOutcome::Success as i32);
        let mut expected = 0;
        for line in output.lines() {
            assert_eq!(line, expected.to_string());
            expected += 1;
        }
        assert_eq!(expected, 200_000);
        conn.send(server_message::Kind::Shutdown(Shutdown {
            reason: "end".into(),
        }))
        .await;
        drop(conn);
        outcome(worker).await.unwrap();
    });
}

#[test]
fn environment_dir_and_write_file() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let worker = spawn_worker(server.config("w-env", root.path()));
        let mut conn = server.accept().await;
        let ws = conn.assign_empty("seg").await;
        assert!(ws.starts_with(root.path()));
        conn.run(RunStep {
            step_id: "w".into(),
            segment_id: "seg".into(),
            action: Some(run_step::Action::WriteFile(WriteFileAction {
                path: "out/note.txt".into(),
                text: "written\n".into(),
            })),
            environment: Default::default(),
            dir: "sub".into(),
            timeout_ms: 0,
        })
        .await;
        let (_, finished) = conn.step_result("w").await;
        assert_eq!(
            finished.outcome,
            StepOutcome::Success as i32,
            "{}",
            finished.message
        );
        conn.run(RunStep {
            step_id: "e".into(),
            segment_id: "seg".into(),
            action: Some(run_step::Action::Sh(ShAction {
                script: "echo \"$JOB_NAME $BUILD_NUMBER $FROM_ASSIGN $FOO $WORKER_NAME\"; pwd; cat out/note.txt; \
                         [ \"$WORKSPACE\" = \"$(cd .. && pwd)\" ] && echo ws-ok"
                    .into(),
            })),
            environment: [("FOO".to_owned(), "bar baz".to_owned())].into(),
            dir: "sub".into(),
            timeout_ms: 0,
        })
        .await;
        let (output, finished) = conn.step_result("e").await;
        assert_eq!(finished.outcome, StepOutcome::Success as i32, "{output}");
        let sub = ws.join("sub").canonicalize().unwrap();
        assert_eq!(
            output,
            format!(
                "demo 7 a bar baz w-env-name\n{}\nwritten\nws-ok\n",
                sub.display()
            )
        );

        fn bad(step_id: &str, dir: &str, path: &str) -> RunStep {
            RunStep {
                step_id: step_id.into(),
                segment_id: "seg".into(),
                action: Some(run_step::Action::WriteFile(WriteFileAction {
                    path: path.into(),
                    text: "x".into(),
                })),
                environment: Default::default(),
                dir: dir.into(),
                timeout_ms: 0,
            }
        }
        for (id, dir, path, message) in [
            (
                "b1",
                "../x",
                "f",
                "dir \"../x\": expected a relative path without '..'",
            ),
            (
                "b2",
                "",
                "/etc/f",
                "writeFile path \"/etc/f\": expected a relative path without '..'",
            ),
            (
                "b3",
                "",
                "a/../../f",
                "writeFile path \"a/../../f\": expected a relative path without '..'",
            ),
        ] {
            conn.run(bad(id, dir, path)).await;
            let (_, finished) = conn.step_result(id).await;
            assert_eq!(finished.outcome, StepOutcome::Error as i32);
            assert_eq!(finished.message, message);
        }
        conn.sh("other-seg", "x", "true").await;
        let (_, finished) = conn.step_result("x").await;
        assert_eq!(finished.outcome, StepOutcome::Error as i32);
        assert_eq!(
            finished.message,
            "segment \"other-seg\" is not assigned to this worker"
        );

        conn.send(server_message::Kind::Shutdown(Shutdown {
            reason: "end".into(),
        }))
        .await;
        drop(conn);
        outcome(worker).await.unwrap();
        assert!(!ws.exists(), "workspace removed on shutdown");
    });
}

#[test]
fn parallel_steps_run_at_the_same_time() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let worker = spawn_worker(server.config("w-par", root.path()));
        let mut conn = server.accept().await;
        conn.assign_empty("seg").await;
        // Each branch signals its own file and waits for the other's: they
        // can only both finish if they run at once.
        conn.sh(
            "seg",
            "a",
            "touch a.ready; while [ ! -f b.ready ]; do sleep 0.01; done; echo a-done",
        )
        .await;
        conn.sh(
            "seg",
            "b",
            "touch b.ready; while [ ! -f a.ready ]; do sleep 0.01; done; echo b-done",
        )
        .await;
        let mut done = Vec::new();
        while done.len() < 2 {
            if let worker_message::Kind::StepFinished(finished) = conn.recv().await {
                assert_eq!(finished.outcome, StepOutcome::Success as i32);
                done.push(finished.step_id);
            }
        }
        done.sort();
        assert_eq!(done, ["a", "b"]);
        conn.send(server_message::Kind::Shutdown(Shutdown {
            reason: "end".into(),
        }))
        .await;
        drop(conn);
        outcome(worker).await.unwrap();
    });
}

#[test]
fn cancel_step_kills_its_process_group() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let worker = spawn_worker(server.config("w-cancel", root.path()));
        let mut conn = server.accept().await;
        let ws = conn.assign_empty("seg").await;
        // A grandchild that ignores SIGTERM: only the SIGKILL after the grace
        // ends it.
        conn.sh(
            "seg",
            "long",
            "sh -c 'trap \"\" TERM; echo $$ > grandchild.pid; exec sleep 300' & wait",
        )
        .await;
        let pid: u32 = read_when_written(&ws.join("grandchild.pid"))
            .await
            .parse()
            .unwrap();
        assert!(alive(pid));
        conn.send(server_message::Kind::CancelStep(CancelStep {
            step_id: "long".into(),
            reason: "user abort".into(),
        }))
        .await;
        let (_, finished) = conn.step_result("long").await;
        assert_eq!(finished.outcome, StepOutcome::Cancelled as i32);
        assert_eq!(finished.message, "cancelled: user abort");
        assert!(gone(pid).await, "grandchild {pid} survived the cancel");

        // Cancel of the whole segment: its steps die and the segment ends.
        conn.sh("seg", "long2", "echo $$ > sh.pid; sleep 300").await;
        let pid: u32 = read_when_written(&ws.join("sh.pid")).await.parse().unwrap();
        conn.send(server_message::Kind::Cancel(Cancel {
            segment_id: "seg".into(),
            reason: "job cancelled".into(),
        }))
        .await;
        let (_, finished) = conn.step_result("long2").await;
        assert_eq!(finished.outcome, StepOutcome::Cancelled as i32);
        match conn.recv().await {
            worker_message::Kind::SegmentFinished(f) => {
                assert_eq!(f.outcome, StepOutcome::Cancelled as i32);
                assert_eq!(f.message, "cancelled: job cancelled");
            }
            other => panic!("expected SegmentFinished, got {other:?}"),
        }
        assert!(gone(pid).await);
        assert!(!ws.exists());
        // A static worker takes the next segment.
        conn.assign_empty("seg2").await;
        conn.send(server_message::Kind::Shutdown(Shutdown {
            reason: "end".into(),
        }))
        .await;
        drop(conn);
        outcome(worker).await.unwrap();
    });
}

#[test]
fn step_timeout_is_a_backstop() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let worker = spawn_worker(server.config("w-timeout", root.path()));
        let mut conn = server.accept().await;
        conn.assign_empty("seg").await;
        conn.run(RunStep {
            step_id: "t".into(),
            segment_id: "seg".into(),
            action: Some(run_step::Action::Sh(ShAction {
                script: "sleep 300".into(),
            })),
            environment: Default::default(),
            dir: String::new(),
            timeout_ms: 100,
        })
        .await;
        let (_, finished) = conn.step_result("t").await;
        assert_eq!(finished.outcome, StepOutcome::TimedOut as i32);
        assert_eq!(finished.message, "timed out after 100 ms");
        assert_eq!(finished.exit_code, 143);
        conn.send(server_message::Kind::Shutdown(Shutdown {
            reason: "end".into(),
        }))
        .await;
        drop(conn);
        outcome(worker).await.unwrap();
    });
}

fn archive(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder
            .append_data(&mut header, path, text.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn source_is_unpacked_before_the_first_step() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let mut config = server.config("w-src", root.path());
        config.ephemeral = true;
        let worker = spawn_worker(config);
        let mut conn = server.accept().await;
        let tar = archive(&[
            ("hello.txt", "from the source\n"),
            ("bin/run.sh", "echo script ran\n"),
        ]);
        conn.assign_with_source("seg", &tar, 700).await;
        let ws = match conn.recv().await {
            worker_message::Kind::SegmentReady(ready) => std::path::PathBuf::from(ready.workspace),
            other => panic!("expected SegmentReady, got {other:?}"),
        };
        conn.sh("seg", "cat", "cat hello.txt; ./bin/run.sh").await;
        let (output, finished) = conn.step_result("cat").await;
        assert_eq!(finished.outcome, StepOutcome::Success as i32, "{output}");
        assert_eq!(output, "from the source\nscript ran\n");
        conn.send(server_message::Kind::FinishSegment(FinishSegment {
            segment_id: "seg".into(),
        }))
        .await;
        match conn.recv().await {
            worker_message::Kind::SegmentFinished(f) => {
                assert_eq!(f.outcome, StepOutcome::Success as i32)
            }
            other => panic!("expected SegmentFinished, got {other:?}"),
        }
        conn.closed().await;
        drop(conn);
        assert_eq!(
            outcome(worker).await.unwrap(),
            Outcome::SegmentFinished {
                segment_id: "seg".into()
            }
        );
        assert!(!ws.exists(), "workspace removed after the segment");
    });
}

#[test]
fn finish_segment_waits_for_running_steps() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let mut config = server.config("w-finish", root.path());
        config.ephemeral = true;
        let worker = spawn_worker(config);
        let mut conn = server.accept().await;
        let ws = conn.assign_empty("seg").await;
        conn.sh(
            "seg",
            "slow",
            "echo yes > started; while [ ! -f go ]; do sleep 0.01; done; echo finished",
        )
        .await;
        read_when_written(&ws.join("started")).await;
        conn.send(server_message::Kind::FinishSegment(FinishSegment {
            segment_id: "seg".into(),
        }))
        .await;
        // A step sent after the finish is refused: once that answer is
        // here, the worker has handled the finish, and the slow step must
        // still be running.
        conn.sh("seg", "probe", "true").await;
        loop {
            match conn.recv().await {
                worker_message::Kind::StepFinished(f) if f.step_id == "probe" => {
                    assert_eq!(f.outcome, StepOutcome::Error as i32);
                    assert_eq!(f.message, "segment seg is ending");
                    break;
                }
                worker_message::Kind::StepStarted(s) if s.step_id == "slow" => {}
                other => panic!("the running step was disturbed by the finish: {other:?}"),
            }
        }
        std::fs::write(ws.join("go"), "").unwrap();
        let (output, finished) = conn.step_result("slow").await;
        assert_eq!(
            finished.outcome,
            StepOutcome::Success as i32,
            "{}",
            finished.message
        );
        assert_eq!(output, "finished\n");
        match conn.recv().await {
            worker_message::Kind::SegmentFinished(f) => {
                assert_eq!(f.outcome, StepOutcome::Success as i32)
            }
            other => panic!("expected SegmentFinished, got {other:?}"),
        }
        conn.closed().await;
        drop(conn);
        assert_eq!(
            outcome(worker).await.unwrap(),
            Outcome::SegmentFinished {
                segment_id: "seg".into()
            }
        );
    });
}

#[test]
fn unsafe_source_fails_the_segment() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let mut config = server.config("w-evil", root.path());
        config.ephemeral = true;
        let worker = spawn_worker(config);
        let mut conn = server.accept().await;
        // The tar builder refuses `..`, so the header name is written raw.
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..7].copy_from_slice(b"../evil");
        header.set_size(1);
        header.set_mode(0o644);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend_from_slice(&[b'x'; 512]);
        tar.extend_from_slice(&[0; 1024]);
        conn.assign_with_source("seg", &tar, 1 << 20).await;
        match conn.recv().await {
            worker_message::Kind::SegmentFinished(f) => {
                assert_eq!(f.outcome, StepOutcome::Error as i32);
                assert_eq!(
                    f.message,
                    "checkout failed: source archive entry \"../evil\": expected a relative path without '..'"
                );
            }
            other => panic!("expected SegmentFinished, got {other:?}"),
        }
        drop(conn);
        outcome(worker).await.unwrap();
        assert!(!root.path().parent().unwrap().join("evil").exists());
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            0,
            "nothing left in the root"
        );
    });
}

#[test]
fn server_lost_past_the_grace_kills_steps_and_exits() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let mut config = server.config("w-lost", root.path());
        config.server_lost_grace = Duration::from_millis(800);
        let worker = spawn_worker(config);
        let mut conn = server.accept().await;
        let ws = conn.assign_empty("seg").await;
        conn.sh("seg", "long", "sleep 300 & echo $! > gc.pid; wait")
            .await;
        let pid: u32 = read_when_written(&ws.join("gc.pid")).await.parse().unwrap();
        // The server goes away: the stream ends and every reconnect fails.
        server.go_down();
        drop(conn);
        match outcome(worker).await.unwrap() {
            Outcome::ServerLost { grace } => assert_eq!(grace, Duration::from_millis(800)),
            other => panic!("expected ServerLost, got {other:?}"),
        }
        assert!(gone(pid).await, "step {pid} survived the lost server");
        assert!(!ws.exists());
    });
}

#[test]
fn silent_server_counts_as_lost() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let mut config = server.config("w-silent", root.path());
        config.server_lost_grace = Duration::from_millis(500);
        let worker = spawn_worker(config);
        // Accepted, but the server never says a word.
        let conn = server.accept().await;
        assert!(matches!(
            outcome(worker).await.unwrap(),
            Outcome::ServerLost { .. }
        ));
        drop(conn);
    });
}

#[test]
fn never_reachable_server_ends_after_the_grace() {
    block_on(async {
        // A port nothing listens on.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let root = tempfile::tempdir().unwrap();
        let mut config = hodei_worker::WorkerConfig::new("127.0.0.1", port, "w-none");
        config.workspace_root = root.path().to_owned();
        config.server_lost_grace = Duration::from_millis(300);
        assert!(matches!(
            outcome(spawn_worker(config)).await.unwrap(),
            Outcome::ServerLost { .. }
        ));
    });
}

#[test]
fn reconnects_within_the_grace_and_resumes() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let mut config = server.config("w-back", root.path());
        config.server_lost_grace = Duration::from_secs(20);
        let worker = spawn_worker(config);
        let mut conn = server.accept().await;
        let ws = conn.assign_empty("seg").await;
        conn.sh(
            "seg",
            "long",
            "echo $$ > sh.pid; while [ ! -f go ]; do sleep 0.01; done; echo after",
        )
        .await;
        let pid: u32 = read_when_written(&ws.join("sh.pid")).await.parse().unwrap();
        drop(conn);
        // The worker comes back by itself and says what it still runs.
        let mut conn = server.accept().await;
        let resume = conn.hello.resume.clone().expect("resume state");
        assert_eq!(resume.segment_id, "seg");
        assert_eq!(resume.running_step_ids, ["long"]);
        assert!(alive(pid), "the step kept running");
        std::fs::write(ws.join("go"), "").unwrap();
        loop {
            if let worker_message::Kind::StepFinished(f) = conn.recv().await {
                assert_eq!(f.step_id, "long");
                assert_eq!(f.outcome, StepOutcome::Success as i32);
                break;
            }
        }
        conn.send(server_message::Kind::Shutdown(Shutdown {
            reason: "end".into(),
        }))
        .await;
        drop(conn);
        outcome(worker).await.unwrap();
    });
}

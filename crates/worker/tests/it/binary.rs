//! The `hodei-worker` binary: configuration from the seed's variables, exit
//! codes, and signals.

use std::process::Stdio;

use hodei_proto::v1::{FinishSegment, StepOutcome, server_message, worker_message};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;

use crate::support::{PATIENCE, TOKEN, TestServer, alive, block_on, gone, read_when_written};

fn worker_command(port: u16, root: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hodei-worker"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SERVER_HOST", "127.0.0.1")
        .env("SERVER_PORT", port.to_string())
        .env("WORKER_ID", "bin-1")
        .env("WORKER_NAME", "bin-worker")
        .env("WORKER_CAPABILITIES", "linux, git")
        .env("EPHEMERAL_MODE", "true")
        .env("HODEI_WORKER_TOKEN", TOKEN)
        .env("HODEI_WORKSPACE_ROOT", root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[test]
fn binary_takes_the_seed_variables_and_hides_its_token_from_steps() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let mut child = worker_command(server.addr.port(), root.path())
            .spawn()
            .unwrap();
        let mut conn = server.accept().await;
        assert_eq!(conn.hello.worker_id, "bin-1");
        assert_eq!(conn.hello.name, "bin-worker");
        assert_eq!(conn.hello.token, TOKEN);
        assert_eq!(conn.hello.capabilities, ["linux", "git"]);
        assert!(conn.hello.ephemeral);
        assert_eq!(conn.hello.workspace_root, root.path().display().to_string());
        conn.assign_empty("seg").await;
        conn.sh("seg", "env", "env | sort").await;
        let (output, finished) = conn.step_result("env").await;
        assert_eq!(finished.outcome, StepOutcome::Success as i32);
        assert!(output.lines().any(|l| l == "WORKER_ID=bin-1"), "{output}");
        assert!(
            output.lines().any(|l| l == "WORKER_NAME=bin-worker"),
            "{output}"
        );
        assert!(
            !output.contains("HODEI_WORKER_TOKEN"),
            "the token leaked to a step:\n{output}"
        );
        assert!(
            !output.contains(TOKEN),
            "the token leaked to a step:\n{output}"
        );
        conn.send(server_message::Kind::FinishSegment(FinishSegment {
            segment_id: "seg".into(),
        }))
        .await;
        assert!(matches!(
            conn.recv().await,
            worker_message::Kind::SegmentFinished(_)
        ));
        conn.closed().await;
        drop(conn);
        let status = tokio::time::timeout(PATIENCE, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(0));
    });
}

#[test]
fn sigterm_kills_the_running_steps_and_exits() {
    block_on(async {
        let server = TestServer::start().await;
        let root = tempfile::tempdir().unwrap();
        let mut child = worker_command(server.addr.port(), root.path())
            .spawn()
            .unwrap();
        let mut conn = server.accept().await;
        let ws = conn.assign_empty("seg").await;
        conn.sh("seg", "long", "sleep 300 & echo $! > gc.pid; wait")
            .await;
        let pid: u32 = read_when_written(&ws.join("gc.pid")).await.parse().unwrap();
        assert!(alive(pid));
        let worker_pid = i32::try_from(child.id().unwrap()).unwrap();
        kill(Pid::from_raw(worker_pid), Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(PATIENCE, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(0));
        assert!(gone(pid).await, "step {pid} outlived its worker");
        assert!(!ws.exists());
        drop(conn);
    });
}

#[test]
fn exit_codes_for_bad_settings_and_a_lost_server() {
    block_on(async {
        let root = tempfile::tempdir().unwrap();
        let output = worker_command(1, root.path())
            .env("SERVER_PORT", "ninety")
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(
                "--server-port/SERVER_PORT: expected a port number from 1 to 65535, got \"ninety\""
            ),
            "{stderr}"
        );

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let output = tokio::time::timeout(
            PATIENCE,
            worker_command(port, root.path())
                .env("HODEI_SERVER_LOST_GRACE", "300ms")
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(output.status.code(), Some(3));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("server lost for more than 300 ms"),
            "{stderr}"
        );
        assert!(
            !stderr.contains('\u{1b}'),
            "colour codes in a captured log:\n{stderr}"
        );
        assert!(
            !stderr.contains(TOKEN),
            "the token leaked to the log:\n{stderr}"
        );
    });
}

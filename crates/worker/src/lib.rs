//! The Hodei worker: connects to the server, runs the steps of the segment it
//! is assigned, streams their logs and reports the result.
//!
//! The worker stays small on purpose. The server's pipeline runner walks the
//! stages (`when`, `post`, `retry`, `timeout`, `dir`, `withEnv`, `echo`,
//! `error`, `sleep`) and sends only leaf actions: `sh` scripts, which the
//! worker runs as `sh -e -c SCRIPT` in their own process group, streaming
//! stdout and stderr as they are produced, and `writeFile`. Several steps may
//! run at once (parallel branches). The worker knows nothing of pipelines,
//! templates or label expressions.
//!
//! It is a library so that `hodei-worker` (the static binary that goes into
//! images) and `hodei worker` run the same code: build a [`WorkerConfig`]
//! (by hand or from [`WorkerArgs`]) and call [`run`].
//!
//! A worker that is a process of its own (`hodei-worker`, `hodei worker`)
//! also calls [`adopt_orphans`] before [`run`] and [`end_adopted`] after
//! it: it is then the subreaper of everything its steps start, kills what
//! they leave behind at the end of each segment, and exits only once none
//! of it is left.
//!
//! Backstops: a worker that cannot reach the server (or hears nothing from
//! it) for longer than [`WorkerConfig::server_lost_grace`] kills its steps
//! and returns [`Outcome::ServerLost`]; an ephemeral worker returns after its
//! segment ends.

mod config;
mod orphans;
mod session;
mod step;
pub mod workspace;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use config::{
    ConfigError, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_KILL_GRACE, DEFAULT_SERVER_LOST_GRACE, Token,
    WorkerArgs, WorkerConfig,
};
pub use orphans::{LeftBehind, ORPHAN_KILL_WITHIN, adopt_orphans, adopting, end_adopted};
pub use step::signal_group;

/// Why [`run`] returned normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server sent `Shutdown`.
    Shutdown {
        /// The server's reason.
        reason: String,
    },
    /// An ephemeral worker finished its segment.
    SegmentFinished {
        /// The segment it ran.
        segment_id: String,
    },
    /// The server was unreachable or silent for longer than the grace period;
    /// running steps were killed.
    ServerLost {
        /// The grace period that passed.
        grace: Duration,
    },
    /// The `stop` future given to [`run_until`] completed (a signal); running
    /// steps were killed.
    Stopped,
}

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The server's address is not a valid URI.
    #[error("server endpoint {endpoint:?}: {message}")]
    Endpoint {
        /// The endpoint built from host and port.
        endpoint: String,
        /// What is wrong with it.
        message: String,
    },
    /// The server refused the worker's token or id.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// The workspace root cannot be created.
    #[error("workspace root {path}: {source}")]
    Workspace {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Runs the worker until the server shuts it down, its segment ends (in
/// ephemeral mode), or the server is lost past the grace period.
pub async fn run(config: WorkerConfig) -> Result<Outcome, WorkerError> {
    session::run_until(config, std::future::pending()).await
}

/// Like [`run`], but also stops when `stop` completes (pass a signal future
/// such as `tokio::signal::ctrl_c()`): running steps are killed (SIGTERM to
/// their process groups, SIGKILL after the kill grace), the workspace is
/// removed and [`Outcome::Stopped`] is returned. The server learns of it
/// from the closed stream.
pub async fn run_until(
    config: WorkerConfig,
    stop: impl Future<Output = ()>,
) -> Result<Outcome, WorkerError> {
    session::run_until(config, stop).await
}

/// Runs a worker as the whole of this process and returns its exit code:
/// [`adopt_orphans`], [`run_until`], then [`end_adopted`]. Messages for the
/// operator go to stderr after `prefix` (such as `"hodei-worker: "`).
///
/// Exit codes:
/// - 0: a shutdown, a finished segment or a signal, and nothing the steps
///   started is left running (the local backend relies on it);
/// - 1: the server refused the worker, or it could not start;
/// - 2: a bad setting (the binaries return it before calling this);
/// - 3: the server was lost past the grace period;
/// - 4: as 0, but processes the steps started could not all be ended (or
///   this process could not adopt them).
pub async fn run_process(config: WorkerConfig, stop: impl Future<Output = ()>, prefix: &str) -> u8 {
    WHOLE_PROCESS.store(true, Ordering::SeqCst);
    let adopted = adopt_orphans();
    let outcome = run_until(config, stop).await;
    let left = if adopted {
        end_adopted(ORPHAN_KILL_WITHIN).await
    } else {
        Err(LeftBehind::NotAdopting)
    };
    match (outcome, left) {
        (Err(e), _) => {
            eprintln!("{prefix}{e}");
            1
        }
        (Ok(Outcome::ServerLost { grace }), _) => {
            eprintln!("{prefix}server lost for more than {} ms", grace.as_millis());
            3
        }
        (Ok(outcome), Err(e)) => {
            tracing::info!(?outcome, "worker done");
            eprintln!("{prefix}{e}");
            4
        }
        (Ok(outcome), Ok(_)) => {
            tracing::info!(?outcome, "worker done");
            0
        }
    }
}

/// Set by [`run_process`]: the worker is the whole of this process, so it
/// may change process-wide state such as the working directory.
static WHOLE_PROCESS: AtomicBool = AtomicBool::new(false);

/// Whether the worker is the whole of this process ([`run_process`]).
pub(crate) fn whole_process() -> bool {
    WHOLE_PROCESS.load(Ordering::SeqCst)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

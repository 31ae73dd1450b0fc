//! A worker process adopts what its steps leave behind, and ends it.
//!
//! A step runs in its own process group, which the worker kills when the
//! step ends, but a step may start processes that leave the group (`setsid`,
//! a daemon's double fork). When such a process's parent dies, Linux
//! re-parents it to the nearest ancestor that is a *child subreaper*. The
//! worker process makes itself one ([`adopt_orphans`]), so everything its
//! steps start stays its descendant: no process escapes to `init`, and
//! listing the worker's own children finds what is left. At the end of a
//! segment, and before the process exits, [`end_adopted`] kills and reaps
//! every child until none remains.
//!
//! Only a worker that is a process of its own does this: `hodei-worker` and
//! `hodei worker` call [`adopt_orphans`] first; a worker run inside another
//! program (the tests) does not adopt, and [`end_adopted`] then does
//! nothing, so it never touches its host's children.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Set once this process is a child subreaper.
static ADOPTING: AtomicBool = AtomicBool::new(false);

/// How long processes the steps left behind may take to end after SIGKILL.
pub const ORPHAN_KILL_WITHIN: Duration = Duration::from_secs(5);

/// How often a child that was sent SIGKILL is checked for having ended.
const REAP_POLL: Duration = Duration::from_millis(1);

/// Why [`end_adopted`] could not make sure nothing is left.
#[derive(Debug, thiserror::Error)]
pub enum LeftBehind {
    /// The kernel does not list a process's children
    /// (`/proc/<pid>/task/<tid>/children` needs `CONFIG_PROC_CHILDREN`).
    #[error("cannot list this process's children: {0}")]
    CannotList(std::io::Error),
    /// Children sent SIGKILL had not ended when the time ran out (a process
    /// stuck in the kernel, such as on a hung network file system).
    #[error("processes {0:?} were sent SIGKILL but had not ended")]
    StillRunning(Vec<u32>),
    /// This process could not become a subreaper: what the steps left may
    /// have gone to `init`, out of the worker's sight.
    #[error("this process could not adopt what its steps left behind")]
    NotAdopting,
}

/// Makes this process the child subreaper of its descendants (Linux
/// `PR_SET_CHILD_SUBREAPER`), so that what its steps leave behind is
/// re-parented to it. Call it first thing, before any step runs. Returns
/// whether it worked.
pub fn adopt_orphans() -> bool {
    match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => {
            ADOPTING.store(true, Ordering::SeqCst);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot become the subreaper of the steps' processes");
            false
        }
    }
}

/// Whether [`adopt_orphans`] made this process a subreaper.
pub fn adopting() -> bool {
    ADOPTING.load(Ordering::SeqCst)
}

/// The pids of this process's children (of all its threads).
fn children() -> std::io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    let mut listed = false;
    let mut missing = None;
    for task in std::fs::read_dir("/proc/self/task")? {
        match std::fs::read_to_string(task?.path().join("children")) {
            Ok(text) => {
                listed = true;
                pids.extend(
                    text.split_ascii_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
            // A thread that ended since the directory was read, or a
            // kernel without the file (then no thread has it).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing = Some(e),
            Err(e) => return Err(e),
        }
    }
    match (listed, missing) {
        (false, Some(e)) => Err(e),
        _ => Ok(pids),
    }
}

/// Kills (SIGKILL) and reaps every child of this process, again and again
/// as the killed ones' own children are re-parented here, until none is
/// left; returns how many it ended. Does nothing in a process that is not
/// [`adopting`].
///
/// Call it only when no step runs: every child is then something a step
/// left behind. Children sent SIGKILL that have not ended `within` are
/// reported, not waited for.
pub async fn end_adopted(within: Duration) -> Result<usize, LeftBehind> {
    if !adopting() {
        return Ok(0);
    }
    let deadline = tokio::time::Instant::now() + within;
    let mut ended = 0;
    loop {
        let pids = children().map_err(LeftBehind::CannotList)?;
        if pids.is_empty() {
            return Ok(ended);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LeftBehind::StillRunning(pids));
        }
        for &pid in &pids {
            // A child's pid cannot be reused before it is reaped, and only
            // this process reaps it.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        for &pid in &pids {
            loop {
                match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(LeftBehind::StillRunning(
                                children().map_err(LeftBehind::CannotList)?,
                            ));
                        }
                        tokio::time::sleep(REAP_POLL).await;
                    }
                    Err(Errno::EINTR) => {}
                    Ok(_) => {
                        ended += 1;
                        break;
                    }
                    // Already reaped (ECHILD), or not waitable: the next
                    // listing tells whether it is still a child.
                    Err(_) => break,
                }
            }
        }
    }
}

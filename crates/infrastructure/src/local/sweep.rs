//! Finding and killing what a worker's steps left behind: every live
//! process whose environment holds the worker's `WORKER_ID=<id>`.
//!
//! Steps run in their own process groups and may leave their group or
//! session, so the process tree alone does not find them; their
//! environment does (a step inherits the worker's). Reading another
//! process's environment maps its memory, which costs far more than
//! reading its `stat`, so a scan reads `stat` first and skips processes
//! that started before the oldest worker looked for (nothing a worker
//! started can be older than the worker), and zombies.
//!
//! Deleting many workers at once (a busy server, or a shutdown) would scan
//! `/proc` once per worker; a [`Sweeper`] serves every deletion that
//! arrives while a scan runs with the next scan, so one pass over `/proc`
//! serves many deletions. Each deletion is still served by a scan that
//! started after it asked.
//!
//! A scan reads every process's `stat`, which costs about a millisecond on
//! a busy host; under a steady stream of deletions back-to-back scans
//! would take a good part of a core. So a scan starts no sooner than
//! [`PACE`] times the previous scan's duration after that scan started
//! (never more than [`MAX_PAUSE`] later): deletions arriving meanwhile
//! share it, and sweeping takes at most about a tenth of one core however
//! many workers end. An idle server's deletion, long after the last scan,
//! is scanned at once.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use super::lock;

/// What a scan needs of one `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    zombie: bool,
    pgrp: u32,
    /// Field 22: clock ticks after boot.
    start: u64,
}

/// Parses the fields after the command (which may hold spaces and
/// parentheses, hence the last `)`).
fn parse_stat(stat: &[u8]) -> Option<Stat> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // rest starts at field 3 (state): state, ppid, pgrp, ..., starttime (22).
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    let start = fields.nth(16)?.parse().ok()?;
    Some(Stat {
        zombie: state == "Z",
        pgrp,
        start,
    })
}

/// Reads `path` into `buf` (cleared first); false when it cannot be read.
fn read_into(path: &str, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    std::fs::File::open(path).is_ok_and(|mut f| f.read_to_end(buf).is_ok())
}

/// The start time of `pid` in clock ticks after boot (field 22 of
/// `/proc/<pid>/stat`), while it runs.
pub fn start_time(pid: u32) -> Option<u64> {
    let mut buf = Vec::with_capacity(512);
    read_into(&format!("/proc/{pid}/stat"), &mut buf)
        .then(|| parse_stat(&buf))
        .flatten()
        .map(|s| s.start)
}

/// Whether `pid` is a running process (it exists and is not a zombie).
pub fn is_live(pid: u32) -> bool {
    let mut buf = Vec::with_capacity(512);
    read_into(&format!("/proc/{pid}/stat"), &mut buf) && parse_stat(&buf).is_some_and(|s| !s.zombie)
}

/// A live process found by a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    pid: u32,
    pgrp: u32,
    /// Which marker it carries (index into the scan's markers).
    marker: usize,
}

/// Live processes other than this one that started at `since` (clock
/// ticks after boot) or later and whose environment holds one of
/// `markers` (whole `NAME=value` entries). Processes this user may not
/// read are passed over.
fn scan(markers: &[Vec<u8>], since: u64) -> Vec<Found> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut path = String::with_capacity(32);
    let mut stat = Vec::with_capacity(512);
    let mut environ = Vec::with_capacity(4096);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        path.clear();
        path.push_str("/proc/");
        path.push_str(name.to_str().unwrap_or_default());
        let dir_len = path.len();
        path.push_str("/stat");
        if !read_into(&path, &mut stat) {
            continue;
        }
        let Some(info) = parse_stat(&stat) else {
            continue;
        };
        if info.zombie || info.start < since {
            continue;
        }
        path.truncate(dir_len);
        path.push_str("/environ");
        if !read_into(&path, &mut environ) {
            continue;
        }
        let marker = environ
            .split(|b| *b == 0)
            .find_map(|var| markers.iter().position(|m| var == m.as_slice()));
        if let Some(marker) = marker {
            found.push(Found {
                pid,
                pgrp: info.pgrp,
                marker,
            });
        }
    }
    found
}

fn marker(worker_id: &str) -> Vec<u8> {
    format!("WORKER_ID={worker_id}").into_bytes()
}

/// Live processes, other than this one, whose environment holds
/// `WORKER_ID=<id>` for one of `worker_ids`: the workers the local backend
/// started and everything their steps started, even outside their process
/// groups. Processes this user may not read are passed over.
pub fn processes_marked_by(worker_ids: &[&str]) -> Vec<u32> {
    let markers: Vec<Vec<u8>> = worker_ids.iter().map(|id| marker(id)).collect();
    scan(&markers, 0).into_iter().map(|f| f.pid).collect()
}

/// SIGKILLs each found process and its process group (never this
/// process's own group); returns how many processes carried each marker.
fn kill_found(found: &[Found], markers: usize) -> Vec<usize> {
    let own_group = nix::unistd::getpgrp().as_raw();
    let mut counts = vec![0; markers];
    for f in found {
        if let Ok(pgrp) = i32::try_from(f.pgrp)
            && pgrp > 1
            && pgrp != own_group
        {
            let _ = killpg(Pid::from_raw(pgrp), Signal::SIGKILL);
        }
        if let Ok(pid) = i32::try_from(f.pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        counts[f.marker] += 1;
    }
    counts
}

/// Kills every process (and its process group) that started at `since` or
/// later and whose environment holds `WORKER_ID=<worker_id>`; returns how
/// many there were.
pub(super) fn kill_marked_processes(worker_id: &str, since: u64) -> usize {
    let markers = [marker(worker_id)];
    kill_found(&scan(&markers, since), 1)[0]
}

/// One deletion waiting for a scan.
#[derive(Debug)]
struct Request {
    marker: Vec<u8>,
    since: u64,
    done: oneshot::Sender<usize>,
}

#[derive(Debug, Default)]
struct State {
    pending: Vec<Request>,
    /// A blocking task is draining `pending`.
    running: bool,
    /// When the last scan started and how long it took.
    last: Option<(Instant, Duration)>,
    /// Scans run so far.
    scans: u64,
}

/// A scan starts no sooner than this many times the previous scan's
/// duration after that scan started.
const PACE: u32 = 10;
/// The longest a deletion waits for the pace.
const MAX_PAUSE: Duration = Duration::from_millis(25);

/// How long a scan due `now` waits, given when the last one started and
/// how long it took.
fn pause(last: Option<(Instant, Duration)>, now: Instant, max: Duration) -> Duration {
    match last {
        None => Duration::ZERO,
        Some((started, took)) => {
            let due = started + took.saturating_mul(PACE).min(max);
            due.saturating_duration_since(now)
        }
    }
}

/// Serves concurrent sweeps with shared scans of `/proc`.
#[derive(Debug)]
pub(super) struct Sweeper {
    state: Mutex<State>,
    max_pause: Duration,
}

impl Default for Sweeper {
    fn default() -> Self {
        Self::with_max_pause(MAX_PAUSE)
    }
}

impl Sweeper {
    fn with_max_pause(max_pause: Duration) -> Self {
        Self {
            state: Mutex::default(),
            max_pause,
        }
    }

    /// Kills what carries `WORKER_ID=<worker_id>` and started at `since`
    /// or later, with a scan that starts after this call; returns how many
    /// processes were killed.
    pub(super) async fn sweep(self: &Arc<Self>, worker_id: &str, since: u64) -> usize {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut state = lock(&self.state);
            state.pending.push(Request {
                marker: marker(worker_id),
                since,
                done,
            });
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let drain = Drain {
                sweeper: self.clone(),
                finished: false,
            };
            // Not awaited: this deletion waits for its own answer only.
            drop(tokio::task::spawn_blocking(move || drain.run()));
        }
        match answer.await {
            Ok(count) => count,
            // The scan could not run (the runtime is going away): scan
            // here rather than leave processes behind.
            Err(_) => kill_marked_processes(worker_id, since),
        }
    }
}

/// A blocking task scanning for what is pending until nothing is. Should
/// it stop early (never run, or panic), it lets later sweeps start a
/// drain of their own and drops the pending requests, whose callers then
/// scan by themselves.
struct Drain {
    sweeper: Arc<Sweeper>,
    finished: bool,
}

impl Drain {
    fn run(mut self) {
        loop {
            let last = {
                let mut state = lock(&self.sweeper.state);
                if state.pending.is_empty() {
                    state.running = false;
                    self.finished = true;
                    return;
                }
                state.last
            };
            // Deletions asked while this waits join the batch.
            let wait = pause(last, Instant::now(), self.sweeper.max_pause);
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            let batch = {
                let mut state = lock(&self.sweeper.state);
                if state.pending.is_empty() {
                    state.running = false;
                    self.finished = true;
                    return;
                }
                std::mem::take(&mut state.pending)
            };
            let since = batch.iter().map(|r| r.since).min().unwrap_or(0);
            let markers: Vec<Vec<u8>> = batch.iter().map(|r| r.marker.clone()).collect();
            let started = Instant::now();
            let found = scan(&markers, since);
            {
                let mut state = lock(&self.sweeper.state);
                state.last = Some((started, started.elapsed()));
                state.scans += 1;
            }
            let counts = kill_found(&found, markers.len());
            for (request, count) in batch.into_iter().zip(counts) {
                let _ = request.done.send(count);
            }
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if !self.finished {
            let mut state = lock(&self.sweeper.state);
            state.running = false;
            state.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn stat_fields_after_a_command_with_spaces_and_parentheses() {
        let line = b"4242 (a b) c)) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                zombie: false,
                pgrp: 4240,
                start: 987_654
            })
        );
        let zombie = b"7 (sh) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0\n";
        assert_eq!(
            parse_stat(zombie).map(|s| (s.zombie, s.start)),
            Some((true, 55))
        );
        assert_eq!(parse_stat(b"7 (sh) S 1"), None);
        assert_eq!(parse_stat(b"no parenthesis"), None);
    }

    #[test]
    fn own_start_time_is_known() {
        let me = start_time(std::process::id()).expect("this process has a start time");
        assert!(me > 0);
        assert!(is_live(std::process::id()));
        assert_eq!(start_time(u32::MAX), None);
    }

    /// A `sleep` carrying `WORKER_ID=<id>`, in its own process group.
    /// A `sleep` carrying `WORKER_ID=id`, returned once its environment
    /// can be read: `spawn` returns while the kernel is still setting up
    /// the new program, before `/proc/<pid>/environ` shows it.
    fn marked_sleep(id: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let child = Command::new("sleep")
            .arg("300")
            .env("WORKER_ID", id)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("sleep starts");
        let environ = format!("/proc/{}/environ", child.id());
        let marker = marker(id);
        for _ in 0..500 {
            let mut buf = Vec::new();
            if read_into(&environ, &mut buf) && buf.windows(marker.len()).any(|w| w == marker) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child
    }

    fn unique(name: &str) -> String {
        format!("sweep-test-{}-{name}", std::process::id())
    }

    #[test]
    fn a_scan_finds_marked_processes_and_skips_older_ones() {
        let id = unique("scan");
        let mut child = marked_sleep(&id);
        let pid = child.id();
        let started = start_time(pid).expect("the sleep runs");
        assert_eq!(processes_marked_by(&[&id]), [pid]);
        let found = scan(&[marker(&id)], started);
        assert_eq!(found.iter().map(|f| f.pid).collect::<Vec<_>>(), [pid]);
        // Started before `since`: not read, not found.
        assert!(scan(&[marker(&id)], started + 1).is_empty());
        // Another marker, or a prefix of this one, is not this worker's.
        assert!(processes_marked_by(&[&unique("other")]).is_empty());
        assert!(processes_marked_by(&[&id[..id.len() - 1]]).is_empty());
        assert_eq!(kill_marked_processes(&id, started), 1);
        let _ = child.wait();
        assert!(processes_marked_by(&[&id]).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sweeps_each_kill_their_own_processes() {
        let sweeper = Arc::new(Sweeper::default());
        let ids: Vec<String> = (0..6).map(|i| unique(&format!("batch-{i}"))).collect();
        let mut children: Vec<_> = ids
            .iter()
            .flat_map(|id| [marked_sleep(id), marked_sleep(id)])
            .collect();
        let unrelated_id = unique("unrelated");
        let mut unrelated = marked_sleep(&unrelated_id);
        let sweeps = ids.iter().map(|id| {
            let sweeper = sweeper.clone();
            let id = id.clone();
            tokio::spawn(async move { sweeper.sweep(&id, 0).await })
        });
        for sweep in sweeps.collect::<Vec<_>>() {
            assert_eq!(sweep.await.unwrap(), 2);
        }
        for child in &mut children {
            let _ = child.wait();
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert!(processes_marked_by(&refs).is_empty());
        assert_eq!(processes_marked_by(&[&unrelated_id]), [unrelated.id()]);
        assert!(!lock(&sweeper.state).running);
        // A later sweep starts a scan of its own.
        assert_eq!(sweeper.sweep(&unrelated_id, 0).await, 1);
        let _ = unrelated.wait();
    }

    #[test]
    fn a_scan_waits_a_multiple_of_the_last_one_capped() {
        let now = Instant::now();
        let max = Duration::from_millis(25);
        assert_eq!(pause(None, now, max), Duration::ZERO);
        let ms = Duration::from_millis;
        // Started 3 ms ago and took 1 ms: due 10 ms after its start.
        assert_eq!(pause(Some((now - ms(3), ms(1))), now, max), ms(7));
        // Long ago: at once.
        assert_eq!(
            pause(Some((now - ms(500), ms(1))), now, max),
            Duration::ZERO
        );
        // A slow scan: never more than the cap after it started.
        assert_eq!(pause(Some((now - ms(5), ms(40))), now, max), ms(20));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sweeps_asked_while_a_scan_is_paced_share_one_scan() {
        let sweeper = Arc::new(Sweeper::with_max_pause(Duration::from_secs(2)));
        // As if a slow scan had just run: the next one waits up to 2 s.
        lock(&sweeper.state).last = Some((Instant::now(), Duration::from_secs(1)));
        let ids: Vec<String> = (0..5).map(|i| unique(&format!("paced-{i}"))).collect();
        let mut children: Vec<_> = ids.iter().map(|id| marked_sleep(id)).collect();
        let sweeps: Vec<_> = ids
            .iter()
            .map(|id| {
                let sweeper = sweeper.clone();
                let id = id.clone();
                tokio::spawn(async move { sweeper.sweep(&id, 0).await })
            })
            .collect();
        for sweep in sweeps {
            assert_eq!(sweep.await.unwrap(), 1);
        }
        for child in &mut children {
            let _ = child.wait();
        }
        assert_eq!(lock(&sweeper.state).scans, 1);
    }
}

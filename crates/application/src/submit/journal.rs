//! A job's journal in memory, and its watchers.
//!
//! The journal numbers every update of a running job (`seq`, from 0). Its
//! log lines are also in the [`JobRepository`], numbered on their own from
//! 0 in the same order: the journal hands each line to the repository's
//! writer under its own lock, so the n-th line journaled is the n-th line
//! stored. That is what lets the journal forget lines.
//!
//! **Bounded memory.** A journal keeps at most
//! [`JobsConfig::live_journal_bytes`](super::JobsConfig::live_journal_bytes)
//! of log lines (counted with their bookkeeping, see [`line_cost`]). Past
//! that the oldest lines are *evicted*, oldest first, but only lines the
//! repository has confirmed storing: a line the writer has not stored yet
//! stays until it has. An evicted prefix keeps, compactly:
//! - the other updates (statuses, stages, workers) whole: they are few and
//!   small;
//! - each evicted line's stage as runs (a new run where the stage changes
//!   between consecutive lines).
//!
//! An evicted line's position in the repository's log is its journal
//! position minus the number of other updates before it, so a watcher that
//! asks for an evicted position reads it from the repository, a page at a
//! time, and goes on with the journal in memory where the evicted prefix
//! ends: no gap, no duplicate, same order.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use hodei_domain::{Job, JobId, JobStatus, Timestamp};
use tokio::sync::{mpsc, watch};

use super::{JobUpdate, Pumped, StageSummary, UpdateKind, lock};
use crate::jobs::{JobRepository, LogChunk, LogEntry};

/// A job's journal: numbered updates and a signal when one is added.
pub(super) struct Journal {
    state: Mutex<JournalState>,
    changed: watch::Sender<u64>,
    /// Most bytes of log lines kept in memory (see [`line_cost`]).
    max_log_bytes: usize,
}

struct JournalState {
    /// The updates from `evicted.end` on, in order.
    updates: VecDeque<JobUpdate>,
    /// What the log lines of `updates` cost ([`line_cost`]).
    log_bytes: usize,
    /// Log lines journaled so far.
    logs: u64,
    /// Log lines the repository confirmed storing, at positions
    /// `0..stored` of its log.
    stored: u64,
    /// What is left in memory of the updates before `updates`.
    evicted: Evicted,
    closed: bool,
    /// The highest `log_bytes` seen after an update was journaled.
    #[cfg(test)]
    peak_log_bytes: usize,
}

/// The evicted prefix of a journal.
#[derive(Default)]
struct Evicted {
    /// Journal positions below this are evicted.
    end: u64,
    /// Log lines evicted: positions `0..logs` of the repository's log.
    logs: u64,
    /// The updates of the prefix that are not log lines, in order.
    others: Vec<JobUpdate>,
    /// The evicted lines' stages: from journal position `.0` on, evicted
    /// lines belong to stage `stages[.1]`, up to the next run.
    runs: Vec<(u64, u32)>,
    /// The stages named by `runs`, each once: its name and path.
    stages: Vec<(String, Vec<String>)>,
}

impl Evicted {
    fn add_line(&mut self, seq: u64, stage: String, path: Vec<String>) {
        self.logs += 1;
        let same = |(name, names): &(String, Vec<String>)| *name == stage && *names == path;
        if let Some(&(_, last)) = self.runs.last()
            && same(&self.stages[last as usize])
        {
            return;
        }
        let index = match self.stages.iter().rposition(same) {
            Some(index) => index,
            None => {
                self.stages.push((stage, path));
                self.stages.len() - 1
            }
        };
        self.runs
            .push((seq, u32::try_from(index).unwrap_or(u32::MAX)));
    }
}

/// What a journal position holds, as [`Journal::find`] answers.
enum Found {
    /// The update, from memory.
    Update(JobUpdate),
    /// An evicted log line: read it from the repository.
    Evicted {
        /// Its position in the repository's log.
        log: u64,
        /// Its stage's name.
        stage: String,
        /// Its stage's path.
        path: Vec<String>,
        /// Evicted lines from `log` on (at least 1).
        following: u64,
    },
    /// Not journaled yet; `true` when it never will be (the journal is
    /// closed).
    Ahead(bool),
}

/// What a log line costs in a journal: its bytes, its stage and step
/// names, and the entry itself. Counting only the bytes would let a
/// flood of tiny lines take far more memory than the budget says.
pub(super) fn line_cost(update: &JobUpdate) -> usize {
    match &update.kind {
        UpdateKind::Log {
            stage,
            path,
            step_id,
            data,
            ..
        } => {
            std::mem::size_of::<JobUpdate>()
                + data.len()
                + stage.len()
                + path.iter().map(|p| p.len() + 24).sum::<usize>()
                + step_id.as_ref().map_or(0, String::len)
        }
        _ => 0,
    }
}

impl Journal {
    /// An empty journal keeping at most `max_log_bytes` of log lines in
    /// memory.
    pub(super) fn new(max_log_bytes: usize) -> Self {
        Journal {
            state: Mutex::new(JournalState {
                updates: VecDeque::new(),
                log_bytes: 0,
                logs: 0,
                stored: 0,
                evicted: Evicted::default(),
                closed: false,
                #[cfg(test)]
                peak_log_bytes: 0,
            }),
            changed: watch::Sender::new(0),
            max_log_bytes,
        }
    }

    /// Journals an update that is not a log line.
    pub(super) fn push(&self, at: Timestamp, kind: UpdateKind) {
        self.append(at, kind, None);
    }

    /// Journals a log line and hands `chunk` (the same line, as stored) to
    /// the repository's writer, under the journal's lock so that lines
    /// reach the repository in journal order.
    pub(super) fn push_line(
        &self,
        at: Timestamp,
        kind: UpdateKind,
        chunk: LogChunk,
        writer: &mpsc::UnboundedSender<Box<Pumped>>,
    ) {
        self.append(at, kind, Some((chunk, writer)));
    }

    fn append(
        &self,
        at: Timestamp,
        kind: UpdateKind,
        line: Option<(LogChunk, &mpsc::UnboundedSender<Box<Pumped>>)>,
    ) {
        let next = {
            let mut state = lock(&self.state);
            if state.closed {
                return;
            }
            let seq = state.evicted.end + state.updates.len() as u64;
            let update = JobUpdate { seq, at, kind };
            if matches!(update.kind, UpdateKind::Log { .. }) {
                state.log_bytes += line_cost(&update);
                state.logs += 1;
            }
            if let Some((chunk, writer)) = line {
                let _ = writer.send(Box::new(Pumped::Log(chunk)));
            }
            state.updates.push_back(update);
            state.evict(self.max_log_bytes);
            #[cfg(test)]
            {
                state.peak_log_bytes = state.peak_log_bytes.max(state.log_bytes);
            }
            seq + 1
        };
        self.changed.send_replace(next);
    }

    /// Records that the repository holds the job's first `lines` log
    /// lines; lines past the budget among them are evicted.
    pub(super) fn stored(&self, lines: u64) {
        let mut state = lock(&self.state);
        state.stored = state.stored.max(lines);
        state.evict(self.max_log_bytes);
    }

    /// What the log lines kept in memory cost ([`line_cost`]).
    pub(super) fn log_bytes(&self) -> usize {
        lock(&self.state).log_bytes
    }

    /// The highest [`Journal::log_bytes`] seen after an update.
    #[cfg(test)]
    pub(super) fn peak_log_bytes(&self) -> usize {
        lock(&self.state).peak_log_bytes
    }

    /// Log lines evicted from memory.
    #[cfg(test)]
    pub(super) fn evicted_lines(&self) -> u64 {
        lock(&self.state).evicted.logs
    }

    pub(super) fn close(&self) {
        let len = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.evicted.end + state.updates.len() as u64
        };
        self.changed.send_replace(len);
    }

    /// The last status journaled.
    pub(super) fn status(&self) -> Option<JobStatus> {
        let state = lock(&self.state);
        state
            .evicted
            .others
            .iter()
            .chain(&state.updates)
            .rev()
            .find_map(|u| match &u.kind {
                UpdateKind::Status(status) => Some(status.clone()),
                _ => None,
            })
    }

    pub(super) fn stages(&self) -> Vec<StageSummary> {
        let state = lock(&self.state);
        let mut stages: Vec<StageSummary> = Vec::new();
        for update in state.evicted.others.iter().chain(&state.updates) {
            match &update.kind {
                UpdateKind::StageStarted { stage, path }
                    if !stages.iter().any(|s| &s.path == path && s.result.is_none()) =>
                {
                    stages.push(StageSummary {
                        name: stage.clone(),
                        path: path.clone(),
                        result: None,
                        started_at: update.at,
                        finished_at: None,
                    });
                }
                UpdateKind::StageFinished {
                    stage,
                    path,
                    result,
                    ..
                } => {
                    match stages
                        .iter_mut()
                        .rev()
                        .find(|s| &s.path == path && s.result.is_none())
                    {
                        Some(summary) => {
                            summary.result = Some(*result);
                            summary.finished_at = Some(update.at);
                        }
                        None => stages.push(StageSummary {
                            name: stage.clone(),
                            path: path.clone(),
                            result: Some(*result),
                            started_at: update.at,
                            finished_at: Some(update.at),
                        }),
                    }
                }
                _ => {}
            }
        }
        stages
    }

    fn find(&self, seq: u64) -> Found {
        let state = lock(&self.state);
        let evicted = &state.evicted;
        if seq >= evicted.end {
            let update = usize::try_from(seq - evicted.end)
                .ok()
                .and_then(|i| state.updates.get(i));
            return match update {
                Some(update) => Found::Update(update.clone()),
                None => Found::Ahead(state.closed),
            };
        }
        match evicted.others.binary_search_by_key(&seq, |u| u.seq) {
            Ok(i) => Found::Update(evicted.others[i].clone()),
            Err(before) => {
                let log = seq - before as u64;
                // Every evicted line is covered by a run from the first on.
                let run = evicted.runs.partition_point(|&(first, _)| first <= seq);
                let (stage, path) = run
                    .checked_sub(1)
                    .and_then(|r| evicted.stages.get(evicted.runs[r].1 as usize))
                    .cloned()
                    .unwrap_or_default();
                Found::Evicted {
                    log,
                    stage,
                    path,
                    following: evicted.logs.saturating_sub(log).max(1),
                }
            }
        }
    }
}

impl JournalState {
    /// Evicts the oldest updates while the log lines cost more than `max`
    /// and the oldest line is stored.
    fn evict(&mut self, max: usize) {
        while self.log_bytes > max {
            let Some(front) = self.updates.front() else {
                break;
            };
            let is_line = matches!(front.kind, UpdateKind::Log { .. });
            if is_line && self.evicted.logs >= self.stored {
                break;
            }
            let Some(update) = self.updates.pop_front() else {
                break;
            };
            self.evicted.end = update.seq + 1;
            if is_line {
                self.log_bytes -= line_cost(&update);
                if let UpdateKind::Log { stage, path, .. } = update.kind {
                    self.evicted.add_line(update.seq, stage, path);
                }
            } else {
                self.evicted.others.push(update);
            }
        }
    }
}

/// A watcher of one job: the journal from a position, then the live tail.
///
/// Log lines no longer in memory (a long log's beginning while the job
/// runs, or a whole job that ended long ago or before the server
/// restarted) are read from the repository one page at a time, so watching
/// a long log never holds more than a page of it.
pub struct JobWatch {
    pub(super) source: WatchSource,
    pub(super) next: u64,
}

pub(super) enum WatchSource {
    Live {
        journal: Arc<Journal>,
        changed: watch::Receiver<u64>,
        /// Where evicted lines are read from.
        jobs: Arc<dyn JobRepository>,
        job: JobId,
        /// Lines read from the repository and not returned yet.
        page: VecDeque<LogEntry>,
        /// Whether a failed read was reported.
        read_failed: bool,
    },
    Stored(Box<StoredLog>),
}

impl WatchSource {
    /// Watches `journal`, reading its evicted lines from `jobs`.
    pub(super) fn live(journal: Arc<Journal>, jobs: Arc<dyn JobRepository>, job: JobId) -> Self {
        let changed = journal.changed.subscribe();
        WatchSource::Live {
            journal,
            changed,
            jobs,
            job,
            page: VecDeque::new(),
            read_failed: false,
        }
    }
}

/// Log entries read from the repository per page (a store may return
/// fewer: the SQLite store also stops a page at a byte size).
const STORED_PAGE: usize = 1024;

/// A log line as the repository stored it, back as a journal update.
fn line_update(seq: u64, entry: LogEntry, stage: String, path: Vec<String>) -> JobUpdate {
    let mut data = entry.chunk.data;
    if data.last() == Some(&b'\n') {
        data.pop();
    }
    JobUpdate {
        seq,
        at: entry.chunk.at,
        kind: UpdateKind::Log {
            stage,
            path,
            step_id: entry.chunk.step_id,
            stream: entry.chunk.stream,
            data,
        },
    }
}

/// A stored job's journal: `Queued` (and `Running` if it started), its log
/// entries, then its final status; numbered as the live journal would be.
pub(super) struct StoredLog {
    jobs: Arc<dyn JobRepository>,
    job: Job,
    head: Vec<JobUpdate>,
    page: VecDeque<JobUpdate>,
    next_log: u64,
    logs_done: bool,
    end_sent: bool,
}

impl StoredLog {
    pub(super) fn new(jobs: Arc<dyn JobRepository>, job: Job, from: u64) -> Self {
        let mut head = vec![JobUpdate {
            seq: 0,
            at: job.created_at(),
            kind: UpdateKind::Status(JobStatus::Queued),
        }];
        if let Some(started) = job.started_at() {
            head.push(JobUpdate {
                seq: 1,
                at: started,
                kind: UpdateKind::Status(JobStatus::Running),
            });
        }
        let next_log = from.saturating_sub(head.len() as u64);
        StoredLog {
            jobs,
            job,
            head,
            page: VecDeque::new(),
            next_log,
            logs_done: false,
            end_sent: false,
        }
    }

    async fn next(&mut self, seq: u64) -> Option<JobUpdate> {
        if let Some(update) = usize::try_from(seq).ok().and_then(|i| self.head.get(i)) {
            return Some(update.clone());
        }
        let offset = self.head.len() as u64;
        loop {
            if let Some(update) = self.page.pop_front() {
                return Some(update);
            }
            if self.logs_done {
                break;
            }
            let page = match self
                .jobs
                .read_logs(self.job.id(), self.next_log, STORED_PAGE)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(job = %self.job.id(), error = %e, "cannot read the job's log");
                    Vec::new()
                }
            };
            let Some(last) = page.last() else {
                self.logs_done = true;
                continue;
            };
            self.next_log = last.seq + 1;
            self.page
                .extend(page.into_iter().map(|entry| {
                    line_update(offset + entry.seq, entry, String::new(), Vec::new())
                }));
        }
        if self.end_sent || !self.job.status().is_final() {
            return None;
        }
        self.end_sent = true;
        Some(JobUpdate {
            seq: offset + self.next_log,
            at: self.job.finished_at().unwrap_or(self.job.created_at()),
            kind: UpdateKind::Status(self.job.status().clone()),
        })
    }
}

impl fmt::Debug for JobWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobWatch")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl JobWatch {
    /// The next update; `None` once the job has ended and every update was
    /// returned.
    pub async fn next(&mut self) -> Option<JobUpdate> {
        let (journal, changed, jobs, job, page, read_failed) = match &mut self.source {
            WatchSource::Live {
                journal,
                changed,
                jobs,
                job,
                page,
                read_failed,
            } => (journal, changed, jobs, job, page, read_failed),
            WatchSource::Stored(stored) => {
                let update = stored.next(self.next).await?;
                self.next = update.seq + 1;
                return Some(update);
            }
        };
        let mut sender_gone = false;
        loop {
            changed.borrow_and_update();
            match journal.find(self.next) {
                Found::Update(update) => {
                    self.next += 1;
                    return Some(update);
                }
                Found::Evicted {
                    log,
                    stage,
                    path,
                    following,
                } => {
                    while page.front().is_some_and(|e| e.seq < log) {
                        page.pop_front();
                    }
                    if page.front().is_none_or(|e| e.seq != log) {
                        page.clear();
                        let limit = usize::try_from(following)
                            .unwrap_or(usize::MAX)
                            .min(STORED_PAGE);
                        match jobs.read_logs(job, log, limit).await {
                            Ok(entries) => page.extend(entries),
                            Err(e) if !*read_failed => {
                                *read_failed = true;
                                tracing::error!(job = %job, error = %e, "cannot read the job's log; later failures not reported");
                            }
                            Err(_) => {}
                        }
                    }
                    let seq = self.next;
                    self.next += 1;
                    match page.pop_front() {
                        Some(entry) if entry.seq == log => {
                            return Some(line_update(seq, entry, stage, path));
                        }
                        _ => {
                            // The store lost it (or failed): skip the line
                            // rather than stall the watcher.
                            page.clear();
                            tracing::warn!(job = %job, line = log, "a log line is missing from the store");
                        }
                    }
                }
                Found::Ahead(true) => return None,
                Found::Ahead(false) if sender_gone => return None,
                Found::Ahead(false) => {
                    sender_gone = changed.changed().await.is_err();
                }
            }
        }
    }
}

//! [`SqliteStore`]: jobs, their status history and logs, build numbers and
//! worker records in one SQLite file, so a restarted server knows what it
//! ran and which backend objects it owns.
//!
//! It implements [`JobRepository`] and [`WorkerRepository`]:
//!
//! ```no_run
//! # async fn example() -> Result<(), hodei_infrastructure::sqlite::StoreError> {
//! use std::sync::Arc;
//! use hodei_application::jobs::JobRepository;
//! use hodei_application::workers::WorkerRepository;
//! use hodei_infrastructure::sqlite::SqliteStore;
//!
//! let store = Arc::new(SqliteStore::open("/var/lib/hodei/hodei.db")?);
//! let jobs: Arc<dyn JobRepository> = store.clone();
//! let workers: Arc<dyn WorkerRepository> = store;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! - **One writer.** A dedicated thread owns the only writing connection.
//!   Writes are queued to it; it takes everything queued (up to
//!   [`MAX_BATCH`] operations), applies it in one transaction and then
//!   answers each caller. Under load many log appends share one commit
//!   (group commit); an idle store commits each write at once. A write has
//!   returned only once it is committed, so a reader always sees it.
//! - **Readers** run on tokio's blocking pool with connections of their
//!   own; the file is in WAL mode, so they never wait for the writer.
//! - **Durability.** `synchronous = NORMAL` in WAL mode: a committed write
//!   survives the server being killed (SIGKILL); an operating-system crash
//!   or power loss may lose the last commits, never corrupt the file.
//! - **Bounded memory.** Logs are rows of `(job, seq)`; reading pages them
//!   ([`JobRepository::read_logs`] stops a page at [`MAX_PAGE_BYTES`]), so
//!   nothing ever loads a whole log. The writer keeps only the next
//!   sequence number of the jobs still running.
//! - **One server per file.** A lock file (`<file>-lock`, an advisory
//!   lock the kernel drops when the process dies, however it dies) refuses
//!   a second server on the same file.
//! - **Versioned schema.** See [`schema`]: ordered migrations, and a file
//!   written by a newer Hodei is refused with [`StoreError::FutureVersion`].

pub mod schema;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use hodei_application::jobs::{
    JobFilter, JobRepository, JobRepositoryError, LogChunk, LogEntry, QueuedSubmission,
    StageSummary,
};
use hodei_application::worker_link::LogStream;
use hodei_application::workers::{WorkerRepository, WorkerRepositoryError};
use hodei_domain::{Job, JobId, JobStatus, StageResult, Timestamp, Worker, WorkerId};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

/// Page cache of a reading connection, as SQLite's `cache_size` takes it
/// (negative: KiB), against the default 2 MiB the writer keeps.
const READER_CACHE_KIB: i64 = -256;

/// Most operations the writer applies in one transaction.
pub const MAX_BATCH: usize = 1024;
/// A page of [`JobRepository::read_logs`] stops once it holds this many
/// bytes of log data (it always holds at least one entry).
pub const MAX_PAGE_BYTES: usize = 256 * 1024;
/// Most idle reading connections kept open.
const MAX_IDLE_READERS: usize = 8;
/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory of the file could not be created.
    #[error("store {path}: cannot create its directory: {source}")]
    CreateDir {
        /// The database file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process holds the file.
    #[error(
        "store {path}: in use by another hodei server (lock file {lock} is held); \
         stop it or give this one another data_dir"
    )]
    Locked {
        /// The database file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The lock file could not be opened or locked.
    #[error("store {path}: cannot lock {lock}: {source}")]
    Lock {
        /// The database file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was written by a newer Hodei.
    #[error(
        "store {path}: schema version {found} is newer than this hodei supports \
         (version {supported}); run a newer hodei or use another data_dir"
    )]
    FutureVersion {
        /// The database file.
        path: PathBuf,
        /// The file's schema version.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// SQLite failed.
    #[error("store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A stored record could not be decoded.
    #[error("store {path}: record {id} cannot be read: {source}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The record's id.
        id: String,
        /// The decoder's error.
        source: serde_json::Error,
    },
    /// The writer thread has stopped (the store is being dropped, or it
    /// panicked).
    #[error("store {path}: the writer has stopped")]
    Closed {
        /// The database file.
        path: PathBuf,
    },
}

/// Jobs, logs and workers in one SQLite file; see the module documentation.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    writer: Mutex<mpsc::Sender<Command>>,
    readers: Mutex<Vec<Connection>>,
    /// Held for the store's life; the kernel releases it when the process
    /// ends.
    _lock: File,
}

/// One write, with where its answer goes.
struct Command {
    op: Op,
    reply: oneshot::Sender<Result<u64, OpError>>,
}

enum Op {
    SaveJob(Box<Job>),
    SaveStages(JobId, String),
    SaveQueued(Box<Job>, QueuedSubmission),
    NextBuildNumber(String),
    AppendLog(JobId, LogChunk),
    SaveWorker(Box<Worker>),
    DeleteWorker(WorkerId),
}

enum OpError {
    JobNotFound(JobId),
    Store(StoreError),
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SqliteStore {
    /// Opens (creating it and its directory if needed) the store at `path`,
    /// brings its schema up to date and starts its writer.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another server holds the file,
    /// [`StoreError::FutureVersion`] for a file written by a newer Hodei,
    /// [`StoreError::CreateDir`], [`StoreError::Lock`],
    /// [`StoreError::Sqlite`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: path.clone(),
                source,
            })?;
        }
        let lock_file = take_lock(&path)?;
        let sqlite = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(sqlite)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
        stable_plans(&conn).map_err(sqlite)?;
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
                row.get::<_, String>(0)
            })
            .map_err(sqlite)?;
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite)?;
        match schema::migrate(&mut conn) {
            Ok(_) => {}
            Err(schema::MigrationError::FutureVersion { found }) => {
                return Err(StoreError::FutureVersion {
                    path,
                    found,
                    supported: schema::latest_version(),
                });
            }
            Err(schema::MigrationError::Sqlite(source)) => return Err(sqlite(source)),
        }
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            path: path.clone(),
            conn,
            next_seq: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("hodei-store".into())
            .spawn(move || writer.run(&rx))
            .map_err(|source| StoreError::Lock {
                path: path.clone(),
                lock: lock_path(&path),
                source,
            })?;
        Ok(SqliteStore {
            shared: Arc::new(Shared {
                path,
                writer: Mutex::new(tx),
                readers: Mutex::new(Vec::new()),
                _lock: lock_file,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The schema version of the file (after [`SqliteStore::open`]
    /// migrated it: [`schema::latest_version`]).
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        self.read(schema::version).await
    }

    /// Every status the job went through, oldest first, with when.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`], [`StoreError::Corrupt`].
    pub async fn status_history(
        &self,
        job: &JobId,
    ) -> Result<Vec<(Timestamp, JobStatus)>, StoreError> {
        let id = job.to_string();
        let path = self.shared.path.clone();
        let rows: Vec<(i64, String)> = self
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT at, status FROM job_status_history WHERE job_id = ?1 \
                     ORDER BY at, rowid",
                )?;
                let rows = stmt.query_map([&id], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(at, status)| {
                serde_json::from_str(&status)
                    .map(|s| (Timestamp(uint(at)), s))
                    .map_err(|source| StoreError::Corrupt {
                        path: path.clone(),
                        id: job.to_string(),
                        source,
                    })
            })
            .collect()
    }

    /// Queues `op` to the writer and waits until it is committed.
    async fn write(&self, op: Op) -> Result<u64, OpError> {
        let (reply, answer) = oneshot::channel();
        let closed = || {
            OpError::Store(StoreError::Closed {
                path: self.shared.path.clone(),
            })
        };
        lock(&self.shared.writer)
            .send(Command { op, reply })
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Runs `f` on a reading connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        let path = shared.path.clone();
        tokio::task::spawn_blocking(move || {
            let sqlite = |source| StoreError::Sqlite {
                path: shared.path.clone(),
                source,
            };
            let idle = lock(&shared.readers).pop();
            let conn = match idle {
                Some(conn) => conn,
                None => {
                    let conn = Connection::open(&shared.path).map_err(sqlite)?;
                    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
                    stable_plans(&conn).map_err(sqlite)?;
                    conn.pragma_update(None, "query_only", true)
                        .map_err(sqlite)?;
                    // Readers look up rows and page through logs the
                    // operating system caches anyway: a small page cache
                    // each keeps the server's memory low.
                    conn.pragma_update(None, "cache_size", READER_CACHE_KIB)
                        .map_err(sqlite)?;
                    conn
                }
            };
            let result = f(&conn).map_err(sqlite);
            let mut idle = lock(&shared.readers);
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed { path })?
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        id: &str,
        record: &str,
    ) -> Result<T, StoreError> {
        serde_json::from_str(record).map_err(|source| StoreError::Corrupt {
            path: self.shared.path.clone(),
            id: id.to_owned(),
            source,
        })
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-lock");
    PathBuf::from(name)
}

fn take_lock(path: &Path) -> Result<File, StoreError> {
    let lock = lock_path(path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| StoreError::Lock {
            path: path.to_owned(),
            lock: lock.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_owned(),
            lock,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Lock {
            path: path.to_owned(),
            lock,
            source,
        }),
    }
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    conn: Connection,
    /// The next log sequence number of jobs that are not final.
    next_seq: HashMap<JobId, u64>,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Command>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.apply(batch);
        }
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Applies `batch` in one transaction and answers every command.
    fn apply(&mut self, batch: Vec<Command>) {
        if let Err(e) = self.exec_cached("BEGIN IMMEDIATE") {
            let path = self.path.clone();
            for command in batch {
                let _ = command.reply.send(Err(OpError::Store(StoreError::Sqlite {
                    path: path.clone(),
                    source: clone_error(&e),
                })));
            }
            return;
        }
        let mut answers = Vec::with_capacity(batch.len());
        for command in batch {
            let result = self.op(command.op);
            answers.push((command.reply, result));
        }
        if let Err(e) = self.exec_cached("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            // Sequence numbers handed out in the lost transaction are
            // unknown now: read them again from the file.
            self.next_seq.clear();
            for (reply, _) in answers {
                let _ = reply.send(Err(OpError::Store(self.sqlite(clone_error(&e)))));
            }
            return;
        }
        for (reply, result) in answers {
            let _ = reply.send(result);
        }
    }

    /// Runs `sql` (a statement without parameters) through the statement
    /// cache: `BEGIN` and `COMMIT` run for every batch, and compiling them
    /// each time is a measurable share of the writer's work.
    fn exec_cached(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    fn op(&mut self, op: Op) -> Result<u64, OpError> {
        match op {
            Op::SaveJob(job) => self.save_job(&job).map(|()| 0),
            Op::SaveStages(job, stages) => self
                .conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO job_stages (job_id, stages) \
                     SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?1)",
                )
                .and_then(|mut stmt| stmt.execute(params![job.as_str(), stages]))
                .map_err(|e| OpError::Store(self.sqlite(e)))
                .and_then(|changed| {
                    if changed == 0 {
                        Err(OpError::JobNotFound(job))
                    } else {
                        Ok(0)
                    }
                }),
            Op::SaveQueued(job, submission) => {
                self.save_job(&job)?;
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO job_submissions (job_id, file, branch, source) \
                         VALUES (?1, ?2, ?3, ?4)",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            job.id().as_str(),
                            submission.file,
                            submission.branch,
                            &submission.source[..]
                        ])
                    })
                    .map(|_| 0)
                    .map_err(|e| OpError::Store(self.sqlite(e)))
            }
            Op::NextBuildNumber(name) => self
                .next_build_number(&name)
                .map_err(|e| OpError::Store(self.sqlite(e))),
            Op::AppendLog(job, chunk) => self.append_log(job, &chunk),
            Op::SaveWorker(worker) => self.save_worker(&worker).map(|()| 0),
            Op::DeleteWorker(id) => self
                .conn
                .prepare_cached("DELETE FROM workers WHERE id = ?1")
                .and_then(|mut stmt| stmt.execute([id.as_str()]))
                .map(|_| 0)
                .map_err(|e| OpError::Store(self.sqlite(e))),
        }
    }

    fn save_job(&mut self, job: &Job) -> Result<(), OpError> {
        let record = serde_json::to_string(job).map_err(|source| {
            OpError::Store(StoreError::Corrupt {
                path: self.path.clone(),
                id: job.id().to_string(),
                source,
            })
        })?;
        let status = serde_json::to_string(job.status()).map_err(|source| {
            OpError::Store(StoreError::Corrupt {
                path: self.path.clone(),
                id: job.id().to_string(),
                source,
            })
        })?;
        let id = job.id().as_str();
        let kind = job.status().kind().as_str();
        let result: rusqlite::Result<()> = (|| {
            let previous: Option<String> = self
                .conn
                .prepare_cached("SELECT status FROM jobs WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?;
            self.conn
                .prepare_cached(
                    "INSERT INTO jobs (id, name, status, created_at, record) \
                     VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (id) DO UPDATE SET name = ?2, status = ?3, \
                     created_at = ?4, record = ?5",
                )?
                .execute(params![
                    id,
                    job.name(),
                    kind,
                    int(job.created_at().0),
                    record
                ])?;
            if previous.as_deref() != Some(kind) {
                let at = match job.status() {
                    JobStatus::Queued => None,
                    JobStatus::Running | JobStatus::Provisioning => job.started_at(),
                    _ => job.finished_at(),
                }
                .unwrap_or(job.created_at());
                self.conn
                    .prepare_cached(
                        "INSERT INTO job_status_history (job_id, at, status) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![id, int(at.0), status])?;
            }
            self.conn
                .prepare_cached(
                    "INSERT INTO build_numbers (name, last) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET last = max(last, ?2)",
                )?
                .execute(params![job.name(), int(job.build_number())])?;
            if kind != "queued" {
                self.conn
                    .prepare_cached("DELETE FROM job_submissions WHERE job_id = ?1")?
                    .execute([id])?;
            }
            Ok(())
        })();
        result.map_err(|e| OpError::Store(self.sqlite(e)))?;
        if job.status().is_final() {
            self.next_seq.remove(job.id());
        }
        Ok(())
    }

    fn next_build_number(&self, name: &str) -> rusqlite::Result<u64> {
        self.conn
            .prepare_cached(
                "INSERT INTO build_numbers (name, last) VALUES (?1, 1) \
                 ON CONFLICT (name) DO UPDATE SET last = last + 1 RETURNING last",
            )?
            .query_row([name], |row| row.get::<_, i64>(0))
            .map(uint)
    }

    fn append_log(&mut self, job: JobId, chunk: &LogChunk) -> Result<u64, OpError> {
        let seq = match self.next_seq.get(&job) {
            Some(&seq) => seq,
            None => {
                let found: Option<i64> = self
                    .conn
                    .prepare_cached(
                        "SELECT (SELECT COALESCE(MAX(seq) + 1, 0) FROM job_logs WHERE job_id = ?1) \
                         FROM jobs WHERE id = ?1",
                    )
                    .and_then(|mut stmt| stmt.query_row([job.as_str()], |row| row.get(0)))
                    .optional()
                    .map_err(|e| OpError::Store(self.sqlite(e)))?;
                found
                    .map(uint)
                    .ok_or_else(|| OpError::JobNotFound(job.clone()))?
            }
        };
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO job_logs (job_id, seq, at, step_id, stream, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    job.as_str(),
                    int(seq),
                    int(chunk.at.0),
                    chunk.step_id,
                    stream_code(chunk.stream),
                    chunk.data
                ])
            });
        match inserted {
            Ok(_) => {
                self.next_seq.insert(job, seq + 1);
                Ok(seq)
            }
            Err(e) => {
                self.next_seq.remove(&job);
                Err(OpError::Store(self.sqlite(e)))
            }
        }
    }

    fn save_worker(&self, worker: &Worker) -> Result<(), OpError> {
        let record = serde_json::to_string(worker).map_err(|source| {
            OpError::Store(StoreError::Corrupt {
                path: self.path.clone(),
                id: worker.id().to_string(),
                source,
            })
        })?;
        self.conn
            .prepare_cached(
                "INSERT INTO workers (id, created_at, idle_static, backend_id, record) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (id) DO UPDATE SET created_at = ?2, idle_static = ?3, \
                 backend_id = ?4, record = ?5",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    worker.id().as_str(),
                    int(worker.created_at().0),
                    worker.is_idle_static(),
                    worker.backend_id(),
                    record
                ])
            })
            .map(|_| ())
            .map_err(|e| OpError::Store(self.sqlite(e)))
    }
}

/// Turns on SQLite's query planner stability guarantee for `conn`: a cached
/// statement keeps its plan whatever values are bound to it.
///
/// Without it, the bundled SQLite (built with `SQLITE_ENABLE_STAT4`) marks
/// a statement whose plan might depend on a bound value, such as `job_id =
/// ?1` on a prefix of a two-column index, and compiles it again each time
/// a new value is bound: once per job for the log, history and job-list
/// queries. The statements here are written so that one plan serves every
/// value (the job list has one statement per combination of filters).
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(|_| ())
}

/// rusqlite errors are not `Clone`; a failed `BEGIN`/`COMMIT` answers every
/// command of the batch with the same words.
fn clone_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// SQLite integers are signed; Hodei's counters and times never reach
/// `i64::MAX`, and one that did would be stored as the largest.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The reverse of [`int`]; a negative number (never written) reads as 0.
fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn stream_code(stream: LogStream) -> u8 {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
        LogStream::System => 2,
    }
}

fn stream_of(code: u8) -> LogStream {
    match code {
        0 => LogStream::Stdout,
        1 => LogStream::Stderr,
        _ => LogStream::System,
    }
}

/// How a [`StageSummary`] is stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct StageRow {
    name: String,
    path: Vec<String>,
    result: Option<StageResult>,
    started_at: Timestamp,
    finished_at: Option<Timestamp>,
}

impl From<StageSummary> for StageRow {
    fn from(s: StageSummary) -> Self {
        StageRow {
            name: s.name,
            path: s.path,
            result: s.result,
            started_at: s.started_at,
            finished_at: s.finished_at,
        }
    }
}

impl From<StageRow> for StageSummary {
    fn from(s: StageRow) -> Self {
        StageSummary {
            name: s.name,
            path: s.path,
            result: s.result,
            started_at: s.started_at,
            finished_at: s.finished_at,
        }
    }
}

fn job_error(e: OpError) -> JobRepositoryError {
    match e {
        OpError::JobNotFound(id) => JobRepositoryError::NotFound(id),
        OpError::Store(e) => JobRepositoryError::Backend(Box::new(e)),
    }
}

fn worker_error(e: OpError) -> WorkerRepositoryError {
    match e {
        OpError::JobNotFound(id) => WorkerRepositoryError::Backend(id.to_string().into()),
        OpError::Store(e) => WorkerRepositoryError::Backend(Box::new(e)),
    }
}

#[async_trait]
impl JobRepository for SqliteStore {
    async fn save(&self, job: Job) -> Result<(), JobRepositoryError> {
        self.write(Op::SaveJob(Box::new(job)))
            .await
            .map(|_| ())
            .map_err(job_error)
    }

    async fn save_queued(
        &self,
        job: Job,
        submission: QueuedSubmission,
    ) -> Result<(), JobRepositoryError> {
        self.write(Op::SaveQueued(Box::new(job), submission))
            .await
            .map(|_| ())
            .map_err(job_error)
    }

    async fn queued_submission(
        &self,
        id: &JobId,
    ) -> Result<Option<QueuedSubmission>, JobRepositoryError> {
        let key = id.to_string();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT file, branch, source FROM job_submissions WHERE job_id = ?1",
            )?
            .query_row([&key], |row| {
                Ok(QueuedSubmission {
                    file: row.get(0)?,
                    branch: row.get(1)?,
                    source: Arc::from(row.get::<_, Vec<u8>>(2)?),
                })
            })
            .optional()
        })
        .await
        .map_err(|e| JobRepositoryError::Backend(Box::new(e)))
    }

    async fn save_stages(
        &self,
        job: &JobId,
        stages: Vec<StageSummary>,
    ) -> Result<(), JobRepositoryError> {
        let rows: Vec<StageRow> = stages.into_iter().map(StageRow::from).collect();
        let text = serde_json::to_string(&rows).map_err(|source| {
            JobRepositoryError::Backend(Box::new(StoreError::Corrupt {
                path: self.shared.path.clone(),
                id: job.to_string(),
                source,
            }))
        })?;
        self.write(Op::SaveStages(job.clone(), text))
            .await
            .map(|_| ())
            .map_err(job_error)
    }

    async fn find_stages(&self, job: &JobId) -> Result<Vec<StageSummary>, JobRepositoryError> {
        let key = job.to_string();
        let text: Option<String> = self
            .read(move |conn| {
                conn.prepare_cached("SELECT stages FROM job_stages WHERE job_id = ?1")?
                    .query_row([&key], |row| row.get(0))
                    .optional()
            })
            .await
            .map_err(|e| JobRepositoryError::Backend(Box::new(e)))?;
        let Some(text) = text else {
            return Ok(Vec::new());
        };
        let rows: Vec<StageRow> = self
            .decode(job.as_str(), &text)
            .map_err(|e| JobRepositoryError::Backend(Box::new(e)))?;
        Ok(rows.into_iter().map(StageSummary::from).collect())
    }

    async fn find_by_id(&self, id: &JobId) -> Result<Option<Job>, JobRepositoryError> {
        let key = id.to_string();
        let record: Option<String> = self
            .read(move |conn| {
                conn.prepare_cached("SELECT record FROM jobs WHERE id = ?1")?
                    .query_row([&key], |row| row.get(0))
                    .optional()
            })
            .await
            .map_err(|e| JobRepositoryError::Backend(Box::new(e)))?;
        record
            .map(|r| self.decode(id.as_str(), &r))
            .transpose()
            .map_err(|e| JobRepositoryError::Backend(Box::new(e)))
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, JobRepositoryError> {
        let status = filter.status.map(|s| s.as_str().to_owned());
        let name = filter.name.clone();
        let limit = filter
            .limit
            .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        // One statement per combination of filters, so that each has the
        // plan that suits it (see `stable_plans`): the index on the
        // filtered column, already in the order asked for.
        let sql = match (status.is_some(), name.is_some()) {
            (false, false) => {
                "SELECT id, record FROM jobs WHERE ?1 IS NULL AND ?2 IS NULL \
                 ORDER BY created_at DESC, id DESC LIMIT ?3"
            }
            (true, false) => {
                "SELECT id, record FROM jobs WHERE status = ?1 AND ?2 IS NULL \
                 ORDER BY created_at DESC, id DESC LIMIT ?3"
            }
            (false, true) => {
                "SELECT id, record FROM jobs WHERE ?1 IS NULL AND name = ?2 \
                 ORDER BY created_at DESC, id DESC LIMIT ?3"
            }
            (true, true) => {
                "SELECT id, record FROM jobs WHERE status = ?1 AND name = ?2 \
                 ORDER BY created_at DESC, id DESC LIMIT ?3"
            }
        };
        let rows: Vec<(String, String)> = self
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(sql)?;
                let rows = stmt.query_map(params![status, name, limit], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
                rows.collect()
            })
            .await
            .map_err(|e| JobRepositoryError::Backend(Box::new(e)))?;
        rows.iter()
            .map(|(id, record)| self.decode(id, record))
            .collect::<Result<_, _>>()
            .map_err(|e| JobRepositoryError::Backend(Box::new(e)))
    }

    async fn next_build_number(&self, name: &str) -> Result<u64, JobRepositoryError> {
        self.write(Op::NextBuildNumber(name.to_owned()))
            .await
            .map_err(job_error)
    }

    async fn append_log(&self, job: &JobId, chunk: LogChunk) -> Result<u64, JobRepositoryError> {
        self.write(Op::AppendLog(job.clone(), chunk))
            .await
            .map_err(job_error)
    }

    async fn read_logs(
        &self,
        job: &JobId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, JobRepositoryError> {
        let key = job.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let page = self
            .read(move |conn| {
                let known: Option<i64> = conn
                    .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
                    .query_row([&key], |row| row.get(0))
                    .optional()?;
                if known.is_none() {
                    return Ok(None);
                }
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, at, step_id, stream, data FROM job_logs \
                     WHERE job_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
                )?;
                let mut rows = stmt.query(params![key, int(from), limit])?;
                let mut page = Vec::new();
                let mut bytes = 0;
                while let Some(row) = rows.next()? {
                    let data: Vec<u8> = row.get(4)?;
                    bytes += data.len();
                    page.push(LogEntry {
                        seq: uint(row.get(0)?),
                        chunk: LogChunk {
                            at: Timestamp(uint(row.get(1)?)),
                            step_id: row.get(2)?,
                            stream: stream_of(row.get(3)?),
                            data,
                        },
                    });
                    if bytes >= MAX_PAGE_BYTES {
                        break;
                    }
                }
                Ok(Some(page))
            })
            .await
            .map_err(|e| JobRepositoryError::Backend(Box::new(e)))?;
        page.ok_or_else(|| JobRepositoryError::NotFound(job.clone()))
    }
}

impl SqliteStore {
    async fn workers_where(
        &self,
        idle_static_only: bool,
    ) -> Result<Vec<Worker>, WorkerRepositoryError> {
        let rows: Vec<(String, String)> = self
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, record FROM workers WHERE (?1 = 0 OR idle_static = 1) \
                     ORDER BY created_at, id",
                )?;
                let rows =
                    stmt.query_map([idle_static_only], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect()
            })
            .await
            .map_err(|e| WorkerRepositoryError::Backend(Box::new(e)))?;
        rows.iter()
            .map(|(id, record)| self.decode(id, record))
            .collect::<Result<_, _>>()
            .map_err(|e| WorkerRepositoryError::Backend(Box::new(e)))
    }
}

#[async_trait]
impl WorkerRepository for SqliteStore {
    async fn save(&self, worker: Worker) -> Result<(), WorkerRepositoryError> {
        self.write(Op::SaveWorker(Box::new(worker)))
            .await
            .map(|_| ())
            .map_err(worker_error)
    }

    async fn find_by_id(&self, id: &WorkerId) -> Result<Option<Worker>, WorkerRepositoryError> {
        let key = id.to_string();
        let record: Option<String> = self
            .read(move |conn| {
                conn.prepare_cached("SELECT record FROM workers WHERE id = ?1")?
                    .query_row([&key], |row| row.get(0))
                    .optional()
            })
            .await
            .map_err(|e| WorkerRepositoryError::Backend(Box::new(e)))?;
        record
            .map(|r| self.decode(id.as_str(), &r))
            .transpose()
            .map_err(|e| WorkerRepositoryError::Backend(Box::new(e)))
    }

    async fn list(&self) -> Result<Vec<Worker>, WorkerRepositoryError> {
        self.workers_where(false).await
    }

    async fn delete(&self, id: &WorkerId) -> Result<(), WorkerRepositoryError> {
        self.write(Op::DeleteWorker(id.clone()))
            .await
            .map(|_| ())
            .map_err(worker_error)
    }

    async fn find_idle_static(&self) -> Result<Vec<Worker>, WorkerRepositoryError> {
        self.workers_where(true).await
    }
}

#[cfg(test)]
mod tests;

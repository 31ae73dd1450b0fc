//! The store's schema and its ordered migrations.
//!
//! The schema version is SQLite's `PRAGMA user_version`: 0 for a new file,
//! then the number of migrations applied. Each migration runs in its own
//! transaction together with the version bump, so a crash leaves the file at
//! one version or the next, never in between. A file whose version is
//! higher than [`MIGRATIONS`] knows was written by a newer Hodei and is
//! refused.

use rusqlite::Connection;

/// The migrations, oldest first; migration `i` brings the schema from
/// version `i` to `i + 1`. Never edit one that has shipped: add another.
pub const MIGRATIONS: &[&str] = &[
    // 1: jobs, their status history and logs, build numbers, workers.
    "
    CREATE TABLE jobs (
        id          TEXT PRIMARY KEY NOT NULL,
        name        TEXT NOT NULL,
        status      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        record      TEXT NOT NULL
    );
    CREATE INDEX jobs_by_created ON jobs (created_at, id);
    CREATE INDEX jobs_by_name ON jobs (name, created_at, id);
    CREATE INDEX jobs_by_status ON jobs (status, created_at, id);

    CREATE TABLE job_status_history (
        job_id  TEXT NOT NULL,
        at      INTEGER NOT NULL,
        status  TEXT NOT NULL
    );
    CREATE INDEX job_status_history_by_job ON job_status_history (job_id, at);

    CREATE TABLE job_logs (
        job_id   TEXT NOT NULL,
        seq      INTEGER NOT NULL,
        at       INTEGER NOT NULL,
        step_id  TEXT,
        stream   INTEGER NOT NULL,
        data     BLOB NOT NULL,
        PRIMARY KEY (job_id, seq)
    );

    CREATE TABLE build_numbers (
        name  TEXT PRIMARY KEY NOT NULL,
        last  INTEGER NOT NULL
    );

    CREATE TABLE workers (
        id           TEXT PRIMARY KEY NOT NULL,
        created_at   INTEGER NOT NULL,
        idle_static  INTEGER NOT NULL,
        backend_id   TEXT,
        record       TEXT NOT NULL
    );
    CREATE INDEX workers_by_created ON workers (created_at, id);
    ",
    // 2: what a queued job needs to run again after a restart.
    "
    CREATE TABLE job_submissions (
        job_id  TEXT PRIMARY KEY NOT NULL,
        file    TEXT NOT NULL,
        branch  TEXT,
        source  BLOB NOT NULL
    );
    ",
    // 3: the stages of each job, as seen so far (JSON).
    "
    CREATE TABLE job_stages (
        job_id  TEXT PRIMARY KEY NOT NULL,
        stages  TEXT NOT NULL
    );
    ",
];

/// The schema version this build writes.
pub fn latest_version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// Why the schema could not be brought up to date.
#[derive(Debug)]
pub enum MigrationError {
    /// The file's version is newer than this build knows.
    FutureVersion {
        /// The file's version.
        found: u32,
    },
    /// SQLite failed.
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for MigrationError {
    fn from(e: rusqlite::Error) -> Self {
        MigrationError::Sqlite(e)
    }
}

/// The schema version of the open database.
pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Applies every migration newer than the file's version, each in its own
/// transaction. Returns the version the file had.
pub fn migrate(conn: &mut Connection) -> Result<u32, MigrationError> {
    let found = version(conn)?;
    let latest = latest_version();
    if found > latest {
        return Err(MigrationError::FutureVersion { found });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(index + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(found)
}

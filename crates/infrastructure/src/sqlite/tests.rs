use std::collections::BTreeSet;

use hodei_domain::{JobStatusKind, TemplateId, WorkerState};

use super::*;

fn job(id: &str, name: &str, created: u64) -> Job {
    Job::new(
        JobId::new(id).unwrap(),
        name,
        1,
        "pipeline { agent any }",
        Timestamp(created),
    )
}

fn chunk(text: &str) -> LogChunk {
    LogChunk {
        at: Timestamp(5),
        step_id: Some("s1".into()),
        stream: LogStream::Stderr,
        data: text.as_bytes().to_vec(),
    }
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(dir.path().join("data/hodei.db")).unwrap()
}

/// A store holding jobs `a` (build, queued), `b` (deploy, running) and `c`
/// (build, queued), created in that order.
async fn filled(dir: &tempfile::TempDir) -> SqliteStore {
    let store = open(dir);
    JobRepository::save(&store, job("a", "build", 1))
        .await
        .unwrap();
    let mut b = job("b", "deploy", 2);
    b.start(Timestamp(3)).unwrap();
    JobRepository::save(&store, b).await.unwrap();
    JobRepository::save(&store, job("c", "build", 3))
        .await
        .unwrap();
    store
}

async fn check(store: &SqliteStore, filter: JobFilter, expected: &[&str]) {
    let got: Vec<String> = JobRepository::list(store, &filter)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id().to_string())
        .collect();
    assert_eq!(got, expected, "{filter:?}");
}

#[tokio::test]
async fn list_filters_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled(&dir).await;
    check(&store, JobFilter::default(), &["c", "b", "a"]).await;
    let limit = JobFilter {
        limit: Some(2),
        ..JobFilter::default()
    };
    check(&store, limit, &["c", "b"]).await;
    let name = JobFilter {
        name: Some("build".into()),
        ..JobFilter::default()
    };
    check(&store, name, &["c", "a"]).await;
    let running = JobFilter {
        status: Some(JobStatusKind::Running),
        ..JobFilter::default()
    };
    check(&store, running, &["b"]).await;
    let succeeded = JobFilter {
        status: Some(JobStatusKind::Succeeded),
        ..JobFilter::default()
    };
    check(&store, succeeded, &[]).await;
    let queued_builds = JobFilter {
        status: Some(JobStatusKind::Queued),
        name: Some("build".into()),
        limit: Some(1),
    };
    check(&store, queued_builds, &["c"]).await;
    let queued_deploys = JobFilter {
        status: Some(JobStatusKind::Queued),
        name: Some("deploy".into()),
        ..JobFilter::default()
    };
    check(&store, queued_deploys, &[]).await;
}

#[tokio::test]
async fn jobs_round_trip_with_pipeline_parameters_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled(&dir).await;
    let id = JobId::new("a").unwrap();
    let mut a = JobRepository::find_by_id(&store, &id)
        .await
        .unwrap()
        .unwrap()
        .with_parameters([("GREETING".to_owned(), "hi".to_owned())].into())
        .with_environment([("CI".to_owned(), "true".to_owned())].into());
    a.finish(
        JobStatus::Aborted {
            reason: "cancelled".into(),
        },
        Timestamp(9),
    )
    .unwrap();
    JobRepository::save(&store, a.clone()).await.unwrap();
    assert_eq!(
        JobRepository::find_by_id(&store, &id).await.unwrap(),
        Some(a)
    );
    assert_eq!(
        JobRepository::find_by_id(&store, &JobId::new("zz").unwrap())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn logs_are_sequenced_and_paged() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled(&dir).await;
    let id = JobId::new("b").unwrap();
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        assert_eq!(store.append_log(&id, chunk(text)).await.unwrap(), i as u64);
    }
    let page = store.read_logs(&id, 1, 5).await.unwrap();
    let got: Vec<(u64, Vec<u8>)> = page.iter().map(|e| (e.seq, e.chunk.data.clone())).collect();
    assert_eq!(got, [(1, b"two".to_vec()), (2, b"three".to_vec())]);
    assert_eq!(page[0].chunk, chunk("two"));
    assert!(store.read_logs(&id, 3, 5).await.unwrap().is_empty());
    assert_eq!(store.read_logs(&id, 0, 1).await.unwrap().len(), 1);
    let unknown = JobId::new("nope").unwrap();
    assert_eq!(
        store
            .append_log(&unknown, chunk("x"))
            .await
            .unwrap_err()
            .to_string(),
        "no job with id \"nope\""
    );
    assert!(matches!(
        store.read_logs(&unknown, 0, 1).await,
        Err(JobRepositoryError::NotFound(_))
    ));
    // A known job without logs has an empty log, not an error.
    let a = JobId::new("a").unwrap();
    assert!(store.read_logs(&a, 0, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_page_stops_after_max_page_bytes_of_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled(&dir).await;
    let id = JobId::new("b").unwrap();
    // Two chunks reach the limit, the third is on the next page.
    let big = "x".repeat(MAX_PAGE_BYTES * 6 / 10);
    for _ in 0..3 {
        store.append_log(&id, chunk(&big)).await.unwrap();
    }
    let first = store.read_logs(&id, 0, 100).await.unwrap();
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1]);
    let rest = store.read_logs(&id, 2, 100).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
}

#[tokio::test]
async fn concurrent_appends_get_every_number_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled(&dir).await;
    let mut tasks = Vec::new();
    for job in ["a", "b", "c"] {
        for n in 0..50 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = JobId::new(job).unwrap();
                store.append_log(&id, chunk(&format!("{job}{n}"))).await
            }));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for job in ["a", "b", "c"] {
        let id = JobId::new(job).unwrap();
        let logs = store.read_logs(&id, 0, 1000).await.unwrap();
        let seqs: Vec<u64> = logs.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (0..50).collect::<Vec<u64>>(), "{job}");
        let lines: BTreeSet<Vec<u8>> = logs.into_iter().map(|e| e.chunk.data).collect();
        assert_eq!(lines.len(), 50, "{job}");
    }
}

#[tokio::test]
async fn build_numbers_count_per_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(store.next_build_number("build").await.unwrap(), 1);
    assert_eq!(store.next_build_number("build").await.unwrap(), 2);
    assert_eq!(store.next_build_number("deploy").await.unwrap(), 1);
    let restored = Job::new(
        JobId::new("x").unwrap(),
        "deploy",
        41,
        "pipeline {}",
        Timestamp(1),
    );
    JobRepository::save(&store, restored).await.unwrap();
    assert_eq!(store.next_build_number("deploy").await.unwrap(), 42);
}

#[tokio::test]
async fn the_status_history_records_each_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut j = job("h", "build", 10);
    JobRepository::save(&store, j.clone()).await.unwrap();
    JobRepository::save(&store, j.clone()).await.unwrap();
    j.start(Timestamp(20)).unwrap();
    JobRepository::save(&store, j.clone()).await.unwrap();
    let failed = JobStatus::Failed {
        reason: "exit 2".into(),
    };
    j.finish(failed.clone(), Timestamp(30)).unwrap();
    JobRepository::save(&store, j.clone()).await.unwrap();
    assert_eq!(
        store.status_history(j.id()).await.unwrap(),
        [
            (Timestamp(10), JobStatus::Queued),
            (Timestamp(20), JobStatus::Running),
            (Timestamp(30), failed),
        ]
    );
}

#[tokio::test]
async fn workers_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ids = |workers: &[Worker]| -> Vec<String> {
        workers.iter().map(|w| w.id().to_string()).collect()
    };
    let mut e = Worker::ephemeral(
        WorkerId::new("e-1").unwrap(),
        "e",
        TemplateId::new("go-build").unwrap(),
        JobId::new("j").unwrap(),
        "1",
        Timestamp(5),
    );
    let s2 =
        Worker::registered_static(WorkerId::new("s-2").unwrap(), "s2", ["linux"], Timestamp(2));
    let mut s3 =
        Worker::registered_static(WorkerId::new("s-3").unwrap(), "s3", ["linux"], Timestamp(3));
    s3.assign(JobId::new("j").unwrap(), Timestamp(4)).unwrap();
    for w in [e.clone(), s3.clone(), s2.clone()] {
        WorkerRepository::save(&store, w).await.unwrap();
    }
    assert_eq!(
        ids(&WorkerRepository::list(&store).await.unwrap()),
        ["s-2", "s-3", "e-1"]
    );
    assert_eq!(ids(&store.find_idle_static().await.unwrap()), ["s-2"]);

    e.transition(WorkerState::Provisioning, Timestamp(6))
        .unwrap();
    e.set_backend_id("4242".to_owned(), Timestamp(6));
    WorkerRepository::save(&store, e.clone()).await.unwrap();
    let found = WorkerRepository::find_by_id(&store, e.id()).await.unwrap();
    assert_eq!(found.as_ref(), Some(&e));
    assert_eq!(found.unwrap().backend_id(), Some("4242"));

    store.delete(e.id()).await.unwrap();
    store.delete(e.id()).await.unwrap();
    assert_eq!(
        WorkerRepository::find_by_id(&store, e.id()).await.unwrap(),
        None
    );
    assert_eq!(
        ids(&WorkerRepository::list(&store).await.unwrap()),
        ["s-2", "s-3"]
    );
}

#[tokio::test]
async fn everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::ephemeral(
        WorkerId::new("w-1").unwrap(),
        "w",
        TemplateId::new("local").unwrap(),
        JobId::new("b").unwrap(),
        "1",
        Timestamp(5),
    );
    {
        let store = filled(&dir).await;
        let b = JobId::new("b").unwrap();
        store.append_log(&b, chunk("before")).await.unwrap();
        store.append_log(&b, chunk("the restart")).await.unwrap();
        assert_eq!(store.next_build_number("build").await.unwrap(), 2);
        WorkerRepository::save(&store, worker.clone())
            .await
            .unwrap();
    }
    let store = open(&dir);
    check(&store, JobFilter::default(), &["c", "b", "a"]).await;
    let b = JobId::new("b").unwrap();
    assert_eq!(store.append_log(&b, chunk("after")).await.unwrap(), 2);
    let lines: Vec<Vec<u8>> = store
        .read_logs(&b, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.chunk.data)
        .collect();
    assert_eq!(
        lines,
        [
            b"before".to_vec(),
            b"the restart".to_vec(),
            b"after".to_vec()
        ]
    );
    assert_eq!(store.next_build_number("build").await.unwrap(), 3);
    assert_eq!(WorkerRepository::list(&store).await.unwrap(), [worker]);
}

#[tokio::test]
async fn a_queued_job_keeps_its_submission_until_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = job("q", "build", 1);
    let submission = QueuedSubmission {
        file: "ci/Jenkinsfile".into(),
        branch: Some("main".into()),
        source: Arc::from(&b"tar bytes"[..]),
    };
    {
        let store = open(&dir);
        store
            .save_queued(j.clone(), submission.clone())
            .await
            .unwrap();
    }
    let store = open(&dir);
    assert_eq!(
        JobRepository::find_by_id(&store, j.id()).await.unwrap(),
        Some(j.clone())
    );
    assert_eq!(
        store.queued_submission(j.id()).await.unwrap(),
        Some(submission)
    );
    j.start(Timestamp(2)).unwrap();
    JobRepository::save(&store, j.clone()).await.unwrap();
    assert_eq!(store.queued_submission(j.id()).await.unwrap(), None);
}

#[tokio::test]
async fn stages_are_replaced_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let id = JobId::new("b").unwrap();
    let stage = |name: &str, result: Option<hodei_domain::StageResult>| StageSummary {
        name: name.into(),
        path: vec!["Top".into(), name.into()],
        result,
        started_at: Timestamp(10),
        finished_at: result.map(|_| Timestamp(20)),
    };
    {
        let store = filled(&dir).await;
        assert!(store.find_stages(&id).await.unwrap().is_empty());
        store
            .save_stages(&id, vec![stage("Build", None)])
            .await
            .unwrap();
        store
            .save_stages(
                &id,
                vec![
                    stage("Build", Some(hodei_domain::StageResult::Success)),
                    stage("Test", None),
                ],
            )
            .await
            .unwrap();
        let unknown = JobId::new("nope").unwrap();
        assert!(matches!(
            store.save_stages(&unknown, Vec::new()).await,
            Err(JobRepositoryError::NotFound(_))
        ));
    }
    let store = open(&dir);
    assert_eq!(
        store.find_stages(&id).await.unwrap(),
        [
            stage("Build", Some(hodei_domain::StageResult::Success)),
            stage("Test", None)
        ]
    );
}

#[test]
fn a_file_of_an_older_version_is_migrated_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO workers (id, created_at, idle_static, backend_id, record) \
             VALUES ('w', 1, 0, NULL, '{}')",
            [],
        )
        .unwrap();
    }
    let mut conn = Connection::open(&path).unwrap();
    assert_eq!(schema::migrate(&mut conn).unwrap(), 1);
    assert_eq!(schema::version(&conn).unwrap(), schema::latest_version());
    let kept: i64 = conn
        .query_row("SELECT count(*) FROM workers", [], |row| row.get(0))
        .unwrap();
    assert_eq!(kept, 1);
    let submissions: i64 = conn
        .query_row("SELECT count(*) FROM job_submissions", [], |row| row.get(0))
        .unwrap();
    assert_eq!(submissions, 0);
}

#[tokio::test]
async fn a_new_file_gets_the_latest_schema_and_reopening_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hodei.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            schema::latest_version()
        );
        assert_eq!(store.path(), path);
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.schema_version().await.unwrap(),
        schema::latest_version()
    );
}

#[test]
fn migrations_apply_in_order_from_any_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("m.db")).unwrap();
    assert_eq!(schema::version(&conn).unwrap(), 0);
    assert_eq!(schema::migrate(&mut conn).unwrap(), 0);
    assert_eq!(schema::version(&conn).unwrap(), schema::latest_version());
    // Applying again is a no-op that reports the version found.
    assert_eq!(
        schema::migrate(&mut conn).unwrap(),
        schema::latest_version()
    );
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
             AND name IN ('jobs', 'job_logs', 'job_status_history', 'build_numbers', 'workers', \
             'job_submissions', 'job_stages')",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(tables, 7);
}

#[test]
fn a_file_from_a_newer_hodei_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", schema::latest_version() + 7)
            .unwrap();
    }
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::FutureVersion { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string())
            && message.contains(&format!("schema version {}", schema::latest_version() + 7))
            && message.contains("newer than this hodei supports"),
        "{message}"
    );
    // The file is left as it was.
    let conn = Connection::open(&path).unwrap();
    assert_eq!(
        schema::version(&conn).unwrap(),
        schema::latest_version() + 7
    );
}

#[test]
fn a_second_store_on_the_same_file_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hodei.db");
    let first = SqliteStore::open(&path).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains("in use by another hodei server"),
        "{err}"
    );
    drop(first);
    SqliteStore::open(&path).unwrap();
}

#[test]
fn a_path_that_cannot_be_a_directory_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = SqliteStore::open(file.join("hodei.db")).unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("plain-file"), "{err}");
}

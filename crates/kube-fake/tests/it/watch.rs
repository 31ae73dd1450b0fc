//! Watches through `Api::watch` and kube-runtime's `watcher`: replay from a
//! resourceVersion, current objects as ADDED, selector transitions,
//! bookmarks, timeouts and `410 Expired`.

use std::time::Duration;

use hodei_kube_fake::{FakeOptions, RequestRecord};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use serde_json::json;
use tokio_stream::{Stream, StreamExt};

use crate::support::{phase, pod, run, rv, start, start_with};

/// The next event of a watch as (type, name, phase); `None` at its end.
async fn next<S>(stream: &mut S) -> Option<(String, String, String)>
where
    S: Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin,
{
    let event = stream.next().await?.expect("a watch event");
    Some(match event {
        WatchEvent::Added(p) => (
            "ADDED".into(),
            p.metadata.name.clone().unwrap_or_default(),
            phase(&p),
        ),
        WatchEvent::Modified(p) => (
            "MODIFIED".into(),
            p.metadata.name.clone().unwrap_or_default(),
            phase(&p),
        ),
        WatchEvent::Deleted(p) => (
            "DELETED".into(),
            p.metadata.name.clone().unwrap_or_default(),
            phase(&p),
        ),
        WatchEvent::Bookmark(b) => (
            "BOOKMARK".into(),
            b.metadata.resource_version,
            String::new(),
        ),
        WatchEvent::Error(e) => ("ERROR".into(), e.reason.clone(), e.code.to_string()),
    })
}

fn ev(kind: &str, name: &str, phase: &str) -> Option<(String, String, String)> {
    Some((kind.to_owned(), name.to_owned(), phase.to_owned()))
}

#[test]
fn a_watch_from_a_version_replays_what_followed_it() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        let first = pods
            .create(&PostParams::default(), &pod("a", &[("app", "web")]))
            .await
            .expect("created");
        pods.create(&PostParams::default(), &pod("b", &[("app", "web")]))
            .await
            .expect("created");
        pods.create(&PostParams::default(), &pod("c", &[("app", "db")]))
            .await
            .expect("created");
        fake.set_running("ci", "a");

        let wp = WatchParams::default().labels("app=web").disable_bookmarks();
        let mut stream = Box::pin(
            pods.watch(&wp, &rv(&first).to_string())
                .await
                .expect("a watch"),
        );
        assert_eq!(next(&mut stream).await, ev("ADDED", "b", "Pending"));
        assert_eq!(next(&mut stream).await, ev("MODIFIED", "a", "Running"));
        fake.set_terminated("ci", "a", "main", 0, "", "");
        assert_eq!(next(&mut stream).await, ev("MODIFIED", "a", "Succeeded"));
        pods.delete("a", &DeleteParams::default())
            .await
            .expect("deleted");
        assert_eq!(next(&mut stream).await, ev("DELETED", "a", "Succeeded"));
        // Changes outside the selection are not sent.
        fake.set_running("ci", "c");
        pods.create(&PostParams::default(), &pod("d", &[("app", "web")]))
            .await
            .expect("created");
        assert_eq!(next(&mut stream).await, ev("ADDED", "d", "Pending"));
        fake.shutdown().await;
    });
}

#[test]
fn a_watch_from_zero_starts_with_the_current_objects() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        pods.create(&PostParams::default(), &pod("a", &[]))
            .await
            .expect("created");
        pods.create(&PostParams::default(), &pod("b", &[]))
            .await
            .expect("created");
        let wp = WatchParams::default()
            .fields("metadata.name=b")
            .disable_bookmarks();
        let mut stream = Box::pin(pods.watch(&wp, "0").await.expect("a watch"));
        assert_eq!(next(&mut stream).await, ev("ADDED", "b", "Pending"));
        fake.set_running("ci", "a");
        fake.set_running("ci", "b");
        assert_eq!(next(&mut stream).await, ev("MODIFIED", "b", "Running"));
        fake.shutdown().await;
    });
}

#[test]
fn objects_entering_and_leaving_a_selection_are_added_and_deleted() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        let created = pods
            .create(&PostParams::default(), &pod("a", &[("app", "web")]))
            .await
            .expect("created");
        let wp = WatchParams::default().labels("app=web").disable_bookmarks();
        let mut stream = Box::pin(
            pods.watch(&wp, &rv(&created).to_string())
                .await
                .expect("a watch"),
        );
        let relabel = |app: &'static str| {
            let pods = pods.clone();
            async move {
                pods.patch(
                    "a",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"app": app}}})),
                )
                .await
                .expect("patched");
            }
        };
        relabel("db").await;
        assert_eq!(next(&mut stream).await, ev("DELETED", "a", "Pending"));
        relabel("web").await;
        assert_eq!(next(&mut stream).await, ev("ADDED", "a", "Pending"));
        fake.shutdown().await;
    });
}

#[test]
fn a_watch_from_a_forgotten_version_is_expired() {
    run(async {
        let options = FakeOptions {
            history: 3,
            ..FakeOptions::default()
        };
        let (fake, _client, pods) = start_with(options, "ci").await;
        let first = pods
            .create(&PostParams::default(), &pod("a", &[]))
            .await
            .expect("created");
        for name in ["b", "c", "d", "e"] {
            pods.create(&PostParams::default(), &pod(name, &[]))
                .await
                .expect("created");
        }
        let wp = WatchParams::default().disable_bookmarks();
        let mut stream = Box::pin(
            pods.watch(&wp, &rv(&first).to_string())
                .await
                .expect("a watch"),
        );
        assert_eq!(next(&mut stream).await, ev("ERROR", "Expired", "410"));
        assert_eq!(
            next(&mut stream).await,
            None,
            "the stream ends after the error"
        );

        // Within the history, the same watch works; after a compaction it
        // does not.
        let recent = fake.resource_version() - 1;
        let mut stream = Box::pin(pods.watch(&wp, &recent.to_string()).await.expect("a watch"));
        assert_eq!(next(&mut stream).await, ev("ADDED", "e", "Pending"));
        fake.compact();
        let mut stream = Box::pin(pods.watch(&wp, &recent.to_string()).await.expect("a watch"));
        assert_eq!(next(&mut stream).await, ev("ERROR", "Expired", "410"));
        fake.shutdown().await;
    });
}

#[test]
fn bookmarks_and_timeouts() {
    run(async {
        let options = FakeOptions {
            bookmark_interval: Some(Duration::from_millis(50)),
            ..FakeOptions::default()
        };
        let (fake, _client, pods) = start_with(options, "ci").await;
        let created = pods
            .create(&PostParams::default(), &pod("a", &[]))
            .await
            .expect("created");
        let now = rv(&created).to_string();
        let wp = WatchParams::default().timeout(1);
        let mut stream = Box::pin(pods.watch(&wp, &now).await.expect("a watch"));
        let mut bookmarks = 0;
        while let Some((kind, version, _)) = next(&mut stream).await {
            assert_eq!(
                (kind.as_str(), version.as_str()),
                ("BOOKMARK", now.as_str())
            );
            bookmarks += 1;
        }
        // The stream ended by itself after timeoutSeconds.
        assert!(bookmarks >= 1);
        let watches = fake.requests().into_iter().filter(|r| r.is_watch()).count();
        assert_eq!(watches, 1);
        fake.shutdown().await;
    });
}

/// Collects the watcher's events, as (kind, name, phase), until `done`
/// says so.
async fn watch_until<S>(
    stream: &mut S,
    seen: &mut Vec<(String, String, String)>,
    done: impl Fn(&[(String, String, String)]) -> bool,
) where
    S: Stream<Item = Result<Event<Pod>, watcher::Error>> + Unpin,
{
    while !done(seen) {
        let event = stream.next().await.expect("the watcher goes on");
        let Ok(event) = event else { continue };
        let entry = |kind: &str, p: &Pod| {
            (
                kind.to_owned(),
                p.metadata.name.clone().unwrap_or_default(),
                phase(p),
            )
        };
        seen.push(match &event {
            Event::Init => ("Init".to_owned(), String::new(), String::new()),
            Event::InitApply(p) => entry("InitApply", p),
            Event::InitDone => ("InitDone".to_owned(), String::new(), String::new()),
            Event::Apply(p) => entry("Apply", p),
            Event::Delete(p) => entry("Delete", p),
        });
    }
}

#[test]
fn kube_runtime_watcher_lists_then_follows() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        pods.create(&PostParams::default(), &pod("a", &[("app", "web")]))
            .await
            .expect("created");
        pods.create(&PostParams::default(), &pod("x", &[("app", "db")]))
            .await
            .expect("created");
        let mut stream = Box::pin(
            watcher(pods.clone(), watcher::Config::default().labels("app=web")).default_backoff(),
        );
        let mut seen = Vec::new();
        watch_until(&mut stream, &mut seen, |s| {
            s.iter().any(|e| e.0 == "InitDone")
        })
        .await;
        assert_eq!(
            seen,
            [
                ev("Init", "", ""),
                ev("InitApply", "a", "Pending"),
                ev("InitDone", "", "")
            ]
            .map(Option::unwrap)
        );
        seen.clear();
        pods.create(&PostParams::default(), &pod("b", &[("app", "web")]))
            .await
            .expect("created");
        fake.set_running("ci", "b");
        pods.delete("a", &DeleteParams::default())
            .await
            .expect("deleted");
        watch_until(&mut stream, &mut seen, |s| s.len() == 3).await;
        assert_eq!(
            seen,
            [
                ev("Apply", "b", "Pending"),
                ev("Apply", "b", "Running"),
                ev("Delete", "a", "Pending")
            ]
            .map(Option::unwrap)
        );
        // The list was a real one: the watcher used list-then-watch.
        let requests = fake.requests();
        assert!(requests.iter().any(|r| r.method == "GET" && !r.is_watch()));
        assert!(requests.iter().any(RequestRecord::is_watch));
        fake.shutdown().await;
    });
}

#[test]
fn kube_runtime_watcher_with_streaming_lists() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        pods.create(&PostParams::default(), &pod("a", &[]))
            .await
            .expect("created");
        let config = watcher::Config::default().streaming_lists();
        let mut stream = Box::pin(watcher(pods.clone(), config).default_backoff());
        let mut seen = Vec::new();
        watch_until(&mut stream, &mut seen, |s| {
            s.iter().any(|e| e.0 == "InitDone")
        })
        .await;
        assert_eq!(
            seen,
            [
                ev("Init", "", ""),
                ev("InitApply", "a", "Pending"),
                ev("InitDone", "", "")
            ]
            .map(Option::unwrap)
        );
        seen.clear();
        fake.set_running("ci", "a");
        watch_until(&mut stream, &mut seen, |s| !s.is_empty()).await;
        assert_eq!(seen, [ev("Apply", "a", "Running")].map(Option::unwrap));
        fake.shutdown().await;
    });
}

#[test]
fn kube_runtime_watcher_relists_after_410_expired() {
    run(async {
        let options = FakeOptions {
            history: 3,
            ..FakeOptions::default()
        };
        let (fake, _client, pods) = start_with(options, "ci").await;
        for name in ["a", "b"] {
            pods.create(&PostParams::default(), &pod(name, &[]))
                .await
                .expect("created");
        }
        let mut stream =
            Box::pin(watcher(pods.clone(), watcher::Config::default()).default_backoff());
        let mut seen = Vec::new();
        watch_until(&mut stream, &mut seen, |s| {
            s.iter().any(|e| e.0 == "InitDone")
        })
        .await;
        fake.set_outage(true);
        loop {
            if stream.next().await.expect("the watcher goes on").is_err() {
                break;
            }
        }
        // More changes than the history keeps happen while it is away.
        for phase in ["Running", "Succeeded"] {
            fake.set_pod_phase("ci", "a", phase);
            fake.set_pod_phase("ci", "b", phase);
        }
        fake.set_outage(false);
        // Its watch from the old version is expired: it lists again.
        seen.clear();
        watch_until(&mut stream, &mut seen, |s| {
            s.iter().any(|e| e.0 == "InitDone")
        })
        .await;
        assert_eq!(
            seen,
            [
                ev("Init", "", ""),
                ev("InitApply", "a", "Succeeded"),
                ev("InitApply", "b", "Succeeded"),
                ev("InitDone", "", "")
            ]
            .map(Option::unwrap)
        );
        let lists = fake
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && !r.is_watch())
            .count();
        assert_eq!(lists, 2, "the first list and the relist");
        fake.shutdown().await;
    });
}

#[test]
fn waiting_for_a_pod_follows_the_changes() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        let waiter = {
            let fake = fake.clone();
            tokio::spawn(async move {
                fake.wait_for_pod("ci", "late", |p| p.is_some_and(|p| phase(p) == "Running"))
                    .await
            })
        };
        pods.create(&PostParams::default(), &pod("late", &[]))
            .await
            .expect("created");
        fake.set_running("ci", "late");
        let running = waiter.await.expect("the waiter ends").expect("the pod");
        assert_eq!(phase(&running), "Running");
        pods.delete("late", &DeleteParams::default())
            .await
            .expect("deleted");
        let gone = fake.wait_for_pod("ci", "late", |p| p.is_none()).await;
        assert!(gone.is_none());
        let count = fake.wait_for(|f| Some(f.pods("ci").len())).await;
        assert_eq!(count, 0);
        fake.shutdown().await;
    });
}

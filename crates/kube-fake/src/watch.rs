//! Watches: a chunked stream of `{"type": ..., "object": ...}` lines, from a
//! `resourceVersion` (replayed from the kept history) or from the current
//! objects as `ADDED`, with bookmarks, selector transitions, timeouts and
//! `410 Expired` as the real API server sends them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::Shared;
use crate::api::Query;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Change, EventType, Kind};

/// What a watch follows.
#[derive(Debug)]
pub(crate) struct Request {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Request {
    fn selects(&self, object: &Value) -> bool {
        self.labels.matches_object(object) && self.fields.matches_object(object)
    }

    /// The line a change sends to this watch, if any: an object entering
    /// the selection is `ADDED`, one leaving it `DELETED`.
    fn line(&self, change: &Change) -> Option<Bytes> {
        if change.kind != self.kind
            || self
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != change.namespace)
        {
            return None;
        }
        let now = self.selects(&change.object);
        let before = change.old.as_deref().is_some_and(|o| self.selects(o));
        let kind = match change.event {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Modified => match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
            EventType::Deleted => (before || now).then_some(EventType::Deleted),
        }?;
        Some(event_line(kind.as_str(), &change.object))
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{{\"type\":\"{kind}\",\"object\":{object}}}\n"))
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.kind(), "apiVersion": "v1", "metadata": metadata}),
    )
}

/// Where the stream starts.
enum Start {
    /// The current objects as `ADDED`, then the changes after `rv`.
    Snapshot {
        objects: Vec<Arc<Value>>,
        rv: u64,
        initial_end_bookmark: bool,
    },
    /// The changes after `rv`.
    After(u64),
    /// One `410 Expired` error, then the end.
    Expired(ApiError),
}

/// Answers a watch request.
pub(crate) fn start(
    shared: Arc<Shared>,
    request: Request,
    query: &Query,
) -> Result<Response, ApiError> {
    let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
    let bookmarks = flag("allowWatchBookmarks");
    let initial_events = flag("sendInitialEvents");
    if initial_events
        && query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")
    {
        return Err(ApiError::invalid(
            request.kind,
            "",
            &[crate::status::FieldError::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )],
        ));
    }
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(t.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "timeoutSeconds: invalid value {t:?}: not a whole number of seconds"
            ))
        })?),
        None => Duration::from_secs(1800),
    };
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: {rv:?}: must be a whole number"
            ))
        })?),
    };
    let start = shared.read(|store| match from {
        Some(rv) if !initial_events => match store.changes_after(rv) {
            Ok(_) => Start::After(rv),
            Err(oldest) => Start::Expired(ApiError::expired(rv, oldest)),
        },
        _ => Start::Snapshot {
            objects: store.list(request.kind, request.namespace.as_deref()),
            rv: store.resource_version(),
            initial_end_bookmark: initial_events && bookmarks,
        },
    });
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let interval = shared.options.bookmark_interval.filter(|_| bookmarks);
    tokio::spawn(run(shared, request, start, tx, timeout, interval));
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

type Sender = mpsc::Sender<Result<Bytes, std::io::Error>>;

async fn run(
    shared: Arc<Shared>,
    request: Request,
    start: Start,
    tx: Sender,
    timeout: Duration,
    bookmarks: Option<Duration>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changed = shared.changed.subscribe();
    let mut pos = match start {
        Start::Expired(error) => {
            let _ = tx.send(Ok(event_line("ERROR", &error.to_value()))).await;
            return;
        }
        Start::After(rv) => rv,
        Start::Snapshot {
            objects,
            rv,
            initial_end_bookmark,
        } => {
            for object in objects.iter().filter(|o| request.selects(o)) {
                if tx.send(Ok(event_line("ADDED", object))).await.is_err() {
                    return;
                }
            }
            if initial_end_bookmark && tx.send(Ok(bookmark(request.kind, rv, true))).await.is_err()
            {
                return;
            }
            rv
        }
    };
    let mut ticks =
        bookmarks.map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    loop {
        changed.borrow_and_update();
        let (changes, latest) =
            shared.read(|store| (store.changes_after(pos), store.resource_version()));
        match changes {
            Ok(changes) => {
                for change in &changes {
                    if let Some(line) = request.line(change)
                        && tx.send(Ok(line)).await.is_err()
                    {
                        return;
                    }
                }
                pos = pos.max(latest);
            }
            Err(oldest) => {
                let error = ApiError::expired(pos, oldest);
                let _ = tx.send(Ok(event_line("ERROR", &error.to_value()))).await;
                return;
            }
        }
        let tick = async {
            match ticks.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            () = tokio::time::sleep_until(deadline) => return,
            () = tx.closed() => return,
            () = tick => {
                if tx.send(Ok(bookmark(request.kind, pos, false))).await.is_err() {
                    return;
                }
            }
        }
    }
}

//! One tokio runtime for the whole test binary, a fake server with a
//! `kube` client, pods to create, and raw HTTP for what the typed client
//! hides (status codes, exact bodies).

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use axum::http::{Method, Request};
use hodei_kube_fake::{FakeKube, FakeOptions};
use k8s_openapi::api::core::v1::Pod;
use kube::core::Status;
use kube::{Api, Client};
use serde_json::{Value, json};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

/// The longest one test may take (a hang fails instead of blocking).
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `test` on the shared runtime.
pub fn run<F: Future<Output = ()> + Send + 'static>(test: F) {
    RUNTIME.block_on(async move {
        tokio::time::timeout(TEST_TIMEOUT, tokio::spawn(test))
            .await
            .expect("the test finished in time")
            .expect("the test did not panic");
    });
}

/// A fake with `options`, a client whose default namespace is `ns`, and
/// the pods of `ns`.
pub async fn start_with(options: FakeOptions, ns: &str) -> (FakeKube, Client, Api<Pod>) {
    let fake = FakeKube::start_with(options)
        .await
        .expect("the fake starts");
    let client = Client::try_from(fake.client_config(ns)).expect("a client");
    let pods = Api::namespaced(client.clone(), ns);
    (fake, client, pods)
}

/// A manual-kubelet fake.
pub async fn start(ns: &str) -> (FakeKube, Client, Api<Pod>) {
    start_with(FakeOptions::default(), ns).await
}

/// A pod with one container and `labels`.
pub fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "hodei/worker:test"}]}
    }))
    .expect("a pod")
}

/// The `Status` of a failed call.
pub fn status_of<T: std::fmt::Debug>(result: kube::Result<T>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A raw request: the status code and the body (JSON when it parses,
/// else a string).
pub async fn raw(
    client: &Client,
    method: Method,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(kube::client::Body::from(body.as_bytes().to_vec()))
        .expect("a request");
    let response = client.send(request).await.expect("an answer");
    let code = response.status().as_u16();
    let bytes = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20)
        .await
        .expect("a body");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (code, value)
}

/// The resourceVersion of an object.
pub fn rv(pod: &Pod) -> u64 {
    pod.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("a numeric resourceVersion")
}

/// The phase of a pod.
pub fn phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

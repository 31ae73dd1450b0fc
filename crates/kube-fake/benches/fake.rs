//! What the fake API server sustains through the real `kube` client, so
//! tests of a client's rate limit know the fake is not the bottleneck:
//! sequential and concurrent creates, selector lists, and how fast a
//! status change reaches kube-runtime's `watcher`.
//!
//! Run: `cargo bench -p hodei-kube-fake --bench fake` (prints figures).

use std::time::{Duration, Instant};

use hodei_kube_fake::FakeKube;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use serde_json::json;
use tokio_stream::StreamExt;

const PODS: usize = 2000;
const CONCURRENCY: usize = 32;

fn pod(name: &str, group: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"group": (group % 2).to_string(), "app": "bench"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "hodei/worker:test"}]}
    }))
    .expect("a pod")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>, total: Duration) {
    samples.sort();
    println!(
        "{what}: {n} in {total:.2?} = {rate:.0}/s; latency p50 {p50:.2?}, p99 {p99:.2?}, max {max:.2?}",
        n = samples.len(),
        rate = samples.len() as f64 / total.as_secs_f64(),
        p50 = percentile(&samples, 0.5),
        p99 = percentile(&samples, 0.99),
        max = samples.last().copied().unwrap_or_default(),
    );
}

async fn bench() {
    let fake = FakeKube::start().await.expect("the fake starts");
    let client = Client::try_from(fake.client_config("bench")).expect("a client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");

    // Sequential creates.
    let started = Instant::now();
    let mut samples = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let t = Instant::now();
        pods.create(&PostParams::default(), &pod(&format!("seq-{i}"), i))
            .await
            .expect("created");
        samples.push(t.elapsed());
    }
    report("create, sequential", samples, started.elapsed());

    // Concurrent creates.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let pods = pods.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for i in (worker..PODS).step_by(CONCURRENCY) {
                let t = Instant::now();
                pods.create(&PostParams::default(), &pod(&format!("par-{i}"), i))
                    .await
                    .expect("created");
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.expect("a creator"));
    }
    report(
        &format!("create, {CONCURRENCY} concurrent"),
        samples,
        started.elapsed(),
    );

    // Lists of half the pods by label.
    let lp = ListParams::default().labels("app=bench,group=1");
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut items = 0;
    for _ in 0..20 {
        let t = Instant::now();
        items = pods.list(&lp).await.expect("a list").items.len();
        samples.push(t.elapsed());
    }
    report(
        &format!("list {items} of {} pods by label", 2 * PODS),
        samples,
        started.elapsed(),
    );

    // A status change to the watcher.
    let mut stream = Box::pin(watcher(pods.clone(), watcher::Config::default()));
    loop {
        if let Some(Ok(Event::InitDone)) = stream.next().await {
            break;
        }
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let name = format!("seq-{i}");
        let t = Instant::now();
        fake.set_running("bench", &name);
        loop {
            match stream.next().await {
                Some(Ok(Event::Apply(p))) if p.metadata.name.as_deref() == Some(name.as_str()) => {
                    break;
                }
                Some(_) => {}
                None => panic!("the watcher ended"),
            }
        }
        samples.push(t.elapsed());
    }
    report("status change to watcher", samples, started.elapsed());
    let requests = fake.requests().len();
    println!("requests served: {requests}");
    fake.shutdown().await;
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(bench());
}

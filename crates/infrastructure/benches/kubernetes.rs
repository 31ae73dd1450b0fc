//! The Kubernetes backend's own cost, against `hodei-kube-fake` in a child
//! process (so its CPU is not counted) with no added latency.
//!
//! ```text
//! cargo bench -p hodei-infrastructure --bench kubernetes
//! ```
//!
//! 1. **CPU per pod**: `HODEI_BENCH_PODS` workers (default 500), 20 at a
//!    time, each created (Secret and pod), watched until its pod runs (the
//!    child marks pods running as soon as it sees them), and deleted (pod
//!    and Secret); the bench process's user and system CPU divided by the
//!    number of pods, with the client's rate limit out of the way.
//! 2. **QPS under a burst**: 200 workers created at once with the default
//!    limit (20 requests per second, bursts of 40); the most requests the
//!    API server saw in any one-second window, and how long the creates
//!    took.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hodei_application::orchestrator::{
    BackendState, OneTimeToken, ServerEndpoint, WorkerOrchestrator, WorkerSpec,
};
use hodei_domain::{
    CpuQuantity, JobId, MemoryQuantity, ResourceRequirements, TemplateId, WorkerId, WorkerTemplate,
};
use hodei_infrastructure::kubernetes::{ClientSource, KubernetesConfig, KubernetesOrchestrator};
use hodei_kube_fake::FakeKube;

const NS: &str = "hodei-workers";

/// The fake, run by the child: prints its URL, marks new pods running,
/// and answers `mark` / `max1s` on stdin.
fn serve_fake() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let fake = Arc::new(FakeKube::start().await.expect("the fake starts"));
        println!("{}", fake.url());
        let kubelet = fake.clone();
        tokio::spawn(async move {
            loop {
                for pod in kubelet.pods(NS) {
                    let pending = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .is_none_or(|p| p == "Pending");
                    if pending && pod.metadata.deletion_timestamp.is_none() {
                        kubelet.set_running(NS, pod.metadata.name.as_deref().unwrap_or(""));
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let mut mark = 0;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        while let Some(command) = rx.recv().await {
            let requests = fake.requests();
            match command.as_str() {
                "mark" => {
                    mark = requests.len();
                    println!("ok");
                }
                "max1s" => {
                    let times: Vec<Instant> = requests[mark.min(requests.len())..]
                        .iter()
                        .map(|r| r.at)
                        .collect();
                    let most = times
                        .iter()
                        .map(|start| {
                            times
                                .iter()
                                .filter(|t| {
                                    **t >= *start
                                        && t.duration_since(*start) < Duration::from_secs(1)
                                })
                                .count()
                        })
                        .max()
                        .unwrap_or(0);
                    println!("{} {most}", times.len());
                }
                _ => println!("?"),
            }
        }
    });
}

struct FakeProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl FakeProcess {
    fn start() -> (Self, String) {
        let mut child = Command::new(std::env::current_exe().expect("the bench executable"))
            .arg("--serve-fake")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the fake process starts");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let url = Self::read_line(&mut stdout);
        (
            FakeProcess {
                child,
                stdin,
                stdout,
            },
            url,
        )
    }

    fn read_line(stdout: &mut BufReader<ChildStdout>) -> String {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the fake answers");
        line.trim().to_owned()
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("the fake listens");
        Self::read_line(&mut self.stdout)
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU of this process so far (Linux reports it in
/// hundredths of a second).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = &stat[stat.rfind(')').expect("a comm field") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn spec(n: usize) -> WorkerSpec {
    let resources = ResourceRequirements::new(
        CpuQuantity::parse("100m").expect("a quantity"),
        MemoryQuantity::parse("64Mi").expect("a quantity"),
    );
    WorkerSpec {
        worker_id: WorkerId::new(format!("bench-{n}")).expect("an id"),
        worker_name: format!("bench-{n}"),
        job_id: JobId::new(format!("job-{n}")).expect("an id"),
        template: WorkerTemplate::new(
            TemplateId::new("bench").expect("an id"),
            "hodei/worker:test",
            resources,
        )
        .expect("a template"),
        server: ServerEndpoint {
            host: "127.0.0.1".into(),
            port: 9090,
        },
        token: OneTimeToken::new(format!("token-{n}")),
        server_id: "bench".to_owned(),
        extra_labels: BTreeMap::new(),
        extra_env: BTreeMap::new(),
        docker_args: None,
        pod_yaml: None,
    }
}

async fn orchestrator(url: &str, qps: f64, burst: u32) -> Arc<KubernetesOrchestrator> {
    let mut config = KubernetesConfig::new("bench");
    config.namespace = NS.to_owned();
    config.qps = qps;
    config.burst = burst;
    let client_config = kube::Config::new(url.parse().expect("the fake's url"));
    let orchestrator =
        KubernetesOrchestrator::connect(config, ClientSource::Config(Box::new(client_config)))
            .await
            .expect("a client");
    while !orchestrator.is_synced() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Arc::new(orchestrator)
}

/// Creates worker `n`, waits until its pod runs, deletes it.
async fn one_pod(orchestrator: Arc<KubernetesOrchestrator>, n: usize) {
    let spec = spec(n);
    let id = spec.worker_id.clone();
    orchestrator.create_worker(spec).await.expect("created");
    loop {
        match orchestrator.worker_state(&id).await.expect("a state") {
            BackendState::Running => break,
            BackendState::Pending => tokio::time::sleep(Duration::from_millis(5)).await,
            other => panic!("worker {id}: {other:?}"),
        }
    }
    orchestrator.delete_worker(&id).await.expect("deleted");
}

fn main() {
    if std::env::args().any(|a| a == "--serve-fake") {
        serve_fake();
        return;
    }
    let pods: usize = std::env::var("HODEI_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let (mut fake, url) = FakeProcess::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        // 1. CPU per pod, no rate limit in the way.
        let fast = orchestrator(&url, 1e9, u32::MAX).await;
        // Warm up connections.
        one_pod(fast.clone(), usize::MAX / 2).await;
        let cpu_before = cpu_time();
        let started = Instant::now();
        let concurrency = 20;
        let mut next = 0;
        while next < pods {
            let batch: Vec<_> = (next..(next + concurrency).min(pods))
                .map(|n| tokio::spawn(one_pod(fast.clone(), n)))
                .collect();
            for task in batch {
                task.await.expect("the pod cycle");
            }
            next += concurrency;
        }
        let wall = started.elapsed();
        let cpu = cpu_time().saturating_sub(cpu_before);
        println!(
            "kubernetes: {pods} pods (create, watch to running, delete; {concurrency} at a time) in {:.2} s; server CPU {:.0} ms, {:.3} ms per pod",
            wall.as_secs_f64(),
            cpu.as_secs_f64() * 1000.0,
            cpu.as_secs_f64() * 1000.0 / pods as f64
        );
        drop(fast);

        // 2. 200 pods at once under the default limit.
        let limited = orchestrator(&url, 20.0, 40).await;
        assert_eq!(fake.ask("mark"), "ok");
        let started = Instant::now();
        let creates: Vec<_> = (0..200)
            .map(|n| {
                let o = limited.clone();
                tokio::spawn(async move { o.create_worker(spec(100_000 + n)).await })
            })
            .collect();
        for create in creates {
            create.await.expect("the create").expect("created");
        }
        let elapsed = started.elapsed();
        let answer = fake.ask("max1s");
        let (count, most) = answer.split_once(' ').expect("two numbers");
        println!(
            "kubernetes: 200 pods at once with qps 20, burst 40: {count} requests in {:.2} s, at most {most} in any one second (limit 40 + 20)",
            elapsed.as_secs_f64()
        );
    });
}

//! The Kubernetes backend through the real `kube` client against
//! `hodei-kube-fake`, a fake API server over HTTP.
//!
//! With the fake's manual kubelet the test plays the kubelet: it reads the
//! pod the server created, starts the worker that pod describes in this
//! process (its environment, its token read from the pod's Secret) and
//! marks the pod running; or it sets the pod's status to a failure and
//! checks that the job fails with the pod's own reason and that the pod
//! and its Secret are deleted. With the fake's Docker kubelet a whole
//! pipeline runs in real containers made from the pod spec (the offline
//! test images of `scripts/build-test-image.sh`; required under
//! `CI=true`, skipped with the reason otherwise).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hodei_application::orchestrator::{
    LABEL_JOB_ID, LABEL_MANAGED_BY, LABEL_SERVER_ID, LABEL_TEMPLATE, LABEL_WORKER_ID, OneTimeToken,
    ServerEndpoint, WorkerOrchestrator, WorkerSpec,
};
use hodei_domain::{
    CpuQuantity, JobId, MemoryQuantity, ResourceRequirements, TemplateId, WorkerId, WorkerTemplate,
};
use hodei_infrastructure::kubernetes::{
    ClientSource, KubernetesConfig, KubernetesOrchestrator, pod_name,
};
use hodei_kube_fake::{DockerKubelet, FakeKube, FakeOptions, Kubelet};
use hodei_proto::v1 as pb;
use hodei_server::config::{Backend, PullPolicy, Settings};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ObjectMeta, PostParams};

use crate::cli_run::root;
use crate::support::{TestServer, run, source, start_with, submit, watch};

const NS: &str = "hodei-workers";

/// A template file with one template, `k8s-test`, without capabilities (so
/// `agent any` picks it over the built-ins), running `image`.
fn templates_file(dir: &std::path::Path, image: &str) -> PathBuf {
    let path = dir.join("templates.yaml");
    std::fs::write(
        &path,
        format!(
            "templates:\n  - id: k8s-test\n    image: {image}\n    resources:\n      cpu: 100m\n      memory: 256Mi\n    timeout_minutes: 10\n"
        ),
    )
    .expect("the templates file is written");
    path
}

/// A server on the kubernetes backend talking to `fake`, with its settings
/// changed by `edit`.
async fn start_server(
    fake: &FakeKube,
    image: &str,
    edit: impl FnOnce(&mut Settings),
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig_yaml(NS)).expect("the kubeconfig is written");
    let templates = templates_file(dir.path(), image);
    let server = start_with(|s| {
        s.backend = Backend::Kubernetes;
        s.kubernetes_kubeconfig = Some(kubeconfig);
        s.kubernetes_namespace = NS.to_owned();
        s.templates = Some(templates);
        s.kubernetes_image_pull_grace = Duration::from_secs(1);
        edit(s);
    })
    .await;
    (server, dir)
}

/// Waits (at most 30 s) until `check` gives a value.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(value) = check() {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn label<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// The pod of `job`, once the server created it.
async fn pod_of(fake: &FakeKube, job: &str) -> Pod {
    eventually(&format!("the pod of job {job}"), || {
        fake.pods(NS)
            .into_iter()
            .find(|p| label(p, LABEL_JOB_ID) == Some(job))
    })
    .await
}

/// Waits until neither a pod nor a Secret of `worker` is left.
async fn assert_gone(fake: &FakeKube, worker: &str) {
    eventually(
        &format!("the pod and secret of worker {worker} to go"),
        || {
            let pods = fake
                .pods(NS)
                .iter()
                .any(|p| label(p, LABEL_WORKER_ID) == Some(worker));
            let secrets = fake.secrets(NS).iter().any(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_WORKER_ID))
                    .map(String::as_str)
                    == Some(worker)
            });
            (!pods && !secrets).then_some(())
        },
    )
    .await;
}

/// Plays the kubelet for `pod`: marks it running and starts, in this
/// process, the worker its spec describes, with the environment of its
/// `worker` container and the token read from the Secret it refers to.
fn run_pod_worker(fake: &FakeKube, pod: &Pod) -> tokio::task::JoinHandle<()> {
    let name = pod.metadata.name.clone().expect("a named pod");
    let spec = pod.spec.as_ref().expect("a pod spec");
    let container = spec
        .containers
        .iter()
        .find(|c| c.name == "worker")
        .expect("a worker container");
    let mut env = BTreeMap::new();
    for var in container.env.iter().flatten() {
        if let Some(value) = &var.value {
            env.insert(var.name.clone(), value.clone());
        } else if let Some(key) = var
            .value_from
            .as_ref()
            .and_then(|from| from.secret_key_ref.as_ref())
        {
            let secret = fake
                .secrets(NS)
                .into_iter()
                .find(|s| s.metadata.name.as_deref() == Some(key.name.as_str()))
                .expect("the secret the pod refers to exists");
            let value = secret.data.expect("secret data")[&key.key].0.clone();
            env.insert(var.name.clone(), String::from_utf8(value).expect("text"));
        }
    }
    let mut config = hodei_worker::WorkerConfig::new(
        env["SERVER_HOST"].clone(),
        env["SERVER_PORT"].parse().expect("a port"),
        env["WORKER_ID"].clone(),
    );
    config.worker_name = env["WORKER_NAME"].clone();
    config.token = hodei_worker::Token::new(env["HODEI_WORKER_TOKEN"].clone());
    config.ephemeral = env["EPHEMERAL_MODE"] == "true";
    let workspaces = tempfile::tempdir().expect("a temporary directory");
    config.workspace_root = workspaces.path().to_owned();
    assert!(fake.set_running(NS, &name), "the pod exists");
    tokio::spawn(async move {
        let _ = hodei_worker::run(config).await;
        drop(workspaces);
    })
}

const YAML_PIPELINE: &str = r#"
pipeline {
    agent {
        kubernetes {
            inheritFrom 'k8s-test'
            yaml '''
metadata:
  labels:
    team: ci
spec:
  nodeSelector:
    disk: ssd
  containers:
  - name: worker
    env:
    - name: FROM_YAML
      value: merged
  - name: sidecar
    image: busybox:1.36
'''
        }
    }
    stages {
        stage('Build') {
            steps {
                sh 'echo "the yaml was merged"'
            }
        }
    }
}
"#;

#[test]
fn the_pod_as_created_runs_its_worker_and_is_deleted_after_the_job() {
    run(async {
        let fake = FakeKube::start().await.expect("the fake starts");
        let (server, _dir) = start_server(&fake, "hodei/worker:test", |_| {}).await;
        let mut jobs = server.jobs().await;
        let job = submit(&mut jobs, YAML_PIPELINE, source(&[("a.txt", "a")]))
            .await
            .expect("the job is accepted");
        let pod = pod_of(&fake, &job).await;

        let worker = label(&pod, LABEL_WORKER_ID)
            .expect("a worker id")
            .to_owned();
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some(pod_name(&WorkerId::new(worker.as_str()).unwrap()).as_str())
        );
        assert!(
            pod.metadata
                .name
                .as_deref()
                .unwrap()
                .starts_with("hodei-worker-")
        );
        assert_eq!(label(&pod, LABEL_MANAGED_BY), Some("hodei"));
        assert_eq!(
            label(&pod, LABEL_SERVER_ID),
            Some(server.handle.server_id())
        );
        assert_eq!(label(&pod, LABEL_TEMPLATE), Some("k8s-test"));
        assert_eq!(label(&pod, "team"), Some("ci"));
        let spec = pod.spec.clone().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.service_account_name.as_deref(), Some("hodei-worker"));
        assert_eq!(spec.active_deadline_seconds, Some(600));
        assert_eq!(spec.node_selector.unwrap()["disk"], "ssd");
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["worker", "sidecar"]);
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.image.as_deref(), Some("hodei/worker:latest"));
        let main = &spec.containers[0];
        assert_eq!(main.image.as_deref(), Some("hodei/worker:test"));
        assert_eq!(
            main.command.as_deref().unwrap(),
            ["/opt/hodei/bin/hodei-worker"]
        );
        let limits = main.resources.clone().unwrap().limits.unwrap();
        assert_eq!(limits["cpu"].0, "100m");
        assert_eq!(limits["memory"].0, (256u64 << 20).to_string());
        let env: BTreeMap<String, Option<String>> = main
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        for key in [
            "SERVER_HOST",
            "SERVER_PORT",
            "WORKER_ID",
            "WORKER_NAME",
            "WORKER_CAPABILITIES",
        ] {
            assert!(env.contains_key(key), "{key} in {env:?}");
        }
        assert_eq!(env["EPHEMERAL_MODE"].as_deref(), Some("true"));
        assert_eq!(env["FROM_YAML"].as_deref(), Some("merged"));
        // The token is only in the Secret, which carries the same labels.
        assert_eq!(env["HODEI_WORKER_TOKEN"], None);
        let secrets: Vec<Secret> = fake.secrets(NS);
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0].metadata.name, pod.metadata.name);
        assert_eq!(
            secrets[0].metadata.labels.as_ref().unwrap()[LABEL_WORKER_ID],
            worker
        );

        let worker_task = run_pod_worker(&fake, &pod);
        let watched = watch(&mut jobs, &job, 0).await;
        assert_eq!(
            watched.status.as_ref().map(|(s, _)| *s),
            Some(pb::JobStatus::Success),
            "{watched:#?}"
        );
        assert!(watched.has_line("the yaml was merged"), "{watched:#?}");
        assert_gone(&fake, &worker).await;
        worker_task.await.expect("the worker ends");
        // The manager's polling was answered from the watcher's cache: no
        // request read the pod itself, and every watch selected this
        // server's pods.
        let requests = fake.requests();
        let pod_reads = requests
            .iter()
            .filter(|r| {
                r.method == "GET" && r.path.ends_with(pod.metadata.name.as_deref().unwrap())
            })
            .count();
        assert_eq!(pod_reads, 0, "{requests:#?}");
        let watches: Vec<_> = requests.iter().filter(|r| r.is_watch()).collect();
        assert!(!watches.is_empty());
        for watch in watches {
            assert!(
                watch.path.ends_with("/pods")
                    && watch
                        .query
                        .as_deref()
                        .unwrap_or("")
                        .contains(server.handle.server_id()),
                "{watch:?}"
            );
        }
        server.stop().await;
        fake.shutdown().await;
    });
}

/// A pod made to fail by `fail` fails its job with a message containing
/// `expected`; the pod and its Secret are then deleted.
async fn check_failure(
    fake: &FakeKube,
    jobs: &mut hodei_proto::v1::job_service_client::JobServiceClient<tonic::transport::Channel>,
    fail: impl FnOnce(&FakeKube, &str),
    expected: &str,
) {
    let pipeline = "pipeline {\n agent { template 'k8s-test' }\n stages { stage('S') { steps { sh 'true' } } }\n}";
    let job = submit(jobs, pipeline, Vec::new())
        .await
        .expect("the job is accepted");
    let pod = pod_of(fake, &job).await;
    let name = pod.metadata.name.clone().unwrap();
    let worker = label(&pod, LABEL_WORKER_ID).unwrap().to_owned();
    fail(fake, &name);
    let watched = watch(jobs, &job, 0).await;
    let (status, message) = watched.status.clone().expect("a final status");
    assert_eq!(status, pb::JobStatus::Failure, "{watched:#?}");
    assert!(
        message.contains(expected),
        "{message:?} should contain {expected:?}"
    );
    assert_gone(fake, &worker).await;
}

#[test]
fn pod_failures_fail_the_job_with_the_pods_reason_and_delete_it() {
    run(async {
        let fake = FakeKube::start().await.expect("the fake starts");
        let (server, _dir) = start_server(&fake, "hodei/worker:test", |s| {
            s.provisioning_timeout = Duration::from_secs(3);
        })
        .await;
        let mut jobs = server.jobs().await;
        check_failure(
            &fake,
            &mut jobs,
            |f, pod| {
                f.set_waiting(NS, pod, "worker", "ImagePullBackOff", "Back-off pulling image \"hodei/worker:test\"");
            },
            "container worker: ImagePullBackOff: Back-off pulling image \"hodei/worker:test\" (still failing after 1s)",
        )
        .await;
        check_failure(
            &fake,
            &mut jobs,
            |f, pod| {
                f.set_waiting(
                    NS,
                    pod,
                    "hodei-worker-init",
                    "ErrImagePull",
                    "pull access denied",
                );
            },
            "init container hodei-worker-init: ErrImagePull: pull access denied",
        )
        .await;
        check_failure(
            &fake,
            &mut jobs,
            |f, pod| {
                f.set_waiting(
                    NS,
                    pod,
                    "worker",
                    "CreateContainerConfigError",
                    "secret \"x\" not found",
                );
            },
            "container worker: CreateContainerConfigError: secret \"x\" not found",
        )
        .await;
        check_failure(
            &fake,
            &mut jobs,
            |f, pod| {
                f.set_unschedulable(NS, pod, "0/3 nodes are available: 3 Insufficient cpu.");
            },
            "unschedulable for 3s: 0/3 nodes are available: 3 Insufficient cpu.",
        )
        .await;
        check_failure(
            &fake,
            &mut jobs,
            |f, pod| {
                f.set_terminated(NS, pod, "worker", 137, "OOMKilled", "");
            },
            "worker exited with OOMKilled (out of memory at its memory limit, exit status 137) before connecting",
        )
        .await;
        check_failure(
            &fake,
            &mut jobs,
            |f, pod| {
                f.set_pod_log(NS, pod, "worker", "starting\nerror: no route to server\n");
                f.set_terminated(NS, pod, "worker", 1, "Error", "");
            },
            "worker exited with exit status 1 before connecting; last lines: starting | error: no route to server",
        )
        .await;
        check_failure(
            &fake,
            &mut jobs,
            |f, pod| {
                f.set_deadline_exceeded(NS, pod);
            },
            "failed: DeadlineExceeded",
        )
        .await;
        server.stop().await;
        fake.shutdown().await;
    });
}

#[test]
fn a_pod_yaml_that_changes_the_worker_fails_the_job_naming_the_field() {
    run(async {
        let fake = FakeKube::start().await.expect("the fake starts");
        let (server, _dir) = start_server(&fake, "hodei/worker:test", |_| {}).await;
        let mut jobs = server.jobs().await;
        let pipeline = r#"
pipeline {
    agent { kubernetes { inheritFrom 'k8s-test'; yaml '''
spec:
  containers:
  - name: worker
    command: ["sh", "-c", "sleep 1"]
''' } }
    stages { stage('S') { steps { sh 'true' } } }
}
"#;
        let job = submit(&mut jobs, pipeline, Vec::new())
            .await
            .expect("the job is accepted");
        let watched = watch(&mut jobs, &job, 0).await;
        let (status, message) = watched.status.clone().expect("a final status");
        assert_eq!(status, pb::JobStatus::Failure);
        assert!(
            message.contains("pod yaml: spec.containers[worker].command: set by Hodei"),
            "{message}"
        );
        assert!(fake.pods(NS).is_empty());
        assert!(fake.secrets(NS).is_empty());
        server.stop().await;
        fake.shutdown().await;
    });
}

/// A pod and Secret labelled as a worker of `server_id`.
async fn plant(client: &kube::Client, server_id: &str, worker: &str) {
    let labels: BTreeMap<String, String> = [
        (LABEL_MANAGED_BY, "hodei"),
        (LABEL_SERVER_ID, server_id),
        (LABEL_WORKER_ID, worker),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let name = pod_name(&WorkerId::new(worker).unwrap());
    let metadata = ObjectMeta {
        name: Some(name),
        labels: Some(labels),
        ..ObjectMeta::default()
    };
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": metadata,
        "spec": {"containers": [{"name": "worker", "image": "hodei/worker:test"}], "restartPolicy": "Never"}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await
        .expect("the pod is created");
    let secret = Secret {
        metadata: pod.metadata.clone(),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the secret is created");
}

#[test]
fn a_restarted_server_deletes_the_pods_it_left_behind() {
    run(async {
        let fake = FakeKube::start().await.expect("the fake starts");
        let client = kube::Client::try_from(fake.client_config(NS)).expect("a client");
        let server_id = format!("k8s-gc-{}", std::process::id());
        plant(&client, &server_id, "ghost-1").await;
        plant(&client, &server_id, "ghost-2").await;
        plant(&client, "another-server", "theirs").await;
        let id = server_id.clone();
        let (server, _dir) = start_server(&fake, "hodei/worker:test", move |s| {
            s.server_id = Some(id);
        })
        .await;
        // The sweep at start has run when the server is up.
        let left: Vec<String> = fake
            .pods(NS)
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        assert_eq!(left, ["hodei-worker-theirs"]);
        let secrets: Vec<String> = fake
            .secrets(NS)
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        assert_eq!(secrets, ["hodei-worker-theirs"]);
        server.stop().await;
        fake.shutdown().await;
    });
}

/// The verb and resource RBAC sees in a request to the API server
/// (`"watch pods"`, `"get pods/log"`), with the request's namespace; `None`
/// for discovery paths, which every authenticated client may read.
fn rbac_verb(request: &hodei_kube_fake::RequestRecord) -> Option<(String, String)> {
    let rest = request.path.strip_prefix("/api/v1/namespaces/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (namespace, resource, item) = match parts.as_slice() {
        [ns, resource] => (*ns, (*resource).to_owned(), false),
        [ns, resource, _] => (*ns, (*resource).to_owned(), true),
        [ns, resource, _, sub] => (*ns, format!("{resource}/{sub}"), true),
        _ => panic!("a request RBAC would not know: {request:?}"),
    };
    let verb = match (request.method.as_str(), item) {
        ("GET", false) if request.is_watch() => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => panic!("a request RBAC would not know: {request:?}"),
    };
    Some((namespace.to_owned(), format!("{verb} {resource}")))
}

#[test]
fn every_request_the_backend_makes_is_granted_by_the_role_in_k8s() {
    run(async {
        let fake = FakeKube::start().await.expect("the fake starts");
        let client = kube::Client::try_from(fake.client_config(NS)).expect("a client");
        let server_id = format!("k8s-rbac-{}", std::process::id());
        plant(&client, &server_id, "left-behind").await;
        let planted = fake.requests().len();
        let id = server_id.clone();
        let (server, _dir) = start_server(&fake, "hodei/worker:test", move |s| {
            s.server_id = Some(id);
        })
        .await;
        let mut jobs = server.jobs().await;
        // A job that runs, then a worker that exits before connecting (its
        // log is read): what a server does in a day, after deleting what
        // it left behind at start.
        let pipeline = "pipeline {\n agent { template 'k8s-test' }\n stages { stage('S') { steps { sh 'true' } } }\n}";
        let job = submit(&mut jobs, pipeline, Vec::new())
            .await
            .expect("the job is accepted");
        let pod = pod_of(&fake, &job).await;
        let worker = label(&pod, LABEL_WORKER_ID).unwrap().to_owned();
        let worker_task = run_pod_worker(&fake, &pod);
        let watched = watch(&mut jobs, &job, 0).await;
        assert_eq!(
            watched.status.as_ref().map(|(s, _)| *s),
            Some(pb::JobStatus::Success),
            "{watched:#?}"
        );
        assert_gone(&fake, &worker).await;
        worker_task.await.expect("the worker ends");
        check_failure(
            &fake,
            &mut jobs,
            |f, pod| {
                f.set_pod_log(NS, pod, "worker", "cannot start\n");
                f.set_terminated(NS, pod, "worker", 2, "Error", "");
            },
            "last lines: cannot start",
        )
        .await;
        server.stop().await;
        let requests = fake.requests();
        fake.shutdown().await;

        let (role_ns, granted) = crate::manifests::role_grants();
        assert_eq!(role_ns, NS);
        let used: std::collections::BTreeSet<String> = requests[planted..]
            .iter()
            .filter_map(rbac_verb)
            .map(|(namespace, verb)| {
                assert_eq!(namespace, role_ns, "only the workers' namespace");
                verb
            })
            .collect();
        for expected in [
            "create pods",
            "watch pods",
            "delete pods",
            "create secrets",
            "list secrets",
            "get pods/log",
        ] {
            assert!(
                used.contains(expected),
                "the backend did {expected}: {used:?}"
            );
        }
        let refused: Vec<&String> = used.difference(&granted).collect();
        assert!(
            refused.is_empty(),
            "k8s/rbac.yaml does not grant {refused:?}"
        );
    });
}

#[test]
fn jobs_wait_through_an_api_server_outage_and_run_after_it() {
    run(async {
        let fake = FakeKube::start().await.expect("the fake starts");
        let (server, _dir) = start_server(&fake, "hodei/worker:test", |s| {
            s.provisioning_timeout = Duration::from_secs(60);
        })
        .await;
        let mut jobs = server.jobs().await;
        fake.set_outage(true);
        let pipeline = "pipeline {\n agent any\n stages { stage('S') { steps { sh 'echo after the outage' } } }\n}";
        let job = submit(&mut jobs, pipeline, Vec::new())
            .await
            .expect("the job is accepted");
        // The create keeps failing for a while; the job waits for its worker.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let status = jobs
            .get(pb::GetJobRequest {
                job_id: job.clone(),
            })
            .await
            .expect("the job is known")
            .into_inner()
            .status;
        let status = pb::JobStatus::try_from(status).unwrap();
        assert!(
            matches!(
                status,
                pb::JobStatus::Queued | pb::JobStatus::Provisioning | pb::JobStatus::Running
            ),
            "a transient outage does not fail the job: {status:?}"
        );
        assert!(fake.pods(NS).is_empty());
        fake.set_outage(false);
        let pod = pod_of(&fake, &job).await;
        let worker = label(&pod, LABEL_WORKER_ID).unwrap().to_owned();
        let task = run_pod_worker(&fake, &pod);
        let watched = watch(&mut jobs, &job, 0).await;
        assert_eq!(
            watched.status.as_ref().map(|(s, _)| *s),
            Some(pb::JobStatus::Success),
            "{watched:#?}"
        );
        assert!(watched.has_line("after the outage"));
        assert_gone(&fake, &worker).await;
        task.await.expect("the worker ends");
        server.stop().await;
        fake.shutdown().await;
    });
}

fn spec(server_id: &str, n: usize) -> WorkerSpec {
    let resources = ResourceRequirements::new(
        CpuQuantity::parse("100m").unwrap(),
        MemoryQuantity::parse("64Mi").unwrap(),
    );
    WorkerSpec {
        worker_id: WorkerId::new(format!("qps-{n}")).unwrap(),
        worker_name: format!("qps-{n}"),
        job_id: JobId::new(format!("job-{n}")).unwrap(),
        template: WorkerTemplate::new(
            TemplateId::new("t").unwrap(),
            "hodei/worker:test",
            resources,
        )
        .unwrap(),
        server: ServerEndpoint {
            host: "127.0.0.1".into(),
            port: 1,
        },
        token: OneTimeToken::new(format!("token-{n}")),
        server_id: server_id.to_owned(),
        extra_labels: BTreeMap::new(),
        extra_env: BTreeMap::new(),
        docker_args: None,
        pod_yaml: None,
    }
}

#[test]
fn many_workers_at_once_never_exceed_the_configured_qps() {
    run(async {
        let fake = FakeKube::start().await.expect("the fake starts");
        let mut config = KubernetesConfig::new("qps-server");
        config.namespace = NS.to_owned();
        config.qps = 20.0;
        config.burst = 5;
        let orchestrator = Arc::new(
            KubernetesOrchestrator::connect(
                config,
                ClientSource::Config(Box::new(fake.client_config(NS))),
            )
            .await
            .expect("a client"),
        );
        let creates = (0..40).map(|n| {
            let o = orchestrator.clone();
            tokio::spawn(async move { o.create_worker(spec("qps-server", n)).await })
        });
        for create in creates {
            create.await.unwrap().expect("the worker is created");
        }
        assert_eq!(fake.pods(NS).len(), 40);
        assert_eq!(fake.secrets(NS).len(), 40);
        let listed = orchestrator.list_workers("qps-server").await.unwrap();
        assert_eq!(listed.len(), 40);
        let deletes = (0..40).map(|n| {
            let o = orchestrator.clone();
            tokio::spawn(async move {
                o.delete_worker(&WorkerId::new(format!("qps-{n}")).unwrap())
                    .await
            })
        });
        for delete in deletes {
            delete.await.unwrap().expect("the worker is deleted");
        }
        assert!(fake.pods(NS).is_empty());
        assert!(fake.secrets(NS).is_empty());

        // In every window of one second the server saw at most the burst
        // plus one second's worth, plus one for where the window falls.
        let times: Vec<std::time::Instant> = fake.requests().iter().map(|r| r.at).collect();
        assert!(times.len() >= 160, "{} requests", times.len());
        let most = times
            .iter()
            .map(|start| {
                times
                    .iter()
                    .filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap();
        assert!(most <= 5 + 20 + 1, "{most} requests in one second");
        fake.shutdown().await;
    });
}

/// Whether the Docker engine and the two test images are there; otherwise
/// prints why (or fails under `CI=true`).
fn docker_images_ready() -> bool {
    let missing = |reason: String| {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "docker tests are required under CI=true: {reason}"
        );
        eprintln!("skipping kubernetes docker test: {reason}");
        false
    };
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return missing(format!(
                "no docker engine answers: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Err(e) => return missing(format!("no docker client: {e}")),
    }
    for image in ["hodei/worker:test", "hodei/worker:test-alt"] {
        let found = Command::new("docker")
            .args(["image", "inspect", image])
            .output()
            .is_ok_and(|out| out.status.success());
        if !found {
            return missing(format!(
                "image {image} missing (run scripts/build-test-image.sh)"
            ));
        }
    }
    true
}

#[test]
fn examples_hello_runs_in_real_containers_from_the_pod_spec() {
    if !docker_images_ready() {
        return;
    }
    run(async {
        let fake = FakeKube::start_with(FakeOptions {
            kubelet: Kubelet::Docker(DockerKubelet::default()),
            ..FakeOptions::default()
        })
        .await
        .expect("the fake starts with its docker kubelet");
        let (server, _dir) = start_server(&fake, "hodei/worker:test-alt", |s| {
            s.kubernetes_worker_image = "hodei/worker:test".to_owned();
            s.kubernetes_image_pull_policy = Some(PullPolicy::IfNotPresent);
        })
        .await;
        let mut jobs = server.jobs().await;
        let pipeline = std::fs::read_to_string(root().join("examples/hello/Jenkinsfile"))
            .expect("examples/hello/Jenkinsfile");
        let job = submit(&mut jobs, &pipeline, Vec::new())
            .await
            .expect("the job is accepted");
        let pod = pod_of(&fake, &job).await;
        let worker = label(&pod, LABEL_WORKER_ID).unwrap().to_owned();
        let watched = watch(&mut jobs, &job, 0).await;
        assert_eq!(
            watched.status.as_ref().map(|(s, _)| *s),
            Some(pb::JobStatus::Success),
            "{watched:#?}"
        );
        assert!(watched.has_line("Hello from Hodei"), "{watched:#?}");
        assert!(watched.has_line("running on Linux"), "{watched:#?}");
        assert_gone(&fake, &worker).await;
        server.stop().await;
        let left = fake.docker_containers().await;
        assert!(left.is_empty(), "containers left: {left:?}");
        fake.shutdown().await;
    });
}

#[test]
fn a_template_with_a_non_root_user_runs_its_steps_as_that_user() {
    if !docker_images_ready() {
        return;
    }
    run(async {
        let fake = FakeKube::start_with(FakeOptions {
            kubelet: Kubelet::Docker(DockerKubelet::default()),
            ..FakeOptions::default()
        })
        .await
        .expect("the fake starts with its docker kubelet");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let templates = dir.path().join("non-root.yaml");
        std::fs::write(
            &templates,
            "templates:\n  - id: k8s-test\n    image: hodei/worker:test-alt\n    resources: {cpu: 100m, memory: 256Mi}\n    run_as_user: 65534\n",
        )
        .expect("the templates file is written");
        let (server, _dir) = start_server(&fake, "hodei/worker:test-alt", |s| {
            s.kubernetes_worker_image = "hodei/worker:test".to_owned();
            s.templates = Some(templates);
        })
        .await;
        let mut jobs = server.jobs().await;
        let pipeline = "pipeline {\n agent any\n stages { stage('S') { steps { sh 'echo \"uid=$(id -u)\"' } } }\n}";
        let job = submit(&mut jobs, pipeline, Vec::new())
            .await
            .expect("the job is accepted");
        let pod = pod_of(&fake, &job).await;
        let security = pod.spec.as_ref().unwrap().security_context.clone().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        let worker = label(&pod, LABEL_WORKER_ID).unwrap().to_owned();
        let watched = watch(&mut jobs, &job, 0).await;
        assert_eq!(
            watched.status.as_ref().map(|(s, _)| *s),
            Some(pb::JobStatus::Success),
            "{watched:#?}"
        );
        assert!(watched.has_line("uid=65534"), "{watched:#?}");
        assert_gone(&fake, &worker).await;
        server.stop().await;
        let left = fake.docker_containers().await;
        assert!(left.is_empty(), "containers left: {left:?}");
        fake.shutdown().await;
    });
}

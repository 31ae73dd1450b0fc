//! The Docker kubelet: pods run for real on the local engine with the
//! offline test images (`scripts/build-test-image.sh`).
//!
//! When no engine answers or the image is missing, each test prints why
//! and returns; under `CI=true` it fails instead.

use std::process::Command;
use std::time::Duration;

use hodei_kube_fake::{DockerKubelet, FakeKube, FakeOptions, Kubelet, POD_LABEL};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, LogParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use serde_json::json;

use crate::support::{phase, run};

/// A namespace of its own for each test run, so runs side by side on one
/// engine do not see each other's containers.
fn namespace() -> String {
    format!("ci-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// A fake with the Docker kubelet, or `None` after printing why not (a
/// failure under `CI=true`).
async fn docker_fake(ns: &str) -> Option<(FakeKube, Client, Api<Pod>)> {
    let missing = |reason: String| {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "docker tests are required under CI=true: {reason}"
        );
        eprintln!("skipping docker test: {reason}");
        None
    };
    let image = Command::new("docker")
        .args(["image", "inspect", "hodei/worker:test"])
        .output();
    match image {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return missing(format!(
                "image hodei/worker:test missing (run scripts/build-test-image.sh) or no engine: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Err(e) => return missing(format!("no docker client: {e}")),
    }
    let options = FakeOptions {
        kubelet: Kubelet::Docker(DockerKubelet {
            backoff: Duration::from_millis(200),
            max_grace_period: Duration::from_secs(1),
            ..DockerKubelet::default()
        }),
        ..FakeOptions::default()
    };
    let fake = match FakeKube::start_with(options).await {
        Ok(fake) => fake,
        Err(e) => return missing(e.to_string()),
    };
    let client = Client::try_from(fake.client_config(ns)).expect("a client");
    let pods = Api::namespaced(client.clone(), ns);
    Some((fake, client, pods))
}

/// Containers (running or not) of the pod `ns/name`, from `docker ps -a`.
fn docker_ps(ns: &str, name: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label={POD_LABEL}={ns}/{name}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn pod_from(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).expect("a pod")
}

/// Waits (through a watch) until `name` satisfies `done`.
async fn until(pods: &Api<Pod>, name: &str, done: impl Fn(&Pod) -> bool) -> Pod {
    await_condition(pods.clone(), name, move |p: Option<&Pod>| {
        p.is_some_and(&done)
    })
    .await
    .expect("the watch goes on")
    .expect("the pod exists")
}

/// Waits until `name` is gone.
async fn until_gone(pods: &Api<Pod>, name: &str) {
    await_condition(pods.clone(), name, |p: Option<&Pod>| p.is_none())
        .await
        .expect("the watch goes on");
}

fn waiting_reason(pod: &Pod, container: &str) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    let s = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|s| s.name == container)?;
    let w = s.state.as_ref()?.waiting.as_ref()?;
    Some((
        w.reason.clone().unwrap_or_default(),
        w.message.clone().unwrap_or_default(),
    ))
}

#[test]
fn an_init_container_copies_the_worker_and_the_main_container_runs() {
    run(async {
        let ns = namespace();
        let Some((fake, client, pods)) = docker_fake(&ns).await else {
            return;
        };
        let secrets: Api<Secret> = Api::namespaced(client, &ns);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "token"}, "stringData": {"value": "from-a-secret"}
        }))
        .expect("a secret");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("created");
        let mount = json!([{"name": "bin", "mountPath": "/hodei/bin"}]);
        // Non-root as a hardened pod is: the init container runs as the
        // pod's user without capabilities, the main one as its own user.
        let locked = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
        let spec = pod_from(json!({
            "metadata": {"name": "runs", "labels": {"app": "hodei"}},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "fsGroup": 1000},
                "volumes": [{"name": "bin", "emptyDir": {}}],
                "initContainers": [{
                    "name": "install", "image": "hodei/worker:test",
                    "command": ["sh", "-c", "cp /usr/local/bin/hodei-worker /hodei/bin/hodei-worker && id -u"],
                    "volumeMounts": mount,
                    "securityContext": locked
                }],
                "containers": [{
                    "name": "main", "image": "hodei/worker:test-alt",
                    "command": ["sh", "-c"],
                    "args": ["test -x /hodei/bin/hodei-worker && echo hi; echo $(GREETING) $SECRET; id -u; pwd; exit 3"],
                    "workingDir": "/tmp",
                    "securityContext": {"runAsUser": 65534, "runAsGroup": 65534, "capabilities": {"drop": ["ALL"]}},
                    "env": [
                        {"name": "GREETING", "value": "hello"},
                        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "token", "key": "value"}}}
                    ],
                    "volumeMounts": mount
                }]
            }
        }));
        pods.create(&PostParams::default(), &spec)
            .await
            .expect("created");
        let done = until(&pods, "runs", |p| {
            matches!(phase(p).as_str(), "Succeeded" | "Failed")
        })
        .await;
        assert_eq!(phase(&done), "Failed");
        let status = done.status.as_ref().expect("status");
        let init = status.init_container_statuses.as_ref().expect("init")[0]
            .state
            .as_ref()
            .and_then(|s| s.terminated.clone())
            .expect("init terminated");
        assert_eq!(
            (init.exit_code, init.reason.as_deref()),
            (0, Some("Completed"))
        );
        let main = &status.container_statuses.as_ref().expect("statuses")[0];
        let exit = main
            .state
            .as_ref()
            .and_then(|s| s.terminated.clone())
            .expect("terminated");
        assert_eq!((exit.exit_code, exit.reason.as_deref()), (3, Some("Error")));
        assert!(
            main.container_id
                .as_deref()
                .is_some_and(|id| id.starts_with("docker://"))
        );

        let logs = pods
            .logs(
                "runs",
                &LogParams {
                    container: Some("main".to_owned()),
                    ..LogParams::default()
                },
            )
            .await
            .expect("logs");
        assert_eq!(logs, "hi\nhello from-a-secret\n65534\n/tmp\n");
        let init_logs = pods
            .logs(
                "runs",
                &LogParams {
                    container: Some("install".to_owned()),
                    ..LogParams::default()
                },
            )
            .await
            .expect("logs");
        assert_eq!(init_logs, "1000\n");
        assert_eq!(
            docker_ps(&ns, "runs").len(),
            2,
            "a finished pod keeps its containers"
        );

        let deleted = pods
            .delete("runs", &DeleteParams::default())
            .await
            .expect("deleted");
        let deleted = deleted.left().expect("the pod");
        assert!(
            deleted.metadata.deletion_timestamp.is_some(),
            "a running kubelet deletes gracefully"
        );
        until_gone(&pods, "runs").await;
        assert!(
            docker_ps(&ns, "runs").is_empty(),
            "nothing left in docker ps -a"
        );
        assert!(fake.docker_containers().await.is_empty());
        fake.shutdown().await;
    });
}

#[test]
fn a_missing_image_backs_off_and_the_pod_stays_pending() {
    run(async {
        let ns = namespace();
        let Some((fake, _client, pods)) = docker_fake(&ns).await else {
            return;
        };
        let spec = pod_from(json!({
            "metadata": {"name": "nopull"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "hodei/absent:1"}]}
        }));
        pods.create(&PostParams::default(), &spec)
            .await
            .expect("created");
        let pulled = until(&pods, "nopull", |p| {
            waiting_reason(p, "main").is_some_and(|w| w.0 == "ErrImagePull")
        })
        .await;
        assert_eq!(phase(&pulled), "Pending");
        let backing_off = until(&pods, "nopull", |p| {
            waiting_reason(p, "main").is_some_and(|w| w.0 == "ImagePullBackOff")
        })
        .await;
        assert_eq!(
            waiting_reason(&backing_off, "main"),
            Some((
                "ImagePullBackOff".to_owned(),
                "Back-off pulling image \"hodei/absent:1\"".to_owned()
            ))
        );
        assert_eq!(phase(&backing_off), "Pending");
        // A pod waiting for its image has no container to show.
        assert!(docker_ps(&ns, "nopull").is_empty());

        pods.delete("nopull", &DeleteParams::default().grace_period(0))
            .await
            .expect("deleted");
        assert!(
            fake.pod(&ns, "nopull").is_none(),
            "grace period 0 deletes at once"
        );
        fake.shutdown().await;
    });
}

#[test]
fn a_missing_secret_waits_until_it_exists() {
    run(async {
        let ns = namespace();
        let Some((fake, client, pods)) = docker_fake(&ns).await else {
            return;
        };
        let spec = pod_from(json!({
            "metadata": {"name": "needs-secret"},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": "hodei/worker:test",
                "command": ["sh", "-c", "echo $X"],
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "later", "key": "x"}}}]
            }]}
        }));
        pods.create(&PostParams::default(), &spec)
            .await
            .expect("created");
        let waiting = until(&pods, "needs-secret", |p| {
            waiting_reason(p, "main").is_some()
                && waiting_reason(p, "main").is_some_and(|w| w.0 == "CreateContainerConfigError")
        })
        .await;
        assert_eq!(
            waiting_reason(&waiting, "main"),
            Some((
                "CreateContainerConfigError".to_owned(),
                "secret \"later\" not found".to_owned()
            ))
        );
        let secrets: Api<Secret> = Api::namespaced(client, &ns);
        let wrong_key: Secret = serde_json::from_value(
            json!({"metadata": {"name": "later"}, "stringData": {"y": "1"}}),
        )
        .expect("a secret");
        secrets
            .create(&PostParams::default(), &wrong_key)
            .await
            .expect("created");
        until(&pods, "needs-secret", |p| {
            waiting_reason(p, "main")
                .is_some_and(|w| w.1 == format!("couldn't find key x in Secret {ns}/later"))
        })
        .await;
        secrets
            .delete("later", &DeleteParams::default())
            .await
            .expect("deleted");
        let right: Secret = serde_json::from_value(
            json!({"metadata": {"name": "later"}, "stringData": {"x": "now"}}),
        )
        .expect("a secret");
        secrets
            .create(&PostParams::default(), &right)
            .await
            .expect("created");
        let done = until(&pods, "needs-secret", |p| phase(p) == "Succeeded").await;
        assert_eq!(phase(&done), "Succeeded");
        let logs = pods
            .logs("needs-secret", &LogParams::default())
            .await
            .expect("logs");
        assert_eq!(logs, "now\n");
        pods.delete("needs-secret", &DeleteParams::default())
            .await
            .expect("deleted");
        until_gone(&pods, "needs-secret").await;
        assert!(fake.docker_containers().await.is_empty());
        fake.shutdown().await;
    });
}

#[test]
fn the_active_deadline_fails_a_running_pod_and_shutdown_cleans_up() {
    run(async {
        let ns = namespace();
        let Some((fake, _client, pods)) = docker_fake(&ns).await else {
            return;
        };
        let spec = pod_from(json!({
            "metadata": {"name": "slow"},
            "spec": {"restartPolicy": "Never", "activeDeadlineSeconds": 1, "containers": [{
                "name": "main", "image": "hodei/worker:test", "command": ["sleep", "300"],
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}
            }]}
        }));
        pods.create(&PostParams::default(), &spec)
            .await
            .expect("created");
        let running = until(&pods, "slow", |p| phase(p) != "Pending").await;
        assert!(
            matches!(phase(&running).as_str(), "Running" | "Failed"),
            "{}",
            phase(&running)
        );
        let failed = until(&pods, "slow", |p| phase(p) == "Failed").await;
        let status = failed.status.as_ref().expect("status");
        assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
        assert_eq!(docker_ps(&ns, "slow").len(), 1);
        // Shutdown removes what a test forgot to delete.
        fake.shutdown().await;
        assert!(docker_ps(&ns, "slow").is_empty());
    });
}

#[test]
fn run_as_non_root_refuses_an_image_that_runs_as_root() {
    run(async {
        let ns = namespace();
        let Some((fake, _client, pods)) = docker_fake(&ns).await else {
            return;
        };
        let spec = pod_from(json!({
            "metadata": {"name": "rooted"},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": true},
                "containers": [{"name": "main", "image": "hodei/worker:test", "command": ["true"]}]
            }
        }));
        let created = pods
            .create(&PostParams::default(), &spec)
            .await
            .expect("created");
        let uid = created.metadata.uid.expect("a uid");
        let refused = until(&pods, "rooted", |p| {
            waiting_reason(p, "main").is_some_and(|w| w.0 == "CreateContainerConfigError")
        })
        .await;
        assert_eq!(
            waiting_reason(&refused, "main").map(|w| w.1),
            Some(format!(
                "container has runAsNonRoot and image will run as root (pod: \"rooted_{ns}({uid})\", container: main)"
            ))
        );
        assert!(docker_ps(&ns, "rooted").is_empty());
        fake.shutdown().await;
    });
}

#[test]
fn dropping_the_fake_removes_its_containers() {
    run(async {
        let ns = namespace();
        let Some((fake, _client, pods)) = docker_fake(&ns).await else {
            return;
        };
        let spec = pod_from(json!({
            "metadata": {"name": "left"},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": "hodei/worker:test", "command": ["sleep", "300"]
            }]}
        }));
        pods.create(&PostParams::default(), &spec)
            .await
            .expect("created");
        until(&pods, "left", |p| phase(p) == "Running").await;
        assert_eq!(docker_ps(&ns, "left").len(), 1);
        drop(pods);
        drop(fake);
        assert!(
            docker_ps(&ns, "left").is_empty(),
            "drop removes what shutdown would"
        );
    });
}

/// The terminated state of `container` (init or main).
fn terminated(pod: &Pod, container: &str) -> Option<(i32, String)> {
    let status = pod.status.as_ref()?;
    let s = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|s| s.name == container)?;
    let t = s.state.as_ref()?.terminated.as_ref()?;
    Some((t.exit_code, t.reason.clone().unwrap_or_default()))
}

#[test]
fn a_failed_init_container_or_an_oom_kill_fails_the_pod() {
    run(async {
        let ns = namespace();
        let Some((fake, _client, pods)) = docker_fake(&ns).await else {
            return;
        };
        let init_fails = pod_from(json!({
            "metadata": {"name": "init-fails"},
            "spec": {
                "restartPolicy": "Never",
                "initContainers": [{"name": "install", "image": "hodei/worker:test", "command": ["sh", "-c", "exit 2"]}],
                "containers": [{"name": "main", "image": "hodei/worker:test", "command": ["true"]}]
            }
        }));
        let oom = pod_from(json!({
            "metadata": {"name": "oom"},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": "hodei/worker:test",
                "command": ["sh", "-c", "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo ${#x}"],
                "resources": {"limits": {"memory": "16Mi"}}
            }]}
        }));
        pods.create(&PostParams::default(), &init_fails)
            .await
            .expect("created");
        pods.create(&PostParams::default(), &oom)
            .await
            .expect("created");

        let failed = until(&pods, "init-fails", |p| phase(p) == "Failed").await;
        assert_eq!(
            terminated(&failed, "install"),
            Some((2, "Error".to_owned()))
        );
        assert_eq!(
            waiting_reason(&failed, "main").map(|w| w.0),
            Some("PodInitializing".to_owned()),
            "the main container never starts"
        );
        let killed = until(&pods, "oom", |p| phase(p) == "Failed").await;
        assert_eq!(
            terminated(&killed, "main"),
            Some((137, "OOMKilled".to_owned()))
        );

        // Grace period 0: the pods are gone at once, their containers
        // follow (shutdown waits for nothing but removes them all).
        pods.delete_collection(
            &DeleteParams::default().grace_period(0),
            &Default::default(),
        )
        .await
        .expect("deleted");
        assert!(fake.pods(&ns).is_empty());
        fake.shutdown().await;
        assert!(docker_ps(&ns, "oom").is_empty() && docker_ps(&ns, "init-fails").is_empty());
    });
}

#[test]
fn logs_follow_a_running_container_to_its_end() {
    run(async {
        let ns = namespace();
        let Some((fake, client, pods)) = docker_fake(&ns).await else {
            return;
        };
        let spec = pod_from(json!({
            "metadata": {"name": "talks"},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": "hodei/worker:test",
                "command": ["sh", "-c", "echo one; sleep 1; echo two"]
            }]}
        }));
        pods.create(&PostParams::default(), &spec)
            .await
            .expect("created");
        until(&pods, "talks", |p| phase(p) != "Pending").await;
        let path = format!("/api/v1/namespaces/{ns}/pods/talks/log?container=main&follow=true");
        let (code, text) =
            crate::support::raw(&client, axum::http::Method::GET, &path, "", "").await;
        assert_eq!(code, 200);
        assert_eq!(
            text,
            json!("one\ntwo\n"),
            "the stream ends when the container does"
        );
        let tail = pods
            .logs(
                "talks",
                &LogParams {
                    tail_lines: Some(1),
                    ..LogParams::default()
                },
            )
            .await
            .expect("logs");
        assert_eq!(tail, "two\n");
        fake.shutdown().await;
    });
}

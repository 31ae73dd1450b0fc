//! What the API server, the scheduler and a kubelet write into a pod:
//! defaults at creation, and the status of each step of its life.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The IP a pod gets (every pod of the fake runs on the host network).
pub(crate) const POD_IP: &str = "127.0.0.1";

/// Now, to the second, as the API server writes times.
pub(crate) fn now() -> Time {
    seconds_from_now(0)
}

/// `seconds` from now, to the second.
pub(crate) fn seconds_from_now(seconds: i64) -> Time {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let at = i64::try_from(secs).unwrap_or(0).saturating_add(seconds);
    Time(Timestamp::from_second(at).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn qos_class(spec: &PodSpec) -> &'static str {
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let resources = c.resources.clone().unwrap_or_default();
        let requests = resources.requests.unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        if !requests.is_empty() || !limits.is_empty() {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let limit = limits.get(r);
            let request = requests.get(r).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The defaults the API server fills in, the scheduler's binding to
/// `node`, and the first status (`Pending`, `PodScheduled=True`).
pub(crate) fn admit(pod: &mut Pod, node: &str) {
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.restart_policy
        .get_or_insert_with(|| "Always".to_owned());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy
        .get_or_insert_with(|| "ClusterFirst".to_owned());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".to_owned());
    spec.service_account_name
        .get_or_insert_with(|| "default".to_owned());
    spec.enable_service_links.get_or_insert(true);
    spec.priority.get_or_insert(0);
    spec.security_context.get_or_insert_with(Default::default);
    if spec.node_name.as_deref().is_none_or(str::is_empty) {
        spec.node_name = Some(node.to_owned());
    }
    for c in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        let image = c.image.clone().unwrap_or_default();
        c.image_pull_policy.get_or_insert_with(|| {
            let tag = image
                .rsplit_once(':')
                .map(|(_, t)| t)
                .filter(|t| !t.contains('/'));
            if image.contains('@') || tag.is_some_and(|t| t != "latest") {
                "IfNotPresent".to_owned()
            } else {
                "Always".to_owned()
            }
        });
        c.termination_message_path
            .get_or_insert_with(|| "/dev/termination-log".to_owned());
        c.termination_message_policy
            .get_or_insert_with(|| "File".to_owned());
        c.resources.get_or_insert_with(Default::default);
    }
    let qos = qos_class(spec).to_owned();
    pod.status = Some(PodStatus {
        phase: Some("Pending".to_owned()),
        qos_class: Some(qos),
        conditions: Some(vec![condition("PodScheduled", "True", None, None)]),
        host_ip: Some(POD_IP.to_owned()),
        start_time: Some(now()),
        ..Default::default()
    });
}

fn condition(
    kind: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) -> PodCondition {
    PodCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.map(str::to_owned),
        message: message.map(str::to_owned),
        last_transition_time: Some(now()),
        ..Default::default()
    }
}

/// Sets a condition, keeping its transition time when its status stays.
pub(crate) fn set_condition(
    status: &mut PodStatus,
    kind: &str,
    value: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let new = condition(kind, value, reason, message);
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(c) if c.status == value => {
            c.reason = new.reason;
            c.message = new.message;
        }
        Some(c) => *c = new,
        None => conditions.push(new),
    }
}

/// The container statuses of every container of the spec, created waiting
/// (`PodInitializing` for init containers, `ContainerCreating` otherwise)
/// where the kubelet has not reported yet.
pub(crate) fn ensure_statuses(pod: &mut Pod) {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.get_or_insert_with(PodStatus::default);
    let fill = |statuses: &mut Option<Vec<ContainerStatus>>,
                containers: &[k8s_openapi::api::core::v1::Container],
                reason: &str| {
        let list = statuses.get_or_insert_with(Vec::new);
        for c in containers {
            if !list.iter().any(|s| s.name == c.name) {
                list.push(ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    image_id: String::new(),
                    ready: false,
                    restart_count: 0,
                    started: Some(false),
                    state: Some(waiting_state(reason, None)),
                    ..Default::default()
                });
            }
        }
        list.sort_by_key(|s| containers.iter().position(|c| c.name == s.name));
    };
    if let Some(init) = spec.init_containers.as_deref().filter(|i| !i.is_empty()) {
        fill(&mut status.init_container_statuses, init, "PodInitializing");
    }
    let main_reason = if spec
        .init_containers
        .as_deref()
        .is_some_and(|i| !i.is_empty())
    {
        "PodInitializing"
    } else {
        "ContainerCreating"
    };
    fill(
        &mut status.container_statuses,
        &spec.containers,
        main_reason,
    );
}

fn waiting_state(reason: &str, message: Option<&str>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message: message.filter(|m| !m.is_empty()).map(str::to_owned),
        }),
        ..Default::default()
    }
}

/// Where `container`'s status is, and whether it is an init container.
fn container_status<'a>(
    pod: &'a mut Pod,
    container: &str,
) -> Option<(&'a mut ContainerStatus, bool)> {
    ensure_statuses(pod);
    let status = pod.status.as_mut()?;
    if let Some(s) = status
        .init_container_statuses
        .iter_mut()
        .flatten()
        .find(|s| s.name == container)
    {
        return Some((s, true));
    }
    status
        .container_statuses
        .iter_mut()
        .flatten()
        .find(|s| s.name == container)
        .map(|s| (s, false))
}

/// `container` is waiting with `reason` (`ImagePullBackOff`,
/// `CreateContainerConfigError`, ...); the pod is not ready.
pub(crate) fn set_waiting(pod: &mut Pod, container: &str, reason: &str, message: &str) {
    if let Some((s, _)) = container_status(pod, container) {
        s.state = Some(waiting_state(reason, Some(message)));
        s.ready = false;
        s.started = Some(false);
    }
    let status = pod.status.get_or_insert_with(PodStatus::default);
    set_condition(
        status,
        "ContainersReady",
        "False",
        Some("ContainersNotReady"),
        None,
    );
    set_condition(status, "Ready", "False", Some("ContainersNotReady"), None);
}

/// `container` runs (started now, ready) with `container_id`.
pub(crate) fn set_container_running(pod: &mut Pod, container: &str, container_id: &str) {
    if let Some((s, init)) = container_status(pod, container) {
        s.state = Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(now()),
            }),
            ..Default::default()
        });
        s.ready = !init;
        s.started = Some(true);
        s.container_id = Some(container_id.to_owned());
        s.image_id = format!("{}@sha256:kube-fake", s.image);
    }
}

/// The whole pod runs: init containers completed, every container running
/// and ready, phase `Running`.
pub(crate) fn set_running(pod: &mut Pod) {
    ensure_statuses(pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let status = pod.status.get_or_insert_with(PodStatus::default);
    for s in status.init_container_statuses.iter_mut().flatten() {
        if s.state.as_ref().is_none_or(|st| st.terminated.is_none()) {
            s.state = Some(terminated_state(
                0,
                "Completed",
                None,
                &format!("kube-fake://{uid}/{}", s.name),
            ));
            s.ready = true;
            s.started = Some(false);
        }
    }
    for s in status.container_statuses.iter_mut().flatten() {
        if s.state.as_ref().is_none_or(|st| st.running.is_none()) {
            s.state = Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(now()),
                }),
                ..Default::default()
            });
            s.container_id = Some(format!("kube-fake://{uid}/{}", s.name));
            s.image_id = format!("{}@sha256:kube-fake", s.image);
        }
        s.ready = true;
        s.started = Some(true);
    }
    mark_running(status);
}

/// Phase `Running` with every condition true.
pub(crate) fn mark_running(status: &mut PodStatus) {
    status.phase = Some("Running".to_owned());
    status.pod_ip = Some(POD_IP.to_owned());
    status.pod_ips = Some(vec![PodIP {
        ip: POD_IP.to_owned(),
    }]);
    status.host_ip = Some(POD_IP.to_owned());
    status.start_time.get_or_insert_with(now);
    for kind in [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ] {
        set_condition(status, kind, "True", None, None);
    }
    // In the order a kubelet lists them.
    let order = |t: &str| {
        [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ]
        .iter()
        .position(|k| *k == t)
        .unwrap_or(usize::MAX)
    };
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.sort_by_key(|c| order(&c.type_));
    }
}

fn terminated_state(
    exit_code: i32,
    reason: &str,
    message: Option<&str>,
    container_id: &str,
) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code,
            reason: Some(reason.to_owned()),
            message: message.filter(|m| !m.is_empty()).map(str::to_owned),
            started_at: Some(now()),
            finished_at: Some(now()),
            container_id: Some(container_id.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `container` exited with `exit_code` (`reason` empty: `Completed` for 0,
/// `Error` otherwise). As a kubelet does: under `restartPolicy: Always`
/// (or `OnFailure` with a failure) it waits in `CrashLoopBackOff` with the
/// exit as `lastState`; otherwise it stays terminated, a failed init
/// container fails the pod, and once every container has terminated the
/// pod is `Succeeded` (all exited 0) or `Failed`.
pub(crate) fn set_terminated(
    pod: &mut Pod,
    container: &str,
    exit_code: i32,
    reason: &str,
    message: &str,
) {
    let restart_policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".to_owned());
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let pod_namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let reason = match reason {
        "" if exit_code == 0 => "Completed",
        "" => "Error",
        r => r,
    };
    let Some((s, init)) = container_status(pod, container) else {
        return;
    };
    let container_id = s
        .container_id
        .clone()
        .unwrap_or_else(|| format!("kube-fake://{uid}/{container}"));
    let mut exit = terminated_state(exit_code, reason, Some(message), &container_id);
    // It ran from when it started, if it was seen running.
    if let Some(started) = s
        .state
        .as_ref()
        .and_then(|st| st.running.as_ref()?.started_at.clone())
        && let Some(t) = exit.terminated.as_mut()
    {
        t.started_at = Some(started);
    }
    let restarts = match restart_policy.as_str() {
        "Always" => !init || exit_code != 0,
        "OnFailure" => exit_code != 0,
        _ => false,
    };
    s.ready = init && exit_code == 0;
    s.started = Some(false);
    if restarts {
        s.last_state = Some(exit);
        s.restart_count += 1;
        s.state = Some(waiting_state(
            "CrashLoopBackOff",
            Some(&format!(
                "back-off 10s restarting failed container={container} pod={pod_name}_{pod_namespace}({uid})"
            )),
        ));
    } else {
        s.state = Some(exit);
    }
    let status = pod.status.get_or_insert_with(PodStatus::default);
    set_condition(
        status,
        "ContainersReady",
        "False",
        Some("ContainersNotReady"),
        None,
    );
    set_condition(status, "Ready", "False", Some("ContainersNotReady"), None);
    if restarts {
        return;
    }
    if init && exit_code != 0 {
        status.phase = Some("Failed".to_owned());
        set_condition(
            status,
            "Initialized",
            "False",
            Some("ContainersNotInitialized"),
            None,
        );
        return;
    }
    let main = status.container_statuses.as_deref().unwrap_or_default();
    let exits: Vec<i32> = main
        .iter()
        .filter_map(|s| s.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
        .collect();
    if !init && exits.len() == main.len() {
        let ok = exits.iter().all(|c| *c == 0);
        status.phase = Some(if ok { "Succeeded" } else { "Failed" }.to_owned());
        let reason = if ok { "PodCompleted" } else { "PodFailed" };
        set_condition(status, "ContainersReady", "False", Some(reason), None);
        set_condition(status, "Ready", "False", Some(reason), None);
    }
}

/// The scheduler found no node: `PodScheduled=False`, reason
/// `Unschedulable`, phase `Pending`, no node.
pub(crate) fn set_unschedulable(pod: &mut Pod, message: &str) {
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = None;
    }
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status.phase = Some("Pending".to_owned());
    status.host_ip = None;
    status.start_time = None;
    set_condition(
        status,
        "PodScheduled",
        "False",
        Some("Unschedulable"),
        Some(message),
    );
}

/// The pod ran past `activeDeadlineSeconds`: phase `Failed`, reason
/// `DeadlineExceeded`, running containers terminated (137).
pub(crate) fn set_deadline_exceeded(pod: &mut Pod) {
    let deadline = pod
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .unwrap_or_default();
    ensure_statuses(pod);
    let status = pod.status.get_or_insert_with(PodStatus::default);
    for s in status
        .init_container_statuses
        .iter_mut()
        .flatten()
        .chain(status.container_statuses.iter_mut().flatten())
    {
        if s.state.as_ref().is_some_and(|st| st.running.is_some()) {
            let id = s.container_id.clone().unwrap_or_default();
            s.state = Some(terminated_state(137, "Error", None, &id));
            s.ready = false;
            s.started = Some(false);
        }
    }
    status.phase = Some("Failed".to_owned());
    status.reason = Some("DeadlineExceeded".to_owned());
    status.message = Some(format!(
        "Pod was active on the node longer than the specified deadline ({deadline}s)"
    ));
    set_condition(status, "ContainersReady", "False", Some("PodFailed"), None);
    set_condition(status, "Ready", "False", Some("PodFailed"), None);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(restart_policy: &str) -> Pod {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {
                "restartPolicy": restart_policy,
                "initContainers": [{"name": "init", "image": "i:1"}],
                "containers": [{"name": "a", "image": "i:1"}, {"name": "b", "image": "i"}]
            }
        }))
        .expect("a pod");
        admit(&mut pod, "node");
        pod
    }

    fn phase(pod: &Pod) -> &str {
        pod.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or_default()
    }

    #[test]
    fn admission_fills_defaults_and_schedules() {
        let p = pod("Never");
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("node"));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        assert_eq!(
            spec.containers[1].image_pull_policy.as_deref(),
            Some("Always")
        );
        assert_eq!(phase(&p), "Pending");
        let status = p.status.as_ref().expect("status");
        assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
        assert_eq!(
            status.conditions.as_ref().expect("conditions")[0].type_,
            "PodScheduled"
        );
    }

    #[test]
    fn a_pod_succeeds_or_fails_when_every_container_has_exited() {
        let mut p = pod("Never");
        set_running(&mut p);
        assert_eq!(phase(&p), "Running");
        set_terminated(&mut p, "a", 0, "", "");
        assert_eq!(phase(&p), "Running");
        set_terminated(&mut p, "b", 137, "OOMKilled", "");
        assert_eq!(phase(&p), "Failed");
        let b = &p
            .status
            .as_ref()
            .expect("status")
            .container_statuses
            .as_ref()
            .expect("statuses")[1];
        let t = b
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("terminated");
        assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));

        let mut q = pod("Never");
        set_running(&mut q);
        set_terminated(&mut q, "a", 0, "", "");
        set_terminated(&mut q, "b", 0, "", "");
        assert_eq!(phase(&q), "Succeeded");
    }

    #[test]
    fn a_failed_init_container_fails_a_pod_that_never_restarts() {
        let mut p = pod("Never");
        set_terminated(&mut p, "init", 1, "", "");
        assert_eq!(phase(&p), "Failed");
        let mut q = pod("Always");
        set_terminated(&mut q, "init", 1, "", "");
        assert_eq!(phase(&q), "Pending");
        let s = &q
            .status
            .as_ref()
            .expect("status")
            .init_container_statuses
            .as_ref()
            .expect("init")[0];
        assert_eq!(s.restart_count, 1);
        let reason = s
            .state
            .as_ref()
            .and_then(|st| st.waiting.as_ref())
            .and_then(|w| w.reason.as_deref());
        assert_eq!(reason, Some("CrashLoopBackOff"));
    }

    #[test]
    fn waiting_and_unschedulable_keep_the_pod_pending() {
        let mut p = pod("Never");
        set_waiting(
            &mut p,
            "a",
            "ImagePullBackOff",
            "Back-off pulling image \"i:1\"",
        );
        assert_eq!(phase(&p), "Pending");
        let a = &p
            .status
            .as_ref()
            .expect("status")
            .container_statuses
            .as_ref()
            .expect("statuses")[0];
        let w = a
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(w.reason.as_deref(), Some("ImagePullBackOff"));
        set_unschedulable(&mut p, "0/1 nodes are available");
        let status = p.status.as_ref().expect("status");
        let scheduled = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled")
            .expect("PodScheduled");
        assert_eq!(
            (scheduled.status.as_str(), scheduled.reason.as_deref()),
            ("False", Some("Unschedulable"))
        );
    }
}

//! What a pod's status means for its worker, without I/O: the rules that
//! turn a pod into a [`BackendState`], so a worker whose pod cannot run
//! fails its job with the pod's own reason instead of waiting for the
//! provisioning deadline.

use std::time::Duration;

use hodei_application::orchestrator::BackendState;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};

use super::pod::WORKER_CONTAINER;

/// Waiting reasons that will not heal: the worker fails at once.
const FATAL_WAITING: [&str; 5] = [
    "CreateContainerConfigError",
    "InvalidImageName",
    "ErrImageNeverPull",
    "ImageInspectError",
    "RunContainerError",
];
/// Waiting reasons of an image that cannot be pulled (yet): the worker
/// fails once they last longer than the pull grace.
const PULL_WAITING: [&str; 3] = ["ErrImagePull", "ImagePullBackOff", "RegistryUnavailable"];

/// How long some states may last before they fail the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// How long an image pull may keep failing.
    pub image_pull_grace: Duration,
    /// How long a pod may stay unschedulable (the provisioning deadline).
    pub unschedulable_after: Duration,
}

fn statuses(pod: &Pod, init: bool) -> &[ContainerStatus] {
    pod.status
        .as_ref()
        .and_then(|s| {
            if init {
                s.init_container_statuses.as_deref()
            } else {
                s.container_statuses.as_deref()
            }
        })
        .unwrap_or(&[])
}

fn all_statuses(pod: &Pod) -> impl Iterator<Item = (&'static str, &ContainerStatus)> {
    statuses(pod, true)
        .iter()
        .map(|s| ("init container", s))
        .chain(statuses(pod, false).iter().map(|s| ("container", s)))
}

fn words(reason: Option<&str>, message: Option<&str>) -> String {
    let reason = reason.unwrap_or("").trim();
    let message = message.unwrap_or("").trim();
    match (reason.is_empty(), message.is_empty()) {
        (false, false) => format!("{reason}: {message}"),
        (false, true) => reason.to_owned(),
        (true, false) => message.to_owned(),
        (true, true) => "no reason given".to_owned(),
    }
}

/// A container whose image cannot be pulled: `container worker:
/// ImagePullBackOff: Back-off pulling image "x"`.
pub fn pull_error(pod: &Pod) -> Option<String> {
    all_statuses(pod).find_map(|(kind, status)| {
        let waiting = status.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        PULL_WAITING.contains(&reason).then(|| {
            format!(
                "{kind} {}: {}",
                status.name,
                words(Some(reason), waiting.message.as_deref())
            )
        })
    })
}

/// How a terminated container ended, in the words the Docker backend uses:
/// `exit status 1`, `OOMKilled (out of memory at its memory limit, exit
/// status 137)`, plus the runtime's reason and message when they say more.
pub fn exit_reason(terminated: &ContainerStateTerminated) -> String {
    let mut reason = format!("exit status {}", terminated.exit_code);
    match terminated.reason.as_deref() {
        Some("OOMKilled") => {
            reason = format!("OOMKilled (out of memory at its memory limit, {reason})");
        }
        Some(other) if !other.is_empty() && other != "Error" && other != "Completed" => {
            reason = format!("{reason} ({other})");
        }
        _ => {}
    }
    if let Some(message) = terminated.message.as_deref().map(str::trim)
        && !message.is_empty()
    {
        reason.push_str(": ");
        reason.push_str(message);
    }
    reason
}

/// The worker's state as its pod shows it. `age` is how long ago the pod
/// was created, `pull_failing_for` how long an image pull has been failing
/// (see [`pull_error`]). An exited worker comes without its last lines
/// (the caller reads them from the pod's log).
pub fn assess(
    pod: &Pod,
    age: Duration,
    pull_failing_for: Option<Duration>,
    rules: &Rules,
) -> BackendState {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let failed = |reason: String| BackendState::Failed { reason };
    if pod.metadata.deletion_timestamp.is_some() {
        return failed(format!("pod {name} is being deleted"));
    }
    for status in statuses(pod, true) {
        if let Some(terminated) = status.state.as_ref().and_then(|s| s.terminated.as_ref())
            && terminated.exit_code != 0
        {
            return failed(format!(
                "pod {name}: init container {} ended with {}",
                status.name,
                exit_reason(terminated)
            ));
        }
    }
    let worker = statuses(pod, false)
        .iter()
        .find(|s| s.name == WORKER_CONTAINER);
    if let Some(terminated) = worker
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
    {
        return BackendState::Exited {
            code: Some(terminated.exit_code),
            reason: exit_reason(terminated),
            last_lines: Vec::new(),
        };
    }
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Failed") => {
            let status = status.expect("a phase comes with a status");
            return failed(format!(
                "pod {name} failed: {}",
                words(status.reason.as_deref(), status.message.as_deref())
            ));
        }
        Some("Succeeded") => {
            return BackendState::Exited {
                code: Some(0),
                reason: "exit status 0".to_owned(),
                last_lines: Vec::new(),
            };
        }
        _ => {}
    }
    for (kind, status) in all_statuses(pod) {
        if let Some(waiting) = status.state.as_ref().and_then(|s| s.waiting.as_ref())
            && let Some(reason) = waiting.reason.as_deref()
            && FATAL_WAITING.contains(&reason)
        {
            return failed(format!(
                "pod {name}: {kind} {}: {}",
                status.name,
                words(Some(reason), waiting.message.as_deref())
            ));
        }
    }
    if let (Some(error), Some(failing)) = (pull_error(pod), pull_failing_for)
        && failing >= rules.image_pull_grace
    {
        return failed(format!(
            "pod {name}: {error} (still failing after {}s)",
            rules.image_pull_grace.as_secs()
        ));
    }
    let unschedulable = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[])
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
    if let Some(condition) = unschedulable
        && age >= rules.unschedulable_after
    {
        return failed(format!(
            "pod {name} unschedulable for {}s: {}",
            rules.unschedulable_after.as_secs(),
            words(None, condition.message.as_deref())
        ));
    }
    let running = worker
        .and_then(|s| s.state.as_ref())
        .is_some_and(|s| s.running.is_some());
    if running {
        BackendState::Running
    } else {
        BackendState::Pending
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, PodCondition, PodStatus,
    };
    use kube::api::ObjectMeta;

    use super::*;

    const RULES: Rules = Rules {
        image_pull_grace: Duration::from_secs(30),
        unschedulable_after: Duration::from_secs(120),
    };

    fn pod(status: PodStatus) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("hodei-worker-1".into()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(status),
        }
    }

    fn container(name: &str, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(state),
            ..ContainerStatus::default()
        }
    }

    fn waiting(reason: &str, message: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some(message.into()),
            }),
            ..ContainerState::default()
        }
    }

    fn terminated(code: i32, reason: &str) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(reason.into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }
    }

    fn main(state: ContainerState) -> PodStatus {
        PodStatus {
            phase: Some("Pending".into()),
            container_statuses: Some(vec![container(WORKER_CONTAINER, state)]),
            ..PodStatus::default()
        }
    }

    fn failed(reason: &str) -> BackendState {
        BackendState::Failed {
            reason: reason.into(),
        }
    }

    fn exited(code: i32, reason: &str) -> BackendState {
        BackendState::Exited {
            code: Some(code),
            reason: reason.into(),
            last_lines: Vec::new(),
        }
    }

    #[test]
    fn pod_states() {
        let zero = Duration::ZERO;
        let check =
            |status: PodStatus, age: Duration, pull: Option<Duration>, expected: BackendState| {
                assert_eq!(
                    assess(&pod(status.clone()), age, pull, &RULES),
                    expected,
                    "{status:?}"
                );
            };
        check(PodStatus::default(), zero, None, BackendState::Pending);
        check(
            PodStatus {
                phase: Some("Running".into()),
                ..main(ContainerState {
                    running: Some(ContainerStateRunning::default()),
                    ..ContainerState::default()
                })
            },
            zero,
            None,
            BackendState::Running,
        );
        let pull = main(waiting(
            "ImagePullBackOff",
            "Back-off pulling image \"nope:1\"",
        ));
        check(
            pull.clone(),
            zero,
            Some(Duration::from_secs(29)),
            BackendState::Pending,
        );
        check(
            pull,
            zero,
            Some(Duration::from_secs(30)),
            failed(
                "pod hodei-worker-1: container worker: ImagePullBackOff: Back-off pulling image \"nope:1\" (still failing after 30s)",
            ),
        );
        check(
            main(waiting(
                "CreateContainerConfigError",
                "secret \"s\" not found",
            )),
            zero,
            None,
            failed(
                "pod hodei-worker-1: container worker: CreateContainerConfigError: secret \"s\" not found",
            ),
        );
        check(
            main(terminated(1, "Error")),
            zero,
            None,
            exited(1, "exit status 1"),
        );
        check(
            main(terminated(137, "OOMKilled")),
            zero,
            None,
            exited(
                137,
                "OOMKilled (out of memory at its memory limit, exit status 137)",
            ),
        );
        check(
            PodStatus {
                phase: Some("Failed".into()),
                reason: Some("DeadlineExceeded".into()),
                message: Some(
                    "Pod was active on the node longer than the specified deadline".into(),
                ),
                ..PodStatus::default()
            },
            zero,
            None,
            failed(
                "pod hodei-worker-1 failed: DeadlineExceeded: Pod was active on the node longer than the specified deadline",
            ),
        );
        check(
            PodStatus {
                phase: Some("Failed".into()),
                init_container_statuses: Some(vec![container(
                    "hodei-worker-init",
                    terminated(1, "Error"),
                )]),
                ..PodStatus::default()
            },
            zero,
            None,
            failed("pod hodei-worker-1: init container hodei-worker-init ended with exit status 1"),
        );
        let unschedulable = PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some("0/3 nodes are available: 3 Insufficient cpu.".into()),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        };
        check(
            unschedulable.clone(),
            Duration::from_secs(119),
            None,
            BackendState::Pending,
        );
        check(
            unschedulable,
            Duration::from_secs(120),
            None,
            failed(
                "pod hodei-worker-1 unschedulable for 120s: 0/3 nodes are available: 3 Insufficient cpu.",
            ),
        );
        check(
            PodStatus {
                phase: Some("Succeeded".into()),
                ..PodStatus::default()
            },
            zero,
            None,
            exited(0, "exit status 0"),
        );
    }

    #[test]
    fn a_pod_being_deleted_cannot_connect() {
        let mut deleted = pod(PodStatus::default());
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(
            assess(&deleted, Duration::ZERO, None, &RULES),
            failed("pod hodei-worker-1 is being deleted")
        );
    }

    #[test]
    fn pull_errors_are_found_in_init_containers_too() {
        let status = PodStatus {
            init_container_statuses: Some(vec![container(
                "hodei-worker-init",
                waiting("ErrImagePull", "pull access denied"),
            )]),
            ..PodStatus::default()
        };
        assert_eq!(
            pull_error(&pod(status)).as_deref(),
            Some("init container hodei-worker-init: ErrImagePull: pull access denied")
        );
        assert_eq!(pull_error(&pod(PodStatus::default())), None);
    }
}

//! Merging a `kubernetes { yaml '...' }` agent's pod manifest into the
//! template's pod, the way the Jenkins Kubernetes plugin merges a pod yaml
//! with its pod template: maps are merged key by key, lists of named
//! things (containers, init containers, volumes, env, volume mounts,
//! ports, image pull secrets) are matched by `name` (a match is merged, a
//! new name is appended), other lists of objects (tolerations, ...) are
//! appended, and scalars and lists of scalars are replaced.
//!
//! What the worker needs stays intact, and a manifest that tries to change
//! it is refused naming the field: the pod's name and namespace, the
//! standard labels, `restartPolicy: Never`, the worker container's
//! `command` and `args`, its reserved variables (`SERVER_HOST`,
//! `HODEI_WORKER_TOKEN`, ...), and the worker's init container, volumes
//! and mounts. The worker container (`worker`) may take another `image`,
//! resources, env, mounts; other containers run beside it (sidecars).

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};
use kube::api::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::pod::{
    BIN_DIR, BIN_VOLUME, INIT_CONTAINER, RESERVED_ENV, WORKER_CONTAINER, WORKSPACE_DIR,
    WORKSPACE_VOLUME,
};
use hodei_application::orchestrator::{
    LABEL_JOB_ID, LABEL_MANAGED_BY, LABEL_SERVER_ID, LABEL_TEMPLATE, LABEL_WORKER_ID,
};

/// Why an agent's pod yaml cannot be used: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pod yaml: {field}: {message}")]
pub struct PodYamlError {
    /// The field, as a path (`spec.containers[worker].command`), or `yaml`
    /// for a document that does not parse.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> PodYamlError {
    PodYamlError {
        field: field.into(),
        message: message.into(),
    }
}

const SET_BY_HODEI: &str = "set by Hodei for the worker; a pod yaml cannot change it";

/// Merges the pod manifest `yaml` into `base` (the template's pod). See the
/// module documentation.
///
/// # Errors
/// A document that is not YAML or not a pod manifest, a field of the wrong
/// type or unknown to Kubernetes, or one that changes what the worker
/// needs; each naming the field.
pub fn merge_pod_yaml(base: Pod, yaml: &str) -> Result<Pod, PodYamlError> {
    let user: Value = serde_yaml_ng::from_str(yaml).map_err(|e| error("yaml", e.to_string()))?;
    let Value::Object(user) = user else {
        return Err(error(
            "yaml",
            "expected a pod manifest (a mapping with metadata and spec)",
        ));
    };
    check_top_level(&user)?;
    let mut merged = serde_json::to_value(&base).map_err(|e| error("pod", e.to_string()))?;
    for key in ["metadata", "spec"] {
        if let (Some(value), Some(target)) = (user.get(key), merged.get_mut(key)) {
            merge(target, value.clone());
        }
    }
    validate(&merged)?;
    serde_json::from_value(merged).map_err(|e| error("pod", e.to_string()))
}

fn check_top_level(user: &Map<String, Value>) -> Result<(), PodYamlError> {
    for (key, value) in user {
        match key.as_str() {
            "apiVersion" if value.as_str() == Some("v1") => {}
            "apiVersion" => return Err(error("apiVersion", "expected v1")),
            "kind" if value.as_str() == Some("Pod") => {}
            "kind" => return Err(error("kind", "expected Pod")),
            "metadata" => check_metadata(value)?,
            "spec" => check_spec(value)?,
            other => {
                return Err(error(
                    other,
                    "not allowed in a pod yaml: expected apiVersion, kind, metadata or spec",
                ));
            }
        }
    }
    Ok(())
}

fn object<'v>(value: &'v Value, field: &str) -> Result<&'v Map<String, Value>, PodYamlError> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(error(field, "expected a mapping")),
    }
}

fn list<'v>(value: &'v Value, field: &str) -> Result<&'v [Value], PodYamlError> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(error(field, "expected a list")),
    }
}

fn check_metadata(value: &Value) -> Result<(), PodYamlError> {
    for (key, value) in object(value, "metadata")? {
        let field = format!("metadata.{key}");
        match key.as_str() {
            "labels" | "annotations" => {
                for (name, v) in object(value, &field)? {
                    let field = format!("{field}.{name}");
                    if !v.is_string() {
                        return Err(error(field, "expected a string"));
                    }
                    let reserved = [
                        LABEL_MANAGED_BY,
                        LABEL_WORKER_ID,
                        LABEL_JOB_ID,
                        LABEL_TEMPLATE,
                        LABEL_SERVER_ID,
                    ];
                    if key == "labels" && reserved.contains(&name.as_str()) {
                        return Err(error(field, SET_BY_HODEI));
                    }
                }
            }
            "name" | "namespace" | "generateName" => {
                return Err(error(field, SET_BY_HODEI));
            }
            _ => {
                return Err(error(
                    field,
                    "not allowed in a pod yaml: expected labels or annotations",
                ));
            }
        }
    }
    Ok(())
}

/// The `name` of each entry of a named list, checked.
fn names<'v>(items: &'v [Value], field: &str) -> Result<Vec<&'v str>, PodYamlError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            object(item, &format!("{field}[{i}]"))?
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| error(format!("{field}[{i}].name"), "required"))
        })
        .collect()
}

fn check_spec(value: &Value) -> Result<(), PodYamlError> {
    let spec = object(value, "spec")?;
    if let Some(policy) = spec.get("restartPolicy")
        && policy.as_str() != Some("Never")
    {
        return Err(error(
            "spec.restartPolicy",
            "must be Never: a worker is never restarted",
        ));
    }
    if let Some(volumes) = spec.get("volumes") {
        let volumes = list(volumes, "spec.volumes")?;
        for name in names(volumes, "spec.volumes")? {
            if name == BIN_VOLUME || name == WORKSPACE_VOLUME {
                return Err(error(format!("spec.volumes[{name}]"), SET_BY_HODEI));
            }
        }
    }
    if let Some(init) = spec.get("initContainers") {
        let init = list(init, "spec.initContainers")?;
        for name in names(init, "spec.initContainers")? {
            if name == INIT_CONTAINER {
                return Err(error(format!("spec.initContainers[{name}]"), SET_BY_HODEI));
            }
        }
    }
    if let Some(containers) = spec.get("containers") {
        let containers = list(containers, "spec.containers")?;
        let names = names(containers, "spec.containers")?;
        for (name, container) in names.into_iter().zip(containers) {
            if name == WORKER_CONTAINER {
                check_worker_container(object(container, "spec.containers")?)?;
            }
        }
    }
    Ok(())
}

fn check_worker_container(container: &Map<String, Value>) -> Result<(), PodYamlError> {
    let base = format!("spec.containers[{WORKER_CONTAINER}]");
    for key in ["command", "args"] {
        if container.contains_key(key) {
            return Err(error(
                format!("{base}.{key}"),
                "set by Hodei: the worker container runs the worker, which runs the steps",
            ));
        }
    }
    if let Some(env) = container.get("env") {
        let field = format!("{base}.env");
        for name in names(list(env, &field)?, &field)? {
            if RESERVED_ENV.contains(&name) {
                return Err(error(format!("{field}[{name}]"), SET_BY_HODEI));
            }
        }
    }
    if let Some(mounts) = container.get("volumeMounts") {
        let field = format!("{base}.volumeMounts");
        let mounts = list(mounts, &field)?;
        for (name, mount) in names(mounts, &field)?.into_iter().zip(mounts) {
            let path = mount.get("mountPath").and_then(Value::as_str);
            if name == BIN_VOLUME
                || name == WORKSPACE_VOLUME
                || path == Some(BIN_DIR)
                || path == Some(WORKSPACE_DIR)
            {
                return Err(error(format!("{field}[{name}]"), SET_BY_HODEI));
            }
        }
    }
    Ok(())
}

/// The name of a list entry, when it is an object with a string name.
fn entry_name(value: &Value) -> Option<&str> {
    value.get("name").and_then(Value::as_str)
}

/// Merges `user` into `base`: see the module documentation.
fn merge(base: &mut Value, user: Value) {
    match (base, user) {
        (Value::Object(base), Value::Object(user)) => {
            for (key, value) in user {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(user))
            if !user.is_empty() && user.iter().all(|v| entry_name(v).is_some()) =>
        {
            for item in user {
                let name = entry_name(&item).map(str::to_owned);
                match base.iter_mut().find(|b| entry_name(b) == name.as_deref()) {
                    Some(existing) => merge(existing, item),
                    None => base.push(item),
                }
            }
        }
        (Value::Array(base), Value::Array(user)) if user.iter().all(Value::is_object) => {
            base.extend(user);
        }
        (base, user) => *base = user,
    }
}

/// Parses `value` as `T`; the error names `field`, and so does a key that
/// `T` does not know (Kubernetes would drop it silently).
fn parse_as<T: DeserializeOwned + Serialize>(
    value: &Value,
    field: &str,
) -> Result<T, PodYamlError> {
    let parsed: T =
        serde_json::from_value(value.clone()).map_err(|e| error(field, e.to_string()))?;
    if let Value::Object(given) = value {
        let back = serde_json::to_value(&parsed).map_err(|e| error(field, e.to_string()))?;
        for (key, v) in given {
            if !v.is_null() && back.get(key).is_none() {
                return Err(error(format!("{field}.{key}"), "unknown field"));
            }
        }
    }
    Ok(parsed)
}

/// Checks the merged pod part by part so a wrong type names its field.
fn validate(merged: &Value) -> Result<(), PodYamlError> {
    if let Some(metadata) = merged.get("metadata") {
        parse_as::<ObjectMeta>(metadata, "metadata")?;
    }
    let Some(Value::Object(spec)) = merged.get("spec") else {
        return Err(error("spec", "expected a mapping"));
    };
    for (key, value) in spec {
        let field = format!("spec.{key}");
        match key.as_str() {
            "containers" | "initContainers" | "ephemeralContainers" => {
                let items = list(value, &field)?;
                for (name, item) in names(items, &field)?.into_iter().zip(items) {
                    parse_as::<Container>(item, &format!("{field}[{name}]"))?;
                }
            }
            "volumes" => {
                let items = list(value, &field)?;
                for (name, item) in names(items, &field)?.into_iter().zip(items) {
                    parse_as::<Volume>(item, &format!("{field}[{name}]"))?;
                }
            }
            _ => {
                let mut alone = Map::new();
                alone.insert("containers".to_owned(), Value::Array(Vec::new()));
                alone.insert(key.clone(), value.clone());
                let parsed: PodSpec = serde_json::from_value(Value::Object(alone))
                    .map_err(|e| error(&field, e.to_string()))?;
                let back =
                    serde_json::to_value(&parsed).map_err(|e| error(&field, e.to_string()))?;
                if !value.is_null() && back.get(key).is_none() {
                    return Err(error(field, "unknown field"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::pod::tests::{config, spec};
    use super::super::pod::{WORKER_PATH, template_pod};
    use super::*;

    fn merged(yaml: &str) -> Result<Pod, String> {
        let spec = spec(None);
        merge_pod_yaml(template_pod(&config(), &spec), yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn a_pod_yaml_is_merged_into_the_template_pod() {
        let pod = merged(
            r#"
apiVersion: v1
kind: Pod
metadata:
  labels:
    team: ci
  annotations:
    note: "from the Jenkinsfile"
spec:
  nodeSelector:
    disk: ssd
  tolerations:
  - key: dedicated
    operator: Equal
    value: ci
    effect: NoSchedule
  containers:
  - name: worker
    image: maven:3.9
    env:
    - name: MAVEN_OPTS
      value: -Xmx1g
    - name: JAVA_HOME
      value: /opt/jdk
    resources:
      limits:
        memory: 2Gi
    volumeMounts:
    - name: m2
      mountPath: /root/.m2
  - name: docker
    image: docker:dind
  volumes:
  - name: m2
    emptyDir: {}
"#,
        )
        .unwrap();
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["team"], "ci");
        assert_eq!(labels[LABEL_SERVER_ID], "srv-1");
        assert_eq!(
            pod.metadata.annotations.unwrap()["note"],
            "from the Jenkinsfile"
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["disk"], "ssd");
        assert_eq!(spec.tolerations.unwrap().len(), 1);
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["worker", "docker"]);
        let worker = &spec.containers[0];
        assert_eq!(worker.image.as_deref(), Some("maven:3.9"));
        assert_eq!(worker.command.as_deref().unwrap(), [WORKER_PATH]);
        let env = worker.env.as_ref().unwrap();
        let value = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(value("MAVEN_OPTS").as_deref(), Some("-Xmx1g"));
        assert_eq!(value("JAVA_HOME").as_deref(), Some("/opt/jdk"));
        assert_eq!(value("SERVER_PORT").as_deref(), Some("9090"));
        assert!(env.iter().any(|e| e.name == "HODEI_WORKER_TOKEN"));
        let limits = worker.resources.clone().unwrap().limits.unwrap();
        assert_eq!(limits["memory"].0, "2Gi");
        assert_eq!(limits["cpu"].0, "2");
        let mounts: Vec<&str> = worker
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(mounts, [WORKSPACE_VOLUME, BIN_VOLUME, "m2"]);
        let volumes: Vec<&str> = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, [WORKSPACE_VOLUME, BIN_VOLUME, "m2"]);
        assert_eq!(spec.init_containers.unwrap()[0].name, INIT_CONTAINER);
    }

    #[test]
    fn bad_pod_yaml_names_the_field() {
        fn check(yaml: &str, expected: &str) {
            assert_eq!(merged(yaml).unwrap_err(), expected, "{yaml}");
        }
        check(
            "- a\n- b\n",
            "pod yaml: yaml: expected a pod manifest (a mapping with metadata and spec)",
        );
        check("kind: Deployment\n", "pod yaml: kind: expected Pod");
        check("apiVersion: apps/v1\n", "pod yaml: apiVersion: expected v1");
        check(
            "status: {}\n",
            "pod yaml: status: not allowed in a pod yaml: expected apiVersion, kind, metadata or spec",
        );
        check(
            "metadata:\n  name: mine\n",
            &format!("pod yaml: metadata.name: {SET_BY_HODEI}"),
        );
        check(
            "metadata:\n  labels:\n    hodei.dev/server-id: other\n",
            &format!("pod yaml: metadata.labels.hodei.dev/server-id: {SET_BY_HODEI}"),
        );
        check(
            "metadata:\n  labels:\n    n: 1\n",
            "pod yaml: metadata.labels.n: expected a string",
        );
        check(
            "spec:\n  restartPolicy: Always\n",
            "pod yaml: spec.restartPolicy: must be Never: a worker is never restarted",
        );
        check(
            "spec:\n  containers:\n  - name: worker\n    command: [sh]\n",
            "pod yaml: spec.containers[worker].command: set by Hodei: the worker container runs the worker, which runs the steps",
        );
        check(
            "spec:\n  containers:\n  - name: worker\n    env:\n    - name: HODEI_WORKER_TOKEN\n      value: x\n",
            &format!("pod yaml: spec.containers[worker].env[HODEI_WORKER_TOKEN]: {SET_BY_HODEI}"),
        );
        check(
            "spec:\n  containers:\n  - name: worker\n    volumeMounts:\n    - name: mine\n      mountPath: /workspace\n",
            &format!("pod yaml: spec.containers[worker].volumeMounts[mine]: {SET_BY_HODEI}"),
        );
        check(
            "spec:\n  containers:\n  - image: x\n",
            "pod yaml: spec.containers[0].name: required",
        );
        check(
            "spec:\n  volumes:\n  - name: hodei-bin\n    emptyDir: {}\n",
            &format!("pod yaml: spec.volumes[hodei-bin]: {SET_BY_HODEI}"),
        );
        check(
            "spec:\n  initContainers:\n  - name: hodei-worker-init\n    image: x\n",
            &format!("pod yaml: spec.initContainers[hodei-worker-init]: {SET_BY_HODEI}"),
        );
        check(
            "spec:\n  activeDeadlineSeconds: soon\n",
            "pod yaml: spec.activeDeadlineSeconds: invalid type: string \"soon\", expected i64",
        );
        check(
            "spec:\n  nodeSelecter:\n    a: b\n",
            "pod yaml: spec.nodeSelecter: unknown field",
        );
        check(
            "spec:\n  containers:\n  - name: side\n    imagePullPolicy: 3\n",
            "pod yaml: spec.containers[side]: invalid type: integer `3`, expected a string",
        );
        check(
            "spec:\n  containers:\n  - name: side\n    imag: busybox\n",
            "pod yaml: spec.containers[side].imag: unknown field",
        );
        assert!(
            merged("spec: [\n")
                .unwrap_err()
                .starts_with("pod yaml: yaml: ")
        );
    }
}

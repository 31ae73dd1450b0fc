//! The manifests in `k8s/` are what a cluster and this server accept: each
//! document is a Kubernetes object with no unknown or misspelled field, the
//! kustomization lists every file, the ConfigMap's `hodei.toml` is valid
//! server settings that agree with the namespaces, accounts, Service and
//! volumes around it, and the RBAC is least privilege in the workers'
//! namespace only.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hodei_infrastructure::parse_templates;
use hodei_server::config::{Backend, Settings};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde::Deserialize as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../k8s")
}

/// Every document of every file the kustomization lists, with its file.
fn documents() -> Vec<(String, Value)> {
    let kustomization: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(k8s_dir().join("kustomization.yaml"))
            .expect("k8s/kustomization.yaml"),
    )
    .expect("kustomization.yaml is yaml");
    let resources = kustomization["resources"]
        .as_array()
        .expect("kustomization.yaml lists resources");
    let mut docs = Vec::new();
    for resource in resources {
        let file = resource.as_str().expect("a resource is a file name");
        let text = std::fs::read_to_string(k8s_dir().join(file))
            .unwrap_or_else(|e| panic!("k8s/{file}: {e}"));
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("k8s/{file}: not yaml: {e}"));
            if !value.is_null() {
                docs.push((file.to_owned(), value));
            }
        }
    }
    docs
}

/// The one document of `kind` named `name`, as its typed object, after
/// checking that the typed object says everything the document says (a
/// field Kubernetes does not know, or misspelled, would be lost).
fn object<T: DeserializeOwned + Serialize>(docs: &[(String, Value)], kind: &str, name: &str) -> T {
    let found: Vec<&(String, Value)> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name} in k8s/");
    let (file, document) = found[0];
    let typed: T = serde_json::from_value(document.clone())
        .unwrap_or_else(|e| panic!("k8s/{file}: {kind} {name}: {e}"));
    let back = serde_json::to_value(&typed).expect("serializes");
    if let Some(path) = first_difference(document, &back, String::new()) {
        panic!("k8s/{file}: {kind} {name}: {path} is not a field Kubernetes knows there");
    }
    typed
}

/// The dotted path of the first place where `written` says something
/// `read` (the same document after a typed round trip) does not.
fn first_difference(written: &Value, read: &Value, path: String) -> Option<String> {
    match (written, read) {
        (Value::Object(w), Value::Object(r)) => w.iter().find_map(|(key, value)| {
            let here = format!("{path}.{key}");
            match r.get(key) {
                Some(other) => first_difference(value, other, here),
                None => Some(here),
            }
        }),
        (Value::Array(w), Value::Array(r)) if w.len() == r.len() => w
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, format!("{path}[{i}]"))),
        (w, r) if w == r => None,
        _ => Some(if path.is_empty() {
            ".".to_owned()
        } else {
            path
        }),
    }
}

fn container<'a>(deployment: &'a Deployment, name: &str) -> &'a Container {
    deployment
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == name))
        .unwrap_or_else(|| panic!("the Deployment has a container {name}"))
}

/// The namespace of the Role the server is bound to, and what it grants,
/// as `"verb resource"` (`"get pods/log"`).
pub(crate) fn role_grants() -> (String, BTreeSet<String>) {
    let docs = documents();
    let binding: RoleBinding = object(&docs, "RoleBinding", "hodei-server-worker-manager");
    let role: Role = object(&docs, "Role", &binding.role_ref.name);
    let namespace = role.metadata.namespace.clone().expect("a namespaced Role");
    let granted = role
        .rules
        .iter()
        .flatten()
        .flat_map(|rule| {
            assert_eq!(
                rule.api_groups.as_deref(),
                Some(&[String::new()][..]),
                "core group only"
            );
            let resources = rule.resources.clone().unwrap_or_default();
            resources
                .into_iter()
                .flat_map(|r| rule.verbs.iter().map(move |v| format!("{v} {r}")))
                .collect::<Vec<_>>()
        })
        .collect();
    (namespace, granted)
}

#[test]
fn the_kustomization_lists_every_manifest_and_each_is_a_known_kind() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(k8s_dir())
        .expect("k8s/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    let docs = documents();
    let listed: BTreeSet<String> = docs.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(listed, on_disk, "kustomization.yaml lists every k8s/*.yaml");

    let kinds: BTreeSet<&str> = docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    let expected: BTreeSet<&str> = [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
    ]
    .into();
    assert_eq!(kinds, expected, "no ClusterRole, nothing unexpected");
}

#[test]
fn the_config_map_holds_settings_that_agree_with_the_other_manifests() {
    let docs = documents();
    let config: ConfigMap = object(&docs, "ConfigMap", "hodei-config");
    let data = config.data.expect("the ConfigMap has data");
    let settings = Settings::from_toml(&data["hodei.toml"])
        .unwrap_or_else(|e| panic!("k8s/config.yaml: hodei.toml: {e}"));
    assert_eq!(settings.backend, Backend::Kubernetes);
    parse_templates(&data["templates.yaml"], "k8s/config.yaml: templates.yaml")
        .unwrap_or_else(|e| panic!("{e}"));

    // The workers' namespace exists and holds the workers' account.
    let workers_ns = settings.kubernetes_namespace.clone();
    let _: Namespace = object(&docs, "Namespace", &workers_ns);
    let account: ServiceAccount = object(
        &docs,
        "ServiceAccount",
        &settings.kubernetes_service_account,
    );
    assert_eq!(
        account.metadata.namespace.as_deref(),
        Some(workers_ns.as_str())
    );
    assert_eq!(
        account.automount_service_account_token,
        Some(false),
        "worker pods get no API token"
    );

    // Pods dial the Service, which leads to the server's gRPC port.
    let deployment: Deployment = object(&docs, "Deployment", "hodei-server");
    let server_ns = deployment.metadata.namespace.clone().expect("namespaced");
    let service: Service = object(&docs, "Service", "hodei-server");
    assert_eq!(
        service.metadata.namespace.as_deref(),
        Some(server_ns.as_str())
    );
    assert_eq!(
        settings.kubernetes_advertise_host.as_deref(),
        Some(format!("hodei-server.{server_ns}.svc").as_str())
    );
    let server = container(&deployment, "server");
    let container_port = |name: &str| {
        server
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .unwrap_or_else(|| panic!("the server container names a port {name}"))
    };
    assert_eq!(i32::from(settings.grpc_addr.port()), container_port("grpc"));
    assert_eq!(i32::from(settings.http_addr.port()), container_port("http"));
    assert!(
        settings.grpc_addr.ip().is_unspecified(),
        "gRPC listens on every interface"
    );
    let service_ports = service.spec.and_then(|s| s.ports).expect("Service ports");
    for port in &service_ports {
        let name = port.name.as_deref().expect("named Service port");
        assert_eq!(port.port, container_port(name), "Service port {name}");
    }

    // The files the settings name are where the volumes are mounted.
    let mount = |volume: &str| {
        server
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume)
            .map(|m| PathBuf::from(&m.mount_path))
            .unwrap_or_else(|| panic!("the server mounts the volume {volume}"))
    };
    assert_eq!(settings.data_dir, mount("data"));
    assert_eq!(
        settings.templates.as_deref(),
        Some(mount("config").join("templates.yaml").as_path())
    );
    let args = server.args.clone().unwrap_or_default();
    let config_arg = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("the server is started with --config");
    assert_eq!(Path::new(config_arg), mount("config").join("hodei.toml"));

    // One replica, stopped before the next starts: one writer of the store.
    let spec = &deployment.spec;
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate")
    );
    let _: PersistentVolumeClaim = object(&docs, "PersistentVolumeClaim", "hodei-data");
}

#[test]
fn the_server_may_manage_pods_and_token_secrets_in_the_workers_namespace_only() {
    let docs = documents();
    let config: ConfigMap = object(&docs, "ConfigMap", "hodei-config");
    let settings =
        Settings::from_toml(&config.data.expect("data")["hodei.toml"]).expect("settings");
    let workers_ns = settings.kubernetes_namespace;

    let deployment: Deployment = object(&docs, "Deployment", "hodei-server");
    let server_account = deployment
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .expect("the server runs under its own account");
    let _: ServiceAccount = object(&docs, "ServiceAccount", &server_account);

    let binding: RoleBinding = object(&docs, "RoleBinding", "hodei-server-worker-manager");
    assert_eq!(
        binding.metadata.namespace.as_deref(),
        Some(workers_ns.as_str())
    );
    assert_eq!(binding.role_ref.kind, "Role");
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, server_account);
    assert_eq!(subjects[0].namespace, deployment.metadata.namespace);

    let role: Role = object(&docs, "Role", &binding.role_ref.name);
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some(workers_ns.as_str())
    );
    let granted: BTreeSet<String> = role
        .rules
        .iter()
        .flatten()
        .flat_map(|rule| {
            assert_eq!(
                rule.api_groups.as_deref(),
                Some(&[String::new()][..]),
                "core group only"
            );
            let resources = rule.resources.clone().unwrap_or_default();
            resources
                .into_iter()
                .flat_map(|r| rule.verbs.iter().map(move |v| format!("{v} {r}")))
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: BTreeSet<String> = [
        "create pods",
        "delete pods",
        "get pods",
        "list pods",
        "watch pods",
        "get pods/log",
        "create secrets",
        "delete secrets",
        "list secrets",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        granted, expected,
        "exactly what the Kubernetes backend does"
    );
}

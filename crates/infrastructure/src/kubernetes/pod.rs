//! The objects of one worker, built without I/O: its Secret (the one-time
//! token) and its Pod (the template's image running the injected static
//! worker, with the seed's environment, the template's resources and
//! lifetime, and the agent's pod yaml merged in).

use std::collections::BTreeMap;

use hodei_application::orchestrator::{TOKEN_ENV, WorkerSpec};
use hodei_domain::WorkerId;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, PodSecurityContext,
    PodSpec, ResourceRequirements as KubeResources, Secret, SecretKeySelector, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;

use super::KubernetesConfig;
use super::merge::{PodYamlError, merge_pod_yaml};

/// The name of the worker's own container (the one that runs steps).
pub const WORKER_CONTAINER: &str = "worker";
/// The init container that copies the static worker into [`BIN_DIR`].
pub const INIT_CONTAINER: &str = "hodei-worker-init";
/// The `emptyDir` volume holding the injected worker.
pub const BIN_VOLUME: &str = "hodei-bin";
/// The `emptyDir` volume holding the workspace.
pub const WORKSPACE_VOLUME: &str = "hodei-workspace";
/// Where the injected worker's volume is mounted.
pub const BIN_DIR: &str = "/opt/hodei/bin";
/// The injected worker, the main container's command.
pub const WORKER_PATH: &str = "/opt/hodei/bin/hodei-worker";
/// The workspace root inside the pod (`HODEI_WORKSPACE_ROOT`).
pub const WORKSPACE_DIR: &str = "/workspace";
/// The key of the token in the worker's Secret.
pub const TOKEN_KEY: &str = "token";

/// The variables Hodei sets on the worker container; a pod yaml cannot
/// set them.
pub const RESERVED_ENV: [&str; 9] = [
    "SERVER_HOST",
    "SERVER_PORT",
    "WORKER_ID",
    "WORKER_NAME",
    "WORKER_CAPABILITIES",
    "EPHEMERAL_MODE",
    TOKEN_ENV,
    "HODEI_WORKSPACE_ROOT",
    "HODEI_SERVER_LOST_GRACE",
];

/// The pod (and Secret) name of a worker: `hodei-worker-<id>`, lower case,
/// with every character a DNS label cannot hold turned into `-`, at most
/// 63 characters.
pub fn pod_name(id: &WorkerId) -> String {
    let mut name: String = format!("hodei-worker-{id}")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

/// The worker's Secret: its one-time token under [`TOKEN_KEY`], named and
/// labelled like its pod.
pub fn worker_secret(config: &KubernetesConfig, spec: &WorkerSpec) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(pod_name(&spec.worker_id)),
            namespace: Some(config.namespace.clone()),
            labels: Some(spec.backend_labels()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_owned(),
            ByteString(spec.token.expose().as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The worker's pod: the template's pod, with the agent's pod yaml
/// ([`WorkerSpec::pod_yaml`]) merged in.
///
/// # Errors
/// A pod yaml that is not valid, or that changes what the worker needs,
/// naming the field.
pub fn worker_pod(config: &KubernetesConfig, spec: &WorkerSpec) -> Result<Pod, PodYamlError> {
    let pod = template_pod(config, spec);
    match &spec.pod_yaml {
        Some(yaml) => merge_pod_yaml(pod, yaml),
        None => Ok(pod),
    }
}

/// A cpu quantity in milli-cores as Kubernetes writes it.
fn cpu(millis: u64) -> Quantity {
    if millis.is_multiple_of(1000) {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

/// The pod a template gives, before any pod yaml.
pub fn template_pod(config: &KubernetesConfig, spec: &WorkerSpec) -> Pod {
    let name = pod_name(&spec.worker_id);
    let mut env: Vec<EnvVar> = spec
        .worker_environment()
        .into_iter()
        .filter(|(key, _)| key != TOKEN_ENV)
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        })
        .collect();
    env.push(EnvVar {
        name: "HODEI_WORKSPACE_ROOT".to_owned(),
        value: Some(WORKSPACE_DIR.to_owned()),
        value_from: None,
    });
    if let Some(grace) = config.server_lost_grace {
        env.push(EnvVar {
            name: "HODEI_SERVER_LOST_GRACE".to_owned(),
            value: Some(format!("{}ms", grace.as_millis())),
            value_from: None,
        });
    }
    env.push(EnvVar {
        name: TOKEN_ENV.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: name.clone(),
                key: TOKEN_KEY.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    });

    let resources = spec.template.resources();
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if resources.cpu().millis() > 0 {
        requests.insert("cpu".to_owned(), cpu(resources.cpu().millis()));
    }
    if resources.memory().bytes() > 0 {
        requests.insert(
            "memory".to_owned(),
            Quantity(resources.memory().bytes().to_string()),
        );
    }
    if resources.effective_cpu_limit().millis() > 0 {
        limits.insert(
            "cpu".to_owned(),
            cpu(resources.effective_cpu_limit().millis()),
        );
    }
    if resources.effective_memory_limit().bytes() > 0 {
        limits.insert(
            "memory".to_owned(),
            Quantity(resources.effective_memory_limit().bytes().to_string()),
        );
    }
    if let Some(storage) = resources.storage().filter(|s| s.bytes() > 0) {
        let storage = Quantity(storage.bytes().to_string());
        requests.insert("ephemeral-storage".to_owned(), storage.clone());
        limits.insert("ephemeral-storage".to_owned(), storage);
    }
    let non_empty = |map: BTreeMap<String, Quantity>| (!map.is_empty()).then_some(map);

    // The template's choice (0: root), else the backend's default.
    let user = match spec.template.run_as_user() {
        Some(uid) => Some(i64::from(uid)),
        None => config.run_as_user,
    };
    let non_root = user.filter(|uid| *uid > 0);
    let container_security = non_root.map(|_| SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    });
    let pod_security = non_root.map(|uid| PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        fs_group: Some(uid),
        ..PodSecurityContext::default()
    });

    let mut mounts = vec![VolumeMount {
        name: WORKSPACE_VOLUME.to_owned(),
        mount_path: WORKSPACE_DIR.to_owned(),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: WORKSPACE_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut init_containers = Vec::new();
    let mut command = None;
    if config.inject_worker {
        let bin_mount = |read_only: bool| VolumeMount {
            name: BIN_VOLUME.to_owned(),
            mount_path: BIN_DIR.to_owned(),
            read_only: Some(read_only),
            ..VolumeMount::default()
        };
        mounts.push(bin_mount(true));
        volumes.push(Volume {
            name: BIN_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        init_containers.push(Container {
            name: INIT_CONTAINER.to_owned(),
            image: Some(config.worker_image.clone()),
            image_pull_policy: config.image_pull_policy.clone(),
            command: Some(vec![
                "cp".to_owned(),
                config.worker_image_binary.clone(),
                WORKER_PATH.to_owned(),
            ]),
            volume_mounts: Some(vec![bin_mount(false)]),
            security_context: container_security.clone(),
            ..Container::default()
        });
        command = Some(vec![WORKER_PATH.to_owned()]);
    }

    let worker = Container {
        name: WORKER_CONTAINER.to_owned(),
        image: Some(spec.template.image().to_owned()),
        image_pull_policy: config.image_pull_policy.clone(),
        command,
        env: Some(env),
        working_dir: Some(WORKSPACE_DIR.to_owned()),
        volume_mounts: Some(mounts),
        resources: Some(KubeResources {
            requests: non_empty(requests),
            limits: non_empty(limits),
            ..KubeResources::default()
        }),
        security_context: container_security,
        ..Container::default()
    };

    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(config.namespace.clone()),
            labels: Some(spec.backend_labels()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![worker],
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            volumes: Some(volumes),
            restart_policy: Some("Never".to_owned()),
            service_account_name: config.service_account.clone(),
            active_deadline_seconds: Some(i64::from(spec.template.timeout_minutes()) * 60),
            termination_grace_period_seconds: Some(
                i64::try_from(config.termination_grace.as_secs()).unwrap_or(i64::MAX),
            ),
            security_context: pod_security,
            ..PodSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use hodei_application::orchestrator::{OneTimeToken, ServerEndpoint};
    use hodei_domain::{
        CpuQuantity, JobId, MemoryQuantity, ResourceRequirements, TemplateId, WorkerTemplate,
    };

    use super::*;

    pub(crate) fn spec(yaml: Option<&str>) -> WorkerSpec {
        let resources = ResourceRequirements::new(
            CpuQuantity::parse("500m").unwrap(),
            MemoryQuantity::parse("1Gi").unwrap(),
        )
        .with_cpu_limit(CpuQuantity::parse("2").unwrap())
        .unwrap();
        let template = WorkerTemplate::new(
            TemplateId::new("java-maven").unwrap(),
            "hodei/worker:java-maven-latest",
            resources,
        )
        .unwrap()
        .with_capabilities(["java-17", "linux"])
        .unwrap()
        .with_environment([("JAVA_HOME", "/jdk")])
        .unwrap()
        .with_timeout_minutes(45)
        .unwrap();
        WorkerSpec {
            worker_id: WorkerId::new("0b9e8a52-3c4d-4e5f-8a6b-7c8d9e0f1a2b").unwrap(),
            worker_name: "hodei-java-maven-0b9e8a52".into(),
            job_id: JobId::new("job-7").unwrap(),
            template,
            server: ServerEndpoint {
                host: "hodei-server.hodei-system".into(),
                port: 9090,
            },
            token: OneTimeToken::new("s3cret-token"),
            server_id: "srv-1".into(),
            extra_labels: BTreeMap::new(),
            extra_env: BTreeMap::new(),
            docker_args: None,
            pod_yaml: yaml.map(str::to_owned),
        }
    }

    pub(crate) fn config() -> KubernetesConfig {
        KubernetesConfig::new("srv-1")
    }

    #[test]
    fn pod_names_are_dns_labels() {
        fn check(id: &str, expected: &str) {
            assert_eq!(pod_name(&WorkerId::new(id).unwrap()), expected);
        }
        check(
            "0b9e8a52-3c4d-4e5f-8a6b-7c8d9e0f1a2b",
            "hodei-worker-0b9e8a52-3c4d-4e5f-8a6b-7c8d9e0f1a2b",
        );
        check("W_1.a", "hodei-worker-w-1-a");
        check(&"a".repeat(63), &format!("hodei-worker-{}", "a".repeat(50)));
        check(
            &format!("{}-b", "a".repeat(49)),
            &format!("hodei-worker-{}", "a".repeat(49)),
        );
    }

    #[test]
    fn the_template_pod() {
        let spec = spec(None);
        let pod = worker_pod(&config(), &spec).unwrap();
        let name = "hodei-worker-0b9e8a52-3c4d-4e5f-8a6b-7c8d9e0f1a2b";
        assert_eq!(pod.metadata.name.as_deref(), Some(name));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("hodei-workers"));
        assert_eq!(pod.metadata.labels, Some(spec.backend_labels()));
        let pod_spec = pod.spec.unwrap();
        assert_eq!(pod_spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            pod_spec.service_account_name.as_deref(),
            Some("hodei-worker")
        );
        assert_eq!(pod_spec.active_deadline_seconds, Some(45 * 60));
        assert_eq!(pod_spec.security_context, None);

        let init = &pod_spec.init_containers.unwrap()[0];
        assert_eq!(init.name, INIT_CONTAINER);
        assert_eq!(init.image.as_deref(), Some("hodei/worker:latest"));
        assert_eq!(
            init.command.as_deref().unwrap(),
            ["cp", "/usr/local/bin/hodei-worker", WORKER_PATH]
        );

        let worker = &pod_spec.containers[0];
        assert_eq!(worker.name, WORKER_CONTAINER);
        assert_eq!(
            worker.image.as_deref(),
            Some("hodei/worker:java-maven-latest")
        );
        assert_eq!(worker.command.as_deref().unwrap(), [WORKER_PATH]);
        let env: Vec<(String, Option<String>)> = worker
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect();
        let expected: Vec<(String, Option<String>)> = [
            ("EPHEMERAL_MODE", Some("true")),
            ("JAVA_HOME", Some("/jdk")),
            ("SERVER_HOST", Some("hodei-server.hodei-system")),
            ("SERVER_PORT", Some("9090")),
            ("WORKER_CAPABILITIES", Some("java-17,linux")),
            ("WORKER_ID", Some("0b9e8a52-3c4d-4e5f-8a6b-7c8d9e0f1a2b")),
            ("WORKER_NAME", Some("hodei-java-maven-0b9e8a52")),
            ("HODEI_WORKSPACE_ROOT", Some("/workspace")),
            ("HODEI_WORKER_TOKEN", None),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
        .collect();
        assert_eq!(env, expected);
        let token = worker.env.as_ref().unwrap().last().unwrap();
        let secret_ref = token
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (secret_ref.name.as_str(), secret_ref.key.as_str()),
            (name, TOKEN_KEY)
        );

        let resources = worker.resources.clone().unwrap();
        let text = |m: Option<BTreeMap<String, Quantity>>| -> Vec<(String, String)> {
            m.unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        };
        assert_eq!(
            text(resources.requests),
            [
                ("cpu".to_owned(), "500m".to_owned()),
                ("memory".to_owned(), "1073741824".to_owned())
            ]
        );
        assert_eq!(
            text(resources.limits),
            [
                ("cpu".to_owned(), "2".to_owned()),
                ("memory".to_owned(), "1073741824".to_owned())
            ]
        );
        let volumes: Vec<&str> = pod_spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, [WORKSPACE_VOLUME, BIN_VOLUME]);
    }

    #[test]
    fn the_token_is_only_in_the_secret() {
        let spec = spec(None);
        let pod = worker_pod(&config(), &spec).unwrap();
        let printed = serde_json::to_string(&pod).unwrap();
        assert!(!printed.contains("s3cret-token"), "{printed}");
        let secret = worker_secret(&config(), &spec);
        assert_eq!(secret.metadata.name, pod.metadata.name);
        assert_eq!(secret.metadata.labels, Some(spec.backend_labels()));
        assert_eq!(secret.data.unwrap()[TOKEN_KEY].0, b"s3cret-token");
    }

    #[test]
    fn non_root_and_no_injection_are_choices() {
        let mut config = config();
        config.run_as_user = Some(1000);
        config.inject_worker = false;
        config.server_lost_grace = Some(Duration::from_secs(90));
        config.service_account = None;
        let spec = spec(None);
        let pod_spec = worker_pod(&config, &spec).unwrap().spec.unwrap();
        let security = pod_spec.security_context.unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.run_as_user, Some(1000));
        assert_eq!(pod_spec.service_account_name, None);
        assert_eq!(pod_spec.init_containers, None);
        let worker = &pod_spec.containers[0];
        assert_eq!(worker.command, None);
        assert_eq!(
            worker
                .security_context
                .as_ref()
                .unwrap()
                .allow_privilege_escalation,
            Some(false)
        );
        assert!(
            worker
                .env
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.name == "HODEI_SERVER_LOST_GRACE"
                    && e.value.as_deref() == Some("90000ms"))
        );
        let volumes: Vec<&str> = pod_spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, [WORKSPACE_VOLUME]);

        // The template's choice wins: root explicitly, or its own user.
        let with_user = |config: &KubernetesConfig, uid: u32| {
            let mut spec = crate::kubernetes::pod::tests::spec(None);
            spec.template = spec.template.clone().with_run_as_user(Some(uid));
            worker_pod(config, &spec)
                .unwrap()
                .spec
                .unwrap()
                .security_context
        };
        assert_eq!(with_user(&config, 0), None);
        assert_eq!(with_user(&config, 2000).unwrap().run_as_user, Some(2000));
        let security = with_user(&super::tests::config(), 65534).unwrap();
        assert_eq!(
            (
                security.run_as_non_root,
                security.run_as_user,
                security.fs_group
            ),
            (Some(true), Some(65534), Some(65534))
        );
    }
}

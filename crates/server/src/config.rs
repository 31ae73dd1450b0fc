//! The server's settings: one TOML file, every key overridable by an
//! environment variable `HODEI_<KEY>` (upper case), loaded once at start.
//!
//! ```toml
//! grpc_addr = "127.0.0.1:9090"      # HODEI_GRPC_ADDR
//! http_addr = "127.0.0.1:9091"      # HODEI_HTTP_ADDR (/healthz, /readyz, /metrics)
//! data_dir = "/var/lib/hodei"       # HODEI_DATA_DIR
//! backend = "local"                 # HODEI_BACKEND: local | docker | kubernetes
//! store = "sqlite"                  # HODEI_STORE: sqlite (data_dir/hodei.db) | memory
//! templates = "templates.yaml"      # HODEI_TEMPLATES
//! max_workers = 32                  # HODEI_MAX_WORKERS
//! provisioning_timeout = "60s"      # HODEI_PROVISIONING_TIMEOUT
//! job_timeout = "6h"                # HODEI_JOB_TIMEOUT (longest any job may run)
//! advertise_host = "hodei.svc"      # HODEI_ADVERTISE_HOST (the host workers dial)
//! server_id = "hodei-prod"          # HODEI_SERVER_ID (on every backend object)
//! heartbeat_interval = "5s"         # HODEI_HEARTBEAT_INTERVAL
//! worker_lost_after = "30s"         # HODEI_WORKER_LOST_AFTER
//! max_source_bytes = "64Mi"         # HODEI_MAX_SOURCE_BYTES (workspace source limit)
//! max_pipeline_bytes = "1Mi"        # HODEI_MAX_PIPELINE_BYTES (largest pipeline text)
//! max_stages = 1000                 # HODEI_MAX_STAGES (most stages in one pipeline, nested ones included)
//! max_log_line_bytes = "64Ki"       # HODEI_MAX_LOG_LINE_BYTES (longer lines are cut into pieces)
//! max_grpc_message_bytes = "8Mi"    # HODEI_MAX_GRPC_MESSAGE_BYTES (largest gRPC message received or sent)
//! docker_network = "host"          # HODEI_DOCKER_NETWORK (docker backend: the containers' network mode)
//! worker_binary = "/usr/local/bin/hodei-worker"  # HODEI_WORKER_BINARY (local: the worker run; docker: the static worker bind-mounted into containers)
//! worker_args = []                  # HODEI_WORKER_ARGS (space separated; local: arguments before the worker's own, e.g. ["worker"] when worker_binary is hodei itself)
//! static_worker_token = "change-me" # HODEI_STATIC_WORKER_TOKEN (shared secret of static workers; unset: static workers are refused)
//! kubernetes_namespace = "hodei-workers"          # HODEI_KUBERNETES_NAMESPACE (kubernetes backend: namespace of worker pods and their secrets)
//! kubernetes_service_account = "hodei-worker"     # HODEI_KUBERNETES_SERVICE_ACCOUNT (worker pods' service account; "" for the namespace's default)
//! kubernetes_worker_image = "hodei/worker:latest" # HODEI_KUBERNETES_WORKER_IMAGE (image the init container copies the static worker from)
//! kubernetes_worker_image_binary = "/usr/local/bin/hodei-worker"  # HODEI_KUBERNETES_WORKER_IMAGE_BINARY (the worker's path in that image)
//! kubernetes_image_pull_policy = "IfNotPresent"   # HODEI_KUBERNETES_IMAGE_PULL_POLICY (Always | IfNotPresent | Never; unset: the cluster's default)
//! kubernetes_image_pull_grace = "30s"             # HODEI_KUBERNETES_IMAGE_PULL_GRACE (how long an image pull may fail before the job fails)
//! kubernetes_kubeconfig = "/etc/hodei/kubeconfig" # HODEI_KUBERNETES_KUBECONFIG (unset: KUBECONFIG, ~/.kube/config, else in-cluster)
//! kubernetes_qps = 20                             # HODEI_KUBERNETES_QPS (API requests per second, all together)
//! kubernetes_burst = 40                           # HODEI_KUBERNETES_BURST (requests allowed at once above the rate)
//! kubernetes_run_as_user = 1000                   # HODEI_KUBERNETES_RUN_AS_USER (run worker pods as this non-root user; unset: the image's user)
//! kubernetes_advertise_host = "hodei.hodei-system" # HODEI_KUBERNETES_ADVERTISE_HOST (the host pods dial; unset: advertise_host)
//! client_token = "change-me-too"    # HODEI_CLIENT_TOKEN (bearer token JobService and AdminService require; unset: open)
//! ```
//!
//! A bad value is an error naming the key (and, for the file, its line).
//!
//! Credentials that pipelines bind with `credentials('id')` come from a
//! `[credentials]` table (id = value) and from `HODEI_CREDENTIAL_<ID>`
//! variables (the id is the rest of the name, as written; the variable
//! wins). Their values reach a job's steps only as environment variables
//! and are shown as `****` in its log:
//!
//! ```toml
//! [credentials]
//! deploy-key = "s3cr3t"
//! ```
//!
//! With `store = "sqlite"` (the default) jobs, their logs and worker records
//! live in `data_dir/hodei.db` and survive a restart; one server at a time
//! may use a data directory. `store = "memory"` keeps nothing after the
//! server stops. `hodei run` without `--server` always uses memory in a
//! temporary data directory, so it never competes with a server for the
//! file.
//!
//! Static workers are started by hand and take any matching job, one after
//! another; they register with `static_worker_token` as their token:
//!
//! ```text
//! HODEI_WORKER_TOKEN=secret hodei worker --server-host 127.0.0.1 --server-port 9090 --capabilities linux,java-17
//! ```
//!
//! Clients (`hodei run`, `hodei jobs`, `hodei workers`) read `HODEI_SERVER`
//! as the default for `--server`; `hodei run` without a server starts an
//! embedded one with these settings, on 127.0.0.1 with free ports and a
//! temporary data directory.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hodei_domain::MemoryQuantity;
use serde::Deserialize;

/// Environment variables naming a credential start with this.
pub const CREDENTIAL_PREFIX: &str = "HODEI_CREDENTIAL_";

/// Where workers are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Child processes of the server (the embedded default).
    Local,
    /// Docker containers.
    Docker,
    /// Kubernetes pods.
    Kubernetes,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Backend::Local),
            "docker" => Ok(Backend::Docker),
            "kubernetes" => Ok(Backend::Kubernetes),
            _ => Err("expected one of local, docker, kubernetes".to_owned()),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Local => "local",
            Backend::Docker => "docker",
            Backend::Kubernetes => "kubernetes",
        })
    }
}

/// Where jobs, logs and worker records are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A SQLite file in the data directory ([`Settings::store_path`]):
    /// survives restarts.
    Sqlite,
    /// Memory: nothing survives the server.
    Memory,
}

impl FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sqlite" => Ok(StoreKind::Sqlite),
            "memory" => Ok(StoreKind::Memory),
            _ => Err("expected one of sqlite, memory".to_owned()),
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Memory => "memory",
        })
    }
}

/// A secret setting (such as `static_worker_token`): `Debug` and `Display`
/// print `****`, so printing the settings never shows it; only
/// [`Secret::expose`] gives the value. Never empty.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret; `None` when it is empty.
    pub fn new(secret: impl Into<String>) -> Option<Self> {
        let secret = secret.into();
        (!secret.is_empty()).then_some(Secret(secret))
    }

    /// The secret itself, for the one place that compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Secret::new(s).ok_or_else(|| serde::de::Error::custom("expected a non-empty secret"))
    }
}

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid (unknown key, wrong type, bad value).
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key and line.
        message: String,
    },
    /// An environment override has a bad value.
    #[error("{var}: invalid value {value:?}: {expected}")]
    Env {
        /// The variable, e.g. `HODEI_MAX_WORKERS`.
        var: String,
        /// Its value.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// Keys whose values contradict each other; the message names them.
    #[error("{0}")]
    Conflict(String),
}

/// The server's settings. Every field has a default, so an empty file (or
/// none) is a working local setup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// gRPC listen address (clients and workers).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address for `/healthz`, `/readyz` and `/metrics`.
    pub http_addr: SocketAddr,
    /// Host name or address workers dial to reach the server; defaults to
    /// the gRPC listen address's IP (or 127.0.0.1 when it listens on all).
    pub advertise_host: Option<String>,
    /// Where the server keeps its state.
    pub data_dir: PathBuf,
    /// Where workers are created.
    pub backend: Backend,
    /// Where jobs, logs and worker records are kept.
    pub store: StoreKind,
    /// A YAML file of worker templates (`templates:` list).
    pub templates: Option<PathBuf>,
    /// This server's id, put on every backend object it creates so a
    /// restarted server finds its orphans; defaults to one derived from the
    /// data dir.
    pub server_id: Option<String>,
    /// Most ephemeral workers alive at once; more jobs wait.
    pub max_workers: u32,
    /// How long a new worker may take to connect.
    #[serde(with = "duration_str")]
    pub provisioning_timeout: Duration,
    /// Longest any job may run, whatever its pipeline says; a job past it
    /// ends timed out.
    #[serde(with = "duration_str")]
    pub job_timeout: Duration,
    /// How often workers send heartbeats.
    #[serde(with = "duration_str")]
    pub heartbeat_interval: Duration,
    /// A worker silent this long is lost.
    #[serde(with = "duration_str")]
    pub worker_lost_after: Duration,
    /// Largest workspace source archive accepted with a job (a quantity such
    /// as `64Mi`).
    #[serde(with = "quantity_str")]
    pub max_source_bytes: u64,
    /// Largest pipeline text accepted with a job.
    #[serde(with = "quantity_str")]
    pub max_pipeline_bytes: u64,
    /// Most stages one pipeline may have (nested and parallel ones count).
    pub max_stages: u32,
    /// Longest log line kept as one; a longer one is cut into pieces.
    #[serde(with = "quantity_str")]
    pub max_log_line_bytes: u64,
    /// Largest gRPC message the server receives or sends, on every service.
    #[serde(with = "quantity_str")]
    pub max_grpc_message_bytes: u64,
    /// Values of `credentials('id')`, by id (`[credentials]`,
    /// `HODEI_CREDENTIAL_<ID>`); printed as `****`.
    pub credentials: BTreeMap<String, Secret>,
    /// The `hodei-worker` binary the local backend starts, or the static one
    /// (`scripts/build-static-worker.sh`) the docker backend bind-mounts
    /// into each container (a path on the engine's host); defaults to the
    /// one next to `hodei`, else `hodei-worker` on `PATH`.
    pub worker_binary: Option<PathBuf>,
    /// Arguments the local backend passes to `worker_binary` before the
    /// worker's own: `["worker"]` when `worker_binary` is the `hodei`
    /// executable itself.
    pub worker_args: Vec<String>,
    /// The docker backend's network mode for worker containers (`host`,
    /// `bridge` or a network name); workers must reach `advertise_host`
    /// from it.
    pub docker_network: String,
    /// The shared secret static workers (started by hand, `hodei worker`)
    /// send as their token. None (the default): static workers are refused.
    pub static_worker_token: Option<Secret>,
    /// Kubernetes backend: the namespace of worker pods and their Secrets.
    pub kubernetes_namespace: String,
    /// Kubernetes backend: the worker pods' service account; empty for the
    /// namespace's default.
    pub kubernetes_service_account: String,
    /// Kubernetes backend: the image the init container copies the static
    /// worker from.
    pub kubernetes_worker_image: String,
    /// Kubernetes backend: the static worker's path inside
    /// `kubernetes_worker_image`.
    pub kubernetes_worker_image_binary: String,
    /// Kubernetes backend: `imagePullPolicy` of worker containers (`Always`,
    /// `IfNotPresent` or `Never`; unset: the cluster's default).
    pub kubernetes_image_pull_policy: Option<PullPolicy>,
    /// Kubernetes backend: how long an image pull may keep failing before
    /// the job fails with the pull error.
    #[serde(with = "duration_str")]
    pub kubernetes_image_pull_grace: Duration,
    /// Kubernetes backend: the kubeconfig file; unset: `KUBECONFIG`, then
    /// `~/.kube/config`, then the pod's service account (in-cluster).
    pub kubernetes_kubeconfig: Option<PathBuf>,
    /// Kubernetes backend: API requests per second, all requests together.
    pub kubernetes_qps: u32,
    /// Kubernetes backend: API requests allowed at once above the rate.
    pub kubernetes_burst: u32,
    /// Kubernetes backend: run worker pods as this user id (above 0) with
    /// `runAsNonRoot`; unset: the image's user.
    pub kubernetes_run_as_user: Option<u32>,
    /// Kubernetes backend: the host worker pods dial (the server's Service
    /// name); unset: `advertise_host`.
    pub kubernetes_advertise_host: Option<String>,
    /// The bearer token clients (`hodei run --server`, `hodei jobs`,
    /// `hodei workers`, other programs) must send to `JobService` and
    /// `AdminService`. None (the default): those services are open.
    pub client_token: Option<Secret>,
}

/// A Kubernetes `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the node lacks the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl FromStr for PullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Always" => Ok(PullPolicy::Always),
            "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "Never" => Ok(PullPolicy::Never),
            _ => Err("expected one of Always, IfNotPresent, Never".to_owned()),
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9091)),
            advertise_host: None,
            data_dir: default_data_dir(),
            backend: Backend::Local,
            store: StoreKind::Sqlite,
            templates: None,
            server_id: None,
            max_workers: 32,
            provisioning_timeout: Duration::from_secs(60),
            job_timeout: Duration::from_secs(6 * 3600),
            heartbeat_interval: Duration::from_secs(5),
            worker_lost_after: Duration::from_secs(30),
            max_source_bytes: 64 * 1024 * 1024,
            max_pipeline_bytes: 1024 * 1024,
            max_stages: 1000,
            max_log_line_bytes: 64 * 1024,
            max_grpc_message_bytes: 8 * 1024 * 1024,
            credentials: BTreeMap::new(),
            worker_binary: None,
            worker_args: Vec::new(),
            docker_network: "host".to_owned(),
            static_worker_token: None,
            kubernetes_namespace: "hodei-workers".to_owned(),
            kubernetes_service_account: "hodei-worker".to_owned(),
            kubernetes_worker_image: "hodei/worker:latest".to_owned(),
            kubernetes_worker_image_binary: "/usr/local/bin/hodei-worker".to_owned(),
            kubernetes_image_pull_policy: None,
            kubernetes_image_pull_grace: Duration::from_secs(30),
            kubernetes_kubeconfig: None,
            kubernetes_qps: 20,
            kubernetes_burst: 40,
            kubernetes_run_as_user: None,
            kubernetes_advertise_host: None,
            client_token: None,
        }
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("hodei");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/hodei"),
        None => PathBuf::from(".hodei"),
    }
}

impl Settings {
    /// Reads `file` (when given), then applies `HODEI_*` overrides from the
    /// process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut settings = match file {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        settings.apply_env(|var| std::env::var(var).ok())?;
        settings.apply_credentials_env(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )?;
        settings.check()?;
        Ok(settings)
    }

    /// Checks what no single key can: a pipeline travels in one gRPC
    /// message, so `max_grpc_message_bytes` must be larger than
    /// `max_pipeline_bytes` (otherwise a pipeline under its own limit would
    /// get gRPC's bare message-size error instead of ours).
    ///
    /// # Errors
    /// [`ConfigError::Conflict`] naming both keys and their values.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_grpc_message_bytes <= self.max_pipeline_bytes {
            return Err(ConfigError::Conflict(format!(
                "max_grpc_message_bytes ({}) must be larger than max_pipeline_bytes ({}): a pipeline is sent in one gRPC message",
                self.max_grpc_message_bytes, self.max_pipeline_bytes
            )));
        }
        Ok(())
    }

    /// Adds the credentials given as `HODEI_CREDENTIAL_<ID>=value` among
    /// `vars` (other variables are ignored); they replace file values.
    pub fn apply_credentials_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (var, value) in vars {
            let Some(id) = var.strip_prefix(CREDENTIAL_PREFIX) else {
                continue;
            };
            let secret = Secret::new(value).filter(|_| !id.is_empty());
            let Some(secret) = secret else {
                return Err(ConfigError::Env {
                    var,
                    value: String::new(),
                    expected: "expected HODEI_CREDENTIAL_<ID> with an id and a non-empty value"
                        .to_owned(),
                });
            };
            self.credentials.insert(id.to_owned(), secret);
        }
        Ok(())
    }

    /// Parses a TOML settings file.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Settings::from_toml(&text).map_err(|message| ConfigError::File {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses settings from TOML text; the error names the key and line.
    pub fn from_toml(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().to_owned();
            match e.span().map(|span| line_of(text, span.start)) {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            }
        })
    }

    /// Applies `HODEI_<KEY>` overrides found by `lookup`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        fn get<T>(
            lookup: &impl Fn(&str) -> Option<String>,
            var: &str,
            parse: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Option<T>, ConfigError> {
            let Some(value) = lookup(var) else {
                return Ok(None);
            };
            parse(value.trim())
                .map(Some)
                .map_err(|expected| ConfigError::Env {
                    var: var.to_owned(),
                    value,
                    expected,
                })
        }
        let addr = |s: &str| {
            s.parse::<SocketAddr>()
                .map_err(|_| "expected an address such as 127.0.0.1:9090".to_owned())
        };
        let path = |s: &str| {
            if s.is_empty() {
                Err("expected a path".to_owned())
            } else {
                Ok(PathBuf::from(s))
            }
        };
        let text = |s: &str| {
            if s.is_empty() {
                Err("expected a non-empty value".to_owned())
            } else {
                Ok(s.to_owned())
            }
        };
        let count = |s: &str| match s.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("expected a positive integer".to_owned()),
        };

        if let Some(v) = get(&lookup, "HODEI_GRPC_ADDR", addr)? {
            self.grpc_addr = v;
        }
        if let Some(v) = get(&lookup, "HODEI_HTTP_ADDR", addr)? {
            self.http_addr = v;
        }
        if let Some(v) = get(&lookup, "HODEI_ADVERTISE_HOST", text)? {
            self.advertise_host = Some(v);
        }
        if let Some(v) = get(&lookup, "HODEI_DATA_DIR", path)? {
            self.data_dir = v;
        }
        if let Some(v) = get(&lookup, "HODEI_BACKEND", Backend::from_str)? {
            self.backend = v;
        }
        if let Some(v) = get(&lookup, "HODEI_STORE", StoreKind::from_str)? {
            self.store = v;
        }
        if let Some(v) = get(&lookup, "HODEI_TEMPLATES", path)? {
            self.templates = Some(v);
        }
        if let Some(v) = get(&lookup, "HODEI_SERVER_ID", text)? {
            self.server_id = Some(v);
        }
        if let Some(v) = get(&lookup, "HODEI_MAX_WORKERS", count)? {
            self.max_workers = v;
        }
        if let Some(v) = get(&lookup, "HODEI_PROVISIONING_TIMEOUT", duration_str::parse)? {
            self.provisioning_timeout = v;
        }
        if let Some(v) = get(&lookup, "HODEI_JOB_TIMEOUT", duration_str::parse)? {
            self.job_timeout = v;
        }
        if let Some(v) = get(&lookup, "HODEI_HEARTBEAT_INTERVAL", duration_str::parse)? {
            self.heartbeat_interval = v;
        }
        if let Some(v) = get(&lookup, "HODEI_WORKER_LOST_AFTER", duration_str::parse)? {
            self.worker_lost_after = v;
        }
        if let Some(v) = get(&lookup, "HODEI_MAX_SOURCE_BYTES", quantity_str::parse)? {
            self.max_source_bytes = v;
        }
        if let Some(v) = get(&lookup, "HODEI_MAX_PIPELINE_BYTES", quantity_str::parse)? {
            self.max_pipeline_bytes = v;
        }
        if let Some(v) = get(&lookup, "HODEI_MAX_STAGES", count)? {
            self.max_stages = v;
        }
        if let Some(v) = get(&lookup, "HODEI_MAX_LOG_LINE_BYTES", quantity_str::parse)? {
            self.max_log_line_bytes = v;
        }
        if let Some(v) = get(&lookup, "HODEI_MAX_GRPC_MESSAGE_BYTES", quantity_str::parse)? {
            self.max_grpc_message_bytes = v;
        }
        if let Some(v) = get(&lookup, "HODEI_WORKER_BINARY", path)? {
            self.worker_binary = Some(v);
        }
        if let Some(v) = get(&lookup, "HODEI_WORKER_ARGS", |s: &str| {
            Ok::<_, String>(s.split_whitespace().map(str::to_owned).collect())
        })? {
            self.worker_args = v;
        }
        if let Some(v) = get(&lookup, "HODEI_DOCKER_NETWORK", text)? {
            self.docker_network = v;
        }
        if let Some(v) = get(&lookup, "HODEI_KUBERNETES_NAMESPACE", text)? {
            self.kubernetes_namespace = v;
        }
        if let Some(v) = get(&lookup, "HODEI_KUBERNETES_SERVICE_ACCOUNT", |s: &str| {
            Ok::<_, String>(s.to_owned())
        })? {
            self.kubernetes_service_account = v;
        }
        if let Some(v) = get(&lookup, "HODEI_KUBERNETES_WORKER_IMAGE", text)? {
            self.kubernetes_worker_image = v;
        }
        if let Some(v) = get(&lookup, "HODEI_KUBERNETES_WORKER_IMAGE_BINARY", text)? {
            self.kubernetes_worker_image_binary = v;
        }
        if let Some(v) = get(
            &lookup,
            "HODEI_KUBERNETES_IMAGE_PULL_POLICY",
            PullPolicy::from_str,
        )? {
            self.kubernetes_image_pull_policy = Some(v);
        }
        if let Some(v) = get(
            &lookup,
            "HODEI_KUBERNETES_IMAGE_PULL_GRACE",
            duration_str::parse,
        )? {
            self.kubernetes_image_pull_grace = v;
        }
        if let Some(v) = get(&lookup, "HODEI_KUBERNETES_KUBECONFIG", path)? {
            self.kubernetes_kubeconfig = Some(v);
        }
        if let Some(v) = get(&lookup, "HODEI_KUBERNETES_QPS", count)? {
            self.kubernetes_qps = v;
        }
        if let Some(v) = get(&lookup, "HODEI_KUBERNETES_BURST", count)? {
            self.kubernetes_burst = v;
        }
        if let Some(v) = get(&lookup, "HODEI_KUBERNETES_RUN_AS_USER", count)? {
            self.kubernetes_run_as_user = Some(v);
        }
        if let Some(v) = get(&lookup, "HODEI_KUBERNETES_ADVERTISE_HOST", text)? {
            self.kubernetes_advertise_host = Some(v);
        }
        // The value is never echoed: only an empty one is refused.
        if let Some(v) = get(&lookup, "HODEI_STATIC_WORKER_TOKEN", |s: &str| {
            Secret::new(s).ok_or_else(|| "expected a non-empty secret".to_owned())
        })? {
            self.static_worker_token = Some(v);
        }
        if let Some(v) = get(&lookup, "HODEI_CLIENT_TOKEN", |s: &str| {
            Secret::new(s).ok_or_else(|| "expected a non-empty secret".to_owned())
        })? {
            self.client_token = Some(v);
        }
        Ok(())
    }

    /// The SQLite file of `store = "sqlite"`: `hodei.db` in the data
    /// directory.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("hodei.db")
    }

    /// The host workers dial: for the kubernetes backend
    /// `kubernetes_advertise_host` when set, else `advertise_host`, else
    /// the gRPC listen address's IP (127.0.0.1 when it listens on all).
    pub fn worker_facing_host(&self) -> String {
        if self.backend == Backend::Kubernetes
            && let Some(host) = &self.kubernetes_advertise_host
        {
            return host.clone();
        }
        match &self.advertise_host {
            Some(host) => host.clone(),
            None if self.grpc_addr.ip().is_unspecified() => "127.0.0.1".to_owned(),
            None => self.grpc_addr.ip().to_string(),
        }
    }
}

fn line_of(text: &str, byte: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(byte)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Durations written as `30s`, `5m`, `1h 30m`.
mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn parse(s: &str) -> Result<Duration, String> {
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err("expected a duration above zero".to_owned()),
            Err(_) => Err("expected a duration such as 30s, 5m or 1h".to_owned()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(|e| serde::de::Error::custom(format!("invalid value {s:?}: {e}")))
    }
}

/// Byte sizes written as Kubernetes quantities: `64Mi`, `1G`, `1048576`.
mod quantity_str {
    use serde::{Deserialize, Deserializer};

    use super::MemoryQuantity;

    pub fn parse(s: &str) -> Result<u64, String> {
        match MemoryQuantity::parse(s) {
            Ok(q) if q.bytes() > 0 => Ok(q.bytes()),
            _ => Err("expected a size above zero such as 64Mi or 1G".to_owned()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(|e| serde::de::Error::custom(format!("invalid value {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn empty_file_gives_the_local_defaults() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.backend, Backend::Local);
        assert_eq!(s.grpc_addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(s.provisioning_timeout, Duration::from_secs(60));
        assert_eq!(s.job_timeout, Duration::from_secs(6 * 3600));
        assert_eq!(s.max_source_bytes, 64 * 1024 * 1024);
        assert_eq!(s.store, StoreKind::Sqlite);
        assert_eq!(s.store_path(), s.data_dir.join("hodei.db"));
    }

    #[test]
    fn a_grpc_message_limit_below_the_pipeline_limit_is_refused_naming_both() {
        assert!(Settings::default().check().is_ok());
        let mut s =
            Settings::from_toml("max_pipeline_bytes = \"2Mi\"\nmax_grpc_message_bytes = \"1Mi\"\n")
                .unwrap();
        let err = s.check().unwrap_err().to_string();
        assert!(
            err.contains("max_grpc_message_bytes (1048576)")
                && err.contains("max_pipeline_bytes (2097152)"),
            "{err}"
        );
        s.max_grpc_message_bytes = s.max_pipeline_bytes + 1;
        assert!(s.check().is_ok());
    }

    #[test]
    fn file_values_are_read() {
        let s = Settings::from_toml(
            "backend = \"docker\"\nmax_workers = 4\nprovisioning_timeout = \"2m\"\nmax_source_bytes = \"1Gi\"\ntemplates = \"t.yaml\"\nstore = \"memory\"\n",
        )
        .unwrap();
        assert_eq!(s.store, StoreKind::Memory);
        assert_eq!(s.backend, Backend::Docker);
        assert_eq!(s.max_workers, 4);
        assert_eq!(s.provisioning_timeout, Duration::from_secs(120));
        assert_eq!(s.max_source_bytes, 1 << 30);
        assert_eq!(s.templates.as_deref(), Some(Path::new("t.yaml")));
    }

    #[test]
    fn file_errors_name_the_key_and_line() {
        let check = |text: &str, expected: &str| {
            let err = Settings::from_toml(text).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        };
        check("max_workers = 1\nbackend = \"podman\"\n", "line 2");
        check("backend = \"podman\"\n", "unknown variant `podman`");
        check("store = \"postgres\"\n", "unknown variant `postgres`");
        check("bakend = \"local\"\n", "unknown field `bakend`");
        check(
            "provisioning_timeout = \"soon\"\n",
            "invalid value \"soon\"",
        );
        check("max_source_bytes = \"-1\"\n", "invalid value \"-1\"");
        check("grpc_addr = \"nowhere\"\n", "line 1");
        check(
            "kubernetes_burst = 10\nkubernetes_image_pull_policy = \"Sometimes\"\n",
            "line 2",
        );
        check("kubernetes_qps = \"fast\"\n", "invalid type");
    }

    /// The example in the module documentation parses, sets every key, and
    /// names each key's environment variable.
    #[test]
    fn the_documented_example_is_valid() {
        let source = include_str!("config.rs");
        let example: String = source
            .lines()
            .skip_while(|l| *l != "//! ```toml")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim()))
            .collect();
        let settings = Settings::from_toml(&example).unwrap();
        assert_eq!(settings.max_source_bytes, 64 * 1024 * 1024);
        assert_eq!(settings.server_id.as_deref(), Some("hodei-prod"));
        let mut env = Settings::default();
        for line in example.lines() {
            let (key, rest) = line.split_once('=').unwrap();
            let var = format!("HODEI_{}", key.trim().to_uppercase());
            assert!(rest.contains(&format!("# {var}")), "{line}");
            let value = rest.split('#').next().unwrap().trim().trim_matches('"');
            env.apply_env(|v| (v == var).then(|| value.to_owned()))
                .unwrap_or_else(|e| panic!("{var}: {e}"));
        }
        assert_eq!(env.max_workers, 32);
        assert_eq!(env.worker_facing_host(), "hodei.svc");
        assert_eq!(env.kubernetes_qps, 20);
        assert_eq!(env.kubernetes_run_as_user, Some(1000));
        assert_eq!(
            env.kubernetes_image_pull_policy,
            Some(PullPolicy::IfNotPresent)
        );
        env.backend = Backend::Kubernetes;
        assert_eq!(env.worker_facing_host(), "hodei.hodei-system");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut s = Settings::from_toml("backend = \"docker\"\nmax_workers = 4\n").unwrap();
        s.apply_env(env(&[
            ("HODEI_BACKEND", "local"),
            ("HODEI_MAX_WORKERS", "8"),
            ("HODEI_GRPC_ADDR", "0.0.0.0:7000"),
            ("HODEI_DATA_DIR", "/tmp/h"),
            ("HODEI_TEMPLATES", "/etc/hodei/t.yaml"),
            ("HODEI_WORKER_ARGS", "worker  --verbose"),
            ("HODEI_STORE", "memory"),
        ]))
        .unwrap();
        assert_eq!(s.backend, Backend::Local);
        assert_eq!(s.max_workers, 8);
        assert_eq!(s.grpc_addr.port(), 7000);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/h"));
        assert_eq!(s.worker_facing_host(), "127.0.0.1");
        assert_eq!(s.worker_args, ["worker", "--verbose"]);
        assert_eq!(s.store, StoreKind::Memory);
        assert_eq!(s.store_path(), PathBuf::from("/tmp/h/hodei.db"));
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let check = |var: &str, value: &str, expected: &str| {
            let err = Settings::default()
                .apply_env(env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(var), "{err}");
            assert!(err.contains(expected), "{err} should contain {expected}");
        };
        check(
            "HODEI_BACKEND",
            "podman",
            "expected one of local, docker, kubernetes",
        );
        check("HODEI_MAX_WORKERS", "0", "expected a positive integer");
        check("HODEI_STORE", "files", "expected one of sqlite, memory");
        check("HODEI_GRPC_ADDR", "localhost", "expected an address");
        check("HODEI_PROVISIONING_TIMEOUT", "0s", "above zero");
        check("HODEI_JOB_TIMEOUT", "forever", "expected a duration");
        check("HODEI_MAX_SOURCE_BYTES", "lots", "expected a size");
        check("HODEI_DATA_DIR", "", "expected a path");
        check("HODEI_KUBERNETES_QPS", "0", "expected a positive integer");
        check(
            "HODEI_KUBERNETES_IMAGE_PULL_POLICY",
            "sometimes",
            "expected one of Always, IfNotPresent, Never",
        );
        check(
            "HODEI_KUBERNETES_IMAGE_PULL_GRACE",
            "a while",
            "expected a duration",
        );
        check(
            "HODEI_STATIC_WORKER_TOKEN",
            " ",
            "expected a non-empty secret",
        );
        check("HODEI_CLIENT_TOKEN", "", "expected a non-empty secret");
        check("HODEI_MAX_STAGES", "0", "expected a positive integer");
        check("HODEI_MAX_PIPELINE_BYTES", "big", "expected a size");
        check("HODEI_MAX_GRPC_MESSAGE_BYTES", "0", "expected a size");
    }

    #[test]
    fn the_static_worker_token_is_read_but_never_printed() {
        let check = |settings: &Settings, expected: Option<&str>| {
            assert_eq!(
                settings.static_worker_token.as_ref().map(Secret::expose),
                expected
            );
            let printed = format!("{settings:?}");
            assert!(printed.contains("static_worker_token"), "{printed}");
            if let Some(secret) = expected {
                assert!(!printed.contains(secret), "{printed}");
                assert!(printed.contains("Some(****)"), "{printed}");
            }
        };
        check(&Settings::default(), None);
        let from_file = Settings::from_toml("static_worker_token = \"fr0m-file\"\n").unwrap();
        check(&from_file, Some("fr0m-file"));
        let mut from_env = from_file.clone();
        from_env
            .apply_env(env(&[("HODEI_STATIC_WORKER_TOKEN", "fr0m-env")]))
            .unwrap();
        check(&from_env, Some("fr0m-env"));
        let err = Settings::from_toml("static_worker_token = \"\"\n").unwrap_err();
        assert!(err.contains("expected a non-empty secret"), "{err}");
        assert_eq!(format!("{}", Secret::new("x").unwrap()), "****");
    }

    #[test]
    fn credentials_come_from_the_table_and_the_environment_and_are_never_printed() {
        let mut s = Settings::from_toml(
            "max_stages = 3\n[credentials]\ndeploy-key = \"fr0m-file\"\nother = \"0ther\"\n",
        )
        .unwrap();
        s.apply_credentials_env([
            (
                "HODEI_CREDENTIAL_deploy-key".to_owned(),
                "fr0m-env".to_owned(),
            ),
            ("HODEI_CREDENTIAL_API_TOKEN".to_owned(), "t0k".to_owned()),
            ("HODEI_SERVER".to_owned(), "ignored".to_owned()),
        ])
        .unwrap();
        let values: Vec<(&str, &str)> = s
            .credentials
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(
            values,
            [
                ("API_TOKEN", "t0k"),
                ("deploy-key", "fr0m-env"),
                ("other", "0ther")
            ]
        );
        assert_eq!(s.max_stages, 3);
        let printed = format!("{s:?}");
        for secret in ["fr0m", "0ther", "t0k"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        for bad in [("HODEI_CREDENTIAL_", "x"), ("HODEI_CREDENTIAL_X", "")] {
            let err = s
                .apply_credentials_env([(bad.0.to_owned(), bad.1.to_owned())])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(bad.0), "{err}");
            assert!(err.contains("non-empty value"), "{err}");
        }
        let err = Settings::from_toml("[credentials]\nk = \"\"\n").unwrap_err();
        assert!(err.contains("expected a non-empty secret"), "{err}");
    }

    #[test]
    fn the_client_token_is_read_but_never_printed() {
        let mut s = Settings::from_toml("client_token = \"cl1ent-file\"\n").unwrap();
        assert_eq!(
            s.client_token.as_ref().map(Secret::expose),
            Some("cl1ent-file")
        );
        s.apply_env(env(&[("HODEI_CLIENT_TOKEN", "cl1ent-env")]))
            .unwrap();
        assert_eq!(
            s.client_token.as_ref().map(Secret::expose),
            Some("cl1ent-env")
        );
        let printed = format!("{s:?}");
        assert!(!printed.contains("cl1ent"), "{printed}");
        assert!(printed.contains("client_token: Some(****)"), "{printed}");
    }
}

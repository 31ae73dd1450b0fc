//! Worker templates: what an ephemeral worker looks like (image,
//! capabilities, resources) and the five built-in ones.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::TemplateId;
use crate::quantity::{CpuQuantity, MemoryQuantity};
use crate::resources::{ResourceError, ResourceRequirements, ResourcesSpec};

/// Why a template is invalid. [`TemplateError::field`] names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The image was empty.
    #[error("image must not be empty")]
    EmptyImage,
    /// A capability was empty or contained whitespace.
    #[error("capability {capability:?} is not a label: {reason}")]
    InvalidCapability {
        /// The rejected capability.
        capability: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An environment variable name was not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error(
        "environment variable name {name:?} is invalid, expected a letter or '_' followed by letters, digits or '_'"
    )]
    InvalidEnvironmentName {
        /// The rejected name.
        name: String,
    },
    /// `timeout_minutes` was zero.
    #[error("timeout_minutes must be at least 1")]
    ZeroTimeout,
    /// `max_concurrent_jobs` was zero.
    #[error("max_concurrent_jobs must be at least 1")]
    ZeroMaxConcurrentJobs,
    /// A resource limit was below its request.
    #[error(transparent)]
    Resources(#[from] ResourceError),
}

impl TemplateError {
    /// The template field the error is about, as spelled in template files
    /// (`image`, `capabilities`, `resources.cpu_limit`, ...).
    pub fn field(&self) -> &'static str {
        match self {
            TemplateError::EmptyImage => "image",
            TemplateError::InvalidCapability { .. } => "capabilities",
            TemplateError::InvalidEnvironmentName { .. } => "environment",
            TemplateError::ZeroTimeout => "timeout_minutes",
            TemplateError::ZeroMaxConcurrentJobs => "max_concurrent_jobs",
            TemplateError::Resources(e) => match e {
                ResourceError::CpuLimitBelowRequest { .. } => "resources.cpu_limit",
                ResourceError::MemoryLimitBelowRequest { .. } => "resources.memory_limit",
            },
        }
    }
}

/// Checks that `label` can be a capability (a worker label): non-empty, no
/// whitespace, no control characters. Jenkins splits label strings on
/// whitespace, so a label never contains any.
///
/// # Errors
/// [`TemplateError::InvalidCapability`] saying what is wrong.
pub fn validate_label(label: &str) -> Result<(), TemplateError> {
    let reason = if label.is_empty() {
        "it is empty"
    } else if label.chars().any(char::is_whitespace) {
        "it contains whitespace"
    } else if label.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(TemplateError::InvalidCapability {
        capability: label.to_owned(),
        reason,
    })
}

fn validate_env_name(name: &str) -> Result<(), TemplateError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(TemplateError::InvalidEnvironmentName {
            name: name.to_owned(),
        })
    }
}

/// A kind of ephemeral worker: the image it runs, the labels it offers
/// (capabilities), the resources it gets and its limits.
///
/// Built with [`WorkerTemplate::new`] and the `with_*` methods, each of which
/// validates what it sets, so a `WorkerTemplate` is always valid.
///
/// ```
/// use hodei_domain::{CpuQuantity, MemoryQuantity, ResourceRequirements, TemplateId, WorkerTemplate};
///
/// let resources = ResourceRequirements::new(
///     CpuQuantity::parse("500m")?,
///     MemoryQuantity::parse("1Gi")?,
/// );
/// let t = WorkerTemplate::new(TemplateId::new("rust")?, "rust:1.89", resources)?
///     .with_capabilities(["rust", "linux"])?;
/// assert!(t.has_capability("rust"));
/// assert_eq!(t.timeout_minutes(), 30);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WorkerTemplateSpec", into = "WorkerTemplateSpec")]
pub struct WorkerTemplate {
    id: TemplateId,
    name: String,
    description: String,
    image: String,
    capabilities: BTreeSet<String>,
    resources: ResourceRequirements,
    environment: BTreeMap<String, String>,
    timeout_minutes: u32,
    max_concurrent_jobs: u32,
    run_as_user: Option<u32>,
}

impl WorkerTemplate {
    /// Minutes a worker of this template may live when the template does
    /// not say.
    pub const DEFAULT_TIMEOUT_MINUTES: u32 = 30;
    /// Jobs that may run at once on workers of this template when the
    /// template does not say.
    pub const DEFAULT_MAX_CONCURRENT_JOBS: u32 = 5;

    /// A template with no capabilities, no environment, the id as its name,
    /// an empty description and the default timeout and concurrency.
    ///
    /// # Errors
    /// [`TemplateError::EmptyImage`] if `image` is empty.
    pub fn new(
        id: TemplateId,
        image: impl Into<String>,
        resources: ResourceRequirements,
    ) -> Result<Self, TemplateError> {
        let image = image.into();
        if image.trim().is_empty() {
            return Err(TemplateError::EmptyImage);
        }
        Ok(WorkerTemplate {
            name: id.as_str().to_owned(),
            id,
            description: String::new(),
            image,
            capabilities: BTreeSet::new(),
            resources,
            environment: BTreeMap::new(),
            timeout_minutes: Self::DEFAULT_TIMEOUT_MINUTES,
            max_concurrent_jobs: Self::DEFAULT_MAX_CONCURRENT_JOBS,
            run_as_user: None,
        })
    }

    /// Sets the human-readable name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Replaces the capabilities (the labels a worker of this template offers).
    ///
    /// # Errors
    /// [`TemplateError::InvalidCapability`] for an empty label or one with
    /// whitespace.
    pub fn with_capabilities<I, S>(mut self, capabilities: I) -> Result<Self, TemplateError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut set = BTreeSet::new();
        for c in capabilities {
            let c = c.into();
            validate_label(&c)?;
            set.insert(c);
        }
        self.capabilities = set;
        Ok(self)
    }

    /// Replaces the environment variables given to every worker.
    ///
    /// # Errors
    /// [`TemplateError::InvalidEnvironmentName`] for a name that is not
    /// `[A-Za-z_][A-Za-z0-9_]*`.
    pub fn with_environment<I, K, V>(mut self, environment: I) -> Result<Self, TemplateError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut map = BTreeMap::new();
        for (k, v) in environment {
            let k = k.into();
            validate_env_name(&k)?;
            map.insert(k, v.into());
        }
        self.environment = map;
        Ok(self)
    }

    /// Sets how many minutes a worker may live.
    ///
    /// # Errors
    /// [`TemplateError::ZeroTimeout`] for zero.
    pub fn with_timeout_minutes(mut self, minutes: u32) -> Result<Self, TemplateError> {
        if minutes == 0 {
            return Err(TemplateError::ZeroTimeout);
        }
        self.timeout_minutes = minutes;
        Ok(self)
    }

    /// Sets how many jobs may run at once on workers of this template.
    ///
    /// # Errors
    /// [`TemplateError::ZeroMaxConcurrentJobs`] for zero.
    pub fn with_max_concurrent_jobs(mut self, jobs: u32) -> Result<Self, TemplateError> {
        if jobs == 0 {
            return Err(TemplateError::ZeroMaxConcurrentJobs);
        }
        self.max_concurrent_jobs = jobs;
        Ok(self)
    }

    /// Sets the user id workers run as: above 0, a non-root user (for a
    /// pod: `runAsNonRoot` with that `runAsUser`); 0, root; `None` (the
    /// default), the image's own user unless the backend says otherwise.
    pub fn with_run_as_user(mut self, uid: Option<u32>) -> Self {
        self.run_as_user = uid;
        self
    }

    /// The template's id.
    pub fn id(&self) -> &TemplateId {
        &self.id
    }

    /// The human-readable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The container image workers run.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The labels a worker of this template offers, sorted.
    pub fn capabilities(&self) -> &BTreeSet<String> {
        &self.capabilities
    }

    /// Whether `label` is one of the capabilities.
    pub fn has_capability(&self, label: &str) -> bool {
        self.capabilities.contains(label)
    }

    /// Requests, limits and storage of every worker.
    pub fn resources(&self) -> &ResourceRequirements {
        &self.resources
    }

    /// Environment variables given to every worker, sorted by name.
    pub fn environment(&self) -> &BTreeMap<String, String> {
        &self.environment
    }

    /// Minutes a worker may live (default 30).
    pub fn timeout_minutes(&self) -> u32 {
        self.timeout_minutes
    }

    /// Jobs that may run at once on workers of this template (default 5).
    pub fn max_concurrent_jobs(&self) -> u32 {
        self.max_concurrent_jobs
    }

    /// The user id workers run as, when the template says (see
    /// [`WorkerTemplate::with_run_as_user`]).
    pub fn run_as_user(&self) -> Option<u32> {
        self.run_as_user
    }

    /// The five built-in templates, in this order: `java-maven`,
    /// `node-npm`, `docker-dind`, `python-pip`, `go-build`.
    pub fn builtins() -> Vec<WorkerTemplate> {
        BUILTINS
            .iter()
            .map(|b| {
                b.build()
                    .unwrap_or_else(|e| panic!("built-in template {} is invalid: {e}", b.id))
            })
            .collect()
    }
}

/// A built-in template as constants; checked by a unit test.
struct Builtin {
    id: &'static str,
    name: &'static str,
    description: &'static str,
    image: &'static str,
    capabilities: &'static [&'static str],
    cpu: &'static str,
    memory: &'static str,
    cpu_limit: Option<&'static str>,
    memory_limit: Option<&'static str>,
    environment: &'static [(&'static str, &'static str)],
}

impl Builtin {
    fn build(&self) -> Result<WorkerTemplate, Box<dyn std::error::Error>> {
        let mut resources = ResourceRequirements::new(
            CpuQuantity::parse(self.cpu)?,
            MemoryQuantity::parse(self.memory)?,
        );
        if let Some(l) = self.cpu_limit {
            resources = resources.with_cpu_limit(CpuQuantity::parse(l)?)?;
        }
        if let Some(l) = self.memory_limit {
            resources = resources.with_memory_limit(MemoryQuantity::parse(l)?)?;
        }
        Ok(
            WorkerTemplate::new(TemplateId::new(self.id)?, self.image, resources)?
                .with_name(self.name)
                .with_description(self.description)
                .with_capabilities(self.capabilities.iter().copied())?
                .with_environment(self.environment.iter().copied())?,
        )
    }
}

const BUILTINS: [Builtin; 5] = [
    Builtin {
        id: "java-maven",
        name: "Java Maven Worker",
        description: "Java 17 + Maven 3.8 + Git",
        image: "hodei/worker:java-maven-latest",
        capabilities: &["java-17", "maven-3.8", "git", "linux"],
        cpu: "1",
        memory: "2Gi",
        cpu_limit: Some("2"),
        memory_limit: Some("4Gi"),
        environment: &[],
    },
    Builtin {
        id: "node-npm",
        name: "Node.js NPM Worker",
        description: "Node.js 18 + NPM + Yarn + Git",
        image: "hodei/worker:node-18-latest",
        capabilities: &["node-18", "npm", "yarn", "git", "linux"],
        cpu: "500m",
        memory: "1Gi",
        cpu_limit: Some("1"),
        memory_limit: Some("2Gi"),
        environment: &[],
    },
    Builtin {
        id: "docker-dind",
        name: "Docker-in-Docker Worker",
        description: "Docker + Kubernetes CLI + Helm + Git",
        image: "hodei/worker:docker-dind-latest",
        capabilities: &["docker", "kubernetes", "helm", "git", "linux"],
        cpu: "2",
        memory: "4Gi",
        cpu_limit: Some("4"),
        memory_limit: Some("8Gi"),
        environment: &[
            ("DOCKER_TLS_CERTDIR", "/certs"),
            ("DOCKER_DRIVER", "overlay2"),
        ],
    },
    Builtin {
        id: "python-pip",
        name: "Python Worker",
        description: "Python 3.11 + Pip + Poetry + Git",
        image: "hodei/worker:python-3.11-latest",
        capabilities: &["python-3.11", "pip", "poetry", "git", "linux"],
        cpu: "500m",
        memory: "1Gi",
        cpu_limit: None,
        memory_limit: None,
        environment: &[],
    },
    Builtin {
        id: "go-build",
        name: "Go Build Worker",
        description: "Go 1.21 + Git + Docker",
        image: "hodei/worker:go-1.21-latest",
        capabilities: &["go-1.21", "git", "docker", "linux"],
        cpu: "1",
        memory: "2Gi",
        cpu_limit: None,
        memory_limit: None,
        environment: &[],
    },
];

fn default_timeout_minutes() -> u32 {
    WorkerTemplate::DEFAULT_TIMEOUT_MINUTES
}

fn default_max_concurrent_jobs() -> u32 {
    WorkerTemplate::DEFAULT_MAX_CONCURRENT_JOBS
}

/// The plain, unvalidated shape of a [`WorkerTemplate`], with the field
/// names of template files. Convert with `WorkerTemplate::try_from(spec)`.
///
/// `name` defaults to the id, `description` to empty, `capabilities` and
/// `environment` to empty, `timeout_minutes` to 30 and
/// `max_concurrent_jobs` to 5. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerTemplateSpec {
    /// Template id.
    pub id: TemplateId,
    /// Human-readable name; the id when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Container image.
    pub image: String,
    /// Labels offered by workers of this template.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Requests, limits and storage.
    pub resources: ResourcesSpec,
    /// Environment variables for every worker.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Minutes a worker may live.
    #[serde(default = "default_timeout_minutes")]
    pub timeout_minutes: u32,
    /// Jobs that may run at once on workers of this template.
    #[serde(default = "default_max_concurrent_jobs")]
    pub max_concurrent_jobs: u32,
    /// The user id workers run as (above 0: non-root); absent: the
    /// image's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<u32>,
}

impl TryFrom<WorkerTemplateSpec> for WorkerTemplate {
    type Error = TemplateError;

    fn try_from(spec: WorkerTemplateSpec) -> Result<Self, Self::Error> {
        let resources = ResourceRequirements::try_from(spec.resources)?;
        let name = spec.name.unwrap_or_else(|| spec.id.as_str().to_owned());
        WorkerTemplate::new(spec.id, spec.image, resources)?
            .with_name(name)
            .with_description(spec.description)
            .with_capabilities(spec.capabilities)?
            .with_environment(spec.environment)?
            .with_timeout_minutes(spec.timeout_minutes)?
            .with_max_concurrent_jobs(spec.max_concurrent_jobs)
            .map(|t| t.with_run_as_user(spec.run_as_user))
    }
}

impl From<WorkerTemplate> for WorkerTemplateSpec {
    fn from(t: WorkerTemplate) -> Self {
        WorkerTemplateSpec {
            id: t.id,
            name: Some(t.name),
            description: t.description,
            image: t.image,
            capabilities: t.capabilities.into_iter().collect(),
            resources: t.resources.into(),
            environment: t.environment,
            timeout_minutes: t.timeout_minutes,
            max_concurrent_jobs: t.max_concurrent_jobs,
            run_as_user: t.run_as_user,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_match_the_catalogue() {
        let all = WorkerTemplate::builtins();
        let ids: Vec<&str> = all.iter().map(|t| t.id().as_str()).collect();
        assert_eq!(
            ids,
            [
                "java-maven",
                "node-npm",
                "docker-dind",
                "python-pip",
                "go-build"
            ]
        );
        let java = &all[0];
        assert_eq!(java.image(), "hodei/worker:java-maven-latest");
        assert_eq!(
            java.capabilities()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["git", "java-17", "linux", "maven-3.8"]
        );
        assert_eq!(java.resources().cpu().millis(), 1000);
        assert_eq!(java.resources().memory().bytes(), 2 << 30);
        assert_eq!(
            java.resources().cpu_limit().map(CpuQuantity::millis),
            Some(2000)
        );
        assert_eq!(java.timeout_minutes(), 30);
        assert_eq!(java.max_concurrent_jobs(), 5);
        let dind = &all[2];
        assert_eq!(
            dind.environment().get("DOCKER_DRIVER").map(String::as_str),
            Some("overlay2")
        );
        let python = &all[3];
        assert_eq!(python.resources().cpu_limit(), None);
    }

    fn spec() -> WorkerTemplateSpec {
        WorkerTemplateSpec {
            id: TemplateId::new("t").unwrap(),
            name: None,
            description: String::new(),
            image: "img".into(),
            capabilities: vec!["linux".into()],
            resources: ResourcesSpec {
                cpu: CpuQuantity::from_millis(500),
                memory: MemoryQuantity::from_bytes(1 << 30),
                cpu_limit: None,
                memory_limit: None,
                storage: None,
            },
            environment: BTreeMap::new(),
            timeout_minutes: 30,
            max_concurrent_jobs: 5,
            run_as_user: None,
        }
    }

    #[test]
    fn the_user_travels_through_the_spec() {
        let mut with_user = spec();
        with_user.run_as_user = Some(1000);
        let template = WorkerTemplate::try_from(with_user.clone()).unwrap();
        assert_eq!(template.run_as_user(), Some(1000));
        let back = WorkerTemplateSpec::from(template);
        assert_eq!(back.run_as_user, Some(1000));
        let plain = WorkerTemplate::try_from(spec()).unwrap();
        assert_eq!(plain.run_as_user(), None);
    }

    fn check(edit: impl FnOnce(&mut WorkerTemplateSpec), expected: Result<(), (&str, &str)>) {
        let mut s = spec();
        edit(&mut s);
        let got = WorkerTemplate::try_from(s)
            .map(|_| ())
            .map_err(|e| (e.field(), e.to_string()));
        let expected = expected.map_err(|(f, m)| (f, m.to_owned()));
        assert_eq!(got, expected);
    }

    #[test]
    fn validation_names_the_field() {
        check(|_| {}, Ok(()));
        check(
            |s| s.image = String::new(),
            Err(("image", "image must not be empty")),
        );
        check(
            |s| s.capabilities.push("a b".into()),
            Err((
                "capabilities",
                "capability \"a b\" is not a label: it contains whitespace",
            )),
        );
        check(
            |s| s.capabilities.push(String::new()),
            Err((
                "capabilities",
                "capability \"\" is not a label: it is empty",
            )),
        );
        check(
            |s| {
                s.environment.insert("1X".into(), "v".into());
            },
            Err((
                "environment",
                "environment variable name \"1X\" is invalid, expected a letter or '_' followed by letters, digits or '_'",
            )),
        );
        check(
            |s| s.timeout_minutes = 0,
            Err(("timeout_minutes", "timeout_minutes must be at least 1")),
        );
        check(
            |s| s.max_concurrent_jobs = 0,
            Err((
                "max_concurrent_jobs",
                "max_concurrent_jobs must be at least 1",
            )),
        );
        check(
            |s| s.resources.cpu_limit = Some(CpuQuantity::from_millis(100)),
            Err((
                "resources.cpu_limit",
                "cpu_limit 100m is below the cpu request 500m",
            )),
        );
    }

    #[test]
    fn name_defaults_to_id() {
        let t = WorkerTemplate::try_from(spec()).unwrap();
        assert_eq!(t.name(), "t");
    }
}

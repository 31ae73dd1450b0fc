//! Worker templates from YAML files.
//!
//! ```yaml
//! templates:
//!   - id: rust
//!     name: Rust Worker
//!     description: Rust 1.89 + Git
//!     image: hodei/worker:rust-1.89
//!     capabilities: [rust, git, linux]
//!     resources:
//!       cpu: "1"          # or 1, 500m, 1.5
//!       memory: 2Gi
//!       cpu_limit: "2"    # optional, not below cpu
//!       memory_limit: 4Gi # optional, not below memory
//!       storage: 10Gi     # optional
//!     environment:
//!       CARGO_HOME: /cache/cargo
//!     timeout_minutes: 30       # default 30
//!     max_concurrent_jobs: 5    # default 5
//!     run_as_user: 1000         # optional: a non-root user id (0: root; absent: the image's user)
//! ```
//!
//! Only `id`, `image` and `resources` (with `cpu` and `memory`) are
//! required. Unknown fields, duplicate ids and invalid values are errors
//! naming the template (its id and its index) and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use hodei_domain::{ResourcesSpec, TemplateId, WorkerTemplate, WorkerTemplateSpec};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

/// Which template an error is about: its index in the `templates:` list
/// and, when it has a readable one, its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    /// 0-based index in the `templates:` list.
    pub index: usize,
    /// The template's `id` field, if it is a string.
    pub id: Option<String>,
}

impl fmt::Display for TemplateRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "template {id:?} (templates[{}])", self.index),
            None => write!(f, "template templates[{}]", self.index),
        }
    }
}

/// Why a template file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TemplateFileError {
    /// The file could not be read.
    #[error("{}: cannot read the file", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The document is not YAML with a top-level `templates:` list.
    #[error("{origin}: {message}")]
    Document {
        /// The file name (or `<input>`).
        origin: String,
        /// What is wrong, with the line and column when known.
        message: String,
    },
    /// A template has an unknown, missing or invalid field.
    #[error("{origin}: {template}: field `{field}`: {message}")]
    Field {
        /// The file name (or `<input>`).
        origin: String,
        /// The template.
        template: TemplateRef,
        /// The field, dotted for nested ones (`resources.cpu`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A template is not a mapping of fields.
    #[error("{origin}: {template}: {message}")]
    Template {
        /// The file name (or `<input>`).
        origin: String,
        /// The template.
        template: TemplateRef,
        /// What is wrong with it.
        message: String,
    },
    /// Two templates share an id.
    #[error(
        "{origin}: {template}: field `id`: duplicate template id, already used by templates[{first_index}]"
    )]
    DuplicateId {
        /// The file name (or `<input>`).
        origin: String,
        /// The second template with the id.
        template: TemplateRef,
        /// Index of the first template with the id.
        first_index: usize,
    },
    /// The `templates:` list is empty.
    #[error("{origin}: `templates` is empty, expected at least one template")]
    Empty {
        /// The file name (or `<input>`).
        origin: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    templates: Vec<Value>,
}

const TEMPLATE_FIELDS: &[&str] = &[
    "id",
    "name",
    "description",
    "image",
    "capabilities",
    "resources",
    "environment",
    "timeout_minutes",
    "max_concurrent_jobs",
    "run_as_user",
];

const RESOURCE_FIELDS: &[&str] = &["cpu", "memory", "cpu_limit", "memory_limit", "storage"];

/// Reads and validates the template file at `path`.
///
/// # Errors
/// [`TemplateFileError`] naming the file, and for a bad template its id,
/// index and field.
pub fn load_template_file(path: &Path) -> Result<Vec<WorkerTemplate>, TemplateFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TemplateFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_templates(&text, &path.display().to_string())
}

/// Parses and validates template YAML; `origin` names the source in error
/// messages (usually the file name).
///
/// # Errors
/// [`TemplateFileError`] for the first problem found, in document order.
pub fn parse_templates(text: &str, origin: &str) -> Result<Vec<WorkerTemplate>, TemplateFileError> {
    let doc: Document = serde_yaml_ng::from_str(text).map_err(|e| TemplateFileError::Document {
        origin: origin.to_owned(),
        message: e.to_string(),
    })?;
    if doc.templates.is_empty() {
        return Err(TemplateFileError::Empty {
            origin: origin.to_owned(),
        });
    }
    let mut templates: Vec<WorkerTemplate> = Vec::with_capacity(doc.templates.len());
    let mut seen: BTreeMap<TemplateId, usize> = BTreeMap::new();
    for (index, value) in doc.templates.into_iter().enumerate() {
        let template = TemplateRef {
            index,
            id: value.get("id").and_then(Value::as_str).map(str::to_owned),
        };
        let field_error = |field: &str, message: String| {
            if field.is_empty() {
                TemplateFileError::Template {
                    origin: origin.to_owned(),
                    template: template.clone(),
                    message,
                }
            } else {
                TemplateFileError::Field {
                    origin: origin.to_owned(),
                    template: template.clone(),
                    field: field.to_owned(),
                    message,
                }
            }
        };
        let parsed = parse_template(&value).map_err(|(f, m)| field_error(&f, m))?;
        if let Some(&first_index) = seen.get(parsed.id()) {
            return Err(TemplateFileError::DuplicateId {
                origin: origin.to_owned(),
                template,
                first_index,
            });
        }
        seen.insert(parsed.id().clone(), index);
        templates.push(parsed);
    }
    Ok(templates)
}

/// A field name and what is wrong with it.
type FieldError = (String, String);

fn mapping<'a>(value: &'a Value, what: &str) -> Result<&'a Mapping, String> {
    value.as_mapping().ok_or_else(|| {
        format!(
            "expected {what} as a mapping of fields, found {}",
            kind(value)
        )
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Checks that every key of `map` is one of `known`, prefixing field names
/// with `prefix`.
fn check_keys(map: &Mapping, known: &[&str], prefix: &str) -> Result<(), FieldError> {
    for key in map.keys() {
        let name = key.as_str().ok_or_else(|| {
            (
                prefix.trim_end_matches('.').to_owned(),
                format!("field names must be strings, found {}", kind(key)),
            )
        })?;
        if !known.contains(&name) {
            return Err((
                format!("{prefix}{name}"),
                format!(
                    "unknown field, expected one of {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Deserializes field `key` of `map`; `None` when absent or null.
fn field<T: DeserializeOwned>(
    map: &Mapping,
    key: &str,
    path: &str,
) -> Result<Option<T>, FieldError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_yaml_ng::from_value(v.clone())
            .map(Some)
            .map_err(|e| (path.to_owned(), e.to_string())),
    }
}

fn required<T: DeserializeOwned>(map: &Mapping, key: &str, path: &str) -> Result<T, FieldError> {
    field(map, key, path)?.ok_or_else(|| {
        (
            path.to_owned(),
            "missing, this field is required".to_owned(),
        )
    })
}

fn parse_template(value: &Value) -> Result<WorkerTemplate, FieldError> {
    let map = mapping(value, "a template").map_err(|m| (String::new(), m))?;
    check_keys(map, TEMPLATE_FIELDS, "")?;
    let resources_value = map
        .get("resources")
        .filter(|v| !v.is_null())
        .ok_or_else(|| {
            (
                "resources".to_owned(),
                "missing, this field is required".to_owned(),
            )
        })?;
    let res = mapping(resources_value, "resources").map_err(|m| ("resources".to_owned(), m))?;
    check_keys(res, RESOURCE_FIELDS, "resources.")?;
    let spec = WorkerTemplateSpec {
        id: required(map, "id", "id")?,
        name: field(map, "name", "name")?,
        description: field(map, "description", "description")?.unwrap_or_default(),
        image: required(map, "image", "image")?,
        capabilities: field(map, "capabilities", "capabilities")?.unwrap_or_default(),
        resources: ResourcesSpec {
            cpu: required(res, "cpu", "resources.cpu")?,
            memory: required(res, "memory", "resources.memory")?,
            cpu_limit: field(res, "cpu_limit", "resources.cpu_limit")?,
            memory_limit: field(res, "memory_limit", "resources.memory_limit")?,
            storage: field(res, "storage", "resources.storage")?,
        },
        environment: field(map, "environment", "environment")?.unwrap_or_default(),
        timeout_minutes: field(map, "timeout_minutes", "timeout_minutes")?
            .unwrap_or(WorkerTemplate::DEFAULT_TIMEOUT_MINUTES),
        max_concurrent_jobs: field(map, "max_concurrent_jobs", "max_concurrent_jobs")?
            .unwrap_or(WorkerTemplate::DEFAULT_MAX_CONCURRENT_JOBS),
        run_as_user: field(map, "run_as_user", "run_as_user")?,
    };
    WorkerTemplate::try_from(spec).map_err(|e| (e.field().to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
templates:
  - id: rust
    name: Rust Worker
    description: Rust + Git
    image: hodei/worker:rust
    capabilities: [rust, git, linux]
    resources:
      cpu: 1.5
      memory: 2Gi
      cpu_limit: 2
      memory_limit: 4Gi
      storage: 10Gi
    environment:
      CARGO_HOME: /cache/cargo
    timeout_minutes: 45
    max_concurrent_jobs: 2
  - id: tiny
    image: busybox
    resources: {cpu: 100m, memory: 64Mi}
"#;

    #[test]
    fn parses_every_field_and_defaults() {
        let ts = parse_templates(GOOD, "t.yaml").unwrap();
        assert_eq!(ts.len(), 2);
        let rust = &ts[0];
        assert_eq!(rust.id().as_str(), "rust");
        assert_eq!(rust.name(), "Rust Worker");
        assert_eq!(rust.description(), "Rust + Git");
        assert_eq!(rust.resources().cpu().millis(), 1500);
        assert_eq!(rust.resources().cpu_limit().map(|c| c.millis()), Some(2000));
        assert_eq!(
            rust.resources().memory_limit().map(|m| m.bytes()),
            Some(4 << 30)
        );
        assert_eq!(
            rust.resources().storage().map(|m| m.bytes()),
            Some(10 << 30)
        );
        assert_eq!(
            rust.environment().get("CARGO_HOME").map(String::as_str),
            Some("/cache/cargo")
        );
        assert_eq!(rust.timeout_minutes(), 45);
        assert_eq!(rust.max_concurrent_jobs(), 2);
        let tiny = &ts[1];
        assert_eq!(tiny.name(), "tiny");
        assert_eq!(tiny.timeout_minutes(), 30);
        assert_eq!(tiny.max_concurrent_jobs(), 5);
        assert!(tiny.capabilities().is_empty());
        assert_eq!(rust.run_as_user(), None);
        let non_root = parse_templates(
            "templates:\n  - id: n\n    image: i\n    resources: {cpu: 1, memory: 1Gi}\n    run_as_user: 1000\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(non_root[0].run_as_user(), Some(1000));
    }

    /// Parses a file whose single template has `fields` (YAML lines at
    /// template level) and compares the error text.
    fn check(fields: &str, expected: &str) {
        let indented: String = fields.lines().map(|l| format!("    {l}\n")).collect();
        let text = format!(
            "templates:\n  - id: ok\n    image: img\n    resources: {{cpu: 1, memory: 1Gi}}\n  - {}",
            indented.trim_start()
        );
        let err = parse_templates(&text, "t.yaml").unwrap_err();
        assert_eq!(err.to_string(), expected, "for {fields:?}");
    }

    #[test]
    fn errors_name_the_template_and_the_field() {
        check(
            "id: x\nimage: i\nresources: {cpu: 1, memory: 1Gi}\ncolour: red",
            "t.yaml: template \"x\" (templates[1]): field `colour`: unknown field, expected one of `id`, `name`, `description`, `image`, `capabilities`, `resources`, `environment`, `timeout_minutes`, `max_concurrent_jobs`, `run_as_user`",
        );
        check(
            "id: x\nimage: i\nresources: {cpu: 1, memory: 1Gi}\nrun_as_user: -1",
            "t.yaml: template \"x\" (templates[1]): field `run_as_user`: invalid value: integer `-1`, expected u32",
        );
        check(
            "id: x\nimage: i\nresources: {cpu: 1, memory: 1Gi, gpu: 1}",
            "t.yaml: template \"x\" (templates[1]): field `resources.gpu`: unknown field, expected one of `cpu`, `memory`, `cpu_limit`, `memory_limit`, `storage`",
        );
        check(
            "id: x\nimage: i\nresources: {cpu: abc, memory: 1Gi}",
            "t.yaml: template \"x\" (templates[1]): field `resources.cpu`: invalid cpu quantity \"abc\": expected a number such as 500m or 2",
        );
        check(
            "id: x\nimage: i\nresources: {cpu: 1, memory: 1Zi}",
            "t.yaml: template \"x\" (templates[1]): field `resources.memory`: invalid memory quantity \"1Zi\": unknown suffix \"Zi\", expected one of Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or an exponent such as e3",
        );
        check(
            "id: x\nimage: i\nresources: {cpu: 2, memory: 1Gi, cpu_limit: 1}",
            "t.yaml: template \"x\" (templates[1]): field `resources.cpu_limit`: cpu_limit 1 is below the cpu request 2",
        );
        check(
            "id: x\nimage: i\nresources: {cpu: 1, memory: 1Gi, memory_limit: 512Mi}",
            "t.yaml: template \"x\" (templates[1]): field `resources.memory_limit`: memory_limit 512Mi is below the memory request 1Gi",
        );
        check(
            "id: x\nimage: i\nresources: {cpu: 1}",
            "t.yaml: template \"x\" (templates[1]): field `resources.memory`: missing, this field is required",
        );
        check(
            "id: x\nimage: i",
            "t.yaml: template \"x\" (templates[1]): field `resources`: missing, this field is required",
        );
        check(
            "image: i\nresources: {cpu: 1, memory: 1Gi}",
            "t.yaml: template templates[1]: field `id`: missing, this field is required",
        );
        check(
            "id: a b\nimage: i\nresources: {cpu: 1, memory: 1Gi}",
            "t.yaml: template \"a b\" (templates[1]): field `id`: template id \"a b\" contains ' ' at column 2, expected only letters, digits, '-', '_' or '.'",
        );
        check(
            "id: x\nimage: \"\"\nresources: {cpu: 1, memory: 1Gi}",
            "t.yaml: template \"x\" (templates[1]): field `image`: image must not be empty",
        );
        check(
            "id: x\nimage: i\nresources: {cpu: 1, memory: 1Gi}\ntimeout_minutes: soon",
            "t.yaml: template \"x\" (templates[1]): field `timeout_minutes`: invalid type: string \"soon\", expected u32",
        );
        check(
            "id: x\nimage: i\nresources: {cpu: 1, memory: 1Gi}\nmax_concurrent_jobs: 0",
            "t.yaml: template \"x\" (templates[1]): field `max_concurrent_jobs`: max_concurrent_jobs must be at least 1",
        );
        check(
            "id: x\nimage: i\nresources: {cpu: 1, memory: 1Gi}\ncapabilities: [\"a b\"]",
            "t.yaml: template \"x\" (templates[1]): field `capabilities`: capability \"a b\" is not a label: it contains whitespace",
        );
        check(
            "id: x\nimage: i\nresources: {cpu: 1, memory: 1Gi}\ncapabilities: linux",
            "t.yaml: template \"x\" (templates[1]): field `capabilities`: invalid type: string \"linux\", expected a sequence",
        );
        check(
            "id: x\nimage: i\nresources: {cpu: 1, memory: 1Gi}\nenvironment: {\"A-B\": x}",
            "t.yaml: template \"x\" (templates[1]): field `environment`: environment variable name \"A-B\" is invalid, expected a letter or '_' followed by letters, digits or '_'",
        );
        check(
            "id: ok\nimage: i\nresources: {cpu: 1, memory: 1Gi}",
            "t.yaml: template \"ok\" (templates[1]): field `id`: duplicate template id, already used by templates[0]",
        );
        check(
            "id: x\nimage: i\nresources: 4",
            "t.yaml: template \"x\" (templates[1]): field `resources`: expected resources as a mapping of fields, found a number",
        );
    }

    #[test]
    fn document_errors() {
        let err = |text: &str| parse_templates(text, "t.yaml").unwrap_err().to_string();
        assert_eq!(err(""), "t.yaml: missing field `templates`");
        assert_eq!(
            err("templatez: []"),
            "t.yaml: unknown field `templatez`, expected `templates`"
        );
        assert_eq!(
            err("templates: []"),
            "t.yaml: `templates` is empty, expected at least one template"
        );
        assert_eq!(
            err("templates:\n  - 3"),
            "t.yaml: template templates[0]: expected a template as a mapping of fields, found a number"
        );
        assert!(err("templates: [").starts_with("t.yaml: "));
    }

    #[test]
    fn missing_file_is_named() {
        let err = load_template_file(Path::new("/nonexistent/templates.yaml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/templates.yaml: cannot read the file"
        );
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            source.is_some_and(|s| s.contains("No such file")),
            "{err:?}"
        );
    }
}

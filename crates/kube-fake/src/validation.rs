//! The API server's validation of what this fake stores: names, labels,
//! pod specs and secrets, with its messages.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Container, Pod, Secret};

use crate::selector::{valid_label_key, valid_label_value};
use crate::status::FieldError;

const DNS_SUBDOMAIN_WHY: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
     alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character \
     (e.g. 'example.com', regex used for validation is \
     '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

const DNS_LABEL_WHY: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric \
     characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  \
     or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// Whether `name` is an RFC 1123 label (at most 63 characters).
pub(crate) fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Whether `name` is an RFC 1123 subdomain (at most 253 characters).
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Errors of an object's name.
pub(crate) fn validate_name(name: &str, errors: &mut Vec<FieldError>) {
    if name.is_empty() {
        errors.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if !is_dns_subdomain(name) {
        errors.push(FieldError::invalid(
            "metadata.name",
            name,
            DNS_SUBDOMAIN_WHY,
        ));
    }
}

/// Errors of labels.
pub(crate) fn validate_labels(
    labels: Option<&BTreeMap<String, String>>,
    errors: &mut Vec<FieldError>,
) {
    for (key, value) in labels.into_iter().flatten() {
        if !valid_label_key(key) {
            errors.push(FieldError::invalid(
                "metadata.labels",
                key,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must \
                 start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or \
                 '123-abc', regex used for validation is \
                 '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain \
                 prefix and '/' (e.g. 'example.com/MyName')",
            ));
        }
        if value.len() > 63 {
            errors.push(FieldError::invalid(
                "metadata.labels",
                value,
                "must be no more than 63 characters",
            ));
        } else if !valid_label_value(value) {
            errors.push(FieldError::invalid(
                "metadata.labels",
                value,
                "a valid label must be an empty string or consist of alphanumeric characters, \
                 '-', '_' or '.', and must start and end with an alphanumeric character (e.g. \
                 'MyValue',  or 'my_value',  or '12345', regex used for validation is \
                 '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            ));
        }
    }
}

fn is_env_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn validate_containers(
    path: &str,
    containers: &[Container],
    volumes: &HashSet<&str>,
    names: &mut HashSet<String>,
    errors: &mut Vec<FieldError>,
) {
    for (i, c) in containers.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if c.name.is_empty() {
            errors.push(FieldError::required(format!("{at}.name"), ""));
        } else if !is_dns_label(&c.name) {
            errors.push(FieldError::invalid(
                format!("{at}.name"),
                &c.name,
                DNS_LABEL_WHY,
            ));
        } else if !names.insert(c.name.clone()) {
            errors.push(FieldError::duplicate(format!("{at}.name"), &c.name));
        }
        if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
            errors.push(FieldError::required(format!("{at}.image"), ""));
        }
        if let Some(policy) = c.image_pull_policy.as_deref()
            && !["Always", "IfNotPresent", "Never"].contains(&policy)
        {
            errors.push(FieldError::not_supported(
                format!("{at}.imagePullPolicy"),
                policy,
                &["Always", "IfNotPresent", "Never"],
            ));
        }
        let mut mount_paths = HashSet::new();
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            let mat = format!("{at}.volumeMounts[{j}]");
            if !volumes.contains(m.name.as_str()) {
                errors.push(FieldError::not_found(format!("{mat}.name"), &m.name));
            }
            if m.mount_path.is_empty() {
                errors.push(FieldError::required(format!("{mat}.mountPath"), ""));
            } else if !mount_paths.insert(m.mount_path.as_str()) {
                errors.push(FieldError::invalid(
                    format!("{mat}.mountPath"),
                    &m.mount_path,
                    "must be unique",
                ));
            }
        }
        for (j, e) in c.env.iter().flatten().enumerate() {
            if !is_env_name(&e.name) {
                errors.push(FieldError::invalid(
                    format!("{at}.env[{j}].name"),
                    &e.name,
                    "a valid environment variable name must consist of alphabetic characters, \
                     digits, '_', '-', or '.', and must not start with a digit",
                ));
            }
            if e.value.is_some() && e.value_from.is_some() {
                errors.push(FieldError::invalid(
                    format!("{at}.env[{j}].valueFrom"),
                    "",
                    "may not be specified when `value` is not empty",
                ));
            }
        }
    }
}

/// Errors of a pod about to be created.
pub(crate) fn validate_pod(pod: &Pod) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_name(
        pod.metadata.name.as_deref().unwrap_or_default(),
        &mut errors,
    );
    validate_labels(pod.metadata.labels.as_ref(), &mut errors);
    let Some(spec) = &pod.spec else {
        errors.push(FieldError::required("spec", ""));
        return errors;
    };
    let mut volumes = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if !is_dns_label(&v.name) {
            errors.push(FieldError::invalid(
                format!("spec.volumes[{i}].name"),
                &v.name,
                DNS_LABEL_WHY,
            ));
        } else if !volumes.insert(v.name.as_str()) {
            errors.push(FieldError::duplicate(
                format!("spec.volumes[{i}].name"),
                &v.name,
            ));
        }
    }
    if spec.containers.is_empty() {
        errors.push(FieldError::required("spec.containers", ""));
    }
    let mut names = HashSet::new();
    validate_containers(
        "spec.initContainers",
        spec.init_containers.as_deref().unwrap_or_default(),
        &volumes,
        &mut names,
        &mut errors,
    );
    validate_containers(
        "spec.containers",
        &spec.containers,
        &volumes,
        &mut names,
        &mut errors,
    );
    if let Some(policy) = spec.restart_policy.as_deref()
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        errors.push(FieldError::not_supported(
            "spec.restartPolicy",
            policy,
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(deadline) = spec.active_deadline_seconds
        && deadline <= 0
    {
        errors.push(FieldError::invalid(
            "spec.activeDeadlineSeconds",
            &deadline.to_string(),
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    errors
}

/// Errors of a secret about to be stored.
pub(crate) fn validate_secret(secret: &Secret) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_name(
        secret.metadata.name.as_deref().unwrap_or_default(),
        &mut errors,
    );
    validate_labels(secret.metadata.labels.as_ref(), &mut errors);
    for key in secret.data.iter().flat_map(|d| d.keys()) {
        let ok = !key.is_empty()
            && key != "."
            && key != ".."
            && key.len() <= 253
            && key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !ok {
            errors.push(FieldError::invalid(
                format!("data[{key}]"),
                key,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
                 (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is \
                 '[-._a-zA-Z0-9]+')",
            ));
        }
    }
    errors
}

/// Random suffix of `generateName`, from the API server's alphabet.
pub(crate) fn generated_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for good in ["a", "a-b", "a.b", "0x", "w-1.job"] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", ".a"] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        assert!(is_dns_label("worker"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }

    #[test]
    fn a_pod_without_containers_or_images_is_invalid() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": {"ok": "v", "bad": "-x"}},
            "spec": {"containers": [{"name": "a", "image": ""}, {"name": "a", "image": "i",
                "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]}
        }))
        .expect("a pod");
        let fields: Vec<String> = validate_pod(&pod).iter().map(|e| e.field.clone()).collect();
        assert_eq!(
            fields,
            [
                "metadata.labels",
                "spec.containers[0].image",
                "spec.containers[1].name",
                "spec.containers[1].volumeMounts[0].name"
            ]
        );
        let empty: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "spec": {"containers": []}
        }))
        .expect("a pod");
        assert_eq!(
            validate_pod(&empty)[0].to_string(),
            "spec.containers: Required value"
        );
    }

    #[test]
    fn generated_suffixes_use_the_servers_alphabet() {
        let s = generated_suffix();
        assert_eq!(s.len(), 5);
        assert!(
            s.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
    }
}

//! PATCH bodies: JSON merge patch (RFC 7386), strategic merge patch (a
//! merge patch whose known lists merge by key, as the API server's pod and
//! secret schemas say) and JSON patch (RFC 6902).

use serde_json::Value;

/// Which patch a PATCH carries, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let base = content_type.split(';').next().unwrap_or_default().trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/json-patch+json" => Some(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// The key by which a list under `field` merges in a strategic merge
/// patch; lists without one are replaced.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "conditions" => Some("type"),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

/// Applies a JSON merge patch to `target`.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    strategic_or_merge(target, patch, false);
}

/// Applies a strategic merge patch to `target`.
pub(crate) fn strategic(target: &mut Value, patch: &Value) {
    strategic_or_merge(target, patch, true);
}

fn strategic_or_merge(target: &mut Value, patch: &Value, keyed: bool) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(map) = target else {
        return;
    };
    for (key, value) in patch {
        if key == "$patch" || key.starts_with("$setElementOrder") || key.starts_with("$retainKeys")
        {
            continue;
        }
        if value.is_null() {
            map.remove(key);
            continue;
        }
        match (
            keyed.then(|| merge_key(key)).flatten(),
            value,
            map.get_mut(key),
        ) {
            (Some(id), Value::Array(items), Some(Value::Array(existing))) => {
                for item in items {
                    let wanted = item.get(id);
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    let at =
                        wanted.and_then(|w| existing.iter().position(|e| e.get(id) == Some(w)));
                    match (at, delete) {
                        (Some(i), true) => {
                            existing.remove(i);
                        }
                        (Some(i), false) => strategic_or_merge(&mut existing[i], item, true),
                        (None, true) => {}
                        (None, false) => {
                            let mut fresh = Value::Null;
                            strategic_or_merge(&mut fresh, item, true);
                            existing.push(fresh);
                        }
                    }
                }
            }
            _ => {
                let slot = map.entry(key.clone()).or_insert(Value::Null);
                if value.is_object() {
                    strategic_or_merge(slot, value, keyed);
                } else {
                    *slot = value.clone();
                }
            }
        }
    }
}

/// Applies a JSON patch (`add`, `remove`, `replace`, `move`, `copy`,
/// `test`) to `target`; the error names the failing operation.
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch
        .as_array()
        .ok_or_else(|| "a JSON patch must be an array of operations".to_owned())?;
    for (i, op) in ops.iter().enumerate() {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("operation {i}: missing path"))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("operation {i} ({name}): missing value"))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("operation {i} ({name}): missing from"))
        };
        let fail = |why: &str| format!("operation {i} ({name} {path}): {why}");
        match name {
            "add" => add(target, path, value()?).map_err(|e| fail(&e))?,
            "remove" => {
                remove(target, path).map_err(|e| fail(&e))?;
            }
            "replace" => {
                remove(target, path).map_err(|e| fail(&e))?;
                add(target, path, value()?).map_err(|e| fail(&e))?;
            }
            "move" => {
                let moved = remove(target, from()?).map_err(|e| fail(&e))?;
                add(target, path, moved).map_err(|e| fail(&e))?;
            }
            "copy" => {
                let copied = target
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| fail("from does not exist"))?;
                add(target, path, copied).map_err(|e| fail(&e))?;
            }
            "test" => {
                if target.pointer(path) != Some(&value()?) {
                    return Err(fail("test failed"));
                }
            }
            other => return Err(format!("operation {i}: unknown op {other:?}")),
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| "path must start with '/'".to_owned())?;
    let last = last.replace("~1", "/").replace("~0", "~");
    Ok((parent.to_owned(), last))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let at = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= items.len())
                    .ok_or_else(|| format!("bad array index {last:?}"))?
            };
            items.insert(at, value);
            Ok(())
        }
        _ => Err("parent does not exist".to_owned()),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(map)) => map
            .remove(&last)
            .ok_or_else(|| "path does not exist".to_owned()),
        Some(Value::Array(items)) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < items.len())
            .map(|i| items.remove(i))
            .ok_or_else(|| format!("bad array index {last:?}")),
        _ => Err("path does not exist".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_replaces_lists_and_deletes_nulls() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [{"type": "x"}]});
        merge(
            &mut v,
            &json!({"a": null, "b": {"c": 4}, "l": [{"type": "y"}]}),
        );
        assert_eq!(v, json!({"b": {"c": 4, "d": 3}, "l": [{"type": "y"}]}));
    }

    #[test]
    fn strategic_patch_merges_conditions_by_type() {
        let mut v = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}
        ]}});
        strategic(
            &mut v,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "New", "status": "True"}]}}),
        );
        assert_eq!(
            v["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}, {"type": "New", "status": "True"}])
        );
    }

    #[test]
    fn json_patch_operations() {
        let mut v = json!({"metadata": {"labels": {"a": "1"}}, "l": [1, 2]});
        json_patch(
            &mut v,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "replace", "path": "/metadata/labels/a", "value": "3"},
                {"op": "add", "path": "/l/-", "value": 3},
                {"op": "remove", "path": "/l/0"},
                {"op": "test", "path": "/l", "value": [2, 3]}
            ]),
        )
        .expect("applies");
        assert_eq!(
            v,
            json!({"metadata": {"labels": {"a": "3", "b": "2"}}, "l": [2, 3]})
        );
        let e =
            json_patch(&mut v, &json!([{"op": "remove", "path": "/nope/x"}])).expect_err("fails");
        assert!(e.contains("operation 0"), "{e}");
    }
}

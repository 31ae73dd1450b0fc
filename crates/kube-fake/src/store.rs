//! The objects, one global monotonic `resourceVersion`, the bounded history
//! of changes that watches replay, and the logs of the manual kubelet.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

/// The kinds of objects the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Pod,
    Secret,
}

impl Kind {
    /// From the resource name in a path (`pods`).
    pub fn from_plural(plural: &str) -> Option<Self> {
        match plural {
            "pods" => Some(Self::Pod),
            "secrets" => Some(Self::Secret),
            _ => None,
        }
    }

    /// The resource name (`pods`), as error details name it.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Pod => "pods",
            Self::Secret => "secrets",
        }
    }

    /// The kind (`Pod`).
    pub fn kind(self) -> &'static str {
        match self {
            Self::Pod => "Pod",
            Self::Secret => "Secret",
        }
    }

    /// The kind of a list (`PodList`).
    pub fn list_kind(self) -> &'static str {
        match self {
            Self::Pod => "PodList",
            Self::Secret => "SecretList",
        }
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub rv: u64,
    pub kind: Kind,
    pub namespace: String,
    pub event: EventType,
    /// The object before a modification (for selector transitions).
    pub old: Option<Arc<Value>>,
    /// The object after the change (the last state for a deletion, with
    /// the deletion's resourceVersion).
    pub object: Arc<Value>,
}

/// Key of an object.
pub(crate) type Key = (Kind, String, String);

/// Everything the server keeps.
#[derive(Debug)]
pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Change>,
    history_limit: usize,
    /// Every change with a resourceVersion up to this one has left the
    /// history; a watch from an older version is `410 Expired`.
    compacted: u64,
    /// Manual kubelet logs by (namespace, pod, container).
    pub logs: HashMap<(String, String, String), String>,
}

fn set_resource_version(object: &mut Value, rv: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".to_owned(), Value::String(rv.to_string()));
    }
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        Self {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            logs: HashMap::new(),
        }
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn push(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > self.history_limit {
            if let Some(gone) = self.history.pop_front() {
                self.compacted = gone.rv;
            }
        }
    }

    /// Drops the whole history, as an etcd compaction does: watches from
    /// any version before now get `410 Expired`.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn contains(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        self.objects
            .contains_key(&(kind, namespace.to_owned(), name.to_owned()))
    }

    /// Objects of `kind` in `namespace` (every namespace if `None`), by
    /// namespace then name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Arc<Value>> {
        self.objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Stores a new object under the next resourceVersion.
    pub fn insert(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        mut object: Value,
    ) -> Arc<Value> {
        self.rv += 1;
        set_resource_version(&mut object, self.rv);
        let object = Arc::new(object);
        self.objects.insert(
            (kind, namespace.to_owned(), name.to_owned()),
            object.clone(),
        );
        self.push(Change {
            rv: self.rv,
            kind,
            namespace: namespace.to_owned(),
            event: EventType::Added,
            old: None,
            object: object.clone(),
        });
        object
    }

    /// Replaces an existing object under the next resourceVersion; `None`
    /// when there is no such object.
    pub fn replace(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        mut object: Value,
    ) -> Option<Arc<Value>> {
        let key = (kind, namespace.to_owned(), name.to_owned());
        let old = self.objects.get(&key)?.clone();
        self.rv += 1;
        set_resource_version(&mut object, self.rv);
        let object = Arc::new(object);
        self.objects.insert(key, object.clone());
        self.push(Change {
            rv: self.rv,
            kind,
            namespace: namespace.to_owned(),
            event: EventType::Modified,
            old: Some(old),
            object: object.clone(),
        });
        Some(object)
    }

    /// Removes an object; the returned last state carries the deletion's
    /// resourceVersion, as the DELETED event does.
    pub fn remove(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let old = self
            .objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))?;
        self.rv += 1;
        let mut last = (*old).clone();
        set_resource_version(&mut last, self.rv);
        let last = Arc::new(last);
        self.push(Change {
            rv: self.rv,
            kind,
            namespace: namespace.to_owned(),
            event: EventType::Deleted,
            old: Some(old),
            object: last.clone(),
        });
        if kind == Kind::Pod {
            self.logs
                .retain(|(ns, pod, _), _| !(ns == namespace && pod == name));
        }
        Some(last)
    }

    /// The changes after `rv`, or `Err(oldest)` when some of them have left
    /// the history (the watch must relist).
    pub fn changes_after(&self, rv: u64) -> Result<Vec<Change>, u64> {
        if rv < self.compacted {
            return Err(self.compacted + 1);
        }
        Ok(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name}})
    }

    #[test]
    fn every_change_takes_the_next_resource_version() {
        let mut store = Store::new(10);
        let a = store.insert(Kind::Pod, "ns", "a", obj("a"));
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        let b = store.insert(Kind::Secret, "ns", "b", obj("b"));
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        let a2 = store
            .replace(Kind::Pod, "ns", "a", obj("a"))
            .expect("a exists");
        assert_eq!(a2["metadata"]["resourceVersion"], "3");
        let gone = store.remove(Kind::Pod, "ns", "a").expect("a exists");
        assert_eq!(gone["metadata"]["resourceVersion"], "4");
        assert!(store.replace(Kind::Pod, "ns", "a", obj("a")).is_none());
        let after: Vec<u64> = store
            .changes_after(1)
            .expect("kept")
            .iter()
            .map(|c| c.rv)
            .collect();
        assert_eq!(after, vec![2, 3, 4]);
    }

    #[test]
    fn a_version_older_than_the_history_is_expired() {
        let mut store = Store::new(2);
        for name in ["a", "b", "c", "d"] {
            store.insert(Kind::Pod, "ns", name, obj(name));
        }
        assert_eq!(store.changes_after(1).map(|c| c.len()), Err(3));
        assert_eq!(store.changes_after(2).map(|c| c.len()), Ok(2));
        store.compact();
        assert_eq!(store.changes_after(3).map(|c| c.len()), Err(5));
        assert_eq!(store.changes_after(4).map(|c| c.len()), Ok(0));
    }
}

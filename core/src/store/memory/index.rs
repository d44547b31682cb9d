//! The objects of one kind, indexed for the reads the cluster makes most: by namespace (a
//! two-level ordered map, so a list comes out sorted by namespace and name), by name, and pods
//! by `spec.nodeName` (what every node agent and the scheduler select on); plus the kind's
//! bounded history of changes that watches resume from.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::object::{Kind, Object};
use crate::store::{ListOptions, Result, StoreError};

/// What a change did to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    /// The object was created.
    Added,
    /// The object was written.
    Modified,
    /// The object was removed.
    Deleted,
}

/// One committed write, shared by the history and every watcher it is delivered to.
#[derive(Clone, Debug)]
pub struct Change {
    /// The resourceVersion the write produced.
    pub rv: u64,
    /// What happened.
    pub kind: ChangeType,
    /// The object after the write (for a delete: its last state, carrying `rv`).
    pub object: Arc<Object>,
    /// The object before a modification: a watcher whose selector matched it but no longer
    /// matches sees a delete, one that starts to match sees an add.
    pub prev: Option<Arc<Object>>,
}

/// The `spec.nodeName` of a pod ("" when unbound), `None` for other kinds.
pub fn pod_node(object: &Object) -> Option<&str> {
    match object {
        Object::Pod(p) => Some(
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or(""),
        ),
        _ => None,
    }
}

type Key = (String, String);

/// Every object of one kind plus its history.
#[derive(Debug)]
pub struct KindObjects {
    /// namespace ("" for cluster-scoped) → name → object.
    objects: BTreeMap<String, BTreeMap<String, Arc<Object>>>,
    /// Pods only: node name ("" when unbound) → (namespace, name) → pod.
    by_node: Option<HashMap<String, BTreeMap<Key, Arc<Object>>>>,
    len: usize,
    history: VecDeque<Change>,
    history_cap: usize,
    /// The resourceVersion of the newest change dropped from the history: a watch must start
    /// at or after it.
    compacted: u64,
}

impl KindObjects {
    /// An empty set of objects of `kind` keeping `history_cap` changes.
    pub fn new(kind: &Kind, history_cap: usize) -> KindObjects {
        KindObjects {
            objects: BTreeMap::new(),
            by_node: (*kind == Kind::Pod).then(HashMap::new),
            len: 0,
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            compacted: 0,
        }
    }

    /// How many objects are stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// One object.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<&Arc<Object>> {
        self.objects.get(namespace.unwrap_or(""))?.get(name)
    }

    /// Applies a committed change to the indexes and appends it to the history.
    pub fn apply(&mut self, change: Change) {
        let object = &change.object;
        let ns = object.namespace().unwrap_or("").to_string();
        let name = object.name().to_string();
        if let (Some(by_node), Some(prev)) = (&mut self.by_node, &change.prev) {
            let prev_node = pod_node(prev).unwrap_or("");
            if change.kind == ChangeType::Deleted || pod_node(object) != Some(prev_node) {
                if let Some(pods) = by_node.get_mut(prev_node) {
                    pods.remove(&(ns.clone(), name.clone()));
                    if pods.is_empty() {
                        by_node.remove(prev_node);
                    }
                }
            }
        }
        match change.kind {
            ChangeType::Deleted => {
                if let Some(names) = self.objects.get_mut(&ns) {
                    if names.remove(&name).is_some() {
                        self.len -= 1;
                    }
                    if names.is_empty() {
                        self.objects.remove(&ns);
                    }
                }
            }
            ChangeType::Added | ChangeType::Modified => {
                if let Some(by_node) = &mut self.by_node {
                    let node = pod_node(object).unwrap_or("").to_string();
                    by_node
                        .entry(node)
                        .or_default()
                        .insert((ns.clone(), name.clone()), object.clone());
                }
                let names = self.objects.entry(ns).or_default();
                if names.insert(name, object.clone()).is_none() {
                    self.len += 1;
                }
            }
        }
        if self.history.len() == self.history_cap {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        self.history.push_back(change);
    }

    /// The objects matching `options` (whose namespace, if any, is already normalized for the
    /// kind's scope), sorted by namespace and name. Uses the narrowest index the selector allows.
    pub fn list(&self, options: &ListOptions) -> Vec<Arc<Object>> {
        let fields = options.fields.as_ref();
        let namespace = options
            .namespace
            .as_deref()
            .or_else(|| fields.and_then(|f| f.required_value("metadata.namespace")));
        let name = fields.and_then(|f| f.required_value("metadata.name"));
        let node = fields.and_then(|f| f.required_value("spec.nodeName"));
        let keep = |o: &&Arc<Object>| options.matches(o);
        if let (Some(by_node), Some(node)) = (&self.by_node, node) {
            return by_node
                .get(node)
                .into_iter()
                .flat_map(|pods| pods.values())
                .filter(keep)
                .cloned()
                .collect();
        }
        if let Some(name) = name {
            let found: Vec<Arc<Object>> = match namespace {
                Some(ns) => self
                    .get(Some(ns), name)
                    .into_iter()
                    .filter(keep)
                    .cloned()
                    .collect(),
                None => self
                    .objects
                    .values()
                    .filter_map(|names| names.get(name))
                    .filter(keep)
                    .cloned()
                    .collect(),
            };
            return found;
        }
        match namespace {
            Some(ns) => self
                .objects
                .get(ns)
                .into_iter()
                .flat_map(|names| names.values())
                .filter(keep)
                .cloned()
                .collect(),
            None => self
                .objects
                .values()
                .flat_map(|names| names.values())
                .filter(keep)
                .cloned()
                .collect(),
        }
    }

    /// The retained changes after `rv`, oldest first, or `Expired` when some were dropped.
    pub fn changes_after(&self, rv: u64) -> Result<impl Iterator<Item = &Change>> {
        if rv < self.compacted {
            return Err(StoreError::Expired {
                requested: rv,
                oldest: self.compacted,
            });
        }
        let start = self.history.partition_point(|c| c.rv <= rv);
        Ok(self.history.range(start..))
    }
}

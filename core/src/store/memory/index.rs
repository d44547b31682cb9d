//! The objects of one kind, indexed for the reads the cluster makes most: by namespace (a
//! two-level ordered map, so a list comes out sorted by namespace and name), by name, and pods
//! by `spec.nodeName` (what every node agent and the scheduler select on); plus the kind's
//! bounded history of changes that watches resume from.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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

/// An interned (namespace, name) pair: the node index shares the map's key allocations.
type Key = (Arc<str>, Arc<str>);

/// The objects of one namespace: hashed for point reads, with the names kept in order for
/// lists.
#[derive(Debug, Default)]
struct Names {
    objects: HashMap<Arc<str>, Arc<Object>>,
    order: BTreeSet<Arc<str>>,
}

impl Names {
    fn ordered(&self) -> impl Iterator<Item = &Arc<Object>> {
        self.order.iter().filter_map(|name| self.objects.get(name))
    }
}

/// Every object of one kind plus its history.
#[derive(Debug)]
pub struct KindObjects {
    /// namespace ("" for cluster-scoped) → its objects.
    namespaces: BTreeMap<Arc<str>, Names>,
    /// Pods only: node name ("" when unbound) → the pods on it. Only a create, a delete or a
    /// change of node touches it.
    by_node: Option<HashMap<String, BTreeSet<Key>>>,
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
            namespaces: BTreeMap::new(),
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
        self.namespaces
            .get(namespace.unwrap_or(""))?
            .objects
            .get(name)
    }

    /// Applies a committed change to the indexes and appends it to the history.
    pub fn apply(&mut self, change: Change) {
        let object = &change.object;
        let ns = object.namespace().unwrap_or("");
        let name = object.name();
        let old_node = change.prev.as_deref().and_then(pod_node);
        let new_node = match change.kind {
            ChangeType::Deleted => None,
            ChangeType::Added | ChangeType::Modified => pod_node(object),
        };
        let ns_key = match self.namespaces.get_key_value(ns) {
            Some((key, _)) => key.clone(),
            None => Arc::from(ns),
        };
        let names = self.namespaces.entry(ns_key.clone()).or_default();
        let name_key = match names.objects.get_key_value(name) {
            Some((key, _)) => key.clone(),
            None => Arc::from(name),
        };
        match change.kind {
            ChangeType::Deleted => {
                if names.objects.remove(name).is_some() {
                    names.order.remove(name);
                    self.len -= 1;
                }
                if names.objects.is_empty() {
                    self.namespaces.remove(ns);
                }
            }
            ChangeType::Added | ChangeType::Modified => {
                if names
                    .objects
                    .insert(name_key.clone(), object.clone())
                    .is_none()
                {
                    names.order.insert(name_key.clone());
                    self.len += 1;
                }
            }
        }
        if let Some(by_node) = self.by_node.as_mut().filter(|_| old_node != new_node) {
            let key = (ns_key, name_key);
            if let Some(old) = old_node {
                if let Some(pods) = by_node.get_mut(old) {
                    pods.remove(&key);
                    if pods.is_empty() {
                        by_node.remove(old);
                    }
                }
            }
            if let Some(new) = new_node {
                by_node.entry(new.to_string()).or_default().insert(key);
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
                .flatten()
                .filter_map(|(ns, name)| self.get(Some(ns), name))
                .filter(keep)
                .cloned()
                .collect();
        }
        if let Some(name) = name {
            return match namespace {
                Some(ns) => self
                    .get(Some(ns), name)
                    .into_iter()
                    .filter(keep)
                    .cloned()
                    .collect(),
                None => self
                    .namespaces
                    .values()
                    .filter_map(|names| names.objects.get(name))
                    .filter(keep)
                    .cloned()
                    .collect(),
            };
        }
        match namespace {
            Some(ns) => self
                .namespaces
                .get(ns)
                .into_iter()
                .flat_map(Names::ordered)
                .filter(keep)
                .cloned()
                .collect(),
            None => self
                .namespaces
                .values()
                .flat_map(Names::ordered)
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

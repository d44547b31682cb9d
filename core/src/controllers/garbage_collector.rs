//! The garbage collector: deletes objects whose owners are gone, and carries out the
//! Foreground and Orphan deletion propagation the store starts.
//!
//! It keeps a graph of every object's ownerReferences by uid (fed by the shared informers of
//! all built-in kinds) and processes uids from a work queue:
//!
//! - **Background** (the store deleted the owner at once): when an owner disappears, each
//!   dependent is checked; if none of its owners exists any more (verified with a fresh read
//!   of the store, so a stale cache never causes a delete), the dependent is deleted.
//!   Owners that are gone are removed from a dependent that still has a live owner.
//! - **Foreground** (the owner carries the `foregroundDeletion` finalizer and a
//!   deletionTimestamp): every dependent is deleted — itself in the foreground when it has
//!   dependents — and the finalizer comes off once no dependent with `blockOwnerDeletion`
//!   remains, which lets the store remove the owner.
//! - **Orphan** (the `orphan` finalizer): the owner's ownerReferences are removed from every
//!   dependent, then the finalizer.
//!
//! Owners must be in the dependent's namespace or cluster-scoped; a reference to a kind Wharf
//! does not know is treated as a live owner (nothing is deleted on a guess).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::controller::{Action, CacheEvent, CancellationToken, Context, ControllerError, Metrics};
use crate::object::{Kind, Object};
use crate::store::{DeleteOptions, Propagation, StoreError};

/// Finalizer of an owner whose dependents are deleted before it.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer of an owner whose dependents are orphaned before it goes.
pub const ORPHAN_FINALIZER: &str = "orphan";

#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    foreground: bool,
    orphan: bool,
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    /// Records `object`; returns the uids to process.
    fn apply(&mut self, object: &Object) -> Vec<String> {
        let meta = object.meta();
        let has = |f: &str| meta.finalizers.iter().flatten().any(|x| x == f);
        // Nothing this collector decides on changed (a status update, most events): the graph
        // stays, and there is nothing to process, since the owners' existence changes only
        // through their own events, which process their dependents.
        if let Some(old) = self.nodes.get(object.uid()) {
            let unchanged = old.owners == meta.owner_references.as_deref().unwrap_or_default()
                && old.deleting == meta.deletion_timestamp.is_some()
                && old.foreground == has(FOREGROUND_FINALIZER)
                && old.orphan == has(ORPHAN_FINALIZER);
            if unchanged {
                return Vec::new();
            }
        }
        let uid = object.uid().to_string();
        let node = Node {
            kind: object.kind(),
            namespace: object.namespace().map(str::to_string),
            name: object.name().to_string(),
            owners: meta.owner_references.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            foreground: has(FOREGROUND_FINALIZER),
            orphan: has(ORPHAN_FINALIZER),
        };
        let mut work = Vec::new();
        if let Some(old) = self.nodes.get(&uid) {
            for r in &old.owners {
                if let Some(set) = self.dependents.get_mut(&r.uid) {
                    set.remove(&uid);
                }
            }
        }
        for r in &node.owners {
            self.dependents
                .entry(r.uid.clone())
                .or_default()
                .insert(uid.clone());
            // An owner in foreground (or orphan) deletion waits for this dependent; other
            // owners have nothing to do when a dependent changes, and processing them on
            // every dependent's event would cost their number of dependents each time.
            if self.waits_for_dependents(&r.uid) {
                work.push(r.uid.clone());
            }
        }
        if !node.owners.is_empty() || (node.deleting && (node.foreground || node.orphan)) {
            work.push(uid.clone());
        }
        self.nodes.insert(uid, node);
        work
    }

    /// Forgets `object`; returns the uids to process (its dependents and its owners).
    fn remove(&mut self, object: &Object) -> Vec<String> {
        let uid = object.uid();
        let mut work: Vec<String> = self
            .dependents
            .get(uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        if let Some(node) = self.nodes.remove(uid) {
            for r in &node.owners {
                if let Some(set) = self.dependents.get_mut(&r.uid) {
                    set.remove(uid);
                    if set.is_empty() {
                        self.dependents.remove(&r.uid);
                    }
                }
                if self.waits_for_dependents(&r.uid) {
                    work.push(r.uid.clone());
                }
            }
        }
        work
    }

    /// Whether the object `uid` is being deleted in the foreground or with orphaning, so that
    /// a change to one of its dependents may let it finish.
    fn waits_for_dependents(&self, uid: &str) -> bool {
        self.nodes
            .get(uid)
            .is_some_and(|n| n.deleting && (n.foreground || n.orphan))
    }
}

/// The garbage collector. Run it with [`GarbageCollector::run`].
pub struct GarbageCollector {
    graph: Arc<Mutex<Graph>>,
    metrics: Arc<Metrics>,
    kinds: Vec<Kind>,
}

impl Default for GarbageCollector {
    fn default() -> Self {
        GarbageCollector::new()
    }
}

impl GarbageCollector {
    /// A collector over every built-in kind.
    pub fn new() -> GarbageCollector {
        GarbageCollector {
            graph: Arc::default(),
            metrics: Arc::default(),
            kinds: Kind::BUILTIN.to_vec(),
        }
    }

    /// The collector's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown`.
    pub async fn run(self, ctx: Context, shutdown: CancellationToken) {
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        let mut feeds = JoinSet::new();
        let mut informers = Vec::new();
        for kind in &self.kinds {
            let informer = ctx.informers.get(kind);
            let mut events = informer.subscribe();
            informers.push(informer);
            let (graph, tx) = (self.graph.clone(), tx.clone());
            feeds.spawn(async move {
                while let Some(event) = events.recv().await {
                    let work = {
                        let mut graph = graph.lock().expect("gc graph");
                        match &event {
                            CacheEvent::Applied { new, .. } => graph.apply(new),
                            CacheEvent::Deleted(old) => graph.remove(old),
                        }
                    };
                    for uid in work {
                        if tx.send(uid).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);
        for informer in &informers {
            tokio::select! {
                _ = shutdown.cancelled() => { feeds.abort_all(); return; }
                _ = informer.wait_synced() => {}
            }
        }
        let settings = crate::controller::queue_settings(20);
        let graph = self.graph.clone();
        crate::controller::run_queue(
            rx,
            settings,
            &self.metrics.clone(),
            shutdown,
            move |uid: String| {
                let (graph, ctx, metrics) = (graph.clone(), ctx.clone(), self.metrics.clone());
                async move {
                    let started = tokio::time::Instant::now();
                    let result = process(&graph, &ctx, &uid).await;
                    metrics.finished(started.elapsed(), result.is_err());
                    match result {
                        Ok(()) => crate::controller::Outcome::Success(Action::AwaitChange),
                        Err(error) => {
                            tracing::debug!(%uid, %error, "garbage collection failed; retrying");
                            crate::controller::Outcome::Failure(Action::Backoff)
                        }
                    }
                }
            },
        )
        .await;
        feeds.abort_all();
    }
}

fn snapshot(graph: &Mutex<Graph>, uid: &str) -> Option<(Node, Vec<(String, Node)>)> {
    let graph = graph.lock().expect("gc graph");
    let node = graph.nodes.get(uid)?.clone();
    // Only foreground and orphan deletion look at the dependents: do not copy them otherwise.
    if !(node.deleting && (node.foreground || node.orphan)) {
        return Some((node, Vec::new()));
    }
    let dependents = graph
        .dependents
        .get(uid)
        .into_iter()
        .flatten()
        .filter_map(|d| Some((d.clone(), graph.nodes.get(d)?.clone())))
        .collect();
    Some((node, dependents))
}

async fn process(graph: &Mutex<Graph>, ctx: &Context, uid: &str) -> Result<(), ControllerError> {
    let Some((node, dependents)) = snapshot(graph, uid) else {
        return Ok(());
    };
    if node.deleting && node.foreground {
        return process_foreground(graph, ctx, uid, &node, &dependents).await;
    }
    if node.deleting && node.orphan {
        return process_orphan(ctx, uid, &node, &dependents).await;
    }
    if !node.owners.is_empty() && !node.deleting {
        attempt_to_delete(graph, ctx, uid, &node).await?;
    }
    Ok(())
}

enum OwnerState {
    /// Exists and is not waiting for its dependents.
    Solid,
    /// Exists, in foreground deletion.
    Waiting,
    /// Does not exist (or has another uid).
    Absent,
}

async fn owner_state(
    graph: &Mutex<Graph>,
    ctx: &Context,
    dependent: &Node,
    owner: &OwnerReference,
) -> Result<OwnerState, ControllerError> {
    let Some(kind) = Kind::builtin(&owner.api_version, &owner.kind) else {
        return Ok(OwnerState::Solid);
    };
    let namespace = if kind.is_namespaced() {
        match &dependent.namespace {
            Some(ns) => Some(ns.as_str()),
            // A cluster-scoped object cannot be owned by a namespaced one; leave it alone.
            None => return Ok(OwnerState::Solid),
        }
    } else {
        None
    };
    if let Some(n) = graph.lock().expect("gc graph").nodes.get(&owner.uid) {
        if n.deleting && n.foreground {
            return Ok(OwnerState::Waiting);
        }
        return Ok(OwnerState::Solid);
    }
    // Not in the cache: confirm with the store before acting on it.
    match ctx.store.get(&kind, namespace, &owner.name).await {
        Ok(o) if o.uid() == owner.uid => {
            let waiting = o.meta().deletion_timestamp.is_some()
                && o.meta()
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == FOREGROUND_FINALIZER);
            Ok(if waiting {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            })
        }
        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(OwnerState::Absent),
        Err(e) => Err(ControllerError::Store {
            operation: "look up owner of",
            kind: dependent.kind.name().to_string(),
            object: node_name(dependent),
            source: Box::new(e),
        }),
    }
}

fn node_name(node: &Node) -> String {
    match &node.namespace {
        Some(ns) => format!("{ns}/{}", node.name),
        None => node.name.clone(),
    }
}

async fn attempt_to_delete(
    graph: &Mutex<Graph>,
    ctx: &Context,
    uid: &str,
    node: &Node,
) -> Result<(), ControllerError> {
    let mut absent = Vec::new();
    let mut solid = 0;
    let mut waiting = 0;
    for owner in &node.owners {
        match owner_state(graph, ctx, node, owner).await? {
            OwnerState::Solid => solid += 1,
            OwnerState::Waiting => waiting += 1,
            OwnerState::Absent => absent.push(owner.uid.clone()),
        }
    }
    if solid > 0 {
        if !absent.is_empty() {
            // Drop references to owners that are gone; the live owner keeps the object.
            update_object(ctx, node, uid, |o| {
                if let Some(refs) = o.meta_mut().owner_references.as_mut() {
                    refs.retain(|r| !absent.contains(&r.uid));
                }
            })
            .await?;
        }
        return Ok(());
    }
    let has_dependents = graph
        .lock()
        .expect("gc graph")
        .dependents
        .get(uid)
        .is_some_and(|d| !d.is_empty());
    let propagation = if waiting > 0 && has_dependents {
        Propagation::Foreground
    } else if node.orphan {
        Propagation::Orphan
    } else {
        Propagation::Background
    };
    delete_node(ctx, node, uid, propagation).await
}

async fn process_foreground(
    graph: &Mutex<Graph>,
    ctx: &Context,
    uid: &str,
    node: &Node,
    dependents: &[(String, Node)],
) -> Result<(), ControllerError> {
    let mut blocking = 0;
    for (dep_uid, dep) in dependents {
        let blocks = dep
            .owners
            .iter()
            .any(|r| r.uid == uid && r.block_owner_deletion == Some(true));
        if blocks {
            blocking += 1;
        }
        if !dep.deleting {
            let has_dependents = graph
                .lock()
                .expect("gc graph")
                .dependents
                .get(dep_uid)
                .is_some_and(|d| !d.is_empty());
            let propagation = if has_dependents {
                Propagation::Foreground
            } else {
                Propagation::Background
            };
            delete_node(ctx, dep, dep_uid, propagation).await?;
        }
    }
    if blocking == 0 {
        remove_finalizer(ctx, node, uid, FOREGROUND_FINALIZER).await?;
    }
    Ok(())
}

async fn process_orphan(
    ctx: &Context,
    uid: &str,
    node: &Node,
    dependents: &[(String, Node)],
) -> Result<(), ControllerError> {
    for (dep_uid, dep) in dependents {
        update_object(ctx, dep, dep_uid, |o| {
            if let Some(refs) = o.meta_mut().owner_references.as_mut() {
                refs.retain(|r| r.uid != uid);
                if refs.is_empty() {
                    o.meta_mut().owner_references = None;
                }
            }
        })
        .await?;
    }
    remove_finalizer(ctx, node, uid, ORPHAN_FINALIZER).await
}

async fn delete_node(
    ctx: &Context,
    node: &Node,
    uid: &str,
    propagation: Propagation,
) -> Result<(), ControllerError> {
    tracing::debug!(kind = %node.kind, object = %node_name(node), ?propagation, "garbage collecting");
    let options = DeleteOptions {
        propagation,
        precondition_uid: Some(uid.to_string()),
        ..Default::default()
    };
    match ctx
        .store
        .delete(&node.kind, node.namespace.as_deref(), &node.name, &options)
        .await
    {
        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(ControllerError::Store {
            operation: "garbage-collect",
            kind: node.kind.name().to_string(),
            object: node_name(node),
            source: Box::new(e),
        }),
    }
}

/// Reads the object fresh, applies `change` and writes it back (a conflict is retried by the
/// queue). Does nothing if the object is gone or was replaced.
async fn update_object(
    ctx: &Context,
    node: &Node,
    uid: &str,
    change: impl FnOnce(&mut Object),
) -> Result<(), ControllerError> {
    let current = match ctx
        .store
        .get(&node.kind, node.namespace.as_deref(), &node.name)
        .await
    {
        Ok(o) if o.uid() == uid => o,
        Ok(_) | Err(StoreError::NotFound { .. }) => return Ok(()),
        Err(e) => {
            return Err(ControllerError::Store {
                operation: "read",
                kind: node.kind.name().to_string(),
                object: node_name(node),
                source: Box::new(e),
            })
        }
    };
    let mut updated = (*current).clone();
    change(&mut updated);
    if updated == *current {
        return Ok(());
    }
    match ctx.store.update(updated).await {
        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(ControllerError::store("update", &current, e)),
    }
}

async fn remove_finalizer(
    ctx: &Context,
    node: &Node,
    uid: &str,
    finalizer: &str,
) -> Result<(), ControllerError> {
    update_object(ctx, node, uid, |o| {
        if let Some(f) = o.meta_mut().finalizers.as_mut() {
            f.retain(|x| x != finalizer);
        }
    })
    .await
}

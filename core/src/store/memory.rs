//! [`MemoryStore`]: the embedded [`Store`], keeping every object in memory.
//!
//! One lock guards the objects and the resourceVersion counter: reads (get, list, starting a
//! watch) share it, writes take it exclusively, apply the API server's metadata rules (module
//! `meta`) and update the per-kind indexes and history (module `index`). A write then takes
//! the watcher registry's lock before releasing the state's and hands the change to the
//! watchers that may match it (module `watch`), so every watcher sees changes in
//! resourceVersion order while readers are already served. Nothing in here awaits while
//! holding a lock, and delivering an event never blocks a writer: a watcher whose queue is
//! full is dropped with [`StoreError::WatchLagged`].
//!
//! Custom kinds: the scope of a [`DynamicObject`](crate::object::DynamicObject) is taken from
//! its `metadata.namespace`, so address a namespaced custom kind with a namespace always.
//!
//! Objects are stored as `Arc<Object>` and never mutated in place: a write builds a new
//! object; lists, watch events and the history share the stored ones.

mod index;
mod meta;
mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use async_trait::async_trait;

use self::index::{Change, ChangeType, KindObjects};
use self::watch::{event_for, MemoryWatch, Registry, Route};
use crate::clock::Clock;
use crate::object::{Kind, Object};
use crate::store::{
    DeleteOptions, Deleted, ListOptions, ObjectList, PodBinding, Result, Store, StoreError,
    WatchEvent, WatchOptions, WatchStream,
};

pub use self::meta::{
    DEFAULT_POD_GRACE_SECONDS, FOREGROUND_FINALIZER, NAMESPACE_FINALIZER, ORPHAN_FINALIZER,
};

/// Tuning of a [`MemoryStore`].
#[derive(Clone, Debug)]
pub struct MemoryStoreOptions {
    /// The clock for creationTimestamp and deletionTimestamp.
    pub clock: Clock,
    /// Changes kept per kind for watches that resume from a resourceVersion; an older
    /// resourceVersion gets [`StoreError::Expired`]. Default 10,000.
    pub history_per_kind: usize,
    /// Events a watcher may have queued before it is dropped with
    /// [`StoreError::WatchLagged`]. Default 100,000.
    pub watch_buffer: usize,
    /// How often an idle watcher that asked for bookmarks gets one. Default 60 s.
    pub bookmark_interval: Duration,
}

impl Default for MemoryStoreOptions {
    fn default() -> Self {
        MemoryStoreOptions {
            clock: Clock::new(),
            history_per_kind: 10_000,
            watch_buffer: 100_000,
            bookmark_interval: Duration::from_secs(60),
        }
    }
}

/// The in-memory [`Store`]. Cheap to clone (clones share the objects).
///
/// ```
/// # use std::sync::Arc;
/// # use wharf_core::store::{memory::MemoryStore, Store};
/// # use wharf_core::{Kind, Object};
/// # use k8s_openapi::api::core::v1::Namespace;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let mut ns = Namespace::default();
/// ns.metadata.name = Some("team-a".into());
/// let created = store.create(Object::from(ns)).await.unwrap();
/// assert_eq!(created.meta().generation, Some(1));
/// assert_eq!(store.get(&Kind::Namespace, None, "team-a").await.unwrap(), created);
/// # });
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: RwLock<State>,
    watchers: Mutex<Registry>,
    /// The resourceVersion of the last write whose events are queued to every watcher.
    published: Arc<AtomicU64>,
    rng: meta::Rng,
    options: MemoryStoreOptions,
}

#[derive(Default)]
struct State {
    rv: u64,
    kinds: HashMap<Kind, KindObjects>,
}

impl State {
    fn get(&self, kind: &Kind, namespace: Option<&str>, name: &str) -> Option<&Arc<Object>> {
        self.kinds.get(kind)?.get(namespace, name)
    }
}

impl Shared {
    // A panic while holding a lock cannot leave the state half-written (writes are built
    // aside and applied without fallible steps), so a poisoned lock is still usable.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn watchers(&self) -> MutexGuard<'_, Registry> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stamps `object` with the next resourceVersion, stores it, records the change and
    /// queues it to the watchers. The watcher registry is locked before the state is
    /// released, so deliveries keep resourceVersion order while readers already see the write.
    fn commit(
        &self,
        mut state: RwLockWriteGuard<'_, State>,
        kind: &Kind,
        change: ChangeType,
        mut object: Object,
        prev: Option<Arc<Object>>,
    ) -> Arc<Object> {
        state.rv += 1;
        let rv = state.rv;
        object.meta_mut().resource_version = Some(rv.to_string());
        let object = Arc::new(object);
        let change = Change {
            rv,
            kind: change,
            object: object.clone(),
            prev,
        };
        let history = self.options.history_per_kind;
        state
            .kinds
            .entry(kind.clone())
            .or_insert_with(|| KindObjects::new(kind, history))
            .apply(change.clone());
        let mut watchers = self.watchers();
        drop(state);
        watchers.dispatch(kind, &change);
        self.published.store(rv, Ordering::Release);
        drop(watchers);
        tracing::trace!(%kind, object = %object.display_name(), rv, "store write");
        object
    }
}

/// The selector with the namespace dropped for cluster-scoped kinds.
fn scoped(kind: &Kind, selector: &ListOptions) -> ListOptions {
    let mut selector = selector.clone();
    if !kind.is_namespaced() {
        selector.namespace = None;
    }
    selector
}

fn conflict(expected: &str, stored: &Object) -> StoreError {
    StoreError::Conflict {
        kind: stored.kind().name().to_string(),
        namespace: stored.namespace().map(str::to_string),
        name: stored.name().to_string(),
        expected: expected.to_string(),
        actual: stored.meta().resource_version.clone().unwrap_or_default(),
    }
}

impl MemoryStore {
    /// An empty store with default options and a clock reading the wall time.
    pub fn new() -> MemoryStore {
        MemoryStore::with_options(MemoryStoreOptions::default())
    }

    /// An empty store whose timestamps come from `clock` (e.g. one following tokio's paused
    /// clock in tests).
    pub fn with_clock(clock: Clock) -> MemoryStore {
        MemoryStore::with_options(MemoryStoreOptions {
            clock,
            ..Default::default()
        })
    }

    /// An empty store with these options.
    pub fn with_options(options: MemoryStoreOptions) -> MemoryStore {
        MemoryStore {
            shared: Arc::new(Shared {
                state: RwLock::new(State::default()),
                watchers: Mutex::new(Registry::default()),
                published: Arc::new(AtomicU64::new(0)),
                rng: meta::Rng::new(),
                options,
            }),
        }
    }

    /// How many objects of `kind` are stored.
    pub fn count(&self, kind: &Kind) -> usize {
        self.shared
            .read()
            .kinds
            .get(kind)
            .map_or(0, KindObjects::len)
    }

    /// How many watches are open (their streams not yet dropped or ended by lag).
    pub fn watcher_count(&self) -> usize {
        self.shared.watchers().len()
    }

    fn not_found(kind: &Kind, namespace: Option<&str>, name: &str) -> StoreError {
        StoreError::not_found(kind, namespace, name)
    }

    /// `update` and `update_status`: the stored object with the writable part of `object`.
    fn write_existing(&self, mut object: Object, status_only: bool) -> Result<Arc<Object>> {
        let kind = object.kind();
        let name = object.name().to_string();
        if name.is_empty() {
            return Err(StoreError::Invalid {
                kind: kind.name().to_string(),
                name,
                field: "metadata.name".into(),
                message: "name is required".into(),
            });
        }
        let namespace = meta::namespace_for(&kind, object.namespace(), &name)?;
        let shared = &self.shared;
        let state = shared.write();
        let old = state
            .get(&kind, namespace.as_deref(), &name)
            .cloned()
            .ok_or_else(|| Self::not_found(&kind, namespace.as_deref(), &name))?;
        if let Some(rv) = object
            .meta()
            .resource_version
            .as_deref()
            .filter(|rv| !rv.is_empty())
        {
            if Some(rv) != old.meta().resource_version.as_deref() {
                return Err(conflict(rv, &old));
            }
        }
        if status_only {
            meta::check_uid(&kind, old.meta(), object.meta())?;
            // Metadata and spec are the stored ones, so the status decides whether anything
            // changed, and a status write never finalizes an object.
            return match meta::with_status(&old, object) {
                Some(Some(new)) => {
                    Ok(shared.commit(state, &kind, ChangeType::Modified, new, Some(old)))
                }
                // Nothing changed: no new resourceVersion and no event, as the API server does.
                Some(None) => Ok(old),
                None => Err(StoreError::Invalid {
                    kind: kind.name().to_string(),
                    name,
                    field: "status".into(),
                    message: format!("{kind} has no status"),
                }),
            };
        }
        let new = {
            meta::merge_update_meta(&kind, old.meta(), object.meta_mut())?;
            meta::keep_namespace_finalizers(&old, &mut object);
            meta::copy_status(&old, &mut object);
            if meta::content_changed(&old, &mut object) {
                let generation = old.meta().generation.unwrap_or(0) + 1;
                object.meta_mut().generation = Some(generation);
            }
            object
        };
        if new == *old {
            // Nothing changed: no new resourceVersion and no event, as the API server does.
            return Ok(old);
        }
        if meta::finalized(&old, &new) {
            return Ok(shared.commit(state, &kind, ChangeType::Deleted, new, Some(old)));
        }
        Ok(shared.commit(state, &kind, ChangeType::Modified, new, Some(old)))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

/// Tries before a create with `generateName` gives up on finding a free name.
const GENERATE_NAME_TRIES: usize = 8;

#[async_trait]
impl Store for MemoryStore {
    async fn create(&self, mut object: Object) -> Result<Arc<Object>> {
        let kind = object.kind();
        let shared = &self.shared;
        let prefix = match object.meta().name.as_deref() {
            Some(name) if !name.is_empty() => None,
            _ => object
                .meta()
                .generate_name
                .clone()
                .filter(|p| !p.is_empty()),
        };
        if let Some(prefix) = &prefix {
            object.meta_mut().name = Some(shared.rng.generated_name(prefix));
        }
        meta::prepare_create(&mut object, &kind, &shared.rng, shared.options.clock.now())?;
        meta::prepare_namespace(&mut object);
        let state = shared.write();
        if let Some(ns) = object.namespace().filter(|_| kind.is_namespaced()) {
            let terminating = state
                .get(&Kind::Namespace, None, ns)
                .is_some_and(|n| n.meta().deletion_timestamp.is_some());
            if terminating {
                return Err(StoreError::NamespaceTerminating {
                    kind: kind.name().to_string(),
                    namespace: ns.to_string(),
                    name: object.name().to_string(),
                });
            }
        }
        let mut tries = 1;
        while state
            .get(&kind, object.namespace(), object.name())
            .is_some()
        {
            match &prefix {
                Some(prefix) if tries < GENERATE_NAME_TRIES => {
                    object.meta_mut().name = Some(shared.rng.generated_name(prefix));
                    tries += 1;
                }
                _ => {
                    return Err(StoreError::AlreadyExists {
                        kind: kind.name().to_string(),
                        namespace: object.namespace().map(str::to_string),
                        name: object.name().to_string(),
                    })
                }
            }
        }
        Ok(shared.commit(state, &kind, ChangeType::Added, object, None))
    }

    async fn get(&self, kind: &Kind, namespace: Option<&str>, name: &str) -> Result<Arc<Object>> {
        let namespace = meta::address_namespace(kind, namespace, name)?;
        self.shared
            .read()
            .get(kind, namespace, name)
            .cloned()
            .ok_or_else(|| Self::not_found(kind, namespace, name))
    }

    async fn list(&self, kind: &Kind, options: &ListOptions) -> Result<ObjectList> {
        let options = scoped(kind, options);
        let state = self.shared.read();
        Ok(ObjectList {
            items: state
                .kinds
                .get(kind)
                .map(|k| k.list(&options))
                .unwrap_or_default(),
            resource_version: state.rv,
        })
    }

    async fn update(&self, object: Object) -> Result<Arc<Object>> {
        self.write_existing(object, false)
    }

    async fn update_status(&self, object: Object) -> Result<Arc<Object>> {
        self.write_existing(object, true)
    }

    async fn delete(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deleted> {
        let namespace = meta::address_namespace(kind, namespace, name)?;
        let shared = &self.shared;
        let state = shared.write();
        let old = state
            .get(kind, namespace, name)
            .cloned()
            .ok_or_else(|| Self::not_found(kind, namespace, name))?;
        if let Some(uid) = &options.precondition_uid {
            // The object the caller meant is gone (this one is a newer object of that name).
            if uid != old.uid() {
                return Err(Self::not_found(kind, namespace, name));
            }
        }
        if let Some(rv) = &options.precondition_resource_version {
            if Some(rv.as_str()) != old.meta().resource_version.as_deref() {
                return Err(conflict(rv, &old));
            }
        }
        let now = shared.options.clock.now();
        let grace = meta::grace_period(&old, options.grace_period_seconds);
        let mut new = Object::clone(&old);
        let m = new.meta_mut();
        let mut changed = false;
        if let Some(finalizer) = meta::propagation_finalizer(options.propagation) {
            let finalizers = m.finalizers.get_or_insert_with(Vec::new);
            if !finalizers.iter().any(|f| f == finalizer) {
                finalizers.push(finalizer.to_string());
                changed = true;
            }
        }
        let finalizers =
            m.finalizers.as_ref().is_some_and(|f| !f.is_empty()) || meta::has_spec_finalizers(&old);
        let remaining = old.meta().deletion_grace_period_seconds;
        // A second delete may shorten a pod's grace period, never extend it.
        if remaining.is_none_or(|r| grace < r) {
            if grace == 0 && !finalizers {
                let gone = shared.commit(state, kind, ChangeType::Deleted, new, Some(old));
                return Ok(Deleted::Gone(gone));
            }
            meta::mark_deleted(m, now, grace);
            meta::mark_namespace_terminating(&mut new);
            changed = true;
        }
        if !changed {
            return Ok(Deleted::Marked(old));
        }
        let marked = shared.commit(state, kind, ChangeType::Modified, new, Some(old));
        Ok(Deleted::Marked(marked))
    }

    async fn watch(&self, kind: &Kind, options: &WatchOptions) -> Result<WatchStream> {
        let selector = scoped(kind, &options.selector);
        let route = Route::for_selector(kind, &selector);
        let shared = &self.shared;
        let state = shared.read();
        let objects = state.kinds.get(kind);
        let (initial, after) = match options.resource_version {
            Some(rv) => {
                let events = match objects {
                    Some(objects) => objects
                        .changes_after(rv)?
                        .filter_map(|c| event_for(&selector, c, &mut None))
                        .collect(),
                    None => Vec::new(),
                };
                (events, rv)
            }
            None => {
                let mut events: Vec<WatchEvent> = objects
                    .map(|k| k.list(&selector))
                    .unwrap_or_default()
                    .into_iter()
                    .map(WatchEvent::Added)
                    .collect();
                if options.bookmarks {
                    // Marks the end of the initial state, as `sendInitialEvents` does.
                    events.push(WatchEvent::Bookmark(state.rv));
                }
                (events, state.rv)
            }
        };
        let (id, rx, lagged) =
            shared
                .watchers()
                .register(kind, &route, selector, after, shared.options.watch_buffer);
        drop(state);
        Ok(Box::pin(MemoryWatch::new(
            initial,
            rx,
            lagged,
            shared,
            kind.clone(),
            route,
            id,
            options
                .bookmarks
                .then_some(shared.options.bookmark_interval),
        )))
    }

    async fn current_resource_version(&self) -> Result<u64> {
        Ok(self.shared.read().rv)
    }

    async fn kinds(&self) -> Result<Vec<Kind>> {
        let state = self.shared.read();
        let mut kinds = Kind::BUILTIN.to_vec();
        kinds.extend(
            state
                .kinds
                .keys()
                .filter(|k| matches!(k, Kind::Custom(_)))
                .cloned(),
        );
        Ok(kinds)
    }

    /// One write: the pod is copied once, given its node and condition, and committed as a
    /// single change (one resourceVersion, one event per watcher).
    async fn bind(&self, binding: &PodBinding) -> Result<Arc<Object>> {
        let shared = &self.shared;
        let state = shared.write();
        let old = state
            .get(&Kind::Pod, Some(&binding.namespace), &binding.name)
            .cloned()
            .ok_or_else(|| Self::not_found(&Kind::Pod, Some(&binding.namespace), &binding.name))?;
        let mut pod = binding.bound_spec(&old)?;
        binding.set_scheduled(&mut pod);
        // As an update of the spec would: the pod's content changed.
        pod.metadata.generation = Some(old.meta().generation.unwrap_or(0) + 1);
        Ok(shared.commit(
            state,
            &Kind::Pod,
            ChangeType::Modified,
            pod.into(),
            Some(old),
        ))
    }
}

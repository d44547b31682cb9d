//! Shared informers: one in-memory cache per kind, kept up to date by a list and a watch, that
//! every controller reads instead of listing the store, and that fans changes out to
//! subscribers.
//!
//! An informer lists its kind, then watches from the list's resourceVersion. When the watch
//! reports that its resourceVersion expired or that it fell behind, it lists again and emits
//! the difference, so subscribers never miss a change. Objects are kept as the store's
//! `Arc<Object>`: the cache costs a pointer per object.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::owned_pods::{OwnedPods, PodTally};
use super::ObjectKey;
use crate::controllers::pod_state::is_active;
use crate::object::{Kind, Object};
use crate::store::{
    Deleted, LabelSelector, ListOptions, Store, StoreError, WatchEvent, WatchOptions,
};

/// A change seen by an informer.
#[derive(Clone, Debug)]
pub enum CacheEvent {
    /// The object was added (`old` is `None`) or changed.
    Applied {
        /// The previous state, if the informer had one.
        old: Option<Arc<Object>>,
        /// The new state.
        new: Arc<Object>,
    },
    /// The object was removed; this is its last known state.
    Deleted(Arc<Object>),
}

struct CacheState {
    objects: BTreeMap<ObjectKey, Arc<Object>>,
    /// Objects by the uid of their controller owner (orphans under `""`), holding the objects
    /// themselves so that listing a controller's dependents does no lookup per object.
    by_controller: HashMap<String, BTreeMap<ObjectKey, Arc<Object>>>,
    /// Pod informer only: the tally of each ReplicaSet's pods (the only controller that reads
    /// one; other controllers' pods and orphans have none).
    tallies: Option<HashMap<String, PodTally>>,
    resource_version: u64,
}

impl CacheState {
    fn new(kind: &Kind) -> CacheState {
        CacheState {
            objects: BTreeMap::new(),
            by_controller: HashMap::new(),
            tallies: (*kind == Kind::Pod).then(HashMap::new),
            resource_version: 0,
        }
    }

    /// Counts `object` in (`add`) or out of its controller's tally.
    fn tally(&mut self, uid: &str, object: &Arc<Object>, add: bool) {
        let Some(tallies) = self.tallies.as_mut() else {
            return;
        };
        if uid.is_empty() || super::controller_of(object).is_none_or(|r| r.kind != "ReplicaSet") {
            return;
        }
        if add {
            match tallies.get_mut(uid) {
                Some(tally) => tally.apply(object, true),
                None => tallies
                    .entry(uid.to_string())
                    .or_default()
                    .apply(object, true),
            }
        } else if let Some(tally) = tallies.get_mut(uid) {
            tally.apply(object, false);
            if tally.is_empty() {
                tallies.remove(uid);
            }
        }
    }

    fn controller_uid(object: &Object) -> &str {
        super::controller_of(object).map_or("", |r| r.uid.as_str())
    }

    fn insert(&mut self, object: Arc<Object>) -> Option<Arc<Object>> {
        let key = ObjectKey::of(&object);
        // An update (the common case) replaces the values in place: no key is cloned and no
        // owner uid copied unless the object is new or changed hands.
        let old = match self.objects.get_mut(&key) {
            Some(slot) => Some(std::mem::replace(slot, object.clone())),
            None => self.objects.insert(key.clone(), object.clone()),
        };
        let uid = Self::controller_uid(&object);
        if let Some(old) = &old {
            let old_uid = Self::controller_uid(old);
            self.tally(old_uid, old, false);
            if old_uid != uid {
                self.unindex(&key, old_uid.to_string());
            }
        }
        self.tally(uid, &object, true);
        match self.by_controller.get_mut(uid) {
            Some(owned) => {
                owned.insert(key, object);
            }
            None => {
                let uid = uid.to_string();
                self.by_controller
                    .insert(uid, BTreeMap::from([(key, object)]));
            }
        }
        old
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Arc<Object>> {
        let old = self.objects.remove(key)?;
        let uid = Self::controller_uid(&old).to_string();
        self.tally(&uid, &old, false);
        self.unindex(key, uid);
        Some(old)
    }

    fn unindex(&mut self, key: &ObjectKey, uid: String) {
        if let Some(set) = self.by_controller.get_mut(&uid) {
            set.remove(key);
            if set.is_empty() {
                self.by_controller.remove(&uid);
            }
        }
    }
}

struct Inner {
    kind: Kind,
    state: RwLock<CacheState>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<CacheEvent>>>,
    synced: watch::Sender<bool>,
    /// Bumped after every applied change, to wake [`Informer::wait_observed`].
    changes: watch::Sender<u64>,
}

/// The cache of one kind. Cheap to clone.
#[derive(Clone)]
pub struct Informer {
    inner: Arc<Inner>,
}

impl Informer {
    /// Starts an informer for `kind` that runs until `shutdown`.
    pub fn start(store: Arc<dyn Store>, kind: Kind, shutdown: CancellationToken) -> Informer {
        let informer = Informer {
            inner: Arc::new(Inner {
                state: RwLock::new(CacheState::new(&kind)),
                kind,
                subscribers: Mutex::new(Vec::new()),
                synced: watch::channel(false).0,
                changes: watch::channel(0).0,
            }),
        };
        let this = informer.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = this.run(store) => {}
            }
        });
        informer
    }

    /// The kind this informer caches.
    pub fn kind(&self) -> &Kind {
        &self.inner.kind
    }

    /// Waits until the first list has been loaded.
    pub async fn wait_synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        // The sender lives as long as `self`, so this only ends when synced.
        let _ = rx.wait_for(|synced| *synced).await;
    }

    /// Whether the first list has been loaded.
    pub fn is_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// One object by key.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Object>> {
        self.read().objects.get(key).cloned()
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<Object>> {
        self.read().objects.values().cloned().collect()
    }

    /// The cached objects in `namespace`.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<Object>> {
        let lo = ObjectKey::namespaced(namespace, "");
        self.read()
            .objects
            .range(lo..)
            .take_while(|(k, _)| k.namespace.as_deref() == Some(namespace))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// The cached objects in `namespace` that match `options` (its namespace is ignored).
    pub fn select(&self, namespace: Option<&str>, options: &ListOptions) -> Vec<Arc<Object>> {
        let objects = match namespace {
            Some(ns) => self.list_namespace(ns),
            None => self.list(),
        };
        let mut options = options.clone();
        options.namespace = None;
        objects.into_iter().filter(|o| options.matches(o)).collect()
    }

    /// The objects whose controller owner has `uid`, plus, in `namespace`, the objects with no
    /// controller owner at all (candidates for adoption).
    pub fn owned_or_orphans(&self, uid: &str, namespace: Option<&str>) -> Vec<Arc<Object>> {
        let state = self.read();
        let owned = state.by_controller.get(uid).into_iter().flatten();
        let orphans = state
            .by_controller
            .get("")
            .into_iter()
            .flatten()
            .filter(|(k, _)| namespace.is_none() || k.namespace.as_deref() == namespace);
        owned.chain(orphans).map(|(_, o)| o.clone()).collect()
    }

    /// The objects whose controller owner has `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<Object>> {
        let state = self.read();
        state
            .by_controller
            .get(uid)
            .into_iter()
            .flat_map(|owned| owned.values().cloned())
            .collect()
    }

    /// How many objects whose controller owner has `uid` satisfy `predicate` (no list built).
    pub fn count_owned(&self, uid: &str, predicate: impl Fn(&Object) -> bool) -> usize {
        let state = self.read();
        state
            .by_controller
            .get(uid)
            .map_or(0, |owned| owned.values().filter(|o| predicate(o)).count())
    }

    /// The objects in `namespace` (every namespace when `None`) with no controller owner.
    pub fn orphans(&self, namespace: Option<&str>) -> Vec<Arc<Object>> {
        let state = self.read();
        let Some(orphans) = state.by_controller.get("") else {
            return Vec::new();
        };
        match namespace {
            None => orphans.values().cloned().collect(),
            Some(ns) => orphans
                .range(ObjectKey::namespaced(ns, "")..)
                .take_while(|(k, _)| k.namespace.as_deref() == Some(ns))
                .map(|(_, o)| o.clone())
                .collect(),
        }
    }

    /// Pod informer: what the pods whose controller, a ReplicaSet, has `uid` amount to at `now`, counting
    /// `fully_labeled` against `template_labels` and `available` with `min_ready_seconds`.
    /// Costs what changed recently, not the number of pods (see [`OwnedPods`]). Other
    /// informers report nothing.
    pub fn owned_pods(
        &self,
        uid: &str,
        template_labels: &BTreeMap<String, String>,
        min_ready_seconds: i32,
        now: SystemTime,
    ) -> OwnedPods {
        let state = self.read();
        let Some(tally) = state.tallies.as_ref().and_then(|t| t.get(uid)) else {
            return OwnedPods::default();
        };
        let (mut counts, labeled) = tally.counts(template_labels, min_ready_seconds, now);
        if labeled.is_none() {
            // Too many distinct label sets to count them one by one: look at the pods.
            counts.fully_labeled = state
                .by_controller
                .get(uid)
                .into_iter()
                .flat_map(|owned| owned.values())
                .filter_map(|o| o.as_kind::<Pod>())
                .filter(|p| is_active(p))
                .filter(|p| {
                    let labels = p.metadata.labels.as_ref();
                    template_labels
                        .iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
                })
                .count();
        }
        counts
    }

    /// Whether an object controlled by `uid`, not being deleted, has labels that `selector`
    /// does not match (one that a claim would release). For pods this is answered from the
    /// tally's label sets; otherwise the owned objects are looked at.
    pub fn has_unmatched(&self, uid: &str, selector: &LabelSelector) -> bool {
        let state = self.read();
        if let Some(answer) = state
            .tallies
            .as_ref()
            .and_then(|t| t.get(uid))
            .and_then(|t| t.has_unmatched(selector))
        {
            return answer;
        }
        state
            .by_controller
            .get(uid)
            .into_iter()
            .flat_map(|owned| owned.values())
            .any(|o| {
                o.meta().deletion_timestamp.is_none() && !selector.matches(o.meta().labels.as_ref())
            })
    }

    /// Pod informer: the first `count` active pods of the ReplicaSet `uid` in the order a
    /// scale-down deletes them ([`deletion_order`]), without sorting them all.
    ///
    /// [`deletion_order`]: crate::controllers::pod_state::deletion_order
    pub fn first_to_delete(&self, uid: &str, count: usize) -> Vec<Arc<Object>> {
        let state = self.read();
        state
            .tallies
            .as_ref()
            .and_then(|t| t.get(uid))
            .map(|t| t.first_to_delete(count))
            .unwrap_or_default()
    }

    /// Number of cached objects.
    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The resourceVersion the cache is up to date with.
    pub fn resource_version(&self) -> u64 {
        self.read().resource_version
    }

    /// Subscribes to changes. A subscriber that joins after the first list first receives an
    /// `Applied` event for every cached object.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<CacheEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = self.read();
        let mut subscribers = self.inner.subscribers.lock().expect("informer lock");
        for object in state.objects.values() {
            let _ = tx.send(CacheEvent::Applied {
                old: None,
                new: object.clone(),
            });
        }
        subscribers.push(tx);
        rx
    }

    /// Waits (at most 30 s) until the cache reflects a write this process made, so that the
    /// next read sees it: a created or updated object at least at its resourceVersion, a
    /// marked object with its deletionTimestamp, a removed object gone.
    pub async fn wait_observed(&self, write: &Observed) {
        let mut rx = self.inner.changes.subscribe();
        let wait = async {
            loop {
                if self.reflects(write) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .is_err()
        {
            tracing::warn!(kind = %self.inner.kind, "informer did not observe a write within 30s");
        }
    }

    fn reflects(&self, write: &Observed) -> bool {
        let state = self.read();
        match write {
            Observed::Written(object) => {
                let rv = object.resource_version().unwrap_or(0);
                state.resource_version >= rv
                    || state
                        .objects
                        .get(&ObjectKey::of(object))
                        .is_some_and(|o| o.resource_version().unwrap_or(0) >= rv)
            }
            Observed::Removed(object) => state
                .objects
                .get(&ObjectKey::of(object))
                .is_none_or(|o| o.uid() != object.uid()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheState> {
        self.inner.state.read().expect("informer lock")
    }

    fn publish(&self, events: Vec<CacheEvent>) {
        if events.is_empty() {
            return;
        }
        let mut subscribers = self.inner.subscribers.lock().expect("informer lock");
        subscribers.retain(|tx| events.iter().all(|e| tx.send(e.clone()).is_ok()));
    }

    /// Applies watch events under one lock, then notifies.
    fn apply(&self, batch: Vec<WatchEvent>) {
        let mut events = Vec::with_capacity(batch.len());
        {
            let mut state = self.inner.state.write().expect("informer lock");
            for event in batch {
                if let Some(rv) = event.resource_version() {
                    state.resource_version = state.resource_version.max(rv);
                }
                match event {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                        let old = state.insert(o.clone());
                        events.push(CacheEvent::Applied { old, new: o });
                    }
                    WatchEvent::Deleted(o) => {
                        if state.remove(&ObjectKey::of(&o)).is_some() {
                            events.push(CacheEvent::Deleted(o));
                        }
                    }
                    WatchEvent::Bookmark(_) => {}
                }
            }
            // Publish while holding the state lock so that `subscribe` (which snapshots under
            // the same lock) neither misses nor duplicates an event.
            self.publish(events);
        }
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// Replaces the cache with a fresh list, emitting the difference.
    fn replace(&self, items: Vec<Arc<Object>>, resource_version: u64) {
        {
            let mut state = self.inner.state.write().expect("informer lock");
            let mut events = Vec::new();
            let mut seen = BTreeSet::new();
            for object in items {
                let key = ObjectKey::of(&object);
                seen.insert(key.clone());
                let unchanged = state
                    .objects
                    .get(&key)
                    .is_some_and(|o| o.resource_version() == object.resource_version());
                if !unchanged {
                    let old = state.insert(object.clone());
                    events.push(CacheEvent::Applied { old, new: object });
                }
            }
            let gone: Vec<ObjectKey> = state
                .objects
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(old) = state.remove(&key) {
                    events.push(CacheEvent::Deleted(old));
                }
            }
            state.resource_version = resource_version;
            self.publish(events);
        }
        self.inner.synced.send_replace(true);
        self.inner.changes.send_modify(|n| *n += 1);
    }

    async fn run(&self, store: Arc<dyn Store>) {
        let kind = self.inner.kind.clone();
        let mut retry = Duration::from_millis(100);
        'relist: loop {
            let list = match store.list(&kind, &ListOptions::default()).await {
                Ok(list) => list,
                Err(error) => {
                    tracing::warn!(%kind, %error, "informer list failed; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            let mut rv = list.resource_version;
            self.replace(list.items, rv);
            loop {
                let options = WatchOptions {
                    resource_version: Some(rv),
                    bookmarks: true,
                    ..Default::default()
                };
                let mut stream = match store.watch(&kind, &options).await {
                    Ok(s) => s,
                    Err(StoreError::Expired { .. }) => continue 'relist,
                    Err(error) => {
                        tracing::warn!(%kind, %error, "informer watch failed; retrying");
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(Duration::from_secs(30));
                        continue;
                    }
                };
                retry = Duration::from_millis(100);
                while let Some(item) = stream.next().await {
                    let mut batch = Vec::new();
                    let mut failure = None;
                    match item {
                        Ok(event) => batch.push(event),
                        Err(e) => failure = Some(e),
                    }
                    // Drain what is already buffered so that one lock covers a burst.
                    while failure.is_none() && batch.len() < 1024 {
                        match futures::FutureExt::now_or_never(stream.next()) {
                            Some(Some(Ok(event))) => batch.push(event),
                            Some(Some(Err(e))) => failure = Some(e),
                            _ => break,
                        }
                    }
                    if let Some(last) = batch.iter().rev().find_map(|e| e.resource_version()) {
                        rv = rv.max(last);
                    }
                    self.apply(batch);
                    match failure {
                        None => {}
                        Some(StoreError::Expired { .. } | StoreError::WatchLagged { .. }) => {
                            tracing::debug!(%kind, "informer watch expired or lagged; listing again");
                            continue 'relist;
                        }
                        Some(error) => {
                            tracing::warn!(%kind, %error, "informer watch failed; watching again");
                            break;
                        }
                    }
                }
                // The stream ended (store shutting down or an error): back off, then resume.
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A write whose effect [`Informer::wait_observed`] waits for.
#[derive(Clone, Debug)]
pub enum Observed {
    /// An object was created or updated (or marked for deletion): this is the store's answer.
    Written(Arc<Object>),
    /// An object was removed: this was its last state.
    Removed(Arc<Object>),
}

impl From<&Deleted> for Observed {
    fn from(d: &Deleted) -> Observed {
        match d {
            Deleted::Gone(o) => Observed::Removed(o.clone()),
            Deleted::Marked(o) => Observed::Written(o.clone()),
        }
    }
}

/// The set of shared informers, one per kind, started on first use. Cheap to clone.
#[derive(Clone)]
pub struct Informers {
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    by_kind: Arc<Mutex<HashMap<Kind, Informer>>>,
}

impl Informers {
    /// Informers over `store` that stop with `shutdown`.
    pub fn new(store: Arc<dyn Store>, shutdown: CancellationToken) -> Informers {
        Informers {
            store,
            shutdown,
            by_kind: Arc::default(),
        }
    }

    /// The informer of `kind`, started if needed.
    pub fn get(&self, kind: &Kind) -> Informer {
        let mut map = self.by_kind.lock().expect("informers lock");
        map.entry(kind.clone())
            .or_insert_with(|| {
                Informer::start(self.store.clone(), kind.clone(), self.shutdown.clone())
            })
            .clone()
    }

    /// The informer of `kind` once it has loaded its first list.
    pub async fn synced(&self, kind: &Kind) -> Informer {
        let informer = self.get(kind);
        informer.wait_synced().await;
        informer
    }
}

//! Watchers of the memory store: where they are registered, how a committed change reaches
//! them, and the stream each one reads.
//!
//! A watcher is filed under the narrowest route its selector allows — pods by the node its
//! field selector requires (`spec.nodeName=n`, what node agents and the scheduler ask for), any
//! kind by a required `metadata.name`, by namespace, or else with the kind's catch-all
//! watchers. A change is offered only to the routes it can match (for a pod that moves to a
//! node: both the old and the new node), so an event costs O(matching watchers), not
//! O(watchers). Each watcher has a bounded queue of events that share the stored
//! `Arc<Object>`; one that falls further behind is dropped and told so.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;

use super::index::{pod_node, Change, ChangeType};
use super::Shared;
use crate::object::{Kind, Object};
use crate::store::{ListOptions, Result, StoreError, WatchEvent};

/// Where a watcher is filed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Offered every change of the kind.
    All,
    /// Offered changes of objects in one namespace.
    Namespace(String),
    /// Offered changes of objects with one name.
    Name(String),
    /// Offered changes of pods on one node (before or after the change).
    Node(String),
}

impl Route {
    /// The narrowest route for a watch of `kind` with `selector`.
    pub fn for_selector(kind: &Kind, selector: &ListOptions) -> Route {
        let fields = selector.fields.as_ref();
        let required = |field| fields.and_then(|f| f.required_value(field));
        if *kind == Kind::Pod {
            if let Some(node) = required("spec.nodeName") {
                return Route::Node(node.to_string());
            }
        }
        if let Some(name) = required("metadata.name") {
            return Route::Name(name.to_string());
        }
        match selector
            .namespace
            .as_deref()
            .or_else(|| required("metadata.namespace"))
        {
            Some(ns) => Route::Namespace(ns.to_string()),
            None => Route::All,
        }
    }
}

struct Watcher {
    selector: ListOptions,
    tx: mpsc::Sender<WatchEvent>,
    lagged: Arc<AtomicBool>,
    /// Changes at or before this resourceVersion were delivered from the history already.
    after: u64,
}

type Bucket = HashMap<u64, Watcher>;

#[derive(Default)]
struct KindWatchers {
    all: Bucket,
    by_namespace: HashMap<String, Bucket>,
    by_name: HashMap<String, Bucket>,
    by_node: HashMap<String, Bucket>,
}

impl KindWatchers {
    fn bucket(&mut self, route: &Route) -> &mut Bucket {
        match route {
            Route::All => &mut self.all,
            Route::Namespace(ns) => self.by_namespace.entry(ns.clone()).or_default(),
            Route::Name(n) => self.by_name.entry(n.clone()).or_default(),
            Route::Node(n) => self.by_node.entry(n.clone()).or_default(),
        }
    }

    fn remove(&mut self, route: &Route, id: u64) {
        fn from(map: &mut HashMap<String, Bucket>, key: &str, id: u64) {
            if let Some(bucket) = map.get_mut(key) {
                bucket.remove(&id);
                if bucket.is_empty() {
                    map.remove(key);
                }
            }
        }
        match route {
            Route::All => {
                self.all.remove(&id);
            }
            Route::Namespace(ns) => from(&mut self.by_namespace, ns, id),
            Route::Name(n) => from(&mut self.by_name, n, id),
            Route::Node(n) => from(&mut self.by_node, n, id),
        }
    }
}

/// Every registered watcher, by kind and route.
#[derive(Default)]
pub struct Registry {
    next_id: u64,
    kinds: HashMap<Kind, KindWatchers>,
}

/// What a watcher gets for `change`, given its selector: transitions across the selector
/// become adds and deletes, as in the Kubernetes watch cache. `left` caches the object a
/// watcher that stops matching receives (the previous state at the change's resourceVersion),
/// built once per change.
pub fn event_for(
    selector: &ListOptions,
    change: &Change,
    left: &mut Option<Arc<Object>>,
) -> Option<WatchEvent> {
    let now = selector.matches(&change.object);
    match change.kind {
        ChangeType::Added => now.then(|| WatchEvent::Added(change.object.clone())),
        ChangeType::Deleted => now.then(|| WatchEvent::Deleted(change.object.clone())),
        ChangeType::Modified => {
            let before = change.prev.as_ref().is_some_and(|p| selector.matches(p));
            match (before, now) {
                (true, true) => Some(WatchEvent::Modified(change.object.clone())),
                (false, true) => Some(WatchEvent::Added(change.object.clone())),
                (true, false) => {
                    let left = left.get_or_insert_with(|| {
                        let mut prev =
                            Object::clone(change.prev.as_deref().unwrap_or(&change.object));
                        prev.meta_mut().resource_version = Some(change.rv.to_string());
                        Arc::new(prev)
                    });
                    Some(WatchEvent::Deleted(left.clone()))
                }
                (false, false) => None,
            }
        }
    }
}

impl Registry {
    /// Files a watcher; returns its id and the receiving end of its queue.
    pub fn register(
        &mut self,
        kind: &Kind,
        route: &Route,
        selector: ListOptions,
        after: u64,
        buffer: usize,
    ) -> (u64, mpsc::Receiver<WatchEvent>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let lagged = Arc::new(AtomicBool::new(false));
        self.next_id += 1;
        let id = self.next_id;
        self.kinds
            .entry(kind.clone())
            .or_default()
            .bucket(route)
            .insert(
                id,
                Watcher {
                    selector,
                    tx,
                    lagged: lagged.clone(),
                    after,
                },
            );
        (id, rx, lagged)
    }

    /// How many watchers are registered.
    pub fn len(&self) -> usize {
        self.kinds
            .values()
            .map(|kw| {
                let nested =
                    |m: &HashMap<String, Bucket>| m.values().map(Bucket::len).sum::<usize>();
                kw.all.len() + nested(&kw.by_namespace) + nested(&kw.by_name) + nested(&kw.by_node)
            })
            .sum()
    }

    /// Removes a watcher (its stream was dropped).
    pub fn remove(&mut self, kind: &Kind, route: &Route, id: u64) {
        if let Some(kw) = self.kinds.get_mut(kind) {
            kw.remove(route, id);
        }
    }

    /// Offers `change` to every watcher that may match it. Never blocks: a full queue drops
    /// its watcher, which then reports [`StoreError::WatchLagged`].
    pub fn dispatch(&mut self, kind: &Kind, change: &Change) {
        let Some(kw) = self.kinds.get_mut(kind) else {
            return;
        };
        let object = &change.object;
        let mut left = None;
        let mut gone: Vec<(Route, u64)> = Vec::new();
        // `route` is only called for a watcher to drop, so a delivery allocates nothing.
        let mut offer = |route: &dyn Fn() -> Route, bucket: Option<&mut Bucket>| {
            for (id, w) in bucket.into_iter().flatten() {
                if change.rv <= w.after {
                    continue;
                }
                let Some(event) = event_for(&w.selector, change, &mut left) else {
                    continue;
                };
                match w.tx.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        w.lagged.store(true, Ordering::Release);
                        gone.push((route(), *id));
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => gone.push((route(), *id)),
                }
            }
        };
        offer(&|| Route::All, Some(&mut kw.all));
        if let Some(ns) = object.namespace() {
            let route = || Route::Namespace(ns.to_string());
            offer(&route, kw.by_namespace.get_mut(ns));
        }
        let name = object.name();
        offer(&|| Route::Name(name.to_string()), kw.by_name.get_mut(name));
        if let Some(node) = pod_node(object) {
            offer(&|| Route::Node(node.to_string()), kw.by_node.get_mut(node));
            let prev = change.prev.as_deref().and_then(pod_node);
            if let Some(prev) = prev.filter(|p| *p != node) {
                offer(&|| Route::Node(prev.to_string()), kw.by_node.get_mut(prev));
            }
        }
        for (route, id) in gone {
            kw.remove(&route, id);
        }
    }
}

/// The stream of one watch: first the events computed when it started (history replay or the
/// synthetic adds of existing objects), then live events from its queue, with bookmarks when
/// asked for.
pub struct MemoryWatch {
    initial: std::vec::IntoIter<WatchEvent>,
    rx: mpsc::Receiver<WatchEvent>,
    lagged: Arc<AtomicBool>,
    shared: Weak<Shared>,
    kind: Kind,
    route: Route,
    id: u64,
    bookmarks: Option<Bookmarks>,
    done: bool,
}

struct Bookmarks {
    interval: tokio::time::Interval,
    /// Whether an event went out since the last tick (then no bookmark is needed).
    active: bool,
    published: Arc<AtomicU64>,
}

impl MemoryWatch {
    /// A stream over `initial` then the registered watcher `id`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        initial: Vec<WatchEvent>,
        rx: mpsc::Receiver<WatchEvent>,
        lagged: Arc<AtomicBool>,
        shared: &Arc<Shared>,
        kind: Kind,
        route: Route,
        id: u64,
        bookmark_interval: Option<Duration>,
    ) -> MemoryWatch {
        let bookmarks = bookmark_interval.map(|period| {
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Bookmarks {
                interval,
                active: false,
                published: shared.published.clone(),
            }
        });
        MemoryWatch {
            initial: initial.into_iter(),
            rx,
            lagged,
            shared: Arc::downgrade(shared),
            kind,
            route,
            id,
            bookmarks,
            done: false,
        }
    }

    fn lagged(&mut self) -> Poll<Option<Result<WatchEvent>>> {
        self.done = true;
        Poll::Ready(Some(Err(StoreError::WatchLagged {
            kind: self.kind.name().to_string(),
        })))
    }

    fn deliver(&mut self, event: WatchEvent) -> Poll<Option<Result<WatchEvent>>> {
        if let (Some(b), false) = (
            &mut self.bookmarks,
            matches!(event, WatchEvent::Bookmark(_)),
        ) {
            b.active = true;
        }
        Poll::Ready(Some(Ok(event)))
    }
}

impl Stream for MemoryWatch {
    type Item = Result<WatchEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.lagged.load(Ordering::Acquire) {
            return this.lagged();
        }
        if let Some(event) = this.initial.next() {
            return this.deliver(event);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => return this.deliver(event),
            Poll::Ready(None) => {
                if this.lagged.load(Ordering::Acquire) {
                    return this.lagged();
                }
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let Some(b) = &mut this.bookmarks else {
            return Poll::Pending;
        };
        while b.interval.poll_tick(cx).is_ready() {
            if std::mem::take(&mut b.active) {
                continue;
            }
            // Read the published resourceVersion before looking at the queue: a writer
            // publishes only after queueing its events, so an empty queue now means every
            // change up to `rv` was delivered.
            let rv = b.published.load(Ordering::Acquire);
            return match this.rx.try_recv() {
                Ok(event) => this.deliver(event),
                Err(mpsc::error::TryRecvError::Empty) => {
                    Poll::Ready(Some(Ok(WatchEvent::Bookmark(rv))))
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    if this.lagged.load(Ordering::Acquire) {
                        return this.lagged();
                    }
                    this.done = true;
                    Poll::Ready(None)
                }
            };
        }
        Poll::Pending
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.watchers().remove(&self.kind, &self.route, self.id);
        }
    }
}

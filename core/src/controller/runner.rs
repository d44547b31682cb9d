//! The runner: turns informer events into queue keys and queue keys into reconciles.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::queue::{self, Outcome, QueueSettings};
use super::{CacheEvent, Context, ObjectKey, Reconciler};
use crate::object::{Kind, Object};

/// Maps a changed object of a watched kind to the keys of primary objects to reconcile.
pub type Mapper = Arc<dyn Fn(&Object, &Context) -> Vec<ObjectKey> + Send + Sync>;

/// Says whether a change of a watched kind can matter to a controller (see
/// [`Controller::watches_changes`]).
pub type ChangeFilter = Arc<dyn Fn(&CacheEvent) -> bool + Send + Sync>;

/// Tuning of a controller's runner.
#[derive(Clone, Copy, Debug)]
pub struct ControllerConfig {
    /// Most reconciles running at once (Kubernetes' `--concurrent-*-syncs`, default 5).
    pub concurrency: usize,
    /// First retry delay after an error.
    pub backoff_base: Duration,
    /// Longest retry delay after repeated errors.
    pub backoff_max: Duration,
}

impl Default for ControllerConfig {
    /// Kubernetes' controller defaults: 5 workers, retry backoff from 5 ms doubling to 1000 s.
    fn default() -> Self {
        ControllerConfig {
            concurrency: 5,
            backoff_base: Duration::from_millis(5),
            backoff_max: Duration::from_secs(1000),
        }
    }
}

/// A controller: a reconciler, the kind it reconciles, and what else triggers it.
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use wharf_core::controller::{Action, Context, Controller, ControllerError, Reconciler};
/// use wharf_core::{Kind, Object};
///
/// struct Noop;
///
/// #[async_trait]
/// impl Reconciler for Noop {
///     type Error = ControllerError;
///     async fn reconcile(&self, _object: Arc<Object>, _ctx: &Context) -> Result<Action, ControllerError> {
///         Ok(Action::await_change())
///     }
/// }
///
/// let controller = Controller::new("noop", Kind::ReplicaSet, Noop).owns(Kind::Pod);
/// assert_eq!(controller.name(), "noop");
/// ```
pub struct Controller<R> {
    name: String,
    kind: Kind,
    reconciler: Arc<R>,
    owns: Vec<Kind>,
    watches: Vec<(Kind, Mapper, Option<ChangeFilter>)>,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
}

impl<R: Reconciler> Controller<R> {
    /// A controller named `name` reconciling objects of `kind`.
    pub fn new(name: impl Into<String>, kind: Kind, reconciler: R) -> Controller<R> {
        Controller {
            name: name.into(),
            kind,
            reconciler: Arc::new(reconciler),
            owns: Vec::new(),
            watches: Vec::new(),
            config: ControllerConfig::default(),
            metrics: Arc::default(),
        }
    }

    /// Also reconciles an object when an object of `kind` that it controls (an ownerReference
    /// with `controller: true`) changes.
    pub fn owns(mut self, kind: Kind) -> Self {
        self.owns.push(kind);
        self
    }

    /// Also reconciles the objects `mapper` names when an object of `kind` changes (it sees
    /// both the old and the new state of a modified object; it may read the informers).
    pub fn watches(
        mut self,
        kind: Kind,
        mapper: impl Fn(&Object, &Context) -> Vec<ObjectKey> + Send + Sync + 'static,
    ) -> Self {
        self.watches.push((kind, Arc::new(mapper), None));
        self
    }

    /// As [`watches`](Self::watches), for the changes `relevant` lets through only: it sees
    /// the whole change (old and new state), so a controller can ignore updates that cannot
    /// affect it, such as a Node's heartbeats.
    pub fn watches_changes(
        mut self,
        kind: Kind,
        relevant: impl Fn(&CacheEvent) -> bool + Send + Sync + 'static,
        mapper: impl Fn(&Object, &Context) -> Vec<ObjectKey> + Send + Sync + 'static,
    ) -> Self {
        self.watches
            .push((kind, Arc::new(mapper), Some(Arc::new(relevant))));
        self
    }

    /// Sets the runner's tuning.
    pub fn config(mut self, config: ControllerConfig) -> Self {
        self.config = config;
        self
    }

    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The controller's metrics, updated while it runs.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown` is cancelled, then lets running reconciles finish.
    pub async fn run(self, ctx: Context, shutdown: CancellationToken) {
        let (tx, rx) = mpsc::unbounded_channel::<ObjectKey>();
        let mut forwarders = JoinSet::new();
        let primary = ctx.informers.get(&self.kind);

        let mut sources: Vec<(Kind, Source)> = vec![(self.kind.clone(), Source::Primary)];
        for owned in &self.owns {
            sources.push((owned.clone(), Source::Owned(self.kind.clone())));
        }
        for (kind, mapper, relevant) in &self.watches {
            sources.push((
                kind.clone(),
                Source::Watched(mapper.clone(), relevant.clone()),
            ));
        }
        for (kind, source) in sources {
            let informer = ctx.informers.get(&kind);
            let mut events = informer.subscribe();
            let tx = tx.clone();
            let ctx = ctx.clone();
            forwarders.spawn(async move {
                while let Some(event) = events.recv().await {
                    for key in source.keys(&event, &ctx) {
                        if tx.send(key).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);

        tokio::select! {
            _ = shutdown.cancelled() => { forwarders.abort_all(); return; }
            _ = primary.wait_synced() => {}
        }
        tracing::debug!(controller = %self.name, "caches synced; starting workers");

        let settings = QueueSettings {
            concurrency: self.config.concurrency,
            backoff_base: self.config.backoff_base,
            backoff_max: self.config.backoff_max,
        };
        let metrics = self.metrics.clone();
        let name: Arc<str> = self.name.clone().into();
        let reconciler = self.reconciler.clone();
        queue::run(rx, settings, &self.metrics, shutdown, move |key: ObjectKey| {
            let (ctx, primary, reconciler, metrics, name) = (
                ctx.clone(),
                primary.clone(),
                reconciler.clone(),
                metrics.clone(),
                name.clone(),
            );
            async move {
                let started = tokio::time::Instant::now();
                let result = match primary.get(&key) {
                    Some(object) => reconciler.reconcile(object, &ctx).await,
                    None => reconciler.cleanup(&key, &ctx).await,
                };
                match result {
                    Ok(action) => {
                        metrics.finished(started.elapsed(), false);
                        Outcome::Success(action)
                    }
                    Err(error) => {
                        metrics.finished(started.elapsed(), true);
                        tracing::debug!(controller = %name, object = %key, %error, "reconcile failed");
                        Outcome::Failure(reconciler.error_policy(&key, &error, &ctx))
                    }
                }
            }
        })
        .await;
        forwarders.abort_all();
    }
}

/// Where a controller's triggers come from, and how a change becomes keys to reconcile.
enum Source {
    /// The reconciled kind: the changed object itself.
    Primary,
    /// An owned kind: the object's controller owner of this kind.
    Owned(Kind),
    /// A watched kind: what the mapper names, for the changes the filter lets through.
    Watched(Mapper, Option<ChangeFilter>),
}

impl Source {
    /// The keys `event` triggers, each once.
    fn keys(&self, event: &CacheEvent, ctx: &Context) -> Vec<ObjectKey> {
        let (old, new) = match event {
            CacheEvent::Applied { old, new } => (old.as_deref(), &**new),
            CacheEvent::Deleted(object) => (None, &**object),
        };
        match self {
            // A name never changes: the old state names the same object.
            Source::Primary => vec![ObjectKey::of(new)],
            Source::Owned(owner) => {
                let mut keys: Vec<ObjectKey> = controller_owner(new, owner).into_iter().collect();
                // The old state matters only when the object changed hands.
                if let Some(old) = old.filter(|old| controller_of(old) != controller_of(new)) {
                    keys.extend(controller_owner(old, owner));
                }
                keys
            }
            Source::Watched(mapper, relevant) => {
                if relevant.as_ref().is_some_and(|r| !r(event)) {
                    return Vec::new();
                }
                let mut keys = mapper(new, ctx);
                if let Some(old) = old {
                    keys.extend(mapper(old, ctx));
                    keys.sort_unstable();
                    keys.dedup();
                }
                keys
            }
        }
    }
}

/// The ownerReference of `object` that has `controller: true`.
pub fn controller_of(
    object: &Object,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    object
        .meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// The key of `object`'s controller owner, when that owner is of `kind`.
pub fn controller_owner(object: &Object, kind: &Kind) -> Option<ObjectKey> {
    let owner = controller_of(object)?;
    if owner.kind != kind.name() || owner.api_version != kind.api_version() {
        return None;
    }
    Some(ObjectKey {
        namespace: if kind.is_namespaced() {
            object.namespace().map(str::to_string)
        } else {
            None
        },
        name: owner.name.clone(),
    })
}

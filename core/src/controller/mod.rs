//! The controller runtime: reconcilers, the runner that drives them from watches, shared
//! informers (in-memory caches of the store), metrics and leader election.
//!
//! The model is Kubernetes' (and kube-rs'): a controller owns one *primary* kind. Every change
//! to a primary object, to an object it owns (an `ownerReference` with `controller: true`), or
//! to an object a custom mapper relates to it, puts the primary object's [`ObjectKey`] into a
//! work queue. The runner takes keys off the queue and calls [`Reconciler::reconcile`] with the
//! object's latest cached state. The runner guarantees:
//!
//! - at most one reconcile of an object runs at a time, and at most one more is pending
//!   (triggers that arrive meanwhile are merged into it);
//! - no more than [`ControllerConfig::concurrency`] reconciles run at once;
//! - the [`Action`] a reconcile returns is honoured: [`Action::RequeueAfter`] runs it again
//!   after a delay (an earlier trigger wins), [`Action::AwaitChange`] waits for the next event;
//! - an error goes through [`Reconciler::error_policy`]; its default, [`Action::Backoff`],
//!   retries with a per-object exponential delay that resets after a success;
//! - shutdown (a [`CancellationToken`]) stops taking work and lets running reconciles finish.
//!
//! Reconcilers read other objects from the shared [`Informers`] in the [`Context`] rather than
//! listing the store, and after writing call [`Informer::wait_observed`] so that their next
//! reconcile sees their own writes (Kubernetes' controllers use "expectations" for this).
//!
//! This module knows one kind only: the pod informer keeps, per controller, a tally of its
//! pods ([`OwnedPods`]: active, ready, available, fully labeled, and the deletion order)
//! updated as events arrive, so that workload controllers do not walk every pod they own on
//! each reconcile. The built-in controllers live in [`crate::controllers`].

mod informer;
mod leader;
mod metrics;
mod owned_pods;
mod queue;
mod runner;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;

pub use informer::{CacheEvent, Informer, Informers, Observed};
pub use leader::{LeaderElection, LeaderElector, LeaseLock, LeaseSettings};
pub use metrics::{Metrics, MetricsSnapshot};
pub use owned_pods::OwnedPods;
pub use runner::{
    controller_of, controller_owner, ChangeFilter, Controller, ControllerConfig, Mapper,
};

pub(crate) use queue::{run as run_queue, Outcome};

use crate::clock::Clock;
use crate::object::{Kind, Object};
use crate::store::{Store, StoreError};

/// Identifies an object of a known kind: its namespace (for namespaced kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace, `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The key of an object in `namespace`.
    pub fn namespaced(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: Some(namespace.to_string()),
            name: name.to_string(),
        }
    }

    /// The key of a cluster-scoped object.
    pub fn cluster(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: None,
            name: name.to_string(),
        }
    }

    /// The key of `object`.
    pub fn of(object: &Object) -> ObjectKey {
        ObjectKey {
            namespace: object.namespace().map(str::to_string),
            name: object.name().to_string(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What the runner does with an object after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again after this delay, or earlier if something changes.
    RequeueAfter(Duration),
    /// Reconcile again only when something changes.
    AwaitChange,
    /// Retry after the object's exponential backoff delay (for error policies).
    Backoff,
}

impl Action {
    /// Reconcile again after `delay`.
    pub fn requeue(delay: Duration) -> Action {
        Action::RequeueAfter(delay)
    }

    /// Reconcile again when something changes.
    pub fn await_change() -> Action {
        Action::AwaitChange
    }

    /// The action that requeues soonest of `self` and `other`.
    pub fn earliest(self, other: Action) -> Action {
        match (self, other) {
            (Action::Backoff, _) | (_, Action::Backoff) => Action::Backoff,
            (Action::RequeueAfter(a), Action::RequeueAfter(b)) => Action::RequeueAfter(a.min(b)),
            (Action::RequeueAfter(a), Action::AwaitChange)
            | (Action::AwaitChange, Action::RequeueAfter(a)) => Action::RequeueAfter(a),
            (Action::AwaitChange, Action::AwaitChange) => Action::AwaitChange,
        }
    }
}

/// What a built-in controller's reconcile can fail with. Every variant names the object.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A store call failed.
    #[error("{operation} {kind} {object}: {source}")]
    Store {
        /// What the controller was doing, e.g. `create`.
        operation: &'static str,
        /// Kind of the object acted on.
        kind: String,
        /// `namespace/name` of the object acted on.
        object: String,
        /// The store's error.
        #[source]
        source: Box<StoreError>,
    },
    /// An object has a field the controller cannot act on.
    #[error("{kind} {object}: field {field}: {message}")]
    Invalid {
        /// Kind of the object.
        kind: String,
        /// `namespace/name` of the object.
        object: String,
        /// Field path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ControllerError {
    /// A store error while doing `operation` on `object`.
    pub fn store(operation: &'static str, object: &Object, source: StoreError) -> ControllerError {
        ControllerError::Store {
            operation,
            kind: object.kind().name().to_string(),
            object: object.display_name(),
            source: Box::new(source),
        }
    }

    /// A store error while doing `operation` on an object of `kind` named by `key`.
    pub fn store_key(
        operation: &'static str,
        kind: &Kind,
        key: &ObjectKey,
        source: StoreError,
    ) -> ControllerError {
        ControllerError::Store {
            operation,
            kind: kind.name().to_string(),
            object: key.to_string(),
            source: Box::new(source),
        }
    }

    /// An invalid field of `object`.
    pub fn invalid(object: &Object, field: &str, message: impl Into<String>) -> ControllerError {
        ControllerError::Invalid {
            kind: object.kind().name().to_string(),
            object: object.display_name(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Whether the error is an optimistic-concurrency conflict (the next reconcile, with a
    /// fresh read, usually succeeds).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            ControllerError::Store { source, .. } if matches!(**source, StoreError::Conflict { .. })
        )
    }
}

/// What every reconcile can use: the store, the clock and the shared informers.
#[derive(Clone)]
pub struct Context {
    /// The store to write to.
    pub store: Arc<dyn Store>,
    /// Wall time that follows tokio's clock.
    pub clock: Clock,
    /// Shared in-memory caches of the store, one per kind.
    pub informers: Informers,
}

impl Context {
    /// A context over `store`; informers start on first use and stop with `shutdown`.
    pub fn new(store: Arc<dyn Store>, clock: Clock, shutdown: CancellationToken) -> Context {
        Context {
            informers: Informers::new(store.clone(), shutdown),
            store,
            clock,
        }
    }
}

/// The logic of a controller: bring the world in line with one object's desired state.
///
/// A reconcile must be idempotent: it may run any number of times for the same state, and it
/// reads what it needs instead of relying on the event that triggered it.
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// What a reconcile can fail with.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Reconciles `object` (its latest cached state).
    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error>;

    /// Called instead of `reconcile` when the object no longer exists. Most controllers leave
    /// cleanup to ownerReferences and the garbage collector, hence the default does nothing.
    async fn cleanup(&self, key: &ObjectKey, ctx: &Context) -> Result<Action, Self::Error> {
        let _ = (key, ctx);
        Ok(Action::AwaitChange)
    }

    /// What to do after a failed reconcile. The default retries with exponential backoff.
    fn error_policy(&self, key: &ObjectKey, error: &Self::Error, ctx: &Context) -> Action {
        let _ = (key, error, ctx);
        Action::Backoff
    }
}

/// Queue settings with `concurrency` workers and the default backoff.
pub(crate) fn queue_settings(concurrency: usize) -> queue::QueueSettings {
    let defaults = ControllerConfig::default();
    queue::QueueSettings {
        concurrency,
        backoff_base: defaults.backoff_base,
        backoff_max: defaults.backoff_max,
    }
}

//! The store: versioned objects with watch, the source of truth every controller, the
//! scheduler and the node agents read and write.
//!
//! The contract follows the Kubernetes API server's:
//! - every write bumps one store-wide, monotonically increasing resourceVersion, written into
//!   the object's `metadata.resourceVersion`;
//! - `create` sets `uid`, `creationTimestamp`, `generation = 1` and the namespace default;
//!   it fails with [`StoreError::AlreadyExists`];
//! - `update` with a `resourceVersion` set must match the stored one, else
//!   [`StoreError::Conflict`]; without one it is an unconditional write. `update` ignores
//!   changes to `status`, `update_status` ignores changes to everything but `status`.
//!   `generation` is bumped when anything but `metadata` and `status` changes;
//! - a Namespace is created with the `kubernetes` finalizer in `spec.finalizers` and
//!   `status.phase: Active`; deleting it marks it (`deletionTimestamp`, phase `Terminating`)
//!   until the namespace controller has emptied it and removed its `spec.finalizers` with an
//!   `update` (the API server's `/finalize`). Creating an object in a Terminating namespace
//!   fails with [`StoreError::NamespaceTerminating`];
//! - `delete` of an object with finalizers, or of a Pod bound to a node with a grace period
//!   (pods are deleted gracefully: the node agent stops the containers and then deletes with a
//!   zero grace period), sets `deletionTimestamp` instead of removing it; an update that
//!   removes the last finalizer of a marked object removes it;
//! - `watch` from resourceVersion `n` delivers every change after `n` in order; without a
//!   resourceVersion it first delivers an `Added` event for every existing object. A
//!   resourceVersion older than the retained history is [`StoreError::Expired`].
//!
//! Objects are shared as `Arc<Object>`: a list or a watch event never copies an object.

pub mod binding;
pub mod conformance;
pub mod memory;
pub mod selector;

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Stream;

use crate::object::{Kind, Object, Resource, Typed};
pub use binding::PodBinding;
pub use selector::{FieldSelector, LabelSelector, SelectorError};

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What went wrong in a store operation. Every variant names the object it concerns.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{kind} {name:?} not found{}", in_namespace(namespace))]
    NotFound {
        /// Kind of the object.
        kind: String,
        /// Namespace, for namespaced kinds.
        namespace: Option<String>,
        /// Name of the object.
        name: String,
    },
    /// An object with that name exists already.
    #[error("{kind} {name:?} already exists{}", in_namespace(namespace))]
    AlreadyExists {
        /// Kind of the object.
        kind: String,
        /// Namespace, for namespaced kinds.
        namespace: Option<String>,
        /// Name of the object.
        name: String,
    },
    /// The write was based on an old version of the object (optimistic concurrency).
    #[error("conflict writing {kind} {name:?}{}: the object has been modified (expected resourceVersion {expected}, stored {actual}); read it again and retry", in_namespace(namespace))]
    Conflict {
        /// Kind of the object.
        kind: String,
        /// Namespace, for namespaced kinds.
        namespace: Option<String>,
        /// Name of the object.
        name: String,
        /// The resourceVersion the writer sent.
        expected: String,
        /// The resourceVersion in the store.
        actual: String,
    },
    /// The object is not valid: a field is missing or has a wrong value.
    #[error("invalid {kind} {name:?}: field {field}: {message}")]
    Invalid {
        /// Kind of the object.
        kind: String,
        /// Name of the object (may be empty when it is the name that is missing).
        name: String,
        /// The field path, e.g. `metadata.name`.
        field: String,
        /// What was expected.
        message: String,
    },
    /// The object cannot be created: its namespace is being deleted (Kubernetes' 403
    /// `NamespaceTerminating`).
    #[error("cannot create {kind} {name:?} in namespace {namespace:?}: the namespace is being terminated")]
    NamespaceTerminating {
        /// Kind of the object.
        kind: String,
        /// The terminating namespace.
        namespace: String,
        /// Name of the object.
        name: String,
    },
    /// The requested resourceVersion is older than the history the store keeps.
    #[error("resourceVersion {requested} is too old (oldest retained is {oldest}): list again and watch from the list's resourceVersion")]
    Expired {
        /// The resourceVersion asked for.
        requested: u64,
        /// The oldest resourceVersion still available.
        oldest: u64,
    },
    /// A watcher fell too far behind and was dropped; it should list and watch again.
    #[error("watch of {kind} fell behind and was closed; list again and watch from the list's resourceVersion")]
    WatchLagged {
        /// The kind being watched.
        kind: String,
    },
    /// The backend failed (I/O, connection). Retrying may succeed.
    #[error("store backend: {0}")]
    Backend(String),
}

fn in_namespace(namespace: &Option<String>) -> String {
    match namespace {
        Some(ns) => format!(" in namespace {ns:?}"),
        None => String::new(),
    }
}

impl StoreError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Backend(_) | StoreError::Conflict { .. })
    }

    /// `NotFound` for an object of `kind`.
    pub fn not_found(kind: &Kind, namespace: Option<&str>, name: &str) -> StoreError {
        StoreError::NotFound {
            kind: kind.name().to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }
}

/// Which objects a list or watch selects.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Only objects in this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Only objects whose labels match.
    pub labels: Option<LabelSelector>,
    /// Only objects whose fields match.
    pub fields: Option<FieldSelector>,
}

impl ListOptions {
    /// Objects in one namespace.
    pub fn namespace(ns: impl Into<String>) -> ListOptions {
        ListOptions {
            namespace: Some(ns.into()),
            ..Default::default()
        }
    }

    /// Whether `object` is selected by these options.
    pub fn matches(&self, object: &Object) -> bool {
        if let Some(ns) = &self.namespace {
            if object.namespace() != Some(ns.as_str()) {
                return false;
            }
        }
        if let Some(labels) = &self.labels {
            if !labels.matches(object.meta().labels.as_ref()) {
                return false;
            }
        }
        if let Some(fields) = &self.fields {
            if !fields.matches(object) {
                return false;
            }
        }
        true
    }
}

/// The result of a list: the matching objects and the store's resourceVersion at the time of
/// the list, from which a watch continues without missing a change.
#[derive(Clone, Debug, Default)]
pub struct ObjectList {
    /// The matching objects, sorted by namespace and name.
    pub items: Vec<Arc<Object>>,
    /// The store's resourceVersion when the list was taken.
    pub resource_version: u64,
}

/// How deleting an owner treats its dependents (Kubernetes' propagationPolicy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Propagation {
    /// Delete the owner now; the garbage collector deletes dependents afterwards.
    #[default]
    Background,
    /// Delete dependents first (`foregroundDeletion` finalizer on the owner).
    Foreground,
    /// Leave dependents, removing their ownerReferences to this owner.
    Orphan,
}

/// Options of a delete.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// Grace period for pods; `None` uses the pod's `terminationGracePeriodSeconds`, `Some(0)`
    /// deletes at once.
    pub grace_period_seconds: Option<i64>,
    /// How dependents are treated.
    pub propagation: Propagation,
    /// Delete only if the stored object has this uid.
    pub precondition_uid: Option<String>,
    /// Delete only if the stored object has this resourceVersion.
    pub precondition_resource_version: Option<String>,
}

/// What a delete did.
#[derive(Clone, Debug)]
pub enum Deleted {
    /// The object is gone; this is its last state.
    Gone(Arc<Object>),
    /// The object was marked with a deletionTimestamp and waits for finalizers or for its
    /// node agent; this is its new state.
    Marked(Arc<Object>),
}

impl Deleted {
    /// The object's state after the delete.
    pub fn object(&self) -> &Arc<Object> {
        match self {
            Deleted::Gone(o) | Deleted::Marked(o) => o,
        }
    }
}

/// Options of a watch.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// Which objects to watch.
    pub selector: ListOptions,
    /// Deliver changes after this resourceVersion. `None`: first an `Added` event for every
    /// existing object, then changes.
    pub resource_version: Option<u64>,
    /// Send [`WatchEvent::Bookmark`] events so an idle watcher can resume from a recent
    /// resourceVersion.
    pub bookmarks: bool,
}

/// One change seen by a watcher.
#[derive(Clone, Debug)]
pub enum WatchEvent {
    /// The object was created (or existed when the watch started).
    Added(Arc<Object>),
    /// The object changed; this is its new state.
    Modified(Arc<Object>),
    /// The object was removed; this is its last state.
    Deleted(Arc<Object>),
    /// No change for this watcher up to this resourceVersion.
    Bookmark(u64),
}

impl WatchEvent {
    /// The object of the event, if it is not a bookmark.
    pub fn object(&self) -> Option<&Arc<Object>> {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => Some(o),
            WatchEvent::Bookmark(_) => None,
        }
    }

    /// The resourceVersion this event brings the watcher to.
    pub fn resource_version(&self) -> Option<u64> {
        match self {
            WatchEvent::Bookmark(rv) => Some(*rv),
            other => other.object().and_then(|o| o.resource_version()),
        }
    }
}

/// The stream of a watch. It ends when the store shuts down; an `Err` item is the last one.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

/// Versioned object storage with watch. See the module documentation for the contract.
///
/// Implementations: [`MemoryStore`](memory::MemoryStore) (the embedded default). Every
/// implementation must pass the conformance suite in [`conformance`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an object. Fills uid, creationTimestamp, generation and resourceVersion.
    async fn create(&self, object: Object) -> Result<Arc<Object>>;

    /// Reads one object.
    async fn get(&self, kind: &Kind, namespace: Option<&str>, name: &str) -> Result<Arc<Object>>;

    /// Lists the objects of a kind that match `options`.
    async fn list(&self, kind: &Kind, options: &ListOptions) -> Result<ObjectList>;

    /// Writes an object's metadata and spec (not its status).
    async fn update(&self, object: Object) -> Result<Arc<Object>>;

    /// Writes an object's status (nothing else).
    async fn update_status(&self, object: Object) -> Result<Arc<Object>>;

    /// Deletes an object, or marks it for deletion (finalizers, graceful pod deletion).
    async fn delete(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deleted>;

    /// Watches the objects of a kind.
    async fn watch(&self, kind: &Kind, options: &WatchOptions) -> Result<WatchStream>;

    /// The store's current resourceVersion.
    async fn current_resource_version(&self) -> Result<u64>;

    /// The kinds the store may hold objects of (what the namespace controller empties a
    /// namespace of). The default is every built-in kind; a store that keeps custom kinds
    /// should add those it holds.
    async fn kinds(&self) -> Result<Vec<Kind>> {
        Ok(Kind::BUILTIN.to_vec())
    }

    /// Binds a pending pod to a node, as the API server's `pods/binding` subresource: sets
    /// `spec.nodeName` and the `PodScheduled=True` condition. A pod already bound or being
    /// deleted is refused with [`StoreError::Invalid`] on `spec.nodeName`; a pod that is gone,
    /// or has another uid than the binding names, is [`StoreError::NotFound`].
    ///
    /// This default makes two writes (the spec, conditional on the version read, then the
    /// status); a backend that can write both at once should override it, as
    /// [`MemoryStore`](memory::MemoryStore) does, so that watchers see one change.
    async fn bind(&self, binding: &PodBinding) -> Result<Arc<Object>> {
        let stored = self
            .get(&Kind::Pod, Some(&binding.namespace), &binding.name)
            .await?;
        let mut written = self.update(binding.bound_spec(&stored)?.into()).await?;
        // The status write races with other status writers (the node agent may already
        // report): re-read and retry on conflict, a few times.
        let mut attempts = 0;
        loop {
            let mut pod = written
                .as_kind::<k8s_openapi::api::core::v1::Pod>()
                .cloned()
                .unwrap_or_default();
            binding.set_scheduled(&mut pod);
            match self.update_status(pod.into()).await {
                // Out of retries: the conflict is the answer (the pod is bound, its condition
                // is not written), not a success.
                Err(StoreError::Conflict { .. }) if attempts < 4 => {
                    attempts += 1;
                    written = self
                        .get(&Kind::Pod, Some(&binding.namespace), &binding.name)
                        .await?;
                }
                other => return other,
            }
        }
    }
}

/// A typed client over a [`Store`] for one kind, optionally bound to a namespace.
///
/// ```
/// # use wharf_core::store::{Api, memory::MemoryStore};
/// # use k8s_openapi::api::core::v1::ConfigMap;
/// # tokio_test_block(async {
/// let store = std::sync::Arc::new(MemoryStore::new());
/// let api: Api<ConfigMap> = Api::namespaced(store, "default");
/// let mut cm = ConfigMap::default();
/// cm.metadata.name = Some("settings".into());
/// api.create(cm).await.unwrap();
/// assert_eq!(api.get("settings").await.unwrap().metadata.name.as_deref(), Some("settings"));
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
pub struct Api<K> {
    store: Arc<dyn Store>,
    namespace: Option<String>,
    _kind: std::marker::PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Api {
            store: self.store.clone(),
            namespace: self.namespace.clone(),
            _kind: std::marker::PhantomData,
        }
    }
}

impl<K: Resource> Api<K> {
    /// An API for objects of kind `K` in `namespace`.
    pub fn namespaced(store: Arc<dyn Store>, namespace: &str) -> Api<K> {
        Api {
            store,
            namespace: Some(namespace.to_string()),
            _kind: std::marker::PhantomData,
        }
    }

    /// An API for cluster-scoped objects, or namespaced objects across all namespaces
    /// (list and watch only; get/create/update/delete take the namespace from the object).
    pub fn all(store: Arc<dyn Store>) -> Api<K> {
        Api {
            store,
            namespace: None,
            _kind: std::marker::PhantomData,
        }
    }

    /// The store behind this API.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn typed(object: Arc<Object>) -> Result<Typed<K>> {
        let kind = object.kind();
        Typed::new(object).ok_or_else(|| {
            StoreError::Backend(format!("store returned a {kind} for a {}", K::OBJECT_KIND))
        })
    }

    /// Reads one object.
    pub async fn get(&self, name: &str) -> Result<Typed<K>> {
        Self::typed(
            self.store
                .get(&K::OBJECT_KIND, self.namespace.as_deref(), name)
                .await?,
        )
    }

    /// Reads one object, or `None` when it does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<Typed<K>>> {
        match self.get(name).await {
            Ok(o) => Ok(Some(o)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists objects matching `options` (the API's namespace applies when set).
    pub async fn list(&self, options: &ListOptions) -> Result<Vec<Typed<K>>> {
        let mut options = options.clone();
        if options.namespace.is_none() {
            options.namespace = self.namespace.clone();
        }
        let list = self.store.list(&K::OBJECT_KIND, &options).await?;
        list.items.into_iter().map(Self::typed).collect()
    }

    fn with_namespace(&self, mut value: K) -> Object {
        if value.metadata().namespace.is_none() && K::OBJECT_KIND.is_namespaced() {
            value.metadata_mut().namespace = self.namespace.clone();
        }
        value.into_object()
    }

    /// Creates an object; its namespace defaults to the API's.
    pub async fn create(&self, value: K) -> Result<Typed<K>> {
        Self::typed(self.store.create(self.with_namespace(value)).await?)
    }

    /// Writes an object's metadata and spec.
    pub async fn update(&self, value: K) -> Result<Typed<K>> {
        Self::typed(self.store.update(self.with_namespace(value)).await?)
    }

    /// Writes an object's status.
    pub async fn update_status(&self, value: K) -> Result<Typed<K>> {
        Self::typed(self.store.update_status(self.with_namespace(value)).await?)
    }

    /// Deletes an object.
    pub async fn delete(&self, name: &str, options: &DeleteOptions) -> Result<Deleted> {
        self.store
            .delete(&K::OBJECT_KIND, self.namespace.as_deref(), name, options)
            .await
    }

    /// Watches objects of this kind (in the API's namespace when set).
    pub async fn watch(&self, options: &WatchOptions) -> Result<WatchStream> {
        let mut options = options.clone();
        if options.selector.namespace.is_none() {
            options.selector.namespace = self.namespace.clone();
        }
        self.store.watch(&K::OBJECT_KIND, &options).await
    }
}

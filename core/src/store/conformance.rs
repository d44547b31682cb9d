//! The store conformance suite: the contract of [`Store`](super::Store) written as checks any
//! implementation can run, so the memory store and a future etcd backend behave alike.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use wharf_core::store::{conformance, memory::MemoryStore, Store};
//! # async fn run() {
//! conformance::run_all(&|| Arc::new(MemoryStore::new()) as Arc<dyn Store>).await;
//! # }
//! ```
//!
//! Every check takes a fresh store from the caller and panics with a message naming what
//! failed. Run them on a multi-threaded tokio runtime (the concurrent-writer check needs real
//! parallelism). Two checks need the store configured for them: [`watch_expired`] writes
//! [`EXPIRY_WRITES`] changes to one kind and expects the start of them to be compacted away,
//! and [`watch_bookmarks`] waits up to [`BOOKMARK_WAIT`] for an idle bookmark.
//!
//! What a new backend has to get right beyond plain storage, in the order the checks find
//! it: the store-wide resourceVersion (one counter across kinds, returned by lists so a watch
//! can resume exactly after them); writes that change nothing keeping their resourceVersion;
//! watchers seeing selector transitions as adds and deletes (a pod bound to a node is an
//! `Added` for that node's watcher, and a `Deleted` carrying the last matching state for a
//! watcher of unscheduled pods); a bookmark closing the initial events of a watch started
//! without a resourceVersion; and `Expired` rather than a silent gap once history is gone.

mod binding;
mod deletion;
mod objects;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec};

use super::{Store, StoreError};
use crate::object::{Kind, Object};

pub use binding::pod_binding;
pub use deletion::{finalizers, graceful_pod_deletion};
pub use objects::{conflicts, crud, generation, names_and_scope, selectors, status_separation};
pub use watch::{
    watch_bookmarks, watch_expired, watch_finalized_delete, watch_from_resource_version,
    watch_resumes_after_list, watch_selectors, watch_without_resource_version, BOOKMARK_WAIT,
    EXPIRY_WRITES,
};

/// Runs every check, each on a new store from `make`.
pub async fn run_all(make: &dyn Fn() -> Arc<dyn Store>) {
    crud(make()).await;
    names_and_scope(make()).await;
    conflicts(make()).await;
    generation(make()).await;
    status_separation(make()).await;
    pod_binding(make()).await;
    selectors(make()).await;
    finalizers(make()).await;
    graceful_pod_deletion(make()).await;
    concurrent_writers(make()).await;
    watch_from_resource_version(make()).await;
    watch_without_resource_version(make()).await;
    watch_resumes_after_list(make()).await;
    watch_selectors(make()).await;
    watch_finalized_delete(make()).await;
    watch_bookmarks(make()).await;
    watch_expired(make()).await;
}

/// A ConfigMap `ns/name` with `data`.
pub fn config_map(ns: &str, name: &str, data: &[(&str, &str)]) -> Object {
    let mut cm = ConfigMap::default();
    cm.metadata.namespace = Some(ns.into());
    cm.metadata.name = Some(name.into());
    cm.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    cm.into()
}

/// A pod `ns/name` with `labels`, bound to `node` when given.
pub fn pod(ns: &str, name: &str, labels: &[(&str, &str)], node: Option<&str>) -> Object {
    let mut pod = Pod::default();
    pod.metadata.namespace = Some(ns.into());
    pod.metadata.name = Some(name.into());
    pod.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    pod.spec = Some(PodSpec {
        node_name: node.map(str::to_string),
        ..Default::default()
    });
    pod.into()
}

fn data_of(object: &Object) -> BTreeMap<String, String> {
    object
        .as_kind::<ConfigMap>()
        .and_then(|c| c.data.clone())
        .unwrap_or_default()
}

fn rv(object: &Object) -> u64 {
    object
        .resource_version()
        .expect("a stored object has a numeric resourceVersion")
}

fn with<K: crate::object::Resource>(object: &Object, edit: impl FnOnce(&mut K)) -> Object {
    let mut value = object
        .as_kind::<K>()
        .expect("object of the expected kind")
        .clone();
    edit(&mut value);
    value.into_object()
}

async fn get_cm(store: &Arc<dyn Store>, ns: &str, name: &str) -> Result<Arc<Object>, StoreError> {
    store.get(&Kind::ConfigMap, Some(ns), name).await
}
/// Writers that race on one object with read-modify-write and retry on conflict lose no
/// increment.
pub async fn concurrent_writers(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const INCREMENTS: usize = 50;
    store
        .create(config_map("race", "counter", &[("n", "0")]))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..INCREMENTS {
                    loop {
                        let current = get_cm(&store, "race", "counter").await.unwrap();
                        let n: usize = data_of(&current)["n"].parse().unwrap();
                        let next = with::<ConfigMap>(&current, |c| {
                            c.data = Some([("n".into(), (n + 1).to_string())].into())
                        });
                        match store.update(next).await {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => conflicts += 1,
                            Err(e) => panic!("increment: {e}"),
                        }
                        tokio::task::yield_now().await;
                    }
                }
                conflicts
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
    let last = get_cm(&store, "race", "counter").await.unwrap();
    assert_eq!(
        data_of(&last)["n"],
        (TASKS * INCREMENTS).to_string(),
        "no lost update"
    );
}

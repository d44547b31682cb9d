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

mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, PodSpec, PodStatus};

use super::{
    DeleteOptions, Deleted, FieldSelector, LabelSelector, ListOptions, Propagation, Store,
    StoreError,
};
use crate::clock::from_k8s_time;
use crate::object::{Kind, Object};

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

/// Create, get, list, update and delete of a namespaced object; the fields `create` fills;
/// the store-wide resourceVersion.
pub async fn crud(store: Arc<dyn Store>) {
    let created = store
        .create(config_map("crud", "a", &[("k", "1")]))
        .await
        .expect("create");
    let meta = created.meta();
    assert!(!created.uid().is_empty(), "create sets uid");
    assert!(
        meta.creation_timestamp.is_some(),
        "create sets creationTimestamp"
    );
    assert_eq!(meta.generation, Some(1), "create sets generation 1");
    let rv1 = rv(&created);
    assert!(rv1 > 0, "create sets a resourceVersion");
    let again = store
        .create(config_map("crud", "a", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(again, StoreError::AlreadyExists { .. }),
        "second create: {again}"
    );
    assert!(
        again.to_string().contains("\"a\""),
        "error names the object: {again}"
    );

    assert_eq!(get_cm(&store, "crud", "a").await.expect("get"), created);
    let list = store
        .list(&Kind::ConfigMap, &ListOptions::namespace("crud"))
        .await
        .unwrap();
    assert_eq!(list.items, vec![created.clone()]);
    assert!(
        list.resource_version >= rv1,
        "a list is at least as new as its items"
    );

    let other = store.create(pod("crud", "p", &[], None)).await.unwrap();
    assert!(rv(&other) > rv1, "one resourceVersion across kinds");
    let updated = store
        .update(with::<ConfigMap>(&created, |c| {
            c.data = Some([("k".to_string(), "2".to_string())].into());
        }))
        .await
        .expect("update");
    assert!(
        rv(&updated) > rv(&other),
        "update bumps the resourceVersion"
    );
    assert_eq!(updated.uid(), created.uid(), "update keeps uid");
    assert_eq!(updated.meta().creation_timestamp, meta.creation_timestamp);
    assert_eq!(
        data_of(&get_cm(&store, "crud", "a").await.unwrap())["k"],
        "2"
    );
    assert!(store.current_resource_version().await.unwrap() >= rv(&updated));

    let deleted = store
        .delete(
            &Kind::ConfigMap,
            Some("crud"),
            "a",
            &DeleteOptions::default(),
        )
        .await
        .expect("delete");
    let Deleted::Gone(last) = deleted else {
        panic!("a ConfigMap without finalizers goes at once")
    };
    assert_eq!(data_of(&last)["k"], "2", "delete returns the last state");
    let missing = get_cm(&store, "crud", "a").await.unwrap_err();
    assert!(
        matches!(missing, StoreError::NotFound { .. }),
        "get after delete: {missing}"
    );
    let missing = store
        .delete(
            &Kind::ConfigMap,
            Some("crud"),
            "a",
            &DeleteOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(missing, StoreError::NotFound { .. }),
        "second delete: {missing}"
    );
    let missing = store
        .update(config_map("crud", "nope", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, StoreError::NotFound { .. }),
        "update of nothing: {missing}"
    );
    let recreated = store.create(config_map("crud", "a", &[])).await.unwrap();
    assert_ne!(
        recreated.uid(),
        created.uid(),
        "a new object gets a new uid"
    );
}

/// Names, generated names, the default namespace and cluster-scoped kinds.
pub async fn names_and_scope(store: Arc<dyn Store>) {
    let mut unnamed = ConfigMap::default();
    unnamed.metadata.namespace = Some("names".into());
    let e = store.create(unnamed.clone().into()).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Invalid { field, .. } if field == "metadata.name"),
        "create without a name: {e}"
    );
    unnamed.metadata.generate_name = Some("web-".into());
    let a = store
        .create(unnamed.clone().into())
        .await
        .expect("generateName");
    let b = store.create(unnamed.into()).await.expect("generateName");
    assert_ne!(a.name(), b.name());
    assert!(
        a.name().starts_with("web-") && a.name().len() == 9,
        "generated {:?}",
        a.name()
    );
    assert!(a.name()[4..]
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));

    let e = store
        .create(config_map("names", "Bad_Name", &[]))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "invalid name: {e}");
    let mut stale = config_map("names", "stale", &[]);
    stale.meta_mut().resource_version = Some("7".into());
    let e = store.create(stale).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid { .. }),
        "create with a resourceVersion: {e}"
    );

    let mut no_ns = ConfigMap::default();
    no_ns.metadata.name = Some("plain".into());
    let created = store.create(no_ns.into()).await.unwrap();
    assert_eq!(
        created.namespace(),
        Some("default"),
        "namespace defaults to default"
    );
    let e = store
        .get(&Kind::ConfigMap, None, "plain")
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid { .. }),
        "namespaced get without namespace: {e}"
    );

    let mut node = Node::default();
    node.metadata.name = Some("node-1".into());
    node.metadata.namespace = Some("default".into());
    let node = store.create(node.into()).await.unwrap();
    assert_eq!(
        node.namespace(),
        None,
        "a cluster-scoped object has no namespace"
    );
    assert_eq!(store.get(&Kind::Node, None, "node-1").await.unwrap(), node);
    let nodes = store
        .list(&Kind::Node, &ListOptions::namespace("x"))
        .await
        .unwrap();
    assert_eq!(
        nodes.items.len(),
        1,
        "namespace is ignored for cluster-scoped kinds"
    );
}

/// Optimistic concurrency: a stale resourceVersion is a Conflict, none is unconditional.
pub async fn conflicts(store: Arc<dyn Store>) {
    let v1 = store
        .create(config_map("conflicts", "c", &[("k", "1")]))
        .await
        .unwrap();
    let v2 = store
        .update(with::<ConfigMap>(&v1, |c| {
            c.data = Some([("k".into(), "2".into())].into())
        }))
        .await
        .unwrap();
    let e = store
        .update(with::<ConfigMap>(&v1, |c| {
            c.data = Some([("k".into(), "3".into())].into())
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict { .. }),
        "stale update: {e}"
    );
    assert!(e.is_retryable());
    let unconditional = with::<ConfigMap>(&v1, |c| {
        c.metadata.resource_version = None;
        c.data = Some([("k".into(), "4".into())].into());
    });
    let v3 = store
        .update(unconditional)
        .await
        .expect("update without resourceVersion");
    assert!(rv(&v3) > rv(&v2));
    let stale = DeleteOptions {
        precondition_resource_version: v2.meta().resource_version.clone(),
        ..Default::default()
    };
    let e = store
        .delete(&Kind::ConfigMap, Some("conflicts"), "c", &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict { .. }),
        "stale delete precondition: {e}"
    );
    let other_uid = DeleteOptions {
        precondition_uid: Some("00000000-0000-4000-8000-000000000000".into()),
        ..Default::default()
    };
    let e = store
        .delete(&Kind::ConfigMap, Some("conflicts"), "c", &other_uid)
        .await;
    assert!(e.is_err(), "a delete for another uid must not delete");
    let exact = DeleteOptions {
        precondition_uid: Some(v3.uid().to_string()),
        precondition_resource_version: v3.meta().resource_version.clone(),
        ..Default::default()
    };
    store
        .delete(&Kind::ConfigMap, Some("conflicts"), "c", &exact)
        .await
        .expect("delete");
}

/// Generation moves with the spec only; a write that changes nothing is not a new version.
pub async fn generation(store: Arc<dyn Store>) {
    let mut d = Deployment::default();
    d.metadata.namespace = Some("gen".into());
    d.metadata.name = Some("web".into());
    let v1 = store.create(d.into()).await.unwrap();
    let labelled = store
        .update(with::<Deployment>(&v1, |d| {
            d.metadata.labels = Some([("a".into(), "b".into())].into());
        }))
        .await
        .unwrap();
    assert_eq!(
        labelled.meta().generation,
        Some(1),
        "metadata changes keep generation"
    );
    assert!(rv(&labelled) > rv(&v1));
    let scaled = store
        .update(with::<Deployment>(&labelled, |d| {
            d.spec.get_or_insert_with(Default::default).replicas = Some(3);
        }))
        .await
        .unwrap();
    assert_eq!(
        scaled.meta().generation,
        Some(2),
        "spec changes bump generation"
    );
    let status = store
        .update_status(with::<Deployment>(&scaled, |d| {
            d.status
                .get_or_insert_with(Default::default)
                .observed_generation = Some(2);
        }))
        .await
        .unwrap();
    assert_eq!(
        status.meta().generation,
        Some(2),
        "status changes keep generation"
    );
    let same = store.update(Object::clone(&status)).await.unwrap();
    assert_eq!(
        rv(&same),
        rv(&status),
        "a write that changes nothing keeps the resourceVersion"
    );
}

/// `update` ignores status, `update_status` ignores everything else.
pub async fn status_separation(store: Arc<dyn Store>) {
    let v1 = store
        .create(pod("status", "p", &[], Some("n1")))
        .await
        .unwrap();
    let running = |p: &mut Pod| {
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        })
    };
    let v2 = store
        .update(with::<Pod>(&v1, |p| {
            running(p);
            p.metadata.labels = Some([("x".into(), "y".into())].into());
        }))
        .await
        .unwrap();
    assert_eq!(
        v2.field("status.phase").as_deref(),
        Some(""),
        "update ignores status"
    );
    assert_eq!(
        v2.meta().labels.as_ref().map(|l| l["x"].as_str()),
        Some("y")
    );
    let v3 = store
        .update_status(with::<Pod>(&v2, |p| {
            running(p);
            p.metadata.labels = None;
            p.spec.as_mut().unwrap().node_name = Some("elsewhere".into());
        }))
        .await
        .unwrap();
    assert_eq!(v3.field("status.phase").as_deref(), Some("Running"));
    assert_eq!(
        v3.field("spec.nodeName").as_deref(),
        Some("n1"),
        "update_status ignores spec"
    );
    assert!(v3.meta().labels.is_some(), "update_status ignores metadata");
    let e = store
        .update_status(with::<Pod>(&v2, running))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict { .. }),
        "stale status write: {e}"
    );
    let cm = store.create(config_map("status", "c", &[])).await.unwrap();
    let e = store.update_status(Object::clone(&cm)).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid { .. }),
        "status of a kind without one: {e}"
    );
}

/// Label (equality and set-based) and field selectors, namespaces, sorted lists.
pub async fn selectors(store: Arc<dyn Store>) {
    for (ns, name, app, node) in [
        ("b", "web-2", "web", Some("n1")),
        ("a", "web-1", "web", Some("n2")),
        ("a", "db-1", "db", None),
        ("b", "cache", "cache", Some("n1")),
    ] {
        store
            .create(pod(ns, name, &[("app", app), ("tier", "t")], node))
            .await
            .unwrap();
    }
    let names = |list: super::ObjectList| -> Vec<String> {
        list.items.iter().map(|o| o.display_name()).collect()
    };
    let select = |labels: &str, fields: &str, ns: Option<&str>| ListOptions {
        namespace: ns.map(str::to_string),
        labels: (!labels.is_empty()).then(|| LabelSelector::parse(labels).unwrap()),
        fields: (!fields.is_empty()).then(|| FieldSelector::parse(fields).unwrap()),
    };
    let list = |o: ListOptions| {
        let store = store.clone();
        async move { names(store.list(&Kind::Pod, &o).await.unwrap()) }
    };
    assert_eq!(
        list(select("", "", None)).await,
        ["a/db-1", "a/web-1", "b/cache", "b/web-2"]
    );
    assert_eq!(
        list(select("app=web", "", None)).await,
        ["a/web-1", "b/web-2"]
    );
    assert_eq!(
        list(select("app in (db,cache)", "", None)).await,
        ["a/db-1", "b/cache"]
    );
    assert_eq!(
        list(select("app notin (web),tier", "", Some("b"))).await,
        ["b/cache"]
    );
    assert_eq!(list(select("!tier", "", None)).await, Vec::<String>::new());
    assert_eq!(
        list(select("", "spec.nodeName=n1", None)).await,
        ["b/cache", "b/web-2"]
    );
    assert_eq!(list(select("", "spec.nodeName=", None)).await, ["a/db-1"]);
    assert_eq!(
        list(select("app=web", "spec.nodeName!=n1", None)).await,
        ["a/web-1"]
    );
    assert_eq!(
        list(select("", "metadata.name=web-1", None)).await,
        ["a/web-1"]
    );
    assert_eq!(
        list(select("", "metadata.namespace=b", None)).await,
        ["b/cache", "b/web-2"]
    );
    assert_eq!(
        list(select("", "status.phase=", Some("a"))).await,
        ["a/db-1", "a/web-1"]
    );
}

/// Finalizers hold a deleted object, marked with deletionTimestamp, until the last one is
/// removed; propagation policies add theirs.
pub async fn finalizers(store: Arc<dyn Store>) {
    let mut held = config_map("fin", "held", &[]);
    held.meta_mut().finalizers = Some(vec!["example.com/hold".into()]);
    let created = store.create(held).await.unwrap();
    let marked = store
        .delete(
            &Kind::ConfigMap,
            Some("fin"),
            "held",
            &DeleteOptions::default(),
        )
        .await
        .unwrap();
    let Deleted::Marked(marked) = marked else {
        panic!("finalizers keep the object")
    };
    assert!(
        marked.meta().deletion_timestamp.is_some(),
        "marked with deletionTimestamp"
    );
    assert!(rv(&marked) > rv(&created));
    assert_eq!(get_cm(&store, "fin", "held").await.unwrap(), marked);
    let again = store
        .delete(
            &Kind::ConfigMap,
            Some("fin"),
            "held",
            &DeleteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        rv(again.object()),
        rv(&marked),
        "deleting a marked object changes nothing"
    );
    let e = store
        .update(with::<ConfigMap>(&marked, |c| {
            c.metadata
                .finalizers
                .as_mut()
                .unwrap()
                .push("example.com/more".into());
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid { .. }),
        "adding a finalizer while deleting: {e}"
    );
    let relabelled = store
        .update(with::<ConfigMap>(&marked, |c| {
            c.metadata.labels = Some([("l".into(), "v".into())].into())
        }))
        .await
        .expect("a marked object can still be written");
    assert!(relabelled.meta().deletion_timestamp.is_some());
    store
        .update(with::<ConfigMap>(&relabelled, |c| {
            c.metadata.finalizers = None
        }))
        .await
        .expect("removing the last finalizer");
    let e = get_cm(&store, "fin", "held").await.unwrap_err();
    assert!(
        matches!(e, StoreError::NotFound { .. }),
        "last finalizer removed: {e}"
    );

    store.create(config_map("fin", "owner", &[])).await.unwrap();
    let foreground = DeleteOptions {
        propagation: Propagation::Foreground,
        ..Default::default()
    };
    let d = store
        .delete(&Kind::ConfigMap, Some("fin"), "owner", &foreground)
        .await
        .unwrap();
    let Deleted::Marked(owner) = d else {
        panic!("foreground deletion waits for dependents")
    };
    assert_eq!(
        owner.meta().finalizers.as_deref(),
        Some(&["foregroundDeletion".to_string()][..])
    );
}

/// Pods bound to a node are deleted gracefully; grace 0, unbound and finished pods go at once.
pub async fn graceful_pod_deletion(store: Arc<dyn Store>) {
    let opts = DeleteOptions::default();
    let del = |name: &'static str, o: DeleteOptions| {
        let store = store.clone();
        async move {
            store
                .delete(&Kind::Pod, Some("grace"), name, &o)
                .await
                .unwrap()
        }
    };
    let grace = |seconds| DeleteOptions {
        grace_period_seconds: Some(seconds),
        ..Default::default()
    };
    store
        .create(pod("grace", "unbound", &[], None))
        .await
        .unwrap();
    assert!(
        matches!(del("unbound", opts.clone()).await, Deleted::Gone(_)),
        "unbound pod"
    );

    let mut bound = pod("grace", "bound", &[], Some("n1"));
    if let Object::Pod(p) = &mut bound {
        p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(10);
    }
    let created = store.create(bound).await.unwrap();
    let Deleted::Marked(marked) = del("bound", opts.clone()).await else {
        panic!("a bound pod is deleted gracefully")
    };
    let meta = marked.meta();
    assert_eq!(
        meta.deletion_grace_period_seconds,
        Some(10),
        "the pod's own grace period"
    );
    let created_at = from_k8s_time(created.meta().creation_timestamp.as_ref().unwrap());
    let deadline = from_k8s_time(meta.deletion_timestamp.as_ref().unwrap());
    assert!(
        deadline >= created_at + Duration::from_secs(10),
        "deletionTimestamp = now + grace"
    );
    let again = del("bound", opts.clone()).await;
    assert_eq!(
        rv(again.object()),
        rv(&marked),
        "a second delete does not extend the grace"
    );
    let Deleted::Marked(shorter) = del("bound", grace(3)).await else {
        panic!("shortened")
    };
    assert_eq!(shorter.meta().deletion_grace_period_seconds, Some(3));
    assert!(
        matches!(del("bound", grace(0)).await, Deleted::Gone(_)),
        "grace 0 removes"
    );

    store
        .create(pod("grace", "default", &[], Some("n1")))
        .await
        .unwrap();
    let d = del("default", opts.clone()).await;
    assert_eq!(
        d.object().meta().deletion_grace_period_seconds,
        Some(30),
        "default grace 30 s"
    );
    let d = store
        .create(pod("grace", "asked", &[], Some("n1")))
        .await
        .unwrap();
    let _ = d;
    let d = del("asked", grace(5)).await;
    assert_eq!(d.object().meta().deletion_grace_period_seconds, Some(5));

    let finished = store
        .create(pod("grace", "done", &[], Some("n1")))
        .await
        .unwrap();
    store
        .update_status(with::<Pod>(&finished, |p| {
            p.status = Some(PodStatus {
                phase: Some("Succeeded".into()),
                ..Default::default()
            })
        }))
        .await
        .unwrap();
    assert!(
        matches!(del("done", opts.clone()).await, Deleted::Gone(_)),
        "finished pod"
    );

    let mut held = pod("grace", "held", &[], Some("n1"));
    held.meta_mut().finalizers = Some(vec!["example.com/hold".into()]);
    store.create(held).await.unwrap();
    let Deleted::Marked(marked) = del("held", opts.clone()).await else {
        panic!("held")
    };
    let released = store
        .update(with::<Pod>(&marked, |p| p.metadata.finalizers = None))
        .await
        .unwrap();
    assert!(
        released.meta().deletion_timestamp.is_some(),
        "still in its grace period"
    );
    store
        .get(&Kind::Pod, Some("grace"), "held")
        .await
        .expect("kept until deleted with grace 0");
    assert!(matches!(del("held", grace(0)).await, Deleted::Gone(_)));

    let mut held = pod("grace", "held2", &[], Some("n1"));
    held.meta_mut().finalizers = Some(vec!["example.com/hold".into()]);
    store.create(held).await.unwrap();
    let Deleted::Marked(marked) = del("held2", grace(0)).await else {
        panic!("finalizer holds")
    };
    assert_eq!(marked.meta().deletion_grace_period_seconds, Some(0));
    store
        .update(with::<Pod>(&marked, |p| p.metadata.finalizers = None))
        .await
        .unwrap();
    let e = store
        .get(&Kind::Pod, Some("grace"), "held2")
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::NotFound { .. }),
        "finalized with grace 0: {e}"
    );
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

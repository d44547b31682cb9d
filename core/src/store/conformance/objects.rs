//! Conformance checks of single-object semantics: CRUD, names and scope, optimistic
//! concurrency, generation, status separation and selectors.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, PodStatus};

use super::{config_map, data_of, get_cm, pod, rv, with};
use crate::object::{Kind, Object};
use crate::store::{
    DeleteOptions, Deleted, FieldSelector, LabelSelector, ListOptions, ObjectList, Store,
    StoreError,
};

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
    let names =
        |list: ObjectList| -> Vec<String> { list.items.iter().map(|o| o.display_name()).collect() };
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

//! Namespace deletion under tokio's paused clock: the store keeps a Terminating namespace
//! until the namespace controller has emptied it; a stand-in node agent finishes graceful
//! pod deletions.

mod controller_support;

use std::sync::Arc;
use std::time::Duration;

use controller_support::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::controllers::namespace::NamespaceController;
use wharf_core::object::DynamicObject;
use wharf_core::store::memory::NAMESPACE_FINALIZER;
use wharf_core::store::{DeleteOptions, ListOptions, Store, StoreError, WatchEvent, WatchOptions};
use wharf_core::{Kind, Object};

fn start(store: &Arc<dyn Store>, clock: wharf_core::Clock) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(NamespaceController::controller().run(ctx, shutdown.clone()));
    shutdown
}

/// Stands in for the node agents: a pod marked for deletion is stopped `delay` later and
/// then removed with a zero grace period.
fn node_agent(store: Arc<dyn Store>, delay: Duration) {
    tokio::spawn(async move {
        let mut watch = store
            .watch(&Kind::Pod, &WatchOptions::default())
            .await
            .unwrap();
        while let Some(Ok(event)) = watch.next().await {
            let WatchEvent::Modified(pod) = event else {
                continue;
            };
            if pod.meta().deletion_timestamp.is_none() {
                continue;
            }
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let options = DeleteOptions {
                    grace_period_seconds: Some(0),
                    precondition_uid: Some(pod.uid().to_string()),
                    ..Default::default()
                };
                let _ = store
                    .delete(&Kind::Pod, pod.namespace(), pod.name(), &options)
                    .await;
            });
        }
    });
}

fn namespace(name: &str) -> Object {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    Object::from(ns)
}

fn in_ns(object: impl Into<Object>, ns: &str, name: &str) -> Object {
    let mut object: Object = object.into();
    object.meta_mut().name = Some(name.into());
    object.meta_mut().namespace = Some(ns.into());
    object
}

fn bound_pod(ns: &str, name: &str) -> Object {
    let mut p = pod(name, &[("app", "web")]);
    p.metadata.namespace = Some(ns.into());
    p.spec.as_mut().unwrap().node_name = Some("node-1".into());
    p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(30);
    Object::from(p)
}

async fn count(store: &Arc<dyn Store>, kind: &Kind, ns: &str) -> usize {
    store
        .list(kind, &ListOptions::namespace(ns))
        .await
        .unwrap()
        .items
        .len()
}

fn ns_status(o: &Object) -> (Option<String>, Vec<(String, String)>) {
    let ns = o.as_kind::<Namespace>().unwrap();
    let status = ns.status.clone().unwrap_or_default();
    (
        status.phase,
        status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.type_, c.status))
            .collect(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_new_namespace_is_active_with_the_kubernetes_finalizer() {
    let (store, _clock) = store();
    let created = store.create(namespace("team-a")).await.unwrap();
    let ns = created.as_kind::<Namespace>().unwrap();
    assert_eq!(
        ns.spec.as_ref().unwrap().finalizers.as_deref(),
        Some(&[NAMESPACE_FINALIZER.to_string()][..])
    );
    assert_eq!(ns_status(&created).0.as_deref(), Some("Active"));
    // An update that does not mention spec.finalizers keeps them.
    let mut relabeled = Namespace::default();
    relabeled.metadata.name = Some("team-a".into());
    relabeled.metadata.labels = Some(labels(&[("team", "a")]));
    let updated = store.update(Object::from(relabeled)).await.unwrap();
    let spec = updated
        .as_kind::<Namespace>()
        .unwrap()
        .spec
        .clone()
        .unwrap();
    assert_eq!(spec.finalizers, Some(vec![NAMESPACE_FINALIZER.to_string()]));
    // Without the controller, a deleted namespace stays Terminating.
    store
        .delete(&Kind::Namespace, None, "team-a", &DeleteOptions::default())
        .await
        .unwrap();
    let marked = store.get(&Kind::Namespace, None, "team-a").await.unwrap();
    assert!(marked.meta().deletion_timestamp.is_some());
    assert_eq!(ns_status(&marked).0.as_deref(), Some("Terminating"));
}

#[tokio::test(start_paused = true)]
async fn deleting_a_namespace_removes_pods_services_configmaps_then_the_namespace() {
    let (store, clock) = store();
    node_agent(store.clone(), Duration::from_secs(5));
    let shutdown = start(&store, clock);
    store.create(namespace("team-a")).await.unwrap();
    store.create(namespace("team-b")).await.unwrap();
    for i in 0..3 {
        store
            .create(bound_pod("team-a", &format!("web-{i}")))
            .await
            .unwrap();
    }
    store
        .create(in_ns(Service::default(), "team-a", "web"))
        .await
        .unwrap();
    store
        .create(in_ns(ConfigMap::default(), "team-a", "settings"))
        .await
        .unwrap();
    store
        .create(in_ns(ConfigMap::default(), "team-b", "settings"))
        .await
        .unwrap();
    let custom = DynamicObject {
        api_version: "db.example.com/v1".into(),
        kind: "Database".into(),
        ..Default::default()
    };
    store
        .create(Object::Custom(Box::new(DynamicObject {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("orders".into()),
                namespace: Some("team-a".into()),
                ..Default::default()
            },
            ..custom
        })))
        .await
        .unwrap();

    store
        .delete(&Kind::Namespace, None, "team-a", &DeleteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Services, config maps and the custom object go at once; pods wait for their node.
    assert_eq!(count(&store, &Kind::Service, "team-a").await, 0);
    assert_eq!(count(&store, &Kind::ConfigMap, "team-a").await, 0);
    let db = Kind::custom("db.example.com/v1", "Database", true);
    assert_eq!(count(&store, &db, "team-a").await, 0);
    assert_eq!(count(&store, &Kind::Pod, "team-a").await, 3);
    let ns = store.get(&Kind::Namespace, None, "team-a").await.unwrap();
    let (phase, conditions) = ns_status(&ns);
    assert_eq!(phase.as_deref(), Some("Terminating"));
    assert!(conditions.contains(&("NamespaceContentRemaining".into(), "True".into())));

    // Nothing new may be created meanwhile.
    let refused = store
        .create(in_ns(ConfigMap::default(), "team-a", "late"))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::NamespaceTerminating { ref namespace, .. } if namespace == "team-a")
    );
    assert!(refused.to_string().contains("being terminated"));

    eventually(Duration::from_secs(30), "team-a is gone", || async {
        store.get(&Kind::Namespace, None, "team-a").await.is_err()
    })
    .await;
    assert_eq!(count(&store, &Kind::Pod, "team-a").await, 0);
    // The other namespace is untouched.
    assert_eq!(count(&store, &Kind::ConfigMap, "team-b").await, 1);
    assert!(store.get(&Kind::Namespace, None, "team-b").await.is_ok());
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn content_with_a_finalizer_holds_the_namespace_until_the_finalizer_goes() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    store.create(namespace("team-c")).await.unwrap();
    let mut held = ConfigMap::default();
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    store.create(in_ns(held, "team-c", "held")).await.unwrap();
    store
        .delete(&Kind::Namespace, None, "team-c", &DeleteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let ns = store.get(&Kind::Namespace, None, "team-c").await.unwrap();
    let (_, conditions) = ns_status(&ns);
    assert!(conditions.contains(&("NamespaceFinalizersRemaining".into(), "True".into())));
    let message = ns
        .as_kind::<Namespace>()
        .unwrap()
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "NamespaceFinalizersRemaining")
        .unwrap()
        .message
        .clone()
        .unwrap();
    assert!(
        message.contains("example.com/hold in 1 resource instances"),
        "{message}"
    );

    // The other controller finishes: the config map and then the namespace go.
    let cm = store
        .get(&Kind::ConfigMap, Some("team-c"), "held")
        .await
        .unwrap();
    let mut cm = cm.as_kind::<ConfigMap>().unwrap().clone();
    cm.metadata.finalizers = None;
    store.update(Object::from(cm)).await.unwrap();
    eventually(Duration::from_secs(10), "team-c is gone", || async {
        store.get(&Kind::Namespace, None, "team-c").await.is_err()
    })
    .await;
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn another_spec_finalizer_keeps_the_emptied_namespace() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let mut ns = Namespace::default();
    ns.metadata.name = Some("team-d".into());
    ns.spec = Some(k8s_openapi::api::core::v1::NamespaceSpec {
        finalizers: Some(vec!["example.com/audit".into()]),
    });
    store.create(Object::from(ns)).await.unwrap();
    store
        .delete(&Kind::Namespace, None, "team-d", &DeleteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let kept = store.get(&Kind::Namespace, None, "team-d").await.unwrap();
    let finalizers = kept
        .as_kind::<Namespace>()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .finalizers
        .clone();
    assert_eq!(finalizers, Some(vec!["example.com/audit".to_string()]));
    shutdown.cancel();
}

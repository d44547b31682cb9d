//! Conformance check of `bind`, the `pods/binding` subresource.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodCondition};

use super::{pod, with};
use crate::clock::Clock;
use crate::object::Kind;
use crate::store::{DeleteOptions, FieldSelector, ListOptions, PodBinding, Store, StoreError};
use crate::store::{WatchEvent, WatchOptions};

fn scheduled(object: &crate::object::Object) -> Option<(String, Option<String>)> {
    let pod = object.as_kind::<Pod>()?;
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    Some((condition.status.clone(), condition.reason.clone()))
}

/// `bind` sets `spec.nodeName` and `PodScheduled=True`, keeps labels and status, and is seen
/// by a node's watcher as the pod arriving; a bound pod, a pod being deleted, a pod of another
/// uid and a missing pod are refused.
pub async fn pod_binding(store: Arc<dyn Store>) {
    let time = Clock::new().now_k8s();
    let created = store
        .create(pod("bind", "p", &[("app", "web")], None))
        .await
        .unwrap();
    let pending = store
        .update_status(with::<Pod>(&created, |p| {
            let status = p.status.get_or_insert_with(Default::default);
            status.phase = Some("Pending".into());
            // As the scheduler leaves a pod it could not place before: bind replaces this.
            status.conditions = Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                ..Default::default()
            }]);
        }))
        .await
        .unwrap();
    let mut node_watch = store
        .watch(
            &Kind::Pod,
            &WatchOptions {
                selector: ListOptions {
                    fields: Some(FieldSelector::parse("spec.nodeName=n1").unwrap()),
                    ..Default::default()
                },
                resource_version: Some(pending.resource_version().unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let bound = store
        .bind(&PodBinding::of(&pending, "n1", time.clone()))
        .await
        .unwrap();
    assert_eq!(bound.field("spec.nodeName").as_deref(), Some("n1"));
    assert_eq!(
        scheduled(&bound),
        Some(("True".into(), None)),
        "PodScheduled=True after bind"
    );
    let conditions = bound
        .as_kind::<Pod>()
        .and_then(|p| p.status.as_ref()?.conditions.clone())
        .unwrap_or_default();
    let scheduled_conditions: Vec<_> = conditions
        .iter()
        .filter(|c| c.type_ == "PodScheduled")
        .collect();
    assert_eq!(
        scheduled_conditions.len(),
        1,
        "bind replaces PodScheduled=False: {conditions:?}"
    );
    assert_eq!(
        scheduled_conditions[0].last_transition_time.as_ref(),
        Some(&time),
        "the condition changed at the binding's time"
    );
    assert_eq!(bound.field("status.phase").as_deref(), Some("Pending"));
    assert_eq!(bound.meta().labels, pending.meta().labels);
    assert_eq!(bound.uid(), pending.uid());
    assert!(bound.resource_version() > pending.resource_version());
    let stored = store.get(&Kind::Pod, Some("bind"), "p").await.unwrap();
    assert_eq!(stored, bound, "bind returns the stored pod");

    // The node's watcher sees the pod arrive, bound and scheduled.
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), node_watch.next())
        .await
        .expect("an event for the node watcher")
        .expect("watch open")
        .expect("no watch error");
    match event {
        WatchEvent::Added(o) => assert_eq!(o.field("spec.nodeName").as_deref(), Some("n1")),
        other => panic!("expected Added for the node watcher, got {other:?}"),
    }

    let again = store
        .bind(&PodBinding::of(&bound, "n2", time.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&again, StoreError::Invalid { field, .. } if field == "spec.nodeName"),
        "binding a bound pod: {again}"
    );
    assert_eq!(
        store
            .get(&Kind::Pod, Some("bind"), "p")
            .await
            .unwrap()
            .field("spec.nodeName")
            .as_deref(),
        Some("n1"),
        "a refused binding changes nothing"
    );

    let mut other = PodBinding::of(&bound, "n1", time.clone());
    other.name = "missing".into();
    let e = store.bind(&other).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "missing pod: {e}");

    let second = store.create(pod("bind", "q", &[], None)).await.unwrap();
    let mut stale = PodBinding::of(&second, "n1", time.clone());
    stale.uid = Some("not-the-uid".into());
    let e = store.bind(&stale).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "other uid: {e}");

    // A pod being deleted cannot be bound (an unbound pod with a finalizer stays marked).
    let guarded = store
        .update(with::<Pod>(&second, |p| {
            p.metadata.finalizers = Some(vec!["wharf.dev/test".into()]);
        }))
        .await
        .unwrap();
    store
        .delete(&Kind::Pod, Some("bind"), "q", &DeleteOptions::default())
        .await
        .unwrap();
    let e = store
        .bind(&PodBinding::of(&guarded, "n1", time))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Invalid { field, .. } if field == "spec.nodeName"),
        "binding a pod being deleted: {e}"
    );
}

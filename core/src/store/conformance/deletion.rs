//! Conformance checks of deletion: finalizers, propagation finalizers and graceful pod
//! deletion.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus};

use super::{config_map, get_cm, pod, rv, with};
use crate::clock::from_k8s_time;
use crate::object::{Kind, Object};
use crate::store::{DeleteOptions, Deleted, Propagation, Store, StoreError};

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
    store
        .create(pod("grace", "asked", &[], Some("n1")))
        .await
        .unwrap();
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

//! Garbage collector: background, foreground and orphan propagation, with the ReplicaSet
//! controller creating the dependents.

mod controller_support;

use std::sync::Arc;
use std::time::Duration;

use controller_support::*;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::controllers::garbage_collector::GarbageCollector;
use wharf_core::controllers::replicaset::ReplicaSetController;
use wharf_core::store::{Api, DeleteOptions, Propagation, Store};
use wharf_core::{Clock, Kind, Object};

fn start(store: &Arc<dyn Store>, clock: Clock) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(ReplicaSetController::controller().run(ctx.clone(), shutdown.clone()));
    tokio::spawn(GarbageCollector::new().run(ctx, shutdown.clone()));
    shutdown
}

async fn replica_set_with_pods(store: &Arc<dyn Store>, name: &str) -> Api<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(store.clone(), "default");
    let mut rs = ReplicaSet::default();
    rs.metadata.name = Some(name.into());
    rs.spec = Some(ReplicaSetSpec {
        replicas: Some(3),
        selector: selector(&[("app", name)]),
        template: Some(template(&[("app", name)], "busybox")),
        ..Default::default()
    });
    api.create(rs).await.unwrap();
    eventually(Duration::from_secs(5), "3 pods", || async {
        active_pods(store).await.len() == 3
    })
    .await;
    api
}

#[tokio::test(start_paused = true)]
async fn propagation_policies() {
    for propagation in [
        Propagation::Background,
        Propagation::Foreground,
        Propagation::Orphan,
    ] {
        let (store, clock) = store();
        let shutdown = start(&store, clock);
        let api = replica_set_with_pods(&store, "web").await;
        let rs_uid = api.get("web").await.unwrap().metadata.uid.clone().unwrap();
        let deleted = api
            .delete(
                "web",
                &DeleteOptions {
                    propagation,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        match propagation {
            Propagation::Background => {
                eventually(Duration::from_secs(5), "pods collected", || async {
                    list(&store, Kind::Pod).await.is_empty()
                })
                .await;
            }
            Propagation::Foreground => {
                // The owner stays, marked, until its blocking dependents are gone.
                let marked = deleted.object().clone();
                assert!(marked.meta().deletion_timestamp.is_some());
                assert!(marked
                    .meta()
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == "foregroundDeletion"));
                eventually(Duration::from_secs(5), "pods, then owner, gone", || async {
                    list(&store, Kind::Pod).await.is_empty()
                        && api.get_opt("web").await.unwrap().is_none()
                })
                .await;
            }
            Propagation::Orphan => {
                eventually(
                    Duration::from_secs(5),
                    "owner gone, pods orphaned",
                    || async {
                        let pods = list(&store, Kind::Pod).await;
                        api.get_opt("web").await.unwrap().is_none()
                            && pods.len() == 3
                            && pods.iter().all(|p| {
                                !p.meta()
                                    .owner_references
                                    .iter()
                                    .flatten()
                                    .any(|r| r.uid == rs_uid)
                            })
                    },
                )
                .await;
            }
        }
        shutdown.cancel();
    }
}

#[tokio::test(start_paused = true)]
async fn dependents_of_a_missing_owner_are_collected_and_live_owners_keep_them() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let owner = store
        .create(Object::from(ConfigMap {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("owner".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        }))
        .await
        .unwrap();
    let reference = |name: &str, uid: &str| OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: name.into(),
        uid: uid.into(),
        ..Default::default()
    };
    let dependent = |name: &str, refs: Vec<OwnerReference>| {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("default".into());
        cm.metadata.owner_references = Some(refs);
        Object::from(cm)
    };
    // One dependent of a uid that never existed, one of the live owner and of the ghost.
    store
        .create(dependent(
            "dangling",
            vec![reference("ghost", "no-such-uid")],
        ))
        .await
        .unwrap();
    store
        .create(dependent(
            "shared",
            vec![
                reference("ghost", "no-such-uid"),
                reference("owner", owner.uid()),
            ],
        ))
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(store.clone(), "default");
    eventually(
        Duration::from_secs(5),
        "dangling collected, shared kept",
        || async {
            let shared = cms.get_opt("shared").await.unwrap();
            cms.get_opt("dangling").await.unwrap().is_none()
                && shared.is_some_and(|s| {
                    s.metadata
                        .owner_references
                        .as_ref()
                        .is_some_and(|r| r.len() == 1 && r[0].name == "owner")
                })
        },
    )
    .await;
    // Deleting the last owner collects the shared dependent.
    cms.delete("owner", &DeleteOptions::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "shared collected", || async {
        cms.get_opt("shared").await.unwrap().is_none()
    })
    .await;
    shutdown.cancel();
}

/// The collector looks again at an object only when its owners or its deletion state
/// change: other updates (status writes, data) neither rebuild its graph node nor queue it.
#[tokio::test(start_paused = true)]
async fn updates_that_keep_owners_do_not_queue_the_collector() {
    let (store, clock) = store();
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    let gc = GarbageCollector::new();
    let metrics = gc.metrics();
    tokio::spawn(gc.run(ctx, shutdown.clone()));
    let config_map = |name: &str, owner: Option<&Object>| {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("default".into());
        cm.metadata.owner_references = owner.map(|o| {
            vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: o.name().into(),
                uid: o.uid().into(),
                ..Default::default()
            }]
        });
        cm
    };
    let cms: Api<ConfigMap> = Api::namespaced(store.clone(), "default");
    let owner = store
        .create(Object::from(config_map("owner", None)))
        .await
        .unwrap();
    let other = store
        .create(Object::from(config_map("other", None)))
        .await
        .unwrap();
    cms.create(config_map("dependent", Some(&owner)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = metrics.snapshot().reconciles;

    for i in 0..5 {
        let mut cm = cms.get("dependent").await.unwrap().to_owned_value();
        cm.data = Some([("round".to_string(), i.to_string())].into());
        cms.update(cm).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        metrics.snapshot().reconciles,
        settled,
        "data updates queued it"
    );

    // A change of owners is looked at.
    let mut cm = cms.get("dependent").await.unwrap().to_owned_value();
    cm.metadata.owner_references = config_map("x", Some(&other)).metadata.owner_references;
    cms.update(cm).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(metrics.snapshot().reconciles > settled);
    // Both owners live: the dependent stays.
    assert!(cms.get_opt("dependent").await.unwrap().is_some());
    shutdown.cancel();
}

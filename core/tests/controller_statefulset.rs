//! StatefulSet controller under tokio's paused clock with the memory store: ordered and
//! parallel creation, ordered scale-down, claims per ordinal, partitioned rolling updates,
//! OnDelete, recreation of failed pods, and an end-to-end run on a simulated cluster.

mod controller_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use controller_support::*;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, RollingUpdateStatefulSetStrategy, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, PodStatus, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use wharf_core::cluster::ClusterBuilder;
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::controllers::history::CONTROLLER_REVISION_HASH;
use wharf_core::controllers::statefulset::{
    StatefulSetController, POD_INDEX_LABEL, POD_NAME_LABEL,
};
use wharf_core::controllers::ControllerManager;
use wharf_core::node::NodeConfig;
use wharf_core::store::{Api, DeleteOptions, ListOptions, Store, WatchEvent, WatchOptions};
use wharf_core::{Clock, Kind, Object};

fn stateful_set(name: &str, replicas: i32, policy: &str) -> StatefulSet {
    let mut set = StatefulSet::default();
    set.metadata.name = Some(name.into());
    set.metadata.namespace = Some("default".into());
    set.spec = Some(StatefulSetSpec {
        replicas: Some(replicas),
        pod_management_policy: Some(policy.into()),
        service_name: Some(format!("{name}-headless")),
        selector: selector(&[("app", name)]),
        template: template(&[("app", name)], "busybox:1"),
        ..Default::default()
    });
    set
}

fn with_claims(mut set: StatefulSet) -> StatefulSet {
    let mut claim = PersistentVolumeClaim::default();
    claim.metadata.name = Some("data".into());
    claim.spec = Some(PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        resources: Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
            ..Default::default()
        }),
        ..Default::default()
    });
    set.spec.as_mut().unwrap().volume_claim_templates = Some(vec![claim]);
    set
}

fn start(store: &Arc<dyn Store>, clock: Clock) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(StatefulSetController::controller().run(ctx, shutdown.clone()));
    shutdown
}

async fn pod_names(store: &Arc<dyn Store>) -> Vec<String> {
    let mut names: Vec<String> = list(store, Kind::Pod)
        .await
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    names.sort();
    names
}

async fn get_pod(store: &Arc<dyn Store>, name: &str) -> Option<Arc<Object>> {
    store.get(&Kind::Pod, Some("default"), name).await.ok()
}

async fn make_ready(store: &Arc<dyn Store>, clock: &Clock, name: &str) {
    let pod = get_pod(store, name).await.expect("pod exists");
    set_ready(store, clock, &pod, true, "10.0.0.1").await;
}

fn revision(p: &Object) -> String {
    p.meta().labels.as_ref().unwrap()[CONTROLLER_REVISION_HASH].clone()
}

async fn update<F: FnOnce(&mut StatefulSetSpec)>(api: &Api<StatefulSet>, name: &str, change: F) {
    let mut set = api.get(name).await.unwrap().to_owned_value();
    change(set.spec.as_mut().unwrap());
    api.update(set).await.unwrap();
}

/// Records the names of pods as they are deleted (removed or marked), in order.
fn deletions(store: Arc<dyn Store>) -> Arc<std::sync::Mutex<Vec<String>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        let mut watch = store
            .watch(&Kind::Pod, &WatchOptions::default())
            .await
            .unwrap();
        let mut marked = std::collections::HashSet::new();
        while let Some(Ok(event)) = watch.next().await {
            let name = match &event {
                WatchEvent::Deleted(p) => p.uid().to_string(),
                WatchEvent::Modified(p) if p.meta().deletion_timestamp.is_some() => {
                    p.uid().to_string()
                }
                _ => continue,
            };
            let object = match event {
                WatchEvent::Deleted(p) | WatchEvent::Modified(p) => p,
                _ => continue,
            };
            if marked.insert(name) {
                seen.lock().unwrap().push(object.name().to_string());
            }
        }
    });
    out
}

#[tokio::test(start_paused = true)]
async fn management_policy_decides_how_many_pods_start_at_once() {
    // (policy, pods that exist while none is ready)
    let table = [
        ("OrderedReady", vec!["web-0"]),
        ("Parallel", vec!["web-0", "web-1", "web-2"]),
    ];
    for (policy, expected) in table {
        let (store, clock) = store();
        let shutdown = start(&store, clock);
        let api: Api<StatefulSet> = Api::namespaced(store.clone(), "default");
        api.create(stateful_set("web", 3, policy)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(pod_names(&store).await, expected, "{policy}");
        shutdown.cancel();
    }
}

#[tokio::test(start_paused = true)]
async fn ordered_ready_creates_pod_n_plus_1_only_after_pod_n_is_ready() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<StatefulSet> = Api::namespaced(store.clone(), "default");
    api.create(stateful_set("web", 3, "OrderedReady"))
        .await
        .unwrap();

    for n in 0..3 {
        let name = format!("web-{n}");
        eventually(Duration::from_secs(5), &name, || async {
            get_pod(&store, &name).await.is_some()
        })
        .await;
        // Running but not ready holds the next ordinal back.
        let pod = get_pod(&store, &name).await.unwrap();
        set_ready(&store, &clock, &pod, false, "10.0.0.1").await;
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(pod_names(&store).await.len(), n + 1, "only {n} created");
        make_ready(&store, &clock, &name).await;
    }

    eventually(Duration::from_secs(5), "3 ready replicas", || async {
        let s = api
            .get("web")
            .await
            .unwrap()
            .status
            .clone()
            .unwrap_or_default();
        s.ready_replicas == Some(3) && s.available_replicas == Some(3) && s.replicas == 3
    })
    .await;
    let pod = get_pod(&store, "web-1").await.unwrap();
    let p = pod.as_kind::<Pod>().unwrap();
    let labels = p.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[POD_NAME_LABEL], "web-1");
    assert_eq!(labels[POD_INDEX_LABEL], "1");
    assert_eq!(labels["app"], "web");
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("web-headless"));
    let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("StatefulSet", Some(true))
    );

    let set = api.get("web").await.unwrap();
    let status = set.status.clone().unwrap();
    assert_eq!(status.current_revision, status.update_revision);
    assert_eq!(status.current_replicas, Some(3));
    assert_eq!(status.updated_replicas, Some(3));
    assert_eq!(status.observed_generation, set.metadata.generation);
    assert_eq!(revision(&pod), status.update_revision.unwrap());
    let revisions = list(&store, Kind::ControllerRevision).await;
    assert_eq!(revisions.len(), 1);
    assert_eq!(
        revisions[0]
            .as_kind::<ControllerRevision>()
            .unwrap()
            .revision,
        1
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn scale_down_removes_the_highest_ordinal_first_and_waits_for_it() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    kubelet(
        store.clone(),
        clock,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let api: Api<StatefulSet> = Api::namespaced(store.clone(), "default");
    let mut set = with_claims(stateful_set("db", 4, "OrderedReady"));
    // Bound pods are deleted gracefully: they stay Terminating until the test removes them.
    set.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .node_name = Some("n1".into());
    api.create(set).await.unwrap();
    eventually(Duration::from_secs(30), "4 ready", || async {
        api.get("db")
            .await
            .unwrap()
            .status
            .clone()
            .and_then(|s| s.ready_replicas)
            == Some(4)
    })
    .await;
    let deleted = deletions(store.clone());
    update(&api, "db", |s| s.replicas = Some(1)).await;

    for victim in ["db-3", "db-2", "db-1"] {
        eventually(Duration::from_secs(5), victim, || async {
            deleted.lock().unwrap().last().map(String::as_str) == Some(victim)
        })
        .await;
        // The next one waits while this one is terminating.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(
            deleted.lock().unwrap().last().map(String::as_str),
            Some(victim)
        );
        store
            .delete(
                &Kind::Pod,
                Some("default"),
                victim,
                &DeleteOptions {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(5), "one replica", || async {
        api.get("db")
            .await
            .unwrap()
            .status
            .clone()
            .map(|s| s.replicas)
            == Some(1)
    })
    .await;
    assert_eq!(*deleted.lock().unwrap(), ["db-3", "db-2", "db-1"]);
    assert_eq!(pod_names(&store).await, ["db-0"]);

    // Claims are kept (retention Retain by default) and used again on scale-up.
    let claims: Vec<String> = list(&store, Kind::PersistentVolumeClaim)
        .await
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    assert_eq!(claims, ["data-db-0", "data-db-1", "data-db-2", "data-db-3"]);
    let pod = get_pod(&store, "db-0").await.unwrap();
    let volumes = pod
        .as_kind::<Pod>()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .clone()
        .unwrap();
    assert_eq!(
        volumes[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        "data-db-0"
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn claim_retention_policy_deletes_claims_when_asked() {
    // (whenScaled, whenDeleted, claims left after scaling 3 → 1, claims left after deleting the set)
    let table = [
        ("Retain", "Retain", 3, 3),
        ("Delete", "Retain", 1, 1),
        ("Retain", "Delete", 3, 0),
        ("Delete", "Delete", 1, 0),
    ];
    for (when_scaled, when_deleted, after_scale, after_delete) in table {
        let (store, clock) = store();
        let manager = ControllerManager::start(store.clone(), clock);
        let shutdown = CancellationToken::new();
        kubelet(
            store.clone(),
            clock,
            Duration::from_secs(1),
            shutdown.clone(),
        );
        let api: Api<StatefulSet> = Api::namespaced(store.clone(), "default");
        let mut set = with_claims(stateful_set("kv", 3, "Parallel"));
        set.spec
            .as_mut()
            .unwrap()
            .persistent_volume_claim_retention_policy =
            Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_scaled: Some(when_scaled.into()),
                when_deleted: Some(when_deleted.into()),
            });
        api.create(set).await.unwrap();
        let case = format!("whenScaled {when_scaled}, whenDeleted {when_deleted}");
        eventually(Duration::from_secs(30), &case, || async {
            api.get("kv")
                .await
                .unwrap()
                .status
                .clone()
                .and_then(|s| s.ready_replicas)
                == Some(3)
        })
        .await;
        update(&api, "kv", |s| s.replicas = Some(1)).await;
        eventually(Duration::from_secs(30), &case, || async {
            pod_names(&store).await == ["kv-0"]
                && list(&store, Kind::PersistentVolumeClaim).await.len() == after_scale
        })
        .await;
        api.delete("kv", &DeleteOptions::default()).await.unwrap();
        eventually(Duration::from_secs(30), &case, || async {
            pod_names(&store).await.is_empty()
                && list(&store, Kind::PersistentVolumeClaim).await.len() == after_delete
        })
        .await;
        shutdown.cancel();
        manager.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn partitioned_rolling_update_leaves_lower_ordinals_on_the_old_revision() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    kubelet(
        store.clone(),
        clock,
        Duration::from_secs(2),
        shutdown.clone(),
    );
    let api: Api<StatefulSet> = Api::namespaced(store.clone(), "default");
    api.create(stateful_set("web", 4, "OrderedReady"))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "4 ready", || async {
        api.get("web")
            .await
            .unwrap()
            .status
            .clone()
            .and_then(|s| s.ready_replicas)
            == Some(4)
    })
    .await;
    let old = api
        .get("web")
        .await
        .unwrap()
        .status
        .clone()
        .unwrap()
        .update_revision
        .unwrap();
    let deleted = deletions(store.clone());
    update(&api, "web", |s| {
        s.template.spec.as_mut().unwrap().containers[0].image = Some("busybox:2".into());
        s.update_strategy = Some(StatefulSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateStatefulSetStrategy {
                partition: Some(2),
                max_unavailable: None,
            }),
        });
    })
    .await;

    eventually(
        Duration::from_secs(60),
        "ordinals 2 and 3 updated",
        || async {
            let s = api.get("web").await.unwrap().status.clone().unwrap();
            s.updated_replicas == Some(2)
                && s.ready_replicas == Some(4)
                && s.current_replicas == Some(2)
        },
    )
    .await;
    let status = api.get("web").await.unwrap().status.clone().unwrap();
    let new = status.update_revision.clone().unwrap();
    assert_ne!(new, old);
    assert_eq!(status.current_revision.as_deref(), Some(old.as_str()));
    for (pod, want) in [
        ("web-0", &old),
        ("web-1", &old),
        ("web-2", &new),
        ("web-3", &new),
    ] {
        assert_eq!(
            &revision(&get_pod(&store, pod).await.unwrap()),
            want,
            "{pod}"
        );
    }
    assert_eq!(
        *deleted.lock().unwrap(),
        ["web-3", "web-2"],
        "highest first"
    );
    let image = |p: Arc<Object>| {
        p.as_kind::<Pod>()
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .clone()
            .unwrap()
    };
    assert_eq!(image(get_pod(&store, "web-1").await.unwrap()), "busybox:1");
    assert_eq!(image(get_pod(&store, "web-3").await.unwrap()), "busybox:2");

    // A pod below the partition that is deleted comes back on the old revision.
    store
        .delete(
            &Kind::Pod,
            Some("default"),
            "web-0",
            &DeleteOptions::default(),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "web-0 back", || async {
        get_pod(&store, "web-0").await.is_some_and(|p| is_ready(&p))
    })
    .await;
    assert_eq!(revision(&get_pod(&store, "web-0").await.unwrap()), old);
    assert_eq!(image(get_pod(&store, "web-0").await.unwrap()), "busybox:1");

    // Partition 0 finishes the rollout; the update revision becomes current.
    update(&api, "web", |s| {
        s.update_strategy
            .as_mut()
            .unwrap()
            .rolling_update
            .as_mut()
            .unwrap()
            .partition = Some(0);
    })
    .await;
    eventually(Duration::from_secs(60), "rollout complete", || async {
        let s = api.get("web").await.unwrap().status.clone().unwrap();
        s.current_revision.as_deref() == Some(new.as_str())
            && s.updated_replicas == Some(4)
            && s.current_replicas == Some(4)
            && s.ready_replicas == Some(4)
    })
    .await;
    assert_eq!(
        *deleted.lock().unwrap(),
        ["web-3", "web-2", "web-0", "web-1", "web-0"]
    );
    assert_eq!(list(&store, Kind::ControllerRevision).await.len(), 2);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn on_delete_waits_for_the_user_and_rollback_reuses_the_revision() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    kubelet(
        store.clone(),
        clock,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let api: Api<StatefulSet> = Api::namespaced(store.clone(), "default");
    let mut set = stateful_set("q", 2, "Parallel");
    set.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
        type_: Some("OnDelete".into()),
        rolling_update: None,
    });
    api.create(set).await.unwrap();
    eventually(Duration::from_secs(30), "2 ready", || async {
        api.get("q")
            .await
            .unwrap()
            .status
            .clone()
            .and_then(|s| s.ready_replicas)
            == Some(2)
    })
    .await;
    let first = revision(&get_pod(&store, "q-0").await.unwrap());
    update(&api, "q", |s| {
        s.template.spec.as_mut().unwrap().containers[0].image = Some("busybox:2".into());
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let status = api.get("q").await.unwrap().status.clone().unwrap();
    assert_eq!(status.updated_replicas, Some(0), "OnDelete touches nothing");
    let second = status.update_revision.unwrap();
    store
        .delete(
            &Kind::Pod,
            Some("default"),
            "q-1",
            &DeleteOptions::default(),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "q-1 on the new revision",
        || async {
            get_pod(&store, "q-1")
                .await
                .is_some_and(|p| revision(&p) == second)
        },
    )
    .await;
    assert_eq!(revision(&get_pod(&store, "q-0").await.unwrap()), first);

    // Back to the first template: its revision is reused with the next number.
    update(&api, "q", |s| {
        s.template.spec.as_mut().unwrap().containers[0].image = Some("busybox:1".into());
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "first revision is the update again",
        || async {
            api.get("q")
                .await
                .unwrap()
                .status
                .clone()
                .and_then(|s| s.update_revision)
                == Some(first.clone())
        },
    )
    .await;
    let revisions = list(&store, Kind::ControllerRevision).await;
    let numbers: BTreeMap<String, i64> = revisions
        .iter()
        .map(|r| {
            (
                r.name().to_string(),
                r.as_kind::<ControllerRevision>().unwrap().revision,
            )
        })
        .collect();
    assert_eq!(numbers, BTreeMap::from([(first, 3), (second, 2)]));
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn failed_pods_are_recreated_with_the_same_name() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    kubelet(
        store.clone(),
        clock,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let api: Api<StatefulSet> = Api::namespaced(store.clone(), "default");
    api.create(stateful_set("web", 2, "OrderedReady"))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "2 ready", || async {
        api.get("web")
            .await
            .unwrap()
            .status
            .clone()
            .and_then(|s| s.ready_replicas)
            == Some(2)
    })
    .await;
    let before = get_pod(&store, "web-1").await.unwrap();
    let mut failed = before.as_kind::<Pod>().unwrap().clone();
    failed.status = Some(PodStatus {
        phase: Some("Failed".into()),
        ..Default::default()
    });
    store.update_status(Object::from(failed)).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "web-1 replaced and ready",
        || async {
            get_pod(&store, "web-1")
                .await
                .is_some_and(|p| p.uid() != before.uid() && is_ready(&p))
        },
    )
    .await;
    shutdown.cancel();
}

const CLUSTER_APP: &str = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast}
provisioner: sim.csi.wharf.dev
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: db
        image: busybox
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: fast
      resources: {requests: {storage: 1Gi}}
"#;

#[tokio::test(start_paused = true)]
async fn runs_on_a_simulated_cluster_with_bound_claims() {
    // One node: each simulated node has its own CSI driver state, so a volume provisioned
    // through one node's driver cannot be staged on another.
    let cluster = ClusterBuilder::new()
        .simulated_nodes(1, |i| NodeConfig::new(&format!("node-{i}")))
        .start()
        .await
        .unwrap();
    cluster.apply_str(CLUSTER_APP, "db.yaml").await.unwrap();
    let sets = cluster.api::<StatefulSet>("default");
    eventually(Duration::from_secs(120), "3 ready replicas", || async {
        sets.get("db")
            .await
            .unwrap()
            .status
            .clone()
            .and_then(|s| s.ready_replicas)
            == Some(3)
    })
    .await;
    let claims = cluster.api::<PersistentVolumeClaim>("default");
    for claim in claims.list(&ListOptions::default()).await.unwrap() {
        assert_eq!(
            claim.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Bound"),
            "{:?}",
            claim.metadata.name
        );
    }
    let pods = cluster.api::<Pod>("default");
    let names: Vec<String> = pods
        .list(&ListOptions::default())
        .await
        .unwrap()
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["db-0", "db-1", "db-2"]);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn available_replicas_wait_min_ready_seconds() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<StatefulSet> = Api::namespaced(store.clone(), "default");
    let mut set = stateful_set("db", 2, "Parallel");
    set.spec.as_mut().unwrap().min_ready_seconds = Some(20);
    api.create(set).await.unwrap();
    eventually(Duration::from_secs(5), "2 pods", || async {
        pod_names(&store).await.len() == 2
    })
    .await;
    make_ready(&store, &clock, "db-0").await;
    make_ready(&store, &clock, "db-1").await;
    let counts = || async {
        let s = api
            .get("db")
            .await
            .unwrap()
            .status
            .clone()
            .unwrap_or_default();
        (
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    };
    eventually(Duration::from_secs(5), "2 ready", || async {
        counts().await.0 == 2
    })
    .await;
    // Ready, but not for 20 s yet: none available.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(counts().await, (2, 0), "available before minReadySeconds");
    // The controller wakes by itself once minReadySeconds have passed.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(counts().await, (2, 2), "available after minReadySeconds");
    shutdown.cancel();
}

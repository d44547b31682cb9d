//! A simulated cluster end to end under tokio's paused clock: a Deployment becomes running,
//! ready pods on the nodes; a claim of a StorageClass is provisioned and bound; deleting the
//! claim deletes the volume (reclaim policy Delete).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use wharf_core::cluster::ClusterBuilder;
use wharf_core::node::NodeConfig;
use wharf_core::store::{DeleteOptions, ListOptions};

const APP: &str = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast}
provisioner: sim.csi.wharf.dev
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: fast
  resources: {requests: {storage: 1Gi}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
        resources: {requests: {cpu: 100m}}
"#;

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(start_paused = true)]
async fn deployment_runs_and_claim_binds_on_simulated_nodes() {
    let cluster = ClusterBuilder::new()
        .simulated_nodes(3, |i| NodeConfig::new(&format!("node-{i}")))
        .start()
        .await
        .unwrap();
    let applied = cluster.apply_str(APP, "app.yaml").await.unwrap();
    assert_eq!(applied.len(), 3);

    let pods = cluster.api::<Pod>("default");
    wait_until("4 running, ready pods", || async {
        let list = pods.list(&ListOptions::default()).await.unwrap();
        list.len() == 4
            && list.iter().all(|p| {
                let status = p.status.as_ref();
                status.and_then(|s| s.phase.as_deref()) == Some("Running")
                    && status
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
    })
    .await;
    let nodes: std::collections::BTreeSet<String> = pods
        .list(&ListOptions::default())
        .await
        .unwrap()
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert!(nodes.len() >= 2, "pods spread over nodes: {nodes:?}");
    let deployments = cluster.api::<Deployment>("default");
    wait_until("deployment available", || async {
        let d = deployments.get("web").await.unwrap();
        d.status.as_ref().and_then(|s| s.available_replicas) == Some(4)
    })
    .await;

    let claims = cluster.api::<PersistentVolumeClaim>("default");
    let volumes = cluster.api_all::<PersistentVolume>();
    wait_until("claim bound", || async {
        let c = claims.get("data").await.unwrap();
        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
    })
    .await;
    let claim = claims.get("data").await.unwrap();
    let pv_name = claim.spec.as_ref().unwrap().volume_name.clone().unwrap();
    let pv = volumes.get(&pv_name).await.unwrap();
    assert_eq!(
        pv.spec.as_ref().unwrap().csi.as_ref().unwrap().driver,
        "sim.csi.wharf.dev"
    );
    assert_eq!(pv.status.as_ref().unwrap().phase.as_deref(), Some("Bound"));
    assert_eq!(
        pv.spec
            .as_ref()
            .unwrap()
            .persistent_volume_reclaim_policy
            .as_deref(),
        Some("Delete")
    );

    claims
        .delete("data", &DeleteOptions::default())
        .await
        .unwrap();
    wait_until("volume reclaimed", || async {
        volumes.get_opt(&pv_name).await.unwrap().is_none()
    })
    .await;
    cluster.shutdown().await;
}

const LATE: &str = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: late}
provisioner: sim.csi.wharf.dev
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: late-data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: late
  resources: {requests: {storage: 1Gi}}
"#;

const CONSUMER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: consumer}
spec:
  containers:
  - {name: app, image: busybox}
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: late-data}
"#;

/// One node: each simulated node has its own instance of the simulated CSI driver and the
/// binder provisions through the first one, so a claim used on another node would not be
/// found there (see the limits in `wharf_core::volume`).
#[tokio::test(start_paused = true)]
async fn wait_for_first_consumer_binds_when_a_pod_is_scheduled() {
    let cluster = ClusterBuilder::new()
        .simulated_nodes(1, |i| NodeConfig::new(&format!("node-{i}")))
        .start()
        .await
        .unwrap();
    cluster.apply_str(LATE, "late.yaml").await.unwrap();
    let claims = cluster.api::<PersistentVolumeClaim>("default");
    wait_until("claim pending", || async {
        let c = claims.get("late-data").await.unwrap();
        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let c = claims.get("late-data").await.unwrap();
    assert!(
        c.spec.as_ref().unwrap().volume_name.is_none(),
        "bound without a consumer"
    );
    assert!(cluster
        .api_all::<PersistentVolume>()
        .list(&ListOptions::default())
        .await
        .unwrap()
        .is_empty());

    cluster.apply_str(CONSUMER, "consumer.yaml").await.unwrap();
    let pods = cluster.api::<Pod>("default");
    for _ in 0..600 {
        let p = pods.get("consumer").await.unwrap();
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = pods.get("consumer").await.unwrap();
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running"),
        "consumer {:?}; claim {:?}",
        p.status,
        claims.get("late-data").await.unwrap().to_owned_value()
    );
    let node = pods
        .get("consumer")
        .await
        .unwrap()
        .spec
        .clone()
        .unwrap()
        .node_name;
    let c = claims.get("late-data").await.unwrap();
    assert_eq!(c.status.as_ref().unwrap().phase.as_deref(), Some("Bound"));
    assert_eq!(
        c.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("volume.kubernetes.io/selected-node"))
            .cloned(),
        node
    );
    cluster.shutdown().await;
}

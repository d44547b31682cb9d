//! Node lifecycle: a node that stops heartbeating goes Unknown, is tainted unreachable, its
//! pods leave Service endpoints at once and are evicted after the default 300 s toleration,
//! and their ReplicaSet replaces them.

mod controller_support;

use std::sync::Arc;
use std::time::Duration;

use controller_support::*;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus, Pod};
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::controllers::node_lifecycle::{NodeLifecycleController, UNREACHABLE_TAINT};
use wharf_core::controllers::replicaset::ReplicaSetController;
use wharf_core::store::{Api, Store};
use wharf_core::{Clock, Kind, Object};

fn start(store: &Arc<dyn Store>, clock: Clock) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(ReplicaSetController::controller().run(ctx.clone(), shutdown.clone()));
    tokio::spawn(NodeLifecycleController::controller().run(ctx, shutdown.clone()));
    shutdown
}

async fn heartbeat(store: &Arc<dyn Store>, clock: &Clock) {
    let api: Api<Node> = Api::all(store.clone());
    let mut node = match api.get_opt("n1").await.unwrap() {
        Some(n) => n.to_owned_value(),
        None => {
            let mut n = Node::default();
            n.metadata.name = Some("n1".into());
            api.create(n).await.unwrap().to_owned_value()
        }
    };
    node.status = Some(NodeStatus {
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            last_heartbeat_time: Some(clock.now_k8s()),
            last_transition_time: Some(clock.now_k8s()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    api.update_status(node).await.unwrap();
}

fn on_node(p: &Object) -> bool {
    p.as_kind::<Pod>()
        .and_then(|p| p.spec.as_ref()?.node_name.as_deref())
        == Some("n1")
}

#[tokio::test(start_paused = true)]
async fn lost_node_is_tainted_and_its_pods_replaced_after_toleration() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    heartbeat(&store, &clock).await;
    let rs_api: Api<ReplicaSet> = Api::namespaced(store.clone(), "default");
    let mut rs = ReplicaSet::default();
    rs.metadata.name = Some("web".into());
    rs.spec = Some(ReplicaSetSpec {
        replicas: Some(2),
        selector: selector(&[("app", "web")]),
        template: Some(template(&[("app", "web")], "busybox")),
        ..Default::default()
    });
    rs_api.create(rs).await.unwrap();
    eventually(Duration::from_secs(5), "2 pods", || async {
        active_pods(&store).await.len() == 2
    })
    .await;
    // Bind both pods to n1 and make them ready, as the scheduler and node agent would.
    for p in active_pods(&store).await {
        let mut pod = p.as_kind::<Pod>().unwrap().clone();
        pod.spec.as_mut().unwrap().node_name = Some("n1".into());
        let bound = store.update(Object::from(pod)).await.unwrap();
        set_ready(&store, &clock, &bound, true, "10.0.0.9").await;
    }
    // Heartbeats for a minute: nothing happens.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        heartbeat(&store, &clock).await;
    }
    let node: Api<Node> = Api::all(store.clone());
    assert!(node
        .get("n1")
        .await
        .unwrap()
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .is_none());

    // The node goes silent at t=60s: Unknown and tainted after the 50 s grace period.
    let lost_at = tokio::time::Instant::now();
    eventually(
        Duration::from_secs(60),
        "node unknown and tainted",
        || async {
            let n = node.get("n1").await.unwrap();
            let ready = n.status.as_ref().unwrap().conditions.as_ref().unwrap()[0].clone();
            let taints = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            ready.status == "Unknown"
                && ready.reason.as_deref() == Some("NodeStatusUnknown")
                && taints
                    .iter()
                    .any(|t| t.key == UNREACHABLE_TAINT && t.effect == "NoExecute")
                && taints
                    .iter()
                    .any(|t| t.key == UNREACHABLE_TAINT && t.effect == "NoSchedule")
        },
    )
    .await;
    let noticed = lost_at.elapsed().as_secs();
    assert!((50..=52).contains(&noticed), "noticed after {noticed}s");
    // Its pods are no longer Ready (they leave Service endpoints) but are not evicted yet.
    eventually(Duration::from_secs(5), "pods not ready", || async {
        let pods = active_pods(&store).await;
        pods.len() == 2 && pods.iter().all(|p| !is_ready(p))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(280)).await;
    assert_eq!(
        active_pods(&store)
            .await
            .iter()
            .filter(|p| on_node(p))
            .count(),
        2
    );

    // 300 s after the taint: evicted and replaced by the ReplicaSet.
    eventually(
        Duration::from_secs(30),
        "pods evicted and replaced",
        || async {
            let pods = active_pods(&store).await;
            pods.len() == 2 && pods.iter().all(|p| !on_node(p))
        },
    )
    .await;
    let evicted_after = lost_at.elapsed().as_secs();
    assert!(
        (350..=353).contains(&evicted_after),
        "evicted after {evicted_after}s"
    );
    // The evicted pods are terminating (the unreachable node cannot confirm their end).
    let terminating = list(&store, Kind::Pod)
        .await
        .iter()
        .filter(|p| on_node(p) && p.meta().deletion_timestamp.is_some())
        .count();
    assert_eq!(terminating, 2);

    // The node comes back: taints removed.
    heartbeat(&store, &clock).await;
    eventually(Duration::from_secs(5), "taints removed", || async {
        node.get("n1")
            .await
            .unwrap()
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .is_none()
    })
    .await;
    shutdown.cancel();
}

//! DaemonSet controller under tokio's paused clock with the memory store: placement by
//! selector and taints, nodes joining and leaving, rolling updates within maxUnavailable,
//! OnDelete, and an end-to-end run where the scheduler binds the pinned pods.

mod controller_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use controller_support::*;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetStatus, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use wharf_core::cluster::ClusterBuilder;
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::controllers::daemonset::{target_node, DaemonSetController, DEFAULT_TOLERATIONS};
use wharf_core::node::NodeConfig;
use wharf_core::store::{Api, DeleteOptions, ListOptions, Store};
use wharf_core::{Clock, Kind, Object};

fn daemon_set(name: &str) -> DaemonSet {
    let mut ds = DaemonSet::default();
    ds.metadata.name = Some(name.into());
    ds.metadata.namespace = Some("default".into());
    ds.spec = Some(DaemonSetSpec {
        selector: selector(&[("app", name)]),
        template: template(&[("app", name)], "agent:1"),
        ..Default::default()
    });
    ds
}

fn node(name: &str, labels_: &[(&str, &str)], taint: Option<(&str, &str)>) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.metadata.labels = Some(labels(labels_));
    n.spec = Some(NodeSpec {
        taints: taint.map(|(key, effect)| {
            vec![Taint {
                key: key.into(),
                effect: effect.into(),
                ..Default::default()
            }]
        }),
        ..Default::default()
    });
    n
}

fn start(store: &Arc<dyn Store>, clock: Clock) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(DaemonSetController::controller().run(ctx, shutdown.clone()));
    shutdown
}

/// Active pods by the node they are pinned to.
async fn placement(store: &Arc<dyn Store>) -> BTreeMap<String, Vec<Arc<Object>>> {
    let mut by_node: BTreeMap<String, Vec<Arc<Object>>> = BTreeMap::new();
    for p in active_pods(store).await {
        let node = target_node(p.as_kind::<Pod>().unwrap())
            .unwrap()
            .to_string();
        by_node.entry(node).or_default().push(p);
    }
    by_node
}

async fn nodes_with_pods(store: &Arc<dyn Store>) -> Vec<String> {
    placement(store).await.into_keys().collect()
}

async fn status(api: &Api<DaemonSet>, name: &str) -> DaemonSetStatus {
    api.get(name)
        .await
        .unwrap()
        .status
        .clone()
        .unwrap_or_default()
}

async fn add_node(store: &Arc<dyn Store>, n: Node) {
    store.create(Object::from(n)).await.unwrap();
}

/// (case, toleration, nodeSelector, nodes expected to get a pod)
type Case<'a> = (
    &'a str,
    Option<Toleration>,
    Option<(&'a str, &'a str)>,
    &'a [&'a str],
);

#[tokio::test(start_paused = true)]
async fn one_pod_per_eligible_node() {
    let toleration = Toleration {
        key: Some("dedicated".into()),
        operator: Some("Exists".into()),
        ..Default::default()
    };
    let table: [Case; 4] = [
        ("tainted node skipped", None, None, &["a", "b", "cordoned"]),
        (
            "taint tolerated",
            Some(toleration.clone()),
            None,
            &["a", "b", "cordoned", "gpu"],
        ),
        ("node selector", None, Some(("disk", "ssd")), &["b"]),
        (
            "selector and toleration",
            Some(toleration),
            Some(("disk", "ssd")),
            &["b", "gpu"],
        ),
    ];
    for (case, toleration, node_selector, expected) in table {
        let (store, clock) = store();
        add_node(&store, node("a", &[], None)).await;
        add_node(&store, node("b", &[("disk", "ssd")], None)).await;
        add_node(
            &store,
            node("gpu", &[("disk", "ssd")], Some(("dedicated", "NoSchedule"))),
        )
        .await;
        // Unschedulable nodes still get daemon pods (a default toleration).
        add_node(
            &store,
            node(
                "cordoned",
                &[],
                Some(("node.kubernetes.io/unschedulable", "NoSchedule")),
            ),
        )
        .await;
        let shutdown = start(&store, clock);
        let api: Api<DaemonSet> = Api::namespaced(store.clone(), "default");
        let mut ds = daemon_set("agent");
        let spec = ds.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        spec.tolerations = toleration.map(|t| vec![t]);
        spec.node_selector = node_selector.map(|(k, v)| labels(&[(k, v)]));
        api.create(ds).await.unwrap();
        eventually(Duration::from_secs(5), case, || async {
            status(&api, "agent").await.current_number_scheduled == expected.len() as i32
        })
        .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let placed = placement(&store).await;
        assert_eq!(
            placed.keys().map(String::as_str).collect::<Vec<_>>(),
            expected,
            "{case}"
        );
        assert!(
            placed.values().all(|pods| pods.len() == 1),
            "{case}: one pod per node"
        );
        let s = status(&api, "agent").await;
        assert_eq!(s.desired_number_scheduled, expected.len() as i32, "{case}");
        assert_eq!((s.number_misscheduled, s.number_ready), (0, 0), "{case}");
        // Every pod carries the DaemonSet tolerations.
        let pod = placed.values().next().unwrap()[0].clone();
        let tolerations = pod
            .as_kind::<Pod>()
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .tolerations
            .clone()
            .unwrap();
        for (key, effect) in DEFAULT_TOLERATIONS {
            assert!(
                tolerations.iter().any(|t| t.key.as_deref() == Some(key)
                    && t.effect.as_deref() == Some(effect)
                    && t.operator.as_deref() == Some("Exists")),
                "{case}: toleration {key}"
            );
        }
        shutdown.cancel();
    }
}

#[tokio::test(start_paused = true)]
async fn follows_nodes_joining_leaving_and_changing() {
    let (store, clock) = store();
    add_node(&store, node("a", &[], None)).await;
    add_node(&store, node("b", &[], None)).await;
    let shutdown = start(&store, clock);
    kubelet(
        store.clone(),
        clock,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let api: Api<DaemonSet> = Api::namespaced(store.clone(), "default");
    api.create(daemon_set("agent")).await.unwrap();
    eventually(Duration::from_secs(10), "pods on a and b", || async {
        nodes_with_pods(&store).await == ["a", "b"]
    })
    .await;

    add_node(&store, node("c", &[], None)).await;
    eventually(Duration::from_secs(10), "a pod on the new node", || async {
        nodes_with_pods(&store).await == ["a", "b", "c"]
    })
    .await;
    eventually(Duration::from_secs(10), "3 ready", || async {
        let s = status(&api, "agent").await;
        s.number_ready == 3 && s.number_available == Some(3) && s.number_unavailable == Some(0)
    })
    .await;

    store
        .delete(&Kind::Node, None, "b", &DeleteOptions::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the pod of the deleted node goes",
        || async { nodes_with_pods(&store).await == ["a", "c"] },
    )
    .await;

    // A NoExecute taint the pods do not tolerate evicts; a new NoSchedule one does not.
    for (taint, expected) in [("NoSchedule", vec!["a", "c"]), ("NoExecute", vec!["a"])] {
        let mut c = store
            .get(&Kind::Node, None, "c")
            .await
            .unwrap()
            .as_kind::<Node>()
            .unwrap()
            .clone();
        c.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "maintenance".into(),
            effect: taint.into(),
            ..Default::default()
        }]);
        store.update(Object::from(c)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(nodes_with_pods(&store).await, expected, "{taint}");
    }
    eventually(
        Duration::from_secs(10),
        "status after the changes",
        || async {
            let s = status(&api, "agent").await;
            (
                s.desired_number_scheduled,
                s.current_number_scheduled,
                s.number_misscheduled,
            ) == (1, 1, 0)
        },
    )
    .await;
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn rolling_update_never_has_more_than_max_unavailable_down() {
    // (maxUnavailable, nodes, most nodes allowed without an available pod)
    let table = [
        (IntOrString::Int(1), 5, 1),
        (IntOrString::Int(2), 5, 2),
        (IntOrString::String("50%".into()), 5, 3),
    ];
    for (max_unavailable, nodes, allowed) in table {
        let (store, clock) = store();
        for i in 0..nodes {
            add_node(&store, node(&format!("n{i}"), &[], None)).await;
        }
        let shutdown = start(&store, clock);
        kubelet(
            store.clone(),
            clock,
            Duration::from_secs(3),
            shutdown.clone(),
        );
        let api: Api<DaemonSet> = Api::namespaced(store.clone(), "default");
        let mut ds = daemon_set("agent");
        ds.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_unavailable: Some(max_unavailable.clone()),
                max_surge: None,
            }),
        });
        api.create(ds).await.unwrap();
        let case = format!("maxUnavailable {max_unavailable:?}");
        eventually(Duration::from_secs(20), &case, || async {
            status(&api, "agent").await.number_available == Some(nodes)
        })
        .await;

        let mut ds = api.get("agent").await.unwrap().to_owned_value();
        ds.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("agent:2".into());
        let generation = api.update(ds).await.unwrap().metadata.generation;
        let mut worst = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let placed = placement(&store).await;
            let down = (0..nodes)
                .filter(|i| {
                    !placed
                        .get(&format!("n{i}"))
                        .is_some_and(|pods| pods.iter().any(|p| is_ready(p)))
                })
                .count();
            worst = worst.max(down);
            assert!(
                down <= allowed,
                "{case}: {down} nodes without an available pod"
            );
            let s = status(&api, "agent").await;
            if s.observed_generation == generation
                && s.updated_number_scheduled == Some(nodes)
                && s.number_available == Some(nodes)
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{case}: rollout stuck: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(worst, allowed, "{case}: the rollout used its budget");
        let images: BTreeSet<String> = active_pods(&store)
            .await
            .iter()
            .map(|p| {
                p.as_kind::<Pod>()
                    .unwrap()
                    .spec
                    .as_ref()
                    .unwrap()
                    .containers[0]
                    .image
                    .clone()
                    .unwrap()
            })
            .collect();
        assert_eq!(images, BTreeSet::from(["agent:2".to_string()]), "{case}");
        assert_eq!(
            list(&store, Kind::ControllerRevision).await.len(),
            2,
            "{case}"
        );
        shutdown.cancel();
    }
}

#[tokio::test(start_paused = true)]
async fn on_delete_replaces_only_deleted_pods() {
    let (store, clock) = store();
    add_node(&store, node("a", &[], None)).await;
    add_node(&store, node("b", &[], None)).await;
    let shutdown = start(&store, clock);
    kubelet(
        store.clone(),
        clock,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let api: Api<DaemonSet> = Api::namespaced(store.clone(), "default");
    let mut ds = daemon_set("agent");
    ds.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
        type_: Some("OnDelete".into()),
        rolling_update: None,
    });
    api.create(ds).await.unwrap();
    eventually(Duration::from_secs(10), "2 available", || async {
        status(&api, "agent").await.number_available == Some(2)
    })
    .await;
    let mut ds = api.get("agent").await.unwrap().to_owned_value();
    ds.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("agent:2".into());
    api.update(ds).await.unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        status(&api, "agent").await.updated_number_scheduled,
        Some(0)
    );

    let on_a = placement(&store).await["a"][0].clone();
    store
        .delete(
            &Kind::Pod,
            Some("default"),
            on_a.name(),
            &DeleteOptions::default(),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "a replaced on the new template",
        || async {
            let s = status(&api, "agent").await;
            s.updated_number_scheduled == Some(1) && s.number_available == Some(2)
        },
    )
    .await;
    let placed = placement(&store).await;
    let image = |p: &Arc<Object>| {
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
    assert_eq!(image(&placed["a"][0]), "agent:2");
    assert_eq!(image(&placed["b"][0]), "agent:1");
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn scheduler_binds_pinned_pods_to_their_nodes() {
    let mut cluster = ClusterBuilder::new()
        .simulated_nodes(3, |i| NodeConfig::new(&format!("node-{i}")))
        .start()
        .await
        .unwrap();
    cluster
        .apply_str(
            r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: logs}
spec:
  selector: {matchLabels: {app: logs}}
  template:
    metadata: {labels: {app: logs}}
    spec:
      containers: [{name: logs, image: busybox}]
"#,
            "logs.yaml",
        )
        .await
        .unwrap();
    let sets = cluster.api::<DaemonSet>("default");
    eventually(Duration::from_secs(60), "3 available", || async {
        sets.get("logs")
            .await
            .unwrap()
            .status
            .clone()
            .and_then(|s| s.number_available)
            == Some(3)
    })
    .await;
    let pods = cluster.api::<Pod>("default");
    let check = |pods: Vec<wharf_core::Typed<Pod>>| {
        pods.iter()
            .map(|p| {
                let bound = p.spec.as_ref().unwrap().node_name.clone().unwrap();
                assert_eq!(Some(bound.as_str()), target_node(p), "bound where pinned");
                bound
            })
            .collect::<BTreeSet<String>>()
    };
    let bound = check(pods.list(&ListOptions::default()).await.unwrap());
    assert_eq!(bound.len(), 3);

    // A node that joins gets its pod, bound to it.
    let backends = wharf_core::cluster::simulated_backends(
        "node-3",
        &wharf_core::cluster::simulated_pod_cidr(3),
        cluster.clock(),
    )
    .unwrap();
    cluster
        .add_node(NodeConfig::new("node-3"), backends)
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "4 available", || async {
        sets.get("logs")
            .await
            .unwrap()
            .status
            .clone()
            .and_then(|s| s.number_available)
            == Some(4)
    })
    .await;
    assert_eq!(
        check(pods.list(&ListOptions::default()).await.unwrap()).len(),
        4
    );
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn number_available_waits_min_ready_seconds() {
    let (store, clock) = store();
    add_node(&store, node("a", &[], None)).await;
    add_node(&store, node("b", &[], None)).await;
    let shutdown = start(&store, clock);
    let api: Api<DaemonSet> = Api::namespaced(store.clone(), "default");
    let mut ds = daemon_set("agent");
    ds.spec.as_mut().unwrap().min_ready_seconds = Some(20);
    api.create(ds).await.unwrap();
    eventually(Duration::from_secs(5), "a pod on each node", || async {
        nodes_with_pods(&store).await == ["a", "b"]
    })
    .await;
    for p in active_pods(&store).await {
        set_ready(&store, &clock, &p, true, "10.0.0.1").await;
    }
    let counts = || async {
        let s = status(&api, "agent").await;
        (s.number_ready, s.number_available.unwrap_or(0))
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

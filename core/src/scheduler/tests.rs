//! Table-driven tests of the scheduling algorithm and its plugins (no store, no IO).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, Node, NodeSpec, NodeStatus, Pod, PodAffinityTerm,
    PodAntiAffinity, PodSpec, ResourceRequirements, Taint, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;

use super::algorithm::{num_feasible_nodes_to_find, Algorithm, Profile};
use super::cache::ClusterCache;
use super::framework::{CycleState, FilterPlugin, NodeInfo, PodInfo, Reason};
use crate::object::{Object, Resource};

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn node(name: &str, cpu: &str, mem: &str, labels: &[(&str, &str)]) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.metadata.labels = Some(map(labels));
    n.status = Some(NodeStatus {
        allocatable: Some(
            [("cpu", cpu), ("memory", mem), ("pods", "110")]
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect(),
        ),
        ..Default::default()
    });
    n.spec = Some(NodeSpec::default());
    n
}

fn pod(name: &str, cpu: &str, labels: &[(&str, &str)]) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some("default".into());
    p.metadata.uid = Some(format!("uid-{name}"));
    p.metadata.labels = Some(map(labels));
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(
                    [("cpu".to_string(), Quantity(cpu.to_string()))]
                        .into_iter()
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    p
}

fn info(p: Pod) -> Arc<PodInfo> {
    Arc::new(PodInfo::new(Arc::new(p.into_object())))
}

struct Cluster {
    cache: ClusterCache,
    algo: Algorithm,
}

impl Cluster {
    fn new(nodes: Vec<Node>) -> Cluster {
        let mut cache = ClusterCache::default();
        for n in nodes {
            cache.upsert_node(Arc::new(Object::from(n)));
        }
        Cluster {
            cache,
            algo: Algorithm::new(Profile::default(), None),
        }
    }

    /// Schedules and places the pod; returns the node name or the failure message.
    fn schedule(&mut self, p: Pod) -> Result<String, String> {
        let info = info(p);
        match self.algo.schedule(&info, &self.cache.snapshot()) {
            Ok(i) => {
                let name = self.cache.node_at(i).name.clone();
                self.cache.place(info, &name);
                Ok(name)
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

#[test]
fn resources_decide_fit_and_spread_load() {
    let mut c = Cluster::new(vec![node("a", "1", "4Gi", &[]), node("b", "2", "4Gi", &[])]);
    // The emptier node wins under LeastAllocated.
    assert_eq!(c.schedule(pod("p1", "500m", &[])).unwrap(), "b");
    assert_eq!(c.schedule(pod("p2", "900m", &[])).unwrap(), "b");
    assert_eq!(c.schedule(pod("p3", "900m", &[])).unwrap(), "a");
    let err = c.schedule(pod("p4", "800m", &[])).unwrap_err();
    assert_eq!(err, "0/2 nodes are available: 2 Insufficient cpu.");
}

#[test]
fn effective_requests_count_init_containers_and_sidecars() {
    let mut p = pod("p", "100m", &[]);
    let cpu = |v: &str| {
        Some(ResourceRequirements {
            requests: Some(
                [("cpu".to_string(), Quantity(v.into()))]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        })
    };
    p.spec.as_mut().unwrap().init_containers = Some(vec![
        Container {
            name: "sidecar".into(),
            restart_policy: Some("Always".into()),
            resources: cpu("200m"),
            ..Default::default()
        },
        Container {
            name: "init".into(),
            resources: cpu("1"),
            ..Default::default()
        },
    ]);
    let i = PodInfo::new(Arc::new(p.into_object()));
    // max(100m app + 200m sidecar, 1000m init + 200m sidecar before it) = 1200m
    assert_eq!(i.requests.milli_cpu, 1200);
    assert_eq!(i.requests.pods, 1);
}

#[test]
fn node_selector_and_taints() {
    let mut tainted = node("gpu", "8", "8Gi", &[("accel", "gpu")]);
    tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
        key: "dedicated".into(),
        value: Some("gpu".into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    }]);
    let mut unsched = node("cordoned", "8", "8Gi", &[("accel", "gpu")]);
    unsched.spec.as_mut().unwrap().unschedulable = Some(true);
    let mut c = Cluster::new(vec![tainted, unsched, node("plain", "8", "8Gi", &[])]);

    let mut wants_gpu = pod("w", "1", &[]);
    wants_gpu.spec.as_mut().unwrap().node_selector = Some(map(&[("accel", "gpu")]));
    assert_eq!(
        c.schedule(wants_gpu.clone()).unwrap_err(),
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
         1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable."
    );
    wants_gpu.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Equal".into()),
        value: Some("gpu".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }]);
    assert_eq!(c.schedule(wants_gpu).unwrap(), "gpu");
}

#[test]
fn host_ports_conflict() {
    let mut c = Cluster::new(vec![node("a", "8", "8Gi", &[]), node("b", "8", "8Gi", &[])]);
    let with_port = |name: &str| {
        let mut p = pod(name, "10m", &[]);
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]);
        p
    };
    let first = c.schedule(with_port("p1")).unwrap();
    let second = c.schedule(with_port("p2")).unwrap();
    assert_ne!(first, second);
    assert!(c
        .schedule(with_port("p3"))
        .unwrap_err()
        .contains("2 node(s) didn't have free ports for the requested pod ports"));
}

#[test]
fn required_anti_affinity_keeps_replicas_apart_both_ways() {
    let mut c = Cluster::new(vec![
        node("a", "8", "8Gi", &[("kubernetes.io/hostname", "a")]),
        node("b", "8", "8Gi", &[("kubernetes.io/hostname", "b")]),
    ]);
    let anti = |name: &str| {
        let mut p = pod(name, "10m", &[("app", "db")]);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(K8sSelector {
                        match_labels: Some(map(&[("app", "db")])),
                        ..Default::default()
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    };
    let a = c.schedule(anti("db-0")).unwrap();
    let b = c.schedule(anti("db-1")).unwrap();
    assert_ne!(a, b);
    // Both the new pod's own terms and the placed pods' terms reject it; the placed pods'
    // anti-affinity is checked first, as in kube-scheduler.
    assert_eq!(
        c.schedule(anti("db-2")).unwrap_err(),
        "0/2 nodes are available: 2 node(s) didn't satisfy existing pods anti-affinity rules."
    );
    // A plain pod with the label is rejected by the existing pods' anti-affinity (symmetry).
    assert!(c
        .schedule(pod("other", "10m", &[("app", "db")]))
        .unwrap_err()
        .contains("existing pods anti-affinity"));
    assert!(c
        .schedule(pod("unrelated", "10m", &[("app", "web")]))
        .is_ok());
}

#[test]
fn topology_spread_do_not_schedule() {
    let mut c = Cluster::new(vec![
        node("a1", "8", "8Gi", &[("zone", "a")]),
        node("a2", "8", "8Gi", &[("zone", "a")]),
        node("b1", "8", "8Gi", &[("zone", "b")]),
    ]);
    let spread = |name: &str| {
        let mut p = pod(name, "10m", &[("app", "web")]);
        p.spec.as_mut().unwrap().topology_spread_constraints =
            Some(vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "zone".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                label_selector: Some(K8sSelector {
                    match_labels: Some(map(&[("app", "web")])),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
        p
    };
    let mut per_zone: BTreeMap<char, usize> = BTreeMap::new();
    for i in 0..6 {
        let n = c.schedule(spread(&format!("w{i}"))).unwrap();
        *per_zone.entry(n.chars().next().unwrap()).or_default() += 1;
        let counts: Vec<usize> = per_zone.values().copied().collect();
        let skew = counts.iter().max().unwrap() - counts.iter().min().unwrap();
        assert!(
            skew <= 1 || per_zone.len() < 2,
            "skew {skew} after {i}: {per_zone:?}"
        );
    }
    assert_eq!(per_zone[&'a'], 3);
    assert_eq!(per_zone[&'b'], 3);
}

#[test]
fn sampling_matches_kube_scheduler() {
    assert_eq!(num_feasible_nodes_to_find(50, None), 50);
    assert_eq!(num_feasible_nodes_to_find(1000, None), 420);
    assert_eq!(num_feasible_nodes_to_find(5000, None), 500);
    assert_eq!(num_feasible_nodes_to_find(100_000, None), 5000);
    assert_eq!(num_feasible_nodes_to_find(5000, Some(100)), 5000);
    assert_eq!(num_feasible_nodes_to_find(150, Some(10)), 100);
}

#[test]
fn large_cluster_search_rotates_over_all_nodes() {
    let nodes: Vec<Node> = (0..1000)
        .map(|i| node(&format!("n{i:04}"), "4", "8Gi", &[]))
        .collect();
    let mut c = Cluster::new(nodes);
    let mut used = std::collections::HashSet::new();
    for i in 0..2000 {
        used.insert(c.schedule(pod(&format!("p{i}"), "100m", &[])).unwrap());
    }
    // Rotating start index + least-allocated scoring spreads pods over every node.
    assert_eq!(used.len(), 1000);
}

#[test]
fn replacing_a_placed_pod_does_not_double_count() {
    let mut cache = ClusterCache::default();
    cache.upsert_node(Arc::new(Object::from(node("a", "4", "8Gi", &[]))));
    let mut p = pod("p", "1", &[("app", "x")]);
    p.spec.as_mut().unwrap().affinity = Some(Affinity {
        pod_anti_affinity: Some(PodAntiAffinity::default()),
        ..Default::default()
    });
    cache.place(info(p.clone()), "a");
    // The watch delivers a newer version of the same pod: its accounting is replaced.
    p.metadata.labels = Some(map(&[("app", "y")]));
    cache.place(info(p), "a");
    let node = cache.node("a").unwrap();
    assert_eq!(node.pods.len(), 1);
    assert_eq!(node.requested.milli_cpu, 1000);
    assert_eq!(node.pods_with_affinity, 1);
    assert_eq!(cache.snapshot().pods_with_affinity, 1);
    cache.unplace("uid-p");
    assert_eq!(cache.snapshot().pods_with_affinity, 0);
    assert_eq!(cache.node("a").unwrap().requested.milli_cpu, 0);
}

#[test]
fn node_trait_counts_follow_node_updates_and_removals() {
    use super::framework::NodeTraits;
    fn tainted(name: &str, effect: &str) -> Node {
        let mut n = node(name, "4", "8Gi", &[]);
        n.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: effect.into(),
            ..Default::default()
        }]);
        n
    }
    let traits = |cache: &ClusterCache| cache.snapshot().node_traits;
    let counts = |unschedulable, hard_taints, soft_taints| NodeTraits {
        unschedulable,
        hard_taints,
        soft_taints,
    };
    let mut cache = ClusterCache::default();
    let upsert = |cache: &mut ClusterCache, n: Node| cache.upsert_node(Arc::new(Object::from(n)));

    upsert(&mut cache, node("plain", "4", "8Gi", &[]));
    upsert(&mut cache, tainted("hard", "NoExecute"));
    upsert(&mut cache, tainted("soft", "PreferNoSchedule"));
    let mut cordoned = node("cordoned", "4", "8Gi", &[]);
    cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
    upsert(&mut cache, cordoned.clone());
    assert_eq!(traits(&cache), counts(1, 1, 1));

    // An update replaces the node's traits: soft → hard, cordoned → uncordoned.
    upsert(&mut cache, tainted("soft", "NoSchedule"));
    cordoned.spec.as_mut().unwrap().unschedulable = Some(false);
    upsert(&mut cache, cordoned);
    assert_eq!(traits(&cache), counts(0, 2, 0));
    // The same node again changes nothing.
    upsert(&mut cache, tainted("hard", "NoExecute"));
    assert_eq!(traits(&cache), counts(0, 2, 0));

    // Removal takes its traits away, also when another node moves into its slot.
    cache.remove_node("hard");
    assert_eq!(traits(&cache), counts(0, 1, 0));
    cache.remove_node("plain");
    cache.remove_node("soft");
    cache.remove_node("missing");
    assert_eq!(traits(&cache), counts(0, 0, 0));
    assert_eq!(cache.node_count(), 1);
}

#[test]
fn a_failed_binding_forgets_only_its_own_assumption() {
    let mut cache = ClusterCache::default();
    cache.upsert_node(Arc::new(Object::from(node("a", "4", "8Gi", &[]))));
    cache.upsert_node(Arc::new(Object::from(node("b", "4", "8Gi", &[]))));
    let assumed = info(pod("p", "1", &[]));
    cache.place(assumed.clone(), "a");
    assert!(cache.forget_assumed(&assumed));
    assert_eq!(cache.placed_on("uid-p"), None);
    assert_eq!(cache.node("a").unwrap().requested.milli_cpu, 0);

    // The watch showed the pod bound elsewhere before the failure came back: that stays.
    cache.place(assumed.clone(), "a");
    cache.place(info(pod("p", "1", &[])), "b");
    assert!(!cache.forget_assumed(&assumed));
    assert_eq!(cache.placed_on("uid-p"), Some("b"));
    assert_eq!(cache.node("b").unwrap().requested.milli_cpu, 1000);

    // Deleted in between: nothing to forget.
    cache.unplace("uid-p");
    assert!(!cache.forget_assumed(&assumed));
}

#[test]
fn a_newer_version_keeps_or_recomputes_what_the_scheduler_derived() {
    let old = info(pod("p", "1", &[("app", "x")]));
    // Labels and node name changed (the binding confirmed): requests are kept.
    let mut bound = pod("p", "1", &[("app", "y")]);
    bound.spec.as_mut().unwrap().node_name = Some("a".into());
    let kept = old.refreshed(Arc::new(bound.into_object()));
    assert_eq!(kept.requests, old.requests);
    assert_eq!(kept.labels().unwrap()["app"], "y");
    // Resources resized: computed again.
    let resized = old.refreshed(Arc::new(pod("p", "2", &[]).into_object()));
    assert_eq!(resized.requests.milli_cpu, 2000);
    // A host port added: computed again.
    let mut with_port = pod("p", "1", &[]);
    with_port.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
        container_port: 80,
        host_port: Some(8080),
        ..Default::default()
    }]);
    assert_eq!(
        old.refreshed(Arc::new(with_port.into_object()))
            .host_ports
            .len(),
        1
    );
}

#[test]
fn parallel_evaluation_decides_as_the_sequential_one() {
    use std::time::Duration;
    // 1,200 nodes (a sample of 100 % − 9 % = 492 is searched per pod), a third of them too
    // small, a tenth tainted; pods with anti-affinity so that the expensive plugin is active.
    let nodes: Vec<Node> = (0..1200)
        .map(|i| {
            let cpu = if i % 3 == 0 { "500m" } else { "8" };
            let mut n = node(
                &format!("n{i}"),
                cpu,
                "32Gi",
                &[("zone", &format!("z{}", i % 7))],
            );
            if i % 10 == 0 {
                n.spec.as_mut().unwrap().taints = Some(vec![Taint {
                    key: "dedicated".into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                }]);
            }
            n
        })
        .collect();
    let pod_at = |i: usize| {
        let mut p = pod(&format!("p{i}"), "1", &[("app", &format!("a{}", i % 5))]);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(K8sSelector {
                        match_labels: Some(map(&[("app", &format!("a{}", i % 5))])),
                        ..Default::default()
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    };
    /// A filter that lets every node through and counts the calls made on the pool.
    struct OnPool(Arc<AtomicUsize>);
    impl FilterPlugin for OnPool {
        fn name(&self) -> &'static str {
            "OnPool"
        }
        fn filter(&self, _: &PodInfo, _: &NodeInfo, _: &CycleState) -> Result<(), Reason> {
            let current = std::thread::current();
            if current
                .name()
                .is_some_and(|n| n.starts_with("wharf-sched-"))
            {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    }
    let profile = |on_pool: &Arc<AtomicUsize>| {
        let mut p = Profile::default();
        p.filters.push(Box::new(OnPool(on_pool.clone())));
        p
    };
    let (on_pool_seq, on_pool_par) = (Arc::default(), Arc::default());
    let mut sequential = Cluster::new(nodes.clone());
    sequential.algo = Algorithm::new(profile(&on_pool_seq), None);
    let mut parallel = Cluster::new(nodes);
    parallel.algo = Algorithm::new(profile(&on_pool_par), None)
        .with_parallelism(3)
        .with_parallel_threshold(Duration::ZERO);
    for i in 0..300 {
        assert_eq!(
            sequential.schedule(pod_at(i)),
            parallel.schedule(pod_at(i)),
            "pod {i}"
        );
    }
    // The parallel cluster really filtered on its pool; the sequential one never did.
    assert!(on_pool_par.load(Ordering::Relaxed) > 0);
    assert_eq!(on_pool_seq.load(Ordering::Relaxed), 0);
    // And the unschedulable message counts the same nodes.
    let huge = pod("huge", "64", &[]);
    let (a, b) = (sequential.schedule(huge.clone()), parallel.schedule(huge));
    assert!(a.is_err());
    assert_eq!(a, b);
}

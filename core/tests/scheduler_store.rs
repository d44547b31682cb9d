//! The scheduler against a MemoryStore: binding, PodScheduled conditions, retry on cluster
//! change, scheduling gates, schedulerName. Runs under tokio's paused clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeStatus, Pod, PodSchedulingGate, PodSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tokio_util::sync::CancellationToken;
use wharf_core::scheduler::{Scheduler, SchedulerConfig};
use wharf_core::store::memory::MemoryStore;
use wharf_core::store::{
    Api, DeleteOptions, Deleted, ListOptions, ObjectList, PodBinding, Result as StoreResult,
    StoreError, WatchOptions, WatchStream,
};
use wharf_core::{Kind, Object, Store};

fn node(name: &str, cpu: &str) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.status = Some(NodeStatus {
        allocatable: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity("8Gi".into())),
            ("pods".to_string(), Quantity("110".into())),
        ])),
        ..Default::default()
    });
    n
}

fn pod(name: &str, cpu: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: "c".into(),
            image: Some("busybox".into()),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([("cpu".to_string(), Quantity(cpu.into()))])),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    p
}

fn condition(p: &Pod) -> Option<(String, Option<String>, Option<String>)> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

struct Harness {
    store: Arc<dyn Store>,
    pods: Api<Pod>,
    nodes: Api<Node>,
    stop: CancellationToken,
}

impl Harness {
    fn start() -> Harness {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let stop = CancellationToken::new();
        let scheduler = Scheduler::new(store.clone(), SchedulerConfig::default());
        let token = stop.clone();
        tokio::spawn(async move { scheduler.run(token.cancelled_owned()).await });
        Harness {
            pods: Api::namespaced(store.clone(), "default"),
            nodes: Api::all(store.clone()),
            store,
            stop,
        }
    }

    async fn node_of(&self, name: &str) -> Option<String> {
        let p = self.pods.get(name).await.unwrap();
        p.spec.as_ref().and_then(|s| s.node_name.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn binds_pods_and_sets_pod_scheduled() {
    let h = Harness::start();
    h.nodes.create(node("n1", "2")).await.unwrap();
    h.nodes.create(node("n2", "2")).await.unwrap();
    for i in 0..4 {
        h.pods.create(pod(&format!("p{i}"), "900m")).await.unwrap();
    }
    settle().await;
    let mut per_node = BTreeMap::<String, usize>::new();
    for i in 0..4 {
        let name = format!("p{i}");
        let node = h.node_of(&name).await.expect("bound");
        *per_node.entry(node).or_default() += 1;
        let p = h.pods.get(&name).await.unwrap();
        assert_eq!(condition(&p).unwrap().0, "True");
    }
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![2, 2]);
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn unschedulable_pod_waits_for_a_node_then_binds() {
    let h = Harness::start();
    h.nodes.create(node("small", "1")).await.unwrap();
    h.pods.create(pod("big", "3")).await.unwrap();
    settle().await;
    let p = h.pods.get("big").await.unwrap();
    assert_eq!(p.spec.as_ref().unwrap().node_name, None);
    let (status, reason, message) = condition(&p).unwrap();
    assert_eq!(status, "False");
    assert_eq!(reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        message.as_deref(),
        Some("0/1 nodes are available: 1 Insufficient cpu.")
    );
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));

    h.nodes.create(node("large", "4")).await.unwrap();
    // Retried after its backoff (1 s) once the cluster changed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(h.node_of("big").await.as_deref(), Some("large"));
    assert_eq!(
        condition(&h.pods.get("big").await.unwrap()).unwrap().0,
        "True"
    );
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn gated_and_foreign_pods_are_left_alone() {
    let h = Harness::start();
    h.nodes.create(node("n1", "4")).await.unwrap();
    let mut gated = pod("gated", "100m");
    gated.spec.as_mut().unwrap().scheduling_gates = Some(vec![PodSchedulingGate {
        name: "example.com/wait".into(),
    }]);
    h.pods.create(gated).await.unwrap();
    let mut foreign = pod("foreign", "100m");
    foreign.spec.as_mut().unwrap().scheduler_name = Some("other-scheduler".into());
    h.pods.create(foreign).await.unwrap();
    settle().await;
    assert_eq!(h.node_of("gated").await, None);
    assert_eq!(h.node_of("foreign").await, None);

    // Removing the gate lets it be scheduled.
    let mut p = h.pods.get("gated").await.unwrap().to_owned_value();
    p.spec.as_mut().unwrap().scheduling_gates = None;
    h.pods.update(p).await.unwrap();
    settle().await;
    assert_eq!(h.node_of("gated").await.as_deref(), Some("n1"));
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn deleted_pods_free_their_room() {
    let h = Harness::start();
    h.nodes.create(node("n1", "1")).await.unwrap();
    h.pods.create(pod("first", "800m")).await.unwrap();
    settle().await;
    h.pods.create(pod("second", "800m")).await.unwrap();
    settle().await;
    assert_eq!(h.node_of("second").await, None);
    // The first pod goes away (a bound pod is deleted gracefully; grace 0 removes it).
    let opts = wharf_core::store::DeleteOptions {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    h.pods.delete("first", &opts).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(h.node_of("second").await.as_deref(), Some("n1"));
    let all = h
        .store
        .list(&wharf_core::Kind::Pod, &ListOptions::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 1);
    h.stop.cancel();
}

/// A MemoryStore whose first `failures` bindings fail with a conflict.
struct FlakyBind {
    inner: MemoryStore,
    failures: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Store for FlakyBind {
    async fn create(&self, object: Object) -> StoreResult<Arc<Object>> {
        self.inner.create(object).await
    }
    async fn get(&self, kind: &Kind, ns: Option<&str>, name: &str) -> StoreResult<Arc<Object>> {
        self.inner.get(kind, ns, name).await
    }
    async fn list(&self, kind: &Kind, options: &ListOptions) -> StoreResult<ObjectList> {
        self.inner.list(kind, options).await
    }
    async fn update(&self, object: Object) -> StoreResult<Arc<Object>> {
        self.inner.update(object).await
    }
    async fn update_status(&self, object: Object) -> StoreResult<Arc<Object>> {
        self.inner.update_status(object).await
    }
    async fn delete(
        &self,
        kind: &Kind,
        ns: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> StoreResult<Deleted> {
        self.inner.delete(kind, ns, name, options).await
    }
    async fn watch(&self, kind: &Kind, options: &WatchOptions) -> StoreResult<WatchStream> {
        self.inner.watch(kind, options).await
    }
    async fn current_resource_version(&self) -> StoreResult<u64> {
        self.inner.current_resource_version().await
    }
    async fn bind(&self, binding: &PodBinding) -> StoreResult<Arc<Object>> {
        use std::sync::atomic::Ordering;
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Conflict {
                kind: "Pod".into(),
                namespace: Some(binding.namespace.clone()),
                name: binding.name.clone(),
                expected: "1".into(),
                actual: "2".into(),
            });
        }
        self.inner.bind(binding).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_binding_is_forgotten_and_retried_after_backoff() {
    let store = Arc::new(FlakyBind {
        inner: MemoryStore::new(),
        failures: 2.into(),
    });
    let store_dyn: Arc<dyn Store> = store.clone();
    let scheduler = Scheduler::new(store_dyn.clone(), SchedulerConfig::default());
    let metrics = scheduler.metrics();
    let stop = CancellationToken::new();
    tokio::spawn(scheduler.run(stop.clone().cancelled_owned()));
    let nodes: Api<Node> = Api::all(store_dyn.clone());
    let pods: Api<Pod> = Api::namespaced(store_dyn, "default");
    // One node with room for exactly one such pod: a binding that failed must not keep
    // its room assumed, or the retry would find the node full.
    nodes.create(node("n1", "1")).await.unwrap();
    pods.create(pod("p", "1")).await.unwrap();
    settle().await;
    let bound = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    assert_eq!(bound(&pods.get("p").await.unwrap()), None);
    assert_eq!(
        metrics
            .bind_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Backoff 1 s after the first failure, 2 s after the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    settle().await;
    assert_eq!(
        metrics
            .bind_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(bound(&pods.get("p").await.unwrap()), None);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    settle().await;
    assert_eq!(bound(&pods.get("p").await.unwrap()).as_deref(), Some("n1"));
    assert_eq!(
        metrics.scheduled.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    stop.cancel();
}

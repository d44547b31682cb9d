//! Shared harness of the node agent tests: a MemoryStore, the simulated backends and one
//! node agent, all under tokio's paused clock.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use tokio::time::Instant;
use wharf_core::backend::runtime::RuntimeEventKind;
use wharf_core::node::{Backends, NodeAgent, NodeConfig, NodeHandle, PathOnlyVolumes};
use wharf_core::sim::{SimImage, SimImageService, SimNetwork, SimProber, SimRuntime, SimVolumes};
use wharf_core::store::memory::MemoryStore;
use wharf_core::store::{
    Api, DeleteOptions, Deleted, ListOptions, ObjectList, PodBinding, Result as StoreResult, Store,
    WatchOptions, WatchStream,
};
use wharf_core::{Clock, Kind, Object, Typed};

pub const NODE: &str = "n1";
/// The CSI driver every harness node runs.
pub const DRIVER: &str = "sim.csi";

/// What happened to a container, by name, at which virtual second.
#[derive(Clone, Debug, PartialEq)]
pub enum Ev {
    Started(String),
    Exited(String, i32),
}

/// The harness's store: a MemoryStore that counts reads (`get`) by kind and status writes by
/// object name.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    gets: Mutex<Vec<Kind>>,
    status_writes: Mutex<Vec<String>>,
}

impl CountingStore {
    /// Reads of objects of `kind` so far.
    pub fn gets_of(&self, kind: &Kind) -> usize {
        self.gets
            .lock()
            .unwrap()
            .iter()
            .filter(|k| *k == kind)
            .count()
    }

    /// Status writes (`update_status` calls, whether or not they changed anything) to objects
    /// named `name` so far.
    pub fn status_writes_of(&self, name: &str) -> usize {
        self.status_writes
            .lock()
            .unwrap()
            .iter()
            .filter(|n| *n == name)
            .count()
    }
}

#[async_trait]
impl Store for CountingStore {
    async fn create(&self, object: Object) -> StoreResult<Arc<Object>> {
        self.inner.create(object).await
    }
    async fn get(&self, kind: &Kind, ns: Option<&str>, name: &str) -> StoreResult<Arc<Object>> {
        self.gets.lock().unwrap().push(kind.clone());
        self.inner.get(kind, ns, name).await
    }
    async fn list(&self, kind: &Kind, options: &ListOptions) -> StoreResult<ObjectList> {
        self.inner.list(kind, options).await
    }
    async fn update(&self, object: Object) -> StoreResult<Arc<Object>> {
        self.inner.update(object).await
    }
    async fn update_status(&self, object: Object) -> StoreResult<Arc<Object>> {
        self.status_writes
            .lock()
            .unwrap()
            .push(object.name().to_string());
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
        self.inner.bind(binding).await
    }
}

pub struct Harness {
    pub t0: Instant,
    pub clock: Clock,
    pub store: Arc<dyn Store>,
    /// The same store, with its counts.
    pub counting: Arc<CountingStore>,
    pub runtime: SimRuntime,
    pub images: SimImageService,
    pub network: SimNetwork,
    pub prober: SimProber,
    pub volumes: SimVolumes,
    pub handle: Option<NodeHandle>,
}

pub fn backends(h: &Harness) -> Backends {
    Backends {
        runtime: Arc::new(h.runtime.clone()),
        images: Arc::new(h.images.clone()),
        network: Arc::new(h.network.clone()),
        prober: Arc::new(h.prober.clone()),
        volume_plugins: vec![Arc::new(h.volumes.clone())],
        in_tree_volumes: Some(Arc::new(PathOnlyVolumes)),
    }
}

impl Harness {
    /// A store, simulated backends serving image `img:1` (and `img:latest`), and a started agent.
    pub async fn new() -> Harness {
        let clock = Clock::starting_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let counting = Arc::new(CountingStore {
            inner: Arc::new(MemoryStore::with_clock(clock)),
            gets: Mutex::new(Vec::new()),
            status_writes: Mutex::new(Vec::new()),
        });
        let store: Arc<dyn Store> = counting.clone();
        let runtime = SimRuntime::new(clock);
        runtime.record_configs(true);
        let images = SimImageService::new();
        images.add("img:1", SimImage::default());
        images.add("img:latest", SimImage::default());
        let mut h = Harness {
            t0: Instant::now(),
            clock,
            store,
            counting,
            runtime,
            images,
            network: SimNetwork::new("10.244.1.0/24").unwrap(),
            prober: SimProber::new(),
            volumes: SimVolumes::new(DRIVER, NODE, 1 << 40),
            handle: None,
        };
        h.record_events();
        h.start_agent().await;
        h
    }

    pub async fn start_agent(&mut self) {
        let mut config = NodeConfig::new(NODE).with_capacity("nvidia.com/gpu", "2");
        config.address = Some("192.168.0.10".parse().unwrap());
        config.labels.insert("zone".into(), "a".into());
        let agent = NodeAgent::new(config, backends(self), self.store.clone(), self.clock);
        self.handle = Some(agent.start().await.unwrap());
    }

    pub async fn stop_agent(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    fn record_events(&self) {
        self.runtime.record_history(true);
    }

    fn events(&self) -> Vec<(Duration, Ev)> {
        self.runtime
            .history()
            .into_iter()
            .filter_map(|(at, name, kind)| {
                let e = match kind {
                    RuntimeEventKind::Started => Ev::Started(name),
                    RuntimeEventKind::Exited { exit_code, .. } => Ev::Exited(name, exit_code),
                    _ => return None,
                };
                Some((at.duration_since(self.t0), e))
            })
            .collect()
    }

    /// Seconds (virtual) at which containers named `name` started.
    pub fn starts(&self, name: &str) -> Vec<u64> {
        self.events()
            .iter()
            .filter(|(_, e)| *e == Ev::Started(name.into()))
            .map(|(t, _)| t.as_secs())
            .collect()
    }

    /// The events in order, as (second, event).
    pub fn log(&self) -> Vec<(u64, Ev)> {
        self.events()
            .iter()
            .map(|(t, e)| (t.as_secs(), e.clone()))
            .collect()
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.store.clone(), "default")
    }

    pub async fn create(&self, pod: Pod) {
        self.pods().create(pod).await.unwrap();
    }

    pub async fn get(&self, name: &str) -> Typed<Pod> {
        self.pods().get(name).await.unwrap()
    }

    pub async fn status(&self, name: &str) -> PodStatus {
        self.get(name).await.status.clone().unwrap_or_default()
    }

    pub async fn delete(&self, name: &str) {
        self.pods()
            .delete(name, &DeleteOptions::default())
            .await
            .unwrap();
    }

    /// Advances virtual time to `secs` after the start of the test.
    pub async fn at(&self, secs: u64) {
        let target = self.t0 + Duration::from_secs(secs);
        tokio::time::sleep_until(target).await;
        // Let the agent react to what happened at this instant.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    /// Waits (in virtual time, up to `limit`) until `pred` holds for the pod's status.
    pub async fn wait(
        &self,
        name: &str,
        limit: Duration,
        pred: impl Fn(&PodStatus) -> bool,
    ) -> PodStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(pod) = self.pods().get_opt(name).await.unwrap() {
                let st = pod.status.clone().unwrap_or_default();
                if pred(&st) {
                    return st;
                }
                if Instant::now() >= deadline {
                    panic!("pod {name}: condition not reached within {limit:?}; status: {st:#?}");
                }
            } else if Instant::now() >= deadline {
                panic!("pod {name} does not exist");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the pod object is gone.
    pub async fn wait_gone(&self, name: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.pods().get_opt(name).await.unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "pod {name} still exists after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn container(name: &str) -> Container {
    Container {
        name: name.into(),
        image: Some("img:1".into()),
        ..Default::default()
    }
}

pub fn pod(name: &str, containers: Vec<Container>) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some("default".into());
    p.spec = Some(PodSpec {
        node_name: Some(NODE.into()),
        containers,
        ..Default::default()
    });
    p
}

pub fn phase(st: &PodStatus) -> &str {
    st.phase.as_deref().unwrap_or("")
}

pub fn condition<'a>(st: &'a PodStatus, type_: &str) -> Option<&'a str> {
    st.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

pub fn cstatus<'a>(
    st: &'a PodStatus,
    name: &str,
) -> &'a k8s_openapi::api::core::v1::ContainerStatus {
    st.container_statuses
        .iter()
        .flatten()
        .chain(st.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no status for container {name}: {st:#?}"))
}

pub fn waiting_reason(st: &PodStatus, name: &str) -> Option<String> {
    cstatus(st, name)
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone())
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

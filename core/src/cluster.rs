//! A whole cluster in one process: a store, the built-in controllers, a scheduler and any
//! number of node agents, each node with its own backends.
//!
//! ```
//! use wharf_core::cluster::ClusterBuilder;
//! use wharf_core::node::NodeConfig;
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let cluster = ClusterBuilder::new()
//!     .simulated_nodes(3, |i| NodeConfig::new(&format!("node-{i}")))
//!     .start()
//!     .await
//!     .unwrap();
//! cluster.apply_str(r#"
//! apiVersion: apps/v1
//! kind: Deployment
//! metadata: {name: web}
//! spec:
//!   replicas: 3
//!   selector: {matchLabels: {app: web}}
//!   template:
//!     metadata: {labels: {app: web}}
//!     spec: {containers: [{name: web, image: busybox}]}
//! "#, "web.yaml").await.unwrap();
//! cluster.shutdown().await;
//! # });
//! ```

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::VolumePlugin;
use crate::clock::Clock;
use crate::controller::Metrics;
use crate::controllers::ControllerManager;
use crate::manifest::{self, Applied, ManifestError};
use crate::node::{Backends, NodeAgent, NodeConfig, NodeError, NodeHandle};
use crate::object::Resource;
use crate::pod_metrics::{PodMetrics, DEFAULT_RESOLUTION};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerMetrics};
use crate::sim;
use crate::store::memory::MemoryStore;
use crate::store::{Api, Store, StoreError};
use crate::volume::{
    PersistentVolumeClaimController, PersistentVolumeController, PvcProtectionController,
};

/// What went wrong assembling or driving a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A node agent could not start.
    #[error(transparent)]
    Node(Box<NodeError>),
    /// A simulated backend could not be made (e.g. a bad pod CIDR).
    #[error("simulated backends for node {node}: {message}")]
    Backend {
        /// Node name.
        node: String,
        /// What went wrong.
        message: String,
    },
    /// A manifest could not be loaded or applied.
    #[error(transparent)]
    Manifest(#[from] Box<ManifestError>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<NodeError> for ClusterError {
    fn from(e: NodeError) -> ClusterError {
        ClusterError::Node(Box::new(e))
    }
}

/// Simulated backends for one node: a [`sim::SimRuntime`], an image service that serves any
/// image, a network handing out addresses from `pod_cidr`, a simulated CSI driver and a
/// prober whose probes succeed unless programmed otherwise.
pub fn simulated_backends(
    node: &str,
    pod_cidr: &str,
    clock: Clock,
) -> Result<Backends, ClusterError> {
    let network = sim::SimNetwork::new(pod_cidr).map_err(|e| ClusterError::Backend {
        node: node.to_string(),
        message: e.to_string(),
    })?;
    Ok(Backends {
        runtime: Arc::new(sim::SimRuntime::new(clock)),
        images: Arc::new(sim::SimImageService::serving_any()),
        network: Arc::new(network),
        prober: Arc::new(sim::SimProber::new()),
        volume_plugins: vec![Arc::new(sim::SimVolumes::new(
            "sim.csi.wharf.dev",
            node,
            1 << 40,
        ))],
        in_tree_volumes: None,
    })
}

/// The pod CIDR of simulated node `i`: `10.<i / 256>.<i % 256>.0/24` (65,536 nodes).
pub fn simulated_pod_cidr(i: usize) -> String {
    format!("10.{}.{}.0/24", (i / 256) % 256, i % 256)
}

/// Assembles a [`Cluster`].
pub struct ClusterBuilder {
    store: Option<Arc<dyn Store>>,
    clock: Option<Clock>,
    controllers: bool,
    scheduler: Option<SchedulerConfig>,
    nodes: Vec<NodeSpec>,
}

enum NodeSpec {
    Given(NodeConfig, Backends),
    Simulated(NodeConfig, usize),
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder::new()
    }
}

impl ClusterBuilder {
    /// An in-memory store, the built-in controllers and the default scheduler, no nodes yet.
    pub fn new() -> ClusterBuilder {
        ClusterBuilder {
            store: None,
            clock: None,
            controllers: true,
            scheduler: Some(SchedulerConfig::default()),
            nodes: Vec::new(),
        }
    }

    /// Uses `store` instead of a new [`MemoryStore`].
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses `clock` for every component.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Runs no built-in controllers.
    pub fn without_controllers(mut self) -> Self {
        self.controllers = false;
        self
    }

    /// Runs no scheduler (pods then need `spec.nodeName`).
    pub fn without_scheduler(mut self) -> Self {
        self.scheduler = None;
        self
    }

    /// Configures the scheduler.
    pub fn scheduler(mut self, config: SchedulerConfig) -> Self {
        self.scheduler = Some(config);
        self
    }

    /// Adds a node with the given backends.
    pub fn node(mut self, config: NodeConfig, backends: Backends) -> Self {
        self.nodes.push(NodeSpec::Given(config, backends));
        self
    }

    /// Adds `count` nodes with simulated backends; `config(i)` describes node `i`.
    pub fn simulated_nodes(mut self, count: usize, config: impl Fn(usize) -> NodeConfig) -> Self {
        let first = self.nodes.len();
        for i in 0..count {
            self.nodes.push(NodeSpec::Simulated(config(i), first + i));
        }
        self
    }

    /// Starts everything.
    pub async fn start(self) -> Result<Cluster, ClusterError> {
        let clock = self.clock.unwrap_or_default();
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::with_clock(clock)));
        let shutdown = CancellationToken::new();
        let pod_metrics = Arc::new(PodMetrics::new());
        // Every CSI driver a node has can provision volumes for claims of its StorageClasses.
        let mut drivers: Vec<Arc<dyn VolumePlugin>> = Vec::new();
        let mut nodes = Vec::new();
        for spec in self.nodes {
            let (config, backends) = match spec {
                NodeSpec::Given(config, backends) => (config, backends),
                NodeSpec::Simulated(mut config, i) => {
                    let cidr = config
                        .pod_cidr
                        .get_or_insert_with(|| simulated_pod_cidr(i))
                        .clone();
                    let backends = simulated_backends(&config.name, &cidr, clock)?;
                    (config, backends)
                }
            };
            for plugin in &backends.volume_plugins {
                if !drivers.iter().any(|d| d.name() == plugin.name()) {
                    drivers.push(plugin.clone());
                }
            }
            nodes.push((config, backends));
        }
        let controllers = self.controllers.then(|| {
            let mut manager =
                ControllerManager::start_with_metrics(store.clone(), clock, pod_metrics.clone());
            manager.add(PersistentVolumeClaimController::controller(drivers.clone()));
            manager.add(PersistentVolumeController::controller(drivers));
            manager.add(PvcProtectionController::controller());
            manager
        });
        let (scheduler, scheduler_metrics) = match self.scheduler {
            Some(config) => {
                let scheduler = Scheduler::new(store.clone(), config).with_clock(clock);
                let metrics = scheduler.metrics();
                let token = shutdown.clone();
                let task = tokio::spawn(async move {
                    if let Err(e) = scheduler.run(token.cancelled_owned()).await {
                        tracing::error!(error = %e, "scheduler stopped");
                    }
                });
                (Some(task), Some(metrics))
            }
            None => (None, None),
        };
        let mut cluster = Cluster {
            store,
            clock,
            controllers,
            scheduler,
            scheduler_metrics,
            nodes: Vec::new(),
            shutdown,
            pod_metrics,
        };
        for (config, backends) in nodes {
            cluster.add_node(config, backends).await?;
        }
        Ok(cluster)
    }
}

/// A running cluster. Dropping it without [`shutdown`](Cluster::shutdown) leaves its tasks
/// running until the runtime ends.
pub struct Cluster {
    store: Arc<dyn Store>,
    clock: Clock,
    controllers: Option<ControllerManager>,
    scheduler: Option<JoinHandle<()>>,
    scheduler_metrics: Option<Arc<SchedulerMetrics>>,
    nodes: Vec<NodeHandle>,
    shutdown: CancellationToken,
    pod_metrics: Arc<PodMetrics>,
}

impl Cluster {
    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The clock every component uses.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// A typed API for kind `K` in `namespace`.
    pub fn api<K: Resource>(&self, namespace: &str) -> Api<K> {
        Api::namespaced(self.store.clone(), namespace)
    }

    /// A typed API for kind `K` across namespaces (or cluster-scoped).
    pub fn api_all<K: Resource>(&self) -> Api<K> {
        Api::all(self.store.clone())
    }

    /// The scheduler's counters, when it runs one.
    pub fn scheduler_metrics(&self) -> Option<&Arc<SchedulerMetrics>> {
        self.scheduler_metrics.as_ref()
    }

    /// Each built-in controller's name and counters (empty without controllers).
    pub fn controller_metrics(&self) -> &[(String, Arc<Metrics>)] {
        self.controllers.as_ref().map_or(&[], |m| m.metrics())
    }

    /// Pod usage as the node agents publish it (what the HorizontalPodAutoscaler reads).
    pub fn pod_metrics(&self) -> &Arc<PodMetrics> {
        &self.pod_metrics
    }

    /// The running node agents.
    pub fn nodes(&self) -> &[NodeHandle] {
        &self.nodes
    }

    /// Starts a node agent for one more node.
    pub async fn add_node(
        &mut self,
        config: NodeConfig,
        backends: Backends,
    ) -> Result<(), ClusterError> {
        let agent = NodeAgent::new(config, backends, self.store.clone(), self.clock)
            .with_pod_metrics(self.pod_metrics.clone(), DEFAULT_RESOLUTION);
        self.nodes.push(agent.start().await?);
        Ok(())
    }

    /// Stops one node agent (its containers keep running, as when a kubelet stops).
    pub async fn stop_node(&mut self, name: &str) -> bool {
        match self.nodes.iter().position(|n| n.name() == name) {
            Some(i) => {
                self.nodes.swap_remove(i).shutdown().await;
                true
            }
            None => false,
        }
    }

    /// Loads a manifest (YAML or JSON, one or more documents) and applies it like
    /// `kubectl apply`. `source` names the text in errors.
    pub async fn apply_str(&self, text: &str, source: &str) -> Result<Vec<Applied>, ClusterError> {
        let manifest = manifest::load_str(text, source).map_err(Box::new)?;
        Ok(manifest::apply_manifest(self.store.as_ref(), &manifest)
            .await
            .map_err(Box::new)?)
    }

    /// Loads a manifest file and applies it.
    pub async fn apply_file(
        &self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Vec<Applied>, ClusterError> {
        let manifest = manifest::load_file(path).map_err(Box::new)?;
        Ok(manifest::apply_manifest(self.store.as_ref(), &manifest)
            .await
            .map_err(Box::new)?)
    }

    /// Stops the node agents, the scheduler and the controllers, and waits for them.
    pub async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
        self.shutdown.cancel();
        if let Some(task) = self.scheduler {
            let _ = task.await;
        }
        if let Some(controllers) = self.controllers {
            controllers.shutdown().await;
        }
    }
}

//! The node agent: Wharf's kubelet.
//!
//! A [`NodeAgent`] registers a `Node` (capacity, allocatable, addresses, labels, taints, a
//! Ready condition), keeps it fresh with a `Lease` in `kube-node-lease` and periodic status
//! updates, watches the pods bound to it (`spec.nodeName=<node>`) and runs one pod worker per
//! pod. The decisions of a worker live in the pure [`machine::PodMachine`]; the worker
//! ([`worker`]) only carries them out with the backends the agent was given.
//!
//! The agent survives its own restart: at start it scans the runtime once for the sandboxes
//! and containers the previous one made (by their labels); each pod's worker adopts its
//! share instead of restarting it, and sandboxes of pods that no longer exist are torn down.
//! Pods bound later start from nothing, without another scan.
//!
//! ```ignore
//! let agent = NodeAgent::new(NodeConfig::new("node-1"), backends, store, clock);
//! let handle = agent.start().await?;
//! // ... pods bound to node-1 now run ...
//! handle.shutdown().await;
//! ```

pub mod config;
pub mod dns;
pub mod downward;
pub mod machine;
pub mod status;
mod usage;
pub mod volumes;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Pod, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backend::{ContainerRuntime, ImageService, NetworkPlugin, Prober, VolumePlugin};
use crate::clock::Clock;
use crate::object::Typed;
use crate::pod_metrics::PodMetrics;
use crate::store::{Api, FieldSelector, ListOptions, Store, StoreError, WatchEvent, WatchOptions};
pub use machine::PodMachine;
pub use volumes::{is_projected, InTreeVolumes, PathOnlyVolumes, SourceObjects};
use worker::{NodeContext, PodWorker, WorkerEvent};

/// The namespace of node heartbeat leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// How a node describes itself.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// Labels added to the standard ones (`kubernetes.io/hostname`, `kubernetes.io/os`,
    /// `kubernetes.io/arch`).
    pub labels: BTreeMap<String, String>,
    /// Taints.
    pub taints: Vec<Taint>,
    /// Capacity: `cpu`, `memory`, `pods`, `ephemeral-storage`, extended resources such as
    /// `nvidia.com/gpu`.
    pub capacity: BTreeMap<String, Quantity>,
    /// Allocatable; the capacity when `None`.
    pub allocatable: Option<BTreeMap<String, Quantity>>,
    /// The node's IP (status.addresses InternalIP, pods' hostIP).
    pub address: Option<IpAddr>,
    /// Pod CIDR (spec.podCIDR).
    pub pod_cidr: Option<String>,
    /// Where pod volumes are published.
    pub root_dir: PathBuf,
    /// Lease duration (40 s).
    pub lease_duration: Duration,
    /// How often the lease is renewed (10 s).
    pub heartbeat: Duration,
    /// How often the Node status is rewritten (60 s).
    pub status_update: Duration,
    /// Cluster DNS servers (kubelet's `--cluster-dns`): pods with `dnsPolicy: ClusterFirst` use
    /// them. Empty (the default): such pods use the node's resolver, as kubelet does.
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster domain (`cluster.local`), for the search path of `ClusterFirst` pods.
    pub cluster_domain: String,
    /// The node's resolver configuration for `dnsPolicy: Default` (`/etc/resolv.conf`); `None`
    /// for no host resolver (simulated nodes).
    pub resolv_conf: Option<PathBuf>,
    /// How often the files of running pods' configMap, secret, downwardAPI and projected
    /// volumes are brought up to date with their sources (60 s, kubelet's sync frequency).
    /// Each refresh swaps the files atomically.
    pub volume_refresh: Duration,
}

impl NodeConfig {
    /// A node with 4 CPUs, 16 GiB of memory and room for 110 pods.
    pub fn new(name: &str) -> NodeConfig {
        let capacity = [("cpu", "4"), ("memory", "16Gi"), ("pods", "110")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect();
        NodeConfig {
            name: name.to_string(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            capacity,
            allocatable: None,
            address: None,
            pod_cidr: None,
            root_dir: PathBuf::from("/var/lib/wharf"),
            lease_duration: Duration::from_secs(40),
            heartbeat: Duration::from_secs(10),
            status_update: Duration::from_secs(60),
            volume_refresh: Duration::from_secs(60),
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".to_string(),
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")),
        }
    }

    /// This config with a capacity entry set (e.g. `("nvidia.com/gpu", "2")`).
    pub fn with_capacity(mut self, resource: &str, quantity: &str) -> NodeConfig {
        self.capacity
            .insert(resource.to_string(), Quantity(quantity.to_string()));
        self
    }

    fn allocatable(&self) -> BTreeMap<String, Quantity> {
        self.allocatable
            .clone()
            .unwrap_or_else(|| self.capacity.clone())
    }
}

/// The backends of one node.
#[derive(Clone)]
pub struct Backends {
    /// Container runtime.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Image service.
    pub images: Arc<dyn ImageService>,
    /// Pod network.
    pub network: Arc<dyn NetworkPlugin>,
    /// Prober.
    pub prober: Arc<dyn Prober>,
    /// CSI drivers.
    pub volume_plugins: Vec<Arc<dyn VolumePlugin>>,
    /// In-tree volume sources (emptyDir, configMap, ...); pods using them fail to start
    /// without one.
    pub in_tree_volumes: Option<Arc<dyn InTreeVolumes>>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("runtime", &self.runtime.name())
            .field("network", &self.network.name())
            .finish_non_exhaustive()
    }
}

/// What went wrong starting a node agent.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Registering the Node or its Lease failed.
    #[error("registering node {node}: {source}")]
    Register {
        /// Node name.
        node: String,
        /// The store error.
        source: Box<StoreError>,
    },
}

/// A node agent, ready to start.
pub struct NodeAgent {
    config: NodeConfig,
    backends: Backends,
    store: Arc<dyn Store>,
    clock: Clock,
    /// Where container usage is published, and how often.
    pod_metrics: Option<(Arc<PodMetrics>, Duration)>,
}

impl std::fmt::Debug for NodeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAgent")
            .field("node", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// A running node agent.
pub struct NodeHandle {
    name: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    workers: Arc<Mutex<usize>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("node", &self.name)
            .finish()
    }
}

impl NodeHandle {
    /// The node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of pod workers running.
    pub fn pod_workers(&self) -> usize {
        *self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the agent (heartbeats, watch and pod workers). Containers keep running: a new
    /// agent on the same backends adopts them.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn quantity_value(q: Option<&Quantity>, name: &str) -> i64 {
    q.and_then(|q| crate::quantity::resource_value(name, q).ok())
        .unwrap_or(0)
}

impl NodeAgent {
    /// An agent for the node `config.name` with these backends, writing to `store`.
    pub fn new(
        config: NodeConfig,
        backends: Backends,
        store: Arc<dyn Store>,
        clock: Clock,
    ) -> NodeAgent {
        NodeAgent {
            config,
            backends,
            store,
            clock,
            pod_metrics: None,
        }
    }

    /// Publishes the usage of this node's running containers to `metrics` every
    /// `resolution` (for the HorizontalPodAutoscaler; see [`crate::pod_metrics`]).
    pub fn with_pod_metrics(mut self, metrics: Arc<PodMetrics>, resolution: Duration) -> NodeAgent {
        self.pod_metrics = Some((metrics, resolution));
        self
    }

    fn node_status(&self) -> NodeStatus {
        let now = self.clock.now_k8s();
        let c = &self.config;
        let mut addresses = vec![NodeAddress {
            type_: "Hostname".into(),
            address: c.name.clone(),
        }];
        if let Some(ip) = c.address {
            addresses.insert(
                0,
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.to_string(),
                },
            );
        }
        let cond = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now.clone()),
        };
        NodeStatus {
            capacity: Some(c.capacity.clone()),
            allocatable: Some(c.allocatable()),
            addresses: Some(addresses),
            conditions: Some(vec![
                cond(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                cond(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                cond(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                cond(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "kubelet is posting ready status",
                ),
            ]),
            node_info: Some(NodeSystemInfo {
                architecture: std::env::consts::ARCH.into(),
                operating_system: std::env::consts::OS.into(),
                container_runtime_version: format!(
                    "{}://{}",
                    self.backends.runtime.name(),
                    env!("CARGO_PKG_VERSION")
                ),
                kubelet_version: format!("wharf-{}", env!("CARGO_PKG_VERSION")),
                kube_proxy_version: String::new(),
                boot_id: String::new(),
                kernel_version: String::new(),
                machine_id: String::new(),
                os_image: String::new(),
                system_uuid: String::new(),
                swap: None,
            }),
            ..Default::default()
        }
    }

    fn node_object(&self) -> Node {
        let c = &self.config;
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), c.name.clone()),
            (
                "kubernetes.io/os".to_string(),
                std::env::consts::OS.to_string(),
            ),
            ("kubernetes.io/arch".to_string(), go_arch().to_string()),
        ]);
        labels.extend(c.labels.clone());
        let mut node = Node::default();
        node.metadata.name = Some(c.name.clone());
        node.metadata.labels = Some(labels);
        node.spec = Some(NodeSpec {
            taints: (!c.taints.is_empty()).then(|| c.taints.clone()),
            pod_cidr: c.pod_cidr.clone(),
            pod_cidrs: c.pod_cidr.clone().map(|p| vec![p]),
            ..Default::default()
        });
        node
    }

    async fn register(&self) -> Result<(), StoreError> {
        let nodes: Api<Node> = Api::all(self.store.clone());
        let desired = self.node_object();
        let node = match nodes.get_opt(&self.config.name).await? {
            None => nodes.create(desired).await?,
            Some(existing) => {
                let mut n = existing.to_owned_value();
                n.metadata.labels = desired.metadata.labels;
                n.spec = desired.spec;
                nodes.update(n).await?
            }
        };
        let mut n = node.to_owned_value();
        n.status = Some(self.node_status());
        n.metadata.resource_version = None;
        nodes.update_status(n).await?;
        self.renew_lease().await
    }

    async fn renew_lease(&self) -> Result<(), StoreError> {
        let leases: Api<Lease> = Api::namespaced(self.store.clone(), LEASE_NAMESPACE);
        let spec = LeaseSpec {
            holder_identity: Some(self.config.name.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs() as i32),
            renew_time: Some(MicroTime(self.clock.now_k8s().0)),
            ..Default::default()
        };
        match leases.get_opt(&self.config.name).await? {
            Some(existing) => {
                let mut l = existing.to_owned_value();
                l.spec = Some(spec);
                l.metadata.resource_version = None;
                leases.update(l).await?;
            }
            None => {
                let mut l = Lease::default();
                l.metadata.name = Some(self.config.name.clone());
                l.metadata.namespace = Some(LEASE_NAMESPACE.into());
                l.spec = Some(spec);
                leases.create(l).await?;
            }
        }
        Ok(())
    }

    async fn update_node_status(&self) -> Result<(), StoreError> {
        let nodes: Api<Node> = Api::all(self.store.clone());
        let node = nodes.get(&self.config.name).await?;
        let mut n = node.to_owned_value();
        let mut status = self.node_status();
        // Keep transition times of conditions that did not change.
        if let (Some(old), Some(new)) = (
            n.status.as_ref().and_then(|s| s.conditions.as_ref()),
            status.conditions.as_mut(),
        ) {
            for c in new.iter_mut() {
                if let Some(o) = old
                    .iter()
                    .find(|o| o.type_ == c.type_ && o.status == c.status)
                {
                    c.last_transition_time = o.last_transition_time.clone();
                }
            }
        }
        n.status = Some(status);
        n.metadata.resource_version = None;
        nodes.update_status(n).await?;
        Ok(())
    }

    /// Registers the node and starts heartbeats, the pod watch and the runtime event router.
    pub async fn start(self) -> Result<NodeHandle, NodeError> {
        self.register()
            .await
            .map_err(|source| NodeError::Register {
                node: self.config.name.clone(),
                source: Box::new(source),
            })?;
        let alloc = self.config.allocatable();
        let ctx = Arc::new(NodeContext {
            node_name: self.config.name.clone(),
            host_ip: self.config.address,
            allocatable: (
                quantity_value(alloc.get("cpu"), "cpu"),
                quantity_value(alloc.get("memory"), "memory"),
            ),
            runtime: self.backends.runtime.clone(),
            images: self.backends.images.clone(),
            network: self.backends.network.clone(),
            prober: self.backends.prober.clone(),
            volumes: volumes::VolumeHost::new(
                self.config.root_dir.clone(),
                self.config.name.clone(),
                self.backends.volume_plugins.clone(),
                self.backends.in_tree_volumes.clone(),
            ),
            store: self.store.clone(),
            clock: self.clock,
            routes: Mutex::new(HashMap::new()),
            dns: dns::NodeDns {
                cluster_dns: self.config.cluster_dns.clone(),
                cluster_domain: self.config.cluster_domain.clone(),
                host: self
                    .config
                    .resolv_conf
                    .as_ref()
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .map(|text| dns::parse_resolv_conf(&text))
                    .unwrap_or_default(),
            },
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let workers = Arc::new(Mutex::new(0usize));
        let name = self.config.name.clone();
        let agent = Arc::new(self);

        let events = {
            let ctx = ctx.clone();
            let mut stop = shutdown_rx.clone();
            let mut stream = ctx.runtime.events();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        ev = stream.next() => match ev {
                            Some(ev) => ctx.dispatch(ev),
                            None => return,
                        },
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        let heartbeat = {
            let agent = agent.clone();
            let mut stop = shutdown_rx.clone();
            tokio::spawn(async move {
                let mut lease = tokio::time::interval(agent.config.heartbeat);
                let mut status = tokio::time::interval(agent.config.status_update);
                lease.tick().await;
                status.tick().await;
                loop {
                    tokio::select! {
                        _ = lease.tick() => {
                            if let Err(e) = agent.renew_lease().await {
                                tracing::warn!(node = %agent.config.name, error = %e, "renewing node lease failed");
                            }
                        }
                        _ = status.tick() => {
                            if let Err(e) = agent.update_node_status().await {
                                tracing::warn!(node = %agent.config.name, error = %e, "updating node status failed");
                            }
                        }
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        let refresh = {
            let ctx = ctx.clone();
            let mut stop = shutdown_rx.clone();
            let period = agent.config.volume_refresh;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => ctx.volumes.refresh(&ctx.store).await,
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        let mut tasks = vec![events, heartbeat, refresh];
        if let Some((metrics, resolution)) = agent.pod_metrics.clone() {
            tasks.push(tokio::spawn(usage::publish(
                ctx.runtime.clone(),
                name.clone(),
                agent.clock,
                metrics,
                resolution,
                shutdown_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(watch_pods(ctx, shutdown_rx, workers.clone())));
        Ok(NodeHandle {
            name,
            shutdown,
            tasks,
            workers,
        })
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A pod's worker, as the pod watch sees it.
struct WorkerEntry {
    tx: mpsc::UnboundedSender<WorkerEvent>,
    task: JoinHandle<()>,
    /// The worker returned: it is done with the pod, whose object is deleted or being
    /// removed.
    ended: bool,
    /// The watch reported the object deleted.
    deleted: bool,
}

/// The pod workers by pod uid. An entry outlives its worker until the watch has also seen
/// the object deleted: events queued before that deletion are stale, and must not start a
/// second worker that would run the pod again.
struct Workers {
    ctx: Arc<NodeContext>,
    by_uid: HashMap<String, WorkerEntry>,
    done_tx: mpsc::UnboundedSender<String>,
    count: Arc<Mutex<usize>>,
    /// What previous agents left in the runtime, by pod uid, until the pod's worker starts.
    inherited: HashMap<String, worker::Inherited>,
}

impl Workers {
    fn send(&mut self, pod: Typed<Pod>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(entry) = self.by_uid.get(&uid) {
            // Fails only when the worker ended; then the event is stale.
            let _ = entry.tx.send(WorkerEvent::Pod(pod));
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let inherited = self.inherited.remove(&uid);
        let worker = PodWorker::new(self.ctx.clone(), pod, inherited, rx, tx.clone());
        let done = self.done_tx.clone();
        let u = uid.clone();
        let task = tokio::spawn(async move {
            worker.run().await;
            let _ = done.send(u);
        });
        self.by_uid.insert(
            uid,
            WorkerEntry {
                tx,
                task,
                ended: false,
                deleted: false,
            },
        );
        self.update_count();
    }

    fn gone(&mut self, uid: &str) {
        if let Some(entry) = self.by_uid.get_mut(uid) {
            let _ = entry.tx.send(WorkerEvent::Gone);
            entry.deleted = true;
            if entry.ended {
                self.by_uid.remove(uid);
            }
        }
    }

    fn finished(&mut self, uid: &str) {
        if let Some(entry) = self.by_uid.get_mut(uid) {
            entry.ended = true;
            if entry.deleted {
                self.by_uid.remove(uid);
            }
        }
        self.update_count();
    }

    fn update_count(&self) {
        let running = self.by_uid.values().filter(|e| !e.ended).count();
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) = running;
    }
}

/// Tears down what previous agents left for pods not in `live` (pods deleted while no agent
/// ran), and removes them from `inherited`.
async fn collect_orphans(
    ctx: &NodeContext,
    live: &HashMap<String, Typed<Pod>>,
    inherited: &mut HashMap<String, worker::Inherited>,
) {
    let orphans: Vec<String> = inherited
        .keys()
        .filter(|uid| !live.contains_key(*uid))
        .cloned()
        .collect();
    for uid in orphans {
        let Some(found) = inherited.remove(&uid) else {
            continue;
        };
        for sb in found.sandboxes {
            let mut pod = Pod::default();
            pod.metadata.uid = Some(uid.clone());
            pod.metadata.name = Some(sb.name.clone());
            pod.metadata.namespace = Some(sb.namespace.clone());
            worker::tear_down(ctx, &pod, Some(&sb.id), false).await;
        }
    }
}

async fn watch_pods(
    ctx: Arc<NodeContext>,
    mut stop: watch::Receiver<bool>,
    count: Arc<Mutex<usize>>,
) {
    let api: Api<Pod> = Api::all(ctx.store.clone());
    let selector = ListOptions {
        fields: Some(FieldSelector::eq("spec.nodeName", &ctx.node_name)),
        ..Default::default()
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut workers = Workers {
        ctx: ctx.clone(),
        by_uid: HashMap::new(),
        done_tx,
        count,
        inherited: HashMap::new(),
    };
    let mut first = true;
    'relist: loop {
        let list = match ctx.store.list(&crate::object::Kind::Pod, &selector).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(node = %ctx.node_name, error = %e, "listing pods failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'relist,
                    _ = stop.changed() => break 'relist,
                }
            }
        };
        let live: HashMap<String, Typed<Pod>> = list
            .items
            .iter()
            .filter_map(|o| Typed::<Pod>::new(o.clone()))
            .map(|p| (p.metadata.uid.clone().unwrap_or_default(), p))
            .collect();
        if first {
            // The one scan of the runtime: what is left for live pods goes to their workers.
            let mut inherited = worker::inherited(&ctx).await;
            collect_orphans(&ctx, &live, &mut inherited).await;
            workers.inherited = inherited;
            first = false;
        }
        let known: Vec<String> = workers.by_uid.keys().cloned().collect();
        for uid in known {
            if !live.contains_key(&uid) {
                workers.gone(&uid);
            }
        }
        for pod in live.into_values() {
            workers.send(pod);
        }
        let options = WatchOptions {
            selector: selector.clone(),
            resource_version: Some(list.resource_version),
            bookmarks: false,
        };
        let mut stream = match api.watch(&options).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(node = %ctx.node_name, error = %e, "watching pods failed");
                continue 'relist;
            }
        };
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(WatchEvent::Added(o))) | Some(Ok(WatchEvent::Modified(o))) => {
                        if let Some(pod) = Typed::<Pod>::new(o) {
                            workers.send(pod);
                        }
                    }
                    Some(Ok(WatchEvent::Deleted(o))) => workers.gone(o.uid()),
                    Some(Ok(WatchEvent::Bookmark(_))) => {}
                    Some(Err(e)) => {
                        tracing::debug!(node = %ctx.node_name, error = %e, "pod watch ended; relisting");
                        continue 'relist;
                    }
                    None => break 'relist,
                },
                Some(uid) = done_rx.recv() => workers.finished(&uid),
                _ = stop.changed() => break 'relist,
            }
        }
    }
    // Shutting down: stop the workers; containers keep running for the next agent.
    for (_, entry) in workers.by_uid.drain() {
        entry.task.abort();
    }
}

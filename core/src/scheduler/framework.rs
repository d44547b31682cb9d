//! The scheduling framework: what a plugin sees (the pod being scheduled and a snapshot of the
//! nodes) and the two kinds of plugin, [`FilterPlugin`] and [`ScorePlugin`].
//!
//! A plugin may compute per-pod state once in `pre_filter`/`pre_score` and keep it in the
//! [`CycleState`]; it may also say it has nothing to do for this pod ([`Prepared::Skip`]), so
//! that the per-node loop does not call it at all. That is what keeps the common pod (no
//! affinity, no spread constraints, no host ports) cheap on a 5,000-node cluster.

use std::any::Any;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodSpec, Taint};

use crate::object::Object;
use crate::quantity;

/// Amounts of resources in scheduler units: millicores for CPU, bytes for memory and
/// ephemeral storage, counts for pods and extended resources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceAmounts {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Pods.
    pub pods: i64,
    /// Extended resources such as `nvidia.com/gpu`, sorted by name.
    pub scalar: Vec<(String, i64)>,
}

impl ResourceAmounts {
    /// Reads a resource list (`allocatable`, `requests`).
    pub fn from_list(
        list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> ResourceAmounts {
        let mut out = ResourceAmounts::default();
        for (name, q) in list.into_iter().flatten() {
            let v = quantity::resource_value(name, q).unwrap_or(0);
            out.set(name, v);
        }
        out
    }

    /// The amount of a resource by name.
    pub fn get(&self, name: &str) -> i64 {
        match name {
            "cpu" => self.milli_cpu,
            "memory" => self.memory,
            "ephemeral-storage" => self.ephemeral_storage,
            "pods" => self.pods,
            other => self
                .scalar
                .iter()
                .find(|(n, _)| n == other)
                .map_or(0, |(_, v)| *v),
        }
    }

    /// Sets the amount of a resource by name.
    pub fn set(&mut self, name: &str, value: i64) {
        match name {
            "cpu" => self.milli_cpu = value,
            "memory" => self.memory = value,
            "ephemeral-storage" => self.ephemeral_storage = value,
            "pods" => self.pods = value,
            other => match self.scalar.binary_search_by(|(n, _)| n.as_str().cmp(other)) {
                Ok(i) => self.scalar[i].1 = value,
                Err(i) => self.scalar.insert(i, (other.to_string(), value)),
            },
        }
    }

    /// Adds `other` to `self` (or subtracts it with `sign = -1`).
    pub fn add(&mut self, other: &ResourceAmounts, sign: i64) {
        self.milli_cpu += sign * other.milli_cpu;
        self.memory += sign * other.memory;
        self.ephemeral_storage += sign * other.ephemeral_storage;
        self.pods += sign * other.pods;
        for (name, v) in &other.scalar {
            let cur = self.get(name);
            self.set(name, cur + sign * v);
        }
    }

    /// Each resource the maximum of `self` and `other`.
    fn max_with(&mut self, other: &ResourceAmounts) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let cur = self.get(name);
            self.set(name, cur.max(*v));
        }
    }
}

/// CPU request assumed for scoring a container that requests none (as kube-scheduler).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory request assumed for scoring a container that requests none (as kube-scheduler).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// A host port a pod asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host IP (`0.0.0.0` when unset).
    pub ip: String,
    /// Protocol.
    pub protocol: String,
    /// Port.
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports collide (same protocol and port, and an IP in common).
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// A pod as the scheduler sees it: the object and what was computed from it once.
#[derive(Clone, Debug)]
pub struct PodInfo {
    /// The pod object.
    pub object: Arc<Object>,
    /// Effective requests: max(sum of app containers + sidecars, each init container + the
    /// sidecars started before it) + overhead, with `pods: 1`.
    pub requests: ResourceAmounts,
    /// CPU and memory requests with the scoring defaults for containers that request none.
    pub non_zero: (i64, i64),
    /// Host ports asked for.
    pub host_ports: Vec<HostPort>,
    /// The pod has pod affinity or anti-affinity terms (required or preferred), which other
    /// pods' scheduling must take into account.
    pub has_pod_affinity: bool,
}

impl PodInfo {
    /// Computes the scheduler's view of a pod.
    pub fn new(object: Arc<Object>) -> PodInfo {
        let (requests, non_zero, host_ports) = match object.as_kind::<Pod>() {
            Some(pod) => pod_requests(pod),
            None => (ResourceAmounts::default(), (0, 0), Vec::new()),
        };
        let has_pod_affinity = object
            .as_kind::<Pod>()
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.affinity.as_ref())
            .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some());
        PodInfo {
            object,
            requests,
            non_zero,
            host_ports,
            has_pod_affinity,
        }
    }

    /// The scheduler's view of a newer version of the same pod: what was computed from the
    /// old version is kept when the fields it came from are unchanged (the common case: the
    /// watch confirms a binding), and computed again otherwise.
    pub fn refreshed(&self, object: Arc<Object>) -> PodInfo {
        self.refreshed_if_same(&object)
            .unwrap_or_else(|| PodInfo::new(object))
    }

    /// This view for `object`, a newer version of the pod, when it asks for what this one
    /// accounts for (requests, host ports, affinity); `None` when it asks for something else.
    pub fn refreshed_if_same(&self, object: &Arc<Object>) -> Option<PodInfo> {
        let (Some(old), Some(new)) = (self.object.as_kind::<Pod>(), object.as_kind::<Pod>()) else {
            return None;
        };
        same_scheduling_inputs(old, new).then(|| PodInfo {
            object: object.clone(),
            requests: self.requests.clone(),
            non_zero: self.non_zero,
            host_ports: self.host_ports.clone(),
            has_pod_affinity: self.has_pod_affinity,
        })
    }

    /// The pod.
    pub fn pod(&self) -> &Pod {
        self.object.as_kind::<Pod>().expect("PodInfo holds a Pod")
    }

    /// The pod's spec (empty when it has none).
    pub fn spec(&self) -> &PodSpec {
        static EMPTY: std::sync::OnceLock<PodSpec> = std::sync::OnceLock::new();
        self.pod()
            .spec
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(PodSpec::default))
    }

    /// The pod's namespace.
    pub fn namespace(&self) -> &str {
        self.object.namespace().unwrap_or("default")
    }

    /// The pod's labels.
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.object.meta().labels.as_ref()
    }
}

/// Whether two versions of a pod ask for the same resources, host ports and pod affinity.
fn same_scheduling_inputs(old: &Pod, new: &Pod) -> bool {
    let (Some(a), Some(b)) = (old.spec.as_ref(), new.spec.as_ref()) else {
        return old.spec.is_none() && new.spec.is_none();
    };
    let same_containers = |x: &[k8s_openapi::api::core::v1::Container],
                           y: &[k8s_openapi::api::core::v1::Container]| {
        x.len() == y.len()
            && x.iter().zip(y).all(|(x, y)| {
                x.resources == y.resources
                    && x.ports == y.ports
                    && x.restart_policy == y.restart_policy
            })
    };
    let affinity = |s: &PodSpec| {
        s.affinity
            .as_ref()
            .map(|a| (a.pod_affinity.is_some(), a.pod_anti_affinity.is_some()))
    };
    same_containers(&a.containers, &b.containers)
        && same_containers(
            a.init_containers.as_deref().unwrap_or_default(),
            b.init_containers.as_deref().unwrap_or_default(),
        )
        && a.overhead == b.overhead
        && affinity(a) == affinity(b)
}

fn container_requests(c: &k8s_openapi::api::core::v1::Container) -> (ResourceAmounts, (i64, i64)) {
    let resources = c.resources.as_ref();
    // Kubernetes defaults requests to limits when only limits are given.
    let list = resources
        .and_then(|r| r.requests.as_ref())
        .or_else(|| resources.and_then(|r| r.limits.as_ref()));
    let amounts = ResourceAmounts::from_list(list);
    let cpu = list.is_some_and(|l| l.contains_key("cpu"));
    let mem = list.is_some_and(|l| l.contains_key("memory"));
    let non_zero = (
        if cpu {
            amounts.milli_cpu
        } else {
            DEFAULT_MILLI_CPU_REQUEST
        },
        if mem {
            amounts.memory
        } else {
            DEFAULT_MEMORY_REQUEST
        },
    );
    (amounts, non_zero)
}

fn pod_requests(pod: &Pod) -> (ResourceAmounts, (i64, i64), Vec<HostPort>) {
    let mut total = ResourceAmounts::default();
    let mut non_zero = (0, 0);
    let mut ports = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        total.pods = 1;
        return (total, non_zero, ports);
    };
    for c in &spec.containers {
        let (r, nz) = container_requests(c);
        total.add(&r, 1);
        non_zero.0 += nz.0;
        non_zero.1 += nz.1;
        for p in c.ports.iter().flatten() {
            if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                ports.push(HostPort {
                    ip: p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    port: hp,
                });
            }
        }
    }
    let mut sidecars = ResourceAmounts::default();
    let mut init_peak = ResourceAmounts::default();
    for c in spec.init_containers.iter().flatten() {
        let (r, _) = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r, 1);
        } else {
            let mut at_start = sidecars.clone();
            at_start.add(&r, 1);
            init_peak.max_with(&at_start);
        }
    }
    total.add(&sidecars, 1);
    total.max_with(&init_peak);
    if let Some(overhead) = spec.overhead.as_ref() {
        total.add(&ResourceAmounts::from_list(Some(overhead)), 1);
    }
    total.pods = 1;
    (total, non_zero, ports)
}

/// A node as the scheduler sees it: allocatable, what its pods request, and its pods.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// The Node object (labels, taints, conditions).
    pub node: Arc<Object>,
    /// What the node can give to pods.
    pub allocatable: ResourceAmounts,
    /// What its pods request.
    pub requested: ResourceAmounts,
    /// CPU and memory requested, with scoring defaults for pods that request none.
    pub non_zero_requested: (i64, i64),
    /// Pods on the node (bound or assumed).
    pub pods: Vec<Arc<PodInfo>>,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// Taints (copied out of the node for quick access).
    pub taints: Vec<Taint>,
    /// How many of its pods have pod affinity or anti-affinity terms.
    pub pods_with_affinity: usize,
}

impl NodeInfo {
    /// The scheduler's view of a Node object, without pods.
    pub fn new(node: Arc<Object>) -> NodeInfo {
        let typed = node.as_kind::<k8s_openapi::api::core::v1::Node>();
        let allocatable = typed
            .and_then(|n| n.status.as_ref())
            .map(|s| ResourceAmounts::from_list(s.allocatable.as_ref().or(s.capacity.as_ref())))
            .unwrap_or_default();
        let spec = typed.and_then(|n| n.spec.as_ref());
        NodeInfo {
            name: node.name().to_string(),
            allocatable,
            requested: ResourceAmounts::default(),
            non_zero_requested: (0, 0),
            pods: Vec::new(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            pods_with_affinity: 0,
            node,
        }
    }

    /// The node's labels.
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.node.meta().labels.as_ref()
    }

    /// Whether the node has a `PreferNoSchedule` taint (which only scoring looks at).
    pub fn has_soft_taints(&self) -> bool {
        self.taints.iter().any(|t| t.effect == "PreferNoSchedule")
    }

    /// Whether the node has a `NoSchedule` or `NoExecute` taint (which filtering looks at).
    pub fn has_hard_taints(&self) -> bool {
        self.taints
            .iter()
            .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
    }

    /// The value of a node label.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels().and_then(|l| l.get(key)).map(String::as_str)
    }

    /// Accounts a pod on this node.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests, 1);
        self.non_zero_requested.0 += pod.non_zero.0;
        self.non_zero_requested.1 += pod.non_zero.1;
        self.pods_with_affinity += pod.has_pod_affinity as usize;
        self.pods.push(pod);
    }

    /// Removes a pod (by uid) from this node's accounting; returns whether it was there.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.object.uid() == uid) else {
            return false;
        };
        let pod = self.pods.swap_remove(i);
        self.requested.add(&pod.requests, -1);
        self.non_zero_requested.0 -= pod.non_zero.0;
        self.non_zero_requested.1 -= pod.non_zero.1;
        self.pods_with_affinity -= pod.has_pod_affinity as usize;
        true
    }

    /// Replaces the Node object, keeping the pods.
    pub fn set_node(&mut self, node: Arc<Object>) {
        let fresh = NodeInfo::new(node);
        self.allocatable = fresh.allocatable;
        self.unschedulable = fresh.unschedulable;
        self.taints = fresh.taints;
        self.node = fresh.node;
    }
}

/// The nodes as of the start of a scheduling cycle.
pub struct Snapshot<'a> {
    /// Every node.
    pub nodes: &'a [NodeInfo],
    /// How many pods in the cluster have pod affinity or anti-affinity terms: when none do,
    /// the inter-pod affinity plugins skip pods that have none themselves.
    pub pods_with_affinity: usize,
    /// How many nodes have traits some plugins check: when none has one, those plugins need
    /// not look at each node.
    pub node_traits: NodeTraits,
}

/// Counts of nodes with a trait that only some plugins care about, kept up to date by the
/// scheduler's cache as nodes come, change and go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeTraits {
    /// Nodes with `spec.unschedulable`.
    pub unschedulable: usize,
    /// Nodes with a `NoSchedule` or `NoExecute` taint.
    pub hard_taints: usize,
    /// Nodes with a `PreferNoSchedule` taint.
    pub soft_taints: usize,
}

impl NodeTraits {
    /// Adds (`sign = 1`) or removes (`sign = -1`) a node's traits.
    pub fn count(&mut self, node: &NodeInfo, sign: isize) {
        let add = |n: &mut usize, has: bool| {
            if has {
                *n = n.wrapping_add_signed(sign);
            }
        };
        add(&mut self.unschedulable, node.unschedulable);
        add(&mut self.hard_taints, node.has_hard_taints());
        add(&mut self.soft_taints, node.has_soft_taints());
    }
}

/// Why a node does not fit a pod, in kube-scheduler's words (counted across nodes in the
/// pod's `PodScheduled` condition message).
pub type Reason = Cow<'static, str>;

/// What a plugin's per-pod preparation decided.
#[derive(Debug)]
pub enum Prepared {
    /// Call the plugin for each node.
    Continue,
    /// The plugin has nothing to check or score for this pod: do not call it per node.
    Skip,
}

/// Per-pod state plugins compute once and read per node.
#[derive(Default)]
pub struct CycleState {
    values: HashMap<&'static str, Box<dyn Any + Send + Sync>>,
}

impl CycleState {
    /// Stores a value under a plugin's key.
    pub fn insert<T: Any + Send + Sync>(&mut self, key: &'static str, value: T) {
        self.values.insert(key, Box::new(value));
    }

    /// Reads a value stored under a key.
    pub fn get<T: Any + Send + Sync>(&self, key: &'static str) -> Option<&T> {
        self.values.get(key)?.downcast_ref()
    }
}

/// A plugin that rules nodes out.
pub trait FilterPlugin: Send + Sync {
    /// The plugin's name (kube-scheduler's where it has one).
    fn name(&self) -> &'static str;

    /// Computes per-pod state; `Err` makes the pod unschedulable on every node at once.
    fn pre_filter(
        &self,
        pod: &PodInfo,
        snapshot: &Snapshot<'_>,
        state: &mut CycleState,
    ) -> Result<Prepared, Reason> {
        let _ = (pod, snapshot, state);
        Ok(Prepared::Continue)
    }

    /// Whether the pod fits the node; `Err` says why not.
    fn filter(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Reason>;
}

/// Highest score a plugin gives a node.
pub const MAX_NODE_SCORE: i64 = 100;

/// A plugin that ranks feasible nodes.
pub trait ScorePlugin: Send + Sync {
    /// The plugin's name.
    fn name(&self) -> &'static str;

    /// The weight of this plugin's score in the total.
    fn weight(&self) -> i64 {
        1
    }

    /// Computes per-pod state before scoring.
    fn pre_score(
        &self,
        pod: &PodInfo,
        snapshot: &Snapshot<'_>,
        state: &mut CycleState,
    ) -> Prepared {
        let _ = (pod, snapshot, state);
        Prepared::Continue
    }

    /// The node's score, from 0 to [`MAX_NODE_SCORE`] (before normalization).
    fn score(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64;

    /// Rescales raw scores of all feasible nodes into 0..=[`MAX_NODE_SCORE`].
    fn normalize(&self, scores: &mut [i64], state: &CycleState) {
        let _ = (scores, state);
    }
}

/// Scales `scores` so the highest becomes [`MAX_NODE_SCORE`] (or reversed: the highest raw
/// score becomes 0), as kube-scheduler's default normalizer.
pub fn normalize_to_max(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = *s * MAX_NODE_SCORE / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

//! The scheduler's view of the cluster: nodes with the pods bound (or assumed) on them, and
//! the pods waiting to be scheduled, ordered by priority then arrival.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use tokio::time::{Duration, Instant};

use super::framework::{NodeInfo, NodeTraits, PodInfo, Snapshot};

/// Nodes and the pods on them.
#[derive(Default)]
pub struct ClusterCache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Pod uid → node name, for every pod accounted on a node.
    placed: HashMap<String, String>,
    pods_with_affinity: usize,
    traits: NodeTraits,
}

impl ClusterCache {
    /// A snapshot for one scheduling cycle.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            nodes: &self.nodes,
            pods_with_affinity: self.pods_with_affinity,
            node_traits: self.traits,
        }
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The node at an index of the snapshot.
    pub fn node_at(&self, idx: usize) -> &NodeInfo {
        &self.nodes[idx]
    }

    /// The node of that name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// Adds or refreshes a node.
    pub fn upsert_node(&mut self, node: Arc<crate::Object>) {
        let name = node.name().to_string();
        match self.index.get(&name) {
            Some(&i) => {
                self.traits.count(&self.nodes[i], -1);
                self.nodes[i].set_node(node);
                self.traits.count(&self.nodes[i], 1);
            }
            None => {
                let info = NodeInfo::new(node);
                self.traits.count(&info, 1);
                self.index.insert(name, self.nodes.len());
                self.nodes.push(info);
            }
        }
    }

    /// Forgets a node and its pods.
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let removed = self.nodes.swap_remove(i);
        self.pods_with_affinity -= removed.pods_with_affinity;
        self.traits.count(&removed, -1);
        for p in &removed.pods {
            self.placed.remove(p.object.uid());
        }
        if i < self.nodes.len() {
            let moved = self.nodes[i].name.clone();
            self.index.insert(moved, i);
        }
    }

    /// The pod as accounted on its node.
    pub fn placed_info(&self, uid: &str) -> Option<&Arc<PodInfo>> {
        let node = self.nodes.get(*self.index.get(self.placed.get(uid)?)?)?;
        node.pods.iter().find(|p| p.object.uid() == uid)
    }

    /// The node a pod is accounted on.
    pub fn placed_on(&self, uid: &str) -> Option<&str> {
        self.placed.get(uid).map(String::as_str)
    }

    /// Accounts a pod on a node (bound, or assumed while its binding is written). A pod
    /// already accounted elsewhere moves. Returns false when the node is unknown.
    pub fn place(&mut self, pod: Arc<PodInfo>, node_name: &str) -> bool {
        // Re-placing a pod (a newer version from the watch) replaces its old accounting.
        let uid = pod.object.uid().to_string();
        self.unplace(&uid);
        let Some(&i) = self.index.get(node_name) else {
            return false;
        };
        self.pods_with_affinity += pod.has_pod_affinity as usize;
        self.nodes[i].add_pod(pod);
        self.placed.insert(uid, node_name.to_string());
        true
    }

    /// Takes a newer version of a pod already accounted on `node_name` when it asks for what
    /// its accounting holds (the usual case: a status update of a bound pod). Its entry then
    /// refers to the new object and the node's totals stay as they are. Returns false when the
    /// pod is not accounted there or its inputs changed; the caller then places it afresh.
    pub fn refresh_placed(&mut self, object: &Arc<crate::Object>, node_name: &str) -> bool {
        let uid = object.uid();
        if self.placed.get(uid).map(String::as_str) != Some(node_name) {
            return false;
        }
        let Some(&i) = self.index.get(node_name) else {
            return false;
        };
        let Some(entry) = self.nodes[i]
            .pods
            .iter_mut()
            .find(|p| p.object.uid() == uid)
        else {
            return false;
        };
        match entry.refreshed_if_same(object) {
            Some(info) => {
                *entry = Arc::new(info);
                true
            }
            None => false,
        }
    }

    /// Removes the placement `pod` made, if it is still the pod's accounting (no newer version
    /// of the pod has been placed, and it was not removed since); returns whether it was.
    pub fn forget_assumed(&mut self, pod: &Arc<PodInfo>) -> bool {
        let same = self
            .placed_info(pod.object.uid())
            .is_some_and(|placed| Arc::ptr_eq(placed, pod));
        if same {
            self.unplace(pod.object.uid());
        }
        same
    }

    /// Removes a pod from its node's accounting.
    pub fn unplace(&mut self, uid: &str) {
        let Some(node) = self.placed.remove(uid) else {
            return;
        };
        if let Some(&i) = self.index.get(&node) {
            let before = self.nodes[i].pods_with_affinity;
            self.nodes[i].remove_pod(uid);
            self.pods_with_affinity -= before - self.nodes[i].pods_with_affinity;
        }
    }
}

/// A pod waiting for a node.
pub struct QueuedPod {
    /// The latest version of the pod.
    pub info: Arc<PodInfo>,
    /// Scheduling attempts so far.
    pub attempts: u32,
    /// Not to be retried before this time (after a failed attempt).
    pub backoff_until: Option<Instant>,
}

/// Pending pods: an active heap (priority, then arrival) and the unschedulable ones parked
/// until the cluster changes or their time is up.
pub struct SchedulingQueue {
    pods: HashMap<String, QueuedPod>,
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    in_active: HashMap<String, u64>,
    unschedulable: HashMap<String, Instant>,
    seq: u64,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_unschedulable: Duration,
}

impl SchedulingQueue {
    /// A queue with kube-scheduler's backoff settings.
    pub fn new(
        initial_backoff: Duration,
        max_backoff: Duration,
        max_unschedulable: Duration,
    ) -> Self {
        SchedulingQueue {
            pods: HashMap::new(),
            active: BinaryHeap::new(),
            in_active: HashMap::new(),
            unschedulable: HashMap::new(),
            seq: 0,
            initial_backoff,
            max_backoff,
            max_unschedulable,
        }
    }

    fn push_active(&mut self, key: String, priority: i32) {
        if self.in_active.contains_key(&key) {
            return;
        }
        self.seq += 1;
        self.in_active.insert(key.clone(), self.seq);
        self.active.push((priority, Reverse(self.seq), key));
    }

    /// Adds a new pending pod, or refreshes one already queued (an update to an unschedulable
    /// pod makes it active again, as in kube-scheduler).
    pub fn add_or_update(&mut self, key: String, info: Arc<PodInfo>) {
        let priority = info.spec().priority.unwrap_or(0);
        match self.pods.get_mut(&key) {
            Some(q) => {
                q.info = info;
                if self.unschedulable.remove(&key).is_some() {
                    self.push_active(key, priority);
                }
            }
            None => {
                self.pods.insert(
                    key.clone(),
                    QueuedPod {
                        info,
                        attempts: 0,
                        backoff_until: None,
                    },
                );
                self.push_active(key, priority);
            }
        }
    }

    /// Removes a pod (bound elsewhere or deleted).
    pub fn remove(&mut self, key: &str) {
        self.pods.remove(key);
        self.unschedulable.remove(key);
        // Stale heap entries are skipped in `pop`.
        self.in_active.remove(key);
    }

    /// Whether a pod is queued.
    pub fn contains(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }

    /// The next pod to schedule whose backoff has expired.
    pub fn pop(&mut self, now: Instant) -> Option<(String, Arc<PodInfo>)> {
        let mut deferred = Vec::new();
        let mut found = None;
        while let Some((prio, seq, key)) = self.active.pop() {
            if self.in_active.get(&key) != Some(&seq.0) {
                continue;
            }
            let Some(q) = self.pods.get(&key) else {
                self.in_active.remove(&key);
                continue;
            };
            if q.backoff_until.is_some_and(|t| t > now) {
                deferred.push((prio, seq, key));
                continue;
            }
            self.in_active.remove(&key);
            found = Some((key.clone(), q.info.clone()));
            break;
        }
        self.active.extend(deferred);
        found
    }

    /// The earliest time a backed-off active pod becomes ready, if any pod waits on backoff.
    pub fn next_ready(&self) -> Option<Instant> {
        self.active
            .iter()
            .filter(|(_, seq, key)| self.in_active.get(key) == Some(&seq.0))
            .filter_map(|(_, _, key)| self.pods.get(key)?.backoff_until)
            .min()
    }

    /// Whether a pod can be popped now.
    pub fn has_ready(&self, now: Instant) -> bool {
        self.active.iter().any(|(_, seq, key)| {
            self.in_active.get(key) == Some(&seq.0)
                && self
                    .pods
                    .get(key)
                    .is_some_and(|q| q.backoff_until.is_none_or(|t| t <= now))
        })
    }

    /// Parks a pod that fit no node; it backs off 1 s, 2 s, 4 s … up to the maximum.
    pub fn mark_unschedulable(&mut self, key: &str, now: Instant) {
        let Some(q) = self.pods.get_mut(key) else {
            return;
        };
        q.attempts += 1;
        let factor = 1u32 << (q.attempts - 1).min(16);
        let backoff = (self.initial_backoff * factor).min(self.max_backoff);
        q.backoff_until = Some(now + backoff);
        self.unschedulable.insert(key.to_string(), now);
    }

    /// Requeues a pod whose binding failed, after backoff.
    pub fn requeue(&mut self, key: &str, now: Instant) {
        self.mark_unschedulable(key, now);
        self.move_to_active(key);
    }

    fn move_to_active(&mut self, key: &str) {
        self.unschedulable.remove(key);
        if let Some(q) = self.pods.get(key) {
            let priority = q.info.spec().priority.unwrap_or(0);
            self.push_active(key.to_string(), priority);
        }
    }

    /// The cluster changed: every unschedulable pod gets another try (after its backoff).
    pub fn move_all_to_active(&mut self) {
        let keys: Vec<String> = self.unschedulable.keys().cloned().collect();
        for key in keys {
            self.move_to_active(&key);
        }
    }

    /// Pods parked longer than the maximum go back to active even without a cluster change.
    pub fn flush_unschedulable(&mut self, now: Instant) {
        let stale: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.max_unschedulable)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.move_to_active(&key);
        }
    }

    /// Number of pods queued (active or parked).
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod is queued.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

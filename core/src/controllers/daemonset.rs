//! The DaemonSet controller: one pod on every eligible node.
//!
//! A node is eligible when the pod template (with the tolerations every DaemonSet pod gets,
//! see [`add_daemon_tolerations`]) fits it: `nodeName` if set, `nodeSelector`, required node
//! affinity, and no untolerated `NoSchedule`/`NoExecute` taint. A node with only an
//! untolerated `NoSchedule` taint keeps a pod it already has; an untolerated `NoExecute` taint
//! removes it. Pods are created for their node but not bound to it: like Kubernetes, the
//! controller pins each pod with a required node affinity term
//! `matchFields: metadata.name In [<node>]` and leaves binding to the scheduler.
//!
//! A reconcile follows Kubernetes' `syncDaemonSet`:
//!
//! 1. claims pods and records the template as a ControllerRevision ([`history`]); pods carry
//!    its hash in the `controller-revision-hash` label;
//! 2. creates a pod on each eligible node that has none; deletes Failed and Succeeded pods
//!    (a new one follows), duplicates (keeping the oldest), pods on nodes that are no longer
//!    eligible, and pods of nodes that no longer exist;
//! 3. when step 2 changed nothing and the strategy is `RollingUpdate`, deletes old-template
//!    pods — unavailable ones at once, available ones only while fewer than `maxUnavailable`
//!    (default 1; a percentage rounds up) nodes lack an available pod — so that step 2 of a
//!    later reconcile replaces them. `OnDelete` replaces a pod only when the user deletes it;
//! 4. writes the status: `desiredNumberScheduled`, `currentNumberScheduled`, `numberReady`,
//!    `numberAvailable`, `numberUnavailable`, `updatedNumberScheduled`,
//!    `numberMisscheduled`, `observedGeneration`, `collisionCount`.
//!
//! Not implemented: `maxSurge` (surge pods are never created; a non-zero `maxSurge` with
//! `maxUnavailable: 0` rolls one node at a time) and the backoff Kubernetes applies before
//! replacing a pod that failed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Toleration,
};

use super::deployment::strategy::resolve;
use super::history::{self, CONTROLLER_REVISION_HASH};
use super::node_lifecycle::{NOT_READY_TAINT, UNREACHABLE_TAINT};
use super::ownership::{claim, selector_of};
use super::pod_state::{check_available, is_finished, is_ready, is_terminating};
use super::replicaset::{create_pods, delete_pods, pod_from_template};
use crate::clock::from_k8s_time;
use crate::controller::{
    Action, CacheEvent, Context, Controller, ControllerError, ObjectKey, Reconciler,
};
use crate::object::{Kind, Object, Resource, Typed};
use crate::scheduler::framework::NodeInfo;
use crate::scheduler::plugins::{required_node_affinity_matches, required_terms, tolerates};

/// Label with the DaemonSet's generation when the pod was made (kept for compatibility, as in
/// Kubernetes; the revision hash is what identifies the template).
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

/// The tolerations Kubernetes adds to every DaemonSet pod: node problems do not evict it and
/// unschedulable or pressured nodes still get it.
pub const DEFAULT_TOLERATIONS: [(&str, &str); 6] = [
    (NOT_READY_TAINT, "NoExecute"),
    (UNREACHABLE_TAINT, "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];

/// The extra toleration of host-network DaemonSet pods.
pub const NETWORK_UNAVAILABLE_TAINT: &str = "node.kubernetes.io/network-unavailable";

/// The DaemonSet reconciler.
#[derive(Default)]
pub struct DaemonSetController;

impl DaemonSetController {
    /// The controller, ready to run. A node that comes, goes, or changes in what can make it
    /// eligible or not ([`eligibility_may_change`]) reconciles every DaemonSet; heartbeats do
    /// not.
    pub fn controller() -> Controller<DaemonSetController> {
        Controller::new("daemonset", Kind::DaemonSet, DaemonSetController)
            .owns(Kind::Pod)
            .owns(Kind::ControllerRevision)
            .watches_changes(Kind::Node, eligibility_may_change, |_node, ctx| {
                ctx.informers
                    .get(&Kind::DaemonSet)
                    .list()
                    .iter()
                    .map(|ds| ObjectKey::of(ds))
                    .collect()
            })
    }
}

/// Whether a Node change can change which DaemonSets should run on it: the node was added or
/// removed, or its labels or spec (taints) changed, the only parts of a node [`should_run`]
/// reads. Status writes (heartbeats, conditions, allocatable) do not; a node going NotReady
/// reaches DaemonSets through the taint it gets (Kubernetes' `shouldIgnoreNodeUpdate`).
fn eligibility_may_change(event: &CacheEvent) -> bool {
    let CacheEvent::Applied {
        old: Some(old),
        new,
    } = event
    else {
        return true;
    };
    let (Some(old), Some(new)) = (old.as_kind::<Node>(), new.as_kind::<Node>()) else {
        return true;
    };
    old.metadata.labels != new.metadata.labels || old.spec != new.spec
}

/// Adds (or updates) `toleration` in `spec`, replacing one with the same key, operator, value
/// and effect (Kubernetes' `AddOrUpdateTolerationInPodSpec`).
fn add_or_update_toleration(spec: &mut PodSpec, toleration: Toleration) {
    let same = |t: &Toleration| {
        let operator = |t: &Toleration| t.operator.clone().unwrap_or_else(|| "Equal".into());
        t.key == toleration.key
            && t.effect == toleration.effect
            && t.value.as_deref().unwrap_or("") == toleration.value.as_deref().unwrap_or("")
            && operator(t) == operator(&toleration)
    };
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    match tolerations.iter_mut().find(|t| same(t)) {
        Some(existing) => *existing = toleration,
        None => tolerations.push(toleration),
    }
}

/// Adds the tolerations of [`DEFAULT_TOLERATIONS`] to `spec`, plus the network-unavailable
/// one for host-network pods.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let host_network = spec.host_network == Some(true);
    let network = host_network.then_some((NETWORK_UNAVAILABLE_TAINT, "NoSchedule"));
    for (key, effect) in DEFAULT_TOLERATIONS.into_iter().chain(network) {
        add_or_update_toleration(
            spec,
            Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            },
        );
    }
}

/// Pins `spec` to `node` the way Kubernetes does: every required node affinity term gets
/// `matchFields: metadata.name In [node]` in place of its own match fields (a term-less
/// affinity gets one such term). Preferred terms are kept.
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let field = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![node.to_string()]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = node_affinity
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(NodeSelector::default);
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_fields = Some(vec![field.clone()]);
    }
}

/// The node a DaemonSet pod is for: its `nodeName`, or the node its required affinity pins
/// it to (Kubernetes' `GetTargetNodeName`).
pub fn target_node(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(name) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(name);
    }
    required_terms(spec)?.iter().find_map(|term| {
        term.match_fields.iter().flatten().find_map(|r| {
            let values = r.values.as_deref()?;
            (r.key == "metadata.name" && r.operator == "In" && values.len() == 1)
                .then(|| values[0].as_str())
        })
    })
}

/// Whether a DaemonSet pod with `spec` (its tolerations already added) should run on `node`,
/// and whether a pod already there may stay (Kubernetes' `NodeShouldRunDaemonPod`).
pub fn should_run(spec: &PodSpec, node: &NodeInfo) -> (bool, bool) {
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != node.name)
    {
        return (false, false);
    }
    if !required_node_affinity_matches(spec, node) {
        return (false, false);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
    let untolerated = |effect: &str| {
        node.taints
            .iter()
            .filter(|t| t.effect == effect)
            .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
    };
    if untolerated("NoExecute") {
        return (false, false);
    }
    if untolerated("NoSchedule") {
        return (false, true);
    }
    (true, true)
}

fn pod(object: &Arc<Object>) -> &Pod {
    object
        .as_kind::<Pod>()
        .expect("the pod informer holds pods")
}

fn created(object: &Arc<Object>) -> std::time::SystemTime {
    object
        .meta()
        .creation_timestamp
        .as_ref()
        .map(from_k8s_time)
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
}

/// One node as this reconcile sees it.
struct Placement {
    node: String,
    should_run: bool,
    should_continue: bool,
    /// The node's daemon pods, oldest first (terminating ones included).
    pods: Vec<Arc<Object>>,
}

/// One reconcile's working state.
struct Sync<'a> {
    ctx: &'a Context,
    object: Arc<Object>,
    spec: DaemonSetSpec,
    hash: String,
    placements: Vec<Placement>,
    /// Every node with whether a pod should run there and whether one may stay, judged once
    /// per reconcile.
    eligibility: Vec<(String, bool, bool)>,
    /// Pods for nodes that do not exist (or that name no node).
    strays: Vec<Arc<Object>>,
    wait: Option<Duration>,
}

#[async_trait]
impl Reconciler for DaemonSetController {
    type Error = ControllerError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error> {
        let Some(ds) = Typed::<DaemonSet>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let spec = ds.spec.clone().unwrap_or_default();
        let selector = selector_of(&object, Some(&spec.selector))?;
        let status = ds.status.clone().unwrap_or_default();
        let history = history::sync(
            ctx,
            &object,
            &selector,
            &spec.template,
            status.collision_count,
        )
        .await?;
        let hash = history::hash_of(&object, &history.update).to_string();

        let pods = ctx.informers.synced(&Kind::Pod).await;
        let nodes = ctx.informers.synced(&Kind::Node).await;
        let candidates = pods.owned_or_orphans(object.uid(), object.namespace());
        let owned = claim(&ctx.store, &object, &selector, candidates, &pods).await?;
        let mut sync = Sync {
            ctx,
            object,
            hash,
            placements: Vec::new(),
            eligibility: Vec::new(),
            strays: Vec::new(),
            wait: None,
            spec,
        };
        sync.judge_nodes(nodes.list());
        sync.place(owned);
        let changed = sync.manage().await?;
        if !changed && sync.rolling() {
            sync.rolling_update().await?;
        }

        // Status from the cache, which now reflects this reconcile's writes.
        let owned = pods.owned_by(sync.object.uid());
        sync.place(owned);
        let mut live: BTreeSet<String> = BTreeSet::new();
        for p in sync
            .placements
            .iter()
            .flat_map(|p| &p.pods)
            .chain(&sync.strays)
        {
            if let Some(hash) = pod(p)
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(CONTROLLER_REVISION_HASH))
            {
                live.insert(format!("{}-{hash}", sync.object.name()));
            }
        }
        live.insert(history::revision_name(&history.update).to_string());
        let status = sync.status(&ds, history.collision_count);
        if ds.status.as_ref() != Some(&status) {
            let mut written = ds.to_owned_value();
            written.status = Some(status);
            ctx.store
                .update_status(written.into_object())
                .await
                .map_err(|e| ControllerError::store("update status of", &sync.object, e))?;
        }
        let limit = sync.spec.revision_history_limit.unwrap_or(10);
        history::truncate(ctx, &sync.object, &history, &live, limit).await?;
        Ok(sync.wait.map_or(Action::AwaitChange, Action::requeue))
    }
}

impl Sync<'_> {
    fn rolling(&self) -> bool {
        self.spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            != Some("OnDelete")
    }

    fn min_ready(&self) -> i32 {
        self.spec.min_ready_seconds.unwrap_or(0)
    }

    /// The template with the DaemonSet tolerations, as eligibility is judged with them.
    fn pod_spec(&self) -> PodSpec {
        let mut spec = self.spec.template.spec.clone().unwrap_or_default();
        add_daemon_tolerations(&mut spec);
        spec
    }

    fn new_pod(&self, node: &str) -> Pod {
        let mut pod = pod_from_template(&self.object, &self.spec.template, self.object.name());
        let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(CONTROLLER_REVISION_HASH.into(), self.hash.clone());
        if let Some(generation) = self.object.meta().generation {
            labels.insert(TEMPLATE_GENERATION_LABEL.into(), generation.to_string());
        }
        let spec = pod.spec.get_or_insert_with(PodSpec::default);
        add_daemon_tolerations(spec);
        pin_to_node(spec, node);
        pod
    }

    fn is_updated(&self, p: &Pod) -> bool {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(CONTROLLER_REVISION_HASH))
            == Some(&self.hash)
    }

    fn is_available(&mut self, p: &Pod) -> bool {
        check_available(p, self.min_ready(), self.ctx.clock.now(), &mut self.wait)
    }

    /// Judges every node: whether a pod should run there and whether one may stay.
    fn judge_nodes(&mut self, nodes: Vec<Arc<Object>>) {
        let spec = self.pod_spec();
        self.eligibility = nodes
            .into_iter()
            .filter(|n| n.as_kind::<Node>().is_some())
            .map(|node| {
                let info = NodeInfo::new(node);
                let (should_run, should_continue) = should_run(&spec, &info);
                (info.name, should_run, should_continue)
            })
            .collect();
    }

    /// Groups `owned` pods by the nodes [`judge_nodes`](Self::judge_nodes) judged.
    fn place(&mut self, owned: Vec<Arc<Object>>) {
        let mut by_node: BTreeMap<String, Vec<Arc<Object>>> = BTreeMap::new();
        self.strays.clear();
        for object in owned {
            let p = pod(&object);
            // Finished pods already being deleted are on their way out; ignore them.
            if is_terminating(p) && is_finished(p) {
                continue;
            }
            match target_node(p) {
                Some(node) => by_node.entry(node.to_string()).or_default().push(object),
                None => self.strays.push(object),
            }
        }
        self.placements = self
            .eligibility
            .iter()
            .map(|(node, should_run, should_continue)| {
                let mut pods = by_node.remove(node).unwrap_or_default();
                pods.sort_by_key(created);
                Placement {
                    node: node.clone(),
                    should_run: *should_run,
                    should_continue: *should_continue,
                    pods,
                }
            })
            .collect();
        self.strays.extend(by_node.into_values().flatten());
    }

    /// Creates and deletes pods so that each eligible node has one. Returns whether it wrote.
    async fn manage(&mut self) -> Result<bool, ControllerError> {
        let mut create = Vec::new();
        let mut delete: Vec<Arc<Object>> = Vec::new();
        for placement in &self.placements {
            let alive = placement.pods.iter().filter(|p| !is_terminating(pod(p)));
            if placement.should_run && placement.pods.is_empty() {
                create.push(placement.node.clone());
            } else if placement.should_continue {
                let mut running = Vec::new();
                for p in alive {
                    if is_finished(pod(p)) {
                        delete.push(p.clone());
                    } else {
                        running.push(p);
                    }
                }
                // Duplicates: keep the oldest.
                delete.extend(running.into_iter().skip(1).cloned());
            } else {
                delete.extend(alive.cloned());
            }
        }
        delete.extend(
            self.strays
                .iter()
                .filter(|p| !is_terminating(pod(p)))
                .cloned(),
        );
        if !create.is_empty() {
            tracing::info!(daemonset = %self.object.display_name(), nodes = create.len(), "creating daemon pods");
            let (_, error) = create_pods(
                self.ctx,
                &self.object,
                |i| self.new_pod(&create[i]),
                create.len(),
            )
            .await;
            if let Some(e) = error {
                return Err(e);
            }
        }
        if !delete.is_empty() {
            tracing::info!(daemonset = %self.object.display_name(), pods = delete.len(), "deleting daemon pods");
            let informer = self.ctx.informers.get(&Kind::Pod);
            delete_pods(self.ctx, &delete, &informer).await?;
        }
        Ok(!create.is_empty() || !delete.is_empty())
    }

    /// Deletes old-template pods within `maxUnavailable` (Kubernetes' `rollingUpdate` without
    /// surge).
    async fn rolling_update(&mut self) -> Result<(), ControllerError> {
        let desired = self.placements.iter().filter(|p| p.should_run).count() as i32;
        let rolling = self
            .spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.clone())
            .unwrap_or_default();
        let max_unavailable = resolve(rolling.max_unavailable.as_ref(), "1", desired, true).max(1);
        let mut unavailable = 0;
        let mut replace_now = Vec::new();
        let mut candidates = Vec::new();
        let placements = std::mem::take(&mut self.placements);
        for placement in placements
            .iter()
            .filter(|p| p.should_run || !p.pods.is_empty())
        {
            let (mut new, mut old, mut duplicate) = (None, None, false);
            for p in placement.pods.iter().filter(|p| !is_terminating(pod(p))) {
                let slot = if self.is_updated(pod(p)) {
                    &mut new
                } else {
                    &mut old
                };
                duplicate |= slot.is_some();
                *slot = Some(p);
            }
            match (new, old) {
                _ if duplicate => unavailable += 1,
                (None, None) | (Some(_), Some(_)) => unavailable += 1,
                (Some(new), None) => {
                    if !self.is_available(pod(new)) {
                        unavailable += 1;
                    }
                }
                (None, Some(old)) => {
                    if !self.is_available(pod(old)) {
                        replace_now.push(old.clone());
                    } else if unavailable < max_unavailable {
                        candidates.push(old.clone());
                    }
                }
            }
        }
        self.placements = placements;
        let room = (max_unavailable - unavailable).max(0) as usize;
        replace_now.extend(candidates.into_iter().take(room));
        if replace_now.is_empty() {
            return Ok(());
        }
        tracing::info!(daemonset = %self.object.display_name(), pods = replace_now.len(), max_unavailable, "rolling daemon pods");
        let informer = self.ctx.informers.get(&Kind::Pod);
        delete_pods(self.ctx, &replace_now, &informer).await
    }

    fn status(&mut self, ds: &DaemonSet, collision_count: Option<i32>) -> DaemonSetStatus {
        let mut status = DaemonSetStatus {
            observed_generation: ds.metadata.generation,
            collision_count,
            conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
            ..Default::default()
        };
        let (mut available, mut updated) = (0, 0);
        let placements = std::mem::take(&mut self.placements);
        for placement in &placements {
            let first = placement.pods.first();
            if !placement.should_run {
                if first.is_some() {
                    status.number_misscheduled += 1;
                }
                continue;
            }
            status.desired_number_scheduled += 1;
            let Some(first) = first else { continue };
            status.current_number_scheduled += 1;
            let p = pod(first);
            if is_ready(p) {
                status.number_ready += 1;
                if self.is_available(p) {
                    available += 1;
                }
            }
            if self.is_updated(p) {
                updated += 1;
            }
        }
        self.placements = placements;
        status.number_available = Some(available);
        status.updated_number_scheduled = Some(updated);
        status.number_unavailable = Some(status.desired_number_scheduled - available);
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> NodeInfo {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.spec = Some(NodeSpec {
            taints: Some(
                taints
                    .iter()
                    .map(|(k, e)| Taint {
                        key: k.to_string(),
                        effect: e.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        NodeInfo::new(Arc::new(Object::from(n)))
    }

    #[test]
    fn eligibility_follows_selector_and_taints() {
        let mut spec = PodSpec::default();
        add_daemon_tolerations(&mut spec);
        let cases: [(&str, NodeInfo, (bool, bool)); 5] = [
            ("plain", node("a", &[], &[]), (true, true)),
            (
                "not-ready NoExecute is tolerated by default",
                node("b", &[], &[(NOT_READY_TAINT, "NoExecute")]),
                (true, true),
            ),
            (
                "unschedulable is tolerated by default",
                node(
                    "c",
                    &[],
                    &[("node.kubernetes.io/unschedulable", "NoSchedule")],
                ),
                (true, true),
            ),
            (
                "foreign NoSchedule keeps existing pods",
                node("d", &[], &[("dedicated", "NoSchedule")]),
                (false, true),
            ),
            (
                "foreign NoExecute evicts",
                node("e", &[], &[("dedicated", "NoExecute")]),
                (false, false),
            ),
        ];
        for (what, info, want) in cases {
            assert_eq!(should_run(&spec, &info), want, "{what}");
        }
        spec.node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
        assert_eq!(
            should_run(&spec, &node("f", &[("disk", "ssd")], &[])),
            (true, true)
        );
        assert_eq!(
            should_run(&spec, &node("g", &[("disk", "hdd")], &[])),
            (false, false)
        );
    }

    #[test]
    fn pinning_replaces_match_fields_and_is_read_back() {
        let mut spec = PodSpec::default();
        pin_to_node(&mut spec, "n1");
        pin_to_node(&mut spec, "n2");
        let pod = Pod {
            spec: Some(spec.clone()),
            ..Default::default()
        };
        assert_eq!(target_node(&pod), Some("n2"));
        let terms = &spec
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        assert_eq!(terms[0].match_fields.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn default_tolerations_are_added_once() {
        let mut spec = PodSpec {
            host_network: Some(true),
            ..Default::default()
        };
        add_daemon_tolerations(&mut spec);
        add_daemon_tolerations(&mut spec);
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 7);
    }

    #[test]
    fn only_changes_that_can_affect_eligibility_trigger_a_reconcile() {
        use crate::clock::to_k8s_time;
        use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        use std::time::{Duration, UNIX_EPOCH};

        let at = |secs: u64| to_k8s_time(UNIX_EPOCH + Duration::from_secs(secs));
        let base = |heartbeat: u64| {
            let mut n = node("a", &[("zone", "x")], &[])
                .node
                .as_kind::<Node>()
                .unwrap()
                .clone();
            n.status = Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_heartbeat_time: Some(at(heartbeat)),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            n
        };
        let change = |old: &Node, new: &Node| CacheEvent::Applied {
            old: Some(Arc::new(Object::from(old.clone()))),
            new: Arc::new(Object::from(new.clone())),
        };
        let old = base(100);

        // A heartbeat (and a new resourceVersion) alone: nothing to do.
        let mut heartbeat = base(110);
        heartbeat.metadata.resource_version = Some("7".into());
        assert!(!eligibility_may_change(&change(&old, &heartbeat)));

        let mut labelled = base(100);
        labelled
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("disk".into(), "ssd".into());
        assert!(eligibility_may_change(&change(&old, &labelled)));

        let mut tainted = base(100);
        tainted.spec.get_or_insert_with(Default::default).taints = Some(vec![Taint {
            key: "k".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        assert!(eligibility_may_change(&change(&old, &tainted)));

        let mut cordoned = base(100);
        cordoned
            .spec
            .get_or_insert_with(Default::default)
            .unschedulable = Some(true);
        assert!(eligibility_may_change(&change(&old, &cordoned)));

        let mut not_ready = base(110);
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "Unknown".into();
        // A condition alone does not: the node lifecycle controller's taint does.
        assert!(!eligibility_may_change(&change(&old, &not_ready)));

        let mut bigger = base(100);
        bigger.status.as_mut().unwrap().allocatable = Some(
            [("cpu".to_string(), Quantity("8".into()))]
                .into_iter()
                .collect(),
        );
        // Resources do not matter to a DaemonSet's placement.
        assert!(!eligibility_may_change(&change(&old, &bigger)));

        // A node that comes or goes always does.
        let object = Arc::new(Object::from(old.clone()));
        assert!(eligibility_may_change(&CacheEvent::Applied {
            old: None,
            new: object.clone()
        }));
        assert!(eligibility_may_change(&CacheEvent::Deleted(object)));
    }
}

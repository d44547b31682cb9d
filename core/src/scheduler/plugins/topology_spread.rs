//! PodTopologySpread: `topologySpreadConstraints` with `DoNotSchedule` (filter) and
//! `ScheduleAnyway` (score). Nodes count as eligible domains when they match the pod's node
//! affinity/selector (`nodeAffinityPolicy: Honor`, the default) and carry the topology key;
//! taints are ignored (`nodeTaintsPolicy: Ignore`, the default). Cluster-level default
//! constraints are not applied.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;

use super::node_affinity::NodeAffinity;
use crate::scheduler::framework::{
    CycleState, FilterPlugin, NodeInfo, PodInfo, Prepared, Reason, ScorePlugin, Snapshot,
    MAX_NODE_SCORE,
};
use crate::store::LabelSelector;

/// Spreads pods across topology domains.
pub struct PodTopologySpread;

struct Constraint {
    key: String,
    max_skew: i64,
    /// Matching pods per domain value, over eligible nodes.
    counts: HashMap<String, i64>,
    /// The smallest count over eligible domains (0 when there are fewer than minDomains).
    min: i64,
    /// Whether the incoming pod itself matches the selector.
    self_match: i64,
}

struct SpreadState {
    constraints: Vec<Constraint>,
}

const FILTER_STATE: &str = "PodTopologySpread/filter";
const SCORE_STATE: &str = "PodTopologySpread/score";

fn build(
    pod: &PodInfo,
    snapshot: &Snapshot<'_>,
    constraints: &[&TopologySpreadConstraint],
) -> SpreadState {
    let empty = CycleState::default();
    let no_node_affinity = matches!(
        NodeAffinity.pre_filter(pod, snapshot, &mut CycleState::default()),
        Ok(Prepared::Skip)
    );
    let affinity_ok =
        |node: &NodeInfo| no_node_affinity || NodeAffinity.filter(pod, node, &empty).is_ok();
    let mut out = Vec::new();
    for c in constraints {
        let mut selector = c
            .label_selector
            .as_ref()
            .and_then(|s| LabelSelector::from_k8s(s).ok())
            .unwrap_or_default();
        // matchLabelKeys: the pod's own values of these labels join the selector.
        for key in c.match_label_keys.iter().flatten() {
            if let Some(v) = pod.labels().and_then(|l| l.get(key)) {
                selector
                    .requirements
                    .push(crate::store::selector::Requirement {
                        key: key.clone(),
                        operator: crate::store::selector::Operator::In(vec![v.clone()]),
                    });
            }
        }
        let mut counts: HashMap<String, i64> = HashMap::new();
        for node in snapshot.nodes {
            let Some(value) = node.label(&c.topology_key) else {
                continue;
            };
            if !affinity_ok(node) {
                continue;
            }
            let n = node
                .pods
                .iter()
                .filter(|p| p.namespace() == pod.namespace() && selector.matches(p.labels()))
                .count() as i64;
            *counts.entry(value.to_string()).or_default() += n;
        }
        let min_domains = c.min_domains.unwrap_or(1).max(1) as i64;
        let min = if (counts.len() as i64) < min_domains {
            0
        } else {
            counts.values().copied().min().unwrap_or(0)
        };
        out.push(Constraint {
            key: c.topology_key.clone(),
            max_skew: c.max_skew.max(1) as i64,
            self_match: selector.matches(pod.labels()) as i64,
            counts,
            min,
        });
    }
    SpreadState { constraints: out }
}

fn constraints_with<'a>(pod: &'a PodInfo, when: &str) -> Vec<&'a TopologySpreadConstraint> {
    pod.spec()
        .topology_spread_constraints
        .iter()
        .flatten()
        .filter(|c| c.when_unsatisfiable == when)
        .collect()
}

impl FilterPlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn pre_filter(
        &self,
        pod: &PodInfo,
        snapshot: &Snapshot<'_>,
        state: &mut CycleState,
    ) -> Result<Prepared, Reason> {
        let constraints = constraints_with(pod, "DoNotSchedule");
        if constraints.is_empty() {
            return Ok(Prepared::Skip);
        }
        state.insert(FILTER_STATE, build(pod, snapshot, &constraints));
        Ok(Prepared::Continue)
    }

    fn filter(&self, _: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Reason> {
        let Some(st) = state.get::<SpreadState>(FILTER_STATE) else {
            return Ok(());
        };
        for c in &st.constraints {
            let Some(value) = node.label(&c.key) else {
                return Err(
                    "node(s) didn't match pod topology spread constraints (missing required label)"
                        .into(),
                );
            };
            let count = c.counts.get(value).copied().unwrap_or(0);
            if count + c.self_match - c.min > c.max_skew {
                return Err("node(s) didn't match pod topology spread constraints".into());
            }
        }
        Ok(())
    }
}

impl ScorePlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn weight(&self) -> i64 {
        2
    }

    fn pre_score(
        &self,
        pod: &PodInfo,
        snapshot: &Snapshot<'_>,
        state: &mut CycleState,
    ) -> Prepared {
        let constraints = constraints_with(pod, "ScheduleAnyway");
        if constraints.is_empty() {
            return Prepared::Skip;
        }
        state.insert(SCORE_STATE, build(pod, snapshot, &constraints));
        Prepared::Continue
    }

    fn score(&self, _: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64 {
        let Some(st) = state.get::<SpreadState>(SCORE_STATE) else {
            return 0;
        };
        st.constraints
            .iter()
            .map(|c| {
                node.label(&c.key).map_or(0, |v| {
                    c.counts.get(v).copied().unwrap_or(0) + c.max_skew - 1
                })
            })
            .sum()
    }

    fn normalize(&self, scores: &mut [i64], _: &CycleState) {
        // Fewer matching pods in the node's domains is better.
        let (Some(min), Some(max)) = (scores.iter().min().copied(), scores.iter().max().copied())
        else {
            return;
        };
        for s in scores.iter_mut() {
            *s = if max == min {
                MAX_NODE_SCORE
            } else {
                (max - *s) * MAX_NODE_SCORE / (max - min)
            };
        }
    }
}

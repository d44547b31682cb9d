use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

use crate::scheduler::framework::{
    normalize_to_max, CycleState, FilterPlugin, NodeInfo, PodInfo, Prepared, Reason, ScorePlugin,
    Snapshot,
};

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or(&[]);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node matches one node selector term (all its expressions and fields). An empty
/// term matches nothing, as in Kubernetes.
pub fn node_selector_term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, node.label(&r.key)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(node.name.as_str());
            requirement_matches(r, value)
        })
}

/// Rules out nodes that do not match the pod's `nodeSelector` or required node affinity, and
/// scores preferred node affinity terms by weight.
pub struct NodeAffinity;

impl FilterPlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn pre_filter(
        &self,
        pod: &PodInfo,
        _: &Snapshot<'_>,
        _: &mut CycleState,
    ) -> Result<Prepared, Reason> {
        let spec = pod.spec();
        let has_selector = spec.node_selector.as_ref().is_some_and(|s| !s.is_empty());
        let has_required = required_terms(spec).is_some();
        Ok(if has_selector || has_required {
            Prepared::Continue
        } else {
            Prepared::Skip
        })
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Reason> {
        if required_node_affinity_matches(pod.spec(), node) {
            Ok(())
        } else {
            Err("node(s) didn't match Pod's node affinity/selector".into())
        }
    }
}

/// Whether a node satisfies a pod's `nodeSelector` and its required node affinity (any of
/// the terms) — what the NodeAffinity filter and the DaemonSet controller check.
pub fn required_node_affinity_matches(spec: &PodSpec, node: &NodeInfo) -> bool {
    if let Some(selector) = spec.node_selector.as_ref() {
        if !selector
            .iter()
            .all(|(k, v)| node.label(k) == Some(v.as_str()))
        {
            return false;
        }
    }
    required_terms(spec)
        .is_none_or(|terms| terms.iter().any(|t| node_selector_term_matches(t, node)))
}

/// The terms of a pod's required node affinity, if it has one.
pub fn required_terms(spec: &PodSpec) -> Option<&[NodeSelectorTerm]> {
    let required = spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    Some(&required.node_selector_terms)
}

impl ScorePlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn weight(&self) -> i64 {
        2
    }

    fn pre_score(&self, pod: &PodInfo, _: &Snapshot<'_>, _: &mut CycleState) -> Prepared {
        let has_preferred = pod
            .spec()
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|p| !p.is_empty());
        if has_preferred {
            Prepared::Continue
        } else {
            Prepared::Skip
        }
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        pod.spec()
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .filter(|p| node_selector_term_matches(&p.preference, node))
            .map(|p| p.weight as i64)
            .sum()
    }

    fn normalize(&self, scores: &mut [i64], _: &CycleState) {
        normalize_to_max(scores, false);
    }
}

use k8s_openapi::api::core::v1::{Taint, Toleration};

use crate::scheduler::framework::{
    normalize_to_max, CycleState, FilterPlugin, NodeInfo, PodInfo, Prepared, Reason, ScorePlugin,
    Snapshot,
};

/// Whether `toleration` tolerates `taint` (Kubernetes' ToleratesTaint).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        // An empty key with Equal is invalid in the API; match nothing.
        _ => {
            !key.is_empty()
                && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// Rules out nodes with a NoSchedule or NoExecute taint the pod does not tolerate, and
/// prefers nodes with fewer untolerated PreferNoSchedule taints.
pub struct TaintToleration;

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn pre_filter(
        &self,
        _: &PodInfo,
        snapshot: &Snapshot<'_>,
        _: &mut CycleState,
    ) -> Result<Prepared, Reason> {
        // No node has a taint this filter looks at: nothing to check per node.
        Ok(if snapshot.node_traits.hard_taints > 0 {
            Prepared::Continue
        } else {
            Prepared::Skip
        })
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Reason> {
        if node.taints.is_empty() {
            return Ok(());
        }
        let tolerations = pod.spec().tolerations.as_deref().unwrap_or(&[]);
        for taint in &node.taints {
            if taint.effect != "NoSchedule" && taint.effect != "NoExecute" {
                continue;
            }
            if !tolerations.iter().any(|t| tolerates(t, taint)) {
                let value = taint.value.as_deref().unwrap_or("");
                let shown = if value.is_empty() {
                    format!("{{{}: }}", taint.key)
                } else {
                    format!("{{{}: {}}}", taint.key, value)
                };
                return Err(format!("node(s) had untolerated taint {shown}").into());
            }
        }
        Ok(())
    }
}

impl ScorePlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn weight(&self) -> i64 {
        3
    }

    fn pre_score(&self, _: &PodInfo, snapshot: &Snapshot<'_>, _: &mut CycleState) -> Prepared {
        if snapshot.node_traits.soft_taints > 0 {
            Prepared::Continue
        } else {
            Prepared::Skip
        }
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let tolerations = pod.spec().tolerations.as_deref().unwrap_or(&[]);
        node.taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|t| {
                !tolerations.iter().any(|tol| {
                    (tol.effect.as_deref().unwrap_or("").is_empty()
                        || tol.effect.as_deref() == Some("PreferNoSchedule"))
                        && tolerates(tol, t)
                })
            })
            .count() as i64
    }

    fn normalize(&self, scores: &mut [i64], _: &CycleState) {
        normalize_to_max(scores, true);
    }
}

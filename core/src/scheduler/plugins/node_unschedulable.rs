use crate::scheduler::framework::{
    CycleState, FilterPlugin, NodeInfo, PodInfo, Prepared, Reason, Snapshot,
};

use super::taint_toleration::tolerates;

/// Rules out nodes with `spec.unschedulable`, unless the pod tolerates the
/// `node.kubernetes.io/unschedulable` taint.
pub struct NodeUnschedulable;

const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

impl FilterPlugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn pre_filter(
        &self,
        _: &PodInfo,
        snapshot: &Snapshot<'_>,
        _: &mut CycleState,
    ) -> Result<Prepared, Reason> {
        // No node is unschedulable: nothing to check per node.
        Ok(if snapshot.node_traits.unschedulable > 0 {
            Prepared::Continue
        } else {
            Prepared::Skip
        })
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Reason> {
        if !node.unschedulable {
            return Ok(());
        }
        let taint = k8s_openapi::api::core::v1::Taint {
            key: UNSCHEDULABLE_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tolerated = pod
            .spec()
            .tolerations
            .iter()
            .flatten()
            .any(|t| tolerates(t, &taint));
        if tolerated {
            Ok(())
        } else {
            Err("node(s) were unschedulable".into())
        }
    }
}

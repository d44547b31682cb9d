use crate::scheduler::framework::{
    CycleState, FilterPlugin, NodeInfo, PodInfo, Prepared, Reason, Snapshot,
};

/// Rules out nodes where a host port the pod asks for is taken.
pub struct NodePorts;

impl FilterPlugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn pre_filter(
        &self,
        pod: &PodInfo,
        _: &Snapshot<'_>,
        _: &mut CycleState,
    ) -> Result<Prepared, Reason> {
        Ok(if pod.host_ports.is_empty() {
            Prepared::Skip
        } else {
            Prepared::Continue
        })
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Reason> {
        let taken = node.pods.iter().flat_map(|p| p.host_ports.iter());
        for used in taken {
            if pod.host_ports.iter().any(|want| want.conflicts(used)) {
                return Err("node(s) didn't have free ports for the requested pod ports".into());
            }
        }
        Ok(())
    }
}

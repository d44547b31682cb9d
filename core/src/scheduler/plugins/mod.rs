//! The built-in plugins, each after the kube-scheduler plugin of the same name.

mod inter_pod_affinity;
mod node_affinity;
mod node_ports;
mod node_unschedulable;
mod resources;
mod taint_toleration;
mod topology_spread;

pub use inter_pod_affinity::InterPodAffinity;
pub use node_affinity::{
    node_selector_term_matches, required_node_affinity_matches, required_terms, NodeAffinity,
};
pub use node_ports::NodePorts;
pub use node_unschedulable::NodeUnschedulable;
pub use resources::{BalancedAllocation, NodeResourcesFit};
pub use taint_toleration::{tolerates, TaintToleration};
pub use topology_spread::PodTopologySpread;

use crate::scheduler::framework::{
    CycleState, FilterPlugin, NodeInfo, PodInfo, Reason, ScorePlugin, MAX_NODE_SCORE,
};

/// Rules out nodes without room for the pod's requests (cpu, memory, ephemeral storage,
/// pods, extended resources), and scores nodes by free room (LeastAllocated).
pub struct NodeResourcesFit;

impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Reason> {
        let want = &pod.requests;
        let have = &node.allocatable;
        let used = &node.requested;
        if used.pods + 1 > have.pods {
            return Err("Too many pods".into());
        }
        if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > have.milli_cpu {
            return Err("Insufficient cpu".into());
        }
        if want.memory > 0 && used.memory + want.memory > have.memory {
            return Err("Insufficient memory".into());
        }
        if want.ephemeral_storage > 0
            && used.ephemeral_storage + want.ephemeral_storage > have.ephemeral_storage
        {
            return Err("Insufficient ephemeral-storage".into());
        }
        for (name, amount) in &want.scalar {
            if *amount > 0 && used.get(name) + amount > have.get(name) {
                return Err(format!("Insufficient {name}").into());
            }
        }
        Ok(())
    }
}

fn least_allocated(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

impl ScorePlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let cpu = least_allocated(
            node.non_zero_requested.0 + pod.non_zero.0,
            node.allocatable.milli_cpu,
        );
        let mem = least_allocated(
            node.non_zero_requested.1 + pod.non_zero.1,
            node.allocatable.memory,
        );
        (cpu + mem) / 2
    }
}

/// Favours nodes whose CPU and memory would be used in equal proportion
/// (NodeResourcesBalancedAllocation).
pub struct BalancedAllocation;

impl ScorePlugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let fraction = |req: i64, cap: i64| {
            if cap <= 0 {
                1.0
            } else {
                (req as f64 / cap as f64).min(1.0)
            }
        };
        let cpu = fraction(
            node.non_zero_requested.0 + pod.non_zero.0,
            node.allocatable.milli_cpu,
        );
        let mem = fraction(
            node.non_zero_requested.1 + pod.non_zero.1,
            node.allocatable.memory,
        );
        // With two resources the standard deviation is half their difference.
        let std = (cpu - mem).abs() / 2.0;
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

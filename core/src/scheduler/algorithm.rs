//! One scheduling decision: filter a sample of nodes, score the feasible ones, pick the best.
//!
//! As kube-scheduler does on large clusters, the search stops once it has found
//! `numFeasibleNodesToFind` nodes (percentageOfNodesToScore, adaptive by default: 50 % minus
//! one percent per 125 nodes, at least 5 %, at least 100 nodes), and each search starts where
//! the previous one stopped so that every node gets its turn. Buffers are reused from pod to
//! pod: scheduling a pod allocates nothing per node.

use std::collections::BTreeMap;

use super::framework::{
    CycleState, FilterPlugin, PodInfo, Prepared, Reason, ScorePlugin, Snapshot,
};
use super::plugins;

/// The plugins a scheduler runs, in order.
pub struct Profile {
    /// Filter plugins.
    pub filters: Vec<Box<dyn FilterPlugin>>,
    /// Score plugins.
    pub scorers: Vec<Box<dyn ScorePlugin>>,
}

impl Default for Profile {
    /// kube-scheduler's default plugins (without preemption, volume and image locality ones)
    /// with their default weights.
    fn default() -> Self {
        Profile {
            filters: vec![
                Box::new(plugins::NodeUnschedulable),
                Box::new(plugins::NodeResourcesFit),
                Box::new(plugins::NodeAffinity),
                Box::new(plugins::NodePorts),
                Box::new(plugins::TaintToleration),
                Box::new(plugins::PodTopologySpread),
                Box::new(plugins::InterPodAffinity),
            ],
            scorers: vec![
                Box::new(plugins::TaintToleration),
                Box::new(plugins::NodeAffinity),
                Box::new(plugins::NodeResourcesFit),
                Box::new(plugins::BalancedAllocation),
                Box::new(plugins::PodTopologySpread),
                Box::new(plugins::InterPodAffinity),
            ],
        }
    }
}

/// Why a pod fits no node: the number of nodes and how many were ruled out for each reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FitError {
    /// Nodes in the cluster.
    pub num_nodes: usize,
    /// Reason → number of nodes.
    pub reasons: BTreeMap<Reason, usize>,
}

impl std::fmt::Display for FitError {
    /// kube-scheduler's message: `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had
    /// untolerated taint {dedicated: gpu}.`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0/{} nodes are available", self.num_nodes)?;
        if self.reasons.is_empty() {
            return f.write_str(".");
        }
        f.write_str(": ")?;
        for (i, (reason, n)) in self.reasons.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n} {reason}")?;
        }
        f.write_str(".")
    }
}

/// The adaptive number of feasible nodes to find among `num_nodes`.
pub fn num_feasible_nodes_to_find(num_nodes: usize, percentage: Option<u32>) -> usize {
    const MIN_FEASIBLE: usize = 100;
    if num_nodes < MIN_FEASIBLE {
        return num_nodes;
    }
    let pct = match percentage {
        Some(p) if p > 0 => p.min(100) as i64,
        _ => (50 - num_nodes as i64 / 125).max(5),
    };
    if pct >= 100 {
        return num_nodes;
    }
    ((num_nodes as i64 * pct / 100) as usize).max(MIN_FEASIBLE)
}

/// The filter-score-select loop with its reusable buffers.
pub struct Algorithm {
    profile: Profile,
    percentage: Option<u32>,
    next_start: usize,
    rng: u64,
    feasible: Vec<usize>,
    totals: Vec<i64>,
    scratch: Vec<i64>,
    active_filters: Vec<usize>,
}

impl Algorithm {
    /// An algorithm with `profile`; `percentage` overrides the adaptive sample size.
    pub fn new(profile: Profile, percentage: Option<u32>) -> Algorithm {
        Algorithm {
            profile,
            percentage,
            next_start: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
            feasible: Vec::new(),
            totals: Vec::new(),
            scratch: Vec::new(),
            active_filters: Vec::new(),
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: cheap, deterministic tie-breaking.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Picks a node for `pod`; returns its index in `snapshot.nodes`.
    pub fn schedule(&mut self, pod: &PodInfo, snapshot: &Snapshot<'_>) -> Result<usize, FitError> {
        let nodes = snapshot.nodes;
        let n = nodes.len();
        let mut state = CycleState::default();
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        if n == 0 {
            return Err(FitError {
                num_nodes: 0,
                reasons,
            });
        }

        self.active_filters.clear();
        for (i, f) in self.profile.filters.iter().enumerate() {
            match f.pre_filter(pod, snapshot, &mut state) {
                Ok(Prepared::Continue) => self.active_filters.push(i),
                Ok(Prepared::Skip) => {}
                Err(reason) => {
                    reasons.insert(reason, n);
                    return Err(FitError {
                        num_nodes: n,
                        reasons,
                    });
                }
            }
        }

        let want = num_feasible_nodes_to_find(n, self.percentage);
        self.feasible.clear();
        let start = self.next_start % n;
        let mut processed = 0;
        let mut idx = start;
        while processed < n && self.feasible.len() < want {
            let node = &nodes[idx];
            let this = idx;
            processed += 1;
            // Wrap around without a division per node.
            idx += 1;
            if idx == n {
                idx = 0;
            }
            let mut fits = true;
            for &fi in &self.active_filters {
                if let Err(reason) = self.profile.filters[fi].filter(pod, node, &state) {
                    *reasons.entry(reason).or_default() += 1;
                    fits = false;
                    break;
                }
            }
            if fits {
                self.feasible.push(this);
            }
        }
        self.next_start = idx;

        match self.feasible.len() {
            0 => {
                return Err(FitError {
                    num_nodes: n,
                    reasons,
                })
            }
            1 => return Ok(self.feasible[0]),
            _ => {}
        }

        self.totals.clear();
        self.totals.resize(self.feasible.len(), 0);
        for scorer in &self.profile.scorers {
            if let Prepared::Skip = scorer.pre_score(pod, snapshot, &mut state) {
                continue;
            }
            self.scratch.clear();
            self.scratch.extend(
                self.feasible
                    .iter()
                    .map(|&i| scorer.score(pod, &nodes[i], &state)),
            );
            scorer.normalize(&mut self.scratch, &state);
            let w = scorer.weight();
            for (t, s) in self.totals.iter_mut().zip(&self.scratch) {
                *t += w * s;
            }
        }

        // Highest total wins; ties are broken uniformly at random (reservoir sampling).
        let mut best = 0;
        let mut ties = 1u64;
        for i in 1..self.totals.len() {
            if self.totals[i] > self.totals[best] {
                best = i;
                ties = 1;
            } else if self.totals[i] == self.totals[best] {
                ties += 1;
                // Replace with probability 1/ties: the high word of random × ties is
                // uniform in 0..ties (Lemire's multiply-shift, no division).
                if (self.next_random() as u128 * ties as u128) >> 64 == 0 {
                    best = i;
                }
            }
        }
        Ok(self.feasible[best])
    }
}

//! One scheduling decision: filter a sample of nodes, score the feasible ones, pick the best.
//!
//! As kube-scheduler does on large clusters, the search stops once it has found
//! `numFeasibleNodesToFind` nodes (percentageOfNodesToScore, adaptive by default: 50 % minus
//! one percent per 125 nodes, at least 5 %, at least 100 nodes), and each search starts where
//! the previous one stopped so that every node gets its turn. Buffers are reused from pod to
//! pod: scheduling a pod allocates nothing per node.
//!
//! Evaluation is parallel when it pays: with a thread pool ([`Algorithm::with_parallelism`]),
//! a cycle whose per-node work is expected to take longer than [`PARALLEL_MIN_CYCLE`] (the
//! expected time comes from the cost per node measured in earlier cycles) filters its nodes in
//! rounds split across the pool and scores the feasible ones in parallel. The outcome is the
//! sequential one: results are folded in node order, so the same nodes are found, counted
//! (for the unschedulable message) and chosen. Cheap cycles (the common pod: one resource
//! filter and two resource scores) stay on the calling thread, where a fork and join would
//! cost more than it saves.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::framework::{
    CycleState, FilterPlugin, NodeInfo, PodInfo, Prepared, Reason, ScorePlugin, Snapshot,
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

/// Runs the active filters on one node; the first refusal says why it does not fit.
fn passes(
    filters: &[Box<dyn FilterPlugin>],
    active: &[usize],
    pod: &PodInfo,
    node: &NodeInfo,
    state: &CycleState,
) -> Result<(), Reason> {
    active
        .iter()
        .try_for_each(|&fi| filters[fi].filter(pod, node, state))
}

/// Expected per-node work of a cycle above which it is spread over the thread pool.
pub const PARALLEL_MIN_CYCLE: Duration = Duration::from_micros(200);

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
    pool: Option<rayon::ThreadPool>,
    /// Measured cost of filtering and scoring one node, in nanoseconds (moving average).
    node_cost_ns: f64,
    /// Expected cycle time above which the pool is used.
    parallel_threshold: Duration,
    /// Per-node filter outcomes of a parallel round, in node order.
    round: Vec<Result<(), Reason>>,
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
            pool: None,
            node_cost_ns: 0.0,
            parallel_threshold: PARALLEL_MIN_CYCLE,
            round: Vec::new(),
        }
    }

    /// Evaluates large cycles on a pool of `threads` threads (kube-scheduler's
    /// `parallelism`, 16 by default there); 1 or 0 keeps every cycle on the calling thread.
    pub fn with_parallelism(mut self, threads: usize) -> Algorithm {
        self.pool = (threads > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("wharf-sched-{i}"))
                    .build()
                    .map_err(|e| tracing::warn!(error = %e, "no scheduler thread pool; evaluating sequentially"))
                    .ok()
            })
            .flatten();
        self
    }

    /// Uses the pool for cycles expected to take at least `threshold` (default
    /// [`PARALLEL_MIN_CYCLE`]; zero: every cycle).
    pub fn with_parallel_threshold(mut self, threshold: Duration) -> Algorithm {
        self.parallel_threshold = threshold;
        self
    }

    /// Whether a cycle over `nodes` nodes is expected to be long enough to be worth the pool.
    fn use_pool(&self, nodes: usize) -> bool {
        self.pool.is_some()
            && self.node_cost_ns * nodes as f64 >= self.parallel_threshold.as_nanos() as f64
    }

    /// Folds the time a cycle took for `nodes` nodes into the per-node cost.
    fn record_cost(&mut self, started: Instant, nodes: usize) {
        if nodes == 0 {
            return;
        }
        let per_node = started.elapsed().as_nanos() as f64 / nodes as f64;
        self.node_cost_ns = if self.node_cost_ns == 0.0 {
            per_node
        } else {
            0.9 * self.node_cost_ns + 0.1 * per_node
        };
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: cheap, deterministic tie-breaking.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Filters nodes in order from `start` until `want` fit or all were seen; returns where
    /// the next search starts.
    fn filter_sequential(
        &mut self,
        pod: &PodInfo,
        snapshot: &Snapshot<'_>,
        state: &CycleState,
        start: usize,
        want: usize,
        reasons: &mut BTreeMap<Reason, usize>,
    ) -> usize {
        let nodes = snapshot.nodes;
        let n = nodes.len();
        let mut processed = 0;
        let mut idx = start;
        while processed < n && self.feasible.len() < want {
            let this = idx;
            processed += 1;
            // Wrap around without a division per node.
            idx += 1;
            if idx == n {
                idx = 0;
            }
            match passes(
                &self.profile.filters,
                &self.active_filters,
                pod,
                &nodes[this],
                state,
            ) {
                Ok(()) => self.feasible.push(this),
                Err(reason) => *reasons.entry(reason).or_default() += 1,
            }
        }
        idx
    }

    /// The same search in rounds of `want` nodes (at least one per thread), each round
    /// filtered across the pool and folded in node order, so that the nodes found, the
    /// reasons counted and the next start are those of [`Self::filter_sequential`].
    fn filter_parallel(
        &mut self,
        pod: &PodInfo,
        snapshot: &Snapshot<'_>,
        state: &CycleState,
        start: usize,
        want: usize,
        reasons: &mut BTreeMap<Reason, usize>,
    ) -> usize {
        let nodes = snapshot.nodes;
        let n = nodes.len();
        let pool = self.pool.as_ref().expect("parallel filtering has a pool");
        let round_size = want.max(pool.current_num_threads());
        let mut processed = 0;
        while processed < n && self.feasible.len() < want {
            let len = round_size.min(n - processed);
            let first = (start + processed) % n;
            let (filters, active, round) =
                (&self.profile.filters, &self.active_filters, &mut self.round);
            round.clear();
            pool.install(|| {
                round.par_extend(
                    (0..len)
                        .into_par_iter()
                        .map(|k| passes(filters, active, pod, &nodes[(first + k) % n], state)),
                )
            });
            for (k, outcome) in self.round.drain(..).enumerate() {
                if self.feasible.len() == want {
                    break;
                }
                processed += 1;
                match outcome {
                    Ok(()) => self.feasible.push((first + k) % n),
                    Err(reason) => *reasons.entry(reason).or_default() += 1,
                }
            }
        }
        (start + processed) % n
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
        let started = Instant::now();
        self.feasible.clear();
        let start = self.next_start % n;
        let end = if self.use_pool(want) {
            self.filter_parallel(pod, snapshot, &state, start, want, &mut reasons)
        } else {
            self.filter_sequential(pod, snapshot, &state, start, want, &mut reasons)
        };
        self.next_start = end;

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
        let parallel = self.use_pool(self.feasible.len());
        for scorer in &self.profile.scorers {
            if let Prepared::Skip = scorer.pre_score(pod, snapshot, &mut state) {
                continue;
            }
            self.scratch.clear();
            let score = |&i: &usize| scorer.score(pod, &nodes[i], &state);
            match self.pool.as_ref().filter(|_| parallel) {
                Some(pool) => {
                    let (feasible, scratch) = (&self.feasible, &mut self.scratch);
                    pool.install(|| scratch.par_extend(feasible.par_iter().map(score)));
                }
                None => self.scratch.extend(self.feasible.iter().map(score)),
            }
            scorer.normalize(&mut self.scratch, &state);
            let w = scorer.weight();
            for (t, s) in self.totals.iter_mut().zip(&self.scratch) {
                *t += w * s;
            }
        }
        self.record_cost(started, want.min(n));

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

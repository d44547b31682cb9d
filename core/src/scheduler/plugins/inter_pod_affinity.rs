//! InterPodAffinity: required and preferred pod affinity and anti-affinity, including the
//! anti-affinity of pods already placed (symmetry).
//!
//! Limitation: a term's `namespaceSelector` other than `{}` (all namespaces) is not evaluated
//! against Namespace labels; such a term uses its `namespaces` list only.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};

use crate::scheduler::framework::{
    CycleState, FilterPlugin, NodeInfo, PodInfo, Prepared, Reason, ScorePlugin, Snapshot,
    MAX_NODE_SCORE,
};
use crate::store::LabelSelector;

/// Filters and scores by pod (anti-)affinity.
pub struct InterPodAffinity;

struct Term {
    selector: LabelSelector,
    namespaces: Option<Vec<String>>,
    topology_key: String,
}

impl Term {
    fn new(term: &PodAffinityTerm, owner_namespace: &str) -> Option<Term> {
        let selector = LabelSelector::from_k8s(term.label_selector.as_ref()?).ok()?;
        let all_namespaces = term
            .namespace_selector
            .as_ref()
            .is_some_and(|s| s.match_labels.is_none() && s.match_expressions.is_none());
        let listed = term.namespaces.clone().unwrap_or_default();
        let namespaces = if all_namespaces {
            None
        } else if listed.is_empty() {
            Some(vec![owner_namespace.to_string()])
        } else {
            Some(listed)
        };
        Some(Term {
            selector,
            namespaces,
            topology_key: term.topology_key.clone(),
        })
    }

    fn matches(&self, pod: &PodInfo) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|ns| ns.iter().any(|n| n == pod.namespace()))
            && self.selector.matches(pod.labels())
    }
}

fn terms_of(pod: &Pod, namespace: &str) -> (Vec<Term>, Vec<Term>) {
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
        terms
            .into_iter()
            .flatten()
            .filter_map(|t| Term::new(t, namespace))
            .collect()
    };
    let aff = required(
        affinity
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
    );
    let anti = required(
        affinity
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
    );
    (aff, anti)
}

type TopologyCounts = HashMap<(String, String), i64>;

struct FilterState {
    affinity: Vec<Term>,
    anti_affinity: Vec<Term>,
    /// Per affinity term: (topologyKey, value) → matching pods.
    affinity_counts: Vec<TopologyCounts>,
    /// Whether any pod in the cluster matches each affinity term.
    affinity_any: Vec<bool>,
    /// Per anti-affinity term: (topologyKey, value) → matching pods.
    anti_counts: Vec<TopologyCounts>,
    /// (topologyKey, value) where an existing pod's anti-affinity rejects this pod.
    existing_anti: TopologyCounts,
    /// The pod matches all its own affinity terms (it may start a group).
    matches_own_affinity: bool,
}

const STATE: &str = "InterPodAffinity/filter";
const SCORE_STATE: &str = "InterPodAffinity/score";

fn topology_value<'a>(node: &'a NodeInfo, key: &str) -> Option<&'a str> {
    node.label(key)
}

impl FilterPlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn pre_filter(
        &self,
        pod: &PodInfo,
        snapshot: &Snapshot<'_>,
        state: &mut CycleState,
    ) -> Result<Prepared, Reason> {
        let (affinity, anti_affinity) = terms_of(pod.pod(), pod.namespace());
        if affinity.is_empty() && anti_affinity.is_empty() && snapshot.pods_with_affinity == 0 {
            return Ok(Prepared::Skip);
        }
        let mut st = FilterState {
            affinity_counts: vec![TopologyCounts::new(); affinity.len()],
            affinity_any: vec![false; affinity.len()],
            anti_counts: vec![TopologyCounts::new(); anti_affinity.len()],
            existing_anti: TopologyCounts::new(),
            matches_own_affinity: affinity.iter().all(|t| t.matches(pod)),
            affinity,
            anti_affinity,
        };
        for node in snapshot.nodes {
            for other in &node.pods {
                for (i, term) in st.affinity.iter().enumerate() {
                    if term.matches(other) {
                        st.affinity_any[i] = true;
                        if let Some(v) = topology_value(node, &term.topology_key) {
                            *st.affinity_counts[i]
                                .entry((term.topology_key.clone(), v.to_string()))
                                .or_default() += 1;
                        }
                    }
                }
                for (i, term) in st.anti_affinity.iter().enumerate() {
                    if term.matches(other) {
                        if let Some(v) = topology_value(node, &term.topology_key) {
                            *st.anti_counts[i]
                                .entry((term.topology_key.clone(), v.to_string()))
                                .or_default() += 1;
                        }
                    }
                }
                if other.has_pod_affinity {
                    let (_, their_anti) = terms_of(other.pod(), other.namespace());
                    for term in their_anti.iter().filter(|t| t.matches(pod)) {
                        if let Some(v) = topology_value(node, &term.topology_key) {
                            *st.existing_anti
                                .entry((term.topology_key.clone(), v.to_string()))
                                .or_default() += 1;
                        }
                    }
                }
            }
        }
        state.insert(STATE, st);
        Ok(Prepared::Continue)
    }

    fn filter(&self, _: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Reason> {
        let Some(st) = state.get::<FilterState>(STATE) else {
            return Ok(());
        };
        let count = |counts: &TopologyCounts, key: &str| -> i64 {
            topology_value(node, key)
                .and_then(|v| counts.get(&(key.to_string(), v.to_string())))
                .copied()
                .unwrap_or(0)
        };
        for ((key, value), n) in &st.existing_anti {
            if *n > 0 && topology_value(node, key) == Some(value.as_str()) {
                return Err("node(s) didn't satisfy existing pods anti-affinity rules".into());
            }
        }
        for (i, term) in st.anti_affinity.iter().enumerate() {
            if count(&st.anti_counts[i], &term.topology_key) > 0 {
                return Err("node(s) didn't match pod anti-affinity rules".into());
            }
        }
        let no_match_anywhere = st.affinity_any.iter().all(|any| !any);
        for (i, term) in st.affinity.iter().enumerate() {
            if topology_value(node, &term.topology_key).is_none() {
                return Err("node(s) didn't match pod affinity rules".into());
            }
            if count(&st.affinity_counts[i], &term.topology_key) == 0
                && !(no_match_anywhere && st.matches_own_affinity)
            {
                return Err("node(s) didn't match pod affinity rules".into());
            }
        }
        Ok(())
    }
}

struct ScoreState {
    /// (topologyKey, value) → accumulated weight.
    scores: TopologyCounts,
}

fn preferred_terms(pod: &Pod, namespace: &str) -> Vec<(Term, i64)> {
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let mut out = Vec::new();
    for (terms, sign) in [
        (
            affinity
                .and_then(|a| a.pod_affinity.as_ref())
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
            1,
        ),
        (
            affinity
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
            -1,
        ),
    ] {
        for w in terms.into_iter().flatten() {
            if let Some(t) = Term::new(&w.pod_affinity_term, namespace) {
                out.push((t, sign * w.weight as i64));
            }
        }
    }
    out
}

impl ScorePlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
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
        let own = preferred_terms(pod.pod(), pod.namespace());
        if own.is_empty() && snapshot.pods_with_affinity == 0 {
            return Prepared::Skip;
        }
        let mut scores = TopologyCounts::new();
        for node in snapshot.nodes {
            for other in &node.pods {
                for (term, weight) in &own {
                    if term.matches(other) {
                        if let Some(v) = topology_value(node, &term.topology_key) {
                            *scores
                                .entry((term.topology_key.clone(), v.to_string()))
                                .or_default() += weight;
                        }
                    }
                }
                if other.has_pod_affinity {
                    for (term, weight) in preferred_terms(other.pod(), other.namespace()) {
                        if term.matches(pod) {
                            if let Some(v) = topology_value(node, &term.topology_key) {
                                *scores
                                    .entry((term.topology_key.clone(), v.to_string()))
                                    .or_default() += weight;
                            }
                        }
                    }
                }
            }
        }
        if scores.is_empty() {
            return Prepared::Skip;
        }
        state.insert(SCORE_STATE, ScoreState { scores });
        Prepared::Continue
    }

    fn score(&self, _: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64 {
        let Some(st) = state.get::<ScoreState>(SCORE_STATE) else {
            return 0;
        };
        st.scores
            .iter()
            .filter(|((key, value), _)| topology_value(node, key) == Some(value.as_str()))
            .map(|(_, w)| *w)
            .sum()
    }

    fn normalize(&self, scores: &mut [i64], _: &CycleState) {
        let (Some(min), Some(max)) = (scores.iter().min().copied(), scores.iter().max().copied())
        else {
            return;
        };
        let range = max - min;
        for s in scores.iter_mut() {
            *s = if range == 0 {
                0
            } else {
                (*s - min) * MAX_NODE_SCORE / range
            };
        }
    }
}

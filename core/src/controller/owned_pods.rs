//! Counts of each controller's pods, kept by the pod informer as it applies events, so that a
//! workload controller's status and scaling decisions cost what changed rather than a walk
//! over every pod it owns.
//!
//! Per controller uid the informer keeps a [`PodTally`]: how many pods are active, unfinished
//! and ready; when each ready pod became ready (for `minReadySeconds`); the distinct label sets
//! of the pods (for `fullyLabeledReplicas` and for claiming, which only has work to do when a
//! pod's labels stopped matching the selector); and the active pods in the order a scale-down
//! deletes them. Each event updates the tally in O(log n) under the informer's lock.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;

use crate::controllers::pod_state::{
    deletion_rank, is_active, is_finished, ready_since, DeletionRank,
};
use crate::object::Object;
use crate::store::LabelSelector;

type Labels = BTreeMap<String, String>;

static NO_LABELS: Labels = BTreeMap::new();

/// Distinct label sets counted one by one per controller; pods with further label sets are
/// counted together, and questions about their labels fall back to a walk over the pods.
const LABEL_SETS: usize = 8;

/// What a controller's pods amount to at one instant (see [`Informer::owned_pods`]).
///
/// [`Informer::owned_pods`]: super::Informer::owned_pods
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnedPods {
    /// Pods neither finished (Succeeded or Failed) nor being deleted.
    pub active: usize,
    /// Pods not finished, including pods being deleted.
    pub unfinished: usize,
    /// Active pods whose labels include every label of the template.
    pub fully_labeled: usize,
    /// Active pods whose `Ready` condition is `True`.
    pub ready: usize,
    /// Active pods ready for at least `minReadySeconds`.
    pub available: usize,
    /// How long until the next ready pod becomes available, when one is waiting.
    pub next_available: Option<Duration>,
}

/// Pods per label set: active ones, and ones not being deleted (the ones a claim may
/// release), and all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LabelCount {
    pods: u32,
    active: u32,
    not_deleting: u32,
}

impl LabelCount {
    fn add(&mut self, other: LabelCount) {
        self.pods += other.pods;
        self.active += other.active;
        self.not_deleting += other.not_deleting;
    }

    fn subtract(&mut self, other: LabelCount) {
        self.pods -= other.pods;
        self.active -= other.active;
        self.not_deleting -= other.not_deleting;
    }
}

/// The tally of one controller's pods.
#[derive(Default)]
pub(super) struct PodTally {
    active: u32,
    unfinished: u32,
    ready: u32,
    /// Active ready pods by the time they became ready.
    ready_since: BTreeMap<SystemTime, u32>,
    labels: HashMap<Labels, LabelCount>,
    /// Pods whose label set found no room in `labels`. While there are any, no label set is
    /// added to `labels`, so a pod counted here never has a label set that `labels` holds.
    other_labels: LabelCount,
    /// Active pods in deletion order.
    deletion: BTreeMap<(DeletionRank, Option<String>), Arc<Object>>,
}

impl PodTally {
    /// Counts `object` in (`add`) or out of the tally.
    pub(super) fn apply(&mut self, object: &Arc<Object>, add: bool) {
        let Some(pod) = object.as_kind::<Pod>() else {
            return;
        };
        let active = is_active(pod);
        let step = |n: &mut u32| {
            if add {
                *n += 1
            } else {
                *n -= 1
            }
        };
        if active {
            step(&mut self.active);
            // The namespace makes the key unique should an owner have pods in several.
            let rank = (deletion_rank(pod), pod.metadata.namespace.clone());
            if add {
                self.deletion.insert(rank, object.clone());
            } else {
                self.deletion.remove(&rank);
            }
        }
        if !is_finished(pod) {
            step(&mut self.unfinished);
        }
        if active {
            if let Some(since) = ready_since(pod) {
                step(&mut self.ready);
                let n = self.ready_since.entry(since).or_insert(0);
                step(n);
                if *n == 0 {
                    self.ready_since.remove(&since);
                }
            }
        }
        let labels = pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
        let count = LabelCount {
            pods: 1,
            active: active as u32,
            not_deleting: pod.metadata.deletion_timestamp.is_none() as u32,
        };
        match self.labels.get_mut(labels) {
            Some(c) if add => c.add(count),
            Some(c) => {
                c.subtract(count);
                if c.pods == 0 {
                    self.labels.remove(labels);
                }
            }
            None if add => {
                if self.other_labels.pods == 0 && self.labels.len() < LABEL_SETS {
                    self.labels.insert(labels.clone(), count);
                } else {
                    self.other_labels.add(count);
                }
            }
            None => self.other_labels.subtract(count),
        }
    }

    /// Whether the tally counts no pod.
    pub(super) fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.other_labels.pods == 0
    }

    /// The counts at `now`; `fully_labeled` is `None` when some pods' label sets are not
    /// tracked one by one (the caller then counts them itself).
    pub(super) fn counts(
        &self,
        template_labels: &Labels,
        min_ready_seconds: i32,
        now: SystemTime,
    ) -> (OwnedPods, Option<usize>) {
        let (mut available, mut next_available) = (self.ready as usize, None);
        if min_ready_seconds > 0 {
            let min_ready = Duration::from_secs(min_ready_seconds as u64);
            // Ready pods are available once ready since at most `now - minReadySeconds`;
            // the ones ready later are the few that changed recently.
            let waiting = match now.checked_sub(min_ready) {
                Some(cutoff) => self
                    .ready_since
                    .range((Bound::Excluded(cutoff), Bound::Unbounded)),
                None => self.ready_since.range(..),
            };
            let mut first = None;
            for (since, n) in waiting {
                first.get_or_insert(*since);
                available -= *n as usize;
            }
            next_available =
                first.map(|since| (since + min_ready).duration_since(now).unwrap_or_default());
        }
        let fully_labeled = (self.other_labels.active == 0).then(|| {
            self.labels
                .iter()
                .filter(|(labels, _)| {
                    template_labels
                        .iter()
                        .all(|(k, v)| labels.get(k) == Some(v))
                })
                .map(|(_, c)| c.active as usize)
                .sum()
        });
        let counts = OwnedPods {
            active: self.active as usize,
            unfinished: self.unfinished as usize,
            fully_labeled: fully_labeled.unwrap_or(0),
            ready: self.ready as usize,
            available,
            next_available,
        };
        (counts, fully_labeled)
    }

    /// Whether some pod not being deleted has labels `selector` does not match; `None` when
    /// that cannot be told without looking at the pods.
    pub(super) fn has_unmatched(&self, selector: &LabelSelector) -> Option<bool> {
        let tracked = self
            .labels
            .iter()
            .any(|(labels, c)| c.not_deleting > 0 && !selector.matches(Some(labels)));
        if tracked {
            return Some(true);
        }
        (self.other_labels.not_deleting == 0).then_some(false)
    }

    /// The first `count` active pods in deletion order.
    pub(super) fn first_to_delete(&self, count: usize) -> Vec<Arc<Object>> {
        self.deletion.values().take(count).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::to_k8s_time;
    use crate::controllers::pod_state::{available_after, deletion_order};
    use k8s_openapi::api::core::v1::{ContainerStatus, PodCondition, PodSpec, PodStatus};

    const T0: u64 = 1_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A deterministic pseudo-random pod: `seed` picks its phase, readiness, labels, node,
    /// restarts and whether it is being deleted.
    fn pod(name: &str, seed: u64) -> Arc<Object> {
        let pick = |shift: u32, n: u64| (seed >> shift) % n;
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        p.metadata.creation_timestamp = Some(to_k8s_time(at(T0 + pick(0, 50))));
        // Up to 12 label sets (more than LABEL_SETS), some without the template's label.
        let mut labels = BTreeMap::from([("set".to_string(), pick(6, 12).to_string())]);
        if pick(10, 4) != 0 {
            labels.insert("app".into(), "web".into());
        }
        p.metadata.labels = Some(labels);
        if pick(12, 10) == 0 {
            p.metadata.deletion_timestamp = Some(to_k8s_time(at(T0 + 60)));
        }
        p.spec = Some(PodSpec {
            node_name: (pick(14, 5) != 0).then(|| "node-a".to_string()),
            ..Default::default()
        });
        let phase = [
            "Pending",
            "Running",
            "Running",
            "Running",
            "Succeeded",
            "Failed",
        ][pick(17, 6) as usize];
        let mut conditions = Vec::new();
        if phase == "Running" && pick(20, 3) != 0 {
            conditions.push(PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(to_k8s_time(at(T0 + 40 + pick(22, 30)))),
                ..Default::default()
            });
        }
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(conditions),
            container_statuses: Some(vec![ContainerStatus {
                restart_count: pick(28, 3) as i32,
                ..Default::default()
            }]),
            ..Default::default()
        });
        Arc::new(Object::from(p))
    }

    fn as_pod(o: &Arc<Object>) -> &Pod {
        o.as_kind::<Pod>().unwrap()
    }

    /// The counts by walking every pod, as the controllers did before the tally.
    fn walk(
        pods: &BTreeMap<String, Arc<Object>>,
        template: &Labels,
        min_ready: i32,
        now: SystemTime,
    ) -> OwnedPods {
        let mut counts = OwnedPods::default();
        for p in pods.values().map(as_pod) {
            if !is_finished(p) {
                counts.unfinished += 1;
            }
            if !is_active(p) {
                continue;
            }
            counts.active += 1;
            let labels = p.metadata.labels.as_ref();
            if template
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            {
                counts.fully_labeled += 1;
            }
            match available_after(p, min_ready, now) {
                Some(Duration::ZERO) => {
                    counts.ready += 1;
                    counts.available += 1;
                }
                Some(wait) => {
                    counts.ready += 1;
                    counts.next_available = Some(
                        counts
                            .next_available
                            .map_or(wait, |n: Duration| n.min(wait)),
                    );
                }
                None => {}
            }
        }
        counts
    }

    #[test]
    fn tally_matches_a_walk_over_the_pods_through_adds_updates_and_removals() {
        let template = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let selector = LabelSelector::from_labels(&template);
        let mut tally = PodTally::default();
        let mut pods: BTreeMap<String, Arc<Object>> = BTreeMap::new();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut exact_labels = 0;
        for step in 0..3_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let name = format!("p{}", seed % 60);
            let old = pods.get(&name).cloned();
            if let Some(old) = &old {
                tally.apply(old, false);
            }
            if seed.is_multiple_of(7) {
                pods.remove(&name);
            } else {
                let new = pod(&name, seed >> 8);
                tally.apply(&new, true);
                pods.insert(name, new);
            }

            for (min_ready, now) in [(0, at(T0 + 50)), (10, at(T0 + 55)), (30, at(T0 + 200))] {
                let want = walk(&pods, &template, min_ready, now);
                let (got, labeled) = tally.counts(&template, min_ready, now);
                assert_eq!(
                    OwnedPods {
                        fully_labeled: want.fully_labeled,
                        ..got
                    },
                    want,
                    "step {step}, minReadySeconds {min_ready}"
                );
                if let Some(labeled) = labeled {
                    assert_eq!(labeled, want.fully_labeled, "step {step}");
                    exact_labels += 1;
                }
            }
            let unmatched = pods.values().any(|o| {
                o.meta().deletion_timestamp.is_none() && !selector.matches(o.meta().labels.as_ref())
            });
            if let Some(answer) = tally.has_unmatched(&selector) {
                assert_eq!(answer, unmatched, "step {step}");
            }

            let mut order: Vec<&Arc<Object>> =
                pods.values().filter(|o| is_active(as_pod(o))).collect();
            order.sort_by(|a, b| deletion_order(as_pod(a), as_pod(b)));
            let names = |v: Vec<&Arc<Object>>| -> Vec<String> {
                v.iter().map(|o| o.name().to_string()).collect()
            };
            assert_eq!(
                names(tally.first_to_delete(5).iter().collect()),
                names(order.into_iter().take(5).collect()),
                "step {step}"
            );
        }
        assert!(exact_labels > 0, "the tracked label sets were never exact");
        for old in pods.values() {
            tally.apply(old, false);
        }
        assert!(tally.is_empty());
        assert_eq!(tally.counts(&template, 0, at(T0)).0, OwnedPods::default());
    }
}

//! Facts about pods that several controllers need: active, ready, available, and the order in
//! which a controller scaling down picks pods to delete.

use std::cmp::{Ordering, Reverse};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, PodCondition};

use crate::clock::from_k8s_time;

/// Whether a pod counts toward a controller's replicas: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !is_finished(pod)
}

/// Whether a pod reached a terminal phase (Succeeded or Failed).
pub fn is_finished(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// The pod's phase, `""` when unset.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The pod's condition of type `kind`.
pub fn condition<'a>(pod: &'a Pod, kind: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

/// Whether the pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

/// Whether the pod is being deleted (has a deletionTimestamp).
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether the pod is in phase Running with its `Ready` condition `True`.
pub fn is_running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && is_ready(pod)
}

/// When the pod became ready, if it is.
pub fn ready_since(pod: &Pod) -> Option<SystemTime> {
    let c = condition(pod, "Ready").filter(|c| c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .map(from_k8s_time)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    )
}

/// Whether the pod has been ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: SystemTime) -> bool {
    available_after(pod, min_ready_seconds, now) == Some(Duration::ZERO)
}

/// How long until the pod becomes available: `Some(0)` if it is, `None` if it is not ready.
pub fn available_after(pod: &Pod, min_ready_seconds: i32, now: SystemTime) -> Option<Duration> {
    let since = ready_since(pod)?;
    if min_ready_seconds <= 0 {
        return Some(Duration::ZERO);
    }
    let at = since + Duration::from_secs(min_ready_seconds as u64);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether the pod is available at `now`. When it is ready but not yet available, lowers
/// `next_check` to when it will be, plus a second since timestamps have second precision.
pub fn check_available(
    pod: &Pod,
    min_ready_seconds: i32,
    now: SystemTime,
    next_check: &mut Option<Duration>,
) -> bool {
    match available_after(pod, min_ready_seconds, now) {
        Some(Duration::ZERO) => true,
        Some(wait) => {
            let wait = wait + Duration::from_secs(1);
            *next_check = Some(next_check.map_or(wait, |n| n.min(wait)));
            false
        }
        None => false,
    }
}

fn phase_rank(pod: &Pod) -> u8 {
    match phase(pod) {
        "Pending" | "" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

/// A pod's place in the order of [`deletion_order`], as a value: pods whose ranks compare
/// smaller are deleted first. Kept as an index key by the pod informer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeletionRank {
    scheduled: bool,
    phase: u8,
    ready: bool,
    ready_since: Reverse<Option<SystemTime>>,
    restarts: Reverse<i32>,
    created: Reverse<Option<SystemTime>>,
    name: Reverse<Option<String>>,
}

/// The [`DeletionRank`] of `pod`.
pub fn deletion_rank(pod: &Pod) -> DeletionRank {
    DeletionRank {
        scheduled: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty()),
        phase: phase_rank(pod),
        ready: is_ready(pod),
        ready_since: Reverse(ready_since(pod)),
        restarts: Reverse(restarts(pod)),
        created: Reverse(pod.metadata.creation_timestamp.as_ref().map(from_k8s_time)),
        name: Reverse(pod.metadata.name.clone()),
    }
}

/// Orders pods so that the ones to delete first when scaling down come first, as Kubernetes'
/// `ActivePods` does: unscheduled before scheduled, Pending before Unknown before Running, not
/// ready before ready, ready for a shorter time first, more restarts first, newer first.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    deletion_rank(a).cmp(&deletion_rank(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::to_k8s_time;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};

    fn pod(
        name: &str,
        node: Option<&str>,
        phase: &str,
        ready_at: Option<u64>,
        created: u64,
    ) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp = Some(to_k8s_time(
            SystemTime::UNIX_EPOCH + Duration::from_secs(created),
        ));
        p.spec = Some(PodSpec {
            node_name: node.map(str::to_string),
            ..Default::default()
        });
        let mut conditions = Vec::new();
        if let Some(at) = ready_at {
            conditions.push(PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(to_k8s_time(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(at),
                )),
                ..Default::default()
            });
        }
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(conditions),
            ..Default::default()
        });
        p
    }

    #[test]
    fn scale_down_prefers_unscheduled_pending_unready_newest() {
        let mut pods = [
            pod("ready-old", Some("n"), "Running", Some(10), 1),
            pod("ready-new", Some("n"), "Running", Some(50), 2),
            pod("running-unready", Some("n"), "Running", None, 3),
            pod("pending", Some("n"), "Pending", None, 4),
            pod("unscheduled", None, "Pending", None, 5),
            pod("ready-newest-created", Some("n"), "Running", Some(10), 9),
        ];
        pods.sort_by(deletion_order);
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "running-unready",
                "ready-new",
                "ready-newest-created",
                "ready-old"
            ]
        );
    }

    #[test]
    fn availability_waits_min_ready_seconds() {
        let p = pod("a", Some("n"), "Running", Some(100), 1);
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert!(!is_available(&p, 10, at(105)));
        assert_eq!(
            available_after(&p, 10, at(105)),
            Some(Duration::from_secs(5))
        );
        assert!(is_available(&p, 10, at(110)));
        assert!(is_available(&p, 0, at(100)));
    }
}

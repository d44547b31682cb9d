//! The replica count one resource metric asks for, as Kubernetes' replica calculator
//! computes it: `ceil(ready pods × current / target)`, no change within the tolerance, with
//! pods that are not ready or have no metrics handled conservatively:
//!
//! - deleted and failed pods are ignored;
//! - pending pods, and for CPU pods that are not ready (or became ready less than a metric
//!   window ago during their first 5 minutes), count as using nothing on a scale-up and are
//!   left out otherwise;
//! - pods without metrics count as using 100 % of their request (or the target, if higher)
//!   on a scale-down and nothing on a scale-up;
//! - if these assumptions flip the direction of the change or bring it within the tolerance,
//!   the replica count stays.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;

use crate::clock::from_k8s_time;
use crate::controllers::pod_state::{condition, phase};
use crate::pod_metrics::PodUsage;

/// Ratios within `1 ± TOLERANCE` of the target do not change the replica count.
pub const TOLERANCE: f64 = 0.1;
/// During a pod's first 5 minutes its CPU sample counts only if it was taken a full window
/// after the pod became ready.
pub const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);
/// A pod whose readiness last changed within 30 s of its start has never been ready.
pub const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);

/// A resource metric's target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Average utilization in percent of the pods' requests.
    Utilization(i32),
    /// Average value per pod (millicores for CPU, bytes for memory).
    AverageValue(i64),
}

/// What a resource metric recommends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recommendation {
    /// The replica count.
    pub replicas: i32,
    /// The current average utilization in percent (utilization targets only).
    pub utilization: Option<i32>,
    /// The current average value per pod (millicores or bytes).
    pub average_value: i64,
}

/// The usage of `resource` (`cpu` in millicores, `memory` in bytes) of one pod.
pub fn usage_of(resource: &str, usage: &PodUsage) -> i64 {
    let v = if resource == "cpu" {
        usage.cpu_millicores()
    } else {
        usage.memory_bytes()
    };
    v.min(i64::MAX as u64) as i64
}

/// The pod's summed container requests of `resource`, or the name of a container without one.
pub fn requests_of(resource: &str, pod: &Pod) -> Result<i64, String> {
    let mut total = 0i64;
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let q = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .ok_or_else(|| c.name.clone())?;
        total += crate::quantity::resource_value(resource, q).map_err(|_| c.name.clone())?;
    }
    Ok(total)
}

enum Group {
    Ignored,
    Unready,
    Missing,
    Ready,
}

fn group(resource: &str, pod: &Pod, metric: Option<&PodUsage>, now: SystemTime) -> Group {
    if pod.metadata.deletion_timestamp.is_some() || phase(pod) == "Failed" {
        return Group::Ignored;
    }
    if phase(pod) == "Pending" {
        return Group::Unready;
    }
    let Some(metric) = metric else {
        return Group::Missing;
    };
    if resource != "cpu" {
        return Group::Ready;
    }
    let ready = condition(pod, "Ready");
    let start = pod.status.as_ref().and_then(|s| s.start_time.as_ref());
    let (Some(ready), Some(start)) = (ready, start) else {
        return Group::Unready;
    };
    let start = from_k8s_time(start);
    let changed = ready
        .last_transition_time
        .as_ref()
        .map(from_k8s_time)
        .unwrap_or(start);
    let unready = if start + CPU_INITIALIZATION_PERIOD > now {
        ready.status == "False" || metric.timestamp < changed + metric.window
    } else {
        ready.status == "False" && start + INITIAL_READINESS_DELAY > changed
    };
    if unready {
        Group::Unready
    } else {
        Group::Ready
    }
}

/// The replica count `resource` recommends for `target`, over the target's `pods` and the
/// `usage` available for them (by pod name). `current` is the target's replica count.
pub fn recommend(
    resource: &str,
    target: Target,
    current: i32,
    pods: &[&Pod],
    usage: &BTreeMap<String, PodUsage>,
    now: SystemTime,
) -> Result<Recommendation, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let mut metrics: BTreeMap<&str, i64> = BTreeMap::new();
    let mut requests: BTreeMap<&str, i64> = BTreeMap::new();
    let (mut ready, mut unready, mut missing) = (0i64, Vec::new(), Vec::new());
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or("");
        if let Target::Utilization(_) = target {
            let r = requests_of(resource, pod).map_err(|container| {
                format!("missing request for {resource} in container {container} of Pod {name}")
            })?;
            requests.insert(name, r);
        }
        let metric = usage.get(name);
        match group(resource, pod, metric, now) {
            Group::Ignored => {}
            Group::Unready => unready.push(name),
            Group::Missing => missing.push(name),
            Group::Ready => {
                ready += 1;
                metrics.insert(name, metric.map_or(0, |m| usage_of(resource, m)));
            }
        }
    }
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    // (usage ratio, utilization in percent, average value) over the pods in `metrics`.
    let ratio = |metrics: &BTreeMap<&str, i64>| -> (f64, Option<i32>, i64) {
        let total: i64 = metrics.values().sum();
        let average = total / metrics.len().max(1) as i64;
        match target {
            Target::Utilization(t) => {
                let requested: i64 = metrics.keys().filter_map(|n| requests.get(n)).sum();
                let utilization = if requested > 0 {
                    (total * 100 / requested) as i32
                } else {
                    0
                };
                (
                    utilization as f64 / t.max(1) as f64,
                    Some(utilization),
                    average,
                )
            }
            Target::AverageValue(t) => (average as f64 / t.max(1) as f64, None, average),
        }
    };
    let (usage_ratio, utilization, average_value) = ratio(&metrics);
    let keep = Recommendation {
        replicas: current,
        utilization,
        average_value,
    };
    let scale_up_with_unready = !unready.is_empty() && usage_ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - usage_ratio).abs() <= TOLERANCE {
            return Ok(keep);
        }
        return Ok(Recommendation {
            replicas: (usage_ratio * ready as f64).ceil() as i32,
            ..keep
        });
    }
    if usage_ratio < 1.0 {
        for name in &missing {
            let fallback = match target {
                Target::Utilization(t) => {
                    requests.get(name).copied().unwrap_or(0) * i64::from(t.max(100)) / 100
                }
                Target::AverageValue(t) => t,
            };
            metrics.insert(name, fallback);
        }
    } else if usage_ratio > 1.0 {
        for name in &missing {
            metrics.insert(name, 0);
        }
    }
    if scale_up_with_unready {
        for name in &unready {
            metrics.insert(name, 0);
        }
    }
    let (new_ratio, _, _) = ratio(&metrics);
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (usage_ratio < 1.0 && new_ratio > 1.0)
        || (usage_ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(keep);
    }
    let replicas = (new_ratio * metrics.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(keep);
    }
    Ok(Recommendation { replicas, ..keep })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        Container, PodCondition, PodSpec, PodStatus, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::clock::to_k8s_time;
    use crate::pod_metrics::ContainerUsage;

    const T: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A pod requesting 500m CPU and 256Mi, started at `started`, Ready or not since then.
    fn pod(name: &str, phase: &str, ready: bool, started: u64) -> Pod {
        let requests: BTreeMap<String, Quantity> = [
            ("cpu".to_string(), Quantity("500m".into())),
            ("memory".to_string(), Quantity("256Mi".into())),
        ]
        .into_iter()
        .collect();
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.spec = Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            start_time: Some(to_k8s_time(at(started))),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                last_transition_time: Some(to_k8s_time(at(started + 5))),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    fn usage(pairs: &[(&str, u64)]) -> BTreeMap<String, PodUsage> {
        pairs
            .iter()
            .map(|(n, cpu)| {
                (
                    n.to_string(),
                    PodUsage {
                        namespace: "default".into(),
                        name: n.to_string(),
                        timestamp: at(T),
                        window: Duration::from_secs(15),
                        containers: vec![ContainerUsage {
                            name: "app".into(),
                            cpu_millicores: *cpu,
                            memory_bytes: 128 << 20,
                        }],
                    },
                )
            })
            .collect()
    }

    fn replicas(target: Target, pods: &[Pod], usage: &BTreeMap<String, PodUsage>) -> i32 {
        let refs: Vec<&Pod> = pods.iter().collect();
        recommend("cpu", target, pods.len() as i32, &refs, usage, at(T))
            .unwrap()
            .replicas
    }

    #[test]
    fn double_the_target_doubles_the_replicas() {
        let pods = [
            pod("a", "Running", true, T - 3600),
            pod("b", "Running", true, T - 3600),
        ];
        // 500m used of 500m requested against a 50 % target.
        let u = usage(&[("a", 500), ("b", 500)]);
        assert_eq!(replicas(Target::Utilization(50), &pods, &u), 4);
        assert_eq!(replicas(Target::AverageValue(250), &pods, &u), 4);
    }

    #[test]
    fn within_tolerance_nothing_changes() {
        let pods = [
            pod("a", "Running", true, T - 3600),
            pod("b", "Running", true, T - 3600),
        ];
        // 54 % against 50 %: ratio 1.08.
        let u = usage(&[("a", 270), ("b", 270)]);
        assert_eq!(replicas(Target::Utilization(50), &pods, &u), 2);
        let u = usage(&[("a", 100), ("b", 100)]);
        assert_eq!(replicas(Target::Utilization(50), &pods, &u), 1);
    }

    #[test]
    fn unready_pods_do_not_help_a_scale_up() {
        let pods = [
            pod("a", "Running", true, T - 3600),
            pod("b", "Running", false, T - 60),
            pod("c", "Pending", false, T - 10),
        ];
        // a at 200 %: with the unready pods counted as idle, ratio (1000+0+0)/1500 / 0.5 = 1.33.
        let u = usage(&[("a", 1000), ("b", 900)]);
        assert_eq!(replicas(Target::Utilization(50), &pods, &u), 4);
    }

    #[test]
    fn missing_metrics_count_as_full_on_a_scale_down() {
        let pods = [
            pod("a", "Running", true, T - 3600),
            pod("b", "Running", true, T - 3600),
        ];
        // a at 10 %, b has no metrics: b counts as 100 % of its request, so (50+500)/1000 =
        // 55 % vs 50 % — within tolerance of a scale-down that flips: no change.
        let u = usage(&[("a", 50)]);
        assert_eq!(replicas(Target::Utilization(50), &pods, &u), 2);
    }

    #[test]
    fn a_pod_without_requests_is_an_error_for_utilization() {
        let mut p = pod("a", "Running", true, T - 3600);
        p.spec.as_mut().unwrap().containers[0].resources = None;
        let u = usage(&[("a", 50)]);
        let err = recommend("cpu", Target::Utilization(50), 1, &[&p], &u, at(T)).unwrap_err();
        assert!(
            err.contains("missing request for cpu in container app"),
            "{err}"
        );
    }
}

//! Pod resource usage, as metrics-server serves it to the HorizontalPodAutoscaler: per pod,
//! per container, CPU in millicores (a rate over a window) and memory working set in bytes.
//!
//! [`PodMetricsSource`] is what the autoscaler reads; implement it to feed usage from
//! elsewhere (a real metrics-server, Prometheus). [`PodMetrics`] is the in-process source:
//! node agents publish their containers' [`ContainerStats`] to it every resolution period
//! ([`PodMetrics::publish_node`]), and it turns cumulative CPU time into a rate between two
//! samples, as metrics-server does; tests and other feeders may also set usage directly
//! ([`PodMetrics::set`]).
//!
//! [`ContainerStats`]: crate::backend::runtime::ContainerStats

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::backend::runtime::ContainerStats;

/// How often node agents publish usage by default (metrics-server's resolution).
pub const DEFAULT_RESOLUTION: Duration = Duration::from_secs(15);

/// Usage of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    /// Container name.
    pub name: String,
    /// CPU in millicores, averaged over the window.
    pub cpu_millicores: u64,
    /// Memory working set in bytes.
    pub memory_bytes: u64,
}

/// Usage of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodUsage {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// When the usage was measured (the end of the window).
    pub timestamp: SystemTime,
    /// The window the CPU rate was averaged over.
    pub window: Duration,
    /// Per-container usage.
    pub containers: Vec<ContainerUsage>,
}

impl PodUsage {
    /// The pod's total CPU in millicores.
    pub fn cpu_millicores(&self) -> u64 {
        self.containers.iter().map(|c| c.cpu_millicores).sum()
    }

    /// The pod's total memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.containers.iter().map(|c| c.memory_bytes).sum()
    }
}

/// Why usage could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pod metrics for namespace {namespace:?}: {message}")]
pub struct PodMetricsError {
    /// The namespace asked for.
    pub namespace: String,
    /// What went wrong.
    pub message: String,
}

/// A source of pod usage (what the `metrics.k8s.io` API serves).
#[async_trait]
pub trait PodMetricsSource: Send + Sync + 'static {
    /// The latest usage of every pod in `namespace` that has any. A pod missing from the
    /// result has no metrics (yet).
    async fn pod_usage(&self, namespace: &str) -> Result<Vec<PodUsage>, PodMetricsError>;
}

/// One container's sample, as a node agent publishes it.
#[derive(Clone, Debug)]
pub struct ContainerSample {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Container id (a restarted container starts a new CPU counter).
    pub container_id: String,
    /// The runtime's figures.
    pub stats: ContainerStats,
}

type PodKey = (String, String);

#[derive(Default)]
struct State {
    /// Usage per pod.
    pods: HashMap<PodKey, PodUsage>,
    /// Which node published which pods (to forget pods that left the node).
    by_node: HashMap<String, Vec<PodKey>>,
    /// Last cumulative CPU sample per node, per container id: (time, nanoseconds).
    cpu: HashMap<String, HashMap<String, (SystemTime, u64)>>,
}

/// The in-process [`PodMetricsSource`], fed by node agents. Cheap to share in an `Arc`.
///
/// ```
/// # use std::time::{Duration, SystemTime};
/// # use wharf_core::pod_metrics::{ContainerUsage, PodMetrics, PodMetricsSource, PodUsage};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let metrics = PodMetrics::new();
/// metrics.set(PodUsage {
///     namespace: "default".into(),
///     name: "web-1".into(),
///     timestamp: SystemTime::now(),
///     window: Duration::from_secs(15),
///     containers: vec![ContainerUsage { name: "app".into(), cpu_millicores: 250, memory_bytes: 64 << 20 }],
/// });
/// let usage = metrics.pod_usage("default").await.unwrap();
/// assert_eq!(usage[0].cpu_millicores(), 250);
/// # });
/// ```
#[derive(Default)]
pub struct PodMetrics {
    state: Mutex<State>,
}

impl PodMetrics {
    /// An empty source.
    pub fn new() -> PodMetrics {
        PodMetrics::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets one pod's usage directly (replacing what a node published).
    pub fn set(&self, usage: PodUsage) {
        self.lock()
            .pods
            .insert((usage.namespace.clone(), usage.name.clone()), usage);
    }

    /// Forgets one pod's usage.
    pub fn remove(&self, namespace: &str, pod: &str) {
        self.lock()
            .pods
            .remove(&(namespace.to_string(), pod.to_string()));
    }

    /// Publishes what node `node` measured at `now`: the running containers' stats. CPU
    /// becomes a rate over the time since the container's previous sample, so a container's
    /// first sample yields no usage; pods the node published before and not now are
    /// forgotten.
    pub fn publish_node(&self, node: &str, now: SystemTime, samples: Vec<ContainerSample>) {
        let mut state = self.lock();
        let previous = state.cpu.remove(node).unwrap_or_default();
        let mut counters = HashMap::with_capacity(samples.len());
        let mut pods: BTreeMap<PodKey, PodUsage> = BTreeMap::new();
        let mut incomplete: Vec<PodKey> = Vec::new();
        for s in samples {
            let key = (s.namespace.clone(), s.pod.clone());
            let at = s.stats.timestamp.unwrap_or(now);
            let rate = match previous.get(&s.container_id) {
                Some(&(prev_at, prev_nanos)) if at > prev_at => {
                    let elapsed = at.duration_since(prev_at).unwrap_or_default();
                    let used = s.stats.cpu_usage_nanos.saturating_sub(prev_nanos) as u128;
                    Some(((used * 1000 / elapsed.as_nanos().max(1)) as u64, elapsed))
                }
                _ => None,
            };
            counters.insert(s.container_id.clone(), (at, s.stats.cpu_usage_nanos));
            let Some((millicores, window)) = rate else {
                incomplete.push(key);
                continue;
            };
            let pod = pods.entry(key).or_insert_with(|| PodUsage {
                namespace: s.namespace,
                name: s.pod,
                timestamp: at,
                window,
                containers: Vec::new(),
            });
            pod.timestamp = pod.timestamp.max(at);
            pod.containers.push(ContainerUsage {
                name: s.container,
                cpu_millicores: millicores,
                memory_bytes: s.stats.memory_working_set_bytes,
            });
        }
        // A pod with a container lacking a rate has no complete figure yet.
        for key in &incomplete {
            pods.remove(key);
        }
        let old = state.by_node.remove(node).unwrap_or_default();
        for key in old {
            if !pods.contains_key(&key) {
                state.pods.remove(&key);
            }
        }
        state
            .by_node
            .insert(node.to_string(), pods.keys().cloned().collect());
        for (key, usage) in pods {
            state.pods.insert(key, usage);
        }
        // Counters of containers the node no longer runs are dropped with `previous`.
        state.cpu.insert(node.to_string(), counters);
    }
}

#[async_trait]
impl PodMetricsSource for PodMetrics {
    async fn pod_usage(&self, namespace: &str) -> Result<Vec<PodUsage>, PodMetricsError> {
        let mut out: Vec<PodUsage> = self
            .lock()
            .pods
            .values()
            .filter(|p| p.namespace == namespace)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pod: &str, id: &str, at: SystemTime, cpu_nanos: u64) -> ContainerSample {
        ContainerSample {
            namespace: "default".into(),
            pod: pod.into(),
            container: "app".into(),
            container_id: id.into(),
            stats: ContainerStats {
                timestamp: Some(at),
                cpu_usage_nanos: cpu_nanos,
                memory_working_set_bytes: 1 << 20,
                ..Default::default()
            },
        }
    }

    #[tokio::test]
    async fn cpu_is_a_rate_between_two_samples_and_gone_pods_are_forgotten() {
        let m = PodMetrics::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let t1 = t0 + Duration::from_secs(15);
        m.publish_node("n1", t0, vec![sample("a", "c1", t0, 0)]);
        assert!(
            m.pod_usage("default").await.unwrap().is_empty(),
            "one sample has no rate"
        );
        // 7.5 s of CPU in 15 s: half a core.
        m.publish_node("n1", t1, vec![sample("a", "c1", t1, 7_500_000_000)]);
        let usage = m.pod_usage("default").await.unwrap();
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].cpu_millicores(), 500);
        assert_eq!(usage[0].memory_bytes(), 1 << 20);
        assert_eq!(usage[0].window, Duration::from_secs(15));
        // The pod left the node.
        m.publish_node("n1", t1 + Duration::from_secs(15), vec![]);
        assert!(m.pod_usage("default").await.unwrap().is_empty());
        assert!(m.pod_usage("other").await.unwrap().is_empty());
    }
}

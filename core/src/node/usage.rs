//! Publishing the node's container usage to a [`PodMetrics`] (what the kubelet's summary API
//! and metrics-server do together): every resolution period the agent reads the stats of its
//! running containers from the runtime and publishes them under their pods' names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::backend::runtime::{ContainerFilter, ContainerState};
use crate::backend::ContainerRuntime;
use crate::clock::Clock;
use crate::pod_metrics::{ContainerSample, PodMetrics};

/// One scrape: the stats of every running container of a pod sandbox on this node.
pub(super) async fn scrape(
    runtime: &dyn ContainerRuntime,
    node: &str,
    clock: Clock,
    sink: &PodMetrics,
) {
    let sandboxes = match runtime.list_sandboxes().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(node, error = %e, "listing sandboxes for usage failed");
            return;
        }
    };
    let pods: HashMap<String, (String, String)> = sandboxes
        .into_iter()
        .map(|s| (s.id, (s.namespace, s.name)))
        .collect();
    let filter = ContainerFilter {
        state: Some(ContainerState::Running),
        ..Default::default()
    };
    let containers = match runtime.list_containers(&filter).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(node, error = %e, "listing containers for usage failed");
            return;
        }
    };
    let mut samples = Vec::with_capacity(containers.len());
    for c in containers {
        let Some((namespace, pod)) = pods.get(&c.sandbox_id) else {
            continue;
        };
        match runtime.stats(&c.id).await {
            Ok(stats) => samples.push(ContainerSample {
                namespace: namespace.clone(),
                pod: pod.clone(),
                container: c.name,
                container_id: c.id,
                stats,
            }),
            // Exited between the list and the read: it has no usage now.
            Err(e) => tracing::trace!(node, container = %c.id, error = %e, "no stats"),
        }
    }
    sink.publish_node(node, clock.now(), samples);
}

/// Scrapes every `resolution` until `stop` changes.
pub(super) async fn publish(
    runtime: Arc<dyn ContainerRuntime>,
    node: String,
    clock: Clock,
    sink: Arc<PodMetrics>,
    resolution: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(resolution);
    loop {
        tokio::select! {
            _ = tick.tick() => scrape(runtime.as_ref(), &node, clock, &sink).await,
            _ = stop.changed() => {
                sink.publish_node(&node, clock.now(), Vec::new());
                return;
            }
        }
    }
}

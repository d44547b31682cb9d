//! HorizontalPodAutoscaler controller under tokio's paused clock: the target is a
//! Deployment whose pods the test writes itself (no Deployment controller runs), usage is set
//! on an in-memory `PodMetrics`.

mod controller_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use controller_support::*;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use wharf_core::clock::to_k8s_time;
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::controllers::hpa::HorizontalPodAutoscalerController;
use wharf_core::pod_metrics::{ContainerUsage, PodMetrics, PodMetricsSource, PodUsage};
use wharf_core::store::{Api, Store};
use wharf_core::{Clock, Object};

fn start(store: &Arc<dyn Store>, clock: Clock, metrics: Arc<PodMetrics>) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(HorizontalPodAutoscalerController::controller(metrics).run(ctx, shutdown.clone()));
    shutdown
}

async fn deployment(store: &Arc<dyn Store>, replicas: i32) {
    let mut d = Deployment::default();
    d.metadata.name = Some("web".into());
    d.metadata.namespace = Some("default".into());
    d.spec = Some(DeploymentSpec {
        replicas: Some(replicas),
        selector: selector(&[("app", "web")]),
        template: template(&[("app", "web")], "nginx"),
        ..Default::default()
    });
    store.create(Object::from(d)).await.unwrap();
}

/// A Running pod of the Deployment requesting 500m CPU and 256Mi, started 10 minutes ago,
/// Ready (or not) since.
async fn running_pod(store: &Arc<dyn Store>, clock: &Clock, name: &str, ready: bool) {
    let mut p = pod(name, &[("app", "web")]);
    let requests: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity("500m".into())),
        ("memory".to_string(), Quantity("256Mi".into())),
    ]
    .into_iter()
    .collect();
    p.spec.as_mut().unwrap().containers[0].resources = Some(ResourceRequirements {
        requests: Some(requests),
        ..Default::default()
    });
    let created = store.create(Object::from(p)).await.unwrap();
    let mut p = created.as_kind::<Pod>().unwrap().clone();
    let since = to_k8s_time(clock.now() - Duration::from_secs(600));
    p.status = Some(PodStatus {
        phase: Some("Running".into()),
        start_time: Some(since.clone()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            // Not ready: never was (the condition has not changed since the start).
            last_transition_time: Some(since),
            ..Default::default()
        }]),
        ..Default::default()
    });
    store.update_status(Object::from(p)).await.unwrap();
}

fn set_cpu(metrics: &PodMetrics, clock: &Clock, pods: &[&str], millicores: u64) {
    for name in pods {
        metrics.set(PodUsage {
            namespace: "default".into(),
            name: name.to_string(),
            timestamp: clock.now(),
            window: Duration::from_secs(15),
            containers: vec![ContainerUsage {
                name: "app".into(),
                cpu_millicores: millicores,
                memory_bytes: 200 << 20,
            }],
        });
    }
}

fn hpa(metric: MetricSpec, min: i32, max: i32) -> HorizontalPodAutoscaler {
    let mut h = HorizontalPodAutoscaler::default();
    h.metadata.name = Some("web".into());
    h.metadata.namespace = Some("default".into());
    h.spec = Some(HorizontalPodAutoscalerSpec {
        scale_target_ref: CrossVersionObjectReference {
            api_version: Some("apps/v1".into()),
            kind: "Deployment".into(),
            name: "web".into(),
        },
        min_replicas: Some(min),
        max_replicas: max,
        metrics: Some(vec![metric]),
        behavior: None,
    });
    h
}

fn resource(name: &str, target: MetricTarget) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: name.into(),
            target,
        }),
        ..Default::default()
    }
}

fn utilization(percent: i32) -> MetricTarget {
    MetricTarget {
        type_: "Utilization".into(),
        average_utilization: Some(percent),
        ..Default::default()
    }
}

async fn replicas(store: &Arc<dyn Store>) -> i32 {
    let api: Api<Deployment> = Api::namespaced(store.clone(), "default");
    api.get("web")
        .await
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .replicas
        .unwrap()
}

async fn conditions(store: &Arc<dyn Store>) -> Vec<(String, String, String)> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(store.clone(), "default");
    api.get("web")
        .await
        .unwrap()
        .status
        .clone()
        .unwrap()
        .conditions
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status, c.reason.unwrap_or_default()))
        .collect()
}

/// A Deployment whose pods `(name, ready)` run, the autoscaler, and its metrics source.
struct Fixture {
    store: Arc<dyn Store>,
    clock: Clock,
    metrics: Arc<PodMetrics>,
    shutdown: CancellationToken,
}

async fn fixture(pods: &[(&str, bool)]) -> Fixture {
    let (store, clock) = store();
    let metrics = Arc::new(PodMetrics::new());
    deployment(&store, pods.len() as i32).await;
    for (name, ready) in pods {
        running_pod(&store, &clock, name, *ready).await;
    }
    let shutdown = start(&store, clock, metrics.clone());
    Fixture {
        store,
        clock,
        metrics,
        shutdown,
    }
}

impl Fixture {
    fn set_cpu(&self, pods: &[&str], millicores: u64) {
        set_cpu(&self.metrics, &self.clock, pods, millicores);
    }

    /// Creates the HPA of the Deployment with one metric.
    async fn autoscale(&self, metric: MetricSpec, min: i32, max: i32) {
        self.store
            .create(Object::from(hpa(metric, min, max)))
            .await
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn cpu_at_twice_the_target_scales_2_to_4_and_reports_status() {
    let f = fixture(&[("web-a", true), ("web-b", true)]).await;
    let store = &f.store;
    // 500m of 500m requested: 100 % against a 50 % target.
    f.set_cpu(&["web-a", "web-b"], 500);
    f.autoscale(resource("cpu", utilization(50)), 1, 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(replicas(store).await, 4);

    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(store.clone(), "default");
    let status = api.get("web").await.unwrap().status.clone().unwrap();
    assert_eq!(status.desired_replicas, 4);
    assert!(status.last_scale_time.is_some());
    let current = &status.current_metrics.unwrap()[0];
    let cpu = current.resource.as_ref().unwrap();
    assert_eq!(cpu.name, "cpu");
    assert_eq!(cpu.current.average_utilization, Some(100));
    assert_eq!(cpu.current.average_value.as_ref().unwrap().0, "500m");
    // The rescale is an event; the next evaluation finds the new size right.
    let events = store
        .list(
            &wharf_core::Kind::Event,
            &wharf_core::store::ListOptions::namespace("default"),
        )
        .await
        .unwrap();
    let rescale = events
        .items
        .iter()
        .filter_map(|e| e.as_kind::<k8s_openapi::api::core::v1::Event>())
        .find(|e| e.reason.as_deref() == Some("SuccessfulRescale"))
        .expect("a SuccessfulRescale event");
    assert_eq!(
        rescale.message.as_deref(),
        Some("New size: 4; reason: cpu resource utilization (percentage of request) above target")
    );
    let conds = conditions(store).await;
    assert!(conds.contains(&(
        "AbleToScale".into(),
        "True".into(),
        "ReadyForNewScale".into()
    )));
    assert!(conds.contains(&(
        "ScalingActive".into(),
        "True".into(),
        "ValidMetricFound".into()
    )));
    assert!(conds.contains(&(
        "ScalingLimited".into(),
        "False".into(),
        "DesiredWithinRange".into()
    )));
    f.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn within_the_tolerance_nothing_changes() {
    let f = fixture(&[("web-a", true), ("web-b", true)]).await;
    let store = &f.store;
    // 54 % against 50 %: ratio 1.08.
    f.set_cpu(&["web-a", "web-b"], 270);
    f.autoscale(resource("cpu", utilization(50)), 1, 10).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(replicas(store).await, 2);
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(store.clone(), "default");
    let status = api.get("web").await.unwrap().status.clone().unwrap();
    assert_eq!(status.desired_replicas, 2);
    assert!(status.last_scale_time.is_none());
    f.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn scale_down_waits_for_the_300s_stabilization_window() {
    let f = fixture(&[
        ("web-a", true),
        ("web-b", true),
        ("web-c", true),
        ("web-d", true),
    ])
    .await;
    let store = &f.store;
    let names = ["web-a", "web-b", "web-c", "web-d"];
    f.set_cpu(&names, 250);
    f.autoscale(resource("cpu", utilization(50)), 1, 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(replicas(store).await, 4, "at target");

    // Load drops to 10 %: the metrics ask for 1 replica at once, the window holds 4.
    f.set_cpu(&names, 50);
    tokio::time::sleep(Duration::from_secs(290)).await;
    assert_eq!(replicas(store).await, 4);
    let conds = conditions(store).await;
    assert!(conds.contains(&(
        "AbleToScale".into(),
        "True".into(),
        "ScaleDownStabilized".into()
    )));
    // Five minutes after the last recommendation of 4, the scale-down happens.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(replicas(store).await, 1);
    f.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn scale_up_is_rate_limited_and_bounded_by_max_replicas() {
    let f = fixture(&[("web-a", true)]).await;
    let store = &f.store;
    // 1000 % of the request against a 50 % target: the metric asks for 20.
    f.set_cpu(&["web-a"], 5000);
    f.autoscale(resource("cpu", utilization(50)), 1, 8).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 4 pods per 15 s beats 100 % from 1.
    assert_eq!(replicas(store).await, 5);
    let conds = conditions(store).await;
    assert!(conds.contains(&(
        "ScalingLimited".into(),
        "True".into(),
        "ScaleUpLimit".into()
    )));
    // The next period (the same single pod still reports): capped by maxReplicas.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(replicas(store).await, 8);
    let conds = conditions(store).await;
    assert!(conds.contains(&(
        "ScalingLimited".into(),
        "True".into(),
        "TooManyReplicas".into()
    )));
    f.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn unready_pods_are_left_out_of_a_scale_up() {
    let f = fixture(&[
        ("web-a", true),
        ("web-b", false),
        ("web-c", false),
        ("web-d", false),
    ])
    .await;
    let store = &f.store;
    // web-a at 120 % (ratio 2.4); the unready pods would report 200 % but count as idle:
    // (600 + 0 + 0 + 0) / 2000 = 30 % — a scale-up would become a scale-down, so nothing
    // changes.
    f.set_cpu(&["web-a"], 600);
    f.set_cpu(&["web-b", "web-c", "web-d"], 1000);
    f.autoscale(resource("cpu", utilization(50)), 1, 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(replicas(store).await, 4);
    // The metric was computed (not an error that also leaves 4 replicas).
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(store.clone(), "default");
    let status = api.get("web").await.unwrap().status.clone().unwrap();
    assert_eq!(status.desired_replicas, 4);
    assert!(conditions(store).await.contains(&(
        "ScalingActive".into(),
        "True".into(),
        "ValidMetricFound".into()
    )));
    f.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn memory_average_value_and_missing_metrics_are_reported() {
    let f = fixture(&[("web-a", true), ("web-b", true)]).await;
    let store = &f.store;
    let target = MetricTarget {
        type_: "AverageValue".into(),
        average_value: Some(Quantity("100Mi".into())),
        ..Default::default()
    };
    f.autoscale(resource("memory", target), 1, 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // No metrics at all: ScalingActive False, no change.
    assert_eq!(replicas(store).await, 2);
    let conds = conditions(store).await;
    assert!(conds.contains(&(
        "ScalingActive".into(),
        "False".into(),
        "FailedGetResourceMetric".into()
    )));

    // 200Mi per pod against 100Mi: 4 replicas.
    f.set_cpu(&["web-a", "web-b"], 100);
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(replicas(store).await, 4);
    f.shutdown.cancel();
}

/// End to end on a simulated cluster: the simulated runtime reports the usage the test sets,
/// the node agents publish it, the autoscaler scales the Deployment, the pods come up.
#[tokio::test(start_paused = true)]
async fn simulated_cluster_scales_from_runtime_stats() {
    use wharf_core::cluster::{simulated_backends, ClusterBuilder};
    use wharf_core::node::NodeConfig;
    use wharf_core::sim::SimRuntime;

    let (_, clock) = store();
    let runtime = SimRuntime::new(clock);
    let mut backends = simulated_backends("node-0", "10.0.0.0/24", clock).unwrap();
    backends.runtime = Arc::new(runtime.clone());
    let cluster = ClusterBuilder::new()
        .clock(clock)
        .node(NodeConfig::new("node-0"), backends)
        .start()
        .await
        .unwrap();
    let store = cluster.store().clone();
    // 500m used per pod of 500m requested, against a 50 % target.
    runtime.set_usage("app", 500, 64 << 20);
    let mut d = Deployment::default();
    d.metadata.name = Some("web".into());
    d.metadata.namespace = Some("default".into());
    let mut t = template(&[("app", "web")], "nginx");
    t.spec.as_mut().unwrap().containers[0].resources = Some(ResourceRequirements {
        requests: Some(
            [("cpu".to_string(), Quantity("500m".into()))]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    });
    d.spec = Some(DeploymentSpec {
        replicas: Some(2),
        selector: selector(&[("app", "web")]),
        template: t,
        ..Default::default()
    });
    store.create(Object::from(d)).await.unwrap();
    store
        .create(Object::from(hpa(resource("cpu", utilization(50)), 1, 4)))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(120),
        "the Deployment is scaled to 4",
        || async { replicas(&store).await == 4 },
    )
    .await;
    eventually(Duration::from_secs(60), "4 pods run", || async {
        list(&store, wharf_core::Kind::Pod)
            .await
            .iter()
            .filter(|p| is_ready(p))
            .count()
            == 4
    })
    .await;
    let usage = cluster.pod_metrics().pod_usage("default").await.unwrap();
    assert!(!usage.is_empty());
    assert!(usage.iter().all(|u| u.cpu_millicores() == 500), "{usage:?}");
    cluster.shutdown().await;
}

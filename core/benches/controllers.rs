//! End-to-end controller benchmark: a Deployment of N replicas from create to every pod
//! Ready and the Deployment reporting N available, then a rolling update of it, on the
//! memory store with a stand-in for the node agents that marks each new pod Running and Ready
//! at once (no scheduler: the scheduler has its own benchmark).
//!
//! There is no peer to run beside it here: kube-controller-manager needs an API server and
//! etcd, which this machine does not run. The figures are absolute; see
//! docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, Pod, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::controllers::deployment::DeploymentController;
use wharf_core::controllers::replicaset::ReplicaSetController;
use wharf_core::store::memory::MemoryStore;
use wharf_core::store::{Api, Store, WatchEvent, WatchOptions};
use wharf_core::{Clock, Kind, Object};

fn deployment(replicas: i32, image: &str) -> Deployment {
    let labels = std::collections::BTreeMap::from([("app".to_string(), "bench".to_string())]);
    Deployment {
        metadata: ObjectMeta {
            name: Some("bench".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some(image.into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Marks every new pod Running and Ready as soon as it appears.
async fn instant_kubelet(store: Arc<dyn Store>, clock: Clock, shutdown: CancellationToken) {
    let mut watch = store
        .watch(&Kind::Pod, &WatchOptions::default())
        .await
        .unwrap();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = watch.next() => e,
        };
        let Some(Ok(WatchEvent::Added(pod))) = event else {
            if event.is_none() {
                return;
            }
            continue;
        };
        let mut p = pod.as_kind::<Pod>().unwrap().clone();
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.0.0.1".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(clock.now_k8s()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let _ = store.update_status(Object::from(p)).await;
    }
}

/// Waits until the Deployment reports `n` updated and available replicas of `generation`.
async fn rolled_out(store: &Arc<dyn Store>, n: i32) {
    let api: Api<Deployment> = Api::namespaced(store.clone(), "default");
    let done = |d: &Deployment| {
        let s = d.status.clone().unwrap_or_default();
        s.available_replicas == Some(n)
            && s.updated_replicas == Some(n)
            && s.replicas == Some(n)
            && s.observed_generation == d.metadata.generation
    };
    let mut watch = api.watch(&WatchOptions::default()).await.unwrap();
    while let Some(Ok(event)) = watch.next().await {
        if let Some(d) = event.object().and_then(|o| o.as_kind::<Deployment>()) {
            if done(d) {
                return;
            }
        }
    }
}

/// One run: create a Deployment of `n`, wait for it; then update its image and wait again.
/// Returns the two durations.
async fn run(n: i32) -> (Duration, Duration) {
    let clock = Clock::new();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::with_clock(clock));
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(instant_kubelet(store.clone(), clock, shutdown.clone()));
    tokio::spawn(ReplicaSetController::controller().run(ctx.clone(), shutdown.clone()));
    tokio::spawn(DeploymentController::controller().run(ctx, shutdown.clone()));
    let api: Api<Deployment> = Api::namespaced(store.clone(), "default");

    let start = Instant::now();
    api.create(deployment(n, "v1")).await.unwrap();
    rolled_out(&store, n).await;
    let create = start.elapsed();

    let start = Instant::now();
    let mut d = api.get("bench").await.unwrap().to_owned_value();
    d.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("v2".into());
    api.update(d).await.unwrap();
    rolled_out(&store, n).await;
    let update = start.elapsed();
    shutdown.cancel();
    (create, update)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Criterion samples at 1,000 replicas (10k per sample would take minutes on 2 shared
    // cores); the larger sizes are timed below, three runs each, median reported.
    let mut group = c.benchmark_group("deployment");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    let n = 1_000;
    group.bench_with_input(
        BenchmarkId::new("create_then_rolling_update", n),
        &n,
        |b, &n| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (create, update) = run(n).await;
                    total += create + update;
                }
                total
            })
        },
    );
    group.finish();
    let sizes: Vec<i32> = std::env::var("WHARF_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    for n in sizes {
        let mut runs: Vec<(Duration, Duration)> = (0..3).map(|_| rt.block_on(run(n))).collect();
        runs.sort();
        let create = runs[1].0;
        let mut updates: Vec<Duration> = runs.iter().map(|r| r.1).collect();
        updates.sort();
        let update = updates[1];
        println!(
            "deployment of {n}: create->available {:.3}s ({:.0} pods/s), rolling update {:.3}s ({:.0} pods/s) [median of 3]",
            create.as_secs_f64(),
            n as f64 / create.as_secs_f64(),
            update.as_secs_f64(),
            n as f64 / update.as_secs_f64()
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Scheduler throughput, modeled on Kubernetes' scheduler_perf SchedulingBasic: 5,000 nodes
//! (4 CPU, 32 GiB, 110 pods), 1,000 pods placed first, then 10,000 pods measured (100m CPU,
//! 500 Mi each), through a MemoryStore with the scheduler's watches, binding writes and
//! PodScheduled status writes. kube-scheduler's CI floor for this workload is 680–810 pods/s.
//!
//! Run: `cargo bench -p wharf-core --bench scheduler`

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use k8s_openapi::api::core::v1::{Container, Node, NodeStatus, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tokio_util::sync::CancellationToken;
use wharf_core::scheduler::{Scheduler, SchedulerConfig, SchedulerMetrics};
use wharf_core::store::memory::MemoryStore;
use wharf_core::{Object, Store};

const NODES: usize = 5_000;
const INITIAL_PODS: usize = 1_000;
const MEASURED_PODS: usize = 10_000;

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

fn node(i: usize) -> Object {
    let mut n = Node::default();
    n.metadata.name = Some(format!("node-{i}"));
    n.metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/hostname".to_string(),
        format!("node-{i}"),
    )]));
    n.status = Some(NodeStatus {
        allocatable: Some(quantities(&[
            ("cpu", "4"),
            ("memory", "32Gi"),
            ("pods", "110"),
        ])),
        ..Default::default()
    });
    n.into()
}

fn pod(prefix: &str, i: usize) -> Object {
    let mut p = Pod::default();
    p.metadata.name = Some(format!("{prefix}-{i}"));
    p.metadata.namespace = Some("default".into());
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: "pause".into(),
            image: Some("registry.k8s.io/pause:3.10".into()),
            resources: Some(ResourceRequirements {
                requests: Some(quantities(&[("cpu", "100m"), ("memory", "500Mi")])),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    p.into()
}

async fn wait_for(metrics: &SchedulerMetrics, count: u64) {
    while metrics.scheduled.load(Ordering::Relaxed) < count {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Sets up the cluster and returns the time to schedule the measured pods.
async fn run_once() -> Duration {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    for i in 0..NODES {
        store.create(node(i)).await.unwrap();
    }
    let scheduler = Scheduler::new(store.clone(), SchedulerConfig::default());
    let metrics = scheduler.metrics();
    let stop = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(stop.clone().cancelled_owned()));
    for i in 0..INITIAL_PODS {
        store.create(pod("init", i)).await.unwrap();
    }
    wait_for(&metrics, INITIAL_PODS as u64).await;

    let start = Instant::now();
    let creator = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..MEASURED_PODS {
                store.create(pod("measured", i)).await.unwrap();
            }
        })
    };
    wait_for(&metrics, (INITIAL_PODS + MEASURED_PODS) as u64).await;
    let elapsed = start.elapsed();
    creator.await.unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
    elapsed
}

fn scheduling_basic(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("scheduler");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(MEASURED_PODS as u64));
    group.bench_function("SchedulingBasic/5000Nodes/10000Pods", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = rt.block_on(run_once());
                println!(
                    "  scheduled {MEASURED_PODS} pods in {:.3} s: {:.0} pods/s (kube-scheduler CI floor 680-810 pods/s)",
                    t.as_secs_f64(),
                    MEASURED_PODS as f64 / t.as_secs_f64()
                );
                total += t;
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, scheduling_basic);
criterion_main!(benches);

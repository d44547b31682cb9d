//! One node agent managing 1,000 simulated pods: time from bound to Running for all of
//! them, and the agent's memory per pod (RSS growth minus what the same pods cost in the
//! store alone). There is no real kubelet to run beside it on this machine; the reference
//! is the target of issue 3 (< 50 KB of agent memory per pod).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use wharf_core::node::{Backends, NodeAgent, NodeConfig, PathOnlyVolumes};
use wharf_core::object::Kind;
use wharf_core::sim::{SimImageService, SimNetwork, SimProber, SimRuntime};
use wharf_core::store::memory::MemoryStore;
use wharf_core::store::{Api, ListOptions, Store};
use wharf_core::Clock;

const PODS: usize = 1000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split(' ')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn pod(i: usize, node: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(format!("p{i}"));
    p.metadata.namespace = Some("default".into());
    p.spec = Some(PodSpec {
        node_name: Some(node.into()),
        containers: vec![Container {
            name: "app".into(),
            image: Some("img:1".into()),
            ..Default::default()
        }],
        ..Default::default()
    });
    p
}

async fn running(store: &Arc<dyn Store>) -> usize {
    store
        .list(&Kind::Pod, &ListOptions::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|o| o.field("status.phase").as_deref() == Some("Running"))
        .count()
}

/// Binds PODS pods to one agent; returns (time until all Running, RSS growth).
async fn run_once() -> (Duration, u64) {
    let clock = Clock::new();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::with_clock(clock));
    let runtime = SimRuntime::new(clock);
    let backends = Backends {
        runtime: Arc::new(runtime.clone()),
        images: Arc::new(SimImageService::serving_any()),
        network: Arc::new(SimNetwork::new("10.0.0.0/16").unwrap()),
        prober: Arc::new(SimProber::new()),
        volume_plugins: vec![],
        in_tree_volumes: Some(Arc::new(PathOnlyVolumes)),
    };
    let agent = NodeAgent::new(NodeConfig::new("bench"), backends, store.clone(), clock);
    let handle = agent.start().await.unwrap();
    let rss0 = rss_bytes();
    let api: Api<Pod> = Api::namespaced(store.clone(), "default");
    let start = Instant::now();
    for i in 0..PODS {
        api.create(pod(i, "bench")).await.unwrap();
    }
    while running(&store).await < PODS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let grown = rss_bytes().saturating_sub(rss0);
    handle.shutdown().await;
    (elapsed, grown)
}

/// RSS growth of the same pods, with a Running status, in a store without an agent.
async fn store_only() -> u64 {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let api: Api<Pod> = Api::namespaced(store.clone(), "default");
    let rss0 = rss_bytes();
    for i in 0..PODS {
        let created = api.create(pod(i, "elsewhere")).await.unwrap();
        let mut p = created.to_owned_value();
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        });
        api.update_status(p).await.unwrap();
    }
    rss_bytes().saturating_sub(rss0)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store_bytes = rt.block_on(store_only());
    let (elapsed, agent_bytes) = rt.block_on(run_once());
    let per_pod = agent_bytes.saturating_sub(store_bytes) as f64 / PODS as f64;
    println!(
        "node agent, {PODS} simulated pods: bound→all Running {:.1} ms ({:.1} µs/pod); \
         RSS growth {:.1} KiB/pod with store, store alone {:.1} KiB/pod, agent ≈ {:.1} KiB/pod \
         (target < 50 KB: ratio {:.2})",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / PODS as f64,
        agent_bytes as f64 / 1024.0 / PODS as f64,
        store_bytes as f64 / 1024.0 / PODS as f64,
        per_pod / 1024.0,
        per_pod / 50_000.0,
    );
    let mut group = c.benchmark_group("node");
    group.sample_size(10);
    group.bench_function("1000 pods bound to Running", |b| {
        b.to_async(&rt).iter(|| async { run_once().await.0 })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! MemoryStore throughput at 100k objects and watch fan-out, with etcd (the store Kubernetes
//! runs on) as a reference peer when its binary is installed.
//!
//! `cargo bench -p wharf-core --bench store` (add `-- --quick` for a short run). The etcd
//! figures are a reference only: etcd is a remote, durable store reached over its JSON
//! gateway, the memory store an in-process map; the ratio says what embedding saves.

#[path = "store/etcd.rs"]
mod etcd;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use tokio::sync::Notify;
use wharf_core::store::memory::{MemoryStore, MemoryStoreOptions};
use wharf_core::store::{DeleteOptions, FieldSelector, ListOptions, Store, WatchOptions};
use wharf_core::{Kind, Object};

const OBJECTS: usize = 100_000;
const NAMESPACES: usize = 100;
const NODES: usize = 5_000;

/// A pod as a ReplicaSet would create it: labels, owner, one container with resources.
fn sample_pod(i: usize) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.namespace = Some(format!("ns-{}", i % NAMESPACES));
    pod.metadata.name = Some(format!("web-{i}"));
    pod.metadata.labels = Some(
        [
            ("app".to_string(), "web".to_string()),
            ("pod-template-hash".to_string(), "7d4b9c8f6".to_string()),
            ("tier".to_string(), "front".to_string()),
        ]
        .into(),
    );
    pod.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: "web-7d4b9c8f6".into(),
        uid: "9f1c2a4e-3b7d-4c1e-8a2f-5d6e7f8091a2".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    pod.spec = Some(PodSpec {
        node_name: Some(format!("node-{}", i % NODES)),
        containers: vec![Container {
            name: "web".into(),
            image: Some("registry.invalid/web:1.4.2".into()),
            resources: Some(ResourceRequirements {
                requests: Some(
                    [
                        ("cpu".to_string(), Quantity("100m".into())),
                        ("memory".to_string(), Quantity("128Mi".into())),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    pod
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn filled_store(rt: &tokio::runtime::Runtime) -> MemoryStore {
    let store = MemoryStore::new();
    rt.block_on(async {
        for i in 0..OBJECTS {
            store.create(sample_pod(i).into()).await.expect("fill");
        }
    });
    store
}

fn crud_at_100k(c: &mut Criterion) {
    let rt = runtime();
    let store = filled_store(&rt);
    let mut group = c.benchmark_group("memory_store_100k");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("get", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % OBJECTS;
            let ns = format!("ns-{}", i % NAMESPACES);
            let name = format!("web-{i}");
            let store = &store;
            async move { store.get(&Kind::Pod, Some(&ns), &name).await.unwrap() }
        })
    });
    let mut flip = 0usize;
    group.bench_function("update", |b| {
        b.to_async(&rt).iter_batched(
            || {
                flip += 1;
                let mut pod = sample_pod(flip % OBJECTS);
                pod.metadata
                    .labels
                    .as_mut()
                    .unwrap()
                    .insert("rev".into(), flip.to_string());
                Object::from(pod)
            },
            |pod| store.update(pod),
            BatchSize::SmallInput,
        )
    });
    let mut next = OBJECTS;
    group.bench_function("create", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            let first = next;
            next += iters as usize;
            async move {
                let pods: Vec<Object> = (first..first + iters as usize)
                    .map(|i| sample_pod(i).into())
                    .collect();
                let start = Instant::now();
                for pod in pods {
                    store.create(pod).await.unwrap();
                }
                let took = start.elapsed();
                // Keep the store at 100k objects for the next sample.
                let now = DeleteOptions {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                for i in first..first + iters as usize {
                    let ns = format!("ns-{}", i % NAMESPACES);
                    store
                        .delete(&Kind::Pod, Some(&ns), &format!("web-{i}"), &now)
                        .await
                        .unwrap();
                }
                took
            }
        })
    });
    group.bench_function("list_one_node", |b| {
        let options = ListOptions {
            fields: Some(FieldSelector::eq("spec.nodeName", "node-42")),
            ..Default::default()
        };
        b.to_async(&rt)
            .iter(|| async { store.list(&Kind::Pod, &options).await.unwrap().items.len() })
    });
    group.finish();
}

/// Watchers that count what they receive and wake the writer once `target` deliveries
/// arrived.
struct Deliveries {
    count: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

fn spawn_watchers(
    rt: &tokio::runtime::Runtime,
    store: &MemoryStore,
    options: Vec<WatchOptions>,
) -> Arc<Deliveries> {
    let deliveries = Arc::new(Deliveries {
        count: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        done: Notify::new(),
    });
    rt.block_on(async {
        for o in options {
            let mut w = store.watch(&Kind::Pod, &o).await.unwrap();
            let d = deliveries.clone();
            tokio::spawn(async move {
                while let Some(Ok(_)) = w.next().await {
                    if d.count.fetch_add(1, Ordering::AcqRel) + 1
                        == d.target.load(Ordering::Acquire)
                    {
                        d.done.notify_one();
                    }
                }
            });
        }
    });
    deliveries
}

/// Writes `writes` pod updates and waits until `per_write` watchers received each.
async fn write_and_wait(
    store: &MemoryStore,
    d: &Deliveries,
    round: usize,
    writes: usize,
    per_write: u64,
) {
    let target = d.count.load(Ordering::Acquire) + writes as u64 * per_write;
    d.target.store(target, Ordering::Release);
    for w in 0..writes {
        let mut pod = sample_pod(w);
        pod.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("rev".into(), round.to_string());
        store.update(pod.into()).await.unwrap();
    }
    while d.count.load(Ordering::Acquire) < target {
        let _ = tokio::time::timeout(Duration::from_millis(50), d.done.notified()).await;
    }
}

fn watch_fan_out(c: &mut Criterion) {
    const WATCHERS: usize = 1_000;
    const WRITES: usize = 100;
    let rt = runtime();
    let mut group = c.benchmark_group("memory_store_watch");

    // 1,000 watchers of every pod: each write is delivered 1,000 times.
    let store = MemoryStore::with_options(MemoryStoreOptions::default());
    rt.block_on(async {
        for i in 0..WRITES {
            store.create(sample_pod(i).into()).await.unwrap();
        }
    });
    let d = spawn_watchers(
        &rt,
        &store,
        (0..WATCHERS)
            .map(|_| WatchOptions {
                resource_version: Some(WRITES as u64),
                ..Default::default()
            })
            .collect(),
    );
    group.throughput(Throughput::Elements((WRITES * WATCHERS) as u64));
    let mut round = 0;
    group.bench_function(BenchmarkId::new("deliveries_to_all", WATCHERS), |b| {
        b.to_async(&rt).iter(|| {
            round += 1;
            write_and_wait(&store, &d, round, WRITES, WATCHERS as u64)
        })
    });

    // 5,000 node agents, each watching its node's pods: each write reaches one of them.
    let store = filled_store(&rt);
    let d = spawn_watchers(
        &rt,
        &store,
        (0..NODES)
            .map(|n| WatchOptions {
                selector: ListOptions {
                    fields: Some(FieldSelector::eq("spec.nodeName", &format!("node-{n}"))),
                    ..Default::default()
                },
                resource_version: Some(OBJECTS as u64),
                ..Default::default()
            })
            .collect(),
    );
    group.throughput(Throughput::Elements(WRITES as u64));
    let mut round = 0;
    group.bench_function(
        BenchmarkId::new("writes_routed_to_node_watchers", NODES),
        |b| {
            b.to_async(&rt).iter(|| {
                round += 1;
                write_and_wait(&store, &d, round, WRITES, 1)
            })
        },
    );
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    crud_at_100k(&mut c);
    watch_fan_out(&mut c);
    etcd::compare(&mut c, sample_pod);
    c.final_summary();
}

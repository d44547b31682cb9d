//! End to end in one process: a Deployment of N replicas on N/10 simulated nodes (store,
//! controllers, scheduler and one node agent per node with simulated backends, all from
//! `ClusterBuilder`), timed from the create of the Deployment until it reports N updated,
//! ready and available replicas (every pod scheduled, started by its node agent, Running and
//! Ready), then a rolling update of its image (25 % surge, 25 % unavailable) until the same
//! holds for the new template.
//!
//! Sizes: 1,000 and 10,000 replicas; set `WHARF_E2E_N=1000,10000,100000` to choose others
//! (100,000 needs ~6 GiB and minutes). The summary prints each size's times and the growth
//! ratio from one size to the next against n·log n, the bound the issue sets. Beside wall
//! time it reports the process's CPU time per phase (from `/proc/self/stat`), which is what
//! to compare on a shared, loaded machine where wall time mostly measures the load.
//! `WHARF_E2E_TRACE=1` also prints, per phase, each controller's reconciles, errors,
//! requeues and busy time, and the scheduler's counters.
//!
//! No peer runs beside it: Kubernetes' control plane and kubelets cannot run in this process.
//!
//! The process allocates with mimalloc, set never to return freed memory to the system, as
//! a harness simulating a large cluster in one process would be set up: with glibc's
//! allocator the same runs spend a large share of their time coalescing free chunks
//! (`malloc_consolidate`), and with mimalloc's default purging in zeroing pages the kernel
//! hands back after each purge (`clear_page_erms`). Both are allocator costs, not Wharf's,
//! and both grow with the heap; docs/benchmarks.md has the figures with each.
//!
//! Run: `cargo bench -p wharf-core --bench e2e`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (one of its stable option numbers, the same in its
/// v2 and v3 series; the Rust bindings do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in the process instead of purging it after mimalloc's default 10 ms.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: setting an option is allowed at any time; -1 for this option means "never".
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Node, PodSpec, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use wharf_core::cluster::{Cluster, ClusterBuilder};
use wharf_core::controller::MetricsSnapshot;
use wharf_core::node::NodeConfig;
use wharf_core::store::{Api, ListOptions, WatchOptions};

fn deployment(replicas: i32, image: &str) -> Deployment {
    let labels = BTreeMap::from([("app".to_string(), "e2e".to_string())]);
    let requests = BTreeMap::from([
        ("cpu".to_string(), Quantity("10m".into())),
        ("memory".to_string(), Quantity("16Mi".into())),
    ]);
    Deployment {
        metadata: ObjectMeta {
            name: Some("e2e".into()),
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
                        resources: Some(ResourceRequirements {
                            requests: Some(requests),
                            ..Default::default()
                        }),
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

/// Waits until the Deployment reports `n` updated, ready and available replicas of its
/// current generation and no others.
async fn rolled_out(api: &Api<Deployment>, n: i32) {
    let done = |d: &Deployment| {
        let s = d.status.clone().unwrap_or_default();
        s.replicas == Some(n)
            && s.updated_replicas == Some(n)
            && s.ready_replicas == Some(n)
            && s.available_replicas == Some(n)
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
    panic!("watch of the Deployment ended before it rolled out");
}

/// A cluster of `nodes` simulated nodes, every node registered.
async fn cluster(nodes: usize) -> Cluster {
    let cluster = ClusterBuilder::new()
        .simulated_nodes(nodes, |i| NodeConfig::new(&format!("node-{i}")))
        .start()
        .await
        .unwrap();
    let api: Api<Node> = cluster.api_all();
    while api.list(&ListOptions::default()).await.unwrap().len() < nodes {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster
}

/// CPU time (user + system, every thread) this process has used so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th
    // fields of the line, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

/// Per-controller counters and the store's resourceVersion (its count of writes), to print
/// the difference a phase made.
async fn counters(cluster: &Cluster) -> (Vec<(String, MetricsSnapshot)>, u64) {
    let metrics = cluster
        .controller_metrics()
        .iter()
        .map(|(name, m)| (name.clone(), m.snapshot()))
        .collect();
    let rv = cluster
        .store()
        .current_resource_version()
        .await
        .unwrap_or_default();
    (metrics, rv)
}

async fn trace(phase: &str, before: &(Vec<(String, MetricsSnapshot)>, u64), cluster: &Cluster) {
    if std::env::var_os("WHARF_E2E_TRACE").is_none() {
        return;
    }
    let (after, rv) = counters(cluster).await;
    println!("    {phase} store: {} writes", rv - before.1);
    for ((name, a), (_, b)) in before.0.iter().zip(after) {
        if b.reconciles > a.reconciles {
            println!(
                "    {phase} {name}: {} reconciles ({} triggers merged), {} errors, {} requeues, busy {:.3} s",
                b.reconciles - a.reconciles,
                b.merged - a.merged,
                b.errors - a.errors,
                b.requeues - a.requeues,
                (b.total_duration - a.total_duration).as_secs_f64()
            );
        }
    }
    if let Some(m) = cluster.scheduler_metrics() {
        println!("    {phase} scheduler: {m:?}");
    }
}

/// One phase's wall and CPU time.
#[derive(Clone, Copy)]
struct Phase {
    wall: Duration,
    cpu: Duration,
}

/// One run at `n` replicas: (apply → all Ready, rolling update → all Ready).
async fn run(n: usize) -> (Phase, Phase) {
    let cluster = cluster((n / 10).max(1)).await;
    let api: Api<Deployment> = cluster.api("default");

    let before = counters(&cluster).await;
    let (start, cpu) = (Instant::now(), cpu_time());
    api.create(deployment(n as i32, "app:v1")).await.unwrap();
    rolled_out(&api, n as i32).await;
    let create = Phase {
        wall: start.elapsed(),
        cpu: cpu_time() - cpu,
    };
    trace("apply", &before, &cluster).await;

    let before = counters(&cluster).await;
    let (start, cpu) = (Instant::now(), cpu_time());
    let mut d = api.get("e2e").await.unwrap().to_owned_value();
    let spec = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.containers[0].image = Some("app:v2".into());
    api.update(d).await.unwrap();
    rolled_out(&api, n as i32).await;
    let update = Phase {
        wall: start.elapsed(),
        cpu: cpu_time() - cpu,
    };
    trace("update", &before, &cluster).await;

    cluster.shutdown().await;
    (create, update)
}

fn sizes() -> Vec<usize> {
    std::env::var("WHARF_E2E_N")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1_000, 10_000])
}

fn e2e(c: &mut Criterion) {
    keep_freed_memory();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("e2e");
    group.sample_size(10);
    let mut summary: Vec<(usize, Phase, Phase)> = Vec::new();
    for n in sizes() {
        group.bench_with_input(
            BenchmarkId::new("deployment_apply_then_rolling_update", n),
            &n,
            |b, &n| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (create, update) = rt.block_on(run(n));
                        println!(
                            "  n={n}: apply -> all Ready {:.3} s (cpu {:.2} s), rolling update {:.3} s (cpu {:.2} s)",
                            create.wall.as_secs_f64(),
                            create.cpu.as_secs_f64(),
                            update.wall.as_secs_f64(),
                            update.cpu.as_secs_f64()
                        );
                        summary.push((n, create, update));
                        total += create.wall + update.wall;
                    }
                    total
                })
            },
        );
    }
    group.finish();

    // Per size: the median of the runs criterion made; then growth against n log n.
    let median = |n: usize, pick: &dyn Fn(&(usize, Phase, Phase)) -> Duration| {
        let mut v: Vec<f64> = summary
            .iter()
            .filter(|r| r.0 == n)
            .map(|r| pick(r).as_secs_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    // (n, apply wall, update wall, apply cpu, update cpu)
    let mut medians: Vec<(usize, [f64; 4])> = Vec::new();
    for n in sizes() {
        let Some(c) = median(n, &|r| r.1.wall) else {
            continue;
        };
        let u = median(n, &|r| r.2.wall).unwrap_or_default();
        let cc = median(n, &|r| r.1.cpu).unwrap_or_default();
        let uc = median(n, &|r| r.2.cpu).unwrap_or_default();
        println!(
            "e2e n={n} on {} nodes: apply -> all Ready {c:.3} s ({:.0} pods/s, cpu {cc:.2} s), rolling update {u:.3} s ({:.0} pods/s, cpu {uc:.2} s) [median of {}]",
            (n / 10).max(1),
            n as f64 / c,
            n as f64 / u,
            summary.iter().filter(|r| r.0 == n).count()
        );
        medians.push((n, [c, u, cc, uc]));
    }
    for pair in medians.windows(2) {
        let ((n0, a), (n1, b)) = (pair[0], pair[1]);
        let nlogn = |n: usize| n as f64 * (n as f64).ln();
        println!(
            "e2e growth {n0} -> {n1}: apply x{:.2} (cpu x{:.2}), rolling update x{:.2} (cpu x{:.2}); n x{:.2}, n log n x{:.2}",
            b[0] / a[0],
            b[2] / a[2],
            b[1] / a[1],
            b[3] / a[3],
            n1 as f64 / n0 as f64,
            nlogn(n1) / nlogn(n0)
        );
    }
}

criterion_group!(benches, e2e);
criterion_main!(benches);

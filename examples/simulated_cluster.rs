//! Many simulated nodes, one large Deployment, and the rate at which its pods become Running:
//! the starting point of a benchmark harness for the store, scheduler, controllers and node
//! agents (the backends are simulated, everything else is the real code).
//!
//! ```text
//! cargo run --release --example simulated_cluster                      # 5,000 nodes, 10,000 pods
//! cargo run --example simulated_cluster -- --nodes 100 --replicas 500  # quick
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use wharf::core::cluster::ClusterBuilder;
use wharf::core::node::NodeConfig;
use wharf::core::store::ListOptions;

struct Args {
    nodes: usize,
    replicas: usize,
    timeout: Duration,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        nodes: 5_000,
        replicas: 10_000,
        timeout: Duration::from_secs(300),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--nodes" => args.nodes = value("--nodes")? as usize,
            "--replicas" => args.replicas = value("--replicas")? as usize,
            "--timeout-secs" => args.timeout = Duration::from_secs(value("--timeout-secs")?),
            "-h" | "--help" => {
                println!("usage: simulated_cluster [--nodes N] [--replicas N] [--timeout-secs S]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let t = Instant::now();
    let cluster = ClusterBuilder::new()
        .simulated_nodes(args.nodes, |i| NodeConfig::new(&format!("node-{i:05}")))
        .start()
        .await?;
    println!(
        "{} simulated nodes started in {:.2}s",
        args.nodes,
        t.elapsed().as_secs_f64()
    );

    let manifest = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: load}}
spec:
  replicas: {}
  selector: {{matchLabels: {{app: load}}}}
  template:
    metadata: {{labels: {{app: load}}}}
    spec:
      containers:
      - name: app
        image: busybox
        resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}
",
        args.replicas
    );
    let start = Instant::now();
    cluster.apply_str(&manifest, "load.yaml").await?;
    println!("deployment load: {} replicas applied", args.replicas);

    let pods = cluster.api::<Pod>("default");
    let mut last_print = Instant::now();
    let mut last_running = 0usize;
    let running = loop {
        let list = pods.list(&ListOptions::default()).await?;
        let running = list
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if last_print.elapsed() >= Duration::from_secs(1) || running >= args.replicas {
            let elapsed = start.elapsed().as_secs_f64();
            println!(
                "[{elapsed:>6.1}s] pods {:>6}  running {:>6}  (+{:>5} in the last interval)",
                list.len(),
                running,
                running - last_running.min(running)
            );
            last_print = Instant::now();
            last_running = running;
        }
        if running >= args.replicas {
            break running;
        }
        if start.elapsed() > args.timeout {
            bail!(
                "only {running} of {} pods Running after {:?}",
                args.replicas,
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let elapsed = start.elapsed();
    let nodes_used = pods
        .list(&ListOptions::default())
        .await?
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    println!(
        "{running} pods Running on {nodes_used} of {} nodes in {:.2}s: {:.0} pods/s",
        args.nodes,
        elapsed.as_secs_f64(),
        running as f64 / elapsed.as_secs_f64()
    );
    let t = Instant::now();
    cluster.shutdown().await;
    println!("shut down in {:.2}s", t.elapsed().as_secs_f64());
    Ok(())
}

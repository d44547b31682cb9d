//! Real mode (root): one node with the native runtime, the image store, the native bridge
//! network and the in-process hostpath CSI driver, everything under a private directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use wharf::core::clock::Clock;
use wharf::core::cluster::ClusterBuilder;
use wharf::core::node::NodeConfig;
use wharf::core::store::memory::MemoryStore;
use wharf::core::store::Store;
use wharf::linux::{LinuxNode, LinuxNodeOptions};

use crate::{support, Env};

pub use support::{http_get, is_root};

const NODE: &str = "quickstart";
const BRIDGE: &str = "wq0";
const SUBNET: &str = "10.213.0.0/24";
/// The name `app.yaml` uses.
const IMAGE: &str = "busybox:latest";

/// Runs the story on a real node.
pub async fn run(started: Instant, image: Option<PathBuf>) -> Result<()> {
    let base = PathBuf::from(format!("/tmp/wharf-quickstart-{}", std::process::id()));
    println!(
        "mode: real node (native runtime, bridge {BRIDGE} {SUBNET}, hostpath CSI driver) under {}",
        base.display()
    );
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        bail!("a network interface named {BRIDGE} exists already (a previous run?); remove it with `ip link del {BRIDGE}`");
    }
    let result = on_node(started, &base, image).await;
    let cleanup = support::check_nothing_left(&base, BRIDGE);
    match (result, cleanup) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e),
    }
}

async fn on_node(started: Instant, base: &Path, image: Option<PathBuf>) -> Result<()> {
    let mut options = LinuxNodeOptions::under(NODE, base.join("data"), base.join("run"));
    options.bridge.name = "wharf-quickstart".into();
    options.bridge.bridge = BRIDGE.into();
    options.bridge.subnets = vec![SUBNET.parse().context("subnet")?];
    let clock = Clock::default();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::with_clock(clock));
    let node = LinuxNode::start(store.clone(), &options).await?;
    let outcome = with_node(started, base, &node, store, clock, image).await;
    let shutdown = node.shutdown().await;
    outcome?;
    shutdown?;
    Ok(())
}

async fn with_node(
    started: Instant,
    base: &Path,
    node: &LinuxNode,
    store: Arc<dyn Store>,
    clock: Clock,
    image: Option<PathBuf>,
) -> Result<()> {
    let t = Instant::now();
    let source = support::obtain_busybox(
        base,
        &node.images,
        node.backends.images.as_ref(),
        image,
        IMAGE,
    )
    .await?;
    println!(
        "image: {IMAGE} {source} ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    let mut config = NodeConfig::new(NODE);
    config.root_dir = base.join("data/node");
    config.pod_cidr = Some(SUBNET.to_string());
    let cluster = ClusterBuilder::new()
        .store(store)
        .clock(clock)
        .node(config, node.backends.clone())
        .start()
        .await?;
    let env = Env {
        cluster,
        runtime: node.backends.runtime.clone(),
        http: true,
        sim_network: None,
        started,
    };
    let mut result = crate::story(&env).await;
    if result.is_ok() {
        let brif = Path::new("/sys/class/net").join(BRIDGE).join("brif");
        let ports: Vec<String> = std::fs::read_dir(&brif)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if ports.is_empty() {
            println!("  no veth left on {BRIDGE}");
        } else {
            result = Err(anyhow::anyhow!("veths left on {BRIDGE}: {ports:?}"));
        }
    }
    if result.is_err() {
        // Leave nothing behind even when a step failed: delete the apps, wait for the pods.
        let _ = crate::delete_all(&env).await;
    }
    env.cluster.shutdown().await;
    result
}

//! Real mode (root): one node with the native runtime, the image store, the native bridge
//! network and the in-process hostpath CSI driver, everything under a private directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf::core::backend::image::PullOptions;
use wharf::core::clock::Clock;
use wharf::core::cluster::ClusterBuilder;
use wharf::core::node::NodeConfig;
use wharf::core::store::memory::MemoryStore;
use wharf::core::store::Store;
use wharf::image::build::{build, BuildOptions};
use wharf::image::{layout, ImageStore};
use wharf::linux::{LinuxNode, LinuxNodeOptions};

use crate::Env;

const NODE: &str = "quickstart";
const BRIDGE: &str = "wq0";
const SUBNET: &str = "10.213.0.0/24";
/// The name `app.yaml` uses.
const IMAGE: &str = "busybox:latest";

/// `true` when the effective user is root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `GET /` over HTTP/1.0; the body.
pub async fn http_get(addr: SocketAddr) -> Result<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: quickstart\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .with_context(|| format!("GET http://{addr}/ timed out"))?
        .with_context(|| format!("GET http://{addr}/"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        bail!("GET http://{addr}/ answered {:?}", head.lines().next());
    }
    Ok(body.to_string())
}

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
    let cleanup = cleanup(&base);
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
    let source = obtain_image(base, node, image).await?;
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

async fn obtain_image(base: &Path, node: &LinuxNode, given: Option<PathBuf>) -> Result<String> {
    let images: &ImageStore = &node.images;
    if let Some(path) = given {
        let imported = layout::import(images, &path)
            .with_context(|| format!("importing {}", path.display()))?;
        let first = imported.first().context("the archive holds no image")?;
        images.tag(&first.id.to_string(), IMAGE)?;
        return Ok(format!("imported from {}", path.display()));
    }
    println!("image: no --image given; trying a pull of busybox (15s limit)");
    let pull = tokio::time::timeout(
        Duration::from_secs(15),
        node.backends.images.pull(IMAGE, &PullOptions::default()),
    )
    .await;
    match pull {
        Ok(Ok(_)) => return Ok("pulled from its registry".to_string()),
        Ok(Err(e)) => println!("image: pull failed: {e}"),
        Err(_) => println!("image: pull timed out"),
    }
    let busybox = Path::new("/bin/busybox");
    let static_binary = std::fs::read(busybox)
        .ok()
        .is_some_and(|b| is_static_elf64(&b));
    if !static_binary {
        bail!("no image: give one with --image <OCI layout or tarball>, allow a registry pull, or install busybox-static (apt-get install busybox-static) so the quickstart can build one");
    }
    let context = base.join("build");
    std::fs::create_dir_all(&context)?;
    std::fs::copy(busybox, context.join("busybox"))?;
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"sh\"]\n",
    )?;
    build(
        images,
        &BuildOptions {
            context: context.clone(),
            tags: vec![IMAGE.to_string()],
            ..BuildOptions::default()
        },
    )
    .context("building an image from /bin/busybox")?;
    std::fs::remove_dir_all(&context)?;
    Ok("built from the host's static /bin/busybox (FROM scratch + COPY)".to_string())
}

/// An ELF64 executable without a PT_INTERP program header (no dynamic loader needed).
fn is_static_elf64(b: &[u8]) -> bool {
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(|a| u64::from_le_bytes(a) as usize)
    };
    if !b.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|t| t != 3))
}

/// Checks that nothing is left (mounts, veths, the bridge) and removes the directory.
fn cleanup(base: &Path) -> Result<()> {
    let mut problems = Vec::new();
    let prefix = base.to_string_lossy().into_owned();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    if !mounts.is_empty() {
        problems.push(format!("mounts left: {mounts:?}"));
    }
    let veths: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == BRIDGE)
        .collect();
    if !veths.is_empty() {
        problems.push(format!("bridge left: {veths:?}"));
    }
    if mounts.is_empty() {
        if let Err(e) = std::fs::remove_dir_all(base) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!("removing {}: {e}", base.display()));
            }
        }
    }
    if problems.is_empty() {
        println!(
            "  nothing left: no mounts under {}, bridge {BRIDGE} gone, directory removed",
            base.display()
        );
        Ok(())
    } else {
        bail!("teardown left things behind: {}", problems.join("; "))
    }
}

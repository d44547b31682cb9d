//! `docker run -d -p 8080:80 -v data:/data busybox httpd …`, with Wharf's crates used
//! directly, without a cluster: the native runtime, the image store, the native bridge
//! network and a named volume on the built-in hostpath CSI driver.
//!
//! ```text
//! sudo cargo run --example run_container                       # image from a pull or /bin/busybox
//! sudo cargo run --example run_container -- --image busybox.tar --port 8080
//! ```
//!
//! It runs the container, fetches its page through the published host port, reads its logs,
//! stops and removes it, and checks that nothing is left (mounts, the bridge, files). The
//! volume's content is written by the container and read back from the host. Needs root.

#[path = "support/mod.rs"]
mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use wharf::core::backend::image::ImageService;
use wharf::core::backend::network::{AttachRequest, PortMapping};
use wharf::core::backend::runtime::{
    ContainerConfig, ContainerImage, ContainerState, LogOptions, Mount, Propagation, SandboxConfig,
};
use wharf::core::backend::{ContainerRuntime, NetworkPlugin};
use wharf::image::registry::RegistryConfig;
use wharf::image::{ImageStore, ImageStoreService};
use wharf::network::{BridgeConfig, BridgeNetwork};
use wharf::runtime::{LinuxRuntime, LinuxRuntimeOptions};
use wharf::storage::named::NamedVolumes;
use wharf::storage::server::RunningDriver;
use wharf::storage::{ClientOptions, CsiPlugin, HostPathConfig, HostPathDriver};

const IMAGE: &str = "busybox:latest";
const BRIDGE: &str = "wr0";
const SUBNET: &str = "10.214.0.0/24";
const NODE: &str = "run-container";
const VOLUME: &str = "data";
const PAGE: &str = "hello from a wharf container";

struct Args {
    image: Option<PathBuf>,
    port: u16,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        image: None,
        port: 8080,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--image" => args.image = Some(it.next().context("--image needs a path")?.into()),
            "--port" => {
                let p = it.next().context("--port needs a number")?;
                args.port = p
                    .parse()
                    .with_context(|| format!("--port {p:?}: expected a port number"))?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: run_container [--image <OCI layout or tarball>] [--port <host port>]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("run_container FAILED: {e:#}");
        std::process::exit(1);
    }
    println!("run_container: ok");
}

async fn run() -> Result<()> {
    let args = parse_args()?;
    if !support::is_root() {
        bail!("run_container makes namespaces, mounts and a bridge: run it as root");
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        bail!("a network interface named {BRIDGE} exists already (a previous run?); remove it with `ip link del {BRIDGE}`");
    }
    let base = PathBuf::from(format!("/tmp/wharf-run-container-{}", std::process::id()));
    let result = with_host(&base, args).await;
    let left = support::check_nothing_left(&base, BRIDGE);
    result.and(left)
}

/// The host's parts: runtime, images, network, volumes. Each is released even when a step
/// fails.
async fn with_host(base: &Path, args: Args) -> Result<()> {
    let runtime = LinuxRuntime::new(LinuxRuntimeOptions {
        root: base.join("run/runtime"),
        ..LinuxRuntimeOptions::default()
    })
    .await
    .context("starting the native runtime")?;
    let images =
        Arc::new(ImageStore::open(base.join("images")).context("opening the image store")?);
    let service = ImageStoreService::new(images.clone(), RegistryConfig::default())?;
    let source =
        support::obtain_busybox(base, &images, &service, args.image.clone(), IMAGE).await?;
    println!("image: {IMAGE} {source}");

    let network = BridgeNetwork::new(BridgeConfig {
        name: "wharf-run-container".into(),
        bridge: BRIDGE.into(),
        subnets: vec![SUBNET.parse().context("subnet")?],
        state_dir: base.join("network"),
        ..BridgeConfig::default()
    })?;

    let socket = base.join("csi.sock");
    let driver = HostPathDriver::new(HostPathConfig::new(NODE, base.join("csi-hostpath"))?)?;
    let csi = RunningDriver::spawn(driver, &socket)?;
    let volumes = async {
        let endpoint = format!("unix://{}", socket.display());
        let plugin = CsiPlugin::connect(&endpoint, ClientOptions::default()).await?;
        let volumes = NamedVolumes::open(Arc::new(plugin), NODE, base.join("volumes")).await?;
        anyhow::Ok(volumes)
    }
    .await;

    let outcome = match volumes {
        Ok(volumes) => {
            let logs = base.join("logs");
            let run =
                run_and_remove(&runtime, &service, &network, &volumes, &logs, args.port).await;
            // `docker volume rm data`: the container is gone, so the volume can go too.
            let removed = volumes.remove(VOLUME).await;
            run.and(removed.map_err(Into::into))
        }
        Err(e) => Err(e),
    };
    let teardown = network.teardown().await;
    let stopped = csi.stop().await;
    runtime.shutdown().await;
    outcome?;
    teardown?;
    stopped?;
    Ok(())
}

/// `docker run -d`, then `curl`, `docker logs`, `docker stop`, `docker rm`.
async fn run_and_remove(
    runtime: &LinuxRuntime,
    images: &ImageStoreService,
    network: &BridgeNetwork,
    volumes: &NamedVolumes,
    log_directory: &Path,
    host_port: u16,
) -> Result<()> {
    let image = images
        .image_status(IMAGE)
        .await?
        .with_context(|| format!("image {IMAGE} vanished from the store"))?;
    let volume = volumes.create(VOLUME, Default::default(), 0).await?;
    println!("volume: {} on driver {}", volume.name, volume.driver);

    let sandbox_id = runtime
        .run_sandbox(&SandboxConfig {
            name: "web".into(),
            namespace: "default".into(),
            uid: format!("run-container-{}", std::process::id()),
            hostname: "web".into(),
            log_directory: Some(log_directory.to_path_buf()),
            ..SandboxConfig::default()
        })
        .await?;
    let sandbox = runtime.sandbox_status(&sandbox_id).await?;
    let attach = AttachRequest {
        container_id: sandbox_id.clone(),
        netns: sandbox
            .netns_path
            .clone()
            .context("the sandbox has no netns")?,
        pod_namespace: "default".into(),
        pod_name: "web".into(),
        pod_uid: sandbox.uid.clone(),
        port_mappings: vec![PortMapping {
            host_port,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: None,
        }],
        ..AttachRequest::default()
    };
    let result = match NetworkPlugin::attach(network, &attach).await {
        Ok(attachment) => {
            let ip = attachment.primary_ip();
            println!(
                "sandbox {}: ip {}, host port {host_port} -> 80",
                short(&sandbox_id),
                ip.map(|i| i.to_string()).unwrap_or_default()
            );
            let run = in_sandbox(runtime, volumes, &sandbox_id, &image, ip, host_port).await;
            run.and(
                NetworkPlugin::detach(network, &attach)
                    .await
                    .map_err(Into::into),
            )
        }
        Err(e) => Err(e.into()),
    };
    let stopped = runtime.stop_sandbox(&sandbox_id).await;
    let removed = runtime.remove_sandbox(&sandbox_id).await;
    result?;
    stopped?;
    removed?;
    println!("sandbox {} removed", short(&sandbox_id));
    Ok(())
}

/// The container's life inside its sandbox; it holds the volume while it exists.
async fn in_sandbox(
    runtime: &LinuxRuntime,
    volumes: &NamedVolumes,
    sandbox_id: &str,
    image: &wharf::core::backend::image::ImageInfo,
    ip: Option<IpAddr>,
    host_port: u16,
) -> Result<()> {
    let holder = format!("{sandbox_id}/web");
    let mountpoint = volumes.acquire(VOLUME, &holder).await?;
    let mut env: Vec<(String, String)> = image.config.env.clone();
    env.push(("PAGE".into(), PAGE.into()));
    let config = ContainerConfig {
        name: "web".into(),
        image: Some(ContainerImage {
            reference: IMAGE.into(),
            id: image.id.clone(),
            rootfs: image.rootfs.clone(),
        }),
        command: vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            "echo \"$PAGE\" > /data/index.html && echo serving /data on :80 && exec /bin/busybox httpd -f -p 80 -h /data".into(),
        ],
        env,
        mounts: vec![Mount {
            container_path: "/data".into(),
            host_path: mountpoint.clone(),
            readonly: false,
            propagation: Propagation::Private,
        }],
        log_path: Some("web.log".into()),
        ..ContainerConfig::default()
    };
    let result = match runtime.create_container(sandbox_id, &config).await {
        Ok(id) => {
            let served = serve_and_check(runtime, &id, ip, host_port, &mountpoint).await;
            // httpd is the container's pid 1 and has no SIGTERM handler, so the kernel ignores
            // SIGTERM for it and the stop ends in SIGKILL after the grace period, exactly as
            // `docker stop -t 2` would.
            let stopped = runtime.stop_container(&id, Duration::from_secs(2)).await;
            let status = runtime.container_status(&id).await;
            let removed = runtime.remove_container(&id).await;
            served
                .and(stopped.map_err(Into::into))
                .and_then(|()| {
                    let s = status?;
                    println!(
                        "container {} stopped (exit code {}), removed",
                        short(&id),
                        s.exit_code.map(|c| c.to_string()).unwrap_or("?".into())
                    );
                    anyhow::Ok(())
                })
                .and(removed.map_err(Into::into))
        }
        Err(e) => Err(e.into()),
    };
    let released = volumes.release(VOLUME, &holder).await;
    result.and(released.map_err(Into::into))
}

async fn serve_and_check(
    runtime: &LinuxRuntime,
    id: &str,
    ip: Option<IpAddr>,
    host_port: u16,
    mountpoint: &Path,
) -> Result<()> {
    runtime.start_container(id).await?;
    println!("container {} started", short(id));
    let addr = SocketAddr::from(([127, 0, 0, 1], host_port));
    let mut last = None;
    for _ in 0..50 {
        match support::http_get(addr).await {
            Ok(page) => {
                last = None;
                println!("GET http://{addr}/ -> {:?}", page.trim());
                if page.trim() != PAGE {
                    bail!("the page is {page:?}, expected {PAGE:?}");
                }
                break;
            }
            Err(e) => last = Some(e),
        }
        if runtime.container_status(id).await?.state != ContainerState::Running {
            bail!("the container is not running any more");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(e) = last {
        return Err(e.context(format!(
            "the page never came through the host port (container ip {ip:?})"
        )));
    }
    let on_host = std::fs::read_to_string(mountpoint.join("index.html"))
        .with_context(|| format!("reading the volume at {}", mountpoint.display()))?;
    println!(
        "volume {VOLUME} on the host ({}) holds index.html: {:?}",
        mountpoint.display(),
        on_host.trim()
    );
    let mut logs = runtime.logs(id, &LogOptions::default()).await?;
    let mut lines = Vec::new();
    while let Some(line) = logs.next().await {
        lines.push(String::from_utf8_lossy(&line?.message).into_owned());
    }
    println!("logs: {lines:?}");
    if !lines.iter().any(|l| l.contains("serving /data")) {
        bail!("the container's log does not hold its greeting: {lines:?}");
    }
    Ok(())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

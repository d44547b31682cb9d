//! Wharf quickstart: an embedded cluster runs `app.yaml`, and every step is checked.
//!
//! ```text
//! cargo run --example quickstart                  # real containers when root, else simulated
//! cargo run --example quickstart -- --simulated   # simulated backends, any user
//! cargo run --example quickstart -- --image busybox.tar   # real mode, image from an OCI layout/tarball
//! ```
//!
//! The story: the manifest is applied; pods go Pending → Running → Ready (a live table is
//! printed as they change); the page is fetched through the host port; one container is
//! killed and comes back with restartCount 1; the Deployment scales to 5; a rolling update
//! changes the page; everything is deleted and nothing is left. Any step that does not behave
//! ends the program with a non-zero exit and says what went wrong.

mod real;
mod sim;
#[path = "../support/mod.rs"]
mod support;
mod table;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use wharf::core::backend::runtime::ContainerFilter;
use wharf::core::backend::ContainerRuntime;
use wharf::core::cluster::{simulated_backends, Cluster, ClusterBuilder};
use wharf::core::node::NodeConfig;
use wharf::core::sim::{SimNetwork, SimRuntime, SimVolumes};
use wharf::core::store::{DeleteOptions, ListOptions};

/// The application, applied at the start.
pub const APP: &str = include_str!("app.yaml");
/// The port `front` maps to the host (see `app.yaml`).
pub const HOST_PORT: u16 = 18080;
const NS: &str = "default";

/// What the steps need from the node, real or simulated.
pub struct Env {
    /// The cluster.
    pub cluster: Cluster,
    /// The node's runtime (to kill a container behind the node agent's back).
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Real mode: HTTP goes over the network. Simulated: the network is a record.
    pub http: bool,
    /// Simulated mode: the network, to show the host port it recorded.
    pub sim_network: Option<Arc<SimNetwork>>,
    /// Start of the run.
    pub started: Instant,
}

impl Env {
    /// Prints a step header with the elapsed time.
    pub fn step(&self, what: &str) {
        println!(
            "\n[{:>5.1}s] ==> {what}",
            self.started.elapsed().as_secs_f64()
        );
    }
}

struct Args {
    simulated: bool,
    image: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        simulated: false,
        image: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--simulated" => args.simulated = true,
            "--image" => {
                args.image = Some(it.next().context("--image needs a path")?.into());
            }
            "-h" | "--help" => {
                println!("usage: quickstart [--simulated] [--image <OCI layout dir or tarball>]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    match run(started).await {
        Ok(()) => println!(
            "\nquickstart: every step behaved ({:.1}s)",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("\nquickstart FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(started: Instant) -> Result<()> {
    let args = parse_args()?;
    let root = real::is_root();
    if args.simulated || !root {
        if !args.simulated {
            println!(
                "not running as root: using simulated backends (run as root for real containers)"
            );
        }
        return simulated(started).await;
    }
    real::run(started, args.image).await
}

async fn simulated(started: Instant) -> Result<()> {
    println!("mode: simulated node (SimRuntime, SimNetwork, a simulated CSI driver named hostpath.csi.wharf.dev)");
    let node = "node-0";
    let clock = wharf::core::clock::Clock::default();
    let runtime = Arc::new(SimRuntime::new(clock));
    let network = Arc::new(SimNetwork::new("10.213.0.0/24")?);
    let mut backends = simulated_backends(node, "10.213.0.0/24", clock)?;
    backends.runtime = runtime.clone();
    backends.network = network.clone();
    backends.volume_plugins = vec![Arc::new(SimVolumes::new(
        "hostpath.csi.wharf.dev",
        node,
        1 << 30,
    ))];
    let dir = std::env::temp_dir().join(format!("wharf-quickstart-sim-{}", std::process::id()));
    let store: Arc<dyn wharf::core::store::Store> =
        Arc::new(wharf::core::store::memory::MemoryStore::with_clock(clock));
    backends.in_tree_volumes = Some(Arc::new(sim::FileVolumes::new(store.clone())));
    let mut config = NodeConfig::new(node);
    config.root_dir = dir.clone();
    let cluster = ClusterBuilder::new()
        .store(store)
        .clock(clock)
        .node(config, backends)
        .start()
        .await?;
    let env = Env {
        cluster,
        runtime,
        http: false,
        sim_network: Some(network),
        started,
    };
    let result = story(&env).await;
    env.cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The steps, the same for both modes.
pub async fn story(env: &Env) -> Result<()> {
    let printer = table::PodTable::start(env.cluster.api::<Pod>(NS));
    let result = steps(env).await;
    printer.stop().await;
    result
}

async fn steps(env: &Env) -> Result<()> {
    env.step("apply examples/quickstart/app.yaml");
    let applied = env.cluster.apply_str(APP, "app.yaml").await?;
    for a in &applied {
        println!("  {a}");
    }

    env.step("wait: claim Bound, 3 web pods + 1 front pod Running and Ready");
    wait_claim_bound(env).await?;
    wait_ready(env, "web", 3, Duration::from_secs(40)).await?;
    wait_ready(env, "front", 1, Duration::from_secs(20)).await?;

    env.step(&format!("request the page through host port {HOST_PORT}"));
    let page = fetch_front(env).await?;
    if env.http && !page.contains("version 1") {
        bail!("the page through the host port is not version 1: {page:?}");
    }

    env.step("kill one web container (SIGKILL, behind the node agent's back)");
    let pods = ready_pods(env, "web").await?;
    let victim = pods.first().context("no web pod")?;
    let name = victim.metadata.name.clone().unwrap_or_default();
    let id = container_id(victim).context("the pod has no container id")?;
    env.runtime.kill_container(&id, 9).await?;
    println!("  killed {name}/httpd ({id})");
    wait_for(
        env,
        "the killed container restarted and ready (restartCount 1)",
        Duration::from_secs(30),
        || async {
            let pod = env
                .cluster
                .api::<Pod>(NS)
                .get_opt(&name)
                .await
                .ok()
                .flatten();
            pod.is_some_and(|p| restart_count(&p) == 1 && is_ready(&p))
        },
    )
    .await?;

    env.step("scale web 3 -> 5");
    update_deployment(env, "web", |d| {
        d.spec.as_mut().expect("spec").replicas = Some(5);
    })
    .await?;
    wait_ready(env, "web", 5, Duration::from_secs(30)).await?;

    env.step("rolling update: web serves ConfigMap page-v2");
    env.cluster
        .apply_str(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: page-v2}\ndata:\n  index.html: \"<h1>Hello from Wharf</h1><p>version 2</p>\\n\"\n",
            "page-v2",
        )
        .await?;
    update_deployment(env, "web", |d| {
        let spec = d.spec.as_mut().expect("spec");
        let pod = spec.template.spec.as_mut().expect("pod spec");
        for v in pod.volumes.iter_mut().flatten() {
            if let Some(cm) = v.config_map.as_mut() {
                cm.name = "page-v2".to_string();
            }
        }
    })
    .await?;
    wait_rolled_out(env, "web", 5).await?;
    check_pages(env, "version 2").await?;

    env.step("teardown: delete everything, wait for it to be gone");
    delete_all(env).await?;
    let (containers, sandboxes) = (
        env.runtime
            .list_containers(&ContainerFilter::default())
            .await?
            .len(),
        env.runtime.list_sandboxes().await?.len(),
    );
    if containers + sandboxes > 0 {
        bail!("the runtime still holds {containers} containers and {sandboxes} sandboxes");
    }
    println!("  no pods, no volume, no containers, no sandboxes left");
    Ok(())
}

/// Deletes the Deployments and the claim and waits until the pods and the volume are gone.
pub async fn delete_all(env: &Env) -> Result<()> {
    let deployments = env.cluster.api::<Deployment>(NS);
    for d in ["web", "front"] {
        let _ = deployments.delete(d, &DeleteOptions::default()).await;
    }
    wait_for(env, "every pod gone", Duration::from_secs(30), || async {
        env.cluster
            .api::<Pod>(NS)
            .list(&ListOptions::default())
            .await
            .is_ok_and(|l| l.is_empty())
    })
    .await?;
    let _ = env
        .cluster
        .api::<PersistentVolumeClaim>(NS)
        .delete("data", &DeleteOptions::default())
        .await;
    wait_for(
        env,
        "the volume reclaimed",
        Duration::from_secs(20),
        || async {
            env.cluster
                .api_all::<PersistentVolume>()
                .list(&ListOptions::default())
                .await
                .is_ok_and(|l| l.is_empty())
        },
    )
    .await
}

async fn wait_for<F, Fut>(env: &Env, what: &str, limit: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            println!("  ok: {what} ({:.1}s)", start.elapsed().as_secs_f64());
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = env;
    bail!("timed out after {limit:?} waiting for: {what}")
}

async fn wait_claim_bound(env: &Env) -> Result<()> {
    wait_for(env, "claim data Bound", Duration::from_secs(20), || async {
        let c = env
            .cluster
            .api::<PersistentVolumeClaim>(NS)
            .get_opt("data")
            .await
            .ok()
            .flatten();
        c.is_some_and(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
    })
    .await
}

fn pods_of<'a>(pods: &'a [Pod], app: &str) -> impl Iterator<Item = &'a Pod> {
    let app = app.to_string();
    pods.iter().filter(move |p| {
        p.metadata.labels.as_ref().and_then(|l| l.get("app")) == Some(&app)
            && p.metadata.deletion_timestamp.is_none()
    })
}

async fn ready_pods(env: &Env, app: &str) -> Result<Vec<Pod>> {
    let list = env
        .cluster
        .api::<Pod>(NS)
        .list(&ListOptions::default())
        .await?;
    let pods: Vec<Pod> = list.iter().map(|p| p.to_owned_value()).collect();
    Ok(pods_of(&pods, app)
        .filter(|p| is_ready(p))
        .cloned()
        .collect())
}

async fn wait_ready(env: &Env, app: &str, n: usize, limit: Duration) -> Result<()> {
    wait_for(env, &format!("{n} {app} pods Ready"), limit, || async {
        let list = env
            .cluster
            .api::<Pod>(NS)
            .list(&ListOptions::default())
            .await;
        let Ok(list) = list else { return false };
        let pods: Vec<Pod> = list.iter().map(|p| p.to_owned_value()).collect();
        let all: Vec<&Pod> = pods_of(&pods, app).collect();
        all.len() == n && all.iter().all(|p| is_ready(p))
    })
    .await
}

async fn wait_rolled_out(env: &Env, name: &str, n: i32) -> Result<()> {
    wait_for(
        env,
        &format!("{name}: {n} updated replicas, all ready, no old ones"),
        Duration::from_secs(40),
        || async {
            let d = env
                .cluster
                .api::<Deployment>(NS)
                .get_opt(name)
                .await
                .ok()
                .flatten();
            let Some(d) = d else { return false };
            let generation = d.metadata.generation;
            let Some(s) = d.status.as_ref() else {
                return false;
            };
            s.observed_generation == generation
                && s.updated_replicas == Some(n)
                && s.ready_replicas == Some(n)
                && s.replicas == Some(n)
        },
    )
    .await
}

/// `true` when the pod's Ready condition is True.
pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Sum of the restart counts of the pod's containers.
pub fn restart_count(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

fn container_id(p: &Pod) -> Option<String> {
    let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
    let id = statuses.first()?.container_id.as_ref()?;
    Some(
        id.split_once("://")
            .map_or(id.as_str(), |(_, id)| id)
            .to_string(),
    )
}

async fn update_deployment(env: &Env, name: &str, change: impl Fn(&mut Deployment)) -> Result<()> {
    let api = env.cluster.api::<Deployment>(NS);
    for _ in 0..10 {
        let mut d = api.get(name).await?.to_owned_value();
        change(&mut d);
        match api.update(d).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retryable() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("could not update deployment {name}: conflicts kept coming")
}

async fn fetch_front(env: &Env) -> Result<String> {
    if env.http {
        let page = real::http_get(([127, 0, 0, 1], HOST_PORT).into()).await?;
        println!("  GET http://127.0.0.1:{HOST_PORT}/ -> {:?}", page.trim());
        return Ok(page);
    }
    let mapped = env
        .sim_network
        .as_ref()
        .map(|n| n.host_ports())
        .unwrap_or_default();
    if !mapped
        .iter()
        .any(|m| m.host_port == HOST_PORT && m.container_port == 80)
    {
        bail!("the simulated network recorded no mapping of host port {HOST_PORT}: {mapped:?}");
    }
    println!("  simulated network: host port {HOST_PORT} -> container port 80 recorded (no real HTTP in simulated mode)");
    Ok(String::new())
}

async fn check_pages(env: &Env, want: &str) -> Result<()> {
    let pods = ready_pods(env, "web").await?;
    for p in &pods {
        let name = p.metadata.name.clone().unwrap_or_default();
        if env.http {
            let ip = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .context("a web pod without an IP")?;
            let page = real::http_get((ip.parse::<std::net::IpAddr>()?, 80).into()).await?;
            if !page.contains(want) {
                bail!("pod {name} ({ip}) serves {page:?}, not {want}");
            }
            println!("  GET http://{ip}/ ({name}) -> {:?}", page.trim());
        } else {
            let uses_v2 = p
                .spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .is_some_and(|v| {
                    v.iter()
                        .any(|v| v.config_map.as_ref().is_some_and(|c| c.name == "page-v2"))
                });
            if !uses_v2 {
                bail!("pod {name} does not mount page-v2 after the rollout");
            }
            println!("  {name} mounts page-v2");
        }
    }
    Ok(())
}

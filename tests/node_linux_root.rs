//! The node agent on the native runtime (needs root; skips with a message otherwise): a
//! busybox pod with an exec liveness probe, a tcpSocket readiness probe and a crashing
//! container goes through the same status transitions as on the simulated runtime.
//!
//! Everything lives under a private directory, a private bridge and subnet; the pod is
//! deleted, the agent stopped and the node's backends shut down whether the checks pass or
//! not, and the test then checks that no mount, bridge or directory is left.

#[path = "../examples/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, ExecAction, Pod, PodSpec, PodStatus, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use wharf::core::clock::Clock;
use wharf::core::node::{NodeAgent, NodeConfig, NodeHandle};
use wharf::core::store::memory::MemoryStore;
use wharf::core::store::{Api, DeleteOptions, Store};
use wharf::linux::{LinuxNode, LinuxNodeOptions};

const NODE: &str = "node-it";
const BRIDGE: &str = "wnit0";
const SUBNET: &str = "10.217.0.0/24";
const IMAGE: &str = "busybox-it:1";
const POD: &str = "probed";
const BUSYBOX: &str = "/bin/busybox";

fn sh(script: &str) -> Vec<String> {
    vec![BUSYBOX.into(), "sh".into(), "-c".into(), script.into()]
}

fn the_pod() -> Pod {
    let web = Container {
        name: "web".into(),
        image: Some(IMAGE.into()),
        image_pull_policy: Some("Never".into()),
        command: Some(sh(
            "/bin/busybox touch /healthy && exec /bin/busybox httpd -f -p 8080 -h /",
        )),
        liveness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![BUSYBOX.into(), "cat".into(), "/healthy".into()]),
            }),
            period_seconds: Some(1),
            failure_threshold: Some(1),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(8080),
                host: None,
            }),
            period_seconds: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    };
    let crash = Container {
        name: "crash".into(),
        image: Some(IMAGE.into()),
        image_pull_policy: Some("Never".into()),
        command: Some(sh("exit 3")),
        ..Default::default()
    };
    let mut pod = Pod::default();
    pod.metadata.name = Some(POD.into());
    pod.metadata.namespace = Some("default".into());
    pod.spec = Some(PodSpec {
        node_name: Some(NODE.into()),
        restart_policy: Some("Always".into()),
        termination_grace_period_seconds: Some(2),
        containers: vec![web, crash],
        ..Default::default()
    });
    pod
}

fn cstatus<'a>(st: &'a PodStatus, name: &str) -> Option<&'a ContainerStatus> {
    st.container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
}

fn condition(st: &PodStatus, type_: &str) -> Option<String> {
    st.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn waiting_reason(cs: &ContainerStatus) -> Option<&str> {
    cs.state.as_ref()?.waiting.as_ref()?.reason.as_deref()
}

fn last_exit(cs: &ContainerStatus) -> Option<(i32, String)> {
    let t = cs.last_state.as_ref()?.terminated.as_ref()?;
    Some((t.exit_code, t.reason.clone().unwrap_or_default()))
}

/// Polls the pod's status until `check` returns `Some`, or fails after `limit` with the
/// last status seen.
async fn wait_for<T>(
    pods: &Api<Pod>,
    what: &str,
    limit: Duration,
    mut check: impl FnMut(&PodStatus) -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Some(pod) = pods.get_opt(POD).await? {
            let st = pod.status.clone().unwrap_or_default();
            if let Some(v) = check(&st) {
                println!("  ok: {what} ({:.1}s)", start.elapsed().as_secs_f64());
                return Ok(v);
            }
            last = Some(st);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}; last status: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The checks, on a running agent.
async fn transitions(node: &LinuxNode, store: &Arc<dyn Store>) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(store.clone(), "default");
    pods.create(the_pod()).await?;

    wait_for(
        &pods,
        "web Running and Ready",
        Duration::from_secs(60),
        |st| {
            let web = cstatus(st, "web")?;
            let running = web.state.as_ref()?.running.is_some();
            (running && web.ready && web.started == Some(true)).then_some(())
        },
    )
    .await?;

    // The crashing container: Error, then CrashLoopBackOff with a growing restart count;
    // its last state says how it ended.
    let mut saw_error = false;
    let restarts = wait_for(
        &pods,
        "crash in CrashLoopBackOff after 2 restarts, last exit 3 (Error), pod Running, ContainersReady False",
        Duration::from_secs(60),
        |st| {
            let crash = cstatus(st, "crash")?;
            let terminated = crash.state.as_ref()?.terminated.as_ref();
            if terminated.is_some_and(|t| t.exit_code == 3 && t.reason.as_deref() == Some("Error"))
            {
                saw_error = true;
            }
            if last_exit(crash) == Some((3, "Error".into())) {
                saw_error = true;
            }
            (waiting_reason(crash) == Some("CrashLoopBackOff")
                && crash.restart_count >= 2
                && last_exit(crash) == Some((3, "Error".into()))
                && st.phase.as_deref() == Some("Running")
                && condition(st, "ContainersReady").as_deref() == Some("False"))
            .then_some(crash.restart_count)
        },
    )
    .await?;
    if !saw_error {
        bail!("the crashing container never reported exit code 3 with reason Error");
    }
    wait_for(
        &pods,
        "crash restarted again (restartCount grows)",
        Duration::from_secs(40),
        |st| (cstatus(st, "crash")?.restart_count > restarts).then_some(()),
    )
    .await?;
    let st = pods.get(POD).await?.status.clone().unwrap_or_default();

    // The liveness probe fails once /healthy is gone: the container is restarted.
    let web = cstatus(&st, "web").context("no web status")?;
    let id = web
        .container_id
        .as_deref()
        .and_then(|id| id.split_once("://").map(|(_, id)| id.to_string()))
        .context("web has no container id")?;
    let before = web.restart_count;
    let out = exec(node, &id, &[BUSYBOX, "rm", "/healthy"]).await?;
    if out != 0 {
        bail!("rm /healthy in web exited {out}");
    }
    wait_for(
        &pods,
        "web restarted by its liveness probe and Ready again",
        Duration::from_secs(60),
        |st| {
            let web = cstatus(st, "web")?;
            let running = web.state.as_ref()?.running.is_some();
            (web.restart_count == before + 1 && running && web.ready && last_exit(web).is_some())
                .then_some(())
        },
    )
    .await?;
    Ok(())
}

/// Runs a command in a container (10 s limit); its exit code.
async fn exec(node: &LinuxNode, id: &str, command: &[&str]) -> Result<i32> {
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let out = node
        .backends
        .runtime
        .exec_sync(id, &command, Duration::from_secs(10))
        .await
        .with_context(|| format!("exec {command:?} in {id}"))?;
    Ok(out.exit_code)
}

/// Deletes the pod and waits until it is gone (the agent tears its sandbox down first).
async fn delete_pod(store: &Arc<dyn Store>) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(store.clone(), "default");
    match pods.delete(POD, &DeleteOptions::default()).await {
        Ok(_) => {}
        Err(wharf::core::store::StoreError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let start = Instant::now();
    while pods.get_opt(POD).await?.is_some() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("pod {POD} still exists 60 s after its deletion");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "  ok: pod deleted and gone ({:.1}s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn start_agent(node: &LinuxNode, store: &Arc<dyn Store>, base: &Path) -> Result<NodeHandle> {
    let mut config = NodeConfig::new(NODE);
    config.root_dir = base.join("data/node");
    config.pod_cidr = Some(SUBNET.into());
    let agent = NodeAgent::new(
        config,
        node.backends.clone(),
        store.clone(),
        Clock::default(),
    );
    Ok(agent.start().await?)
}

async fn on_node(base: &Path) -> Result<()> {
    let mut options = LinuxNodeOptions::under(NODE, base.join("data"), base.join("run"));
    options.bridge.name = "wharf-node-it".into();
    options.bridge.bridge = BRIDGE.into();
    options.bridge.subnets = vec![SUBNET.parse().context("subnet")?];
    let store: Arc<dyn Store> = Arc::new(MemoryStore::with_clock(Clock::default()));
    let node = LinuxNode::start(store.clone(), &options).await?;
    let outcome = async {
        support::build_from_host_busybox(base, &node.images, IMAGE)?;
        let agent = start_agent(&node, &store, base).await?;
        let checks = transitions(&node, &store).await;
        // Whatever happened: delete the pod (its containers, sandbox and attachment go with
        // it), then stop the agent.
        let deleted = delete_pod(&store).await;
        agent.shutdown().await;
        checks?;
        deleted
    }
    .await;
    let shutdown = node.shutdown().await;
    outcome?;
    shutdown?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_pod_probes_and_crash_loop_root() {
    if !support::is_root() {
        println!("skipped: needs root (the native runtime makes namespaces, mounts and a bridge)");
        return;
    }
    if !Path::new(BUSYBOX).exists() {
        println!("skipped: {BUSYBOX} is missing (apt-get install busybox-static)");
        return;
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        panic!("a network interface named {BRIDGE} exists already (a previous run?); remove it with `ip link del {BRIDGE}`");
    }
    let base = PathBuf::from(format!("/tmp/wharf-node-it-{}", std::process::id()));
    let result = on_node(&base).await;
    let left = support::check_nothing_left(&base, BRIDGE);
    if let Err(e) = result {
        panic!("{e:#}");
    }
    if let Err(e) = left {
        panic!("{e:#}");
    }
}

//! Pod volumes on a real node (root): the native runtime, the hostpath CSI driver and the
//! in-tree sources, checked from inside running busybox containers.
//!
//! - a PVC's published volume is seen by the pod's container, and a second pod using the
//!   claim read-only sees the data but cannot write;
//! - a secret's files carry the requested mode, on a tmpfs;
//! - a ConfigMap update reaches the running container (atomically swapped files), without a
//!   restart;
//! - after the pods are deleted nothing is left: no mounts under the node's directory.

#![allow(missing_docs)]
#[path = "../examples/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod};
use wharf::core::backend::ContainerRuntime;
use wharf::core::clock::Clock;
use wharf::core::cluster::{Cluster, ClusterBuilder};
use wharf::core::node::NodeConfig;
use wharf::core::store::memory::MemoryStore;
use wharf::core::store::{DeleteOptions, Store};
use wharf::linux::{LinuxNode, LinuxNodeOptions};

const NODE: &str = "volumes-root";
const BRIDGE: &str = "wv0";
const SUBNET: &str = "10.215.0.0/24";

const APP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: "hello v1", color: "blue v1"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: "s3cret"}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: hostpath}
provisioner: hostpath.csi.wharf.dev
reclaimPolicy: Delete
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: hostpath
  resources: {requests: {storage: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: Never
    command: [/bin/busybox, sh, -c, "echo written-by-writer > /data/note && exec sleep 3600"]
    volumeMounts:
    - {name: config, mountPath: /config}
    - {name: secret, mountPath: /secret}
    - {name: data, mountPath: /data}
  volumes:
  - name: config
    configMap: {name: settings}
  - name: secret
    secret: {secretName: creds, defaultMode: 0400}
  - name: data
    persistentVolumeClaim: {claimName: data}
"#;

const READER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: Never
    command: [/bin/busybox, sleep, "3600"]
    volumeMounts:
    - {name: data, mountPath: /data}
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: data, readOnly: true}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_see_their_volumes_and_configmap_updates() {
    if !support::is_root() {
        eprintln!("skipping: real mounts and containers need root");
        return;
    }
    assert!(
        !Path::new("/sys/class/net").join(BRIDGE).exists(),
        "a network interface named {BRIDGE} exists already (a previous run?)"
    );
    let base = PathBuf::from(format!("/tmp/wharf-pod-volumes-{}", std::process::id()));
    let mut options = LinuxNodeOptions::under(NODE, base.join("data"), base.join("run"));
    options.bridge.name = "wharf-pod-volumes".into();
    options.bridge.bridge = BRIDGE.into();
    options.bridge.subnets = vec![SUBNET.parse().unwrap()];
    let clock = Clock::default();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::with_clock(clock));
    let node = LinuxNode::start(store.clone(), &options).await.unwrap();

    let outcome = on_node(&base, &node, store, clock).await;
    let shutdown = node.shutdown().await;
    let left = support::check_nothing_left(&base, BRIDGE);
    if let Err(e) = outcome {
        panic!("{e:#}");
    }
    shutdown.unwrap();
    left.unwrap();
}

async fn on_node(
    base: &Path,
    node: &LinuxNode,
    store: Arc<dyn Store>,
    clock: Clock,
) -> anyhow::Result<()> {
    support::build_from_host_busybox(base, &node.images, "busybox:latest")?;
    let mut config = NodeConfig::new(NODE);
    config.root_dir = base.join("data/node");
    config.pod_cidr = Some(SUBNET.into());
    config.volume_refresh = Duration::from_secs(1);
    let cluster = ClusterBuilder::new()
        .store(store)
        .clock(clock)
        .node(config, node.backends.clone())
        .start()
        .await?;
    let checks = checks(&cluster, node.runtime.as_ref()).await;
    let cleanup = delete_all(&cluster).await;
    cluster.shutdown().await;
    // Mounts left behind are found by `support::check_nothing_left` after the node stops.
    checks?;
    cleanup
}

async fn checks(cluster: &Cluster, runtime: &dyn ContainerRuntime) -> anyhow::Result<()> {
    cluster.apply_str(APP, "app").await?;
    let writer = running_container(cluster, "writer").await?;

    // The PVC: the container wrote through it.
    let note = sh(runtime, &writer, "cat /data/note").await?;
    anyhow::ensure!(note.trim() == "written-by-writer", "/data/note: {note:?}");

    // The secret: mode 0400, on a tmpfs.
    let mode = sh(runtime, &writer, "stat -L -c %a /secret/password").await?;
    anyhow::ensure!(
        mode.trim() == "400",
        "secret file mode {mode:?}, expected 400"
    );
    let password = sh(runtime, &writer, "cat /secret/password").await?;
    anyhow::ensure!(password == "s3cret", "secret content {password:?}");
    let fs = sh(runtime, &writer, "grep ' /secret ' /proc/mounts").await?;
    anyhow::ensure!(fs.starts_with("tmpfs "), "/secret is not a tmpfs: {fs:?}");

    // The ConfigMap: both keys change together, in the running container.
    let before = sh(runtime, &writer, "cat /config/greeting /config/color").await?;
    anyhow::ensure!(before == "hello v1blue v1", "configMap files {before:?}");
    let cms = cluster.api::<ConfigMap>("default");
    let mut cm = cms.get("settings").await?.to_owned_value();
    cm.data = Some(
        [("greeting", "hello v2"), ("color", "blue v2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    cms.update(cm).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = sh(runtime, &writer, "cat /config/greeting /config/color").await?;
        if now == "hello v2blue v2" {
            break;
        }
        anyhow::ensure!(
            now == "hello v1blue v1",
            "a mix of versions was visible: {now:?}"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "the configMap update did not reach the container in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let restarts = container_restarts(cluster, "writer").await?;
    anyhow::ensure!(restarts == 0, "the container restarted ({restarts})");

    // A second pod with the claim read-only: sees the data, cannot write.
    cluster.apply_str(READER, "reader").await?;
    let reader = running_container(cluster, "reader").await?;
    let seen = sh(runtime, &reader, "cat /data/note").await?;
    anyhow::ensure!(seen.trim() == "written-by-writer", "reader sees {seen:?}");
    let write = runtime
        .exec_sync(
            &reader,
            &strings(&["/bin/busybox", "sh", "-c", "echo x > /data/other"]),
            Duration::from_secs(10),
        )
        .await?;
    anyhow::ensure!(
        write.exit_code != 0 && String::from_utf8_lossy(&write.stderr).contains("Read-only"),
        "a write to the read-only claim did not fail as read-only: exit {} {:?}",
        write.exit_code,
        String::from_utf8_lossy(&write.stderr)
    );
    Ok(())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Runs `script` in the container with `sh -c`; its stdout, or an error with its stderr.
async fn sh(runtime: &dyn ContainerRuntime, id: &str, script: &str) -> anyhow::Result<String> {
    let out = runtime
        .exec_sync(
            id,
            &strings(&["/bin/busybox", "sh", "-c", script]),
            Duration::from_secs(10),
        )
        .await?;
    anyhow::ensure!(
        out.exit_code == 0,
        "`{script}` exited {}: {}",
        out.exit_code,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until the pod's container runs; its runtime id.
async fn running_container(cluster: &Cluster, name: &str) -> anyhow::Result<String> {
    let pods = cluster.api::<Pod>("default");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pod = pods.get(name).await?;
        let status = pod.status.clone().unwrap_or_default();
        let running = status
            .container_statuses
            .iter()
            .flatten()
            .find(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
        if let Some(id) = running.and_then(|c| c.container_id.as_deref()) {
            let id = id.split_once("://").map_or(id, |(_, id)| id);
            return Ok(id.to_string());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "pod {name} not running after 60 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn container_restarts(cluster: &Cluster, name: &str) -> anyhow::Result<i32> {
    let pod = cluster.api::<Pod>("default").get(name).await?;
    Ok(pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| c.restart_count)
        .sum())
}

/// Deletes the pods and the claim and waits until they are gone, and the claim's volume too
/// (reclaim policy Delete).
async fn delete_all(cluster: &Cluster) -> anyhow::Result<()> {
    let pods = cluster.api::<Pod>("default");
    for name in ["writer", "reader"] {
        let _ = pods.delete(name, &DeleteOptions::default()).await;
    }
    let claims = cluster.api::<PersistentVolumeClaim>("default");
    let _ = claims.delete("data", &DeleteOptions::default()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left_pods = pods.list(&Default::default()).await?.len();
        let left_claims = claims.list(&Default::default()).await?.len();
        let volumes = cluster
            .api_all::<PersistentVolume>()
            .list(&Default::default())
            .await?;
        let left_volumes = volumes.len();
        if left_pods + left_claims + left_volumes == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{left_pods} pods, {left_claims} claims, {left_volumes} volumes still there after 60 s: {:?}",
            volumes.iter().map(|v| (v.metadata.name.clone(), v.status.clone())).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

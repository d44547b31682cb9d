//! Real backends for one Linux node, assembled: the native runtime, the image store, the
//! native bridge network, the built-in hostpath CSI driver (served in-process on a unix
//! socket and driven through the CSI client, exactly as an external driver would be), the
//! in-tree volume sources and the network prober.
//!
//! Needs root. Everything it makes lives under [`LinuxNodeOptions`]'s directories and is
//! released by [`LinuxNode::shutdown`] (containers are left to the caller: delete the pods
//! first).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Volume};
use wharf_core::backend::{ContainerRuntime, VolumePlugin};
use wharf_core::node::{Backends, InTreeVolumes};
use wharf_core::probe::NetworkProber;
use wharf_core::store::{Api, Store};
use wharf_image::registry::RegistryConfig;
use wharf_image::{ImageStore, ImageStoreService};
use wharf_network_cni::{BridgeConfig, BridgeNetwork};
use wharf_runtime_linux::{LinuxRuntime, LinuxRuntimeOptions};
use wharf_storage_csi::intree::{LocalVolumes, ObjectLookup};
use wharf_storage_csi::mount::LinuxMounter;
use wharf_storage_csi::server::RunningDriver;
use wharf_storage_csi::{ClientOptions, CsiPlugin, HostPathConfig, HostPathDriver};

/// Where a Linux node keeps its state.
#[derive(Clone, Debug)]
pub struct LinuxNodeOptions {
    /// Node name (CSI node id).
    pub node_name: String,
    /// Persistent state: images, volumes, network reservations (`/var/lib/wharf`).
    pub data_dir: PathBuf,
    /// Runtime state (`/run/wharf`).
    pub run_dir: PathBuf,
    /// The pod network.
    pub bridge: BridgeConfig,
    /// Registries, credentials and insecure hosts for image pulls.
    pub registries: RegistryConfig,
}

impl LinuxNodeOptions {
    /// Defaults under `/var/lib/wharf` and `/run/wharf`.
    pub fn new(node_name: &str) -> LinuxNodeOptions {
        LinuxNodeOptions::under(node_name, "/var/lib/wharf".into(), "/run/wharf".into())
    }

    /// Everything under `data_dir` and `run_dir` (tests and examples use private dirs).
    pub fn under(node_name: &str, data_dir: PathBuf, run_dir: PathBuf) -> LinuxNodeOptions {
        let bridge = BridgeConfig {
            state_dir: data_dir.join("network"),
            ..BridgeConfig::default()
        };
        LinuxNodeOptions {
            node_name: node_name.to_string(),
            data_dir,
            run_dir,
            bridge,
            registries: RegistryConfig::default(),
        }
    }
}

/// A failure assembling a node's backends; names the part.
#[derive(Debug, thiserror::Error)]
#[error("setting up the {part} of node {node}: {message}")]
pub struct LinuxNodeError {
    /// Node name.
    pub node: String,
    /// Which backend.
    pub part: &'static str,
    /// What went wrong.
    pub message: String,
}

/// The backends of a real node, plus what must be stopped at the end.
pub struct LinuxNode {
    /// The backends to give a node agent.
    pub backends: Backends,
    /// The native runtime (also in `backends`), for direct use.
    pub runtime: Arc<LinuxRuntime>,
    /// The image store (also behind `backends.images`), for imports and inspection.
    pub images: Arc<ImageStore>,
    /// The bridge network (also in `backends`); [`LinuxNode::shutdown`] removes its bridge
    /// and firewall table.
    pub network: Arc<BridgeNetwork>,
    node_name: String,
    csi: RunningDriver,
}

impl LinuxNode {
    /// Starts the backends.
    pub async fn start(
        store: Arc<dyn Store>,
        options: &LinuxNodeOptions,
    ) -> Result<LinuxNode, LinuxNodeError> {
        let fail = |part: &'static str| {
            let node = options.node_name.clone();
            move |e: &dyn std::fmt::Display| LinuxNodeError {
                node: node.clone(),
                part,
                message: e.to_string(),
            }
        };
        let runtime = LinuxRuntime::new(LinuxRuntimeOptions {
            root: options.run_dir.join("runtime"),
            ..LinuxRuntimeOptions::default()
        })
        .await
        .map_err(|e| fail("container runtime")(&e))?;
        let runtime = Arc::new(runtime);

        let images = ImageStore::open(options.data_dir.join("images"))
            .map_err(|e| fail("image store")(&e))?;
        let images = Arc::new(images);
        let image_service = ImageStoreService::new(images.clone(), options.registries.clone())
            .map_err(|e| fail("image service")(&e))?;

        let network = Arc::new(
            BridgeNetwork::new(options.bridge.clone()).map_err(|e| fail("bridge network")(&e))?,
        );

        let driver_config =
            HostPathConfig::new(&options.node_name, options.data_dir.join("csi-hostpath"))
                .map_err(|e| fail("hostpath CSI driver")(&e))?;
        let driver =
            HostPathDriver::new(driver_config).map_err(|e| fail("hostpath CSI driver")(&e))?;
        let socket = options.run_dir.join("csi-hostpath.sock");
        let csi =
            RunningDriver::spawn(driver, &socket).map_err(|e| fail("hostpath CSI driver")(&e))?;
        let endpoint = format!("unix://{}", socket.display());
        let plugin = CsiPlugin::connect(&endpoint, ClientOptions::default())
            .await
            .map_err(|e| fail("CSI client")(&e))?;

        let local = LocalVolumes::new(Arc::new(LinuxMounter), Arc::new(StoreObjects(store)));
        let runtime_dyn: Arc<dyn ContainerRuntime> = runtime.clone();
        let backends = Backends {
            runtime: runtime_dyn.clone(),
            images: Arc::new(image_service),
            network: network.clone(),
            prober: Arc::new(NetworkProber::new(runtime_dyn)),
            volume_plugins: vec![Arc::new(plugin) as Arc<dyn VolumePlugin>],
            in_tree_volumes: Some(Arc::new(InTree(local))),
        };
        Ok(LinuxNode {
            backends,
            runtime,
            images,
            network,
            node_name: options.node_name.clone(),
            csi,
        })
    }

    /// Stops the in-process CSI driver and removes the bridge and its firewall table (every
    /// pod must be gone first).
    pub async fn shutdown(self) -> Result<(), LinuxNodeError> {
        let node_name = &self.node_name;
        let fail = |part: &'static str, e: &dyn std::fmt::Display| LinuxNodeError {
            node: node_name.to_string(),
            part,
            message: e.to_string(),
        };
        let csi = self.csi.stop().await;
        self.network
            .teardown()
            .await
            .map_err(|e| fail("bridge network", &e))?;
        csi.map_err(|e| fail("hostpath CSI driver", &e))
    }
}

/// ConfigMaps and Secrets for in-tree volumes, read from the cluster's store.
struct StoreObjects(Arc<dyn Store>);

#[async_trait]
impl ObjectLookup for StoreObjects {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.0.clone(), namespace);
        match api.get_opt(name).await {
            Ok(found) => Ok(found.map(|c| c.to_owned_value())),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, String> {
        let api: Api<Secret> = Api::namespaced(self.0.clone(), namespace);
        match api.get_opt(name).await {
            Ok(found) => Ok(found.map(|s| s.to_owned_value())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The storage crate's in-tree sources as the node agent's `InTreeVolumes`.
struct InTree(LocalVolumes);

#[async_trait]
impl InTreeVolumes for InTree {
    async fn setup(
        &self,
        pod: &Pod,
        volume: &Volume,
        dir: &std::path::Path,
    ) -> Result<PathBuf, String> {
        self.0
            .setup(pod, volume, dir)
            .await
            .map_err(|e| e.to_string())
    }

    async fn refresh(
        &self,
        pod: &Pod,
        volume: &Volume,
        dir: &std::path::Path,
        objects: &wharf_core::node::SourceObjects,
    ) -> Result<(), String> {
        self.0
            .refresh(pod, volume, dir, objects)
            .await
            .map_err(|e| e.to_string())
    }

    async fn teardown(
        &self,
        pod: &Pod,
        volume: &Volume,
        dir: &std::path::Path,
    ) -> Result<(), String> {
        self.0
            .teardown(pod, volume, dir)
            .await
            .map_err(|e| e.to_string())
    }
}

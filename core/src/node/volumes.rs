//! Pod volumes on a node: CSI volumes (PVCs bound to CSI PersistentVolumes, and inline
//! `csi` volumes) through a [`VolumePlugin`], `hostPath` as is, and every other in-tree
//! source (emptyDir, configMap, secret, projected, downwardAPI, ...) through an
//! [`InTreeVolumes`] hook supplied by the embedding program.
//!
//! A CSI volume is staged once per node (reference-counted across pods) and published once
//! per pod at `<root>/pods/<uid>/volumes/<name>`. Teardown unpublishes, and unstages when the
//! last pod using it is gone.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Volume};

use crate::backend::volume::{
    AccessMode, AccessType, NodePublishRequest, NodeStageRequest, StringMap, VolumeCapability,
    VolumePlugin,
};
use crate::store::{Api, Store};

/// Sets up in-tree volume sources (everything that is not CSI or hostPath).
#[async_trait]
pub trait InTreeVolumes: Send + Sync + 'static {
    /// Makes the volume available at `dir` (or elsewhere) and returns its host path.
    async fn setup(&self, pod: &Pod, volume: &Volume, dir: &Path) -> Result<PathBuf, String>;
    /// Releases what `setup` made. Idempotent.
    async fn teardown(&self, pod: &Pod, volume: &Volume, dir: &Path) -> Result<(), String>;
}

/// An [`InTreeVolumes`] for simulated nodes: every in-tree volume is its directory path,
/// with nothing written to disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct PathOnlyVolumes;

#[async_trait]
impl InTreeVolumes for PathOnlyVolumes {
    async fn setup(&self, _pod: &Pod, _volume: &Volume, dir: &Path) -> Result<PathBuf, String> {
        Ok(dir.to_path_buf())
    }
    async fn teardown(&self, _pod: &Pod, _volume: &Volume, _dir: &Path) -> Result<(), String> {
        Ok(())
    }
}

/// What the node agent uses to set up volumes.
pub struct VolumeHost {
    /// The node's root directory (`/var/lib/wharf` style).
    pub root: PathBuf,
    /// The node name (CSI node id).
    pub node_name: String,
    /// CSI drivers by name.
    pub plugins: Vec<Arc<dyn VolumePlugin>>,
    /// In-tree sources.
    pub in_tree: Option<Arc<dyn InTreeVolumes>>,
    /// Pods using each staged volume id.
    staged: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for VolumeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeHost")
            .field("root", &self.root)
            .finish()
    }
}

/// A CSI volume resolved from the pod spec.
struct CsiVolume {
    plugin: Arc<dyn VolumePlugin>,
    volume_id: String,
    readonly: bool,
    context: StringMap,
    capability: VolumeCapability,
}

fn mount_capability(fs_type: Option<String>, mode: AccessMode) -> VolumeCapability {
    VolumeCapability {
        access_type: AccessType::Mount {
            fs_type: fs_type.unwrap_or_default(),
            mount_flags: Vec::new(),
        },
        access_mode: mode,
    }
}

impl VolumeHost {
    /// A host with these drivers and hook.
    pub fn new(
        root: PathBuf,
        node_name: String,
        plugins: Vec<Arc<dyn VolumePlugin>>,
        in_tree: Option<Arc<dyn InTreeVolumes>>,
    ) -> VolumeHost {
        VolumeHost {
            root,
            node_name,
            plugins,
            in_tree,
            staged: Mutex::new(HashMap::new()),
        }
    }

    /// Where a pod's volume is published.
    pub fn pod_volume_dir(&self, uid: &str, name: &str) -> PathBuf {
        self.root.join("pods").join(uid).join("volumes").join(name)
    }

    fn staging_path(&self, driver: &str, volume_id: &str) -> PathBuf {
        self.root
            .join("plugins")
            .join(driver)
            .join("globalmount")
            .join(volume_id)
    }

    fn plugin(&self, driver: &str) -> Result<Arc<dyn VolumePlugin>, String> {
        self.plugins
            .iter()
            .find(|p| p.name() == driver)
            .cloned()
            .ok_or_else(|| format!("CSI driver {driver:?} is not registered on this node"))
    }

    async fn resolve_csi(
        &self,
        store: &Arc<dyn Store>,
        pod: &Pod,
        v: &Volume,
    ) -> Result<Option<CsiVolume>, String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(claim) = &v.persistent_volume_claim {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(store.clone(), ns);
            let pvc = pvcs
                .get(&claim.claim_name)
                .await
                .map_err(|e| format!("volume {:?}: {e}", v.name))?;
            let pv_name = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    format!(
                        "volume {:?}: persistentvolumeclaim {:?} is not bound",
                        v.name, claim.claim_name
                    )
                })?;
            let pvs: Api<PersistentVolume> = Api::all(store.clone());
            let pv = pvs
                .get(&pv_name)
                .await
                .map_err(|e| format!("volume {:?}: {e}", v.name))?;
            let spec = pv.spec.clone().unwrap_or_default();
            let Some(csi) = spec.csi else {
                return Err(format!(
                    "volume {:?}: persistentvolume {pv_name:?} has no csi source",
                    v.name
                ));
            };
            let mode = match spec
                .access_modes
                .iter()
                .flatten()
                .next()
                .map(String::as_str)
            {
                Some("ReadWriteMany") => AccessMode::MultiNodeMultiWriter,
                Some("ReadOnlyMany") => AccessMode::MultiNodeReaderOnly,
                Some("ReadWriteOncePod") => AccessMode::SingleNodeSingleWriter,
                _ => AccessMode::SingleNodeWriter,
            };
            return Ok(Some(CsiVolume {
                plugin: self.plugin(&csi.driver)?,
                volume_id: csi.volume_handle,
                readonly: claim.read_only.unwrap_or(false) || csi.read_only.unwrap_or(false),
                context: csi.volume_attributes.unwrap_or_default(),
                capability: mount_capability(csi.fs_type, mode),
            }));
        }
        if let Some(csi) = &v.csi {
            let mut context = csi.volume_attributes.clone().unwrap_or_default();
            context.insert(
                "csi.storage.k8s.io/pod.name".into(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            context.insert("csi.storage.k8s.io/pod.namespace".into(), ns.to_string());
            context.insert(
                "csi.storage.k8s.io/pod.uid".into(),
                pod.metadata.uid.clone().unwrap_or_default(),
            );
            context.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
            return Ok(Some(CsiVolume {
                plugin: self.plugin(&csi.driver)?,
                volume_id: format!(
                    "csi-{}-{}",
                    pod.metadata.uid.as_deref().unwrap_or(""),
                    v.name
                ),
                readonly: csi.read_only.unwrap_or(false),
                context,
                capability: mount_capability(csi.fs_type.clone(), AccessMode::SingleNodeWriter),
            }));
        }
        Ok(None)
    }

    /// Sets up every volume of the pod; returns host paths by volume name. On failure,
    /// what was set up is torn down again.
    pub async fn setup(
        &self,
        store: &Arc<dyn Store>,
        pod: &Pod,
    ) -> Result<BTreeMap<String, PathBuf>, String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut paths = BTreeMap::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let dir = self.pod_volume_dir(&uid, &v.name);
            let result = self.setup_one(store, pod, v, &dir).await;
            match result {
                Ok(path) => {
                    paths.insert(v.name.clone(), path);
                }
                Err(e) => {
                    let _ = self.teardown(store, pod, Some(&paths)).await;
                    return Err(e);
                }
            }
        }
        Ok(paths)
    }

    async fn setup_one(
        &self,
        store: &Arc<dyn Store>,
        pod: &Pod,
        v: &Volume,
        dir: &Path,
    ) -> Result<PathBuf, String> {
        if let Some(hp) = &v.host_path {
            return Ok(PathBuf::from(&hp.path));
        }
        if let Some(csi) = self.resolve_csi(store, pod, v).await? {
            let caps = csi
                .plugin
                .capabilities()
                .await
                .map_err(|e| format!("volume {:?}: {e}", v.name))?;
            let staging = caps
                .stage_unstage
                .then(|| self.staging_path(csi.plugin.name(), &csi.volume_id));
            if let Some(staging) = &staging {
                csi.plugin
                    .node_stage(&NodeStageRequest {
                        volume_id: csi.volume_id.clone(),
                        publish_context: StringMap::new(),
                        staging_path: staging.clone(),
                        capability: csi.capability.clone(),
                        secrets: StringMap::new(),
                        volume_context: csi.context.clone(),
                    })
                    .await
                    .map_err(|e| format!("volume {:?}: {e}", v.name))?;
                *self
                    .staged
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(csi.volume_id.clone())
                    .or_insert(0) += 1;
            }
            csi.plugin
                .node_publish(&NodePublishRequest {
                    volume_id: csi.volume_id.clone(),
                    publish_context: StringMap::new(),
                    staging_path: staging,
                    target_path: dir.to_path_buf(),
                    capability: csi.capability,
                    readonly: csi.readonly,
                    secrets: StringMap::new(),
                    volume_context: csi.context,
                })
                .await
                .map_err(|e| format!("volume {:?}: {e}", v.name))?;
            return Ok(dir.to_path_buf());
        }
        match &self.in_tree {
            Some(hook) => hook
                .setup(pod, v, dir)
                .await
                .map_err(|e| format!("volume {:?}: {e}", v.name)),
            None => Err(format!(
                "volume {:?}: no in-tree volume handler is configured on this node",
                v.name
            )),
        }
    }

    /// Tears down the pod's volumes (only those in `only`, when given). Idempotent.
    pub async fn teardown(
        &self,
        store: &Arc<dyn Store>,
        pod: &Pod,
        only: Option<&BTreeMap<String, PathBuf>>,
    ) -> Result<(), String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut first_error = None;
        let volumes: Vec<&Volume> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .collect();
        for v in volumes.into_iter().rev() {
            if only.is_some_and(|o| !o.contains_key(&v.name)) || v.host_path.is_some() {
                continue;
            }
            let dir = self.pod_volume_dir(&uid, &v.name);
            let r = match self.resolve_csi(store, pod, v).await {
                Ok(Some(csi)) => self.teardown_csi(csi, &dir).await,
                Ok(None) => match &self.in_tree {
                    Some(hook) => hook.teardown(pod, v, &dir).await,
                    None => Ok(()),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn teardown_csi(&self, csi: CsiVolume, dir: &Path) -> Result<(), String> {
        csi.plugin
            .node_unpublish(&csi.volume_id, dir)
            .await
            .map_err(|e| e.to_string())?;
        let last = {
            let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
            match staged.get_mut(&csi.volume_id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    staged.remove(&csi.volume_id);
                    true
                }
                None => false,
            }
        };
        if last {
            let staging = self.staging_path(csi.plugin.name(), &csi.volume_id);
            csi.plugin
                .node_unstage(&csi.volume_id, &staging)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

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
    ///
    /// Also called again, with the pod as it is now, for the configMap, secret, downwardAPI
    /// and projected volumes of a running pod (every [`NodeConfig::volume_refresh`]): the
    /// implementation brings the files up to date, atomically, so a container never sees a
    /// mix of old and new files.
    ///
    /// [`NodeConfig::volume_refresh`]: super::NodeConfig::volume_refresh
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
    /// Pods whose volumes are set up and have files to keep fresh, by uid.
    /// CSI volumes published for pods, by (pod uid, volume name): teardown uses what setup
    /// resolved, so it does not depend on the claim or volume objects still existing.
    published: Mutex<HashMap<(String, String), CsiVolume>>,
    /// Refreshes hold the lock while they write, so a teardown never races one.
    projected: tokio::sync::Mutex<HashMap<String, Pod>>,
}

impl std::fmt::Debug for VolumeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeHost")
            .field("root", &self.root)
            .finish()
    }
}

fn pod_volumes(pod: &Pod) -> impl Iterator<Item = &Volume> {
    pod.spec.iter().flat_map(|s| s.volumes.iter().flatten())
}

/// Whether a volume's files come from objects that can change while the pod runs.
fn is_projected(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
}

/// A CSI volume resolved from the pod spec.
#[derive(Clone)]
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
            published: Mutex::new(HashMap::new()),
            projected: tokio::sync::Mutex::new(HashMap::new()),
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
            let mode = spec
                .access_modes
                .iter()
                .flatten()
                .next()
                .map_or(AccessMode::SingleNodeWriter, |m| {
                    crate::volume::access_mode(m)
                });
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
        for v in pod_volumes(pod) {
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
        if self.in_tree.is_some() && pod_volumes(pod).any(is_projected) {
            self.projected.lock().await.insert(uid, pod.clone());
        }
        Ok(paths)
    }

    /// Brings the files of every set-up configMap, secret, downwardAPI and projected volume
    /// up to date with their sources and with the pod's current metadata (as kubelet's
    /// periodic sync does). A source that cannot be read leaves the files as they were; the
    /// failure is logged.
    pub async fn refresh(&self, store: &Arc<dyn Store>) {
        let Some(hook) = &self.in_tree else {
            return;
        };
        let pods: Vec<(String, Pod)> = self
            .projected
            .lock()
            .await
            .iter()
            .map(|(uid, pod)| (uid.clone(), pod.clone()))
            .collect();
        for (uid, known) in pods {
            let ns = known
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = known.metadata.name.clone().unwrap_or_default();
            let pods: Api<Pod> = Api::namespaced(store.clone(), &ns);
            // The pod as it is now (labels and annotations feed downwardAPI files); the one
            // known at setup when it is gone from the store (it is being torn down).
            let pod = match pods.get_opt(&name).await {
                Ok(Some(p)) if p.metadata.uid.as_deref() == Some(uid.as_str()) => {
                    p.to_owned_value()
                }
                _ => known,
            };
            let projected = self.projected.lock().await;
            if !projected.contains_key(&uid) {
                // Torn down meanwhile: do not bring its directories back.
                continue;
            }
            for v in pod_volumes(&pod).filter(|v| is_projected(v)) {
                let dir = self.pod_volume_dir(&uid, &v.name);
                if let Err(e) = hook.setup(&pod, v, &dir).await {
                    tracing::warn!(pod = %format!("{ns}/{name}"), volume = %v.name, error = %e,
                        "refreshing volume files failed; the previous files stay");
                }
            }
        }
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
                    capability: csi.capability.clone(),
                    readonly: csi.readonly,
                    secrets: StringMap::new(),
                    volume_context: csi.context.clone(),
                })
                .await
                .map_err(|e| format!("volume {:?}: {e}", v.name))?;
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            self.published
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((uid, v.name.clone()), csi);
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
        if only.is_none() {
            // Waits for a refresh in progress; later ones skip this pod.
            self.projected.lock().await.remove(&uid);
        }
        let mut first_error = None;
        let volumes: Vec<&Volume> = pod_volumes(pod).collect();
        for v in volumes.into_iter().rev() {
            if only.is_some_and(|o| !o.contains_key(&v.name)) || v.host_path.is_some() {
                continue;
            }
            let dir = self.pod_volume_dir(&uid, &v.name);
            let key = (uid.clone(), v.name.clone());
            let known = self
                .published
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned();
            let resolved = match known {
                Some(csi) => Ok(Some(csi)),
                None => self.resolve_csi(store, pod, v).await,
            };
            let r = match resolved {
                Ok(Some(csi)) => {
                    let r = self.teardown_csi(csi, &dir).await;
                    if r.is_ok() {
                        self.published
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key);
                    }
                    r
                }
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

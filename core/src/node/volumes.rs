//! Pod volumes on a node: CSI volumes (PVCs bound to CSI PersistentVolumes, and inline
//! `csi` volumes) through a [`VolumePlugin`], `hostPath` as is, and every other in-tree
//! source (emptyDir, configMap, secret, projected, downwardAPI, ...) through an
//! [`InTreeVolumes`] hook supplied by the embedding program.
//!
//! A CSI volume is staged once per node (reference-counted across pods) and published once
//! per pod at `<root>/pods/<uid>/volumes/<name>`. Teardown unpublishes, and unstages when the
//! last pod using it is gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};

use crate::backend::volume::{
    AccessMode, AccessType, NodePublishRequest, NodeStageRequest, StringMap, VolumeCapability,
    VolumePlugin,
};
use crate::store::{Api, Store};
use crate::{Kind, Resource};

/// Sets up in-tree volume sources (everything that is not CSI or hostPath).
#[async_trait]
pub trait InTreeVolumes: Send + Sync + 'static {
    /// Makes the volume available at `dir` (or elsewhere) and returns its host path.
    ///
    /// Writes files atomically, so a container never sees a mix of old and new files: the
    /// default [`refresh`](Self::refresh) calls it again on a set-up volume.
    async fn setup(&self, pod: &Pod, volume: &Volume, dir: &Path) -> Result<PathBuf, String>;
    /// Brings the files of a set-up configMap, secret, downwardAPI or projected volume up to
    /// date (every [`NodeConfig::volume_refresh`]), atomically. `objects` holds the
    /// ConfigMaps and Secrets the volume refers to, read once for the whole round: an
    /// implementation should use them rather than read the store again. The default calls
    /// [`setup`](Self::setup), which reads them itself.
    ///
    /// [`NodeConfig::volume_refresh`]: super::NodeConfig::volume_refresh
    async fn refresh(
        &self,
        pod: &Pod,
        volume: &Volume,
        dir: &Path,
        objects: &SourceObjects,
    ) -> Result<(), String> {
        let _ = objects;
        self.setup(pod, volume, dir).await.map(drop)
    }
    /// Releases what `setup` made. Idempotent.
    async fn teardown(&self, pod: &Pod, volume: &Volume, dir: &Path) -> Result<(), String>;
    /// Whether set-up volumes have files to keep fresh. When `false`, pods are not
    /// registered for [`refresh`](Self::refresh) rounds at all.
    fn refreshes(&self) -> bool {
        true
    }
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
    fn refreshes(&self) -> bool {
        false
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
    /// Stagings by (driver, volume id).
    stagings: Mutex<HashMap<(String, String), SharedStaging>>,
    /// CSI volumes published for pods, by (pod uid, volume name): teardown uses what setup
    /// resolved, so it does not depend on the claim or volume objects still existing.
    published: Mutex<HashMap<(String, String), CsiVolume>>,
    /// Pods whose volumes are set up and have files to keep fresh, by uid.
    projected: Mutex<HashMap<String, Arc<Projected>>>,
}

/// A pod with configMap, secret, downwardAPI or projected volumes to keep fresh.
struct Projected {
    /// The pod as last seen by the agent's pod watch (its labels and annotations feed
    /// downwardAPI files), so a refresh does not read it from the store.
    pod: Mutex<Pod>,
    /// Held while this pod's files are written (and only this pod's: other pods' refreshes
    /// and teardowns do not wait); `true` once torn down, so a refresh that waited for the
    /// teardown does not bring the directories back.
    torn_down: tokio::sync::Mutex<bool>,
}

/// The ConfigMaps and Secrets the volumes of one refresh round refer to, each read from the
/// store once however many pods and volumes use it.
#[derive(Debug, Default)]
pub struct SourceObjects {
    config_maps: HashMap<(String, String), Option<ConfigMap>>,
    secrets: HashMap<(String, String), Option<Secret>>,
    /// Objects whose read failed: volumes using them keep their files this round.
    unreadable: HashSet<(Kind, String, String)>,
}

impl SourceObjects {
    /// The ConfigMap `namespace/name`; `None` when it does not exist (or was not read).
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<&ConfigMap> {
        self.config_maps
            .get(&(namespace.to_string(), name.to_string()))?
            .as_ref()
    }

    /// The Secret `namespace/name`; `None` when it does not exist (or was not read).
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.secrets
            .get(&(namespace.to_string(), name.to_string()))?
            .as_ref()
    }

    /// Reads what `volume` refers to, skipping what this round already read.
    async fn read_for(&mut self, store: &Arc<dyn Store>, namespace: &str, volume: &Volume) {
        let (config_maps, secrets) = source_refs(volume);
        let unreadable = &mut self.unreadable;
        read_new(
            &mut self.config_maps,
            unreadable,
            store,
            namespace,
            config_maps,
        )
        .await;
        read_new(&mut self.secrets, unreadable, store, namespace, secrets).await;
    }

    /// Whether everything `volume` refers to was read.
    fn readable(&self, namespace: &str, volume: &Volume) -> bool {
        let (config_maps, secrets) = source_refs(volume);
        let ns = namespace.to_string();
        config_maps.into_iter().all(|n| {
            !self
                .unreadable
                .contains(&(ConfigMap::OBJECT_KIND, ns.clone(), n))
        }) && secrets.into_iter().all(|n| {
            !self
                .unreadable
                .contains(&(Secret::OBJECT_KIND, ns.clone(), n))
        })
    }
}

/// Reads the objects of kind `K` named in `names` that `read` has no entry for yet (nor
/// `unreadable`), recording each as found, missing (`None`) or unreadable.
async fn read_new<K: Resource>(
    read: &mut HashMap<(String, String), Option<K>>,
    unreadable: &mut HashSet<(Kind, String, String)>,
    store: &Arc<dyn Store>,
    namespace: &str,
    names: Vec<String>,
) {
    let api: Api<K> = Api::namespaced(store.clone(), namespace);
    for name in names {
        let key = (namespace.to_string(), name);
        if read.contains_key(&key)
            || unreadable.contains(&(K::OBJECT_KIND, key.0.clone(), key.1.clone()))
        {
            continue;
        }
        match api.get_opt(&key.1).await {
            Ok(found) => {
                read.insert(key, found.map(|o| o.to_owned_value()));
            }
            Err(e) => {
                tracing::warn!(kind = %K::OBJECT_KIND, object = %format!("{}/{}", key.0, key.1),
                    error = %e, "reading a volume source failed");
                unreadable.insert((K::OBJECT_KIND, key.0, key.1));
            }
        }
    }
}

/// The ConfigMaps and Secrets a volume's files come from: (configMap names, secret names).
fn source_refs(v: &Volume) -> (Vec<String>, Vec<String>) {
    let mut config_maps = Vec::new();
    let mut secrets = Vec::new();
    if let Some(cm) = &v.config_map {
        config_maps.push(cm.name.clone());
    }
    if let Some(secret) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
        secrets.push(secret);
    }
    for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
        if let Some(cm) = &source.config_map {
            config_maps.push(cm.name.clone());
        }
        if let Some(secret) = &source.secret {
            secrets.push(secret.name.clone());
        }
    }
    (config_maps, secrets)
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

/// Whether a volume's files come from objects that can change while the pod runs (a
/// configMap, secret, downwardAPI or projected volume): what [`VolumeHost::refresh`]
/// keeps fresh.
pub fn is_projected(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
}

/// One CSI volume's staging on this node. Its stage and unstage run under its lock, and a
/// pod registers as a user under that lock before it publishes: a volume is staged once
/// however many pods set it up at the same time, and unstaged only once no pod uses it.
/// Users are a set (not a count), so a teardown repeated after a partial failure never
/// releases another pod's use.
#[derive(Debug, Default)]
struct Staging {
    /// Staged by this agent (unknown, so false, for a volume a previous agent staged).
    staged: bool,
    /// The pods using it, as (pod uid, volume name).
    users: HashSet<(String, String)>,
}

/// A staging record, shared by the pods that set the volume up or tear it down.
type SharedStaging = Arc<tokio::sync::Mutex<Staging>>;

/// A CSI volume resolved from the pod spec.
#[derive(Clone)]
struct CsiVolume {
    plugin: Arc<dyn VolumePlugin>,
    volume_id: String,
    readonly: bool,
    context: StringMap,
    capability: VolumeCapability,
    /// Where it is staged, for a driver with STAGE_UNSTAGE_VOLUME (asked once, when the
    /// volume is resolved).
    staging: Option<PathBuf>,
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
            stagings: Mutex::new(HashMap::new()),
            published: Mutex::new(HashMap::new()),
            projected: Mutex::new(HashMap::new()),
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
            let volume = CsiVolume {
                plugin: self.plugin(&csi.driver)?,
                volume_id: csi.volume_handle,
                readonly: claim.read_only.unwrap_or(false) || csi.read_only.unwrap_or(false),
                context: csi.volume_attributes.unwrap_or_default(),
                capability: mount_capability(csi.fs_type, mode),
                staging: None,
            };
            return self.with_staging(volume, v).await.map(Some);
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
            let volume = CsiVolume {
                plugin: self.plugin(&csi.driver)?,
                volume_id: format!(
                    "csi-{}-{}",
                    pod.metadata.uid.as_deref().unwrap_or(""),
                    v.name
                ),
                readonly: csi.read_only.unwrap_or(false),
                context,
                capability: mount_capability(csi.fs_type.clone(), AccessMode::SingleNodeWriter),
                staging: None,
            };
            return self.with_staging(volume, v).await.map(Some);
        }
        Ok(None)
    }

    /// Asks the driver whether it stages volumes, and if so, where this one is staged.
    async fn with_staging(&self, mut csi: CsiVolume, v: &Volume) -> Result<CsiVolume, String> {
        let caps = csi
            .plugin
            .capabilities()
            .await
            .map_err(|e| format!("volume {:?}: {e}", v.name))?;
        csi.staging = caps
            .stage_unstage
            .then(|| self.staging_path(csi.plugin.name(), &csi.volume_id));
        Ok(csi)
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
        let refreshes = self.in_tree.as_ref().is_some_and(|hook| hook.refreshes());
        if refreshes && pod_volumes(pod).any(is_projected) {
            let entry = Arc::new(Projected {
                pod: Mutex::new(pod.clone()),
                torn_down: tokio::sync::Mutex::new(false),
            });
            self.projected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid, entry);
        }
        Ok(paths)
    }

    /// Records the pod as its worker last saw it, for the next refresh of its downwardAPI
    /// files. Cheap when the pod has nothing to refresh.
    pub fn pod_updated(&self, pod: &Pod) {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let entry = self
            .projected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned();
        if let Some(entry) = entry {
            *entry.pod.lock().unwrap_or_else(|e| e.into_inner()) = pod.clone();
        }
    }

    /// Brings the files of every set-up configMap, secret, downwardAPI and projected volume
    /// up to date with their sources and with the pod's current metadata (as kubelet's
    /// periodic sync does). Each referenced ConfigMap and Secret is read once per round; the
    /// pods come from their workers ([`pod_updated`](Self::pod_updated)). A source that
    /// cannot be read leaves the files as they were; the failure is logged.
    pub async fn refresh(&self, store: &Arc<dyn Store>) {
        let Some(hook) = &self.in_tree else {
            return;
        };
        let entries: Vec<(String, Arc<Projected>)> = self
            .projected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(uid, entry)| (uid.clone(), entry.clone()))
            .collect();
        let mut objects = SourceObjects::default();
        let mut pods = Vec::with_capacity(entries.len());
        for (uid, entry) in entries {
            let pod = entry.pod.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let ns = pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            for v in pod_volumes(&pod).filter(|v| is_projected(v)) {
                objects.read_for(store, &ns, v).await;
            }
            pods.push((uid, entry, pod, ns));
        }
        // Pods are refreshed side by side: a slow hook call holds up only its own pod.
        let objects = &objects;
        futures::future::join_all(pods.into_iter().map(|(uid, entry, pod, ns)| async move {
            let torn_down = entry.torn_down.lock().await;
            if *torn_down {
                // Torn down meanwhile: do not bring its directories back.
                return;
            }
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            for v in pod_volumes(&pod).filter(|v| is_projected(v)) {
                if !objects.readable(&ns, v) {
                    continue;
                }
                let dir = self.pod_volume_dir(&uid, &v.name);
                if let Err(e) = hook.refresh(&pod, v, &dir, objects).await {
                    tracing::warn!(pod = %format!("{ns}/{name}"), volume = %v.name, error = %e,
                        "refreshing volume files failed; the previous files stay");
                }
            }
        }))
        .await;
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
            let key = (pod.metadata.uid.clone().unwrap_or_default(), v.name.clone());
            if let Some(staging) = &csi.staging {
                let entry = self.staging(&csi);
                let mut st = entry.lock().await;
                if !st.staged {
                    let staged = csi
                        .plugin
                        .node_stage(&NodeStageRequest {
                            volume_id: csi.volume_id.clone(),
                            publish_context: StringMap::new(),
                            staging_path: staging.clone(),
                            capability: csi.capability.clone(),
                            secrets: StringMap::new(),
                            volume_context: csi.context.clone(),
                        })
                        .await;
                    if let Err(e) = staged {
                        drop(st);
                        drop(entry);
                        self.forget_staging_if_unused(&csi);
                        return Err(format!("volume {:?}: {e}", v.name));
                    }
                    st.staged = true;
                }
                st.users.insert(key.clone());
            }
            let published = csi
                .plugin
                .node_publish(&NodePublishRequest {
                    volume_id: csi.volume_id.clone(),
                    publish_context: StringMap::new(),
                    staging_path: csi.staging.clone(),
                    target_path: dir.to_path_buf(),
                    capability: csi.capability.clone(),
                    readonly: csi.readonly,
                    secrets: StringMap::new(),
                    volume_context: csi.context.clone(),
                })
                .await;
            if let Err(e) = published {
                // Nothing of this volume may stay: a failed publish may have done part of
                // its work, and the pod's use of the staging ends here.
                if let Err(cleanup) = self.teardown_csi(&csi, &key, dir).await {
                    tracing::warn!(volume = %v.name, error = %cleanup,
                        "cleaning up after a failed publish failed");
                }
                return Err(format!("volume {:?}: {e}", v.name));
            }
            self.published
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, csi);
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
            let entry = self
                .projected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
            if let Some(entry) = entry {
                // Waits for a refresh of this pod in progress; later ones skip it.
                *entry.torn_down.lock().await = true;
            }
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
                    let r = self.teardown_csi(&csi, &key, &dir).await;
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

    /// The staging record of a CSI volume, made on first use.
    fn staging(&self, csi: &CsiVolume) -> SharedStaging {
        let key = (csi.plugin.name().to_string(), csi.volume_id.clone());
        self.stagings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    /// Unpublishes a pod's CSI volume and releases its use of the staging: the last user
    /// unstages. Idempotent, and safe to repeat after a partial failure.
    async fn teardown_csi(
        &self,
        csi: &CsiVolume,
        user: &(String, String),
        dir: &Path,
    ) -> Result<(), String> {
        csi.plugin
            .node_unpublish(&csi.volume_id, dir)
            .await
            .map_err(|e| e.to_string())?;
        let Some(staging) = &csi.staging else {
            return Ok(());
        };
        let entry = self.staging(csi);
        let mut st = entry.lock().await;
        st.users.remove(user);
        if !st.users.is_empty() {
            return Ok(());
        }
        // No user left. Unstaging is idempotent, so it also runs when this agent did not
        // stage the volume itself (a previous agent did).
        csi.plugin
            .node_unstage(&csi.volume_id, staging)
            .await
            .map_err(|e| e.to_string())?;
        st.staged = false;
        drop(st);
        drop(entry);
        self.forget_staging_if_unused(csi);
        Ok(())
    }

    /// Drops the staging record of a volume that is neither staged nor used, unless a setup
    /// holds it (waiting for its lock). The caller must not hold the record itself.
    fn forget_staging_if_unused(&self, csi: &CsiVolume) {
        let key = (csi.plugin.name().to_string(), csi.volume_id.clone());
        let mut stagings = self.stagings.lock().unwrap_or_else(|e| e.into_inner());
        let unused = stagings.get(&key).is_some_and(|e| {
            Arc::strong_count(e) == 1
                && e.try_lock()
                    .is_ok_and(|st| !st.staged && st.users.is_empty())
        });
        if unused {
            stagings.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        CSIVolumeSource, ConfigMapVolumeSource, PodSpec, Volume as PodVolume,
    };

    use super::*;
    use crate::sim::SimVolumes;
    use crate::store::memory::MemoryStore;

    fn pod(volume: PodVolume) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("default".into());
        pod.metadata.uid = Some("uid-1".into());
        pod.spec = Some(PodSpec {
            volumes: Some(vec![volume]),
            ..PodSpec::default()
        });
        pod
    }

    fn host(in_tree: Option<Arc<dyn InTreeVolumes>>) -> VolumeHost {
        let csi: Arc<dyn VolumePlugin> = Arc::new(SimVolumes::new("sim.csi", "n1", 1 << 30));
        VolumeHost::new("/nonexistent".into(), "n1".into(), vec![csi], in_tree)
    }

    #[tokio::test]
    async fn a_failed_stage_leaves_no_staging_record() {
        let host = host(None);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        // An inline volume the driver does not know: its stage fails with NotFound.
        let pod = pod(PodVolume {
            name: "data".into(),
            csi: Some(CSIVolumeSource {
                driver: "sim.csi".into(),
                ..CSIVolumeSource::default()
            }),
            ..PodVolume::default()
        });
        let err = host.setup(&store, &pod).await.unwrap_err();
        assert!(err.contains("volume \"data\""), "{err}");
        assert!(host.stagings.lock().unwrap().is_empty());
        assert!(host.published.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn path_only_volumes_are_not_registered_for_refresh() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let pod = pod(PodVolume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "c".into(),
                ..ConfigMapVolumeSource::default()
            }),
            ..PodVolume::default()
        });
        let path_only = host(Some(Arc::new(PathOnlyVolumes)));
        path_only.setup(&store, &pod).await.unwrap();
        assert!(path_only.projected.lock().unwrap().is_empty());
        // A hook that writes files keeps the pod for its refresh rounds.
        struct Writes;
        #[async_trait]
        impl InTreeVolumes for Writes {
            async fn setup(&self, _: &Pod, _: &Volume, dir: &Path) -> Result<PathBuf, String> {
                Ok(dir.to_path_buf())
            }
            async fn teardown(&self, _: &Pod, _: &Volume, _: &Path) -> Result<(), String> {
                Ok(())
            }
        }
        let writes = host(Some(Arc::new(Writes)));
        writes.setup(&store, &pod).await.unwrap();
        assert_eq!(writes.projected.lock().unwrap().len(), 1);
    }
}

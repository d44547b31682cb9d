//! In-tree pod volume sources that live on the node: emptyDir, hostPath, configMap,
//! secret, downwardAPI and projected.
//!
//! [`LocalVolumes::setup`] makes a pod volume at the directory the node agent chose for it
//! (or, for hostPath, returns the host path) and is idempotent: calling it again on a set-up
//! volume re-projects configMap, secret, downwardAPI and projected payloads through the
//! [atomic writer](atomic_writer), which is how updates reach running containers.
//! [`LocalVolumes::teardown`] unmounts and removes what setup made; a hostPath is never
//! touched.
//!
//! Backing, as kubelet does it: emptyDir on disk, or tmpfs for `medium: Memory` (sized by
//! `sizeLimit`); secrets and projected volumes on tmpfs so their contents never reach a
//! disk; configMap and downwardAPI on disk. A disk emptyDir's `sizeLimit` is not enforced by
//! the kernel: [`LocalVolumes::size_limit_exceeded`] measures it, for an eviction policy to
//! act on, as kubelet evicts.

pub mod atomic_writer;
pub mod host_path;
pub mod projection;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::error::CsiError;
use crate::fsutil::{remove_tree, tree_usage};
use crate::mount::Mounter;
use atomic_writer::Payload;
use projection::{config_map_data, project_downward, project_keys, secret_data, DEFAULT_MODE};

/// Where configMap and secret volumes get their objects (the store, in a node agent).
#[async_trait]
pub trait ObjectLookup: Send + Sync + 'static {
    /// The ConfigMap `namespace/name`, or `None` when it does not exist.
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, String>;
    /// The Secret `namespace/name`, or `None` when it does not exist.
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, String>;
}

/// An [`ObjectLookup`] over fixed maps, keyed by `namespace/name`.
#[derive(Clone, Debug, Default)]
pub struct StaticObjects {
    /// ConfigMaps.
    pub config_maps: BTreeMap<String, ConfigMap>,
    /// Secrets.
    pub secrets: BTreeMap<String, Secret>,
}

#[async_trait]
impl ObjectLookup for StaticObjects {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, String> {
        Ok(self
            .config_maps
            .get(&format!("{namespace}/{name}"))
            .cloned())
    }
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, String> {
        Ok(self.secrets.get(&format!("{namespace}/{name}")).cloned())
    }
}

/// The objects the node agent read for one refresh round.
#[async_trait]
impl ObjectLookup for wharf_core::node::SourceObjects {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, String> {
        Ok(wharf_core::node::SourceObjects::config_map(self, namespace, name).cloned())
    }
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, String> {
        Ok(wharf_core::node::SourceObjects::secret(self, namespace, name).cloned())
    }
}

/// Sets up and tears down in-tree volume sources on this node.
#[derive(Clone)]
pub struct LocalVolumes {
    mounter: Arc<dyn Mounter>,
    objects: Arc<dyn ObjectLookup>,
    node_allocatable: BTreeMap<String, Quantity>,
}

impl std::fmt::Debug for LocalVolumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalVolumes")
            .field("node_allocatable", &self.node_allocatable)
            .finish_non_exhaustive()
    }
}

/// How a volume is backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backing {
    Disk,
    Tmpfs { size_bytes: u64 },
}

impl LocalVolumes {
    /// Volumes that mount through `mounter` and read objects from `objects`.
    pub fn new(mounter: Arc<dyn Mounter>, objects: Arc<dyn ObjectLookup>) -> Self {
        LocalVolumes {
            mounter,
            objects,
            node_allocatable: BTreeMap::new(),
        }
    }

    /// The node's allocatable resources: what a downwardAPI `limits.*` field reports for a
    /// container without that limit.
    pub fn with_node_allocatable(mut self, allocatable: BTreeMap<String, Quantity>) -> Self {
        self.node_allocatable = allocatable;
        self
    }

    /// Sets up (or refreshes) `volume` of `pod` at `dir`; returns the path to mount into the
    /// containers.
    pub async fn setup(&self, pod: &Pod, volume: &Volume, dir: &Path) -> Result<PathBuf, CsiError> {
        let name = volume.name.as_str();
        if let Some(host) = &volume.host_path {
            return host_path::prepare(name, host);
        }
        if let Some(empty) = &volume.empty_dir {
            let backing = match empty.medium.as_deref().unwrap_or("") {
                "" => Backing::Disk,
                "Memory" => Backing::Tmpfs {
                    size_bytes: match &empty.size_limit {
                        Some(q) => size_bytes(name, "emptyDir.sizeLimit", q)?,
                        None => 0,
                    },
                },
                other => {
                    return Err(CsiError::InvalidVolume {
                        volume: name.into(),
                        field: "emptyDir.medium".into(),
                        message: format!("medium {other:?} is not supported (\"\" or Memory)"),
                    })
                }
            };
            self.make_dir(dir, backing, 0o777)?;
            return Ok(dir.to_path_buf());
        }
        self.project(pod, volume, dir, self.objects.as_ref())
            .await?;
        Ok(dir.to_path_buf())
    }

    /// Writes the files of a configMap, secret, downwardAPI or projected volume into `dir`,
    /// atomically, from the objects `objects` gives.
    async fn project(
        &self,
        pod: &Pod,
        volume: &Volume,
        dir: &Path,
        objects: &dyn ObjectLookup,
    ) -> Result<(), CsiError> {
        let (payload, backing) = self.payload(pod, volume, objects).await?;
        self.make_dir(dir, backing, 0o755)?;
        atomic_writer::write(dir, &payload)
            .map(drop)
            .map_err(|e| CsiError::io("project volume files", dir, e))
    }

    /// Brings the files of a set-up configMap, secret, downwardAPI or projected volume up to
    /// date, atomically, reading its objects from `objects` (what the node agent read once
    /// for its refresh round, [`wharf_core::node::SourceObjects`]) instead of this instance's
    /// lookup. Other sources have nothing to refresh.
    pub async fn refresh(
        &self,
        pod: &Pod,
        volume: &Volume,
        dir: &Path,
        objects: &dyn ObjectLookup,
    ) -> Result<(), CsiError> {
        if !wharf_core::node::is_projected(volume) {
            return Ok(());
        }
        self.project(pod, volume, dir, objects).await
    }

    /// Removes what `setup` made at `dir`: unmounts a tmpfs, deletes the directory. A
    /// hostPath is left alone. Idempotent.
    pub async fn teardown(&self, _pod: &Pod, volume: &Volume, dir: &Path) -> Result<(), CsiError> {
        if volume.host_path.is_some() {
            return Ok(());
        }
        self.mounter
            .unmount(dir)
            .map_err(|e| CsiError::io("unmount volume", dir, e))?;
        remove_tree(dir).map_err(|e| CsiError::io("remove volume directory", dir, e))
    }

    /// For a disk-backed emptyDir with a `sizeLimit`: `Some((used, limit))` when its usage is
    /// over the limit.
    pub fn size_limit_exceeded(
        &self,
        volume: &Volume,
        dir: &Path,
    ) -> Result<Option<(u64, u64)>, CsiError> {
        let Some(empty) = &volume.empty_dir else {
            return Ok(None);
        };
        let (Some(limit), "") = (&empty.size_limit, empty.medium.as_deref().unwrap_or("")) else {
            return Ok(None);
        };
        let limit = size_bytes(&volume.name, "emptyDir.sizeLimit", limit)?;
        let (used, _) = tree_usage(dir).map_err(|e| CsiError::io("measure emptyDir", dir, e))?;
        Ok((used > limit).then_some((used, limit)))
    }

    fn make_dir(&self, dir: &Path, backing: Backing, mode: u32) -> Result<(), CsiError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)
            .map_err(|e| CsiError::io("create volume directory", dir, e))?;
        match backing {
            Backing::Disk => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| CsiError::io("chmod volume directory", dir, e)),
            Backing::Tmpfs { size_bytes } => {
                let mounted = self
                    .mounter
                    .is_mount_point(dir)
                    .map_err(|e| CsiError::io("inspect mount", dir, e))?;
                if !mounted {
                    self.mounter
                        .tmpfs(dir, size_bytes, mode)
                        .map_err(|e| CsiError::io("mount tmpfs", dir, e))?;
                }
                Ok(())
            }
        }
    }

    async fn payload(
        &self,
        pod: &Pod,
        volume: &Volume,
        objects: &dyn ObjectLookup,
    ) -> Result<(Payload, Backing), CsiError> {
        let name = volume.name.as_str();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut out = Payload::new();
        let tmpfs = Backing::Tmpfs { size_bytes: 0 };
        if let Some(src) = &volume.config_map {
            let optional = src.optional.unwrap_or(false);
            if let Some(data) = self
                .config_map(
                    objects,
                    name,
                    "configMap.name",
                    namespace,
                    &src.name,
                    optional,
                )
                .await?
            {
                let object = format!("configmap {namespace}/{}", src.name);
                let mode = src.default_mode.unwrap_or(DEFAULT_MODE);
                project_keys(
                    name,
                    "configMap",
                    &object,
                    &data,
                    src.items.as_deref(),
                    mode,
                    optional,
                    &mut out,
                )?;
            }
            return Ok((out, Backing::Disk));
        }
        if let Some(src) = &volume.secret {
            let optional = src.optional.unwrap_or(false);
            let secret_name = src.secret_name.as_deref().unwrap_or_default();
            if let Some(data) = self
                .secret(
                    objects,
                    name,
                    "secret.secretName",
                    namespace,
                    secret_name,
                    optional,
                )
                .await?
            {
                let object = format!("secret {namespace}/{secret_name}");
                let mode = src.default_mode.unwrap_or(DEFAULT_MODE);
                project_keys(
                    name,
                    "secret",
                    &object,
                    &data,
                    src.items.as_deref(),
                    mode,
                    optional,
                    &mut out,
                )?;
            }
            return Ok((out, tmpfs));
        }
        if let Some(src) = &volume.downward_api {
            let mode = src.default_mode.unwrap_or(DEFAULT_MODE);
            let items = src.items.as_deref().unwrap_or_default();
            project_downward(
                name,
                "downwardAPI",
                pod,
                items,
                mode,
                &self.node_allocatable,
                &mut out,
            )?;
            return Ok((out, Backing::Disk));
        }
        if let Some(src) = &volume.projected {
            let mode = src.default_mode.unwrap_or(DEFAULT_MODE);
            for (i, source) in src.sources.iter().flatten().enumerate() {
                let field = format!("projected.sources[{i}]");
                if let Some(cm) = &source.config_map {
                    let optional = cm.optional.unwrap_or(false);
                    let f = format!("{field}.configMap");
                    if let Some(data) = self
                        .config_map(objects, name, &f, namespace, &cm.name, optional)
                        .await?
                    {
                        let object = format!("configmap {namespace}/{}", cm.name);
                        project_keys(
                            name,
                            &f,
                            &object,
                            &data,
                            cm.items.as_deref(),
                            mode,
                            optional,
                            &mut out,
                        )?;
                    }
                } else if let Some(s) = &source.secret {
                    let optional = s.optional.unwrap_or(false);
                    let f = format!("{field}.secret");
                    if let Some(data) = self
                        .secret(objects, name, &f, namespace, &s.name, optional)
                        .await?
                    {
                        let object = format!("secret {namespace}/{}", s.name);
                        project_keys(
                            name,
                            &f,
                            &object,
                            &data,
                            s.items.as_deref(),
                            mode,
                            optional,
                            &mut out,
                        )?;
                    }
                } else if let Some(d) = &source.downward_api {
                    let items = d.items.as_deref().unwrap_or_default();
                    let f = format!("{field}.downwardAPI");
                    project_downward(name, &f, pod, items, mode, &self.node_allocatable, &mut out)?;
                } else {
                    return Err(CsiError::InvalidVolume {
                        volume: name.into(),
                        field,
                        message: "only configMap, secret and downwardAPI projections are supported"
                            .into(),
                    });
                }
            }
            return Ok((out, tmpfs));
        }
        Err(CsiError::InvalidVolume {
            volume: name.into(),
            field: "source".into(),
            message:
                "not an in-tree source this node handles (emptyDir, hostPath, configMap, secret, \
                      downwardAPI, projected)"
                    .into(),
        })
    }

    async fn config_map(
        &self,
        objects: &dyn ObjectLookup,
        volume: &str,
        field: &str,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, CsiError> {
        let found = objects.config_map(namespace, name).await;
        let data = found.map(|cm| cm.map(|cm| config_map_data(&cm)));
        source_data(volume, field, "configmap", namespace, name, optional, data)
    }

    async fn secret(
        &self,
        objects: &dyn ObjectLookup,
        volume: &str,
        field: &str,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, CsiError> {
        let found = objects.secret(namespace, name).await;
        let data = found.map(|s| s.map(|s| secret_data(&s)));
        source_data(volume, field, "secret", namespace, name, optional, data)
    }
}

fn size_bytes(volume: &str, field: &str, q: &Quantity) -> Result<u64, CsiError> {
    wharf_core::quantity::units(q)
        .map_err(|e| CsiError::InvalidVolume {
            volume: volume.into(),
            field: field.into(),
            message: e.to_string(),
        })
        .and_then(|v| {
            u64::try_from(v).map_err(|_| CsiError::InvalidVolume {
                volume: volume.into(),
                field: field.into(),
                message: format!("{} is negative", q.0),
            })
        })
}

/// The data of a configMap or secret source, or `None` for a missing optional one; a missing
/// required one, or a failed lookup, is an error naming the volume and field.
fn source_data(
    volume: &str,
    field: &str,
    what: &str,
    namespace: &str,
    name: &str,
    optional: bool,
    found: Result<Option<BTreeMap<String, Vec<u8>>>, String>,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, CsiError> {
    let invalid = |message: String| CsiError::InvalidVolume {
        volume: volume.into(),
        field: field.into(),
        message,
    };
    match found.map_err(invalid)? {
        Some(data) => Ok(Some(data)),
        None if optional => Ok(None),
        None => Err(invalid(format!("{what} {namespace}/{name} not found"))),
    }
}

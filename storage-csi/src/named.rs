//! Docker-style named volumes (`docker volume create/ls/inspect/rm`) on any
//! [`VolumePlugin`], by default the built-in hostpath driver.
//!
//! A named volume is a driver volume created under the CSI name `docker-<name>`, so create is
//! idempotent end to end. Containers take and release it with [`NamedVolumes::acquire`] and
//! [`NamedVolumes::release`]: the first user stages and publishes it at
//! `<root>/<name>/_data` (Docker's mountpoint layout), the last one unpublishes and unstages.
//! [`NamedVolumes::remove`] refuses a volume in use and names its users. The registry is a
//! JSON file under `root`, replaced atomically, so it survives the embedding program.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use wharf_core::backend::volume::{
    AccessMode, AccessType, CapacityRange, CreateVolumeRequest, NodePublishRequest,
    NodeStageRequest, StringMap, VolumeCapability,
};
use wharf_core::backend::{BackendError, BackendResult, ErrorKind, VolumePlugin};

use crate::fsutil::write_atomic;

/// One named volume, as `docker volume inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedVolume {
    /// The volume's name.
    pub name: String,
    /// The driver (plugin name).
    pub driver: String,
    /// The driver's volume id.
    pub volume_id: String,
    /// Size in bytes.
    pub capacity_bytes: u64,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// Where containers mount it (exists while in use).
    pub mountpoint: PathBuf,
    /// Containers using it.
    pub users: BTreeSet<String>,
}

/// The named-volume registry of one host.
pub struct NamedVolumes {
    plugin: Arc<dyn VolumePlugin>,
    node_id: String,
    root: PathBuf,
    volumes: Mutex<BTreeMap<String, NamedVolume>>,
}

impl std::fmt::Debug for NamedVolumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedVolumes")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn err(kind: ErrorKind, op: &str, name: &str, message: impl Into<String>) -> BackendError {
    BackendError::new(kind, op, name, message)
}

fn capability() -> VolumeCapability {
    VolumeCapability {
        access_type: AccessType::Mount {
            fs_type: String::new(),
            mount_flags: Vec::new(),
        },
        access_mode: AccessMode::SingleNodeMultiWriter,
    }
}

/// Docker's volume name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() >= 2
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl NamedVolumes {
    /// Opens the registry under `root`, using `plugin` on node `node_id`.
    pub async fn open(
        plugin: Arc<dyn VolumePlugin>,
        node_id: impl Into<String>,
        root: impl Into<PathBuf>,
    ) -> BackendResult<Self> {
        let root = root.into();
        let io = |e: std::io::Error| {
            err(
                ErrorKind::Internal,
                "open volume registry",
                &root.display().to_string(),
                e.to_string(),
            )
        };
        std::fs::create_dir_all(&root).map_err(io)?;
        let volumes = match std::fs::read(root.join("volumes.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                err(
                    ErrorKind::Internal,
                    "open volume registry",
                    &root.display().to_string(),
                    e.to_string(),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(e)),
        };
        Ok(NamedVolumes {
            plugin,
            node_id: node_id.into(),
            root,
            volumes: Mutex::new(volumes),
        })
    }

    fn save(
        &self,
        volumes: &BTreeMap<String, NamedVolume>,
        op: &str,
        name: &str,
    ) -> BackendResult<()> {
        let bytes = serde_json::to_vec(volumes)
            .map_err(|e| err(ErrorKind::Internal, op, name, e.to_string()))?;
        write_atomic(&self.root.join("volumes.json"), &bytes)
            .map_err(|e| err(ErrorKind::Internal, op, name, e.to_string()))
    }

    fn staging(&self, name: &str) -> PathBuf {
        self.root.join(name).join("staging")
    }

    /// `docker volume create`: makes the volume, or returns the existing one of that name.
    pub async fn create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        capacity_bytes: u64,
    ) -> BackendResult<NamedVolume> {
        let op = "create volume";
        if !valid_name(name) {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                name,
                "names are [a-zA-Z0-9][a-zA-Z0-9_.-]+, at most 64 characters",
            ));
        }
        let mut volumes = self.volumes.lock().await;
        if let Some(existing) = volumes.get(name) {
            return Ok(existing.clone());
        }
        let volume = self
            .plugin
            .create_volume(&CreateVolumeRequest {
                name: format!("docker-{name}"),
                capacity: CapacityRange {
                    required_bytes: capacity_bytes,
                    limit_bytes: 0,
                },
                capabilities: vec![capability()],
                ..Default::default()
            })
            .await?;
        let named = NamedVolume {
            name: name.to_string(),
            driver: self.plugin.name().to_string(),
            volume_id: volume.volume_id,
            capacity_bytes: volume.capacity_bytes,
            labels,
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            mountpoint: self.root.join(name).join("_data"),
            users: BTreeSet::new(),
        };
        volumes.insert(name.to_string(), named.clone());
        self.save(&volumes, op, name)?;
        Ok(named)
    }

    /// `docker volume ls`.
    pub async fn list(&self) -> Vec<NamedVolume> {
        self.volumes.lock().await.values().cloned().collect()
    }

    /// `docker volume inspect`.
    pub async fn inspect(&self, name: &str) -> BackendResult<NamedVolume> {
        self.volumes.lock().await.get(name).cloned().ok_or_else(|| {
            err(
                ErrorKind::NotFound,
                "inspect volume",
                name,
                "no such volume",
            )
        })
    }

    /// `docker volume rm`: refuses a volume in use. Missing is NotFound, as Docker says.
    pub async fn remove(&self, name: &str) -> BackendResult<()> {
        let op = "remove volume";
        let mut volumes = self.volumes.lock().await;
        let volume = volumes
            .get(name)
            .ok_or_else(|| err(ErrorKind::NotFound, op, name, "no such volume"))?;
        if !volume.users.is_empty() {
            return Err(err(
                ErrorKind::FailedPrecondition,
                op,
                name,
                format!("volume is in use by {:?}", volume.users),
            ));
        }
        self.plugin
            .delete_volume(&volume.volume_id, &StringMap::new())
            .await?;
        let _ = std::fs::remove_dir_all(self.root.join(name));
        volumes.remove(name);
        self.save(&volumes, op, name)
    }

    /// A container starts using the volume; the first user mounts it at its mountpoint.
    /// Returns the mountpoint. Idempotent per container.
    pub async fn acquire(&self, name: &str, container_id: &str) -> BackendResult<PathBuf> {
        let op = "acquire volume";
        let mut volumes = self.volumes.lock().await;
        let volume = volumes
            .get(name)
            .cloned()
            .ok_or_else(|| err(ErrorKind::NotFound, op, name, "no such volume"))?;
        if volume.users.is_empty() {
            let caps = self.plugin.capabilities().await?;
            let staging = caps.stage_unstage.then(|| self.staging(name));
            if let Some(staging) = &staging {
                self.plugin
                    .node_stage(&NodeStageRequest {
                        volume_id: volume.volume_id.clone(),
                        publish_context: StringMap::new(),
                        staging_path: staging.clone(),
                        capability: capability(),
                        secrets: StringMap::new(),
                        volume_context: StringMap::new(),
                    })
                    .await?;
            }
            let published = self
                .plugin
                .node_publish(&NodePublishRequest {
                    volume_id: volume.volume_id.clone(),
                    publish_context: StringMap::new(),
                    staging_path: staging.clone(),
                    target_path: volume.mountpoint.clone(),
                    capability: capability(),
                    readonly: false,
                    secrets: StringMap::new(),
                    volume_context: StringMap::new(),
                })
                .await;
            if let Err(e) = published {
                if let Some(staging) = &staging {
                    let _ = self.plugin.node_unstage(&volume.volume_id, staging).await;
                }
                return Err(e);
            }
        }
        let entry = volumes.get_mut(name).expect("checked above");
        if entry.users.insert(container_id.to_string()) {
            self.save(&volumes, op, name)?;
        }
        Ok(volume.mountpoint)
    }

    /// A container stops using the volume; the last user unmounts it. Idempotent.
    pub async fn release(&self, name: &str, container_id: &str) -> BackendResult<()> {
        let op = "release volume";
        let mut volumes = self.volumes.lock().await;
        let Some(volume) = volumes.get(name).cloned() else {
            return Ok(());
        };
        if !volume.users.contains(container_id) {
            return Ok(());
        }
        if volume.users.len() == 1 {
            self.plugin
                .node_unpublish(&volume.volume_id, &volume.mountpoint)
                .await?;
            if self.plugin.capabilities().await?.stage_unstage {
                self.plugin
                    .node_unstage(&volume.volume_id, &self.staging(name))
                    .await?;
            }
        }
        volumes
            .get_mut(name)
            .expect("present")
            .users
            .remove(container_id);
        self.save(&volumes, op, name)
    }

    /// The node id this registry publishes on.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn docker_names() {
        assert!(valid_name("data"));
        assert!(valid_name("my_vol.1-a"));
        assert!(!valid_name("a"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}

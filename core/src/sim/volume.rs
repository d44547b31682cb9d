//! [`SimVolumes`]: a CSI-shaped volume driver that keeps volumes, publications, stagings and
//! snapshots in memory, and enforces the CSI call order (publish needs the stage, unstage
//! needs every publish gone).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::backend::volume::*;
use crate::backend::{BackendError, BackendResult, ErrorKind};

#[derive(Default)]
struct State {
    next_id: u64,
    /// By name (the idempotency key).
    volumes: BTreeMap<String, Volume>,
    snapshots: BTreeMap<String, Snapshot>,
    controller_published: BTreeSet<(String, String)>,
    staged: BTreeMap<String, PathBuf>,
    published: BTreeMap<(String, PathBuf), bool>,
    /// `node_stage` calls, and those that found the volume already staged.
    stages: (usize, usize),
    /// Calls refused for their order: publish before stage, unstage while published.
    order_violations: usize,
}

/// A simulated [`VolumePlugin`] with a fixed capacity.
#[derive(Clone)]
pub struct SimVolumes {
    name: String,
    node_id: String,
    capacity: u64,
    state: Arc<Mutex<State>>,
    node_latency: super::Latency,
}

impl std::fmt::Debug for SimVolumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimVolumes")
            .field("name", &self.name)
            .finish()
    }
}

fn err(kind: ErrorKind, op: &str, object: &str, message: impl Into<String>) -> BackendError {
    BackendError::new(kind, op, object, message)
}

impl SimVolumes {
    /// A driver named `name` (a StorageClass provisioner) on node `node_id`, with `capacity`
    /// bytes to hand out.
    pub fn new(name: &str, node_id: &str, capacity: u64) -> SimVolumes {
        SimVolumes {
            name: name.to_string(),
            node_id: node_id.to_string(),
            capacity,
            state: Arc::default(),
            node_latency: super::Latency::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `node_stage` and `node_publish` slow: each takes effect at once and returns
    /// `delay` later.
    pub fn set_node_latency(&self, delay: std::time::Duration) {
        self.node_latency.set(delay);
    }

    /// How many times `node_stage` was called.
    pub fn stage_calls(&self) -> usize {
        self.lock().stages.0
    }

    /// How many `node_stage` calls found the volume already staged: harmless (staging is
    /// idempotent) but a sign that the caller lost count of its stagings.
    pub fn redundant_stages(&self) -> usize {
        self.lock().stages.1
    }

    /// How many calls were refused for breaking the CSI order (publish before stage,
    /// unstage while still published).
    pub fn order_violations(&self) -> usize {
        self.lock().order_violations
    }

    /// Target paths where volumes are published now.
    pub fn published(&self) -> Vec<(String, PathBuf)> {
        self.lock().published.keys().cloned().collect()
    }

    /// Volume ids staged now.
    pub fn staged(&self) -> Vec<String> {
        self.lock().staged.keys().cloned().collect()
    }

    fn volume_exists(s: &State, volume_id: &str) -> bool {
        s.volumes.values().any(|v| v.volume_id == volume_id)
    }

    fn used(s: &State) -> u64 {
        s.volumes.values().map(|v| v.capacity_bytes).sum()
    }
}

impl SimVolumes {
    fn stage_now(&self, request: &NodeStageRequest) -> BackendResult<()> {
        let mut s = self.lock();
        s.stages.0 += 1;
        if s.staged.contains_key(&request.volume_id) {
            s.stages.1 += 1;
        }
        if !Self::volume_exists(&s, &request.volume_id) {
            return Err(err(
                ErrorKind::NotFound,
                "node stage",
                &request.volume_id,
                "no such volume",
            ));
        }
        match s.staged.get(&request.volume_id) {
            Some(p) if *p != request.staging_path => Err(err(
                ErrorKind::AlreadyExists,
                "node stage",
                &request.volume_id,
                format!("already staged at {}", p.display()),
            )),
            _ => {
                s.staged
                    .insert(request.volume_id.clone(), request.staging_path.clone());
                Ok(())
            }
        }
    }

    fn publish_now(&self, request: &NodePublishRequest) -> BackendResult<()> {
        let mut s = self.lock();
        if !Self::volume_exists(&s, &request.volume_id) {
            return Err(err(
                ErrorKind::NotFound,
                "node publish",
                &request.volume_id,
                "no such volume",
            ));
        }
        if !s.staged.contains_key(&request.volume_id) {
            s.order_violations += 1;
            return Err(err(
                ErrorKind::FailedPrecondition,
                "node publish",
                &request.volume_id,
                "volume is not staged",
            ));
        }
        s.published.insert(
            (request.volume_id.clone(), request.target_path.clone()),
            request.readonly,
        );
        Ok(())
    }
}

#[async_trait]
impl VolumePlugin for SimVolumes {
    fn name(&self) -> &str {
        &self.name
    }

    async fn capabilities(&self) -> BackendResult<DriverCapabilities> {
        Ok(DriverCapabilities {
            create_delete_volume: true,
            publish_unpublish: true,
            expand_volume: true,
            snapshots: true,
            clone_volume: true,
            list_volumes: false,
            get_capacity: true,
            stage_unstage: true,
            volume_stats: true,
            node_expand: false,
        })
    }

    async fn probe(&self) -> BackendResult<()> {
        Ok(())
    }

    async fn create_volume(&self, request: &CreateVolumeRequest) -> BackendResult<Volume> {
        if request.name.is_empty() {
            return Err(err(
                ErrorKind::InvalidArgument,
                "create volume",
                "",
                "name is required",
            ));
        }
        let mut s = self.lock();
        let size = request.capacity.required_bytes;
        if let Some(v) = s.volumes.get(&request.name) {
            let fits = v.capacity_bytes >= size
                && (request.capacity.limit_bytes == 0
                    || v.capacity_bytes <= request.capacity.limit_bytes);
            return if fits && v.source == request.source {
                Ok(v.clone())
            } else {
                Err(err(
                    ErrorKind::AlreadyExists,
                    "create volume",
                    &request.name,
                    "a volume with this name exists with other parameters",
                ))
            };
        }
        if Self::used(&s) + size > self.capacity {
            return Err(err(
                ErrorKind::Unavailable,
                "create volume",
                &request.name,
                format!(
                    "out of capacity: {} of {} bytes used",
                    Self::used(&s),
                    self.capacity
                ),
            ));
        }
        s.next_id += 1;
        let volume = Volume {
            volume_id: format!("simvol-{}", s.next_id),
            capacity_bytes: size,
            volume_context: request.parameters.clone(),
            accessible_topology: Vec::new(),
            source: request.source.clone(),
        };
        s.volumes.insert(request.name.clone(), volume.clone());
        Ok(volume)
    }

    async fn delete_volume(&self, volume_id: &str, _secrets: &StringMap) -> BackendResult<()> {
        let mut s = self.lock();
        if s.controller_published.iter().any(|(v, _)| v == volume_id) {
            return Err(err(
                ErrorKind::FailedPrecondition,
                "delete volume",
                volume_id,
                "volume is still published to a node",
            ));
        }
        s.volumes.retain(|_, v| v.volume_id != volume_id);
        Ok(())
    }

    async fn controller_publish(
        &self,
        volume_id: &str,
        node_id: &str,
        _capability: &VolumeCapability,
        _readonly: bool,
        _volume_context: &StringMap,
    ) -> BackendResult<StringMap> {
        let mut s = self.lock();
        if !Self::volume_exists(&s, volume_id) {
            return Err(err(
                ErrorKind::NotFound,
                "controller publish",
                volume_id,
                "no such volume",
            ));
        }
        s.controller_published
            .insert((volume_id.to_string(), node_id.to_string()));
        Ok(StringMap::from([(
            "device".to_string(),
            format!("/dev/sim/{volume_id}"),
        )]))
    }

    async fn controller_unpublish(&self, volume_id: &str, node_id: &str) -> BackendResult<()> {
        self.lock()
            .controller_published
            .remove(&(volume_id.to_string(), node_id.to_string()));
        Ok(())
    }

    async fn expand_volume(
        &self,
        volume_id: &str,
        capacity: CapacityRange,
    ) -> BackendResult<(u64, bool)> {
        let mut s = self.lock();
        let v = s
            .volumes
            .values_mut()
            .find(|v| v.volume_id == volume_id)
            .ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    "expand volume",
                    volume_id,
                    "no such volume",
                )
            })?;
        v.capacity_bytes = v.capacity_bytes.max(capacity.required_bytes);
        Ok((v.capacity_bytes, false))
    }

    async fn create_snapshot(&self, name: &str, source_volume_id: &str) -> BackendResult<Snapshot> {
        let mut s = self.lock();
        if let Some(snap) = s.snapshots.get(name) {
            return if snap.source_volume_id == source_volume_id {
                Ok(snap.clone())
            } else {
                Err(err(
                    ErrorKind::AlreadyExists,
                    "create snapshot",
                    name,
                    "exists for another volume",
                ))
            };
        }
        let size = s
            .volumes
            .values()
            .find(|v| v.volume_id == source_volume_id)
            .map(|v| v.capacity_bytes)
            .ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    "create snapshot",
                    source_volume_id,
                    "no such volume",
                )
            })?;
        s.next_id += 1;
        let snap = Snapshot {
            snapshot_id: format!("simsnap-{}", s.next_id),
            source_volume_id: source_volume_id.to_string(),
            size_bytes: size,
            ready_to_use: true,
        };
        s.snapshots.insert(name.to_string(), snap.clone());
        Ok(snap)
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> BackendResult<()> {
        self.lock()
            .snapshots
            .retain(|_, s| s.snapshot_id != snapshot_id);
        Ok(())
    }

    async fn capacity(&self, _parameters: &StringMap) -> BackendResult<u64> {
        Ok(self.capacity - Self::used(&self.lock()))
    }

    async fn node_stage(&self, request: &NodeStageRequest) -> BackendResult<()> {
        self.stage_now(request)?;
        self.node_latency.wait().await;
        Ok(())
    }

    async fn node_unstage(&self, volume_id: &str, _staging_path: &Path) -> BackendResult<()> {
        let mut s = self.lock();
        if s.published.keys().any(|(v, _)| v == volume_id) {
            s.order_violations += 1;
            return Err(err(
                ErrorKind::FailedPrecondition,
                "node unstage",
                volume_id,
                "volume is still published",
            ));
        }
        s.staged.remove(volume_id);
        Ok(())
    }

    async fn node_publish(&self, request: &NodePublishRequest) -> BackendResult<()> {
        self.publish_now(request)?;
        self.node_latency.wait().await;
        Ok(())
    }

    async fn node_unpublish(&self, volume_id: &str, target_path: &Path) -> BackendResult<()> {
        self.lock()
            .published
            .remove(&(volume_id.to_string(), target_path.to_path_buf()));
        Ok(())
    }

    async fn node_stats(&self, volume_id: &str, path: &Path) -> BackendResult<VolumeStats> {
        let s = self.lock();
        if !s
            .published
            .contains_key(&(volume_id.to_string(), path.to_path_buf()))
        {
            return Err(err(
                ErrorKind::NotFound,
                "node stats",
                volume_id,
                "not published there",
            ));
        }
        let total = s
            .volumes
            .values()
            .find(|v| v.volume_id == volume_id)
            .map(|v| v.capacity_bytes)
            .unwrap_or(0);
        Ok(VolumeStats {
            total_bytes: total,
            available_bytes: total,
            ..Default::default()
        })
    }

    async fn node_expand(
        &self,
        volume_id: &str,
        _path: &Path,
        _capacity: CapacityRange,
    ) -> BackendResult<u64> {
        Err(err(
            ErrorKind::Unsupported,
            "node expand",
            volume_id,
            "the simulated driver expands in the controller",
        ))
    }

    async fn node_info(&self) -> BackendResult<NodeInfo> {
        Ok(NodeInfo {
            node_id: self.node_id.clone(),
            max_volumes: 0,
            topology: Topology::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap() -> VolumeCapability {
        VolumeCapability {
            access_type: AccessType::Mount {
                fs_type: String::new(),
                mount_flags: Vec::new(),
            },
            access_mode: AccessMode::SingleNodeWriter,
        }
    }

    #[tokio::test]
    async fn lifecycle_in_csi_order() {
        let d = SimVolumes::new("sim.csi.wharf.dev", "n1", 10 << 30);
        let req = CreateVolumeRequest {
            name: "pvc-1".into(),
            capacity: CapacityRange {
                required_bytes: 1 << 30,
                limit_bytes: 0,
            },
            ..Default::default()
        };
        let v = d.create_volume(&req).await.unwrap();
        assert_eq!(d.create_volume(&req).await.unwrap(), v);
        let ctx = d
            .controller_publish(&v.volume_id, "n1", &cap(), false, &StringMap::new())
            .await
            .unwrap();
        let publish = NodePublishRequest {
            volume_id: v.volume_id.clone(),
            publish_context: ctx.clone(),
            staging_path: Some("/stage/v".into()),
            target_path: "/pods/p1/v".into(),
            capability: cap(),
            readonly: false,
            secrets: StringMap::new(),
            volume_context: StringMap::new(),
        };
        assert_eq!(
            d.node_publish(&publish).await.unwrap_err().kind,
            ErrorKind::FailedPrecondition
        );
        d.node_stage(&NodeStageRequest {
            volume_id: v.volume_id.clone(),
            publish_context: ctx,
            staging_path: "/stage/v".into(),
            capability: cap(),
            secrets: StringMap::new(),
            volume_context: StringMap::new(),
        })
        .await
        .unwrap();
        d.node_publish(&publish).await.unwrap();
        assert!(d
            .node_unstage(&v.volume_id, Path::new("/stage/v"))
            .await
            .is_err());
        d.node_unpublish(&v.volume_id, Path::new("/pods/p1/v"))
            .await
            .unwrap();
        d.node_unpublish(&v.volume_id, Path::new("/pods/p1/v"))
            .await
            .unwrap();
        d.node_unstage(&v.volume_id, Path::new("/stage/v"))
            .await
            .unwrap();
        assert!(d
            .delete_volume(&v.volume_id, &StringMap::new())
            .await
            .is_err());
        d.controller_unpublish(&v.volume_id, "n1").await.unwrap();
        d.delete_volume(&v.volume_id, &StringMap::new())
            .await
            .unwrap();
        assert_eq!(d.capacity(&StringMap::new()).await.unwrap(), 10 << 30);
    }

    #[tokio::test]
    async fn incompatible_create_and_capacity() {
        let d = SimVolumes::new("sim", "n1", 100);
        let mut req = CreateVolumeRequest {
            name: "a".into(),
            capacity: CapacityRange {
                required_bytes: 60,
                limit_bytes: 0,
            },
            ..Default::default()
        };
        d.create_volume(&req).await.unwrap();
        req.capacity.required_bytes = 80;
        assert_eq!(
            d.create_volume(&req).await.unwrap_err().kind,
            ErrorKind::AlreadyExists
        );
        req.name = "b".into();
        assert_eq!(
            d.create_volume(&req).await.unwrap_err().kind,
            ErrorKind::Unavailable
        );
    }
}

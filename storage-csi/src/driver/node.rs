//! The Node service's logic: staging, publishing, stats, expansion, node info.

use std::path::{Path, PathBuf};

use tonic::Status;

use super::state::{StageRecord, TargetRecord};
use super::validate::{capability, required};
use super::{io_status, HostPathDriver};
use crate::fsutil::{remove_empty_dir, tree_usage};
use crate::mount::BindOptions;
use crate::proto::{self, volume_capability::access_mode::Mode};

impl HostPathDriver {
    /// NodeStageVolume: bind-mounts the volume's directory at the staging path.
    pub fn node_stage(
        &self,
        req: proto::NodeStageVolumeRequest,
    ) -> Result<proto::NodeStageVolumeResponse, Status> {
        let id = required(&req.volume_id, "volume_id")?;
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let cap = capability(req.volume_capability.as_ref(), "volume_capability")?;
        let mut state = self.lock();
        let volume = state
            .volumes
            .get_mut(id)
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
        let wanted = StageRecord {
            access_mode: cap.mode,
            mount_flags: cap.mount_flags.clone(),
        };
        let options = BindOptions {
            readonly: false,
            flags: cap.mount_flags,
        };
        if let Some(existing) = volume.staged.get(&staging) {
            if *existing != wanted {
                return Err(Status::already_exists(format!(
                    "volume {id} is staged at {} with another capability",
                    staging.display()
                )));
            }
            // Staged before; mount again if the mount went away (e.g. a host reboot).
            self.ensure_bind(&self.volume_dir(id), &staging, &options)?;
            return Ok(proto::NodeStageVolumeResponse {});
        }
        std::fs::create_dir_all(&staging)
            .map_err(|e| io_status("create staging path", &staging, e))?;
        self.ensure_bind(&self.volume_dir(id), &staging, &options)?;
        volume.staged.insert(staging.clone(), wanted);
        if let Err(status) = self.save(&state) {
            let _ = self.mounter().unmount(&staging);
            if let Some(volume) = state.volumes.get_mut(id) {
                volume.staged.remove(&staging);
            }
            return Err(status);
        }
        tracing::debug!(volume = %id, staging = %staging.display(), "staged");
        Ok(proto::NodeStageVolumeResponse {})
    }

    /// NodeUnstageVolume: unmounts the staging path. The CO removes the directory.
    pub fn node_unstage(
        &self,
        req: proto::NodeUnstageVolumeRequest,
    ) -> Result<proto::NodeUnstageVolumeResponse, Status> {
        let id = required(&req.volume_id, "volume_id")?;
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let mut state = self.lock();
        let volume = state
            .volumes
            .get_mut(id)
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
        if let Some((target, _)) = volume
            .targets
            .iter()
            .find(|(_, t)| t.staging_path == staging)
        {
            return Err(Status::failed_precondition(format!(
                "volume {id} is still published at {} from {}",
                target.display(),
                staging.display()
            )));
        }
        self.mounter()
            .unmount(&staging)
            .map_err(|e| io_status("unmount staging path", &staging, e))?;
        if volume.staged.remove(&staging).is_some() {
            self.save(&state)?;
        }
        tracing::debug!(volume = %id, staging = %staging.display(), "unstaged");
        Ok(proto::NodeUnstageVolumeResponse {})
    }

    /// NodePublishVolume: bind-mounts the staging path at the target, read-only if asked
    /// or if the access mode only reads.
    pub fn node_publish(
        &self,
        req: proto::NodePublishVolumeRequest,
    ) -> Result<proto::NodePublishVolumeResponse, Status> {
        let id = required(&req.volume_id, "volume_id")?;
        let target = PathBuf::from(required(&req.target_path, "target_path")?);
        let cap = capability(req.volume_capability.as_ref(), "volume_capability")?;
        if req.staging_target_path.is_empty() {
            return Err(Status::failed_precondition(
                "staging_target_path is required: this driver stages volumes",
            ));
        }
        let staging = PathBuf::from(&req.staging_target_path);
        let readonly = req.readonly || cap.is_reader_only();
        let mut state = self.lock();
        let volume = state
            .volumes
            .get_mut(id)
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
        if !volume.staged.contains_key(&staging) {
            return Err(Status::failed_precondition(format!(
                "volume {id} is not staged at {}",
                staging.display()
            )));
        }
        let wanted = TargetRecord {
            staging_path: staging.clone(),
            readonly,
            access_mode: cap.mode,
            mount_flags: cap.mount_flags.clone(),
        };
        let options = BindOptions {
            readonly,
            flags: cap.mount_flags,
        };
        if let Some(existing) = volume.targets.get(&target) {
            if *existing != wanted {
                return Err(Status::already_exists(format!(
                    "volume {id} is published at {} with another capability or readonly flag",
                    target.display()
                )));
            }
            self.ensure_bind(&staging, &target, &options)?;
            return Ok(proto::NodePublishVolumeResponse {});
        }
        if cap.mode == Mode::SingleNodeSingleWriter as i32 && !volume.targets.is_empty() {
            return Err(Status::failed_precondition(format!(
                "volume {id} is SINGLE_NODE_SINGLE_WRITER and already published at {:?}",
                volume.targets.keys().collect::<Vec<_>>()
            )));
        }
        std::fs::create_dir_all(&target)
            .map_err(|e| io_status("create target path", &target, e))?;
        if let Err(status) = self.ensure_bind(&staging, &target, &options) {
            let _ = remove_empty_dir(&target);
            return Err(status);
        }
        volume.targets.insert(target.clone(), wanted);
        if let Err(status) = self.save(&state) {
            let _ = self.mounter().unmount(&target);
            let _ = remove_empty_dir(&target);
            if let Some(volume) = state.volumes.get_mut(id) {
                volume.targets.remove(&target);
            }
            return Err(status);
        }
        tracing::debug!(volume = %id, target = %target.display(), readonly, "published");
        Ok(proto::NodePublishVolumeResponse {})
    }

    /// NodeUnpublishVolume: unmounts the target and removes the directory publish made.
    pub fn node_unpublish(
        &self,
        req: proto::NodeUnpublishVolumeRequest,
    ) -> Result<proto::NodeUnpublishVolumeResponse, Status> {
        let id = required(&req.volume_id, "volume_id")?;
        let target = PathBuf::from(required(&req.target_path, "target_path")?);
        let mut state = self.lock();
        let volume = state
            .volumes
            .get_mut(id)
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
        self.mounter()
            .unmount(&target)
            .map_err(|e| io_status("unmount target path", &target, e))?;
        match remove_empty_dir(&target) {
            Ok(()) => {}
            // Something other than our mount lives there: leave the caller's data alone.
            Err(err) if err.raw_os_error() == Some(nix::libc::ENOTEMPTY) => {
                tracing::warn!(target = %target.display(), "target path not empty after unmount; left in place");
            }
            Err(err) => return Err(io_status("remove target path", &target, err)),
        }
        if volume.targets.remove(&target).is_some() {
            self.save(&state)?;
        }
        tracing::debug!(volume = %id, target = %target.display(), "unpublished");
        Ok(proto::NodeUnpublishVolumeResponse {})
    }

    /// NodeGetVolumeStats: usage of the volume's directory against its capacity.
    pub fn node_get_volume_stats(
        &self,
        req: proto::NodeGetVolumeStatsRequest,
    ) -> Result<proto::NodeGetVolumeStatsResponse, Status> {
        let id = required(&req.volume_id, "volume_id")?;
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        let (capacity, dir) = {
            let state = self.lock();
            let volume = state
                .volumes
                .get(id)
                .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
            if !volume.targets.contains_key(&path) && !volume.staged.contains_key(&path) {
                return Err(Status::not_found(format!(
                    "volume {id} is not published or staged at {}",
                    path.display()
                )));
            }
            (volume.capacity_bytes, self.volume_dir(id))
        };
        if !path.exists() {
            return Err(Status::not_found(format!(
                "volume path {} does not exist",
                path.display()
            )));
        }
        let (used, inodes_used) =
            tree_usage(&dir).map_err(|e| io_status("measure volume", &dir, e))?;
        let fs =
            nix::sys::statvfs::statvfs(&dir).map_err(|e| io_status("statvfs", &dir, e.into()))?;
        let host_free = fs.blocks_available() as u64 * fs.fragment_size() as u64;
        let available = capacity.saturating_sub(used).min(host_free);
        Ok(proto::NodeGetVolumeStatsResponse {
            usage: vec![
                proto::VolumeUsage {
                    available: available as i64,
                    total: capacity as i64,
                    used: used as i64,
                    unit: proto::volume_usage::Unit::Bytes as i32,
                },
                proto::VolumeUsage {
                    available: fs.files_available() as i64,
                    total: (fs.files_available() as u64 + inodes_used) as i64,
                    used: inodes_used as i64,
                    unit: proto::volume_usage::Unit::Inodes as i32,
                },
            ],
            volume_condition: None,
        })
    }

    /// NodeExpandVolume: a directory has nothing to grow; reports the volume's size.
    pub fn node_expand_volume(
        &self,
        req: proto::NodeExpandVolumeRequest,
    ) -> Result<proto::NodeExpandVolumeResponse, Status> {
        let id = required(&req.volume_id, "volume_id")?;
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        let state = self.lock();
        let volume = state
            .volumes
            .get(id)
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
        if !path.exists() {
            return Err(Status::not_found(format!(
                "volume path {} does not exist",
                path.display()
            )));
        }
        if let Some(range) = req.capacity_range {
            if range.required_bytes > 0 && range.required_bytes as u64 > volume.capacity_bytes {
                return Err(Status::out_of_range(format!(
                    "volume {id} has {} bytes: expand it with ControllerExpandVolume first",
                    volume.capacity_bytes
                )));
            }
        }
        Ok(proto::NodeExpandVolumeResponse {
            capacity_bytes: volume.capacity_bytes as i64,
        })
    }

    /// NodeGetInfo.
    pub fn node_get_info(&self) -> proto::NodeGetInfoResponse {
        proto::NodeGetInfoResponse {
            node_id: self.config().node_id.clone(),
            max_volumes_per_node: self.config().max_volumes_per_node as i64,
            accessible_topology: Some(self.node_topology()),
        }
    }

    fn ensure_bind(
        &self,
        source: &Path,
        target: &Path,
        options: &BindOptions,
    ) -> Result<(), Status> {
        let mounted = self
            .mounter()
            .is_mount_point(target)
            .map_err(|e| io_status("inspect mount", target, e))?;
        if !mounted {
            self.mounter()
                .bind(source, target, options)
                .map_err(|e| io_status("bind mount", target, e))?;
        }
        Ok(())
    }
}

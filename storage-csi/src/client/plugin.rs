//! [`VolumePlugin`] for [`CsiPlugin`].

use std::path::Path;

use async_trait::async_trait;
use wharf_core::backend::volume::{
    CapacityRange, CreateVolumeRequest, DriverCapabilities, NodeInfo, NodePublishRequest,
    NodeStageRequest, Snapshot, StringMap, Volume, VolumeCapability, VolumeSource, VolumeStats,
};
use wharf_core::backend::{BackendResult, VolumePlugin};

use super::convert::{
    capability_out, map_in, map_out, range_out, snapshot_in, source_out, topology_out, volume_in,
};
use super::{CsiPlugin, Staged};
use crate::error::CsiError;
use crate::fsutil::remove_empty_dir;
use crate::proto::{
    self, controller_service_capability::rpc::Type as Ctl, node_service_capability::rpc::Type as Nd,
};

/// NOT_FOUND is success for calls that remove something.
fn gone_is_ok(result: Result<(), CsiError>) -> Result<(), CsiError> {
    match result {
        Err(err) if err.code() == Some(tonic::Code::NotFound) => Ok(()),
        other => other,
    }
}

#[async_trait]
impl VolumePlugin for CsiPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    async fn capabilities(&self) -> BackendResult<DriverCapabilities> {
        let a = &self.advertised;
        Ok(DriverCapabilities {
            create_delete_volume: a.has_controller(Ctl::CreateDeleteVolume),
            publish_unpublish: a.has_controller(Ctl::PublishUnpublishVolume),
            expand_volume: a.has_controller(Ctl::ExpandVolume),
            snapshots: a.has_controller(Ctl::CreateDeleteSnapshot),
            clone_volume: a.has_controller(Ctl::CloneVolume),
            list_volumes: a.has_controller(Ctl::ListVolumes),
            get_capacity: a.has_controller(Ctl::GetCapacity),
            stage_unstage: a.has_node(Nd::StageUnstageVolume),
            volume_stats: a.has_node(Nd::GetVolumeStats),
            node_expand: a.has_node(Nd::ExpandVolume),
        })
    }

    async fn probe(&self) -> BackendResult<()> {
        let response = self
            .retry
            .run(
                "Probe",
                &self.name,
                call!(
                    proto::identity_client::IdentityClient::new(self.channel.clone()),
                    probe,
                    proto::ProbeRequest {}
                ),
            )
            .await
            .map_err(|e| e.into_backend("probe", &self.name))?;
        match response.ready {
            Some(false) => Err(CsiError::Rpc {
                method: "Probe",
                object: self.name.clone(),
                code: tonic::Code::Unavailable,
                message: "driver reports not ready".into(),
            }
            .into_backend("probe", &self.name)),
            _ => Ok(()),
        }
    }

    async fn create_volume(&self, request: &CreateVolumeRequest) -> BackendResult<Volume> {
        let op = "create volume";
        let check = || -> Result<(), CsiError> {
            self.require_controller("CreateVolume", Ctl::CreateDeleteVolume)?;
            match &request.source {
                Some(VolumeSource::Snapshot(_)) => {
                    self.require_controller("CreateVolume", Ctl::CreateDeleteSnapshot)
                }
                Some(VolumeSource::Volume(_)) => {
                    self.require_controller("CreateVolume", Ctl::CloneVolume)
                }
                None => Ok(()),
            }
        };
        check().map_err(|e| e.into_backend(op, &request.name))?;
        let accessibility = (!request.requisite_topology.is_empty()
            || !request.preferred_topology.is_empty())
        .then(|| proto::TopologyRequirement {
            requisite: request
                .requisite_topology
                .iter()
                .map(topology_out)
                .collect(),
            preferred: request
                .preferred_topology
                .iter()
                .map(topology_out)
                .collect(),
        });
        let wire = proto::CreateVolumeRequest {
            name: request.name.clone(),
            capacity_range: (request.capacity != CapacityRange::default())
                .then(|| range_out(request.capacity)),
            volume_capabilities: request.capabilities.iter().map(capability_out).collect(),
            parameters: map_out(&request.parameters),
            secrets: map_out(&request.secrets),
            volume_content_source: request.source.as_ref().map(source_out),
            accessibility_requirements: accessibility,
            mutable_parameters: Default::default(),
        };
        let response = self
            .retry
            .run(
                "CreateVolume",
                &request.name,
                call!(self.controller(), create_volume, wire),
            )
            .await
            .map_err(|e| e.into_backend(op, &request.name))?;
        let volume = response.volume.ok_or_else(|| {
            CsiError::Rpc {
                method: "CreateVolume",
                object: request.name.clone(),
                code: tonic::Code::Internal,
                message: "driver answered without a volume".into(),
            }
            .into_backend(op, &request.name)
        })?;
        Ok(volume_in(volume))
    }

    async fn delete_volume(&self, volume_id: &str, secrets: &StringMap) -> BackendResult<()> {
        let op = "delete volume";
        self.require_controller("DeleteVolume", Ctl::CreateDeleteVolume)
            .map_err(|e| e.into_backend(op, volume_id))?;
        let request = proto::DeleteVolumeRequest {
            volume_id: volume_id.to_string(),
            secrets: map_out(secrets),
        };
        let result = self
            .retry
            .run(
                "DeleteVolume",
                volume_id,
                call!(self.controller(), delete_volume, request),
            )
            .await
            .map(|_| ());
        gone_is_ok(result).map_err(|e| e.into_backend(op, volume_id))
    }

    async fn controller_publish(
        &self,
        volume_id: &str,
        node_id: &str,
        capability: &VolumeCapability,
        readonly: bool,
        volume_context: &StringMap,
    ) -> BackendResult<StringMap> {
        let op = "controller publish";
        self.require_controller("ControllerPublishVolume", Ctl::PublishUnpublishVolume)
            .map_err(|e| e.into_backend(op, volume_id))?;
        let request = proto::ControllerPublishVolumeRequest {
            volume_id: volume_id.to_string(),
            node_id: node_id.to_string(),
            volume_capability: Some(capability_out(capability)),
            readonly,
            secrets: Default::default(),
            volume_context: map_out(volume_context),
        };
        let response = self
            .retry
            .run(
                "ControllerPublishVolume",
                volume_id,
                call!(self.controller(), controller_publish_volume, request),
            )
            .await
            .map_err(|e| e.into_backend(op, volume_id))?;
        Ok(map_in(response.publish_context))
    }

    async fn controller_unpublish(&self, volume_id: &str, node_id: &str) -> BackendResult<()> {
        let op = "controller unpublish";
        self.require_controller("ControllerUnpublishVolume", Ctl::PublishUnpublishVolume)
            .map_err(|e| e.into_backend(op, volume_id))?;
        let request = proto::ControllerUnpublishVolumeRequest {
            volume_id: volume_id.to_string(),
            node_id: node_id.to_string(),
            secrets: Default::default(),
        };
        let result = self
            .retry
            .run(
                "ControllerUnpublishVolume",
                volume_id,
                call!(self.controller(), controller_unpublish_volume, request),
            )
            .await
            .map(|_| ());
        gone_is_ok(result).map_err(|e| e.into_backend(op, volume_id))
    }

    async fn expand_volume(
        &self,
        volume_id: &str,
        capacity: CapacityRange,
    ) -> BackendResult<(u64, bool)> {
        let op = "expand volume";
        self.require_controller("ControllerExpandVolume", Ctl::ExpandVolume)
            .map_err(|e| e.into_backend(op, volume_id))?;
        let request = proto::ControllerExpandVolumeRequest {
            volume_id: volume_id.to_string(),
            capacity_range: Some(range_out(capacity)),
            ..Default::default()
        };
        let response = self
            .retry
            .run(
                "ControllerExpandVolume",
                volume_id,
                call!(self.controller(), controller_expand_volume, request),
            )
            .await
            .map_err(|e| e.into_backend(op, volume_id))?;
        Ok((
            response.capacity_bytes.max(0) as u64,
            response.node_expansion_required,
        ))
    }

    async fn create_snapshot(&self, name: &str, source_volume_id: &str) -> BackendResult<Snapshot> {
        let op = "create snapshot";
        self.require_controller("CreateSnapshot", Ctl::CreateDeleteSnapshot)
            .map_err(|e| e.into_backend(op, name))?;
        let request = proto::CreateSnapshotRequest {
            source_volume_id: source_volume_id.to_string(),
            name: name.to_string(),
            ..Default::default()
        };
        let response = self
            .retry
            .run(
                "CreateSnapshot",
                name,
                call!(self.controller(), create_snapshot, request),
            )
            .await
            .map_err(|e| e.into_backend(op, name))?;
        response.snapshot.map(snapshot_in).ok_or_else(|| {
            CsiError::Rpc {
                method: "CreateSnapshot",
                object: name.to_string(),
                code: tonic::Code::Internal,
                message: "driver answered without a snapshot".into(),
            }
            .into_backend(op, name)
        })
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> BackendResult<()> {
        let op = "delete snapshot";
        self.require_controller("DeleteSnapshot", Ctl::CreateDeleteSnapshot)
            .map_err(|e| e.into_backend(op, snapshot_id))?;
        let request = proto::DeleteSnapshotRequest {
            snapshot_id: snapshot_id.to_string(),
            secrets: Default::default(),
        };
        let result = self
            .retry
            .run(
                "DeleteSnapshot",
                snapshot_id,
                call!(self.controller(), delete_snapshot, request),
            )
            .await
            .map(|_| ());
        gone_is_ok(result).map_err(|e| e.into_backend(op, snapshot_id))
    }

    async fn capacity(&self, parameters: &StringMap) -> BackendResult<u64> {
        let op = "get capacity";
        self.require_controller("GetCapacity", Ctl::GetCapacity)
            .map_err(|e| e.into_backend(op, &self.name))?;
        let request = proto::GetCapacityRequest {
            parameters: map_out(parameters),
            ..Default::default()
        };
        let response = self
            .retry
            .run(
                "GetCapacity",
                &self.name,
                call!(self.controller(), get_capacity, request),
            )
            .await
            .map_err(|e| e.into_backend(op, &self.name))?;
        Ok(response.available_capacity.max(0) as u64)
    }

    async fn node_stage(&self, request: &NodeStageRequest) -> BackendResult<()> {
        let op = "node stage";
        let id = &request.volume_id;
        self.require_node("NodeStageVolume", Nd::StageUnstageVolume)
            .map_err(|e| e.into_backend(op, id))?;
        {
            let staged = self.staged.lock().expect("staging table poisoned");
            if staged
                .get(id)
                .is_some_and(|s| s.staging_path == request.staging_path)
            {
                return Ok(());
            }
        }
        let wire = proto::NodeStageVolumeRequest {
            volume_id: id.clone(),
            publish_context: map_out(&request.publish_context),
            staging_target_path: request.staging_path.display().to_string(),
            volume_capability: Some(capability_out(&request.capability)),
            secrets: map_out(&request.secrets),
            volume_context: map_out(&request.volume_context),
        };
        // The CO creates the staging directory (the spec's rule; the driver mounts on it).
        std::fs::create_dir_all(&request.staging_path).map_err(|e| {
            CsiError::io("create staging path", &request.staging_path, e).into_backend(op, id)
        })?;
        self.retry
            .run(
                "NodeStageVolume",
                id,
                call!(self.node(), node_stage_volume, wire),
            )
            .await
            .map_err(|e| e.into_backend(op, id))?;
        self.staged.lock().expect("staging table poisoned").insert(
            id.clone(),
            Staged {
                staging_path: request.staging_path.clone(),
                targets: Default::default(),
            },
        );
        Ok(())
    }

    async fn node_unstage(&self, volume_id: &str, staging_path: &Path) -> BackendResult<()> {
        let op = "node unstage";
        self.require_node("NodeUnstageVolume", Nd::StageUnstageVolume)
            .map_err(|e| e.into_backend(op, volume_id))?;
        {
            let staged = self.staged.lock().expect("staging table poisoned");
            if let Some(entry) = staged.get(volume_id) {
                if !entry.targets.is_empty() {
                    tracing::debug!(
                        volume = volume_id,
                        users = entry.targets.len(),
                        "unstage deferred: the volume is still published"
                    );
                    return Ok(());
                }
            }
        }
        let request = proto::NodeUnstageVolumeRequest {
            volume_id: volume_id.to_string(),
            staging_target_path: staging_path.display().to_string(),
        };
        let result = self
            .retry
            .run(
                "NodeUnstageVolume",
                volume_id,
                call!(self.node(), node_unstage_volume, request),
            )
            .await
            .map(|_| ());
        gone_is_ok(result).map_err(|e| e.into_backend(op, volume_id))?;
        self.staged
            .lock()
            .expect("staging table poisoned")
            .remove(volume_id);
        remove_empty_dir(staging_path).map_err(|e| {
            CsiError::io("remove staging path", staging_path, e).into_backend(op, volume_id)
        })
    }

    async fn node_publish(&self, request: &NodePublishRequest) -> BackendResult<()> {
        let op = "node publish";
        let id = &request.volume_id;
        let wire = proto::NodePublishVolumeRequest {
            volume_id: id.clone(),
            publish_context: map_out(&request.publish_context),
            staging_target_path: request
                .staging_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            target_path: request.target_path.display().to_string(),
            volume_capability: Some(capability_out(&request.capability)),
            readonly: request.readonly,
            secrets: map_out(&request.secrets),
            volume_context: map_out(&request.volume_context),
        };
        self.retry
            .run(
                "NodePublishVolume",
                id,
                call!(self.node(), node_publish_volume, wire),
            )
            .await
            .map_err(|e| e.into_backend(op, id))?;
        if let Some(entry) = self
            .staged
            .lock()
            .expect("staging table poisoned")
            .get_mut(id)
        {
            entry.targets.insert(request.target_path.clone());
        }
        Ok(())
    }

    async fn node_unpublish(&self, volume_id: &str, target_path: &Path) -> BackendResult<()> {
        let op = "node unpublish";
        let request = proto::NodeUnpublishVolumeRequest {
            volume_id: volume_id.to_string(),
            target_path: target_path.display().to_string(),
        };
        let result = self
            .retry
            .run(
                "NodeUnpublishVolume",
                volume_id,
                call!(self.node(), node_unpublish_volume, request),
            )
            .await
            .map(|_| ());
        gone_is_ok(result).map_err(|e| e.into_backend(op, volume_id))?;
        if let Some(entry) = self
            .staged
            .lock()
            .expect("staging table poisoned")
            .get_mut(volume_id)
        {
            entry.targets.remove(target_path);
        }
        Ok(())
    }

    async fn node_stats(&self, volume_id: &str, path: &Path) -> BackendResult<VolumeStats> {
        let op = "node stats";
        self.require_node("NodeGetVolumeStats", Nd::GetVolumeStats)
            .map_err(|e| e.into_backend(op, volume_id))?;
        let request = proto::NodeGetVolumeStatsRequest {
            volume_id: volume_id.to_string(),
            volume_path: path.display().to_string(),
            staging_target_path: String::new(),
        };
        let response = self
            .retry
            .run(
                "NodeGetVolumeStats",
                volume_id,
                call!(self.node(), node_get_volume_stats, request),
            )
            .await
            .map_err(|e| e.into_backend(op, volume_id))?;
        let mut stats = VolumeStats::default();
        for usage in response.usage {
            let (total, used, available) = (
                usage.total.max(0) as u64,
                usage.used.max(0) as u64,
                usage.available.max(0) as u64,
            );
            match proto::volume_usage::Unit::try_from(usage.unit) {
                Ok(proto::volume_usage::Unit::Bytes) => {
                    stats.total_bytes = total;
                    stats.used_bytes = used;
                    stats.available_bytes = available;
                }
                Ok(proto::volume_usage::Unit::Inodes) => {
                    stats.total_inodes = total;
                    stats.used_inodes = used;
                    stats.available_inodes = available;
                }
                _ => {}
            }
        }
        Ok(stats)
    }

    async fn node_expand(
        &self,
        volume_id: &str,
        path: &Path,
        capacity: CapacityRange,
    ) -> BackendResult<u64> {
        let op = "node expand";
        self.require_node("NodeExpandVolume", Nd::ExpandVolume)
            .map_err(|e| e.into_backend(op, volume_id))?;
        let staging = self
            .staged
            .lock()
            .expect("staging table poisoned")
            .get(volume_id)
            .map(|s| s.staging_path.display().to_string())
            .unwrap_or_default();
        let request = proto::NodeExpandVolumeRequest {
            volume_id: volume_id.to_string(),
            volume_path: path.display().to_string(),
            capacity_range: Some(range_out(capacity)),
            staging_target_path: staging,
            ..Default::default()
        };
        let response = self
            .retry
            .run(
                "NodeExpandVolume",
                volume_id,
                call!(self.node(), node_expand_volume, request),
            )
            .await
            .map_err(|e| e.into_backend(op, volume_id))?;
        Ok(response.capacity_bytes.max(0) as u64)
    }

    async fn node_info(&self) -> BackendResult<NodeInfo> {
        let response = self
            .retry
            .run(
                "NodeGetInfo",
                &self.name,
                call!(self.node(), node_get_info, proto::NodeGetInfoRequest {}),
            )
            .await
            .map_err(|e| e.into_backend("node info", &self.name))?;
        Ok(NodeInfo {
            node_id: response.node_id,
            max_volumes: response.max_volumes_per_node.max(0) as u64,
            topology: response
                .accessible_topology
                .map(|t| map_in(t.segments))
                .unwrap_or_default(),
        })
    }
}

//! The Controller service's logic: volumes, snapshots, capacity, controller publish.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;

use tonic::Status;

use super::state::{NodePublishRecord, SnapshotRecord, SourceRecord, VolumeRecord};
use super::validate::{capabilities, capability, map_size, required};
use super::{io_status, HostPathDriver, DEFAULT_VOLUME_BYTES, TOPOLOGY_KEY};
use crate::fsutil::{copy_tree, remove_tree};
use crate::proto::{self, volume_content_source};

impl HostPathDriver {
    /// The topology of this driver's node.
    pub(crate) fn node_topology(&self) -> proto::Topology {
        proto::Topology {
            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), self.config().node_id.clone())]),
        }
    }

    fn volume_message(&self, record: &VolumeRecord) -> proto::Volume {
        proto::Volume {
            capacity_bytes: record.capacity_bytes as i64,
            volume_id: record.id.clone(),
            volume_context: HashMap::new(),
            content_source: record.source.as_ref().map(source_message),
            accessible_topology: vec![self.node_topology()],
        }
    }

    fn topology_matches(&self, topology: &proto::Topology) -> bool {
        topology.segments.get(TOPOLOGY_KEY) == Some(&self.config().node_id)
    }

    /// CreateVolume.
    pub fn create_volume(
        &self,
        req: proto::CreateVolumeRequest,
    ) -> Result<proto::CreateVolumeResponse, Status> {
        let name = required(&req.name, "name")?.to_string();
        let caps = capabilities(&req.volume_capabilities, "volume_capabilities")?;
        map_size(&req.parameters, "parameters")?;
        map_size(&req.secrets, "secrets")?;
        let (required_bytes, limit_bytes) = match req.capacity_range {
            Some(range) => (range.required_bytes, range.limit_bytes),
            None => (0, 0),
        };
        if required_bytes < 0 || limit_bytes < 0 {
            return Err(Status::invalid_argument(
                "capacity_range must not be negative",
            ));
        }
        let (required_bytes, limit_bytes) = (required_bytes as u64, limit_bytes as u64);
        if limit_bytes > 0 && required_bytes > limit_bytes {
            return Err(Status::out_of_range(format!(
                "capacity_range: required_bytes {required_bytes} exceeds limit_bytes {limit_bytes}"
            )));
        }
        let source = match req
            .volume_content_source
            .as_ref()
            .and_then(|s| s.r#type.as_ref())
        {
            None => None,
            Some(volume_content_source::Type::Snapshot(s)) => Some(SourceRecord::Snapshot(
                required(&s.snapshot_id, "volume_content_source.snapshot.snapshot_id")?.into(),
            )),
            Some(volume_content_source::Type::Volume(v)) => Some(SourceRecord::Volume(
                required(&v.volume_id, "volume_content_source.volume.volume_id")?.into(),
            )),
        };
        let parameters: BTreeMap<String, String> = req.parameters.into_iter().collect();

        let mut state = self.lock();
        if let Some(existing) = state.volume_by_name(&name) {
            let fits = existing.capacity_bytes >= required_bytes
                && (limit_bytes == 0 || existing.capacity_bytes <= limit_bytes);
            if fits && existing.parameters == parameters && existing.source == source {
                return Ok(proto::CreateVolumeResponse {
                    volume: Some(self.volume_message(existing)),
                });
            }
            return Err(Status::already_exists(format!(
                "volume {name:?} exists as {} with other capacity, parameters or source",
                existing.id
            )));
        }

        if let Some(topology) = &req.accessibility_requirements {
            if !topology.requisite.is_empty()
                && !topology.requisite.iter().any(|t| self.topology_matches(t))
            {
                return Err(Status::resource_exhausted(format!(
                    "no requisite topology includes node {}",
                    self.config().node_id
                )));
            }
        }

        let source_bytes = match &source {
            None => 0,
            Some(SourceRecord::Snapshot(id)) => {
                state
                    .snapshots
                    .get(id)
                    .ok_or_else(|| {
                        Status::not_found(format!("source snapshot {id} does not exist"))
                    })?
                    .size_bytes
            }
            Some(SourceRecord::Volume(id)) => {
                state
                    .volumes
                    .get(id)
                    .ok_or_else(|| Status::not_found(format!("source volume {id} does not exist")))?
                    .capacity_bytes
            }
        };
        let mut size = if required_bytes > 0 {
            required_bytes
        } else if limit_bytes > 0 {
            DEFAULT_VOLUME_BYTES.min(limit_bytes)
        } else {
            DEFAULT_VOLUME_BYTES
        };
        if size < source_bytes {
            if required_bytes == 0 && (limit_bytes == 0 || limit_bytes >= source_bytes) {
                size = source_bytes;
            } else {
                return Err(Status::out_of_range(format!(
                    "capacity {size} is smaller than the source's {source_bytes} bytes"
                )));
            }
        }
        if size > self.config().max_volume_bytes {
            return Err(Status::out_of_range(format!(
                "capacity {size} exceeds the largest volume, {} bytes",
                self.config().max_volume_bytes
            )));
        }
        let available = self
            .config()
            .capacity_bytes
            .saturating_sub(state.allocated_bytes());
        if size > available {
            return Err(Status::resource_exhausted(format!(
                "capacity {size} exceeds the {available} bytes left"
            )));
        }

        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.volume_dir(&id);
        let made = match &source {
            None => std::fs::create_dir(&dir),
            Some(SourceRecord::Snapshot(snap)) => copy_tree(&self.snapshot_dir(snap), &dir),
            Some(SourceRecord::Volume(vol)) => copy_tree(&self.volume_dir(vol), &dir),
        }
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)));
        if let Err(err) = made {
            let _ = remove_tree(&dir);
            return Err(io_status("create volume directory", &dir, err));
        }
        let record = VolumeRecord {
            id: id.clone(),
            name,
            capacity_bytes: size,
            access_modes: caps.iter().map(|c| c.mode).collect(),
            parameters,
            source,
            published_nodes: BTreeMap::new(),
            staged: BTreeMap::new(),
            targets: BTreeMap::new(),
        };
        let volume = self.volume_message(&record);
        state.volumes.insert(id.clone(), record);
        if let Err(status) = self.save(&state) {
            state.volumes.remove(&id);
            let _ = remove_tree(&dir);
            return Err(status);
        }
        tracing::info!(volume = %id, bytes = size, "hostpath volume created");
        Ok(proto::CreateVolumeResponse {
            volume: Some(volume),
        })
    }

    /// DeleteVolume.
    pub fn delete_volume(
        &self,
        req: proto::DeleteVolumeRequest,
    ) -> Result<proto::DeleteVolumeResponse, Status> {
        let id = required(&req.volume_id, "volume_id")?;
        let mut state = self.lock();
        let Some(record) = state.volumes.get(id) else {
            return Ok(proto::DeleteVolumeResponse {});
        };
        if !record.published_nodes.is_empty()
            || !record.staged.is_empty()
            || !record.targets.is_empty()
        {
            return Err(Status::failed_precondition(format!(
                "volume {id} is in use: published to {:?}, staged at {:?}, published at {:?}",
                record.published_nodes.keys().collect::<Vec<_>>(),
                record.staged.keys().collect::<Vec<_>>(),
                record.targets.keys().collect::<Vec<_>>()
            )));
        }
        let dir = self.volume_dir(id);
        remove_tree(&dir).map_err(|e| io_status("remove volume directory", &dir, e))?;
        let removed = state.volumes.remove(id);
        if let Err(status) = self.save(&state) {
            if let Some(record) = removed {
                state.volumes.insert(id.to_string(), record);
            }
            return Err(status);
        }
        tracing::info!(volume = %id, "hostpath volume deleted");
        Ok(proto::DeleteVolumeResponse {})
    }

    /// ControllerPublishVolume: records the node; a local directory needs no attach.
    pub fn controller_publish(
        &self,
        req: proto::ControllerPublishVolumeRequest,
    ) -> Result<proto::ControllerPublishVolumeResponse, Status> {
        let id = required(&req.volume_id, "volume_id")?;
        let node = required(&req.node_id, "node_id")?;
        let cap = capability(req.volume_capability.as_ref(), "volume_capability")?;
        let mut state = self.lock();
        let volume = state
            .volumes
            .get_mut(id)
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
        if node != self.config().node_id {
            return Err(Status::not_found(format!(
                "node {node} does not exist: this driver serves node {}",
                self.config().node_id
            )));
        }
        let wanted = NodePublishRecord {
            readonly: req.readonly,
            access_mode: cap.mode,
        };
        match volume.published_nodes.get(node) {
            Some(existing) if *existing == wanted => {}
            Some(_) => {
                return Err(Status::already_exists(format!(
                "volume {id} is published to node {node} with another capability or readonly flag"
            )))
            }
            None => {
                let max = self.config().max_volumes_per_node;
                let on_node = state
                    .volumes
                    .values()
                    .filter(|v| v.published_nodes.contains_key(node))
                    .count() as u64;
                if max > 0 && on_node >= max {
                    return Err(Status::resource_exhausted(format!(
                        "node {node} has the maximum of {max} volumes"
                    )));
                }
                let volume = state.volumes.get_mut(id).expect("checked above");
                volume.published_nodes.insert(node.to_string(), wanted);
                self.save(&state)?;
            }
        }
        Ok(proto::ControllerPublishVolumeResponse {
            publish_context: HashMap::new(),
        })
    }

    /// ControllerUnpublishVolume. A missing volume or node is already unpublished.
    pub fn controller_unpublish(
        &self,
        req: proto::ControllerUnpublishVolumeRequest,
    ) -> Result<proto::ControllerUnpublishVolumeResponse, Status> {
        let id = required(&req.volume_id, "volume_id")?;
        let mut state = self.lock();
        if let Some(volume) = state.volumes.get_mut(id) {
            let changed = if req.node_id.is_empty() {
                let had = !volume.published_nodes.is_empty();
                volume.published_nodes.clear();
                had
            } else {
                volume.published_nodes.remove(&req.node_id).is_some()
            };
            if changed {
                self.save(&state)?;
            }
        }
        Ok(proto::ControllerUnpublishVolumeResponse {})
    }

    /// ValidateVolumeCapabilities.
    pub fn validate_volume_capabilities(
        &self,
        req: proto::ValidateVolumeCapabilitiesRequest,
    ) -> Result<proto::ValidateVolumeCapabilitiesResponse, Status> {
        let id = required(&req.volume_id, "volume_id")?;
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        let state = self.lock();
        let volume = state
            .volumes
            .get(id)
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
        let parameters: BTreeMap<String, String> = req.parameters.clone().into_iter().collect();
        if !req.parameters.is_empty() && parameters != volume.parameters {
            return Ok(proto::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: "parameters differ from the volume's".into(),
            });
        }
        if let Err(status) = capabilities(&req.volume_capabilities, "volume_capabilities") {
            return Ok(proto::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: status.message().to_string(),
            });
        }
        Ok(proto::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(proto::validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: req.mutable_parameters,
            }),
            message: String::new(),
        })
    }

    /// ListVolumes, paginated by volume id.
    pub fn list_volumes(
        &self,
        req: proto::ListVolumesRequest,
    ) -> Result<proto::ListVolumesResponse, Status> {
        let state = self.lock();
        let (page, next_token) = paginate(&state.volumes, req.max_entries, &req.starting_token)?;
        let entries = page
            .into_iter()
            .map(|v| proto::list_volumes_response::Entry {
                volume: Some(self.volume_message(v)),
                status: Some(proto::list_volumes_response::VolumeStatus {
                    published_node_ids: v.published_nodes.keys().cloned().collect(),
                    volume_condition: None,
                }),
            })
            .collect();
        Ok(proto::ListVolumesResponse {
            entries,
            next_token,
        })
    }

    /// ControllerGetVolume.
    pub fn controller_get_volume(
        &self,
        req: proto::ControllerGetVolumeRequest,
    ) -> Result<proto::ControllerGetVolumeResponse, Status> {
        let id = required(&req.volume_id, "volume_id")?;
        let state = self.lock();
        let volume = state
            .volumes
            .get(id)
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
        let dir_ok = self.volume_dir(id).is_dir();
        Ok(proto::ControllerGetVolumeResponse {
            volume: Some(self.volume_message(volume)),
            status: Some(proto::controller_get_volume_response::VolumeStatus {
                published_node_ids: volume.published_nodes.keys().cloned().collect(),
                volume_condition: Some(proto::VolumeCondition {
                    abnormal: !dir_ok,
                    message: if dir_ok {
                        "volume directory present".into()
                    } else {
                        "volume directory is missing".into()
                    },
                }),
            }),
        })
    }

    /// GetCapacity: bytes not yet handed out.
    pub fn get_capacity(
        &self,
        req: proto::GetCapacityRequest,
    ) -> Result<proto::GetCapacityResponse, Status> {
        for (i, cap) in req.volume_capabilities.iter().enumerate() {
            if capability(Some(cap), &format!("volume_capabilities[{i}]")).is_err() {
                return Ok(proto::GetCapacityResponse::default());
            }
        }
        if let Some(topology) = &req.accessible_topology {
            if !self.topology_matches(topology) {
                return Ok(proto::GetCapacityResponse::default());
            }
        }
        let state = self.lock();
        let available = self
            .config()
            .capacity_bytes
            .saturating_sub(state.allocated_bytes());
        Ok(proto::GetCapacityResponse {
            available_capacity: available as i64,
            maximum_volume_size: Some(available.min(self.config().max_volume_bytes) as i64),
            minimum_volume_size: None,
        })
    }

    /// CreateSnapshot: a copy of the volume's directory.
    pub fn create_snapshot(
        &self,
        req: proto::CreateSnapshotRequest,
    ) -> Result<proto::CreateSnapshotResponse, Status> {
        let source = required(&req.source_volume_id, "source_volume_id")?;
        let name = required(&req.name, "name")?;
        let mut state = self.lock();
        if let Some(existing) = state.snapshot_by_name(name) {
            if existing.source_volume_id == source {
                return Ok(proto::CreateSnapshotResponse {
                    snapshot: Some(snapshot_message(existing)),
                });
            }
            return Err(Status::already_exists(format!(
                "snapshot {name:?} exists as {} of volume {}",
                existing.id, existing.source_volume_id
            )));
        }
        let volume = state
            .volumes
            .get(source)
            .ok_or_else(|| Status::not_found(format!("volume {source} does not exist")))?;
        let size = volume.capacity_bytes;
        let available = self
            .config()
            .capacity_bytes
            .saturating_sub(state.allocated_bytes());
        if size > available {
            return Err(Status::resource_exhausted(format!(
                "snapshot needs {size} bytes, {available} left"
            )));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.snapshot_dir(&id);
        if let Err(err) = copy_tree(&self.volume_dir(source), &dir) {
            let _ = remove_tree(&dir);
            return Err(io_status("copy volume into snapshot", &dir, err));
        }
        let now = prost_types::Timestamp::from(std::time::SystemTime::now());
        let record = SnapshotRecord {
            id: id.clone(),
            name: name.to_string(),
            source_volume_id: source.to_string(),
            size_bytes: size,
            created_seconds: now.seconds,
            created_nanos: now.nanos,
        };
        let snapshot = snapshot_message(&record);
        state.snapshots.insert(id.clone(), record);
        if let Err(status) = self.save(&state) {
            state.snapshots.remove(&id);
            let _ = remove_tree(&dir);
            return Err(status);
        }
        tracing::info!(snapshot = %id, volume = %source, "hostpath snapshot created");
        Ok(proto::CreateSnapshotResponse {
            snapshot: Some(snapshot),
        })
    }

    /// DeleteSnapshot. Missing is success.
    pub fn delete_snapshot(
        &self,
        req: proto::DeleteSnapshotRequest,
    ) -> Result<proto::DeleteSnapshotResponse, Status> {
        let id = required(&req.snapshot_id, "snapshot_id")?;
        let mut state = self.lock();
        if state.snapshots.contains_key(id) {
            let dir = self.snapshot_dir(id);
            remove_tree(&dir).map_err(|e| io_status("remove snapshot", &dir, e))?;
            let removed = state.snapshots.remove(id);
            if let Err(status) = self.save(&state) {
                if let Some(record) = removed {
                    state.snapshots.insert(id.to_string(), record);
                }
                return Err(status);
            }
        }
        Ok(proto::DeleteSnapshotResponse {})
    }

    /// ListSnapshots, filtered by snapshot id or source volume, paginated by snapshot id.
    pub fn list_snapshots(
        &self,
        req: proto::ListSnapshotsRequest,
    ) -> Result<proto::ListSnapshotsResponse, Status> {
        let state = self.lock();
        let filtered: BTreeMap<String, SnapshotRecord> = state
            .snapshots
            .iter()
            .filter(|(id, s)| {
                (req.snapshot_id.is_empty() || **id == req.snapshot_id)
                    && (req.source_volume_id.is_empty()
                        || s.source_volume_id == req.source_volume_id)
            })
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        let (page, next_token) = paginate(&filtered, req.max_entries, &req.starting_token)?;
        Ok(proto::ListSnapshotsResponse {
            entries: page
                .into_iter()
                .map(|s| proto::list_snapshots_response::Entry {
                    snapshot: Some(snapshot_message(s)),
                })
                .collect(),
            next_token,
        })
    }

    /// ControllerExpandVolume: grows the accounted size; directories need no node step.
    pub fn controller_expand_volume(
        &self,
        req: proto::ControllerExpandVolumeRequest,
    ) -> Result<proto::ControllerExpandVolumeResponse, Status> {
        let id = required(&req.volume_id, "volume_id")?;
        let range = req
            .capacity_range
            .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        if range.required_bytes < 0 || range.limit_bytes < 0 {
            return Err(Status::invalid_argument(
                "capacity_range must not be negative",
            ));
        }
        if let Some(cap) = req.volume_capability.as_ref() {
            capability(Some(cap), "volume_capability")?;
        }
        let mut state = self.lock();
        let allocated = state.allocated_bytes();
        let volume = state
            .volumes
            .get_mut(id)
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))?;
        let wanted = range.required_bytes as u64;
        let limit = range.limit_bytes as u64;
        if limit > 0 && wanted > limit {
            return Err(Status::out_of_range("required_bytes exceeds limit_bytes"));
        }
        if wanted > volume.capacity_bytes {
            if wanted > self.config().max_volume_bytes {
                return Err(Status::out_of_range(format!(
                    "capacity {wanted} exceeds the largest volume, {} bytes",
                    self.config().max_volume_bytes
                )));
            }
            let growth = wanted - volume.capacity_bytes;
            let available = self.config().capacity_bytes.saturating_sub(allocated);
            if growth > available {
                return Err(Status::out_of_range(format!(
                    "growing by {growth} bytes exceeds the {available} bytes left"
                )));
            }
            let old = volume.capacity_bytes;
            volume.capacity_bytes = wanted;
            if let Err(status) = self.save(&state) {
                if let Some(volume) = state.volumes.get_mut(id) {
                    volume.capacity_bytes = old;
                }
                return Err(status);
            }
            tracing::info!(volume = %id, bytes = wanted, "hostpath volume expanded");
        }
        let capacity = state.volumes[id].capacity_bytes;
        Ok(proto::ControllerExpandVolumeResponse {
            capacity_bytes: capacity as i64,
            node_expansion_required: false,
        })
    }
}

/// One page of a map ordered by id, starting at the id in `token` (empty: the start).
/// An unknown token is ABORTED, as the spec asks.
fn paginate<'a, T>(
    items: &'a BTreeMap<String, T>,
    max_entries: i32,
    token: &str,
) -> Result<(Vec<&'a T>, String), Status> {
    if max_entries < 0 {
        return Err(Status::invalid_argument("max_entries must not be negative"));
    }
    if !token.is_empty() && !items.contains_key(token) {
        return Err(Status::aborted(format!(
            "starting_token {token:?} is not valid"
        )));
    }
    let mut iter =
        items.range::<str, _>((std::ops::Bound::Included(token), std::ops::Bound::Unbounded));
    let limit = if max_entries == 0 {
        usize::MAX
    } else {
        max_entries as usize
    };
    let page: Vec<&T> = iter.by_ref().take(limit).map(|(_, v)| v).collect();
    let next = iter.next().map(|(k, _)| k.clone()).unwrap_or_default();
    Ok((page, next))
}

fn source_message(source: &SourceRecord) -> proto::VolumeContentSource {
    proto::VolumeContentSource {
        r#type: Some(match source {
            SourceRecord::Snapshot(id) => {
                volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource {
                    snapshot_id: id.clone(),
                })
            }
            SourceRecord::Volume(id) => {
                volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: id.clone(),
                })
            }
        }),
    }
}

fn snapshot_message(record: &SnapshotRecord) -> proto::Snapshot {
    proto::Snapshot {
        size_bytes: record.size_bytes as i64,
        snapshot_id: record.id.clone(),
        source_volume_id: record.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: record.created_seconds,
            nanos: record.created_nanos,
        }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

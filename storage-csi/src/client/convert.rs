//! Conversions between Wharf's volume types and the CSI wire types.

use std::collections::HashMap;

use wharf_core::backend::volume::{
    AccessMode, AccessType, CapacityRange, StringMap, Topology, Volume, VolumeCapability,
    VolumeSource,
};

use crate::proto::{self, volume_capability, volume_content_source};

pub fn map_out(map: &StringMap) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub fn map_in(map: HashMap<String, String>) -> StringMap {
    map.into_iter().collect()
}

pub fn mode_out(mode: AccessMode) -> volume_capability::access_mode::Mode {
    use volume_capability::access_mode::Mode;
    match mode {
        AccessMode::SingleNodeWriter => Mode::SingleNodeWriter,
        AccessMode::SingleNodeReaderOnly => Mode::SingleNodeReaderOnly,
        AccessMode::SingleNodeSingleWriter => Mode::SingleNodeSingleWriter,
        AccessMode::SingleNodeMultiWriter => Mode::SingleNodeMultiWriter,
        AccessMode::MultiNodeReaderOnly => Mode::MultiNodeReaderOnly,
        AccessMode::MultiNodeSingleWriter => Mode::MultiNodeSingleWriter,
        AccessMode::MultiNodeMultiWriter => Mode::MultiNodeMultiWriter,
    }
}

pub fn capability_out(cap: &VolumeCapability) -> proto::VolumeCapability {
    proto::VolumeCapability {
        access_type: Some(match &cap.access_type {
            AccessType::Block => {
                volume_capability::AccessType::Block(volume_capability::BlockVolume {})
            }
            AccessType::Mount {
                fs_type,
                mount_flags,
            } => volume_capability::AccessType::Mount(volume_capability::MountVolume {
                fs_type: fs_type.clone(),
                mount_flags: mount_flags.clone(),
                volume_mount_group: String::new(),
            }),
        }),
        access_mode: Some(volume_capability::AccessMode {
            mode: mode_out(cap.access_mode) as i32,
        }),
    }
}

pub fn range_out(range: CapacityRange) -> proto::CapacityRange {
    proto::CapacityRange {
        required_bytes: clamp_i64(range.required_bytes),
        limit_bytes: clamp_i64(range.limit_bytes),
    }
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub fn source_out(source: &VolumeSource) -> proto::VolumeContentSource {
    proto::VolumeContentSource {
        r#type: Some(match source {
            VolumeSource::Snapshot(id) => {
                volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource {
                    snapshot_id: id.clone(),
                })
            }
            VolumeSource::Volume(id) => {
                volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: id.clone(),
                })
            }
        }),
    }
}

pub fn topology_out(topology: &Topology) -> proto::Topology {
    proto::Topology {
        segments: map_out(topology),
    }
}

pub fn volume_in(volume: proto::Volume) -> Volume {
    Volume {
        volume_id: volume.volume_id,
        capacity_bytes: volume.capacity_bytes.max(0) as u64,
        volume_context: map_in(volume.volume_context),
        accessible_topology: volume
            .accessible_topology
            .into_iter()
            .map(|t| map_in(t.segments))
            .collect(),
        source: volume.content_source.and_then(|s| match s.r#type? {
            volume_content_source::Type::Snapshot(s) => Some(VolumeSource::Snapshot(s.snapshot_id)),
            volume_content_source::Type::Volume(v) => Some(VolumeSource::Volume(v.volume_id)),
        }),
    }
}

pub fn snapshot_in(snapshot: proto::Snapshot) -> wharf_core::backend::volume::Snapshot {
    wharf_core::backend::volume::Snapshot {
        snapshot_id: snapshot.snapshot_id,
        source_volume_id: snapshot.source_volume_id,
        size_bytes: snapshot.size_bytes.max(0) as u64,
        ready_to_use: snapshot.ready_to_use,
    }
}

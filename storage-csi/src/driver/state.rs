//! The hostpath driver's durable state: volumes, snapshots, and what is published, staged
//! and mounted where. Kept in `state.json` under the driver's root and replaced atomically
//! after every change, so a restarted driver knows everything the previous one did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CsiError;
use crate::fsutil::write_atomic;

/// What a volume was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceRecord {
    /// A copy of a snapshot.
    Snapshot(String),
    /// A clone of a volume.
    Volume(String),
}

/// A publish of a volume to a node (ControllerPublishVolume).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePublishRecord {
    /// Read-only publish.
    pub readonly: bool,
    /// Access mode (CSI enum value).
    pub access_mode: i32,
}

/// A staging of a volume on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Access mode (CSI enum value).
    pub access_mode: i32,
    /// Mount flags.
    pub mount_flags: Vec<String>,
}

/// A publish of a volume at a target path on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    /// The staging path it was bound from.
    pub staging_path: PathBuf,
    /// Read-only.
    pub readonly: bool,
    /// Access mode (CSI enum value).
    pub access_mode: i32,
    /// Mount flags.
    pub mount_flags: Vec<String>,
}

/// One volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Volume id.
    pub id: String,
    /// The caller's name (idempotency key).
    pub name: String,
    /// Allocated capacity.
    pub capacity_bytes: u64,
    /// Access modes asked for at creation (CSI enum values).
    pub access_modes: Vec<i32>,
    /// Creation parameters.
    pub parameters: BTreeMap<String, String>,
    /// Content source.
    pub source: Option<SourceRecord>,
    /// Nodes it is controller-published to.
    pub published_nodes: BTreeMap<String, NodePublishRecord>,
    /// Staging paths on this node.
    pub staged: BTreeMap<PathBuf, StageRecord>,
    /// Target paths on this node.
    pub targets: BTreeMap<PathBuf, TargetRecord>,
}

/// One snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Snapshot id.
    pub id: String,
    /// The caller's name (idempotency key).
    pub name: String,
    /// Volume it was taken of.
    pub source_volume_id: String,
    /// Size: the source volume's capacity when taken.
    pub size_bytes: u64,
    /// Creation time, seconds since the epoch.
    pub created_seconds: i64,
    /// Creation time, nanoseconds part.
    pub created_nanos: i32,
}

/// Everything the driver knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Volumes by id.
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// Snapshots by id.
    pub snapshots: BTreeMap<String, SnapshotRecord>,
}

impl State {
    /// Loads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, CsiError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| CsiError::State {
                path: path.to_path_buf(),
                message: err.to_string(),
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(err) => Err(CsiError::io("read driver state", path, err)),
        }
    }

    /// Writes the state file atomically.
    pub fn save(&self, path: &Path) -> Result<(), CsiError> {
        let bytes = serde_json::to_vec(self).map_err(|err| CsiError::State {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        write_atomic(path, &bytes).map_err(|err| CsiError::io("write driver state", path, err))
    }

    /// The volume with that name.
    pub fn volume_by_name(&self, name: &str) -> Option<&VolumeRecord> {
        self.volumes.values().find(|v| v.name == name)
    }

    /// The snapshot with that name.
    pub fn snapshot_by_name(&self, name: &str) -> Option<&SnapshotRecord> {
        self.snapshots.values().find(|s| s.name == name)
    }

    /// Bytes allocated to volumes and snapshots.
    pub fn allocated_bytes(&self) -> u64 {
        let volumes: u64 = self.volumes.values().map(|v| v.capacity_bytes).sum();
        let snapshots: u64 = self.snapshots.values().map(|s| s.size_bytes).sum();
        volumes + snapshots
    }
}

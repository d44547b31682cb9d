//! `VolumePlugin`: a volume driver, shaped after CSI.
//!
//! The controller half makes and deletes volumes and attaches them to nodes; the node half
//! stages a volume once per node (`node_stage`, at a global staging path) and publishes it
//! once per pod (`node_publish`, at the pod's target path). Teardown runs in reverse, and
//! every unpublish comes before the unstage. Every call is idempotent as in CSI: repeating a
//! call with the same arguments succeeds; deleting or unpublishing something missing
//! succeeds; `create_volume` with an existing name and compatible parameters returns the
//! existing volume, and with incompatible ones fails with
//! [`ErrorKind::AlreadyExists`](super::ErrorKind::AlreadyExists).
//! [`ErrorKind::Unavailable`](super::ErrorKind::Unavailable) covers CSI's ABORTED (an
//! operation is pending for the volume) and UNAVAILABLE: retry with backoff.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;

use super::BackendResult;

/// String maps: parameters, contexts, secrets.
pub type StringMap = BTreeMap<String, String>;

/// How a volume may be accessed (CSI access modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessMode {
    /// ReadWriteOnce: one node, read-write.
    SingleNodeWriter,
    /// ReadOnlyOnce: one node, read-only.
    SingleNodeReaderOnly,
    /// ReadWriteOncePod: one pod.
    SingleNodeSingleWriter,
    /// One node, many writers.
    SingleNodeMultiWriter,
    /// ReadOnlyMany.
    MultiNodeReaderOnly,
    /// Many nodes, one writer.
    MultiNodeSingleWriter,
    /// ReadWriteMany.
    MultiNodeMultiWriter,
}

/// How a volume is consumed: as a block device or as a mounted filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessType {
    /// A raw block device.
    Block,
    /// A filesystem.
    Mount {
        /// Filesystem type (driver default when empty).
        fs_type: String,
        /// Mount flags.
        mount_flags: Vec<String>,
    },
}

/// A volume capability: access type and mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeCapability {
    /// Block or mount.
    pub access_type: AccessType,
    /// Access mode.
    pub access_mode: AccessMode,
}

/// Size bounds for a new or expanded volume, in bytes (0 = unbounded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapacityRange {
    /// At least this many bytes.
    pub required_bytes: u64,
    /// At most this many bytes.
    pub limit_bytes: u64,
}

/// What a new volume is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeSource {
    /// A copy of a snapshot.
    Snapshot(String),
    /// A clone of a volume.
    Volume(String),
}

/// A topology segment map, e.g. `{"topology.wharf.dev/node": "n1"}`.
pub type Topology = StringMap;

/// Request of `create_volume`.
#[derive(Clone, Debug, Default)]
pub struct CreateVolumeRequest {
    /// The caller's name for the volume (idempotency key), e.g. `pvc-<uid>`.
    pub name: String,
    /// Size bounds.
    pub capacity: CapacityRange,
    /// Capabilities it must support.
    pub capabilities: Vec<VolumeCapability>,
    /// Driver parameters (from the StorageClass).
    pub parameters: StringMap,
    /// Secrets.
    pub secrets: StringMap,
    /// Content source.
    pub source: Option<VolumeSource>,
    /// Topologies it must be accessible from (any of them).
    pub requisite_topology: Vec<Topology>,
    /// Preferred topologies, in order.
    pub preferred_topology: Vec<Topology>,
}

/// A volume made by the driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Volume {
    /// The driver's id of the volume.
    pub volume_id: String,
    /// Its size in bytes (0 = unknown).
    pub capacity_bytes: u64,
    /// Context to pass to later calls.
    pub volume_context: StringMap,
    /// Where it is accessible.
    pub accessible_topology: Vec<Topology>,
    /// What it was made from.
    pub source: Option<VolumeSource>,
}

/// A snapshot made by the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Snapshot id.
    pub snapshot_id: String,
    /// Volume it was taken of.
    pub source_volume_id: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Ready to be used as a source.
    pub ready_to_use: bool,
}

/// Request of `node_stage`.
#[derive(Clone, Debug)]
pub struct NodeStageRequest {
    /// Volume id.
    pub volume_id: String,
    /// Context returned by `controller_publish`.
    pub publish_context: StringMap,
    /// The node's global staging path for this volume.
    pub staging_path: PathBuf,
    /// How it will be used.
    pub capability: VolumeCapability,
    /// Secrets.
    pub secrets: StringMap,
    /// The volume's context.
    pub volume_context: StringMap,
}

/// Request of `node_publish`.
#[derive(Clone, Debug)]
pub struct NodePublishRequest {
    /// Volume id.
    pub volume_id: String,
    /// Context returned by `controller_publish`.
    pub publish_context: StringMap,
    /// The staging path, when the driver stages.
    pub staging_path: Option<PathBuf>,
    /// The pod's target path.
    pub target_path: PathBuf,
    /// How it will be used.
    pub capability: VolumeCapability,
    /// Publish read-only.
    pub readonly: bool,
    /// Secrets.
    pub secrets: StringMap,
    /// The volume's context (for ephemeral volumes, the pod's attributes too).
    pub volume_context: StringMap,
}

/// Usage of a published volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeStats {
    /// Total bytes.
    pub total_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Bytes free.
    pub available_bytes: u64,
    /// Total inodes.
    pub total_inodes: u64,
    /// Inodes in use.
    pub used_inodes: u64,
    /// Inodes free.
    pub available_inodes: u64,
}

/// What the driver says of the node it runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The driver's id for this node.
    pub node_id: String,
    /// Maximum number of volumes it can publish on the node (0 = unlimited).
    pub max_volumes: u64,
    /// The node's topology.
    pub topology: Topology,
}

/// Which optional calls a driver supports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverCapabilities {
    /// Controller: create/delete volumes.
    pub create_delete_volume: bool,
    /// Controller: publish/unpublish to nodes.
    pub publish_unpublish: bool,
    /// Controller: expand volumes.
    pub expand_volume: bool,
    /// Controller: snapshots.
    pub snapshots: bool,
    /// Controller: clone volumes.
    pub clone_volume: bool,
    /// Controller: list volumes.
    pub list_volumes: bool,
    /// Controller: capacity reporting.
    pub get_capacity: bool,
    /// Node: stage/unstage.
    pub stage_unstage: bool,
    /// Node: volume stats.
    pub volume_stats: bool,
    /// Node: expand on the node.
    pub node_expand: bool,
}

/// A volume driver. See the module docs for the contract. Calls a driver does not advertise
/// in [`capabilities`](VolumePlugin::capabilities) fail with
/// [`ErrorKind::Unsupported`](super::ErrorKind::Unsupported).
#[async_trait]
pub trait VolumePlugin: Send + Sync + 'static {
    /// The driver's name, e.g. `hostpath.csi.wharf.dev` (a StorageClass's provisioner).
    fn name(&self) -> &str;
    /// What the driver supports.
    async fn capabilities(&self) -> BackendResult<DriverCapabilities>;
    /// Whether the driver is ready.
    async fn probe(&self) -> BackendResult<()>;

    /// Makes a volume, or returns the one made before with the same name.
    async fn create_volume(&self, request: &CreateVolumeRequest) -> BackendResult<Volume>;
    /// Deletes a volume. Missing is success.
    async fn delete_volume(&self, volume_id: &str, secrets: &StringMap) -> BackendResult<()>;
    /// Makes a volume available on a node; returns the publish context.
    async fn controller_publish(
        &self,
        volume_id: &str,
        node_id: &str,
        capability: &VolumeCapability,
        readonly: bool,
        volume_context: &StringMap,
    ) -> BackendResult<StringMap>;
    /// Undoes `controller_publish`. Missing is success.
    async fn controller_unpublish(&self, volume_id: &str, node_id: &str) -> BackendResult<()>;
    /// Grows a volume; returns its new size and whether the node must expand it too.
    async fn expand_volume(
        &self,
        volume_id: &str,
        capacity: CapacityRange,
    ) -> BackendResult<(u64, bool)>;
    /// Takes a snapshot (idempotent by name).
    async fn create_snapshot(&self, name: &str, source_volume_id: &str) -> BackendResult<Snapshot>;
    /// Deletes a snapshot. Missing is success.
    async fn delete_snapshot(&self, snapshot_id: &str) -> BackendResult<()>;
    /// Free capacity for new volumes, in bytes.
    async fn capacity(&self, parameters: &StringMap) -> BackendResult<u64>;

    /// Stages a volume on this node.
    async fn node_stage(&self, request: &NodeStageRequest) -> BackendResult<()>;
    /// Undoes `node_stage`. Missing is success.
    async fn node_unstage(
        &self,
        volume_id: &str,
        staging_path: &std::path::Path,
    ) -> BackendResult<()>;
    /// Publishes a volume at a pod's target path.
    async fn node_publish(&self, request: &NodePublishRequest) -> BackendResult<()>;
    /// Undoes `node_publish`. Missing is success.
    async fn node_unpublish(
        &self,
        volume_id: &str,
        target_path: &std::path::Path,
    ) -> BackendResult<()>;
    /// Usage of a published volume.
    async fn node_stats(
        &self,
        volume_id: &str,
        path: &std::path::Path,
    ) -> BackendResult<VolumeStats>;
    /// Grows the filesystem of a published volume on the node.
    async fn node_expand(
        &self,
        volume_id: &str,
        path: &std::path::Path,
        capacity: CapacityRange,
    ) -> BackendResult<u64>;
    /// The driver's view of this node.
    async fn node_info(&self) -> BackendResult<NodeInfo>;
}

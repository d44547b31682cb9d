//! The built-in hostpath CSI driver: local, directory-backed volumes.
//!
//! Each volume is a directory under `<root>/volumes/<id>`; snapshots are copies under
//! `<root>/snapshots/<id>`, and clones or restores copy the source into the new volume.
//! Capacity is accounted, not enforced: the driver refuses volumes beyond its configured
//! capacity and reports usage, but a directory has no quota, so a volume can outgrow its
//! size. Staging bind-mounts the volume directory at the staging path; publishing
//! bind-mounts the staging path at the pod's target path, read-only when asked.
//!
//! All of the driver's knowledge lives in `<root>/state.json`, rewritten atomically after
//! each change, so a restarted driver carries on. Calls are serialized by one lock: the
//! spec's "one call in flight per volume" holds trivially, and no call sees a half-made
//! change.
//!
//! [`HostPathDriver`] serves the Identity, Controller and Node services (see
//! [`crate::server`] to put them on a unix socket); its methods can also be called
//! in-process.

mod controller;
mod node;
mod service;
pub mod state;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tonic::Status;

use crate::error::CsiError;
use crate::mount::{LinuxMounter, Mounter};
use state::State;

pub use service::DriverServices;

/// The driver name the built-in driver reports by default.
pub const DEFAULT_DRIVER_NAME: &str = "hostpath.csi.wharf.dev";
/// The topology key whose value is the node id.
pub const TOPOLOGY_KEY: &str = "topology.hostpath.csi.wharf.dev/node";
/// Size given to a volume whose request names none.
pub const DEFAULT_VOLUME_BYTES: u64 = 1 << 30;

/// How a hostpath driver is set up.
#[derive(Clone, Debug)]
pub struct HostPathConfig {
    /// The driver's name (a StorageClass's `provisioner`).
    pub name: String,
    /// This node's id.
    pub node_id: String,
    /// Directory holding volumes, snapshots and the state file.
    pub root: PathBuf,
    /// Bytes the driver may hand out to volumes and snapshots together.
    pub capacity_bytes: u64,
    /// Largest single volume.
    pub max_volume_bytes: u64,
    /// Most volumes published on the node at once (0 = no limit).
    pub max_volumes_per_node: u64,
}

impl HostPathConfig {
    /// A config with the default name, and capacity = the free space under `root` now.
    pub fn new(node_id: impl Into<String>, root: impl Into<PathBuf>) -> Result<Self, CsiError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| CsiError::io("create driver root", &root, e))?;
        let stat = nix::sys::statvfs::statvfs(&root)
            .map_err(|e| CsiError::io("statvfs", &root, e.into()))?;
        let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
        Ok(HostPathConfig {
            name: DEFAULT_DRIVER_NAME.to_string(),
            node_id: node_id.into(),
            root,
            capacity_bytes: free,
            max_volume_bytes: free,
            max_volumes_per_node: 0,
        })
    }

    /// Sets the capacity handed out, and the largest volume, to `bytes`.
    pub fn with_capacity(mut self, bytes: u64) -> Self {
        self.capacity_bytes = bytes;
        self.max_volume_bytes = bytes;
        self
    }
}

/// The hostpath driver. Cheap to clone (shared state).
#[derive(Clone)]
pub struct HostPathDriver {
    inner: Arc<Inner>,
}

struct Inner {
    config: HostPathConfig,
    mounter: Arc<dyn Mounter>,
    state: Mutex<State>,
}

impl std::fmt::Debug for HostPathDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPathDriver")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl HostPathDriver {
    /// A driver making real mounts, resuming from the state under `config.root`.
    pub fn new(config: HostPathConfig) -> Result<Self, CsiError> {
        Self::with_mounter(config, Arc::new(LinuxMounter))
    }

    /// A driver with the given mounter (e.g. [`RecordedMounts`](crate::mount::RecordedMounts)
    /// to run without root).
    pub fn with_mounter(
        config: HostPathConfig,
        mounter: Arc<dyn Mounter>,
    ) -> Result<Self, CsiError> {
        for dir in [config.root.join("volumes"), config.root.join("snapshots")] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| CsiError::io("create driver dir", &dir, e))?;
        }
        let state = State::load(&config.root.join("state.json"))?;
        tracing::debug!(
            driver = %config.name,
            volumes = state.volumes.len(),
            snapshots = state.snapshots.len(),
            "hostpath driver state loaded"
        );
        Ok(HostPathDriver {
            inner: Arc::new(Inner {
                config,
                mounter,
                state: Mutex::new(state),
            }),
        })
    }

    /// The driver's configuration.
    pub fn config(&self) -> &HostPathConfig {
        &self.inner.config
    }

    /// A copy of the driver's current state.
    pub fn state(&self) -> State {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the last saved state on disk; carry on
        // from the in-memory copy, which is never ahead of a failed save.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mounter(&self) -> &dyn Mounter {
        self.inner.mounter.as_ref()
    }

    fn volume_dir(&self, id: &str) -> PathBuf {
        self.inner.config.root.join("volumes").join(id)
    }

    fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.inner.config.root.join("snapshots").join(id)
    }

    fn save(&self, state: &State) -> Result<(), Status> {
        state
            .save(&self.inner.config.root.join("state.json"))
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// An I/O failure as an INTERNAL status naming the operation and path.
fn io_status(operation: &str, path: &Path, err: std::io::Error) -> Status {
    Status::internal(format!("{operation} {}: {err}", path.display()))
}

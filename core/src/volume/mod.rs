//! The cluster half of the volume manager: binding PersistentVolumeClaims to
//! PersistentVolumes, provisioning volumes for claims through a StorageClass's CSI driver,
//! reclaiming volumes whose claims are gone, and keeping a claim that pods still use
//! (`kubernetes.io/pvc-protection`).
//!
//! The node half (attach, stage, publish, in-tree sources) lives in the node agent.
//!
//! Limits: `volumeBindingMode: WaitForFirstConsumer` is treated as `Immediate`; a claim's
//! `dataSource` is not passed to the driver; volume expansion is not driven.

mod binder;
mod protection;

pub use binder::{PersistentVolumeClaimController, PersistentVolumeController, VolumeError};
pub use protection::{PvcProtectionController, PVC_PROTECTION_FINALIZER};

/// Annotation naming the driver that provisioned a volume.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Annotation marking the default StorageClass.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

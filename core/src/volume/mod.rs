//! The cluster half of the volume manager: binding PersistentVolumeClaims to
//! PersistentVolumes, provisioning volumes for claims through a StorageClass's CSI driver,
//! reclaiming volumes whose claims are gone, and keeping a claim that pods still use
//! (`kubernetes.io/pvc-protection`).
//!
//! The node half (attach, stage, publish, in-tree sources) lives in the node agent.
//!
//! `volumeBindingMode: WaitForFirstConsumer` delays binding and provisioning until a pod
//! using the claim is scheduled; the claim then carries `volume.kubernetes.io/selected-node`.
//! Limits: the scheduler does not take volume topology into account (the node is the pod's,
//! whatever the volume's accessibility); with several nodes each running its own instance of
//! a node-local driver, volumes are provisioned through the first node's instance (not yet
//! through the selected node's); a claim's `dataSource` is not passed to the driver; volume expansion is not driven.

mod binder;
mod protection;

pub(crate) use binder::access_mode;
pub use binder::{PersistentVolumeClaimController, PersistentVolumeController, VolumeError};
pub use protection::{PvcProtectionController, PVC_PROTECTION_FINALIZER};

/// Annotation naming the driver that provisioned a volume.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Annotation naming the node chosen for a `WaitForFirstConsumer` claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Annotation marking the default StorageClass.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// The claims a pod's volumes name.
fn claims_of(pod: &k8s_openapi::api::core::v1::Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
}

//! Wharf: container and orchestration features as embeddable crates.
//!
//! This facade re-exports the member crates. The backends are behind cargo features
//! (all on by default on Linux): `runtime-linux`, `network-cni`, `storage-csi`, `image`.

pub use wharf_core as core;
#[cfg(feature = "image")]
pub use wharf_image as image;
#[cfg(feature = "network-cni")]
pub use wharf_network_cni as network;
#[cfg(feature = "runtime-linux")]
pub use wharf_runtime_linux as runtime;
#[cfg(feature = "storage-csi")]
pub use wharf_storage_csi as storage;

#[cfg(all(
    feature = "runtime-linux",
    feature = "network-cni",
    feature = "storage-csi",
    feature = "image"
))]
pub mod linux;

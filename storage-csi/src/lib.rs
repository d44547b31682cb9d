//! wharf-storage-csi: Wharf's volumes through the Container Storage Interface.
//!
//! - [`proto`]: the CSI v1 wire types and services (spec 1.12), compiled from the crate's
//!   own `.proto` without a system `protoc`.
//! - [`driver`]: the built-in hostpath CSI driver (directory-backed local volumes), served
//!   in-process or by the `wharf-hostpath-csi` binary on `CSI_ENDPOINT`.
//! - [`client`]: [`CsiPlugin`], Wharf's `VolumePlugin` over any CSI driver.
//! - [`intree`]: emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes.
//! - [`named`]: Docker-style named volumes on any `VolumePlugin`.
//! - [`server`]: unix-socket endpoints: serve a driver, connect to one.

pub mod client;
pub mod driver;
pub mod error;
pub mod fsutil;
pub mod intree;
pub mod mount;
pub mod named;
pub mod proto;
pub mod server;

pub use client::{ClientOptions, CsiPlugin, RetryPolicy};
pub use driver::{HostPathConfig, HostPathDriver};
pub use error::CsiError;

//! Pod networking for Wharf, two ways:
//!
//! - [`cni`]: a CNI runtime that drives the plugin binaries users already have, as
//!   libcni does for containerd and CRI-O (spec 1.1, talking to 0.3.x–1.1 plugins);
//! - [`native`]: a bridge network over netlink with crash-safe IPAM and nftables
//!   host ports, needing no plugin binaries (the embedded default);
//! - [`netns`]: creating and pinning a sandbox's network namespace.
//!
//! Both networks implement `wharf_core::backend::NetworkPlugin` ([`CniNetwork`],
//! [`BridgeNetwork`]). Everything here logs with `tracing` and returns [`NetworkError`].

pub mod cni;
mod error;
pub mod native;
pub mod netns;
mod plugin;

pub use native::{BridgeConfig, BridgeNetwork};
pub use plugin::CniNetwork;

pub use error::{NetworkError, Result};

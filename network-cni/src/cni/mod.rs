//! A CNI runtime: what libcni does for containerd and CRI-O.
//!
//! It loads network configuration lists ([`config`]), finds plugin binaries on a
//! path, runs a chain of plugins for ADD, DEL, CHECK, STATUS and GC ([`CniRuntime`]),
//! negotiates the spec version with each plugin and converts results between versions
//! ([`version`]), and keeps each attachment's final result in a libcni-compatible cache
//! ([`cache`]). It owns nothing in the sandbox itself: the plugins do that work.

pub mod cache;
pub mod config;
mod invoke;
mod runtime;
pub mod types;
pub mod version;

pub use cache::{CachedAttachment, ResultCache};
pub use config::NetworkConfigList;
pub use invoke::{find_plugin, CniCommand};
pub use runtime::{CniRuntime, RuntimeConf, DEFAULT_PLUGIN_PATH};
pub use types::{CniError, CniResult};
pub use version::Version;

#[cfg(test)]
mod tests;

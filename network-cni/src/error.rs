//! The crate's one error type: every variant names the file, plugin, network or
//! attachment it was acting on, so a caller can act on the message alone.

use std::path::PathBuf;
use std::time::Duration;

use crate::cni::CniError;

/// Errors of the CNI runtime, the native bridge network and sandbox namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A configuration file or directory could not be read.
    #[error("reading CNI configuration {path}: {source}")]
    ConfigRead {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A configuration file is not valid JSON or misses a required field.
    #[error("invalid CNI configuration {path}: {reason}")]
    ConfigInvalid {
        /// The file (or `<inline>` for configurations given as bytes).
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// No configuration in the given directories.
    #[error("no CNI network configuration found in {dirs:?}")]
    NoConfig {
        /// The directories searched.
        dirs: Vec<PathBuf>,
    },
    /// No configuration with that network name.
    #[error("no CNI network named {name:?} in {dirs:?}")]
    NetworkNotFound {
        /// The network name asked for.
        name: String,
        /// The directories searched.
        dirs: Vec<PathBuf>,
    },
    /// A plugin binary is not on the plugin path.
    #[error("CNI plugin {plugin:?} not found in {path:?}")]
    PluginNotFound {
        /// The plugin `type`.
        plugin: String,
        /// The directories searched.
        path: Vec<PathBuf>,
    },
    /// The plugin binary could not be started.
    #[error("starting CNI plugin {plugin} for {command}: {source}")]
    PluginSpawn {
        /// The plugin `type`.
        plugin: String,
        /// The CNI command.
        command: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The plugin reported a CNI error.
    #[error("CNI plugin {plugin} failed {command} for network {network}: {error}")]
    PluginFailed {
        /// The plugin `type`.
        plugin: String,
        /// The CNI command.
        command: &'static str,
        /// The network name.
        network: String,
        /// The structured error the plugin printed.
        error: CniError,
    },
    /// The plugin printed something that is not a valid CNI result.
    #[error("CNI plugin {plugin} {command} printed an invalid result: {reason}")]
    PluginOutput {
        /// The plugin `type`.
        plugin: String,
        /// The CNI command.
        command: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The plugin did not finish in time and was killed.
    #[error("CNI plugin {plugin} {command} timed out after {timeout:?}")]
    PluginTimeout {
        /// The plugin `type`.
        plugin: String,
        /// The CNI command.
        command: &'static str,
        /// The limit it exceeded.
        timeout: Duration,
    },
    /// No CNI version both the configuration and the plugin speak.
    #[error("CNI plugin {plugin} supports versions {supported:?}, none compatible with {wanted}")]
    IncompatibleVersion {
        /// The plugin `type` (or `<runtime>` for the configuration itself).
        plugin: String,
        /// The version the configuration asks for.
        wanted: String,
        /// What the plugin said it supports.
        supported: Vec<String>,
    },
    /// The operation does not exist in the configuration's CNI version.
    #[error("network {network}: {command} needs CNI version {needs} or later, configuration is {version}")]
    UnsupportedOperation {
        /// The network name.
        network: String,
        /// The CNI command.
        command: &'static str,
        /// The lowest version with that command.
        needs: &'static str,
        /// The configuration's version.
        version: String,
    },
    /// The result cache could not be read or written.
    #[error("CNI result cache {path}: {reason}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// CHECK was asked for an attachment that has no cached result.
    #[error("network {network} has no attachment for container {container_id} interface {ifname}")]
    NotAttached {
        /// The network name.
        network: String,
        /// The container (sandbox) id.
        container_id: String,
        /// The interface name in the sandbox.
        ifname: String,
    },
    /// An argument of the call is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The argument or field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A network namespace operation failed.
    #[error("network namespace {path}: {op}: {reason}")]
    Netns {
        /// The namespace's pin path.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The error.
        reason: String,
    },
    /// A netlink request failed.
    #[error("netlink {op} {object}: {reason}")]
    Netlink {
        /// The request.
        op: &'static str,
        /// The link, address or route it was about.
        object: String,
        /// The kernel's answer.
        reason: String,
    },
    /// Address allocation failed.
    #[error("IPAM for network {network}: {reason}")]
    Ipam {
        /// The network name.
        network: String,
        /// What failed.
        reason: String,
    },
    /// Programming the packet filter (nftables or iptables) failed.
    #[error("{tool} for network {network}: {reason}")]
    Firewall {
        /// `nft` or `iptables`.
        tool: &'static str,
        /// The network name.
        network: String,
        /// The tool's message.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = NetworkError> = std::result::Result<T, E>;

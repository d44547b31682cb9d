//! The CNI result and error objects as typed values.
//!
//! The runtime passes results between plugins as raw JSON (unknown keys must survive a
//! chain untouched); these types are the caller's typed view of the final result.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A structured CNI error as plugins print it (`code`, `msg`, `details`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    /// The error code: 1–99 are the spec's, 100+ plugin-specific.
    pub code: u32,
    /// A short message.
    #[serde(default)]
    pub msg: String,
    /// Longer details.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// 1: incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// 3: container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// 7: invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// 11: try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// 50: the plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;

    /// The spec's name for the code, if it is one of the spec's.
    pub fn code_name(&self) -> Option<&'static str> {
        Some(match self.code {
            1 => "incompatible CNI version",
            2 => "unsupported field in network configuration",
            3 => "container unknown or does not exist",
            4 => "invalid necessary environment variables",
            5 => "I/O failure",
            6 => "failed to decode content",
            7 => "invalid network config",
            11 => "try again later",
            50 => "plugin not available",
            51 => "plugin not available, existing containers may be damaged",
            _ => return None,
        })
    }

    /// Whether the caller should retry the operation later (codes 11 and 50).
    pub fn is_retryable(&self) -> bool {
        matches!(self.code, 11 | 50)
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {}", self.code)?;
        if let Some(name) = self.code_name() {
            write!(f, " ({name})")?;
        }
        write!(f, ": {}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, "; {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// A CNI result (1.x shape; older results are converted before parsing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The spec version of this result.
    #[serde(default)]
    pub cni_version: String,
    /// Interfaces created, on the host and in the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes added in the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings for the sandbox.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// The sandbox-side addresses: those whose interface is in a sandbox, or all of
    /// them when the result does not say.
    pub fn sandbox_ips(&self) -> impl Iterator<Item = &IpConfig> {
        self.ips.iter().filter(|ip| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_none_or(|iface| !iface.sandbox.is_empty())
        })
    }
}

/// An interface in a result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for sandbox interfaces, empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// An address in a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length.
    pub address: IpNet,
    /// Default gateway for this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; absent means the default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings in a result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_names_code() {
        let e: CniError =
            serde_json::from_str(r#"{"cniVersion":"1.0.0","code":7,"msg":"bad","details":"x"}"#)
                .unwrap();
        assert_eq!(e.to_string(), "code 7 (invalid network config): bad; x");
        assert!(!e.is_retryable());
    }

    #[test]
    fn sandbox_ips_skip_host_interfaces() {
        let r: CniResult = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"eth0","sandbox":"/run/netns/a"}],
               "ips":[{"address":"10.0.0.1/24","interface":0},{"address":"10.0.0.2/24","gateway":"10.0.0.1","interface":1}]}"#,
        )
        .unwrap();
        let ips: Vec<_> = r.sandbox_ips().map(|i| i.address.to_string()).collect();
        assert_eq!(ips, ["10.0.0.2/24"]);
    }
}

//! CNI spec versions: parsing, negotiation with a plugin, and converting results
//! between the shapes of 0.3.x/0.4.0 and 1.x.

use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;

use serde_json::Value;

/// The versions this runtime speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest spec version this runtime implements.
pub const CURRENT_VERSION: &str = "1.1.0";

/// A CNI spec version (`major.minor.patch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Patch number.
    pub patch: u32,
}

impl Version {
    /// 0.4.0: the first version with CHECK and `prevResult` on DEL.
    pub const V0_4_0: Version = Version::new(0, 4, 0);
    /// 1.0.0: IPs lose their `version` field.
    pub const V1_0_0: Version = Version::new(1, 0, 0);
    /// 1.1.0: STATUS and GC.
    pub const V1_1_0: Version = Version::new(1, 1, 0);

    /// A version from its numbers.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Parses `a.b.c` (a missing patch or minor counts as 0, as libcni does).
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        if parts.next().is_some() {
            return None;
        }
        Some(Version::new(major, minor, patch))
    }

    /// Whether this runtime can talk this version to a plugin.
    pub fn is_supported(self) -> bool {
        SUPPORTED_VERSIONS
            .iter()
            .any(|v| Version::parse(v) == Some(self))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Picks the version to talk to a plugin that supports `plugin_versions` when the
/// configuration is at `wanted`: `wanted` itself when the plugin has it, else the
/// newest common version below it, else the oldest common version above it.
/// Results are converted back to `wanted` afterwards, so the chain sees one shape.
pub fn negotiate(wanted: Version, plugin_versions: &[String]) -> Option<Version> {
    let mut common: Vec<Version> = plugin_versions
        .iter()
        .filter_map(|v| Version::parse(v))
        .filter(|v| v.is_supported())
        .collect();
    common.sort();
    if common.contains(&wanted) {
        return Some(wanted);
    }
    common
        .iter()
        .rev()
        .find(|v| **v < wanted)
        .or_else(|| common.iter().find(|v| **v > wanted))
        .copied()
}

/// Converts a result object from version `from` to version `to`.
///
/// 0.3.x and 0.4.0 results carry `ips[].version` (`"4"`/`"6"`); 1.x results do not.
/// Fields added in 1.1 (interface `mtu`, route `mtu`/`table`/...) are kept: older
/// plugins ignore unknown keys. Results older than 0.3.0 are rejected.
pub fn convert_result(mut result: Value, from: Version, to: Version) -> Result<Value, String> {
    if !from.is_supported() {
        return Err(format!("result version {from} is not supported"));
    }
    if !to.is_supported() {
        return Err(format!("cannot convert a result to version {to}"));
    }
    let obj = result
        .as_object_mut()
        .ok_or_else(|| "result is not a JSON object".to_string())?;
    if let Some(Value::Array(ips)) = obj.get_mut("ips") {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            if to >= Version::V1_0_0 {
                ip.remove("version");
            } else if !ip.contains_key("version") {
                let family = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .map(|a| if a.is_ipv4() { "4" } else { "6" })
                    .ok_or_else(|| "ips[].address is not a CIDR address".to_string())?;
                ip.insert("version".into(), Value::from(family));
            }
        }
    }
    obj.insert("cniVersion".into(), Value::from(to.to_string()));
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_orders() {
        assert_eq!(Version::parse("1.1.0"), Some(Version::V1_1_0));
        assert_eq!(Version::parse("0.4"), Some(Version::V0_4_0));
        assert_eq!(Version::parse("1.x.0"), None);
        assert_eq!(Version::parse("1.0.0.0"), None);
        assert!(Version::parse("0.3.1").unwrap() < Version::V0_4_0);
        assert!(!Version::parse("0.2.0").unwrap().is_supported());
    }

    #[test]
    fn negotiates_down_then_up() {
        let debian: Vec<String> = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
            .map(String::from)
            .to_vec();
        assert_eq!(negotiate(Version::V1_1_0, &debian), Some(Version::V1_0_0));
        assert_eq!(negotiate(Version::V0_4_0, &debian), Some(Version::V0_4_0));
        let new_only = vec!["1.1.0".to_string()];
        assert_eq!(negotiate(Version::V1_0_0, &new_only), Some(Version::V1_1_0));
        assert_eq!(negotiate(Version::V1_0_0, &["0.2.0".to_string()]), None);
    }

    #[test]
    fn converts_ip_version_field_both_ways() {
        let old = json!({"cniVersion": "0.4.0", "ips": [
            {"version": "4", "address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 1}]});
        let new = convert_result(old, Version::V0_4_0, Version::V1_0_0).unwrap();
        assert_eq!(new["cniVersion"], "1.0.0");
        assert!(new["ips"][0].get("version").is_none());
        let back = convert_result(
            json!({"cniVersion": "1.1.0", "ips": [{"address": "fd00::2/64"}]}),
            Version::V1_1_0,
            Version::parse("0.3.1").unwrap(),
        )
        .unwrap();
        assert_eq!(back["ips"][0]["version"], "6");
        assert_eq!(back["cniVersion"], "0.3.1");
        let err = convert_result(
            json!({"ips": [{"address": "nope"}]}),
            Version::V1_0_0,
            Version::V0_4_0,
        );
        assert!(err.unwrap_err().contains("CIDR"));
    }
}

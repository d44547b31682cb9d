//! Capabilities: names to numbers, and the five sets a container process gets.
//!
//! A capability the host's bounding set lacks (this host has no `CAP_SYS_RESOURCE`) is
//! dropped silently rather than failing the container, as the issue requires.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// Capability names in kernel order (`CAP_CHOWN` is 0).
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The kernel number of a capability name (`CAP_` prefix optional, any case).
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

fn cap_number(cap: &Capability) -> Option<u32> {
    // oci-spec serialises a capability as its `CAP_*` name.
    let name = serde_json::to_value(cap).ok()?;
    number(name.as_str()?)
}

/// The five capability sets as bit masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CapMasks {
    /// Bounding set.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

fn mask(set: &Option<Capabilities>, host: u64) -> u64 {
    set.iter()
        .flatten()
        .filter_map(cap_number)
        .filter(|n| *n < 64)
        .fold(0, |m, n| m | (1 << n))
        & host
}

impl CapMasks {
    /// Sets from the spec, each intersected with `host_bounding`. No `capabilities`
    /// object at all means an empty set everywhere (as runc).
    pub fn from_spec(caps: Option<&LinuxCapabilities>, host_bounding: u64) -> CapMasks {
        let Some(c) = caps else {
            return CapMasks::default();
        };
        let permitted = mask(c.permitted(), host_bounding);
        let inheritable = mask(c.inheritable(), host_bounding);
        CapMasks {
            bounding: mask(c.bounding(), host_bounding),
            effective: mask(c.effective(), host_bounding),
            permitted,
            inheritable,
            // The kernel only keeps ambient capabilities that are permitted and inheritable.
            ambient: mask(c.ambient(), host_bounding) & permitted & inheritable,
        }
    }

    /// Every capability (for an exec with `privileged`).
    pub fn all(host_bounding: u64) -> CapMasks {
        CapMasks {
            bounding: host_bounding,
            effective: host_bounding,
            permitted: host_bounding,
            inheritable: host_bounding,
            ambient: 0,
        }
    }
}

/// The capabilities in the calling process's bounding set, probed with `PR_CAPBSET_READ`.
pub fn host_bounding() -> u64 {
    let mut m = 0u64;
    for n in 0..64u32 {
        match crate::sys::prctl(libc::PR_CAPBSET_READ, n as libc::c_ulong, 0) {
            Ok(1) => m |= 1 << n,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    m
}

/// Names of the capabilities in a mask (for `features` and diagnostics).
pub fn names(mask: u64) -> Vec<&'static str> {
    (0..NAMES.len())
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| NAMES[i])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxCapabilitiesBuilder;

    #[test]
    fn numbers() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("sys_admin"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
    }

    #[test]
    fn missing_from_host_is_dropped() {
        let set: Capabilities = [Capability::Chown, Capability::SysResource]
            .into_iter()
            .collect();
        let caps = LinuxCapabilitiesBuilder::default()
            .bounding(set.clone())
            .effective(set.clone())
            .permitted(set.clone())
            .inheritable(set.clone())
            .ambient(set)
            .build()
            .unwrap();
        let host = !(1u64 << 24);
        let m = CapMasks::from_spec(Some(&caps), host);
        assert_eq!(m.bounding, 1);
        assert_eq!(m.effective, 1);
        assert_eq!(m.ambient, 1);
        assert_eq!(names(m.permitted), vec!["CAP_CHOWN"]);
    }
}

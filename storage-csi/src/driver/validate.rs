//! Request checks shared by the driver's services: required fields, the spec's size limits,
//! and the capabilities a directory-backed volume can serve.

use std::collections::HashMap;

use tonic::Status;

use crate::proto::volume_capability::access_mode::Mode;
use crate::proto::volume_capability::AccessType;
use crate::proto::VolumeCapability;

/// The spec's limit for ids, names and paths.
const MAX_STRING_BYTES: usize = 128;
/// The spec's limit for a map of strings.
const MAX_MAP_BYTES: usize = 4096;

/// A required string field: present and within the spec's 128-byte limit.
pub fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    if value.len() > MAX_STRING_BYTES && !field.ends_with("path") {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes, more than the {MAX_STRING_BYTES} the spec allows",
            value.len()
        )));
    }
    Ok(value)
}

/// A map within the spec's 4 KiB limit.
pub fn map_size(map: &HashMap<String, String>, field: &str) -> Result<(), Status> {
    let size: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_MAP_BYTES {
        return Err(Status::invalid_argument(format!(
            "{field} is {size} bytes, more than the {MAX_MAP_BYTES} the spec allows"
        )));
    }
    Ok(())
}

/// What the driver takes from a volume capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountCapability {
    /// The access mode (CSI enum value).
    pub mode: i32,
    /// Mount flags.
    pub mount_flags: Vec<String>,
}

impl MountCapability {
    /// Whether the mode only allows reading.
    pub fn is_reader_only(&self) -> bool {
        self.mode == Mode::SingleNodeReaderOnly as i32
            || self.mode == Mode::MultiNodeReaderOnly as i32
    }
}

/// Checks a capability: access type and mode set, mount access (hostpath volumes are
/// directories, not block devices), a known mode and supported mount flags.
pub fn capability(cap: Option<&VolumeCapability>, field: &str) -> Result<MountCapability, Status> {
    let cap = cap.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))?;
    let mount = match &cap.access_type {
        None => {
            return Err(Status::invalid_argument(format!(
                "{field}.access_type is required"
            )))
        }
        Some(AccessType::Block(_)) => {
            return Err(Status::invalid_argument(format!(
                "{field}: block access is not supported: hostpath volumes are directories"
            )))
        }
        Some(AccessType::Mount(mount)) => mount,
    };
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| Status::invalid_argument(format!("{field}.access_mode is required")))?
        .mode;
    match Mode::try_from(mode) {
        Ok(Mode::Unknown) | Err(_) => {
            return Err(Status::invalid_argument(format!(
                "{field}.access_mode.mode {mode} is not a known access mode"
            )))
        }
        Ok(_) => {}
    }
    crate::mount::parse_mount_flags(&mount.mount_flags)
        .map_err(|message| Status::invalid_argument(format!("{field}.mount_flags: {message}")))?;
    Ok(MountCapability {
        mode,
        mount_flags: mount.mount_flags.clone(),
    })
}

/// Checks every capability of a list that must not be empty.
pub fn capabilities(
    caps: &[VolumeCapability],
    field: &str,
) -> Result<Vec<MountCapability>, Status> {
    if caps.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    caps.iter()
        .enumerate()
        .map(|(i, cap)| capability(Some(cap), &format!("{field}[{i}]")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(access_type: Option<AccessType>, mode: Option<Mode>) -> VolumeCapability {
        VolumeCapability {
            access_type,
            access_mode: mode.map(|m| AccessMode { mode: m as i32 }),
        }
    }

    #[test]
    fn capability_checks() {
        let mount = Some(AccessType::Mount(MountVolume::default()));
        assert!(capability(Some(&cap(mount.clone(), Some(Mode::SingleNodeWriter))), "c").is_ok());
        let err = capability(Some(&cap(mount.clone(), None)), "c").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = capability(Some(&cap(None, Some(Mode::SingleNodeWriter))), "c").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let block = Some(AccessType::Block(BlockVolume {}));
        let err = capability(Some(&cap(block, Some(Mode::SingleNodeWriter))), "c").unwrap_err();
        assert!(err.message().contains("block"));
        let err = capability(Some(&cap(mount, Some(Mode::Unknown))), "c").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(capabilities(&[], "caps").is_err());
    }

    #[test]
    fn string_limits() {
        assert!(required("", "name").is_err());
        assert!(required(&"x".repeat(129), "name").is_err());
        assert!(required("pvc-1", "name").is_ok());
    }
}

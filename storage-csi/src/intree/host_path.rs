//! `hostPath` volumes: a path on the host, checked against the volume's `type`.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::HostPathVolumeSource;

use crate::error::CsiError;

/// Checks (and for the `…OrCreate` types makes) the host path; returns it.
pub fn prepare(volume: &str, source: &HostPathVolumeSource) -> Result<PathBuf, CsiError> {
    let path = PathBuf::from(&source.path);
    let fail = |message: String| CsiError::InvalidVolume {
        volume: volume.to_string(),
        field: "hostPath.type".into(),
        message,
    };
    if !path.is_absolute() {
        return Err(CsiError::InvalidVolume {
            volume: volume.to_string(),
            field: "hostPath.path".into(),
            message: format!("{} is not an absolute path", path.display()),
        });
    }
    let kind = source.type_.as_deref().unwrap_or("");
    let meta = fs::metadata(&path);
    let missing = matches!(&meta, Err(e) if e.kind() == io::ErrorKind::NotFound);
    let is = |check: fn(&fs::Metadata) -> bool, what: &str| -> Result<(), CsiError> {
        match &meta {
            Ok(m) if check(m) => Ok(()),
            Ok(_) => Err(fail(format!(
                "{} exists but is not a {what}",
                path.display()
            ))),
            Err(e) => Err(fail(format!(
                "{}: {e} (type {kind} needs an existing {what})",
                path.display()
            ))),
        }
    };
    match kind {
        "" => {}
        "DirectoryOrCreate" => {
            if missing {
                fs::create_dir_all(&path)
                    .map_err(|e| CsiError::io("create hostPath directory", &path, e))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(|e| CsiError::io("chmod hostPath directory", &path, e))?;
            } else {
                is(|m| m.is_dir(), "directory")?;
            }
        }
        "Directory" => is(|m| m.is_dir(), "directory")?,
        "FileOrCreate" => {
            if missing {
                // Like kubelet, the parent directory is not created.
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&path)
                    .map_err(|e| CsiError::io("create hostPath file", &path, e))?;
            } else {
                is(|m| m.is_file(), "file")?;
            }
        }
        "File" => is(|m| m.is_file(), "file")?,
        "Socket" => is(|m| m.file_type().is_socket(), "socket")?,
        "CharDevice" => is(|m| m.file_type().is_char_device(), "character device")?,
        "BlockDevice" => is(|m| m.file_type().is_block_device(), "block device")?,
        other => {
            return Err(fail(format!(
            "unknown type {other:?}: expected \"\", DirectoryOrCreate, Directory, FileOrCreate, \
                 File, Socket, CharDevice or BlockDevice"
        )))
        }
    }
    Ok(path)
}

/// Whether `path` is under `root` after resolving symlinks (for callers that restrict
/// hostPath volumes to an allowed prefix).
pub fn is_under(path: &Path, root: &Path) -> bool {
    match (fs::canonicalize(path), fs::canonicalize(root)) {
        (Ok(p), Ok(r)) => p.starts_with(r),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(path: &Path, kind: &str) -> HostPathVolumeSource {
        HostPathVolumeSource {
            path: path.display().to_string(),
            type_: Some(kind.to_string()),
        }
    }

    #[test]
    fn type_checks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("made/deep");
        assert_eq!(prepare("v", &src(&d, "DirectoryOrCreate")).unwrap(), d);
        assert!(d.is_dir());
        assert!(prepare("v", &src(&d, "Directory")).is_ok());
        assert!(prepare("v", &src(&d, "File")).is_err());
        let f = dir.path().join("made/file");
        prepare("v", &src(&f, "FileOrCreate")).unwrap();
        assert!(f.is_file());
        assert!(prepare("v", &src(&f, "File")).is_ok());
        assert!(prepare("v", &src(&f, "Directory")).is_err());
        assert!(prepare(
            "v",
            &src(&dir.path().join("no/parent/file"), "FileOrCreate")
        )
        .is_err());
        assert!(prepare("v", &src(&dir.path().join("missing"), "Directory")).is_err());
        assert!(prepare("v", &src(&dir.path().join("missing"), "")).is_ok());
        assert!(prepare("v", &src(Path::new("/dev/null"), "CharDevice")).is_ok());
        assert!(prepare("v", &src(Path::new("/dev/null"), "Socket")).is_err());
        let err = prepare("v", &src(&d, "Dir")).unwrap_err();
        assert!(err.to_string().contains("unknown type"), "{err}");
        assert!(prepare("v", &src(Path::new("relative"), "")).is_err());
    }
}

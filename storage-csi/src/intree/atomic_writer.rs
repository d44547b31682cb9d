//! Atomic updates of a projected volume (configMap, secret, downwardAPI, projected), the
//! way kubelet's atomic writer does it, so a running container sees the old set of files or
//! the new one, never a mix.
//!
//! Layout of a volume directory:
//!
//! ```text
//! ..2026_11_27_00_20_07.123456789/   the current payload (a hidden, timestamped directory)
//! ..data -> ..2026_11_27_00_20_07.123456789
//! key    -> ..data/key                one symlink per top-level name of the payload
//! ```
//!
//! An update writes the whole new payload into a fresh timestamped directory, points a
//! temporary `..data_tmp` symlink at it and renames that over `..data` (a single atomic
//! `rename(2)`), then adds or removes top-level symlinks. The payload it replaced is kept
//! until the next update, so a reader that resolved `..data` just before the swap still
//! finds its file; older ones are deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The symlink naming the current payload directory.
pub const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// One file of a payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProjection {
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// Files by relative path.
pub type Payload = BTreeMap<PathBuf, FileProjection>;

/// Checks a payload path: relative, no `..` component, not starting with `..`, not empty.
pub fn validate_path(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("path must not be empty".into());
    }
    if path.is_absolute() {
        return Err(format!("path {} must be relative", path.display()));
    }
    if path.to_string_lossy().starts_with("..") {
        return Err(format!("path {} must not start with '..'", path.display()));
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "path {} must not contain '..' or '.'",
            path.display()
        ));
    }
    Ok(())
}

/// Writes `payload` into `dir` atomically. Returns whether anything changed.
pub fn write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    for path in payload.keys() {
        validate_path(path).map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
    }
    fs::create_dir_all(dir)?;
    let data_link = dir.join(DATA_DIR);
    let old_ts = fs::read_link(&data_link).ok();
    if let Some(old) = &old_ts {
        if read_payload(&dir.join(old))? == *payload {
            return Ok(false);
        }
    }

    let ts_name = timestamp_dir_name();
    let ts_dir = dir.join(&ts_name);
    let written = (|| -> io::Result<()> {
        fs::create_dir(&ts_dir)?;
        fs::set_permissions(&ts_dir, fs::Permissions::from_mode(0o755))?;
        for (path, file) in payload {
            let full = ts_dir.join(path);
            if let Some(parent) = full.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&full, &file.data)?;
            fs::set_permissions(&full, fs::Permissions::from_mode(file.mode & 0o7777))?;
        }
        let tmp_link = dir.join(DATA_DIR_TMP);
        let _ = fs::remove_file(&tmp_link);
        symlink(&ts_name, &tmp_link)?;
        fs::rename(&tmp_link, &data_link)
    })();
    if let Err(err) = written {
        let _ = fs::remove_dir_all(&ts_dir);
        return Err(err);
    }

    // Top-level names: link the new ones, drop the ones no longer in the payload.
    let new_top: BTreeSet<PathBuf> = payload.keys().filter_map(|p| top_component(p)).collect();
    for name in &new_top {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_DIR).join(name), &link)?;
        }
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = PathBuf::from(entry.file_name());
        if name.to_string_lossy().starts_with("..") || new_top.contains(&name) {
            continue;
        }
        if entry.file_type()?.is_symlink() {
            fs::remove_file(entry.path())?;
        }
    }
    // Older payloads go, but the one just replaced stays until the next update: a reader
    // that resolved `..data` an instant before the swap can still open its file.
    let keep: BTreeSet<PathBuf> = [Some(PathBuf::from(&ts_name)), old_ts]
        .into_iter()
        .flatten()
        .collect();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = PathBuf::from(entry.file_name());
        let hidden = name.to_string_lossy().starts_with("..");
        if hidden && entry.file_type()?.is_dir() && !keep.contains(&name) {
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(true)
}

/// The payload currently visible in `dir` (empty when nothing was written yet).
pub fn current(dir: &Path) -> io::Result<Payload> {
    match fs::read_link(dir.join(DATA_DIR)) {
        Ok(target) => read_payload(&dir.join(target)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Payload::new()),
        Err(err) => Err(err),
    }
}

fn read_payload(root: &Path) -> io::Result<Payload> {
    let mut out = Payload::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                out.insert(
                    rel,
                    FileProjection {
                        data: fs::read(entry.path())?,
                        mode: meta.permissions().mode() & 0o7777,
                    },
                );
            }
        }
    }
    Ok(out)
}

fn top_component(path: &Path) -> Option<PathBuf> {
    path.components()
        .next()
        .map(|c| PathBuf::from(c.as_os_str()))
}

fn timestamp_dir_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Unique even for two writes within one clock tick.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "..{}.{:09}.{}",
        now.as_secs(),
        now.subsec_nanos(),
        &nonce[..8]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(entries: &[(&str, &str, u32)]) -> Payload {
        entries
            .iter()
            .map(|(p, d, m)| {
                (
                    PathBuf::from(p),
                    FileProjection {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn writes_links_and_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = payload(&[("a", "1", 0o644), ("conf/b.yaml", "b: 1", 0o600)]);
        assert!(write(dir.path(), &v1).unwrap());
        assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "1");
        assert_eq!(
            fs::read_to_string(dir.path().join("conf/b.yaml")).unwrap(),
            "b: 1"
        );
        assert_eq!(
            fs::read_link(dir.path().join("a")).unwrap(),
            Path::new("..data/a")
        );
        let mode = fs::metadata(dir.path().join("conf/b.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(current(dir.path()).unwrap(), v1);
        assert!(!write(dir.path(), &v1).unwrap(), "same payload: no change");

        let v2 = payload(&[("a", "2", 0o644), ("c", "3", 0o644)]);
        assert!(write(dir.path(), &v2).unwrap());
        assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "2");
        assert_eq!(fs::read_to_string(dir.path().join("c")).unwrap(), "3");
        assert!(
            fs::symlink_metadata(dir.path().join("conf")).is_err(),
            "stale link removed"
        );
        let hidden: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != DATA_DIR)
            .collect();
        assert_eq!(hidden.len(), 2, "current + previous payload: {hidden:?}");
        let v3 = payload(&[("a", "3", 0o644)]);
        assert!(write(dir.path(), &v3).unwrap());
        let hidden = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let n = e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .into_owned();
                n.starts_with("..") && n != DATA_DIR
            })
            .count();
        assert_eq!(hidden, 2, "the oldest payload is removed");
    }

    #[test]
    fn rejects_escaping_paths() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "..data", ""] {
            assert!(validate_path(Path::new(bad)).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(write(dir.path(), &payload(&[("../escape", "x", 0o644)])).is_err());
        assert!(
            fs::read_dir(dir.path()).unwrap().next().is_none(),
            "nothing written"
        );
    }
}

//! Mounts, behind a trait so the driver's logic is tested without root.
//!
//! [`LinuxMounter`] makes the real bind and tmpfs mounts; [`RecordedMounts`] keeps a table
//! of what would be mounted, for tests and simulations that run unprivileged. A driver is
//! given one explicitly; nothing switches on `cfg(test)`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Options of a bind mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindOptions {
    /// Mount read-only.
    pub readonly: bool,
    /// Extra per-mount flags from a CSI `mount_flags` list (`nosuid`, `nodev`, `noexec`,
    /// `noatime`, `nodiratime`, `relatime`, `ro`).
    pub flags: Vec<String>,
}

/// Parses CSI mount flags into kernel per-mount flags. Unknown flags are an error: a
/// directory-backed bind mount cannot honour filesystem options.
pub fn parse_mount_flags(flags: &[String]) -> Result<MsFlags, String> {
    let mut out = MsFlags::empty();
    for flag in flags {
        out |= match flag.as_str() {
            "ro" => MsFlags::MS_RDONLY,
            "rw" | "bind" | "rbind" | "defaults" => MsFlags::empty(),
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            other => return Err(format!("unsupported mount flag {other:?}")),
        };
    }
    Ok(out)
}

/// The mount operations the hostpath driver and the in-tree volume sources need.
pub trait Mounter: Send + Sync + 'static {
    /// Bind-mounts `source` at `target` (both existing directories), read-only if asked.
    fn bind(&self, source: &Path, target: &Path, options: &BindOptions) -> io::Result<()>;
    /// Mounts a fresh tmpfs at `target`, limited to `size_bytes` (0 = the kernel default)
    /// with the given root directory mode.
    fn tmpfs(&self, target: &Path, size_bytes: u64, mode: u32) -> io::Result<()>;
    /// Unmounts `target`. Not being a mount point is success.
    fn unmount(&self, target: &Path) -> io::Result<()>;
    /// Whether `target` is a mount point.
    fn is_mount_point(&self, target: &Path) -> io::Result<bool>;
}

/// Real mounts through `mount(2)` and `umount2(2)`. Needs CAP_SYS_ADMIN.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinuxMounter;

impl Mounter for LinuxMounter {
    fn bind(&self, source: &Path, target: &Path, options: &BindOptions) -> io::Result<()> {
        let extra = parse_mount_flags(&options.flags)
            .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))?;
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        let mut flags = extra;
        if options.readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        if !flags.is_empty() {
            // Per-mount flags of a bind mount only take effect through a remount.
            let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
            if let Err(err) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(err.into());
            }
        }
        Ok(())
    }

    fn tmpfs(&self, target: &Path, size_bytes: u64, mode: u32) -> io::Result<()> {
        let mut data = format!("mode={mode:o}");
        if size_bytes > 0 {
            data.push_str(&format!(",size={size_bytes}"));
        }
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )?;
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        if !self.is_mount_point(target)? {
            return Ok(());
        }
        match umount2(target, MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    fn is_mount_point(&self, target: &Path) -> io::Result<bool> {
        is_mount_point(target)
    }
}

/// Whether `path` is a mount point according to `/proc/self/mountinfo` (bind mounts of a
/// directory on the same filesystem have the same device, so `stat` cannot tell).
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let canonical = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| Path::new(&unescape_mount_path(mount_point)) == canonical))
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(value) = u8::from_str_radix(&raw[i + 1..i + 4], 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What [`RecordedMounts`] remembers about one mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordedMount {
    /// A bind mount of `source`.
    Bind {
        /// The mounted directory.
        source: PathBuf,
        /// Its options.
        options: BindOptions,
    },
    /// A tmpfs.
    Tmpfs {
        /// Size limit (0 = default).
        size_bytes: u64,
        /// Root mode.
        mode: u32,
    },
}

/// A mount table in memory: mounts nothing, records everything. For unprivileged tests and
/// simulated nodes. Stacked mounts on one target are not modelled: mounting twice on the
/// same target is an error, as the driver never does it.
#[derive(Debug, Default)]
pub struct RecordedMounts {
    table: Mutex<BTreeMap<PathBuf, RecordedMount>>,
}

impl RecordedMounts {
    /// An empty table.
    pub fn new() -> RecordedMounts {
        RecordedMounts::default()
    }

    /// The current mounts, by target.
    pub fn mounts(&self) -> BTreeMap<PathBuf, RecordedMount> {
        self.table.lock().expect("mount table poisoned").clone()
    }

    fn insert(&self, target: &Path, mount: RecordedMount) -> io::Result<()> {
        if !target.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("mount target {} is not a directory", target.display()),
            ));
        }
        let mut table = self.table.lock().expect("mount table poisoned");
        if table.contains_key(target) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is already a mount point", target.display()),
            ));
        }
        table.insert(target.to_path_buf(), mount);
        Ok(())
    }
}

impl Mounter for RecordedMounts {
    fn bind(&self, source: &Path, target: &Path, options: &BindOptions) -> io::Result<()> {
        parse_mount_flags(&options.flags)
            .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))?;
        if !source.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("bind source {} is not a directory", source.display()),
            ));
        }
        self.insert(
            target,
            RecordedMount::Bind {
                source: source.to_path_buf(),
                options: options.clone(),
            },
        )
    }

    fn tmpfs(&self, target: &Path, size_bytes: u64, mode: u32) -> io::Result<()> {
        self.insert(target, RecordedMount::Tmpfs { size_bytes, mode })
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        self.table
            .lock()
            .expect("mount table poisoned")
            .remove(target);
        Ok(())
    }

    fn is_mount_point(&self, target: &Path) -> io::Result<bool> {
        Ok(self
            .table
            .lock()
            .expect("mount table poisoned")
            .contains_key(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_flags_parse_and_reject_unknown() {
        let flags = parse_mount_flags(&["nosuid".into(), "noexec".into()]).unwrap();
        assert!(flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC));
        assert!(parse_mount_flags(&["discard".into()]).is_err());
    }

    #[test]
    fn mountinfo_paths_unescape() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn recorded_mounts_track_targets() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        let mounts = RecordedMounts::new();
        mounts.bind(&src, &dst, &BindOptions::default()).unwrap();
        assert!(mounts.is_mount_point(&dst).unwrap());
        assert!(mounts.bind(&src, &dst, &BindOptions::default()).is_err());
        mounts.unmount(&dst).unwrap();
        mounts.unmount(&dst).unwrap();
        assert!(mounts.mounts().is_empty());
    }
}

//! Sandbox network namespaces: created by unsharing in a short-lived thread and pinned
//! by bind-mounting the thread's namespace file onto a file under a root directory
//! (as `ip netns add` does), so the namespace outlives every process in it and the
//! container runtime can join it by path. It owns only files under its root.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{NetworkError, Result};

/// The default root for pinned namespaces, `ip netns`'s.
pub const DEFAULT_NETNS_ROOT: &str = "/run/netns";

/// `statfs` magic of the nsfs filesystem: a pinned namespace file reports it.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// A pinned network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// Creates and pins a new namespace at `root/name`. If one is already pinned
    /// there, it is returned (creation is idempotent).
    pub fn create(root: &Path, name: &str) -> Result<NetNs> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(NetworkError::InvalidArgument {
                field: "netns name",
                reason: format!("{name:?} is not a file name"),
            });
        }
        let path = root.join(name);
        let fail = |op, reason: String| NetworkError::Netns {
            path: path.clone(),
            op,
            reason,
        };
        std::fs::create_dir_all(root).map_err(|e| fail("create root", e.to_string()))?;
        make_shared(root).map_err(|e| fail("make root a shared mount", e))?;
        if is_pinned(&path) {
            return Ok(NetNs { path });
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| fail("create pin file", e.to_string()))?;
        let target = path.clone();
        // unshare() moves only the calling thread; a thread of our own keeps that away
        // from the async runtime's workers and ends with the namespace pinned.
        let pinned = std::thread::spawn(move || -> std::result::Result<(), String> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare: {e}"))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind mount: {e}"))
        })
        .join()
        .unwrap_or_else(|_| Err("pinning thread panicked".into()));
        if let Err(reason) = pinned {
            let _ = std::fs::remove_file(&path);
            return Err(fail("create", reason));
        }
        tracing::debug!(path = %path.display(), "created network namespace");
        Ok(NetNs { path })
    }

    /// Refers to a namespace pinned at `path` (it is checked when used).
    pub fn from_path(path: impl Into<PathBuf>) -> NetNs {
        NetNs { path: path.into() }
    }

    /// The pin path (what `CNI_NETNS` and the runtime's `network` namespace path get).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a namespace is pinned at the path.
    pub fn exists(&self) -> bool {
        is_pinned(&self.path)
    }

    /// Opens the namespace file (for `setns`).
    pub fn open(&self) -> Result<File> {
        if !self.exists() {
            return Err(NetworkError::Netns {
                path: self.path.clone(),
                op: "open",
                reason: "no network namespace is pinned there".into(),
            });
        }
        File::open(&self.path).map_err(|e| NetworkError::Netns {
            path: self.path.clone(),
            op: "open",
            reason: e.to_string(),
        })
    }

    /// Runs `f` on a fresh thread that has joined this namespace, and returns its
    /// value. Sockets `f` opens stay in the namespace after the thread ends.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let file = self.open()?;
        let path = self.path.clone();
        std::thread::spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err("thread panicked".into()))
        .map_err(|reason| NetworkError::Netns {
            path,
            op: "enter",
            reason,
        })
    }

    /// Unpins and removes the namespace file. The namespace itself goes away when the
    /// last process in it exits. Removing what is not there succeeds.
    pub fn delete(&self) -> Result<()> {
        match umount2(&self.path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(NetworkError::Netns {
                    path: self.path.clone(),
                    op: "unmount",
                    reason: e.to_string(),
                })
            }
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(NetworkError::Netns {
                    path: self.path.clone(),
                    op: "remove pin file",
                    reason: e.to_string(),
                })
            }
        }
        tracing::debug!(path = %self.path.display(), "deleted network namespace");
        Ok(())
    }
}

// f_type's integer type differs between architectures.
#[allow(clippy::unnecessary_cast)]
fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as i64 == NSFS_MAGIC)
}

/// Makes `root` a shared mount point (bind-mounting it onto itself first if it is not
/// a mount point), so that unpinning propagates into mount namespaces made later
/// instead of leaving copies that keep namespaces alive. Done once per root.
fn make_shared(root: &Path) -> std::result::Result<(), String> {
    let shared = || {
        mount(
            None::<&str>,
            root,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if is_shared_mount_point(root) {
        return Ok(());
    }
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("bind mount: {e}"))?;
    shared().map_err(|e| format!("make shared: {e}"))
}

fn is_shared_mount_point(root: &Path) -> bool {
    let Ok(canon) = root.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|line| {
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4);
        mount_point == Some(&*canon.to_string_lossy()) && line.contains(" shared:")
    })
}

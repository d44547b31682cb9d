//! Filesystem operations confined to one directory tree.
//!
//! Every path is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)`: `..` stops at the
//! root and symlinks (absolute or relative) resolve as if the tree were `/`, so nothing a
//! layer contains — nor anything an earlier layer left behind — can steer a write outside.
//! Only parent directories are resolved that way; the final component is always acted on
//! with `*at` calls that never follow it (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `O_EXCL`).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags};

/// A directory tree that operations cannot escape.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

impl Root {
    /// Opens `path` (which must be a directory) as the root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The root's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn openat2(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        loop {
            match rfs::openat2(
                &self.fd,
                rel,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            ) {
                // The kernel asks for a retry when a rename raced with `..` resolution.
                Err(rustix::io::Errno::AGAIN) => continue,
                r => return r.map_err(io::Error::from),
            }
        }
    }

    /// Opens regular file `rel` for reading, resolved inside the root (symlinks included).
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        Ok(File::from(self.openat2(rel, OFlags::RDONLY)?))
    }

    /// An `O_PATH` handle on directory `rel`, resolved inside the root.
    pub fn dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.openat2(rel, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// A readable handle on directory `rel` (for listing it or setting its xattrs).
    pub fn dir_rw(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.openat2(rel, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// Like [`Root::dir`], creating missing directories (mode 0755, like Docker's implicit
    /// parents) on the way, also where a symlink inside the root names a missing directory.
    pub fn dir_create(&self, rel: &Path) -> io::Result<OwnedFd> {
        match self.dir(rel) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.dir_create_slow(rel),
            r => r,
        }
    }

    /// Walks `rel` one component at a time, following symlinks the way `RESOLVE_IN_ROOT`
    /// would and creating what is missing.
    fn dir_create_slow(&self, rel: &Path) -> io::Result<OwnedFd> {
        let mut resolved: Vec<OsString> = Vec::new();
        let mut todo: VecDeque<OsString> = rel.iter().map(OsStr::to_os_string).collect();
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_bytes() {
                b"" | b"." | b"/" => continue,
                b".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            let here: PathBuf = resolved.iter().collect();
            let dfd = self.dir(&here)?;
            match lstat(&dfd, &c)? {
                None => match rfs::mkdirat(&dfd, c.as_os_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => resolved.push(c),
                    Err(e) => return Err(e.into()),
                },
                Some(st) if is_dir(&st) => resolved.push(c),
                Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    links += 1;
                    if links > 40 {
                        return Err(rustix::io::Errno::LOOP.into());
                    }
                    let target = rfs::readlinkat(&dfd, c.as_os_str(), Vec::new())?;
                    let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    for t in target.iter().rev() {
                        todo.push_front(t.to_os_string());
                    }
                }
                Some(_) => return Err(rustix::io::Errno::NOTDIR.into()),
            }
        }
        self.dir(&resolved.iter().collect::<PathBuf>())
    }
}

/// Splits a clean relative path into parent and final name.
pub fn split(rel: &Path) -> Option<(&Path, &OsStr)> {
    Some((rel.parent()?, rel.file_name()?))
}

/// Lexically cleans an archive path into a relative path inside the root: leading `/` and
/// `.` are dropped and `..` never climbs above the root (as Docker's `filepath.Clean("/" + p)`).
/// `None` for the root itself.
pub fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// `lstat` of `name` in `dir`; `None` when absent.
pub fn lstat(dir: impl AsFd, name: &OsStr) -> io::Result<Option<rfs::Stat>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether a stat result is a directory.
pub fn is_dir(st: &rfs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// Removes `name` in `dir`, recursively if it is a directory; absent is fine.
pub fn remove_all(dir: impl AsFd, name: &OsStr) -> io::Result<()> {
    let dir = dir.as_fd();
    let Some(st) = lstat(dir, name)? else {
        return Ok(());
    };
    if !is_dir(&st) {
        return match rfs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    let sub = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    clear_dir(&sub, |_| true)?;
    match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes every child of the (readable) directory `dir` for which `keep_out` says true.
pub fn clear_dir(dir: &OwnedFd, mut remove: impl FnMut(&OsStr) -> bool) -> io::Result<()> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(OsStr::from_bytes(name).to_os_string());
    }
    for n in names {
        if remove(&n) {
            remove_all(dir, &n)?;
        }
    }
    Ok(())
}

/// Creates a new regular file `name` in `dir`; never follows or reuses what was there.
pub fn create_file(dir: impl AsFd, name: &OsStr) -> io::Result<File> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// Opens directory `name` in `dir` without following a symlink.
pub fn open_subdir(dir: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_never_climbs_out() {
        let c = |s: &str| clean(Path::new(s)).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(c("a/b"), Some("a/b".into()));
        assert_eq!(c("./a/./b/"), Some("a/b".into()));
        assert_eq!(c("/etc/passwd"), Some("etc/passwd".into()));
        assert_eq!(c("../../etc/passwd"), Some("etc/passwd".into()));
        assert_eq!(c("a/../../b"), Some("b".into()));
        assert_eq!(c("./"), None);
        assert_eq!(c(".."), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let outer = tempfile::tempdir().unwrap();
        let root_path = outer.path().join("root");
        std::fs::create_dir(&root_path).unwrap();
        std::os::unix::fs::symlink("/", root_path.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root_path.join("rel")).unwrap();
        let root = Root::open(&root_path).unwrap();
        for via in ["abs", "rel", "abs/../rel/..", "rel/rel"] {
            let fd = root.dir_create(&Path::new(via).join("made")).unwrap();
            let st = rfs::fstat(&fd).unwrap();
            let made = std::fs::metadata(root_path.join("made")).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(st.st_ino, made.ino(), "{via} resolved outside the root");
        }
        assert!(!outer.path().join("made").exists());
    }
}

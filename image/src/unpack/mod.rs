//! Layer unpacking: a (compressed) tar stream applied to a directory, safely.
//!
//! Two targets, one engine:
//! - [`Whiteouts::Overlay`]: the layer alone into an empty snapshot directory, whiteouts
//!   turned into overlayfs' own markers (a 0/0 character device for a deleted path, the
//!   `trusted.overlay.opaque=y` xattr for an opaque directory). Snapshots stack as lower
//!   directories of an overlay mount.
//! - [`Whiteouts::Apply`]: layers one after another into one directory (a flat rootfs,
//!   for exports and for hosts without overlayfs); whiteouts delete what lower layers made.
//!
//! The uncompressed tar is hashed on the way (the diff id), so a layer that does not match
//! its config is an error. The compressed digest is the caller's to check: it reads the
//! blob through a [`HashingReader`] (or hashes the bytes while storing them) and compares
//! after the unpack, which reads the stream to its end.
//! Every write goes through [`rootfd::Root`], which keeps it inside the target.

pub mod rootfd;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, Timestamps};
use tar::EntryType;

use crate::digest::{Digest, HashingReader};
use crate::error::{ImageError, Result};
use rootfd::Root;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How whiteout entries are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whiteouts {
    /// Record them as overlayfs markers (snapshot directories).
    Overlay,
    /// Delete the paths they name (flat root filesystems).
    Apply,
}

/// Options for one unpack.
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    /// Whiteout handling.
    pub whiteouts: Whiteouts,
    /// Give files the archive's uid/gid (needs root; off, everything belongs to the caller).
    pub same_owner: bool,
    /// The diff id the uncompressed tar must have, if known.
    pub expect_diff_id: Option<Digest>,
}

impl UnpackOptions {
    /// Options for a snapshot directory, owners kept when running as root.
    pub fn snapshot() -> Self {
        UnpackOptions {
            whiteouts: Whiteouts::Overlay,
            same_owner: rustix::process::geteuid().is_root(),
            expect_diff_id: None,
        }
    }

    /// Options for a flat root filesystem.
    pub fn flat() -> Self {
        UnpackOptions {
            whiteouts: Whiteouts::Apply,
            ..UnpackOptions::snapshot()
        }
    }
}

/// What an unpack read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnpackStats {
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Its length.
    pub uncompressed_size: u64,
    /// Archive entries applied.
    pub entries: u64,
}

/// Compression of a layer stream, told by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Sniffs the magic number.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Unpacks one layer stream into `target` (an existing directory). `layer` names the
/// layer in errors. On error the target may hold part of the layer: callers unpack into a
/// fresh directory and rename it into place only on success.
pub fn unpack(
    input: impl Read,
    target: &Path,
    layer: &str,
    opts: &UnpackOptions,
) -> Result<UnpackStats> {
    let io_err = |e: io::Error| ImageError::io("unpack layer into", target, e);
    let mut compressed = BufReader::with_capacity(256 * 1024, input);
    let head = compressed.fill_buf().map_err(io_err)?;
    let compression = Compression::detect(head);
    let decoder: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(&mut compressed),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut compressed)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(BufReader::new(&mut compressed))
                .map_err(io_err)?,
        ),
    };
    let mut tar_stream = HashingReader::new(decoder);
    let root = Root::open(target).map_err(io_err)?;
    let mut applier = Applier {
        root: &root,
        layer,
        opts,
        created: HashSet::new(),
        dir_times: Vec::new(),
        buf: vec![0u8; 128 * 1024],
    };
    let mut entries = 0u64;
    {
        let mut archive = tar::Archive::new(&mut tar_stream);
        for entry in archive.entries().map_err(|e| bad_stream(layer, e))? {
            let entry = entry.map_err(|e| bad_stream(layer, e))?;
            applier.apply(entry)?;
            entries += 1;
        }
    }
    applier.finish_dir_times()?;
    let (diff_id, uncompressed_size) = tar_stream.drain().map_err(|e| bad_stream(layer, e))?;
    // The rest of the stream (padding after the archive's end), so that a caller hashing
    // it sees all of it.
    io::copy(&mut compressed, &mut io::sink()).map_err(|e| bad_stream(layer, e))?;
    if let Some(want) = &opts.expect_diff_id {
        if want != &diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed layer {layer} (diff id)"),
                expected: want.clone(),
                actual: diff_id,
            });
        }
    }
    Ok(UnpackStats {
        diff_id,
        uncompressed_size,
        entries,
    })
}

fn bad_stream(layer: &str, e: io::Error) -> ImageError {
    ImageError::BadLayerEntry {
        layer: layer.to_string(),
        entry: String::new(),
        reason: format!("corrupt or truncated archive: {e}"),
    }
}

struct Applier<'a> {
    root: &'a Root,
    layer: &'a str,
    opts: &'a UnpackOptions,
    /// Paths this layer wrote: whiteouts (flat mode) never delete them.
    created: HashSet<PathBuf>,
    /// Directory mtimes, set last because later entries touch their directories.
    dir_times: Vec<(PathBuf, i64)>,
    buf: Vec<u8>,
}

struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Applier<'_> {
    fn err(&self, entry: &Path, reason: impl std::fmt::Display) -> ImageError {
        ImageError::BadLayerEntry {
            layer: self.layer.to_string(),
            entry: entry.display().to_string(),
            reason: reason.to_string(),
        }
    }

    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw_path = entry
            .path()
            .map_err(|e| bad_stream(self.layer, e))?
            .into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let Some(path) = rootfd::clean(&raw_path) else {
            // The root directory itself: its metadata belongs to the container runtime.
            return Ok(());
        };
        let meta = self.meta(&mut entry, &raw_path)?;
        let (parent, name) = rootfd::split(&path).expect("clean path has a name");
        let name_bytes = name.as_bytes();
        if name_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self
                .whiteout(&path, parent, name)
                .map_err(|e| self.err(&raw_path, e));
        }
        let pfd = self
            .root
            .dir_create(parent)
            .map_err(|e| self.err(&raw_path, format!("parent directory: {e}")))?;
        let existing = rootfd::lstat(&pfd, name).map_err(|e| self.err(&raw_path, e))?;
        let keep_dir =
            kind == EntryType::Directory && existing.as_ref().is_some_and(rootfd::is_dir);
        if existing.is_some() && !keep_dir {
            rootfd::remove_all(&pfd, name)
                .map_err(|e| self.err(&raw_path, format!("replacing: {e}")))?;
        }
        let made = self
            .create(&mut entry, kind, &pfd, name, &path, &meta, keep_dir)
            .map_err(|e| self.err(&raw_path, e))?;
        if made {
            self.created.insert(path);
        }
        Ok(())
    }

    /// Creates one entry; `false` when it was skipped.
    #[allow(clippy::too_many_arguments)]
    fn create<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        pfd: &std::os::fd::OwnedFd,
        name: &OsStr,
        path: &Path,
        meta: &Meta,
        keep_dir: bool,
    ) -> io::Result<bool> {
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut f = rootfd::create_file(pfd, name)?;
                copy(entry, &mut f, &mut self.buf)?;
                self.set_meta_fd(&f, meta)?;
            }
            EntryType::Directory => {
                if !keep_dir {
                    rfs::mkdirat(pfd, name, Mode::from_raw_mode(0o700))?;
                }
                let d = rootfd::open_subdir(pfd, name)?;
                self.set_meta_fd(&d, meta)?;
                self.dir_times.push((path.to_path_buf(), meta.mtime));
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| io::Error::other("symlink without a target"))?;
                rfs::symlinkat(target.as_os_str(), pfd, name)?;
                self.set_meta_at(pfd, name, meta, false)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| io::Error::other("hardlink without a target"))?;
                let target = rootfd::clean(&target)
                    .ok_or_else(|| io::Error::other("hardlink to the root directory"))?;
                let (tparent, tname) = rootfd::split(&target).expect("clean path has a name");
                // The target's directory resolves inside the root like every other path, and
                // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never what it names.
                let linked = self
                    .root
                    .dir(tparent)
                    .and_then(|tfd| Ok(rfs::linkat(&tfd, tname, pfd, name, AtFlags::empty())?));
                linked.map_err(|e| {
                    io::Error::new(e.kind(), format!("hardlink to {}: {e}", target.display()))
                })?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (ft, dev) = match kind {
                    EntryType::Char => (FileType::CharacterDevice, device(entry)?),
                    EntryType::Block => (FileType::BlockDevice, device(entry)?),
                    _ => (FileType::Fifo, 0),
                };
                if ft != FileType::Fifo && !self.opts.same_owner {
                    tracing::debug!(layer = self.layer, entry = %path.display(), "device node skipped: not root");
                    return Ok(false);
                }
                rfs::mknodat(pfd, name, ft, Mode::from_raw_mode(meta.mode & 0o7777), dev)?;
                self.set_meta_at(pfd, name, meta, true)?;
            }
            other => {
                tracing::debug!(layer = self.layer, entry = %path.display(), kind = ?other, "archive entry type skipped");
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, raw: &Path) -> Result<Meta> {
        let h = entry.header();
        let mut meta = Meta {
            mode: h.mode().map_err(|e| self.err(raw, e))?,
            uid: h.uid().map_err(|e| self.err(raw, e))?,
            gid: h.gid().map_err(|e| self.err(raw, e))?,
            mtime: h.mtime().map_err(|e| self.err(raw, e))? as i64,
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions().map_err(|e| self.err(raw, e))? {
            for ext in pax {
                let ext = ext.map_err(|e| self.err(raw, e))?;
                let Ok(key) = ext.key() else { continue };
                let num = || {
                    ext.value()
                        .ok()
                        .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
                };
                match key {
                    "uid" => meta.uid = num().unwrap_or(meta.uid as i64) as u64,
                    "gid" => meta.gid = num().unwrap_or(meta.gid as i64) as u64,
                    "mtime" => meta.mtime = num().unwrap_or(meta.mtime),
                    k => {
                        if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                            // A layer must never forge overlayfs' own markers.
                            if name.starts_with("trusted.overlay.") {
                                continue;
                            }
                            meta.xattrs
                                .push((name.to_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        Ok(meta)
    }

    fn owner(&self, meta: &Meta) -> Option<(rfs::Uid, rfs::Gid)> {
        self.opts.same_owner.then(|| {
            (
                rfs::Uid::from_raw(meta.uid as u32),
                rfs::Gid::from_raw(meta.gid as u32),
            )
        })
    }

    /// chown, then chmod (chown clears set-id bits), then xattrs, then times.
    fn set_meta_fd(&self, fd: impl AsFd, meta: &Meta) -> io::Result<()> {
        let fd = fd.as_fd();
        if let Some((u, g)) = self.owner(meta) {
            rfs::fchown(fd, Some(u), Some(g))?;
        }
        rfs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777))?;
        for (k, v) in &meta.xattrs {
            if let Err(e) = rfs::fsetxattr(fd, k.as_str(), v, rfs::XattrFlags::empty()) {
                tracing::warn!(layer = self.layer, xattr = %k, error = %e, "xattr not set");
            }
        }
        let t = timestamps(meta.mtime);
        rfs::futimens(fd, &t)?;
        Ok(())
    }

    fn set_meta_at(
        &self,
        dir: impl AsFd,
        name: &OsStr,
        meta: &Meta,
        chmod: bool,
    ) -> io::Result<()> {
        let dir = dir.as_fd();
        if let Some((u, g)) = self.owner(meta) {
            rfs::chownat(dir, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)?;
        }
        if chmod {
            rfs::chmodat(
                dir,
                name,
                Mode::from_raw_mode(meta.mode & 0o7777),
                AtFlags::empty(),
            )?;
        }
        rfs::utimensat(
            dir,
            name,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    fn whiteout(&mut self, path: &Path, parent: &Path, name: &OsStr) -> io::Result<()> {
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE.as_bytes() {
            let dir = self.root.dir_create(parent)?;
            drop(dir);
            let dir = self.root.dir_rw(parent)?;
            match self.opts.whiteouts {
                Whiteouts::Overlay => {
                    rfs::fsetxattr(&dir, OVERLAY_OPAQUE_XATTR, b"y", rfs::XattrFlags::empty())?;
                }
                Whiteouts::Apply => {
                    let created = &self.created;
                    rootfd::clear_dir(&dir, |child| !created.contains(&parent.join(child)))?;
                }
            }
            return Ok(());
        }
        let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) else {
            return Ok(());
        };
        if hidden.starts_with(WHITEOUT_PREFIX.as_bytes())
            || hidden.is_empty()
            || hidden == b"."
            || hidden == b".."
        {
            // `.wh..wh.*` other than the opaque marker are aufs internals (e.g. `.wh..wh.plnk`).
            tracing::debug!(layer = self.layer, entry = %path.display(), "aufs metadata entry skipped");
            return Ok(());
        }
        let hidden = OsStr::from_bytes(hidden);
        let target = parent.join(hidden);
        match self.opts.whiteouts {
            Whiteouts::Overlay => {
                let pfd = self.root.dir_create(parent)?;
                // Files of this same layer are not hidden by its whiteouts (image-spec).
                if rootfd::lstat(&pfd, hidden)?.is_none() {
                    rfs::mknodat(
                        &pfd,
                        hidden,
                        FileType::CharacterDevice,
                        Mode::empty(),
                        rfs::makedev(0, 0),
                    )?;
                }
            }
            Whiteouts::Apply => {
                if self.created.contains(&target) {
                    return Ok(());
                }
                match self.root.dir(parent) {
                    Ok(pfd) => rootfd::remove_all(&pfd, hidden)?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn finish_dir_times(&mut self) -> Result<()> {
        for (path, mtime) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            let (parent, name) = rootfd::split(&path).expect("clean path has a name");
            let Ok(pfd) = self.root.dir(parent) else {
                continue;
            };
            // A later entry may have replaced the directory; times are best effort.
            let _ = rfs::utimensat(&pfd, name, &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW);
        }
        Ok(())
    }
}

fn device<R: Read>(entry: &tar::Entry<'_, R>) -> io::Result<rfs::Dev> {
    let h = entry.header();
    let major = h.device_major()?.unwrap_or(0);
    let minor = h.device_minor()?.unwrap_or(0);
    Ok(rfs::makedev(major, minor))
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = rfs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn copy(r: &mut impl Read, w: &mut impl Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        let k = match r.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
}

//! Snapshots: one directory per unpacked layer, named by the layer's diff id and shared by
//! every image that has that layer. A container's root filesystem is an overlay mount with
//! the image's snapshots as lower directories and a private upper directory.
//!
//! A snapshot is unpacked into `snapshots/.tmp-*` and renamed to `snapshots/<hex>` only
//! after its digests checked out, so a present snapshot is always complete.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{Digest, HashingReader};
use crate::error::{ImageError, Result};
use crate::unpack::{self, UnpackOptions, UnpackStats};

/// Marks `dir` as the top of unrelated subtrees (`FS_TOPDIR_FL`, `chattr +T`), best
/// effort. ext4's Orlov allocator then spreads new snapshot directories, and the files
/// unpacked into them, over block groups, instead of packing them into the group of
/// snapshots just removed: there it would check the inodes freed a moment ago one by one
/// ("recently deleted", skipped for a few seconds) on every file it creates, which made
/// unpacking after a garbage collection several times slower. Other filesystems ignore
/// the flag or refuse it; either is fine.
fn mark_topdir(dir: &Path) {
    use rustix::fs::{IFlags, Mode, OFlags};
    let Ok(fd) = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    if let Ok(flags) = rustix::fs::ioctl_getflags(&fd) {
        if !flags.contains(IFlags::TOPDIR) {
            if let Err(e) = rustix::fs::ioctl_setflags(&fd, flags | IFlags::TOPDIR) {
                tracing::debug!(dir = %dir.display(), error = %e, "FS_TOPDIR_FL not set");
            }
        }
    }
}

/// The snapshot directories under one root.
#[derive(Clone, Debug)]
pub struct Snapshots {
    dir: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Snapshots {
    /// Opens (creating) `dir`.
    pub fn open(dir: &Path) -> Result<Snapshots> {
        fs::create_dir_all(dir).map_err(|e| ImageError::io("create directory", dir, e))?;
        mark_topdir(dir);
        Ok(Snapshots {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory of the snapshot for `diff_id`.
    pub fn path(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join(diff_id.hex())
    }

    /// Whether the snapshot for `diff_id` exists.
    pub fn contains(&self, diff_id: &Digest) -> bool {
        self.path(diff_id).is_dir()
    }

    /// Unpacks `blob` (a layer with compressed digest `digest`) into the snapshot for
    /// `diff_id`, unless it exists. Returns the unpack statistics when it unpacked.
    pub fn ensure(
        &self,
        blob: &Path,
        digest: &Digest,
        diff_id: &Digest,
    ) -> Result<Option<UnpackStats>> {
        if self.contains(diff_id) {
            return Ok(None);
        }
        let f = fs::File::open(blob).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageError::BlobNotFound(digest.clone()),
            _ => ImageError::io("open", blob, e),
        })?;
        let (stats, ()) = self.ensure_from(HashingReader::new(f), digest, diff_id, |r| {
            r.check_layer(digest, blob)
        })?;
        Ok(stats)
    }

    /// Unpacks the layer stream `input` (compressed digest `digest`) into the snapshot for
    /// `diff_id`, unless it exists. The unpacker checks the diff id; `seal` gets `input`
    /// back afterwards and must read it to its end and check the compressed digest (the
    /// caller hashes it, e.g. while storing the blob). The snapshot is renamed into place
    /// only after `seal` succeeded. When the snapshot exists, `seal` alone runs. When the
    /// unpack fails, `seal` still runs, and its digest or size mismatch is the error
    /// reported (a corrupt blob usually breaks the decompressor first).
    pub fn ensure_from<R: io::Read, T>(
        &self,
        mut input: R,
        digest: &Digest,
        diff_id: &Digest,
        seal: impl FnOnce(R) -> Result<T>,
    ) -> Result<(Option<UnpackStats>, T)> {
        if self.contains(diff_id) {
            return Ok((None, seal(input)?));
        }
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&tmp).map_err(|e| ImageError::io("create directory", &tmp, e))?;
        let result = (|| {
            let mut opts = UnpackOptions::snapshot();
            opts.expect_diff_id = Some(diff_id.clone());
            let stats = match unpack::unpack(&mut input, &tmp, &digest.to_string(), &opts) {
                Ok(stats) => stats,
                Err(unpack_err) => {
                    return Err(match seal(input) {
                        Err(
                            e @ (ImageError::DigestMismatch { .. }
                            | ImageError::SizeMismatch { .. }),
                        ) => e,
                        _ => unpack_err,
                    })
                }
            };
            let sealed = seal(input)?;
            // Snapshot roots are world-readable directories, like `/` in an image.
            fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| ImageError::io("chmod", &tmp, e))?;
            let dest = self.path(diff_id);
            match fs::rename(&tmp, &dest) {
                Ok(()) => Ok((Some(stats), sealed)),
                // Another unpack of the same layer won the race: keep its copy.
                Err(_) if dest.is_dir() => {
                    let _ = fs::remove_dir_all(&tmp);
                    Ok((None, sealed))
                }
                Err(e) => Err(ImageError::io("rename snapshot into", &dest, e)),
            }
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Removes a snapshot; absent is fine.
    pub fn remove(&self, diff_id: &Digest) -> Result<()> {
        let p = self.path(diff_id);
        match fs::remove_dir_all(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::io("remove snapshot", &p, e)),
        }
    }

    /// Every complete snapshot's diff id.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let rd =
            fs::read_dir(&self.dir).map_err(|e| ImageError::io("read directory", &self.dir, e))?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            if let Some(name) = e.file_name().to_str() {
                if let Ok(d) = format!("sha256:{name}").parse::<Digest>() {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes temporary directories left by an unpack that died (call when no other
    /// process unpacks into this store).
    pub fn clear_tmp(&self) -> Result<()> {
        let rd =
            fs::read_dir(&self.dir).map_err(|e| ImageError::io("read directory", &self.dir, e))?;
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }
}

/// The `lowerdir=` value of an overlay mount for `layers` given lowest first (overlayfs
/// wants the topmost first).
pub fn overlay_lowerdir(layers: &[PathBuf]) -> String {
    layers
        .iter()
        .rev()
        .map(|p| escape_overlay(&p.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(":")
}

/// overlayfs splits options on `,` and lower directories on `:`; both can be escaped.
fn escape_overlay(p: &str) -> String {
    p.replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

/// Mounts an overlay of `layers` (lowest first) under `upper`/`work` at `target`.
/// Needs root (CAP_SYS_ADMIN). With no layers, an empty read-only directory
/// (`empty_lower`, created if needed) stands in for the image.
pub fn mount_overlay(
    layers: &[PathBuf],
    empty_lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<()> {
    let lowers = if layers.is_empty() {
        fs::create_dir_all(empty_lower)
            .map_err(|e| ImageError::io("create directory", empty_lower, e))?;
        vec![empty_lower.to_path_buf()]
    } else {
        layers.to_vec()
    };
    mount_overlay_with(&lowers, upper, work, target, "")
}

/// Mounts an overlay of `layers` (lowest first, at least one) under `upper`/`work` at
/// `target`, with extra overlayfs `options` (comma-separated, may be empty).
pub fn mount_overlay_with(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    options: &str,
) -> Result<()> {
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        overlay_lowerdir(layers),
        escape_overlay(&upper.to_string_lossy()),
        escape_overlay(&work.to_string_lossy())
    );
    if !options.is_empty() {
        data.push(',');
        data.push_str(options);
    }
    let data = std::ffi::CString::new(data)
        .map_err(|e| ImageError::io("mount overlay at", target, io::Error::other(e)))?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(|e| ImageError::io("mount overlay at", target, e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_root_spreads_its_subtrees_where_the_filesystem_can() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("snapshots");
        Snapshots::open(&dir).unwrap();
        let fd = rustix::fs::open(
            &dir,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        // Filesystems without inode flags (tmpfs, overlayfs) refuse the ioctl; ext4 keeps it.
        if let Ok(flags) = rustix::fs::ioctl_getflags(&fd) {
            let fs = rustix::fs::fstatfs(&fd).unwrap();
            if fs.f_type == 0xEF53 {
                assert!(flags.contains(rustix::fs::IFlags::TOPDIR), "{flags:?}");
            }
        }
    }

    #[test]
    fn lowerdir_order_and_escaping() {
        let l = vec![
            PathBuf::from("/s/base"),
            PathBuf::from("/s/mid"),
            PathBuf::from("/s/t:op,x"),
        ];
        assert_eq!(overlay_lowerdir(&l), "/s/t\\:op\\,x:/s/mid:/s/base");
    }
}

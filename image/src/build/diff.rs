//! An overlayfs upper directory turned into an OCI layer: what a RUN step changed.
//!
//! overlayfs records changes in its own format: a deleted name is a 0/0 character device,
//! a directory that replaced a lower one carries `trusted.overlay.opaque=y`. The layer
//! says the same in OCI's words: `.wh.<name>` and `.wh..wh..opq` entries. Everything else
//! (files, directories, symlinks, hardlinks, fifos, devices, owners, modes, mtimes and
//! xattrs other than overlayfs' own) is written as it is.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Writes the layer tar of `upper` into `out`; entries are in a stable (sorted) order so
/// that the same changes give the same diff id.
pub(crate) fn write_layer<W: Write>(upper: &Path, out: W) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    let mut links = HashMap::new();
    walk(&mut b, upper, Path::new(""), &mut links)?;
    b.into_inner()
}

fn walk<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let abs = dir.join(&name);
        let path = rel.join(&name);
        let md = fs::symlink_metadata(&abs)?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            let mut wh = std::ffi::OsString::from(".wh.");
            wh.push(&name);
            let mut h = header(tar::EntryType::Regular, &md);
            h.set_mode(0o644);
            append(b, &mut h, &rel.join(wh), io::empty())?;
            continue;
        }
        let xattrs = xattrs(&abs)?;
        if !xattrs.is_empty() {
            b.append_pax_extensions(
                xattrs
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice()))
                    .collect::<Vec<_>>(),
            )?;
        }
        if ft.is_dir() {
            let mut h = header(tar::EntryType::Directory, &md);
            append(b, &mut h, &path, io::empty())?;
            if is_opaque(&abs) {
                let mut h = header(tar::EntryType::Regular, &md);
                h.set_mode(0o644);
                append(b, &mut h, &path.join(".wh..wh..opq"), io::empty())?;
            }
            walk(b, &abs, &path, links)?;
        } else if ft.is_symlink() {
            let mut h = header(tar::EntryType::Symlink, &md);
            b.append_link(&mut h, &path, fs::read_link(&abs)?)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    let mut h = header(tar::EntryType::Link, &md);
                    b.append_link(&mut h, &path, first)?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), path.clone());
            }
            let mut h = header(tar::EntryType::Regular, &md);
            h.set_size(md.len());
            append(b, &mut h, &path, fs::File::open(&abs)?)?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            let mut h = header(kind, &md);
            if !ft.is_fifo() {
                h.set_device_major(rustix::fs::major(md.rdev()))?;
                h.set_device_minor(rustix::fs::minor(md.rdev()))?;
            }
            append(b, &mut h, &path, io::empty())?;
        }
        // Sockets belong to a process that is gone; layers do not carry them.
    }
    Ok(())
}

fn header(kind: tar::EntryType, md: &fs::Metadata) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(u64::from(md.uid()));
    h.set_gid(u64::from(md.gid()));
    h.set_mtime(md.mtime().max(0) as u64);
    h.set_size(0);
    h
}

fn append<W: Write>(
    b: &mut tar::Builder<W>,
    h: &mut tar::Header,
    path: &Path,
    data: impl io::Read,
) -> io::Result<()> {
    b.append_data(h, path, data)
}

fn is_opaque(p: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(rustix::fs::lgetxattr(p, OPAQUE_XATTR, &mut buf[..]), Ok(1) if buf[0] == b'y')
}

/// The xattrs a layer carries for `p`, as PAX records (`SCHILY.xattr.<name>`): all but
/// overlayfs' own bookkeeping.
fn xattrs(p: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let size = match rustix::fs::llistxattr_query(p) {
        Ok(0) | Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Ok(n) => n,
        Err(e) => return Err(e.into()),
    };
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(p, &mut names[..])?;
    let mut out = Vec::new();
    for name in names[..n].split(|&c| c == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        let mut value = vec![0u8; rustix::fs::lgetxattr_query(p, name.as_str())?];
        let len = rustix::fs::lgetxattr(p, name.as_str(), &mut value[..])?;
        value.truncate(len);
        out.push((format!("SCHILY.xattr.{name}"), value));
    }
    Ok(out)
}

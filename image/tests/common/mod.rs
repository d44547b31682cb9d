//! Helpers shared by the integration tests: a tar writer that can produce hostile entries.
#![allow(dead_code, missing_docs)]

use std::io::Write;

/// Builds layer tarballs entry by entry, with raw names (so `..` and absolute paths can be
/// written, which `tar::Header::set_path` refuses).
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Layer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let name = &mut h.as_old_mut().name;
        assert!(path.len() < name.len(), "test path too long");
        name[..path.len()].copy_from_slice(path.as_bytes());
        h
    }

    fn push(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_with(path, data, 0o644, 0, 0)
    }

    pub fn file_with(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        let mut h = Self::header(path, tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.push(h, data)
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        let h = Self::header(path, tar::EntryType::Directory, 0o755, 0);
        self.push(h, &[])
    }

    fn link(&mut self, kind: tar::EntryType, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(path, kind, 0o777, 0);
        let l = &mut h.as_old_mut().linkname;
        l[..target.len()].copy_from_slice(target.as_bytes());
        self.push(h, &[])
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(tar::EntryType::Symlink, path, target)
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(tar::EntryType::Link, path, target)
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(path, tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, &[])
    }

    pub fn fifo(&mut self, path: &str) -> &mut Self {
        let h = Self::header(path, tar::EntryType::Fifo, 0o600, 0);
        self.push(h, &[])
    }

    /// A file with PAX xattr records.
    pub fn file_with_xattr(
        &mut self,
        path: &str,
        data: &[u8],
        key: &str,
        value: &[u8],
    ) -> &mut Self {
        self.builder
            .append_pax_extensions([(format!("SCHILY.xattr.{key}").as_str(), value)])
            .unwrap();
        self.file(path, data)
    }

    pub fn tar(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }

    pub fn gzip(&mut self) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&self.tar()).unwrap();
        gz.finish().unwrap()
    }

    pub fn zstd(&mut self) -> Vec<u8> {
        zstd::stream::encode_all(&self.tar()[..], 1).unwrap()
    }
}

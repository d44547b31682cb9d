//! The content-addressed blob store: `blobs/sha256/<hex>`, written through `ingest/`.
//!
//! A blob reaches its final name only by a rename after its digest (and size, when known)
//! was checked, so a reader never sees partial content under a digest. Manifests and
//! configs are verified again when read back ([`BlobStore::read_verified`]); layers are
//! verified while they are unpacked (the unpacker hashes the stream it reads).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{Digest, HashingWriter};
use crate::error::{ImageError, Result};

/// Blobs under one directory.
#[derive(Clone, Debug)]
pub struct BlobStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

static INGEST_SEQ: AtomicU64 = AtomicU64::new(0);

impl BlobStore {
    /// Opens (creating if needed) the blob store under `root`, and clears ingests left by
    /// a process that died mid-write.
    pub fn open(root: &Path) -> Result<BlobStore> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        for d in [&blobs, &ingest] {
            fs::create_dir_all(d).map_err(|e| ImageError::io("create directory", d, e))?;
        }
        Ok(BlobStore { blobs, ingest })
    }

    /// Removes leftover ingest files (call when no other process uses the store).
    pub fn clear_ingest(&self) -> Result<()> {
        let entries = fs::read_dir(&self.ingest)
            .map_err(|e| ImageError::io("read directory", &self.ingest, e))?;
        for e in entries.flatten() {
            let _ = fs::remove_file(e.path());
        }
        Ok(())
    }

    /// Where the blob `d` lives (whether or not it is present).
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }

    /// Whether `d` is present.
    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// The size of `d`, if present.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.path(d)).ok().map(|m| m.len())
    }

    /// Starts writing a new blob.
    pub fn ingest(&self) -> Result<Ingest> {
        let name = format!(
            "{}-{}",
            std::process::id(),
            INGEST_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.ingest.join(name);
        let file = File::create(&path).map_err(|e| ImageError::io("create", &path, e))?;
        Ok(Ingest {
            writer: Some(HashingWriter::new(BufWriter::with_capacity(
                256 * 1024,
                file,
            ))),
            path,
            store: self.clone(),
        })
    }

    /// Stores `bytes` and returns their digest.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if !self.contains(&digest) {
            let mut w = self.ingest()?;
            w.write_all(bytes)
                .map_err(|e| ImageError::io("write", &w.path, e))?;
            w.commit(Some(&digest), Some(bytes.len() as u64))?;
        }
        Ok(digest)
    }

    /// Stores everything `r` yields, checking it against `expected` digest and size.
    pub fn put_reader(
        &self,
        r: &mut dyn Read,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<Committed> {
        let mut w = self.ingest()?;
        io::copy(r, &mut w).map_err(|e| ImageError::io("copy into", &w.path, e))?;
        w.commit(expected, size)
    }

    /// Reads a (small) blob and checks that it still hashes to its name.
    pub fn read_verified(&self, d: &Digest) -> Result<Vec<u8>> {
        let path = self.path(d);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::BlobNotFound(d.clone()))
            }
            Err(e) => return Err(ImageError::io("read", &path, e)),
        };
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {}", path.display()),
                expected: d.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Opens a blob for streaming (the caller verifies what it reads).
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let path = self.path(d);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageError::BlobNotFound(d.clone()),
            _ => ImageError::io("open", &path, e),
        })
    }

    /// Deletes a blob; `false` when it was not there.
    pub fn remove(&self, d: &Digest) -> Result<bool> {
        let path = self.path(d);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::io("remove", &path, e)),
        }
    }

    /// Every blob with its size.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let entries = fs::read_dir(&self.blobs)
            .map_err(|e| ImageError::io("read directory", &self.blobs, e))?;
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(|e| ImageError::io("read directory", &self.blobs, e))?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((d, size));
        }
        out.sort();
        Ok(out)
    }
}

/// A blob being written; dropped without [`Ingest::commit`], its temporary file is removed.
pub struct Ingest {
    writer: Option<HashingWriter<BufWriter<File>>>,
    path: PathBuf,
    store: BlobStore,
}

/// What [`Ingest::commit`] stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// `false` when the store already held it (the new copy was discarded).
    pub created: bool,
}

impl Ingest {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.writer.as_ref().map_or(0, HashingWriter::len)
    }

    /// Checks digest and size and moves the blob to its final name.
    pub fn commit(mut self, expected: Option<&Digest>, size: Option<u64>) -> Result<Committed> {
        let writer = self.writer.take().expect("ingest committed twice");
        let (buf, digest, len) = writer.finish();
        buf.into_inner()
            .map_err(|e| ImageError::io("write", &self.path, e.into_error()))?;
        if let Some(expected) = expected {
            if let Some(size) = size {
                if size != len {
                    return Err(ImageError::SizeMismatch {
                        digest: expected.clone(),
                        expected: size,
                        actual: len,
                    });
                }
            }
            if &digest != expected {
                return Err(ImageError::DigestMismatch {
                    what: format!("blob {expected}"),
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        let dest = self.store.path(&digest);
        // A blob already there with the right size is kept (content addressing makes it
        // the same bytes); one of another size (a crash before its data reached the disk)
        // is replaced.
        let created = fs::metadata(&dest).map_or(true, |m| m.len() != len);
        if created {
            fs::rename(&self.path, &dest).map_err(|e| ImageError::io("rename into", &dest, e))?;
        }
        Ok(Committed {
            digest,
            size: len,
            created,
        })
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.as_mut().expect("write after commit").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().expect("write after commit").flush()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // After a successful commit the file was renamed away; otherwise drop the partial blob.
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put(b"manifest").unwrap();
        assert_eq!(d, Digest::of(b"manifest"));
        assert_eq!(store.read_verified(&d).unwrap(), b"manifest");
        assert_eq!(store.list().unwrap(), vec![(d.clone(), 8)]);
        // Corruption on disk is caught on read-back.
        fs::write(store.path(&d), b"manifesT").unwrap();
        assert!(matches!(
            store.read_verified(&d),
            Err(ImageError::DigestMismatch { .. })
        ));
        assert!(store.remove(&d).unwrap());
        assert!(matches!(
            store.read_verified(&d),
            Err(ImageError::BlobNotFound(_))
        ));
    }

    #[test]
    fn commit_checks_digest_and_size_and_leaves_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let want = Digest::of(b"full content");
        let mut w = store.ingest().unwrap();
        w.write_all(b"full").unwrap();
        assert!(matches!(
            w.commit(Some(&want), Some(12)),
            Err(ImageError::SizeMismatch { actual: 4, .. })
        ));
        let mut w = store.ingest().unwrap();
        w.write_all(b"full contenT").unwrap();
        assert!(matches!(
            w.commit(Some(&want), Some(12)),
            Err(ImageError::DigestMismatch { .. })
        ));
        assert!(store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        let c = store
            .put_reader(&mut &b"full content"[..], Some(&want), Some(12))
            .unwrap();
        assert!(c.created);
        let again = store
            .put_reader(&mut &b"full content"[..], Some(&want), None)
            .unwrap();
        assert!(!again.created);
    }
}

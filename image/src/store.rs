//! The image store: image records and tags over the blob store and the snapshots.
//!
//! An image is a manifest (its digest names the image in a repository) whose config (its
//! digest is the image id) and layers are blobs here and whose layers are unpacked into
//! snapshots. Records and tags are kept in `images.json`, rewritten atomically; an image
//! record is written only after every blob and snapshot it needs is in place, which is what
//! makes pulls and imports all-or-nothing. Blobs and snapshots that no image references
//! are deleted by [`ImageStore::gc`], except those an operation in flight has pinned.
//!
//! One process owns a store directory at a time (the records are cached in memory).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::blobs::BlobStore;
use crate::digest::{Digest, HashingReader};
use crate::error::{ImageError, Result};
use crate::reference::Reference;
use crate::snapshot::Snapshots;
use crate::spec::{media, Descriptor, Document, ImageConfig, Manifest, Platform};

/// What the store records about one image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// The manifest digest.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The config digest: the image id.
    pub config: Digest,
    /// The layers as the manifest lists them, base first.
    pub layers: Vec<Descriptor>,
    /// Their diff ids (from the config), base first.
    pub diff_ids: Vec<Digest>,
    /// The image's platform.
    pub platform: Platform,
    /// Bytes of manifest, config and compressed layers.
    pub size: u64,
    /// When the image entered the store (seconds since the epoch).
    pub added: u64,
    /// `name@digest` forms the image was pulled as.
    #[serde(default)]
    pub repo_digests: BTreeSet<String>,
    /// Removed by force while in use: deleted when its last lease goes.
    #[serde(default)]
    pub removed: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct Records {
    images: BTreeMap<Digest, ImageRecord>,
    /// Full reference (`registry/repo:tag`) → manifest digest.
    tags: BTreeMap<String, Digest>,
    /// Holder (container id) → manifest digest.
    leases: BTreeMap<String, Digest>,
    /// Diff id → unpacked size in bytes (uncompressed tar length).
    snapshot_sizes: BTreeMap<Digest, u64>,
}

/// An image as shown by list and inspect.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// The image id (config digest).
    pub id: Digest,
    /// The manifest digest.
    pub digest: Digest,
    /// Tags pointing at it.
    pub repo_tags: Vec<Reference>,
    /// `name@digest` forms.
    pub repo_digests: Vec<String>,
    /// Its config.
    pub config: ImageConfig,
    /// Its manifest.
    pub manifest: Manifest,
    /// Bytes of manifest, config and compressed layers.
    pub size: u64,
    /// Bytes of its uncompressed layers.
    pub unpacked_size: u64,
    /// Its snapshot directories, lowest first (overlay lower directories).
    pub layers: Vec<PathBuf>,
    /// When it entered the store (seconds since the epoch).
    pub added: u64,
}

/// What [`ImageStore::remove`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Tags removed.
    pub untagged: Vec<String>,
    /// The image deleted, if it was.
    pub deleted: Option<Digest>,
}

/// What [`ImageStore::gc`] freed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Blobs deleted.
    pub blobs: usize,
    /// Snapshots deleted.
    pub snapshots: usize,
    /// Bytes of blobs deleted.
    pub blob_bytes: u64,
}

/// Disk usage of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Images.
    pub images: usize,
    /// Blobs and their bytes.
    pub blobs: usize,
    /// Bytes of all blobs.
    pub blob_bytes: u64,
    /// Snapshots.
    pub snapshots: usize,
    /// Bytes allocated on disk by all snapshots.
    pub snapshot_bytes: u64,
    /// Bytes of blobs no image references (what [`ImageStore::gc`] would free).
    pub reclaimable_bytes: u64,
}

/// The image store rooted at one directory.
pub struct ImageStore {
    root: PathBuf,
    blobs: BlobStore,
    snapshots: Snapshots,
    records: Mutex<Records>,
    pins: Arc<Mutex<HashMap<Digest, usize>>>,
    /// Holds the store's `flock` while open.
    _lock: fs::File,
}

/// Keeps digests (blobs or snapshots) safe from [`ImageStore::gc`] while it lives.
pub struct Pin {
    digests: Vec<Digest>,
    pins: Arc<Mutex<HashMap<Digest, usize>>>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().expect("pins lock");
        for d in &self.digests {
            if let Some(n) = pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(d);
                }
            }
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ImageStore {
    /// Opens (creating) the store under `root` and clears leftovers of a process that died.
    /// The store is locked (`flock` on `<root>/lock`) until the `ImageStore` drops: a second
    /// opener, in this process or another, gets [`ImageError::StoreLocked`] instead of
    /// clearing the first one's work in progress.
    pub fn open(root: impl AsRef<Path>) -> Result<ImageStore> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root).map_err(|e| ImageError::io("create directory", &root, e))?;
        let lock_path = root.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| ImageError::io("open", &lock_path, e))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(ImageError::StoreLocked(root)),
            Err(e) => return Err(ImageError::io("lock", &lock_path, e.into())),
        }
        let blobs = BlobStore::open(&root)?;
        let snapshots = Snapshots::open(&root.join("snapshots"))?;
        blobs.clear_ingest()?;
        snapshots.clear_tmp()?;
        let path = root.join("images.json");
        let records = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| ImageError::malformed(path.display().to_string(), e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Records::default(),
            Err(e) => return Err(ImageError::io("read", &path, e)),
        };
        Ok(ImageStore {
            root,
            blobs,
            snapshots,
            records: Mutex::new(records),
            pins: Arc::default(),
            _lock: lock,
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blobs.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The snapshots.
    pub fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }

    /// Protects `digests` from garbage collection until the returned guard drops.
    pub fn pin(&self, digests: impl IntoIterator<Item = Digest>) -> Pin {
        let digests: Vec<Digest> = digests.into_iter().collect();
        let mut pins = self.pins.lock().expect("pins lock");
        for d in &digests {
            *pins.entry(d.clone()).or_default() += 1;
        }
        Pin {
            digests,
            pins: self.pins.clone(),
        }
    }

    fn save(&self, records: &Records) -> Result<()> {
        let path = self.root.join("images.json");
        let tmp = self.root.join(".images.json.tmp");
        let bytes = serde_json::to_vec_pretty(records).expect("records serialize");
        fs::write(&tmp, bytes).map_err(|e| ImageError::io("write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| ImageError::io("rename into", &path, e))
    }

    /// Reads and verifies manifest `digest` and its config from the blob store.
    pub fn load_manifest(&self, digest: &Digest) -> Result<(Manifest, ImageConfig)> {
        let what = format!("manifest {digest}");
        let bytes = self.blobs.read_verified(digest)?;
        let manifest = match Document::parse(&bytes, None, &what)? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Err(ImageError::malformed(
                    what,
                    "expected an image manifest, found an index",
                ))
            }
        };
        let cbytes = self.blobs.read_verified(&manifest.config.digest)?;
        if cbytes.len() as u64 != manifest.config.size {
            return Err(ImageError::SizeMismatch {
                digest: manifest.config.digest.clone(),
                expected: manifest.config.size,
                actual: cbytes.len() as u64,
            });
        }
        let config: ImageConfig = serde_json::from_slice(&cbytes).map_err(|e| {
            ImageError::malformed(format!("image config {}", manifest.config.digest), e)
        })?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::malformed(
                what,
                format!(
                    "{} layers but the config lists {} diff ids",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        Ok((manifest, config))
    }

    /// Makes the image whose manifest blob is `digest` an image of the store: checks every
    /// blob, unpacks the layers into snapshots (in parallel), then records it under `tags`.
    /// `on_unpacked` is called once per layer (with its compressed digest).
    pub fn commit_image(
        &self,
        digest: &Digest,
        tags: &[Reference],
        repo_digest: Option<String>,
        on_unpacked: &(dyn Fn(&Digest) + Sync),
    ) -> Result<Image> {
        let (manifest, config) = self.load_manifest(digest)?;
        let diff_ids = config.rootfs.diff_ids.clone();
        let _pin = self.pin(
            [digest.clone(), manifest.config.digest.clone()]
                .into_iter()
                .chain(manifest.layers.iter().map(|l| l.digest.clone()))
                .chain(diff_ids.iter().cloned()),
        );
        for l in &manifest.layers {
            match self.blobs.size(&l.digest) {
                None if !self.snapshots.contains(
                    &diff_ids[manifest.layers.iter().position(|x| x == l).unwrap_or(0)],
                ) =>
                {
                    return Err(ImageError::BlobNotFound(l.digest.clone()))
                }
                Some(s) if s != l.size => {
                    return Err(ImageError::SizeMismatch {
                        digest: l.digest.clone(),
                        expected: l.size,
                        actual: s,
                    })
                }
                _ => {}
            }
        }
        self.unpack_layers(&manifest.layers, &diff_ids, on_unpacked)?;
        let size = self.blobs.size(digest).unwrap_or(0)
            + manifest.config.size
            + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        let record = ImageRecord {
            digest: digest.clone(),
            media_type: manifest
                .media_type
                .clone()
                .unwrap_or_else(|| media::OCI_MANIFEST.to_string()),
            config: manifest.config.digest.clone(),
            layers: manifest.layers.clone(),
            diff_ids: diff_ids.clone(),
            platform: config.platform(),
            size,
            added: now(),
            repo_digests: repo_digest.into_iter().collect(),
            removed: false,
        };
        {
            let mut r = self.records.lock().expect("records lock");
            let rec = r
                .images
                .entry(digest.clone())
                .or_insert_with(|| record.clone());
            rec.repo_digests.extend(record.repo_digests.iter().cloned());
            rec.removed = false;
            for t in tags {
                r.tags.insert(t.to_string(), digest.clone());
            }
            self.save(&r)?;
        }
        tracing::debug!(image = %digest, id = %manifest.config.digest, "image committed");
        self.inspect(&digest.to_string())
    }

    fn unpack_layers(
        &self,
        layers: &[Descriptor],
        diff_ids: &[Digest],
        on_unpacked: &(dyn Fn(&Digest) + Sync),
    ) -> Result<()> {
        let next = AtomicUsize::new(0);
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(layers.len().max(1));
        let results: Mutex<Vec<Result<()>>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= layers.len() {
                        break;
                    }
                    let (layer, diff_id) = (&layers[i], &diff_ids[i]);
                    let r = self.ensure_snapshot(layer, diff_id);
                    if r.is_ok() {
                        on_unpacked(&layer.digest);
                    }
                    let failed = r.is_err();
                    results.lock().expect("results lock").push(r);
                    if failed {
                        // Stop handing out work; the others finish their current layer.
                        next.store(layers.len(), Ordering::Relaxed);
                    }
                });
            }
        });
        results
            .into_inner()
            .expect("results lock")
            .into_iter()
            .collect()
    }

    /// Unpacks `layer` into its snapshot unless present, recording its unpacked size.
    pub fn ensure_snapshot(&self, layer: &Descriptor, diff_id: &Digest) -> Result<()> {
        let stats =
            self.snapshots
                .ensure(&self.blobs.path(&layer.digest), &layer.digest, diff_id)?;
        self.record_snapshot(diff_id, stats);
        Ok(())
    }

    /// Stores the layer `input` carries as its blob and unpacks it into its snapshot in
    /// the same pass (a pull does not read the layer twice). The blob gets its name only
    /// after its digest and size matched `layer`; the snapshot only after both digests did.
    pub fn ingest_and_unpack(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
        input: impl Read,
    ) -> Result<()> {
        let tee = Tee {
            input,
            copy: self.blobs.ingest()?,
        };
        // The blob writer hashes the compressed stream (once); the snapshot is renamed
        // into place only after the blob's digest and size checked out.
        let (stats, _) = self
            .snapshots
            .ensure_from(tee, &layer.digest, diff_id, |mut tee| {
                io::copy(&mut tee, &mut io::sink()).map_err(|e| {
                    ImageError::io("read layer for", self.snapshots.path(diff_id), e)
                })?;
                tee.copy.commit(Some(&layer.digest), Some(layer.size))
            })?;
        self.record_snapshot(diff_id, stats);
        Ok(())
    }

    fn record_snapshot(&self, diff_id: &Digest, stats: Option<crate::unpack::UnpackStats>) {
        if let Some(st) = stats {
            let mut r = self.records.lock().expect("records lock");
            r.snapshot_sizes
                .insert(diff_id.clone(), st.uncompressed_size);
        }
    }

    /// Finds the image `s` names: a reference (tag or `name@digest`), an image id or
    /// manifest digest (`sha256:…` or bare hex), or a unique id prefix.
    pub fn resolve(&self, s: &str) -> Result<ImageRecord> {
        let r = self.records.lock().expect("records lock");
        resolve_in(&r, s).cloned()
    }

    /// The image `s` names, with config and manifest.
    pub fn inspect(&self, s: &str) -> Result<Image> {
        let (rec, tags, unpacked) = {
            let r = self.records.lock().expect("records lock");
            let rec = resolve_in(&r, s)?.clone();
            let tags: Vec<Reference> = r
                .tags
                .iter()
                .filter(|(_, d)| **d == rec.digest)
                .filter_map(|(t, _)| Reference::parse(t).ok())
                .collect();
            let unpacked = rec
                .diff_ids
                .iter()
                .map(|d| r.snapshot_sizes.get(d).copied().unwrap_or(0))
                .sum();
            (rec, tags, unpacked)
        };
        let (manifest, config) = self.load_manifest(&rec.digest)?;
        Ok(Image {
            id: rec.config.clone(),
            digest: rec.digest.clone(),
            repo_tags: tags,
            repo_digests: rec.repo_digests.iter().cloned().collect(),
            config,
            manifest,
            size: rec.size,
            unpacked_size: unpacked,
            layers: rec
                .diff_ids
                .iter()
                .map(|d| self.snapshots.path(d))
                .collect(),
            added: rec.added,
        })
    }

    /// Every image (force-removed ones still in use excluded), newest first.
    pub fn list(&self) -> Result<Vec<Image>> {
        let digests: Vec<Digest> = {
            let r = self.records.lock().expect("records lock");
            r.images
                .values()
                .filter(|i| !i.removed)
                .map(|i| i.digest.clone())
                .collect()
        };
        let mut out = digests
            .iter()
            .map(|d| self.inspect(&d.to_string()))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| b.added.cmp(&a.added).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Points tag `target` at the image `source` names.
    pub fn tag(&self, source: &str, target: &str) -> Result<()> {
        let target = Reference::parse(target)?;
        if target.digest().is_some() || target.tag().is_none() {
            return Err(ImageError::InvalidReference {
                reference: target.to_string(),
                reason: "a tag target needs a tag and no digest".into(),
            });
        }
        let mut r = self.records.lock().expect("records lock");
        let digest = resolve_in(&r, source)?.digest.clone();
        r.tags.insert(target.to_string(), digest);
        self.save(&r)
    }

    /// Removes what `s` names. A tag is removed; the image goes with its last tag. An id or
    /// digest removes the image and all its tags. An image a lease holds is refused unless
    /// `force`; forced, it loses its tags at once and its content when the last lease goes.
    /// Unreferenced blobs and snapshots are collected afterwards.
    pub fn remove(&self, s: &str, force: bool) -> Result<Removed> {
        let mut out = Removed::default();
        {
            let mut r = self.records.lock().expect("records lock");
            let rec = resolve_in(&r, s)?.clone();
            let by_tag = Reference::parse(s).ok().filter(|t| {
                t.digest().is_none() && r.tags.get(&t.to_string()) == Some(&rec.digest)
            });
            let tags_of = |r: &Records| -> Vec<String> {
                r.tags
                    .iter()
                    .filter(|(_, d)| **d == rec.digest)
                    .map(|(t, _)| t.clone())
                    .collect()
            };
            let all_tags = tags_of(&r);
            let remove_tags: Vec<String> = match &by_tag {
                Some(t) => vec![t.to_string()],
                None => all_tags.clone(),
            };
            let delete_image = remove_tags.len() == all_tags.len();
            let holders: Vec<String> = r
                .leases
                .iter()
                .filter(|(_, d)| **d == rec.digest)
                .map(|(h, _)| h.clone())
                .collect();
            if delete_image && !holders.is_empty() && !force {
                return Err(ImageError::ImageInUse {
                    image: s.to_string(),
                    containers: holders,
                });
            }
            for t in &remove_tags {
                r.tags.remove(t);
            }
            out.untagged = remove_tags;
            if delete_image {
                if holders.is_empty() {
                    r.images.remove(&rec.digest);
                    out.deleted = Some(rec.digest.clone());
                } else if let Some(i) = r.images.get_mut(&rec.digest) {
                    i.removed = true;
                }
            }
            self.save(&r)?;
        }
        if out.deleted.is_some() {
            self.gc()?;
        }
        Ok(out)
    }

    /// Records that `holder` (a container) uses the image `image` names.
    pub fn lease(&self, holder: &str, image: &str) -> Result<Image> {
        let digest = {
            let mut r = self.records.lock().expect("records lock");
            let d = resolve_in(&r, image)?.digest.clone();
            r.leases.insert(holder.to_string(), d.clone());
            self.save(&r)?;
            d
        };
        self.inspect(&digest.to_string())
    }

    /// Drops `holder`'s lease; an image force-removed while in use goes with its last lease.
    pub fn release(&self, holder: &str) -> Result<()> {
        let collect = {
            let mut r = self.records.lock().expect("records lock");
            let Some(d) = r.leases.remove(holder) else {
                return Ok(());
            };
            let still_held = r.leases.values().any(|x| *x == d);
            let gone = !still_held && r.images.get(&d).is_some_and(|i| i.removed);
            if gone {
                r.images.remove(&d);
            }
            self.save(&r)?;
            gone
        };
        if collect {
            self.gc()?;
        }
        Ok(())
    }

    /// Deletes blobs and snapshots no image references (and nothing pinned).
    pub fn gc(&self) -> Result<GcStats> {
        let (keep_blobs, keep_snaps) = self.referenced();
        let pins: BTreeSet<Digest> = self
            .pins
            .lock()
            .expect("pins lock")
            .keys()
            .cloned()
            .collect();
        let mut stats = GcStats::default();
        for (d, size) in self.blobs.list()? {
            if !keep_blobs.contains(&d) && !pins.contains(&d) && self.blobs.remove(&d)? {
                stats.blobs += 1;
                stats.blob_bytes += size;
            }
        }
        let mut removed = Vec::new();
        for d in self.snapshots.list()? {
            if !keep_snaps.contains(&d) && !pins.contains(&d) {
                self.snapshots.remove(&d)?;
                removed.push(d);
                stats.snapshots += 1;
            }
        }
        if !removed.is_empty() {
            let mut r = self.records.lock().expect("records lock");
            for d in &removed {
                r.snapshot_sizes.remove(d);
            }
            self.save(&r)?;
        }
        tracing::debug!(?stats, "image store garbage collected");
        Ok(stats)
    }

    fn referenced(&self) -> (BTreeSet<Digest>, BTreeSet<Digest>) {
        let r = self.records.lock().expect("records lock");
        let mut blobs = BTreeSet::new();
        let mut snaps = BTreeSet::new();
        for i in r.images.values() {
            blobs.insert(i.digest.clone());
            blobs.insert(i.config.clone());
            blobs.extend(i.layers.iter().map(|l| l.digest.clone()));
            snaps.extend(i.diff_ids.iter().cloned());
        }
        (blobs, snaps)
    }

    /// How much the store holds.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let (keep_blobs, _) = self.referenced();
        let blobs = self.blobs.list()?;
        let snaps = self.snapshots.list()?;
        let mut snapshot_bytes = 0;
        for d in &snaps {
            snapshot_bytes += allocated_bytes(&self.snapshots.path(d));
        }
        Ok(DiskUsage {
            images: self.records.lock().expect("records lock").images.len(),
            blobs: blobs.len(),
            blob_bytes: blobs.iter().map(|(_, s)| s).sum(),
            snapshots: snaps.len(),
            snapshot_bytes,
            reclaimable_bytes: blobs
                .iter()
                .filter(|(d, _)| !keep_blobs.contains(d))
                .map(|(_, s)| s)
                .sum(),
        })
    }

    /// Applies the image's layers one after another into `target` (an empty directory):
    /// a flat root filesystem, for exports and hosts without overlayfs.
    pub fn unpack_flat(&self, image: &str, target: &Path) -> Result<()> {
        let rec = self.resolve(image)?;
        self.unpack_layers_flat(rec.layers.iter().zip(&rec.diff_ids), target)
    }

    /// Unpacks stored layers (with the diff ids they must have), in order, into one
    /// directory, checking both digests.
    pub fn unpack_layers_flat<'a>(
        &self,
        layers: impl IntoIterator<Item = (&'a Descriptor, &'a Digest)>,
        target: &Path,
    ) -> Result<()> {
        for (layer, diff_id) in layers {
            let mut blob = HashingReader::new(self.blobs.open_blob(&layer.digest)?);
            let mut opts = crate::unpack::UnpackOptions::flat();
            opts.expect_diff_id = Some(diff_id.clone());
            crate::unpack::unpack(&mut blob, target, &layer.digest.to_string(), &opts)?;
            blob.check_layer(&layer.digest, &self.blobs.path(&layer.digest))?;
        }
        Ok(())
    }

    /// Tags pointing at the manifest `digest`.
    pub fn tags_of(&self, digest: &Digest) -> Vec<Reference> {
        let r = self.records.lock().expect("records lock");
        r.tags
            .iter()
            .filter(|(_, d)| *d == digest)
            .filter_map(|(t, _)| Reference::parse(t).ok())
            .collect()
    }
}

/// A reader that writes what it reads into `copy`.
struct Tee<R, W> {
    input: R,
    copy: W,
}

impl<R: Read, W: io::Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

fn allocated_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = fs::symlink_metadata(p) else {
        return 0;
    };
    let mut n = md.blocks() * 512;
    if md.is_dir() {
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                n += allocated_bytes(&e.path());
            }
        }
    }
    n
}

fn resolve_in<'a>(r: &'a Records, s: &str) -> Result<&'a ImageRecord> {
    let not_found = || ImageError::ImageNotFound(s.to_string());
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    let is_hex = !hex.is_empty()
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if is_hex && hex.len() == 64 {
        let d: Digest = format!("sha256:{hex}").parse()?;
        return r
            .images
            .get(&d)
            .or_else(|| r.images.values().find(|i| i.config == d))
            .ok_or_else(not_found);
    }
    if let Ok(reference) = Reference::parse(s) {
        if let Some(d) = reference.digest() {
            return r.images.get(d).ok_or_else(not_found);
        }
        if let Some(d) = r.tags.get(&reference.to_string()) {
            return r.images.get(d).ok_or_else(not_found);
        }
    }
    if is_hex {
        let mut found = r
            .images
            .values()
            .filter(|i| i.config.hex().starts_with(hex));
        let first = found.next().ok_or_else(not_found)?;
        if found.any(|i| i.config != first.config) {
            return Err(ImageError::AmbiguousImage(s.to_string()));
        }
        return Ok(first);
    }
    Err(not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_opener_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = ImageStore::open(dir.path()).unwrap();
        // The second opener is refused before it touches the first one's ingest files.
        fs::write(dir.path().join("ingest/in-flight"), b"x").unwrap();
        assert!(matches!(
            ImageStore::open(dir.path()),
            Err(ImageError::StoreLocked(_))
        ));
        assert!(dir.path().join("ingest/in-flight").exists());
        drop(first);
        ImageStore::open(dir.path()).unwrap();
        assert!(!dir.path().join("ingest/in-flight").exists());
    }
}

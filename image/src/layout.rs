//! Moving images in and out of the store as files: OCI image layouts (directory or tar)
//! and docker-archive tarballs (`docker save` / `docker load`).
//!
//! Imports copy every blob through the blob store's verification and commit each image
//! with [`ImageStore::commit_image`], so a bad archive leaves no image behind. Tarballs are
//! first extracted with the confined unpacker into a private temporary directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::reference::Reference;
use crate::spec::{self, media, Descriptor, Document, Index, Manifest, Platform};
use crate::store::{Image, ImageStore};
use crate::unpack::{self, Compression, UnpackOptions};

/// Annotation naming an index entry (a tag, or a full reference).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation holding the full image name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_VERSION: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A temporary directory in the store, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(store: &ImageStore) -> Result<TempDir> {
        let p = store.root().join("tmp").join(format!(
            "{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).map_err(|e| ImageError::io("create directory", &p, e))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Imports whatever `path` is: an OCI layout directory, or a tarball holding an OCI layout
/// or a docker archive (a `manifest.json` wins when both are present, as Docker writes both).
pub fn import(store: &ImageStore, path: &Path) -> Result<Vec<Image>> {
    let md = fs::metadata(path).map_err(|e| ImageError::io("stat", path, e))?;
    if md.is_dir() {
        if path.join("manifest.json").is_file() {
            return import_docker_dir(store, path);
        }
        return import_layout_dir(store, path);
    }
    let tmp = TempDir::new(store)?;
    let f = fs::File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut opts = UnpackOptions::flat();
    opts.same_owner = false;
    unpack::unpack(f, &tmp.0, &path.display().to_string(), &opts)?;
    if tmp.0.join("manifest.json").is_file() {
        import_docker_dir(store, &tmp.0)
    } else {
        import_layout_dir(store, &tmp.0)
    }
}

/// Opens `rel` inside `dir` with the unpacker's confinement: symlinks in an imported
/// archive resolve inside it, so an import never reads host files through them.
fn open_in(dir: &Path, rel: &Path) -> Result<fs::File> {
    unpack::rootfd::Root::open(dir)
        .and_then(|root| root.open_file(rel))
        .map_err(|e| ImageError::io("open", dir.join(rel), e))
}

fn read_in(dir: &Path, rel: &Path) -> Result<Vec<u8>> {
    let mut b = Vec::new();
    open_in(dir, rel)?
        .read_to_end(&mut b)
        .map_err(|e| ImageError::io("read", dir.join(rel), e))?;
    Ok(b)
}

fn layout_blob(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join(d.algorithm()).join(d.hex())
}

fn copy_blob_in(store: &ImageStore, dir: &Path, desc: &Descriptor) -> Result<()> {
    if store.blobs().size(&desc.digest) == Some(desc.size) {
        return Ok(());
    }
    let rel = Path::new("blobs")
        .join(desc.digest.algorithm())
        .join(desc.digest.hex());
    let mut f = open_in(dir, &rel)?;
    store
        .blobs()
        .put_reader(&mut f, Some(&desc.digest), Some(desc.size))?;
    Ok(())
}

fn read_doc(store: &ImageStore, dir: &Path, desc: &Descriptor) -> Result<Document> {
    copy_blob_in(store, dir, desc)?;
    let bytes = store.blobs().read_verified(&desc.digest)?;
    Document::parse(
        &bytes,
        Some(&desc.media_type),
        &format!("{} {}", desc.media_type, desc.digest),
    )
}

/// The name an index entry's annotations give: a full reference, or a tag.
fn entry_name(desc: &Descriptor) -> Option<Reference> {
    if let Some(full) = desc.annotations.get(ANNOTATION_IMAGE_NAME) {
        if let Ok(r) = Reference::parse(full) {
            return Some(r);
        }
    }
    let name = desc.annotations.get(ANNOTATION_REF_NAME)?;
    // A bare tag ("latest") names no repository; only full references become tags.
    (name.contains('/') || name.contains(':'))
        .then(|| Reference::parse(name).ok())
        .flatten()
}

/// Imports every image of an OCI layout directory (index entries that are indexes are
/// resolved to the host platform).
pub fn import_layout_dir(store: &ImageStore, dir: &Path) -> Result<Vec<Image>> {
    let layout_path = dir.join(LAYOUT_FILE);
    let layout = read_in(dir, Path::new(LAYOUT_FILE))?;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Layout {
        image_layout_version: String,
    }
    let l: Layout = serde_json::from_slice(&layout)
        .map_err(|e| ImageError::malformed(layout_path.display().to_string(), e))?;
    if l.image_layout_version != "1.0.0" {
        return Err(ImageError::malformed(
            layout_path.display().to_string(),
            format!("unsupported imageLayoutVersion {}", l.image_layout_version),
        ));
    }
    let index_path = dir.join("index.json");
    let bytes = read_in(dir, Path::new("index.json"))?;
    let index: Index = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::malformed(index_path.display().to_string(), e))?;
    let mut out = Vec::new();
    let host = Platform::host();
    for entry in &index.manifests {
        let name = entry_name(entry);
        let mut desc = entry.clone();
        let mut doc = read_doc(store, dir, &desc)?;
        while let Document::Index(inner) = doc {
            desc = spec::select_platform(&inner, &host)
                .ok_or_else(|| ImageError::NoMatchingPlatform {
                    reference: format!("{} in {}", entry.digest, dir.display()),
                    platform: host.to_string(),
                })?
                .clone();
            doc = read_doc(store, dir, &desc)?;
        }
        let Document::Manifest(m) = doc else {
            unreachable!("loop exits on a manifest")
        };
        copy_blob_in(store, dir, &m.config)?;
        for l in &m.layers {
            copy_blob_in(store, dir, l)?;
        }
        let tags: Vec<Reference> = name.into_iter().collect();
        out.push(store.commit_image(&desc.digest, &tags, None, &|_| {})?);
    }
    Ok(out)
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Only relative paths without `..` may name files of an extracted archive.
fn archive_path(rel: &str) -> Result<&Path> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(ImageError::malformed(
            "docker archive manifest.json",
            format!("path {rel:?} leaves the archive"),
        ));
    }
    Ok(p)
}

/// Imports a docker-archive already extracted into `dir`.
pub fn import_docker_dir(store: &ImageStore, dir: &Path) -> Result<Vec<Image>> {
    let bytes = read_in(dir, Path::new("manifest.json"))?;
    let entries: Vec<DockerArchiveEntry> = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::malformed("docker archive manifest.json", e))?;
    let mut out = Vec::new();
    for e in entries {
        let config_bytes = read_in(dir, archive_path(&e.config)?)?;
        let config_digest = store.blobs().put(&config_bytes)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let rel = archive_path(l)?;
            let lpath = dir.join(rel);
            let mut f = open_in(dir, rel)?;
            let mut head = [0u8; 4];
            let n = f
                .read(&mut head)
                .map_err(|err| ImageError::io("read", &lpath, err))?;
            let media_type = match Compression::detect(&head[..n]) {
                Compression::Gzip => media::DOCKER_LAYER_GZIP,
                Compression::Zstd => media::OCI_LAYER_ZSTD,
                Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            };
            f.seek(std::io::SeekFrom::Start(0))
                .map_err(|err| ImageError::io("seek", &lpath, err))?;
            let c = store.blobs().put_reader(&mut f, None, None)?;
            layers.push(Descriptor::new(media_type, c.digest, c.size));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::DOCKER_MANIFEST.to_string()),
            config: Descriptor::new(
                media::DOCKER_CONFIG,
                config_digest,
                config_bytes.len() as u64,
            ),
            layers,
            annotations: BTreeMap::new(),
        };
        let mbytes = serde_json::to_vec(&manifest).expect("manifest serializes");
        let mdigest = store.blobs().put(&mbytes)?;
        let tags = e
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| Reference::parse(t))
            .collect::<Result<Vec<_>>>()?;
        out.push(store.commit_image(&mdigest, &tags, None, &|_| {})?);
    }
    Ok(out)
}

fn copy_blob_out(store: &ImageStore, dir: &Path, d: &Digest) -> Result<()> {
    let dest = layout_blob(dir, d);
    if dest.exists() {
        return Ok(());
    }
    let src = store.blobs().path(d);
    if !src.exists() {
        return Err(ImageError::BlobNotFound(d.clone()));
    }
    fs::copy(&src, &dest).map_err(|e| ImageError::io("copy blob to", &dest, e))?;
    Ok(())
}

/// Writes the images `names` name into an OCI layout directory `dir` (created; existing
/// entries of its index.json are kept). Each entry carries its tag in
/// `org.opencontainers.image.ref.name` (what skopeo's `oci:DIR:TAG` looks up) and the full
/// name in `io.containerd.image.name`.
pub fn export_layout_dir(store: &ImageStore, names: &[&str], dir: &Path) -> Result<()> {
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(|e| ImageError::io("create directory", &blobs, e))?;
    let index_path = dir.join("index.json");
    let mut index: Index = match fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| ImageError::malformed(index_path.display().to_string(), e))?,
        Err(_) => Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        },
    };
    for name in names {
        let rec = store.resolve(name)?;
        for d in [&rec.digest, &rec.config]
            .into_iter()
            .chain(rec.layers.iter().map(|l| &l.digest))
        {
            copy_blob_out(store, dir, d)?;
        }
        let mut desc = Descriptor::new(
            &rec.media_type,
            rec.digest.clone(),
            store.blobs().size(&rec.digest).unwrap_or(0),
        );
        desc.platform = Some(rec.platform.clone());
        let named = Reference::parse(name).ok().filter(|r| r.tag().is_some());
        if let Some(r) = named {
            desc.annotations.insert(
                ANNOTATION_REF_NAME.into(),
                r.tag().unwrap_or("latest").to_string(),
            );
            desc.annotations
                .insert(ANNOTATION_IMAGE_NAME.into(), r.to_string());
            // One entry per name: a re-export replaces the old one.
            index.manifests.retain(|m| {
                m.annotations.get(ANNOTATION_REF_NAME) != desc.annotations.get(ANNOTATION_REF_NAME)
            });
        }
        index.manifests.push(desc);
    }
    let lp = dir.join(LAYOUT_FILE);
    fs::write(&lp, LAYOUT_VERSION).map_err(|e| ImageError::io("write", &lp, e))?;
    let bytes = serde_json::to_vec_pretty(&index).expect("index serializes");
    fs::write(&index_path, bytes).map_err(|e| ImageError::io("write", &index_path, e))
}

fn tar_dir(dir: &Path, dest: &Path) -> Result<()> {
    let tmp = dest.with_extension("partial");
    let f = fs::File::create(&tmp).map_err(|e| ImageError::io("create", &tmp, e))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    b.mode(tar::HeaderMode::Deterministic);
    b.follow_symlinks(false);
    let r = b
        .append_dir_all(".", dir)
        .and_then(|_| b.into_inner())
        .and_then(|mut w| w.flush());
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(ImageError::io("write archive", dest, e));
    }
    fs::rename(&tmp, dest).map_err(|e| ImageError::io("rename into", dest, e))
}

/// Writes the images as an OCI layout tarball (`oci-archive`).
pub fn export_layout_tar(store: &ImageStore, names: &[&str], dest: &Path) -> Result<()> {
    let tmp = TempDir::new(store)?;
    export_layout_dir(store, names, &tmp.0)?;
    tar_dir(&tmp.0, dest)
}

/// Writes the images as a docker-archive tarball (what `docker load` reads): Docker 25's
/// layout, blobs under `blobs/sha256/`, plus `manifest.json` and `repositories`.
pub fn export_docker_archive(store: &ImageStore, names: &[&str], dest: &Path) -> Result<()> {
    let tmp = TempDir::new(store)?;
    let blobs = tmp.0.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(|e| ImageError::io("create directory", &blobs, e))?;
    let mut entries = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for name in names {
        let rec = store.resolve(name)?;
        copy_blob_out(store, &tmp.0, &rec.config)?;
        let mut layers = Vec::new();
        for l in &rec.layers {
            copy_blob_out(store, &tmp.0, &l.digest)?;
            layers.push(format!("blobs/sha256/{}", l.digest.hex()));
        }
        let tags: Vec<Reference> = match Reference::parse(name) {
            Ok(r) if r.tag().is_some() && r.digest().is_none() => vec![r],
            _ => store.tags_of(&rec.digest),
        };
        for t in &tags {
            let fam = t.familiar();
            let repo = fam
                .rsplit_once(':')
                .map_or(fam.clone(), |(r, _)| r.to_string());
            repositories.entry(repo).or_default().insert(
                t.tag().unwrap_or("latest").to_string(),
                rec.config.hex().to_string(),
            );
        }
        entries.push(DockerArchiveEntry {
            config: format!("blobs/sha256/{}", rec.config.hex()),
            repo_tags: Some(tags.iter().map(Reference::familiar).collect()),
            layers,
        });
    }
    let write = |name: &str, bytes: Vec<u8>| {
        let p = tmp.0.join(name);
        fs::write(&p, bytes).map_err(|e| ImageError::io("write", &p, e))
    };
    write(
        "manifest.json",
        serde_json::to_vec(&entries).expect("manifest serializes"),
    )?;
    write(
        "repositories",
        serde_json::to_vec(&repositories).expect("repositories serialize"),
    )?;
    tar_dir(&tmp.0, dest)
}

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

use std::path::Path;
use std::process::Command;

use wharf_image::spec::{media, Descriptor, Index, Manifest};
use wharf_image::Digest;

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The image config JSON for `layers` (uncompressed tars), with a Cmd and some defaults.
pub fn config_json(diff_ids: &[Digest], arch: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "created": "2026-11-26T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "GREETING=hello"],
            "Cmd": ["/bin/sh"],
            "Entrypoint": ["/bin/busybox"],
            "WorkingDir": "/work",
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}},
            "Volumes": {"/data": {}},
            "Labels": {"org.example.test": "yes"},
            "StopSignal": "SIGQUIT"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": diff_ids.iter().map(|_| serde_json::json!({"created_by": "test"})).collect::<Vec<_>>()
    }))
    .unwrap()
}

/// A layer blob and its descriptor pieces: (compressed bytes, media type, diff id).
pub struct Blob {
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: Digest,
}

impl Blob {
    pub fn gzip(layer: &mut Layer) -> Blob {
        let tar = layer.tar();
        let diff_id = Digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        Blob {
            bytes: gz.finish().unwrap(),
            media_type: media::OCI_LAYER_GZIP,
            diff_id,
        }
    }
    pub fn zstd(layer: &mut Layer) -> Blob {
        let tar = layer.tar();
        Blob {
            diff_id: Digest::of(&tar),
            bytes: zstd::stream::encode_all(&tar[..], 1).unwrap(),
            media_type: media::OCI_LAYER_ZSTD,
        }
    }
    pub fn plain(layer: &mut Layer) -> Blob {
        let tar = layer.tar();
        Blob {
            diff_id: Digest::of(&tar),
            bytes: tar,
            media_type: media::OCI_LAYER,
        }
    }
}

fn put_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    let p = dir.join("blobs/sha256").join(d.hex());
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
    d
}

/// Writes one image (manifest + config + layers) into an OCI layout; returns the manifest descriptor.
pub fn write_image(dir: &Path, layers: &[Blob], arch: &str) -> Descriptor {
    let config = config_json(
        &layers.iter().map(|b| b.diff_id.clone()).collect::<Vec<_>>(),
        arch,
    );
    let cd = put_blob(dir, &config);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        config: Descriptor::new(media::OCI_CONFIG, cd, config.len() as u64),
        layers: layers
            .iter()
            .map(|b| Descriptor::new(b.media_type, put_blob(dir, &b.bytes), b.bytes.len() as u64))
            .collect(),
        annotations: Default::default(),
    };
    let mb = serde_json::to_vec(&manifest).unwrap();
    let mut desc = Descriptor::new(media::OCI_MANIFEST, put_blob(dir, &mb), mb.len() as u64);
    desc.platform = Some(wharf_image::spec::Platform {
        architecture: arch.into(),
        os: "linux".into(),
        variant: None,
    });
    desc
}

/// Writes an OCI layout whose index.json lists `entries` under the tag `tag` each.
pub fn write_layout(dir: &Path, entries: Vec<(Descriptor, &str)>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = Index {
        schema_version: 2,
        media_type: Some(media::OCI_INDEX.into()),
        manifests: entries
            .into_iter()
            .map(|(mut d, tag)| {
                d.annotations
                    .insert("org.opencontainers.image.ref.name".into(), tag.into());
                d
            })
            .collect(),
        annotations: Default::default(),
    };
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Puts an index (two platforms) into the layout's blobs and returns its descriptor.
pub fn write_index(dir: &Path, manifests: Vec<Descriptor>) -> Descriptor {
    let index = Index {
        schema_version: 2,
        media_type: Some(media::OCI_INDEX.into()),
        manifests,
        annotations: Default::default(),
    };
    let b = serde_json::to_vec(&index).unwrap();
    Descriptor::new(media::OCI_INDEX, put_blob(dir, &b), b.len() as u64)
}

/// A three-layer test image: busybox + applet links; a layer that deletes and changes files;
/// a zstd layer with an opaque directory.
pub fn multi_layer_image() -> Vec<Blob> {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let mut l1 = Layer::new();
    l1.dir("bin")
        .file_with("bin/busybox", &busybox, 0o755, 0, 0);
    for applet in ["sh", "ls", "cat", "true", "echo"] {
        l1.hardlink(&format!("bin/{applet}"), "bin/busybox");
    }
    l1.dir("etc")
        .file("etc/hostname", b"base\n")
        .file("etc/gone", b"x")
        .dir("opt")
        .file("opt/old", b"old");
    let mut l2 = Layer::new();
    l2.dir("etc")
        .file(".wh.etc_none", b"")
        .file("etc/.wh.gone", b"")
        .file("etc/hostname", b"changed\n")
        .file_with("etc/secret", b"s", 0o4750, 1234, 5678)
        .symlink("etc/link", "/etc/hostname")
        .fifo("etc/fifo");
    let mut l3 = Layer::new();
    l3.dir("opt")
        .file("opt/.wh..wh..opq", b"")
        .file("opt/new", b"new")
        .char_device("dev-null", 1, 3);
    vec![
        Blob::gzip(&mut l1),
        Blob::plain(&mut l2),
        Blob::zstd(&mut l3),
    ]
}

//! The OCI image-spec documents (and their Docker schema2 twins): descriptors, manifests,
//! indexes/manifest lists and image configs. Only the fields Wharf reads are typed; raw
//! bytes are always kept alongside, because digests cover the bytes, not the parse.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::ImageError;

/// Media types Wharf reads and writes.
pub mod media {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// OCI non-distributable gzip layer (deprecated, still read).
    pub const OCI_LAYER_NONDIST_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    /// Docker schema2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker foreign layer (never downloaded by Docker either).
    pub const DOCKER_LAYER_FOREIGN: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

    /// Whether `m` is a single-image manifest type.
    pub fn is_manifest(m: &str) -> bool {
        m == OCI_MANIFEST || m == DOCKER_MANIFEST
    }

    /// Whether `m` is an index / manifest list type.
    pub fn is_index(m: &str) -> bool {
        m == OCI_INDEX || m == DOCKER_MANIFEST_LIST
    }

    /// Whether `m` is a layer type Wharf can unpack.
    pub fn is_layer(m: &str) -> bool {
        matches!(
            m,
            OCI_LAYER
                | OCI_LAYER_GZIP
                | OCI_LAYER_ZSTD
                | OCI_LAYER_NONDIST_GZIP
                | DOCKER_LAYER_GZIP
                | DOCKER_LAYER_FOREIGN
                | "application/vnd.oci.image.layer.nondistributable.v1.tar"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
                | "application/vnd.docker.image.rootfs.diff.tar"
        )
    }
}

/// A content descriptor: what a manifest or index points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Platform (in indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Alternate download URLs (foreign layers); never followed by Wharf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

impl Descriptor {
    /// A descriptor without platform or annotations.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
            urls: Vec::new(),
        }
    }
}

/// An OS/architecture pair, as in index entries and image configs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// GOARCH-style architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// GOOS-style OS (`linux`).
    pub os: String,
    /// CPU variant (`v8`, `v7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on, in Go's names.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut it = s.split('/');
        let os = it.next().filter(|x| !x.is_empty())?;
        let arch = it.next().filter(|x| !x.is_empty())?;
        let variant = it.next().map(str::to_string);
        if it.next().is_some() {
            return None;
        }
        Some(Platform {
            architecture: arch.to_string(),
            os: os.to_string(),
            variant,
        })
    }

    /// Whether an index entry for `other` can run here. A missing variant on either side
    /// matches, as containerd's default matcher does (arm64 entries often omit `v8`).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (OCI or Docker schema2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type (absent in some OCI manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or Docker manifest list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests it lists.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The image config's `config` section: the container defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `USER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `EXPOSE`d ports (`80/tcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// `ENV` as `KEY=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME`s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    /// `WORKDIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `LABEL`s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// The image config's `rootfs` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The uncompressed digests of the layers, base first.
    pub diff_ids: Vec<Digest>,
}

/// One `history` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// When the step ran (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// A comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Whether the step made no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// An image config (OCI or Docker; the JSON is the same for the fields read here).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// When the image was made (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Container defaults.
    #[serde(default)]
    pub config: ContainerConfig,
    /// Layer diff ids.
    pub rootfs: RootFs,
    /// Build history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

impl ImageConfig {
    /// The platform the config declares.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// A parsed top-level document: what a manifest endpoint or an index.json entry returns.
#[derive(Clone, Debug)]
pub enum Document {
    /// A single-image manifest.
    Manifest(Manifest),
    /// An index / manifest list.
    Index(Index),
}

impl Document {
    /// Parses `bytes`, using `media_type` (from a descriptor or Content-Type) when known and
    /// the document's own `mediaType` or shape otherwise. `what` names it in errors.
    pub fn parse(
        bytes: &[u8],
        media_type: Option<&str>,
        what: &str,
    ) -> Result<Document, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            schema_version: Option<u32>,
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
            config: Option<serde_json::Value>,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| ImageError::malformed(what, e))?;
        if probe.schema_version != Some(2) {
            return Err(ImageError::UnsupportedMediaType {
                what: what.to_string(),
                media_type: format!(
                    "schemaVersion {:?} (only schema 2 / OCI is supported)",
                    probe.schema_version
                ),
            });
        }
        let declared = probe
            .media_type
            .as_deref()
            .or(media_type.filter(|m| !m.is_empty() && *m != "application/json"));
        let is_index = match declared {
            Some(m) if media::is_index(m) => true,
            Some(m) if media::is_manifest(m) => false,
            Some(m) => {
                return Err(ImageError::UnsupportedMediaType {
                    what: what.to_string(),
                    media_type: m.to_string(),
                })
            }
            None => probe.manifests.is_some() && probe.config.is_none(),
        };
        if is_index {
            let index: Index =
                serde_json::from_slice(bytes).map_err(|e| ImageError::malformed(what, e))?;
            Ok(Document::Index(index))
        } else {
            let m: Manifest =
                serde_json::from_slice(bytes).map_err(|e| ImageError::malformed(what, e))?;
            for l in &m.layers {
                if !media::is_layer(&l.media_type) {
                    return Err(ImageError::UnsupportedMediaType {
                        what: format!("layer {} of {what}", l.digest),
                        media_type: l.media_type.clone(),
                    });
                }
            }
            Ok(Document::Manifest(m))
        }
    }
}

/// Picks the index entry for `want` (first match, in index order, as Docker does).
pub fn select_platform<'a>(index: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    let candidates = || {
        index
            .manifests
            .iter()
            .filter(|d| media::is_manifest(&d.media_type) || media::is_index(&d.media_type))
    };
    // An exact variant match beats an entry that leaves the variant out.
    candidates()
        .find(|d| d.platform.as_ref().is_some_and(|p| p == want))
        .or_else(|| candidates().find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        let mut d = Descriptor::new(media::OCI_MANIFEST, Digest::of(&[n]), 1);
        d.platform = Some(Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.map(Into::into),
        });
        d
    }

    #[test]
    fn platform_selection() {
        let index = Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.into()),
            manifests: vec![
                desc("arm", Some("v6"), 0),
                desc("arm", Some("v7"), 1),
                desc("amd64", None, 2),
                desc("arm64", None, 3),
            ],
            annotations: BTreeMap::new(),
        };
        let pick = |p: &str| {
            select_platform(&index, &Platform::parse(p).unwrap()).map(|d| d.digest.clone())
        };
        assert_eq!(pick("linux/amd64"), Some(Digest::of(&[2])));
        assert_eq!(pick("linux/arm/v7"), Some(Digest::of(&[1])));
        assert_eq!(pick("linux/arm64/v8"), Some(Digest::of(&[3])));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(pick("windows/amd64"), None);
    }

    #[test]
    fn documents_by_media_type_and_shape() {
        let cfg = Digest::of(b"c");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{cfg}","size":1}},"layers":[]}}"#,
            media::DOCKER_MANIFEST,
            media::DOCKER_CONFIG
        );
        assert!(matches!(
            Document::parse(m.as_bytes(), None, "m").unwrap(),
            Document::Manifest(_)
        ));
        let i = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            Document::parse(i.as_bytes(), None, "i").unwrap(),
            Document::Index(_)
        ));
        let v1 = r#"{"schemaVersion":1,"name":"x"}"#;
        assert!(matches!(
            Document::parse(v1.as_bytes(), None, "v1"),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            Document::parse(b"{", None, "bad"),
            Err(ImageError::Malformed { .. })
        ));
        let weird = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{cfg}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+encrypted","digest":"{cfg}","size":1}}]}}"#
        );
        assert!(matches!(
            Document::parse(weird.as_bytes(), None, "enc"),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
    }
}

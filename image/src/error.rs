//! The one error type of `wharf-image`: every variant names the object it was acting on.

use std::path::PathBuf;

use crate::digest::Digest;

/// Everything that can go wrong in the image store, the unpacker, imports and pulls.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An image reference did not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The text as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest string did not parse or names an unsupported algorithm.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The text as given.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Content did not hash to the digest it was stored or fetched under.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was being verified (blob, layer diff, manifest of an image).
        what: String,
        /// The digest the content should have.
        expected: Digest,
        /// The digest the content has.
        actual: Digest,
    },
    /// Content had another length than its descriptor says (truncated or padded blob).
    #[error("size mismatch for blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size in the descriptor.
        expected: u64,
        /// The size received or found.
        actual: u64,
    },
    /// A blob the operation needs is not in the store.
    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),
    /// No image matches the reference or id.
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    /// An id prefix matches several images.
    #[error("image id prefix {0:?} is ambiguous")]
    AmbiguousImage(String),
    /// `remove` without `force` on an image a container still uses.
    #[error("image {image} is in use by container(s) {containers:?}")]
    ImageInUse {
        /// The image (reference or id).
        image: String,
        /// The users holding it.
        containers: Vec<String>,
    },
    /// A manifest, index, config or layout file is not what the specs describe.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The document (with its digest or path).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A media type this store does not handle (e.g. Docker schema1, encrypted layers).
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        /// The document or layer.
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// An index lists no manifest for the wanted platform.
    #[error("image {reference} has no manifest for platform {platform}")]
    NoMatchingPlatform {
        /// The image.
        reference: String,
        /// The wanted platform, `os/arch[/variant]`.
        platform: String,
    },
    /// A layer archive entry cannot be applied (bad type, hardlink to nothing, ...).
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    BadLayerEntry {
        /// The layer's digest.
        layer: String,
        /// The entry's path in the archive.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation (open, write, rename, mkdir, ...).
        op: &'static str,
        /// The path it acted on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The registry answered with an error or could not be reached.
    #[error("registry {registry}: {op}: {reason}")]
    Registry {
        /// The registry host.
        registry: String,
        /// What was being done (`GET /v2/.../manifests/...`, token fetch).
        op: String,
        /// Status and the registry's error message, or the transport error.
        reason: String,
    },
    /// The registry refused the credentials (or wants some and none were given).
    #[error("registry {registry}: unauthorized for {scope}: {reason}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The repository scope asked for.
        scope: String,
        /// The registry's message.
        reason: String,
    },
    /// A plain-HTTP registry not in the insecure list.
    #[error("registry {0} is not served over TLS; add it to the insecure registries to allow plain HTTP")]
    InsecureNotAllowed(String),
    /// A Dockerfile instruction failed or is not supported.
    #[error("{}:{line}: {reason}", file.display())]
    Dockerfile {
        /// The Dockerfile.
        file: PathBuf,
        /// The instruction's line (1-based).
        line: usize,
        /// What went wrong.
        reason: String,
    },
    /// Another `ImageStore` (in this process or another) has the store directory open.
    #[error("image store {} is in use by another process", .0.display())]
    StoreLocked(PathBuf),
    /// A Docker `config.json` could not be read.
    #[error("credentials file {path}: {reason}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

impl ImageError {
    /// Wraps an IO error with the operation and path.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        ImageError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

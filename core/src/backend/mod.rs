//! The plugin surfaces: what a node agent needs from a container runtime, an image service,
//! a network, a volume driver and a prober. Each is a trait with a real implementation in
//! its own crate (wharf-runtime-linux, wharf-image, wharf-network-cni, wharf-storage-csi)
//! and a simulated one in [`crate::sim`].
//!
//! All methods are async and cancel-safe in this sense: dropping a call's future abandons
//! the wait, not the operation; the operation may or may not have happened, and calling it
//! again (they are idempotent where their docs say so) converges.

pub mod image;
pub mod network;
pub mod probe;
pub mod runtime;
pub mod volume;

pub use image::ImageService;
pub use network::NetworkPlugin;
pub use probe::Prober;
pub use runtime::ContainerRuntime;
pub use volume::VolumePlugin;

/// The class of a backend failure: what the caller can do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object (container, sandbox, image, volume, attachment) does not exist.
    NotFound,
    /// An object with that identity exists already, with other parameters.
    AlreadyExists,
    /// The request is malformed or names something invalid: retrying will not help.
    InvalidArgument,
    /// The object is not in a state that allows the operation (e.g. start of a running
    /// container, remove of an image in use).
    FailedPrecondition,
    /// The backend cannot serve now (busy, restarting, an operation pending): retry later.
    Unavailable,
    /// The operation did not finish in time; it may still complete: retry.
    Timeout,
    /// The backend does not support this operation.
    Unsupported,
    /// Access was refused (registry credentials, permissions).
    PermissionDenied,
    /// Anything else; the message says what.
    Internal,
}

/// A failure of a backend call: its class, the object it concerns and a message a user can
/// act on.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {object}: {message}")]
pub struct BackendError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// The operation, e.g. `create container`, `pull image`, `attach network`.
    pub operation: String,
    /// The object, e.g. a container id, an image reference, a volume id.
    pub object: String,
    /// What went wrong.
    pub message: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    /// A new error.
    pub fn new(
        kind: ErrorKind,
        operation: impl Into<String>,
        object: impl Into<String>,
        message: impl Into<String>,
    ) -> BackendError {
        BackendError {
            kind,
            operation: operation.into(),
            object: object.into(),
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether calling again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable | ErrorKind::Timeout)
    }

    /// Whether the error says the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
}

/// Result of a backend call.
pub type BackendResult<T> = Result<T, BackendError>;

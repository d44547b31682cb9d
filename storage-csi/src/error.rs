//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

use wharf_core::backend::{BackendError, ErrorKind};

/// Everything that can go wrong in wharf-storage-csi.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A CSI endpoint is not `unix:///path` (or a plain absolute path).
    #[error("invalid CSI endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A filesystem or mount operation failed.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The hostpath driver's state file is unreadable.
    #[error("driver state {}: {message}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The gRPC server or channel failed.
    #[error("CSI transport at {endpoint}: {source}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A CSI call returned an error status.
    #[error("{method} {object}: {code:?}: {message}")]
    Rpc {
        /// The CSI method, e.g. `CreateVolume`.
        method: &'static str,
        /// The volume, snapshot or node the call concerned.
        object: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The driver's message.
        message: String,
    },
    /// A CSI call did not answer in time.
    #[error("{method} {object}: no answer within {after:?}")]
    Timeout {
        /// The CSI method.
        method: &'static str,
        /// The object.
        object: String,
        /// The time allowed.
        after: Duration,
    },
    /// The driver does not advertise the capability the call needs.
    #[error("{method}: driver {driver} does not advertise {capability}")]
    Unsupported {
        /// The CSI method.
        method: &'static str,
        /// The driver's name.
        driver: String,
        /// The capability it lacks.
        capability: &'static str,
    },
    /// An in-tree volume source is invalid or cannot be set up.
    #[error("volume {volume}: {field}: {message}")]
    InvalidVolume {
        /// The pod volume's name.
        volume: String,
        /// The field at fault, e.g. `hostPath.type`.
        field: String,
        /// What was expected.
        message: String,
    },
}

impl CsiError {
    /// An I/O error on a path.
    pub fn io(operation: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CsiError::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    /// The gRPC code of a failed call, if it was one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            CsiError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The backend error class for this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CsiError::InvalidEndpoint { .. } | CsiError::InvalidVolume { .. } => {
                ErrorKind::InvalidArgument
            }
            CsiError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                _ => ErrorKind::Internal,
            },
            CsiError::State { .. } => ErrorKind::Internal,
            CsiError::Transport { .. } => ErrorKind::Unavailable,
            CsiError::Timeout { .. } => ErrorKind::Timeout,
            CsiError::Unsupported { .. } => ErrorKind::Unsupported,
            CsiError::Rpc { code, .. } => kind_of_code(*code),
        }
    }

    /// This error as a [`BackendError`] for the `VolumePlugin` surface.
    pub fn into_backend(self, operation: &str, object: &str) -> BackendError {
        let kind = self.kind();
        let message = match &self {
            CsiError::Rpc { code, message, .. } => format!("{code:?}: {message}"),
            other => other.to_string(),
        };
        BackendError::new(kind, operation, object, message).with_source(self)
    }
}

/// Maps a gRPC status code from a CSI driver to the backend error class.
pub fn kind_of_code(code: tonic::Code) -> ErrorKind {
    use tonic::Code;
    match code {
        Code::NotFound => ErrorKind::NotFound,
        Code::AlreadyExists => ErrorKind::AlreadyExists,
        Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
        Code::FailedPrecondition | Code::ResourceExhausted => ErrorKind::FailedPrecondition,
        Code::Aborted | Code::Unavailable => ErrorKind::Unavailable,
        Code::DeadlineExceeded => ErrorKind::Timeout,
        Code::Unimplemented => ErrorKind::Unsupported,
        Code::PermissionDenied | Code::Unauthenticated => ErrorKind::PermissionDenied,
        _ => ErrorKind::Internal,
    }
}

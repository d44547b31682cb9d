//! The crate's one error type. Every variant names the object it was acting on
//! (container id, file, field) so a caller can act on the message directly.

use std::path::PathBuf;

/// Errors returned by the Linux runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bundle's `config.json` could not be read.
    #[error("reading OCI config {path}: {source}")]
    ConfigRead {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A bundle's `config.json` is not a valid OCI runtime config.
    #[error("invalid OCI config {path}: {message}")]
    ConfigParse {
        /// The config file.
        path: PathBuf,
        /// What the parser said, with line and column.
        message: String,
    },
    /// A field of the config holds a value the runtime cannot use.
    #[error("invalid OCI config {path}: field `{field}`: {message}")]
    ConfigField {
        /// The config file (or `<spec>` when the config came from memory).
        path: PathBuf,
        /// The JSON path of the field, for example `linux.namespaces[2].type`.
        field: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The container's root filesystem does not exist.
    #[error("container {id}: root filesystem {path} does not exist")]
    RootfsMissing {
        /// The container id.
        id: String,
        /// The resolved rootfs path.
        path: PathBuf,
    },
    /// A container id is empty or contains characters other than `[A-Za-z0-9_.+-]`.
    #[error("invalid container id {0:?}: expected 1-1024 characters of [A-Za-z0-9_.+-], not starting with '.'")]
    InvalidId(String),
    /// A container with this id already exists under the runtime root.
    #[error("container {0} already exists")]
    AlreadyExists(String),
    /// No container with this id exists under the runtime root.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// The operation is not allowed in the container's current state.
    #[error("container {id} is {status}: cannot {operation}")]
    InvalidState {
        /// The container id.
        id: String,
        /// Its current status.
        status: String,
        /// What was attempted.
        operation: &'static str,
    },
    /// The container's stdio does not pass through the monitor, so nobody can attach.
    #[error("container {id}: cannot attach: {reason}")]
    NotAttachable {
        /// The container id.
        id: String,
        /// Why.
        reason: String,
    },
    /// A user name could not be resolved inside the container's rootfs.
    #[error("container {id}: user {user:?} not found in {passwd}")]
    UnknownUser {
        /// The container id.
        id: String,
        /// The user name.
        user: String,
        /// The passwd file consulted.
        passwd: PathBuf,
    },
    /// The container process failed while being set up (before the user program ran).
    #[error("container {id}: setting up the container failed: {step}: {message}")]
    Init {
        /// The container id.
        id: String,
        /// The step that failed, for example `mount /proc`.
        step: String,
        /// The OS error or explanation.
        message: String,
    },
    /// A cgroup operation failed.
    #[error("container {id}: cgroup {path}: {operation}: {source}")]
    Cgroup {
        /// The container id.
        id: String,
        /// The cgroup file or directory.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A system call or file operation outside the container failed.
    #[error("container {id}: {operation}: {source}")]
    Os {
        /// The container id (or `-` when none applies).
        id: String,
        /// What was being done, with the object it was done to.
        operation: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A lifecycle hook failed.
    #[error("container {id}: {hook} hook {path} failed: {message}")]
    Hook {
        /// The container id.
        id: String,
        /// The hook kind, for example `poststart`.
        hook: &'static str,
        /// The hook program.
        path: PathBuf,
        /// Exit status or error.
        message: String,
    },
    /// The per-node monitor could not be started or reached, or answered with an error.
    #[error("monitor {socket}: {message}")]
    Monitor {
        /// The monitor's socket.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The monitor refused a request; `kind` is `not_found`, `already_exists`,
    /// `invalid_state`, `invalid_argument` or `other`.
    #[error("{message}")]
    Remote {
        /// The class of failure.
        kind: String,
        /// The monitor's message (the original error).
        message: String,
    },
    /// The running kernel or host lacks something this request needs.
    #[error("container {id}: unsupported: {message}")]
    Unsupported {
        /// The container id.
        id: String,
        /// What is missing.
        message: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Os`] for container `id` (use `-` when no container applies).
    pub fn os(id: &str, operation: impl Into<String>, source: std::io::Error) -> Self {
        Error::Os {
            id: id.to_string(),
            operation: operation.into(),
            source,
        }
    }
}

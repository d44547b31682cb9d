//! `ImageService`: getting images onto a node and telling the runtime how to run them.
//!
//! `pull` is idempotent (an image already present with the same digest costs only the
//! manifest check) and atomic (a failed pull leaves no partial image). Progress is reported
//! as [`PullEvent`]s on an optional channel, so a CLI can draw progress bars.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use tokio::sync::mpsc::UnboundedSender;

use super::runtime::RootFs;
use super::BackendResult;

/// The parts of an image's config that become container defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=value` pairs split.
    pub env: Vec<(String, String)>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User` (`uid`, `uid:gid`, `name` or `name:group`).
    pub user: String,
    /// `ExposedPorts`, e.g. `80/tcp`.
    pub exposed_ports: Vec<String>,
    /// `Volumes`: paths that get an anonymous volume.
    pub volumes: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`, e.g. `SIGQUIT`.
    pub stop_signal: Option<String>,
}

/// An image present on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Image id: the digest of its config.
    pub id: String,
    /// Tags that point at it, normalized (`docker.io/library/busybox:latest`).
    pub repo_tags: Vec<String>,
    /// Repository digests (`docker.io/library/busybox@sha256:…`).
    pub repo_digests: Vec<String>,
    /// Size on disk in bytes (layers, uncompressed).
    pub size: u64,
    /// Container defaults.
    pub config: ImageConfig,
    /// How a container's root filesystem is made from it.
    pub rootfs: RootFs,
}

/// Registry credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// User name and password (or token as password).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A bearer token used as is.
    Bearer(String),
}

/// Progress of a pull.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullEvent {
    /// The manifest was resolved: the image has these layers (digest, compressed size).
    Resolved {
        /// The manifest digest.
        digest: String,
        /// Layer digests and sizes.
        layers: Vec<(String, u64)>,
    },
    /// A layer is already present.
    LayerCached {
        /// Layer digest.
        digest: String,
    },
    /// Bytes of a layer downloaded so far.
    LayerProgress {
        /// Layer digest.
        digest: String,
        /// Bytes so far.
        downloaded: u64,
        /// Total bytes.
        total: u64,
    },
    /// A layer is downloaded and verified.
    LayerDownloaded {
        /// Layer digest.
        digest: String,
    },
    /// A layer is unpacked.
    LayerUnpacked {
        /// Layer digest.
        digest: String,
    },
    /// The image is stored.
    Done {
        /// Image id.
        id: String,
    },
}

/// How to pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Credentials for the registry (else the service's configured ones, else anonymous).
    pub credentials: Option<Credentials>,
    /// Platform as `os/arch[/variant]`; the node's own when `None`.
    pub platform: Option<String>,
    /// Where to send progress.
    pub progress: Option<UnboundedSender<PullEvent>>,
}

/// Where images come from and how they are kept on a node.
#[async_trait]
pub trait ImageService: Send + Sync + 'static {
    /// Pulls an image by reference; returns it once stored. Idempotent.
    async fn pull(&self, reference: &str, options: &PullOptions) -> BackendResult<ImageInfo>;
    /// The image a reference (tag, digest or id) names, if present.
    async fn image_status(&self, reference: &str) -> BackendResult<Option<ImageInfo>>;
    /// Every image.
    async fn list_images(&self) -> BackendResult<Vec<ImageInfo>>;
    /// Removes an image (the tag; the content when no tag is left). An image used by a
    /// container is refused unless `force`. Removing an absent image succeeds.
    async fn remove_image(&self, reference: &str, force: bool) -> BackendResult<()>;
    /// Imports an OCI image layout directory or tarball, or a docker-archive tarball; returns
    /// the images it held.
    async fn import(&self, path: &Path) -> BackendResult<Vec<ImageInfo>>;
}

//! [`ImageService`] over an [`ImageStore`] and a [`RegistryClient`]: what a node agent uses.
//!
//! Containers hold images through leases ([`ImageStore::lease`] / [`ImageStore::release`],
//! called by the runtime when it creates and removes a container); `remove_image` refuses a
//! leased image unless forced.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use wharf_core::backend::image::{Credentials, ImageConfig, ImageInfo, ImageService, PullOptions};
use wharf_core::backend::runtime::RootFs;
use wharf_core::backend::{BackendError, BackendResult, ErrorKind};

use crate::error::{ImageError, Result};
use crate::registry::{self, RegistryAuth, RegistryClient, RegistryConfig};
use crate::spec::Platform;
use crate::store::{Image, ImageStore};

/// The node's images: a store plus a registry client.
pub struct ImageStoreService {
    store: Arc<ImageStore>,
    client: RegistryClient,
}

impl ImageStoreService {
    /// A service over `store`, pulling with `config`.
    pub fn new(store: Arc<ImageStore>, config: RegistryConfig) -> Result<ImageStoreService> {
        Ok(ImageStoreService {
            store,
            client: RegistryClient::new(config)?,
        })
    }

    /// The store (for tags, leases, exports, GC, disk usage).
    pub fn store(&self) -> &Arc<ImageStore> {
        &self.store
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ImageStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ImageError::io("join worker", "", std::io::Error::other(e.to_string())))?
    }
}

/// The container defaults of an image config.
pub fn container_defaults(c: &crate::spec::ContainerConfig) -> ImageConfig {
    ImageConfig {
        entrypoint: c.entrypoint.clone().unwrap_or_default(),
        cmd: c.cmd.clone().unwrap_or_default(),
        env: c
            .env
            .iter()
            .flatten()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        user: c.user.clone().unwrap_or_default(),
        exposed_ports: c
            .exposed_ports
            .iter()
            .flat_map(|m| m.keys().cloned())
            .collect(),
        volumes: c.volumes.iter().flat_map(|m| m.keys().cloned()).collect(),
        labels: c.labels.clone().unwrap_or_default(),
        stop_signal: c.stop_signal.clone(),
    }
}

/// The trait's view of a stored image.
pub fn image_info(img: &Image) -> ImageInfo {
    ImageInfo {
        id: img.id.to_string(),
        repo_tags: img.repo_tags.iter().map(ToString::to_string).collect(),
        repo_digests: img.repo_digests.clone(),
        size: img.unpacked_size,
        config: container_defaults(&img.config.config),
        rootfs: RootFs::Layers(img.layers.clone()),
    }
}

/// Maps a store error to the backend error classes.
pub fn backend_error(op: &str, object: &str, e: ImageError) -> BackendError {
    let kind = match &e {
        ImageError::InvalidReference { .. }
        | ImageError::InvalidDigest { .. }
        | ImageError::AmbiguousImage(_)
        | ImageError::Credentials { .. }
        | ImageError::Dockerfile { .. }
        | ImageError::NoMatchingPlatform { .. }
        | ImageError::UnsupportedMediaType { .. } => ErrorKind::InvalidArgument,
        ImageError::ImageNotFound(_) | ImageError::BlobNotFound(_) => ErrorKind::NotFound,
        ImageError::ImageInUse { .. }
        | ImageError::InsecureNotAllowed(_)
        | ImageError::StoreLocked(_) => ErrorKind::FailedPrecondition,
        ImageError::Unauthorized { .. } => ErrorKind::PermissionDenied,
        // A transfer that broke or arrived corrupt may work the next time.
        ImageError::Registry { .. }
        | ImageError::DigestMismatch { .. }
        | ImageError::SizeMismatch { .. } => ErrorKind::Unavailable,
        ImageError::Malformed { .. } | ImageError::BadLayerEntry { .. } | ImageError::Io { .. } => {
            ErrorKind::Internal
        }
    };
    BackendError::new(kind, op, object, e.to_string()).with_source(e)
}

#[async_trait]
impl ImageService for ImageStoreService {
    async fn pull(&self, reference: &str, options: &PullOptions) -> BackendResult<ImageInfo> {
        let err = |e| backend_error("pull image", reference, e);
        let platform = match &options.platform {
            Some(p) => Some(Platform::parse(p).ok_or_else(|| {
                BackendError::new(
                    ErrorKind::InvalidArgument,
                    "pull image",
                    reference,
                    format!("platform {p:?} is not os/arch[/variant]"),
                )
            })?),
            None => None,
        };
        let opts = registry::PullOptions {
            platform,
            credentials: options.credentials.as_ref().map(|c| match c {
                Credentials::Basic { username, password } => RegistryAuth::Basic {
                    username: username.clone(),
                    password: password.clone(),
                },
                Credentials::Bearer(t) => RegistryAuth::Bearer(t.clone()),
            }),
            progress: options.progress.clone(),
        };
        let img = registry::pull(&self.store, &self.client, reference, &opts)
            .await
            .map_err(err)?;
        Ok(image_info(&img))
    }

    async fn image_status(&self, reference: &str) -> BackendResult<Option<ImageInfo>> {
        let r = reference.to_string();
        match self.blocking(move |s| s.inspect(&r)).await {
            Ok(img) => Ok(Some(image_info(&img))),
            Err(ImageError::ImageNotFound(_)) => Ok(None),
            Err(e) => Err(backend_error("inspect image", reference, e)),
        }
    }

    async fn list_images(&self) -> BackendResult<Vec<ImageInfo>> {
        let imgs = self
            .blocking(|s| s.list())
            .await
            .map_err(|e| backend_error("list images", "", e))?;
        Ok(imgs.iter().map(image_info).collect())
    }

    async fn remove_image(&self, reference: &str, force: bool) -> BackendResult<()> {
        let r = reference.to_string();
        match self.blocking(move |s| s.remove(&r, force)).await {
            Ok(_) | Err(ImageError::ImageNotFound(_)) => Ok(()),
            Err(e) => Err(backend_error("remove image", reference, e)),
        }
    }

    async fn import(&self, path: &Path) -> BackendResult<Vec<ImageInfo>> {
        let p = path.to_path_buf();
        let imgs = self
            .blocking(move |s| crate::layout::import(s, &p))
            .await
            .map_err(|e| backend_error("import images", &path.display().to_string(), e))?;
        Ok(imgs.iter().map(image_info).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_defaults_from_config() {
        let c: crate::spec::ContainerConfig = serde_json::from_str(
            r#"{"Env":["PATH=/bin","EMPTY=","ODD"],"Cmd":["sh"],"Entrypoint":["/init"],"WorkingDir":"/w",
                "User":"1:2","ExposedPorts":{"80/tcp":{},"53/udp":{}},"Volumes":{"/data":{}},
                "Labels":{"a":"b"},"StopSignal":"SIGQUIT"}"#,
        )
        .unwrap();
        let d = container_defaults(&c);
        assert_eq!(
            d.env,
            vec![
                ("PATH".into(), "/bin".into()),
                ("EMPTY".into(), "".into()),
                ("ODD".into(), "".into())
            ]
        );
        assert_eq!(
            d.exposed_ports,
            vec!["53/udp".to_string(), "80/tcp".to_string()]
        );
        assert_eq!(
            (d.entrypoint, d.cmd),
            (vec!["/init".to_string()], vec!["sh".to_string()])
        );
        assert_eq!((d.working_dir.as_str(), d.user.as_str()), ("/w", "1:2"));
        assert_eq!(d.volumes, vec!["/data".to_string()]);
        assert_eq!(d.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(
            container_defaults(&Default::default()),
            ImageConfig::default()
        );
    }

    #[test]
    fn error_classes() {
        let e = backend_error("pull image", "x", ImageError::ImageNotFound("x".into()));
        assert!(e.is_not_found());
        let e = backend_error(
            "pull image",
            "x",
            ImageError::Registry {
                registry: "r".into(),
                op: "GET".into(),
                reason: "reset".into(),
            },
        );
        assert!(e.is_retryable());
        let e = backend_error(
            "remove image",
            "x",
            ImageError::ImageInUse {
                image: "x".into(),
                containers: vec![],
            },
        );
        assert_eq!(e.kind, ErrorKind::FailedPrecondition);
    }
}

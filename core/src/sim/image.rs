//! [`SimImageService`]: images that exist because a test said so.
//!
//! Each known reference has an [`ImageConfig`], a pull latency and a number of failures
//! to give before a pull succeeds. Pulling an unknown reference fails as a registry would
//! (`NotFound`, "manifest unknown").

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::image::*;
use crate::backend::runtime::RootFs;
use crate::backend::{BackendError, BackendResult, ErrorKind};

/// How a simulated registry serves one reference.
#[derive(Clone, Debug, Default)]
pub struct SimImage {
    /// The image config (entrypoint, cmd, env, stop signal, ...).
    pub config: ImageConfig,
    /// How long a pull takes.
    pub pull_latency: Duration,
    /// How many pulls fail (with `Unavailable`) before one succeeds.
    pub fail_pulls: u32,
    /// Already present on the node (no pull needed with IfNotPresent).
    pub present: bool,
}

#[derive(Default)]
struct State {
    registry: HashMap<String, SimImage>,
    present: HashMap<String, ImageInfo>,
    pulls: HashMap<String, u32>,
    /// When set, every reference not registered is served with this image.
    any: Option<SimImage>,
}

/// A simulated [`ImageService`]. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct SimImageService {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimImageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimImageService").finish_non_exhaustive()
    }
}

fn info(reference: &str, image: &SimImage) -> ImageInfo {
    ImageInfo {
        id: format!("sha256:sim-{reference}"),
        repo_tags: vec![reference.to_string()],
        repo_digests: Vec::new(),
        size: 0,
        config: image.config.clone(),
        rootfs: RootFs::None,
    }
}

impl SimImageService {
    /// A service that knows no image.
    pub fn new() -> SimImageService {
        SimImageService::default()
    }

    /// A service that serves every reference with an empty config at once (benchmarks).
    pub fn serving_any() -> SimImageService {
        let s = SimImageService::default();
        s.lock().any = Some(SimImage::default());
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `reference` pullable (and present, when `image.present`).
    pub fn add(&self, reference: &str, image: SimImage) {
        let mut s = self.lock();
        if image.present {
            s.present
                .insert(reference.to_string(), info(reference, &image));
        }
        s.registry.insert(reference.to_string(), image);
    }

    /// How many pulls of `reference` were attempted.
    pub fn pull_count(&self, reference: &str) -> u32 {
        self.lock().pulls.get(reference).copied().unwrap_or(0)
    }
}

#[async_trait]
impl ImageService for SimImageService {
    async fn pull(&self, reference: &str, options: &PullOptions) -> BackendResult<ImageInfo> {
        let (image, attempt) = {
            let mut s = self.lock();
            let attempt = {
                let n = s.pulls.entry(reference.to_string()).or_insert(0);
                *n += 1;
                *n
            };
            let image = s.registry.get(reference).cloned().or_else(|| s.any.clone());
            (image, attempt)
        };
        let Some(image) = image else {
            return Err(BackendError::new(
                ErrorKind::NotFound,
                "pull image",
                reference,
                "manifest unknown: the registry has no such image",
            ));
        };
        if !image.pull_latency.is_zero() {
            tokio::time::sleep(image.pull_latency).await;
        }
        if attempt <= image.fail_pulls {
            return Err(BackendError::new(
                ErrorKind::Unavailable,
                "pull image",
                reference,
                format!(
                    "registry unavailable (failure {attempt} of {})",
                    image.fail_pulls
                ),
            ));
        }
        let info = info(reference, &image);
        if let Some(tx) = &options.progress {
            let _ = tx.send(PullEvent::Done {
                id: info.id.clone(),
            });
        }
        self.lock()
            .present
            .insert(reference.to_string(), info.clone());
        Ok(info)
    }

    async fn image_status(&self, reference: &str) -> BackendResult<Option<ImageInfo>> {
        let s = self.lock();
        Ok(s.present
            .get(reference)
            .cloned()
            .or_else(|| s.present.values().find(|i| i.id == reference).cloned()))
    }

    async fn list_images(&self) -> BackendResult<Vec<ImageInfo>> {
        let mut v: Vec<ImageInfo> = self.lock().present.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    async fn remove_image(&self, reference: &str, _force: bool) -> BackendResult<()> {
        self.lock().present.remove(reference);
        Ok(())
    }

    async fn import(&self, path: &Path) -> BackendResult<Vec<ImageInfo>> {
        Err(BackendError::new(
            ErrorKind::Unsupported,
            "import image",
            path.display().to_string(),
            "the simulated image service has no image files; use SimImageService::add",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn fails_k_times_then_pulls_after_latency() {
        let images = SimImageService::new();
        images.add(
            "busybox:1.36",
            SimImage {
                pull_latency: Duration::from_secs(2),
                fail_pulls: 2,
                ..Default::default()
            },
        );
        let opts = PullOptions::default();
        for _ in 0..2 {
            let err = images.pull("busybox:1.36", &opts).await.unwrap_err();
            assert!(err.is_retryable());
        }
        assert_eq!(images.image_status("busybox:1.36").await.unwrap(), None);
        let t0 = Instant::now();
        let info = images.pull("busybox:1.36", &opts).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        assert_eq!(
            images.image_status("busybox:1.36").await.unwrap(),
            Some(info)
        );
        assert_eq!(images.pull_count("busybox:1.36"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_image_is_not_found_and_present_needs_no_pull() {
        let images = SimImageService::new();
        let err = images
            .pull("nope:1", &PullOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        images.add(
            "local:1",
            SimImage {
                present: true,
                ..Default::default()
            },
        );
        assert!(images.image_status("local:1").await.unwrap().is_some());
        images.remove_image("local:1", false).await.unwrap();
        assert!(images.image_status("local:1").await.unwrap().is_none());
    }
}

//! `pull`: resolve the manifest (choosing a platform from an index), download config and
//! layers concurrently (skipping blobs already stored), unpack each layer as soon as it is
//! downloaded, then commit the image. Nothing is recorded until everything is in place; on
//! failure what the pull downloaded is garbage collected.

use std::sync::Arc;

use futures::stream::{self, StreamExt};
use tokio::sync::mpsc::UnboundedSender;
use wharf_core::backend::image::PullEvent;

use super::auth::RegistryAuth;
use super::client::{resume_skip, transient_error, RegistryClient};
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::reference::Reference;
use crate::spec::{self, Descriptor, Document, ImageConfig, Platform};
use crate::store::{Image, ImageStore};

/// How to pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// The platform to pick from an index (the host's when `None`).
    pub platform: Option<Platform>,
    /// Credentials for this pull (else the client's configured ones, else anonymous).
    pub credentials: Option<RegistryAuth>,
    /// Where progress goes.
    pub progress: Option<UnboundedSender<PullEvent>>,
}

/// Bytes between two progress events of one layer.
const PROGRESS_STEP: u64 = 256 * 1024;

fn emit(p: &Option<UnboundedSender<PullEvent>>, e: PullEvent) {
    if let Some(tx) = p {
        let _ = tx.send(e);
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ImageError::Io {
            op: "join worker",
            path: Default::default(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

/// Pulls `reference` into `store`. Idempotent: an image already stored costs the manifest
/// request only.
pub async fn pull(
    store: &Arc<ImageStore>,
    client: &RegistryClient,
    reference: &str,
    opts: &PullOptions,
) -> Result<Image> {
    let r = Reference::parse(reference)?;
    let creds = opts.credentials.as_ref();
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);

    // Resolve to one image manifest.
    let (mut bytes, mut media_type, top_digest) =
        client.fetch_manifest(&r, &r.manifest_ref(), creds).await?;
    let mut digest = top_digest.clone();
    let manifest = loop {
        match Document::parse(&bytes, Some(&media_type), &format!("manifest {r}@{digest}"))? {
            Document::Manifest(m) => break m,
            Document::Index(index) => {
                let d = spec::select_platform(&index, &platform).ok_or_else(|| {
                    ImageError::NoMatchingPlatform {
                        reference: r.to_string(),
                        platform: platform.to_string(),
                    }
                })?;
                let (b, m, dg) = client
                    .fetch_manifest(&r, &d.digest.to_string(), creds)
                    .await?;
                (bytes, media_type, digest) = (b, m, dg);
            }
        }
    };
    emit(
        &opts.progress,
        PullEvent::Resolved {
            digest: digest.to_string(),
            layers: manifest
                .layers
                .iter()
                .map(|l| (l.digest.to_string(), l.size))
                .collect(),
        },
    );
    let _pin = store.pin(
        [digest.clone(), manifest.config.digest.clone()]
            .into_iter()
            .chain(manifest.layers.iter().map(|l| l.digest.clone())),
    );
    let result = fetch_and_commit(
        store,
        client,
        &r,
        &bytes,
        &digest,
        &top_digest,
        &manifest,
        opts,
    )
    .await;
    if result.is_err() {
        drop(_pin);
        let s = store.clone();
        // Leave nothing of a failed pull behind (content other images use stays).
        let _ = blocking(move || s.gc()).await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn fetch_and_commit(
    store: &Arc<ImageStore>,
    client: &RegistryClient,
    r: &Reference,
    manifest_bytes: &[u8],
    digest: &Digest,
    top_digest: &Digest,
    manifest: &spec::Manifest,
    opts: &PullOptions,
) -> Result<Image> {
    let creds = opts.credentials.as_ref();
    // The config first: its diff ids let each layer be unpacked as soon as it arrives.
    if !store.blobs().contains(&manifest.config.digest) {
        let s = store.clone();
        let (d, size) = (manifest.config.digest.clone(), manifest.config.size);
        download(
            client,
            r,
            &manifest.config,
            creds,
            &None,
            move |mut input| {
                s.blobs()
                    .put_reader(&mut input, Some(&d), Some(size))
                    .map(|_| ())
            },
        )
        .await?;
    }
    let cfg_digest = manifest.config.digest.clone();
    let s = store.clone();
    let config: ImageConfig = blocking(move || {
        let b = s.blobs().read_verified(&cfg_digest)?;
        serde_json::from_slice(&b)
            .map_err(|e| ImageError::malformed(format!("image config {cfg_digest}"), e))
    })
    .await?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::malformed(
            format!("manifest {digest}"),
            "the number of layers and of config diff ids differ",
        ));
    }
    let jobs = manifest
        .layers
        .iter()
        .cloned()
        .zip(config.rootfs.diff_ids.iter().cloned());
    let parallel = client.config().max_concurrent_downloads.max(1);
    // After a failure no new layer starts, but the ones under way run to their end: a
    // cancelled download would leave its writer thread still cleaning up (an ingest file,
    // a half snapshot) when the failed pull garbage-collects and returns.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Result<()>> = stream::iter(jobs)
        .map(|(layer, diff_id)| {
            let failed = &failed;
            async move {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                let r = layer_job(store, client, r, layer, diff_id, opts).await;
                if r.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                r
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;

    let mbytes = manifest_bytes.to_vec();
    let tags: Vec<Reference> = r
        .tag()
        .and(r.digest().is_none().then(|| r.clone()))
        .into_iter()
        .collect();
    let repo_digest = format!("{}@{top_digest}", r.name());
    let s = store.clone();
    let want = digest.clone();
    let image = blocking(move || {
        let d = s.blobs().put(&mbytes)?;
        debug_assert_eq!(d, want);
        s.commit_image(&d, &tags, Some(repo_digest), &|_| {})
    })
    .await?;
    emit(
        &opts.progress,
        PullEvent::Done {
            id: image.id.to_string(),
        },
    );
    Ok(image)
}

async fn layer_job(
    store: &Arc<ImageStore>,
    client: &RegistryClient,
    r: &Reference,
    layer: Descriptor,
    diff_id: Digest,
    opts: &PullOptions,
) -> Result<()> {
    if store.blobs().size(&layer.digest) == Some(layer.size) {
        emit(
            &opts.progress,
            PullEvent::LayerCached {
                digest: layer.digest.to_string(),
            },
        );
        if store.snapshots().contains(&diff_id) {
            return Ok(());
        }
        let s = store.clone();
        let l = layer.clone();
        blocking(move || s.ensure_snapshot(&l, &diff_id)).await?;
    } else {
        // Downloaded and unpacked in one pass: the bytes go to the blob file and through
        // the decompressor into the snapshot as they arrive.
        let s = store.clone();
        let l = layer.clone();
        download(
            client,
            r,
            &layer,
            opts.credentials.as_ref(),
            &opts.progress,
            move |input| s.ingest_and_unpack(&l, &diff_id, input),
        )
        .await?;
        emit(
            &opts.progress,
            PullEvent::LayerDownloaded {
                digest: layer.digest.to_string(),
            },
        );
    }
    emit(
        &opts.progress,
        PullEvent::LayerUnpacked {
            digest: layer.digest.to_string(),
        },
    );
    Ok(())
}

/// Streams one blob: the network is read here, `consume` reads the bytes on a blocking
/// thread (it stores the blob, checking digest and size before naming it, and may unpack
/// it on the way). A body that breaks off is resumed from the bytes received (see
/// [`super::RetryPolicy`]); the digest check covers the joined stream.
async fn download(
    client: &RegistryClient,
    r: &Reference,
    desc: &Descriptor,
    creds: Option<&RegistryAuth>,
    progress: &Option<UnboundedSender<PullEvent>>,
    consume: impl FnOnce(ChannelReader) -> Result<()> + Send + 'static,
) -> Result<()> {
    let mut resp = client.fetch_blob(r, &desc.digest, creds).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let writer = tokio::task::spawn_blocking(move || {
        consume(ChannelReader {
            rx,
            chunk: bytes::Bytes::new(),
        })
    });
    let op = format!("GET blob {}@{}", r.name(), desc.digest);
    let policy = client.config().retry.clone();
    let mut resumes = 0u32;
    // Leading bytes of the current response that were already received (a resumption
    // the registry answered with the whole blob).
    let mut skip = 0u64;
    let mut got = 0u64;
    let mut reported = 0u64;
    let mut net_err = None;
    loop {
        let broke = match resp.chunk().await {
            Ok(Some(mut chunk)) => {
                if skip > 0 {
                    let k = skip.min(chunk.len() as u64);
                    skip -= k;
                    chunk = chunk.slice(k as usize..);
                    if chunk.is_empty() {
                        continue;
                    }
                }
                got += chunk.len() as u64;
                if got > desc.size {
                    net_err = Some(ImageError::SizeMismatch {
                        digest: desc.digest.clone(),
                        expected: desc.size,
                        actual: got,
                    });
                    break;
                }
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
                if got - reported >= PROGRESS_STEP || got == desc.size {
                    reported = got;
                    emit(
                        progress,
                        PullEvent::LayerProgress {
                            digest: desc.digest.to_string(),
                            downloaded: got,
                            total: desc.size,
                        },
                    );
                }
                continue;
            }
            // The body ended short of the announced size without an error (a chunked
            // answer cut off, possibly before the bytes to skip): resumable like a broken
            // connection.
            Ok(None) if got < desc.size => "the body ended early".to_string(),
            Ok(None) => break,
            Err(e) if transient_error(&e) => e.to_string(),
            Err(e) => {
                net_err = Some(ImageError::Registry {
                    registry: r.registry().to_string(),
                    op: op.clone(),
                    reason: e.to_string(),
                });
                break;
            }
        };
        resumes += 1;
        if resumes >= policy.attempts {
            net_err = Some(ImageError::Registry {
                registry: r.registry().to_string(),
                op: op.clone(),
                reason: format!("{broke} (resumed {} times)", resumes - 1),
            });
            break;
        }
        let delay = policy.delay(resumes, None);
        tracing::debug!(%op, error = %broke, offset = got, ?delay, "blob download broke off, resuming");
        tokio::time::sleep(delay).await;
        let next = match client.fetch_blob_from(r, &desc.digest, creds, got).await {
            Ok(next) => next,
            Err(e) => {
                net_err = Some(e);
                break;
            }
        };
        match resume_skip(next.status(), next.headers(), got) {
            Some(s) => {
                skip = s;
                resp = next;
            }
            None => {
                net_err = Some(ImageError::Registry {
                    registry: r.registry().to_string(),
                    op: op.clone(),
                    reason: format!("resuming at byte {got}: the registry answered another range"),
                });
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.unwrap_or_else(|e| {
        Err(ImageError::io(
            "join writer",
            "",
            std::io::Error::other(e.to_string()),
        ))
    });
    match net_err {
        Some(e) => Err(e),
        None => written,
    }
}

/// The body chunks of a download as a blocking `Read` (EOF when the sender is gone).
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.chunk = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

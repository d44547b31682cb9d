//! Registry robustness against a local test server (axum on loopback) that misbehaves on
//! purpose: connections dropped before an answer, 503 and 429 with `Retry-After`, blob
//! bodies cut in the middle (resumed with a `Range` request, answered either `206` or with
//! the whole blob again), bodies that end early without any error (chunked, half the
//! blob), and failures that never end (a bounded number of attempts, then
//! a clear error and an empty store). The server serves an OCI layout written by the test.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::{multi_layer_image, write_image, write_layout};
use wharf_image::registry::{self, PullOptions, RegistryClient, RegistryConfig, RetryPolicy};
use wharf_image::spec::{Descriptor, Manifest};
use wharf_image::store::ImageStore;
use wharf_image::ImageError;

/// What the server does wrong, and what it saw.
#[derive(Default)]
struct Faults {
    /// Answers 503 to the first this many manifest requests.
    manifest_503: usize,
    /// Then answers 429 with `Retry-After: 1` this many times.
    manifest_429: usize,
    /// Blob digest → how many of its requests get half the body and a broken connection.
    cut: Vec<(String, usize)>,
    /// Blob digest → how many of its requests get half the body (a quarter, from the
    /// start, for a `Range` request), ended cleanly (chunked, no `Content-Length`):
    /// nothing on the wire says it is short.
    short: Vec<(String, usize)>,
    /// Blob digests whose `Range` requests are answered with the whole blob (200).
    ignore_range: Vec<String>,
    /// Blob digest that always gets 500.
    always_500: Option<String>,
    /// Every request: (path, Range header).
    log: Vec<(String, Option<String>)>,
}

struct Server {
    layout: PathBuf,
    faults: Mutex<Faults>,
}

/// A listener that drops its first `drop_first` connections without an answer.
struct Flaky {
    inner: tokio::net::TcpListener,
    drop_first: Arc<AtomicUsize>,
}

impl axum::serve::Listener for Flaky {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            let left = self.drop_first.load(Ordering::SeqCst);
            if left > 0 {
                self.drop_first.store(left - 1, Ordering::SeqCst);
                drop(io);
                continue;
            }
            return (io, addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

async fn handle(server: Arc<Server>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().to_string();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut f = server.faults.lock().unwrap();
    f.log.push((path.clone(), range.clone()));
    if path == "/v2/" {
        return StatusCode::OK.into_response();
    }
    if let Some((_, reference)) = path.split_once("/manifests/") {
        if f.manifest_503 > 0 {
            f.manifest_503 -= 1;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        if f.manifest_429 > 0 {
            f.manifest_429 -= 1;
            return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")]).into_response();
        }
        let digest = if reference.starts_with("sha256:") {
            reference.to_string()
        } else {
            let index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(server.layout.join("index.json")).unwrap())
                    .unwrap();
            let found = index["manifests"].as_array().unwrap().iter().find(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(reference)
            });
            match found {
                Some(m) => m["digest"].as_str().unwrap().to_string(),
                None => return StatusCode::NOT_FOUND.into_response(),
            }
        };
        let bytes = read_blob(&server.layout, &digest);
        return (
            [
                (
                    header::CONTENT_TYPE,
                    "application/vnd.oci.image.manifest.v1+json".to_string(),
                ),
                (
                    header::HeaderName::from_static("docker-content-digest"),
                    digest,
                ),
            ],
            bytes,
        )
            .into_response();
    }
    let Some((_, digest)) = path.split_once("/blobs/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let digest = digest.to_string();
    if f.always_500.as_deref() == Some(digest.as_str()) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let bytes = read_blob(&server.layout, &digest);
    if let Some(slot) = f.cut.iter_mut().find(|(d, n)| *d == digest && *n > 0) {
        slot.1 -= 1;
        // Half the body, then the connection breaks (Content-Length promises more).
        let half = bytes::Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
        let stream = futures::stream::iter(vec![
            Ok(half),
            Err(std::io::Error::other("connection cut by the test")),
        ]);
        return Response::builder()
            .header(header::CONTENT_LENGTH, bytes.len())
            .body(Body::from_stream(stream))
            .unwrap();
    }
    if let Some(slot) = f.short.iter_mut().find(|(d, n)| *d == digest && *n > 0) {
        slot.1 -= 1;
        // A range request gets a quarter of the blob from its start (a 200): it ends
        // before the bytes the client already has.
        let end = if range.is_some() {
            bytes.len() / 4
        } else {
            bytes.len() / 2
        };
        let part = bytes::Bytes::copy_from_slice(&bytes[..end]);
        let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(part)]);
        return Response::builder().body(Body::from_stream(stream)).unwrap();
    }
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    match start {
        Some(start) if !f.ignore_range.contains(&digest) && start < bytes.len() => (
            StatusCode::PARTIAL_CONTENT,
            [(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()),
            )],
            bytes[start..].to_vec(),
        )
            .into_response(),
        _ => bytes.into_response(),
    }
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

/// Starts the server for `layout`; returns its address and the shared state.
async fn serve(layout: PathBuf, faults: Faults, drop_first: usize) -> (String, Arc<Server>) {
    let server = Arc::new(Server {
        layout,
        faults: Mutex::new(faults),
    });
    let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = inner.local_addr().unwrap().to_string();
    let listener = Flaky {
        inner,
        drop_first: Arc::new(AtomicUsize::new(drop_first)),
    };
    let s = server.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let s = s.clone();
        async move { handle(s, uri, headers).await }
    });
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}

fn client(addr: &str, attempts: u32) -> RegistryClient {
    let mut config = RegistryConfig::default();
    config.insecure.insert(addr.to_string());
    config.retry = RetryPolicy {
        attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(5),
    };
    RegistryClient::new(config).unwrap()
}

/// The multi-layer test image in a layout; its layer descriptors, biggest first.
fn layout(dir: &Path) -> (PathBuf, Vec<Descriptor>) {
    let lay = dir.join("layout");
    let desc = write_image(&lay, &multi_layer_image(), "amd64");
    write_layout(&lay, vec![(desc.clone(), "1")]);
    let m: Manifest = serde_json::from_slice(&read_blob(&lay, &desc.digest.to_string())).unwrap();
    let mut layers = m.layers;
    layers.sort_by_key(|l| std::cmp::Reverse(l.size));
    (lay, layers)
}

fn assert_empty(store: &ImageStore) {
    let du = store.disk_usage().unwrap();
    assert_eq!((du.images, du.blobs, du.snapshots), (0, 0, 0), "{du:?}");
    assert_eq!(
        std::fs::read_dir(store.root().join("ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_survives_drops_5xx_429_and_cut_bodies() {
    let t = tempfile::tempdir().unwrap();
    let (lay, layers) = layout(t.path());
    let (big, second) = (layers[0].digest.to_string(), layers[1].digest.to_string());
    let faults = Faults {
        manifest_503: 2,
        manifest_429: 1,
        // The biggest layer is cut twice (resumed with 206 each time), the second one
        // once, and its resumption gets the whole blob again.
        cut: vec![(big.clone(), 2), (second.clone(), 1)],
        ignore_range: vec![second.clone()],
        ..Default::default()
    };
    let (addr, server) = serve(lay, faults, 1).await;
    let store = Arc::new(ImageStore::open(t.path().join("store")).unwrap());
    let reference = format!("{addr}/test/retry:1");
    let start = Instant::now();
    let img = registry::pull(
        &store,
        &client(&addr, 6),
        &reference,
        &PullOptions::default(),
    )
    .await
    .unwrap();
    // The 429 asked for one second.
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(img.layers.len(), 3);
    let flat = t.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    store.unpack_flat(&reference, &flat).unwrap();
    assert_eq!(
        std::fs::read(flat.join("etc/hostname")).unwrap(),
        b"changed\n"
    );
    assert_eq!(
        std::fs::read(flat.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );

    let log = server.faults.lock().unwrap().log.clone();
    let requests = |d: &str| -> Vec<Option<String>> {
        log.iter()
            .filter(|(p, _)| p.ends_with(&format!("/blobs/{d}")))
            .map(|(_, r)| r.clone())
            .collect()
    };
    let big_reqs = requests(&big);
    assert_eq!(big_reqs.len(), 3, "{big_reqs:?}");
    assert!(big_reqs[0].is_none());
    assert!(big_reqs[1..]
        .iter()
        .all(|r| r.as_deref().is_some_and(|r| r.starts_with("bytes="))));
    assert_eq!(requests(&second).len(), 2);
    let manifest_reqs = log
        .iter()
        .filter(|(p, _)| p.contains("/manifests/"))
        .count();
    assert_eq!(manifest_reqs, 4, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lasting_failures_are_bounded_and_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (lay, layers) = layout(t.path());
    let victim = layers[0].digest.to_string();
    let faults = Faults {
        always_500: Some(victim.clone()),
        ..Default::default()
    };
    let (addr, server) = serve(lay, faults, 0).await;
    let store = Arc::new(ImageStore::open(t.path().join("store")).unwrap());
    let err = registry::pull(
        &store,
        &client(&addr, 3),
        &format!("{addr}/test/retry:1"),
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
    assert!(err.to_string().contains("500"), "{err}");
    let tries = |f: &dyn Fn(&str) -> bool| {
        let s = server.faults.lock().unwrap();
        s.log.iter().filter(|(p, _)| f(p)).count()
    };
    assert_eq!(tries(&|p: &str| p.ends_with(&victim)), 3);
    assert_empty(&store);

    // A missing tag is not worth retrying: one request, a not-found error.
    let err = registry::pull(
        &store,
        &client(&addr, 3),
        &format!("{addr}/test/retry:absent"),
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::ImageNotFound(_)), "{err}");
    assert_eq!(tries(&|p: &str| p.ends_with("/manifests/absent")), 1);
    assert_empty(&store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_ending_early_without_an_error_is_resumed_then_refused() {
    let t = tempfile::tempdir().unwrap();
    let (lay, layers) = layout(t.path());
    let big = layers[0].digest.to_string();
    let blob_requests = |server: &Server| -> Vec<Option<String>> {
        let f = server.faults.lock().unwrap();
        f.log
            .iter()
            .filter(|(p, _)| p.ends_with(&format!("/blobs/{big}")))
            .map(|(_, r)| r.clone())
            .collect()
    };

    // Once: the download notices the missing half and resumes it with a Range request.
    let faults = Faults {
        short: vec![(big.clone(), 1)],
        ..Default::default()
    };
    let (addr, server) = serve(lay.clone(), faults, 0).await;
    let store = Arc::new(ImageStore::open(t.path().join("store")).unwrap());
    let reference = format!("{addr}/test/retry:1");
    registry::pull(
        &store,
        &client(&addr, 3),
        &reference,
        &PullOptions::default(),
    )
    .await
    .unwrap();
    let reqs = blob_requests(&server);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let half = layers[0].size / 2;
    assert_eq!(reqs[1].as_deref(), Some(format!("bytes={half}-").as_str()));
    let flat = t.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    store.unpack_flat(&reference, &flat).unwrap();
    assert_eq!(
        std::fs::read(flat.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );

    // Always (and the resumptions are answered from the blob's start, ending before the
    // bytes already received): a bounded number of attempts, an error that
    // says what happened, an empty store.
    let faults = Faults {
        short: vec![(big.clone(), usize::MAX)],
        ..Default::default()
    };
    let (addr, server) = serve(lay, faults, 0).await;
    let store = Arc::new(ImageStore::open(t.path().join("store2")).unwrap());
    let err = registry::pull(
        &store,
        &client(&addr, 3),
        &format!("{addr}/test/retry:1"),
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
    assert!(err.to_string().contains("ended early"), "{err}");
    assert_eq!(blob_requests(&server).len(), 3);
    assert_empty(&store);
}

//! Pulls from Debian's `docker-registry` started on a loopback port by the test itself,
//! filled with skopeo: anonymous, bearer token (a token server in this test), Basic
//! (htpasswd), a two-platform index, corrupt blobs, insecure-registry policy.
//! Needs root (unpacking keeps ownership and makes device nodes), skopeo, docker-registry,
//! openssl and htpasswd (apache2-utils).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{multi_layer_image, run, write_image, write_index, write_layout, Blob, Layer};
use wharf_core::backend::image::PullEvent;
use wharf_image::registry::{self, PullOptions, RegistryAuth, RegistryClient, RegistryConfig};
use wharf_image::spec::Platform;
use wharf_image::store::ImageStore;
use wharf_image::ImageError;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A docker-registry process; killed (by pid) and reaped on drop.
struct Registry {
    child: Child,
    addr: String,
    data: PathBuf,
}

impl Registry {
    fn start(dir: &Path, auth_yaml: &str) -> Registry {
        let addr = format!("127.0.0.1:{}", free_port());
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
                data.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry installed");
        let reg = Registry { child, addr, data };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        reg
    }

    fn push(&self, layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--all", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{dest}", self.addr));
        run(&mut cmd);
    }

    fn client(&self) -> RegistryClient {
        let mut config = RegistryConfig::default();
        config.insecure.insert(self.addr.clone());
        RegistryClient::new(config).unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn multi_layout(dir: &Path) -> PathBuf {
    let lay = dir.join("layout");
    let d = write_image(&lay, &multi_layer_image(), "amd64");
    write_layout(&lay, vec![(d, "1")]);
    lay
}

fn store(dir: &Path, name: &str) -> Arc<ImageStore> {
    Arc::new(ImageStore::open(dir.join(name)).unwrap())
}

fn assert_empty(store: &ImageStore) {
    let du = store.disk_usage().unwrap();
    assert_eq!((du.images, du.blobs, du.snapshots), (0, 0, 0), "{du:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_pull_with_progress_cache_and_digest_refs() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), "");
    reg.push(&multi_layout(t.path()), "1", "test/multi:1", None);
    let client = reg.client();
    let s = store(t.path(), "store");
    let reference = format!("{}/test/multi:1", reg.addr);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = PullOptions {
        progress: Some(tx),
        ..Default::default()
    };
    let img = registry::pull(&s, &client, &reference, &opts)
        .await
        .unwrap();
    drop(opts);
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e);
    }
    assert_eq!(img.repo_tags[0].to_string(), reference);
    assert_eq!(img.layers.len(), 3);
    assert_eq!(img.config.config.working_dir.as_deref(), Some("/work"));
    assert!(img.repo_digests[0].starts_with(&format!("{}/test/multi@sha256:", reg.addr)));
    let Some(PullEvent::Resolved { layers, .. }) = events.first() else {
        panic!("{events:?}")
    };
    assert_eq!(layers.len(), 3);
    for (digest, size) in layers {
        let last = events
            .iter()
            .rev()
            .filter_map(|e| match e {
                PullEvent::LayerProgress {
                    digest: d,
                    downloaded,
                    total,
                } if d == digest => Some((*downloaded, *total)),
                _ => None,
            })
            .next();
        assert_eq!(last, Some((*size, *size)), "progress of {digest}");
        assert!(events.contains(&PullEvent::LayerUnpacked {
            digest: digest.clone()
        }));
    }
    assert_eq!(
        events.last(),
        Some(&PullEvent::Done {
            id: img.id.to_string()
        })
    );
    let flat = t.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    s.unpack_flat(&reference, &flat).unwrap();
    assert_eq!(
        std::fs::read(flat.join("etc/hostname")).unwrap(),
        b"changed\n"
    );
    assert!(!flat.join("etc/gone").exists());

    // Again: nothing downloaded.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let again = registry::pull(
        &s,
        &client,
        &reference,
        &PullOptions {
            progress: Some(tx),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(again.id, img.id);
    let mut cached = 0;
    while let Some(e) = rx.recv().await {
        assert!(!matches!(e, PullEvent::LayerProgress { .. }), "{e:?}");
        cached += matches!(e, PullEvent::LayerCached { .. }) as usize;
    }
    assert_eq!(cached, 3);
    // By digest, into a fresh store.
    let s2 = store(t.path(), "store2");
    let by_digest = format!("{}/test/multi@{}", reg.addr, img.digest);
    let img2 = registry::pull(&s2, &client, &by_digest, &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(img2.id, img.id);
    assert!(img2.repo_tags.is_empty());
    // Unknown tag: a clear not-found, nothing stored.
    let s3 = store(t.path(), "store3");
    let err = registry::pull(
        &s3,
        &client,
        &format!("{}/test/multi:nope", reg.addr),
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::ImageNotFound(_)), "{err}");
    assert_empty(&s3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_with_two_platforms() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), "");
    let lay = t.path().join("layout");
    let amd = write_image(
        &lay,
        &[Blob::gzip(Layer::new().file("arch", b"amd64"))],
        "amd64",
    );
    let arm = write_image(
        &lay,
        &[Blob::gzip(Layer::new().file("arch", b"arm64"))],
        "arm64",
    );
    let index = write_index(&lay, vec![amd, arm]);
    write_layout(&lay, vec![(index, "multi")]);
    reg.push(&lay, "multi", "test/plat:1", None);
    let client = reg.client();
    let reference = format!("{}/test/plat:1", reg.addr);
    for (platform, arch) in [("linux/amd64", "amd64"), ("linux/arm64", "arm64")] {
        let s = store(t.path(), arch);
        let opts = PullOptions {
            platform: Platform::parse(platform),
            ..Default::default()
        };
        let img = registry::pull(&s, &client, &reference, &opts)
            .await
            .unwrap();
        assert_eq!(img.config.architecture, arch);
        assert_eq!(
            std::fs::read(img.layers[0].join("arch")).unwrap(),
            arch.as_bytes()
        );
    }
    let s = store(t.path(), "s390x");
    let opts = PullOptions {
        platform: Platform::parse("linux/s390x"),
        ..Default::default()
    };
    let err = registry::pull(&s, &client, &reference, &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::NoMatchingPlatform { .. }),
        "{err}"
    );
    assert_empty(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_and_insecure_policy_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), "");
    reg.push(&multi_layout(t.path()), "1", "test/multi:1", None);
    // Plain HTTP to a registry not listed as insecure is refused.
    let s = store(t.path(), "store");
    let strict = RegistryClient::new(RegistryConfig::default()).unwrap();
    let mut endpoints = RegistryConfig::default();
    endpoints
        .endpoints
        .insert(reg.addr.clone(), format!("http://{}", reg.addr));
    let pinned = RegistryClient::new(endpoints).unwrap();
    let reference = format!("{}/test/multi:1", reg.addr);
    for c in [&strict, &pinned] {
        let err = registry::pull(&s, c, &reference, &PullOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::InsecureNotAllowed(_) | ImageError::Registry { .. }
            ),
            "{err}"
        );
    }
    assert_empty(&s);

    // Flip bytes of the biggest layer blob inside the registry's storage.
    let mut blobs = Vec::new();
    for e in walk(&reg.data) {
        if e.file_name().is_some_and(|n| n == "data") {
            blobs.push((std::fs::metadata(&e).unwrap().len(), e));
        }
    }
    blobs.sort();
    let (_, victim) = blobs.last().unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(victim, bytes).unwrap();
    let err = registry::pull(&s, &reg.client(), &reference, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_empty(&s);
    assert_eq!(
        std::fs::read_dir(s.root().join("ingest")).unwrap().count(),
        0
    );
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_registry() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("reg");
    std::fs::create_dir_all(&dir).unwrap();
    let htpasswd = run(Command::new("htpasswd").args(["-Bbn", "bob", "pw"]));
    std::fs::write(dir.join("htpasswd"), htpasswd).unwrap();
    let reg = Registry::start(
        &dir,
        &format!(
            "auth:\n  htpasswd:\n    realm: wharf-test\n    path: {}\n",
            dir.join("htpasswd").display()
        ),
    );
    reg.push(&multi_layout(t.path()), "1", "test/multi:1", Some("bob:pw"));
    let reference = format!("{}/test/multi:1", reg.addr);
    let s = store(t.path(), "store");
    let err = registry::pull(&s, &reg.client(), &reference, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    let bad = PullOptions {
        credentials: Some(RegistryAuth::Basic {
            username: "bob".into(),
            password: "no".into(),
        }),
        ..Default::default()
    };
    let err = registry::pull(&s, &reg.client(), &reference, &bad)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert_empty(&s);
    // Credentials from a Docker config.json.
    let cfg = t.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw");
    std::fs::write(
        &cfg,
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let mut config = RegistryConfig::default();
    config.insecure.insert(reg.addr.clone());
    config.credentials = registry::load_docker_config(&cfg).unwrap();
    let img = registry::pull(
        &s,
        &RegistryClient::new(config).unwrap(),
        &reference,
        &PullOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(img.layers.len(), 3);
}

/// A token server: checks Basic credentials alice:secret, answers RS256 JWTs that carry the
/// signing certificate in `x5c` (the registry trusts that certificate).
async fn token_server(dir: &Path, service: &str) -> (String, tokio::task::JoinHandle<()>) {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=wharf-test-token",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap()
        .stdout;
    let x5c = base64::engine::general_purpose::STANDARD.encode(der);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    let service = service.to_string();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::get(move |headers: axum::http::HeaderMap, axum::extract::RawQuery(q): axum::extract::RawQuery| {
            let (key, x5c, service) = (key.clone(), x5c.clone(), service.clone());
            async move {
                let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:secret"));
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
                    return (axum::http::StatusCode::UNAUTHORIZED, String::from(r#"{"details":"bad credentials"}"#));
                }
                let q = q.unwrap_or_default();
                let mut access = Vec::new();
                for pair in q.split('&') {
                    if let Some(scope) = pair.strip_prefix("scope=") {
                        let scope = scope.replace("%3A", ":").replace("%2C", ",").replace("%2F", "/");
                        let parts: Vec<&str> = scope.splitn(3, ':').collect();
                        if parts.len() == 3 {
                            access.push(serde_json::json!({"type": parts[0], "name": parts[1], "actions": parts[2].split(',').collect::<Vec<_>>()}));
                        }
                    }
                }
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
                let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
                let claims = serde_json::json!({"iss": "wharf-test-issuer", "sub": "alice", "aud": service, "exp": now + 600, "nbf": now - 60, "iat": now, "jti": format!("{now}-{}", q.len()), "access": access});
                let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
                let mut child = Command::new("openssl").args(["dgst", "-sha256", "-sign"]).arg(&key).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
                use std::io::Write;
                child.stdin.take().unwrap().write_all(signing_input.as_bytes()).unwrap();
                let sig = child.wait_with_output().unwrap().stdout;
                let token = format!("{signing_input}.{}", b64(&sig));
                (axum::http::StatusCode::OK, serde_json::json!({"token": token, "expires_in": 600}).to_string())
            }
        }),
    );
    let handle = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (realm, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_registry() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("reg");
    std::fs::create_dir_all(&dir).unwrap();
    let (realm, server) = token_server(&dir, "wharf-test-registry").await;
    let reg = Registry::start(
        &dir,
        &format!(
            "auth:\n  token:\n    realm: {realm}\n    service: wharf-test-registry\n    issuer: wharf-test-issuer\n    rootcertbundle: {}\n",
            dir.join("cert.pem").display()
        ),
    );
    let lay = multi_layout(t.path());
    tokio::task::spawn_blocking({
        let addr = reg.addr.clone();
        move || {
            run(Command::new("skopeo")
                .args([
                    "copy",
                    "--dest-tls-verify=false",
                    "--dest-creds",
                    "alice:secret",
                ])
                .arg(format!("oci:{}:1", lay.display()))
                .arg(format!("docker://{addr}/private/multi:1")));
        }
    })
    .await
    .unwrap();
    let reference = format!("{}/private/multi:1", reg.addr);
    let s = store(t.path(), "store");
    let err = registry::pull(&s, &reg.client(), &reference, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert_empty(&s);
    let opts = PullOptions {
        credentials: Some(RegistryAuth::Basic {
            username: "alice".into(),
            password: "secret".into(),
        }),
        ..Default::default()
    };
    let img = registry::pull(&s, &reg.client(), &reference, &opts)
        .await
        .unwrap();
    assert_eq!(img.layers.len(), 3);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_service_trait() {
    use wharf_core::backend::image::{ImageService, PullOptions as TraitPull};
    use wharf_core::backend::runtime::RootFs;
    use wharf_core::backend::ErrorKind;

    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), "");
    reg.push(&multi_layout(t.path()), "1", "test/multi:1", None);
    let mut config = RegistryConfig::default();
    config.insecure.insert(reg.addr.clone());
    let svc = wharf_image::ImageStoreService::new(store(t.path(), "store"), config).unwrap();
    let reference = format!("{}/test/multi:1", reg.addr);
    let bad = TraitPull {
        platform: Some("amd64".into()),
        ..Default::default()
    };
    assert_eq!(
        svc.pull(&reference, &bad).await.unwrap_err().kind,
        ErrorKind::InvalidArgument
    );
    let info = svc.pull(&reference, &TraitPull::default()).await.unwrap();
    assert_eq!(info.config.entrypoint, ["/bin/busybox"]);
    assert_eq!(info.config.exposed_ports, ["8080/tcp"]);
    assert_eq!(info.config.stop_signal.as_deref(), Some("SIGQUIT"));
    assert!(
        matches!(&info.rootfs, RootFs::Layers(l) if l.len() == 3 && l.iter().all(|p| p.is_dir()))
    );
    assert!(info.size > 1_000_000, "{}", info.size);
    assert_eq!(
        svc.image_status(&info.id).await.unwrap(),
        Some(info.clone())
    );
    assert_eq!(svc.list_images().await.unwrap(), vec![info.clone()]);
    assert_eq!(svc.image_status("nothing:here").await.unwrap(), None);

    svc.store().lease("ctr-1", &reference).unwrap();
    let err = svc.remove_image(&reference, false).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FailedPrecondition);
    svc.store().release("ctr-1").unwrap();
    svc.remove_image(&reference, false).await.unwrap();
    svc.remove_image(&reference, false).await.unwrap(); // absent: fine
    assert!(svc.list_images().await.unwrap().is_empty());
    assert_empty(svc.store());
    let missing = svc
        .pull(&format!("{}/test/none:1", reg.addr), &TraitPull::default())
        .await
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
}

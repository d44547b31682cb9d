//! RUN steps executed by the native runtime (`wharf-runtime-linux`): the layer a RUN makes
//! (files, whiteouts, no mount-point residue), ENV/ARG/WORKDIR/USER seen by the process,
//! the cache, failures naming the line, multi-stage builds with `COPY --from`, and that
//! nothing is left behind. Needs root, `/bin/busybox` (busybox-static) and `wharf-runc`
//! (built on demand).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use wharf_core::backend::runtime::ContainerRuntime;
use wharf_image::build::{build_with_runtime, BuildOptions, Built};
use wharf_image::store::ImageStore;
use wharf_image::ImageError;
use wharf_runtime_linux::{LinuxRuntime, LinuxRuntimeOptions};

/// The `wharf-runc` monitor binary, built into this target directory when missing.
fn monitor_binary() -> PathBuf {
    let found = wharf_runtime_linux::client::find_binary();
    if found.is_file() {
        return found;
    }
    // target/<profile>/deps/<test> → target
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap();
    let target = profile.parent().unwrap();
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "wharf-runtime-linux", "--bin", "wharf-runc"])
        .arg("--target-dir")
        .arg(target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building wharf-runc failed");
    let built = profile.join("wharf-runc");
    assert!(built.is_file(), "{} missing after build", built.display());
    built
}

struct Env {
    dir: tempfile::TempDir,
    store: Arc<ImageStore>,
    runtime: Option<Arc<LinuxRuntime>>,
}

impl Env {
    async fn new() -> Env {
        assert!(
            Path::new("/bin/busybox").is_file(),
            "/bin/busybox missing: apt-get install busybox-static"
        );
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ImageStore::open(dir.path().join("store")).unwrap());
        let runtime = LinuxRuntime::new(LinuxRuntimeOptions {
            root: dir.path().join("runtime"),
            monitor_binary: monitor_binary(),
            ..Default::default()
        })
        .await
        .unwrap();
        Env {
            dir,
            store,
            runtime: Some(Arc::new(runtime)),
        }
    }

    /// A context directory holding the host's busybox and `dockerfile`.
    fn context(&self, name: &str, dockerfile: &str) -> PathBuf {
        let ctx = self.dir.path().join(name);
        fs::create_dir_all(&ctx).unwrap();
        fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        ctx
    }

    async fn build(&self, opts: BuildOptions) -> Result<Built, ImageError> {
        let rt: Arc<dyn ContainerRuntime> = self.runtime.clone().unwrap();
        build_with_runtime(self.store.clone(), opts, rt).await
    }

    async fn busybox(&self) {
        let ctx = self.context(
            "busybox",
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"sh\"]\n",
        );
        let built = self
            .build(BuildOptions {
                context: ctx,
                tags: vec!["localhost/busybox:run".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(built.layers_built, 2);
        let install = layer_entries(&self.store, &built, 1);
        assert!(
            install
                .iter()
                .any(|e| e.path == "bin/sh" && e.link == "/bin/busybox"),
            "exec-form RUN installed no /bin/sh: {install:?}"
        );
    }

    /// Stops the runtime and checks nothing is left: sandboxes, scratch files, mounts.
    async fn finish(mut self) {
        let rt = self.runtime.take().unwrap();
        let sandboxes = rt.list_sandboxes().await.unwrap();
        let rt = Arc::into_inner(rt).expect("no other runtime handle");
        rt.shutdown().await;
        assert!(sandboxes.is_empty(), "sandboxes left: {sandboxes:?}");
        let tmp = self.dir.path().join("store/tmp");
        let left: Vec<_> = fs::read_dir(&tmp)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "scratch left in the store: {left:?}");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = self.dir.path().to_string_lossy().into_owned();
        assert!(!mounts.contains(&dir), "mounts left under {dir}:\n{mounts}");
    }
}

#[derive(Debug)]
struct Entry {
    path: String,
    kind: tar::EntryType,
    link: String,
    data: Vec<u8>,
}

/// The entries of layer `index` of a built image, read from its blob.
fn layer_entries(store: &ImageStore, built: &Built, index: usize) -> Vec<Entry> {
    let layer = &built.image.manifest.layers[index];
    let blob = store.blobs().open_blob(&layer.digest).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            Entry {
                path: e
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string(),
                kind: e.header().entry_type(),
                link: e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                data,
            }
        })
        .collect()
}

fn find<'a>(entries: &'a [Entry], path: &str) -> Option<&'a Entry> {
    entries.iter().find(|e| e.path == path)
}

const RUN_DOCKERFILE: &str = "FROM localhost/busybox:run
ARG GREETING=hi
ENV WHO=world
WORKDIR /work
RUN echo $GREETING $WHO > /hello && pwd > where && rm /bin/true && mkdir -m 777 /shared
USER 1000:1001
RUN id -u > /shared/uid && id -g >> /shared/uid
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_makes_a_layer_with_whiteouts_and_hits_the_cache() {
    let env = Env::new().await;
    env.busybox().await;
    let ctx = env.context("run", RUN_DOCKERFILE);
    let opts = BuildOptions {
        context: ctx,
        tags: vec!["localhost/run:1".into()],
        ..Default::default()
    };
    let first = env.build(opts.clone()).await.unwrap();
    assert_eq!((first.layers_built, first.layers_cached), (2, 0));
    // busybox, --install, the two RUNs
    assert_eq!(first.image.manifest.layers.len(), 4);

    let run = layer_entries(&env.store, &first, 2);
    let hello = find(&run, "hello").expect("/hello in the RUN layer");
    assert_eq!(hello.data, b"hi world\n");
    assert_eq!(find(&run, "work/where").unwrap().data, b"/work\n");
    let wh = find(&run, "bin/.wh.true").expect("whiteout for the deleted /bin/true");
    assert_eq!(wh.kind, tar::EntryType::Regular);
    for residue in ["proc", "sys", "dev", "etc", "etc/hosts", "etc/resolv.conf"] {
        assert!(
            find(&run, residue).is_none(),
            "mount point {residue} leaked into the layer: {run:?}"
        );
    }
    let user = layer_entries(&env.store, &first, 3);
    assert_eq!(find(&user, "shared/uid").unwrap().data, b"1000\n1001\n");

    // The image's filesystem: the deleted file is gone, the new ones are there.
    let flat = env.dir.path().join("flat");
    fs::create_dir(&flat).unwrap();
    env.store.unpack_flat("localhost/run:1", &flat).unwrap();
    assert!(fs::symlink_metadata(flat.join("bin/true")).is_err());
    assert!(fs::symlink_metadata(flat.join("bin/false")).is_ok());
    assert_eq!(fs::read(flat.join("hello")).unwrap(), b"hi world\n");

    // Same inputs: every layer from the cache, the same image.
    let again = env.build(opts.clone()).await.unwrap();
    assert_eq!((again.layers_built, again.layers_cached), (0, 2));
    assert_eq!(again.image.manifest.layers, first.image.manifest.layers);

    // A build argument the RUN sees changes its key: it runs again, and so does the next.
    let changed = env
        .build(BuildOptions {
            build_args: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
            ..opts
        })
        .await
        .unwrap();
    assert_eq!((changed.layers_built, changed.layers_cached), (2, 0));
    let run = layer_entries(&env.store, &changed, 2);
    assert_eq!(find(&run, "hello").unwrap().data, b"hello world\n");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_run_names_its_line_exit_code_and_output() {
    let env = Env::new().await;
    env.busybox().await;
    let ctx = env.context(
        "fail",
        "FROM localhost/busybox:run\nENV A=1\nRUN echo first-line && echo boom-output >&2 && exit 3\n",
    );
    let err = env
        .build(BuildOptions {
            context: ctx.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ImageError::Dockerfile { line: 3, .. }),
        "{msg}"
    );
    assert!(msg.contains("exited with code 3"), "{msg}");
    assert!(
        msg.contains("boom-output") && msg.contains("first-line"),
        "{msg}"
    );
    assert!(
        msg.contains(&ctx.join("Dockerfile").display().to_string()),
        "{msg}"
    );
    env.finish().await;
}

const MULTI_STAGE: &str = "FROM localhost/busybox:run AS builder
RUN mkdir -p /out && echo built > /out/artifact && ln -s /out/artifact /out/link
FROM scratch AS plain
COPY --from=builder /out/artifact /a
FROM builder AS extended
RUN echo more > /out/more
FROM scratch
COPY --from=builder /out/link /by-name
COPY --from=1 /a /by-index
COPY --from=extended /out/more /more
COPY --from=localhost/busybox:run /bin/busybox /bin/busybox
CMD [\"/bin/busybox\", \"true\"]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_stage_copies_from_stages_and_images() {
    let env = Env::new().await;
    env.busybox().await;
    let ctx = env.context("multi", MULTI_STAGE);
    let built = env
        .build(BuildOptions {
            context: ctx.clone(),
            tags: vec!["localhost/multi:1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    // Only the last stage's layers make the image.
    assert_eq!(built.image.manifest.layers.len(), 4);
    let flat = env.dir.path().join("flat");
    fs::create_dir(&flat).unwrap();
    env.store.unpack_flat("localhost/multi:1", &flat).unwrap();
    // A symlink source is followed inside the stage's root, not on the host.
    assert_eq!(fs::read(flat.join("by-name")).unwrap(), b"built\n");
    assert_eq!(fs::read(flat.join("by-index")).unwrap(), b"built\n");
    assert_eq!(fs::read(flat.join("more")).unwrap(), b"more\n");
    assert!(flat.join("bin/busybox").is_file());
    assert!(!flat.join("out").exists());

    // A target stops at its stage: busybox's two layers plus the builder's RUN.
    let target = env
        .build(BuildOptions {
            context: ctx.clone(),
            target: Some("builder".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(target.image.manifest.layers.len(), 3);
    assert_eq!(target.layers_built, 0, "the builder stage is cached");

    let missing = env
        .build(BuildOptions {
            context: ctx,
            target: Some("nope".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("\"nope\""), "{missing}");
    env.finish().await;
}

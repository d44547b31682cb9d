//! Pull + unpack of a 5-layer, ~50 MB image from a loopback registry: Wharf against
//! `skopeo copy` + `umoci unpack`, in the same run, on the same registry.
//!
//! Run (as root, with docker-registry, skopeo and umoci installed):
//!     cargo bench -p wharf-image --bench pull
//! Each sample starts from an empty store / empty directories; the clean-up is not timed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{run, write_image, write_layout, Blob, Layer};
use criterion::{criterion_group, criterion_main, Criterion};
use wharf_image::registry::{self, PullOptions, RegistryClient, RegistryConfig};
use wharf_image::ImageStore;

struct Registry {
    child: Child,
    addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &std::path::Path) -> Registry {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "registry did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Registry { child, addr }
}

/// Deterministic filler: half incompressible, half text-like, as real layers are.
fn layer(seed: u64, files: usize, file_size: usize) -> Blob {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut l = Layer::new();
    l.dir(&format!("data{seed}"));
    for i in 0..files {
        let data: Vec<u8> = if i % 2 == 0 {
            (0..file_size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        } else {
            format!("line {i} of layer {seed}: the quick brown fox jumps over the lazy dog\n")
                .repeat(file_size / 60)
                .into_bytes()
        };
        l.file(&format!("data{seed}/f{i}"), &data);
    }
    Blob::gzip(&mut l)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let work = tempfile::tempdir().unwrap();
    let lay = work.path().join("layout");
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut base = Layer::new();
    base.dir("bin")
        .file_with("bin/busybox", &busybox, 0o755, 0, 0);
    let mut layers = vec![Blob::gzip(&mut base)];
    layers.extend((1..5).map(|s| layer(s, 500, 48 * 1024)));
    let total: usize = layers.iter().map(|b| b.bytes.len()).sum();
    let desc = write_image(&lay, &layers, "amd64");
    write_layout(&lay, vec![(desc, "bench")]);
    let reg_dir = work.path().join("registry");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let reg = start_registry(&reg_dir);
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:bench", lay.display()))
        .arg(format!("docker://{}/bench/image:1", reg.addr)));
    let reference = format!("{}/bench/image:1", reg.addr);
    eprintln!("image: 5 layers, {:.1} MB compressed", total as f64 / 1e6);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = RegistryConfig::default();
    config.insecure.insert(reg.addr.clone());
    let client = Arc::new(RegistryClient::new(config).unwrap());
    let wharf_times = Arc::new(Mutex::new(Vec::new()));
    let peer_times = Arc::new(Mutex::new(Vec::new()));

    let mut g = c.benchmark_group("pull_unpack_5_layers");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("wharf", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir_in(work.path()).unwrap();
                let store = Arc::new(ImageStore::open(dir.path()).unwrap());
                let start = Instant::now();
                rt.block_on(registry::pull(
                    &store,
                    &client,
                    &reference,
                    &PullOptions::default(),
                ))
                .unwrap();
                let t = start.elapsed();
                wharf_times.lock().unwrap().push(t);
                total += t;
            }
            total
        })
    });
    g.bench_function("skopeo_copy+umoci_unpack", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir_in(work.path()).unwrap();
                let oci = dir.path().join("oci");
                let start = Instant::now();
                run(Command::new("skopeo")
                    .args(["copy", "--src-tls-verify=false"])
                    .arg(format!("docker://{reference}"))
                    .arg(format!("oci:{}:bench", oci.display())));
                run(Command::new("umoci")
                    .args(["unpack", "--image"])
                    .arg(format!("{}:bench", oci.display()))
                    .arg(dir.path().join("bundle")));
                let t = start.elapsed();
                peer_times.lock().unwrap().push(t);
                total += t;
            }
            total
        })
    });
    g.finish();
    let w = median(&mut wharf_times.lock().unwrap());
    let p = median(&mut peer_times.lock().unwrap());
    eprintln!(
        "pull+unpack median: wharf {:.1} ms, skopeo+umoci {:.1} ms, ratio (peer/wharf) {:.2}x",
        w.as_secs_f64() * 1e3,
        p.as_secs_f64() * 1e3,
        p.as_secs_f64() / w.as_secs_f64()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);

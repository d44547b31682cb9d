//! One volume's whole life on a node, over the CSI socket: CreateVolume, NodeStage,
//! NodePublish, NodeUnpublish, NodeUnstage, DeleteVolume.
//!
//! - `wharf/grpc+mounts`: Wharf's client driving the built-in hostpath driver over its unix
//!   socket, with real bind mounts (root).
//! - `peer/mount-binaries`: the same filesystem work done the way Kubernetes' hostpath
//!   driver does it (it execs `mount`/`umount` through k8s mount-utils): mkdir, two
//!   `mount --bind`, two `umount`, rm. This is the peer's floor: its gRPC and state
//!   handling come on top.
//! - `wharf/grpc-only`: the client and driver with recorded mounts: protocol, state file
//!   and bookkeeping without the kernel's mount cost.
//!
//! After criterion, a paired run (alternating, 30 rounds) prints median times and the
//! wharf/peer ratio.
//!
//! Run: `cargo bench -p wharf-storage-csi --bench volume_cycle` (as root for the real mounts).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use wharf_core::backend::volume::{
    AccessMode, AccessType, CapacityRange, CreateVolumeRequest, NodePublishRequest,
    NodeStageRequest, StringMap, VolumeCapability,
};
use wharf_core::backend::VolumePlugin;
use wharf_storage_csi::mount::{LinuxMounter, Mounter, RecordedMounts};
use wharf_storage_csi::server::RunningDriver;
use wharf_storage_csi::{ClientOptions, CsiPlugin, HostPathConfig, HostPathDriver};

struct Setup {
    _dir: tempfile::TempDir,
    base: PathBuf,
    csi: CsiPlugin,
    _running: RunningDriver,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn setup(rt: &tokio::runtime::Runtime, mounter: Arc<dyn Mounter>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let config = HostPathConfig::new("bench-node", base.join("driver"))
        .unwrap()
        .with_capacity(1 << 40);
    let driver = HostPathDriver::with_mounter(config, mounter).unwrap();
    let (running, csi) = rt.block_on(async {
        let running = RunningDriver::spawn(driver, base.join("csi.sock")).unwrap();
        let endpoint = format!("unix://{}", base.join("csi.sock").display());
        let csi = CsiPlugin::connect(&endpoint, ClientOptions::default())
            .await
            .unwrap();
        (running, csi)
    });
    Setup {
        _dir: dir,
        base,
        csi,
        _running: running,
    }
}

fn cap() -> VolumeCapability {
    VolumeCapability {
        access_type: AccessType::Mount {
            fs_type: String::new(),
            mount_flags: vec![],
        },
        access_mode: AccessMode::SingleNodeWriter,
    }
}

async fn wharf_cycle(s: &Setup, n: u64) {
    let csi = &s.csi;
    let volume = csi
        .create_volume(&CreateVolumeRequest {
            name: format!("pvc-{n}"),
            capacity: CapacityRange {
                required_bytes: 1 << 20,
                limit_bytes: 0,
            },
            capabilities: vec![cap()],
            ..Default::default()
        })
        .await
        .unwrap();
    let id = volume.volume_id;
    let staging = s.base.join("staging").join(&id);
    let target = s.base.join("pod").join("vol");
    std::fs::create_dir_all(s.base.join("pod")).unwrap();
    csi.node_stage(&NodeStageRequest {
        volume_id: id.clone(),
        publish_context: StringMap::new(),
        staging_path: staging.clone(),
        capability: cap(),
        secrets: StringMap::new(),
        volume_context: StringMap::new(),
    })
    .await
    .unwrap();
    csi.node_publish(&NodePublishRequest {
        volume_id: id.clone(),
        publish_context: StringMap::new(),
        staging_path: Some(staging.clone()),
        target_path: target.clone(),
        capability: cap(),
        readonly: false,
        secrets: StringMap::new(),
        volume_context: StringMap::new(),
    })
    .await
    .unwrap();
    csi.node_unpublish(&id, &target).await.unwrap();
    csi.node_unstage(&id, &staging).await.unwrap();
    csi.delete_volume(&id, &StringMap::new()).await.unwrap();
}

fn run(cmd: &str, args: &[&Path]) {
    let status = Command::new(cmd).args(args).status().unwrap();
    assert!(status.success(), "{cmd} {args:?}");
}

fn peer_cycle(base: &Path, n: u64) {
    let vol = base.join("peer-volumes").join(n.to_string());
    let staging = base.join("peer-staging").join(n.to_string());
    let target = base.join("peer-pod");
    for d in [&vol, &staging, &target] {
        std::fs::create_dir_all(d).unwrap();
    }
    run("mount", &[Path::new("--bind"), &vol, &staging]);
    run("mount", &[Path::new("--bind"), &staging, &target]);
    run("umount", &[&target]);
    run("umount", &[&staging]);
    std::fs::remove_dir(&target).unwrap();
    std::fs::remove_dir(&staging).unwrap();
    std::fs::remove_dir_all(&vol).unwrap();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("csi_volume_cycle");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));

    let recorded = setup(&rt, Arc::new(RecordedMounts::new()));
    let mut n = 0u64;
    group.bench_function("wharf/grpc-only", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(wharf_cycle(&recorded, n))
        })
    });

    if is_root() {
        let real = setup(&rt, Arc::new(LinuxMounter));
        group.bench_function("wharf/grpc+mounts", |b| {
            b.iter(|| {
                n += 1;
                rt.block_on(wharf_cycle(&real, n))
            })
        });
        let base = real.base.clone();
        group.bench_function("peer/mount-binaries", |b| {
            b.iter(|| {
                n += 1;
                peer_cycle(&base, n)
            })
        });
        group.finish();

        // Paired comparison: alternate the two so machine noise hits both alike.
        let (mut ours, mut peer) = (Vec::new(), Vec::new());
        for _ in 0..30 {
            n += 1;
            let t = Instant::now();
            rt.block_on(wharf_cycle(&real, n));
            ours.push(t.elapsed());
            n += 1;
            let t = Instant::now();
            peer_cycle(&base, n);
            peer.push(t.elapsed());
        }
        let (ours, peer) = (median(ours), median(peer));
        println!(
            "paired medians over 30 rounds: wharf grpc+mounts {:.3} ms, peer mount binaries {:.3} ms, ratio wharf/peer {:.3}",
            ours.as_secs_f64() * 1e3,
            peer.as_secs_f64() * 1e3,
            ours.as_secs_f64() / peer.as_secs_f64()
        );
    } else {
        group.finish();
        println!("not root: real-mount and peer benchmarks skipped");
    }
}

criterion_group!(volume_cycle, benches);

fn main() {
    volume_cycle();
    Criterion::default().configure_from_args().final_summary();
}

//! `/bin/true` in a busybox container, run to completion (create, start, wait, delete):
//! through the library (`LinuxRuntime`), through `wharf-runc run`, `runc run` and
//! `crun run`, on the same bundle in the same run. Prints medians and ratios.
//!
//! crun 1.8 refuses this host's hybrid cgroups unless cgroup2's controller list reads
//! empty, so the benchmark re-executes itself in a private mount namespace where that
//! file is covered by /dev/null (what `shared/tools/hybrid-ns.sh` does); every runtime
//! runs in that same namespace. Needs root.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use futures::StreamExt;
use wharf_core::backend::runtime::{
    ContainerConfig, ContainerImage, ContainerRuntime, RootFs, RuntimeEventKind, SandboxConfig,
};
use wharf_runtime_linux::{LinuxRuntime, LinuxRuntimeOptions};

const CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

fn reexec_in_private_ns() {
    let nonempty = std::fs::read_to_string(CONTROLLERS)
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
    if !nonempty || std::env::var_os("WHARF_BENCH_NS").is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!("mount --bind /dev/null {CONTROLLERS} && exec \"$0\" \"$@\""),
        ])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("WHARF_BENCH_NS", "1")
        .status()
        .unwrap();
    std::process::exit(status.code().unwrap_or(1));
}

fn cli_run(program: &str, root: &Path, bundle: &Path, id: &str) -> Duration {
    let t = Instant::now();
    let st = Command::new(program)
        .arg("--root")
        .arg(root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let d = t.elapsed();
    assert!(st.success(), "{program} run failed: {st}");
    d
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    reexec_in_private_ns();
    let work = common::TempDir::new("bench");
    let rootfs = work.path().join("rootfs");
    common::busybox_rootfs(&rootfs);
    let bundle = work.path().join("bundle");
    common::write_bundle(&bundle, &common::spec(&rootfs, &["/bin/true"]));
    // WHARF_BENCH_RUNC: another build's binary (to compare two builds side by side).
    let wharf_runc: PathBuf = std::env::var_os("WHARF_BENCH_RUNC")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_wharf-runc").into());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lib_root = work.path().join("lib");
    let runtime = rt
        .block_on(LinuxRuntime::new(LinuxRuntimeOptions {
            root: lib_root,
            monitor_binary: wharf_runc.clone(),
            ..Default::default()
        }))
        .unwrap();
    let sandbox = rt
        .block_on(runtime.run_sandbox(&SandboxConfig {
            name: "bench".into(),
            hostname: "bench".into(),
            ..Default::default()
        }))
        .unwrap();
    let config = ContainerConfig {
        name: "true".into(),
        image: Some(ContainerImage {
            reference: "busybox".into(),
            id: "busybox".into(),
            rootfs: RootFs::Directory(rootfs.clone()),
        }),
        command: vec!["/bin/true".into()],
        ..Default::default()
    };
    // One library lifecycle; returns the time of each phase (create, start, exit event,
    // remove).
    let lib_phases = || {
        rt.block_on(async {
            let mut events = runtime.events();
            let t0 = Instant::now();
            let id = runtime.create_container(&sandbox, &config).await.unwrap();
            let t1 = Instant::now();
            runtime.start_container(&id).await.unwrap();
            let t2 = Instant::now();
            while let Some(ev) = events.next().await {
                if ev.container_id == id && matches!(ev.kind, RuntimeEventKind::Exited { .. }) {
                    break;
                }
            }
            let t3 = Instant::now();
            runtime.remove_container(&id).await.unwrap();
            let t4 = Instant::now();
            [t1 - t0, t2 - t1, t3 - t2, t4 - t3]
        })
    };
    let lib_once = || lib_phases().iter().sum::<Duration>();

    let roots: Vec<(&str, PathBuf)> = ["wharf-runc", "runc", "crun"]
        .iter()
        .map(|n| (*n, work.path().join(format!("root-{n}"))))
        .collect();
    let program = |name: &str| {
        if name == "wharf-runc" {
            wharf_runc.display().to_string()
        } else {
            name.to_string()
        }
    };
    let mut n = 0u64;
    let mut next_id = || {
        n += 1;
        format!("b{}-{n}", std::process::id())
    };

    // Paired samples, alternating runtimes, so machine noise hits all alike.
    let runs: usize = std::env::var("WHARF_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut samples: Vec<(&str, Vec<Duration>)> = vec![
        ("library", vec![]),
        ("wharf-runc", vec![]),
        ("runc", vec![]),
        ("crun", vec![]),
    ];
    for _ in 0..3 {
        lib_once();
    }
    let mut phases: [Vec<Duration>; 4] = Default::default();
    for _ in 0..runs {
        let p = lib_phases();
        for (v, d) in phases.iter_mut().zip(p) {
            v.push(d);
        }
        samples[0].1.push(p.iter().sum());
        for (i, (name, root)) in roots.iter().enumerate() {
            let id = next_id();
            samples[i + 1]
                .1
                .push(cli_run(&program(name), root, &bundle, &id));
        }
    }
    let med: Vec<(&str, Duration)> = samples.into_iter().map(|(n, v)| (n, median(v))).collect();
    let crun = med[3].1.as_secs_f64();
    println!("\nlifecycle of /bin/true (create, start, wait, delete), {runs} paired runs, median:");
    for (name, d) in &med {
        println!(
            "  {name:<11} {:>8.2} ms   ratio to crun {:.2}",
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() / crun
        );
    }

    print!("  library phases (median):");
    for (name, v) in ["create", "start", "exit event", "remove"]
        .iter()
        .zip(phases)
    {
        print!(" {name} {:.2} ms,", median(v).as_secs_f64() * 1e3);
    }
    println!();
    if std::env::var_os("WHARF_BENCH_SKIP_CRITERION").is_some() {
        rt.block_on(async {
            runtime.remove_sandbox(&sandbox).await.unwrap();
            runtime.shutdown().await;
        });
        return;
    }

    // criterion for the library path (its own statistics).
    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .configure_from_args();
    c.bench_function("library create+start+wait+remove /bin/true", |b| {
        b.iter(lib_once)
    });
    c.bench_function("wharf-runc run /bin/true", |b| {
        b.iter(|| {
            let id = next_id();
            cli_run(&program("wharf-runc"), &roots[0].1, &bundle, &id)
        })
    });
    c.final_summary();
    rt.block_on(async {
        runtime.remove_sandbox(&sandbox).await.unwrap();
        runtime.shutdown().await;
    });
}

//! Root tests of re-adoption after the embedding program dies, and of leaks over many
//! create/start/delete cycles.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::TempDir;
use futures::StreamExt;
use wharf_core::backend::runtime::{
    ContainerConfig, ContainerFilter, ContainerImage, ContainerRuntime, ContainerState, RootFs,
    RuntimeEventKind, SandboxConfig,
};
use wharf_runtime_linux::{LinuxRuntime, LinuxRuntimeOptions};

async fn runtime(root: &Path) -> LinuxRuntime {
    LinuxRuntime::new(LinuxRuntimeOptions {
        root: root.to_path_buf(),
        monitor_binary: env!("CARGO_BIN_EXE_wharf-runc").into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn config(rootfs: &Path, name: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        name: name.into(),
        image: Some(ContainerImage {
            reference: "busybox".into(),
            id: "busybox".into(),
            rootfs: RootFs::Directory(rootfs.to_path_buf()),
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn cgroup_parent(tag: &str) -> String {
    format!("wharf-test/{tag}-{}", std::process::id())
}

/// Removes whatever a failed test left: containers, pins, cgroups.
struct Cleanup {
    root: PathBuf,
    tag: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(engine) = wharf_runtime_linux::Engine::new(self.root.join("containers")) {
            for c in engine.list().unwrap_or_default() {
                let _ = engine.delete(&c.id, true);
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.root.join("sandboxes")) {
            for sb in rd.flatten() {
                for ns in ["net", "ipc", "uts"] {
                    let _ = std::process::Command::new("umount")
                        .arg("-l")
                        .arg(sb.path().join("ns").join(ns))
                        .stderr(std::process::Stdio::null())
                        .status();
                }
            }
        }
        if let Some(pid) = wharf_runtime_linux::monitor::running_pid(&self.root.join("containers"))
        {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let parent = cgroup_parent(&self.tag);
        for ctrl in [
            "memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "blkio", "devices", "unified",
        ] {
            let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(ctrl).join(&parent));
        }
    }
}

/// The embedding program of `readoption_after_sigkill`: starts two containers, reports
/// their ids, and waits to be killed. Runs only when that test starts it.
#[test]
#[ignore = "helper process of readoption_after_sigkill"]
fn readopt_child() {
    let Some(root) = std::env::var_os("WHARF_READOPT_ROOT") else {
        return;
    };
    let root = PathBuf::from(root);
    let rootfs = root.parent().unwrap().join("rootfs");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = runtime(&root).await;
        let sb = r
            .run_sandbox(&SandboxConfig {
                name: "readopt".into(),
                cgroup_parent: Some(cgroup_parent("readopt")),
                ..Default::default()
            })
            .await
            .unwrap();
        let long = r
            .create_container(&sb, &config(&rootfs, "long", &["sleep", "1000"]))
            .await
            .unwrap();
        r.start_container(&long).await.unwrap();
        let short = r
            .create_container(
                &sb,
                &config(&rootfs, "short", &["sh", "-c", "sleep 1; exit 42"]),
            )
            .await
            .unwrap();
        r.start_container(&short).await.unwrap();
        std::fs::write(root.join("ids.tmp"), format!("{sb} {long} {short}")).unwrap();
        std::fs::rename(root.join("ids.tmp"), root.join("ids")).unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn readoption_after_sigkill() {
    let dir = TempDir::new("readopt");
    common::busybox_rootfs(&dir.path().join("rootfs"));
    let root = dir.path().join("state");
    let _cleanup = Cleanup {
        root: root.clone(),
        tag: "readopt".into(),
    };
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "readopt_child", "--nocapture"])
        .env("WHARF_READOPT_ROOT", &root)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ids_file = root.join("ids");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ids_file.exists() {
        assert!(
            Instant::now() < deadline,
            "helper never started its containers"
        );
        assert!(child.try_wait().unwrap().is_none(), "helper died");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids = std::fs::read_to_string(&ids_file).unwrap();
    let ids: Vec<&str> = ids.split(' ').collect();
    let (sb, long, short) = (ids[0], ids[1], ids[2]);
    // The embedding program dies without any cleanup.
    child.kill().unwrap();
    child.wait().unwrap();
    // `short` exits (42) while no program watches.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let r = runtime(&root).await;
    let all = r
        .list_containers(&ContainerFilter {
            sandbox_id: Some(sb.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let find = |id: &str| all.iter().find(|c| c.id == id).unwrap().clone();
    assert_eq!(find(long).state, ContainerState::Running);
    let s = find(short);
    assert_eq!(
        (s.state, s.exit_code),
        (ContainerState::Exited, Some(42)),
        "{s:?}"
    );
    assert_eq!(r.list_sandboxes().await.unwrap().len(), 1);

    r.stop_container(long, Duration::from_millis(200))
        .await
        .unwrap();
    let l = r.container_status(long).await.unwrap();
    assert_eq!((l.state, l.exit_code), (ContainerState::Exited, Some(137)));
    r.remove_sandbox(sb).await.unwrap();
    assert!(r
        .list_containers(&ContainerFilter::default())
        .await
        .unwrap()
        .is_empty());
    r.shutdown().await;
}

/// Mounts in the host namespace that involve `dir` (other programs on the machine mount
/// and unmount concurrently, so only ours are compared).
fn mount_count(dir: &Path) -> usize {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&d))
        .count()
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let ppid: i32 = rest.split(' ').nth(1).unwrap().parse().unwrap();
            if ppid == pid {
                out.push(p);
            }
        }
    }
    out
}

fn tree(p: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            if e.file_type().unwrap().is_dir() {
                out.extend(tree(&e.path()));
            }
        }
    }
    out.sort();
    out
}

fn cgroup_dirs(parent: &str) -> Vec<String> {
    let mut out = Vec::new();
    for ctrl in [
        "memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "blkio", "devices", "unified",
    ] {
        out.extend(
            tree(&Path::new("/sys/fs/cgroup").join(ctrl).join(parent))
                .into_iter()
                .filter(|p| {
                    !p.contains('.') || p.rsplit('/').next().is_some_and(|n| !n.contains('.'))
                }),
        );
    }
    out.retain(|p| Path::new(p).is_dir());
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_cycles_leave_nothing_behind() {
    let dir = TempDir::new("leak");
    let rootfs = dir.path().join("rootfs");
    common::busybox_rootfs(&rootfs);
    let root = dir.path().join("state");
    let _cleanup = Cleanup {
        root: root.clone(),
        tag: "leak".into(),
    };
    let r = runtime(&root).await;
    let parent = cgroup_parent("leak");
    let sb = r
        .run_sandbox(&SandboxConfig {
            name: "leak".into(),
            cgroup_parent: Some(parent.clone()),
            log_directory: Some(dir.path().join("logs")),
            ..Default::default()
        })
        .await
        .unwrap();
    let monitor =
        wharf_runtime_linux::monitor::running_pid(&root.join("containers")).expect("monitor runs");

    let mounts = mount_count(dir.path());
    assert!(mounts > 0, "the sandbox pins its namespaces by mounts");
    let files = tree(&root);
    let cgroups = cgroup_dirs(&parent);
    let mut cfg = config(&rootfs, "cycle", &["/bin/true"]);
    let mut events = r.events();
    let cycles: usize = std::env::var("WHARF_LEAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for i in 0..cycles {
        cfg.log_path = Some(format!("c{i}.log").into());
        let id = r.create_container(&sb, &cfg).await.unwrap();
        r.start_container(&id).await.unwrap();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(30), events.next())
                .await
                .expect("exit event")
                .unwrap();
            if ev.container_id == id
                && matches!(ev.kind, RuntimeEventKind::Exited { exit_code: 0, .. })
            {
                break;
            }
        }
        r.remove_container(&id).await.unwrap();
    }
    assert_eq!(mount_count(dir.path()), mounts, "mounts leaked");
    assert_eq!(tree(&root), files, "files leaked under the runtime root");
    assert_eq!(cgroup_dirs(&parent), cgroups, "cgroups leaked");
    assert!(
        children_of(monitor).is_empty(),
        "processes (or zombies) left: {:?}",
        children_of(monitor)
    );
    r.remove_sandbox(&sb).await.unwrap();
    assert!(cgroup_dirs(&parent).is_empty());
    assert_eq!(mount_count(dir.path()), 0, "sandbox pins released");
    r.shutdown().await;
    // Idle with nothing alive, the monitor exits too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{monitor}")).exists()
        && !std::fs::read_to_string(format!("/proc/{monitor}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(Instant::now() < deadline, "monitor did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

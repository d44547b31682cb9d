//! Root tests of the library path (`LinuxRuntime` → monitor → container), observed from
//! inside busybox containers. Run as root (CI does).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::TempDir;
use futures::StreamExt;
use wharf_core::backend::runtime::{
    Capabilities, ContainerConfig, ContainerFilter, ContainerImage, ContainerRuntime,
    ContainerState, ContainerStatus, LogOptions, Mount, Propagation, Resources, RootFs,
    SandboxConfig, SecurityContext,
};
use wharf_core::backend::ErrorKind;
use wharf_runtime_linux::{LinuxRuntime, LinuxRuntimeOptions};

struct Env {
    dir: TempDir,
    rt: Option<LinuxRuntime>,
    sandbox: String,
    rootfs: PathBuf,
}

impl Env {
    async fn new(tag: &str) -> Env {
        let dir = TempDir::new(tag);
        let rootfs = dir.path().join("rootfs");
        common::busybox_rootfs(&rootfs);
        let rt = LinuxRuntime::new(LinuxRuntimeOptions {
            root: dir.path().join("state"),
            monitor_binary: env!("CARGO_BIN_EXE_wharf-runc").into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let sandbox = rt
            .run_sandbox(&SandboxConfig {
                name: tag.into(),
                hostname: format!("pod-{tag}"),
                log_directory: Some(dir.path().join("logs")),
                cgroup_parent: Some(format!("wharf-test/{tag}-{}", std::process::id())),
                ..Default::default()
            })
            .await
            .unwrap();
        Env {
            dir,
            rt: Some(rt),
            sandbox,
            rootfs,
        }
    }

    fn rt(&self) -> &LinuxRuntime {
        self.rt.as_ref().unwrap()
    }

    fn config(&self, name: &str, cmd: &[&str]) -> ContainerConfig {
        ContainerConfig {
            name: name.into(),
            image: Some(ContainerImage {
                reference: "busybox".into(),
                id: "sha256:busybox".into(),
                rootfs: RootFs::Directory(self.rootfs.clone()),
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: Some(format!("{name}.log").into()),
            ..Default::default()
        }
    }

    async fn start(&self, cfg: &ContainerConfig) -> String {
        let id = self
            .rt()
            .create_container(&self.sandbox, cfg)
            .await
            .unwrap();
        self.rt().start_container(&id).await.unwrap();
        id
    }

    async fn wait_exit(&self, id: &str) -> ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.rt().container_status(id).await.unwrap();
            if s.state == ContainerState::Exited && s.exit_code.is_some() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn run(&self, cfg: &ContainerConfig) -> (ContainerStatus, String) {
        let id = self.start(cfg).await;
        let st = self.wait_exit(&id).await;
        let logs = self.logs(&id).await;
        self.rt().remove_container(&id).await.unwrap();
        (st, logs)
    }

    async fn logs(&self, id: &str) -> String {
        let mut s = self.rt().logs(id, &LogOptions::default()).await.unwrap();
        let mut out = String::new();
        while let Some(l) = s.next().await {
            out.push_str(&String::from_utf8_lossy(&l.unwrap().message));
            out.push('\n');
        }
        out
    }

    async fn finish(mut self) {
        let rt = self.rt.take().unwrap();
        rt.remove_sandbox(&self.sandbox).await.unwrap();
        assert!(rt
            .list_containers(&ContainerFilter::default())
            .await
            .unwrap()
            .is_empty());
        rt.shutdown().await;
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Runs after a failed assertion too: nothing may outlive the test.
        if let Some(rt) = self.rt.take() {
            let engine = rt.engine().clone();
            drop(rt);
            for c in engine.list().unwrap_or_default() {
                let _ = engine.delete(&c.id, true);
            }
            for ns in ["net", "ipc", "uts"] {
                let p = self
                    .dir
                    .path()
                    .join("state/sandboxes")
                    .join(&self.sandbox)
                    .join("ns")
                    .join(ns);
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&p)
                    .status();
            }
        }
        for ctrl in [
            "memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "blkio", "devices", "unified",
            "",
        ] {
            let base = PathBuf::from("/sys/fs/cgroup")
                .join(ctrl)
                .join("wharf-test");
            if let Ok(rd) = std::fs::read_dir(&base) {
                for e in rd.flatten() {
                    if e.file_name()
                        .to_string_lossy()
                        .ends_with(&format!("-{}", std::process::id()))
                    {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn process_settings_seen_from_inside() {
    let env = Env::new("inside").await;
    let mut cfg = env.config("inside", &["sh", "-c", "echo env=$GREETING; pwd; id -u; id -g; id -G; hostname; grep CapEff /proc/self/status; grep CapBnd /proc/self/status; echo $(ls /proc/self/fd); cat /proc/self/oom_score_adj; cat /proc/sys/kernel/hostname"]);
    cfg.env = vec![("GREETING".into(), "hello".into())];
    cfg.working_dir = "/tmp".into();
    cfg.security = SecurityContext {
        run_as_user: Some(1000),
        run_as_group: Some(1000),
        supplemental_groups: vec![50],
        capabilities: Capabilities {
            add: vec!["NET_ADMIN".into()],
            drop: vec!["ALL".into()],
        },
        ..Default::default()
    };
    cfg.resources.oom_score_adj = Some(500);
    let (st, out) = env.run(&cfg).await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert_eq!(st.reason.as_deref(), Some("Completed"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "env=hello");
    assert_eq!(lines[1], "/tmp");
    assert_eq!(lines[2], "1000");
    assert_eq!(lines[3], "1000");
    assert!(lines[4].split(' ').any(|g| g == "50"), "{out}");
    assert_eq!(lines[5], "pod-inside");
    // Only CAP_NET_ADMIN (bit 12) in the bounding set; a non-root user has no effective caps.
    assert_eq!(lines[7], "CapBnd:\t0000000000001000", "{out}");
    // No descriptor beyond stdio (and ls's own directory fd) leaked in.
    let fds: Vec<&str> = lines[8].split_whitespace().collect();
    assert!(
        fds.len() <= 4 && fds.iter().all(|f| ["0", "1", "2", "3"].contains(f)),
        "{out}"
    );
    assert_eq!(lines[9], "500");
    env.finish().await;
}

/// The one-fork path: with a new pid namespace and no user namespace the monitor makes
/// the namespace itself and forks the container process straight into it as pid 1, then
/// returns its own `pid_for_children` to its own pid namespace.
#[tokio::test(flavor = "multi_thread")]
async fn one_fork_puts_the_container_process_at_pid_one() {
    let env = Env::new("pidns").await;
    let link = |p: String| std::fs::read_link(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let status_field = |pid: i32, key: &str| -> Vec<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
        line[key.len()..]
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    for round in 0..2 {
        let cfg = env.config(&format!("pidns{round}"), &["sleep", "30"]);
        let id = env.rt().create_container(&env.sandbox, &cfg).await.unwrap();
        let pid = env.rt().engine().state(&id).unwrap().pid;
        let monitor = wharf_runtime_linux::monitor::running_pid(env.rt().engine().root())
            .expect("monitor running");
        // Host pid, then 1 inside the container's own namespace: nothing in between.
        assert_eq!(
            status_field(pid, "NSpid:"),
            vec![pid.to_string(), "1".to_string()]
        );
        // One fork: the monitor's own child, no intermediate process.
        assert_eq!(status_field(pid, "PPid:"), vec![monitor.to_string()]);
        let monitor_ns = link(format!("/proc/{monitor}/ns/pid"));
        assert_ne!(link(format!("/proc/{pid}/ns/pid")), monitor_ns);
        // The monitor's next children are born in its own namespace again.
        assert_eq!(
            link(format!("/proc/{monitor}/ns/pid_for_children")),
            monitor_ns
        );
        env.rt().start_container(&id).await.unwrap();
        env.rt().stop_container(&id, Duration::ZERO).await.unwrap();
        env.rt().remove_container(&id).await.unwrap();
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mounts_masked_and_readonly_paths() {
    let env = Env::new("mounts").await;
    let host = env.dir.path().join("data");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("f"), "from-host\n").unwrap();
    let mut cfg = env.config(
        "mounts",
        &["sh", "-c", "cat /data/f; touch /data/x 2>/dev/null && echo rw || echo ro; wc -c < /proc/keys; touch /proc/sys/x 2>/dev/null || echo sys-ro; grep -c ' /data ' /proc/self/mounts; cat /etc/hostname"],
    );
    cfg.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: host.clone(),
        readonly: true,
        propagation: Propagation::Private,
    }];
    let (st, out) = env.run(&cfg).await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec!["from-host", "ro", "0", "sys-ro", "1", "pod-mounts"],
        "{out}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_is_oom_killed() {
    let env = Env::new("oom").await;
    let mut cfg = env.config(
        "oom",
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
        ],
    );
    cfg.resources = Resources {
        memory_limit: Some(16 << 20),
        memory_swap_limit: Some(16 << 20),
        ..Default::default()
    };
    let mut events = env.rt().events();
    let (st, out) = env.run(&cfg).await;
    assert_eq!(st.reason.as_deref(), Some("OOMKilled"), "{st:?} {out}");
    assert_eq!(st.exit_code, Some(137));
    let mut saw_oom = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        eprintln!("event {ev:?}");
        saw_oom |= ev.kind == wharf_core::backend::runtime::RuntimeEventKind::Oom;
    }
    assert!(saw_oom, "an Oom event was sent");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pids_limit_makes_fork_fail() {
    let env = Env::new("pids").await;
    let mut cfg = env.config(
        "pids",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 8 ]; do sleep 5 & i=$((i+1)); done; echo forked",
        ],
    );
    cfg.resources = Resources {
        pids_limit: Some(4),
        ..Default::default()
    };
    let id = env.start(&cfg).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = env.rt().stats(&id).await.unwrap();
    assert!(stats.pids <= 4, "{stats:?}");
    env.rt().stop_container(&id, Duration::ZERO).await.unwrap();
    let out = env.logs(&id).await;
    assert!(
        out.contains("can't fork") || out.contains("Resource temporarily unavailable"),
        "{out}"
    );
    env.rt().remove_container(&id).await.unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_honours_grace_then_kills() {
    let env = Env::new("stop").await;
    let polite = env.config(
        "polite",
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; while :; do sleep 0.05; done",
        ],
    );
    let id = env.start(&polite).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    env.rt()
        .stop_container(&id, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    let st = env.rt().container_status(&id).await.unwrap();
    assert_eq!(st.exit_code, Some(7));
    assert!(env.logs(&id).await.contains("got-term"));
    env.rt().remove_container(&id).await.unwrap();

    let stubborn = env.config(
        "stubborn",
        &["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"],
    );
    let id = env.start(&stubborn).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    env.rt()
        .stop_container(&id, Duration::from_millis(700))
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(700));
    let st = env.rt().container_status(&id).await.unwrap();
    assert_eq!(st.exit_code, Some(137), "{st:?}");
    env.rt().remove_container(&id).await.unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_and_resume_freeze_the_container() {
    let env = Env::new("pause").await;
    let cfg = env.config(
        "ticker",
        &["sh", "-c", "while :; do echo tick; sleep 0.02; done"],
    );
    let id = env.start(&cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.rt().pause_container(&id).await.unwrap();
    assert_eq!(
        env.rt().container_status(&id).await.unwrap().state,
        ContainerState::Paused
    );
    let n1 = env.logs(&id).await.lines().count();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let n2 = env.logs(&id).await.lines().count();
    assert_eq!(n1, n2, "no output while frozen");
    env.rt().resume_container(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(env.logs(&id).await.lines().count() > n2);
    assert_eq!(
        env.rt().container_status(&id).await.unwrap().state,
        ContainerState::Running
    );
    env.rt().remove_container(&id).await.unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_runs_in_the_container() {
    let env = Env::new("exec").await;
    let id = env.start(&env.config("sleeper", &["sleep", "1000"])).await;
    let out = env
        .rt()
        .exec_sync(
            &id,
            &[
                "sh".into(),
                "-c".into(),
                "hostname; echo err >&2; exit 3".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(&out.stdout[..], b"pod-exec\n");
    assert_eq!(&out.stderr[..], b"err\n");
    let e = env
        .rt()
        .exec_sync(
            &id,
            &["sleep".into(), "100".into()],
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout);
    // Both share the container's pid namespace: pid 1 is `sleep 1000`.
    let ps = env
        .rt()
        .exec_sync(
            &id,
            &["cat".into(), "/proc/1/cmdline".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(&ps.stdout[..], b"sleep\x001000\x00");
    env.rt().remove_container(&id).await.unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_clear_error_and_leaves_nothing() {
    let env = Env::new("bad").await;
    let mut cfg = env.config("ghost", &["true"]);
    cfg.security.run_as_username = Some("no-such-user".into());
    let e = env
        .rt()
        .create_container(&env.sandbox, &cfg)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("no-such-user"), "{e}");

    let mut cfg = env.config("missing", &["true"]);
    cfg.image.as_mut().unwrap().rootfs = RootFs::Directory(env.dir.path().join("nope"));
    let e = env
        .rt()
        .create_container(&env.sandbox, &cfg)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("nope"), "{e}");

    let cfg = env.config("noprog", &["/bin/does-not-exist"]);
    let e = env
        .rt()
        .create_container(&env.sandbox, &cfg)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does-not-exist"), "{e}");

    assert!(env
        .rt()
        .list_containers(&ContainerFilter::default())
        .await
        .unwrap()
        .is_empty());
    let state = env.dir.path().join("state");
    assert_eq!(
        std::fs::read_dir(state.join("overlay")).unwrap().count(),
        0,
        "overlay left behind"
    );
    let containers: Vec<_> = std::fs::read_dir(state.join("containers"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(containers.is_empty(), "state left behind");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overlay_root_keeps_lower_layers_untouched() {
    let env = Env::new("overlay").await;
    let upper_layer = env.dir.path().join("layer2");
    std::fs::create_dir_all(upper_layer.join("etc")).unwrap();
    std::fs::write(upper_layer.join("etc/motd"), "layer2\n").unwrap();
    let mut cfg = env.config(
        "ovl",
        &[
            "sh",
            "-c",
            "cat /etc/motd; echo changed > /etc/motd; rm /bin/ls; cat /etc/motd",
        ],
    );
    cfg.image.as_mut().unwrap().rootfs =
        RootFs::Layers(vec![env.rootfs.clone(), upper_layer.clone()]);
    let (st, out) = env.run(&cfg).await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert_eq!(out, "layer2\nchanged\n");
    assert_eq!(
        std::fs::read_to_string(upper_layer.join("etc/motd")).unwrap(),
        "layer2\n"
    );
    assert!(env.rootfs.join("bin/ls").exists() || env.rootfs.join("bin/ls").is_symlink());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_runtime_default_and_unconfined() {
    let env = Env::new("seccomp-default").await;
    let script = "grep '^Seccomp:' /proc/self/status; unshare -U true 2>/dev/null && echo unshare-ok || echo unshare-denied; mkdir /tmp/d$$ && rmdir /tmp/d$$ && echo mkdir-ok";
    // No profile asked: the runtime default (Docker's profile) applies.
    let cfg = env.config("confined", &["sh", "-c", script]);
    let (st, out) = env.run(&cfg).await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["Seccomp:\t2", "unshare-denied", "mkdir-ok"],
        "{out}"
    );
    let mut cfg = env.config("unconfined", &["sh", "-c", script]);
    cfg.security.seccomp_profile = Some("unconfined".into());
    let (st, out) = env.run(&cfg).await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["Seccomp:\t0", "unshare-ok", "mkdir-ok"],
        "{out}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_localhost_profile_denies_mkdir() {
    let env = Env::new("seccomp-file").await;
    let profile = env.dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    let mut cfg = env.config(
        "nomkdir",
        &[
            "sh",
            "-c",
            "mkdir /tmp/d 2>&1; echo rc=$?; touch /tmp/f && echo touch-ok",
        ],
    );
    cfg.security.seccomp_profile = Some(profile.to_string_lossy().into());
    let (st, out) = env.run(&cfg).await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.contains("rc=1") && out.contains("touch-ok"), "{out}");
    // exec into the container runs under the same filter.
    let mut cfg = env.config("nomkdir-exec", &["sleep", "100"]);
    cfg.security.seccomp_profile = Some(profile.to_string_lossy().into());
    let id = env.start(&cfg).await;
    let o = env
        .rt()
        .exec_sync(
            &id,
            &[
                "sh".into(),
                "-c".into(),
                "mkdir /tmp/e || echo denied".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("denied"),
        "{o:?}"
    );
    env.rt().remove_container(&id).await.unwrap();
    // A profile that is not valid JSON is refused before anything is created.
    std::fs::write(&profile, "{not json").unwrap();
    let err = env
        .rt()
        .create_container(&env.sandbox, &cfg)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("no-mkdir.json"), "{err}");
    env.finish().await;
}

/// Reads `r` until `until` appears or the stream ends.
async fn read_until<R: tokio::io::AsyncRead + Unpin + ?Sized>(r: &mut R, until: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&out)
        .replace('\r', "")
        .contains(until)
    {
        match tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).replace('\r', "")
}

#[tokio::test(flavor = "multi_thread")]
async fn interactive_exec_with_and_without_tty() {
    let _ptys = PTYS.lock().await;
    use tokio::io::AsyncWriteExt;
    use wharf_core::backend::runtime::ExecRequest;
    let env = Env::new("exec-tty").await;
    let id = env.start(&env.config("sleeper", &["sleep", "100"])).await;

    let mut s = env
        .rt()
        .exec(
            &id,
            &ExecRequest {
                command: vec!["sh".into()],
                tty: true,
                stdin: true,
                size: Some((80, 24)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (mut stdin, mut out) = (s.stdin.take().unwrap(), s.stdout.take().unwrap());
    assert!(s.stderr.is_none());
    // The terminal echoes input: the marker is computed so only the output matches.
    stdin
        .write_all(b"tty; stty size; echo mark$((1+1))\n")
        .await
        .unwrap();
    let first = read_until(&mut out, "mark2\n").await;
    assert!(first.contains("/dev/pts/"), "{first}");
    assert!(first.contains("24 80"), "{first}");
    s.resize.as_ref().unwrap().send((100, 40)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stdin.write_all(b"stty size; exit 3\n").await.unwrap();
    let second = read_until(&mut out, "\u{0}").await;
    assert!(second.contains("40 100"), "{second}");
    assert_eq!(s.wait.await.unwrap(), 3);

    let mut s = env
        .rt()
        .exec(
            &id,
            &ExecRequest {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "read x; echo got $x; echo oops >&2; exit 4".into(),
                ],
                stdin: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(s.resize.is_none());
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    drop(stdin);
    let out = read_until(s.stdout.as_mut().unwrap(), "\u{0}").await;
    let err = read_until(s.stderr.as_mut().unwrap(), "\u{0}").await;
    assert_eq!(out, "got hello\n");
    assert_eq!(err, "oops\n");
    assert_eq!(s.wait.await.unwrap(), 4);
    // sleep as pid 1 ignores SIGTERM: kill it rather than wait out the stop grace.
    env.rt().kill_container(&id, libc::SIGKILL).await.unwrap();
    // A container is removable once it has exited, not as soon as the signal is sent.
    env.wait_exit(&id).await;
    env.rt().remove_container(&id).await.unwrap();
    env.finish().await;
}

/// Descriptors the monitor of `env` holds open, once connections just closed are gone.
async fn monitor_fds_settled(env: &Env) -> usize {
    tokio::time::sleep(Duration::from_millis(300)).await;
    monitor_fds(env)
}

/// Descriptors the monitor of `env` holds open.
fn monitor_fds(env: &Env) -> usize {
    let pid = wharf_runtime_linux::monitor::running_pid(&env.dir.path().join("state/containers"))
        .expect("monitor runs");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits until the monitor holds `before` descriptors again (closed connections are
/// noticed on its next poll): nothing an attach made is left open.
async fn assert_monitor_fds(env: &Env, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = monitor_fds(env);
        if now == before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the monitor holds {now} descriptors, {before} before: leaked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `r` to its end, `\r` removed; fails if the end of file does not come within
/// 10 s of the last data (someone still holds the writing end).
async fn read_all<R: tokio::io::AsyncRead + Unpin + ?Sized>(r: &mut R) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("read failed: {e}"),
            Err(_) => panic!(
                "no end of file within 10 s; read so far: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).replace('\r', "")
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_streams_output_to_several_attachers_until_exit() {
    let env = Env::new("attach-out").await;
    let fds_before = monitor_fds_settled(&env).await;
    let cfg = env.config(
        "ticker",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 30 ]; do echo line$i; echo err$i >&2; i=$((i+1)); sleep 0.1; done; exit 7",
        ],
    );
    let id = env.start(&cfg).await;
    let mut a = env.rt().attach(&id, false).await.unwrap();
    assert!(a.stdin.is_none(), "created without stdin");
    assert!(a.resize.is_none(), "no terminal");
    let mut a_out = a.stdout.take().unwrap();
    let first = read_until(&mut a_out, "\n").await;
    let first_n: u32 = first
        .lines()
        .next()
        .unwrap_or_default()
        .strip_prefix("line")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{first:?}"));

    // A second attacher gets the same output from the moment it attaches.
    let fds_before_b = monitor_fds_settled(&env).await;
    let mut b = env.rt().attach(&id, false).await.unwrap();
    let seen_by_b = read_until(b.stdout.as_mut().unwrap(), "\n").await;
    assert!(seen_by_b.starts_with("line"), "{seen_by_b:?}");
    // Detaching one leaves the container and the other attacher undisturbed, and
    // the monitor forgets everything of it (while the container still runs).
    drop(b);
    assert_monitor_fds(&env, fds_before_b).await;
    let st = env.rt().container_status(&id).await.unwrap();
    assert_eq!(st.state, ContainerState::Running, "{st:?}");

    let rest = read_all(&mut a_out).await;
    let err = read_all(a.stderr.as_mut().unwrap()).await;
    assert_eq!(a.wait.await.unwrap(), 7);
    // Every line from the first one received on, none lost, in order.
    let got: Vec<String> = format!("{first}{rest}")
        .lines()
        .map(str::to_string)
        .collect();
    let want: Vec<String> = (first_n..30).map(|i| format!("line{i}")).collect();
    assert_eq!(got, want);
    let b_first = seen_by_b.lines().next().unwrap_or_default().to_string();
    assert!(got.contains(&b_first), "{b_first:?} not in {got:?}");
    assert!(err.ends_with("err29\n"), "{err}");

    // The log still has everything, from before the attach too.
    let st = env.wait_exit(&id).await;
    assert_eq!(st.exit_code, Some(7));
    let logs = env.logs(&id).await;
    for i in 0..30 {
        assert!(logs.contains(&format!("line{i}\n")), "{logs}");
        assert!(logs.contains(&format!("err{i}\n")), "{logs}");
    }
    // An exited container cannot be attached to.
    let e = env.rt().attach(&id, false).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
    env.rt().remove_container(&id).await.unwrap();
    assert_monitor_fds(&env, fds_before).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_writes_stdin_across_sessions_and_stdin_once_closes_it() {
    use tokio::io::AsyncWriteExt;
    let env = Env::new("attach-in").await;
    let fds_before = monitor_fds_settled(&env).await;

    // stdin kept open across attach sessions (and across a new LinuxRuntime on the
    // same root: the monitor, not the program, holds the pipe).
    let mut cfg = env.config(
        "echoer",
        &["sh", "-c", "while read l; do echo got $l; done; echo eof"],
    );
    cfg.stdin = true;
    let id = env.start(&cfg).await;
    let fds_before_s = monitor_fds_settled(&env).await;
    let mut s = env.rt().attach(&id, true).await.unwrap();
    let mut input = s.stdin.take().expect("stdin is open");
    input.write_all(b"one\n").await.unwrap();
    assert_eq!(
        read_until(s.stdout.as_mut().unwrap(), "got one\n").await,
        "got one\n"
    );
    drop(input);
    drop(s);
    assert_monitor_fds(&env, fds_before_s).await;
    let rt2 = LinuxRuntime::new(LinuxRuntimeOptions {
        root: env.dir.path().join("state"),
        monitor_binary: env!("CARGO_BIN_EXE_wharf-runc").into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut s = rt2.attach(&id, true).await.unwrap();
    let st = rt2.container_status(&id).await.unwrap();
    assert_eq!(
        st.state,
        ContainerState::Running,
        "closing one session's stdin keeps it open"
    );
    s.stdin.as_mut().unwrap().write_all(b"two\n").await.unwrap();
    assert_eq!(
        read_until(s.stdout.as_mut().unwrap(), "got two\n").await,
        "got two\n"
    );
    drop(rt2);
    env.rt().kill_container(&id, libc::SIGKILL).await.unwrap();
    assert_eq!(s.wait.await.unwrap(), 128 + libc::SIGKILL);
    env.wait_exit(&id).await;
    let logs = env.logs(&id).await;
    assert_eq!(logs, "got one\ngot two\n");
    env.rt().remove_container(&id).await.unwrap();

    // stdin_once: the first attacher's stdin is the pipe itself; closing it is EOF.
    // Attached before it starts (`kubectl run -i`): nothing of its output is missed.
    let mut cfg = env.config("cat", &["sh", "-c", "echo ready; exec cat"]);
    cfg.stdin = true;
    cfg.stdin_once = true;
    let id = env.rt().create_container(&env.sandbox, &cfg).await.unwrap();
    // An attacher that only reads (`kubectl attach` without -i) takes no stdin, and
    // its detaching does not close the container's.
    let mut watcher = env.rt().attach(&id, false).await.unwrap();
    assert!(watcher.stdin.is_none(), "attached without stdin");
    let mut s = env.rt().attach(&id, true).await.unwrap();
    env.rt().start_container(&id).await.unwrap();
    assert_eq!(
        read_until(watcher.stdout.as_mut().unwrap(), "ready\n").await,
        "ready\n"
    );
    drop(watcher);
    let mut input = s.stdin.take().expect("stdin is open");
    input.write_all(b"hello cat\n").await.unwrap();
    let mut out = s.stdout.take().unwrap();
    assert_eq!(
        read_until(&mut out, "hello cat\n").await,
        "ready\nhello cat\n"
    );
    // Shutting stdin down closes it (as dropping it would).
    input.shutdown().await.unwrap();
    assert_eq!(read_all(&mut out).await, "");
    assert_eq!(s.wait.await.unwrap(), 0);
    assert_eq!(env.wait_exit(&id).await.exit_code, Some(0));
    assert_eq!(env.logs(&id).await, "ready\nhello cat\n");
    env.rt().remove_container(&id).await.unwrap();

    // Without a log, stdin or a terminal the output is discarded: nothing to attach to.
    let mut cfg = env.config("quiet", &["sleep", "100"]);
    cfg.log_path = None;
    let id = env.start(&cfg).await;
    let e = env.rt().attach(&id, false).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("not captured"), "{e}");
    assert!(!e.to_string().contains("earlier monitor"), "{e}");
    env.rt().kill_container(&id, libc::SIGKILL).await.unwrap();
    env.wait_exit(&id).await;
    env.rt().remove_container(&id).await.unwrap();
    let e = env
        .rt()
        .attach("no-such-container", false)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");

    assert_monitor_fds(&env, fds_before).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unstarted_containers_hold_no_other_containers_stdio() {
    use tokio::io::AsyncWriteExt;
    let env = Env::new("attach-unstarted").await;
    let mut cfg = env.config("cat", &["sh", "-c", "echo ready; exec cat"]);
    cfg.stdin = true;
    cfg.stdin_once = true;
    let id = env.rt().create_container(&env.sandbox, &cfg).await.unwrap();
    // Created (not started) while the monitor holds `cat`'s stdin, and after the
    // attacher's output pipes exist: neither may keep them open.
    let idle = env.config("idle", &["true"]);
    let before = env
        .rt()
        .create_container(&env.sandbox, &idle)
        .await
        .unwrap();
    let mut s = env.rt().attach(&id, true).await.unwrap();
    let idle = env.config("idle-after", &["true"]);
    let after = env
        .rt()
        .create_container(&env.sandbox, &idle)
        .await
        .unwrap();
    env.rt().start_container(&id).await.unwrap();
    let mut input = s.stdin.take().expect("stdin is open");
    let mut out = s.stdout.take().unwrap();
    input.write_all(b"hi\n").await.unwrap();
    assert_eq!(read_until(&mut out, "hi\n").await, "ready\nhi\n");
    // stdin_once: closing it is end of file for `cat`, which exits; its attacher
    // then reads end of file on both streams.
    drop(input);
    assert_eq!(read_all(&mut out).await, "");
    assert_eq!(read_all(s.stderr.as_mut().unwrap()).await, "");
    assert_eq!(s.wait.await.unwrap(), 0);
    assert_eq!(env.wait_exit(&id).await.exit_code, Some(0));
    for c in [&before, &after] {
        let st = env.rt().container_status(c).await.unwrap();
        assert_eq!(st.state, ContainerState::Created, "{st:?}");
    }
    for c in [id, before, after] {
        env.rt().remove_container(&c).await.unwrap();
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tty_container_is_logged_attached_and_resized() {
    let _ptys = PTYS.lock().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new("attach-tty").await;
    let fds_before = monitor_fds_settled(&env).await;
    let mut cfg = env.config(
        "term",
        &[
            "sh",
            "-c",
            "read x; tty; echo term=$TERM; stty size; while read x; do stty size; done; exit 5",
        ],
    );
    cfg.tty = true;
    cfg.stdin = true;
    let id = env.start(&cfg).await;
    let mut s = env.rt().attach(&id, true).await.unwrap();
    assert!(s.stderr.is_none(), "a terminal is one stream");
    let resize = s.resize.take().expect("a terminal can be resized");
    let mut input = s.stdin.take().expect("stdin is open");
    let mut out = s.stdout.take().unwrap();
    resize.send((100, 40)).await.unwrap();
    // The resize is applied by a task: press enter until the new size shows.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !String::from_utf8_lossy(&seen).contains("40 100") {
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&seen)
        );
        input.write_all(b"\n").await.unwrap();
        let mut buf = [0u8; 1024];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(300), out.read(&mut buf)).await
        {
            seen.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&seen).replace('\r', "");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("term=xterm"), "{text}");
    // ^D at the start of a line: end of file for `read`.
    input.write_all(b"\x04").await.unwrap();
    // What remains is the answers to the enters pressed above, then end of file.
    let rest = read_all(&mut out).await;
    assert!(
        rest.lines().all(|l| l.is_empty() || l == "40 100"),
        "{rest}"
    );
    assert_eq!(s.wait.await.unwrap(), 5);
    assert_eq!(env.wait_exit(&id).await.exit_code, Some(5));
    let logs = env.logs(&id).await.replace('\r', "");
    assert!(logs.contains("/dev/pts/"), "{logs}");
    assert!(logs.contains("40 100"), "{logs}");
    let mut stream = env.rt().logs(&id, &LogOptions::default()).await.unwrap();
    while let Some(l) = stream.next().await {
        assert_eq!(
            l.unwrap().stream,
            wharf_core::backend::runtime::LogStream::Stdout
        );
    }
    drop(stream);
    env.rt().remove_container(&id).await.unwrap();
    drop((input, resize));
    assert_monitor_fds(&env, fds_before).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attacher_that_does_not_read_is_detached_with_the_pipe_size() {
    let env = Env::new("attach-lag").await;
    let cfg = env.config(
        "flood",
        &[
            "sh",
            "-c",
            "sleep 0.5; head -c 3145728 /dev/zero; sleep 100",
        ],
    );
    let id = env.start(&cfg).await;
    // Attached, never read: the output overflows its pipe.
    let s = env.rt().attach(&id, false).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(20), s.wait)
        .await
        .expect("detached in time")
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    // 1 MiB unless the host caps pipes lower (then the default 64 KiB stays).
    let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(0);
    let size = if max >= 1 << 20 { 1 << 20 } else { 64 << 10 };
    assert!(e.to_string().contains(&format!("fell {size} bytes")), "{e}");
    // The container is not disturbed.
    let st = env.rt().container_status(&id).await.unwrap();
    assert_eq!(st.state, ContainerState::Running, "{st:?}");
    env.rt().kill_container(&id, libc::SIGKILL).await.unwrap();
    env.wait_exit(&id).await;
    env.rt().remove_container(&id).await.unwrap();
    env.finish().await;
}

/// Held by every test that gives this process a pty master:
/// `an_attacher_clearing_nonblocking_on_the_pty_does_not_stall_the_monitor` changes the
/// flags of the masters that appear while it attaches, which must all be its own.
static PTYS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Pty masters among this process's descriptors.
fn pty_masters() -> std::collections::HashSet<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().ends_with("ptmx"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[allow(unsafe_code)]
async fn an_attacher_clearing_nonblocking_on_the_pty_does_not_stall_the_monitor() {
    let _ptys = PTYS.lock().await;
    use tokio::io::AsyncWriteExt;
    let env = Env::new("attach-blocking").await;
    let mut cfg = env.config("term", &["sh", "-c", "read x; echo got $x; sleep 100"]);
    cfg.tty = true;
    cfg.stdin = true;
    let id = env.start(&cfg).await;
    let before = pty_masters();
    let mut s = env.rt().attach(&id, true).await.unwrap();
    // The attacher's copies of the master share its open file, and with it the
    // O_NONBLOCK flag the monitor reads it with: clear it, as a careless client may.
    for fd in pty_masters().difference(&before) {
        // SAFETY: fcntl on a descriptor number this test just received; errors are
        // ignored (the descriptor may belong to another test and be gone already).
        unsafe {
            let flags = libc::fcntl(*fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(*fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
    s.stdin.as_mut().unwrap().write_all(b"one\n").await.unwrap();
    let out = read_until(s.stdout.as_mut().unwrap(), "got one\n").await;
    assert!(out.contains("got one\n"), "{out:?}");
    // The container is silent now: a monitor reading the master until it would block
    // waits forever; it must still answer.
    let r = env
        .rt()
        .exec_sync(&id, &["true".to_string()], Duration::from_secs(5))
        .await;
    assert_eq!(r.map(|o| o.exit_code).map_err(|e| e.kind), Ok(0));
    env.rt().kill_container(&id, libc::SIGKILL).await.unwrap();
    assert_eq!(s.wait.await.unwrap(), 128 + libc::SIGKILL);
    env.wait_exit(&id).await;
    env.rt().remove_container(&id).await.unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_after_the_monitor_died_is_refused_clearly() {
    let env = Env::new("attach-monitor").await;
    let mut cfg = env.config("survivor", &["sleep", "100"]);
    cfg.stdin = true;
    let id = env.start(&cfg).await;
    let containers = env.dir.path().join("state/containers");
    let old = wharf_runtime_linux::monitor::running_pid(&containers).expect("monitor runs");
    // The monitor holds the container's stdio; killing it loses them (documented).
    wharf_runtime_linux::sys::kill(old, libc::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // The runtime's event subscription restarts a monitor, which re-adopts.
        if let Some(pid) = wharf_runtime_linux::monitor::running_pid(&containers) {
            if pid != old {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no new monitor");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = env.rt().container_status(&id).await.unwrap();
    assert_eq!(st.state, ContainerState::Running, "{st:?}");
    let e = env.rt().attach(&id, false).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("earlier monitor"), "{e}");
    assert!(!e.to_string().contains("not captured"), "{e}");
    env.rt().kill_container(&id, libc::SIGKILL).await.unwrap();
    env.wait_exit(&id).await;
    env.rt().remove_container(&id).await.unwrap();
    env.finish().await;
}

/// (soft, hard) RLIMIT_NOFILE of a process, from `/proc/<pid>/limits`.
fn nofile_of(pid: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().unwrap().to_string();
    let hard = fields.next().unwrap().to_string();
    (soft, hard)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_monitor_raises_its_open_file_limit_and_containers_keep_their_own() {
    // Start the monitor with a soft limit below the hard one (other tests' monitors may
    // start with it too: they raise it as well).
    let nofile = libc::RLIMIT_NOFILE;
    let (_, hard) = wharf_runtime_linux::sys::getrlimit(nofile).unwrap();
    wharf_runtime_linux::sys::setrlimit(nofile, 1000.min(hard), hard).unwrap();
    let env = Env::new("nofile").await;
    let id = env.start(&env.config("limits", &["sleep", "100"])).await;
    let containers = env.dir.path().join("state/containers");
    let monitor = wharf_runtime_linux::monitor::running_pid(&containers).expect("monitor runs");
    let hard = hard.to_string();
    // The monitor holds descriptors for every container: its soft limit is the hard one.
    assert_eq!(
        nofile_of(&monitor.to_string()),
        (hard.clone(), hard.clone())
    );
    // The container and an exec'd process get their spec's limits (runc's default spec:
    // 1024), not the monitor's.
    let pid = env.rt().engine().state(&id).unwrap().pid;
    assert_eq!(nofile_of(&pid.to_string()), ("1024".into(), "1024".into()));
    let out = env
        .rt()
        .exec_sync(
            &id,
            &["sh".into(), "-c".into(), "ulimit -Sn; ulimit -Hn".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1024\n1024\n");
    env.rt().kill_container(&id, libc::SIGKILL).await.unwrap();
    env.wait_exit(&id).await;
    env.rt().remove_container(&id).await.unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_is_removable_right_after_it_was_killed() {
    // Right after the kill the process is dead but not yet reaped: the removal must wait
    // for the monitor's exit record (it failed with "Directory not empty" in about one try
    // in ten when it raced the record), and the exit must still be announced.
    use wharf_core::backend::runtime::RuntimeEventKind;
    let env = Env::new("kill-remove").await;
    let mut events = env.rt().events();
    let mut errors = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for i in 0..40 {
        let id = env
            .start(&env.config(&format!("s{i}"), &["sleep", "100"]))
            .await;
        env.rt().kill_container(&id, libc::SIGKILL).await.unwrap();
        if let Err(e) = env.rt().remove_container(&id).await {
            errors.push(format!("{i}: {e}"));
        }
        ids.insert(id);
    }
    assert!(errors.is_empty(), "{errors:#?}");
    // Removing lost no exit: every container's exit (by SIGKILL) was announced.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        if let RuntimeEventKind::Exited { exit_code, .. } = ev.kind {
            assert_eq!(exit_code, 128 + libc::SIGKILL, "{ev:?}");
            ids.remove(&ev.container_id);
        }
    }
    assert!(ids.is_empty(), "no exit event for {ids:?}");
    env.finish().await;
}

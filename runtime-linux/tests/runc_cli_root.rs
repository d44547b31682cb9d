//! Root tests of the `wharf-runc` binary: runc's verbs on busybox bundles, bad input, and
//! mount targets that try to escape the rootfs through a symlink.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::TempDir;

fn runc(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wharf-runc"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

/// For verbs that leave a container running: its init inherits our stdio, so stdout and
/// stderr go to a file instead of pipes that would stay open.
fn runc_detached(root: &Path, args: &[&str]) -> Output {
    let log = root.with_extension(format!("stderr-{}", args[0]));
    let f = std::fs::File::create(&log).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_wharf-runc"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(f)
        .status()
        .unwrap();
    Output {
        status,
        stdout: Vec::new(),
        stderr: std::fs::read(&log).unwrap_or_default(),
    }
}

/// Deletes every container under the root when the test ends, however it ends.
struct Root(TempDir);

impl Root {
    /// A busybox rootfs inside this test's directory, built on first use.
    fn rootfs(&self) -> std::path::PathBuf {
        let p = self.0.path().join("rootfs");
        if !p.exists() {
            common::busybox_rootfs(&p);
        }
        p
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let out = runc(self.0.path(), &["list", "-q"]);
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = runc(self.0.path(), &["delete", "-f", id]);
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn run_reports_exit_code_and_output() {
    let root = Root(TempDir::new("cli-run"));
    let b = root.0.path().join("b");
    common::write_bundle(
        &b,
        &common::spec(&root.rootfs(), &["sh", "-c", "echo out; hostname; exit 3"]),
    );
    let o = runc(
        &root.0.path().join("state"),
        &["run", "--bundle", b.to_str().unwrap(), "r1"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\nwharf\n");
    // run deletes the container afterwards.
    let l = runc(&root.0.path().join("state"), &["list", "-q"]);
    assert_eq!(String::from_utf8_lossy(&l.stdout), "");
}

#[test]
fn create_start_state_kill_delete() {
    let root = Root(TempDir::new("cli-life"));
    let state = root.0.path().join("state");
    let b = root.0.path().join("b");
    common::write_bundle(&b, &common::spec(&root.rootfs(), &["sleep", "1000"]));
    let pidfile = root.0.path().join("pid");
    let o = runc_detached(
        &state,
        &[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--pid-file",
            pidfile.to_str().unwrap(),
            "c1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let st: serde_json::Value =
        serde_json::from_slice(&runc(&state, &["state", "c1"]).stdout).unwrap();
    assert_eq!(st["status"], "created");
    assert_eq!(
        st["pid"].as_i64().unwrap().to_string(),
        std::fs::read_to_string(&pidfile).unwrap()
    );
    assert!(runc_detached(&state, &["start", "c1"]).status.success());
    let st: serde_json::Value =
        serde_json::from_slice(&runc(&state, &["state", "c1"]).stdout).unwrap();
    assert_eq!(st["status"], "running");
    let o = runc(&state, &["start", "c1"]);
    assert!(
        !o.status.success() && text(&o).contains("running"),
        "{}",
        text(&o)
    );
    let o = runc(&state, &["delete", "c1"]);
    assert!(
        !o.status.success(),
        "delete of a running container needs -f"
    );
    assert!(runc(&state, &["pause", "c1"]).status.success());
    let st: serde_json::Value =
        serde_json::from_slice(&runc(&state, &["state", "c1"]).stdout).unwrap();
    assert_eq!(st["status"], "paused");
    assert!(runc(&state, &["resume", "c1"]).status.success());
    let ps = runc(&state, &["ps", "--format", "json", "c1"]);
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(pids.len(), 1);
    assert!(runc(&state, &["kill", "c1", "KILL"]).status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st: serde_json::Value =
            serde_json::from_slice(&runc(&state, &["state", "c1"]).stdout).unwrap();
        if st["status"] == "stopped" {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(runc(&state, &["delete", "c1"]).status.success());
    let o = runc(&state, &["state", "c1"]);
    assert!(!o.status.success() && text(&o).contains("does not exist"));
}

#[test]
fn exec_joins_the_container() {
    let root = Root(TempDir::new("cli-exec"));
    let state = root.0.path().join("state");
    let b = root.0.path().join("b");
    common::write_bundle(&b, &common::spec(&root.rootfs(), &["sleep", "1000"]));
    assert!(runc_detached(
        &state,
        &["run", "-d", "--bundle", b.to_str().unwrap(), "e1"]
    )
    .status
    .success());
    let o = runc(
        &state,
        &[
            "exec",
            "e1",
            "sh",
            "-c",
            "hostname; cat /proc/1/cmdline; exit 5",
        ],
    );
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "wharf\nsleep\u{0}1000\u{0}"
    );
    assert!(runc(&state, &["delete", "-f", "e1"]).status.success());
}

fn assert_nothing_left(state: &Path) {
    let left: Vec<_> = std::fs::read_dir(state)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let root = Root(TempDir::new("cli-bad"));
    let state = root.0.path().join("state");
    let b = root.0.path().join("b");
    std::fs::create_dir_all(&b).unwrap();

    std::fs::write(
        b.join("config.json"),
        "{\"ociVersion\": \"1.0.2\", \"root\": ",
    )
    .unwrap();
    let o = runc_detached(&state, &["create", "--bundle", b.to_str().unwrap(), "x"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("config.json") && text(&o).contains("line 1"),
        "{}",
        text(&o)
    );
    assert_nothing_left(&state);

    let mut spec = common::spec(&root.rootfs(), &["true"]);
    spec.root_mut()
        .as_mut()
        .unwrap()
        .set_path(root.0.path().join("no-rootfs"));
    common::write_bundle(&b, &spec);
    let o = runc_detached(&state, &["create", "--bundle", b.to_str().unwrap(), "x"]);
    assert!(
        text(&o).contains("no-rootfs") && text(&o).contains("does not exist"),
        "{}",
        text(&o)
    );
    assert_nothing_left(&state);

    let mut v: serde_json::Value =
        serde_json::to_value(common::spec(&root.rootfs(), &["true"])).unwrap();
    v["linux"]["namespaces"][0]["type"] = "bogus".into();
    std::fs::write(b.join("config.json"), v.to_string()).unwrap();
    let o = runc_detached(&state, &["create", "--bundle", b.to_str().unwrap(), "x"]);
    assert!(
        text(&o).contains("linux.namespaces[0].type"),
        "{}",
        text(&o)
    );
    assert_nothing_left(&state);

    let mut spec = common::spec(&root.rootfs(), &["true"]);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .user_mut()
        .set_username(Some("nosuchuser".into()));
    common::write_bundle(&b, &spec);
    let o = runc_detached(&state, &["create", "--bundle", b.to_str().unwrap(), "x"]);
    assert!(text(&o).contains("nosuchuser"), "{}", text(&o));
    assert_nothing_left(&state);

    let o = runc(
        &state,
        &["create", "--bundle", b.to_str().unwrap(), "../escape"],
    );
    assert!(text(&o).contains("invalid container id"), "{}", text(&o));
}

#[test]
fn mount_target_symlink_cannot_escape_rootfs() {
    let root = Root(TempDir::new("cli-escape"));
    let state = root.0.path().join("state");
    // A private rootfs whose /evil points at a host directory.
    let rfs = root.0.path().join("rootfs");
    common::busybox_rootfs(&rfs);
    let host = root.0.path().join("host-dir");
    std::fs::create_dir_all(&host).unwrap();
    std::os::unix::fs::symlink(&host, rfs.join("evil")).unwrap();
    let mut spec = common::spec(&rfs, &["sh", "-c", "ls -d /evil/sub && echo inside"]);
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination("/evil/sub")
            .typ("tmpfs")
            .source("tmpfs")
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    let b = root.0.path().join("b");
    common::write_bundle(&b, &spec);
    let o = runc(&state, &["run", "--bundle", b.to_str().unwrap(), "esc"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("inside"));
    // The symlink was resolved inside the rootfs: the host directory is untouched.
    assert!(
        !host.join("sub").exists(),
        "mount target escaped to the host"
    );
}

#[test]
fn spec_and_features() {
    let d = TempDir::new("cli-spec");
    let o = runc(
        &d.path().join("state"),
        &["spec", "--bundle", d.path().to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    let spec: oci_spec::runtime::Spec =
        serde_json::from_slice(&std::fs::read(d.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(
        spec.process().as_ref().unwrap().args().as_ref().unwrap(),
        &vec!["sh".to_string()]
    );
    let f: serde_json::Value =
        serde_json::from_slice(&runc(&d.path().join("state"), &["features"]).stdout).unwrap();
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "user"));
}

#[test]
fn seccomp_profile_of_config_json_is_applied() {
    let root = Root(TempDir::new("cli-seccomp"));
    let b = root.0.path().join("b");
    let mut spec = common::spec(
        &root.rootfs(),
        &[
            "sh",
            "-c",
            "grep '^Seccomp:' /proc/self/status; mkdir /tmp/d 2>&1; touch /tmp/f && echo touch-ok",
        ],
    );
    let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_str(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                          "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_GE"}]}]}"#,
    )
    .unwrap();
    let mut linux = spec.linux().clone().unwrap();
    linux.set_seccomp(Some(profile));
    spec.set_linux(Some(linux));
    common::write_bundle(&b, &spec);
    let state = root.0.path().join("state");
    let o = runc(&state, &["run", "--bundle", b.to_str().unwrap(), "s1"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.contains("touch-ok"), "{out}");

    // An argument index beyond the six syscall arguments names the field.
    let text_cfg = std::fs::read_to_string(b.join("config.json"))
        .unwrap()
        .replace("\"index\": 1", "\"index\": 9");
    std::fs::write(b.join("config.json"), text_cfg).unwrap();
    let o = runc(&state, &["run", "--bundle", b.to_str().unwrap(), "s2"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("linux.seccomp.syscalls[0].args[0].index"),
        "{}",
        text(&o)
    );
    assert_nothing_left(&state);
    let f: serde_json::Value = serde_json::from_slice(&runc(&state, &["features"]).stdout).unwrap();
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);
}

/// Accepts one connection on `path` and returns the pty master sent over it.
fn receive_console(listener: &std::os::unix::net::UnixListener) -> std::fs::File {
    use std::os::fd::AsFd;
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let (n, mut fds) = wharf_runtime_linux::pty::recv_fds(conn.as_fd(), &mut buf).unwrap();
    assert_eq!(&buf[..n], b"/dev/ptmx");
    assert_eq!(fds.len(), 1);
    std::fs::File::from(fds.remove(0))
}

/// Reads a pty master until the other side is gone (EIO) or `until` shows up.
fn read_terminal(master: &mut std::fs::File, until: &str) -> String {
    use std::io::Read;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&out).contains(until) {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).replace('\r', "")
}

#[test]
fn terminal_goes_to_the_console_socket() {
    let root = Root(TempDir::new("cli-tty"));
    let state = root.0.path().join("state");
    let b = root.0.path().join("b");
    let mut spec = common::spec(&root.rootfs(), &["sh", "-c", "tty; stty size; sleep 100"]);
    let mut p = spec.process().clone().unwrap();
    p.set_terminal(Some(true));
    p.set_console_size(Some(
        oci_spec::runtime::BoxBuilder::default()
            .height(30u64)
            .width(100u64)
            .build()
            .unwrap(),
    ));
    spec.set_process(Some(p));
    common::write_bundle(&b, &spec);
    // Without a console socket a terminal cannot be handed out: a clear error.
    let o = runc(&state, &["create", "--bundle", b.to_str().unwrap(), "t0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("process.terminal"), "{}", text(&o));

    let sock = root.0.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let o = runc_detached(
        &state,
        &[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--console-socket",
            sock.to_str().unwrap(),
            "t1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let mut master = receive_console(&listener);
    let o = runc(&state, &["start", "t1"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = read_terminal(&mut master, "30 100");
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("30 100"), "{out}");

    // exec --tty gets a pty of its own in the container's devpts.
    let exec = Command::new(env!("CARGO_BIN_EXE_wharf-runc"))
        .arg("--root")
        .arg(&state)
        .args([
            "exec",
            "--tty",
            "--console-socket",
            sock.to_str().unwrap(),
            "t1",
        ])
        .args(["sh", "-c", "tty; exit 5"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut emaster = receive_console(&listener);
    let out = read_terminal(&mut emaster, "\u{0}");
    let eo = exec.wait_with_output().unwrap();
    assert_eq!(
        eo.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&eo.stderr)
    );
    assert!(
        out.trim().starts_with("/dev/pts/") && !out.contains("/dev/pts/0"),
        "{out}"
    );
    let o = runc(&state, &["delete", "-f", "t1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_nothing_left(&state);
}

#[test]
fn create_and_start_container_hooks_run_at_their_points() {
    let root = Root(TempDir::new("cli-hooks"));
    let b = root.0.path().join("b");
    let out = root.0.path().join("hooks");
    std::fs::create_dir_all(&out).unwrap();
    let hook = |script: String| -> oci_spec::runtime::Hook {
        oci_spec::runtime::HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".to_string(), "-c".to_string(), script])
            .timeout(10)
            .build()
            .unwrap()
    };
    let o = out.display();
    let mut spec = common::spec(&root.rootfs(), &["sh", "-c", "cat /tmp/started-by-hook"]);
    spec.set_hooks(Some(
        oci_spec::runtime::HooksBuilder::default()
            // Runtime namespaces: the state on stdin says "creating".
            .create_runtime(vec![hook(format!("cat > {o}/create-runtime.json"))])
            // Container namespaces, runtime filesystem (before the pivot).
            .create_container(vec![hook(format!(
                "cat > {o}/create-container.json; readlink /proc/self/ns/mnt > {o}/create-container.mnt"
            ))])
            // Inside the container, right before the program: the path is the rootfs's.
            .start_container(vec![hook("echo started > /tmp/started-by-hook".into())])
            .build()
            .unwrap(),
    ));
    common::write_bundle(&b, &spec);
    let state = root.0.path().join("state");
    let r = runc(&state, &["run", "--bundle", b.to_str().unwrap(), "h1"]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert_eq!(String::from_utf8_lossy(&r.stdout), "started\n");
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    let cr: serde_json::Value = serde_json::from_str(&read("create-runtime.json")).unwrap();
    assert_eq!(cr["status"], "creating");
    assert_eq!(cr["id"], "h1");
    assert!(cr["pid"].as_i64().unwrap() > 0);
    let cc: serde_json::Value = serde_json::from_str(&read("create-container.json")).unwrap();
    assert_eq!(
        cc["pid"], cr["pid"],
        "both hooks see the runtime's view of the pid"
    );
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(
        read("create-container.mnt").trim(),
        host_mnt.to_string_lossy(),
        "createContainer runs in the container's mount namespace"
    );

    // A failing createContainer hook fails create and leaves nothing behind.
    let mut spec = common::spec(&root.rootfs(), &["true"]);
    spec.set_hooks(Some(
        oci_spec::runtime::HooksBuilder::default()
            .create_container(vec![hook("echo no >&2; exit 7".into())])
            .build()
            .unwrap(),
    ));
    common::write_bundle(&b, &spec);
    let r = runc(&state, &["create", "--bundle", b.to_str().unwrap(), "h2"]);
    assert!(!r.status.success());
    assert!(text(&r).contains("createContainer hook"), "{}", text(&r));
    assert_nothing_left(&state);
}

#[test]
fn preserve_fds_passes_descriptors_to_the_container() {
    let root = Root(TempDir::new("cli-fds"));
    let b = root.0.path().join("b");
    // The container writes to descriptor 3 and lists its descriptors: with
    // --preserve-fds 1 it has 0-3 only (4 and up were the runtime's, and are closed).
    common::write_bundle(
        &b,
        &common::spec(
            &root.rootfs(),
            &["sh", "-c", "echo through-3 >&3; ls /proc/self/fd >&3"],
        ),
    );
    let out = root.0.path().join("fd3");
    let state = root.0.path().join("state");
    let o = Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$0" --root "$1" run --preserve-fds 1 --bundle "$2" fds 3>"$3" 4</dev/null"#)
        .arg(env!("CARGO_BIN_EXE_wharf-runc"))
        .arg(&state)
        .arg(&b)
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let written = std::fs::read_to_string(&out).unwrap();
    let mut lines = written.lines();
    assert_eq!(lines.next(), Some("through-3"), "{written:?}");
    // `ls` opens one descriptor of its own for the directory it reads.
    let fds: Vec<u32> = lines.map(|l| l.parse().unwrap()).collect();
    assert!(fds.starts_with(&[0, 1, 2, 3]), "{fds:?}");
    assert!(
        fds.len() <= 5,
        "descriptors beyond 3 reached the container: {fds:?}"
    );
    // Without the flag, descriptor 3 is closed in the container.
    let o = Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$0" --root "$1" run --bundle "$2" nofds 3>"$3""#)
        .arg(env!("CARGO_BIN_EXE_wharf-runc"))
        .arg(&state)
        .arg(&b)
        .arg(root.0.path().join("unused"))
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(root.0.path().join("unused")).unwrap(),
        ""
    );
}

/// A user's bundle that happens to sit where the container's state directory would be is not
/// taken over: the create is refused as an existing container, and the bundle stays whole.
#[test]
fn a_bundle_at_the_state_directory_is_refused_and_kept() {
    let root = Root(TempDir::new("cli-bundle-in-state"));
    let state = root.0.path().join("state");
    let b = state.join("c1");
    common::write_bundle(&b, &common::spec(&root.rootfs(), &["true"]));
    let o = runc_detached(&state, &["create", "--bundle", b.to_str().unwrap(), "c1"]);
    if o.status.success() {
        // Taken over: remove the container it made before failing.
        runc(&state, &["delete", "--force", "c1"]);
    }
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("c1"), "{}", text(&o));
    assert!(b.join("config.json").exists(), "the bundle was removed");
}

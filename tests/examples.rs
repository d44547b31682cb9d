//! Runs the examples (which `cargo test` builds next to this test) and checks they succeed:
//! the CI proof that they work. The quickstart runs in simulated mode for any user, and in
//! real mode (native runtime, bridge, CSI) as root, as does `run_container` (CI runs as root).

#[path = "../examples/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile directory");
    profile_dir.join("examples").join(name)
}

fn run(name: &str, args: &[&str], expect: &str) {
    let path = example(name);
    assert!(
        path.exists(),
        "{} not built (cargo test builds the examples)",
        path.display()
    );
    let out = Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(expect),
        "{name} {args:?} did not print {expect:?}:\n{stdout}"
    );
}

#[test]
fn quickstart_simulated_tells_the_whole_story() {
    run("quickstart", &["--simulated"], "every step behaved");
}

/// `None` (and a note on stderr) when not root: real containers need root.
fn as_root(name: &str) -> Option<()> {
    let root = support::is_root();
    if !root {
        eprintln!("skipping {name}: real containers need root");
    }
    root.then_some(())
}

#[test]
fn quickstart_real_tells_the_whole_story() {
    if as_root("quickstart (real mode)").is_some() {
        run("quickstart", &[], "every step behaved");
    }
}

#[test]
fn run_container_serves_its_volume_through_the_host_port() {
    if as_root("run_container").is_some() {
        run(
            "run_container",
            &["--port", "18081"],
            "GET http://127.0.0.1:18081/ -> \"hello from a wharf container\"",
        );
    }
}

#[test]
fn custom_controller_follows_its_greeting() {
    run(
        "custom_controller",
        &[],
        "ok: ConfigMap hello-greeting gone",
    );
}

#[test]
fn simulated_cluster_runs_a_deployment() {
    run(
        "simulated_cluster",
        &[
            "--nodes",
            "50",
            "--replicas",
            "300",
            "--timeout-secs",
            "120",
        ],
        "300 pods Running on",
    );
}

//! RUN: a command executed in a container through any [`ContainerRuntime`], its filesystem
//! changes captured as a layer.
//!
//! The builder mounts the root filesystem itself — an overlay of the current layers under
//! a private upper directory — and hands it to the runtime as a plain directory, so a
//! runtime needs nothing image-specific. Below the image layers lies a *mount stub* layer
//! holding the mount points runtimes create (`/proc`, `/dev`, `/sys`, `/etc/hosts`,
//! `/etc/resolv.conf`, `/etc/hostname`): the runtime finds them and writes nothing, so they
//! stay out of the layer (Docker's init layer plays the same part). When the process has
//! exited, the upper directory becomes the layer ([`super::diff`]).
//!
//! Each RUN gets its own sandbox with a fresh network namespace (loopback only). Mounting
//! needs root (CAP_SYS_ADMIN).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use wharf_core::backend::runtime::{
    ContainerConfig, ContainerImage, ContainerRuntime, ContainerState, LogOptions,
    RuntimeEventKind, SandboxConfig, SecurityContext,
};

use crate::snapshot;

/// Lines of output quoted in the error of a failed RUN.
const OUTPUT_TAIL_LINES: usize = 20;

/// Runs RUN steps: a container runtime, driven from the (blocking) builder through a
/// handle on the tokio runtime it lives in.
#[derive(Clone)]
pub struct Runner {
    runtime: Arc<dyn ContainerRuntime>,
    handle: tokio::runtime::Handle,
}

impl Runner {
    /// A runner using `runtime`, driven on `handle`. The build must then run on a thread
    /// that is not a tokio worker (e.g. inside `spawn_blocking`, as
    /// [`super::build_with_runtime`] does).
    pub fn new(runtime: Arc<dyn ContainerRuntime>, handle: tokio::runtime::Handle) -> Runner {
        Runner { runtime, handle }
    }
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("runtime", &self.runtime.name())
            .finish()
    }
}

/// What one RUN executes.
pub(super) struct Command {
    /// The argv (shell form already wrapped in `/bin/sh -c`).
    pub argv: Vec<String>,
    /// ARG values, then ENV (ENV wins on equal names).
    pub env: Vec<(String, String)>,
    /// Absolute working directory; created when missing (it lands in the layer).
    pub working_dir: String,
    /// The image config's USER (`uid[:gid]` or a name), if any.
    pub user: Option<String>,
}

/// Why a RUN did not give a layer.
pub(super) enum RunError {
    /// The command ran and exited non-zero.
    Exit {
        /// Its exit code.
        code: i32,
        /// The last lines of its output.
        tail: String,
    },
    /// Setting up, running or cleaning up failed.
    Failed(String),
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Runs `cmd` on the stacked `layers` (snapshot directories, lowest first) in a scratch
/// directory under `scratch`, and writes the upper directory's layer tar into `out`.
pub(super) fn run<W: std::io::Write>(
    runner: &Runner,
    scratch: &Path,
    layers: &[PathBuf],
    cmd: &Command,
    out: W,
) -> Result<W, RunError> {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = scratch.join(format!("run-{}-{n}", std::process::id()));
    let result = run_in(runner, &dir, layers, cmd, out);
    if let Err(e) = fs::remove_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "RUN scratch directory not removed");
    }
    result
}

fn run_in<W: std::io::Write>(
    runner: &Runner,
    dir: &Path,
    layers: &[PathBuf],
    cmd: &Command,
    out: W,
) -> Result<W, RunError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| RunError::Failed(format!("{what}: {e}"));
    let (stubs, upper, work, merged) = (
        dir.join("stubs"),
        dir.join("upper"),
        dir.join("work"),
        dir.join("merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d).map_err(|e| failed(&format!("create {}", d.display()), &e))?;
    }
    make_stubs(&stubs).map_err(|e| failed("create mount stubs", &e))?;
    let mut lowers = vec![stubs];
    lowers.extend_from_slice(layers);
    snapshot::mount_overlay_with(
        &lowers,
        &upper,
        &work,
        &merged,
        // Renamed directories are copied, not recorded as redirects, and copy-up is
        // whole-file: the upper directory then reads as a plain layer.
        "redirect_dir=off,metacopy=off,index=off",
    )
    .map_err(|e| failed("mount the root filesystem", &e))?;
    // Created inside the merged root (symlinks resolved as the container would).
    let ran = crate::unpack::rootfd::Root::open(&merged)
        .and_then(|root| root.dir_create(Path::new(&cmd.working_dir)))
        .map(drop)
        .map_err(|e| failed(&format!("create working directory {}", cmd.working_dir), &e))
        .and_then(|()| {
            runner
                .handle
                .block_on(in_container(&*runner.runtime, dir, &merged, cmd))
        });
    if let Err(e) = rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::DETACH) {
        return Err(failed(
            &format!("unmount {}", merged.display()),
            &std::io::Error::from(e),
        ));
    }
    ran?;
    super::diff::write_layer(&upper, out).map_err(|e| failed("write the layer", &e))
}

/// Empty mount points under the image layers (see the module docs).
fn make_stubs(stubs: &Path) -> std::io::Result<()> {
    for d in ["proc", "dev", "sys", "etc"] {
        fs::create_dir_all(stubs.join(d))?;
    }
    for f in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
        fs::write(stubs.join(f), b"")?;
    }
    Ok(())
}

/// One sandbox, one container: start it, wait for its exit, read its output, remove both.
async fn in_container(
    rt: &dyn ContainerRuntime,
    dir: &Path,
    rootfs: &Path,
    cmd: &Command,
) -> Result<(), RunError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| RunError::Failed(format!("{what}: {e}"));
    let uid = dir
        .file_name()
        .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
    let sandbox = rt
        .run_sandbox(&SandboxConfig {
            name: uid.clone(),
            namespace: "wharf-build".into(),
            uid,
            hostname: "wharf-build".into(),
            log_directory: Some(dir.join("logs")),
            labels: BTreeMap::from([("wharf.build".to_string(), "run".to_string())]),
            ..Default::default()
        })
        .await
        .map_err(|e| failed("create the build sandbox", &e))?;
    let result = async {
        let security = security(cmd.user.as_deref()).map_err(RunError::Failed)?;
        let config = ContainerConfig {
            name: "run".into(),
            image: Some(ContainerImage {
                reference: "wharf-build".into(),
                id: String::new(),
                rootfs: wharf_core::backend::runtime::RootFs::Directory(rootfs.to_path_buf()),
            }),
            command: cmd.argv.clone(),
            working_dir: cmd.working_dir.clone(),
            env: cmd.env.clone(),
            log_path: Some("run.log".into()),
            security,
            ..Default::default()
        };
        let id = rt
            .create_container(&sandbox, &config)
            .await
            .map_err(|e| failed("create the RUN container", &e))?;
        let mut events = rt.events();
        rt.start_container(&id)
            .await
            .map_err(|e| failed("start the RUN container", &e))?;
        // Events say when it exits; a status poll covers events a busy stream dropped.
        let code = loop {
            let status = rt
                .container_status(&id)
                .await
                .map_err(|e| failed("read the RUN container's status", &e))?;
            if status.state == ContainerState::Exited {
                if let Some(code) = status.exit_code {
                    break code;
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while let Some(ev) = events.next().await {
                    if ev.container_id == id && matches!(ev.kind, RuntimeEventKind::Exited { .. }) {
                        return;
                    }
                }
            })
            .await;
        };
        let output = output(rt, &id).await;
        for line in output.lines() {
            tracing::debug!(target: "wharf_image::build", "{line}");
        }
        if code == 0 {
            Ok(())
        } else {
            Err(RunError::Exit {
                code,
                tail: tail(&output, OUTPUT_TAIL_LINES),
            })
        }
    }
    .await;
    let cleanup = async {
        rt.stop_sandbox(&sandbox).await?;
        rt.remove_sandbox(&sandbox).await
    }
    .await;
    match (result, cleanup) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(failed("remove the build sandbox", &e)),
        (Ok(()), Ok(())) => Ok(()),
    }
}

async fn output(rt: &dyn ContainerRuntime, id: &str) -> String {
    let mut out = String::new();
    let Ok(mut lines) = rt.logs(id, &LogOptions::default()).await else {
        return out;
    };
    while let Some(Ok(line)) = lines.next().await {
        out.push_str(&String::from_utf8_lossy(&line.message));
        if !line.partial {
            out.push('\n');
        }
    }
    out
}

fn tail(output: &str, lines: usize) -> String {
    let all: Vec<&str> = output.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// USER as the runtime takes it: `uid[:gid]` numerically, or a user name it resolves in
/// the root filesystem.
fn security(user: Option<&str>) -> Result<SecurityContext, String> {
    let mut sec = SecurityContext::default();
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Ok(sec);
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    match (u.parse::<i64>(), g.map(str::parse::<i64>)) {
        (Ok(uid), None) => sec.run_as_user = Some(uid),
        (Ok(uid), Some(Ok(gid))) => {
            sec.run_as_user = Some(uid);
            sec.run_as_group = Some(gid);
        }
        (Err(_), None) => sec.run_as_username = Some(u.to_string()),
        _ => {
            return Err(format!(
                "USER {user}: a group is only supported as a number with a numeric uid"
            ))
        }
    }
    Ok(sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        let s = security(Some("1000:50")).unwrap();
        assert_eq!((s.run_as_user, s.run_as_group), (Some(1000), Some(50)));
        let s = security(Some("42")).unwrap();
        assert_eq!((s.run_as_user, s.run_as_group), (Some(42), None));
        let s = security(Some("alice")).unwrap();
        assert_eq!(s.run_as_username.as_deref(), Some("alice"));
        assert!(security(Some("alice:staff")).is_err());
        assert_eq!(security(None).unwrap(), SecurityContext::default());
    }

    #[test]
    fn output_tail() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}

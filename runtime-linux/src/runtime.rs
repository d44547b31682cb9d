//! [`LinuxRuntime`]: wharf-core's `ContainerRuntime` on this crate's engine.
//!
//! Layout under the root (default `/run/wharf`):
//! `containers/` (the engine's state and the monitor's socket), `sandboxes/<id>/`
//! (`sandbox.json`, pinned `ns/{net,ipc,uts}`, `resolv.conf`, `hosts`, `hostname`),
//! `overlay/<id>/{upper,work,merged}` per container. A container's generated
//! `config.json` lives in its state directory `containers/<id>/` (one directory per
//! container: on an ext4 root mounted with `discard`, each directory removal waits for
//! the disk).
//! A sandbox's namespaces are pinned by bind mounts, so containers of a pod share them
//! without a pause process.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use oci_spec::runtime::{
    Capability, LinuxCpu, LinuxDeviceBuilder, LinuxDeviceType, LinuxMemory, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPids, LinuxResources, MountBuilder, Spec,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use wharf_core::backend::runtime::{
    ContainerConfig, ContainerFilter, ContainerRuntime, ContainerState as CState, ContainerStats,
    ContainerStatus, EventStream, ExecOutput, ExecRequest, ExecSession, LogLine, LogOptions,
    LogStream, LogStreamOf, Propagation, Resources, RootFs, RuntimeEvent, RuntimeEventKind,
    SandboxConfig, SandboxState, SandboxStatus,
};
use wharf_core::backend::{BackendError, BackendResult, ErrorKind};

use crate::cgroup::Cgroup;
use crate::client::{self, MonitorClient};
use crate::container::{ContainerState, Engine};
use crate::error::Error;
use crate::logs::LogTarget;
use crate::monitor::{Event, ExecMode, ExecProcess, Reply, Request};
use crate::rootfs::Overlay;
use crate::session::FdStream;
use crate::state::{self, Status};
use crate::sys;

/// Annotation holding the CRI metadata of a container.
const META: &str = "io.wharf.container";

/// CRI metadata stored with a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    sandbox_id: String,
    name: String,
    attempt: u32,
    image_id: String,
    labels: BTreeMap<String, String>,
    log_path: Option<PathBuf>,
    stop_signal: i32,
}

/// What a sandbox is, on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SandboxRecord {
    id: String,
    name: String,
    namespace: String,
    uid: String,
    attempt: u32,
    created_unix_nanos: u128,
    hostname: String,
    labels: BTreeMap<String, String>,
    log_directory: Option<PathBuf>,
    host_network: bool,
    host_ipc: bool,
    host_pid: bool,
    cgroup_parent: PathBuf,
    cgroup: Cgroup,
    ready: bool,
}

/// Options for [`LinuxRuntime`].
#[derive(Debug, Clone)]
pub struct LinuxRuntimeOptions {
    /// State root (default `/run/wharf`).
    pub root: PathBuf,
    /// The `wharf-runc` binary that runs the monitor (default: [`client::find_binary`]).
    pub monitor_binary: PathBuf,
    /// Rotate container logs past this size.
    pub log_max_bytes: u64,
    /// Log files kept per container.
    pub log_max_files: u32,
    /// Where relative seccomp profile paths (Kubernetes `Localhost` profiles) are
    /// resolved (default `/var/lib/kubelet/seccomp`).
    pub seccomp_profile_root: PathBuf,
}

impl Default for LinuxRuntimeOptions {
    fn default() -> Self {
        LinuxRuntimeOptions {
            root: state::DEFAULT_ROOT.into(),
            monitor_binary: client::find_binary(),
            log_max_bytes: 10 << 20,
            log_max_files: 5,
            seccomp_profile_root: "/var/lib/kubelet/seccomp".into(),
        }
    }
}

/// The native Linux container runtime, for async programs.
pub struct LinuxRuntime {
    inner: Arc<Inner>,
    subscription: tokio::task::JoinHandle<()>,
}

struct Inner {
    opts: LinuxRuntimeOptions,
    engine: Engine,
    monitor: MonitorClient,
    events: broadcast::Sender<RuntimeEvent>,
}

fn backend(op: &str, object: &str, e: Error) -> BackendError {
    let kind = match &e {
        Error::NotFound(_) => ErrorKind::NotFound,
        Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
        Error::InvalidId(_)
        | Error::ConfigParse { .. }
        | Error::ConfigField { .. }
        | Error::ConfigRead { .. }
        | Error::RootfsMissing { .. }
        | Error::UnknownUser { .. } => ErrorKind::InvalidArgument,
        Error::InvalidState { .. } => ErrorKind::FailedPrecondition,
        Error::Unsupported { .. } => ErrorKind::Unsupported,
        Error::Monitor { .. } => ErrorKind::Unavailable,
        Error::Remote { kind, .. } => match kind.as_str() {
            "not_found" => ErrorKind::NotFound,
            "already_exists" => ErrorKind::AlreadyExists,
            "invalid_state" => ErrorKind::FailedPrecondition,
            "invalid_argument" => ErrorKind::InvalidArgument,
            "unavailable" => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        },
        _ => ErrorKind::Internal,
    };
    BackendError::new(kind, op, object, e.to_string()).with_source(e)
}

/// What `pick` takes from the monitor's `reply`; otherwise the error the monitor
/// answered instead, or an unexpected reply.
fn expect_reply<T>(
    op: &str,
    id: &str,
    reply: Reply,
    pick: impl FnOnce(&Reply) -> Option<T>,
) -> BackendResult<T> {
    if let Some(v) = pick(&reply) {
        return Ok(v);
    }
    match reply {
        Reply::Error { kind, message } => Err(backend(op, id, client::reply_error(kind, message))),
        other => Err(BackendError::new(
            ErrorKind::Internal,
            op,
            id,
            format!("unexpected reply {other:?}"),
        )),
    }
}

/// The pid of an `exec_started` reply, or the error the monitor answered instead.
fn exec_started(op: &str, id: &str, reply: Reply) -> BackendResult<i32> {
    expect_reply(op, id, reply, |r| match r {
        Reply::ExecStarted { pid } => Some(*pid),
        _ => None,
    })
}

/// Runs short blocking work (state files, cgroup directories; it only waits on other
/// processes when something is left to kill). On a multi-threaded runtime it runs in
/// place — the worker hands its other tasks to another thread — which spares the
/// calling task the two thread hops of `spawn_blocking`, a cost that dominates on a
/// loaded machine; a current-thread runtime (where that is refused) gets
/// `spawn_blocking`.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        Ok(tokio::task::block_in_place(f))
    } else {
        tokio::task::spawn_blocking(f).await
    }
}

fn invalid(op: &str, object: &str, message: impl Into<String>) -> BackendError {
    BackendError::new(ErrorKind::InvalidArgument, op, object, message)
}

fn time(nanos: u128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos as u64)
}

fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = state::now_nanos() as u64;
    // Time, pid and a counter: unique on this node without a random source.
    format!("{:016x}{:08x}{:08x}", t, std::process::id(), n as u32)
}

/// The capabilities containerd gives a container by default.
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn capability(name: &str) -> Option<Capability> {
    let n = name.to_ascii_uppercase();
    let full = if n.starts_with("CAP_") {
        n
    } else {
        format!("CAP_{n}")
    };
    serde_json::from_value(serde_json::Value::String(full)).ok()
}

impl LinuxRuntime {
    /// A runtime over `opts.root`; re-adopts the containers and sandboxes found there.
    /// Must be called inside a tokio runtime.
    pub async fn new(opts: LinuxRuntimeOptions) -> Result<LinuxRuntime, Error> {
        let engine = Engine::new(opts.root.join("containers"))?;
        for d in ["sandboxes", "overlay"] {
            std::fs::create_dir_all(opts.root.join(d)).map_err(|e| {
                Error::os("-", format!("create {}", opts.root.join(d).display()), e)
            })?;
        }
        let monitor = MonitorClient::new(engine.root(), opts.monitor_binary.clone());
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            opts,
            engine,
            monitor,
            events,
        });
        // Subscribe before returning so no exit after `new` is missed.
        let (reply, reader) = inner.monitor.call(&Request::Subscribe).await?;
        if !matches!(reply, Reply::Ok) {
            return Err(Error::Monitor {
                socket: inner.monitor.socket(),
                message: format!("subscribe: {reply:?}"),
            });
        }
        let subscription = tokio::spawn(Inner::pump_events(Arc::clone(&inner), reader));
        Ok(LinuxRuntime {
            inner,
            subscription,
        })
    }

    /// Asks the monitor to exit once no container is alive (for tests and shutdown).
    pub async fn shutdown(self) {
        self.subscription.abort();
        let _ = self.inner.monitor.shutdown().await;
    }

    /// The engine (synchronous verbs, state).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}

impl Drop for LinuxRuntime {
    fn drop(&mut self) {
        self.subscription.abort();
    }
}

impl Inner {
    async fn pump_events(
        self: Arc<Self>,
        mut reader: tokio::io::BufReader<tokio::net::UnixStream>,
    ) {
        loop {
            match client::read(&mut reader).await {
                Ok(Reply::Event(Event::Exit {
                    id,
                    code,
                    oom_killed,
                    finished_unix_nanos,
                    ..
                })) => {
                    let sandbox_id = self.meta(&id).map(|m| m.sandbox_id).unwrap_or_default();
                    if oom_killed {
                        let _ = self.events.send(RuntimeEvent {
                            container_id: id.clone(),
                            sandbox_id: sandbox_id.clone(),
                            time: time(u128::from(finished_unix_nanos)),
                            kind: RuntimeEventKind::Oom,
                        });
                    }
                    let _ = self.events.send(RuntimeEvent {
                        container_id: id,
                        sandbox_id,
                        time: time(u128::from(finished_unix_nanos)),
                        kind: RuntimeEventKind::Exited {
                            exit_code: code,
                            oom_killed,
                        },
                    });
                }
                Ok(_) => {}
                Err(_) => {
                    // The monitor went away (killed?): reconnect, which restarts it and
                    // makes it re-adopt what is running.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match self.monitor.call(&Request::Subscribe).await {
                        Ok((_, r)) => reader = r,
                        Err(e) => tracing::warn!(error = %e, "monitor subscription lost"),
                    }
                }
            }
        }
    }

    /// Sends a request whose first reply carries descriptors (exec, attach); returns
    /// that reply and the session it opened.
    async fn open_session(
        &self,
        op: &str,
        id: &str,
        req: &Request,
    ) -> BackendResult<(Reply, OpenedSession)> {
        let unavailable = |e: std::io::Error| {
            BackendError::new(ErrorKind::Unavailable, op, id, format!("monitor: {e}"))
        };
        let stream = self
            .monitor
            .send(req)
            .await
            .map_err(|e| backend(op, id, e))?;
        // Descriptors come with the first reply: read it with recvmsg on a blocking socket.
        let std_stream = stream.into_std().map_err(unavailable)?;
        std_stream.set_nonblocking(false).map_err(unavailable)?;
        tokio::task::spawn_blocking(move || {
            crate::session::read_reply_with_fds(&std_stream).map(|(reply, fds, rest)| {
                let opened = OpenedSession {
                    fds,
                    rest,
                    stream: std_stream,
                };
                (reply, opened)
            })
        })
        .await
        .map_err(|e| BackendError::new(ErrorKind::Internal, op, id, e.to_string()))?
        .map_err(unavailable)
    }

    fn meta(&self, id: &str) -> Option<Meta> {
        let rec = self.engine.record(id).ok()?;
        serde_json::from_str(rec.annotations.get(META)?).ok()
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.opts.root.join("sandboxes").join(id)
    }

    fn sandbox(&self, id: &str) -> BackendResult<SandboxRecord> {
        crate::spec::check_id(id).map_err(|e| backend("get sandbox", id, e))?;
        state::read_json(&self.sandbox_dir(id).join("sandbox.json")).map_err(|e| {
            BackendError::new(
                if e.kind() == std::io::ErrorKind::NotFound {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::Internal
                },
                "get sandbox",
                id,
                e.to_string(),
            )
        })
    }

    fn emit(&self, id: &str, sandbox_id: &str, kind: RuntimeEventKind) {
        let _ = self.events.send(RuntimeEvent {
            container_id: id.into(),
            sandbox_id: sandbox_id.into(),
            time: SystemTime::now(),
            kind,
        });
    }

    fn status_of(&self, s: &ContainerState) -> Option<ContainerStatus> {
        let meta: Meta = serde_json::from_str(s.annotations.get(META)?).ok()?;
        let state = match s.status {
            Status::Creating | Status::Created => CState::Created,
            Status::Running => CState::Running,
            Status::Paused => CState::Paused,
            Status::Stopped => CState::Exited,
        };
        let (exit_code, reason) = match (&s.exit, s.status) {
            (Some(e), _) => (
                Some(e.code),
                Some(
                    if e.oom_killed {
                        "OOMKilled"
                    } else if e.code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .to_string(),
                ),
            ),
            (None, Status::Stopped) => (None, Some("Unknown".to_string())),
            _ => (None, None),
        };
        Some(ContainerStatus {
            id: s.id.clone(),
            sandbox_id: meta.sandbox_id,
            name: meta.name,
            attempt: meta.attempt,
            state,
            image_id: meta.image_id,
            created_at: time(s.created_unix_nanos),
            started_at: self.engine.started_at(&s.id).map(time),
            finished_at: s.exit.map(|e| time(e.finished_unix_nanos)),
            exit_code,
            reason,
            message: None,
            labels: meta.labels,
            log_path: meta.log_path,
        })
    }

    /// Waits until the monitor recorded the exit of `id` (or `timeout` passes).
    async fn wait_exit(&self, id: &str, timeout: Duration) -> bool {
        let mut rx = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.engine.state(id) {
                Ok(s)
                    if s.status == Status::Stopped
                        && (s.exit.is_some() || !self.engine.dir(id).path.exists()) =>
                {
                    return true
                }
                Err(Error::NotFound(_)) => return true,
                _ => {}
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            // Events wake us early; the poll covers exits recorded before we subscribed.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), async {
                loop {
                    match rx.recv().await {
                        Ok(ev) if ev.container_id == id => return,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
            .await;
        }
    }

    /// The seccomp profile of a container: the runtime default (Docker's profile for
    /// its capabilities) unless it asks for `unconfined` or names a profile file
    /// (relative paths under `seccomp_profile_root`). Privileged containers run
    /// unconfined by default, as with containerd.
    fn seccomp_profile(
        &self,
        c: &ContainerConfig,
        caps: &std::collections::HashSet<Capability>,
    ) -> BackendResult<Option<oci_spec::runtime::LinuxSeccomp>> {
        let op = "create container";
        let profile = c.security.seccomp_profile.as_deref().map(str::trim);
        match profile {
            Some(p) if p.eq_ignore_ascii_case("unconfined") => Ok(None),
            None | Some("runtime/default" | "docker/default" | "RuntimeDefault") => {
                if c.security.privileged && profile.is_none() {
                    return Ok(None);
                }
                if !crate::seccomp::ENABLED {
                    tracing::warn!(container = %c.name, "no seccomp support in this build: the runtime default profile is not applied");
                    return Ok(None);
                }
                let names: Vec<String> = caps
                    .iter()
                    .filter_map(|c| serde_json::to_value(c).ok()?.as_str().map(str::to_string))
                    .collect();
                Ok(Some(crate::seccomp::default_profile(&names)))
            }
            Some(path) => {
                let path = self
                    .opts
                    .seccomp_profile_root
                    .join(path.trim_start_matches("localhost/"));
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        op,
                        &c.name,
                        format!("seccomp profile {}: {e}", path.display()),
                    )
                })?;
                serde_json::from_str(&text).map(Some).map_err(|e| {
                    invalid(
                        op,
                        &c.name,
                        format!("seccomp profile {}: {e}", path.display()),
                    )
                })
            }
        }
    }

    fn build_spec(
        &self,
        id: &str,
        sb: &SandboxRecord,
        c: &ContainerConfig,
    ) -> BackendResult<(Spec, Option<Overlay>, Vec<PathBuf>)> {
        let op = "create container";
        if c.command.is_empty() {
            return Err(invalid(op, &c.name, "command is empty"));
        }
        let mut spec = crate::spec::default_spec();
        let mut owned = Vec::new();
        let image = c
            .image
            .as_ref()
            .ok_or_else(|| invalid(op, &c.name, "no image"))?;
        let (root_path, overlay) = match &image.rootfs {
            RootFs::Directory(p) => (p.clone(), None),
            RootFs::Layers(layers) if !layers.is_empty() => {
                let base = self.opts.root.join("overlay").join(id);
                let (upper, work, merged) =
                    (base.join("upper"), base.join("work"), base.join("merged"));
                for d in [&upper, &work, &merged] {
                    std::fs::create_dir_all(d).map_err(|e| {
                        backend(op, id, Error::os(id, format!("create {}", d.display()), e))
                    })?;
                }
                owned.push(base);
                // overlayfs wants the topmost layer first.
                (
                    merged,
                    Some(Overlay {
                        lower: layers.iter().rev().cloned().collect(),
                        upper,
                        work,
                    }),
                )
            }
            _ => {
                return Err(invalid(
                    op,
                    &c.name,
                    "the linux runtime needs a root filesystem (image layers or a directory)",
                ))
            }
        };
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(root_path);
        root.set_readonly(Some(c.security.readonly_rootfs));
        spec.set_root(Some(root));
        spec.set_hostname(Some(sb.hostname.clone()));

        let mut process = spec.process().clone().unwrap_or_default();
        // With a terminal the monitor keeps the pty master (logs it, serves attachers).
        process.set_terminal(Some(c.tty));
        process.set_args(Some(c.command.clone()));
        let mut env: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !c.env.iter().any(|(k, _)| k == "PATH") {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        if !c.env.iter().any(|(k, _)| k == "HOSTNAME") {
            env.push(format!("HOSTNAME={}", sb.hostname));
        }
        if c.tty && !c.env.iter().any(|(k, _)| k == "TERM") {
            env.push("TERM=xterm".into());
        }
        process.set_env(Some(env));
        process.set_cwd(if c.working_dir.is_empty() {
            "/".into()
        } else {
            c.working_dir.clone().into()
        });
        let mut user = process.user().clone();
        let sec = &c.security;
        match (sec.run_as_user, &sec.run_as_username) {
            (Some(u), _) => {
                user.set_uid(
                    u32::try_from(u)
                        .map_err(|_| invalid(op, &c.name, format!("runAsUser {u} out of range")))?,
                );
                user.set_gid(
                    sec.run_as_group
                        .map_or(Ok(0), u32::try_from)
                        .map_err(|_| invalid(op, &c.name, "runAsGroup out of range"))?,
                );
            }
            (None, Some(name)) if !name.is_empty() => {
                if let Ok(uid) = name.parse::<u32>() {
                    user.set_uid(uid);
                } else {
                    user.set_username(Some(name.clone()));
                }
            }
            _ => {}
        }
        if !sec.supplemental_groups.is_empty() {
            user.set_additional_gids(Some(
                sec.supplemental_groups
                    .iter()
                    .filter_map(|g| u32::try_from(*g).ok())
                    .collect(),
            ));
        }
        process.set_user(user);
        process.set_no_new_privileges(Some(sec.no_new_privileges));
        process.set_oom_score_adj(c.resources.oom_score_adj);
        let mut caps: std::collections::HashSet<Capability> = if sec.privileged {
            crate::caps::NAMES
                .iter()
                .filter_map(|n| capability(n))
                .collect()
        } else {
            DEFAULT_CAPS.iter().filter_map(|n| capability(n)).collect()
        };
        for d in &sec.capabilities.drop {
            if d.eq_ignore_ascii_case("ALL") {
                caps.clear();
            } else if let Some(cap) = capability(d) {
                caps.remove(&cap);
            }
        }
        for a in &sec.capabilities.add {
            if a.eq_ignore_ascii_case("ALL") {
                caps.extend(crate::caps::NAMES.iter().filter_map(|n| capability(n)));
            } else {
                caps.insert(
                    capability(a)
                        .ok_or_else(|| invalid(op, &c.name, format!("unknown capability {a:?}")))?,
                );
            }
        }
        let mut pc = process.capabilities().clone().unwrap_or_default();
        pc.set_bounding(Some(caps.clone()));
        pc.set_effective(Some(caps.clone()));
        pc.set_permitted(Some(caps.clone()));
        pc.set_inheritable(Some(Default::default()));
        pc.set_ambient(Some(Default::default()));
        process.set_capabilities(Some(pc));
        spec.set_process(Some(process));

        let mut mounts = spec.mounts().clone().unwrap_or_default();
        let sbdir = self.sandbox_dir(&sb.id);
        for (file, dest) in [
            ("hosts", "/etc/hosts"),
            ("resolv.conf", "/etc/resolv.conf"),
            ("hostname", "/etc/hostname"),
        ] {
            mounts.push(
                MountBuilder::default()
                    .destination(dest)
                    .typ("bind")
                    .source(sbdir.join(file))
                    .options(vec!["rbind".into(), "rprivate".into()])
                    .build()
                    .expect("complete"),
            );
        }
        for m in &c.mounts {
            if !m.container_path.starts_with('/') {
                return Err(invalid(
                    op,
                    &c.name,
                    format!("mount path {:?} is not absolute", m.container_path),
                ));
            }
            if !m.host_path.exists() {
                return Err(invalid(
                    op,
                    &c.name,
                    format!("mount source {} does not exist", m.host_path.display()),
                ));
            }
            let mut options = vec!["rbind".to_string()];
            options.push(if m.readonly { "ro" } else { "rw" }.into());
            options.push(
                match m.propagation {
                    Propagation::Private => "rprivate",
                    Propagation::HostToContainer => "rslave",
                    Propagation::Bidirectional => "rshared",
                }
                .into(),
            );
            mounts.push(
                MountBuilder::default()
                    .destination(&m.container_path)
                    .typ("bind")
                    .source(&m.host_path)
                    .options(options)
                    .build()
                    .expect("complete"),
            );
        }
        if sec.privileged {
            for m in mounts.iter_mut() {
                if m.typ().as_deref() == Some("sysfs") || m.typ().as_deref() == Some("cgroup") {
                    let opts: Vec<String> = m
                        .options()
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|o| o != "ro")
                        .collect();
                    m.set_options(Some(opts));
                }
            }
        }
        spec.set_mounts(Some(mounts));

        let mut linux = spec.linux().clone().unwrap_or_default();
        let mut ns = vec![
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Mount)
                .build()
                .expect("complete"),
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Cgroup)
                .build()
                .expect("complete"),
        ];
        if !sb.host_pid {
            ns.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Pid)
                    .build()
                    .expect("complete"),
            );
        }
        let pins = [
            (LinuxNamespaceType::Uts, "uts", false),
            (LinuxNamespaceType::Ipc, "ipc", sb.host_ipc),
            (LinuxNamespaceType::Network, "net", sb.host_network),
        ];
        for (typ, file, host) in pins {
            if !host {
                ns.push(
                    LinuxNamespaceBuilder::default()
                        .typ(typ)
                        .path(sbdir.join("ns").join(file))
                        .build()
                        .expect("complete"),
                );
            }
        }
        linux.set_namespaces(Some(ns));
        if sec.privileged {
            linux.set_masked_paths(Some(vec![]));
            linux.set_readonly_paths(Some(vec![]));
        }
        let mut devices = Vec::new();
        for d in &c.devices {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            let meta = std::fs::metadata(&d.host_path).map_err(|e| {
                invalid(
                    op,
                    &c.name,
                    format!("device {}: {e}", d.host_path.display()),
                )
            })?;
            let typ = if meta.file_type().is_block_device() {
                LinuxDeviceType::B
            } else {
                LinuxDeviceType::C
            };
            let rdev = meta.rdev();
            devices.push(
                LinuxDeviceBuilder::default()
                    .path(&d.container_path)
                    .typ(typ)
                    .major(libc::major(rdev) as i64)
                    .minor(libc::minor(rdev) as i64)
                    .file_mode(meta.mode() & 0o777)
                    .build()
                    .expect("complete"),
            );
        }
        linux.set_devices(Some(devices));
        let mut res = linux.resources().clone().unwrap_or_default();
        apply_resources(&mut res, &c.resources);
        if sec.privileged {
            res.set_devices(Some(vec![
                oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .access("rwm")
                    .build()
                    .expect("complete"),
            ]));
        }
        linux.set_resources(Some(res));
        linux.set_cgroups_path(Some(Path::new("/").join(&sb.cgroup_parent).join(id)));
        linux.set_seccomp(self.seccomp_profile(c, &caps)?);
        spec.set_linux(Some(linux));
        Ok((spec, overlay, owned))
    }
}

fn apply_resources(res: &mut LinuxResources, r: &Resources) {
    if r.memory_limit.is_some() || r.memory_swap_limit.is_some() || r.memory_reservation.is_some() {
        let mut m: LinuxMemory = res.memory().unwrap_or_default();
        m.set_limit(r.memory_limit);
        m.set_swap(r.memory_swap_limit);
        m.set_reservation(r.memory_reservation);
        res.set_memory(Some(m));
    }
    if r.cpu_shares.is_some()
        || r.cpu_quota.is_some()
        || r.cpu_period.is_some()
        || r.cpuset_cpus.is_some()
    {
        let mut c: LinuxCpu = res.cpu().clone().unwrap_or_default();
        c.set_shares(r.cpu_shares);
        c.set_quota(r.cpu_quota);
        c.set_period(r.cpu_period);
        c.set_cpus(r.cpuset_cpus.clone());
        res.set_cpu(Some(c));
    }
    if let Some(l) = r.pids_limit {
        let mut p = LinuxPids::default();
        p.set_limit(l);
        res.set_pids(Some(p));
    }
}

fn resolv_conf(dns: &wharf_core::backend::runtime::DnsConfig) -> String {
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    }
    let mut s = String::new();
    for n in &dns.servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

#[async_trait]
impl ContainerRuntime for LinuxRuntime {
    fn name(&self) -> &str {
        "linux"
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> BackendResult<String> {
        let inner = &self.inner;
        let id = new_id();
        let op = "run sandbox";
        let dir = inner.sandbox_dir(&id);
        let nsdir = dir.join("ns");
        std::fs::create_dir_all(&nsdir)
            .map_err(|e| backend(op, &id, Error::os(&id, "create sandbox dir", e)))?;
        let hostname = if config.hostname.is_empty() {
            config.name.clone()
        } else {
            config.hostname.clone()
        };
        let cgroup_parent = PathBuf::from(
            config
                .cgroup_parent
                .clone()
                .unwrap_or_else(|| format!("wharf/pod-{id}"))
                .trim_start_matches('/'),
        );
        let result: BackendResult<SandboxRecord> = async {
            let write = |name: &str, text: String| std::fs::write(dir.join(name), text).map_err(|e| backend(op, &id, Error::os(&id, format!("write {name}"), e)));
            write("hostname", format!("{hostname}\n"))?;
            write("hosts", format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"))?;
            write("resolv.conf", resolv_conf(&config.dns))?;
            let cgroup = Cgroup::create(&id, &cgroup_parent, None).map_err(|e| backend(op, &id, e))?;
            let mut flags = libc::CLONE_NEWUTS;
            if !config.host_namespaces.ipc {
                flags |= libc::CLONE_NEWIPC;
            }
            if !config.host_namespaces.network {
                flags |= libc::CLONE_NEWNET;
            }
            let sysctls: Vec<(String, String)> = config.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let (reply, _) = inner.monitor.call(&Request::PinNamespaces { dir: nsdir.clone(), flags, hostname: hostname.clone(), sysctls }).await.map_err(|e| backend(op, &id, e))?;
            if let Reply::Error { kind, message } = reply {
                let _ = cgroup.destroy();
                return Err(backend(op, &id, client::reply_error(kind, message)));
            }
            Ok(SandboxRecord {
                id: id.clone(),
                name: config.name.clone(),
                namespace: config.namespace.clone(),
                uid: config.uid.clone(),
                attempt: config.attempt,
                created_unix_nanos: state::now_nanos(),
                hostname,
                labels: config.labels.clone(),
                log_directory: config.log_directory.clone(),
                host_network: config.host_namespaces.network,
                host_ipc: config.host_namespaces.ipc,
                host_pid: config.host_namespaces.pid,
                cgroup_parent,
                cgroup,
                ready: true,
            })
        }
        .await;
        match result {
            Ok(rec) => {
                state::write_json(&dir.join("sandbox.json"), &rec)
                    .map_err(|e| backend(op, &id, Error::os(&id, "write sandbox.json", e)))?;
                Ok(id)
            }
            Err(e) => {
                unpin(&nsdir);
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn stop_sandbox(&self, sandbox_id: &str) -> BackendResult<()> {
        let mut rec = match self.inner.sandbox(sandbox_id) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let filter = ContainerFilter {
            sandbox_id: Some(sandbox_id.into()),
            ..Default::default()
        };
        for c in self.list_containers(&filter).await? {
            if matches!(c.state, CState::Running | CState::Paused | CState::Created) {
                self.stop_container(&c.id, Duration::ZERO).await?;
            }
        }
        unpin(&self.inner.sandbox_dir(sandbox_id).join("ns"));
        rec.ready = false;
        state::write_json(
            &self.inner.sandbox_dir(sandbox_id).join("sandbox.json"),
            &rec,
        )
        .map_err(|e| {
            backend(
                "stop sandbox",
                sandbox_id,
                Error::os(sandbox_id, "write sandbox.json", e),
            )
        })
    }

    async fn remove_sandbox(&self, sandbox_id: &str) -> BackendResult<()> {
        let rec = match self.inner.sandbox(sandbox_id) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let filter = ContainerFilter {
            sandbox_id: Some(sandbox_id.into()),
            ..Default::default()
        };
        for c in self.list_containers(&filter).await? {
            self.remove_container(&c.id).await?;
        }
        let dir = self.inner.sandbox_dir(sandbox_id);
        unpin(&dir.join("ns"));
        rec.cgroup.destroy().map_err(|e| {
            backend(
                "remove sandbox",
                sandbox_id,
                Error::os(sandbox_id, "remove cgroup", e),
            )
        })?;
        std::fs::remove_dir_all(&dir).map_err(|e| {
            backend(
                "remove sandbox",
                sandbox_id,
                Error::os(sandbox_id, "remove sandbox dir", e),
            )
        })
    }

    async fn sandbox_status(&self, sandbox_id: &str) -> BackendResult<SandboxStatus> {
        let rec = self.inner.sandbox(sandbox_id)?;
        Ok(sandbox_status(&self.inner, rec))
    }

    async fn list_sandboxes(&self) -> BackendResult<Vec<SandboxStatus>> {
        let dir = self.inner.opts.root.join("sandboxes");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir)
            .map_err(|e| backend("list sandboxes", "-", Error::os("-", "read sandboxes", e)))?
            .flatten()
        {
            if let Ok(rec) = state::read_json::<SandboxRecord>(&e.path().join("sandbox.json")) {
                out.push(sandbox_status(&self.inner, rec));
            }
        }
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> BackendResult<String> {
        let inner = &self.inner;
        let op = "create container";
        let sb = inner.sandbox(sandbox_id)?;
        if !sb.ready {
            return Err(BackendError::new(
                ErrorKind::FailedPrecondition,
                op,
                sandbox_id,
                "sandbox is not ready",
            ));
        }
        let id = new_id();
        let (mut spec, overlay, owned) = inner.build_spec(&id, &sb, config)?;
        let log_path = match (&sb.log_directory, &config.log_path) {
            (Some(d), Some(p)) => Some(d.join(p)),
            _ => None,
        };
        let meta = Meta {
            sandbox_id: sandbox_id.into(),
            name: config.name.clone(),
            attempt: config.attempt,
            image_id: config
                .image
                .as_ref()
                .map(|i| i.id.clone())
                .unwrap_or_default(),
            labels: config.labels.clone(),
            log_path: log_path.clone(),
            stop_signal: config.stop_signal.unwrap_or(libc::SIGTERM),
        };
        let mut annotations: std::collections::HashMap<String, String> = config
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        annotations.insert(
            META.into(),
            serde_json::to_string(&meta).expect("meta serialises"),
        );
        spec.set_annotations(Some(annotations));
        // The bundle is the container's future state directory; the engine takes it
        // over (see `Engine::create`).
        let state_dir = inner.engine.dir(&id);
        let bundle = state_dir.path.clone();
        let cleanup = |owned: &[PathBuf]| {
            for d in owned {
                let _ = std::fs::remove_dir_all(d);
            }
            // Only while it holds nothing but the config: once the engine claimed it,
            // the engine removes it if the create fails, and once it wrote the state,
            // the directory is the container's and goes with its deletion.
            if !state_dir.claim().exists() && !state_dir.state().exists() {
                let _ = std::fs::remove_dir_all(&bundle);
            }
        };
        if let Err(e) = std::fs::create_dir(&bundle).and_then(|()| {
            std::fs::write(
                bundle.join("config.json"),
                serde_json::to_vec_pretty(&spec).expect("spec serialises"),
            )
        }) {
            cleanup(&owned);
            return Err(backend(op, &id, Error::os(&id, "write bundle", e)));
        }
        let log = log_path.map(|path| LogTarget {
            path,
            max_bytes: inner.opts.log_max_bytes,
            max_files: inner.opts.log_max_files,
        });
        let req = Request::Create {
            id: id.clone(),
            bundle: bundle.clone(),
            overlay,
            owned_dirs: owned.clone(),
            log,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
        };
        let reply = inner.monitor.call(&req).await.map(|(r, _)| r);
        match reply {
            Ok(Reply::Created { .. }) => {
                inner.emit(&id, sandbox_id, RuntimeEventKind::Created);
                Ok(id)
            }
            Ok(Reply::Error { kind, message }) => {
                cleanup(&owned);
                Err(backend(
                    op,
                    &config.name,
                    client::reply_error(kind, message),
                ))
            }
            Ok(other) => {
                cleanup(&owned);
                Err(BackendError::new(
                    ErrorKind::Internal,
                    op,
                    &id,
                    format!("unexpected reply {other:?}"),
                ))
            }
            Err(e) => {
                cleanup(&owned);
                Err(backend(op, &id, e))
            }
        }
    }

    async fn start_container(&self, container_id: &str) -> BackendResult<()> {
        let inner = Arc::clone(&self.inner);
        let id = container_id.to_string();
        // Releasing the process is a few small file operations, done here (a thread hop
        // costs more); poststart hooks, if any, may run for long, on a blocking thread.
        let rec = inner
            .engine
            .release(&id)
            .map_err(|e| backend("start container", container_id, e))?;
        if !rec.poststart.is_empty() {
            blocking(move || inner.engine.run_poststart(&rec))
                .await
                .map_err(|e| {
                    BackendError::new(
                        ErrorKind::Internal,
                        "start container",
                        container_id,
                        e.to_string(),
                    )
                })?;
        }
        let sb = self
            .inner
            .meta(container_id)
            .map(|m| m.sandbox_id)
            .unwrap_or_default();
        self.inner
            .emit(container_id, &sb, RuntimeEventKind::Started);
        Ok(())
    }

    async fn stop_container(&self, container_id: &str, grace: Duration) -> BackendResult<()> {
        let inner = &self.inner;
        let st = match inner.engine.state(container_id) {
            Ok(s) => s,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(backend("stop container", container_id, e)),
        };
        if st.status == Status::Stopped {
            inner.wait_exit(container_id, Duration::from_secs(2)).await;
            return Ok(());
        }
        let signal = inner
            .meta(container_id)
            .map(|m| m.stop_signal)
            .unwrap_or(libc::SIGTERM);
        if !grace.is_zero() && st.status != Status::Created {
            let _ = inner.engine.kill(container_id, signal, false);
            if inner.wait_exit(container_id, grace).await {
                return Ok(());
            }
        }
        let _ = inner.engine.kill(container_id, libc::SIGKILL, false);
        let _ = inner.engine.kill(container_id, libc::SIGKILL, true);
        if inner.wait_exit(container_id, Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(BackendError::new(
                ErrorKind::Timeout,
                "stop container",
                container_id,
                "still running 10 s after SIGKILL",
            ))
        }
    }

    async fn kill_container(&self, container_id: &str, signal: i32) -> BackendResult<()> {
        self.inner
            .engine
            .kill(container_id, signal, false)
            .map_err(|e| backend("kill container", container_id, e))
    }

    async fn remove_container(&self, container_id: &str) -> BackendResult<()> {
        let sb = self
            .inner
            .meta(container_id)
            .map(|m| m.sandbox_id)
            .unwrap_or_default();
        match self.inner.engine.state(container_id) {
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(backend("remove container", container_id, e)),
            Ok(s) if s.status != Status::Stopped => {
                self.stop_container(container_id, Duration::ZERO).await?
            }
            // Dead but not reaped yet: the monitor is about to write its exit record into
            // the state directory and announce the exit; removing the directory meanwhile
            // would lose both. (Bounded: an exit nobody watches is recorded by the next
            // monitor.)
            Ok(s) if s.exit.is_none() => {
                self.inner
                    .wait_exit(container_id, Duration::from_secs(2))
                    .await;
            }
            Ok(_) => {}
        }
        let inner = Arc::clone(&self.inner);
        let id = container_id.to_string();
        let res = blocking(move || inner.engine.delete(&id, true))
            .await
            .map_err(|e| {
                BackendError::new(
                    ErrorKind::Internal,
                    "remove container",
                    container_id,
                    e.to_string(),
                )
            })?;
        match res {
            Ok(()) | Err(Error::NotFound(_)) => {
                self.inner
                    .emit(container_id, &sb, RuntimeEventKind::Removed);
                Ok(())
            }
            Err(e) => Err(backend("remove container", container_id, e)),
        }
    }

    async fn container_status(&self, container_id: &str) -> BackendResult<ContainerStatus> {
        let s = self
            .inner
            .engine
            .state(container_id)
            .map_err(|e| backend("container status", container_id, e))?;
        self.inner.status_of(&s).ok_or_else(|| {
            BackendError::new(
                ErrorKind::NotFound,
                "container status",
                container_id,
                "not a container of this runtime",
            )
        })
    }

    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> BackendResult<Vec<ContainerStatus>> {
        let all = self
            .inner
            .engine
            .list()
            .map_err(|e| backend("list containers", "-", e))?;
        Ok(all
            .iter()
            .filter_map(|s| self.inner.status_of(s))
            .filter(|c| {
                filter
                    .sandbox_id
                    .as_ref()
                    .is_none_or(|s| *s == c.sandbox_id)
            })
            .filter(|c| filter.state.is_none_or(|s| s == c.state))
            .filter(|c| {
                filter
                    .labels
                    .iter()
                    .all(|(k, v)| c.labels.get(k) == Some(v))
            })
            .collect())
    }

    async fn pause_container(&self, container_id: &str) -> BackendResult<()> {
        self.inner
            .engine
            .pause(container_id)
            .map_err(|e| backend("pause container", container_id, e))
    }

    async fn resume_container(&self, container_id: &str) -> BackendResult<()> {
        self.inner
            .engine
            .resume(container_id)
            .map_err(|e| backend("resume container", container_id, e))
    }

    async fn update_resources(
        &self,
        container_id: &str,
        resources: &Resources,
    ) -> BackendResult<()> {
        let mut res = LinuxResources::default();
        apply_resources(&mut res, resources);
        self.inner
            .engine
            .update(container_id, &res)
            .map_err(|e| backend("update resources", container_id, e))
    }

    async fn exec_sync(
        &self,
        container_id: &str,
        command: &[String],
        timeout: Duration,
    ) -> BackendResult<ExecOutput> {
        let op = "exec";
        if command.is_empty() {
            return Err(invalid(op, container_id, "command is empty"));
        }
        let req = Request::Exec {
            id: container_id.into(),
            process: ExecProcess {
                args: command.to_vec(),
                ..Default::default()
            },
            mode: ExecMode::Capture,
        };
        let (reply, mut reader) = self
            .inner
            .monitor
            .call(&req)
            .await
            .map_err(|e| backend(op, container_id, e))?;
        let pid = exec_started(op, container_id, reply)?;
        match tokio::time::timeout(timeout, client::read(&mut reader)).await {
            Ok(Ok(Reply::ExecDone {
                code,
                stdout,
                stderr,
            })) => Ok(ExecOutput {
                exit_code: code,
                stdout: Bytes::from(stdout),
                stderr: Bytes::from(stderr),
            }),
            Ok(Ok(other)) => Err(BackendError::new(
                ErrorKind::Internal,
                op,
                container_id,
                format!("unexpected reply {other:?}"),
            )),
            Ok(Err(e)) => Err(BackendError::new(
                ErrorKind::Unavailable,
                op,
                container_id,
                format!("monitor: {e}"),
            )),
            Err(_) => {
                // The pid is the monitor's child until reaped, so it cannot be recycled yet.
                let _ = sys::kill(pid, libc::SIGKILL);
                Err(BackendError::new(
                    ErrorKind::Timeout,
                    op,
                    container_id,
                    format!("{:?} did not finish within {timeout:?}", command),
                ))
            }
        }
    }

    async fn exec(&self, container_id: &str, request: &ExecRequest) -> BackendResult<ExecSession> {
        let op = "exec";
        if request.command.is_empty() {
            return Err(invalid(op, container_id, "command is empty"));
        }
        let mut env: Vec<String> = request
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if request.tty && !request.env.iter().any(|(k, _)| k == "TERM") {
            env.push("TERM=xterm".into());
        }
        let req = Request::Exec {
            id: container_id.into(),
            process: ExecProcess {
                args: request.command.clone(),
                env,
                ..Default::default()
            },
            mode: ExecMode::Interactive {
                terminal: request
                    .tty
                    .then_some(crate::container::Terminal { size: request.size }),
                stdin: request.stdin,
            },
        };
        let (reply, opened) = self.inner.open_session(op, container_id, &req).await?;
        exec_started(op, container_id, reply)?;
        let layout = Layout::Exec {
            tty: request.tty,
            stdin: request.stdin,
        };
        opened.into_session(op, container_id, layout)
    }

    async fn attach(&self, container_id: &str, stdin: bool) -> BackendResult<ExecSession> {
        let op = "attach";
        let req = Request::Attach {
            id: container_id.into(),
            stdin,
        };
        let (reply, opened) = self.inner.open_session(op, container_id, &req).await?;
        let layout = expect_reply(op, container_id, reply, |r| match r {
            Reply::Attached { terminal, stdin } => Some(Layout::Attach {
                terminal: *terminal,
                stdin: *stdin,
            }),
            _ => None,
        })?;
        opened.into_session(op, container_id, layout)
    }

    async fn logs(&self, container_id: &str, options: &LogOptions) -> BackendResult<LogStreamOf> {
        let meta = self.inner.meta(container_id).ok_or_else(|| {
            BackendError::new(
                ErrorKind::NotFound,
                "logs",
                container_id,
                "no such container",
            )
        })?;
        let path = meta.log_path.ok_or_else(|| {
            BackendError::new(
                ErrorKind::FailedPrecondition,
                "logs",
                container_id,
                "the container has no log file",
            )
        })?;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines: Vec<LogLine> = text
            .lines()
            .filter_map(parse_log_line)
            .filter(|l| options.since.is_none_or(|s| l.time >= s))
            .collect();
        if let Some(n) = options.tail {
            let skip = lines.len().saturating_sub(n);
            lines.drain(..skip);
        }
        let initial = futures::stream::iter(lines.into_iter().map(Ok));
        if !options.follow {
            return Ok(Box::pin(initial));
        }
        let inner = Arc::clone(&self.inner);
        let id = container_id.to_string();
        let offset = text.len() as u64;
        let follow = futures::stream::unfold((offset, false), move |(mut offset, done)| {
            let inner = Arc::clone(&inner);
            let path = path.clone();
            let id = id.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    let stopped = inner
                        .engine
                        .state(&id)
                        .map(|s| s.status == Status::Stopped)
                        .unwrap_or(true);
                    let data = read_from(&path, offset);
                    if let Some(end) = data.rfind('\n') {
                        offset += end as u64 + 1;
                        let batch: Vec<BackendResult<LogLine>> = data[..end]
                            .lines()
                            .filter_map(parse_log_line)
                            .map(Ok)
                            .collect();
                        return Some((futures::stream::iter(batch), (offset, false)));
                    }
                    if stopped {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        use futures::StreamExt;
        Ok(Box::pin(initial.chain(follow.flatten())))
    }

    async fn stats(&self, container_id: &str) -> BackendResult<ContainerStats> {
        let s = self
            .inner
            .engine
            .stats(container_id)
            .map_err(|e| backend("stats", container_id, e))?;
        Ok(ContainerStats {
            timestamp: Some(SystemTime::now()),
            cpu_usage_nanos: s.cpu_ns,
            memory_working_set_bytes: s.memory_bytes.saturating_sub(s.inactive_file_bytes),
            memory_usage_bytes: s.memory_bytes,
            pids: s.pids,
        })
    }

    fn events(&self) -> EventStream {
        let rx = self.inner.events.subscribe();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((ev, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }
}

/// The descriptors an `exec_started` or `attached` reply carries, in order.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// An exec: with `tty` the pty master alone (output, input and resizing); else
    /// stdout, stderr and, with `stdin`, stdin.
    Exec {
        /// The process has a terminal.
        tty: bool,
        /// Its stdin is connected.
        stdin: bool,
    },
    /// An attach: the output pipe, then with `terminal` the pty master (resizing, and
    /// input with `stdin`), else the stderr pipe and, with `stdin`, stdin.
    Attach {
        /// The container has a terminal.
        terminal: bool,
        /// The attacher may write its stdin.
        stdin: bool,
    },
}

impl Layout {
    fn terminal(self) -> bool {
        match self {
            Layout::Exec { tty, .. } => tty,
            Layout::Attach { terminal, .. } => terminal,
        }
    }

    fn stdin(self) -> bool {
        match self {
            Layout::Exec { stdin, .. } | Layout::Attach { stdin, .. } => stdin,
        }
    }

    /// How many descriptors come with the reply.
    fn descriptors(self) -> usize {
        match self {
            Layout::Exec { tty: true, .. } => 1,
            Layout::Attach { terminal: true, .. } => 2,
            _ => 2 + usize::from(self.stdin()),
        }
    }
}

/// A session the monitor opened (`exec_started` or `attached` read): the descriptors
/// of that reply, bytes read past it and the connection, on which `exec_done` follows.
struct OpenedSession {
    fds: Vec<OwnedFd>,
    rest: Vec<u8>,
    stream: std::os::unix::net::UnixStream,
}

impl OpenedSession {
    /// Builds the [`ExecSession`]: streams from the descriptors as `layout` orders
    /// them (with a terminal the last one is the pty master and the output the one
    /// before it, or the master itself when alone); `wait` reads `exec_done`.
    fn into_session(
        self,
        op: &'static str,
        id: &str,
        layout: Layout,
    ) -> BackendResult<ExecSession> {
        let OpenedSession {
            mut fds,
            rest,
            stream,
        } = self;
        let internal =
            |e: std::io::Error| BackendError::new(ErrorKind::Internal, op, id, e.to_string());
        let expected = layout.descriptors();
        if fds.len() != expected {
            return Err(BackendError::new(
                ErrorKind::Internal,
                op,
                id,
                format!(
                    "the monitor sent {} descriptors, expected {expected}",
                    fds.len()
                ),
            ));
        }
        let wrap = |fd: OwnedFd| -> BackendResult<Pin<Box<FdStream>>> {
            FdStream::new(fd).map(Box::pin).map_err(internal)
        };
        let mut session = ExecSession {
            stdin: None,
            stdout: None,
            stderr: None,
            resize: None,
            wait: Box::pin(async { Ok(0) }),
        };
        if layout.terminal() {
            let master = fds.pop().expect("counted");
            let output = match fds.pop() {
                Some(out) => out,
                None => master.try_clone().map_err(internal)?,
            };
            session.resize = Some(crate::session::resize_task(
                master.try_clone().map_err(internal)?,
            ));
            session.stdout = Some(wrap(output)? as _);
            if layout.stdin() {
                session.stdin = Some(wrap(master)? as _);
            }
        } else {
            let mut it = fds.into_iter();
            session.stdout = it.next().map(wrap).transpose()?.map(|s| s as _);
            session.stderr = it.next().map(wrap).transpose()?.map(|s| s as _);
            session.stdin = it.next().map(wrap).transpose()?.map(|s| s as _);
        }
        stream.set_nonblocking(true).map_err(internal)?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(internal)?;
        let id = id.to_string();
        session.wait = Box::pin(async move {
            let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::chain(
                std::io::Cursor::new(rest),
                stream,
            ));
            let mut line = String::new();
            loop {
                line.clear();
                let n = tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line)
                    .await
                    .map_err(|e| {
                        BackendError::new(ErrorKind::Unavailable, op, &id, e.to_string())
                    })?;
                if n == 0 {
                    return Err(BackendError::new(
                        ErrorKind::Unavailable,
                        op,
                        &id,
                        "the monitor closed the session before the process ended",
                    ));
                }
                match serde_json::from_str(&line) {
                    Ok(Reply::ExecDone { code, .. }) => return Ok(code),
                    Ok(Reply::Error { kind, message }) => {
                        return Err(backend(op, &id, client::reply_error(kind, message)))
                    }
                    _ => {}
                }
            }
        });
        Ok(session)
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_string(&mut s);
        }
    }
    s
}

fn parse_log_line(line: &str) -> Option<LogLine> {
    let (ts, stream, full, msg) = crate::logs::parse_line(line)?;
    Some(LogLine {
        time: parse_rfc3339(ts).unwrap_or(UNIX_EPOCH),
        stream: if stream == "stderr" {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        },
        message: Bytes::copy_from_slice(msg.as_bytes()),
        partial: !full,
    })
}

/// Parses the timestamps this crate writes (`YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let rest = rest.strip_suffix('Z')?;
    let (hms, frac) = rest.split_once('.').unwrap_or((rest, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from civil (inverse of state::rfc3339).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let nanos: u32 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

fn sandbox_status(inner: &Inner, rec: SandboxRecord) -> SandboxStatus {
    let netns = (!rec.host_network).then(|| inner.sandbox_dir(&rec.id).join("ns").join("net"));
    SandboxStatus {
        id: rec.id,
        name: rec.name,
        namespace: rec.namespace,
        uid: rec.uid,
        attempt: rec.attempt,
        state: if rec.ready {
            SandboxState::Ready
        } else {
            SandboxState::NotReady
        },
        created_at: time(rec.created_unix_nanos),
        netns_path: if rec.ready { netns } else { None },
        labels: rec.labels,
    }
}

/// Releases pinned namespaces (unmount and remove the pin files).
fn unpin(nsdir: &Path) {
    for name in ["net", "ipc", "uts"] {
        let p = nsdir.join(name);
        if let Ok(c) = sys::cstr(&p) {
            let _ = sys::umount2(&c, libc::MNT_DETACH);
        }
        let _ = std::fs::remove_file(&p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        for n in [0u128, 1_795_000_000_123_456_789, 951_782_400_000_000_001] {
            let s = state::rfc3339(n);
            assert_eq!(parse_rfc3339(&s), Some(time(n)), "{s}");
        }
    }

    #[test]
    fn capability_names() {
        assert_eq!(capability("net_admin"), Some(Capability::NetAdmin));
        assert_eq!(capability("CAP_KILL"), Some(Capability::Kill));
        assert!(capability("bogus").is_none());
    }

    #[test]
    fn resources_map() {
        let mut res = LinuxResources::default();
        apply_resources(
            &mut res,
            &Resources {
                memory_limit: Some(1 << 20),
                pids_limit: Some(5),
                cpu_shares: Some(512),
                ..Default::default()
            },
        );
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(1 << 20));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 5);
        assert_eq!(res.cpu().as_ref().unwrap().shares(), Some(512));
    }
}

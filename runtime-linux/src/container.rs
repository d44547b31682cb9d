//! The lifecycle verbs over the state directory: create, start, kill, delete, pause,
//! resume, update, state, list, exec.
//!
//! [`Engine`] is synchronous. `create` and `exec` fork, so they may only be called from
//! a single-threaded process that is a child subreaper (the `wharf-runc` binary, the
//! per-node monitor); every other verb is safe anywhere, including async programs.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{Hook, LinuxResources};
use serde::Serialize;

use crate::cgroup::{self, Cgroup};
use crate::error::{Error, Result};
use crate::init::{self, InitHooks, InitPlan, ProcessPlan, Spawned};
use crate::plan;
use crate::rootfs::Overlay;
use crate::spec::{check_id, Bundle};
use crate::state::{self, Dir, ExitInfo, Record, Status};
use crate::sys;

/// Options for [`Engine::create`] beyond the bundle.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Descriptors to install as the container's stdin, stdout, stderr (None: inherit).
    pub stdio: [Option<RawFd>; 3],
    /// Mount this overlay as the root filesystem (at the bundle's rootfs path).
    pub overlay: Option<Overlay>,
    /// Directories to remove when the container is deleted.
    pub owned_dirs: Vec<PathBuf>,
    /// Write the init pid here.
    pub pid_file: Option<PathBuf>,
    /// With `process.terminal`: the unix socket that receives the pty master
    /// (`SCM_RIGHTS`, as runc's `--console-socket`).
    pub console_socket: Option<PathBuf>,
    /// With `process.terminal` and no console socket: keep the pty master and return
    /// it from [`Engine::create_with_console`] (the monitor serves it to attachers).
    pub keep_console: bool,
    /// Pass the caller's descriptors 3 … 3+N-1 to the container's process (runc's
    /// `--preserve-fds`); every other descriptor is closed in the child.
    pub preserve_fds: u32,
    /// The bundle is this container's state directory, written there by the caller
    /// (`LinuxRuntime`: one directory per container): the create takes the directory over
    /// instead of refusing it as an existing container, and the bundle then goes with the
    /// container (or with a failed create). Never set for a user's bundle.
    pub adopt_bundle_dir: bool,
}

/// A terminal for an exec'd process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Terminal {
    /// Initial size (columns, rows).
    pub size: Option<(u16, u16)>,
}

/// A console socket (runc's `--console-socket`), connected before anything is made.
pub struct ConsoleSocket(std::os::unix::net::UnixStream);

impl ConsoleSocket {
    /// Connects to the socket at `path`.
    pub fn connect(id: &str, path: &Path) -> Result<ConsoleSocket> {
        std::os::unix::net::UnixStream::connect(path)
            .map(ConsoleSocket)
            .map_err(|e| Error::os(id, format!("connect console socket {}", path.display()), e))
    }

    /// Sends the pty master the way runc does (the descriptor, with the device name as
    /// payload). On failure the process `pid` that owns the terminal is killed and
    /// reaped: nobody could ever talk to it.
    pub fn send(&self, id: &str, pid: i32, master: &OwnedFd) -> Result<()> {
        crate::pty::send_fds(self.0.as_fd(), b"/dev/ptmx", &[master.as_raw_fd()]).map_err(|e| {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::waitpid(pid);
            Error::os(id, "send the pty master to the console socket", e)
        })
    }
}

/// A container's state as the OCI runtime spec (and runc) report it.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerState {
    /// OCI version.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// Init pid (0 once stopped).
    pub pid: i32,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Root filesystem.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Annotations.
    pub annotations: HashMap<String, String>,
    /// Exit information once stopped and known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    /// Creation time, Unix nanoseconds.
    #[serde(skip)]
    pub created_unix_nanos: u128,
}

impl ContainerState {
    /// The state of container `id` with no exit recorded; `paths` is (bundle, rootfs).
    fn new(
        id: &str,
        status: Status,
        pid: i32,
        (bundle, rootfs): (&Path, &Path),
        created_unix_nanos: u128,
        annotations: &HashMap<String, String>,
    ) -> ContainerState {
        ContainerState {
            oci_version: "1.2.0".into(),
            id: id.into(),
            status,
            pid,
            bundle: bundle.into(),
            rootfs: rootfs.into(),
            created: state::rfc3339(created_unix_nanos),
            annotations: annotations.clone(),
            exit: None,
            created_unix_nanos,
        }
    }
}

/// Container operations over one runtime root.
#[derive(Debug, Clone)]
pub struct Engine {
    root: PathBuf,
    host_bounding: u64,
    /// RLIMIT_NOFILE for processes whose spec sets none (see
    /// [`Engine::set_inherited_nofile`]); `None`: they inherit the caller's.
    inherited_nofile: Option<(u64, u64)>,
}

impl Engine {
    /// An engine over `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<Engine> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::os("-", format!("create runtime root {}", root.display()), e))?;
        Ok(Engine {
            root,
            host_bounding: crate::caps::host_bounding(),
            inherited_nofile: None,
        })
    }

    /// Gives the processes this engine starts `(soft, hard)` as RLIMIT_NOFILE when their
    /// spec sets none. For a caller that raised its own soft limit (the monitor holds a
    /// few descriptors per container) and wants containers and exec'd processes to get
    /// the limits it started with, as a container started by `wharf-runc` would.
    pub fn set_inherited_nofile(&mut self, limits: (u64, u64)) {
        self.inherited_nofile = Some(limits);
    }

    /// Adds the inherited RLIMIT_NOFILE to a process plan whose spec sets none.
    fn inherit_limits(&self, p: &mut ProcessPlan) {
        let nofile = libc::RLIMIT_NOFILE;
        if let Some((soft, hard)) = self.inherited_nofile {
            if !p.rlimits.iter().any(|&(resource, ..)| resource == nofile) {
                p.rlimits.push((nofile, soft, hard));
            }
        }
    }

    /// The runtime root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state directory of `id`.
    pub fn dir(&self, id: &str) -> Dir {
        Dir::new(&self.root, id)
    }

    /// Loads a container's record.
    pub fn record(&self, id: &str) -> Result<Record> {
        check_id(id)?;
        state::read_json(&self.dir(id).state()).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(id.into()),
            _ => Error::os(id, "read state", e),
        })
    }

    /// When `id` was started (Unix nanoseconds), if it was.
    pub fn started_at(&self, id: &str) -> Option<u128> {
        std::fs::read_to_string(self.dir(id).path.join("started"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The exit recorded for `id`, if any.
    pub fn exit_info(&self, id: &str) -> Option<ExitInfo> {
        state::read_json(&self.dir(id).exit()).ok()
    }

    /// The current status of a recorded container.
    pub fn status(&self, rec: &Record) -> Status {
        if self.dir(&rec.id).exit().exists() {
            return Status::Stopped;
        }
        if !state::alive(rec.pid, rec.pid_start) {
            return Status::Stopped;
        }
        if self.dir(&rec.id).fifo().exists() {
            Status::Created
        } else if rec.cgroup.is_frozen() {
            Status::Paused
        } else {
            Status::Running
        }
    }

    /// The OCI state of `id`.
    pub fn state(&self, id: &str) -> Result<ContainerState> {
        let rec = self.record(id)?;
        Ok(self.state_of(&rec))
    }

    fn state_of(&self, rec: &Record) -> ContainerState {
        let status = self.status(rec);
        ContainerState {
            exit: self.exit_info(&rec.id),
            ..ContainerState::new(
                &rec.id,
                status,
                if status == Status::Stopped {
                    0
                } else {
                    rec.pid
                },
                (&rec.bundle, &rec.rootfs),
                rec.created_unix_nanos,
                &rec.annotations,
            )
        }
    }

    /// Every container under the root.
    pub fn list(&self) -> Result<Vec<ContainerState>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| Error::os("-", format!("list {}", self.root.display()), e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if check_id(&name).is_err() {
                continue;
            }
            if let Ok(rec) = state::read_json::<Record>(&self.dir(&name).state()) {
                out.push(self.state_of(&rec));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Creates container `id` from `bundle`: namespaces, cgroup, root filesystem, all
    /// set up; the process waits for [`Engine::start`]. On error nothing is left behind.
    /// Forks: call only from a single-threaded subreaper process.
    pub fn create(&self, id: &str, bundle: &Bundle, opts: &CreateOptions) -> Result<Record> {
        self.create_with_console(id, bundle, opts)
            .map(|(rec, _)| rec)
    }

    /// [`Engine::create`], also returning the pty master of a terminal container when
    /// `opts.keep_console` asked to keep it.
    pub fn create_with_console(
        &self,
        id: &str,
        bundle: &Bundle,
        opts: &CreateOptions,
    ) -> Result<(Record, Option<OwnedFd>)> {
        check_id(id)?;
        let dir = self.dir(id);
        let already = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::AlreadyExists(id.into()),
            _ => Error::os(id, format!("create state dir {}", dir.path.display()), e),
        };
        let taken_over = match std::fs::create_dir(&dir.path) {
            Ok(()) => false,
            // A bundle the caller wrote into the state directory itself
            // (`opts.adopt_bundle_dir`) is taken over while no state exists. The claim,
            // made exclusively, keeps a second create of the id out: the directory's
            // existence no longer does.
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    && opts.adopt_bundle_dir
                    && !dir.state().exists() =>
            {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(dir.claim())
                    .map_err(already)?;
                true
            }
            Err(e) => return Err(already(e)),
        };
        let mut cg = None;
        let res = self.create_in(id, bundle, opts, &dir, &mut cg);
        if res.is_err() {
            if let Some(cg) = cg {
                let _ = cg.kill_all(id, Duration::from_secs(5));
                let _ = cg.destroy();
            }
            let _ = std::fs::remove_dir_all(&dir.path);
        } else if taken_over {
            let _ = std::fs::remove_file(dir.claim());
        }
        res
    }

    fn create_in(
        &self,
        id: &str,
        bundle: &Bundle,
        opts: &CreateOptions,
        dir: &Dir,
        cg_out: &mut Option<Cgroup>,
    ) -> Result<(Record, Option<OwnedFd>)> {
        let linux = bundle.spec.linux().clone().unwrap_or_default();
        let process = bundle.spec.process().as_ref().expect("validated");
        let terminal = process.terminal().unwrap_or(false);
        // The console socket is reached before anything is made.
        let console = match (&opts.console_socket, terminal) {
            (Some(path), true) => Some(ConsoleSocket::connect(id, path)?),
            (None, true) if !opts.keep_console => {
                return Err(Error::ConfigField {
                    path: bundle.dir.join("config.json"),
                    field: "process.terminal".into(),
                    message: "a terminal needs a console socket to receive it (--console-socket)"
                        .into(),
                })
            }
            _ => None,
        };
        // Plan first (pure checks), then the cgroup, then the process.
        let mut plan = plan::init_plan(
            id,
            bundle,
            opts.overlay.clone(),
            dir.fifo(),
            self.host_bounding,
        )?;
        self.inherit_limits(&mut plan.process);
        let seccomp = plan::seccomp_of(id, bundle)?;
        let rel = cgroup::relative_path(id, linux.cgroups_path().as_deref());
        let cg = Cgroup::create(id, &rel, linux.resources().as_ref())?;
        *cg_out = Some(cg.clone());
        cg.allow_devices(id, linux.devices().as_deref().unwrap_or(&[]))?;
        plan::set_cgroup(&mut plan, &cg);
        plan.stdio = opts.stdio;
        plan.process.preserve_fds = opts.preserve_fds;
        plan.process.seccomp = seccomp;
        plan.terminal = terminal;
        plan.console_size = process.console_size().map(|b| {
            (
                b.width().min(u16::MAX as u64) as u16,
                b.height().min(u16::MAX as u64) as u16,
            )
        });
        let fifo = sys::cstr(dir.fifo()).map_err(|e| Error::os(id, "fifo path", e))?;
        sys::mkfifo(&fifo, 0o600)
            .map_err(|e| Error::os(id, format!("mkfifo {}", dir.fifo().display()), e))?;
        let hooks = bundle.spec.hooks().clone().unwrap_or_default();
        let created = state::now_nanos();
        let annotations = bundle.spec.annotations().clone().unwrap_or_default();
        let hook_state = ContainerState::new(
            id,
            Status::Creating,
            0,
            (&bundle.dir, &bundle.rootfs),
            created,
            &annotations,
        );
        let runtime_hooks: Vec<(&'static str, Hook)> = [
            ("prestart", hooks.prestart()),
            ("createRuntime", hooks.create_runtime()),
        ]
        .into_iter()
        .flat_map(|(kind, list)| list.iter().flatten().map(move |h| (kind, h.clone())))
        .collect();
        plan.hooks = InitHooks {
            pause_before_pivot: !runtime_hooks.is_empty(),
            create_container: hooks.create_container().clone().unwrap_or_default(),
            start_container: hooks.start_container().clone().unwrap_or_default(),
            state: Some(hook_state.clone()),
        };
        // prestart and createRuntime run in the runtime's namespaces once the
        // container's namespaces and mounts exist, before its pivot_root.
        let Spawned {
            pid,
            console: master,
        } = init::spawn_with(&plan, &mut |pid| {
            let st = ContainerState {
                pid,
                ..hook_state.clone()
            };
            runtime_hooks
                .iter()
                .try_for_each(|(kind, h)| run_hook(id, kind, h, &st))
        })?;
        let pid_start = state::proc_stat(pid).map(|(_, s)| s).unwrap_or(0);
        if let (Some(sock), Some(master)) = (&console, &master) {
            sock.send(id, pid, master)?;
        }
        let master = if opts.keep_console && console.is_none() {
            master
        } else {
            None
        };
        let rec = Record {
            id: id.into(),
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            pid,
            pid_start,
            created_unix_nanos: created,
            cgroup: cg,
            annotations,
            owned_dirs: opts.owned_dirs.clone(),
            poststop: hooks.poststop().clone().unwrap_or_default(),
            poststart: hooks.poststart().clone().unwrap_or_default(),
        };
        state::write_json(&dir.state(), &rec).map_err(|e| Error::os(id, "write state", e))?;
        if let Some(p) = &opts.pid_file {
            std::fs::write(p, pid.to_string())
                .map_err(|e| Error::os(id, format!("write pid file {}", p.display()), e))?;
        }
        Ok((rec, master))
    }

    /// Starts the program of a created container and runs its poststart hooks.
    pub fn start(&self, id: &str) -> Result<()> {
        let rec = self.release(id)?;
        self.run_poststart(&rec);
        Ok(())
    }

    /// The first half of [`Engine::start`]: lets the container's process exec (a few
    /// small file operations, never blocking). Returns the record, for
    /// [`Engine::run_poststart`].
    pub fn release(&self, id: &str) -> Result<Record> {
        let rec = self.record(id)?;
        let status = self.status(&rec);
        if status != Status::Created {
            return Err(Error::InvalidState {
                id: id.into(),
                status: status.to_string(),
                operation: "start",
            });
        }
        let fifo = self.dir(id).fifo();
        // Opening for writing succeeds only while the container holds its read end.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags_nonblock()
            .open(&fifo)
            .map_err(|e| Error::InvalidState {
                id: id.into(),
                status: format!("not waiting for start ({e})"),
                operation: "start",
            })?;
        f.write_all(b"0")
            .map_err(|e| Error::os(id, "signal start", e))?;
        let _ = std::fs::remove_file(&fifo);
        let _ = std::fs::write(
            self.dir(id).path.join("started"),
            state::now_nanos().to_string(),
        );
        Ok(rec)
    }

    /// Runs the poststart hooks of a started container (failures are logged, as the
    /// runtime spec asks). Blocks for as long as the hooks run.
    pub fn run_poststart(&self, rec: &Record) {
        if rec.poststart.is_empty() {
            return;
        }
        let oci = self.state_of(rec);
        for h in &rec.poststart {
            if let Err(e) = run_hook(&rec.id, "poststart", h, &oci) {
                tracing::warn!(id = %rec.id, error = %e, "poststart hook failed");
            }
        }
    }

    /// Sends `signal` to the init process (or, with `all`, every process in the cgroup).
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let rec = self.record(id)?;
        if all {
            for pid in rec.cgroup.pids() {
                let _ = sys::kill(pid, signal);
            }
            return Ok(());
        }
        let status = self.status(&rec);
        if status == Status::Stopped {
            return Err(Error::InvalidState {
                id: id.into(),
                status: status.to_string(),
                operation: "kill",
            });
        }
        // The pidfd pins the process; checking the start time after opening it rules
        // out signalling a recycled pid.
        let fd = sys::pidfd_open(rec.pid)
            .map_err(|e| Error::os(id, format!("pidfd_open {}", rec.pid), e))?;
        if !state::alive(rec.pid, rec.pid_start) {
            return Err(Error::InvalidState {
                id: id.into(),
                status: "stopped".into(),
                operation: "kill",
            });
        }
        sys::pidfd_send_signal(fd.as_fd(), signal)
            .map_err(|e| Error::os(id, format!("signal {signal} to pid {}", rec.pid), e))?;
        if rec.cgroup.is_frozen() && (signal == libc::SIGKILL || signal == libc::SIGTERM) {
            // A frozen process cannot act on the signal; let it.
            let _ = rec.cgroup.set_frozen(id, false);
        }
        Ok(())
    }

    /// Deletes a container: its processes (with `force`, or when only created), cgroup,
    /// state and owned directories.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let rec = match self.record(id) {
            Ok(r) => r,
            Err(Error::NotFound(_)) if force => return self.delete_orphan(id),
            Err(e) => return Err(e),
        };
        let status = self.status(&rec);
        if matches!(status, Status::Running | Status::Paused) && !force {
            return Err(Error::InvalidState {
                id: id.into(),
                status: status.to_string(),
                operation: "delete (use force)",
            });
        }
        if status != Status::Stopped {
            let _ = sys::kill(rec.pid, libc::SIGKILL);
        }
        rec.cgroup.kill_all(id, Duration::from_secs(10))?;
        // Reap the init if it is our child (wharf-runc run); elsewhere the monitor does.
        let _ = reap_if_child(rec.pid);
        if !rec.poststop.is_empty() {
            let oci = ContainerState {
                status: Status::Stopped,
                ..self.state_of(&rec)
            };
            for h in &rec.poststop {
                if let Err(e) = run_hook(id, "poststop", h, &oci) {
                    tracing::warn!(id, error = %e, "poststop hook failed");
                }
            }
        }
        rec.cgroup
            .destroy()
            .map_err(|e| Error::os(id, "remove cgroup", e))?;
        for d in &rec.owned_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        std::fs::remove_dir_all(self.dir(id).path).map_err(|e| Error::os(id, "remove state dir", e))
    }

    fn delete_orphan(&self, id: &str) -> Result<()> {
        match std::fs::remove_dir_all(self.dir(id).path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound(id.into())),
            Err(e) => Err(Error::os(id, "remove state dir", e)),
        }
    }

    /// Freezes a running container.
    pub fn pause(&self, id: &str) -> Result<()> {
        let rec = self.record(id)?;
        let status = self.status(&rec);
        if status != Status::Running {
            return Err(Error::InvalidState {
                id: id.into(),
                status: status.to_string(),
                operation: "pause",
            });
        }
        rec.cgroup.set_frozen(id, true)
    }

    /// Thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        let rec = self.record(id)?;
        let status = self.status(&rec);
        if status != Status::Paused {
            return Err(Error::InvalidState {
                id: id.into(),
                status: status.to_string(),
                operation: "resume",
            });
        }
        rec.cgroup.set_frozen(id, false)
    }

    /// Changes resource limits of a container.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let rec = self.record(id)?;
        rec.cgroup.apply(id, resources)
    }

    /// Processes in the container's cgroup.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        Ok(self.record(id)?.cgroup.pids())
    }

    /// cgroup statistics.
    pub fn stats(&self, id: &str) -> Result<cgroup::Stats> {
        Ok(self.record(id)?.cgroup.stats())
    }

    /// Runs `process` inside the running container `id` (its namespaces and cgroup).
    /// Returns the host pid once the program was exec'd. Forks: single-threaded
    /// subreaper callers only.
    pub fn exec(
        &self,
        id: &str,
        process: ProcessPlan,
        stdio: [Option<RawFd>; 3],
        terminal: Option<Terminal>,
    ) -> Result<Spawned> {
        let rec = self.record(id)?;
        let status = self.status(&rec);
        if status != Status::Running {
            return Err(Error::InvalidState {
                id: id.into(),
                status: status.to_string(),
                operation: "exec",
            });
        }
        let plan = InitPlan {
            id: id.into(),
            cgroup_procs: rec.cgroup.procs_files(),
            join: plan::namespaces_of(rec.pid),
            process,
            stdio,
            terminal: terminal.is_some(),
            console_size: terminal.and_then(|t| t.size),
            ..InitPlan::default()
        };
        init::spawn(&plan)
    }

    /// The process plan of the container's own `process` (a base for exec).
    pub fn process_of(&self, id: &str) -> Result<ProcessPlan> {
        let rec = self.record(id)?;
        let bundle = Bundle::load(id, &rec.bundle)?;
        let mut p = plan::process_plan(
            id,
            &rec.rootfs,
            bundle.spec.process().as_ref().expect("validated"),
            self.host_bounding,
        )?;
        self.inherit_limits(&mut p);
        // An exec'd process is confined like the container's own.
        p.seccomp = plan::seccomp_of(id, &bundle)?;
        Ok(p)
    }

    /// Records how the init process ended (called by whoever reaped it).
    pub fn record_exit(&self, id: &str, status: sys::WaitStatus) -> Result<ExitInfo> {
        let rec = self.record(id)?;
        let signal = match status {
            sys::WaitStatus::Signaled(s) => Some(s),
            sys::WaitStatus::Exited(_) => None,
        };
        let info = ExitInfo {
            code: status.code(),
            signal,
            oom_killed: rec.cgroup.oom_kills() > 0 && signal == Some(libc::SIGKILL),
            finished_unix_nanos: state::now_nanos(),
        };
        state::write_json(&self.dir(id).exit(), &info)
            .map_err(|e| Error::os(id, "write exit", e))?;
        Ok(info)
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
    }
}

fn reap_if_child(pid: i32) -> std::io::Result<()> {
    // Only reaps when `pid` is our exited child; never blocks.
    sys::reap_pid_nohang(pid).map(drop)
}

/// Runs one OCI hook with the container state on stdin, honouring its timeout.
pub fn run_hook(id: &str, kind: &'static str, hook: &Hook, state: &ContainerState) -> Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let fail = |message: String| Error::Hook {
        id: id.into(),
        hook: kind,
        path: hook.path().clone(),
        message,
    };
    let mut cmd = Command::new(hook.path());
    let args = hook.args().clone().unwrap_or_default();
    if let Some(a0) = args.first() {
        cmd.arg0(a0);
    }
    cmd.args(args.iter().skip(1));
    if let Some(env) = hook.env() {
        cmd.env_clear();
        for kv in env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&serde_json::to_vec(state).unwrap_or_default());
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| std::time::Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait().map_err(|e| fail(e.to_string()))? {
            Some(st) if st.success() => return Ok(()),
            Some(st) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(fail(format!("{st}: {}", err.trim())));
            }
            None => {}
        }
        if deadline.is_some_and(|d| std::time::Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail("timed out".into()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_nofile_fills_only_a_missing_limit() {
        let dir = std::env::temp_dir().join(format!("wharf-engine-{}", std::process::id()));
        let mut engine = Engine::new(&dir).unwrap();
        let nofile = libc::RLIMIT_NOFILE;
        let mut p = ProcessPlan::default();
        engine.inherit_limits(&mut p);
        assert!(p.rlimits.is_empty(), "nothing to inherit yet");
        engine.set_inherited_nofile((1024, 4096));
        engine.inherit_limits(&mut p);
        assert_eq!(p.rlimits, vec![(nofile, 1024, 4096)]);
        // A spec's own limit wins.
        let mut own = ProcessPlan {
            rlimits: vec![(nofile, 10, 20)],
            ..ProcessPlan::default()
        };
        engine.inherit_limits(&mut own);
        assert_eq!(own.rlimits, vec![(nofile, 10, 20)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_claimed_bundle_directory_is_not_taken_over_twice() {
        let root = std::env::temp_dir().join(format!("wharf-claim-{}", std::process::id()));
        let engine = Engine::new(&root).unwrap();
        // A bundle in the state directory, as `LinuxRuntime` writes it, that another
        // create has claimed and not finished.
        let dir = engine.dir("c1");
        std::fs::create_dir_all(dir.path.join("rootfs")).unwrap();
        let mut spec = oci_spec::runtime::Spec::default();
        spec.set_root(Some(
            oci_spec::runtime::RootBuilder::default()
                .path("rootfs")
                .build()
                .unwrap(),
        ));
        std::fs::write(
            dir.path.join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.claim(), b"").unwrap();
        let bundle = Bundle::load("c1", &dir.path).unwrap();
        let err = engine
            .create("c1", &bundle, &CreateOptions::default())
            .unwrap_err();
        assert!(
            matches!(err, Error::AlreadyExists(ref id) if id == "c1"),
            "{err}"
        );
        // The other create's directory is untouched.
        assert!(dir.path.join("config.json").is_file() && dir.claim().is_file());
        std::fs::remove_dir_all(&root).unwrap();
    }
}

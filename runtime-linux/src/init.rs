//! The container process, from fork to `execve`, and the parent's side of its setup.
//!
//! Process model: the runtime forks only from single-threaded processes — the
//! `wharf-runc` binary, or the per-node monitor that a (multithreaded, async) embedding
//! program talks to over a socket. The forked child may therefore run ordinary Rust code
//! (allocate, format errors) while it builds the container, and no helper binary is
//! re-executed inside the container: the only program ever exec'd there is the user's.
//! Right after the fork the child installs its stdio and closes every other descriptor
//! of the parent's (beyond `preserve_fds` and its setup socket, with async-signal-safe
//! syscalls only): a child of the monitor waiting to be started must not hold other
//! containers' stdin pipes, pty masters or attachers' pipes, or they would never see
//! end of file. It then marks itself non-dumpable, so a container process can never
//! open its `/proc/<pid>/exe` (CVE-2019-5736), and every descriptor from 3 up (beyond
//! `preserve_fds`) is made close-on-exec right before `execve` (CVE-2024-21626).
//!
//! Sequence (C1 = forked child, C2 = its child when a pid namespace is involved):
//! 1. C1: non-dumpable, oom_score_adj, join the cgroup, `setns` into namespaces given by
//!    path (user first), `unshare` a new user namespace and wait for the parent to write
//!    the id maps, then `unshare` the other new namespaces.
//! 2. With a new pid namespace and no user namespace, the parent has already forked C1
//!    straight into it (`unshare(CLONE_NEWPID)`, fork, `setns` back): C1 is pid 1 and the
//!    container process. Otherwise (joined pid namespace, or one that a user namespace
//!    must own) C1 forks C2 (pid 1 there), reports its pid and exits; the parent, a
//!    child subreaper, inherits C2.
//! 3. The container process mounts its root, pivots, sets hostname, sysctls, rlimits,
//!    identity and capabilities, reports `Ready` and blocks on the exec fifo until
//!    `start` writes a byte into it, then execs.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use oci_spec::runtime::Hook;

use crate::caps::CapMasks;
use crate::container::{run_hook, ContainerState};
use crate::error::{Error, Result};
use crate::rootfs::{self, RootfsPlan};
use crate::seccomp::Filter;
use crate::state::Status;
use crate::sys::{self, cstr, Fork};

/// A failed setup step inside the child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepError {
    /// What was being done.
    pub step: String,
    /// The OS error or explanation.
    pub message: String,
}

/// Result of a setup step.
pub type StepResult<T> = std::result::Result<T, StepError>;

/// Attaches a step description to an error.
pub trait Step<T> {
    /// Names the step that produced the error.
    fn step(self, f: impl FnOnce() -> String) -> StepResult<T>;
}

impl<T, E: std::fmt::Display> Step<T> for std::result::Result<T, E> {
    fn step(self, f: impl FnOnce() -> String) -> StepResult<T> {
        self.map_err(|e| StepError {
            step: f(),
            message: e.to_string(),
        })
    }
}

/// The process to exec, prepared before the fork.
#[derive(Debug, Clone, Default)]
pub struct ProcessPlan {
    /// argv.
    pub args: Vec<String>,
    /// Environment, `KEY=value`.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: PathBuf,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// umask, if set.
    pub umask: Option<u32>,
    /// Capability sets (already intersected with the host's bounding set).
    pub caps: CapMasks,
    /// Set `no_new_privs`.
    pub no_new_privs: bool,
    /// (resource, soft, hard).
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Extra descriptors (3, 4, …) passed to the program.
    pub preserve_fds: u32,
    /// Seccomp filter, compiled before the fork.
    pub seccomp: Option<Filter>,
}

/// Everything the child needs, prepared before the fork.
#[derive(Debug, Clone, Default)]
pub struct InitPlan {
    /// Container id (for errors).
    pub id: String,
    /// Filesystem setup; `None` when joining an existing mount namespace (exec).
    pub rootfs: Option<RootfsPlan>,
    /// `cgroup.procs` files to join.
    pub cgroup_procs: Vec<PathBuf>,
    /// Namespaces to join: (path, CLONE_NEW* type). The user namespace comes first.
    pub join: Vec<(PathBuf, libc::c_int)>,
    /// New namespaces to create, other than the user namespace.
    pub unshare: libc::c_int,
    /// Create a new user namespace (the parent writes its id maps).
    pub new_user: bool,
    /// uid_map contents.
    pub uid_map: String,
    /// gid_map contents.
    pub gid_map: String,
    /// Hostname (needs a new uts namespace).
    pub hostname: Option<String>,
    /// NIS domain name.
    pub domainname: Option<String>,
    /// sysctl key → value.
    pub sysctl: Vec<(String, String)>,
    /// oom_score_adj.
    pub oom_score_adj: Option<i32>,
    /// The program.
    pub process: ProcessPlan,
    /// Exec fifo: the process waits on it before exec (None: exec at once).
    pub fifo: Option<PathBuf>,
    /// Descriptors to install as 0, 1, 2 (None: inherit).
    pub stdio: [Option<RawFd>; 3],
    /// Make the process a session leader (the container's init).
    pub setsid: bool,
    /// Give the process a new pty (made inside the container) as its stdio and
    /// controlling terminal; the master comes back in [`Spawned::console`].
    pub terminal: bool,
    /// Initial window size of that pty (columns, rows).
    pub console_size: Option<(u16, u16)>,
    /// OCI hooks run by or around the container process.
    pub hooks: InitHooks,
}

/// The hooks of a container's own process (not of an exec).
#[derive(Debug, Clone, Default)]
pub struct InitHooks {
    /// Stop before the pivot and let the parent run prestart/createRuntime hooks (in
    /// the runtime's namespaces) through the callback of [`spawn_with`].
    pub pause_before_pivot: bool,
    /// Run in the container's namespaces after the mounts, before the pivot (the
    /// hook's path resolves in the runtime's filesystem).
    pub create_container: Vec<Hook>,
    /// Run in the container right before the user's program (path resolved in the
    /// container).
    pub start_container: Vec<Hook>,
    /// The OCI state passed to the hooks (pid filled in by the container process).
    pub state: Option<ContainerState>,
}

impl InitHooks {
    fn any_in_container(&self) -> bool {
        !self.create_container.is_empty() || !self.start_container.is_empty()
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    MapIds,
    Mapped,
    Pid {
        pid: i32,
        intermediate: i32,
    },
    Ready,
    /// The pty master rides along (SCM_RIGHTS).
    Console,
    /// Mounts are done, the root is not pivoted: run the runtime-side hooks now.
    BeforePivot,
    /// The runtime-side hooks succeeded.
    Continue,
    /// The parent moved the process into its cgroups.
    Joined,
    Error(StepError),
}

fn send(sock: &UnixDatagram, msg: &Msg) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    sock.send(&bytes).map(drop)
}

fn recv(sock: &UnixDatagram) -> io::Result<Option<(Msg, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; 64 * 1024];
    let (n, mut fds) = crate::pty::recv_fds(sock.as_fd(), &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..n]).map_err(io::Error::other)?;
    Ok(Some((msg, fds.pop())))
}

/// A started container (or exec) process as the parent sees it.
#[derive(Debug)]
pub struct Spawned {
    /// Host pid of the container process.
    pub pid: i32,
    /// The pty master, when the plan asked for a terminal.
    pub console: Option<OwnedFd>,
}

/// Forks and sets up a container process per `plan`. Must be called from a
/// single-threaded process that is a child subreaper (so it inherits C2).
/// Returns once the process is ready (waiting on its fifo) or, without a fifo, has
/// exec'd.
pub fn spawn(plan: &InitPlan) -> Result<Spawned> {
    spawn_with(plan, &mut |_| Ok(()))
}

/// Like [`spawn`]; with `plan.hooks.pause_before_pivot`, `before_pivot(pid)` runs while
/// the container process waits between its mounts and its pivot (for prestart and
/// createRuntime hooks). Its error aborts the container.
pub fn spawn_with(
    plan: &InitPlan,
    before_pivot: &mut dyn FnMut(i32) -> Result<()>,
) -> Result<Spawned> {
    let (parent_sock, child_sock) =
        sys::seqpacket_pair().map_err(|e| Error::os(&plan.id, "socketpair", e))?;
    let parent_sock = UnixDatagram::from(parent_sock);
    let child_sock = UnixDatagram::from(child_sock);
    let pid_ns_by_parent = parent_makes_pid_ns(plan);
    let forked = if pid_ns_by_parent {
        fork_into_new_pid_ns()
    } else {
        sys::fork()
    };
    match forked.map_err(|e| Error::os(&plan.id, "fork", e))? {
        Fork::Child => {
            drop(parent_sock);
            // Hold nothing of the parent's from here on: a monitor's child would
            // otherwise keep other containers' stdin pipes, pty masters and attachers'
            // pipes open (no end of file for them) for as long as it waits to start.
            let first_free = 3 + plan.process.preserve_fds as RawFd;
            let (sock, kept) = sys::keep_only(&plan.stdio, child_sock.into(), first_free);
            let child_sock = UnixDatagram::from(sock);
            let res = kept
                .step(|| "keep only the container's descriptors".into())
                .and_then(|()| child(plan, &child_sock, pid_ns_by_parent));
            let err = match res {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let _ = send(&child_sock, &Msg::Error(err));
            sys::exit_now(1);
        }
        Fork::Parent(c1) => {
            drop(child_sock);
            let res = parent(plan, c1, pid_ns_by_parent, &parent_sock, before_pivot);
            if let Err(e) = &res {
                tracing::debug!(id = %plan.id, error = %e, "container setup failed");
            }
            res
        }
    }
}

/// True when the parent can put the child straight into a new pid namespace (so it is
/// pid 1 there from birth and no intermediate process is needed): a new pid namespace
/// and no user namespace, new or joined — with one, the pid namespace must be owned by
/// it, so the child creates it after entering the user namespace and forks again.
fn parent_makes_pid_ns(plan: &InitPlan) -> bool {
    plan.unshare & libc::CLONE_NEWPID != 0
        && !plan.new_user
        && !plan
            .join
            .iter()
            .any(|(_, t)| *t == libc::CLONE_NEWUSER || *t == libc::CLONE_NEWPID)
}

/// Forks a child that is pid 1 of a new pid namespace: `unshare(CLONE_NEWPID)` only
/// changes the namespace of the caller's *next* children, so the parent creates it,
/// forks, and returns its own children's namespace to its own at once. One fork instead
/// of two (the usual child → grandchild hop), which is most of what a container's
/// creation costs in processes.
fn fork_into_new_pid_ns() -> io::Result<Fork> {
    let own = own_pid_ns()?;
    sys::unshare(libc::CLONE_NEWPID)?;
    let forked = sys::fork();
    if let Ok(Fork::Child) = forked {
        return forked;
    }
    // Back to our own pid namespace for every later child. This cannot fail for a
    // process returning to its active namespace; if it somehow did, every later
    // container would share this one's namespace, so stop here rather than go on.
    if let Err(e) = sys::setns(own.as_fd(), libc::CLONE_NEWPID) {
        if let Ok(Fork::Parent(pid)) = forked {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::waitpid(pid);
        }
        panic!("cannot return to the runtime's own pid namespace: {e}");
    }
    forked
}

/// This process's own pid namespace, opened once (it never changes). A long-lived
/// forking process (the monitor) calls it at start so the descriptor is there from the
/// beginning rather than appearing with the first container.
pub fn own_pid_ns() -> io::Result<&'static std::fs::File> {
    static OWN: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(f) = OWN.get() {
        return Ok(f);
    }
    let f = std::fs::File::open("/proc/self/ns/pid")?;
    Ok(OWN.get_or_init(|| f))
}

fn parent(
    plan: &InitPlan,
    c1: i32,
    pid_ns_by_parent: bool,
    sock: &UnixDatagram,
    before_pivot: &mut dyn FnMut(i32) -> Result<()>,
) -> Result<Spawned> {
    let _ = sock.set_read_timeout(Some(Duration::from_secs(60)));
    // A child forked straight into its pid namespace is the container process itself.
    let mut pid = pid_ns_by_parent.then_some(c1);
    let mut intermediate = 0;
    let mut ready = false;
    let mut console = None;
    let fail = |pid: Option<i32>, intermediate: i32, step: String, message: String| -> Error {
        for p in [Some(c1), pid].into_iter().flatten() {
            let _ = sys::kill(p, libc::SIGKILL);
            let _ = sys::waitpid(p);
        }
        if intermediate != 0 && intermediate != c1 {
            let _ = sys::waitpid(intermediate);
        }
        Error::Init {
            id: plan.id.clone(),
            step,
            message,
        }
    };
    // The parent moves the process into its cgroups while the process builds its
    // namespaces and mounts: a write to a v1 `cgroup.procs` can wait for an RCU grace
    // period (milliseconds when no migration happened lately), and this way that wait
    // overlaps the container's setup instead of adding to it. The process waits for
    // `Joined` before anything that must happen inside its cgroups (see
    // `CgroupEntry`).
    for f in &plan.cgroup_procs {
        if let Err(e) = std::fs::write(f, c1.to_string()) {
            // A process that failed on its own explains itself better than ESRCH.
            let _ = sock.set_nonblocking(true);
            let early = recv(sock);
            let _ = sock.set_nonblocking(false);
            let (step, message) = match early {
                Ok(Some((Msg::Error(e), _))) => (e.step, e.message),
                _ => (format!("join cgroup {}", f.display()), e.to_string()),
            };
            return Err(fail(pid, intermediate, step, message));
        }
    }
    // A process that died already is reported by the loop below.
    let _ = send(sock, &Msg::Joined);
    loop {
        let msg = match recv(sock) {
            Ok(m) => m,
            Err(e) => {
                return Err(fail(
                    pid,
                    intermediate,
                    "wait for container process".into(),
                    e.to_string(),
                ))
            }
        };
        let msg = msg.map(|(m, fd)| {
            if let (Msg::Console, Some(fd)) = (&m, fd) {
                console = Some(fd);
            }
            m
        });
        match msg {
            Some(Msg::Console) => {}
            Some(Msg::BeforePivot) => {
                let r = match pid {
                    Some(p) => before_pivot(p),
                    None => Err(Error::Init {
                        id: plan.id.clone(),
                        step: "hooks".into(),
                        message: "no pid reported before the pivot".into(),
                    }),
                };
                if let Err(e) = r {
                    let (step, message) = match e {
                        Error::Init { step, message, .. } => (step, message),
                        other => ("hooks".to_string(), other.to_string()),
                    };
                    return Err(fail(pid, intermediate, step, message));
                }
                if let Err(e) = send(sock, &Msg::Continue) {
                    return Err(fail(
                        pid,
                        intermediate,
                        "resume setup".into(),
                        e.to_string(),
                    ));
                }
            }
            Some(Msg::Continue | Msg::Joined) => {}
            Some(Msg::MapIds) => {
                let r = write_id_maps(c1, &plan.uid_map, &plan.gid_map)
                    .and_then(|()| send(sock, &Msg::Mapped));
                if let Err(e) = r {
                    return Err(fail(
                        pid,
                        intermediate,
                        "write uid/gid maps".into(),
                        e.to_string(),
                    ));
                }
            }
            Some(Msg::Pid {
                pid: p,
                intermediate: i,
            }) => {
                pid = Some(p);
                intermediate = i;
                if i != 0 {
                    // C1 exits right after reporting; reap it so C2 is re-parented to us.
                    let _ = sys::waitpid(i);
                }
            }
            Some(Msg::Ready) => ready = true,
            Some(Msg::Error(e)) => return Err(fail(pid, intermediate, e.step, e.message)),
            Some(Msg::Mapped) => {}
            None => {
                // EOF: every copy of the child socket is closed — the process exec'd
                // (no fifo) or died.
                if plan.fifo.is_none() {
                    if let Some(p) = pid {
                        if plan.terminal && console.is_none() {
                            return Err(fail(
                                pid,
                                intermediate,
                                "terminal".into(),
                                "the pty master did not arrive".into(),
                            ));
                        }
                        return Ok(Spawned { pid: p, console });
                    }
                }
                return Err(fail(
                    pid,
                    intermediate,
                    "container process".into(),
                    "exited during setup".into(),
                ));
            }
        }
        if ready {
            if let Some(p) = pid {
                return Ok(Spawned { pid: p, console });
            }
        }
    }
}

fn write_id_maps(pid: i32, uid_map: &str, gid_map: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/uid_map"), uid_map)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), gid_map)
}

fn child(
    plan: &InitPlan,
    sock: &UnixDatagram,
    in_pid_ns: bool,
) -> StepResult<std::convert::Infallible> {
    sys::prctl(libc::PR_SET_DUMPABLE, 0, 0).step(|| "set non-dumpable".into())?;
    sys::reset_signals();
    if let Some(adj) = plan.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .step(|| "write oom_score_adj".into())?;
    }
    // Open every namespace first: after joining a mount namespace, paths resolve there.
    let mut fds = Vec::with_capacity(plan.join.len());
    for (path, typ) in &plan.join {
        fds.push((
            std::fs::File::open(path).step(|| format!("open namespace {}", path.display()))?,
            *typ,
            path,
        ));
    }
    for (fd, typ, path) in &fds {
        sys::setns(fd.as_fd(), *typ).step(|| format!("join namespace {}", path.display()))?;
    }
    drop(fds);
    let mut cgroup = CgroupEntry {
        sock,
        new_ns: plan.unshare & libc::CLONE_NEWCGROUP != 0,
        joined: false,
        entered: false,
    };
    if plan.new_user {
        // The parent's first message is `Joined`; take it before asking for the maps.
        cgroup.wait_joined()?;
        sys::unshare(libc::CLONE_NEWUSER).step(|| "create user namespace".into())?;
        send(sock, &Msg::MapIds).step(|| "request id maps".into())?;
        match recv(sock) {
            Ok(Some((Msg::Mapped, _))) => {}
            other => {
                return Err(StepError {
                    step: "wait for id maps".into(),
                    message: format!("{other:?}"),
                })
            }
        }
        sys::setresgid(0).step(|| "become root in user namespace (gid)".into())?;
        sys::setresuid(0).step(|| "become root in user namespace (uid)".into())?;
    }
    // A pid namespace made by the parent already holds us (as pid 1); the cgroup
    // namespace waits until we are in our cgroups (`CgroupEntry`).
    let mut unshare = plan.unshare & !libc::CLONE_NEWCGROUP;
    if in_pid_ns {
        unshare &= !libc::CLONE_NEWPID;
    }
    if unshare != 0 {
        sys::unshare(unshare).step(|| "create namespaces".into())?;
    }
    let joins_pid = plan.join.iter().any(|(_, t)| *t == libc::CLONE_NEWPID);
    if in_pid_ns {
        // The parent knows our pid from fork; nothing to report.
    } else if unshare & libc::CLONE_NEWPID != 0 || joins_pid {
        // The second process is born in our cgroups and cgroup namespace.
        cgroup.enter()?;
        match sys::fork().step(|| "fork into pid namespace".into())? {
            Fork::Parent(c2) => {
                let _ = send(
                    sock,
                    &Msg::Pid {
                        pid: c2,
                        intermediate: sys::getpid(),
                    },
                );
                sys::exit_now(0);
            }
            Fork::Child => {
                // Back in a fresh process: non-dumpable is inherited, nothing else to redo.
            }
        }
    } else {
        send(
            sock,
            &Msg::Pid {
                pid: sys::getpid(),
                intermediate: 0,
            },
        )
        .step(|| "report pid".into())?;
    }
    container(plan, sock, cgroup)
}

/// The container process's entry into its cgroups. The parent writes its pid into
/// every `cgroup.procs` while it sets up its namespaces and mounts, then sends
/// `Joined`; the process waits for that before anything that must run inside its
/// cgroups (hooks, a fork, the program) and then creates its cgroup namespace, whose
/// root is the cgroup a process is in when it creates one.
struct CgroupEntry<'a> {
    sock: &'a UnixDatagram,
    /// Create a cgroup namespace once joined.
    new_ns: bool,
    joined: bool,
    entered: bool,
}

impl CgroupEntry<'_> {
    /// Waits for the parent's `Joined` (its first message).
    fn wait_joined(&mut self) -> StepResult<()> {
        if self.joined {
            return Ok(());
        }
        match recv(self.sock) {
            Ok(Some((Msg::Joined, _))) => {}
            other => {
                return Err(StepError {
                    step: "wait for the cgroup join".into(),
                    message: format!("{:?}", other.map(|o| o.map(|(m, _)| m))),
                })
            }
        }
        self.joined = true;
        Ok(())
    }

    /// Waits for the join, then creates the cgroup namespace (once).
    fn enter(&mut self) -> StepResult<()> {
        if self.entered {
            return Ok(());
        }
        self.wait_joined()?;
        if self.new_ns {
            sys::unshare(libc::CLONE_NEWCGROUP).step(|| "create cgroup namespace".into())?;
        }
        self.entered = true;
        Ok(())
    }
}

fn container(
    plan: &InitPlan,
    sock: &UnixDatagram,
    mut cgroup: CgroupEntry<'_>,
) -> StepResult<std::convert::Infallible> {
    if plan.setsid {
        sys::setsid().step(|| "setsid".into())?;
    }
    // The fifo is opened read-write before the pivot (it lives in the state directory,
    // outside the container): that never blocks, and `start` can only open it for
    // writing while this descriptor is alive.
    let fifo = match &plan.fifo {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .step(|| format!("open exec fifo {}", p.display()))?,
        ),
        None => None,
    };
    // Hooks get the pid as the runtime sees it: read it while /proc is still the
    // runtime's (before the pivot).
    let host_pid = if plan.hooks.any_in_container() {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse::<i32>().ok())
    } else {
        None
    };
    let hook_state = |status: Status| {
        plan.hooks.state.clone().map(|mut s| {
            s.pid = host_pid.unwrap_or(0);
            s.status = status;
            s
        })
    };
    if let Some(r) = &plan.rootfs {
        // A fresh cgroup2 mount shows the cgroup namespace's root: enter it first.
        if r.mounts_cgroup2() {
            cgroup.enter()?;
        }
        rootfs::setup(r, || {
            if plan.hooks.pause_before_pivot || !plan.hooks.create_container.is_empty() {
                cgroup.enter()?;
            }
            if plan.hooks.pause_before_pivot {
                send(sock, &Msg::BeforePivot).step(|| "ask for createRuntime hooks".into())?;
                match recv(sock) {
                    Ok(Some((Msg::Continue, _))) => {}
                    other => {
                        return Err(StepError {
                            step: "wait for createRuntime hooks".into(),
                            message: format!("{:?}", other.map(|o| o.map(|(m, _)| m))),
                        })
                    }
                }
            }
            if let Some(state) = hook_state(Status::Creating) {
                for h in &plan.hooks.create_container {
                    run_hook(&plan.id, "createContainer", h, &state)
                        .step(|| format!("createContainer hook {}", h.path().display()))?;
                }
            }
            Ok(())
        })?;
    }
    if let Some(h) = &plan.hostname {
        sys::sethostname(h).step(|| format!("set hostname {h:?}"))?;
    }
    if let Some(d) = &plan.domainname {
        sys::setdomainname(d).step(|| format!("set domainname {d:?}"))?;
    }
    for (k, v) in &plan.sysctl {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&path, v).step(|| format!("sysctl {k}={v}"))?;
    }
    if plan.terminal {
        setup_terminal(plan, sock)?;
    }
    // Before the capabilities go (a cgroup namespace needs CAP_SYS_ADMIN).
    cgroup.enter()?;
    let exec = prepare_exec(&plan.process)?;
    if let Some(mut fifo) = fifo {
        send(sock, &Msg::Ready).step(|| "report ready".into())?;
        let mut b = [0u8; 1];
        loop {
            match io::Read::read(&mut fifo, &mut b) {
                Ok(1) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).step(|| "wait for start".into()),
            }
        }
        drop(fifo);
    }
    if let Some(state) = hook_state(Status::Created) {
        for h in &plan.hooks.start_container {
            run_hook(&plan.id, "startContainer", h, &state)
                .step(|| format!("startContainer hook {}", h.path().display()))?;
        }
    }
    sys::cloexec_from(3 + plan.process.preserve_fds)
        .step(|| "close inherited descriptors".into())?;
    load_seccomp_late(&plan.process)?;
    let err = sys::execve(&exec.path, &exec.argv, &exec.envp);
    Err(StepError {
        step: format!("exec {}", exec.path.to_string_lossy()),
        message: err.to_string(),
    })
}

/// Makes a pty in the container's devpts, sends its master to the parent and makes the
/// slave this process's stdio and controlling terminal (in a new session).
fn setup_terminal(plan: &InitPlan, sock: &UnixDatagram) -> StepResult<()> {
    let (master, slave) = crate::pty::open().step(|| "open /dev/ptmx in the container".into())?;
    if let Some((cols, rows)) = plan.console_size {
        crate::pty::set_size(slave.as_fd(), cols, rows).step(|| "set terminal size".into())?;
    }
    // The user owns their terminal (what login and crun do).
    sys::fchown(slave.as_fd(), plan.process.uid, plan.process.gid)
        .step(|| "chown the terminal".into())?;
    let msg = serde_json::to_vec(&Msg::Console).step(|| "encode console message".into())?;
    crate::pty::send_fds(sock.as_fd(), &msg, &[master.as_raw_fd()])
        .step(|| "send the pty master".into())?;
    drop(master);
    if !plan.setsid {
        sys::setsid().step(|| "setsid for the terminal".into())?;
    }
    for i in 0..3 {
        sys::dup_to(slave.as_raw_fd(), i).step(|| format!("terminal as fd {i}"))?;
    }
    crate::pty::set_controlling(slave.as_fd()).step(|| "set controlling terminal".into())?;
    Ok(())
}

/// The program, argv and environment, resolved inside the container.
pub struct Exec {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

/// Applies rlimits, identity, capabilities, no_new_privs, umask and cwd, and resolves
/// the program. Runs inside the container (after the pivot or `setns`).
pub fn prepare_exec(p: &ProcessPlan) -> StepResult<Exec> {
    for (res, soft, hard) in &p.rlimits {
        let (_, cur_hard) = sys::getrlimit(*res).step(|| format!("getrlimit {res}"))?;
        // Never above the current hard limit: raising it needs CAP_SYS_RESOURCE, which
        // hosts like this one do not grant.
        let hard = (*hard).min(cur_hard);
        let soft = (*soft).min(hard);
        sys::setrlimit(*res, soft, hard).step(|| format!("setrlimit {res} {soft}:{hard}"))?;
    }
    let mut env = p.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!(
            "HOME={}",
            home_of(p.uid).unwrap_or_else(|| "/".into())
        ));
    }
    let path =
        resolve_program(&p.args[0], &env).step(|| format!("find program {:?}", p.args[0]))?;

    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: load it while
    // the process still has every capability (runc's order).
    if !p.no_new_privs {
        if let Some(f) = &p.seccomp {
            f.load().step(|| "load seccomp filter".into())?;
        }
    }
    // Bounding set first (needs CAP_SETPCAP, still held), then identity with
    // KEEPCAPS, then the remaining sets.
    for cap in 0..64u32 {
        if p.caps.bounding & (1 << cap) == 0 {
            match sys::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => {
                    return Err(e).step(|| format!("drop capability {cap} from bounding set"))
                }
            }
        }
    }
    sys::prctl(libc::PR_SET_KEEPCAPS, 1, 0).step(|| "keep capabilities".into())?;
    sys::setgroups(&p.groups)
        .or_else(|e| if p.groups.is_empty() { Ok(()) } else { Err(e) })
        .step(|| format!("setgroups {:?}", p.groups))?;
    sys::setresgid(p.gid).step(|| format!("setgid {}", p.gid))?;
    sys::setresuid(p.uid).step(|| format!("setuid {}", p.uid))?;
    sys::capset(sys::CapSets {
        effective: p.caps.effective,
        permitted: p.caps.permitted,
        inheritable: p.caps.inheritable,
    })
    .step(|| "set capabilities".into())?;
    for cap in 0..64u32 {
        if p.caps.ambient & (1 << cap) != 0 {
            sys::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
            )
            .step(|| format!("raise ambient capability {cap}"))?;
        }
    }
    if p.no_new_privs {
        sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).step(|| "set no_new_privs".into())?;
    }
    if let Some(m) = p.umask {
        sys::umask(m);
    }
    std::env::set_current_dir(&p.cwd).step(|| format!("chdir {}", p.cwd.display()))?;
    // A working directory outside the container root shows as "(unreachable)…".
    let cwd = std::env::current_dir().step(|| "getcwd".into())?;
    if !cwd.is_absolute() || cwd.to_string_lossy().starts_with("(unreachable)") {
        return Err(StepError {
            step: "check cwd".into(),
            message: format!("{} is outside the container", cwd.display()),
        });
    }
    let c = |s: &String| cstr(s).step(|| format!("NUL in {s:?}"));
    Ok(Exec {
        path: cstr(&path).step(|| "program path".into())?,
        argv: p.args.iter().map(c).collect::<StepResult<_>>()?,
        envp: env.iter().map(c).collect::<StepResult<_>>()?,
    })
}

/// With no_new_privs the filter is loaded as late as possible — after `close_range`,
/// so only `execve` runs under it before the user's program (a strict profile need
/// not allow the runtime's own syscalls).
fn load_seccomp_late(p: &ProcessPlan) -> StepResult<()> {
    match &p.seccomp {
        Some(f) if p.no_new_privs => f.load().step(|| "load seccomp filter".into()),
        _ => Ok(()),
    }
}

/// Runs `prepare_exec` then `execve` (for exec into a running container).
pub fn exec_now(p: &ProcessPlan) -> StepResult<std::convert::Infallible> {
    let exec = prepare_exec(p)?;
    sys::cloexec_from(3 + p.preserve_fds).step(|| "close inherited descriptors".into())?;
    load_seccomp_late(p)?;
    let err = sys::execve(&exec.path, &exec.argv, &exec.envp);
    Err(StepError {
        step: format!("exec {}", exec.path.to_string_lossy()),
        message: err.to_string(),
    })
}

fn home_of(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
    })
}

fn resolve_program(arg0: &str, env: &[String]) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if arg0.contains('/') {
        return if ok(Path::new(arg0)) {
            Ok(arg0.into())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{arg0}: no such executable"),
            ))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(arg0))
        .find(|p| ok(p))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{arg0}: not found in PATH {path}"),
            )
        })
}

/// Keeps `fd` alive (for stdio descriptors handed to a child) — a no-op helper so
/// callers can express ownership.
pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

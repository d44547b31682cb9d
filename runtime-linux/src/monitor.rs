//! The per-node monitor: one small single-threaded process per runtime root.
//!
//! An embedding program is multithreaded and async, so it must not fork containers
//! itself. Instead it asks the monitor (`wharf-runc --root R monitor`, started on first
//! use and detached into its own session) over `<root>/monitor.sock`. The monitor forks
//! the containers, is their parent (and a child subreaper), reaps them, writes each exit
//! into the container's state (`exit.json`, with OOM kills), copies their output into
//! CRI log files and streams exit events to subscribers. If the program dies, the
//! containers and the monitor live on; a restarted program reconnects and finds every
//! exit recorded. One process serves every container of the node (containerd-shim and
//! conmon cost one per container).
//!
//! Protocol ([`crate::protocol`]): one JSON request per line; the answer is one JSON
//! line, except for `subscribe` (a stream of events), `exec` (a second line when the
//! process ends) and `attach` (descriptors with the first line, `exec_done` when the
//! container exits).
//! Idle rule: with no containers alive and no client connected for [`IDLE_EXIT`], the
//! monitor exits.
//!
//! Attach: a container created with a log, stdin or a terminal has its stdio pass
//! through the monitor (others write to `/dev/null`: no pipe, nothing to poll); the
//! monitor copies its output to the log and to its attachers ([`crate::attach`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::attach::{ContainerIo, Lagging, StdinMode};
use crate::container::{CreateOptions, Engine};
use crate::error::{Error, Result};
use crate::init::ProcessPlan;
use crate::logs::{CriLog, LogTarget, Stream};
use crate::pin;
use crate::rootfs::Overlay;
use crate::spec::Bundle;
use crate::state::{self, Status};
use crate::stdio::ChildStdio;
use crate::sys;

pub use crate::protocol::{Event, ExecMode, ExecProcess, Reply, Request};

/// How long an idle monitor lingers before exiting.
pub const IDLE_EXIT: Duration = Duration::from_secs(2);

/// The pid of the monitor serving `root`, if one runs.
pub fn running_pid(root: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(root.join("monitor.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

/// The monitor's socket under `root`.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join("monitor.sock")
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    subscriber: bool,
    closed: bool,
}

enum Tracked {
    Container {
        id: String,
        /// The container's mount namespace, held until its exit is reported: when the
        /// last reference to a mount namespace goes, the kernel unmounts its tree and
        /// waits for an RCU grace period. Without this reference the exiting process
        /// pays that wait before its parent even learns of the exit.
        mount_ns: Option<std::fs::File>,
    },
    Exec {
        client: usize,
        capture: bool,
    },
}

struct Pipe {
    /// Shared with the container's [`ContainerIo`] for a pty master.
    file: Rc<std::fs::File>,
    owner: PipeOwner,
    stream: Stream,
    /// Others hold the same open file (a pty master): its O_NONBLOCK may change.
    shared_flags: bool,
}

#[derive(Clone, PartialEq, Eq)]
enum PipeOwner {
    Container(String),
    Exec(i32),
}

struct Capture {
    out: Vec<u8>,
    err: Vec<u8>,
    status: Option<sys::WaitStatus>,
    client: usize,
}

struct Monitor {
    engine: Engine,
    listener: UnixListener,
    sigfd: OwnedFd,
    clients: HashMap<usize, Client>,
    next_client: usize,
    children: HashMap<i32, Tracked>,
    /// Containers found running at start-up whose parent is gone: watched by pidfd.
    adopted: HashMap<i32, (OwnedFd, String)>,
    pipes: Vec<Pipe>,
    logs: HashMap<String, CriLog>,
    /// Containers whose stdio passes through us (they can be attached to).
    ios: HashMap<String, ContainerIo>,
    captures: HashMap<i32, Capture>,
    idle_since: Option<Instant>,
    quit: bool,
}

/// Runs the monitor for `root` until it is idle. Returns at once if another monitor
/// holds the root's lock.
pub fn serve(root: &Path) -> Result<()> {
    let mut engine = Engine::new(root)?;
    let lock_path = root.join("monitor.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::os("-", format!("open {}", lock_path.display()), e))?;
    if !sys::flock_exclusive_nonblocking(lock.as_fd())
        .map_err(|e| Error::os("-", "lock monitor", e))?
    {
        return Ok(());
    }
    // The monitor holds a few descriptors per container (pipes, a pty master, a mount
    // namespace): its soft RLIMIT_NOFILE goes up to the hard limit, and the containers
    // and exec'd processes it starts get the limits it started with.
    let nofile = libc::RLIMIT_NOFILE;
    if let Ok((soft, hard)) = sys::getrlimit(nofile) {
        if soft < hard && sys::setrlimit(nofile, hard, hard).is_ok() {
            engine.set_inherited_nofile((soft, hard));
        }
    }
    // Held for the monitor's lifetime (containers are forked into new pid namespaces
    // from it); opened now so the monitor's descriptors stay the same across creates.
    crate::init::own_pid_ns().map_err(|e| Error::os("-", "open /proc/self/ns/pid", e))?;
    // The lock file names the monitor's pid (for operators and leak checks).
    let _ = lock.set_len(0);
    let _ = (&lock).write_all(std::process::id().to_string().as_bytes());
    let _ = sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0);
    let sock = socket_path(root);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)
        .map_err(|e| Error::os("-", format!("bind {}", sock.display()), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::os("-", "listener", e))?;
    let sigfd = sys::signalfd(&[
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGPIPE,
    ])
    .map_err(|e| Error::os("-", "signalfd", e))?;
    let mut m = Monitor {
        engine,
        listener,
        sigfd,
        clients: HashMap::new(),
        next_client: 0,
        children: HashMap::new(),
        adopted: HashMap::new(),
        pipes: Vec::new(),
        logs: HashMap::new(),
        ios: HashMap::new(),
        captures: HashMap::new(),
        idle_since: Some(Instant::now()),
        quit: false,
    };
    m.adopt_existing();
    let res = m.run();
    let _ = std::fs::remove_file(&sock);
    drop(lock);
    res
}

impl Monitor {
    fn adopt_existing(&mut self) {
        let Ok(list) = self.engine.list() else { return };
        for s in list {
            if s.status == Status::Stopped {
                if s.exit.is_none() {
                    // Exited while no monitor watched, and nobody can know its code. A
                    // stopped container's state shows no pid: its record keeps it.
                    let pid = self.engine.record(&s.id).map_or(s.pid, |r| r.pid);
                    self.record_unknown_exit(&s.id, pid);
                }
                continue;
            }
            if let Ok(fd) = sys::pidfd_open(s.pid) {
                self.adopted.insert(s.pid, (fd, s.id.clone()));
            }
        }
    }

    /// An adopted container that exited while no monitor watched: nobody can know its
    /// code.
    fn record_unknown_exit(&mut self, id: &str, pid: i32) {
        tracing::warn!(
            id,
            "container exited while no monitor watched; exit code unknown (255)"
        );
        self.record_and_announce(id, pid, sys::WaitStatus::Exited(255));
    }

    /// Records how container `id` (process `pid`) ended and announces it to subscribers;
    /// returns its exit code.
    fn record_and_announce(&mut self, id: &str, pid: i32, status: sys::WaitStatus) -> i32 {
        match self.engine.record_exit(id, status) {
            Ok(info) => {
                self.broadcast(Event::Exit {
                    id: id.into(),
                    pid,
                    code: info.code,
                    oom_killed: info.oom_killed,
                    finished_unix_nanos: info.finished_unix_nanos as u64,
                });
                info.code
            }
            Err(e) => {
                tracing::warn!(id, error = %e, "recording exit failed");
                status.code()
            }
        }
    }

    fn run(&mut self) -> Result<()> {
        loop {
            let mut fds = vec![
                libc::pollfd {
                    fd: self.listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.sigfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let client_keys: Vec<usize> = self.clients.keys().copied().collect();
            for k in &client_keys {
                fds.push(libc::pollfd {
                    fd: self.clients[k].stream.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // Handling clients below may add pipes: remember which were polled.
            let pipe_fds: Vec<RawFd> = self.pipes.iter().map(|p| p.file.as_raw_fd()).collect();
            for fd in &pipe_fds {
                fds.push(libc::pollfd {
                    fd: *fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let adopted: Vec<i32> = self.adopted.keys().copied().collect();
            for pid in &adopted {
                fds.push(libc::pollfd {
                    fd: self.adopted[pid].0.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            sys::poll(&mut fds, 200).map_err(|e| Error::os("-", "poll", e))?;

            if fds[1].revents != 0 {
                self.drain_signals();
            }
            self.reap();
            let base = 2;
            for (i, k) in client_keys.iter().enumerate() {
                if fds[base + i].revents != 0 {
                    self.read_client(*k);
                }
            }
            let pbase = base + client_keys.len();
            let ready: Vec<RawFd> = pipe_fds
                .iter()
                .enumerate()
                .filter(|(i, _)| fds[pbase + i].revents != 0)
                .map(|(_, fd)| *fd)
                .collect();
            for fd in ready {
                self.read_pipe(fd);
            }
            let offset = pbase + pipe_fds.len();
            for (i, pid) in adopted.iter().enumerate() {
                if fds[offset + i].revents != 0 {
                    if let Some((_, id)) = self.adopted.remove(pid) {
                        self.record_unknown_exit(&id, *pid);
                    }
                }
            }
            if fds[0].revents != 0 {
                self.accept();
            }
            self.finish_captures();
            self.clients.retain(|_, c| !c.closed);
            // A closed connection detaches its attachers.
            for io in self.ios.values_mut() {
                io.detach_gone(|client| self.clients.contains_key(&client));
            }
            let idle = self
                .children
                .values()
                .all(|t| !matches!(t, Tracked::Container { .. }))
                && self.adopted.is_empty()
                && self.clients.is_empty();
            if self.quit && self.children.is_empty() && self.adopted.is_empty() {
                return Ok(());
            }
            match (idle, self.idle_since) {
                (true, None) => self.idle_since = Some(Instant::now()),
                (true, Some(t)) if t.elapsed() >= IDLE_EXIT && self.children.is_empty() => {
                    return Ok(())
                }
                (false, _) => self.idle_since = None,
                _ => {}
            }
        }
    }

    fn drain_signals(&mut self) {
        let mut buf = [0u8; 128 * 4];
        let mut f = std::fs::File::from(self.sigfd.try_clone().expect("dup signalfd"));
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            for chunk in buf[..n].chunks(128) {
                let signo = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as i32;
                if signo == libc::SIGTERM || signo == libc::SIGINT {
                    self.quit = true;
                }
            }
        }
    }

    fn reap(&mut self) {
        while let Ok(Some((pid, status))) = sys::reap_any() {
            match self.children.remove(&pid) {
                Some(Tracked::Container { id, mount_ns }) => {
                    self.drain_pipes_of(&PipeOwner::Container(id.clone()));
                    if let Some(mut log) = self.logs.remove(&id) {
                        // A last line without its newline (a prompt) is logged too.
                        let now = state::rfc3339(state::now_nanos());
                        let _ = log.flush_stream(Stream::Stdout, &now);
                        let _ = log.flush_stream(Stream::Stderr, &now);
                    }
                    let io = self.ios.remove(&id);
                    let code = self.record_and_announce(&id, pid, status);
                    // Attachers see their streams end (everything was copied above),
                    // then the exit code.
                    for client in io.map(ContainerIo::end).unwrap_or_default() {
                        self.send(
                            client,
                            &Reply::ExecDone {
                                code,
                                stdout: String::new(),
                                stderr: String::new(),
                            },
                        );
                    }
                    // Released only now that the exit is out (see `Tracked::Container`).
                    drop(mount_ns);
                }
                Some(Tracked::Exec { client, capture }) => {
                    if capture {
                        if let Some(c) = self.captures.get_mut(&pid) {
                            c.status = Some(status);
                        }
                    } else {
                        self.send(
                            client,
                            &Reply::ExecDone {
                                code: status.code(),
                                stdout: String::new(),
                                stderr: String::new(),
                            },
                        );
                    }
                }
                // Orphans re-parented to us (we are a subreaper): just reaped.
                None => {}
            }
        }
    }

    fn finish_captures(&mut self) {
        let done: Vec<i32> = self
            .captures
            .iter()
            .filter(|(pid, c)| {
                c.status.is_some()
                    && !self
                        .pipes
                        .iter()
                        .any(|p| matches!(p.owner, PipeOwner::Exec(x) if x == **pid))
            })
            .map(|(p, _)| *p)
            .collect();
        for pid in done {
            let c = self.captures.remove(&pid).expect("listed");
            let reply = Reply::ExecDone {
                code: c.status.map(|s| s.code()).unwrap_or(-1),
                stdout: String::from_utf8_lossy(&c.out).into(),
                stderr: String::from_utf8_lossy(&c.err).into(),
            };
            self.send(c.client, &reply);
        }
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            let _ = stream.set_nonblocking(true);
            self.clients.insert(
                self.next_client,
                Client {
                    stream,
                    buf: Vec::new(),
                    subscriber: false,
                    closed: false,
                },
            );
            self.next_client += 1;
        }
    }

    fn read_client(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(&key) else {
            return;
        };
        let mut tmp = [0u8; 8192];
        loop {
            match c.stream.read(&mut tmp) {
                Ok(0) => {
                    c.closed = true;
                    break;
                }
                Ok(n) => c.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.closed = true;
                    break;
                }
            }
        }
        let mut requests = Vec::new();
        while let Some(pos) = c.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = c.buf.drain(..=pos).collect();
            requests.push(serde_json::from_slice::<Request>(&line));
        }
        for r in requests {
            match r {
                Ok(req) => self.handle(key, req),
                Err(e) => self.send(
                    key,
                    &Reply::Error {
                        kind: "other".into(),
                        message: format!("bad request: {e}"),
                    },
                ),
            }
        }
    }

    fn send(&mut self, key: usize, reply: &Reply) {
        if let Some(c) = self.clients.get_mut(&key) {
            let mut line = serde_json::to_vec(reply).expect("reply serialises");
            line.push(b'\n');
            // Replies are small; a client that does not read gets dropped.
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(Duration::from_secs(5)));
            if c.stream.write_all(&line).is_err() {
                c.closed = true;
            }
            let _ = c.stream.set_nonblocking(true);
        }
    }

    fn broadcast(&mut self, event: Event) {
        let keys: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.subscriber)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.send(k, &Reply::Event(event.clone()));
        }
    }

    fn handle(&mut self, key: usize, req: Request) {
        let reply = match req {
            Request::Subscribe => {
                if let Some(c) = self.clients.get_mut(&key) {
                    c.subscriber = true;
                }
                Reply::Ok
            }
            Request::Shutdown => {
                self.quit = true;
                Reply::Ok
            }
            Request::Create {
                id,
                bundle,
                overlay,
                owned_dirs,
                log,
                stdin,
                stdin_once,
            } => {
                let mode = StdinMode { stdin, stdin_once };
                match self.create(&id, &bundle, overlay, owned_dirs, log, mode) {
                    Ok(pid) => Reply::Created { pid },
                    Err(e) => Reply::error(&e),
                }
            }
            Request::Attach { id, stdin } => match self.attach(key, &id, stdin) {
                Ok((reply, fds)) => return self.send_fds(key, &reply, fds),
                Err(e) => Reply::error(&e),
            },
            Request::PinNamespaces {
                dir,
                flags,
                hostname,
                sysctls,
            } => match pin::pin_namespaces(&dir, flags, &hostname, &sysctls) {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::error(&e),
            },
            Request::Exec { id, process, mode } => match self.exec(key, &id, process, mode) {
                Ok((pid, fds)) if !fds.is_empty() => {
                    return self.send_fds(key, &Reply::ExecStarted { pid }, fds)
                }
                Ok((pid, _)) => Reply::ExecStarted { pid },
                Err(e) => Reply::error(&e),
            },
        };
        self.send(key, &reply);
    }

    /// Sends a reply with descriptors attached (they are closed here afterwards).
    fn send_fds(&mut self, key: usize, reply: &Reply, fds: Vec<OwnedFd>) {
        if let Some(c) = self.clients.get_mut(&key) {
            let mut line = serde_json::to_vec(reply).expect("reply serialises");
            line.push(b'\n');
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(Duration::from_secs(5)));
            if crate::pty::send_fds(c.stream.as_fd(), &line, &raw).is_err() {
                c.closed = true;
            }
            let _ = c.stream.set_nonblocking(true);
        }
    }

    fn create(
        &mut self,
        id: &str,
        bundle_dir: &Path,
        overlay: Option<Overlay>,
        owned_dirs: Vec<PathBuf>,
        log: Option<LogTarget>,
        mode: StdinMode,
    ) -> Result<i32> {
        let bundle = Bundle::load(id, bundle_dir)?;
        let terminal = bundle
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        // Output passes through us only when someone may read it: the log, or
        // attachers (who need stdin or a terminal to talk back, or a log to watch).
        // Otherwise it goes to /dev/null: no pipe to make, poll or drain.
        let attachable = log.is_some() || mode.stdin || terminal;
        let cri_log = match &log {
            Some(target) => Some(
                CriLog::open(target.clone())
                    .map_err(|e| Error::os(id, format!("open log {}", target.path.display()), e))?,
            ),
            None => None,
        };
        // With a terminal the container's stdio is the pty's slave.
        let stdio = ChildStdio::new(id, mode.stdin && !terminal, attachable && !terminal)?;
        let opts = CreateOptions {
            stdio: stdio.fds(),
            overlay,
            owned_dirs,
            pid_file: None,
            console_socket: None,
            keep_console: terminal,
            // The monitor's own descriptors (its socket, other containers' pipes) never
            // reach a container.
            preserve_fds: 0,
            // `LinuxRuntime` writes each bundle into the container's state directory.
            adopt_bundle_dir: bundle.dir == self.engine.dir(id).path,
        };
        let (rec, console) = self.engine.create_with_console(id, &bundle, &opts)?;
        let ends = stdio.into_parent_ends();
        if let Some(log) = cri_log {
            self.logs.insert(id.to_string(), log);
        }
        // Nothing here can fail any more: the container exists, and from now on we
        // watch it. A terminal's output is the container's stdout, read from the same
        // master attachers get copies of (one descriptor, no dup to fail).
        let owner = PipeOwner::Container(id.to_string());
        let console = console.map(|master| Rc::new(std::fs::File::from(master)));
        if let Some(master) = &console {
            self.watch(&owner, Rc::clone(master), Stream::Stdout, true);
        }
        for (fd, stream) in ends.output {
            self.watch(&owner, Rc::new(fd.into()), stream, false);
        }
        if attachable {
            let io = ContainerIo::new(ends.stdin, console, mode);
            self.ios.insert(id.to_string(), io);
        }
        self.children.insert(
            rec.pid,
            Tracked::Container {
                id: id.to_string(),
                mount_ns: std::fs::File::open(format!("/proc/{}/ns/mnt", rec.pid)).ok(),
            },
        );
        self.idle_since = None;
        Ok(rec.pid)
    }

    /// Polls `file` and copies what it carries (`stream` of `owner`). `shared_flags`:
    /// others (attachers) hold the same open file (a pty master), so its O_NONBLOCK
    /// may change.
    fn watch(
        &mut self,
        owner: &PipeOwner,
        file: Rc<std::fs::File>,
        stream: Stream,
        shared_flags: bool,
    ) {
        let _ = sys::set_nonblocking(file.as_fd(), true);
        self.pipes.push(Pipe {
            file,
            owner: owner.clone(),
            stream,
            shared_flags,
        });
    }

    /// Registers client `key` as an attacher of container `id` (a writer of its stdin
    /// with `stdin`): the `attached` reply and the descriptors that go with it.
    fn attach(&mut self, key: usize, id: &str, stdin: bool) -> Result<(Reply, Vec<OwnedFd>)> {
        if let Some(io) = self.ios.get_mut(id) {
            return io.attach(id, key, stdin);
        }
        let st = self.engine.state(id)?;
        if st.status == Status::Stopped {
            return Err(Error::InvalidState {
                id: id.into(),
                status: st.status.to_string(),
                operation: "attach",
            });
        }
        // Re-adopted at our start: its stdio died with the monitor that made it.
        let adopted = self.adopted.values().any(|(_, c)| c == id);
        let reason = if adopted {
            "its stdio was held by an earlier monitor, which exited; this one only \
             watches it (the log stopped too)"
        } else {
            "its output is not captured (created without a log path, stdin or a terminal)"
        };
        Err(Error::NotAttachable {
            id: id.into(),
            reason: reason.into(),
        })
    }

    fn exec(
        &mut self,
        key: usize,
        id: &str,
        p: ExecProcess,
        mode: ExecMode,
    ) -> Result<(i32, Vec<OwnedFd>)> {
        let capture = mode == ExecMode::Capture;
        let (interactive, terminal, want_stdin) = match mode {
            ExecMode::Interactive { terminal, stdin } => (true, terminal, stdin),
            _ => (false, None, false),
        };
        let mut plan: ProcessPlan = self.engine.process_of(id)?;
        plan.args = p.args;
        plan.env.extend(p.env);
        if let Some(c) = p.cwd {
            plan.cwd = c;
        }
        if let Some(u) = p.uid {
            plan.uid = u;
        }
        if let Some(g) = p.gid {
            plan.gid = g;
        }
        let piped = capture || (interactive && terminal.is_none());
        let stdio = ChildStdio::new(id, interactive && want_stdin && terminal.is_none(), piped)?;
        let spawned = self.engine.exec(id, plan, stdio.fds(), terminal)?;
        let ends = stdio.into_parent_ends();
        if interactive {
            // The client gets the streams; we only reap the process and report its end.
            let mut fds: Vec<OwnedFd> = spawned.console.into_iter().collect();
            fds.extend(ends.output.into_iter().map(|(r, _)| r));
            fds.extend(ends.stdin);
            self.children.insert(
                spawned.pid,
                Tracked::Exec {
                    client: key,
                    capture: false,
                },
            );
            return Ok((spawned.pid, fds));
        }
        for (fd, stream) in ends.output {
            self.watch(
                &PipeOwner::Exec(spawned.pid),
                Rc::new(fd.into()),
                stream,
                false,
            );
        }
        if capture {
            self.captures.insert(
                spawned.pid,
                Capture {
                    out: Vec::new(),
                    err: Vec::new(),
                    status: None,
                    client: key,
                },
            );
        }
        self.children.insert(
            spawned.pid,
            Tracked::Exec {
                client: key,
                capture,
            },
        );
        Ok((spawned.pid, Vec::new()))
    }

    fn read_pipe(&mut self, fd: RawFd) {
        let Some(idx) = self.pipes.iter().position(|p| p.file.as_raw_fd() == fd) else {
            return;
        };
        let eof = self.pump(idx);
        if eof {
            let p = self.pipes.remove(idx);
            if let PipeOwner::Container(id) = &p.owner {
                let now = state::rfc3339(state::now_nanos());
                if let Some(log) = self.logs.get_mut(id) {
                    let _ = log.flush_stream(p.stream, &now);
                }
            }
        }
    }

    /// Copies what is readable from pipe `idx`; true at EOF.
    fn pump(&mut self, idx: usize) -> bool {
        let mut buf = [0u8; 16 * 1024];
        if self.pipes[idx].shared_flags {
            // An attacher may have cleared O_NONBLOCK on its copy (the same open
            // file): set it again, or the read loop below would block the monitor.
            let _ = sys::set_nonblocking(self.pipes[idx].file.as_fd(), true);
        }
        loop {
            let p = &self.pipes[idx];
            match (&*p.file).read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    let stream = p.stream;
                    match &p.owner {
                        PipeOwner::Container(id) => {
                            if let Some(log) = self.logs.get_mut(id) {
                                let now = state::rfc3339(state::now_nanos());
                                if let Err(e) = log.write(stream, &buf[..n], &now) {
                                    tracing::warn!(id, error = %e, "writing container log failed");
                                }
                            }
                            let lagging = match self.ios.get_mut(id) {
                                Some(io) => io.fan_out(stream, &buf[..n]),
                                None => Vec::new(),
                            };
                            if !lagging.is_empty() {
                                let id = id.clone();
                                self.detach_lagging(&id, lagging);
                            }
                        }
                        PipeOwner::Exec(pid) => {
                            if let Some(c) = self.captures.get_mut(pid) {
                                let dst = if stream == Stream::Stdout {
                                    &mut c.out
                                } else {
                                    &mut c.err
                                };
                                // Bound what a chatty exec can make us hold.
                                if dst.len() < 16 << 20 {
                                    dst.extend_from_slice(&buf[..n]);
                                }
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// Ends the sessions of attachers that fell a full pipe behind (their pipes are
    /// closed already): the error tells them why their output stopped.
    fn detach_lagging(&mut self, id: &str, lagging: Vec<Lagging>) {
        for Lagging { client, capacity } in lagging {
            tracing::warn!(id, client, "attacher fell behind the output; detached");
            self.send(
                client,
                &Reply::Error {
                    kind: "unavailable".into(),
                    message: format!(
                        "container {id}: detached: the attacher fell {capacity} bytes (its \
                         pipe's size) behind the output; the log has all of it"
                    ),
                },
            );
        }
    }

    fn drain_pipes_of(&mut self, owner: &PipeOwner) {
        let fds: Vec<RawFd> = self
            .pipes
            .iter()
            .filter(|p| &p.owner == owner)
            .map(|p| p.file.as_raw_fd())
            .collect();
        for fd in fds {
            if let Some(idx) = self.pipes.iter().position(|p| p.file.as_raw_fd() == fd) {
                // Whatever the process wrote before exiting is still in the pipe.
                let _ = self.pump(idx);
            }
        }
    }
}

//! `wharf-runc`: the wharf runtime with runc's command line, usable as the OCI runtime of
//! other tools (podman `--runtime`, containerd's runc shim).
//!
//! It forks containers directly (it is single-threaded), so it needs no monitor.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use oci_spec::runtime::{LinuxCpu, LinuxPids, LinuxResources};
use wharf_runtime_linux::container::{ConsoleSocket, Terminal};
use wharf_runtime_linux::{sys, Bundle, CreateOptions, Engine, Error, Status};

#[derive(Parser)]
#[command(
    name = "wharf-runc",
    version,
    about = "OCI runtime (runc-compatible command line)"
)]
struct Cli {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = "/run/wharf-runc")]
    root: PathBuf,
    /// Append errors to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Accepted for compatibility; debug output goes to the log.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for compatibility; systemd cgroup paths are not supported.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for compatibility.
    #[arg(long, global = true)]
    rootless: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct CreateArgs {
    /// Container id.
    id: String,
    /// Bundle directory.
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the container's pid here.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master (terminal containers).
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Pass N extra descriptors (3…) to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for compatibility.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for compatibility.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container (it waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start {
        /// Container id.
        id: String,
    },
    /// Create and start a container; wait for it unless --detach.
    Run {
        #[command(flatten)]
        c: CreateArgs,
        /// Do not wait for the container.
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Print a container's state as JSON.
    State {
        /// Container id.
        id: String,
    },
    /// Send a signal (default SIGTERM).
    Kill {
        /// Container id.
        id: String,
        /// Signal name or number.
        signal: Option<String>,
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete a container.
    Delete {
        /// Container id.
        id: String,
        /// Kill it first if it runs.
        #[arg(short, long)]
        force: bool,
    },
    /// Run a process in a running container.
    Exec {
        /// Container id.
        id: String,
        /// Command and arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        /// process.json describing the process.
        #[arg(short, long)]
        process: Option<PathBuf>,
        /// Working directory.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Extra environment, KEY=value.
        #[arg(short, long)]
        env: Vec<String>,
        /// uid[:gid].
        #[arg(short, long)]
        user: Option<String>,
        /// Do not wait for the process.
        #[arg(short, long)]
        detach: bool,
        /// Write the pid here.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Allocate a terminal (its master goes to --console-socket).
        #[arg(short, long)]
        tty: bool,
        /// Unix socket that receives the pty master.
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Set no_new_privs.
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        /// Pass N extra descriptors.
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
    },
    /// List processes of a container.
    Ps {
        /// Container id.
        id: String,
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
    },
    /// List containers.
    List {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Ids only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a default config.json.
    Spec {
        /// Bundle directory.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// Freeze a container.
    Pause {
        /// Container id.
        id: String,
    },
    /// Thaw a container.
    Resume {
        /// Container id.
        id: String,
    },
    /// Change resource limits.
    Update {
        /// Container id.
        id: String,
        /// JSON LinuxResources file, or - for stdin.
        #[arg(short, long)]
        resources: Option<PathBuf>,
        /// Memory limit in bytes.
        #[arg(long)]
        memory: Option<i64>,
        /// CPU shares.
        #[arg(long = "cpu-shares")]
        cpu_shares: Option<u64>,
        /// CFS quota (µs).
        #[arg(long = "cpu-quota")]
        cpu_quota: Option<i64>,
        /// CFS period (µs).
        #[arg(long = "cpu-period")]
        cpu_period: Option<u64>,
        /// CPUs allowed.
        #[arg(long = "cpuset-cpus")]
        cpuset_cpus: Option<String>,
        /// Memory nodes allowed.
        #[arg(long = "cpuset-mems")]
        cpuset_mems: Option<String>,
        /// Maximum number of processes.
        #[arg(long = "pids-limit")]
        pids_limit: Option<i64>,
    },
    /// Print what this runtime supports, as JSON.
    Features,
    /// Run the per-node monitor on --root (used by the library).
    #[command(hide = true)]
    Monitor {
        /// Detach: fork, let the parent exit at once, serve in a new session.
        #[arg(long)]
        daemon: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            log_error(&cli, &e.to_string());
            ExitCode::from(1)
        }
    }
}

fn log_error(cli: &Cli, msg: &str) {
    eprintln!("wharf-runc: {msg}");
    if let Some(path) = &cli.log {
        let time = wharf_runtime_linux::state::rfc3339(wharf_runtime_linux::state::now_nanos());
        let line = if cli.log_format == "json" {
            serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string()
        } else {
            format!("time=\"{time}\" level=error msg={msg:?}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn signal_number(s: &str) -> Result<i32, Error> {
    if let Ok(n) = s.parse::<i32>() {
        return Ok(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        "PIPE" => libc::SIGPIPE,
        _ => {
            return Err(Error::ConfigField {
                path: "<command line>".into(),
                field: "signal".into(),
                message: format!("unknown signal {s:?}"),
            })
        }
    };
    Ok(n)
}

fn run(cli: &Cli) -> Result<u8, Error> {
    if let Cmd::Spec { bundle, .. } = &cli.cmd {
        let path = bundle.join("config.json");
        if path.exists() {
            return Err(Error::AlreadyExists(path.display().to_string()));
        }
        let json = serde_json::to_string_pretty(&wharf_runtime_linux::spec::default_spec())
            .expect("spec serialises");
        std::fs::write(&path, json)
            .map_err(|e| Error::os("-", format!("write {}", path.display()), e))?;
        return Ok(0);
    }
    if let Cmd::Features = &cli.cmd {
        println!(
            "{}",
            serde_json::to_string_pretty(&features()).expect("json")
        );
        return Ok(0);
    }
    // The container's init is re-parented to us when its setup parent exits.
    let _ = sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0);
    let engine = Engine::new(&cli.root)?;
    match &cli.cmd {
        Cmd::Create(c) => {
            create(&engine, c)?;
        }
        Cmd::Start { id } => engine.start(id)?,
        Cmd::Run { c, detach, keep } => {
            // Signals meant for the container are queued from here on and forwarded.
            let sigfd = sys::signalfd(&FORWARDED).map_err(|e| Error::os(&c.id, "signalfd", e))?;
            let rec = create(&engine, c)?;
            if let Err(e) = engine.start(&c.id) {
                let _ = engine.delete(&c.id, true);
                return Err(e);
            }
            if *detach {
                return Ok(0);
            }
            let status = wait_forwarding(&engine, &c.id, rec.pid, &sigfd);
            if !keep {
                engine.delete(&c.id, true)?;
            }
            return Ok(status.code() as u8);
        }
        Cmd::State { id } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&engine.state(id)?).expect("json")
            );
        }
        Cmd::Kill { id, signal, all } => {
            let sig = signal_number(signal.as_deref().unwrap_or("TERM"))?;
            engine.kill(id, sig, *all)?;
        }
        Cmd::Delete { id, force } => engine.delete(id, *force)?,
        Cmd::Exec {
            id,
            command,
            process,
            cwd,
            env,
            user,
            detach,
            pid_file,
            tty,
            console_socket,
            no_new_privs,
            preserve_fds,
        } => {
            let mut p = engine.process_of(id)?;
            let mut terminal = tty.then_some(Terminal::default());
            if let Some(file) = process {
                let text = std::fs::read(file).map_err(|source| Error::ConfigRead {
                    path: file.clone(),
                    source,
                })?;
                let proc: oci_spec::runtime::Process =
                    serde_json::from_slice(&text).map_err(|e| Error::ConfigParse {
                        path: file.clone(),
                        message: e.to_string(),
                    })?;
                let rec = engine.record(id)?;
                let seccomp = p.seccomp.take();
                p = wharf_runtime_linux::plan::process_plan(
                    id,
                    &rec.rootfs,
                    &proc,
                    wharf_runtime_linux::caps::host_bounding(),
                )?;
                p.seccomp = seccomp;
                if proc.terminal() == Some(true) {
                    terminal = Some(Terminal {
                        size: proc.console_size().map(|b| {
                            (
                                b.width().min(u16::MAX as u64) as u16,
                                b.height().min(u16::MAX as u64) as u16,
                            )
                        }),
                    });
                }
            }
            // Reach the console socket before anything runs.
            let console = match (terminal, console_socket) {
                (Some(_), Some(path)) => Some(ConsoleSocket::connect(id, path)?),
                (Some(_), None) => {
                    return Err(Error::ConfigField {
                        path: "<command line>".into(),
                        field: "tty".into(),
                        message: "a terminal needs --console-socket to receive it".into(),
                    })
                }
                _ => None,
            };
            if !command.is_empty() {
                p.args = command.clone();
            }
            if let Some(c) = cwd {
                p.cwd = c.clone();
            }
            p.env.extend(env.iter().cloned());
            if let Some(u) = user {
                let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
                p.uid = uid.parse().map_err(|_| Error::ConfigField {
                    path: "<command line>".into(),
                    field: "user".into(),
                    message: format!("{u:?} is not uid[:gid]"),
                })?;
                p.gid = gid.parse().unwrap_or(0);
            }
            p.no_new_privs |= *no_new_privs;
            p.preserve_fds = *preserve_fds;
            let spawned = engine.exec(id, p, [None, None, None], terminal)?;
            if let (Some(sock), Some(master)) = (&console, &spawned.console) {
                sock.send(id, spawned.pid, master)?;
            }
            drop(spawned.console);
            if let Some(f) = pid_file {
                std::fs::write(f, spawned.pid.to_string())
                    .map_err(|e| Error::os(id, "write pid file", e))?;
            }
            if *detach {
                return Ok(0);
            }
            let st = sys::waitpid(spawned.pid).map_err(|e| Error::os(id, "wait exec", e))?;
            return Ok(st.code() as u8);
        }
        Cmd::Ps { id, format } => {
            let pids = engine.pids(id)?;
            if format == "json" {
                println!("{}", serde_json::to_string(&pids).expect("json"));
            } else {
                println!("PID CMD");
                for p in pids {
                    let cmd =
                        std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                    println!("{p} {}", cmd.trim());
                }
            }
        }
        Cmd::List { format, quiet } => {
            let list = engine.list()?;
            if *quiet {
                for s in &list {
                    println!("{}", s.id);
                }
            } else if format == "json" {
                println!("{}", serde_json::to_string(&list).expect("json"));
            } else {
                println!(
                    "{:<24} {:<8} {:<10} {:<40} CREATED",
                    "ID", "PID", "STATUS", "BUNDLE"
                );
                for s in &list {
                    println!(
                        "{:<24} {:<8} {:<10} {:<40} {}",
                        s.id,
                        s.pid,
                        s.status,
                        s.bundle.display(),
                        s.created
                    );
                }
            }
        }
        Cmd::Pause { id } => engine.pause(id)?,
        Cmd::Resume { id } => engine.resume(id)?,
        Cmd::Update {
            id,
            resources,
            memory,
            cpu_shares,
            cpu_quota,
            cpu_period,
            cpuset_cpus,
            cpuset_mems,
            pids_limit,
        } => {
            let mut r: LinuxResources = match resources {
                Some(p) if p == Path::new("-") => serde_json::from_reader(std::io::stdin())
                    .map_err(|e| Error::ConfigParse {
                        path: "<stdin>".into(),
                        message: e.to_string(),
                    })?,
                Some(p) => {
                    let t = std::fs::read(p).map_err(|source| Error::ConfigRead {
                        path: p.clone(),
                        source,
                    })?;
                    serde_json::from_slice(&t).map_err(|e| Error::ConfigParse {
                        path: p.clone(),
                        message: e.to_string(),
                    })?
                }
                None => LinuxResources::default(),
            };
            if memory.is_some() {
                let mut m = r.memory().unwrap_or_default();
                m.set_limit(*memory);
                r.set_memory(Some(m));
            }
            if cpu_shares.is_some()
                || cpu_quota.is_some()
                || cpu_period.is_some()
                || cpuset_cpus.is_some()
                || cpuset_mems.is_some()
            {
                let mut c: LinuxCpu = r.cpu().clone().unwrap_or_default();
                c.set_shares(cpu_shares.or(c.shares()));
                c.set_quota(cpu_quota.or(c.quota()));
                c.set_period(cpu_period.or(c.period()));
                if cpuset_cpus.is_some() {
                    c.set_cpus(cpuset_cpus.clone());
                }
                if cpuset_mems.is_some() {
                    c.set_mems(cpuset_mems.clone());
                }
                r.set_cpu(Some(c));
            }
            if let Some(l) = pids_limit {
                let mut p = LinuxPids::default();
                p.set_limit(*l);
                r.set_pids(Some(p));
            }
            engine.update(id, &r)?;
        }
        Cmd::Monitor { daemon } => {
            if *daemon {
                match sys::fork().map_err(|e| Error::os("-", "fork monitor", e))? {
                    sys::Fork::Parent(_) => return Ok(0),
                    sys::Fork::Child => {
                        let _ = sys::setsid();
                    }
                }
            }
            wharf_runtime_linux::monitor::serve(&cli.root)?;
        }
        Cmd::Spec { .. } | Cmd::Features => unreachable!("handled above"),
    }
    Ok(0)
}

const FORWARDED: [i32; 8] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCHLD,
];

fn create(engine: &Engine, c: &CreateArgs) -> Result<wharf_runtime_linux::state::Record, Error> {
    let bundle = Bundle::load(&c.id, &c.bundle)?;
    let _ = (c.no_pivot, c.no_new_keyring);
    engine.create(
        &c.id,
        &bundle,
        &CreateOptions {
            pid_file: c.pid_file.clone(),
            console_socket: c.console_socket.clone(),
            preserve_fds: c.preserve_fds,
            ..CreateOptions::default()
        },
    )
}

/// Waits for the container's init, forwarding signals to it and reaping other
/// children (we are a subreaper). Returns its exit status.
fn wait_forwarding(
    engine: &Engine,
    id: &str,
    pid: i32,
    sigfd: &std::os::fd::OwnedFd,
) -> sys::WaitStatus {
    loop {
        while let Ok(Some((p, st))) = sys::reap_any() {
            if p == pid {
                let _ = engine.record_exit(id, st);
                return st;
            }
        }
        let _ = sys::poll_one(sigfd.as_fd(), libc::POLLIN, 1000);
        let mut buf = [0u8; 128];
        // signalfd_siginfo: ssi_signo is the first u32.
        while let Ok(n) = nix_read(sigfd, &mut buf) {
            if n < 4 {
                break;
            }
            let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as i32;
            if signo != libc::SIGCHLD {
                let _ = sys::kill(pid, signo);
            }
        }
        if engine
            .state(id)
            .map(|s| s.status == Status::Stopped)
            .unwrap_or(true)
        {
            // Exited but not our child (should not happen as subreaper): stop waiting.
            if let Ok(Some(st)) = sys::reap_pid_nohang(pid) {
                return st;
            }
        }
    }
}

fn nix_read(fd: &std::os::fd::OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut f = std::fs::File::from(fd.try_clone()?);
    std::io::Read::read(&mut f, buf)
}

fn seccomp_features() -> serde_json::Value {
    if !wharf_runtime_linux::seccomp::ENABLED {
        return serde_json::json!({"enabled": false});
    }
    serde_json::json!({
        "enabled": true,
        "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
        "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
            "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
        "archs": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_X32", "SCMP_ARCH_X86",
            "SCMP_ARCH_X86_64"],
        "knownFlags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
            "SECCOMP_FILTER_FLAG_TSYNC"],
        "supportedFlags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
            "SECCOMP_FILTER_FLAG_TSYNC"]
    })
}

fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "bind", "rbind",
            "private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable",
            "relatime", "norelatime", "strictatime", "nostrictatime", "noatime", "atime", "nodiratime",
            "diratime", "sync", "async", "dirsync", "remount", "mand", "nomand", "silent", "loud", "lazytime"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": wharf_runtime_linux::caps::NAMES.to_vec(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": seccomp_features(),
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {"org.opencontainers.runc.version": "wharf-runc"}
    })
}

//! The monitor's wire protocol: requests, replies and events, one JSON object per
//! line on `<root>/monitor.sock` (descriptors ride along by `SCM_RIGHTS` where a reply
//! says so). Shared by the monitor ([`crate::monitor`]) and its clients
//! ([`crate::client`], [`crate::runtime`]); it holds no behaviour of either.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::container::Terminal;
use crate::error::Error;
use crate::logs::LogTarget;
use crate::rootfs::Overlay;

/// A process to exec into a running container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecProcess {
    /// argv.
    pub args: Vec<String>,
    /// Extra environment (added to the container's).
    pub env: Vec<String>,
    /// Working directory (default: the container's).
    pub cwd: Option<PathBuf>,
    /// uid (default: the container's).
    pub uid: Option<u32>,
    /// gid (default: the container's).
    pub gid: Option<u32>,
}

/// How an exec'd process's standard streams are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecMode {
    /// Streams to `/dev/null`; an `exec_done` reply gives the exit code when it ends.
    Detached,
    /// Stdout and stderr are collected and returned with the exit code (`exec_done`).
    Capture,
    /// The client gets the streams: the `exec_started` reply carries, by `SCM_RIGHTS`,
    /// the pty master (with `terminal`) or the read ends of stdout and stderr followed,
    /// with `stdin`, by the write end of stdin; `exec_done` follows at the end.
    Interactive {
        /// Give the process a pty.
        terminal: Option<Terminal>,
        /// Connect stdin (without a terminal; a pty is always read and written).
        stdin: bool,
    },
}

/// A request to the monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create a container from a bundle directory.
    Create {
        /// Container id.
        id: String,
        /// Bundle directory.
        bundle: PathBuf,
        /// Overlay root filesystem.
        overlay: Option<Overlay>,
        /// Directories deleted with the container.
        owned_dirs: Vec<PathBuf>,
        /// CRI log file for stdout/stderr (None: discard).
        log: Option<LogTarget>,
        /// Keep the container's stdin open (a pipe attachers write to); without it,
        /// and without a terminal, stdin is `/dev/null`.
        #[serde(default)]
        stdin: bool,
        /// With `stdin`: the first attacher gets the pipe itself, so the container reads
        /// end of file once that attacher closes it (Kubernetes' `stdinOnce`).
        #[serde(default)]
        stdin_once: bool,
    },
    /// Attach to a container's stdio: output from now on, and its terminal.
    Attach {
        /// Container id.
        id: String,
        /// Also write its stdin (`kubectl attach -i`). Only such an attacher takes a
        /// `stdin_once` container's pipe.
        #[serde(default)]
        stdin: bool,
    },
    /// Exec a process in a running container.
    Exec {
        /// Container id.
        id: String,
        /// The process.
        process: ExecProcess,
        /// How its standard streams are wired and what the replies carry.
        mode: ExecMode,
    },
    /// Create new namespaces (`flags`: CLONE_NEWNET/IPC/UTS) and pin them by bind
    /// mounts onto `dir/{net,ipc,uts}`, so they live without a process.
    PinNamespaces {
        /// Directory for the pin files.
        dir: PathBuf,
        /// CLONE_NEW* flags.
        flags: i32,
        /// Hostname set in the new uts namespace.
        hostname: String,
        /// Namespaced sysctls set inside.
        sysctls: Vec<(String, String)>,
    },
    /// Stream exit events.
    Subscribe,
    /// Exit now if no container is alive.
    Shutdown,
}

/// An event from the monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A container's init process exited.
    Exit {
        /// Container id.
        id: String,
        /// Its host pid.
        pid: i32,
        /// Exit code (128 + signal when killed).
        code: i32,
        /// Killed by the OOM killer.
        oom_killed: bool,
        /// Unix nanoseconds (u64: serde's tagged enums cannot carry u128).
        finished_unix_nanos: u64,
    },
}

/// An answer from the monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Done.
    Ok,
    /// A container was created.
    Created {
        /// Its init's host pid.
        pid: i32,
    },
    /// An exec process started.
    ExecStarted {
        /// Its host pid.
        pid: i32,
    },
    /// An attach started. Passed by `SCM_RIGHTS` with this reply: the read end of the
    /// output pipe, then with `terminal` the pty master (for resizing, and for input
    /// with `stdin`), else the read end of the stderr pipe followed, with `stdin`, by
    /// the write end of the container's stdin. `exec_done` follows when the container
    /// exits.
    Attached {
        /// The container has a terminal (one output stream).
        terminal: bool,
        /// The attacher may write the container's stdin.
        stdin: bool,
    },
    /// A captured exec ended (also: an attached container exited).
    ExecDone {
        /// Exit code.
        code: i32,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },
    /// An event (subscribers only).
    Event(Event),
    /// The request failed.
    Error {
        /// Which kind of failure (`not_found`, `already_exists`, `invalid_state`,
        /// `invalid_argument`, `unavailable`, `other`).
        kind: String,
        /// The full message.
        message: String,
    },
}

impl Reply {
    /// The error reply for `e` (its kind as the client maps it).
    pub(crate) fn error(e: &Error) -> Reply {
        let kind = match e {
            Error::NotFound(_) => "not_found",
            Error::AlreadyExists(_) => "already_exists",
            Error::InvalidState { .. } | Error::NotAttachable { .. } => "invalid_state",
            Error::InvalidId(_)
            | Error::ConfigParse { .. }
            | Error::ConfigField { .. }
            | Error::ConfigRead { .. }
            | Error::RootfsMissing { .. }
            | Error::UnknownUser { .. } => "invalid_argument",
            _ => "other",
        };
        Reply::Error {
            kind: kind.into(),
            message: e.to_string(),
        }
    }
}

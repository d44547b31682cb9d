//! `ContainerRuntime`: pod sandboxes and containers, shaped after Kubernetes' CRI.
//!
//! A *sandbox* holds what the containers of one pod share: network, IPC and UTS namespaces
//! (pinned, so that they exist before the first container and after the last), a cgroup
//! parent, a hostname. Containers are created in a sandbox and join its namespaces.
//!
//! Identity and idempotency: ids are chosen by the runtime and returned by
//! `run_sandbox`/`create_container`. `stop_*` and `remove_*` of something already stopped or
//! gone succeed. `create_container` is not idempotent (CRI's isn't either): a caller that
//! lost the answer lists containers by its labels to find the one it made.
//!
//! Containers outlive the program that manages them: a runtime built on the same state
//! directory lists the containers and sandboxes it finds there (running ones keep running) and
//! reports exit codes of those that exited meanwhile.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite};

use super::BackendResult;

/// Labels and annotations: string maps, as in Kubernetes.
pub type Labels = BTreeMap<String, String>;

/// Which namespaces of a sandbox come from the host instead of being new.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostNamespaces {
    /// `hostNetwork: true`.
    pub network: bool,
    /// `hostPID: true`.
    pub pid: bool,
    /// `hostIPC: true`.
    pub ipc: bool,
}

/// How to make a pod sandbox.
#[derive(Clone, Debug, Default)]
pub struct SandboxConfig {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid: with `attempt`, identifies the sandbox.
    pub uid: String,
    /// How many sandboxes this pod had before this one.
    pub attempt: u32,
    /// The hostname the containers see.
    pub hostname: String,
    /// Directory for the containers' log files.
    pub log_directory: Option<PathBuf>,
    /// Labels (used to find the sandbox again).
    pub labels: Labels,
    /// Annotations.
    pub annotations: Labels,
    /// Namespaces shared with the host.
    pub host_namespaces: HostNamespaces,
    /// Parent cgroup path for the pod (e.g. `wharf/pod<uid>`); runtime default when `None`.
    pub cgroup_parent: Option<String>,
    /// Namespaced sysctls for the pod.
    pub sysctls: BTreeMap<String, String>,
    /// DNS for the containers' `/etc/resolv.conf`.
    pub dns: DnsConfig,
}

/// DNS settings written into a sandbox's `/etc/resolv.conf`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// Options such as `ndots:5`.
    pub options: Vec<String>,
}

/// The state of a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxState {
    /// Namespaces exist; containers can run.
    Ready,
    /// Stopped: its containers are stopped and its network namespace may be gone.
    NotReady,
}

/// What the runtime knows of a sandbox.
#[derive(Clone, Debug)]
pub struct SandboxStatus {
    /// Sandbox id.
    pub id: String,
    /// The config it was made from (name, namespace, uid, attempt, labels).
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid.
    pub uid: String,
    /// Attempt number.
    pub attempt: u32,
    /// State.
    pub state: SandboxState,
    /// When it was made.
    pub created_at: SystemTime,
    /// Path of the pinned network namespace (for the network plugin), unless host network.
    pub netns_path: Option<PathBuf>,
    /// Labels.
    pub labels: Labels,
}

/// The root filesystem of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootFs {
    /// Image layers (unpacked snapshot directories, lowest first), stacked read-only under a
    /// per-container writable layer.
    Layers(Vec<PathBuf>),
    /// A directory used as is.
    Directory(PathBuf),
    /// No filesystem: for runtimes that do not need one (simulated runtimes).
    None,
}

/// The image a container runs: its id and reference, and its root filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerImage {
    /// The image reference the pod asked for.
    pub reference: String,
    /// The image id (config digest).
    pub id: String,
    /// Where the root filesystem comes from.
    pub rootfs: RootFs,
}

/// Mount propagation of a bind mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    /// `rprivate`: no propagation (Kubernetes `None`).
    #[default]
    Private,
    /// `rslave`: host mounts appear in the container (`HostToContainer`).
    HostToContainer,
    /// `rshared`: both ways (`Bidirectional`).
    Bidirectional,
}

/// A bind mount of a host path into a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Path inside the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
    /// Propagation.
    pub propagation: Propagation,
}

/// A device made available in a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Path inside the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: PathBuf,
    /// cgroup permissions, e.g. `rwm`.
    pub permissions: String,
}

/// Resource limits, in the units the kernel takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU shares (v1) / derived weight (v2); Kubernetes: requests.cpu in millicores × 1024 / 1000.
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per period.
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds (100000 by default).
    pub cpu_period: Option<u64>,
    /// CPUs the container may run on, e.g. `0-1`.
    pub cpuset_cpus: Option<String>,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// Memory + swap limit in bytes.
    pub memory_swap_limit: Option<i64>,
    /// Memory soft limit (reservation) in bytes.
    pub memory_reservation: Option<i64>,
    /// Maximum number of processes.
    pub pids_limit: Option<i64>,
    /// OOM score adjustment.
    pub oom_score_adj: Option<i32>,
}

/// Linux capability changes relative to the runtime's default set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Added, e.g. `NET_ADMIN` (with or without the `CAP_` prefix).
    pub add: Vec<String>,
    /// Dropped; `ALL` drops every capability.
    pub drop: Vec<String>,
}

/// Security settings of a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecurityContext {
    /// User id to run as (image's user when `None`).
    pub run_as_user: Option<i64>,
    /// Group id to run as.
    pub run_as_group: Option<i64>,
    /// A user name from the image (`USER` of the image config) when no uid is given.
    pub run_as_username: Option<String>,
    /// Supplementary groups.
    pub supplemental_groups: Vec<i64>,
    /// All capabilities, all devices, no masked paths.
    pub privileged: bool,
    /// Mount the root filesystem read-only.
    pub readonly_rootfs: bool,
    /// Capability changes.
    pub capabilities: Capabilities,
    /// Set `no_new_privs` (Kubernetes: `allowPrivilegeEscalation: false`).
    pub no_new_privileges: bool,
    /// Seccomp: `None` runtime default, `Some("unconfined")`, or a profile path.
    pub seccomp_profile: Option<String>,
}

/// How to make a container.
#[derive(Clone, Debug, Default)]
pub struct ContainerConfig {
    /// Container name within the pod.
    pub name: String,
    /// How many times this container was created before in this sandbox.
    pub attempt: u32,
    /// The image.
    pub image: Option<ContainerImage>,
    /// The full command line: entrypoint + args, already resolved from the image config and
    /// the pod spec.
    pub command: Vec<String>,
    /// Working directory (`/` when empty).
    pub working_dir: String,
    /// Environment, in order.
    pub env: Vec<(String, String)>,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// Devices.
    pub devices: Vec<Device>,
    /// Labels (used to find the container again).
    pub labels: Labels,
    /// Annotations.
    pub annotations: Labels,
    /// Log file path, relative to the sandbox's log directory.
    pub log_path: Option<PathBuf>,
    /// Keep stdin open.
    pub stdin: bool,
    /// Close stdin after the first attach ends.
    pub stdin_once: bool,
    /// Allocate a terminal.
    pub tty: bool,
    /// Resource limits.
    pub resources: Resources,
    /// Security settings.
    pub security: SecurityContext,
    /// Signal sent by `stop_container` before SIGKILL (image `STOPSIGNAL`; SIGTERM when `None`).
    pub stop_signal: Option<i32>,
}

/// The state of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Its process is running.
    Running,
    /// Paused (frozen).
    Paused,
    /// Its process exited.
    Exited,
    /// The runtime lost track of it.
    Unknown,
}

/// What the runtime knows of a container.
#[derive(Clone, Debug)]
pub struct ContainerStatus {
    /// Container id.
    pub id: String,
    /// Sandbox id.
    pub sandbox_id: String,
    /// Container name.
    pub name: String,
    /// Attempt number.
    pub attempt: u32,
    /// State.
    pub state: ContainerState,
    /// Image id.
    pub image_id: String,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it started.
    pub started_at: Option<SystemTime>,
    /// When it exited.
    pub finished_at: Option<SystemTime>,
    /// Exit code, once exited (128 + signal when killed by a signal).
    pub exit_code: Option<i32>,
    /// `OOMKilled` when the kernel killed it for memory, `Error` or `Completed` otherwise.
    pub reason: Option<String>,
    /// A message about the exit.
    pub message: Option<String>,
    /// Labels.
    pub labels: Labels,
    /// Host path of the log file.
    pub log_path: Option<PathBuf>,
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct ContainerFilter {
    /// Only containers of this sandbox.
    pub sandbox_id: Option<String>,
    /// Only containers in this state.
    pub state: Option<ContainerState>,
    /// Only containers carrying all these labels.
    pub labels: Labels,
}

/// Usage figures of a container, from its cgroup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerStats {
    /// When they were taken.
    pub timestamp: Option<SystemTime>,
    /// Cumulative CPU time in nanoseconds.
    pub cpu_usage_nanos: u64,
    /// Memory in use, minus inactive file cache (what Kubernetes calls working set).
    pub memory_working_set_bytes: u64,
    /// Memory in use, including cache.
    pub memory_usage_bytes: u64,
    /// Number of processes.
    pub pids: u64,
}

/// What happened to a container, as reported on the event stream.
#[derive(Clone, Debug, PartialEq)]
pub enum RuntimeEventKind {
    /// Created.
    Created,
    /// Started.
    Started,
    /// Its main process exited.
    Exited {
        /// Exit code (128 + signal when killed).
        exit_code: i32,
        /// Killed by the OOM killer.
        oom_killed: bool,
    },
    /// An OOM kill happened in the container (the process may survive).
    Oom,
    /// Removed.
    Removed,
}

/// One event of the runtime's event stream.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeEvent {
    /// Container id.
    pub container_id: String,
    /// Sandbox id.
    pub sandbox_id: String,
    /// When it happened.
    pub time: SystemTime,
    /// What happened.
    pub kind: RuntimeEventKind,
}

/// A stream of runtime events. A slow consumer may miss events (it should then re-list).
pub type EventStream = Pin<Box<dyn Stream<Item = RuntimeEvent> + Send>>;

/// The output of a command run to completion inside a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code.
    pub exit_code: i32,
    /// Standard output.
    pub stdout: Bytes,
    /// Standard error.
    pub stderr: Bytes,
}

/// An interactive command in a container.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    /// The command line.
    pub command: Vec<String>,
    /// Allocate a terminal (stdout and stderr are then one stream).
    pub tty: bool,
    /// Connect stdin.
    pub stdin: bool,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Initial terminal size (columns, rows).
    pub size: Option<(u16, u16)>,
}

/// A running exec or attach session: its streams, a way to resize its terminal, and its end.
pub struct ExecSession {
    /// The process's stdin, when requested.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// Its stdout (with a TTY: the terminal's output).
    pub stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// Its stderr (none with a TTY).
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// Sends a terminal resize (columns, rows), when it has a TTY.
    pub resize: Option<tokio::sync::mpsc::Sender<(u16, u16)>>,
    /// Resolves to the exit code when the process ends.
    pub wait: BoxFuture<'static, BackendResult<i32>>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession").finish_non_exhaustive()
    }
}

/// Which stream a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a container's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// When it was written.
    pub time: SystemTime,
    /// Which stream.
    pub stream: LogStream,
    /// The line (without its newline).
    pub message: Bytes,
    /// The line was cut (longer than the runtime's buffer); the rest follows.
    pub partial: bool,
}

/// Which log lines to read.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// Keep the stream open and send new lines as they come.
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<SystemTime>,
}

/// A stream of log lines.
pub type LogStreamOf = Pin<Box<dyn Stream<Item = BackendResult<LogLine>> + Send>>;

/// A container runtime: sandboxes and containers (CRI-shaped). See the module docs for the
/// contract.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// A short name for logs and errors, e.g. `linux` or `sim`.
    fn name(&self) -> &str;

    /// Makes and starts a sandbox; returns its id.
    async fn run_sandbox(&self, config: &SandboxConfig) -> BackendResult<String>;
    /// Stops every container of the sandbox (SIGKILL) and releases its namespaces except the
    /// record. Idempotent.
    async fn stop_sandbox(&self, sandbox_id: &str) -> BackendResult<()>;
    /// Removes a stopped sandbox and its containers. Idempotent (gone is success).
    async fn remove_sandbox(&self, sandbox_id: &str) -> BackendResult<()>;
    /// Status of one sandbox.
    async fn sandbox_status(&self, sandbox_id: &str) -> BackendResult<SandboxStatus>;
    /// All sandboxes.
    async fn list_sandboxes(&self) -> BackendResult<Vec<SandboxStatus>>;

    /// Makes a container in a sandbox; returns its id.
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> BackendResult<String>;
    /// Starts a created container.
    async fn start_container(&self, container_id: &str) -> BackendResult<()>;
    /// Sends the stop signal, waits up to `grace`, then SIGKILL; returns when it has exited.
    /// Idempotent.
    async fn stop_container(&self, container_id: &str, grace: Duration) -> BackendResult<()>;
    /// Sends a signal to the container's main process.
    async fn kill_container(&self, container_id: &str, signal: i32) -> BackendResult<()>;
    /// Removes a container (stops it first if running). Idempotent.
    async fn remove_container(&self, container_id: &str) -> BackendResult<()>;
    /// Status of one container.
    async fn container_status(&self, container_id: &str) -> BackendResult<ContainerStatus>;
    /// Containers matching the filter.
    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> BackendResult<Vec<ContainerStatus>>;
    /// Freezes a running container.
    async fn pause_container(&self, container_id: &str) -> BackendResult<()>;
    /// Thaws a paused container.
    async fn resume_container(&self, container_id: &str) -> BackendResult<()>;
    /// Changes the resource limits of a container.
    async fn update_resources(
        &self,
        container_id: &str,
        resources: &Resources,
    ) -> BackendResult<()>;

    /// Runs a command to completion in a running container (probes, hooks); it is killed
    /// after `timeout`, which is then an [`ErrorKind::Timeout`](super::ErrorKind::Timeout).
    async fn exec_sync(
        &self,
        container_id: &str,
        command: &[String],
        timeout: Duration,
    ) -> BackendResult<ExecOutput>;
    /// Starts an interactive command in a running container.
    async fn exec(&self, container_id: &str, request: &ExecRequest) -> BackendResult<ExecSession>;
    /// Attaches to the main process's stdio: its output from now on, and with `stdin`
    /// its stdin too (CRI `AttachRequest.stdin`, `kubectl attach -i`). An attacher
    /// without `stdin` only reads, and never takes a `stdin_once` container's stdin.
    async fn attach(&self, container_id: &str, stdin: bool) -> BackendResult<ExecSession>;
    /// Reads a container's log.
    async fn logs(&self, container_id: &str, options: &LogOptions) -> BackendResult<LogStreamOf>;
    /// Usage figures.
    async fn stats(&self, container_id: &str) -> BackendResult<ContainerStats>;
    /// Events from now on.
    fn events(&self) -> EventStream;
}

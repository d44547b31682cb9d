//! The pod state machine: what a node agent does for one pod, as a pure function of what it
//! observed and of the time.
//!
//! The worker feeds [`Observation`]s in ([`PodMachine::observe`]) and asks for
//! [`Action`]s ([`PodMachine::decide`]); it carries the actions out with the backends and
//! feeds their outcomes back. Nothing here does IO or reads a clock, so every rule (crash
//! loop back-off, probe thresholds, sidecar order, termination) is tested by feeding
//! observations at chosen instants.
//!
//! Order of a pod's life: sandbox → network → volumes → init containers in order (a sidecar,
//! an init container with `restartPolicy: Always`, only has to have *started* before the next
//! one) → app containers. Termination stops app containers (and a running regular init
//! container) first, then sidecars one at a time in reverse order, then tears the sandbox,
//! network and volumes down, and finally deletes the pod object when it was being deleted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::time::Instant;

use crate::backend::image::ImageInfo;
use crate::backend::probe::{ProbeAction, Scheme};
use crate::object::Typed;

/// Crash-loop back-off: 10 s doubling to 5 minutes.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The back-off cap.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting restarts without delay.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Kubernetes' minimum stop window after a preStop hook.
pub const MIN_GRACE: Duration = Duration::from_secs(2);
/// Default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Delay before retrying a failed sandbox, network or volume setup, or a config error.
pub const SETUP_RETRY: Duration = Duration::from_secs(10);

/// The time of an observation or decision: tokio's instant (for scheduling) and the wall
/// time (for status timestamps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub at: Instant,
    /// Wall time.
    pub wall: SystemTime,
}

/// Which list a container comes from and how it behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    /// A regular init container: runs to completion before the next.
    Init,
    /// An init container with `restartPolicy: Always`.
    Sidecar,
    /// An app container.
    App,
}

/// The pod's restartPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always restart.
    Always,
    /// Restart on non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// startupProbe.
    Startup,
    /// livenessProbe.
    Liveness,
    /// readinessProbe.
    Readiness,
}

/// A probe with its parameters resolved (defaults applied, named ports looked up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// What to run.
    pub action: ProbeAction,
    /// initialDelaySeconds.
    pub initial_delay: Duration,
    /// periodSeconds.
    pub period: Duration,
    /// timeoutSeconds.
    pub timeout: Duration,
    /// successThreshold.
    pub success_threshold: u32,
    /// failureThreshold.
    pub failure_threshold: u32,
    /// Probe-level terminationGracePeriodSeconds.
    pub termination_grace: Option<Duration>,
}

/// The port of a probe or hook: a number, or the name of a container port.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// The action of a probe or lifecycle handler (exec, httpGet, tcpSocket, grpc).
pub fn handler_action(
    exec: Option<&k8s_openapi::api::core::v1::ExecAction>,
    http: Option<&k8s_openapi::api::core::v1::HTTPGetAction>,
    tcp: Option<&k8s_openapi::api::core::v1::TCPSocketAction>,
    grpc: Option<&k8s_openapi::api::core::v1::GRPCAction>,
    container: &Container,
) -> Option<ProbeAction> {
    if let Some(e) = exec {
        return Some(ProbeAction::Exec {
            command: e.command.clone().unwrap_or_default(),
        });
    }
    if let Some(h) = http {
        return Some(ProbeAction::HttpGet {
            scheme: if h.scheme.as_deref() == Some("HTTPS") {
                Scheme::Https
            } else {
                Scheme::Http
            },
            host: h.host.clone().filter(|s| !s.is_empty()),
            port: resolve_port(&h.port, container)?,
            path: h
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|hh| (hh.name.clone(), hh.value.clone()))
                .collect(),
        });
    }
    if let Some(t) = tcp {
        return Some(ProbeAction::TcpSocket {
            host: t.host.clone().filter(|s| !s.is_empty()),
            port: resolve_port(&t.port, container)?,
        });
    }
    if let Some(g) = grpc {
        return Some(ProbeAction::Grpc {
            port: u16::try_from(g.port).ok()?,
            service: g.service.clone().unwrap_or_default(),
        });
    }
    None
}

fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.map_or(default, |v| v.max(0) as u64))
}

/// A probe of a container with Kubernetes' defaults (period 10 s, timeout 1 s, success 1,
/// failure 3). `None` when the container has no such probe or it names an unknown port.
pub fn probe_spec(container: &Container, kind: ProbeKind) -> Option<ProbeSpec> {
    let p = match kind {
        ProbeKind::Startup => container.startup_probe.as_ref(),
        ProbeKind::Liveness => container.liveness_probe.as_ref(),
        ProbeKind::Readiness => container.readiness_probe.as_ref(),
    }?;
    let action = handler_action(
        p.exec.as_ref(),
        p.http_get.as_ref(),
        p.tcp_socket.as_ref(),
        p.grpc.as_ref(),
        container,
    )?;
    Some(ProbeSpec {
        action,
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        // Liveness and startup must have successThreshold 1.
        success_threshold: match kind {
            ProbeKind::Readiness => p.success_threshold.unwrap_or(1).max(1) as u32,
            _ => 1,
        },
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        termination_grace: match kind {
            ProbeKind::Readiness => None,
            _ => p
                .termination_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64)),
        },
    })
}

/// The end of one run of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminated {
    /// Exit code.
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`.
    pub reason: String,
    /// A message, if any.
    pub message: Option<String>,
    /// When it started (wall).
    pub started: Option<SystemTime>,
    /// When it ended (wall).
    pub finished: SystemTime,
    /// Runtime id of the container.
    pub container_id: String,
}

/// One run of a container.
#[derive(Clone, Debug)]
pub struct Run {
    /// Runtime id.
    pub id: String,
    /// Start (wall).
    pub started_wall: SystemTime,
    /// Start (monotonic).
    pub started_at: Instant,
    /// A stop was requested.
    pub stopping: bool,
    /// How it ended, once it did.
    pub exit: Option<Terminated>,
}

/// Where the image of a container stands.
#[derive(Clone, Debug)]
pub enum ImageStage {
    /// Not looked at for this start.
    Unknown,
    /// A pull is under way.
    Pulling,
    /// Ready to run.
    Ready(Arc<ImageInfo>),
    /// The pull failed at `at`; retry at `retry_at`.
    Failed {
        /// When it failed.
        at: Instant,
        /// When to retry.
        retry_at: Instant,
    },
}

/// State of one probe of a running container.
#[derive(Clone, Debug)]
pub struct ProbeState {
    /// Which probe.
    pub kind: ProbeKind,
    /// Its parameters.
    pub spec: Arc<ProbeSpec>,
    /// When the next attempt is due.
    pub next_at: Instant,
    /// An attempt is running.
    pub in_flight: bool,
    /// Consecutive successes.
    pub successes: u32,
    /// Consecutive failures.
    pub failures: u32,
}

/// The agent's view of one container of the pod.
#[derive(Clone, Debug)]
pub struct Slot {
    /// Container name.
    pub name: String,
    /// Init, sidecar or app.
    pub kind: ContainerKind,
    /// Index in its spec list (initContainers or containers).
    pub spec_index: usize,
    /// Image reference.
    pub image_ref: String,
    /// Pull policy (`Always`, `IfNotPresent`, `Never`), defaulted.
    pub pull_policy: String,
    /// Image state.
    pub image: ImageStage,
    /// Image id once known.
    pub image_id: String,
    /// Current (or last) run.
    pub run: Option<Run>,
    /// Restarts so far.
    pub restart_count: u32,
    /// How the run before the current one ended.
    pub last_state: Option<Terminated>,
    /// When a (re)start is allowed; `None`: now.
    pub restart_at: Option<Instant>,
    /// The current crash-loop delay (`None` before the first restart).
    pub backoff: Option<Duration>,
    /// The image pull back-off.
    pub pull_backoff: Option<Duration>,
    /// Why it cannot start (reason, message).
    pub waiting: Option<(&'static str, String)>,
    /// A start, pull or stop is in flight.
    pub busy: bool,
    /// Will not run again.
    pub finished: bool,
    /// A probe asked for a restart: stop with this grace.
    pub kill: Option<Duration>,
    /// Probes (empty until running).
    pub probes: Vec<ProbeState>,
    /// Startup passed (or no startup probe) and running.
    pub started: bool,
    /// Readiness.
    pub ready: bool,
}

impl Slot {
    fn new(c: &Container, kind: ContainerKind, spec_index: usize) -> Slot {
        let image_ref = c.image.clone().unwrap_or_default();
        let pull_policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| default_pull_policy(&image_ref).to_string());
        Slot {
            name: c.name.clone(),
            kind,
            spec_index,
            image_ref,
            pull_policy,
            image: ImageStage::Unknown,
            image_id: String::new(),
            run: None,
            restart_count: 0,
            last_state: None,
            restart_at: None,
            backoff: None,
            pull_backoff: None,
            waiting: None,
            busy: false,
            finished: false,
            kill: None,
            probes: Vec::new(),
            started: false,
            ready: false,
        }
    }

    /// Its process runs.
    pub fn is_running(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.exit.is_none())
    }

    /// It ran and exited 0.
    pub fn succeeded(&self) -> bool {
        self.run
            .as_ref()
            .and_then(|r| r.exit.as_ref())
            .is_some_and(|e| e.exit_code == 0)
    }

    /// The exit of its last run, if it ended.
    pub fn exit(&self) -> Option<&Terminated> {
        self.run.as_ref().and_then(|r| r.exit.as_ref())
    }
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent`.
pub fn default_pull_policy(image: &str) -> &'static str {
    let name = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match name.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// A setup step (sandbox, network, volumes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage<T> {
    /// Not started.
    Todo,
    /// Under way.
    InFlight,
    /// Done.
    Done(T),
    /// Failed; retry at the instant.
    Failed(Instant, String),
}

impl<T> Stage<T> {
    /// Done.
    pub fn done(&self) -> Option<&T> {
        match self {
            Stage::Done(t) => Some(t),
            _ => None,
        }
    }
}

/// Something for the worker to do.
#[derive(Clone, Debug)]
pub enum Action {
    /// Make the sandbox.
    CreateSandbox,
    /// Attach the sandbox to the network.
    AttachNetwork {
        /// Sandbox id.
        sandbox_id: String,
    },
    /// Set up the pod's volumes.
    MountVolumes,
    /// Make sure the image of a container is present (per its pull policy).
    EnsureImage {
        /// Slot index.
        slot: usize,
    },
    /// Create and start a container (and run its postStart hook).
    StartContainer {
        /// Slot index.
        slot: usize,
        /// The image.
        image: Arc<ImageInfo>,
        /// Its restart count for this run.
        restart_count: u32,
    },
    /// Run one probe attempt.
    Probe {
        /// Slot index.
        slot: usize,
        /// Container id.
        container_id: String,
        /// Which probe.
        kind: ProbeKind,
        /// What to run.
        spec: Arc<ProbeSpec>,
    },
    /// Stop a container: preStop hook, stop signal, SIGKILL after the grace.
    StopContainer {
        /// Slot index.
        slot: usize,
        /// Container id.
        container_id: String,
        /// The grace period.
        grace: Duration,
        /// No minimum window (a forced deletion).
        force: bool,
    },
    /// Remove containers, the sandbox, the network attachment and the volumes.
    TearDown {
        /// The sandbox, if one was made.
        sandbox_id: Option<String>,
    },
    /// Delete the pod object (grace 0): its termination is complete.
    DeletePod,
}

/// Something the worker learned.
#[derive(Clone, Debug)]
pub enum Observation {
    /// The sandbox exists.
    SandboxReady(String),
    /// Making the sandbox failed.
    SandboxFailed(String),
    /// The network is attached; these are the pod's IPs.
    NetworkReady(Vec<IpAddr>),
    /// Attaching failed.
    NetworkFailed(String),
    /// Volumes are set up at these host paths (by volume name).
    VolumesReady(BTreeMap<String, PathBuf>),
    /// Volume setup failed.
    VolumesFailed(String),
    /// The image of a slot is ready.
    ImageReady(usize, Arc<ImageInfo>),
    /// Getting the image failed with a waiting reason (`ErrImagePull`, `ErrImageNeverPull`).
    ImageFailed(usize, &'static str, String),
    /// A container started.
    Started {
        /// Slot index.
        slot: usize,
        /// Container id.
        container_id: String,
        /// Start time (wall).
        started: SystemTime,
    },
    /// A container could not be made (`CreateContainerConfigError`, `CreateContainerError`).
    CreateFailed(usize, &'static str, String),
    /// A container exited.
    Exited {
        /// Container id.
        container_id: String,
        /// Exit code.
        exit_code: i32,
        /// OOM-killed.
        oom: bool,
        /// `StartError` etc., when the runtime gives one.
        reason: Option<String>,
        /// Message.
        message: Option<String>,
        /// When (wall).
        finished: SystemTime,
    },
    /// A stop finished.
    Stopped(usize),
    /// A probe attempt finished (`None`: unknown, not counted).
    ProbeDone {
        /// Slot.
        slot: usize,
        /// Container id it ran against.
        container_id: String,
        /// Which probe.
        kind: ProbeKind,
        /// Success or failure.
        success: Option<bool>,
    },
    /// The pod object changed.
    PodUpdated(Typed<Pod>),
    /// The pod object is gone from the store.
    PodGone,
    /// Teardown finished.
    TornDown,
    /// The pod object was deleted.
    Deleted,
    /// Found at start-up: the sandbox and containers a previous agent made.
    Adopted {
        /// Sandbox id.
        sandbox_id: String,
        /// Containers: (name, id, restart count, started (wall), exit if it exited).
        containers: Vec<AdoptedContainer>,
    },
}

/// A container found in the runtime when the agent (re)starts.
#[derive(Clone, Debug)]
pub struct AdoptedContainer {
    /// Name.
    pub name: String,
    /// Id.
    pub id: String,
    /// Restart count recorded on it.
    pub restart_count: u32,
    /// Start (wall).
    pub started: Option<SystemTime>,
    /// Image id.
    pub image_id: String,
    /// Exit, if it ended.
    pub exit: Option<Terminated>,
}

/// The pod's termination: deletion or completion.
#[derive(Clone, Copy, Debug)]
pub struct Termination {
    /// When every container must be gone.
    pub deadline: Instant,
    /// The pod is being deleted (delete the object at the end).
    pub deleting: bool,
    /// Forced: no minimum stop window.
    pub force: bool,
}

/// What the agent knows and decides about one pod.
#[derive(Debug)]
pub struct PodMachine {
    /// The pod object as last seen.
    pub pod: Typed<Pod>,
    /// Containers: init containers (and sidecars) in order, then app containers.
    pub slots: Vec<Slot>,
    /// Number of init containers at the front of `slots`.
    pub n_init: usize,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Host network (no attach).
    pub host_network: bool,
    /// Sandbox.
    pub sandbox: Stage<String>,
    /// Network.
    pub network: Stage<Vec<IpAddr>>,
    /// Volumes: host paths by volume name.
    pub volumes: Stage<BTreeMap<String, PathBuf>>,
    /// When the agent accepted the pod.
    pub start_time: Option<SystemTime>,
    /// Every regular init container succeeded and every sidecar started.
    pub initialized: bool,
    /// A regular init container failed under restartPolicy Never.
    pub init_failed: bool,
    /// Every app container is done (not restarting): the pod is terminal.
    pub completed: bool,
    /// Termination under way.
    pub termination: Option<Termination>,
    /// Teardown.
    pub teardown: Stage<()>,
    /// The pod object was deleted (or vanished): nothing left to do.
    pub gone: bool,
    /// The pod was already terminal when this machine was made (an agent restart): its
    /// status is final and is not rewritten.
    pub frozen: bool,
    /// The final delete of the pod object is under way (sent, its outcome not yet seen).
    delete_sent: bool,
    /// The pod object is already gone from the store: nothing to delete at the end.
    object_gone: bool,
    early_exits: Vec<Observation>,
}

impl PodMachine {
    /// A machine for a newly seen pod.
    pub fn new(pod: Typed<Pod>) -> PodMachine {
        let spec = pod.spec.clone().unwrap_or_default();
        let mut slots = Vec::new();
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            let kind = if c.restart_policy.as_deref() == Some("Always") {
                ContainerKind::Sidecar
            } else {
                ContainerKind::Init
            };
            slots.push(Slot::new(c, kind, i));
        }
        let n_init = slots.len();
        for (i, c) in spec.containers.iter().enumerate() {
            slots.push(Slot::new(c, ContainerKind::App, i));
        }
        let restart_policy = match spec.restart_policy.as_deref() {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        };
        let mut m = PodMachine {
            host_network: spec.host_network.unwrap_or(false),
            pod,
            slots,
            n_init,
            restart_policy,
            sandbox: Stage::Todo,
            network: Stage::Todo,
            volumes: Stage::Todo,
            start_time: None,
            initialized: false,
            init_failed: false,
            completed: false,
            termination: None,
            teardown: Stage::Todo,
            gone: false,
            frozen: false,
            delete_sent: false,
            object_gone: false,
            early_exits: Vec::new(),
        };
        // Carry what the previous status said (a restarted agent keeps restart counts).
        if let Some(status) = m.pod.status.clone() {
            if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
                m.frozen = true;
                m.completed = true;
                m.initialized = true;
            }
            m.start_time = status.start_time.as_ref().map(crate::clock::from_k8s_time);
            let all = status
                .init_container_statuses
                .iter()
                .flatten()
                .chain(status.container_statuses.iter().flatten());
            for cs in all {
                if let Some(slot) = m.slots.iter_mut().find(|s| s.name == cs.name) {
                    slot.restart_count = cs.restart_count.max(0) as u32;
                }
            }
        }
        m
    }

    /// The container spec of a slot.
    pub fn container(&self, slot: usize) -> Option<&Container> {
        let s = &self.slots[slot];
        let spec = self.pod.spec.as_ref()?;
        match s.kind {
            ContainerKind::App => spec.containers.get(s.spec_index),
            _ => spec.init_containers.as_ref()?.get(s.spec_index),
        }
    }

    /// The pod's terminationGracePeriodSeconds.
    pub fn pod_grace(&self) -> Duration {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64))
    }

    /// The pod's IPs, once attached.
    pub fn pod_ips(&self) -> &[IpAddr] {
        self.network.done().map_or(&[], |v| v.as_slice())
    }

    /// Whether the worker is finished with this pod.
    pub fn is_finished(&self) -> bool {
        self.gone
    }

    fn should_restart(&self, kind: ContainerKind, exit_code: i32) -> bool {
        match kind {
            ContainerKind::Sidecar => true,
            ContainerKind::Init => exit_code != 0 && self.restart_policy != RestartPolicy::Never,
            ContainerKind::App => match self.restart_policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => exit_code != 0,
                RestartPolicy::Never => false,
            },
        }
    }

    fn slot_of(&self, container_id: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.run.as_ref().is_some_and(|r| r.id == container_id))
    }

    fn begin_termination(&mut self, now: Now, grace: Duration, deleting: bool, force: bool) {
        match &mut self.termination {
            Some(t) => {
                // A second delete may shorten the grace period, never extend it.
                t.deadline = t.deadline.min(now.at + grace);
                t.deleting |= deleting;
                t.force |= force;
            }
            None => {
                self.termination = Some(Termination {
                    deadline: now.at + grace,
                    deleting,
                    force,
                })
            }
        }
    }

    /// Feeds one observation in.
    pub fn observe(&mut self, obs: Observation, now: Now) {
        match obs {
            Observation::SandboxReady(id) => self.sandbox = Stage::Done(id),
            Observation::SandboxFailed(m) => self.sandbox = Stage::Failed(now.at + SETUP_RETRY, m),
            Observation::NetworkReady(ips) => self.network = Stage::Done(ips),
            Observation::NetworkFailed(m) => self.network = Stage::Failed(now.at + SETUP_RETRY, m),
            Observation::VolumesReady(paths) => self.volumes = Stage::Done(paths),
            Observation::VolumesFailed(m) => self.volumes = Stage::Failed(now.at + SETUP_RETRY, m),
            Observation::ImageReady(i, info) => {
                let s = &mut self.slots[i];
                s.busy = false;
                s.image_id = info.id.clone();
                s.image = ImageStage::Ready(info);
                s.pull_backoff = None;
                s.waiting = None;
            }
            Observation::ImageFailed(i, reason, message) => {
                let s = &mut self.slots[i];
                s.busy = false;
                let delay = match s.pull_backoff {
                    None => BACKOFF_INITIAL,
                    Some(d) => (d * 2).min(BACKOFF_MAX),
                };
                s.pull_backoff = Some(delay);
                s.image = ImageStage::Failed {
                    at: now.at,
                    retry_at: now.at + delay,
                };
                s.waiting = Some((reason, message));
            }
            Observation::CreateFailed(i, reason, message) => {
                let s = &mut self.slots[i];
                s.busy = false;
                s.waiting = Some((reason, message));
                s.restart_at = Some(now.at + SETUP_RETRY);
            }
            Observation::Started {
                slot,
                container_id,
                started,
            } => {
                let container = self.container(slot).cloned().unwrap_or_default();
                let s = &mut self.slots[slot];
                s.busy = false;
                if let Some(prev) = s.run.take() {
                    s.last_state = prev.exit;
                    s.restart_count += 1;
                }
                s.run = Some(Run {
                    id: container_id.clone(),
                    started_wall: started,
                    started_at: now.at,
                    stopping: false,
                    exit: None,
                });
                s.restart_at = None;
                s.waiting = None;
                s.kill = None;
                Self::arm_probes(s, &container, now);
                let early: Vec<Observation> = std::mem::take(&mut self.early_exits);
                for e in early {
                    self.observe(e, now);
                }
            }
            Observation::Exited {
                container_id,
                exit_code,
                oom,
                reason,
                message,
                finished,
            } => {
                let Some(i) = self.slot_of(&container_id) else {
                    // Exit before the start was reported: keep it for then.
                    if self.early_exits.len() < 64 {
                        self.early_exits.push(Observation::Exited {
                            container_id,
                            exit_code,
                            oom,
                            reason,
                            message,
                            finished,
                        });
                    }
                    return;
                };
                let terminating = self.termination.is_some() || self.completed;
                let restart = !terminating && self.should_restart(self.slots[i].kind, exit_code);
                let s = &mut self.slots[i];
                let run = s.run.as_mut().expect("slot_of found a run");
                if run.exit.is_some() {
                    return;
                }
                let reason = reason.unwrap_or_else(|| {
                    if oom {
                        "OOMKilled"
                    } else if exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .to_string()
                });
                run.exit = Some(Terminated {
                    exit_code,
                    reason,
                    message,
                    started: Some(run.started_wall),
                    finished,
                    container_id,
                });
                let ran = now.at.saturating_duration_since(run.started_at);
                s.started = false;
                s.ready = false;
                s.kill = None;
                s.probes.clear();
                if s.pull_policy == "Always" {
                    s.image = ImageStage::Unknown;
                }
                if restart {
                    if ran >= BACKOFF_RESET {
                        s.backoff = None;
                    }
                    let delay = match s.backoff {
                        None => Duration::ZERO,
                        Some(d) if d.is_zero() => BACKOFF_INITIAL,
                        Some(d) => (d * 2).min(BACKOFF_MAX),
                    };
                    s.backoff = Some(delay);
                    s.restart_at = Some(now.at + delay);
                } else {
                    s.finished = true;
                }
            }
            Observation::Stopped(i) => {
                self.slots[i].busy = false;
            }
            Observation::ProbeDone {
                slot,
                container_id,
                kind,
                success,
            } => self.probe_done(slot, &container_id, kind, success),
            Observation::PodUpdated(pod) => {
                let deleting = pod.metadata.deletion_timestamp.is_some();
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .map(|s| Duration::from_secs(s.max(0) as u64));
                self.pod = pod;
                if deleting {
                    let grace = grace.unwrap_or_else(|| self.pod_grace());
                    self.begin_termination(now, grace, true, grace.is_zero());
                }
            }
            Observation::PodGone => {
                self.object_gone = true;
                self.begin_termination(now, Duration::ZERO, true, true);
            }
            Observation::TornDown => self.teardown = Stage::Done(()),
            Observation::Deleted => self.gone = true,
            Observation::Adopted {
                sandbox_id,
                containers,
            } => {
                self.sandbox = Stage::Done(sandbox_id);
                for c in containers {
                    let Some(i) = self.slots.iter().position(|s| s.name == c.name) else {
                        continue;
                    };
                    let container = self.container(i).cloned().unwrap_or_default();
                    let s = &mut self.slots[i];
                    s.restart_count = s.restart_count.max(c.restart_count);
                    s.image_id = c.image_id.clone();
                    s.run = Some(Run {
                        id: c.id.clone(),
                        started_wall: c.started.unwrap_or(now.wall),
                        started_at: now.at,
                        stopping: false,
                        exit: None,
                    });
                    match c.exit {
                        None => {
                            let was_started = self
                                .pod
                                .status
                                .as_ref()
                                .into_iter()
                                .flat_map(|st| {
                                    st.init_container_statuses
                                        .iter()
                                        .flatten()
                                        .chain(st.container_statuses.iter().flatten())
                                })
                                .any(|cs| cs.name == c.name && cs.started == Some(true));
                            let s = &mut self.slots[i];
                            Self::arm_probes(s, &container, now);
                            if was_started {
                                s.started = true;
                                s.probes.retain(|p| p.kind != ProbeKind::Startup);
                                s.ready = !s.probes.iter().any(|p| p.kind == ProbeKind::Readiness);
                            }
                        }
                        Some(exit) => {
                            self.observe(
                                Observation::Exited {
                                    container_id: c.id,
                                    exit_code: exit.exit_code,
                                    oom: exit.reason == "OOMKilled",
                                    reason: Some(exit.reason),
                                    message: exit.message,
                                    finished: exit.finished,
                                },
                                now,
                            );
                        }
                    }
                }
            }
        }
    }

    fn arm_probes(s: &mut Slot, container: &Container, now: Now) {
        s.probes.clear();
        for kind in [
            ProbeKind::Startup,
            ProbeKind::Liveness,
            ProbeKind::Readiness,
        ] {
            if let Some(spec) = probe_spec(container, kind) {
                s.probes.push(ProbeState {
                    kind,
                    next_at: now.at + spec.initial_delay,
                    spec: Arc::new(spec),
                    in_flight: false,
                    successes: 0,
                    failures: 0,
                });
            }
        }
        s.started = !s.probes.iter().any(|p| p.kind == ProbeKind::Startup);
        s.ready = s.started && !s.probes.iter().any(|p| p.kind == ProbeKind::Readiness);
    }

    fn probe_done(
        &mut self,
        slot: usize,
        container_id: &str,
        kind: ProbeKind,
        success: Option<bool>,
    ) {
        let pod_grace = self.pod_grace();
        let s = &mut self.slots[slot];
        let live = s
            .run
            .as_ref()
            .is_some_and(|r| r.id == container_id && r.exit.is_none() && !r.stopping);
        let Some(p) = s.probes.iter_mut().find(|p| p.kind == kind) else {
            return;
        };
        p.in_flight = false;
        if !live {
            return;
        }
        let Some(ok) = success else { return };
        if ok {
            p.successes += 1;
            p.failures = 0;
        } else {
            p.failures += 1;
            p.successes = 0;
        }
        let (successes, failures) = (p.successes, p.failures);
        let spec = p.spec.clone();
        match kind {
            ProbeKind::Startup => {
                if ok {
                    s.started = true;
                    s.probes.retain(|p| p.kind != ProbeKind::Startup);
                    s.ready = !s.probes.iter().any(|p| p.kind == ProbeKind::Readiness);
                } else if failures >= spec.failure_threshold {
                    s.kill = Some(spec.termination_grace.unwrap_or(pod_grace));
                }
            }
            ProbeKind::Liveness => {
                if !ok && failures >= spec.failure_threshold {
                    s.kill = Some(spec.termination_grace.unwrap_or(pod_grace));
                }
            }
            ProbeKind::Readiness => {
                if ok && successes >= spec.success_threshold {
                    s.ready = true;
                } else if !ok && failures >= spec.failure_threshold {
                    s.ready = false;
                }
            }
        }
    }

    /// Starts (or continues starting) a slot, if it is due.
    fn ensure_running(&mut self, i: usize, now: Now, out: &mut Vec<Action>) {
        let s = &mut self.slots[i];
        if s.finished || s.busy || s.is_running() {
            return;
        }
        if s.restart_at.is_some_and(|t| t > now.at) {
            return;
        }
        match &s.image {
            ImageStage::Unknown => {
                s.image = ImageStage::Pulling;
                s.busy = true;
                out.push(Action::EnsureImage { slot: i });
            }
            ImageStage::Pulling => {}
            ImageStage::Failed { retry_at, .. } => {
                if *retry_at <= now.at {
                    s.image = ImageStage::Pulling;
                    s.busy = true;
                    out.push(Action::EnsureImage { slot: i });
                }
            }
            ImageStage::Ready(info) => {
                let restart_count = s.restart_count + u32::from(s.run.is_some());
                out.push(Action::StartContainer {
                    slot: i,
                    image: info.clone(),
                    restart_count,
                });
                s.busy = true;
            }
        }
    }

    fn setup_stage<T>(
        stage: &mut Stage<T>,
        now: Now,
        action: Action,
        out: &mut Vec<Action>,
    ) -> bool {
        match stage {
            Stage::Done(_) => return true,
            Stage::Todo => {}
            Stage::Failed(at, _) if *at <= now.at => {}
            _ => return false,
        }
        *stage = Stage::InFlight;
        out.push(action);
        false
    }

    /// What to do now.
    pub fn decide(&mut self, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        if self.gone {
            return out;
        }
        if self.termination.is_some() || self.completed {
            self.decide_termination(now, &mut out);
            return out;
        }
        if self.start_time.is_none() {
            self.start_time = Some(now.wall);
        }
        if !Self::setup_stage(&mut self.sandbox, now, Action::CreateSandbox, &mut out) {
            return out;
        }
        if !self.host_network {
            let sandbox_id = self.sandbox.done().cloned().unwrap_or_default();
            if !Self::setup_stage(
                &mut self.network,
                now,
                Action::AttachNetwork { sandbox_id },
                &mut out,
            ) {
                return out;
            }
        } else if self.network == Stage::Todo {
            self.network = Stage::Done(Vec::new());
        }
        if !Self::setup_stage(&mut self.volumes, now, Action::MountVolumes, &mut out) {
            return out;
        }

        let mut initialized = true;
        if self.initialized {
            // Initialized stays true: only sidecars are kept running.
            for i in 0..self.n_init {
                if self.slots[i].kind == ContainerKind::Sidecar {
                    self.ensure_running(i, now, &mut out);
                }
            }
        }
        for i in 0..self.n_init {
            if self.initialized {
                break;
            }
            match self.slots[i].kind {
                ContainerKind::Sidecar => {
                    self.ensure_running(i, now, &mut out);
                    if !(self.slots[i].started && self.slots[i].is_running()) {
                        initialized = false;
                        break;
                    }
                }
                _ => {
                    let s = &self.slots[i];
                    if s.succeeded() && s.finished {
                        continue;
                    }
                    if let Some(exit) = s.exit() {
                        if exit.exit_code != 0 && self.restart_policy == RestartPolicy::Never {
                            self.init_failed = true;
                            self.completed = true;
                            self.decide_termination(now, &mut out);
                            return out;
                        }
                    }
                    self.ensure_running(i, now, &mut out);
                    initialized = false;
                    break;
                }
            }
        }
        self.initialized |= initialized;
        if self.initialized {
            for i in self.n_init..self.slots.len() {
                self.ensure_running(i, now, &mut out);
            }
            let all_done = self.slots[self.n_init..]
                .iter()
                .all(|s| s.finished && !s.busy);
            if all_done {
                self.completed = true;
                self.decide_termination(now, &mut out);
                return out;
            }
        }
        self.decide_probes_and_kills(now, &mut out);
        out
    }

    fn decide_probes_and_kills(&mut self, now: Now, out: &mut Vec<Action>) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(run) = s.run.as_mut() else { continue };
            if run.exit.is_some() || run.stopping {
                continue;
            }
            if let Some(grace) = s.kill {
                if !s.busy {
                    run.stopping = true;
                    s.busy = true;
                    out.push(Action::StopContainer {
                        slot: i,
                        container_id: run.id.clone(),
                        grace,
                        force: false,
                    });
                }
                continue;
            }
            let has_startup = s.probes.iter().any(|p| p.kind == ProbeKind::Startup);
            for p in s.probes.iter_mut() {
                if p.kind != ProbeKind::Startup && has_startup {
                    continue;
                }
                if !p.in_flight && p.next_at <= now.at {
                    p.in_flight = true;
                    p.next_at = now.at + p.spec.period;
                    out.push(Action::Probe {
                        slot: i,
                        container_id: run.id.clone(),
                        kind: p.kind,
                        spec: p.spec.clone(),
                    });
                }
            }
        }
    }

    fn decide_termination(&mut self, now: Now, out: &mut Vec<Action>) {
        let term = match self.termination {
            Some(t) => t,
            None => {
                // Completion: sidecars get the pod's grace period.
                let t = Termination {
                    deadline: now.at + self.pod_grace(),
                    deleting: false,
                    force: false,
                };
                self.termination = Some(t);
                t
            }
        };
        let remaining = term.deadline.saturating_duration_since(now.at);
        // Nothing starts any more.
        for s in self.slots.iter_mut() {
            if !s.is_running() && !s.busy {
                s.finished = true;
                s.restart_at = None;
            }
        }
        let stop = |s: &mut Slot, i: usize, out: &mut Vec<Action>| {
            let run = s.run.as_mut().expect("running");
            run.stopping = true;
            s.busy = true;
            s.probes.clear();
            out.push(Action::StopContainer {
                slot: i,
                container_id: run.id.clone(),
                grace: remaining,
                force: term.force,
            });
        };
        let mut active = false;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.kind == ContainerKind::Sidecar {
                continue;
            }
            if s.is_running() && !s.busy && !s.run.as_ref().is_some_and(|r| r.stopping) {
                stop(s, i, out);
            }
            active |= s.is_running() || s.busy;
        }
        if active {
            return;
        }
        for i in (0..self.n_init).rev() {
            let s = &mut self.slots[i];
            if s.kind != ContainerKind::Sidecar || !(s.is_running() || s.busy) {
                continue;
            }
            if !s.busy && !s.run.as_ref().is_some_and(|r| r.stopping) {
                stop(s, i, out);
            }
            return;
        }
        match self.teardown {
            Stage::Todo => {
                self.teardown = Stage::InFlight;
                out.push(Action::TearDown {
                    sandbox_id: self.sandbox.done().cloned(),
                });
            }
            Stage::Done(()) if term.deleting => {
                if self.object_gone {
                    self.gone = true;
                } else if !self.delete_sent {
                    // Finished only once the delete is seen to be done (`Deleted`): other
                    // observations may come first, and must not end the worker with the
                    // delete still pending.
                    self.delete_sent = true;
                    out.push(Action::DeletePod);
                }
            }
            _ => {}
        }
    }

    /// The next instant at which [`decide`](Self::decide) may have something new to do.
    pub fn next_wakeup(&self, now: Now) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if t > now.at {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for stage in [
            match &self.sandbox {
                Stage::Failed(t, _) => Some(*t),
                _ => None,
            },
            match &self.network {
                Stage::Failed(t, _) => Some(*t),
                _ => None,
            },
            match &self.volumes {
                Stage::Failed(t, _) => Some(*t),
                _ => None,
            },
        ]
        .into_iter()
        .flatten()
        {
            consider(stage);
        }
        for s in &self.slots {
            if let Some(t) = s.restart_at {
                consider(t);
            }
            if let ImageStage::Failed { at, retry_at } = s.image {
                consider(retry_at);
                // Shows ImagePullBackOff right after ErrImagePull.
                consider(at + Duration::from_secs(1));
            }
            if s.is_running() {
                for p in &s.probes {
                    if !p.in_flight {
                        consider(p.next_at);
                    }
                }
            }
        }
        next
    }
}

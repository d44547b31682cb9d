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
//!
//! The rules live by concept: `slot` (one container's state), `probes` (probe parameters
//! and thresholds), `restarts` (starts, exits and the crash-loop back-off), `termination`
//! (stop order, teardown, the final delete) and `adoption` (containers a previous agent
//! left running). This file holds the inputs, the outputs and the start-up
//! sequence.

mod adoption;
mod probes;
mod restarts;
mod slot;
mod termination;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use tokio::time::Instant;

use crate::backend::image::ImageInfo;
use crate::object::Typed;

pub use probes::{handler_action, probe_spec, resolve_port, ProbeKind, ProbeSpec, ProbeState};
pub use restarts::{BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_RESET};
pub use slot::{default_pull_policy, ContainerKind, ImageStage, Run, Slot, Terminated};
pub use termination::{Termination, DEFAULT_GRACE, MIN_GRACE};

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
        /// Whether volumes may be set up (by this agent or, for an adopted pod, a previous
        /// one).
        volumes: bool,
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
    /// The sandbox was adopted from a previous agent (which may have set volumes up).
    pub adopted: bool,
    /// The final delete of the pod object is under way (sent, its outcome not yet seen).
    delete_sent: bool,
    /// The pod object is already gone from the store: nothing to delete at the end.
    object_gone: bool,
    early_exits: Vec<Observation>,
}

impl PodMachine {
    /// A machine for a newly seen pod.
    pub fn new(pod: Typed<Pod>) -> PodMachine {
        let default_spec = PodSpec::default();
        let spec = pod.spec.as_ref().unwrap_or(&default_spec);
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
        let host_network = spec.host_network.unwrap_or(false);
        // Carry what the previous status said (a restarted agent keeps restart counts).
        let status = pod.status.as_ref();
        let terminal =
            status.is_some_and(|s| matches!(s.phase.as_deref(), Some("Succeeded" | "Failed")));
        let start_time = status
            .and_then(|s| s.start_time.as_ref())
            .map(crate::clock::from_k8s_time);
        let previous = status.into_iter().flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        });
        for cs in previous {
            if let Some(slot) = slots.iter_mut().find(|s| s.name == cs.name) {
                slot.restart_count = cs.restart_count.max(0) as u32;
            }
        }
        PodMachine {
            host_network,
            pod,
            slots,
            n_init,
            restart_policy,
            sandbox: Stage::Todo,
            network: Stage::Todo,
            volumes: Stage::Todo,
            start_time,
            initialized: terminal,
            init_failed: false,
            completed: terminal,
            termination: None,
            teardown: Stage::Todo,
            gone: false,
            frozen: terminal,
            adopted: false,
            delete_sent: false,
            object_gone: false,
            early_exits: Vec::new(),
        }
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

    fn slot_of(&self, container_id: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.run.as_ref().is_some_and(|r| r.id == container_id))
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
            } => self.container_started(slot, container_id, started, now),
            exit @ Observation::Exited { .. } => self.container_exited(exit, now),
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
            } => self.adopt(sandbox_id, containers, now),
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

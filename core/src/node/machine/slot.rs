//! One container of the pod as the machine sees it: its image, its current and last run,
//! its restart state and its probes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Container;
use tokio::time::Instant;

use super::ProbeState;
use crate::backend::image::ImageInfo;

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
    pub(super) fn new(c: &Container, kind: ContainerKind, spec_index: usize) -> Slot {
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

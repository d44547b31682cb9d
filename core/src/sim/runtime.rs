//! [`SimRuntime`]: a container runtime that runs nothing, driven by tokio's clock.
//!
//! What a container does is programmed per container name (or, failing that, per image
//! reference) with a [`Behavior`]: exit with a code after some time, get OOM-killed, ignore
//! SIGTERM, answer exec commands. Containers that only run cost a record in a map: one timer
//! task per runtime serves every scheduled exit, so idle containers have no task and no timer.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

use crate::backend::runtime::*;
use crate::backend::{BackendError, BackendResult, ErrorKind};
use crate::clock::Clock;

/// SIGKILL.
const SIGKILL: i32 = 9;
/// SIGTERM.
const SIGTERM: i32 = 15;

/// What an exec command does in a simulated container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRule {
    /// The command line it answers (exactly).
    pub command: Vec<String>,
    /// Its exit code.
    pub exit_code: i32,
    /// Its standard output.
    pub stdout: Bytes,
    /// How long it runs (longer than the caller's timeout is a timeout).
    pub duration: Duration,
}

/// What a simulated container does once started. The default runs until stopped, exits
/// with 143 on SIGTERM at once, and answers every exec with exit code 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Behavior {
    /// Exit by itself with this code after running this long.
    pub exit_after: Option<(Duration, i32)>,
    /// Get OOM-killed (exit code 137) after running this long.
    pub oom_after: Option<Duration>,
    /// Ignore SIGTERM (and any stop signal): only SIGKILL at the end of the grace ends it.
    pub ignore_sigterm: bool,
    /// How long it takes to exit after the stop signal.
    pub stop_delay: Duration,
    /// Starting it fails with this message (the container ends as `StartError`, 128).
    pub start_error: Option<String>,
    /// Exec commands with programmed answers; other commands exit 0 at once.
    pub exec: Vec<ExecRule>,
    /// Lines it writes to stdout when it starts (what `logs` returns).
    pub logs: Vec<String>,
}

impl Behavior {
    /// Runs until stopped.
    pub fn run_forever() -> Behavior {
        Behavior::default()
    }

    /// Exits with `code` after `after`.
    pub fn exit(after: Duration, code: i32) -> Behavior {
        Behavior {
            exit_after: Some((after, code)),
            ..Behavior::default()
        }
    }

    /// Is OOM-killed after `after`.
    pub fn oom(after: Duration) -> Behavior {
        Behavior {
            oom_after: Some(after),
            ..Behavior::default()
        }
    }

    /// This behaviour, but ignoring SIGTERM.
    pub fn ignoring_sigterm(mut self) -> Behavior {
        self.ignore_sigterm = true;
        self
    }

    /// This behaviour, plus an exec answer.
    pub fn with_exec(mut self, command: &[&str], exit_code: i32, duration: Duration) -> Behavior {
        self.exec.push(ExecRule {
            command: command.iter().map(|s| s.to_string()).collect(),
            exit_code,
            stdout: Bytes::new(),
            duration,
        });
        self
    }
}

struct SandboxRecord {
    status: SandboxStatus,
}

struct ContainerRecord {
    status: ContainerStatus,
    image_ref: String,
    behavior: Arc<Behavior>,
    /// Bumped on every start and exit, so a stale timer entry is recognised.
    generation: u64,
    config: Option<Arc<ContainerConfig>>,
}

/// A scheduled exit: when, container id, generation, exit code, OOM kill.
type TimedExit = (Instant, String, u64, i32, bool);

#[derive(Default)]
struct State {
    next_id: u64,
    sandboxes: HashMap<String, SandboxRecord>,
    containers: HashMap<String, ContainerRecord>,
    by_name: HashMap<String, Arc<Behavior>>,
    by_image: HashMap<String, Arc<Behavior>>,
    /// Scheduled exits: (when, container id, generation, exit code, oom).
    timers: BinaryHeap<Reverse<TimedExit>>,
    timer_task: bool,
    record_configs: bool,
    history: Option<Vec<HistoryEntry>>,
    /// Usage programmed per container name: (CPU millicores, memory bytes).
    usage: HashMap<String, (u64, u64)>,
    /// Cumulative CPU per container id: (rate in millicores, nanoseconds banked, since).
    cpu: HashMap<String, (u64, u128, SystemTime)>,
}

/// Nanoseconds of CPU used at `rate` millicores during `elapsed`.
fn cpu_nanos(rate: u64, elapsed: Duration) -> u128 {
    u128::from(rate) * elapsed.as_nanos() / 1000
}

/// One entry of a runtime's history: when (tokio time), container name, what happened.
pub type HistoryEntry = (Instant, String, RuntimeEventKind);

struct Inner {
    state: Mutex<State>,
    events: broadcast::Sender<RuntimeEvent>,
    wake: Arc<Notify>,
    clock: Clock,
    default_behavior: Arc<Behavior>,
    sandbox_latency: super::Latency,
    list_sandbox_calls: AtomicUsize,
}

/// A simulated [`ContainerRuntime`]. Cheap to clone (shared state).
#[derive(Clone)]
pub struct SimRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRuntime").finish_non_exhaustive()
    }
}

fn not_found(operation: &str, object: &str) -> BackendError {
    BackendError::new(ErrorKind::NotFound, operation, object, "no such object")
}

impl SimRuntime {
    /// A runtime with no containers, reading wall time from `clock`.
    pub fn new(clock: Clock) -> SimRuntime {
        let (events, _) = broadcast::channel(1024);
        SimRuntime {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                events,
                wake: Arc::new(Notify::new()),
                clock,
                default_behavior: Arc::new(Behavior::default()),
                sandbox_latency: super::Latency::default(),
                list_sandbox_calls: AtomicUsize::new(0),
            }),
        }
    }

    /// Makes `run_sandbox` slow: the sandbox exists (Ready) at once, the call returns
    /// `delay` later. For tests of what happens while a sandbox is being made.
    pub fn set_sandbox_latency(&self, delay: Duration) {
        self.inner.sandbox_latency.set(delay);
    }

    /// How many times `list_sandboxes` was called.
    pub fn list_sandbox_calls(&self) -> usize {
        self.inner.list_sandbox_calls.load(Ordering::Relaxed)
    }

    /// Programs what containers with this name do from their next start on.
    pub fn set_behavior(&self, container_name: &str, behavior: Behavior) {
        self.lock()
            .by_name
            .insert(container_name.to_string(), Arc::new(behavior));
    }

    /// Programs the usage containers with this name report in [`stats`]: CPU in
    /// millicores (cumulative CPU time grows at that rate from now on) and memory working
    /// set in bytes. Applies to running containers at once.
    ///
    /// [`stats`]: ContainerRuntime::stats
    pub fn set_usage(&self, container_name: &str, cpu_millicores: u64, memory_bytes: u64) {
        let now = self.inner.clock.now();
        let mut s = self.lock();
        s.usage
            .insert(container_name.to_string(), (cpu_millicores, memory_bytes));
        let ids: Vec<String> = s
            .containers
            .iter()
            .filter(|(_, c)| c.status.name == container_name)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some((rate, banked, since)) = s.cpu.get_mut(&id) {
                *banked += cpu_nanos(*rate, now.duration_since(*since).unwrap_or_default());
                *rate = cpu_millicores;
                *since = now;
            }
        }
    }

    /// Programs what containers of this image do (when no behaviour is set for their name).
    pub fn set_image_behavior(&self, image: &str, behavior: Behavior) {
        self.lock()
            .by_image
            .insert(image.to_string(), Arc::new(behavior));
    }

    /// Keeps the config of every created container, for [`config_of`](Self::config_of).
    pub fn record_configs(&self, on: bool) {
        self.lock().record_configs = on;
    }

    /// The config a container was created with, when recording is on.
    pub fn config_of(&self, container_id: &str) -> Option<Arc<ContainerConfig>> {
        self.lock()
            .containers
            .get(container_id)
            .and_then(|c| c.config.clone())
    }

    /// Number of containers and sandboxes held (any state).
    pub fn counts(&self) -> (usize, usize) {
        let s = self.lock();
        (s.containers.len(), s.sandboxes.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps behind: keep going.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a history of container events (with names, which outlive the containers).
    pub fn record_history(&self, on: bool) {
        self.lock().history = on.then(Vec::new);
    }

    /// The history recorded since [`record_history`](Self::record_history).
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.lock().history.clone().unwrap_or_default()
    }

    fn emit_locked(&self, state: &mut State, container: &ContainerStatus, kind: RuntimeEventKind) {
        if let Some(h) = state.history.as_mut() {
            h.push((Instant::now(), container.name.clone(), kind.clone()));
        }
        self.emit(container, kind);
    }

    fn emit(&self, container: &ContainerStatus, kind: RuntimeEventKind) {
        let _ = self.inner.events.send(RuntimeEvent {
            container_id: container.id.clone(),
            sandbox_id: container.sandbox_id.clone(),
            time: self.inner.clock.now(),
            kind,
        });
    }

    /// Ends a running container (under the lock). Returns false if it was not running.
    fn finish(&self, state: &mut State, id: &str, exit_code: i32, oom: bool) -> bool {
        let now = self.inner.clock.now();
        let Some(rec) = state.containers.get_mut(id) else {
            return false;
        };
        if rec.status.state != ContainerState::Running {
            return false;
        }
        rec.generation += 1;
        rec.status.state = ContainerState::Exited;
        rec.status.finished_at = Some(now);
        rec.status.exit_code = Some(exit_code);
        rec.status.reason = Some(
            if oom {
                "OOMKilled"
            } else if exit_code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .to_string(),
        );
        let status = rec.status.clone();
        self.emit_locked(
            state,
            &status,
            RuntimeEventKind::Exited {
                exit_code,
                oom_killed: oom,
            },
        );
        true
    }

    fn schedule(&self, state: &mut State, at: Instant, id: &str, gen: u64, code: i32, oom: bool) {
        state
            .timers
            .push(Reverse((at, id.to_string(), gen, code, oom)));
        if !state.timer_task {
            state.timer_task = true;
            let weak = Arc::downgrade(&self.inner);
            tokio::spawn(timer_loop(weak));
        }
        self.inner.wake.notify_one();
    }

    fn running_generation(&self, id: &str) -> Option<u64> {
        let s = self.lock();
        s.containers
            .get(id)
            .filter(|c| c.status.state == ContainerState::Running)
            .map(|c| c.generation)
    }

    fn behavior_of(&self, id: &str) -> BackendResult<Arc<Behavior>> {
        self.lock()
            .containers
            .get(id)
            .map(|c| c.behavior.clone())
            .ok_or_else(|| not_found("container", id))
    }
}

impl SimRuntime {
    fn make_sandbox(&self, config: &SandboxConfig) -> String {
        let mut s = self.lock();
        s.next_id += 1;
        let id = format!("sb-{}", s.next_id);
        let netns_path =
            (!config.host_namespaces.network).then(|| PathBuf::from(format!("/sim/netns/{id}")));
        s.sandboxes.insert(
            id.clone(),
            SandboxRecord {
                status: SandboxStatus {
                    id: id.clone(),
                    name: config.name.clone(),
                    namespace: config.namespace.clone(),
                    uid: config.uid.clone(),
                    attempt: config.attempt,
                    state: SandboxState::Ready,
                    created_at: self.inner.clock.now(),
                    netns_path,
                    labels: config.labels.clone(),
                },
            },
        );
        id
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the timer task see that the runtime is gone.
        self.wake.notify_one();
    }
}

/// Fires scheduled exits. One task per runtime; it ends when the runtime is dropped.
async fn timer_loop(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let wake = inner.wake.clone();
        let rt = SimRuntime { inner };
        let next = {
            let mut s = rt.lock();
            let now = Instant::now();
            while let Some(Reverse((at, ..))) = s.timers.peek() {
                if *at > now {
                    break;
                }
                let Reverse((_, id, gen, code, oom)) = s.timers.pop().expect("peeked");
                let current = s.containers.get(&id).map(|c| c.generation);
                if current == Some(gen) {
                    rt.finish(&mut s, &id, code, oom);
                }
            }
            s.timers.peek().map(|Reverse((at, ..))| *at)
        };
        // Hold only a weak reference while waiting, so the runtime can be dropped.
        drop(rt);
        let notified = wake.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

#[async_trait]
impl ContainerRuntime for SimRuntime {
    fn name(&self) -> &str {
        "sim"
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> BackendResult<String> {
        let id = self.make_sandbox(config);
        self.inner.sandbox_latency.wait().await;
        Ok(id)
    }

    async fn stop_sandbox(&self, sandbox_id: &str) -> BackendResult<()> {
        let mut s = self.lock();
        if !s.sandboxes.contains_key(sandbox_id) {
            return Ok(());
        }
        let ids: Vec<String> = s
            .containers
            .values()
            .filter(|c| c.status.sandbox_id == sandbox_id)
            .map(|c| c.status.id.clone())
            .collect();
        for id in ids {
            self.finish(&mut s, &id, 128 + SIGKILL, false);
        }
        if let Some(sb) = s.sandboxes.get_mut(sandbox_id) {
            sb.status.state = SandboxState::NotReady;
        }
        Ok(())
    }

    async fn remove_sandbox(&self, sandbox_id: &str) -> BackendResult<()> {
        self.stop_sandbox(sandbox_id).await?;
        let mut s = self.lock();
        let removed: Vec<ContainerStatus> = s
            .containers
            .values()
            .filter(|c| c.status.sandbox_id == sandbox_id)
            .map(|c| c.status.clone())
            .collect();
        for c in &removed {
            s.containers.remove(&c.id);
            s.cpu.remove(&c.id);
            self.emit_locked(&mut s, c, RuntimeEventKind::Removed);
        }
        s.sandboxes.remove(sandbox_id);
        Ok(())
    }

    async fn sandbox_status(&self, sandbox_id: &str) -> BackendResult<SandboxStatus> {
        self.lock()
            .sandboxes
            .get(sandbox_id)
            .map(|s| s.status.clone())
            .ok_or_else(|| not_found("sandbox status", sandbox_id))
    }

    async fn list_sandboxes(&self) -> BackendResult<Vec<SandboxStatus>> {
        self.inner
            .list_sandbox_calls
            .fetch_add(1, Ordering::Relaxed);
        Ok(self
            .lock()
            .sandboxes
            .values()
            .map(|s| s.status.clone())
            .collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> BackendResult<String> {
        let mut s = self.lock();
        match s.sandboxes.get(sandbox_id) {
            None => return Err(not_found("create container", sandbox_id)),
            Some(sb) if sb.status.state != SandboxState::Ready => {
                return Err(BackendError::new(
                    ErrorKind::FailedPrecondition,
                    "create container",
                    sandbox_id,
                    "sandbox is not ready",
                ))
            }
            Some(_) => {}
        }
        s.next_id += 1;
        let id = format!("c-{}", s.next_id);
        let image_ref = config
            .image
            .as_ref()
            .map(|i| i.reference.clone())
            .unwrap_or_default();
        let behavior = s
            .by_name
            .get(&config.name)
            .or_else(|| s.by_image.get(&image_ref))
            .cloned()
            .unwrap_or_else(|| self.inner.default_behavior.clone());
        let status = ContainerStatus {
            id: id.clone(),
            sandbox_id: sandbox_id.to_string(),
            name: config.name.clone(),
            attempt: config.attempt,
            state: ContainerState::Created,
            image_id: config
                .image
                .as_ref()
                .map(|i| i.id.clone())
                .unwrap_or_default(),
            created_at: self.inner.clock.now(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: None,
            message: None,
            labels: config.labels.clone(),
            log_path: None,
        };
        let config = s.record_configs.then(|| Arc::new(config.clone()));
        self.emit_locked(&mut s, &status, RuntimeEventKind::Created);
        s.containers.insert(
            id.clone(),
            ContainerRecord {
                status,
                image_ref,
                behavior,
                generation: 0,
                config,
            },
        );
        Ok(id)
    }

    async fn start_container(&self, container_id: &str) -> BackendResult<()> {
        let mut s = self.lock();
        let now = self.inner.clock.now();
        let rec = s
            .containers
            .get_mut(container_id)
            .ok_or_else(|| not_found("start container", container_id))?;
        if rec.status.state != ContainerState::Created {
            return Err(BackendError::new(
                ErrorKind::FailedPrecondition,
                "start container",
                container_id,
                format!("container is {:?}, not created", rec.status.state),
            ));
        }
        let behavior = rec.behavior.clone();
        if let Some(message) = &behavior.start_error {
            rec.status.state = ContainerState::Exited;
            rec.status.exit_code = Some(128);
            rec.status.finished_at = Some(now);
            rec.status.reason = Some("StartError".into());
            rec.status.message = Some(message.clone());
            return Err(BackendError::new(
                ErrorKind::Internal,
                "start container",
                container_id,
                message.clone(),
            ));
        }
        rec.generation += 1;
        rec.status.state = ContainerState::Running;
        rec.status.started_at = Some(now);
        let gen = rec.generation;
        let status = rec.status.clone();
        self.emit_locked(&mut s, &status, RuntimeEventKind::Started);
        let mut ends: Vec<(Duration, i32, bool)> = Vec::new();
        if let Some((after, code)) = behavior.exit_after {
            ends.push((after, code, false));
        }
        if let Some(after) = behavior.oom_after {
            ends.push((after, 128 + SIGKILL, true));
        }
        if let Some((after, code, oom)) = ends.into_iter().min_by_key(|e| e.0) {
            if after.is_zero() {
                self.finish(&mut s, container_id, code, oom);
            } else {
                self.schedule(&mut s, Instant::now() + after, container_id, gen, code, oom);
            }
        }
        Ok(())
    }

    async fn stop_container(&self, container_id: &str, grace: Duration) -> BackendResult<()> {
        let behavior = self.behavior_of(container_id)?;
        let Some(gen) = self.running_generation(container_id) else {
            return Ok(());
        };
        let (wait, code) = if behavior.ignore_sigterm || behavior.stop_delay > grace {
            (grace, 128 + SIGKILL)
        } else {
            (behavior.stop_delay, 128 + SIGTERM)
        };
        if !wait.is_zero() {
            // Wait for the exit, or for the container to end by itself meanwhile.
            let deadline = Instant::now() + wait;
            let mut events = self.inner.events.subscribe();
            loop {
                if self.running_generation(container_id) != Some(gen) {
                    return Ok(());
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = events.recv() => {}
                }
            }
        }
        let mut s = self.lock();
        if s.containers.get(container_id).map(|c| c.generation) == Some(gen) {
            self.finish(&mut s, container_id, code, false);
        }
        Ok(())
    }

    async fn kill_container(&self, container_id: &str, signal: i32) -> BackendResult<()> {
        let behavior = self.behavior_of(container_id)?;
        if signal != SIGKILL && behavior.ignore_sigterm {
            return Ok(());
        }
        let mut s = self.lock();
        self.finish(&mut s, container_id, 128 + signal, false);
        Ok(())
    }

    async fn remove_container(&self, container_id: &str) -> BackendResult<()> {
        let mut s = self.lock();
        self.finish(&mut s, container_id, 128 + SIGKILL, false);
        s.cpu.remove(container_id);
        if let Some(rec) = s.containers.remove(container_id) {
            self.emit_locked(&mut s, &rec.status, RuntimeEventKind::Removed);
        }
        Ok(())
    }

    async fn container_status(&self, container_id: &str) -> BackendResult<ContainerStatus> {
        self.lock()
            .containers
            .get(container_id)
            .map(|c| c.status.clone())
            .ok_or_else(|| not_found("container status", container_id))
    }

    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> BackendResult<Vec<ContainerStatus>> {
        let s = self.lock();
        let mut out: Vec<ContainerStatus> = s
            .containers
            .values()
            .map(|c| &c.status)
            .filter(|c| {
                filter
                    .sandbox_id
                    .as_ref()
                    .is_none_or(|sb| *sb == c.sandbox_id)
                    && filter.state.is_none_or(|st| st == c.state)
                    && filter
                        .labels
                        .iter()
                        .all(|(k, v)| c.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn pause_container(&self, container_id: &str) -> BackendResult<()> {
        let mut s = self.lock();
        let rec = s
            .containers
            .get_mut(container_id)
            .ok_or_else(|| not_found("pause container", container_id))?;
        if rec.status.state != ContainerState::Running {
            return Err(BackendError::new(
                ErrorKind::FailedPrecondition,
                "pause container",
                container_id,
                "container is not running",
            ));
        }
        rec.status.state = ContainerState::Paused;
        Ok(())
    }

    async fn resume_container(&self, container_id: &str) -> BackendResult<()> {
        let mut s = self.lock();
        let rec = s
            .containers
            .get_mut(container_id)
            .ok_or_else(|| not_found("resume container", container_id))?;
        if rec.status.state != ContainerState::Paused {
            return Err(BackendError::new(
                ErrorKind::FailedPrecondition,
                "resume container",
                container_id,
                "container is not paused",
            ));
        }
        rec.status.state = ContainerState::Running;
        Ok(())
    }

    async fn update_resources(
        &self,
        container_id: &str,
        _resources: &Resources,
    ) -> BackendResult<()> {
        self.behavior_of(container_id).map(|_| ())
    }

    async fn exec_sync(
        &self,
        container_id: &str,
        command: &[String],
        timeout: Duration,
    ) -> BackendResult<ExecOutput> {
        let behavior = self.behavior_of(container_id)?;
        if self.running_generation(container_id).is_none() {
            return Err(BackendError::new(
                ErrorKind::FailedPrecondition,
                "exec",
                container_id,
                "container is not running",
            ));
        }
        let rule = behavior.exec.iter().find(|r| r.command == command);
        let (duration, exit_code, stdout) = match rule {
            Some(r) => (r.duration, r.exit_code, r.stdout.clone()),
            None => (Duration::ZERO, 0, Bytes::new()),
        };
        if duration > timeout {
            tokio::time::sleep(timeout).await;
            return Err(BackendError::new(
                ErrorKind::Timeout,
                "exec",
                container_id,
                format!("command {command:?} timed out after {timeout:?}"),
            ));
        }
        if !duration.is_zero() {
            tokio::time::sleep(duration).await;
        }
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr: Bytes::new(),
        })
    }

    async fn exec(&self, container_id: &str, _request: &ExecRequest) -> BackendResult<ExecSession> {
        Err(BackendError::new(
            ErrorKind::Unsupported,
            "exec",
            container_id,
            "the simulated runtime has no interactive sessions; use exec_sync",
        ))
    }

    async fn attach(&self, container_id: &str, _stdin: bool) -> BackendResult<ExecSession> {
        Err(BackendError::new(
            ErrorKind::Unsupported,
            "attach",
            container_id,
            "the simulated runtime has no interactive sessions",
        ))
    }

    async fn logs(&self, container_id: &str, options: &LogOptions) -> BackendResult<LogStreamOf> {
        let (behavior, started) = {
            let s = self.lock();
            let rec = s
                .containers
                .get(container_id)
                .ok_or_else(|| not_found("logs", container_id))?;
            (rec.behavior.clone(), rec.status.started_at)
        };
        let Some(started) = started else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let mut lines: Vec<LogLine> = behavior
            .logs
            .iter()
            .map(|l| LogLine {
                time: started,
                stream: LogStream::Stdout,
                message: Bytes::from(l.clone()),
                partial: false,
            })
            .filter(|l| options.since.is_none_or(|since| l.time >= since))
            .collect();
        if let Some(tail) = options.tail {
            let skip = lines.len().saturating_sub(tail);
            lines.drain(..skip);
        }
        Ok(Box::pin(futures::stream::iter(lines.into_iter().map(Ok))))
    }

    async fn stats(&self, container_id: &str) -> BackendResult<ContainerStats> {
        let now = self.inner.clock.now();
        let mut s = self.lock();
        let rec = s
            .containers
            .get(container_id)
            .ok_or_else(|| not_found("stats", container_id))?;
        let running = rec.status.state == ContainerState::Running;
        let since = rec.status.started_at.unwrap_or(now);
        let (rate, memory) = s.usage.get(&rec.status.name).copied().unwrap_or((0, 0));
        let (rate, banked, since) = *s
            .cpu
            .entry(container_id.to_string())
            .or_insert((rate, 0, since));
        let cpu = if running {
            banked + cpu_nanos(rate, now.duration_since(since).unwrap_or_default())
        } else {
            banked
        };
        Ok(ContainerStats {
            timestamp: Some(now),
            cpu_usage_nanos: cpu.min(u128::from(u64::MAX)) as u64,
            memory_working_set_bytes: if running { memory } else { 0 },
            memory_usage_bytes: if running { memory } else { 0 },
            pids: u64::from(running),
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

impl SimRuntime {
    /// The image reference of a container.
    pub fn image_of(&self, container_id: &str) -> Option<String> {
        self.lock()
            .containers
            .get(container_id)
            .map(|c| c.image_ref.clone())
    }

    /// Labels of every container, by id (tests, adoption checks).
    pub fn container_labels(&self) -> BTreeMap<String, Labels> {
        self.lock()
            .containers
            .iter()
            .map(|(id, c)| (id.clone(), c.status.labels.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn config(name: &str) -> ContainerConfig {
        ContainerConfig {
            name: name.into(),
            ..Default::default()
        }
    }

    async fn started(rt: &SimRuntime, name: &str) -> (String, String) {
        let sb = rt.run_sandbox(&SandboxConfig::default()).await.unwrap();
        let id = rt.create_container(&sb, &config(name)).await.unwrap();
        rt.start_container(&id).await.unwrap();
        (sb, id)
    }

    #[tokio::test(start_paused = true)]
    async fn exits_with_code_after_time() {
        let rt = SimRuntime::new(Clock::new());
        rt.set_behavior("app", Behavior::exit(Duration::from_secs(5), 3));
        let mut events = rt.events();
        let t0 = Instant::now();
        let (_, id) = started(&rt, "app").await;
        loop {
            let ev = events.next().await.unwrap();
            if let RuntimeEventKind::Exited {
                exit_code,
                oom_killed,
            } = ev.kind
            {
                assert_eq!((exit_code, oom_killed), (3, false));
                break;
            }
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        let st = rt.container_status(&id).await.unwrap();
        assert_eq!(st.state, ContainerState::Exited);
        assert_eq!(st.reason.as_deref(), Some("Error"));
    }

    #[tokio::test(start_paused = true)]
    async fn oom_kill_is_reported() {
        let rt = SimRuntime::new(Clock::new());
        rt.set_behavior("app", Behavior::oom(Duration::from_secs(2)));
        let (_, id) = started(&rt, "app").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let st = rt.container_status(&id).await.unwrap();
        assert_eq!(st.exit_code, Some(137));
        assert_eq!(st.reason.as_deref(), Some("OOMKilled"));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_waits_grace_when_sigterm_ignored() {
        let rt = SimRuntime::new(Clock::new());
        rt.set_behavior("stubborn", Behavior::run_forever().ignoring_sigterm());
        let (_, a) = started(&rt, "stubborn").await;
        let (_, b) = started(&rt, "polite").await;
        let t0 = Instant::now();
        rt.stop_container(&b, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(rt.container_status(&b).await.unwrap().exit_code, Some(143));
        rt.stop_container(&a, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        assert_eq!(rt.container_status(&a).await.unwrap().exit_code, Some(137));
        // Idempotent.
        rt.stop_container(&a, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn exec_answers_and_times_out() {
        let rt = SimRuntime::new(Clock::new());
        rt.set_behavior(
            "app",
            Behavior::run_forever()
                .with_exec(&["check"], 1, Duration::ZERO)
                .with_exec(&["slow"], 0, Duration::from_secs(5)),
        );
        let (_, id) = started(&rt, "app").await;
        let cmd = |s: &str| vec![s.to_string()];
        let out = rt
            .exec_sync(&id, &cmd("check"), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(out.exit_code, 1);
        let out = rt
            .exec_sync(&id, &cmd("other"), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(out.exit_code, 0);
        let err = rt
            .exec_sync(&id, &cmd("slow"), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn start_error_and_sandbox_removal() {
        let rt = SimRuntime::new(Clock::new());
        rt.set_behavior(
            "bad",
            Behavior {
                start_error: Some("exec: \"nope\": not found".into()),
                ..Behavior::default()
            },
        );
        let sb = rt.run_sandbox(&SandboxConfig::default()).await.unwrap();
        let id = rt.create_container(&sb, &config("bad")).await.unwrap();
        assert!(rt.start_container(&id).await.is_err());
        let st = rt.container_status(&id).await.unwrap();
        assert_eq!(
            (st.exit_code, st.reason.as_deref()),
            (Some(128), Some("StartError"))
        );
        let ok = rt.create_container(&sb, &config("ok")).await.unwrap();
        rt.start_container(&ok).await.unwrap();
        rt.remove_sandbox(&sb).await.unwrap();
        assert_eq!(rt.counts(), (0, 0));
        rt.remove_sandbox(&sb).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn list_filters_by_labels_and_state() {
        let rt = SimRuntime::new(Clock::new());
        let sb = rt.run_sandbox(&SandboxConfig::default()).await.unwrap();
        let mut cfg = config("a");
        cfg.labels.insert("pod".into(), "p1".into());
        let a = rt.create_container(&sb, &cfg).await.unwrap();
        rt.create_container(&sb, &config("b")).await.unwrap();
        rt.start_container(&a).await.unwrap();
        let filter = ContainerFilter {
            labels: cfg.labels.clone(),
            state: Some(ContainerState::Running),
            ..Default::default()
        };
        let listed = rt.list_containers(&filter).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, a);
    }
}

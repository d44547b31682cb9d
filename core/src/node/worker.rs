//! The pod worker: one task per pod that runs a [`PodMachine`] against the backends.
//!
//! The worker owns the IO: it turns the machine's actions into backend calls (run
//! concurrently inside the worker's own task, so a pod costs one task however many probes and
//! hooks it has), feeds their outcomes back as observations, and writes the pod's status to
//! the store whenever it changes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Container, LifecycleHandler, Pod, PodStatus, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::{self, labels, ConfigInputs};
use super::machine::{
    handler_action, Action, AdoptedContainer, Now, Observation, PodMachine, Terminated, MIN_GRACE,
};
use super::status;
use super::volumes::VolumeHost;
use crate::backend::image::{ImageService, PullOptions};
use crate::backend::network::{AttachRequest, NetworkPlugin, PortMapping};
use crate::backend::probe::{ProbeAction, ProbeResult, ProbeTarget, Prober};
use crate::backend::runtime::{
    ContainerFilter, ContainerRuntime, ContainerState, ContainerStatus, HostNamespaces,
    RuntimeEvent, RuntimeEventKind, SandboxConfig, SandboxState, SandboxStatus,
};
use crate::clock::Clock;
use crate::object::{Resource, Typed};
use crate::store::{Api, DeleteOptions, Store, StoreError};

/// What a worker is told by its agent.
#[derive(Debug)]
pub(crate) enum WorkerEvent {
    /// The pod object changed.
    Pod(Typed<Pod>),
    /// The pod object was removed from the store.
    Gone,
    /// A runtime event for one of its containers.
    Runtime(RuntimeEvent),
}

/// Everything a worker shares with the agent and the other workers.
pub(crate) struct NodeContext {
    pub node_name: String,
    pub host_ip: Option<IpAddr>,
    pub allocatable: (i64, i64),
    pub runtime: Arc<dyn ContainerRuntime>,
    pub images: Arc<dyn ImageService>,
    pub network: Arc<dyn NetworkPlugin>,
    pub prober: Arc<dyn Prober>,
    pub volumes: VolumeHost,
    pub store: Arc<dyn Store>,
    pub clock: Clock,
    /// DNS settings for the pods' sandboxes.
    pub dns: super::dns::NodeDns,
    /// Workers by sandbox id, for routing runtime events.
    pub routes: Mutex<HashMap<String, mpsc::UnboundedSender<WorkerEvent>>>,
}

impl NodeContext {
    pub fn now(&self) -> Now {
        Now {
            at: Instant::now(),
            wall: self.clock.now(),
        }
    }

    fn route(&self, sandbox_id: &str, tx: Option<&mpsc::UnboundedSender<WorkerEvent>>) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        match tx {
            Some(tx) => {
                routes.insert(sandbox_id.to_string(), tx.clone());
            }
            None => {
                routes.remove(sandbox_id);
            }
        }
    }

    /// Sends a runtime event to the worker of its sandbox.
    pub fn dispatch(&self, event: RuntimeEvent) {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = routes.get(&event.sandbox_id) {
            let _ = tx.send(WorkerEvent::Runtime(event));
        }
    }
}

type Pending = FuturesUnordered<BoxFuture<'static, Vec<Observation>>>;

/// One pod's worker.
pub(crate) struct PodWorker {
    ctx: Arc<NodeContext>,
    machine: PodMachine,
    rx: mpsc::UnboundedReceiver<WorkerEvent>,
    tx: mpsc::UnboundedSender<WorkerEvent>,
    written: Option<PodStatus>,
    /// What a previous agent left for this pod, to adopt before anything else.
    inherited: Option<Inherited>,
}

/// What a previous agent left in the runtime for one pod: its sandboxes (labelled with the
/// pod's uid) and their containers.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    pub sandboxes: Vec<SandboxStatus>,
    pub containers: Vec<ContainerStatus>,
}

/// Scans the runtime once (at agent start) for what previous agents left, by pod uid.
pub(crate) async fn inherited(ctx: &NodeContext) -> HashMap<String, Inherited> {
    let mut by_uid: HashMap<String, Inherited> = HashMap::new();
    let sandboxes = match ctx.runtime.list_sandboxes().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(node = %ctx.node_name, error = %e,
                "listing sandboxes failed; nothing is adopted");
            return by_uid;
        }
    };
    if sandboxes.is_empty() {
        return by_uid;
    }
    let mut pod_of: HashMap<String, String> = HashMap::new();
    for sb in sandboxes {
        let Some(uid) = sb.labels.get(labels::POD_UID).cloned() else {
            continue;
        };
        pod_of.insert(sb.id.clone(), uid.clone());
        by_uid.entry(uid).or_default().sandboxes.push(sb);
    }
    let containers = match ctx
        .runtime
        .list_containers(&ContainerFilter::default())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            // Sandboxes adopted without their containers would get them created again.
            tracing::warn!(node = %ctx.node_name, error = %e,
                "listing containers failed; nothing is adopted");
            return HashMap::new();
        }
    };
    for c in containers {
        if let Some(uid) = pod_of.get(&c.sandbox_id) {
            if let Some(found) = by_uid.get_mut(uid) {
                found.containers.push(c);
            }
        }
    }
    by_uid
}

fn exited(container_id: String, t: Terminated) -> Observation {
    Observation::Exited {
        container_id,
        exit_code: t.exit_code,
        oom: t.reason == "OOMKilled",
        reason: Some(t.reason),
        message: t.message,
        finished: t.finished,
    }
}

impl PodWorker {
    pub fn new(
        ctx: Arc<NodeContext>,
        pod: Typed<Pod>,
        inherited: Option<Inherited>,
        rx: mpsc::UnboundedReceiver<WorkerEvent>,
        tx: mpsc::UnboundedSender<WorkerEvent>,
    ) -> PodWorker {
        let written = pod.status.clone();
        PodWorker {
            ctx,
            machine: PodMachine::new(pod),
            rx,
            tx,
            written,
            inherited,
        }
    }

    /// Runs until the pod is gone (or the agent drops the worker's channel).
    ///
    /// The adoption is boxed: a future holds room for its largest await, and this one lives
    /// as long as the pod, so inlining it would keep several KiB per pod allocated while it
    /// idles.
    pub async fn run(mut self) {
        if let Some(inherited) = self.inherited.take() {
            Box::pin(self.adopt(inherited)).await;
        }
        if let Some(sb) = self.machine.sandbox.done().cloned() {
            self.ctx.route(&sb, Some(&self.tx));
        }
        // The deletion may already be under way.
        let pod = self.machine.pod.clone();
        let now = self.ctx.now();
        self.machine.observe(Observation::PodUpdated(pod), now);
        let mut pending: Pending = FuturesUnordered::new();
        loop {
            self.settle(&mut pending);
            if let Some(status) = self.status_to_write(self.ctx.now()) {
                self.write_status(status).await;
            }
            let now = self.ctx.now();
            if self.machine.is_finished() {
                break;
            }
            let wake = self.machine.next_wakeup(now);
            tokio::select! {
                Some(observations) = pending.next(), if !pending.is_empty() => {
                    self.take(observations);
                }
                event = self.rx.recv() => {
                    let now = self.ctx.now();
                    match event {
                        None => return,
                        Some(WorkerEvent::Pod(pod)) => {
                            // Events may lag behind what this worker already saw.
                            let seen = self.machine.pod.object().resource_version();
                            if pod.object().resource_version() >= seen {
                                self.ctx.volumes.pod_updated(&pod);
                                self.machine.observe(Observation::PodUpdated(pod), now);
                            }
                        }
                        Some(WorkerEvent::Gone) => self.machine.observe(Observation::PodGone, now),
                        Some(WorkerEvent::Runtime(ev)) => {
                            if let RuntimeEventKind::Exited { exit_code, oom_killed } = ev.kind {
                                self.machine.observe(Observation::Exited {
                                    container_id: ev.container_id,
                                    exit_code,
                                    oom: oom_killed,
                                    reason: None,
                                    message: None,
                                    finished: ev.time,
                                }, now);
                            }
                        }
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => {}
            }
        }
        if let Some(sb) = self.machine.sandbox.done() {
            self.ctx.route(sb, None);
        }
    }

    /// Picks up the sandbox and containers a previous agent left running for this pod (found
    /// by the agent's one scan of the runtime at start).
    async fn adopt(&mut self, inherited: Inherited) {
        let Inherited {
            mut sandboxes,
            containers,
        } = inherited;
        sandboxes.sort_by_key(|s| s.created_at);
        let Some(sandbox) = sandboxes.pop() else {
            return;
        };
        // Older or stopped sandboxes of this pod are stale: remove them with their
        // containers and network attachments (the pod's volumes stay, it still uses them).
        let pod = self.machine.pod.clone();
        for stale in sandboxes {
            tear_down(&self.ctx, &pod, Some(&stale.id), false).await;
        }
        if sandbox.state != SandboxState::Ready {
            tear_down(&self.ctx, &pod, Some(&sandbox.id), false).await;
            return;
        }
        let containers = containers
            .into_iter()
            .filter(|c| c.sandbox_id == sandbox.id);
        let mut newest: HashMap<String, AdoptedContainer> = HashMap::new();
        for c in containers {
            let name = c
                .labels
                .get(labels::CONTAINER_NAME)
                .cloned()
                .unwrap_or(c.name.clone());
            let adopted = AdoptedContainer {
                name: name.clone(),
                restart_count: c
                    .labels
                    .get(labels::RESTART_COUNT)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(c.attempt),
                started: c.started_at,
                image_id: c.image_id.clone(),
                exit: (c.state == ContainerState::Exited).then(|| Terminated {
                    exit_code: c.exit_code.unwrap_or(0),
                    reason: c.reason.clone().unwrap_or_else(|| "Error".into()),
                    message: c.message.clone(),
                    started: c.started_at,
                    finished: c.finished_at.unwrap_or(c.created_at),
                    container_id: c.id.clone(),
                }),
                id: c.id,
            };
            match newest.get(&name) {
                Some(prev) if prev.restart_count > adopted.restart_count => {}
                _ => {
                    newest.insert(name, adopted);
                }
            }
        }
        let now = self.ctx.now();
        self.machine.observe(
            Observation::Adopted {
                sandbox_id: sandbox.id,
                containers: newest.into_values().collect(),
            },
            now,
        );
    }

    /// Starts what the machine decides and takes in every outcome that is already there,
    /// until nothing more completes at once: a run of steps that finish immediately (as on
    /// simulated backends) ends in one status write, as one kubelet sync does, instead of one
    /// write per step.
    ///
    /// The pod's final delete is pushed but not started: the caller writes the status first,
    /// so the pod's last status (terminated containers, its final phase) is stored before the
    /// object goes, as a kubelet deletes only a pod whose status is synced.
    fn settle(&mut self, pending: &mut Pending) {
        loop {
            let now = self.ctx.now();
            let mut deleting = false;
            for action in self.machine.decide(now) {
                tracing::trace!(pod = ?self.machine.pod.metadata.name, ?action, "action");
                deleting |= matches!(action, Action::DeletePod);
                pending.push(self.execute(action));
            }
            if deleting {
                return;
            }
            // Polling with a no-op waker is sound here: the caller polls `pending` again with
            // its own waker (in its select) before it waits.
            match pending.next().now_or_never() {
                Some(Some(observations)) => self.take(observations),
                _ => return,
            }
        }
    }

    /// Feeds the outcomes of one action to the machine.
    fn take(&mut self, observations: Vec<Observation>) {
        let now = self.ctx.now();
        for o in observations {
            tracing::trace!(pod = ?self.machine.pod.metadata.name, observation = ?o, "outcome");
            if let Observation::SandboxReady(id) = &o {
                self.ctx.route(id, Some(&self.tx));
            }
            self.machine.observe(o, now);
        }
    }

    /// The status to write now, if it differs from what this worker wrote last.
    fn status_to_write(&self, now: Now) -> Option<PodStatus> {
        if self.machine.frozen || self.machine.gone {
            return None;
        }
        // Transition times come from what this worker wrote last (pod updates may lag behind
        // it); conditions owned by others (readiness gates) from the pod object.
        let mut prev = self
            .written
            .clone()
            .or_else(|| self.machine.pod.status.clone());
        if let (Some(prev), Some(current)) = (prev.as_mut(), self.machine.pod.status.as_ref()) {
            let own = |t: &str| status::OWN_CONDITIONS.contains(&t);
            let mut conditions: Vec<_> = prev
                .conditions
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| own(&c.type_))
                .collect();
            conditions.extend(
                current
                    .conditions
                    .iter()
                    .flatten()
                    .filter(|c| !own(&c.type_))
                    .cloned(),
            );
            prev.conditions = Some(conditions);
        }
        let status = self.machine.status(
            now,
            self.ctx.runtime.name(),
            self.ctx.host_ip,
            prev.as_ref(),
        );
        (self.written.as_ref() != Some(&status)).then_some(status)
    }

    /// Writes `status` through the status subresource, which takes only the status (and
    /// checks the uid): the pod's metadata and spec are not copied into the write.
    async fn write_status(&mut self, status: PodStatus) {
        let meta = &self.machine.pod.metadata;
        let pod = Pod {
            metadata: ObjectMeta {
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                ..Default::default()
            },
            spec: None,
            status: Some(status.clone()),
        };
        match self.ctx.store.update_status(pod.into_object()).await {
            Ok(_) => self.written = Some(status),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(pod = %self.machine.pod.object().display_name(), error = %e, "writing pod status failed")
            }
        }
    }

    fn execute(&self, action: Action) -> BoxFuture<'static, Vec<Observation>> {
        let ctx = self.ctx.clone();
        let pod = self.machine.pod.clone();
        match action {
            Action::CreateSandbox => async move { vec![create_sandbox(&ctx, &pod).await] }.boxed(),
            Action::AttachNetwork { sandbox_id } => {
                async move { vec![attach_network(&ctx, &pod, &sandbox_id).await] }.boxed()
            }
            Action::MountVolumes => async move {
                vec![match ctx.volumes.setup(&ctx.store, &pod).await {
                    Ok(paths) => Observation::VolumesReady(paths),
                    Err(e) => Observation::VolumesFailed(e),
                }]
            }
            .boxed(),
            Action::EnsureImage { slot } => {
                let s = &self.machine.slots[slot];
                let (image, policy) = (s.image_ref.clone(), s.pull_policy.clone());
                async move { vec![ensure_image(&ctx, slot, &image, &policy).await] }.boxed()
            }
            Action::StartContainer {
                slot,
                image,
                restart_count,
            } => {
                let container = self.machine.container(slot).cloned().unwrap_or_default();
                let sandbox_id = self.machine.sandbox.done().cloned().unwrap_or_default();
                let inputs = ConfigInputs {
                    pod_ips: self.machine.pod_ips().to_vec(),
                    host_ip: ctx.host_ip,
                    node_allocatable: ctx.allocatable,
                    volume_paths: self.machine.volumes.done().cloned().unwrap_or_default(),
                    restart_count,
                    ..Default::default()
                };
                let grace = self.machine.pod_grace();
                async move {
                    start_container(&ctx, &pod, slot, &container, &sandbox_id, &image, inputs, grace)
                        .await
                }
                .boxed()
            }
            Action::Probe {
                slot,
                container_id,
                kind,
                spec,
            } => {
                let target = ProbeTarget {
                    container_id: container_id.clone(),
                    pod_ip: self.machine.pod_ips().first().copied(),
                };
                async move {
                    let success = match ctx.prober.probe(&target, &spec.action, spec.timeout).await {
                        ProbeResult::Success => Some(true),
                        ProbeResult::Failure(_) => Some(false),
                        ProbeResult::Unknown(_) => None,
                    };
                    vec![Observation::ProbeDone {
                        slot,
                        container_id,
                        kind,
                        success,
                    }]
                }
                .boxed()
            }
            Action::StopContainer {
                slot,
                container_id,
                grace,
                force,
            } => {
                let container = self.machine.container(slot).cloned().unwrap_or_default();
                let pod_ip = self.machine.pod_ips().first().copied();
                async move {
                    stop_container(&ctx, slot, &container, &container_id, pod_ip, grace, force).await
                }
                .boxed()
            }
            Action::TearDown {
                sandbox_id,
                volumes,
            } => {
                async move {
                    tear_down(&ctx, &pod, sandbox_id.as_deref(), volumes).await;
                    vec![Observation::TornDown]
                }
                .boxed()
            }
            Action::DeletePod => async move {
                let api: Api<Pod> = Api::namespaced(
                    ctx.store.clone(),
                    pod.metadata.namespace.as_deref().unwrap_or("default"),
                );
                let options = DeleteOptions {
                    grace_period_seconds: Some(0),
                    precondition_uid: pod.metadata.uid.clone(),
                    ..Default::default()
                };
                let name = pod.metadata.name.clone().unwrap_or_default();
                loop {
                    match api.delete(&name, &options).await {
                        Ok(_) | Err(StoreError::NotFound { .. }) => break,
                        Err(e) => {
                            tracing::warn!(pod = %name, error = %e, "deleting pod failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                vec![Observation::Deleted]
            }
            .boxed(),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

async fn create_sandbox(ctx: &NodeContext, pod: &Pod) -> Observation {
    let spec = pod.spec.clone().unwrap_or_default();
    let meta = &pod.metadata;
    let mut l = crate::backend::runtime::Labels::new();
    l.insert(labels::POD_UID.into(), meta.uid.clone().unwrap_or_default());
    l.insert(
        labels::POD_NAME.into(),
        meta.name.clone().unwrap_or_default(),
    );
    l.insert(
        labels::POD_NAMESPACE.into(),
        meta.namespace.clone().unwrap_or_default(),
    );
    let config = SandboxConfig {
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        attempt: 0,
        hostname: spec
            .hostname
            .clone()
            .unwrap_or_else(|| meta.name.clone().unwrap_or_default()),
        log_directory: None,
        labels: l,
        annotations: Default::default(),
        host_namespaces: HostNamespaces {
            network: spec.host_network.unwrap_or(false),
            pid: spec.host_pid.unwrap_or(false),
            ipc: spec.host_ipc.unwrap_or(false),
        },
        cgroup_parent: None,
        sysctls: spec
            .security_context
            .as_ref()
            .and_then(|s| s.sysctls.as_ref())
            .map(|v| {
                v.iter()
                    .map(|s| (s.name.clone(), s.value.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        dns: super::dns::pod_dns(pod, &ctx.dns),
    };
    match ctx.runtime.run_sandbox(&config).await {
        Ok(id) => Observation::SandboxReady(id),
        Err(e) => Observation::SandboxFailed(e.to_string()),
    }
}

fn attach_request(pod: &Pod, sandbox_id: &str, netns: std::path::PathBuf) -> AttachRequest {
    let spec = pod.spec.clone().unwrap_or_default();
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(PortMapping {
                host_port: u16::try_from(p.host_port?).ok()?,
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: p
                    .protocol
                    .clone()
                    .unwrap_or_else(|| "TCP".into())
                    .to_lowercase(),
                host_ip: p.host_ip.as_deref().and_then(|h| h.parse().ok()),
            })
        })
        .collect();
    AttachRequest {
        container_id: sandbox_id.to_string(),
        netns,
        ifname: "eth0".into(),
        pod_namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        pod_name: pod.metadata.name.clone().unwrap_or_default(),
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        port_mappings,
        capability_args: Default::default(),
    }
}

async fn attach_network(ctx: &NodeContext, pod: &Pod, sandbox_id: &str) -> Observation {
    let netns = match ctx.runtime.sandbox_status(sandbox_id).await {
        Ok(s) => s.netns_path.unwrap_or_default(),
        Err(e) => return Observation::NetworkFailed(e.to_string()),
    };
    match ctx
        .network
        .attach(&attach_request(pod, sandbox_id, netns))
        .await
    {
        Ok(a) => {
            let mut ips: Vec<IpAddr> = a.ips.iter().map(|ip| ip.address).collect();
            // IPv4 first, as Kubernetes reports podIP.
            ips.sort_by_key(|ip| !ip.is_ipv4());
            Observation::NetworkReady(ips)
        }
        Err(e) => Observation::NetworkFailed(e.to_string()),
    }
}

async fn ensure_image(ctx: &NodeContext, slot: usize, image: &str, policy: &str) -> Observation {
    if policy != "Always" {
        match ctx.images.image_status(image).await {
            Ok(Some(info)) => return Observation::ImageReady(slot, Arc::new(info)),
            Ok(None) if policy == "Never" => {
                return Observation::ImageFailed(
                    slot,
                    "ErrImageNeverPull",
                    format!("Container image \"{image}\" is not present with pull policy of Never"),
                )
            }
            Ok(None) => {}
            Err(e) => return Observation::ImageFailed(slot, "ErrImagePull", e.to_string()),
        }
    }
    match ctx.images.pull(image, &PullOptions::default()).await {
        Ok(info) => Observation::ImageReady(slot, Arc::new(info)),
        Err(e) => Observation::ImageFailed(
            slot,
            "ErrImagePull",
            format!("failed to pull image \"{image}\": {e}"),
        ),
    }
}

async fn config_objects(ctx: &NodeContext, pod: &Pod, c: &Container, inputs: &mut ConfigInputs) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (cms, secrets) = config::referenced_objects(c);
    let cm_api: Api<ConfigMap> = Api::namespaced(ctx.store.clone(), ns);
    for name in cms {
        if let Ok(Some(cm)) = cm_api.get_opt(&name).await {
            inputs.config_maps.insert(name, cm.to_owned_value());
        }
    }
    let s_api: Api<Secret> = Api::namespaced(ctx.store.clone(), ns);
    for name in secrets {
        if let Ok(Some(s)) = s_api.get_opt(&name).await {
            inputs.secrets.insert(name, s.to_owned_value());
        }
    }
}

/// Runs a lifecycle hook; returns an error message when it failed.
async fn run_hook(
    ctx: &NodeContext,
    handler: &LifecycleHandler,
    container: &Container,
    container_id: &str,
    pod_ip: Option<IpAddr>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(timeout)).await;
        return Ok(());
    }
    let action = handler_action(
        handler.exec.as_ref(),
        handler.http_get.as_ref(),
        handler.tcp_socket.as_ref(),
        None,
        container,
    )
    .ok_or_else(|| "hook has no supported action".to_string())?;
    match action {
        ProbeAction::Exec { command } => {
            match ctx.runtime.exec_sync(container_id, &command, timeout).await {
                Ok(out) if out.exit_code == 0 => Ok(()),
                Ok(out) => Err(format!("command {command:?} exited with {}", out.exit_code)),
                Err(e) => Err(e.to_string()),
            }
        }
        other => {
            let target = ProbeTarget {
                container_id: container_id.to_string(),
                pod_ip,
            };
            match ctx.prober.probe(&target, &other, timeout).await {
                ProbeResult::Success => Ok(()),
                ProbeResult::Failure(m) | ProbeResult::Unknown(m) => Err(m),
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn start_container(
    ctx: &NodeContext,
    pod: &Pod,
    slot: usize,
    container: &Container,
    sandbox_id: &str,
    image: &crate::backend::image::ImageInfo,
    mut inputs: ConfigInputs,
    grace: Duration,
) -> Vec<Observation> {
    config_objects(ctx, pod, container, &mut inputs).await;
    let config = match config::container_config(pod, container, image, &inputs) {
        Ok(c) => c,
        Err(e) => {
            return vec![Observation::CreateFailed(
                slot,
                "CreateContainerConfigError",
                e.to_string(),
            )]
        }
    };
    let id = match ctx.runtime.create_container(sandbox_id, &config).await {
        Ok(id) => id,
        Err(e) => {
            return vec![Observation::CreateFailed(
                slot,
                "CreateContainerError",
                e.to_string(),
            )]
        }
    };
    let started = ctx.clock.now();
    let mut out = vec![Observation::Started {
        slot,
        container_id: id.clone(),
        started,
    }];
    if let Err(e) = ctx.runtime.start_container(&id).await {
        let st = ctx.runtime.container_status(&id).await.ok();
        out.push(Observation::Exited {
            container_id: id,
            exit_code: st.as_ref().and_then(|s| s.exit_code).unwrap_or(128),
            oom: false,
            reason: Some("StartError".into()),
            message: Some(e.message.clone()),
            finished: st.and_then(|s| s.finished_at).unwrap_or(started),
        });
        return out;
    }
    let pod_ip = inputs.pod_ips.first().copied();
    if let Some(hook) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
    {
        if let Err(message) = run_hook(ctx, hook, container, &id, pod_ip, grace).await {
            tracing::info!(container = %container.name, %message, "postStart hook failed; killing the container");
            let _ = ctx.runtime.stop_container(&id, grace).await;
        }
    }
    if let Ok(st) = ctx.runtime.container_status(&id).await {
        if st.state == ContainerState::Exited {
            out.push(Observation::Exited {
                container_id: id,
                exit_code: st.exit_code.unwrap_or(0),
                oom: st.reason.as_deref() == Some("OOMKilled"),
                reason: st.reason,
                message: st.message,
                finished: st.finished_at.unwrap_or(started),
            });
        }
    }
    out
}

async fn stop_container(
    ctx: &NodeContext,
    slot: usize,
    container: &Container,
    container_id: &str,
    pod_ip: Option<IpAddr>,
    grace: Duration,
    force: bool,
) -> Vec<Observation> {
    let mut remaining = grace;
    if let Some(hook) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    {
        if !grace.is_zero() {
            let t0 = Instant::now();
            if let Err(message) = run_hook(ctx, hook, container, container_id, pod_ip, grace).await
            {
                tracing::info!(container = %container.name, %message, "preStop hook failed");
            }
            remaining = grace.saturating_sub(t0.elapsed());
        }
    }
    // Kubernetes always leaves a short window for the stop signal, unless forced.
    if !force && remaining < MIN_GRACE {
        remaining = MIN_GRACE;
    }
    if let Err(e) = ctx.runtime.stop_container(container_id, remaining).await {
        tracing::warn!(container = %container_id, error = %e, "stopping container failed");
    }
    let mut out = Vec::new();
    if let Ok(st) = ctx.runtime.container_status(container_id).await {
        if st.state == ContainerState::Exited {
            out.push(exited(
                container_id.to_string(),
                Terminated {
                    exit_code: st.exit_code.unwrap_or(137),
                    reason: st.reason.unwrap_or_else(|| "Error".into()),
                    message: st.message,
                    started: st.started_at,
                    finished: st.finished_at.unwrap_or(st.created_at),
                    container_id: container_id.to_string(),
                },
            ));
        }
    }
    out.push(Observation::Stopped(slot));
    out
}

/// Removes containers, network attachment, volumes and sandbox of a pod, retrying failed
/// steps a few times so that nothing is left behind.
pub(crate) async fn tear_down(
    ctx: &NodeContext,
    pod: &Pod,
    sandbox_id: Option<&str>,
    volumes: bool,
) {
    for attempt in 0..5u32 {
        let mut ok = true;
        if let Some(sb) = sandbox_id {
            let filter = ContainerFilter {
                sandbox_id: Some(sb.to_string()),
                ..Default::default()
            };
            for c in ctx
                .runtime
                .list_containers(&filter)
                .await
                .unwrap_or_default()
            {
                ok &= ctx.runtime.remove_container(&c.id).await.is_ok();
            }
            let host_network = pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false);
            if !host_network {
                let netns = match ctx.runtime.sandbox_status(sb).await {
                    Ok(s) => s.netns_path.unwrap_or_default(),
                    Err(_) => Default::default(),
                };
                ok &= ctx
                    .network
                    .detach(&attach_request(pod, sb, netns))
                    .await
                    .is_ok();
            }
        }
        if volumes {
            if let Err(e) = ctx.volumes.teardown(&ctx.store, pod, None).await {
                tracing::warn!(error = %e, "volume teardown failed");
                ok = false;
            }
        }
        if let Some(sb) = sandbox_id {
            ok &= ctx.runtime.stop_sandbox(sb).await.is_ok();
            ok &= ctx.runtime.remove_sandbox(sb).await.is_ok();
        }
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
    }
    tracing::warn!(pod = ?pod.metadata.name, "teardown left resources behind after 5 attempts");
}

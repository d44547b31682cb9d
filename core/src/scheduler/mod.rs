//! The scheduler: watches nodes and pods, and binds each pending pod to a node by setting its
//! `spec.nodeName`, as kube-scheduler does.
//!
//! - Pods are taken by `spec.schedulerName` (default `default-scheduler`); pods with
//!   `schedulingGates` wait until the gates are removed.
//! - A pod that fits no node gets `PodScheduled=False` with reason `Unschedulable` and
//!   kube-scheduler's message (`0/3 nodes are available: …`), and is retried when the
//!   cluster changes (node added or changed, pod removed), after a backoff of 1 s doubling
//!   to 10 s, and at the latest after 5 minutes.
//! - A bound pod is accounted on its node at once ("assumed") and its binding is written in
//!   a task of its own while the next pod is scheduled, as kube-scheduler's binding cycle
//!   runs beside its scheduling cycle; a binding that fails is forgotten (the pod leaves its
//!   node's accounting) and the pod is retried after backoff.
//!
//! Filters and scores are plugins ([`framework::FilterPlugin`], [`framework::ScorePlugin`]);
//! [`algorithm::Profile::default`] has kube-scheduler's defaults. Not implemented:
//! preemption, volume-topology plugins, image locality.

pub mod algorithm;
pub mod cache;
pub mod framework;
pub mod plugins;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use crate::clock::Clock;
use crate::object::{Kind, Object};
use crate::store::{PodBinding, Store, StoreError, WatchEvent, WatchOptions};
use algorithm::{Algorithm, FitError, Profile};
use cache::{ClusterCache, SchedulingQueue};
use framework::PodInfo;

/// Settings of a scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// The `spec.schedulerName` this scheduler serves.
    pub name: String,
    /// Fixed percentage of nodes to score; adaptive when `None`.
    pub percentage_of_nodes_to_score: Option<u32>,
    /// First retry delay of an unschedulable pod.
    pub initial_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
    /// Longest time an unschedulable pod waits for a cluster change before a retry.
    pub max_unschedulable: Duration,
    /// Threads that filter and score the nodes of a large scheduling cycle (kube-scheduler's
    /// `parallelism`); cheap cycles stay on one thread. Default: the available parallelism.
    pub parallelism: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            name: "default-scheduler".into(),
            percentage_of_nodes_to_score: None,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            max_unschedulable: Duration::from_secs(300),
            parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Counters of a running scheduler.
#[derive(Debug, Default)]
pub struct SchedulerMetrics {
    /// Pods bound.
    pub scheduled: AtomicU64,
    /// Attempts that found no node.
    pub unschedulable: AtomicU64,
    /// Bindings that failed (conflict, pod gone).
    pub bind_errors: AtomicU64,
}

/// A scheduler over a store.
pub struct Scheduler {
    store: Arc<dyn Store>,
    config: SchedulerConfig,
    algorithm: Algorithm,
    cache: ClusterCache,
    queue: SchedulingQueue,
    clock: Clock,
    metrics: Arc<SchedulerMetrics>,
    /// Bindings that failed, reported by their tasks.
    failed_binds: mpsc::UnboundedReceiver<FailedBind>,
    failed_binds_tx: mpsc::UnboundedSender<FailedBind>,
}

/// A binding the store refused, handed back to the scheduling loop.
struct FailedBind {
    key: String,
    info: Arc<PodInfo>,
    error: StoreError,
}

fn pod_key(object: &Object) -> String {
    format!("{}/{}", object.namespace().unwrap_or(""), object.name())
}

fn new_queue(config: &SchedulerConfig) -> SchedulingQueue {
    SchedulingQueue::new(
        config.initial_backoff,
        config.max_backoff,
        config.max_unschedulable,
    )
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

impl Scheduler {
    /// A scheduler with the default plugins.
    pub fn new(store: Arc<dyn Store>, config: SchedulerConfig) -> Scheduler {
        Scheduler::with_profile(store, config, Profile::default())
    }

    /// A scheduler with the given plugins.
    pub fn with_profile(
        store: Arc<dyn Store>,
        config: SchedulerConfig,
        profile: Profile,
    ) -> Scheduler {
        let (failed_binds_tx, failed_binds) = mpsc::unbounded_channel();
        Scheduler {
            store,
            algorithm: Algorithm::new(profile, config.percentage_of_nodes_to_score)
                .with_parallelism(config.parallelism),
            queue: new_queue(&config),
            config,
            cache: ClusterCache::default(),
            clock: Clock::new(),
            metrics: Arc::default(),
            failed_binds,
            failed_binds_tx,
        }
    }

    /// Uses `clock` for the timestamps it writes.
    pub fn with_clock(mut self, clock: Clock) -> Scheduler {
        self.clock = clock;
        self
    }

    /// The scheduler's counters (shared; they keep counting while it runs).
    pub fn metrics(&self) -> Arc<SchedulerMetrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown` resolves. Lists and watches again when the store expires its
    /// watches.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), StoreError> {
        tokio::pin!(shutdown);
        loop {
            let mut nodes = self
                .store
                .watch(&Kind::Node, &WatchOptions::default())
                .await?;
            let mut pods = self
                .store
                .watch(&Kind::Pod, &WatchOptions::default())
                .await?;
            let failure: StoreError = 'watching: loop {
                let wake = self
                    .queue
                    .next_ready()
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(30));
                let first = tokio::select! {
                    biased;
                    _ = &mut shutdown => return Ok(()),
                    Some(failed) = self.failed_binds.recv() => {
                        self.on_failed_bind(failed);
                        None
                    }
                    ev = nodes.next() => Some((true, ev)),
                    ev = pods.next() => Some((false, ev)),
                    _ = tokio::time::sleep_until(wake) => None,
                };
                // Take in that event and everything already waiting before deciding anything.
                let mut pending = first.into_iter().collect::<Vec<_>>();
                loop {
                    for (is_node, ev) in pending.drain(..) {
                        match ev {
                            Some(Ok(ev)) if is_node => self.on_node_event(ev),
                            Some(Ok(ev)) => self.on_pod_event(ev),
                            Some(Err(e)) => break 'watching e,
                            None => return Ok(()),
                        }
                    }
                    if let Some(ev) = nodes.next().now_or_never() {
                        pending.push((true, ev));
                    }
                    if let Some(ev) = pods.next().now_or_never() {
                        pending.push((false, ev));
                    }
                    if pending.is_empty() {
                        break;
                    }
                }
                while let Ok(failed) = self.failed_binds.try_recv() {
                    self.on_failed_bind(failed);
                }
                self.queue.flush_unschedulable(Instant::now());
                self.schedule_ready().await;
            };
            match failure {
                StoreError::Expired { .. } | StoreError::WatchLagged { .. } => {
                    tracing::info!(error = %failure, "scheduler watch ended; listing again");
                    self.cache = ClusterCache::default();
                    self.queue = new_queue(&self.config);
                }
                other => return Err(other),
            }
        }
    }

    fn on_node_event(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Added(node) | WatchEvent::Modified(node) => {
                self.cache.upsert_node(node);
                self.queue.move_all_to_active();
            }
            WatchEvent::Deleted(node) => self.cache.remove_node(node.name()),
            WatchEvent::Bookmark(_) => {}
        }
    }

    fn on_pod_event(&mut self, ev: WatchEvent) {
        let (object, deleted) = match ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => (o, false),
            WatchEvent::Deleted(o) => (o, true),
            WatchEvent::Bookmark(_) => return,
        };
        let Some(pod) = object.as_kind::<Pod>() else {
            return;
        };
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        let terminal = deleted || is_terminal(pod);
        // Most events are status updates of bound pods: their accounting stays, and a pod
        // accounted on a node is not in the queue.
        if !terminal && !node_name.is_empty() && self.cache.refresh_placed(&object, node_name) {
            return;
        }
        let key = pod_key(&object);
        if terminal {
            let was_placed = self.cache.placed_on(object.uid()).is_some();
            self.cache.unplace(object.uid());
            self.queue.remove(&key);
            if was_placed {
                self.queue.move_all_to_active();
            }
            return;
        }
        if !node_name.is_empty() {
            self.queue.remove(&key);
            // Usually the confirmation of a binding this scheduler assumed: keep what was
            // computed for it.
            let info = match self.cache.placed_info(object.uid()) {
                Some(placed) => placed.refreshed(object.clone()),
                None => PodInfo::new(object.clone()),
            };
            self.cache.place(Arc::new(info), node_name);
            return;
        }
        let spec = pod.spec.as_ref();
        let ours = spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler")
            == self.config.name;
        let gated = spec
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_some_and(|g| !g.is_empty());
        if !ours || object.meta().deletion_timestamp.is_some() || gated {
            self.queue.remove(&key);
            return;
        }
        // A pod we assumed but whose binding the store has not confirmed yet is still placed.
        if self.cache.placed_on(object.uid()).is_some() {
            return;
        }
        self.queue
            .add_or_update(key, Arc::new(PodInfo::new(object)));
    }

    async fn schedule_ready(&mut self) {
        // Bound the batch so that watch events are taken in between.
        for _ in 0..1024 {
            let Some((key, info)) = self.queue.pop(Instant::now()) else {
                return;
            };
            self.schedule_one(key, info).await;
        }
    }

    /// One scheduling cycle; the binding is written by a task of its own.
    async fn schedule_one(&mut self, key: String, info: Arc<PodInfo>) {
        let decision = self.algorithm.schedule(&info, &self.cache.snapshot());
        match decision {
            Ok(idx) => {
                let node_name = self.cache.node_at(idx).name.clone();
                self.queue.remove(&key);
                self.cache.place(info.clone(), &node_name);
                self.spawn_bind(key, info, node_name);
            }
            Err(fit) => {
                self.metrics.unschedulable.fetch_add(1, Ordering::Relaxed);
                self.queue.mark_unschedulable(&key, Instant::now());
                if let Err(e) = self.report_unschedulable(&info.object, &fit).await {
                    tracing::debug!(pod = %key, error = %e, "could not write PodScheduled=False");
                }
            }
        }
    }

    /// Writes the binding through the store's `bind` (spec.nodeName and PodScheduled=True in
    /// one write) beside the next scheduling cycles; a failure comes back to the loop.
    fn spawn_bind(&self, key: String, info: Arc<PodInfo>, node_name: String) {
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let failed = self.failed_binds_tx.clone();
        let binding = PodBinding::of(&info.object, &node_name, self.clock.now_k8s());
        tokio::spawn(async move {
            match store.bind(&binding).await {
                Ok(_) => {
                    metrics.scheduled.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    metrics.bind_errors.fetch_add(1, Ordering::Relaxed);
                    // The receiver is gone only when the scheduler stopped.
                    let _ = failed.send(FailedBind { key, info, error });
                }
            }
        });
    }

    /// Forgets the assumed placement of a pod whose binding failed and, unless the store
    /// refused it for good, queues it again after backoff.
    fn on_failed_bind(&mut self, FailedBind { key, info, error }: FailedBind) {
        // A watch event since (bound by someone else, deleted) has settled the pod already.
        if !self.cache.forget_assumed(&info) {
            return;
        }
        match error {
            // Gone, or refused for good (already bound elsewhere, being deleted): its watch
            // event settles it, a retry cannot.
            StoreError::NotFound { .. } | StoreError::Invalid { .. } => {}
            e => {
                tracing::debug!(pod = %key, error = %e, "binding failed; retrying");
                self.queue.add_or_update(key.clone(), info);
                self.queue.requeue(&key, Instant::now());
            }
        }
    }

    async fn report_unschedulable(
        &self,
        object: &Arc<Object>,
        fit: &FitError,
    ) -> Result<(), StoreError> {
        let Some(pod) = object.as_kind::<Pod>() else {
            return Ok(());
        };
        let message = fit.to_string();
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
        if current.is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(&message)) {
            return Ok(());
        }
        let mut updated = pod.clone();
        set_condition(
            updated.status.get_or_insert_with(PodStatus::default),
            PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some(message),
                last_transition_time: Some(self.clock.now_k8s()),
                ..Default::default()
            },
        );
        if updated
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_none()
        {
            updated.status.get_or_insert_with(Default::default).phase = Some("Pending".into());
        }
        self.store.update_status(updated.into()).await.map(|_| ())
    }
}

pub use crate::store::binding::set_pod_condition as set_condition;

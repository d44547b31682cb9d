//! The built-in controllers, one module per controller, each a [`Reconciler`] run by the
//! controller runtime ([`crate::controller`]).
//!
//! [`ControllerManager`] starts all of them on one store with shared informers, as
//! `kube-controller-manager` does.
//!
//! [`Reconciler`]: crate::controller::Reconciler

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod garbage_collector;
pub mod history;
pub mod hpa;
pub mod job;
pub mod namespace;
pub mod node_lifecycle;
pub mod ownership;
pub mod pod_state;
pub mod replicaset;
pub mod statefulset;

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::controller::{CancellationToken, Context, Controller, Metrics, Reconciler};
use crate::pod_metrics::{PodMetrics, PodMetricsSource};
use crate::store::Store;

/// Starts the built-in controllers on a store and stops them together.
///
/// ```
/// # use std::sync::Arc;
/// # use wharf_core::controllers::ControllerManager;
/// # use wharf_core::store::memory::MemoryStore;
/// # use wharf_core::Clock;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = Arc::new(MemoryStore::new());
/// let manager = ControllerManager::start(store, Clock::new());
/// // ... apply Deployments, Services, Jobs: the controllers act on them ...
/// assert!(manager.metrics().iter().any(|(name, _)| name == "replicaset"));
/// manager.shutdown().await;
/// # });
/// ```
pub struct ControllerManager {
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    metrics: Vec<(String, Arc<Metrics>)>,
    context: Context,
}

impl ControllerManager {
    /// Starts every built-in controller on `store`. They stop when [`shutdown`] is called or
    /// the manager is dropped.
    /// The HorizontalPodAutoscaler controller reads an empty [`PodMetrics`] here (so it
    /// reports that it has no metrics); use [`start_with_metrics`] to give it usage.
    ///
    /// [`shutdown`]: ControllerManager::shutdown
    /// [`start_with_metrics`]: ControllerManager::start_with_metrics
    pub fn start(store: Arc<dyn Store>, clock: Clock) -> ControllerManager {
        ControllerManager::start_with_metrics(store, clock, Arc::new(PodMetrics::new()))
    }

    /// Starts every built-in controller on `store`, the HorizontalPodAutoscaler reading pod
    /// usage from `metrics`.
    pub fn start_with_metrics(
        store: Arc<dyn Store>,
        clock: Clock,
        metrics: Arc<dyn PodMetricsSource>,
    ) -> ControllerManager {
        let shutdown = CancellationToken::new();
        let context = Context::new(store, clock, shutdown.child_token());
        let mut manager = ControllerManager {
            shutdown,
            tasks: JoinSet::new(),
            metrics: Vec::new(),
            context,
        };
        manager.add(replicaset::ReplicaSetController::controller());
        manager.add(deployment::DeploymentController::controller());
        manager.add(endpoints::EndpointsController::controller());
        manager.add(endpoints::EndpointSliceController::controller());
        manager.add(statefulset::StatefulSetController::controller());
        manager.add(daemonset::DaemonSetController::controller());
        manager.add(job::JobController::controller());
        manager.add(cronjob::CronJobController::controller());
        manager.add(namespace::NamespaceController::controller());
        manager.add(hpa::HorizontalPodAutoscalerController::controller(metrics));
        manager.add(node_lifecycle::NodeLifecycleController::controller());
        let gc = garbage_collector::GarbageCollector::new();
        manager
            .metrics
            .push(("garbage-collector".into(), gc.metrics()));
        let (ctx, token) = (manager.context.clone(), manager.shutdown.clone());
        manager.tasks.spawn(gc.run(ctx, token));
        manager
    }

    /// Starts one more controller with the manager's context and shutdown.
    pub fn add<R: Reconciler>(&mut self, controller: Controller<R>) {
        self.metrics
            .push((controller.name().to_string(), controller.metrics()));
        let (ctx, token) = (self.context.clone(), self.shutdown.clone());
        self.tasks.spawn(controller.run(ctx, token));
    }

    /// The shared context (store, clock, informers) the controllers use.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Each controller's name and metrics.
    pub fn metrics(&self) -> &[(String, Arc<Metrics>)] {
        &self.metrics
    }

    /// Stops every controller and waits for running reconciles to finish.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for ControllerManager {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts every built-in controller on `store` until `shutdown` is cancelled, then waits for
/// them to finish.
pub async fn run_all(store: Arc<dyn Store>, clock: Clock, shutdown: CancellationToken) {
    let manager = ControllerManager::start(store, clock);
    shutdown.cancelled().await;
    manager.shutdown().await;
}

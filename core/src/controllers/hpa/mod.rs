//! The HorizontalPodAutoscaler controller (autoscaling/v2): every 15 s it sets the replica
//! count of a Deployment, ReplicaSet or StatefulSet (what the scale subresource writes:
//! `spec.replicas`) from its pods' CPU and memory usage.
//!
//! - Metrics: `Resource` metrics `cpu` and `memory`, targets `Utilization` (percent of the
//!   pods' requests) and `AverageValue`; with no metric, 80 % CPU utilization. Usage comes
//!   from a [`PodMetricsSource`]. Each metric recommends a count ([`replicas`]); the largest
//!   wins.
//! - A target at 0 replicas (with `minReplicas` > 0) is not autoscaled; one outside
//!   `[minReplicas, maxReplicas]` is brought inside first.
//! - The recommendation is then stabilized and rate-limited by `spec.behavior` (defaults in
//!   [`behavior`]).
//! - Status: `currentReplicas`, `desiredReplicas`, `currentMetrics`, `lastScaleTime` and the
//!   conditions `AbleToScale`, `ScalingActive`, `ScalingLimited`; a rescale is a
//!   `SuccessfulRescale` event.
//!
//! [`PodMetricsSource`]: crate::pod_metrics::PodMetricsSource

pub mod behavior;
pub mod replicas;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use self::behavior::History;
use self::replicas::{recommend, Recommendation, Target};
use super::events::{record, EventType};
use crate::clock::Clock;
use crate::controller::{Action, Context, Controller, ControllerError, ObjectKey, Reconciler};
use crate::object::{Kind, Object, Resource, Typed};
use crate::pod_metrics::{PodMetricsSource, PodUsage};
use crate::store::{LabelSelector, ListOptions};

/// How often each autoscaler is evaluated (kube-controller-manager's
/// `--horizontal-pod-autoscaler-sync-period`).
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// The default target when an HPA lists no metric: 80 % CPU utilization.
pub const DEFAULT_CPU_UTILIZATION: i32 = 80;
const COMPONENT: &str = "horizontal-pod-autoscaler";

/// The HorizontalPodAutoscaler reconciler.
pub struct HorizontalPodAutoscalerController {
    metrics: Arc<dyn PodMetricsSource>,
    history: Mutex<HashMap<ObjectKey, History>>,
}

impl HorizontalPodAutoscalerController {
    /// The controller, reading usage from `metrics`.
    pub fn controller(
        metrics: Arc<dyn PodMetricsSource>,
    ) -> Controller<HorizontalPodAutoscalerController> {
        Controller::new(
            "horizontal-pod-autoscaler",
            Kind::HorizontalPodAutoscaler,
            HorizontalPodAutoscalerController {
                metrics,
                history: Mutex::new(HashMap::new()),
            },
        )
    }

    fn history(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, History>> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A scale target: its replica count (spec and status) and pod selector, as the scale
/// subresource shows them.
struct Scale {
    spec_replicas: i32,
    status_replicas: i32,
    selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

fn scale_of(object: &Object) -> Option<Scale> {
    Some(match object {
        Object::Deployment(d) => Scale {
            spec_replicas: d.spec.as_ref()?.replicas.unwrap_or(1),
            status_replicas: d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0),
            selector: d.spec.as_ref().map(|s| s.selector.clone()),
        },
        Object::ReplicaSet(r) => Scale {
            spec_replicas: r.spec.as_ref()?.replicas.unwrap_or(1),
            status_replicas: r.status.as_ref().map_or(0, |s| s.replicas),
            selector: r.spec.as_ref().map(|s| s.selector.clone()),
        },
        Object::StatefulSet(s) => Scale {
            spec_replicas: s.spec.as_ref()?.replicas.unwrap_or(1),
            status_replicas: s.status.as_ref().map_or(0, |s| s.replicas),
            selector: s.spec.as_ref().map(|s| s.selector.clone()),
        },
        _ => return None,
    })
}

fn with_replicas(object: &Object, replicas: i32) -> Option<Object> {
    let mut object = object.clone();
    match &mut object {
        Object::Deployment(d) => d.spec.as_mut()?.replicas = Some(replicas),
        Object::ReplicaSet(r) => r.spec.as_mut()?.replicas = Some(replicas),
        Object::StatefulSet(s) => s.spec.as_mut()?.replicas = Some(replicas),
        _ => return None,
    }
    Some(object)
}

fn target_kind(api_version: Option<&str>, kind: &str) -> Option<Kind> {
    let api_version = api_version.filter(|v| !v.is_empty()).unwrap_or("apps/v1");
    let kind = Kind::builtin(api_version, kind)?;
    let supported = [
        <Deployment as k8s_openapi::Resource>::KIND,
        <ReplicaSet as k8s_openapi::Resource>::KIND,
        <StatefulSet as k8s_openapi::Resource>::KIND,
    ];
    supported.contains(&kind.name()).then_some(kind)
}

/// One resource metric of the spec, understood.
struct ResourceMetric {
    resource: String,
    target: Target,
}

fn metrics_of(hpa: &HorizontalPodAutoscaler) -> Result<Vec<ResourceMetric>, String> {
    let spec = hpa.spec.as_ref().ok_or("spec is required")?;
    let Some(metrics) = spec.metrics.as_ref().filter(|m| !m.is_empty()) else {
        return Ok(vec![ResourceMetric {
            resource: "cpu".into(),
            target: Target::Utilization(DEFAULT_CPU_UTILIZATION),
        }]);
    };
    metrics
        .iter()
        .map(|m| {
            let resource = match (m.type_.as_str(), m.resource.as_ref()) {
                ("Resource", Some(r)) => r,
                (other, _) => return Err(format!("metric type {other:?} is not supported (only Resource cpu and memory)")),
            };
            if resource.name != "cpu" && resource.name != "memory" {
                return Err(format!("resource metric {:?} is not supported (only cpu and memory)", resource.name));
            }
            let target = match resource.target.type_.as_str() {
                "Utilization" => Target::Utilization(
                    resource
                        .target
                        .average_utilization
                        .ok_or("target.averageUtilization is required for type Utilization")?,
                ),
                "AverageValue" => {
                    let q = resource
                        .target
                        .average_value
                        .as_ref()
                        .ok_or("target.averageValue is required for type AverageValue")?;
                    Target::AverageValue(
                        crate::quantity::resource_value(&resource.name, q)
                            .map_err(|e| format!("target.averageValue {:?}: {e}", q.0))?,
                    )
                }
                other => return Err(format!("target type {other:?} is not supported for resource metrics (Utilization or AverageValue)")),
            };
            Ok(ResourceMetric { resource: resource.name.clone(), target })
        })
        .collect()
}

fn describe(metric: &ResourceMetric) -> String {
    match metric.target {
        Target::Utilization(_) => format!(
            "{} resource utilization (percentage of request)",
            metric.resource
        ),
        Target::AverageValue(_) => format!("{} resource", metric.resource),
    }
}

fn metric_status(metric: &ResourceMetric, rec: &Recommendation) -> MetricStatus {
    let average = if metric.resource == "cpu" {
        format!("{}m", rec.average_value)
    } else {
        rec.average_value.to_string()
    };
    MetricStatus {
        type_: "Resource".into(),
        resource: Some(ResourceMetricStatus {
            name: metric.resource.clone(),
            current: MetricValueStatus {
                average_utilization: rec.utilization,
                average_value: Some(Quantity(average)),
                value: None,
            },
        }),
        ..Default::default()
    }
}

/// Conditions being built for the status, keeping transition times of unchanged ones.
struct Conditions {
    old: Vec<HorizontalPodAutoscalerCondition>,
    new: BTreeMap<&'static str, HorizontalPodAutoscalerCondition>,
    clock: Clock,
}

impl Conditions {
    fn set(&mut self, type_: &'static str, status: bool, reason: &str, message: String) {
        let status = if status { "True" } else { "False" }.to_string();
        let since = self
            .old
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| self.clock.now_k8s());
        self.new.insert(
            type_,
            HorizontalPodAutoscalerCondition {
                type_: type_.into(),
                status,
                reason: Some(reason.into()),
                message: Some(message),
                last_transition_time: Some(since),
            },
        );
    }

    fn into_vec(self) -> Vec<HorizontalPodAutoscalerCondition> {
        let order = ["AbleToScale", "ScalingActive", "ScalingLimited"];
        let mut new = self.new;
        let mut out: Vec<_> = order.iter().filter_map(|t| new.remove(t)).collect();
        // Conditions this pass did not evaluate keep their previous state.
        for c in self.old {
            if !out.iter().any(|n| n.type_ == c.type_) {
                out.push(c);
            }
        }
        out
    }
}

#[async_trait]
impl Reconciler for HorizontalPodAutoscalerController {
    type Error = ControllerError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error> {
        let Some(hpa) = Typed::<HorizontalPodAutoscaler>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        let key = ObjectKey::of(&object);
        if hpa.metadata.deletion_timestamp.is_some() {
            self.history().remove(&key);
            return Ok(Action::AwaitChange);
        }
        let now = ctx.clock.now();
        let old_status = hpa.status.clone();
        let mut status = old_status.clone().unwrap_or_default();
        status.observed_generation = hpa.metadata.generation;
        let mut conditions = Conditions {
            old: status.conditions.take().unwrap_or_default(),
            new: BTreeMap::new(),
            clock: ctx.clock,
        };
        let outcome = self
            .evaluate(ctx, &object, &hpa, &key, now, &mut status, &mut conditions)
            .await;
        status.conditions = Some(conditions.into_vec());
        if old_status.as_ref() != Some(&status) {
            let mut updated = (*hpa).clone();
            updated.status = Some(status);
            ctx.store
                .update_status(updated.into_object())
                .await
                .map_err(|e| ControllerError::store("update status of", &object, e))?;
        }
        outcome?;
        Ok(Action::requeue(SYNC_PERIOD))
    }

    async fn cleanup(&self, key: &ObjectKey, _ctx: &Context) -> Result<Action, Self::Error> {
        self.history().remove(key);
        Ok(Action::AwaitChange)
    }
}

impl HorizontalPodAutoscalerController {
    /// One evaluation: fills `status` and `conditions`; scales the target if needed.
    #[allow(clippy::too_many_arguments)]
    async fn evaluate(
        &self,
        ctx: &Context,
        object: &Object,
        hpa: &HorizontalPodAutoscaler,
        key: &ObjectKey,
        now: SystemTime,
        status: &mut HorizontalPodAutoscalerStatus,
        conditions: &mut Conditions,
    ) -> Result<(), ControllerError> {
        let spec = hpa.spec.clone().unwrap_or_default();
        let namespace = object.namespace().unwrap_or("default");
        let target_ref = &spec.scale_target_ref;
        let warn = |reason: &'static str, message: String| async move {
            record(ctx, COMPONENT, object, EventType::Warning, reason, &message).await;
        };
        let Some(kind) = target_kind(target_ref.api_version.as_deref(), &target_ref.kind) else {
            let message = format!(
                "the HPA controller was unable to get the target's current scale: {} {}/{} has no scale subresource here (Deployment, ReplicaSet or StatefulSet)",
                target_ref.api_version.as_deref().unwrap_or(""),
                target_ref.kind,
                target_ref.name
            );
            conditions.set("AbleToScale", false, "FailedGetScale", message.clone());
            warn("FailedGetScale", message).await;
            return Ok(());
        };
        let target = match ctx
            .store
            .get(&kind, Some(namespace), &target_ref.name)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                let message =
                    format!("the HPA controller was unable to get the target's current scale: {e}");
                conditions.set("AbleToScale", false, "FailedGetScale", message.clone());
                warn("FailedGetScale", message).await;
                return Ok(());
            }
        };
        let Some(scale) = scale_of(&target) else {
            conditions.set(
                "AbleToScale",
                false,
                "FailedGetScale",
                format!("{kind} {} has no spec", target_ref.name),
            );
            return Ok(());
        };
        conditions.set(
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".into(),
        );
        let current = scale.spec_replicas;
        status.current_replicas = Some(scale.status_replicas);
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;

        let mut reason = String::new();
        let desired = if current == 0 && min != 0 {
            conditions.set(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
            );
            status.desired_replicas = 0;
            return Ok(());
        } else if current > max {
            reason = "Current number of replicas above Spec.MaxReplicas".into();
            conditions.set(
                "ScalingLimited",
                true,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count".into(),
            );
            max
        } else if current < min {
            reason = "Current number of replicas below Spec.MinReplicas".into();
            conditions.set(
                "ScalingLimited",
                true,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count".into(),
            );
            min
        } else {
            let (proposal, metric_name, statuses) = match self
                .compute(ctx, namespace, hpa, &scale, current, now)
                .await
            {
                Ok(r) => r,
                Err(message) => {
                    let reason = if message.starts_with("invalid metrics") {
                        "InvalidMetricSourceType"
                    } else {
                        "FailedGetResourceMetric"
                    };
                    conditions.set("ScalingActive", false, reason, message.clone());
                    warn(reason, message).await;
                    status.desired_replicas = current;
                    return Ok(());
                }
            };
            status.current_metrics = Some(statuses);
            conditions.set(
                "ScalingActive",
                true,
                "ValidMetricFound",
                format!(
                    "the HPA was able to successfully calculate a replica count from {metric_name}"
                ),
            );
            if proposal > current {
                reason = format!("{metric_name} above target");
            } else if proposal < current {
                reason = "All metrics below target".into();
            }
            let rules = behavior::resolve(spec.behavior.as_ref());
            let normalized = self.history().entry(key.clone()).or_default().normalize(
                &rules,
                current,
                proposal,
                (min, max),
                now,
            );
            let stabilized_message = match normalized.stabilization_reason {
                "ScaleUpStabilized" => "recent recommendations were lower than current one, applying the lowest recent recommendation",
                "ScaleDownStabilized" => "recent recommendations were higher than current one, applying the highest recent recommendation",
                _ => "recommended size matches current size",
            };
            conditions.set(
                "AbleToScale",
                true,
                normalized.stabilization_reason,
                stabilized_message.into(),
            );
            let limit = &normalized.limit;
            conditions.set(
                "ScalingLimited",
                limit.limited,
                limit.reason,
                limit.message.into(),
            );
            normalized.replicas
        };
        status.desired_replicas = desired;
        if desired == current {
            return Ok(());
        }
        let Some(scaled) = with_replicas(&target, desired) else {
            return Ok(());
        };
        if let Err(e) = ctx.store.update(scaled).await {
            let message = format!("the HPA controller was unable to update the target scale: {e}");
            conditions.set("AbleToScale", false, "FailedUpdateScale", message.clone());
            warn(
                "FailedRescale",
                format!("New size: {desired}; reason: {reason}; error: {e}"),
            )
            .await;
            return Err(ControllerError::store("scale", &target, e));
        }
        let rules = behavior::resolve(spec.behavior.as_ref());
        self.history()
            .entry(key.clone())
            .or_default()
            .record_scale(&rules, current, desired, now);
        conditions.set(
            "AbleToScale",
            true,
            "SucceededRescale",
            format!("the HPA controller was able to update the target scale to {desired}"),
        );
        record(
            ctx,
            COMPONENT,
            object,
            EventType::Normal,
            "SuccessfulRescale",
            &format!("New size: {desired}; reason: {reason}"),
        )
        .await;
        status.last_scale_time = Some(ctx.clock.now_k8s());
        tracing::debug!(hpa = %object.display_name(), from = current, to = desired, %reason, "rescaled");
        Ok(())
    }

    /// The largest recommendation over the HPA's metrics, the name of the metric that gave
    /// it, and every metric's current value.
    async fn compute(
        &self,
        ctx: &Context,
        namespace: &str,
        hpa: &HorizontalPodAutoscaler,
        scale: &Scale,
        current: i32,
        now: SystemTime,
    ) -> Result<(i32, String, Vec<MetricStatus>), String> {
        let metrics = metrics_of(hpa).map_err(|e| format!("invalid metrics: {e}"))?;
        let selector = scale
            .selector
            .as_ref()
            .map(LabelSelector::from_k8s)
            .transpose()
            .map_err(|e| format!("the target's selector is invalid: {e}"))?
            .filter(|s| !s.is_empty())
            .ok_or("the target has no pod selector")?;
        let pods_informer = ctx.informers.synced(&Kind::Pod).await;
        let options = ListOptions {
            labels: Some(selector),
            ..Default::default()
        };
        let objects = pods_informer.select(Some(namespace), &options);
        let pods: Vec<&Pod> = objects.iter().filter_map(|o| o.as_kind::<Pod>()).collect();
        let usage: BTreeMap<String, PodUsage> = self
            .metrics
            .pod_usage(namespace)
            .await
            .map_err(|e| format!("unable to get metrics for resource: {e}"))?
            .into_iter()
            .map(|u| (u.name.clone(), u))
            .collect();
        let mut best: Option<(i32, String)> = None;
        let mut statuses = Vec::new();
        let mut errors = Vec::new();
        for metric in &metrics {
            match recommend(&metric.resource, metric.target, current, &pods, &usage, now) {
                Ok(rec) => {
                    statuses.push(metric_status(metric, &rec));
                    if best.as_ref().is_none_or(|(n, _)| rec.replicas > *n) {
                        best = Some((rec.replicas, describe(metric)));
                    }
                }
                Err(e) => errors.push(format!("unable to get metric {}: {e}", metric.resource)),
            }
        }
        match best {
            // As Kubernetes does, a metric that failed blocks a scale-down that the others
            // would allow (it might have asked for more).
            Some((n, _)) if !errors.is_empty() && n < current => Err(errors.join("; ")),
            Some((n, name)) => Ok((n, name, statuses)),
            None => Err(errors.join("; ")),
        }
    }
}

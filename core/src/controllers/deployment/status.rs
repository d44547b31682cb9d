//! Deployment status and conditions, as Kubernetes reports them (`syncRolloutStatus`).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus, ReplicaSet};

use super::{index_of, spec_replicas, Sync};
use crate::clock::from_k8s_time;
use crate::controller::{Action, ControllerError, Observed};
use crate::object::{Kind, Resource};

/// Sets `cond` among `conditions`: no change when status and reason are the same; keeps
/// `lastTransitionTime` when only the reason changes (`SetDeploymentCondition`).
pub(super) fn set_condition(
    conditions: &mut Vec<DeploymentCondition>,
    mut cond: DeploymentCondition,
) {
    if let Some(current) = conditions.iter().find(|c| c.type_ == cond.type_) {
        if current.status == cond.status && current.reason == cond.reason {
            return;
        }
        if current.status == cond.status {
            cond.last_transition_time = current.last_transition_time.clone();
        }
    }
    conditions.retain(|c| c.type_ != cond.type_);
    conditions.push(cond);
}

fn find<'a>(conditions: &'a [DeploymentCondition], kind: &str) -> Option<&'a DeploymentCondition> {
    conditions.iter().find(|c| c.type_ == kind)
}

impl Sync<'_> {
    pub(super) fn condition(
        &self,
        kind: &str,
        status: &str,
        reason: &str,
        message: String,
    ) -> DeploymentCondition {
        let now = self.ctx.clock.now_k8s();
        DeploymentCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_update_time: Some(now.clone()),
            last_transition_time: Some(now),
        }
    }

    /// `DeploymentPaused` / `DeploymentResumed` on the Progressing condition.
    pub(super) fn paused_condition(&mut self, paused: bool) {
        if !self.has_deadline() {
            return;
        }
        let reason = find(&self.conditions, "Progressing").and_then(|c| c.reason.clone());
        if paused && reason.as_deref() != Some("DeploymentPaused") {
            let c = self.condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
            );
            set_condition(&mut self.conditions, c);
        } else if !paused && reason.as_deref() == Some("DeploymentPaused") {
            let c = self.condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
            );
            set_condition(&mut self.conditions, c);
        }
    }

    fn has_deadline(&self) -> bool {
        self.deadline().is_some()
    }

    fn deadline(&self) -> Option<Duration> {
        let secs = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(600);
        (secs != i32::MAX && secs >= 0).then(|| Duration::from_secs(secs as u64))
    }

    /// Computes and writes the status; returns when to look again (the progress deadline).
    pub(super) async fn finish(
        mut self,
        new_name: Option<String>,
        all: Vec<ReplicaSet>,
    ) -> Result<Action, ControllerError> {
        let new = index_of(&all, new_name.as_deref());
        let status_of = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
        let available: i32 = all
            .iter()
            .map(|rs| status_of(rs).available_replicas.unwrap_or(0))
            .sum();
        let total_spec: i32 = all.iter().map(spec_replicas).sum();
        let mut status = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(all.iter().map(|rs| status_of(rs).replicas).sum()),
            updated_replicas: Some(new.map_or(0, |n| status_of(&all[n]).replicas)),
            ready_replicas: Some(
                all.iter()
                    .map(|rs| status_of(rs).ready_replicas.unwrap_or(0))
                    .sum(),
            ),
            available_replicas: Some(available),
            unavailable_replicas: Some((total_spec - available).max(0)),
            collision_count: self.collision_count,
            conditions: None,
            terminating_replicas: None,
        };
        let (a, b) = if available >= self.replicas - self.unavailable {
            ("True", "MinimumReplicasAvailable")
        } else {
            ("False", "MinimumReplicasUnavailable")
        };
        let message = if a == "True" {
            "Deployment has minimum availability."
        } else {
            "Deployment does not have minimum availability."
        };
        let c = self.condition("Available", a, b, message.into());
        set_condition(&mut self.conditions, c);

        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let old_status = self.d.status.clone().unwrap_or_default();
        let rs_name = new_name.clone().unwrap_or_default();
        let current = find(&self.conditions, "Progressing").cloned();
        let is_complete = status.replicas == status.updated_replicas
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
        let now = self.ctx.clock.now();
        let mut requeue = None;
        if self.deadline().is_none() {
            self.conditions.retain(|c| c.type_ != "Progressing");
        } else if !is_complete && !paused && new.is_some() {
            let deadline = self.deadline().unwrap_or_default();
            let complete = status.updated_replicas == Some(self.replicas)
                && status.replicas == Some(self.replicas)
                && status.available_replicas == Some(self.replicas)
                && status.observed_generation >= self.d.metadata.generation;
            let progressing = {
                let old_old =
                    old_status.replicas.unwrap_or(0) - old_status.updated_replicas.unwrap_or(0);
                let new_old = status.replicas.unwrap_or(0) - status.updated_replicas.unwrap_or(0);
                status.updated_replicas > old_status.updated_replicas
                    || new_old < old_old
                    || status.ready_replicas.unwrap_or(0) > old_status.ready_replicas.unwrap_or(0)
                    || status.available_replicas.unwrap_or(0)
                        > old_status.available_replicas.unwrap_or(0)
            };
            let timed_out = current.as_ref().is_some_and(|c| {
                c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                    || c.last_update_time
                        .as_ref()
                        .is_some_and(|t| from_k8s_time(t) + deadline < now)
            });
            if complete {
                let c = self.condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet {rs_name:?} has successfully progressed."),
                );
                set_condition(&mut self.conditions, c);
            } else if progressing {
                let mut c = self.condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet {rs_name:?} is progressing."),
                );
                // Progress refreshes lastUpdateTime even when the reason stays the same.
                if let Some(cur) = &current {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                }
                self.conditions.retain(|c| c.type_ != "Progressing");
                self.conditions.push(c);
            } else if timed_out {
                let c = self.condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet {rs_name:?} has timed out progressing."),
                );
                set_condition(&mut self.conditions, c);
            }
            // Look again when the deadline would pass without progress.
            if !complete {
                if let Some(last) = find(&self.conditions, "Progressing")
                    .filter(|c| c.reason.as_deref() != Some("ProgressDeadlineExceeded"))
                    .and_then(|c| c.last_update_time.as_ref())
                {
                    let at = from_k8s_time(last) + deadline;
                    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
                    requeue = Some(wait + Duration::from_secs(1));
                }
            }
        }

        // Surface a ReplicaSet's ReplicaFailure.
        let failure = all.iter().find_map(|rs| {
            rs.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                .cloned()
        });
        match failure {
            Some(f) => {
                let c = self.condition(
                    "ReplicaFailure",
                    "True",
                    f.reason.as_deref().unwrap_or("FailedCreate"),
                    f.message.unwrap_or_default(),
                );
                set_condition(&mut self.conditions, c);
            }
            None => self.conditions.retain(|c| c.type_ != "ReplicaFailure"),
        }

        status.conditions = (!self.conditions.is_empty()).then(|| self.conditions.clone());
        if self.d.status.as_ref() != Some(&status) {
            let mut d = self.d.clone();
            d.status = Some(status);
            let written = self
                .ctx
                .store
                .update_status(d.into_object())
                .await
                .map_err(|e| ControllerError::store("update status of", &self.object, e))?;
            // The next reconcile reads the Deployment from the informer: waiting until it
            // holds this write spares that reconcile a conflict on a stale resourceVersion.
            self.ctx
                .informers
                .get(&Kind::Deployment)
                .wait_observed(&Observed::Written(written))
                .await;
        }
        Ok(requeue.map_or(Action::AwaitChange, Action::requeue))
    }
}

//! Binding a pod to a node, as the API server's `pods/binding` subresource does: one write
//! that sets `spec.nodeName` and the `PodScheduled=True` condition.
//!
//! The rules live here, apart from any backend, so that the memory store's single-write fast
//! path and the generic two-write fallback of [`Store::bind`](super::Store::bind) refuse and
//! change exactly the same things.

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Result, StoreError};
use crate::object::Object;

/// A request to bind a pending pod to a node.
#[derive(Clone, Debug, PartialEq)]
pub struct PodBinding {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
    /// Bind only the pod with this uid: a newer pod of the same name is
    /// [`StoreError::NotFound`], as for a delete precondition.
    pub uid: Option<String>,
    /// The node the pod goes to.
    pub node_name: String,
    /// `lastTransitionTime` of the `PodScheduled=True` condition.
    pub time: Time,
}

impl PodBinding {
    /// A binding of `pod` (by namespace, name and uid) to `node_name` at `time`.
    pub fn of(pod: &Object, node_name: &str, time: Time) -> PodBinding {
        PodBinding {
            namespace: pod.namespace().unwrap_or("default").to_string(),
            name: pod.name().to_string(),
            uid: Some(pod.uid().to_string()).filter(|u| !u.is_empty()),
            node_name: node_name.to_string(),
            time,
        }
    }

    fn refused(&self, message: String) -> StoreError {
        StoreError::Invalid {
            kind: "Pod".into(),
            name: self.name.clone(),
            field: "spec.nodeName".into(),
            message,
        }
    }

    /// Checks that `stored` may be bound (the pod this binding means, not bound yet, not being
    /// deleted, a node named) and returns the pod with `spec.nodeName` set, without the
    /// condition (see [`PodBinding::set_scheduled`]).
    pub fn bound_spec(&self, stored: &Object) -> Result<Pod> {
        let not_found = || StoreError::NotFound {
            kind: "Pod".into(),
            namespace: Some(self.namespace.clone()),
            name: self.name.clone(),
        };
        let pod = stored.as_kind::<Pod>().ok_or_else(not_found)?;
        if self.uid.as_deref().is_some_and(|uid| uid != stored.uid()) {
            return Err(not_found());
        }
        if self.node_name.is_empty() {
            return Err(self.refused("a binding needs a target node".into()));
        }
        if let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
        {
            return Err(self.refused(format!(
                "pod {:?} is already assigned to node {node:?}",
                self.name
            )));
        }
        if pod.metadata.deletion_timestamp.is_some() {
            return Err(self.refused(format!(
                "pod {:?} is being deleted and cannot be assigned to a node",
                self.name
            )));
        }
        let mut bound = pod.clone();
        bound.spec.get_or_insert_with(Default::default).node_name = Some(self.node_name.clone());
        Ok(bound)
    }

    /// Sets `PodScheduled=True` on `pod`, keeping the transition time when it was already True.
    pub fn set_scheduled(&self, pod: &mut Pod) {
        set_pod_condition(
            pod.status.get_or_insert_with(PodStatus::default),
            PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                last_transition_time: Some(self.time.clone()),
                ..Default::default()
            },
        );
    }
}

/// Sets a pod condition, keeping `lastTransitionTime` when the status did not change.
pub fn set_pod_condition(status: &mut PodStatus, condition: PodCondition) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            let keep_time = existing.status == condition.status;
            let time = existing.last_transition_time.clone();
            *existing = condition;
            if keep_time {
                existing.last_transition_time = time;
            }
        }
        None => conditions.push(condition),
    }
}

//! Node lifecycle: notices nodes that stopped reporting, taints them, and evicts their pods
//! after the pods' tolerationSeconds (Kubernetes' node lifecycle and taint eviction
//! controllers).
//!
//! - A node's last heartbeat is the later of its Lease's `renewTime` (namespace
//!   `kube-node-lease`) and its Ready condition's `lastHeartbeatTime`. When it is older than
//!   the grace period (50 s by default, `--node-monitor-grace-period`), the node's conditions
//!   become `Unknown` with reason `NodeStatusUnknown`, and its pods' Ready condition becomes
//!   False so that Services stop routing to them.
//! - Ready `False` taints the node `node.kubernetes.io/not-ready`, Ready `Unknown` taints it
//!   `node.kubernetes.io/unreachable`, both with effects `NoSchedule` and `NoExecute`; Ready
//!   `True` removes them.
//! - For each `NoExecute` taint, a pod on the node that does not tolerate it is deleted at
//!   once; one that tolerates it for `tolerationSeconds` is deleted that long after the taint
//!   was added; one that tolerates it without a limit stays. A pod with no toleration for the
//!   not-ready/unreachable taints is treated as tolerating them for 300 s, the toleration
//!   Kubernetes' DefaultTolerationSeconds admission adds to every pod.
//!
//! The controllers that own the evicted pods (ReplicaSet, Job, …) create replacements, which
//! the scheduler places on healthy nodes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};

use super::pod_state::{is_finished, is_ready};
use crate::clock::{from_k8s_time, to_k8s_time};
use crate::controller::{
    Action, Context, Controller, ControllerError, ObjectKey, Observed, Reconciler,
};
use crate::object::{Kind, Object, Resource, Typed};
use crate::scheduler;
use crate::store::{DeleteOptions, StoreError};

/// Taint of a node whose Ready condition is False.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// Taint of a node whose Ready condition is Unknown.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// Namespace of node heartbeat leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// tolerationSeconds of the default not-ready/unreachable tolerations.
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// The node lifecycle reconciler.
pub struct NodeLifecycleController {
    /// How long a node may go without a heartbeat before it is `Unknown`.
    pub grace_period: Duration,
}

impl Default for NodeLifecycleController {
    fn default() -> Self {
        NodeLifecycleController {
            grace_period: Duration::from_secs(50),
        }
    }
}

impl NodeLifecycleController {
    /// The controller with the default grace period, ready to run.
    pub fn controller() -> Controller<NodeLifecycleController> {
        Self::default().into_controller()
    }

    /// This reconciler as a controller.
    pub fn into_controller(self) -> Controller<NodeLifecycleController> {
        Controller::new("node-lifecycle", Kind::Node, self)
            .watches(Kind::Lease, |lease, _| {
                if lease.namespace() == Some(LEASE_NAMESPACE) {
                    vec![ObjectKey::cluster(lease.name())]
                } else {
                    Vec::new()
                }
            })
            // A pod bound to a node with NoExecute taints may have to be evicted.
            .watches(Kind::Pod, |pod, ctx| {
                let Some(node) = pod
                    .as_kind::<Pod>()
                    .and_then(|p| p.spec.as_ref()?.node_name.clone())
                else {
                    return Vec::new();
                };
                let key = ObjectKey::cluster(&node);
                let tainted = ctx.informers.get(&Kind::Node).get(&key).is_some_and(|n| {
                    n.as_kind::<Node>()
                        .and_then(|n| n.spec.as_ref()?.taints.as_ref())
                        .is_some_and(|t| t.iter().any(|t| t.effect == "NoExecute"))
                });
                if tainted {
                    vec![key]
                } else {
                    Vec::new()
                }
            })
    }
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> Option<Option<i64>> {
    tolerations
        .iter()
        .filter(|t| scheduler::plugins::tolerates(t, taint))
        .map(|t| t.toleration_seconds)
        // Tolerated: the shortest limit, or none if any matching toleration has none.
        .fold(None, |acc: Option<Option<i64>>, s| match (acc, s) {
            (None, s) => Some(s),
            (Some(None), _) | (_, None) => Some(None),
            (Some(Some(a)), Some(b)) => Some(Some(a.min(b))),
        })
}

/// When a pod on a node with `taints` must be evicted: `Some(time)` (possibly now), or
/// `None` if it tolerates them indefinitely.
fn eviction_time(pod: &Pod, taints: &[&Taint], now: SystemTime) -> Option<SystemTime> {
    let mut tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    for key in [NOT_READY_TAINT, UNREACHABLE_TAINT] {
        let has = tolerations.iter().any(|t| {
            t.key.as_deref() == Some(key) && t.effect.as_deref().is_none_or(|e| e == "NoExecute")
        });
        if !has {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(DEFAULT_TOLERATION_SECONDS),
                value: None,
            });
        }
    }
    let mut at: Option<SystemTime> = None;
    for taint in taints {
        let added = taint.time_added.as_ref().map(from_k8s_time).unwrap_or(now);
        let when = match tolerates(&tolerations, taint) {
            None => now,
            Some(None) => continue,
            Some(Some(secs)) => added + Duration::from_secs(secs.max(0) as u64),
        };
        at = Some(at.map_or(when, |a| a.min(when)));
    }
    at
}

#[async_trait]
impl Reconciler for NodeLifecycleController {
    type Error = ControllerError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error> {
        let Some(node) = Typed::<Node>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        let now = ctx.clock.now();
        let leases = ctx.informers.synced(&Kind::Lease).await;
        let lease_renewed = leases
            .get(&ObjectKey::namespaced(LEASE_NAMESPACE, object.name()))
            .and_then(|l| {
                let renew = l.as_kind::<Lease>()?.spec.as_ref()?.renew_time.as_ref()?.0;
                Some(SystemTime::UNIX_EPOCH + Duration::from_secs(renew.as_second().max(0) as u64))
            });
        let ready = ready_condition(&node);
        let heartbeat = ready
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(from_k8s_time)
            .into_iter()
            .chain(lease_renewed)
            .max()
            // A node that never reported: count from its creation.
            .or_else(|| node.metadata.creation_timestamp.as_ref().map(from_k8s_time))
            .unwrap_or(now);
        // When to look again: when the heartbeat would go stale (while it is fresh: a later
        // heartbeat is a change that reconciles anyway), or when a pod's eviction is due. A
        // node already stale with nothing due waits for a change instead of polling.
        let stale_at = heartbeat + self.grace_period;
        let mut next = (stale_at > now).then_some(stale_at);
        let mut updated = node.to_owned_value();
        let mut status_changed = false;

        // 1. Stale heartbeat: every condition becomes Unknown.
        if now >= heartbeat + self.grace_period && ready.is_some_and(|c| c.status != "Unknown") {
            for c in updated
                .status
                .get_or_insert_with(Default::default)
                .conditions
                .iter_mut()
                .flatten()
            {
                if c.status != "Unknown" {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(to_k8s_time(now));
                }
            }
            status_changed = true;
        }
        if status_changed {
            let written = ctx
                .store
                .update_status(updated.clone().into_object())
                .await
                .map_err(|e| ControllerError::store("update status of", &object, e))?;
            updated = written.as_kind::<Node>().cloned().unwrap_or(updated);
        }
        let ready_status = ready_condition(&updated).map(|c| c.status.clone());

        // 2. Taints from the Ready condition.
        let wanted: Option<&str> = match ready_status.as_deref() {
            Some("False") => Some(NOT_READY_TAINT),
            Some("Unknown") => Some(UNREACHABLE_TAINT),
            _ => None,
        };
        let spec = updated.spec.get_or_insert_with(Default::default);
        let taints = spec.taints.get_or_insert_with(Vec::new);
        let before = taints.clone();
        taints.retain(|t| {
            (t.key != NOT_READY_TAINT && t.key != UNREACHABLE_TAINT)
                || Some(t.key.as_str()) == wanted
        });
        if let Some(key) = wanted {
            for effect in ["NoSchedule", "NoExecute"] {
                if !taints.iter().any(|t| t.key == key && t.effect == effect) {
                    taints.push(Taint {
                        key: key.into(),
                        effect: effect.into(),
                        time_added: Some(to_k8s_time(now)),
                        value: None,
                    });
                }
            }
        }
        if taints.is_empty() {
            spec.taints = None;
        }
        if spec.taints.as_ref().unwrap_or(&Vec::new()) != &before {
            let written = ctx
                .store
                .update(updated.clone().into_object())
                .await
                .map_err(|e| ControllerError::store("taint", &object, e))?;
            ctx.informers
                .get(&Kind::Node)
                .wait_observed(&Observed::Written(written.clone()))
                .await;
            updated = written.as_kind::<Node>().cloned().unwrap_or(updated);
        }

        // 3. Pods on the node: not ready when the node is unreachable; evicted per taints.
        let no_execute: Vec<&Taint> = updated
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.effect == "NoExecute")
            .collect();
        let unreachable = ready_status.as_deref() == Some("Unknown");
        if !no_execute.is_empty() || unreachable {
            let pods = ctx.informers.synced(&Kind::Pod).await;
            for pod_object in pods.list() {
                let Some(pod) = pod_object.as_kind::<Pod>() else {
                    continue;
                };
                if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(object.name())
                    || is_finished(pod)
                {
                    continue;
                }
                if unreachable {
                    mark_not_ready(ctx, &pod_object, pod, now).await?;
                }
                if pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                match eviction_time(pod, &no_execute, now) {
                    Some(at) if at <= now => {
                        tracing::info!(pod = %pod_object.display_name(), node = object.name(), "evicting pod from tainted node");
                        let options = DeleteOptions {
                            precondition_uid: Some(pod_object.uid().to_string()),
                            ..Default::default()
                        };
                        match ctx
                            .store
                            .delete(
                                &Kind::Pod,
                                pod_object.namespace(),
                                pod_object.name(),
                                &options,
                            )
                            .await
                        {
                            Ok(_) | Err(StoreError::NotFound { .. }) => {}
                            Err(e) => return Err(ControllerError::store("evict", &pod_object, e)),
                        }
                    }
                    Some(at) => next = Some(next.map_or(at, |n| n.min(at)).max(now)),
                    None => {}
                }
            }
        }
        Ok(match next {
            Some(at) => {
                let wait = at.duration_since(now).unwrap_or_default();
                Action::requeue(wait.max(Duration::from_secs(1)))
            }
            None => Action::AwaitChange,
        })
    }
}

async fn mark_not_ready(
    ctx: &Context,
    object: &Object,
    pod: &Pod,
    now: SystemTime,
) -> Result<(), ControllerError> {
    if !is_ready(pod) {
        return Ok(());
    }
    let mut pod = pod.clone();
    for c in pod
        .status
        .get_or_insert_with(Default::default)
        .conditions
        .iter_mut()
        .flatten()
    {
        if c.type_ == "Ready" {
            c.status = "False".into();
            c.reason = Some("NodeNotReady".into());
            c.last_transition_time = Some(to_k8s_time(now));
        }
    }
    match ctx.store.update_status(pod.into_object()).await {
        Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(ControllerError::store("mark not ready", object, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, added: u64) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            time_added: Some(to_k8s_time(
                SystemTime::UNIX_EPOCH + Duration::from_secs(added),
            )),
            value: None,
        }
    }

    #[test]
    fn eviction_follows_tolerations() {
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let unreachable = taint(UNREACHABLE_TAINT, 100);
        let custom = taint("example.com/drain", 100);
        let mut pod = Pod::default();
        // Default toleration: 300 s after the taint.
        assert_eq!(eviction_time(&pod, &[&unreachable], at(150)), Some(at(400)));
        // Not tolerated at all: now.
        assert_eq!(
            eviction_time(&pod, &[&unreachable, &custom], at(150)),
            Some(at(150))
        );
        // Tolerated forever.
        pod.spec = Some(Default::default());
        pod.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        assert_eq!(eviction_time(&pod, &[&unreachable, &custom], at(150)), None);
        // Own tolerationSeconds wins over the default.
        pod.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some(UNREACHABLE_TAINT.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(30),
            value: None,
        }]);
        assert_eq!(eviction_time(&pod, &[&unreachable], at(150)), Some(at(130)));
    }
}

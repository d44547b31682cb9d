//! Storage object in-use protection for claims: a PersistentVolumeClaim carries the
//! `kubernetes.io/pvc-protection` finalizer, so deleting it while a pod still uses it only marks
//! it; it goes once no pod that is not finished uses it. Without this, a volume could be
//! reclaimed while it is still mounted on a node.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};

use super::claims_of;
use crate::controller::{Action, Context, Controller, ControllerError, ObjectKey, Reconciler};
use crate::controllers::pod_state::is_finished;
use crate::object::{Kind, Object, Typed};
use crate::store::{Api, ListOptions};

/// The finalizer that keeps a claim while pods use it.
pub const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";

/// Adds [`PVC_PROTECTION_FINALIZER`] to claims and removes it from a deleted claim once no
/// pod uses it (kube-controller-manager's `pvc-protection` controller).
pub struct PvcProtectionController;

impl PvcProtectionController {
    /// The controller, reconciling claims and the claims of every pod that changes.
    pub fn controller() -> Controller<Self> {
        Controller::new(
            "pvc-protection",
            Kind::PersistentVolumeClaim,
            PvcProtectionController,
        )
        .watches(Kind::Pod, |pod, _| {
            let Some(pod) = pod.as_kind::<Pod>() else {
                return Vec::new();
            };
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            claims_of(pod)
                .map(|claim| ObjectKey::namespaced(namespace, claim))
                .collect()
        })
    }
}

/// A pod uses its claims until it has finished (Succeeded or Failed) or is gone; a pod being
/// deleted still uses them while its containers stop.
fn in_use_by(pod: &Pod, claim: &str) -> bool {
    !is_finished(pod) && claims_of(pod).any(|c| c == claim)
}

#[async_trait]
impl Reconciler for PvcProtectionController {
    type Error = ControllerError;

    async fn reconcile(
        &self,
        object: Arc<Object>,
        ctx: &Context,
    ) -> Result<Action, ControllerError> {
        let Some(claim) = Typed::<PersistentVolumeClaim>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        let namespace = claim.metadata.namespace.as_deref().unwrap_or("default");
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.store.clone(), namespace);
        let has_finalizer = claim
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == PVC_PROTECTION_FINALIZER);
        if claim.metadata.deletion_timestamp.is_none() {
            if !has_finalizer {
                let mut c = claim.to_owned_value();
                c.metadata
                    .finalizers
                    .get_or_insert_with(Vec::new)
                    .push(PVC_PROTECTION_FINALIZER.to_string());
                claims
                    .update(c)
                    .await
                    .map_err(|e| ControllerError::store("protect", &object, e))?;
            }
            return Ok(Action::AwaitChange);
        }
        if !has_finalizer {
            return Ok(Action::AwaitChange);
        }
        let pods: Api<Pod> = Api::namespaced(ctx.store.clone(), namespace);
        let pods = pods
            .list(&ListOptions::default())
            .await
            .map_err(|e| ControllerError::store("list pods using", &object, e))?;
        if pods.iter().any(|p| in_use_by(p, object.name())) {
            // A pod change brings the claim back here.
            return Ok(Action::AwaitChange);
        }
        let mut c = claim.to_owned_value();
        if let Some(finalizers) = c.metadata.finalizers.as_mut() {
            finalizers.retain(|f| f != PVC_PROTECTION_FINALIZER);
        }
        claims
            .update(c)
            .await
            .map_err(|e| ControllerError::store("release", &object, e))?;
        Ok(Action::AwaitChange)
    }
}

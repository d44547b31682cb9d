//! The ReplicaSet controller: keeps `spec.replicas` active pods that match the selector.
//!
//! Each reconcile claims pods (adopting matching orphans, releasing controlled pods that no
//! longer match), creates missing pods from the template in slow-start batches (1, 2, 4, …, at
//! most 500 per reconcile, as Kubernetes does so that a failing create does not flood the
//! store), deletes surplus pods in [`deletion_order`], and writes the status: `replicas`,
//! `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas` (ready for
//! `minReadySeconds`), `observedGeneration`, and the `ReplicaFailure` condition.
//!
//! A reconcile costs what changed, not the number of pods: the counts come from the pod
//! informer's per-owner tally ([`Informer::owned_pods`]), the claim looks at orphans and at
//! owned pods only when some stopped matching, and a scale-down takes the first victims from
//! the tally's deletion order instead of sorting every pod.
//!
//! [`deletion_order`]: super::pod_state::deletion_order

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::ownership::{claim, controller_reference, selector_of};

use crate::controller::{
    Action, Context, Controller, ControllerError, Informer, Observed, Reconciler,
};
use crate::object::{Kind, Object, Resource, Typed};
use crate::store::{DeleteOptions, LabelSelector, StoreError};

/// Most pods one reconcile creates or deletes (Kubernetes' `burstReplicas`).
pub const BURST_REPLICAS: usize = 500;

/// The ReplicaSet reconciler.
#[derive(Default)]
pub struct ReplicaSetController;

impl ReplicaSetController {
    /// The controller, ready to run.
    pub fn controller() -> Controller<ReplicaSetController> {
        Controller::new("replicaset", Kind::ReplicaSet, ReplicaSetController).owns(Kind::Pod)
    }
}

/// A pod for `owner` from `template`: the template's labels, annotations and spec, a
/// generated name `<prefix>-xxxxx`, and a controller ownerReference.
pub fn pod_from_template(owner: &Object, template: &PodTemplateSpec, prefix: &str) -> Pod {
    let mut pod = Pod::default();
    if let Some(meta) = &template.metadata {
        pod.metadata.labels = meta.labels.clone();
        pod.metadata.annotations = meta.annotations.clone();
        pod.metadata.finalizers = meta.finalizers.clone();
    }
    pod.metadata.namespace = owner.namespace().map(str::to_string);
    pod.metadata.generate_name = Some(format!("{prefix}-"));
    pod.metadata.owner_references = Some(vec![controller_reference(owner)]);
    pod.spec = template.spec.clone();
    pod
}

/// Creates `count` pods, `make(i)` for `i` in `0..count`, in slow-start batches (1, 2, 4, …),
/// stopping at the first batch with a failure, and returns once the pod informer has seen
/// every pod created (so the caller's next look at the cache counts them). Returns the
/// created pods and the first error.
pub(crate) async fn create_pods(
    ctx: &Context,
    owner: &Object,
    make: impl Fn(usize) -> Pod,
    count: usize,
) -> (Vec<Arc<Object>>, Option<ControllerError>) {
    let mut created = Vec::with_capacity(count);
    let mut error = None;
    let mut batch = 1;
    let mut remaining = count;
    while remaining > 0 && error.is_none() {
        let n = batch.min(remaining);
        let first = count - remaining;
        let results =
            join_all((first..first + n).map(|i| ctx.store.create(make(i).into_object()))).await;
        for result in results {
            match result {
                Ok(pod) => created.push(pod),
                Err(e) if error.is_none() => {
                    error = Some(ControllerError::store("create pod for", owner, e))
                }
                Err(_) => {}
            }
        }
        remaining -= n;
        batch *= 2;
    }
    // Creates in a batch run concurrently: the newest write is the one to wait for.
    if let Some(newest) = created.iter().max_by_key(|p| p.resource_version()) {
        ctx.informers
            .get(&Kind::Pod)
            .wait_observed(&Observed::Written(newest.clone()))
            .await;
    }
    (created, error)
}

/// Deletes `pods`; a pod that is already gone counts as deleted.
pub(crate) async fn delete_pods(
    ctx: &Context,
    pods: &[Arc<Object>],
    informer: &Informer,
) -> Result<(), ControllerError> {
    let results = join_all(pods.iter().map(|p| {
        let options = DeleteOptions {
            precondition_uid: Some(p.uid().to_string()),
            ..Default::default()
        };
        async move {
            let result = ctx
                .store
                .delete(&Kind::Pod, p.namespace(), p.name(), &options)
                .await;
            (p, result)
        }
    }))
    .await;
    let mut first_error = None;
    for (pod, result) in results {
        match result {
            Ok(deleted) => informer.wait_observed(&Observed::from(&deleted)).await,
            Err(StoreError::NotFound { .. }) => {}
            Err(e) if first_error.is_none() => {
                first_error = Some(ControllerError::store("delete", pod, e))
            }
            Err(_) => {}
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Claims `owner`'s pods as [`claim`] does, looking only at the pods that can change hands:
/// the orphans of its namespace, and its own pods only when some no longer match `selector`
/// (the pod informer tells from its per-owner label sets without walking them).
async fn claim_pods(
    ctx: &Context,
    owner: &Arc<Object>,
    selector: &LabelSelector,
    pods: &Informer,
) -> Result<(), ControllerError> {
    // An owner being deleted neither adopts nor releases.
    if owner.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let candidates = if pods.has_unmatched(owner.uid(), selector) {
        pods.owned_or_orphans(owner.uid(), owner.namespace())
    } else {
        pods.orphans(owner.namespace())
    };
    if !candidates.is_empty() {
        claim(&ctx.store, owner, selector, candidates, pods).await?;
    }
    Ok(())
}

#[async_trait]
impl Reconciler for ReplicaSetController {
    type Error = ControllerError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error> {
        let Some(rs) = Typed::<ReplicaSet>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        let spec = rs.spec.clone().unwrap_or_default();
        let selector = selector_of(&object, Some(&spec.selector))?;
        let pods = ctx.informers.synced(&Kind::Pod).await;
        claim_pods(ctx, &object, &selector, &pods).await?;
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let template_labels = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let uid = object.uid();
        let active = pods
            .owned_pods(uid, &template_labels, min_ready, ctx.clock.now())
            .active;

        let mut manage_error = None;
        if rs.metadata.deletion_timestamp.is_none() {
            let want = spec.replicas.unwrap_or(1).max(0) as usize;
            if active < want {
                let template = spec.template.clone().unwrap_or_default();
                let count = (want - active).min(BURST_REPLICAS);
                let (_, error) = create_pods(
                    ctx,
                    &object,
                    |_| pod_from_template(&object, &template, object.name()),
                    count,
                )
                .await;
                manage_error = error;
            } else if active > want {
                let victims = pods.first_to_delete(uid, (active - want).min(BURST_REPLICAS));
                if let Err(e) = delete_pods(ctx, &victims, &pods).await {
                    manage_error = Some(e);
                }
            }
        }

        // Status from the cache, which now reflects this reconcile's writes.
        let counts = pods.owned_pods(uid, &template_labels, min_ready, ctx.clock.now());
        let mut status = ReplicaSetStatus {
            observed_generation: rs.metadata.generation,
            conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
            replicas: counts.active as i32,
            fully_labeled_replicas: Some(counts.fully_labeled as i32),
            ready_replicas: Some(counts.ready as i32),
            available_replicas: Some(counts.available as i32),
            ..Default::default()
        };
        let next_available = counts.next_available;
        set_failure_condition(&mut status, manage_error.as_ref(), ctx);
        if rs.status.as_ref() != Some(&status) {
            let written = write_status(ctx, &object, status).await?;
            // The next reconcile reads the ReplicaSet from the informer: once it holds this
            // write, that reconcile does not conflict on a stale resourceVersion.
            ctx.informers
                .get(&Kind::ReplicaSet)
                .wait_observed(&Observed::Written(written))
                .await;
        }
        if let Some(e) = manage_error {
            return Err(e);
        }
        Ok(match next_available {
            // Wake when the next pod passes minReadySeconds (plus a second of slack, since
            // timestamps have second precision).
            Some(wait) => Action::requeue(wait + Duration::from_secs(1)),
            None => Action::AwaitChange,
        })
    }
}

/// Writes `status` through the status subresource, which takes only the status and the uid:
/// a Deployment rescaling the ReplicaSet meanwhile (a newer resourceVersion) does not make it
/// conflict, as Kubernetes' `updateReplicaSetStatus` retries onto the latest ReplicaSet. The
/// status keeps the `observedGeneration` it was computed for, so a newer spec still reads as
/// not yet observed.
async fn write_status(
    ctx: &Context,
    object: &Arc<Object>,
    status: ReplicaSetStatus,
) -> Result<Arc<Object>, ControllerError> {
    let meta = object.meta();
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            ..Default::default()
        },
        spec: None,
        status: Some(status),
    };
    ctx.store
        .update_status(rs.into_object())
        .await
        .map_err(|e| ControllerError::store("update status of", object, e))
}

fn set_failure_condition(
    status: &mut ReplicaSetStatus,
    error: Option<&ControllerError>,
    ctx: &Context,
) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let previous = conditions
        .iter()
        .find(|c| c.type_ == "ReplicaFailure")
        .cloned();
    conditions.retain(|c| c.type_ != "ReplicaFailure");
    if let Some(error) = error {
        let reason = match error {
            ControllerError::Store { operation, .. } if operation.starts_with("delete") => {
                "FailedDelete"
            }
            _ => "FailedCreate",
        };
        // An unchanged failure keeps its condition as is, so that a persistent error does
        // not rewrite the status (and re-trigger this controller) on every retry.
        match previous.filter(|p| p.reason.as_deref() == Some(reason)) {
            Some(same) => conditions.push(same),
            None => conditions.push(ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(error.to_string()),
                last_transition_time: Some(ctx.clock.now_k8s()),
            }),
        }
    }
    if conditions.is_empty() {
        status.conditions = None;
    }
}

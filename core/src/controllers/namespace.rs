//! The namespace controller: empties a Namespace that is being deleted, then lets it go.
//!
//! Deleting a Namespace only marks it (`deletionTimestamp`, phase `Terminating`): the store
//! keeps it while `spec.finalizers` holds `kubernetes`, and refuses new objects in it. This
//! controller then deletes every namespaced object in it, of every kind the store holds
//! ([`Store::kinds`]), with background propagation; pods terminate gracefully through their
//! node agents and objects with finalizers wait for them. While anything is left it reports
//! the conditions Kubernetes reports (`NamespaceContentRemaining`,
//! `NamespaceFinalizersRemaining`, `NamespaceDeletionContentFailure`) and looks again
//! shortly; once the namespace is empty it removes `kubernetes` from `spec.finalizers`, and
//! the store removes the Namespace when no other finalizer is left.
//!
//! [`Store::kinds`]: crate::store::Store::kinds

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, NamespaceStatus};

use crate::controller::{Action, Context, Controller, ControllerError, ObjectKey, Reconciler};
use crate::object::{Kind, Object, Resource, Typed};
use crate::store::memory::NAMESPACE_FINALIZER;
use crate::store::{DeleteOptions, Deleted, ListOptions, StoreError};

/// How often a Terminating namespace with content left is looked at again.
pub const CONTENT_RECHECK: Duration = Duration::from_secs(2);

/// The namespace reconciler.
#[derive(Default)]
pub struct NamespaceController;

impl NamespaceController {
    /// The controller, ready to run.
    pub fn controller() -> Controller<NamespaceController> {
        Controller::new("namespace", Kind::Namespace, NamespaceController)
    }
}

/// What is left in a namespace after one deletion pass.
#[derive(Default)]
struct Remaining {
    /// Objects left per kind (e.g. `pods.` → 2), keyed as Kubernetes names resources.
    objects: BTreeMap<String, usize>,
    /// Objects left per finalizer.
    finalizers: BTreeMap<String, usize>,
    /// Deletes that failed, with their errors.
    failures: Vec<String>,
}

/// Kubernetes' `resource.group` form of a kind (`pods.`, `deployments.apps`), as the
/// conditions' messages name them.
fn resource_name(kind: &Kind) -> String {
    let plural = {
        let lower = kind.name().to_ascii_lowercase();
        if lower == "endpoints" {
            lower
        } else if lower.ends_with('s') {
            format!("{lower}es")
        } else if let Some(stem) = lower.strip_suffix('y') {
            format!("{stem}ies")
        } else {
            format!("{lower}s")
        }
    };
    let group = kind
        .api_version()
        .rsplit_once('/')
        .map(|(g, _)| g)
        .unwrap_or("");
    format!("{plural}.{group}")
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: Some(reason.to_string()),
        message: (!message.is_empty()).then_some(message),
        last_transition_time: None,
    }
}

#[async_trait]
impl Reconciler for NamespaceController {
    type Error = ControllerError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error> {
        let Some(ns) = Typed::<Namespace>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(Action::AwaitChange);
        }
        let ours = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|f| f == NAMESPACE_FINALIZER));
        if !ours {
            return Ok(Action::AwaitChange);
        }
        let remaining = self.delete_content(ctx, object.name()).await?;
        if remaining.objects.is_empty() && remaining.failures.is_empty() {
            self.finalize(ctx, &object, &ns).await?;
            return Ok(Action::AwaitChange);
        }
        self.write_conditions(ctx, &object, &ns, &remaining).await?;
        Ok(Action::requeue(CONTENT_RECHECK))
    }
}

impl NamespaceController {
    /// Deletes every namespaced object in `namespace` that is not being deleted yet, and
    /// reports what is still there.
    async fn delete_content(
        &self,
        ctx: &Context,
        namespace: &str,
    ) -> Result<Remaining, ControllerError> {
        let key = ObjectKey::cluster(namespace);
        let kinds =
            ctx.store.kinds().await.map_err(|e| {
                ControllerError::store_key("list kinds for", &Kind::Namespace, &key, e)
            })?;
        let mut remaining = Remaining::default();
        for kind in kinds.iter().filter(|k| k.is_namespaced()) {
            let list = ctx
                .store
                .list(kind, &ListOptions::namespace(namespace))
                .await
                .map_err(|e| {
                    ControllerError::store_key("list content of namespace", kind, &key, e)
                })?;
            let mut left = 0;
            for item in &list.items {
                let mut still_there = item.meta().deletion_timestamp.is_some();
                if !still_there {
                    let options = DeleteOptions {
                        precondition_uid: Some(item.uid().to_string()),
                        ..Default::default()
                    };
                    match ctx
                        .store
                        .delete(kind, item.namespace(), item.name(), &options)
                        .await
                    {
                        Ok(Deleted::Gone(_)) | Err(StoreError::NotFound { .. }) => {}
                        Ok(Deleted::Marked(marked)) => {
                            still_there = true;
                            for f in marked.meta().finalizers.iter().flatten() {
                                *remaining.finalizers.entry(f.clone()).or_default() += 1;
                            }
                        }
                        Err(e) => {
                            still_there = true;
                            remaining
                                .failures
                                .push(format!("{kind} {}: {e}", item.display_name()));
                        }
                    }
                } else {
                    for f in item.meta().finalizers.iter().flatten() {
                        *remaining.finalizers.entry(f.clone()).or_default() += 1;
                    }
                }
                if still_there {
                    left += 1;
                }
            }
            if left > 0 {
                remaining.objects.insert(resource_name(kind), left);
            }
        }
        Ok(remaining)
    }

    /// Removes the `kubernetes` finalizer; the store deletes the namespace if nothing else
    /// holds it.
    async fn finalize(
        &self,
        ctx: &Context,
        object: &Object,
        ns: &Namespace,
    ) -> Result<(), ControllerError> {
        let mut finalized = ns.clone();
        if let Some(f) = finalized.spec.as_mut().and_then(|s| s.finalizers.as_mut()) {
            f.retain(|f| f != NAMESPACE_FINALIZER);
        }
        match ctx.store.update(finalized.into_object()).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => {
                tracing::debug!(namespace = %object.name(), "namespace emptied and finalized");
                Ok(())
            }
            Err(e) => Err(ControllerError::store("finalize", object, e)),
        }
    }

    async fn write_conditions(
        &self,
        ctx: &Context,
        object: &Object,
        ns: &Namespace,
        remaining: &Remaining,
    ) -> Result<(), ControllerError> {
        let content = remaining
            .objects
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ");
        let finalizers = remaining
            .finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ");
        let conditions = vec![
            if remaining.failures.is_empty() {
                condition(
                    "NamespaceDeletionContentFailure",
                    false,
                    "ContentDeleted",
                    "All content successfully deleted, may be waiting on finalization".into(),
                )
            } else {
                condition(
                    "NamespaceDeletionContentFailure",
                    true,
                    "ContentDeletionFailed",
                    format!(
                        "Failed to delete all resource types, {} remaining: {}",
                        remaining.failures.len(),
                        remaining.failures.join("; ")
                    ),
                )
            },
            if content.is_empty() {
                condition(
                    "NamespaceContentRemaining",
                    false,
                    "ContentRemoved",
                    "All content successfully removed".into(),
                )
            } else {
                condition(
                    "NamespaceContentRemaining",
                    true,
                    "SomeResourcesRemain",
                    format!("Some resources are remaining: {content}"),
                )
            },
            if finalizers.is_empty() {
                condition(
                    "NamespaceFinalizersRemaining",
                    false,
                    "ContentHasNoFinalizers",
                    "All content-preserving finalizers finished".into(),
                )
            } else {
                condition(
                    "NamespaceFinalizersRemaining",
                    true,
                    "SomeFinalizersRemain",
                    format!("Some content in the namespace has finalizers remaining: {finalizers}"),
                )
            },
        ];
        let old = ns.status.clone().unwrap_or_default();
        let unchanged = old.conditions.as_ref().is_some_and(|c| {
            c.len() == conditions.len()
                && c.iter().zip(&conditions).all(|(a, b)| {
                    (&a.type_, &a.status, &a.reason, &a.message)
                        == (&b.type_, &b.status, &b.reason, &b.message)
                })
        });
        if unchanged {
            return Ok(());
        }
        let now = ctx.clock.now_k8s();
        let conditions = conditions
            .into_iter()
            .map(|mut c| {
                let prev = old.conditions.iter().flatten().find(|o| o.type_ == c.type_);
                c.last_transition_time = match prev {
                    Some(p) if p.status == c.status => p.last_transition_time.clone(),
                    _ => Some(now.clone()),
                };
                c
            })
            .collect();
        let mut updated = ns.clone();
        updated.status = Some(NamespaceStatus {
            phase: Some("Terminating".into()),
            conditions: Some(conditions),
        });
        match ctx.store.update_status(updated.into_object()).await {
            Ok(_) | Err(StoreError::NotFound { .. }) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(ControllerError::store("update status of", object, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_named_as_kubernetes_names_them() {
        assert_eq!(resource_name(&Kind::Pod), "pods.");
        assert_eq!(resource_name(&Kind::Deployment), "deployments.apps");
        assert_eq!(resource_name(&Kind::Endpoints), "endpoints.");
        assert_eq!(
            resource_name(&Kind::StorageClass),
            "storageclasses.storage.k8s.io"
        );
        assert_eq!(
            resource_name(&Kind::custom("db.example.com/v1", "Policy", true)),
            "policies.db.example.com"
        );
    }
}

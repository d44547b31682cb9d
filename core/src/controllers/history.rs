//! Controller history: the ControllerRevision objects in which StatefulSets and DaemonSets
//! record every pod template they have had (Kubernetes' `controller/history`).
//!
//! A revision is named `<owner>-<hash>`, where the hash covers the template (and the owner's
//! `collisionCount`); its `data` is the patch that puts the template back into the owner,
//! `{"spec": {"template": {…, "$patch": "replace"}}}`, and its `revision` number grows with
//! each new template. Going back to an earlier template reuses that template's revision and
//! gives it the next number, so the newest number is always the template in force.
//!
//! This module owns the revisions of one owner and nothing else: pods are the controllers'.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;

use super::ownership::{claim, controller_reference, is_controlled_by, safe_hash};
use crate::controller::{Context, ControllerError, Observed};
use crate::object::{Kind, Object, Resource};
use crate::store::{DeleteOptions, LabelSelector, StoreError};

/// Label on pods (and revisions) naming the revision of the template they were made from.
/// StatefulSet pods carry the revision's name, DaemonSet pods its hash, as in Kubernetes.
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";

/// How many times a hash collision with a foreign revision is retried with a bumped
/// `collisionCount` before giving up for this reconcile.
const COLLISION_RETRIES: i32 = 5;

/// An owner's revisions after [`sync`]: every revision it controls, oldest first, and the one
/// holding its current template.
pub struct History {
    /// The owner's revisions by ascending revision number (the update revision included).
    pub revisions: Vec<ControllerRevision>,
    /// The revision of the owner's current template.
    pub update: ControllerRevision,
    /// The owner's `collisionCount` after any collision this sync resolved.
    pub collision_count: Option<i32>,
}

impl History {
    /// The revision called `name`, if the owner has it.
    pub fn get(&self, name: &str) -> Option<&ControllerRevision> {
        self.revisions
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
    }
}

/// The `data` of a revision of `template`.
pub fn template_patch(template: &PodTemplateSpec) -> serde_json::Value {
    let mut template = serde_json::to_value(template).unwrap_or_default();
    if let Some(map) = template.as_object_mut() {
        map.insert("$patch".into(), "replace".into());
    }
    serde_json::json!({ "spec": { "template": template } })
}

/// The pod template a revision recorded.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision
        .data
        .as_ref()?
        .0
        .get("spec")?
        .get("template")?
        .clone();
    template.as_object_mut()?.remove("$patch");
    serde_json::from_value(template).ok()
}

/// The hash part of a revision name `<owner>-<hash>`.
pub fn hash_of<'a>(owner: &Object, revision: &'a ControllerRevision) -> &'a str {
    let name = revision.metadata.name.as_deref().unwrap_or("");
    name.strip_prefix(owner.name())
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or(name)
}

/// The revision inside a stored object (the store hands back the kind it was given).
fn as_revision(object: &Object) -> ControllerRevision {
    object
        .as_kind::<ControllerRevision>()
        .cloned()
        .unwrap_or_default()
}

/// A revision's name (empty when it has none).
pub fn revision_name(revision: &ControllerRevision) -> &str {
    revision.metadata.name.as_deref().unwrap_or("")
}

/// Claims `owner`'s revisions (adopting matching orphans), then finds or creates the revision
/// of `template`, making it the newest.
pub async fn sync(
    ctx: &Context,
    owner: &Object,
    selector: &LabelSelector,
    template: &PodTemplateSpec,
    collision_count: Option<i32>,
) -> Result<History, ControllerError> {
    let informer = ctx.informers.synced(&Kind::ControllerRevision).await;
    let candidates = informer.owned_or_orphans(owner.uid(), owner.namespace());
    let claimed = claim(&ctx.store, owner, selector, candidates, &informer).await?;
    let mut revisions: Vec<ControllerRevision> = claimed
        .iter()
        .filter_map(|o| o.as_kind::<ControllerRevision>().cloned())
        .collect();
    revisions.sort_by(|a, b| (a.revision, revision_name(a)).cmp(&(b.revision, revision_name(b))));
    let data = template_patch(template);
    let next = revisions.last().map_or(1, |r| r.revision + 1);

    let update = match revisions
        .iter()
        .rposition(|r| r.data.as_ref().map(|d| &d.0) == Some(&data))
    {
        Some(i) if i + 1 == revisions.len() => revisions[i].clone(),
        Some(i) => {
            // Back to an earlier template: that revision becomes the newest.
            let mut bumped = revisions.remove(i);
            bumped.revision = next;
            let written = ctx
                .store
                .update(bumped.clone().into_object())
                .await
                .map_err(|e| ControllerError::store("renumber revision of", owner, e))?;
            informer
                .wait_observed(&Observed::Written(written.clone()))
                .await;
            let bumped = as_revision(&written);
            revisions.push(bumped.clone());
            bumped
        }
        None => {
            let (written, count) =
                create(ctx, owner, template, &data, next, collision_count).await?;
            informer
                .wait_observed(&Observed::Written(written.clone()))
                .await;
            let created = as_revision(&written);
            if !revisions
                .iter()
                .any(|r| revision_name(r) == revision_name(&created))
            {
                revisions.push(created.clone());
            }
            return Ok(History {
                revisions,
                update: created,
                collision_count: count,
            });
        }
    };
    Ok(History {
        revisions,
        update,
        collision_count,
    })
}

/// Creates the revision of `template`, retrying with a bumped collision count when its name
/// is taken by a revision of another template or owner.
async fn create(
    ctx: &Context,
    owner: &Object,
    template: &PodTemplateSpec,
    data: &serde_json::Value,
    number: i64,
    mut collision_count: Option<i32>,
) -> Result<(Arc<Object>, Option<i32>), ControllerError> {
    for _ in 0..=COLLISION_RETRIES {
        let hash = template_hash(template, collision_count);
        let mut revision = ControllerRevision {
            data: Some(RawExtension(data.clone())),
            revision: number,
            ..Default::default()
        };
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(CONTROLLER_REVISION_HASH.into(), hash.clone());
        revision.metadata.labels = Some(labels);
        revision.metadata.name = Some(format!("{}-{hash}", owner.name()));
        revision.metadata.namespace = owner.namespace().map(str::to_string);
        revision.metadata.owner_references = Some(vec![controller_reference(owner)]);
        match ctx.store.create(revision.clone().into_object()).await {
            Ok(written) => return Ok((written, collision_count)),
            Err(StoreError::AlreadyExists { .. }) => {
                let existing = ctx
                    .store
                    .get(
                        &Kind::ControllerRevision,
                        owner.namespace(),
                        revision_name(&revision),
                    )
                    .await
                    .map_err(|e| ControllerError::store("read revision of", owner, e))?;
                let same = existing.as_kind::<ControllerRevision>().is_some_and(|r| {
                    r.data.as_ref().map(|d| &d.0) == Some(data)
                        && is_controlled_by(&existing, owner.uid())
                });
                if same {
                    return Ok((existing, collision_count));
                }
                collision_count = Some(collision_count.unwrap_or(0) + 1);
            }
            Err(e) => return Err(ControllerError::store("create revision of", owner, e)),
        }
    }
    Err(ControllerError::invalid(
        owner,
        "status.collisionCount",
        "revision names keep colliding with other objects' revisions",
    ))
}

fn template_json(template: &PodTemplateSpec) -> serde_json::Value {
    serde_json::to_value(template).unwrap_or_default()
}

/// The hash a revision of `template` gets with `collision_count`.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    safe_hash(&template_json(template), collision_count)
}

/// Deletes the oldest revisions that no pod uses (`live` names the ones in use, including the
/// current and update revisions) beyond `limit` unused ones.
pub async fn truncate(
    ctx: &Context,
    owner: &Object,
    history: &History,
    live: &BTreeSet<String>,
    limit: i32,
) -> Result<(), ControllerError> {
    let unused: Vec<&ControllerRevision> = history
        .revisions
        .iter()
        .filter(|r| !live.contains(revision_name(r)))
        .collect();
    let excess = unused.len().saturating_sub(limit.max(0) as usize);
    for revision in unused.into_iter().take(excess) {
        match ctx
            .store
            .delete(
                &Kind::ControllerRevision,
                owner.namespace(),
                revision_name(revision),
                &DeleteOptions {
                    precondition_uid: revision.metadata.uid.clone(),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(ControllerError::store("delete old revision of", owner, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    #[test]
    fn revision_data_round_trips_the_template() {
        let template = PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("busybox:1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        };
        let data = template_patch(&template);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let revision = ControllerRevision {
            data: Some(RawExtension(data)),
            ..Default::default()
        };
        assert_eq!(template_of(&revision), Some(template.clone()));
        assert_ne!(
            template_hash(&template, None),
            template_hash(&template, Some(1))
        );
    }
}

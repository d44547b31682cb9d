//! `kubectl apply` against a [`Store`]: validate everything, then create what is missing and
//! update what changed, with a three-way merge so that fields the manifest leaves out keep
//! the values controllers and other writers gave them.
//!
//! As with kubectl, the configuration written by the user is recorded in the
//! [`LAST_APPLIED_ANNOTATION`]; a field that was in the last applied configuration and is no
//! longer in the new one is removed. A store error part way through undoes the writes this
//! call made, so a batch is applied whole or not at all.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::error::{ManifestError, Origin};
use super::{apply_defaults, validate, Manifest};
use crate::object::Object;
use crate::store::{DeleteOptions, Store, StoreError};

/// The annotation holding the configuration last applied, as kubectl writes it.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What applying one object did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyAction {
    /// The object did not exist and was created.
    Created,
    /// The object existed and was updated.
    Configured,
    /// The object existed and already matched.
    Unchanged,
}

/// The result of applying one object.
#[derive(Clone, Debug)]
pub struct Applied {
    /// What was done.
    pub action: ApplyAction,
    /// The object as stored after the apply.
    pub object: Arc<Object>,
}

impl fmt::Display for Applied {
    /// `deployment.apps/web configured`, as kubectl prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.object.kind();
        let group = kind.api_version().rsplit_once('/').map(|(g, _)| g);
        let action = match self.action {
            ApplyAction::Created => "created",
            ApplyAction::Configured => "configured",
            ApplyAction::Unchanged => "unchanged",
        };
        match group {
            Some(group) => write!(
                f,
                "{}.{group}/{} {action}",
                kind.name().to_lowercase(),
                self.object.name()
            ),
            None => write!(
                f,
                "{}/{} {action}",
                kind.name().to_lowercase(),
                self.object.name()
            ),
        }
    }
}

/// Applies the objects of a loaded manifest, recording each as written (not defaulted), so a
/// field the manifest leaves out (e.g. a Deployment's replicas under an autoscaler) keeps its
/// stored value.
pub async fn apply_manifest(
    store: &dyn Store,
    manifest: &Manifest,
) -> Result<Vec<Applied>, ManifestError> {
    let configs = manifest
        .items
        .iter()
        .map(|i| (i.written.clone(), i.origin.clone()))
        .collect();
    apply_configs(store, configs).await
}

/// Applies `objects`: validates all of them (after defaulting), then creates or updates
/// each, reporting per object whether it was created, configured or unchanged.
pub async fn apply(
    store: &dyn Store,
    objects: impl IntoIterator<Item = Object>,
) -> Result<Vec<Applied>, ManifestError> {
    let configs = objects
        .into_iter()
        .map(|o| {
            let origin = Origin {
                source: "<apply>".into(),
                kind: Some(o.kind().name().to_string()),
                name: Some(o.name().to_string()),
                ..Origin::default()
            };
            (o, origin)
        })
        .collect();
    apply_configs(store, configs).await
}

/// What to write for one object.
enum Plan {
    Create(Object),
    Update { previous: Arc<Object>, next: Object },
    Unchanged(Arc<Object>),
}

async fn apply_configs(
    store: &dyn Store,
    configs: Vec<(Object, Origin)>,
) -> Result<Vec<Applied>, ManifestError> {
    // 1. Every object must be valid on its own.
    let mut errors = Vec::new();
    for (config, origin) in &configs {
        let mut object = config.clone();
        apply_defaults(&mut object);
        errors.extend(invalid(origin, validate(&object)));
    }
    if let Some(e) = ManifestError::from_list(errors) {
        return Err(e);
    }

    // 2. Read what is stored and plan every write before making one.
    let mut plans = Vec::with_capacity(configs.len());
    let mut errors = Vec::new();
    for (mut config, origin) in configs {
        clear_server_fields(&mut config);
        let kind = config.kind();
        let stored = match store.get(&kind, config.namespace(), config.name()).await {
            Ok(stored) => Some(stored),
            Err(StoreError::NotFound { .. }) => None,
            Err(source) => {
                return Err(store_error(&config, source));
            }
        };
        let applied_text = config_annotation(&config);
        let plan = match stored {
            None => {
                let mut object = config;
                annotate(&mut object, applied_text);
                apply_defaults(&mut object);
                Plan::Create(object)
            }
            Some(stored) => {
                let next = match merge(&stored, applied_text) {
                    Ok(next) => next,
                    Err(message) => {
                        errors.push(ManifestError::Invalid {
                            origin: Box::new(origin),
                            field: "(root)".into(),
                            message,
                        });
                        continue;
                    }
                };
                let problems = validate(&next);
                if !problems.is_empty() {
                    errors.extend(invalid(&origin, problems));
                    continue;
                }
                if next == *stored {
                    Plan::Unchanged(stored)
                } else {
                    Plan::Update {
                        previous: stored,
                        next,
                    }
                }
            }
        };
        plans.push(plan);
    }
    if let Some(e) = ManifestError::from_list(errors) {
        return Err(e);
    }

    // 3. Write; on failure undo this call's writes.
    let mut done: Vec<(Applied, Option<Arc<Object>>)> = Vec::with_capacity(plans.len());
    for plan in plans {
        let result = match plan {
            Plan::Create(object) => {
                let shown = object.clone();
                store
                    .create(object)
                    .await
                    .map(|o| (ApplyAction::Created, o, None))
                    .map_err(|e| (shown, e))
            }
            Plan::Update { previous, next } => {
                let shown = next.clone();
                store
                    .update(next)
                    .await
                    .map(|o| (ApplyAction::Configured, o, Some(previous)))
                    .map_err(|e| (shown, e))
            }
            Plan::Unchanged(object) => Ok((ApplyAction::Unchanged, object, None)),
        };
        match result {
            Ok((action, object, previous)) => {
                tracing::debug!(object = %object.display_name(), kind = %object.kind(), ?action, "applied");
                done.push((Applied { action, object }, previous));
            }
            Err((object, source)) => {
                undo(store, done).await;
                return Err(store_error(&object, source));
            }
        }
    }
    Ok(done.into_iter().map(|(a, _)| a).collect())
}

fn invalid(origin: &Origin, errors: Vec<super::FieldError>) -> Vec<ManifestError> {
    errors
        .into_iter()
        .map(|e| ManifestError::Invalid {
            origin: Box::new(origin.clone()),
            field: e.field,
            message: e.message,
        })
        .collect()
}

fn store_error(object: &Object, source: StoreError) -> ManifestError {
    ManifestError::Store {
        object: format!("{} {}", object.kind(), object.display_name()),
        source: Box::new(source),
    }
}

/// Best effort: delete what was created, put back what was updated.
async fn undo(store: &dyn Store, done: Vec<(Applied, Option<Arc<Object>>)>) {
    for (applied, previous) in done.into_iter().rev() {
        let object = &applied.object;
        let result = match (applied.action, previous) {
            (ApplyAction::Created, _) => {
                let options = DeleteOptions {
                    grace_period_seconds: Some(0),
                    precondition_uid: Some(object.uid().to_string()),
                    ..DeleteOptions::default()
                };
                store
                    .delete(&object.kind(), object.namespace(), object.name(), &options)
                    .await
                    .map(|_| ())
            }
            (ApplyAction::Configured, Some(previous)) => {
                let mut restore = (*previous).clone();
                restore.meta_mut().resource_version = object.meta().resource_version.clone();
                store.update(restore).await.map(|_| ())
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(object = %object.display_name(), error = %e, "could not undo apply");
        }
    }
}

/// Metadata a manifest must not set: the store owns it.
fn clear_server_fields(object: &mut Object) {
    let meta = object.meta_mut();
    meta.uid = None;
    meta.resource_version = None;
    meta.generation = None;
    meta.creation_timestamp = None;
    meta.deletion_timestamp = None;
    meta.deletion_grace_period_seconds = None;
    meta.managed_fields = None;
}

/// The configuration as recorded in the annotation: the object as written, without the
/// annotation itself.
fn config_annotation(config: &Object) -> String {
    let mut json = config.to_json();
    if let Some(annotations) = json
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Value::as_object_mut)
    {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
    json.to_string()
}

fn annotate(object: &mut Object, applied: String) {
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(LAST_APPLIED_ANNOTATION.to_string(), applied);
}

/// Three-way merge: start from the stored object, set every field of the new configuration,
/// remove the fields that the last applied configuration had and the new one has not, then
/// default (filling only what is still unset). Lists are replaced whole.
fn merge(stored: &Object, applied_text: String) -> Result<Object, String> {
    let last: Option<Value> = stored
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(LAST_APPLIED_ANNOTATION))
        .and_then(|text| serde_json::from_str(text).ok());
    let mut merged = stored.to_json();
    let new = serde_json::from_str::<Value>(&applied_text).map_err(|e| e.to_string())?;
    merge_value(&mut merged, &new, last.as_ref());
    let mut object = Object::from_json(&stored.kind(), merged)
        .map_err(|e| format!("merging with the stored object: {e}"))?;
    annotate(&mut object, applied_text);
    let meta = object.meta_mut();
    meta.resource_version = stored.meta().resource_version.clone();
    apply_defaults(&mut object);
    Ok(object)
}

fn merge_value(target: &mut Value, new: &Value, last: Option<&Value>) {
    let (Value::Object(target_map), Value::Object(new_map)) = (&mut *target, new) else {
        *target = new.clone();
        return;
    };
    if let Some(Value::Object(last_map)) = last {
        for key in last_map.keys() {
            if !new_map.contains_key(key) {
                target_map.remove(key);
            }
        }
    }
    for (key, value) in new_map {
        let last_child = last.and_then(|l| l.get(key));
        match target_map.get_mut(key) {
            Some(existing) if existing.is_object() && value.is_object() => {
                merge_value(existing, value, last_child)
            }
            _ => {
                target_map.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_keeps_fields_others_set_and_drops_removed_ones() {
        let mut stored = json!({"spec": {"replicas": 5, "paused": true, "template": {"a": 1}}});
        let last = json!({"spec": {"paused": true, "template": {"a": 1}}});
        let new = json!({"spec": {"template": {"a": 2}}});
        merge_value(&mut stored, &new, Some(&last));
        assert_eq!(
            stored,
            json!({"spec": {"replicas": 5, "template": {"a": 2}}})
        );
    }
}

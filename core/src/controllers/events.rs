//! Events: what controllers tell users about an object (`kubectl describe` shows them).
//!
//! Like Kubernetes' event recorder, a repeat of the same event (same object, type, reason and
//! message) does not create a new Event but bumps `count` and `lastTimestamp` of the first.
//! Recording is best effort: a failed write is logged and never fails the reconcile.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};

use crate::controller::Context;
use crate::object::{Kind, Object, Resource};
use crate::store::StoreError;

/// `type` of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something the user may have to act on.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// A reference to `object` as Events and status fields carry it.
pub fn object_reference(object: &Object) -> ObjectReference {
    let kind = object.kind();
    ObjectReference {
        api_version: Some(kind.api_version().to_string()),
        kind: Some(kind.name().to_string()),
        name: Some(object.name().to_string()),
        namespace: object.namespace().map(str::to_string),
        uid: Some(object.uid().to_string()),
        resource_version: object.meta().resource_version.clone(),
        field_path: None,
    }
}

/// Records an Event about `object` from `component` (e.g. `cronjob-controller`).
pub async fn record(
    ctx: &Context,
    component: &str,
    object: &Object,
    type_: EventType,
    reason: &str,
    message: &str,
) {
    let namespace = object.namespace().unwrap_or("default").to_string();
    // One name per (object, type, reason, message): repeats find and bump the first.
    let key = serde_json::json!([object.uid(), type_.as_str(), reason, message]);
    let name = format!(
        "{}.{}",
        object.name(),
        super::ownership::safe_hash(&key, None)
    );
    let now = ctx.clock.now_k8s();
    match type_ {
        EventType::Normal => {
            tracing::debug!(object = %object.display_name(), reason, message, "event")
        }
        EventType::Warning => {
            tracing::warn!(object = %object.display_name(), reason, message, "event")
        }
    }
    match ctx.store.get(&Kind::Event, Some(&namespace), &name).await {
        Ok(existing) => {
            let Some(event) = existing.as_kind::<Event>() else {
                return;
            };
            let mut event = event.clone();
            event.count = Some(event.count.unwrap_or(1) + 1);
            event.last_timestamp = Some(now);
            if let Err(e) = ctx.store.update(event.into_object()).await {
                tracing::debug!(event = %name, error = %e, "could not update event");
            }
        }
        Err(StoreError::NotFound { .. }) => {
            let mut event = Event {
                involved_object: object_reference(object),
                reason: Some(reason.to_string()),
                message: Some(message.to_string()),
                type_: Some(type_.as_str().to_string()),
                count: Some(1),
                first_timestamp: Some(now.clone()),
                last_timestamp: Some(now),
                source: Some(EventSource {
                    component: Some(component.to_string()),
                    host: None,
                }),
                reporting_component: Some(component.to_string()),
                ..Default::default()
            };
            event.metadata.name = Some(name.clone());
            event.metadata.namespace = Some(namespace);
            if let Err(e) = ctx.store.create(event.into_object()).await {
                tracing::debug!(event = %name, error = %e, "could not record event");
            }
        }
        Err(e) => tracing::debug!(event = %name, error = %e, "could not read event"),
    }
}

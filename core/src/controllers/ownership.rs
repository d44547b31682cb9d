//! ownerReferences: building them, and claiming dependents the way Kubernetes'
//! `ControllerRefManager` does — adopt orphans that match the owner's selector, release owned
//! objects that no longer match.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::controller::{ControllerError, Informer, Observed};
use crate::object::Object;
use crate::store::LabelSelector;

/// An ownerReference to `owner` with `controller: true` and `blockOwnerDeletion: true`.
pub fn controller_reference(owner: &Object) -> OwnerReference {
    let kind = owner.kind();
    OwnerReference {
        api_version: kind.api_version().to_string(),
        kind: kind.name().to_string(),
        name: owner.name().to_string(),
        uid: owner.uid().to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub use crate::controller::controller_of;

/// Whether `object`'s controller has `uid`.
pub fn is_controlled_by(object: &Object, uid: &str) -> bool {
    controller_of(object).is_some_and(|r| r.uid == uid)
}

/// The owner's label selector; an empty one is refused, as the API server's validation does
/// for workload controllers (it would select every pod of the namespace).
pub fn selector_of(
    owner: &Object,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<LabelSelector, ControllerError> {
    let selector = selector
        .map(LabelSelector::from_k8s)
        .transpose()
        .map_err(|e| ControllerError::invalid(owner, "spec.selector", e.to_string()))?
        .unwrap_or_default();
    if selector.is_empty() {
        return Err(ControllerError::invalid(
            owner,
            "spec.selector",
            "an empty selector would select every pod; set matchLabels or matchExpressions",
        ));
    }
    Ok(selector)
}

/// Claims the `candidates` (objects controlled by `owner` and orphans in its namespace) for
/// `owner`: adopts matching orphans, releases controlled objects that stopped matching.
/// Returns the objects `owner` controls afterwards. Objects being deleted are neither adopted
/// nor released, and nothing is adopted or released while the owner itself is being deleted.
pub async fn claim(
    store: &Arc<dyn crate::store::Store>,
    owner: &Object,
    selector: &LabelSelector,
    candidates: Vec<Arc<Object>>,
    informer: &Informer,
) -> Result<Vec<Arc<Object>>, ControllerError> {
    let owner_deleting = owner.meta().deletion_timestamp.is_some();
    let mut claimed = Vec::with_capacity(candidates.len());
    let mut last_write = None;
    for object in candidates {
        let matches = selector.matches(object.meta().labels.as_ref());
        let deleting = object.meta().deletion_timestamp.is_some();
        if is_controlled_by(&object, owner.uid()) {
            if matches || owner_deleting || deleting {
                claimed.push(object);
                continue;
            }
            // Release: drop our ownerReference.
            let mut released = (*object).clone();
            if let Some(refs) = released.meta_mut().owner_references.as_mut() {
                refs.retain(|r| r.uid != owner.uid());
            }
            match store.update(released).await {
                Ok(written) => last_write = Some(written),
                Err(crate::store::StoreError::NotFound { .. }) => {}
                Err(e) => return Err(ControllerError::store("release", &object, e)),
            }
        } else if controller_of(&object).is_none() && matches && !deleting && !owner_deleting {
            let mut adopted = (*object).clone();
            adopted
                .meta_mut()
                .owner_references
                .get_or_insert_with(Vec::new)
                .push(controller_reference(owner));
            match store.update(adopted).await {
                Ok(written) => {
                    last_write = Some(written.clone());
                    claimed.push(written);
                }
                Err(crate::store::StoreError::NotFound { .. }) => {}
                Err(e) => return Err(ControllerError::store("adopt", &object, e)),
            }
        }
    }
    if let Some(write) = last_write {
        informer.wait_observed(&Observed::Written(write)).await;
    }
    Ok(claimed)
}

/// A short, stable hash of any serializable value, encoded with Kubernetes' "safe" alphabet
/// (no vowels, no look-alike characters): how `pod-template-hash` values look.
pub fn safe_hash(value: &serde_json::Value, collision_count: Option<i32>) -> String {
    // FNV-1a, 32 bits, over the canonical JSON text (serde_json sorts object keys).
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= *b as u32;
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(value.to_string().as_bytes());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect()
}

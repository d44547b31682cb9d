//! The API server's rules for system-managed metadata, applied by the memory store on create,
//! update, update-status and delete: names and namespaces, uid, timestamps, generation,
//! status separation and graceful pod deletion.
//!
//! Everything here is pure: it reads and rewrites objects and never touches the store's state.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::clock::to_k8s_time;
use crate::object::{Kind, Object};
use crate::store::{Propagation, Result, StoreError};

/// Finalizer that makes the garbage collector delete dependents before the owner.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer that makes the garbage collector orphan dependents before the owner goes.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// The alphabet Kubernetes draws generated-name suffixes from (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Length of a generated-name suffix.
const NAME_SUFFIX_LEN: usize = 5;
/// `generateName` prefixes are cut so that prefix + suffix fits a DNS label.
const MAX_GENERATE_PREFIX: usize = 63 - NAME_SUFFIX_LEN;
/// Default `terminationGracePeriodSeconds` of a pod.
pub const DEFAULT_POD_GRACE_SECONDS: i64 = 30;

/// A small lock-free random source (splitmix64) for uids and generated names; seeded from the
/// process's hash randomness so two stores never hand out the same sequence.
#[derive(Debug)]
pub struct Rng(AtomicU64);

impl Rng {
    /// A randomly seeded source.
    pub fn new() -> Rng {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Rng(AtomicU64::new(h.finish()))
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random version-4 UUID in its canonical text form.
    pub fn uuid(&self) -> String {
        let a = (self.next_u64() & 0xffff_ffff_ffff_0fff) | 0x4000;
        let b = (self.next_u64() & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }

    /// `prefix` (cut to 58 characters) followed by five random characters, as Kubernetes
    /// generates names from `metadata.generateName`.
    pub fn generated_name(&self, prefix: &str) -> String {
        let mut name: String = prefix.chars().take(MAX_GENERATE_PREFIX).collect();
        let mut bits = self.next_u64();
        for _ in 0..NAME_SUFFIX_LEN {
            name.push(NAME_ALPHABET[(bits % NAME_ALPHABET.len() as u64) as usize] as char);
            bits /= NAME_ALPHABET.len() as u64;
        }
        name
    }
}

fn invalid(kind: &Kind, name: &str, field: &str, message: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        kind: kind.name().to_string(),
        name: name.to_string(),
        field: field.to_string(),
        message: message.into(),
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Checks `name` against the rule for `kind`: RBAC and custom kinds accept any path segment
/// (e.g. `system:controller:x`), namespaces a DNS label, every other kind a DNS subdomain.
pub fn validate_name(kind: &Kind, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid(
            kind,
            name,
            "metadata.name",
            "name or generateName is required",
        ));
    }
    let (ok, rule) = match kind {
        Kind::Role | Kind::RoleBinding | Kind::ClusterRole | Kind::ClusterRoleBinding
        | Kind::Custom(_) => (
            name != "." && name != ".." && !name.contains(['/', '%']),
            "a path segment: not \".\" or \"..\", without '/' or '%'",
        ),
        Kind::Namespace => (
            is_dns_label(name),
            "a DNS label: at most 63 lowercase alphanumerics or '-', starting and ending alphanumeric",
        ),
        _ => (
            is_dns_subdomain(name),
            "a DNS subdomain: at most 253 lowercase alphanumerics, '-' or '.', each part starting and ending alphanumeric",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            kind,
            name,
            "metadata.name",
            format!("{name:?} must be {rule}"),
        ))
    }
}

/// The storage namespace of an object of `kind`: the given one (or `default`) for namespaced
/// kinds, none for cluster-scoped kinds (a namespace given for those is ignored, as the API
/// server does).
pub fn namespace_for(kind: &Kind, namespace: Option<&str>, name: &str) -> Result<Option<String>> {
    if !kind.is_namespaced() {
        return Ok(None);
    }
    let ns = namespace.filter(|ns| !ns.is_empty()).unwrap_or("default");
    if !is_dns_label(ns) {
        return Err(invalid(
            kind,
            name,
            "metadata.namespace",
            format!("{ns:?} is not a valid namespace name (a DNS label)"),
        ));
    }
    Ok(Some(ns.to_string()))
}

/// The namespace a read or delete addresses: required for namespaced kinds, ignored for
/// cluster-scoped ones.
pub fn address_namespace<'a>(
    kind: &Kind,
    namespace: Option<&'a str>,
    name: &str,
) -> Result<Option<&'a str>> {
    if !kind.is_namespaced() {
        return Ok(None);
    }
    match namespace {
        Some(ns) if !ns.is_empty() => Ok(Some(ns)),
        _ => Err(invalid(
            kind,
            name,
            "metadata.namespace",
            format!("{kind} is namespaced: a namespace is required"),
        )),
    }
}

/// Fills what `create` owns (uid, creationTimestamp, generation, namespace) and clears what
/// a new object cannot carry. The name (generated or given) must already be set.
pub fn prepare_create(
    object: &mut Object,
    kind: &Kind,
    rng: &Rng,
    now: std::time::SystemTime,
) -> Result<()> {
    let name = object.name().to_string();
    if object
        .meta()
        .resource_version
        .as_deref()
        .is_some_and(|rv| !rv.is_empty())
    {
        return Err(invalid(
            kind,
            &name,
            "metadata.resourceVersion",
            "must not be set on an object to be created",
        ));
    }
    validate_name(kind, &name)?;
    let namespace = namespace_for(kind, object.namespace(), &name)?;
    let meta = object.meta_mut();
    meta.namespace = namespace;
    meta.uid = Some(rng.uuid());
    meta.creation_timestamp = Some(to_k8s_time(now));
    meta.generation = Some(1);
    meta.deletion_timestamp = None;
    meta.deletion_grace_period_seconds = None;
    Ok(())
}

/// Calls the macro `$m` with every built-in kind that has a status subresource: one list
/// for [`copy_status`] and [`with_status`].
macro_rules! for_status_kinds {
    ($m:ident) => {
        $m!(
            Pod,
            Node,
            Namespace,
            Service,
            PersistentVolume,
            PersistentVolumeClaim,
            ResourceQuota,
            Deployment,
            ReplicaSet,
            StatefulSet,
            DaemonSet,
            Job,
            CronJob,
            HorizontalPodAutoscaler,
            VolumeAttachment
        )
    };
}

/// Copies the status of `from` into `to` (same kind). `false` when the kind has no status.
pub fn copy_status(from: &Object, to: &mut Object) -> bool {
    macro_rules! status_kinds {
        ($($variant:ident),*) => {
            match (from, to) {
                $((Object::$variant(f), Object::$variant(t)) => {
                    t.status = f.status.clone();
                    true
                })*
                (Object::Custom(f), Object::Custom(t)) => {
                    match f.data.get("status") {
                        Some(s) => t.data.insert("status".to_string(), s.clone()),
                        None => t.data.remove("status"),
                    };
                    true
                }
                _ => false,
            }
        };
    }
    for_status_kinds!(status_kinds)
}

/// What an update of the status subresource stores: `new`'s status on `old`'s metadata and
/// spec. Returns `None` for a kind without status, `Some(None)` when `new`'s status is the
/// stored one (nothing to write), and otherwise the object to store. Only metadata and spec
/// are copied; the status is moved out of `new`, and nothing is built when nothing changed.
pub fn with_status(old: &Object, new: Object) -> Option<Option<Object>> {
    macro_rules! status_kinds {
        ($($variant:ident),*) => {
            match (old, new) {
                $((Object::$variant(o), Object::$variant(mut n)) => {
                    if o.status == n.status {
                        return Some(None);
                    }
                    n.metadata = o.metadata.clone();
                    n.spec = o.spec.clone();
                    Some(Some(Object::$variant(n)))
                })*
                (Object::Custom(o), Object::Custom(mut n)) => {
                    if o.data.get("status") == n.data.get("status") {
                        return Some(None);
                    }
                    let status = n.data.remove("status");
                    n.metadata = o.metadata.clone();
                    n.api_version = o.api_version.clone();
                    n.kind = o.kind.clone();
                    n.data = o.data.clone();
                    match status {
                        Some(s) => n.data.insert("status".to_string(), s),
                        None => n.data.remove("status"),
                    };
                    Some(Some(Object::Custom(n)))
                }
                _ => None,
            }
        };
    }
    for_status_kinds!(status_kinds)
}

/// Whether `new` differs from `old` outside metadata (status must already be equal).
pub fn content_changed(old: &Object, new: &mut Object) -> bool {
    let meta = std::mem::replace(new.meta_mut(), old.meta().clone());
    let changed = *old != *new;
    *new.meta_mut() = meta;
    changed
}

/// Applies the update rules to the metadata of `new`: system fields keep their stored values,
/// and a finalizer may not be added to an object being deleted.
pub fn merge_update_meta(kind: &Kind, old: &ObjectMeta, new: &mut ObjectMeta) -> Result<()> {
    let name = old.name.as_deref().unwrap_or("");
    check_uid(kind, old, new)?;
    if old.deletion_timestamp.is_some() {
        let old_finalizers = old.finalizers.as_deref().unwrap_or_default();
        if let Some(added) = new
            .finalizers
            .iter()
            .flatten()
            .find(|f| !old_finalizers.contains(f))
        {
            return Err(invalid(
                kind,
                name,
                "metadata.finalizers",
                format!("cannot add finalizer {added:?}: the object is being deleted"),
            ));
        }
    }
    new.namespace = old.namespace.clone();
    new.uid = old.uid.clone();
    new.creation_timestamp = old.creation_timestamp.clone();
    new.deletion_timestamp = old.deletion_timestamp.clone();
    new.deletion_grace_period_seconds = old.deletion_grace_period_seconds;
    new.generation = old.generation;
    new.resource_version = old.resource_version.clone();
    if new.finalizers.as_ref().is_some_and(|f| f.is_empty()) {
        new.finalizers = None;
    }
    Ok(())
}

/// A uid given in a write must be the stored object's.
pub fn check_uid(kind: &Kind, old: &ObjectMeta, new: &ObjectMeta) -> Result<()> {
    match new.uid.as_deref().filter(|u| !u.is_empty()) {
        Some(uid) if Some(uid) != old.uid.as_deref() => Err(invalid(
            kind,
            old.name.as_deref().unwrap_or(""),
            "metadata.uid",
            format!(
                "{uid:?} is not the stored object's uid {:?}",
                old.uid.as_deref().unwrap_or("")
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether an update that produced `new` from `old` removes the object: its last finalizer
/// (for a Namespace, counting `spec.finalizers` too) went away while it was marked for
/// deletion with no grace period left (the API server's rule: a pod still in its grace period
/// stays until it is deleted with grace 0).
pub fn finalized(old: &Object, new: &Object) -> bool {
    let pending = |o: &Object| {
        o.meta().finalizers.as_ref().is_some_and(|f| !f.is_empty()) || has_spec_finalizers(o)
    };
    old.meta().deletion_timestamp.is_some()
        && old.meta().deletion_grace_period_seconds == Some(0)
        && pending(old)
        && !pending(new)
}

/// The finalizer in a new Namespace's `spec.finalizers`: the namespace controller removes it
/// once everything in the namespace is gone.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

/// Whether `object` is a Namespace with `spec.finalizers` left.
pub fn has_spec_finalizers(object: &Object) -> bool {
    match object {
        Object::Namespace(ns) => ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| !f.is_empty()),
        _ => false,
    }
}

/// What the API server sets on a new Namespace: the `kubernetes` finalizer and phase Active.
pub fn prepare_namespace(object: &mut Object) {
    let Object::Namespace(ns) = object else {
        return;
    };
    let finalizers = ns
        .spec
        .get_or_insert_with(Default::default)
        .finalizers
        .get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == NAMESPACE_FINALIZER) {
        finalizers.push(NAMESPACE_FINALIZER.to_string());
    }
    ns.status.get_or_insert_with(Default::default).phase = Some("Active".into());
}

/// An update of a Namespace that does not mention `spec.finalizers` keeps the stored ones
/// (an update that lists them, even empty, sets them: Wharf's `/finalize`).
pub fn keep_namespace_finalizers(old: &Object, new: &mut Object) {
    let (Object::Namespace(old), Object::Namespace(new)) = (old, new) else {
        return;
    };
    let stored = old.spec.as_ref().and_then(|s| s.finalizers.clone());
    let spec = new.spec.get_or_insert_with(Default::default);
    if spec.finalizers.is_none() {
        spec.finalizers = stored;
    }
}

/// A Namespace marked for deletion shows phase Terminating.
pub fn mark_namespace_terminating(object: &mut Object) {
    if let Object::Namespace(ns) = object {
        ns.status.get_or_insert_with(Default::default).phase = Some("Terminating".into());
    }
}

/// The grace period a delete gives `object`: pods bound to a node and not finished get the
/// requested period, else their `terminationGracePeriodSeconds`, else 30 s; everything else
/// (and unbound or finished pods) is deleted at once.
pub fn grace_period(object: &Object, requested: Option<i64>) -> i64 {
    let Object::Pod(pod) = object else {
        return 0;
    };
    let spec = pod.spec.as_ref();
    let bound = spec
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if !bound || finished {
        return 0;
    }
    let grace = requested
        .or_else(|| spec.and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(DEFAULT_POD_GRACE_SECONDS);
    // The API server turns a negative request into the shortest graceful period.
    if grace < 0 {
        1
    } else {
        grace
    }
}

/// The finalizer a propagation policy adds to the deleted owner, if any.
pub fn propagation_finalizer(propagation: Propagation) -> Option<&'static str> {
    match propagation {
        Propagation::Background => None,
        Propagation::Foreground => Some(FOREGROUND_FINALIZER),
        Propagation::Orphan => Some(ORPHAN_FINALIZER),
    }
}

/// Marks `meta` for deletion at `now + grace` (bumping generation the first time, as the API
/// server does so that controllers notice).
pub fn mark_deleted(meta: &mut ObjectMeta, now: std::time::SystemTime, grace: i64) {
    if meta.deletion_timestamp.is_none() {
        meta.generation = Some(meta.generation.unwrap_or(0) + 1);
    }
    meta.deletion_timestamp = Some(to_k8s_time(now + Duration::from_secs(grace.max(0) as u64)));
    meta.deletion_grace_period_seconds = Some(grace);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_v4_and_distinct() {
        let rng = Rng::new();
        let a = rng.uuid();
        let b = rng.uuid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn generated_names_use_the_kubernetes_alphabet() {
        let rng = Rng::new();
        let name = rng.generated_name("web-");
        assert_eq!(name.len(), 9);
        assert!(
            name[4..].bytes().all(|b| NAME_ALPHABET.contains(&b)),
            "{name}"
        );
        assert_eq!(rng.generated_name(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn names_follow_the_kind_rule() {
        assert!(validate_name(&Kind::Pod, "web-1.a").is_ok());
        assert!(validate_name(&Kind::Pod, "Web").is_err());
        assert!(validate_name(&Kind::Namespace, "a.b").is_err());
        assert!(validate_name(&Kind::ClusterRole, "system:controller:x").is_ok());
        let e = validate_name(&Kind::Pod, "").unwrap_err();
        assert!(e.to_string().contains("metadata.name"), "{e}");
    }
}

//! ResourceQuota admission: an object may be created only if, added to what its namespace
//! already uses, it stays within every quota's `hard` limits — object counts (`pods`,
//! `count/deployments.apps`, `services.nodeports`, ...) and pod compute resources
//! (`requests.cpu`, `limits.memory`, bare `cpu`/`memory`, extended resources).
//!
//! Usage is computed from the stored objects (terminal pods do not count) rather than read
//! from `status.used`, so it is right even without a quota controller; admissions in one
//! namespace are serialized by the caller, which makes the check-then-create exact within one
//! process.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::resources::{amount, container_amounts, pod_amounts, show, Side};
use crate::object::{Kind, Object};

/// The quota resource names under which an object of `kind` is counted.
pub(crate) fn count_names(kind: &Kind) -> Vec<String> {
    let lower = kind.name().to_lowercase();
    let plural = if lower.ends_with('s') {
        lower
    } else {
        format!("{lower}s")
    };
    let mut names = vec![match kind.api_version().rsplit_once('/') {
        Some((group, _)) => format!("count/{plural}.{group}"),
        None => format!("count/{plural}"),
    }];
    if !kind.api_version().contains('/')
        && matches!(
            plural.as_str(),
            "pods"
                | "services"
                | "configmaps"
                | "secrets"
                | "persistentvolumeclaims"
                | "resourcequotas"
        )
    {
        names.push(plural);
    }
    names
}

/// How much of quota resource `name` one object uses, or `None` when the resource does not
/// concern objects of its kind.
pub(crate) fn usage(object: &Object, name: &str) -> Option<i128> {
    let kind = object.kind();
    if count_names(&kind).iter().any(|n| n == name) {
        return Some(1000);
    }
    match object {
        Object::Service(svc) => {
            let spec = svc.spec.as_ref();
            let ty = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
            match name {
                "services.loadbalancers" => Some(if ty == "LoadBalancer" { 1000 } else { 0 }),
                "services.nodeports" => {
                    let ports = spec.and_then(|s| s.ports.as_ref()).map_or(0, Vec::len);
                    let count = if ty == "NodePort" || ty == "LoadBalancer" {
                        ports
                    } else {
                        0
                    };
                    Some(count as i128 * 1000)
                }
                _ => None,
            }
        }
        Object::Pod(pod) => {
            let spec = pod.spec.as_ref()?;
            let (side, resource) = if let Some(r) = name.strip_prefix("requests.") {
                (Side::Requests, r)
            } else if let Some(r) = name.strip_prefix("limits.") {
                (Side::Limits, r)
            } else if matches!(name, "cpu" | "memory" | "ephemeral-storage")
                || name.starts_with("hugepages-")
            {
                (Side::Requests, name)
            } else {
                return None;
            };
            Some(pod_amounts(spec, side).get(resource).copied().unwrap_or(0))
        }
        Object::PersistentVolumeClaim(pvc) => {
            let storage = || {
                pvc.spec
                    .as_ref()
                    .and_then(|s| s.resources.as_ref())
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get("storage"))
                    .and_then(amount)
                    .unwrap_or(0)
            };
            match name {
                "requests.storage" => Some(storage()),
                _ => {
                    let class = pvc
                        .spec
                        .as_ref()
                        .and_then(|s| s.storage_class_name.as_deref())?;
                    let prefix = format!("{class}.storageclass.storage.k8s.io/");
                    match name.strip_prefix(&prefix)? {
                        "requests.storage" => Some(storage()),
                        "persistentvolumeclaims" => Some(1000),
                        _ => None,
                    }
                }
            }
        }
        _ => None,
    }
}

/// Whether a stored object still uses quota: terminal pods do not.
pub(crate) fn counts(object: &Object) -> bool {
    match object {
        Object::Pod(pod) => !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ),
        _ => true,
    }
}

/// Whether `quota`'s scopes select `object`. Scopes are about pods; a scoped quota ignores
/// other kinds. Scopes Wharf does not evaluate (PriorityClass, ...) select every pod, which
/// errs on the side of enforcing.
pub(crate) fn selects(quota: &ResourceQuota, object: &Object) -> bool {
    let scopes: Vec<&str> = quota
        .spec
        .iter()
        .flat_map(|s| s.scopes.iter().flatten())
        .map(String::as_str)
        .collect();
    if scopes.is_empty() {
        return true;
    }
    let Object::Pod(pod) = object else {
        return false;
    };
    scopes.iter().all(|scope| match *scope {
        "BestEffort" => best_effort(pod),
        "NotBestEffort" => !best_effort(pod),
        "Terminating" => terminating(pod),
        "NotTerminating" => !terminating(pod),
        _ => true,
    })
}

fn best_effort(pod: &Pod) -> bool {
    pod.spec.iter().all(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .all(|c| {
                container_amounts(c, Side::Requests).is_empty()
                    && container_amounts(c, Side::Limits).is_empty()
            })
    })
}

fn terminating(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .is_some_and(|d| d >= 0)
}

/// Checks that `object` fits in `quota` given the namespace's `existing` objects of its kind.
/// Returns the message of the refusal.
pub(crate) fn check(
    quota: &ResourceQuota,
    object: &Object,
    existing: &[Arc<Object>],
) -> Result<(), String> {
    let quota_name = quota.metadata.name.as_deref().unwrap_or("");
    let hard = quota.spec.as_ref().and_then(|s| s.hard.as_ref());
    let Some(hard) = hard.filter(|_| selects(quota, object)) else {
        return Ok(());
    };
    if let Object::Pod(pod) = object {
        let missing = missing_compute(pod, hard);
        if !missing.is_empty() {
            return Err(format!(
                "failed quota: {quota_name}: must specify {}",
                missing.join("; ")
            ));
        }
    }
    let mut requested = Vec::new();
    let mut used = Vec::new();
    let mut limited = Vec::new();
    for (name, limit) in hard {
        let Some(delta) = usage(object, name).filter(|d| *d > 0) else {
            continue;
        };
        let Some(limit) = amount(limit) else { continue };
        let in_use: i128 = existing
            .iter()
            .filter(|o| counts(o) && selects(quota, o) && o.uid() != object.uid())
            .filter_map(|o| usage(o, name))
            .sum();
        if in_use + delta > limit {
            requested.push(format!("{name}={}", show(delta)));
            used.push(format!("{name}={}", show(in_use)));
            limited.push(format!("{name}={}", show(limit)));
        }
    }
    if requested.is_empty() {
        return Ok(());
    }
    Err(format!(
        "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
        requested.join(","),
        used.join(","),
        limited.join(",")
    ))
}

/// Compute resources the quota tracks that some container does not state: Kubernetes
/// refuses such a pod, since its usage could not be accounted.
fn missing_compute(pod: &Pod, hard: &BTreeMap<String, Quantity>) -> Vec<String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in hard.keys() {
        let (side, resource) = match name.as_str() {
            "cpu" | "requests.cpu" => (Side::Requests, "cpu"),
            "memory" | "requests.memory" => (Side::Requests, "memory"),
            "limits.cpu" => (Side::Limits, "cpu"),
            "limits.memory" => (Side::Limits, "memory"),
            _ => continue,
        };
        let lacking: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .filter(|c| !container_amounts(c, side).contains_key(resource))
            .map(|c| c.name.as_str())
            .collect();
        if !lacking.is_empty() {
            out.push(format!("{name} for: {}", lacking.join(",")));
        }
    }
    out
}

/// The quota's `status`: `hard` as given, `used` recomputed from `objects` (the namespace's
/// objects of `created`'s kind) for the resources that concern that kind; other resources
/// keep their recorded usage. `None` when nothing changes.
pub(crate) fn status(
    quota: &ResourceQuota,
    created: &Object,
    objects: &[Arc<Object>],
) -> Option<ResourceQuota> {
    let hard = quota.spec.as_ref()?.hard.clone()?;
    let mut next = quota.clone();
    let status = next.status.get_or_insert_with(Default::default);
    let mut used = status.used.clone().unwrap_or_default();
    for name in hard.keys() {
        if usage(created, name).is_none() {
            continue;
        }
        let total: i128 = objects
            .iter()
            .filter(|o| counts(o) && selects(quota, o))
            .filter_map(|o| usage(o, name))
            .sum();
        used.insert(name.clone(), Quantity(show(total)));
    }
    status.hard = Some(hard);
    status.used = Some(used);
    (next != *quota).then_some(next)
}

//! The downward API: the values of a pod's `fieldRef` and `resourceFieldRef` selectors, for
//! environment variables (here, through [`super::config`]) and for downwardAPI and projected
//! volume files (in the storage crate). This is the one implementation of both.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity;

/// Where a value is used: volumes may only read the pod's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// An environment variable (`env[].valueFrom`).
    Env,
    /// A downwardAPI or projected volume file.
    Volume,
}

/// What a field path reads besides the pod object: the pod's and the node's addresses.
#[derive(Clone, Copy, Debug, Default)]
pub struct Addresses<'a> {
    /// The pod's IPs (IPv4 first).
    pub pod_ips: &'a [IpAddr],
    /// The node's IP.
    pub host_ip: Option<IpAddr>,
}

/// `key="value"` lines, sorted by key, as kubelet formats labels and annotations.
fn format_map(map: Option<&std::collections::BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a `fieldRef.fieldPath`. Errors name what is supported for that use.
pub fn field_value(
    pod: &Pod,
    path: &str,
    usage: Use,
    addresses: Addresses<'_>,
) -> Result<String, String> {
    let meta = &pod.metadata;
    let subscript = |prefix: &str| -> Option<String> {
        let rest = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(rest.to_string())
    };
    let join = |ips: &[IpAddr]| {
        ips.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let spec = pod.spec.as_ref();
    let value = match (path, usage) {
        ("metadata.name", _) => meta.name.clone().unwrap_or_default(),
        ("metadata.namespace", _) => meta.namespace.clone().unwrap_or_default(),
        ("metadata.uid", _) => meta.uid.clone().unwrap_or_default(),
        ("metadata.labels", _) => format_map(meta.labels.as_ref()),
        ("metadata.annotations", _) => format_map(meta.annotations.as_ref()),
        ("spec.nodeName", Use::Env) => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ("spec.serviceAccountName", Use::Env) => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        ("status.podIP", Use::Env) => addresses
            .pod_ips
            .first()
            .map(|i| i.to_string())
            .unwrap_or_default(),
        ("status.podIPs", Use::Env) => join(addresses.pod_ips),
        ("status.hostIP" | "status.hostIPs", Use::Env) => {
            addresses.host_ip.map(|i| i.to_string()).unwrap_or_default()
        }
        _ => {
            if let Some(key) = subscript("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(match usage {
                    Use::Volume => format!(
                        "{path:?} is not supported in volumes (metadata.name, metadata.namespace, \
                         metadata.uid, metadata.labels, metadata.annotations and their ['key'] \
                         forms are)"
                    ),
                    Use::Env => format!("{path:?} is not a supported field path"),
                });
            }
        }
    };
    Ok(value)
}

/// The value of a `resourceFieldRef`: a container's `limits.<name>` or `requests.<name>`
/// divided by `divisor` (default 1), rounded up. An unset limit reads as the node's
/// allocatable (`allocatable(name)`, in the resource's units: millicores for CPU; an error
/// when unknown); an unset request as the limit when there is one, else 0.
pub fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&Quantity>,
    allocatable: impl Fn(&str) -> Option<i64>,
) -> Result<String, String> {
    let (section, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("resource {resource:?} is not limits.<name> or requests.<name>"))?;
    let res = container.resources.as_ref();
    let get = |which: &str| {
        res.and_then(|r| match which {
            "limits" => r.limits.as_ref(),
            _ => r.requests.as_ref(),
        })
        .and_then(|m| m.get(name))
    };
    let parse =
        |q: &Quantity| quantity::resource_value(name, q).map_err(|e| format!("{resource}: {e}"));
    let value: i64 = match section {
        "limits" => match get("limits") {
            Some(q) => parse(q)?,
            None => allocatable(name).ok_or_else(|| {
                format!(
                    "container {:?} has no limit for {name} and the node's allocatable is unknown",
                    container.name
                )
            })?,
        },
        "requests" => match get("requests").or_else(|| get("limits")) {
            Some(q) => parse(q)?,
            None => 0,
        },
        other => return Err(format!("resource kind {other:?} is not limits or requests")),
    };
    // CPU values are in millicores, others in units; the divisor is in the same scale.
    let div = match divisor {
        Some(d) => parse(d)?,
        None if name == "cpu" => 1000,
        None => 1,
    };
    if div <= 0 {
        return Err(format!("{resource}: the divisor must be positive"));
    }
    Ok(((value.max(0) + div - 1) / div).to_string())
}

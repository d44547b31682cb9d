//! LimitRange admission (the API server's `LimitRanger` plugin) for Pods: containers without
//! a limit or request get the namespace's defaults, then every container, and the pod as a
//! whole, must stay within each LimitRange's min, max and max limit/request ratio.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, LimitRange, LimitRangeItem, PersistentVolumeClaim, Pod,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::resources::{amount, container_amounts, pod_amounts, show, Amounts, Side};
use crate::manifest::FieldError;

/// The annotation naming what LimitRanger defaulted, as Kubernetes writes it.
pub const LIMIT_RANGER_ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// Sets the default requests and limits of `ranges` on the pod's containers that lack them.
pub fn apply_defaults(pod: &mut Pod, ranges: &[LimitRange]) {
    let items: Vec<&LimitRangeItem> = container_items(ranges).collect();
    if items.is_empty() {
        return;
    }
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let mut notes = Vec::new();
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for c in containers {
        let mut set_requests = Vec::new();
        let mut set_limits = Vec::new();
        for item in &items {
            let resources = c.resources.get_or_insert_with(Default::default);
            fill(
                &mut resources.limits,
                item.default.as_ref(),
                &mut set_limits,
            );
            fill(
                &mut resources.requests,
                item.default_request.as_ref(),
                &mut set_requests,
            );
        }
        if !set_requests.is_empty() {
            notes.push(format!(
                "{} request for container {}",
                set_requests.join(", "),
                c.name
            ));
        }
        if !set_limits.is_empty() {
            notes.push(format!(
                "{} limit for container {}",
                set_limits.join(", "),
                c.name
            ));
        }
    }
    if !notes.is_empty() {
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                LIMIT_RANGER_ANNOTATION.to_string(),
                format!("LimitRanger plugin set: {}", notes.join("; ")),
            );
    }
}

fn fill(
    list: &mut Option<BTreeMap<String, Quantity>>,
    defaults: Option<&BTreeMap<String, Quantity>>,
    set: &mut Vec<String>,
) {
    for (name, value) in defaults.into_iter().flatten() {
        let list = list.get_or_insert_with(Default::default);
        if !list.contains_key(name) {
            list.insert(name.clone(), value.clone());
            set.push(name.clone());
        }
    }
}

fn container_items(ranges: &[LimitRange]) -> impl Iterator<Item = &LimitRangeItem> {
    ranges
        .iter()
        .filter_map(|r| r.spec.as_ref())
        .flat_map(|s| s.limits.iter())
        .filter(|item| item.type_ == "Container")
}

/// Checks the (defaulted) pod against every LimitRange. Returns the violations.
pub fn check(pod: &Pod, ranges: &[LimitRange]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return errors;
    };
    for range in ranges {
        let range_name = range.metadata.name.as_deref().unwrap_or("");
        for item in range.spec.iter().flat_map(|s| s.limits.iter()) {
            match item.type_.as_str() {
                "Container" => {
                    let containers = spec
                        .init_containers
                        .iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c))
                        .chain(
                            spec.containers
                                .iter()
                                .enumerate()
                                .map(|(i, c)| (format!("spec.containers[{i}]"), c)),
                        );
                    for (path, c) in containers {
                        check_container(c, &path, item, range_name, &mut errors);
                    }
                }
                "Pod" => {
                    let requests = pod_amounts(spec, Side::Requests);
                    let limits = pod_amounts(spec, Side::Limits);
                    let all_limited = |name: &str| {
                        spec.containers
                            .iter()
                            .chain(spec.init_containers.iter().flatten())
                            .all(|c| container_amounts(c, Side::Limits).contains_key(name))
                    };
                    check_bounds(
                        &requests,
                        &limits,
                        &all_limited,
                        item,
                        "Pod",
                        "spec.containers",
                        range_name,
                        &mut errors,
                    );
                }
                _ => {}
            }
        }
    }
    errors
}

fn check_container(
    c: &Container,
    path: &str,
    item: &LimitRangeItem,
    range: &str,
    errors: &mut Vec<FieldError>,
) {
    let requests = container_amounts(c, Side::Requests);
    let limits = container_amounts(c, Side::Limits);
    let has_limit = |name: &str| limits.contains_key(name);
    check_bounds(
        &requests,
        &limits,
        &has_limit,
        item,
        "Container",
        &format!("{path}.resources"),
        range,
        errors,
    );
}

/// Checks a PersistentVolumeClaim's storage request against the `PersistentVolumeClaim` items
/// of every LimitRange (min and max of `requests.storage`).
pub fn check_claim(claim: &PersistentVolumeClaim, ranges: &[LimitRange]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let resources = claim.spec.as_ref().and_then(|s| s.resources.as_ref());
    let requests: Amounts = resources
        .and_then(|r| r.requests.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(name, q)| Some((name.clone(), amount(q)?)))
        .collect();
    for range in ranges {
        let range_name = range.metadata.name.as_deref().unwrap_or("");
        for item in range.spec.iter().flat_map(|s| s.limits.iter()) {
            if item.type_ != "PersistentVolumeClaim" {
                continue;
            }
            let bounds = [(&item.min, "minimum"), (&item.max, "maximum")];
            for (bound, word) in bounds {
                for (name, value) in bound.iter().flatten() {
                    let Some(value) = amount(value) else { continue };
                    let field = format!("spec.resources.requests.{name}");
                    let message = match requests.get(name) {
                        None => format!(
                            "{word} {name} usage per PersistentVolumeClaim is {}.  No request is specified",
                            show(value)
                        ),
                        Some(&r) if (word == "minimum" && r < value) || (word == "maximum" && r > value) => {
                            format!(
                                "{word} {name} usage per PersistentVolumeClaim is {}, but request is {}",
                                show(value),
                                show(r)
                            )
                        }
                        Some(_) => continue,
                    };
                    errors.push(FieldError {
                        field,
                        message: format!("{message} (LimitRange {range_name:?})"),
                    });
                }
            }
        }
    }
    errors
}

#[allow(clippy::too_many_arguments)]
fn check_bounds(
    requests: &Amounts,
    limits: &Amounts,
    has_limit: &dyn Fn(&str) -> bool,
    item: &LimitRangeItem,
    scope: &str,
    path: &str,
    range: &str,
    errors: &mut Vec<FieldError>,
) {
    let mut err = |field: String, message: String| {
        errors.push(FieldError {
            field,
            message: format!("{message} (LimitRange {range:?})"),
        })
    };
    for (name, min) in item.min.iter().flatten() {
        let Some(min) = amount(min) else { continue };
        match requests.get(name) {
            None => err(
                format!("{path}.requests.{name}"),
                format!(
                    "minimum {name} usage per {scope} is {}.  No request is specified",
                    show(min)
                ),
            ),
            Some(&r) if r < min => err(
                format!("{path}.requests.{name}"),
                format!(
                    "minimum {name} usage per {scope} is {}, but request is {}",
                    show(min),
                    show(r)
                ),
            ),
            _ => {}
        }
        if let Some(&l) = limits.get(name) {
            if l < min {
                err(
                    format!("{path}.limits.{name}"),
                    format!(
                        "minimum {name} usage per {scope} is {}, but limit is {}",
                        show(min),
                        show(l)
                    ),
                );
            }
        }
    }
    for (name, max) in item.max.iter().flatten() {
        let Some(max) = amount(max) else { continue };
        match limits.get(name) {
            Some(&l) if has_limit(name) => {
                if l > max {
                    err(
                        format!("{path}.limits.{name}"),
                        format!(
                            "maximum {name} usage per {scope} is {}, but limit is {}",
                            show(max),
                            show(l)
                        ),
                    );
                }
            }
            _ => err(
                format!("{path}.limits.{name}"),
                format!(
                    "maximum {name} usage per {scope} is {}.  No limit is specified",
                    show(max)
                ),
            ),
        }
        if let Some(&r) = requests.get(name) {
            if r > max {
                err(
                    format!("{path}.requests.{name}"),
                    format!(
                        "maximum {name} usage per {scope} is {}, but request is {}",
                        show(max),
                        show(r)
                    ),
                );
            }
        }
    }
    for (name, ratio) in item.max_limit_request_ratio.iter().flatten() {
        let Some(ratio) = amount(ratio) else { continue };
        let (Some(&l), Some(&r)) = (limits.get(name), requests.get(name).filter(|r| **r > 0))
        else {
            err(
                format!("{path}.limits.{name}"),
                format!("{name} max limit to request ratio per {scope} is {}, but no request is specified or request is 0", show(ratio)),
            );
            continue;
        };
        // limit / request > ratio, in thousandths: l * 1000 / r > ratio.
        if l * 1000 > ratio * r {
            err(
                format!("{path}.limits.{name}"),
                format!(
                    "{name} max limit to request ratio per {scope} is {}, but provided ratio is {:.6}",
                    show(ratio),
                    l as f64 / r as f64
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{LimitRangeSpec, PodSpec, ResourceRequirements};

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    fn range(item: LimitRangeItem) -> LimitRange {
        LimitRange {
            metadata: Default::default(),
            spec: Some(LimitRangeSpec { limits: vec![item] }),
        }
    }

    #[test]
    fn defaults_fill_only_what_is_missing_and_say_so() {
        let ranges = [range(LimitRangeItem {
            type_: "Container".into(),
            default: Some([("cpu".to_string(), q("500m"))].into()),
            default_request: Some(
                [
                    ("cpu".to_string(), q("100m")),
                    ("memory".to_string(), q("64Mi")),
                ]
                .into(),
            ),
            ..Default::default()
        })];
        let mut pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some([("memory".to_string(), q("128Mi"))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        apply_defaults(&mut pod, &ranges);
        let r = pod.spec.as_ref().unwrap().containers[0]
            .resources
            .clone()
            .unwrap();
        assert_eq!(r.requests.as_ref().unwrap()["cpu"], q("100m"));
        assert_eq!(r.requests.as_ref().unwrap()["memory"], q("128Mi"));
        assert_eq!(r.limits.as_ref().unwrap()["cpu"], q("500m"));
        assert_eq!(
            pod.metadata.annotations.unwrap()[LIMIT_RANGER_ANNOTATION],
            "LimitRanger plugin set: cpu request for container web; cpu limit for container web"
        );
    }

    #[test]
    fn ratio_is_checked() {
        let ranges = [range(LimitRangeItem {
            type_: "Container".into(),
            max_limit_request_ratio: Some([("cpu".to_string(), q("2"))].into()),
            ..Default::default()
        })];
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some([("cpu".to_string(), q("250m"))].into()),
                        limits: Some([("cpu".to_string(), q("1"))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let errors = check(&pod, &ranges);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "spec.containers[0].resources.limits.cpu");
        assert!(errors[0].message.starts_with(
            "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000"
        ));
    }
}

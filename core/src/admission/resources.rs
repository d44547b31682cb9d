//! Resource arithmetic shared by LimitRange and ResourceQuota admission: a pod's effective
//! requests and limits, and quantities printed back the way Kubernetes prints them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::parse_milli;

/// Resource name → amount in thousandths of its unit.
pub(crate) type Amounts = BTreeMap<String, i128>;

/// Which half of a container's resources.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Requests,
    Limits,
}

pub(crate) fn container_amounts(c: &Container, side: Side) -> Amounts {
    let list = c.resources.as_ref().and_then(|r| match side {
        Side::Requests => r.requests.as_ref(),
        Side::Limits => r.limits.as_ref(),
    });
    list.into_iter()
        .flatten()
        .filter_map(|(name, q)| Some((name.clone(), parse_milli(&q.0).ok()?)))
        .collect()
}

/// A pod's effective requests or limits, as the scheduler and quota count them: the app
/// containers and sidecars (restartable init containers) run together; each regular init
/// container runs alone beside the sidecars started before it; the larger wins, plus the
/// pod overhead.
pub(crate) fn pod_amounts(spec: &PodSpec, side: Side) -> Amounts {
    let mut running = Amounts::new();
    let mut peak_init = Amounts::new();
    let mut sidecars = Amounts::new();
    for c in spec.init_containers.iter().flatten() {
        let amounts = container_amounts(c, side);
        if c.restart_policy.as_deref() == Some("Always") {
            add(&mut sidecars, &amounts);
        } else {
            let mut during = sidecars.clone();
            add(&mut during, &amounts);
            max_into(&mut peak_init, &during);
        }
    }
    for c in &spec.containers {
        add(&mut running, &container_amounts(c, side));
    }
    add(&mut running, &sidecars);
    max_into(&mut running, &peak_init);
    if let Some(overhead) = &spec.overhead {
        for (name, q) in overhead {
            if let Ok(v) = parse_milli(&q.0) {
                *running.entry(name.clone()).or_default() += v;
            }
        }
    }
    running
}

fn add(into: &mut Amounts, other: &Amounts) {
    for (name, v) in other {
        *into.entry(name.clone()).or_default() += v;
    }
}

fn max_into(into: &mut Amounts, other: &Amounts) {
    for (name, v) in other {
        let slot = into.entry(name.clone()).or_default();
        *slot = (*slot).max(*v);
    }
}

/// An amount in thousandths, printed as a quantity: `500m`, `2`, `128Mi`, `1G`.
pub(crate) fn show(milli: i128) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let units = milli / 1000;
    if units != 0 {
        for (suffix, shift) in [
            ("Ei", 60),
            ("Pi", 50),
            ("Ti", 40),
            ("Gi", 30),
            ("Mi", 20),
            ("Ki", 10),
        ] {
            if units % (1i128 << shift) == 0 {
                return format!("{}{suffix}", units >> shift);
            }
        }
    }
    units.to_string()
}

/// A quantity's amount in thousandths, if it parses.
pub(crate) fn amount(q: &Quantity) -> Option<i128> {
    parse_milli(&q.0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;

    fn container(cpu: &str, sidecar: bool) -> Container {
        Container {
            name: "c".into(),
            restart_policy: sidecar.then(|| "Always".to_string()),
            resources: Some(ResourceRequirements {
                requests: Some([("cpu".to_string(), Quantity(cpu.into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn init_containers_peak_against_the_running_set() {
        let spec = PodSpec {
            init_containers: Some(vec![container("100m", true), container("2", false)]),
            containers: vec![container("500m", false), container("250m", false)],
            ..Default::default()
        };
        // Regular init: 2 + sidecar 0.1 = 2.1 > running 0.5 + 0.25 + 0.1.
        assert_eq!(pod_amounts(&spec, Side::Requests)["cpu"], 2100);
        let spec = PodSpec {
            init_containers: Some(vec![container("100m", false)]),
            ..spec
        };
        assert_eq!(pod_amounts(&spec, Side::Requests)["cpu"], 750);
    }

    #[test]
    fn amounts_print_as_quantities() {
        assert_eq!(show(500), "500m");
        assert_eq!(show(2000), "2");
        assert_eq!(show(128 * 1024 * 1024 * 1000), "128Mi");
        assert_eq!(show(1_000_000), "1000");
        assert_eq!(show(0), "0");
    }
}

//! The arithmetic of rollouts, free of IO: maxSurge/maxUnavailable resolution, how far to
//! scale the new ReplicaSet up and the old ones down, and proportional scaling.
//!
//! Each function mirrors the rule of Kubernetes' deployment controller of the same purpose.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A value that is a count or a percentage of `total`, rounded up or down.
pub fn resolve(value: Option<&IntOrString>, default: &str, total: i32, round_up: bool) -> i32 {
    let owned;
    let value = match value {
        Some(v) => v,
        None => {
            owned = IntOrString::String(default.to_string());
            &owned
        }
    };
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let Some(pct) = s
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<i64>().ok())
            else {
                return s.trim().parse().unwrap_or(0);
            };
            let scaled = pct * total as i64;
            let v = if round_up {
                (scaled + 99).div_euclid(100)
            } else {
                scaled.div_euclid(100)
            };
            v as i32
        }
    }
}

/// `(maxSurge, maxUnavailable)` for `replicas`: surge rounds up, unavailable rounds down, and
/// both zero becomes unavailable 1 so that a rollout can progress (`ResolveFenceposts`).
pub fn fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    replicas: i32,
) -> (i32, i32) {
    let surge = resolve(max_surge, "25%", replicas, true).max(0);
    let mut unavailable = resolve(max_unavailable, "25%", replicas, false).max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

/// The number of replicas the new ReplicaSet may have now: up to `replicas + maxSurge` pods
/// in total across all ReplicaSets (`NewRSNewReplicas`).
pub fn new_rs_replicas(replicas: i32, max_surge: i32, all_rs_replicas: i32, new_rs: i32) -> i32 {
    let max_total = replicas + max_surge;
    if all_rs_replicas >= max_total {
        return new_rs;
    }
    let scale_up = (max_total - all_rs_replicas).min(replicas - new_rs);
    new_rs + scale_up.max(0)
}

/// How many old pods may be removed without going below `replicas - maxUnavailable`
/// available, counting the new ReplicaSet's not-yet-available pods as unavailable.
pub fn max_scaled_down(
    replicas: i32,
    max_unavailable: i32,
    all_rs_replicas: i32,
    new_rs_replicas: i32,
    new_rs_available: i32,
) -> i32 {
    let min_available = replicas - max_unavailable;
    let new_unavailable = new_rs_replicas - new_rs_available;
    all_rs_replicas - min_available - new_unavailable
}

/// The change to a ReplicaSet's size when a deployment of `deployment_replicas` (plus surge)
/// is resized, in proportion to the size the ReplicaSet was given for `annotated_max` pods
/// (`getReplicaSetFraction`).
pub fn proportion(
    rs_replicas: i32,
    deployment_replicas: i32,
    max_surge: i32,
    annotated_max: i32,
) -> i32 {
    if deployment_replicas == 0 {
        return -rs_replicas;
    }
    if annotated_max == 0 {
        return 0;
    }
    let target = deployment_replicas + max_surge;
    let size = (rs_replicas as f64 * target as f64 / annotated_max as f64).round() as i32;
    size - rs_replicas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        let pct = |s: &str| IntOrString::String(s.into());
        let table = [
            // (surge, unavailable, replicas) -> (surge, unavailable)
            (None, None, 10, (3, 2)),
            (None, None, 4, (1, 1)),
            (None, None, 1, (1, 0)),
            (Some(pct("0%")), Some(pct("0%")), 10, (0, 1)),
            (Some(IntOrString::Int(2)), Some(pct("50%")), 5, (2, 2)),
            (Some(pct("100%")), Some(IntOrString::Int(0)), 3, (3, 0)),
        ];
        for (surge, unavailable, replicas, want) in table {
            assert_eq!(
                fenceposts(surge.as_ref(), unavailable.as_ref(), replicas),
                want,
                "{surge:?} {unavailable:?} {replicas}"
            );
        }
    }

    #[test]
    fn new_replica_set_grows_within_surge() {
        // 10 replicas, surge 3: from 10 old pods the new RS may get 3.
        assert_eq!(new_rs_replicas(10, 3, 10, 0), 3);
        assert_eq!(new_rs_replicas(10, 3, 13, 3), 3);
        assert_eq!(new_rs_replicas(10, 3, 11, 3), 5);
        assert_eq!(new_rs_replicas(10, 3, 8, 8), 10);
        assert_eq!(max_scaled_down(10, 2, 13, 3, 0), 2);
        assert_eq!(max_scaled_down(10, 2, 13, 3, 3), 5);
    }

    #[test]
    fn proportional_shares() {
        // A ReplicaSet with 5 of 10+3 pods, deployment grown to 20 (+5 surge): 5*25/13.
        assert_eq!(proportion(5, 20, 5, 13), 5);
        assert_eq!(proportion(5, 0, 0, 13), -5);
    }
}

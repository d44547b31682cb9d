//! How fast an autoscaler may move: stabilization windows and scaling policies
//! (`spec.behavior`), with Kubernetes' defaults when a direction is not configured.
//!
//! - Scale up: no stabilization; policies 100 % and 4 pods per 15 s, the larger wins.
//! - Scale down: a 300 s stabilization window (the highest recommendation of the last 5
//!   minutes is used); policy 100 % per 15 s.
//!
//! The autoscaler keeps, per HPA, its recent recommendations and scale events in a
//! [`History`]; these live in memory, as in kube-controller-manager.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior,
};

/// Default scale-down stabilization window.
pub const DEFAULT_SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);

/// One direction's rules with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    /// Stabilization window.
    pub window: Duration,
    /// `Max`, `Min` or `Disabled`.
    pub select: String,
    /// (type `Pods`/`Percent`, value, period).
    pub policies: Vec<(String, i32, Duration)>,
}

fn policy(type_: &str, value: i32, secs: u64) -> (String, i32, Duration) {
    (type_.to_string(), value, Duration::from_secs(secs))
}

fn rules(given: Option<&HPAScalingRules>, default: Rules) -> Rules {
    let Some(given) = given else {
        return default;
    };
    Rules {
        window: given
            .stabilization_window_seconds
            .map_or(default.window, |s| Duration::from_secs(s.max(0) as u64)),
        select: given.select_policy.clone().unwrap_or(default.select),
        policies: match &given.policies {
            Some(p) if !p.is_empty() => p
                .iter()
                .map(
                    |HPAScalingPolicy {
                         type_,
                         value,
                         period_seconds,
                     }| {
                        (
                            type_.clone(),
                            *value,
                            Duration::from_secs((*period_seconds).max(1) as u64),
                        )
                    },
                )
                .collect(),
            _ => default.policies,
        },
    }
}

/// The scale-up and scale-down rules of `behavior`, with defaults.
pub fn resolve(behavior: Option<&HorizontalPodAutoscalerBehavior>) -> (Rules, Rules) {
    let up = Rules {
        window: Duration::ZERO,
        select: "Max".into(),
        policies: vec![policy("Percent", 100, 15), policy("Pods", 4, 15)],
    };
    let down = Rules {
        window: DEFAULT_SCALE_DOWN_WINDOW,
        select: "Max".into(),
        policies: vec![policy("Percent", 100, 15)],
    };
    (
        rules(behavior.and_then(|b| b.scale_up.as_ref()), up),
        rules(behavior.and_then(|b| b.scale_down.as_ref()), down),
    )
}

/// An HPA's recent recommendations and scale events.
#[derive(Clone, Debug, Default)]
pub struct History {
    recommendations: Vec<(SystemTime, i32)>,
    /// (when, replicas added) and (when, replicas removed).
    ups: Vec<(SystemTime, i32)>,
    downs: Vec<(SystemTime, i32)>,
}

/// Why the final count differs from (or equals) the stabilized one: a ScalingLimited reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Whether a limit applied.
    pub limited: bool,
    /// Reason, e.g. `ScaleUpLimit`, `TooManyReplicas`, `DesiredWithinRange`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: &'static str,
}

/// The outcome of [`History::normalize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    /// The replica count to set.
    pub replicas: i32,
    /// The recommendation after stabilization, before rate limits.
    pub stabilized: i32,
    /// AbleToScale reason (`ScaleUpStabilized`, `ScaleDownStabilized`, `ReadyForNewScale`).
    pub stabilization_reason: &'static str,
    /// The rate or bounds limit that applied.
    pub limit: Limit,
}

fn change_in(events: &[(SystemTime, i32)], period: Duration, now: SystemTime) -> i32 {
    events
        .iter()
        .filter(|(at, _)| now.duration_since(*at).unwrap_or_default() < period)
        .map(|(_, n)| n)
        .sum()
}

impl History {
    /// Applies stabilization and rate limits to the metrics' recommendation `desired`, given
    /// the `current` replica count and the `[min, max]` bounds, and records `desired`.
    pub fn normalize(
        &mut self,
        (up, down): &(Rules, Rules),
        current: i32,
        desired: i32,
        (min, max): (i32, i32),
        now: SystemTime,
    ) -> Normalized {
        // Stabilize: up to the lowest recommendation inside the up window, down to the
        // highest inside the down window.
        let within =
            |at: SystemTime, window: Duration| now.duration_since(at).unwrap_or_default() < window;
        let mut up_rec = desired;
        let mut down_rec = desired;
        for &(at, rec) in &self.recommendations {
            if within(at, up.window) {
                up_rec = up_rec.min(rec);
            }
            if within(at, down.window) {
                down_rec = down_rec.max(rec);
            }
        }
        let longest = up.window.max(down.window);
        self.recommendations.retain(|(at, _)| within(*at, longest));
        self.recommendations.push((now, desired));
        let stabilized = current.max(up_rec).min(down_rec);
        let stabilization_reason = if stabilized == desired {
            "ReadyForNewScale"
        } else if desired >= current {
            "ScaleUpStabilized"
        } else {
            "ScaleDownStabilized"
        };

        // Rate limits.
        let period_start = |period: Duration| {
            current - change_in(&self.ups, period, now) + change_in(&self.downs, period, now)
        };
        let within_range = Limit {
            limited: false,
            reason: "DesiredWithinRange",
            message: "the desired count is within the acceptable range",
        };
        let (replicas, limit) = if stabilized > current {
            let limit = if up.select == "Disabled" {
                current
            } else {
                let proposals = up.policies.iter().map(|(type_, value, period)| {
                    let start = period_start(*period);
                    if type_ == "Pods" {
                        start + value
                    } else {
                        (start as f64 * (1.0 + *value as f64 / 100.0)).ceil() as i32
                    }
                });
                let chosen = if up.select == "Min" {
                    proposals.min()
                } else {
                    proposals.max()
                };
                chosen.unwrap_or(current).max(current)
            };
            let (allowed, reason, message) = if max > limit {
                (
                    limit,
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                )
            } else {
                (
                    max,
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                )
            };
            if stabilized > allowed {
                (
                    allowed,
                    Limit {
                        limited: true,
                        reason,
                        message,
                    },
                )
            } else {
                (stabilized, within_range)
            }
        } else if stabilized < current {
            let limit = if down.select == "Disabled" {
                current
            } else {
                let proposals = down.policies.iter().map(|(type_, value, period)| {
                    let start = period_start(*period);
                    if type_ == "Pods" {
                        start - value
                    } else {
                        (start as f64 * (1.0 - *value as f64 / 100.0)) as i32
                    }
                });
                let chosen = if down.select == "Min" {
                    proposals.max()
                } else {
                    proposals.min()
                };
                chosen.unwrap_or(current).min(current)
            };
            let (allowed, reason, message) = if min < limit {
                (
                    limit,
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                )
            } else {
                (
                    min,
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                )
            };
            if stabilized < allowed {
                (
                    allowed,
                    Limit {
                        limited: true,
                        reason,
                        message,
                    },
                )
            } else {
                (stabilized, within_range)
            }
        } else {
            (stabilized, within_range)
        };
        Normalized {
            replicas,
            stabilized,
            stabilization_reason,
            limit,
        }
    }

    /// Records a scale from `from` to `to` replicas at `now`, forgetting events older than
    /// the longest policy period.
    pub fn record_scale(
        &mut self,
        (up, down): &(Rules, Rules),
        from: i32,
        to: i32,
        now: SystemTime,
    ) {
        let longest = up
            .policies
            .iter()
            .chain(&down.policies)
            .map(|p| p.2)
            .max()
            .unwrap_or_default();
        let keep = |events: &mut Vec<(SystemTime, i32)>| {
            events.retain(|(at, _)| now.duration_since(*at).unwrap_or_default() < longest)
        };
        keep(&mut self.ups);
        keep(&mut self.downs);
        if to > from {
            self.ups.push((now, to - from));
        } else if to < from {
            self.downs.push((now, from - to));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn scale_up_is_limited_to_the_larger_of_100_percent_and_4_pods_per_15s() {
        let rules = resolve(None);
        let mut h = History::default();
        // From 1 replica, 4 pods beats 100 %: at most 5.
        let n = h.normalize(&rules, 1, 20, (1, 100), at(0));
        assert_eq!((n.replicas, n.limit.reason), (5, "ScaleUpLimit"));
        h.record_scale(&rules, 1, 5, at(0));
        // Within the same 15 s period the base is still 1: no further growth.
        let n = h.normalize(&rules, 5, 20, (1, 100), at(5));
        assert_eq!(n.replicas, 5);
        // A period later: 100 % of 5 → 10.
        let n = h.normalize(&rules, 5, 20, (1, 100), at(16));
        assert_eq!(n.replicas, 10);
        // maxReplicas bounds it.
        let n = h.normalize(&rules, 5, 20, (1, 8), at(40));
        assert_eq!((n.replicas, n.limit.reason), (8, "TooManyReplicas"));
    }

    #[test]
    fn scale_down_uses_the_highest_recommendation_of_the_last_300s() {
        let rules = resolve(None);
        let mut h = History::default();
        assert_eq!(h.normalize(&rules, 4, 4, (1, 10), at(0)).replicas, 4);
        let n = h.normalize(&rules, 4, 2, (1, 10), at(60));
        assert_eq!(
            (n.replicas, n.stabilization_reason),
            (4, "ScaleDownStabilized")
        );
        assert_eq!(h.normalize(&rules, 4, 2, (1, 10), at(299)).replicas, 4);
        // The recommendation of 4 has left the window.
        assert_eq!(h.normalize(&rules, 4, 2, (1, 10), at(301)).replicas, 2);
    }

    #[test]
    fn configured_policies_and_select_policy() {
        let behavior = HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(0),
                select_policy: Some("Min".into()),
                policies: Some(vec![
                    HPAScalingPolicy {
                        type_: "Pods".into(),
                        value: 1,
                        period_seconds: 60,
                    },
                    HPAScalingPolicy {
                        type_: "Percent".into(),
                        value: 50,
                        period_seconds: 60,
                    },
                ]),
                ..Default::default()
            }),
            scale_up: Some(HPAScalingRules {
                select_policy: Some("Disabled".into()),
                ..Default::default()
            }),
        };
        let rules = resolve(Some(&behavior));
        let mut h = History::default();
        // Min change on the way down: 1 pod, not 50 %.
        let n = h.normalize(&rules, 10, 2, (1, 20), at(0));
        assert_eq!((n.replicas, n.limit.reason), (9, "ScaleDownLimit"));
        // Scale-up disabled.
        assert_eq!(h.normalize(&rules, 9, 15, (1, 20), at(100)).replicas, 9);
    }
}

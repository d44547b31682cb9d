//! The pod status a [`PodMachine`] reports, field for field as the kubelet writes it:
//! phase, conditions, init and app container statuses, IPs and start time.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};

use super::machine::{ContainerKind, Now, PodMachine, RestartPolicy, Slot, Terminated};
use crate::clock::to_k8s_time;

/// The pod conditions the node agent owns.
pub const OWN_CONDITIONS: [&str; 5] = [
    "PodScheduled",
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

/// A duration the way Go prints it (`10s`, `1m20s`, `5m0s`), as kubelet messages show.
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}h{}m{}s", s / 3600, (s % 3600) / 60, s % 60)
    }
}

fn terminated(t: &Terminated, runtime: &str) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: t.started.map(to_k8s_time),
        finished_at: Some(to_k8s_time(t.finished)),
        container_id: Some(format!("{runtime}://{}", t.container_id)),
        signal: None,
    }
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message,
        }),
        ..Default::default()
    }
}

impl PodMachine {
    /// The waiting reason of a container that has not run yet, as the kubelet reports it:
    /// `PodInitializing` for every container of a pod with init containers (its app
    /// containers wait for them, and the kubelet uses the same default for the init
    /// containers themselves), `ContainerCreating` otherwise.
    fn default_waiting_reason(&self) -> &'static str {
        if self.n_init > 0 {
            "PodInitializing"
        } else {
            "ContainerCreating"
        }
    }

    fn container_status(&self, s: &Slot, now: Now, runtime: &str) -> ContainerStatus {
        let meta = &self.pod.metadata;
        let pod_ref = format!(
            "{}_{}({})",
            meta.name.as_deref().unwrap_or(""),
            meta.namespace.as_deref().unwrap_or(""),
            meta.uid.as_deref().unwrap_or("")
        );
        let mut last_state = s.last_state.as_ref();
        let state = match &s.run {
            Some(run) if run.exit.is_none() => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(to_k8s_time(run.started_wall)),
                }),
                ..Default::default()
            },
            run => {
                let exit = run.as_ref().and_then(|r| r.exit.as_ref());
                let pending = !s.finished && self.termination.is_none();
                let reason = if !pending {
                    None
                } else if let Some((reason, message)) = &s.waiting {
                    let backoff = match s.image {
                        super::machine::ImageStage::Failed { at, .. } => {
                            *reason == "ErrImagePull" && now.at > at
                        }
                        _ => false,
                    };
                    Some(if backoff {
                        (
                            "ImagePullBackOff",
                            Some(format!("Back-off pulling image \"{}\"", s.image_ref)),
                        )
                    } else {
                        (*reason, Some(message.clone()))
                    })
                } else if s.restart_at.is_some_and(|t| t > now.at) && exit.is_some() {
                    Some((
                        "CrashLoopBackOff",
                        Some(format!(
                            "back-off {} restarting failed container={} pod={pod_ref}",
                            go_duration(s.backoff.unwrap_or_default()),
                            s.name
                        )),
                    ))
                } else if exit.is_none() {
                    Some((self.default_waiting_reason(), None))
                } else {
                    None
                };
                match (reason, exit) {
                    (Some((reason, message)), exit) => {
                        if exit.is_some() {
                            last_state = exit;
                        }
                        waiting(reason, message)
                    }
                    (None, Some(exit)) => ContainerState {
                        terminated: Some(terminated(exit, runtime)),
                        ..Default::default()
                    },
                    (None, None) => waiting(self.default_waiting_reason(), None),
                }
            }
        };
        let running = s.is_running();
        let ready = match s.kind {
            ContainerKind::Init => s.succeeded(),
            _ => running && s.ready,
        };
        ContainerStatus {
            name: s.name.clone(),
            image: s.image_ref.clone(),
            image_id: s.image_id.clone(),
            container_id: s.run.as_ref().map(|r| format!("{runtime}://{}", r.id)),
            ready,
            started: Some(running && s.started),
            restart_count: s.restart_count as i32,
            state: Some(state),
            last_state: Some(match last_state {
                Some(t) => ContainerState {
                    terminated: Some(terminated(t, runtime)),
                    ..Default::default()
                },
                None => ContainerState::default(),
            }),
            ..Default::default()
        }
    }

    /// The phase, by the kubelet's rules.
    pub fn phase(&self) -> &'static str {
        if self.init_failed {
            return "Failed";
        }
        let apps = &self.slots[self.n_init..];
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for s in apps {
            if s.is_running() {
                running += 1;
            } else if let Some(exit) = s.exit() {
                stopped += 1;
                if exit.exit_code == 0 {
                    succeeded += 1;
                }
            } else {
                waiting += 1;
            }
        }
        let all_stopped = running == 0 && waiting == 0 && stopped > 0;
        if let Some(t) = &self.termination {
            // A pod whose containers all ended while being deleted is terminal.
            if t.deleting && all_stopped && apps.iter().all(|s| !s.busy) {
                return if stopped == succeeded {
                    "Succeeded"
                } else {
                    "Failed"
                };
            }
        }
        if !self.initialized {
            return "Pending";
        }
        if waiting > 0 {
            return "Pending";
        }
        if running > 0 {
            return "Running";
        }
        if stopped > 0 {
            if self.completed || self.restart_policy == RestartPolicy::Never {
                return if stopped == succeeded {
                    "Succeeded"
                } else {
                    "Failed"
                };
            }
            if self.restart_policy == RestartPolicy::Always {
                return "Running";
            }
            if stopped == succeeded {
                return "Succeeded";
            }
            return "Running";
        }
        "Pending"
    }

    /// The status to report, keeping transition times of unchanged conditions from `prev`.
    pub fn status(
        &self,
        now: Now,
        runtime: &str,
        host_ip: Option<IpAddr>,
        prev: Option<&PodStatus>,
    ) -> PodStatus {
        let init: Vec<ContainerStatus> = self.slots[..self.n_init]
            .iter()
            .map(|s| self.container_status(s, now, runtime))
            .collect();
        let apps: Vec<ContainerStatus> = self.slots[self.n_init..]
            .iter()
            .map(|s| self.container_status(s, now, runtime))
            .collect();
        let phase = self.phase();
        let terminal = phase == "Succeeded" || phase == "Failed";

        let sandbox_ready = self.sandbox.done().is_some()
            && self.network.done().is_some()
            && !matches!(
                self.teardown,
                super::machine::Stage::Done(_) | super::machine::Stage::InFlight
            );
        let incomplete: Vec<&str> = self.slots[..self.n_init]
            .iter()
            .filter(|s| match s.kind {
                ContainerKind::Sidecar => !self.initialized && !s.started,
                _ => !s.succeeded(),
            })
            .map(|s| s.name.as_str())
            .collect();
        let initialized = self.initialized || (self.n_init > 0 && incomplete.is_empty());
        let unready: Vec<&str> = self
            .slots
            .iter()
            .zip(init.iter().chain(apps.iter()))
            .filter(|(s, cs)| s.kind != ContainerKind::Init && !cs.ready)
            .map(|(s, _)| s.name.as_str())
            .collect();
        let containers_ready = unready.is_empty();
        let gates: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .into_iter()
            .flatten()
            .map(|g| g.condition_type.clone())
            .collect();
        let prev_conditions = prev.and_then(|p| p.conditions.as_ref());
        let unmet_gates: Vec<&String> = gates
            .iter()
            .filter(|g| {
                !prev_conditions
                    .into_iter()
                    .flatten()
                    .any(|c| &c.type_ == *g && c.status == "True")
            })
            .collect();

        let list = |v: &[&str]| format!("[{}]", v.join(" "));
        let mut conditions = Vec::new();
        let mut cond = |type_: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
            let status = if ok { "True" } else { "False" };
            let since = prev_conditions
                .into_iter()
                .flatten()
                .find(|c| c.type_ == type_ && c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| to_k8s_time(now.wall));
            conditions.push(PodCondition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: reason.map(str::to_string),
                message,
                last_transition_time: Some(since),
                last_probe_time: None,
                observed_generation: None,
            });
        };
        cond("PodReadyToStartContainers", sandbox_ready, None, None);
        if initialized || self.n_init == 0 {
            cond("Initialized", true, None, None);
        } else {
            cond(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: {}",
                    list(&incomplete)
                )),
            );
        }
        let (ready_reason, ready_message) = if terminal {
            (Some("PodCompleted"), None)
        } else if !containers_ready {
            (
                Some("ContainersNotReady"),
                Some(format!(
                    "containers with unready status: {}",
                    list(&unready)
                )),
            )
        } else {
            (None, None)
        };
        let cready = containers_ready && !terminal;
        cond(
            "ContainersReady",
            cready,
            ready_reason,
            ready_message.clone(),
        );
        if cready && !unmet_gates.is_empty() {
            let names: Vec<&str> = unmet_gates.iter().map(|g| g.as_str()).collect();
            cond(
                "Ready",
                false,
                Some("ReadinessGatesNotReady"),
                Some(format!(
                    "corresponding condition of pod readiness gate {} does not exist.",
                    list(&names)
                )),
            );
        } else {
            cond("Ready", cready, ready_reason, ready_message);
        }
        let scheduled = prev_conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled")
            .cloned();
        conditions.push(scheduled.unwrap_or_else(|| PodCondition {
            type_: "PodScheduled".into(),
            status: "True".into(),
            last_transition_time: Some(to_k8s_time(now.wall)),
            ..Default::default()
        }));
        // Conditions other agents own (readiness gates, DisruptionTarget) are kept.
        for c in prev_conditions.into_iter().flatten() {
            if !OWN_CONDITIONS.contains(&c.type_.as_str()) {
                conditions.push(c.clone());
            }
        }

        let ips = self.pod_ips();
        PodStatus {
            phase: Some(phase.to_string()),
            conditions: Some(conditions),
            host_ip: host_ip.map(|i| i.to_string()),
            host_ips: host_ip.map(|i| vec![HostIP { ip: i.to_string() }]),
            pod_ip: ips.first().map(|i| i.to_string()),
            pod_ips: (!ips.is_empty())
                .then(|| ips.iter().map(|i| PodIP { ip: i.to_string() }).collect()),
            start_time: self.start_time.map(to_k8s_time),
            init_container_statuses: (!init.is_empty()).then_some(init),
            container_statuses: Some(apps),
            qos_class: prev.and_then(|p| p.qos_class.clone()),
            nominated_node_name: prev.and_then(|p| p.nominated_node_name.clone()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    }
}

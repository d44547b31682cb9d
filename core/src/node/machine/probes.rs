//! Probes: their parameters with Kubernetes' defaults, and the thresholds that turn
//! attempts into started, ready, or a restart. Startup gates liveness and readiness.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::time::Instant;

use super::{Action, Now, PodMachine, Slot};
use crate::backend::probe::{ProbeAction, Scheme};

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// startupProbe.
    Startup,
    /// livenessProbe.
    Liveness,
    /// readinessProbe.
    Readiness,
}

/// A probe with its parameters resolved (defaults applied, named ports looked up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// What to run.
    pub action: ProbeAction,
    /// initialDelaySeconds.
    pub initial_delay: Duration,
    /// periodSeconds.
    pub period: Duration,
    /// timeoutSeconds.
    pub timeout: Duration,
    /// successThreshold.
    pub success_threshold: u32,
    /// failureThreshold.
    pub failure_threshold: u32,
    /// Probe-level terminationGracePeriodSeconds.
    pub termination_grace: Option<Duration>,
}

/// State of one probe of a running container.
#[derive(Clone, Debug)]
pub struct ProbeState {
    /// Which probe.
    pub kind: ProbeKind,
    /// Its parameters.
    pub spec: Arc<ProbeSpec>,
    /// When the next attempt is due.
    pub next_at: Instant,
    /// An attempt is running.
    pub in_flight: bool,
    /// Consecutive successes.
    pub successes: u32,
    /// Consecutive failures.
    pub failures: u32,
}

/// The port of a probe or hook: a number, or the name of a container port.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// The action of a probe or lifecycle handler (exec, httpGet, tcpSocket, grpc).
pub fn handler_action(
    exec: Option<&k8s_openapi::api::core::v1::ExecAction>,
    http: Option<&k8s_openapi::api::core::v1::HTTPGetAction>,
    tcp: Option<&k8s_openapi::api::core::v1::TCPSocketAction>,
    grpc: Option<&k8s_openapi::api::core::v1::GRPCAction>,
    container: &Container,
) -> Option<ProbeAction> {
    if let Some(e) = exec {
        return Some(ProbeAction::Exec {
            command: e.command.clone().unwrap_or_default(),
        });
    }
    if let Some(h) = http {
        return Some(ProbeAction::HttpGet {
            scheme: if h.scheme.as_deref() == Some("HTTPS") {
                Scheme::Https
            } else {
                Scheme::Http
            },
            host: h.host.clone().filter(|s| !s.is_empty()),
            port: resolve_port(&h.port, container)?,
            path: h
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|hh| (hh.name.clone(), hh.value.clone()))
                .collect(),
        });
    }
    if let Some(t) = tcp {
        return Some(ProbeAction::TcpSocket {
            host: t.host.clone().filter(|s| !s.is_empty()),
            port: resolve_port(&t.port, container)?,
        });
    }
    if let Some(g) = grpc {
        return Some(ProbeAction::Grpc {
            port: u16::try_from(g.port).ok()?,
            service: g.service.clone().unwrap_or_default(),
        });
    }
    None
}

fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.map_or(default, |v| v.max(0) as u64))
}

/// A probe of a container with Kubernetes' defaults (period 10 s, timeout 1 s, success 1,
/// failure 3). `None` when the container has no such probe or it names an unknown port.
pub fn probe_spec(container: &Container, kind: ProbeKind) -> Option<ProbeSpec> {
    let p = match kind {
        ProbeKind::Startup => container.startup_probe.as_ref(),
        ProbeKind::Liveness => container.liveness_probe.as_ref(),
        ProbeKind::Readiness => container.readiness_probe.as_ref(),
    }?;
    let action = handler_action(
        p.exec.as_ref(),
        p.http_get.as_ref(),
        p.tcp_socket.as_ref(),
        p.grpc.as_ref(),
        container,
    )?;
    Some(ProbeSpec {
        action,
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        // Liveness and startup must have successThreshold 1.
        success_threshold: match kind {
            ProbeKind::Readiness => p.success_threshold.unwrap_or(1).max(1) as u32,
            _ => 1,
        },
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        termination_grace: match kind {
            ProbeKind::Readiness => None,
            _ => p
                .termination_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64)),
        },
    })
}

impl PodMachine {
    pub(super) fn arm_probes(s: &mut Slot, container: &Container, now: Now) {
        s.probes.clear();
        for kind in [
            ProbeKind::Startup,
            ProbeKind::Liveness,
            ProbeKind::Readiness,
        ] {
            if let Some(spec) = probe_spec(container, kind) {
                s.probes.push(ProbeState {
                    kind,
                    next_at: now.at + spec.initial_delay,
                    spec: Arc::new(spec),
                    in_flight: false,
                    successes: 0,
                    failures: 0,
                });
            }
        }
        s.started = !s.probes.iter().any(|p| p.kind == ProbeKind::Startup);
        s.ready = s.started && !s.probes.iter().any(|p| p.kind == ProbeKind::Readiness);
    }

    pub(super) fn probe_done(
        &mut self,
        slot: usize,
        container_id: &str,
        kind: ProbeKind,
        success: Option<bool>,
    ) {
        let pod_grace = self.pod_grace();
        let s = &mut self.slots[slot];
        let live = s
            .run
            .as_ref()
            .is_some_and(|r| r.id == container_id && r.exit.is_none() && !r.stopping);
        let Some(p) = s.probes.iter_mut().find(|p| p.kind == kind) else {
            return;
        };
        p.in_flight = false;
        if !live {
            return;
        }
        let Some(ok) = success else { return };
        if ok {
            p.successes += 1;
            p.failures = 0;
        } else {
            p.failures += 1;
            p.successes = 0;
        }
        let (successes, failures) = (p.successes, p.failures);
        let spec = p.spec.clone();
        match kind {
            ProbeKind::Startup => {
                if ok {
                    s.started = true;
                    s.probes.retain(|p| p.kind != ProbeKind::Startup);
                    s.ready = !s.probes.iter().any(|p| p.kind == ProbeKind::Readiness);
                } else if failures >= spec.failure_threshold {
                    s.kill = Some(spec.termination_grace.unwrap_or(pod_grace));
                }
            }
            ProbeKind::Liveness => {
                if !ok && failures >= spec.failure_threshold {
                    s.kill = Some(spec.termination_grace.unwrap_or(pod_grace));
                }
            }
            ProbeKind::Readiness => {
                if ok && successes >= spec.success_threshold {
                    s.ready = true;
                } else if !ok && failures >= spec.failure_threshold {
                    s.ready = false;
                }
            }
        }
    }

    pub(super) fn decide_probes_and_kills(&mut self, now: Now, out: &mut Vec<Action>) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            let Some(run) = s.run.as_mut() else { continue };
            if run.exit.is_some() || run.stopping {
                continue;
            }
            if let Some(grace) = s.kill {
                if !s.busy {
                    run.stopping = true;
                    s.busy = true;
                    out.push(Action::StopContainer {
                        slot: i,
                        container_id: run.id.clone(),
                        grace,
                        force: false,
                    });
                }
                continue;
            }
            let has_startup = s.probes.iter().any(|p| p.kind == ProbeKind::Startup);
            for p in s.probes.iter_mut() {
                if p.kind != ProbeKind::Startup && has_startup {
                    continue;
                }
                if !p.in_flight && p.next_at <= now.at {
                    p.in_flight = true;
                    p.next_at = now.at + p.spec.period;
                    out.push(Action::Probe {
                        slot: i,
                        container_id: run.id.clone(),
                        kind: p.kind,
                        spec: p.spec.clone(),
                    });
                }
            }
        }
    }
}

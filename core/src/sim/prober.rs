//! [`SimProber`]: probe results programmed over time.
//!
//! A probe is identified by its action: [`probe_key`] turns an exec command into
//! `exec:<cmd args>`, an httpGet into `http:<port><path>`, a tcpSocket into `tcp:<port>`
//! and a grpc check into `grpc:<port>/<service>`. For each key a test sets windows of time
//! (measured from the prober's creation, on tokio's clock) in which the probe fails, and
//! optionally how long an attempt takes. Everything not programmed succeeds at once.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::backend::probe::*;

/// The key a probe action is programmed under.
pub fn probe_key(action: &ProbeAction) -> String {
    match action {
        ProbeAction::Exec { command } => format!("exec:{}", command.join(" ")),
        ProbeAction::HttpGet { port, path, .. } => format!("http:{port}{path}"),
        ProbeAction::TcpSocket { port, .. } => format!("tcp:{port}"),
        ProbeAction::Grpc { port, service } => format!("grpc:{port}/{service}"),
    }
}

#[derive(Default, Clone)]
struct Program {
    /// Time windows (from the epoch) in which attempts fail.
    failing: Vec<Range<Duration>>,
    /// How long an attempt takes.
    latency: Duration,
}

/// A simulated [`Prober`]. Cheap to clone (shared state).
#[derive(Clone)]
pub struct SimProber {
    epoch: Instant,
    programs: Arc<Mutex<HashMap<String, Program>>>,
    calls: Arc<Mutex<HashMap<String, u32>>>,
}

impl std::fmt::Debug for SimProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimProber").finish_non_exhaustive()
    }
}

impl Default for SimProber {
    fn default() -> Self {
        SimProber::new()
    }
}

impl SimProber {
    /// A prober whose time windows count from now.
    pub fn new() -> SimProber {
        SimProber {
            epoch: Instant::now(),
            programs: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// The probe under `key` fails from `from` to `to` (measured from the prober's creation).
    pub fn fail_between(&self, key: &str, from: Duration, to: Duration) {
        self.lock()
            .entry(key.to_string())
            .or_default()
            .failing
            .push(from..to);
    }

    /// The probe under `key` fails from `from` on.
    pub fn fail_from(&self, key: &str, from: Duration) {
        self.fail_between(key, from, Duration::MAX);
    }

    /// Each attempt of the probe under `key` takes `latency` (beyond the timeout: a failure).
    pub fn set_latency(&self, key: &str, latency: Duration) {
        self.lock().entry(key.to_string()).or_default().latency = latency;
    }

    /// How many attempts were made under `key`.
    pub fn calls(&self, key: &str) -> u32 {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Program>> {
        self.programs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Prober for SimProber {
    async fn probe(
        &self,
        _target: &ProbeTarget,
        action: &ProbeAction,
        timeout: Duration,
    ) -> ProbeResult {
        let key = probe_key(action);
        *self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_insert(0) += 1;
        let program = self.lock().get(&key).cloned().unwrap_or_default();
        let at = self.epoch.elapsed();
        if program.latency > timeout {
            tokio::time::sleep(timeout).await;
            return ProbeResult::Failure(format!("{key}: timed out after {timeout:?}"));
        }
        if !program.latency.is_zero() {
            tokio::time::sleep(program.latency).await;
        }
        if program.failing.iter().any(|w| w.contains(&at)) {
            ProbeResult::Failure(format!("{key}: programmed failure at {at:?}"))
        } else {
            ProbeResult::Success
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fails_inside_window_only() {
        let p = SimProber::new();
        let action = ProbeAction::TcpSocket {
            host: None,
            port: 80,
        };
        let target = ProbeTarget {
            container_id: "c".into(),
            pod_ip: None,
        };
        p.fail_between("tcp:80", Duration::from_secs(10), Duration::from_secs(20));
        let t = Duration::from_secs(1);
        assert_eq!(p.probe(&target, &action, t).await, ProbeResult::Success);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(matches!(
            p.probe(&target, &action, t).await,
            ProbeResult::Failure(_)
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(p.probe(&target, &action, t).await, ProbeResult::Success);
        assert_eq!(p.calls("tcp:80"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_probe_times_out() {
        let p = SimProber::new();
        let action = ProbeAction::HttpGet {
            scheme: Scheme::Http,
            host: None,
            port: 8080,
            path: "/healthz".into(),
            headers: vec![],
        };
        p.set_latency("http:8080/healthz", Duration::from_secs(5));
        let target = ProbeTarget {
            container_id: "c".into(),
            pod_ip: None,
        };
        let t0 = Instant::now();
        let r = p.probe(&target, &action, Duration::from_secs(1)).await;
        assert!(matches!(r, ProbeResult::Failure(m) if m.contains("timed out")));
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
    }
}

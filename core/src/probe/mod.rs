//! The real [`Prober`]: exec through a [`ContainerRuntime`], httpGet, tcpSocket and gRPC
//! health checks over the network.
//!
//! Semantics follow the kubelet: an exec probe succeeds on exit code 0; an httpGet probe on a
//! status from 200 to 399 (sent with `User-Agent: kube-probe/<version>` and `Accept: */*`,
//! overridable by the probe's headers); a tcpSocket probe when the connection opens; a grpc
//! probe when `grpc.health.v1.Health/Check` answers `SERVING`. Every attempt is bounded by
//! the probe's timeout, and running out of time is a failure. HTTPS httpGet probes do not
//! verify the server's certificate, as kubelet's do not.

mod grpc;
mod http;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::probe::{ProbeAction, ProbeResult, ProbeTarget, Prober, Scheme};
use crate::backend::ContainerRuntime;

/// The User-Agent of HTTP probes, as the kubelet sends it (`kube-probe/<major>.<minor>`).
pub const USER_AGENT: &str = "kube-probe/1.34";

/// Runs probes for real: network probes from this process, exec probes through a runtime.
#[derive(Clone, Default)]
pub struct NetworkProber {
    runtime: Option<Arc<dyn ContainerRuntime>>,
}

impl std::fmt::Debug for NetworkProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkProber")
            .field(
                "runtime",
                &self.runtime.as_ref().map(|r| r.name().to_string()),
            )
            .finish()
    }
}

impl NetworkProber {
    /// A prober that runs exec probes with `runtime`.
    pub fn new(runtime: Arc<dyn ContainerRuntime>) -> NetworkProber {
        NetworkProber {
            runtime: Some(runtime),
        }
    }

    /// A prober for network probes only (exec probes report `Unknown`).
    pub fn network_only() -> NetworkProber {
        NetworkProber { runtime: None }
    }
}

/// The host to probe: the probe's own host, else the pod IP.
fn host_of(host: &Option<String>, target: &ProbeTarget) -> Option<String> {
    match host {
        Some(h) if !h.is_empty() => Some(h.clone()),
        _ => target.pod_ip.map(|ip: IpAddr| ip.to_string()),
    }
}

/// `host:port`, with brackets around IPv6 addresses.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[async_trait]
impl Prober for NetworkProber {
    async fn probe(
        &self,
        target: &ProbeTarget,
        action: &ProbeAction,
        timeout: Duration,
    ) -> ProbeResult {
        match action {
            ProbeAction::Exec { command } => {
                let Some(rt) = &self.runtime else {
                    return ProbeResult::Unknown("no container runtime to run exec probes".into());
                };
                match rt.exec_sync(&target.container_id, command, timeout).await {
                    Ok(out) if out.exit_code == 0 => ProbeResult::Success,
                    Ok(out) => ProbeResult::Failure(format!(
                        "command {command:?} exited with {}: {}",
                        out.exit_code,
                        String::from_utf8_lossy(&out.stdout).trim_end()
                    )),
                    Err(e) if e.kind == crate::backend::ErrorKind::Timeout => ProbeResult::Failure(
                        format!("command {command:?} timed out after {timeout:?}"),
                    ),
                    Err(e) if e.is_not_found() => ProbeResult::Unknown(e.to_string()),
                    Err(e) => ProbeResult::Failure(e.to_string()),
                }
            }
            ProbeAction::HttpGet {
                scheme,
                host,
                port,
                path,
                headers,
            } => {
                let Some(host) = host_of(host, target) else {
                    return ProbeResult::Unknown("the pod has no IP yet".into());
                };
                let tls = *scheme == Scheme::Https;
                http::probe(tls, &host, *port, path, headers, timeout).await
            }
            ProbeAction::TcpSocket { host, port } => {
                let Some(host) = host_of(host, target) else {
                    return ProbeResult::Unknown("the pod has no IP yet".into());
                };
                let addr = authority(&host, *port);
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                    Ok(Ok(_)) => ProbeResult::Success,
                    Ok(Err(e)) => ProbeResult::Failure(format!("dial tcp {addr}: {e}")),
                    Err(_) => ProbeResult::Failure(format!(
                        "dial tcp {addr}: timed out after {timeout:?}"
                    )),
                }
            }
            ProbeAction::Grpc { port, service } => {
                let Some(ip) = target.pod_ip else {
                    return ProbeResult::Unknown("the pod has no IP yet".into());
                };
                grpc::probe(&ip.to_string(), *port, service, timeout).await
            }
        }
    }
}

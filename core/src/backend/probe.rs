//! `Prober`: running one container probe (exec, httpGet, tcpSocket, grpc).
//!
//! A prober runs a single attempt and reports its outcome; the node agent owns the timing
//! (initialDelaySeconds, periodSeconds), the thresholds and what a failure leads to.

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;

/// HTTP or HTTPS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTPS; the certificate is not verified (as kubelet does).
    Https,
}

/// One probe action, with ports already resolved to numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    /// Run a command in the container; exit code 0 succeeds.
    Exec {
        /// The command line.
        command: Vec<String>,
    },
    /// HTTP GET; a status from 200 to 399 succeeds.
    HttpGet {
        /// Scheme.
        scheme: Scheme,
        /// Host to connect to (the pod IP when `None`).
        host: Option<String>,
        /// Port.
        port: u16,
        /// Path, `/` by default.
        path: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// TCP connect; an open connection succeeds.
    TcpSocket {
        /// Host (the pod IP when `None`).
        host: Option<String>,
        /// Port.
        port: u16,
    },
    /// gRPC `grpc.health.v1.Health/Check`; `SERVING` succeeds.
    Grpc {
        /// Port.
        port: u16,
        /// Service name sent in the request (empty for the server as a whole).
        service: String,
    },
}

/// What the probe is aimed at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The container (for exec).
    pub container_id: String,
    /// The pod's IP (for network probes).
    pub pod_ip: Option<IpAddr>,
}

/// The outcome of one probe attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// It succeeded.
    Success,
    /// It failed; the message says how (shown in events).
    Failure(String),
    /// It could not be run (e.g. the container is gone); not counted either way.
    Unknown(String),
}

/// Runs probes. Implementations: [`crate::probe`]'s network prober with exec through a
/// runtime, and the simulated prober.
#[async_trait]
pub trait Prober: Send + Sync + 'static {
    /// Runs one attempt, giving up after `timeout` (a timeout is a failure).
    async fn probe(
        &self,
        target: &ProbeTarget,
        action: &ProbeAction,
        timeout: Duration,
    ) -> ProbeResult;
}

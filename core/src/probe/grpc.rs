//! grpc probes: `grpc.health.v1.Health/Check` over a plaintext HTTP/2 connection.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::authority;
use crate::backend::probe::ProbeResult;

async fn check(host: &str, port: u16, service: &str) -> Result<i32, String> {
    let uri = format!("http://{}", authority(host, port));
    let channel = tonic::transport::Endpoint::from_shared(uri.clone())
        .map_err(|e| format!("{uri}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("failed to connect service {uri}: {e}"))?;
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| format!("health rpc to {uri} failed: {}: {}", s.code(), s.message()))?;
    Ok(response.into_inner().status)
}

/// One grpc health attempt.
pub(crate) async fn probe(host: &str, port: u16, service: &str, timeout: Duration) -> ProbeResult {
    match tokio::time::timeout(timeout, check(host, port, service)).await {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => ProbeResult::Success,
        Ok(Ok(status)) => {
            let name = ServingStatus::try_from(status)
                .map(|s| s.as_str_name())
                .unwrap_or("UNKNOWN");
            ProbeResult::Failure(format!("service unhealthy (responded with \"{name}\")"))
        }
        Ok(Err(e)) => ProbeResult::Failure(e),
        Err(_) => ProbeResult::Failure(format!(
            "timeout: health rpc did not complete within {timeout:?}"
        )),
    }
}

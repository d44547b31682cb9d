//! httpGet probes: one HTTP/1.1 GET on a fresh connection, judged by its status code.
//!
//! The client is deliberately minimal (a probe needs only the status line), so wharf-core
//! carries no HTTP stack. HTTPS goes through rustls and, as kubelet does, does not verify the
//! server's certificate (the handshake signatures are still checked).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

use super::{authority, USER_AGENT};
use crate::backend::probe::ProbeResult;

/// The longest response head read before giving up on finding the status line.
const MAX_HEAD: usize = 16 * 1024;

fn request(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> String {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !has("host") {
        req.push_str(&format!("Host: {}\r\n", authority(host, port)));
    }
    if !has("user-agent") {
        req.push_str(&format!("User-Agent: {USER_AGENT}\r\n"));
    }
    if !has("accept") {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        // A header cannot carry a line break: drop such values rather than split the request.
        if !k.contains(['\r', '\n']) && !v.contains(['\r', '\n']) {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    req.push_str("Connection: close\r\n\r\n");
    req
}

/// Parses `HTTP/1.x NNN reason` into the status code.
fn status_code(head: &[u8]) -> Option<u16> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Accepts any server certificate (kubelet's HTTPS probes skip verification) but checks the
/// handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client of every HTTPS probe, made once.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    static CONNECTOR: OnceLock<Result<tokio_rustls::TlsConnector, String>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS client configuration: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
        })
        .clone()
}

/// Sends the request and reads up to the status line.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &str,
    url: &str,
) -> Result<u16, String> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    // TLS buffers what is written: send it before waiting for the answer.
    stream
        .flush()
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(code) = status_code(&head) {
            return Ok(code);
        }
        if head.len() > MAX_HEAD {
            return Err(format!("Get \"{url}\": malformed response"));
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        if n == 0 {
            return Err(format!(
                "Get \"{url}\": connection closed before a response"
            ));
        }
        head.extend_from_slice(&buf[..n]);
    }
}

fn url(tls: bool, host: &str, port: u16, path: &str) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}{path}", authority(host, port))
}

async fn get(
    tls: bool,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let addr = authority(host, port);
    let url = url(tls, host, port, path);
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp {addr}: {e}"))?;
    let request = request(host, port, path, headers);
    if !tls {
        return exchange(&mut stream, &request, &url).await;
    }
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("Get \"{url}\": server name {host:?}: {e}"))?;
    let mut stream = tls_connector()?
        .connect(name, stream)
        .await
        .map_err(|e| format!("Get \"{url}\": TLS handshake: {e}"))?;
    exchange(&mut stream, &request, &url).await
}

/// One httpGet attempt.
pub(crate) async fn probe(
    tls: bool,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> ProbeResult {
    match tokio::time::timeout(timeout, get(tls, host, port, path, headers)).await {
        Ok(Ok(code)) if (200..400).contains(&code) => ProbeResult::Success,
        Ok(Ok(code)) => ProbeResult::Failure(format!("HTTP probe failed with statuscode: {code}")),
        Ok(Err(e)) => ProbeResult::Failure(e),
        Err(_) => ProbeResult::Failure(format!(
            "Get \"{}\": context deadline exceeded (timeout {timeout:?})",
            url(tls, host, port, path)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_defaults_and_custom_headers() {
        let r = request(
            "10.0.0.1",
            8080,
            "healthz",
            &[("X-Probe".into(), "1".into())],
        );
        assert!(r.starts_with("GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n"));
        assert!(r.contains("User-Agent: kube-probe/1.34\r\n"));
        assert!(r.contains("X-Probe: 1\r\n"));
        let r = request("::1", 80, "/", &[("Host".into(), "example".into())]);
        assert!(r.contains("Host: example\r\n"));
        assert!(!r.contains("[::1]"));
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 500\r\n"), Some(500));
        assert_eq!(status_code(b"HTTP/1.1 200"), None);
        assert_eq!(status_code(b"SSH-2.0\r\n"), None);
    }
}

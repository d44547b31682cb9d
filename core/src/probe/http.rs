//! httpGet probes: one HTTP/1.1 GET on a fresh connection, judged by its status code.
//!
//! The client is deliberately minimal (a probe needs only the status line), so wharf-core
//! carries no HTTP stack.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

async fn get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let addr = authority(host, port);
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("Get \"http://{addr}{path}\": dial tcp {addr}: {e}"))?;
    stream
        .write_all(request(host, port, path, headers).as_bytes())
        .await
        .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(code) = status_code(&head) {
            return Ok(code);
        }
        if head.len() > MAX_HEAD {
            return Err(format!("Get \"http://{addr}{path}\": malformed response"));
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
        if n == 0 {
            return Err(format!(
                "Get \"http://{addr}{path}\": connection closed before a response"
            ));
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// One httpGet attempt.
pub(crate) async fn probe(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> ProbeResult {
    match tokio::time::timeout(timeout, get(host, port, path, headers)).await {
        Ok(Ok(code)) if (200..400).contains(&code) => ProbeResult::Success,
        Ok(Ok(code)) => ProbeResult::Failure(format!("HTTP probe failed with statuscode: {code}")),
        Ok(Err(e)) => ProbeResult::Failure(e),
        Err(_) => ProbeResult::Failure(format!(
            "Get \"http://{}{path}\": context deadline exceeded (timeout {timeout:?})",
            authority(host, port)
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

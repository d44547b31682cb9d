//! The real prober against real servers on loopback: an HTTP server, a TCP listener and a
//! tonic gRPC health server, including timeouts; exec probes through the simulated runtime.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use wharf_core::backend::probe::{ProbeAction, ProbeResult, ProbeTarget, Prober, Scheme};
use wharf_core::backend::runtime::{ContainerConfig, ContainerRuntime, SandboxConfig};
use wharf_core::probe::NetworkProber;
use wharf_core::sim::{Behavior, SimRuntime};
use wharf_core::Clock;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn target() -> ProbeTarget {
    ProbeTarget {
        container_id: "c".into(),
        pod_ip: Some(LOOPBACK),
    }
}

/// A tiny HTTP server: `/status/NNN` answers NNN, `/slow` answers after 3 s; every request
/// head is recorded. With `tls`, it speaks HTTPS with a self-signed certificate.
async fn http_server_with(tls: Option<TlsAcceptor>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        // Plain HTTP sent to the TLS port fails here; the client sees it close.
                        if let Ok(conn) = acceptor.accept(conn).await {
                            answer(conn, log).await;
                        }
                    }
                    None => answer(conn, log).await,
                }
            });
        }
    });
    (port, seen)
}

async fn http_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    http_server_with(None).await
}

/// Reads one request head and answers it.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut conn: S, log: Arc<Mutex<Vec<String>>>) {
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
    log.lock().unwrap().push(head);
    let code = if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
        200
    } else {
        path.strip_prefix("/status/")
            .and_then(|c| c.parse().ok())
            .unwrap_or(404)
    };
    let resp = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = conn.write_all(resp.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// A TLS acceptor with a fresh self-signed certificate (made by the openssl command).
fn self_signed_acceptor() -> TlsAcceptor {
    let dir = std::env::temp_dir().join(format!("wharf-probe-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=probe-test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl command (Debian package openssl) makes the test certificate");
    assert!(status.success(), "openssl req failed");
    let certs = vec![CertificateDer::from_pem_file(&cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

fn http(port: u16, path: &str) -> ProbeAction {
    ProbeAction::HttpGet {
        scheme: Scheme::Http,
        host: None,
        port,
        path: path.into(),
        headers: vec![("X-Custom".into(), "yes".into())],
    }
}

#[tokio::test]
async fn http_get_status_codes_headers_and_timeout() {
    let (port, seen) = http_server().await;
    let p = NetworkProber::network_only();
    let t = Duration::from_secs(1);
    assert_eq!(
        p.probe(&target(), &http(port, "/status/200"), t).await,
        ProbeResult::Success
    );
    assert_eq!(
        p.probe(&target(), &http(port, "/status/302"), t).await,
        ProbeResult::Success
    );
    assert_eq!(
        p.probe(&target(), &http(port, "/status/399"), t).await,
        ProbeResult::Success
    );
    let r = p.probe(&target(), &http(port, "/status/400"), t).await;
    assert_eq!(
        r,
        ProbeResult::Failure("HTTP probe failed with statuscode: 400".into())
    );
    assert!(matches!(
        p.probe(&target(), &http(port, "/status/503"), t).await,
        ProbeResult::Failure(_)
    ));
    let head = seen.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /status/200 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("User-Agent: kube-probe/1.34\r\n"));
    assert!(head.contains("X-Custom: yes\r\n"));
    assert!(head.contains(&format!("Host: 127.0.0.1:{port}\r\n")));

    // The probe's host wins over the pod IP.
    let explicit = ProbeAction::HttpGet {
        scheme: Scheme::Http,
        host: Some("127.0.0.1".into()),
        port,
        path: "/status/204".into(),
        headers: vec![],
    };
    let no_ip = ProbeTarget {
        container_id: "c".into(),
        pod_ip: None,
    };
    assert_eq!(p.probe(&no_ip, &explicit, t).await, ProbeResult::Success);

    let start = Instant::now();
    let r = p.probe(&target(), &http(port, "/slow"), t).await;
    assert!(
        matches!(&r, ProbeResult::Failure(m) if m.contains("deadline exceeded")),
        "{r:?}"
    );
    assert!(start.elapsed() < Duration::from_millis(2500));
}

#[tokio::test]
async fn https_get_skips_certificate_verification_and_judges_the_status() {
    let (port, seen) = http_server_with(Some(self_signed_acceptor())).await;
    let prober = NetworkProber::network_only();
    let https = |path: &str| ProbeAction::HttpGet {
        scheme: Scheme::Https,
        host: None,
        port,
        path: path.into(),
        headers: vec![],
    };
    let t = Duration::from_secs(2);
    assert_eq!(
        prober.probe(&target(), &https("/status/200"), t).await,
        ProbeResult::Success
    );
    let ProbeResult::Failure(m) = prober.probe(&target(), &https("/status/503"), t).await else {
        panic!("503 over HTTPS is a failure");
    };
    assert!(m.contains("statuscode: 503"), "{m}");
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "both requests went through TLS"
    );
    // Plain HTTP to the TLS port gets no HTTP answer: a failure, not a hang.
    let ProbeResult::Failure(m) = prober.probe(&target(), &http(port, "/status/200"), t).await
    else {
        panic!("plain HTTP to a TLS server is a failure");
    };
    assert!(m.contains(&format!("http://127.0.0.1:{port}")), "{m}");
    // HTTPS to a plain HTTP server: that server waits for a request head that never comes,
    // so the probe's timeout ends the handshake.
    let (plain, _) = http_server().await;
    let tls_to_plain = ProbeAction::HttpGet {
        scheme: Scheme::Https,
        host: None,
        port: plain,
        path: "/status/200".into(),
        headers: vec![],
    };
    let ProbeResult::Failure(m) = prober.probe(&target(), &tls_to_plain, t).await else {
        panic!("HTTPS to a plain server is a failure");
    };
    assert!(m.contains(&format!("https://127.0.0.1:{plain}")), "{m}");
}

#[tokio::test]
async fn tcp_socket_open_and_closed() {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = {
        let l = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let p = NetworkProber::network_only();
    let t = Duration::from_secs(1);
    let tcp = |port| ProbeAction::TcpSocket { host: None, port };
    assert_eq!(
        p.probe(&target(), &tcp(open), t).await,
        ProbeResult::Success
    );
    assert!(matches!(
        p.probe(&target(), &tcp(closed), t).await,
        ProbeResult::Failure(_)
    ));
    drop(listener);
}

#[tokio::test]
async fn tcp_socket_times_out_when_the_handshake_never_completes() {
    // A listener that never accepts, with the smallest backlog: once its queue is full the
    // kernel drops further SYNs, so a connect waits (on loopback, touching nothing else).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((LOOPBACK, 0).into()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let _listener = socket.listen(0).unwrap();
    let mut queued = Vec::new();
    loop {
        let connect = tokio::net::TcpStream::connect((LOOPBACK, port));
        match tokio::time::timeout(Duration::from_millis(300), connect).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("filling the backlog: {e}"),
            Err(_) => break,
        }
        assert!(queued.len() < 64, "the backlog never filled");
    }
    let p = NetworkProber::network_only();
    let start = Instant::now();
    let result = p
        .probe(
            &target(),
            &ProbeAction::TcpSocket { host: None, port },
            Duration::from_secs(1),
        )
        .await;
    let ProbeResult::Failure(m) = result else {
        panic!("a connect that never completes is a failure: {result:?}");
    };
    assert!(m.contains("timed out after 1s"), "{m}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "the probe's timeout decides: {took:?}"
    );
}

#[tokio::test]
async fn grpc_health_serving_not_serving_and_timeout() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("db", tonic_health::ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status("api", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    let p = NetworkProber::network_only();
    let t = Duration::from_secs(2);
    let grpc = |service: &str| ProbeAction::Grpc {
        port,
        service: service.into(),
    };
    assert_eq!(p.probe(&target(), &grpc(""), t).await, ProbeResult::Success);
    assert_eq!(
        p.probe(&target(), &grpc("api"), t).await,
        ProbeResult::Success
    );
    let r = p.probe(&target(), &grpc("db"), t).await;
    assert_eq!(
        r,
        ProbeResult::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
    );
    assert!(matches!(
        p.probe(&target(), &grpc("unknown"), t).await,
        ProbeResult::Failure(_)
    ));
    server.abort();

    // A server that accepts but never speaks HTTP/2: the timeout decides.
    let silent = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let start = Instant::now();
    let r = p
        .probe(
            &target(),
            &ProbeAction::Grpc {
                port: silent_port,
                service: String::new(),
            },
            Duration::from_millis(500),
        )
        .await;
    assert!(matches!(r, ProbeResult::Failure(_)), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    hold.abort();
    let _: SocketAddr = (LOOPBACK, port).into();
}

#[tokio::test]
async fn exec_through_runtime() {
    let rt = SimRuntime::new(Clock::new());
    rt.set_behavior(
        "app",
        Behavior::run_forever()
            .with_exec(&["healthy"], 0, Duration::ZERO)
            .with_exec(&["sick"], 1, Duration::ZERO)
            .with_exec(&["hang"], 0, Duration::from_millis(400)),
    );
    let sb = rt.run_sandbox(&SandboxConfig::default()).await.unwrap();
    let id = rt
        .create_container(
            &sb,
            &ContainerConfig {
                name: "app".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    rt.start_container(&id).await.unwrap();
    let p = NetworkProber::new(Arc::new(rt));
    let target = ProbeTarget {
        container_id: id,
        pod_ip: None,
    };
    let exec = |c: &str| ProbeAction::Exec {
        command: vec![c.to_string()],
    };
    let t = Duration::from_millis(200);
    assert_eq!(
        p.probe(&target, &exec("healthy"), t).await,
        ProbeResult::Success
    );
    assert!(matches!(
        p.probe(&target, &exec("sick"), t).await,
        ProbeResult::Failure(_)
    ));
    let r = p.probe(&target, &exec("hang"), t).await;
    assert!(
        matches!(&r, ProbeResult::Failure(m) if m.contains("timed out")),
        "{r:?}"
    );
    let gone = ProbeTarget {
        container_id: "missing".into(),
        pod_ip: None,
    };
    assert!(matches!(
        p.probe(&gone, &exec("healthy"), t).await,
        ProbeResult::Unknown(_)
    ));
}

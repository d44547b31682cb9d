//! Talking to the per-node monitor from an async program: starting it when it is not
//! running, one connection per request, and a long-lived subscription for exit events.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::{Error, Result};
use crate::monitor::{socket_path, Reply, Request};

/// How to reach (and if needed start) the monitor of one runtime root.
#[derive(Debug, Clone)]
pub struct MonitorClient {
    root: PathBuf,
    binary: PathBuf,
}

/// Finds the `wharf-runc` binary: `$WHARF_RUNC`, next to the current executable (or one
/// directory up, for test and bench executables under `target/*/deps`), else `PATH`.
pub fn find_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WHARF_RUNC") {
        return p.into();
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join("wharf-runc");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("wharf-runc")
}

impl MonitorClient {
    /// A client for the monitor serving `root`, started from `binary` when needed.
    pub fn new(root: impl Into<PathBuf>, binary: impl Into<PathBuf>) -> MonitorClient {
        MonitorClient {
            root: root.into(),
            binary: binary.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        socket_path(&self.root)
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Monitor {
            socket: self.socket(),
            message: message.into(),
        }
    }

    /// Connects, starting the monitor if nobody answers.
    pub async fn connect(&self) -> Result<UnixStream> {
        if let Ok(s) = UnixStream::connect(self.socket()).await {
            return Ok(s);
        }
        self.start().await?;
        let mut delay = Duration::from_micros(200);
        for _ in 0..200 {
            if let Ok(s) = UnixStream::connect(self.socket()).await {
                return Ok(s);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
        Err(self.err("the monitor did not come up"))
    }

    async fn start(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::os("-", format!("create {}", self.root.display()), e))?;
        // `monitor --daemon` forks and its first process exits at once, so the monitor
        // is never our child (no zombie when it exits, no signal from our session).
        // Its stderr (panics, warnings) goes to `<root>/monitor.log`.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("monitor.log"))
            .map_err(|e| self.err(format!("open monitor.log: {e}")))?;
        let status = tokio::process::Command::new(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .args(["monitor", "--daemon"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .status()
            .await
            .map_err(|e| self.err(format!("start {}: {e}", self.binary.display())))?;
        if !status.success() {
            return Err(self.err(format!(
                "{} monitor exited with {status}",
                self.binary.display()
            )));
        }
        Ok(())
    }

    /// Sends one request and reads the first reply; returns the open reader for
    /// requests that answer twice.
    pub async fn call(&self, req: &Request) -> Result<(Reply, BufReader<UnixStream>)> {
        let stream = self.send(req).await?;
        let mut reader = BufReader::new(stream);
        let reply = read(&mut reader)
            .await
            .map_err(|e| self.err(format!("receive: {e}")))?;
        Ok((reply, reader))
    }

    /// Connects and sends one request; returns the connection, for replies that need
    /// more than a line reader (descriptors passed with `SCM_RIGHTS`).
    pub async fn send(&self, req: &Request) -> Result<UnixStream> {
        let mut stream = self.connect().await?;
        let mut line = serde_json::to_vec(req).map_err(|e| self.err(e.to_string()))?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .map_err(|e| self.err(format!("send: {e}")))?;
        Ok(stream)
    }

    /// Asks the monitor to exit once no container is alive.
    pub async fn shutdown(&self) -> Result<()> {
        if let Ok(mut s) = UnixStream::connect(self.socket()).await {
            let _ = s.write_all(b"{\"op\":\"shutdown\"}\n").await;
            let mut r = BufReader::new(s);
            let _ = read(&mut r).await;
        }
        Ok(())
    }

    /// The runtime root the monitor serves.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Reads one reply line.
pub async fn read(reader: &mut BufReader<UnixStream>) -> std::io::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Turns an error reply back into an [`Error`].
pub fn reply_error(kind: String, message: String) -> Error {
    Error::Remote { kind, message }
}

//! The built-in hostpath CSI driver as a standalone program, for a kubelet or any other CSI
//! consumer.
//!
//! Environment:
//! - `CSI_ENDPOINT` (required): `unix:///path/to/csi.sock`.
//! - `CSI_NODE_ID`: this node's id (default: the host name).
//! - `HOSTPATH_ROOT`: where volumes, snapshots and state live (default
//!   `/var/lib/wharf/hostpath`).
//! - `HOSTPATH_CAPACITY_BYTES`: bytes to hand out (default: free space under the root).
//! - `HOSTPATH_DRIVER_NAME`: the driver name (default `hostpath.csi.wharf.dev`).
//!
//! Stops cleanly on SIGTERM or SIGINT, removing its socket.

use std::process::ExitCode;

use wharf_storage_csi::{server, HostPathConfig, HostPathDriver};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn run() -> Result<(), String> {
    let endpoint =
        env("CSI_ENDPOINT").ok_or("CSI_ENDPOINT is required (unix:///path/to/csi.sock)")?;
    let socket = server::parse_endpoint(&endpoint).map_err(|e| e.to_string())?;
    let node_id = match env("CSI_NODE_ID") {
        Some(id) => id,
        None => nix::unistd::gethostname()
            .map_err(|e| format!("CSI_NODE_ID unset and the host name is unreadable: {e}"))?
            .to_string_lossy()
            .into_owned(),
    };
    let root = env("HOSTPATH_ROOT").unwrap_or_else(|| "/var/lib/wharf/hostpath".into());
    let mut config = HostPathConfig::new(node_id, root).map_err(|e| e.to_string())?;
    if let Some(bytes) = env("HOSTPATH_CAPACITY_BYTES") {
        let bytes: u64 = bytes
            .parse()
            .map_err(|_| format!("HOSTPATH_CAPACITY_BYTES={bytes:?} is not a byte count"))?;
        config = config.with_capacity(bytes);
    }
    if let Some(name) = env("HOSTPATH_DRIVER_NAME") {
        config.name = name;
    }
    eprintln!(
        "wharf-hostpath-csi: driver {} node {} root {} on {}",
        config.name,
        config.node_id,
        config.root.display(),
        socket.display()
    );
    let driver = HostPathDriver::new(config).map_err(|e| e.to_string())?;
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    server::serve(driver, &socket, shutdown)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wharf-hostpath-csi: {message}");
            ExitCode::FAILURE
        }
    }
}

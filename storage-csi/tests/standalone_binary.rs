//! The `wharf-hostpath-csi` binary: serves on `CSI_ENDPOINT`, answers a CSI client, keeps
//! its state in `HOSTPATH_ROOT`, and on SIGTERM stops and removes its socket.

#![allow(missing_docs)]
mod common;

use std::time::Duration;

use common::{options, rwo};
use wharf_core::backend::volume::{CapacityRange, CreateVolumeRequest};
use wharf_core::backend::VolumePlugin;
use wharf_storage_csi::CsiPlugin;

#[tokio::test]
async fn binary_serves_on_csi_endpoint_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let root = dir.path().join("root");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf-hostpath-csi"))
        .env("CSI_ENDPOINT", format!("unix://{}", socket.display()))
        .env("CSI_NODE_ID", "bin-node")
        .env("HOSTPATH_ROOT", &root)
        .env("HOSTPATH_CAPACITY_BYTES", (4u64 << 30).to_string())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let csi = CsiPlugin::connect(&format!("unix://{}", socket.display()), options())
        .await
        .unwrap();
    assert_eq!(csi.node_info().await.unwrap().node_id, "bin-node");
    let volume = csi
        .create_volume(&CreateVolumeRequest {
            name: "pvc-bin".into(),
            capacity: CapacityRange {
                required_bytes: 1 << 30,
                limit_bytes: 0,
            },
            capabilities: vec![rwo()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(csi.capacity(&Default::default()).await.unwrap(), 3 << 30);

    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket removed on shutdown");
    let state = std::fs::read_to_string(root.join("state.json")).unwrap();
    assert!(state.contains(&volume.volume_id));
}

#[tokio::test]
async fn binary_refuses_a_bad_endpoint() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf-hostpath-csi"))
        .env("CSI_ENDPOINT", "tcp://127.0.0.1:1")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only unix sockets"), "{stderr}");
}

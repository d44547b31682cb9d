//! Real bind mounts (needs root; CI runs as root): a read-only publish rejects writes, a
//! read-write one reaches the volume, and teardown leaves no mount, staging directory,
//! target directory or state behind.

#![allow(missing_docs)]
mod common;

use common::*;
use wharf_core::backend::volume::{
    CapacityRange, CreateVolumeRequest, NodePublishRequest, NodeStageRequest, StringMap,
};
use wharf_core::backend::VolumePlugin;

#[tokio::test]
async fn root_readonly_publish_rejects_writes_and_teardown_leaves_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root for bind mounts");
        return;
    }
    let h = Harness::real();
    let csi = h.client().await;
    let volume = csi
        .create_volume(&CreateVolumeRequest {
            name: "pvc-root".into(),
            capacity: CapacityRange {
                required_bytes: GIB,
                limit_bytes: 0,
            },
            capabilities: vec![rwo()],
            ..Default::default()
        })
        .await
        .unwrap();
    let id = volume.volume_id.clone();
    let staging = h.path("plugins/staging/pv");
    csi.node_stage(&NodeStageRequest {
        volume_id: id.clone(),
        publish_context: StringMap::new(),
        staging_path: staging.clone(),
        capability: rwo(),
        secrets: StringMap::new(),
        volume_context: StringMap::new(),
    })
    .await
    .unwrap();
    assert!(wharf_storage_csi::mount::is_mount_point(&staging).unwrap());
    let publish = |pod: &str, readonly: bool| NodePublishRequest {
        volume_id: id.clone(),
        publish_context: StringMap::new(),
        staging_path: Some(staging.clone()),
        target_path: h.path(&format!("pods/{pod}/volumes/data")),
        capability: rwo(),
        readonly,
        secrets: StringMap::new(),
        volume_context: StringMap::new(),
    };
    std::fs::create_dir_all(h.path("pods/writer/volumes")).unwrap();
    std::fs::create_dir_all(h.path("pods/reader/volumes")).unwrap();
    csi.node_publish(&publish("writer", false)).await.unwrap();
    csi.node_publish(&publish("reader", true)).await.unwrap();

    // Written through the read-write publish: lands in the volume, visible to the reader.
    std::fs::write(h.path("pods/writer/volumes/data/hello"), b"hi").unwrap();
    assert_eq!(
        std::fs::read(h.volume_dir(&id).join("hello")).unwrap(),
        b"hi"
    );
    assert_eq!(
        std::fs::read(h.path("pods/reader/volumes/data/hello")).unwrap(),
        b"hi"
    );
    // The read-only publish refuses writes with EROFS.
    let err = std::fs::write(h.path("pods/reader/volumes/data/nope"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");

    let stats = csi
        .node_stats(&id, &h.path("pods/writer/volumes/data"))
        .await
        .unwrap();
    assert_eq!(stats.total_bytes, GIB);
    assert!(stats.used_bytes > 0);

    csi.node_unpublish(&id, &h.path("pods/writer/volumes/data"))
        .await
        .unwrap();
    csi.node_unpublish(&id, &h.path("pods/reader/volumes/data"))
        .await
        .unwrap();
    csi.node_unstage(&id, &staging).await.unwrap();
    csi.delete_volume(&id, &StringMap::new()).await.unwrap();

    assert!(
        mounts_under(h.dir.path()).is_empty(),
        "{:?}",
        mounts_under(h.dir.path())
    );
    assert!(!exists(&staging));
    assert!(!exists(&h.path("pods/writer/volumes/data")));
    assert!(!exists(&h.path("pods/reader/volumes/data")));
    assert!(!exists(&h.volume_dir(&id)));
    assert!(h.driver().state().volumes.is_empty());
}

#[tokio::test]
async fn root_mount_flags_reach_the_bind_mount() {
    if !is_root() {
        eprintln!("skipped: needs root for bind mounts");
        return;
    }
    let h = Harness::real();
    let csi = h.client().await;
    let mut cap = rwo();
    cap.access_type = wharf_core::backend::volume::AccessType::Mount {
        fs_type: String::new(),
        mount_flags: vec!["noexec".into(), "nosuid".into()],
    };
    let id = csi
        .create_volume(&CreateVolumeRequest {
            name: "pvc-flags".into(),
            capabilities: vec![cap.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .volume_id;
    let staging = h.path("staging");
    csi.node_stage(&NodeStageRequest {
        volume_id: id.clone(),
        publish_context: StringMap::new(),
        staging_path: staging.clone(),
        capability: cap.clone(),
        secrets: StringMap::new(),
        volume_context: StringMap::new(),
    })
    .await
    .unwrap();
    let target = h.path("target");
    csi.node_publish(&NodePublishRequest {
        volume_id: id.clone(),
        publish_context: StringMap::new(),
        staging_path: Some(staging.clone()),
        target_path: target.clone(),
        capability: cap,
        readonly: false,
        secrets: StringMap::new(),
        volume_context: StringMap::new(),
    })
    .await
    .unwrap();
    let stat = nix::sys::statvfs::statvfs(&target).unwrap();
    assert!(stat.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC));
    assert!(stat.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID));
    csi.node_unpublish(&id, &target).await.unwrap();
    csi.node_unstage(&id, &staging).await.unwrap();
    csi.delete_volume(&id, &StringMap::new()).await.unwrap();
    assert!(mounts_under(h.dir.path()).is_empty());
}

//! The CSI client against the built-in hostpath driver over a real unix socket, with
//! recorded mounts (no root needed): lifecycle, reference-counted staging, snapshots,
//! clones, pagination, and a driver restart in the middle.

#![allow(missing_docs)]
mod common;

use std::time::Duration;

use common::*;
use wharf_core::backend::volume::{
    CapacityRange, CreateVolumeRequest, NodePublishRequest, NodeStageRequest, StringMap,
    VolumeSource,
};
use wharf_core::backend::{ErrorKind, VolumePlugin};

fn create(name: &str, bytes: u64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity: CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        },
        capabilities: vec![rwo()],
        ..Default::default()
    }
}

fn stage(h: &Harness, id: &str) -> NodeStageRequest {
    NodeStageRequest {
        volume_id: id.into(),
        publish_context: StringMap::new(),
        staging_path: h.path(&format!("staging/{id}")),
        capability: rwo(),
        secrets: StringMap::new(),
        volume_context: StringMap::new(),
    }
}

fn publish(h: &Harness, id: &str, pod: &str, readonly: bool) -> NodePublishRequest {
    NodePublishRequest {
        volume_id: id.into(),
        publish_context: StringMap::new(),
        staging_path: Some(h.path(&format!("staging/{id}"))),
        target_path: h.path(&format!("pods/{pod}/volumes/data")),
        capability: rwo(),
        readonly,
        secrets: StringMap::new(),
        volume_context: StringMap::new(),
    }
}

#[tokio::test]
async fn full_lifecycle_with_staging_shared_by_two_pods() {
    let mut h = Harness::recorded();
    let csi = h.client().await;
    assert_eq!(csi.name(), "hostpath.csi.wharf.dev");
    let caps = csi.capabilities().await.unwrap();
    assert!(
        caps.create_delete_volume && caps.publish_unpublish && caps.stage_unstage && caps.snapshots
    );
    csi.probe().await.unwrap();

    let before = csi.capacity(&StringMap::new()).await.unwrap();
    let volume = csi.create_volume(&create("pvc-a", GIB)).await.unwrap();
    assert_eq!(volume.capacity_bytes, GIB);
    assert_eq!(csi.capacity(&StringMap::new()).await.unwrap(), before - GIB);
    // Same name, compatible: the same volume.
    let again = csi.create_volume(&create("pvc-a", GIB)).await.unwrap();
    assert_eq!(again.volume_id, volume.volume_id);
    // Same name, other size: ALREADY_EXISTS.
    let err = csi
        .create_volume(&create("pvc-a", 2 * GIB))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);

    let id = volume.volume_id.as_str();
    let info = csi.node_info().await.unwrap();
    assert_eq!(info.node_id, NODE);
    let ctx = csi
        .controller_publish(id, &info.node_id, &rwo(), false, &StringMap::new())
        .await
        .unwrap();
    assert!(ctx.is_empty());

    csi.node_stage(&stage(&h, id)).await.unwrap();
    csi.node_stage(&stage(&h, id)).await.unwrap();
    csi.node_publish(&publish(&h, id, "a", false))
        .await
        .unwrap();
    csi.node_publish(&publish(&h, id, "b", true)).await.unwrap();
    assert_eq!(
        csi.staged_volumes(),
        vec![(id.to_string(), h.path(&format!("staging/{id}")), 2)]
    );
    let mounts = h.recorded.as_ref().unwrap().mounts();
    assert_eq!(mounts.len(), 3, "staging + two targets: {mounts:?}");

    std::fs::write(h.volume_dir(id).join("data.bin"), vec![7u8; 64 * 1024]).unwrap();
    let stats = csi
        .node_stats(id, &h.path("pods/a/volumes/data"))
        .await
        .unwrap();
    assert_eq!(stats.total_bytes, GIB);
    assert!(stats.used_bytes >= 64 * 1024, "{stats:?}");
    assert!(stats.used_inodes >= 2);

    // Pod a goes away; the unstage is deferred while pod b still uses the volume.
    csi.node_unpublish(id, &h.path("pods/a/volumes/data"))
        .await
        .unwrap();
    assert!(!exists(&h.path("pods/a/volumes/data")));
    csi.node_unstage(id, &h.path(&format!("staging/{id}")))
        .await
        .unwrap();
    assert!(h
        .recorded
        .as_ref()
        .unwrap()
        .mounts()
        .contains_key(&h.path(&format!("staging/{id}"))));

    csi.node_unpublish(id, &h.path("pods/b/volumes/data"))
        .await
        .unwrap();
    csi.node_unpublish(id, &h.path("pods/b/volumes/data"))
        .await
        .unwrap();
    csi.node_unstage(id, &h.path(&format!("staging/{id}")))
        .await
        .unwrap();
    csi.node_unstage(id, &h.path(&format!("staging/{id}")))
        .await
        .unwrap();
    assert!(h.recorded.as_ref().unwrap().mounts().is_empty());
    assert!(!exists(&h.path(&format!("staging/{id}"))));

    // Delete refuses a volume still published to the node.
    let err = csi.delete_volume(id, &StringMap::new()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FailedPrecondition);
    csi.controller_unpublish(id, NODE).await.unwrap();
    csi.delete_volume(id, &StringMap::new()).await.unwrap();
    csi.delete_volume(id, &StringMap::new()).await.unwrap();
    assert!(!exists(&h.volume_dir(id)));
    assert_eq!(csi.capacity(&StringMap::new()).await.unwrap(), before);
    let state = h.driver().state();
    assert!(state.volumes.is_empty() && state.snapshots.is_empty());
    h.stop().await;
    assert!(!exists(&h.socket()));
}

#[tokio::test]
async fn snapshots_restores_clones_and_expansion() {
    let h = Harness::recorded();
    let csi = h.client().await;
    let volume = csi.create_volume(&create("pvc-src", GIB)).await.unwrap();
    let src = volume.volume_id.clone();
    std::fs::create_dir(h.volume_dir(&src).join("sub")).unwrap();
    std::fs::write(h.volume_dir(&src).join("sub/file"), b"v1").unwrap();

    let snap = csi.create_snapshot("snap-1", &src).await.unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(snap.size_bytes, GIB);
    assert_eq!(
        csi.create_snapshot("snap-1", &src)
            .await
            .unwrap()
            .snapshot_id,
        snap.snapshot_id
    );
    std::fs::write(h.volume_dir(&src).join("sub/file"), b"v2").unwrap();

    let mut restore = create("pvc-restore", 0);
    restore.source = Some(VolumeSource::Snapshot(snap.snapshot_id.clone()));
    let restored = csi.create_volume(&restore).await.unwrap();
    assert_eq!(restored.capacity_bytes, GIB, "sized from the snapshot");
    assert_eq!(restored.source, restore.source);
    assert_eq!(
        std::fs::read(h.volume_dir(&restored.volume_id).join("sub/file")).unwrap(),
        b"v1"
    );

    let mut clone = create("pvc-clone", 2 * GIB);
    clone.source = Some(VolumeSource::Volume(src.clone()));
    let cloned = csi.create_volume(&clone).await.unwrap();
    assert_eq!(
        std::fs::read(h.volume_dir(&cloned.volume_id).join("sub/file")).unwrap(),
        b"v2"
    );

    let mut too_small = create("pvc-small", GIB / 2);
    too_small.source = Some(VolumeSource::Snapshot(snap.snapshot_id.clone()));
    let err = csi.create_volume(&too_small).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "OUT_OF_RANGE: {err}");

    let listed = csi.list_snapshots(&src).await.unwrap();
    assert_eq!(listed.len(), 1);

    let (size, node_needed) = csi
        .expand_volume(
            &src,
            CapacityRange {
                required_bytes: 3 * GIB,
                limit_bytes: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!((size, node_needed), (3 * GIB, false));
    let err = csi
        .expand_volume(
            &src,
            CapacityRange {
                required_bytes: 100 * GIB,
                limit_bytes: 0,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);

    csi.delete_snapshot(&snap.snapshot_id).await.unwrap();
    csi.delete_snapshot(&snap.snapshot_id).await.unwrap();
    // The restored volume is an independent copy.
    assert!(h.volume_dir(&restored.volume_id).join("sub/file").exists());
    for id in [&src, &restored.volume_id, &cloned.volume_id] {
        csi.delete_volume(id, &StringMap::new()).await.unwrap();
    }
    assert!(std::fs::read_dir(h.root().join("volumes"))
        .unwrap()
        .next()
        .is_none());
    assert!(std::fs::read_dir(h.root().join("snapshots"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn list_volumes_pages_through_everything() {
    let h = Harness::recorded();
    let csi = h.client().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            csi.create_volume(&create(&format!("pvc-{i}"), GIB / 8))
                .await
                .unwrap()
                .volume_id,
        );
    }
    let mut listed: Vec<String> = csi
        .list_volumes(3)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.volume.unwrap().volume_id)
        .collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
}

#[tokio::test]
async fn driver_restart_in_the_middle() {
    let mut h = Harness::recorded();
    let csi = h.client().await;
    let id = csi
        .create_volume(&create("pvc-r", GIB))
        .await
        .unwrap()
        .volume_id;
    csi.controller_publish(&id, NODE, &rwo(), false, &StringMap::new())
        .await
        .unwrap();
    csi.node_stage(&stage(&h, &id)).await.unwrap();
    csi.node_publish(&publish(&h, &id, "a", false))
        .await
        .unwrap();

    // The driver goes away; a call made meanwhile is retried until it is back.
    h.stop().await;
    let driver = h.driver();
    let socket = h.socket();
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        wharf_storage_csi::server::RunningDriver::spawn(driver, socket).unwrap()
    });
    let stats = csi
        .node_stats(&id, &h.path("pods/a/volumes/data"))
        .await
        .unwrap();
    assert_eq!(stats.total_bytes, GIB);
    h.running = Some(restart.await.unwrap());

    // The restarted driver knows the volume, its staging and its publish.
    let again = csi.create_volume(&create("pvc-r", GIB)).await.unwrap();
    assert_eq!(again.volume_id, id);
    csi.node_unpublish(&id, &h.path("pods/a/volumes/data"))
        .await
        .unwrap();
    csi.node_unstage(&id, &h.path(&format!("staging/{id}")))
        .await
        .unwrap();
    csi.controller_unpublish(&id, NODE).await.unwrap();
    csi.delete_volume(&id, &StringMap::new()).await.unwrap();
    assert!(h.recorded.as_ref().unwrap().mounts().is_empty());
    assert!(h.driver().state().volumes.is_empty());
}

#[tokio::test]
async fn connect_waits_for_a_driver_that_starts_late() {
    let mut h = Harness::recorded();
    h.stop().await;
    let driver = h.driver();
    let socket = h.socket();
    let start = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        wharf_storage_csi::server::RunningDriver::spawn(driver, socket).unwrap()
    });
    let csi = h.client().await;
    csi.probe().await.unwrap();
    h.running = Some(start.await.unwrap());
}

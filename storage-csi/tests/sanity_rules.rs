//! The rules csi-sanity checks, written as our own tests against the hostpath driver over
//! its unix socket with raw CSI calls (csi-sanity itself is a Go program this project's
//! machines cannot install). Mounts are recorded, so no root is needed.

#![allow(missing_docs)]
mod common;

use common::*;
use tonic::{Code, Response, Status};
use wharf_storage_csi::proto::controller_client::ControllerClient;
use wharf_storage_csi::proto::identity_client::IdentityClient;
use wharf_storage_csi::proto::node_client::NodeClient;
use wharf_storage_csi::proto::volume_capability::{
    access_mode::Mode, AccessMode, AccessType, MountVolume,
};
use wharf_storage_csi::proto::*;
use wharf_storage_csi::server::connect;

fn code<T>(result: Result<Response<T>, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create_req(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap()],
        ..Default::default()
    }
}

struct Clients {
    identity: IdentityClient<tonic::transport::Channel>,
    controller: ControllerClient<tonic::transport::Channel>,
    node: NodeClient<tonic::transport::Channel>,
}

fn clients(h: &Harness) -> Clients {
    let channel = connect(&h.socket()).unwrap();
    Clients {
        identity: IdentityClient::new(channel.clone()),
        controller: ControllerClient::new(channel.clone()),
        node: NodeClient::new(channel),
    }
}

#[tokio::test]
async fn identity() {
    let h = Harness::recorded();
    let mut c = clients(&h);
    let info = c
        .identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!info.name.is_empty() && !info.vendor_version.is_empty());
    assert!(info.name.len() <= 63);
    let probe = c
        .identity
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_ne!(probe.ready, Some(false));
    let caps = c
        .identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!caps.capabilities.is_empty());
}

#[tokio::test]
async fn create_and_delete_volume_rules() {
    let h = Harness::recorded();
    let mut c = clients(&h);
    let ctl = &mut c.controller;
    // Required fields.
    assert_eq!(
        code(ctl.create_volume(create_req("", 1 << 20)).await),
        Code::InvalidArgument
    );
    let mut no_caps = create_req("v", 1 << 20);
    no_caps.volume_capabilities.clear();
    assert_eq!(
        code(ctl.create_volume(no_caps).await),
        Code::InvalidArgument
    );
    let mut no_mode = create_req("v", 1 << 20);
    no_mode.volume_capabilities[0].access_mode = None;
    assert_eq!(
        code(ctl.create_volume(no_mode).await),
        Code::InvalidArgument
    );
    let mut no_type = create_req("v", 1 << 20);
    no_type.volume_capabilities[0].access_type = None;
    assert_eq!(
        code(ctl.create_volume(no_type).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.create_volume(create_req(&"n".repeat(200), 1)).await),
        Code::InvalidArgument
    );

    // Idempotent by name; capacity at least what was asked.
    let first = ctl
        .create_volume(create_req("v", 1 << 20))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(first.capacity_bytes >= 1 << 20);
    let second = ctl
        .create_volume(create_req("v", 1 << 20))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(first.volume_id, second.volume_id);
    assert_eq!(
        code(ctl.create_volume(create_req("v", 2 << 20)).await),
        Code::AlreadyExists
    );
    let mut other_params = create_req("v", 1 << 20);
    other_params.parameters.insert("tier".into(), "fast".into());
    assert_eq!(
        code(ctl.create_volume(other_params).await),
        Code::AlreadyExists
    );

    // Sources that do not exist.
    let mut from_snap = create_req("w", 1 << 20);
    from_snap.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: "missing".into(),
            },
        )),
    });
    assert_eq!(code(ctl.create_volume(from_snap).await), Code::NotFound);
    let mut from_vol = create_req("w", 1 << 20);
    from_vol.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: "missing".into(),
            },
        )),
    });
    assert_eq!(code(ctl.create_volume(from_vol).await), Code::NotFound);
    // Beyond what the driver can give.
    assert_eq!(
        code(ctl.create_volume(create_req("huge", 1 << 40)).await),
        Code::OutOfRange
    );
    // A topology the node is not in.
    let mut elsewhere = create_req("elsewhere", 1 << 20);
    elsewhere.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![Topology {
            segments: [(
                "topology.hostpath.csi.wharf.dev/node".to_string(),
                "other".to_string(),
            )]
            .into(),
        }],
        preferred: vec![],
    });
    assert_eq!(
        code(ctl.create_volume(elsewhere).await),
        Code::ResourceExhausted
    );

    // Delete: required id; missing is OK; twice is OK.
    let del = |id: &str| DeleteVolumeRequest {
        volume_id: id.into(),
        secrets: Default::default(),
    };
    assert_eq!(
        code(ctl.delete_volume(del("")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.delete_volume(del("no-such-volume")).await),
        Code::Ok
    );
    assert_eq!(
        code(ctl.delete_volume(del(&first.volume_id)).await),
        Code::Ok
    );
    assert_eq!(
        code(ctl.delete_volume(del(&first.volume_id)).await),
        Code::Ok
    );
}

#[tokio::test]
async fn validate_list_capacity_rules() {
    let h = Harness::recorded();
    let mut c = clients(&h);
    let ctl = &mut c.controller;
    let vol = ctl
        .create_volume(create_req("v", 1 << 20))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let validate = |id: &str, caps: Vec<VolumeCapability>| ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    assert_eq!(
        code(
            ctl.validate_volume_capabilities(validate("", vec![cap()]))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.validate_volume_capabilities(validate(&vol.volume_id, vec![]))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.validate_volume_capabilities(validate("missing", vec![cap()]))
                .await
        ),
        Code::NotFound
    );
    let ok = ctl
        .validate_volume_capabilities(validate(&vol.volume_id, vec![cap()]))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some());

    let list = |max: i32, token: &str| ListVolumesRequest {
        max_entries: max,
        starting_token: token.into(),
    };
    assert_eq!(
        code(ctl.list_volumes(list(0, "bogus-token")).await),
        Code::Aborted
    );
    assert_eq!(
        code(ctl.list_volumes(list(-1, "")).await),
        Code::InvalidArgument
    );
    for i in 0..4 {
        ctl.create_volume(create_req(&format!("p{i}"), 1 << 20))
            .await
            .unwrap();
    }
    let page = ctl.list_volumes(list(2, "")).await.unwrap().into_inner();
    assert_eq!(page.entries.len(), 2);
    assert!(!page.next_token.is_empty());
    let rest = ctl
        .list_volumes(list(0, &page.next_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.entries.len(), 3);
    assert!(rest.next_token.is_empty());

    let capacity = ctl
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        capacity.available_capacity,
        (10 * GIB - 5 * (1 << 20)) as i64
    );
}

#[tokio::test]
async fn controller_publish_rules() {
    let h = Harness::recorded();
    let mut c = clients(&h);
    let ctl = &mut c.controller;
    let vol = ctl
        .create_volume(create_req("v", 1 << 20))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let publish = |id: &str, node: &str, cap: Option<VolumeCapability>, readonly: bool| {
        ControllerPublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.into(),
            volume_capability: cap,
            readonly,
            ..Default::default()
        }
    };
    let id = vol.volume_id.as_str();
    assert_eq!(
        code(
            ctl.controller_publish_volume(publish("", NODE, Some(cap()), false))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.controller_publish_volume(publish(id, "", Some(cap()), false))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.controller_publish_volume(publish(id, NODE, None, false))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.controller_publish_volume(publish("missing", NODE, Some(cap()), false))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            ctl.controller_publish_volume(publish(id, "other-node", Some(cap()), false))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            ctl.controller_publish_volume(publish(id, NODE, Some(cap()), false))
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            ctl.controller_publish_volume(publish(id, NODE, Some(cap()), false))
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            ctl.controller_publish_volume(publish(id, NODE, Some(cap()), true))
                .await
        ),
        Code::AlreadyExists
    );
    let listed = ctl
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.entries[0]
            .status
            .as_ref()
            .unwrap()
            .published_node_ids,
        vec![NODE.to_string()]
    );

    let unpublish = |id: &str, node: &str| ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        secrets: Default::default(),
    };
    assert_eq!(
        code(ctl.controller_unpublish_volume(unpublish("", NODE)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.controller_unpublish_volume(unpublish(id, NODE)).await),
        Code::Ok
    );
    assert_eq!(
        code(ctl.controller_unpublish_volume(unpublish(id, NODE)).await),
        Code::Ok
    );
    assert_eq!(
        code(
            ctl.controller_unpublish_volume(unpublish("missing", NODE))
                .await
        ),
        Code::Ok
    );
}

#[tokio::test]
async fn snapshot_and_expand_rules() {
    let h = Harness::recorded();
    let mut c = clients(&h);
    let ctl = &mut c.controller;
    let a = ctl
        .create_volume(create_req("a", 1 << 20))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let b = ctl
        .create_volume(create_req("b", 1 << 20))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let snap = |name: &str, src: &str| CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: src.into(),
        ..Default::default()
    };
    assert_eq!(
        code(ctl.create_snapshot(snap("", &a.volume_id)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.create_snapshot(snap("s", "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.create_snapshot(snap("s", "missing")).await),
        Code::NotFound
    );
    let s = ctl
        .create_snapshot(snap("s", &a.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(s.creation_time.is_some() && s.ready_to_use);
    let again = ctl
        .create_snapshot(snap("s", &a.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again.snapshot_id, s.snapshot_id);
    assert_eq!(
        code(ctl.create_snapshot(snap("s", &b.volume_id)).await),
        Code::AlreadyExists
    );

    let by_id = ctl
        .list_snapshots(ListSnapshotsRequest {
            snapshot_id: "missing".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(by_id.entries.is_empty());
    let by_source = ctl
        .list_snapshots(ListSnapshotsRequest {
            source_volume_id: a.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_source.entries.len(), 1);
    let bad_token = ListSnapshotsRequest {
        starting_token: "nope".into(),
        ..Default::default()
    };
    assert_eq!(code(ctl.list_snapshots(bad_token).await), Code::Aborted);

    let del = |id: &str| DeleteSnapshotRequest {
        snapshot_id: id.into(),
        secrets: Default::default(),
    };
    assert_eq!(
        code(ctl.delete_snapshot(del("")).await),
        Code::InvalidArgument
    );
    assert_eq!(code(ctl.delete_snapshot(del("missing")).await), Code::Ok);
    assert_eq!(
        code(ctl.delete_snapshot(del(&s.snapshot_id)).await),
        Code::Ok
    );

    let expand = |id: &str, range: Option<CapacityRange>| ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: range,
        ..Default::default()
    };
    let range = |bytes| {
        Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        })
    };
    assert_eq!(
        code(
            ctl.controller_expand_volume(expand("", range(2 << 20)))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.controller_expand_volume(expand(&a.volume_id, None))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.controller_expand_volume(expand("missing", range(2 << 20)))
                .await
        ),
        Code::NotFound
    );
    let grown = ctl
        .controller_expand_volume(expand(&a.volume_id, range(2 << 20)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 2 << 20);
}

#[tokio::test]
async fn node_rules_and_idempotent_lifecycle() {
    let h = Harness::recorded();
    let mut c = clients(&h);
    let vol = c
        .controller
        .create_volume(create_req("v", 1 << 20))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let id = vol.volume_id.clone();
    let staging = h.path("staging").display().to_string();
    let target = h.path("target").display().to_string();
    let node = &mut c.node;

    let info = node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, NODE);
    let caps = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!caps.capabilities.is_empty());

    let stage = |id: &str, path: &str, cap: Option<VolumeCapability>| NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: path.into(),
        volume_capability: cap,
        ..Default::default()
    };
    assert_eq!(
        code(
            node.node_stage_volume(stage("", &staging, Some(cap())))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(node.node_stage_volume(stage(&id, "", Some(cap()))).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(node.node_stage_volume(stage(&id, &staging, None)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            node.node_stage_volume(stage("missing", &staging, Some(cap())))
                .await
        ),
        Code::NotFound
    );

    let publish = |id: &str, staging: &str, target: &str, cap: Option<VolumeCapability>| {
        NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.into(),
            target_path: target.into(),
            volume_capability: cap,
            ..Default::default()
        }
    };
    assert_eq!(
        code(
            node.node_publish_volume(publish("", &staging, &target, Some(cap())))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            node.node_publish_volume(publish(&id, &staging, "", Some(cap())))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            node.node_publish_volume(publish(&id, &staging, &target, None))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            node.node_publish_volume(publish(&id, "", &target, Some(cap())))
                .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            node.node_publish_volume(publish("missing", &staging, &target, Some(cap())))
                .await
        ),
        Code::NotFound
    );
    // Not staged yet.
    assert_eq!(
        code(
            node.node_publish_volume(publish(&id, &staging, &target, Some(cap())))
                .await
        ),
        Code::FailedPrecondition
    );

    // Stage, publish: each twice.
    for _ in 0..2 {
        assert_eq!(
            code(
                node.node_stage_volume(stage(&id, &staging, Some(cap())))
                    .await
            ),
            Code::Ok
        );
    }
    let mut ro_cap = cap();
    ro_cap.access_mode = Some(AccessMode {
        mode: Mode::MultiNodeReaderOnly as i32,
    });
    assert_eq!(
        code(
            node.node_stage_volume(stage(&id, &staging, Some(ro_cap)))
                .await
        ),
        Code::AlreadyExists
    );
    for _ in 0..2 {
        assert_eq!(
            code(
                node.node_publish_volume(publish(&id, &staging, &target, Some(cap())))
                    .await
            ),
            Code::Ok
        );
    }
    let mut readonly = publish(&id, &staging, &target, Some(cap()));
    readonly.readonly = true;
    assert_eq!(
        code(node.node_publish_volume(readonly).await),
        Code::AlreadyExists
    );

    let stats = |id: &str, path: &str| NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        staging_target_path: String::new(),
    };
    assert_eq!(
        code(node.node_get_volume_stats(stats("", &target)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(node.node_get_volume_stats(stats(&id, "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(node.node_get_volume_stats(stats("missing", &target)).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            node.node_get_volume_stats(stats(&id, "/nonexistent/path"))
                .await
        ),
        Code::NotFound
    );
    let usage = node
        .node_get_volume_stats(stats(&id, &target))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.usage.len(), 2);

    // Unstage while still published is refused.
    let unstage = |id: &str, path: &str| NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: path.into(),
    };
    assert_eq!(
        code(node.node_unstage_volume(unstage(&id, &staging)).await),
        Code::FailedPrecondition
    );

    let unpublish = |id: &str, path: &str| NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: path.into(),
    };
    assert_eq!(
        code(node.node_unpublish_volume(unpublish("", &target)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(node.node_unpublish_volume(unpublish(&id, "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            node.node_unpublish_volume(unpublish("missing", &target))
                .await
        ),
        Code::NotFound
    );
    for _ in 0..2 {
        assert_eq!(
            code(node.node_unpublish_volume(unpublish(&id, &target)).await),
            Code::Ok
        );
    }
    assert!(
        !exists(&h.path("target")),
        "the driver removes the target it created"
    );
    assert_eq!(
        code(node.node_unstage_volume(unstage("", &staging)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(node.node_unstage_volume(unstage(&id, "")).await),
        Code::InvalidArgument
    );
    for _ in 0..2 {
        assert_eq!(
            code(node.node_unstage_volume(unstage(&id, &staging)).await),
            Code::Ok
        );
    }
    assert!(h.recorded.as_ref().unwrap().mounts().is_empty());
    let del = DeleteVolumeRequest {
        volume_id: id,
        secrets: Default::default(),
    };
    assert_eq!(code(c.controller.delete_volume(del).await), Code::Ok);
}

#[tokio::test]
async fn block_volumes_are_refused() {
    let h = Harness::recorded();
    let mut c = clients(&h);
    let mut block = create_req("blk", 1 << 20);
    block.volume_capabilities[0].access_type =
        Some(AccessType::Block(volume_capability::BlockVolume {}));
    let status = c.controller.create_volume(block).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("block"), "{}", status.message());
}

//! The gRPC face of the hostpath driver: Identity, Controller and Node services that run
//! the driver's blocking logic on tokio's blocking pool.

use tonic::{Request, Response, Status};

use super::HostPathDriver;
use crate::proto::controller_server::Controller;
use crate::proto::identity_server::Identity;
use crate::proto::node_server::Node;
use crate::proto::{
    self, controller_service_capability, node_service_capability, plugin_capability,
};

/// The three CSI services of a [`HostPathDriver`], ready to add to a tonic server.
#[derive(Clone, Debug)]
pub struct DriverServices {
    driver: HostPathDriver,
}

impl DriverServices {
    /// Services for `driver`.
    pub fn new(driver: HostPathDriver) -> Self {
        DriverServices { driver }
    }

    async fn run<T, F>(&self, method: &'static str, call: F) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
        F: FnOnce(&HostPathDriver) -> Result<T, Status> + Send + 'static,
    {
        let driver = self.driver.clone();
        let result = tokio::task::spawn_blocking(move || call(&driver))
            .await
            .map_err(|err| Status::internal(format!("{method} panicked: {err}")))?;
        if let Err(status) = &result {
            tracing::debug!(method, code = ?status.code(), message = status.message(), "CSI call failed");
        }
        result.map(Response::new)
    }
}

/// Controller capabilities the hostpath driver advertises.
pub const CONTROLLER_CAPABILITIES: &[controller_service_capability::rpc::Type] = {
    use controller_service_capability::rpc::Type;
    &[
        Type::CreateDeleteVolume,
        Type::PublishUnpublishVolume,
        Type::ListVolumes,
        Type::GetCapacity,
        Type::CreateDeleteSnapshot,
        Type::ListSnapshots,
        Type::CloneVolume,
        Type::PublishReadonly,
        Type::ExpandVolume,
        Type::ListVolumesPublishedNodes,
        Type::GetVolume,
        Type::SingleNodeMultiWriter,
    ]
};

/// Node capabilities the hostpath driver advertises.
pub const NODE_CAPABILITIES: &[node_service_capability::rpc::Type] = {
    use node_service_capability::rpc::Type;
    &[
        Type::StageUnstageVolume,
        Type::GetVolumeStats,
        Type::ExpandVolume,
        Type::SingleNodeMultiWriter,
    ]
};

#[tonic::async_trait]
impl Identity for DriverServices {
    async fn get_plugin_info(
        &self,
        _: Request<proto::GetPluginInfoRequest>,
    ) -> Result<Response<proto::GetPluginInfoResponse>, Status> {
        Ok(Response::new(proto::GetPluginInfoResponse {
            name: self.driver.config().name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<proto::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<proto::GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
        let service = |t: service::Type| proto::PluginCapability {
            r#type: Some(Type::Service(Service { r#type: t as i32 })),
        };
        Ok(Response::new(proto::GetPluginCapabilitiesResponse {
            capabilities: vec![
                service(service::Type::ControllerService),
                service(service::Type::VolumeAccessibilityConstraints),
                proto::PluginCapability {
                    r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    })),
                },
            ],
        }))
    }

    async fn probe(
        &self,
        _: Request<proto::ProbeRequest>,
    ) -> Result<Response<proto::ProbeResponse>, Status> {
        let root = &self.driver.config().root;
        if !root.join("volumes").is_dir() {
            return Err(Status::failed_precondition(format!(
                "driver root {} is not usable",
                root.display()
            )));
        }
        Ok(Response::new(proto::ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl Controller for DriverServices {
    async fn create_volume(
        &self,
        request: Request<proto::CreateVolumeRequest>,
    ) -> Result<Response<proto::CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        self.run("CreateVolume", move |d| d.create_volume(req))
            .await
    }

    async fn delete_volume(
        &self,
        request: Request<proto::DeleteVolumeRequest>,
    ) -> Result<Response<proto::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        self.run("DeleteVolume", move |d| d.delete_volume(req))
            .await
    }

    async fn controller_publish_volume(
        &self,
        request: Request<proto::ControllerPublishVolumeRequest>,
    ) -> Result<Response<proto::ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        self.run("ControllerPublishVolume", move |d| {
            d.controller_publish(req)
        })
        .await
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<proto::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<proto::ControllerUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        self.run("ControllerUnpublishVolume", move |d| {
            d.controller_unpublish(req)
        })
        .await
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<proto::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<proto::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        self.run("ValidateVolumeCapabilities", move |d| {
            d.validate_volume_capabilities(req)
        })
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<proto::ListVolumesRequest>,
    ) -> Result<Response<proto::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        self.run("ListVolumes", move |d| d.list_volumes(req)).await
    }

    async fn get_capacity(
        &self,
        request: Request<proto::GetCapacityRequest>,
    ) -> Result<Response<proto::GetCapacityResponse>, Status> {
        let req = request.into_inner();
        self.run("GetCapacity", move |d| d.get_capacity(req)).await
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<proto::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<proto::ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::{Rpc, Type};
        Ok(Response::new(proto::ControllerGetCapabilitiesResponse {
            capabilities: CONTROLLER_CAPABILITIES
                .iter()
                .map(|t| proto::ControllerServiceCapability {
                    r#type: Some(Type::Rpc(Rpc { r#type: *t as i32 })),
                })
                .collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<proto::CreateSnapshotRequest>,
    ) -> Result<Response<proto::CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        self.run("CreateSnapshot", move |d| d.create_snapshot(req))
            .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<proto::DeleteSnapshotRequest>,
    ) -> Result<Response<proto::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        self.run("DeleteSnapshot", move |d| d.delete_snapshot(req))
            .await
    }

    async fn list_snapshots(
        &self,
        request: Request<proto::ListSnapshotsRequest>,
    ) -> Result<Response<proto::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        self.run("ListSnapshots", move |d| d.list_snapshots(req))
            .await
    }

    async fn get_snapshot(
        &self,
        _: Request<proto::GetSnapshotRequest>,
    ) -> Result<Response<proto::GetSnapshotResponse>, Status> {
        Err(Status::unimplemented(
            "GetSnapshot is not offered (GET_SNAPSHOT not advertised)",
        ))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<proto::ControllerExpandVolumeRequest>,
    ) -> Result<Response<proto::ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        self.run("ControllerExpandVolume", move |d| {
            d.controller_expand_volume(req)
        })
        .await
    }

    async fn controller_get_volume(
        &self,
        request: Request<proto::ControllerGetVolumeRequest>,
    ) -> Result<Response<proto::ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        self.run("ControllerGetVolume", move |d| d.controller_get_volume(req))
            .await
    }

    async fn controller_modify_volume(
        &self,
        _: Request<proto::ControllerModifyVolumeRequest>,
    ) -> Result<Response<proto::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerModifyVolume is not offered (MODIFY_VOLUME not advertised)",
        ))
    }
}

#[tonic::async_trait]
impl Node for DriverServices {
    async fn node_stage_volume(
        &self,
        request: Request<proto::NodeStageVolumeRequest>,
    ) -> Result<Response<proto::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        self.run("NodeStageVolume", move |d| d.node_stage(req))
            .await
    }

    async fn node_unstage_volume(
        &self,
        request: Request<proto::NodeUnstageVolumeRequest>,
    ) -> Result<Response<proto::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        self.run("NodeUnstageVolume", move |d| d.node_unstage(req))
            .await
    }

    async fn node_publish_volume(
        &self,
        request: Request<proto::NodePublishVolumeRequest>,
    ) -> Result<Response<proto::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        self.run("NodePublishVolume", move |d| d.node_publish(req))
            .await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<proto::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<proto::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        self.run("NodeUnpublishVolume", move |d| d.node_unpublish(req))
            .await
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<proto::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<proto::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        self.run("NodeGetVolumeStats", move |d| d.node_get_volume_stats(req))
            .await
    }

    async fn node_expand_volume(
        &self,
        request: Request<proto::NodeExpandVolumeRequest>,
    ) -> Result<Response<proto::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        self.run("NodeExpandVolume", move |d| d.node_expand_volume(req))
            .await
    }

    async fn node_get_capabilities(
        &self,
        _: Request<proto::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<proto::NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::{Rpc, Type};
        Ok(Response::new(proto::NodeGetCapabilitiesResponse {
            capabilities: NODE_CAPABILITIES
                .iter()
                .map(|t| proto::NodeServiceCapability {
                    r#type: Some(Type::Rpc(Rpc { r#type: *t as i32 })),
                })
                .collect(),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<proto::NodeGetInfoRequest>,
    ) -> Result<Response<proto::NodeGetInfoResponse>, Status> {
        Ok(Response::new(self.driver.node_get_info()))
    }
}

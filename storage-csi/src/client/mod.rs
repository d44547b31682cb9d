//! The CSI client: Wharf's [`VolumePlugin`](wharf_core::backend::VolumePlugin) over any
//! CSI driver on a unix socket.
//!
//! [`CsiPlugin::connect`] waits for the driver's Probe to report ready, then learns its
//! name and capabilities; afterwards each optional call is made only when the driver
//! advertised it (otherwise the call fails with `Unsupported` without reaching the driver).
//! Every call has a deadline and is retried per [`RetryPolicy`]. NOT_FOUND from a delete or
//! an unpublish/unstage is success, as the spec's idempotency rules make it.
//!
//! NodeStage happens once per volume per node however many pods use the volume: the client
//! counts the target paths published from each staging and unstages only when the last one
//! is gone (an earlier `node_unstage` is deferred and reported as done).

/// A retryable attempt: a closure making a fresh client and request for each try (tonic's
/// generated calls borrow their client mutably, so each attempt owns its own).
macro_rules! call {
    ($client:expr, $method:ident, $request:expr) => {
        || {
            let mut client = $client;
            let request = $request.clone();
            async move { client.$method(request).await }
        }
    };
}

mod convert;
mod plugin;
pub mod retry;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::Channel;

use crate::error::CsiError;
use crate::proto::controller_client::ControllerClient;
use crate::proto::identity_client::IdentityClient;
use crate::proto::node_client::NodeClient;
use crate::proto::{
    self, controller_service_capability, node_service_capability, plugin_capability,
};
pub use retry::RetryPolicy;

/// What a driver advertised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advertised {
    /// Plugin capabilities: the driver has a Controller service.
    pub controller_service: bool,
    /// Plugin capabilities: volumes have topology constraints.
    pub accessibility_constraints: bool,
    /// Plugin capabilities: online volume expansion.
    pub online_expansion: bool,
    /// Controller RPC capabilities.
    pub controller: BTreeSet<controller_service_capability::rpc::Type>,
    /// Node RPC capabilities.
    pub node: BTreeSet<node_service_capability::rpc::Type>,
}

impl Advertised {
    fn has_controller(&self, cap: controller_service_capability::rpc::Type) -> bool {
        self.controller_service && self.controller.contains(&cap)
    }

    fn has_node(&self, cap: node_service_capability::rpc::Type) -> bool {
        self.node.contains(&cap)
    }
}

/// A staging the client made on this node, and the target paths published from it.
#[derive(Clone, Debug)]
struct Staged {
    staging_path: PathBuf,
    targets: BTreeSet<PathBuf>,
}

/// Options for [`CsiPlugin::connect`].
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Deadlines and retries of every call.
    pub retry: RetryPolicy,
    /// How long `connect` waits for the driver's Probe to say ready.
    pub ready_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry: RetryPolicy::default(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// A CSI driver as a Wharf volume plugin.
#[derive(Debug)]
pub struct CsiPlugin {
    socket: PathBuf,
    channel: Channel,
    name: String,
    vendor_version: String,
    advertised: Advertised,
    retry: RetryPolicy,
    staged: Mutex<HashMap<String, Staged>>,
}

impl CsiPlugin {
    /// Connects to the driver at `endpoint` (`unix:///path`), waits until it is ready and
    /// discovers its capabilities.
    pub async fn connect(endpoint: &str, options: ClientOptions) -> Result<Self, CsiError> {
        let socket = crate::server::parse_endpoint(endpoint)?;
        let channel = crate::server::connect(&socket)?;
        let retry = options.retry;
        wait_ready(&channel, &socket, options.ready_timeout, retry).await?;
        let object = socket.display().to_string();
        let info = retry
            .run(
                "GetPluginInfo",
                &object,
                call!(
                    IdentityClient::new(channel.clone()),
                    get_plugin_info,
                    proto::GetPluginInfoRequest {}
                ),
            )
            .await?;
        let mut advertised = Advertised::default();
        let plugin_caps = retry
            .run(
                "GetPluginCapabilities",
                &info.name,
                call!(
                    IdentityClient::new(channel.clone()),
                    get_plugin_capabilities,
                    proto::GetPluginCapabilitiesRequest {}
                ),
            )
            .await?;
        for cap in plugin_caps.capabilities {
            match cap.r#type {
                Some(plugin_capability::Type::Service(s)) => {
                    use plugin_capability::service::Type;
                    match Type::try_from(s.r#type) {
                        Ok(Type::ControllerService) => advertised.controller_service = true,
                        Ok(Type::VolumeAccessibilityConstraints) => {
                            advertised.accessibility_constraints = true
                        }
                        _ => {}
                    }
                }
                Some(plugin_capability::Type::VolumeExpansion(e)) => {
                    advertised.online_expansion =
                        e.r#type == plugin_capability::volume_expansion::Type::Online as i32;
                }
                None => {}
            }
        }
        if advertised.controller_service {
            let caps = retry
                .run(
                    "ControllerGetCapabilities",
                    &info.name,
                    call!(
                        ControllerClient::new(channel.clone()),
                        controller_get_capabilities,
                        proto::ControllerGetCapabilitiesRequest {}
                    ),
                )
                .await?;
            advertised.controller = caps
                .capabilities
                .into_iter()
                .filter_map(|c| match c.r#type {
                    Some(controller_service_capability::Type::Rpc(rpc)) => {
                        controller_service_capability::rpc::Type::try_from(rpc.r#type).ok()
                    }
                    None => None,
                })
                .collect();
        }
        let node_caps = retry
            .run(
                "NodeGetCapabilities",
                &info.name,
                call!(
                    NodeClient::new(channel.clone()),
                    node_get_capabilities,
                    proto::NodeGetCapabilitiesRequest {}
                ),
            )
            .await?;
        advertised.node = node_caps
            .capabilities
            .into_iter()
            .filter_map(|c| match c.r#type {
                Some(node_service_capability::Type::Rpc(rpc)) => {
                    node_service_capability::rpc::Type::try_from(rpc.r#type).ok()
                }
                None => None,
            })
            .collect();
        tracing::info!(driver = %info.name, version = %info.vendor_version, ?advertised, "CSI driver connected");
        Ok(CsiPlugin {
            socket,
            channel,
            name: info.name,
            vendor_version: info.vendor_version,
            advertised,
            retry,
            staged: Mutex::new(HashMap::new()),
        })
    }

    /// The driver's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The driver's version string.
    pub fn vendor_version(&self) -> &str {
        &self.vendor_version
    }

    /// What the driver advertised.
    pub fn advertised(&self) -> &Advertised {
        &self.advertised
    }

    /// Volumes staged through this client, with the number of targets published from each.
    pub fn staged_volumes(&self) -> Vec<(String, PathBuf, usize)> {
        let staged = self.staged.lock().expect("staging table poisoned");
        let mut out: Vec<_> = staged
            .iter()
            .map(|(id, s)| (id.clone(), s.staging_path.clone(), s.targets.len()))
            .collect();
        out.sort();
        out
    }

    fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone())
    }

    fn require_controller(
        &self,
        method: &'static str,
        cap: controller_service_capability::rpc::Type,
    ) -> Result<(), CsiError> {
        if self.advertised.has_controller(cap) {
            Ok(())
        } else {
            Err(CsiError::Unsupported {
                method,
                driver: self.name.clone(),
                capability: cap.as_str_name(),
            })
        }
    }

    fn require_node(
        &self,
        method: &'static str,
        cap: node_service_capability::rpc::Type,
    ) -> Result<(), CsiError> {
        if self.advertised.has_node(cap) {
            Ok(())
        } else {
            Err(CsiError::Unsupported {
                method,
                driver: self.name.clone(),
                capability: cap.as_str_name(),
            })
        }
    }

    /// ValidateVolumeCapabilities: whether the volume supports all of `capabilities`
    /// (`Ok(None)`), or the driver's reason it does not.
    pub async fn validate_volume_capabilities(
        &self,
        volume_id: &str,
        capabilities: &[wharf_core::backend::volume::VolumeCapability],
        volume_context: &wharf_core::backend::volume::StringMap,
    ) -> Result<Option<String>, CsiError> {
        if !self.advertised.controller_service {
            return Err(CsiError::Unsupported {
                method: "ValidateVolumeCapabilities",
                driver: self.name.clone(),
                capability: "CONTROLLER_SERVICE",
            });
        }
        let request = proto::ValidateVolumeCapabilitiesRequest {
            volume_id: volume_id.to_string(),
            volume_context: convert::map_out(volume_context),
            volume_capabilities: capabilities.iter().map(convert::capability_out).collect(),
            ..Default::default()
        };
        let response = self
            .retry
            .run(
                "ValidateVolumeCapabilities",
                volume_id,
                call!(self.controller(), validate_volume_capabilities, request),
            )
            .await?;
        Ok(match response.confirmed {
            Some(_) => None,
            None => Some(response.message),
        })
    }

    /// ListVolumes, following pagination with pages of `page_size` (0: the driver's choice).
    /// A page token the driver no longer accepts (ABORTED) restarts the listing once.
    pub async fn list_volumes(
        &self,
        page_size: i32,
    ) -> Result<Vec<proto::list_volumes_response::Entry>, CsiError> {
        use controller_service_capability::rpc::Type;
        self.require_controller("ListVolumes", Type::ListVolumes)?;
        let mut out = Vec::new();
        let mut token = String::new();
        let mut restarted = false;
        loop {
            let request = proto::ListVolumesRequest {
                max_entries: page_size,
                starting_token: token.clone(),
            };
            // Not through the retry policy: ABORTED here means a stale token, not a
            // pending operation.
            let response = tokio::time::timeout(
                self.retry.call_timeout,
                self.controller().list_volumes(request),
            )
            .await;
            let page = match response {
                Err(_) => {
                    return Err(CsiError::Timeout {
                        method: "ListVolumes",
                        object: self.name.clone(),
                        after: self.retry.call_timeout,
                    })
                }
                Ok(Err(status)) if status.code() == tonic::Code::Aborted && !restarted => {
                    restarted = true;
                    out.clear();
                    token.clear();
                    continue;
                }
                Ok(Err(status)) => {
                    return Err(CsiError::Rpc {
                        method: "ListVolumes",
                        object: self.name.clone(),
                        code: status.code(),
                        message: status.message().to_string(),
                    })
                }
                Ok(Ok(page)) => page.into_inner(),
            };
            out.extend(page.entries);
            if page.next_token.is_empty() {
                return Ok(out);
            }
            token = page.next_token;
        }
    }

    /// ListSnapshots of one source volume (empty: all), following pagination.
    pub async fn list_snapshots(
        &self,
        source_volume_id: &str,
    ) -> Result<Vec<proto::Snapshot>, CsiError> {
        use controller_service_capability::rpc::Type;
        self.require_controller("ListSnapshots", Type::ListSnapshots)?;
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let request = proto::ListSnapshotsRequest {
                starting_token: token.clone(),
                source_volume_id: source_volume_id.to_string(),
                ..Default::default()
            };
            let page = self
                .retry
                .run(
                    "ListSnapshots",
                    source_volume_id,
                    call!(self.controller(), list_snapshots, request),
                )
                .await?;
            out.extend(page.entries.into_iter().filter_map(|e| e.snapshot));
            if page.next_token.is_empty() {
                return Ok(out);
            }
            token = page.next_token;
        }
    }
}

/// Calls Probe until the driver says ready (an unset `ready` means ready, per the spec),
/// retrying connection failures and not-ready answers with backoff until `timeout`.
async fn wait_ready(
    channel: &Channel,
    socket: &Path,
    timeout: Duration,
    retry: RetryPolicy,
) -> Result<(), CsiError> {
    let object = socket.display().to_string();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let outcome = tokio::time::timeout(
            retry.call_timeout.min(left),
            IdentityClient::new(channel.clone()).probe(proto::ProbeRequest {}),
        )
        .await;
        let reason = match outcome {
            Ok(Ok(response)) => match response.into_inner().ready {
                None | Some(true) => return Ok(()),
                Some(false) => "driver reports not ready".to_string(),
            },
            Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
            Err(_) => "no answer".to_string(),
        };
        let wait = retry.backoff(attempt);
        if tokio::time::Instant::now() + wait >= deadline {
            return Err(CsiError::Rpc {
                method: "Probe",
                object,
                code: tonic::Code::Unavailable,
                message: format!("driver not ready within {timeout:?}: {reason}"),
            });
        }
        tracing::debug!(socket = %object, attempt, %reason, "CSI driver not ready yet");
        tokio::time::sleep(wait).await;
    }
}

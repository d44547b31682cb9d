//! `NetworkPlugin`: connecting a pod sandbox's network namespace, shaped after CNI.
//!
//! An attachment is identified by (container id, interface name). `attach` of an existing
//! attachment returns the stored result; `detach` of a missing one succeeds (CNI DEL is
//! idempotent); `gc` releases every attachment not in the list it is given (addresses, rules,
//! cached results).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;

use super::BackendResult;

/// A port published on the host (`hostPort`, `docker run -p`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortMapping {
    /// Port on the host.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Host address to bind (all when `None`).
    pub host_ip: Option<IpAddr>,
}

/// Which attachment, in which namespace, for which pod.
#[derive(Clone, Debug, Default)]
pub struct AttachRequest {
    /// The sandbox id (CNI_CONTAINERID).
    pub container_id: String,
    /// Path of the sandbox's network namespace (CNI_NETNS).
    pub netns: PathBuf,
    /// Interface name in the namespace (CNI_IFNAME), `eth0` by default.
    pub ifname: String,
    /// Pod namespace (K8S_POD_NAMESPACE).
    pub pod_namespace: String,
    /// Pod name (K8S_POD_NAME).
    pub pod_name: String,
    /// Pod uid.
    pub pod_uid: String,
    /// Ports to publish.
    pub port_mappings: Vec<PortMapping>,
    /// Other capability arguments by name (`bandwidth`, `ipRanges`, `dns`, `ips`, `mac`), as
    /// CNI runtimeConfig JSON.
    pub capability_args: BTreeMap<String, serde_json::Value>,
}

impl AttachRequest {
    /// The interface name, defaulting to `eth0`.
    pub fn ifname(&self) -> &str {
        if self.ifname.is_empty() {
            "eth0"
        } else {
            &self.ifname
        }
    }
}

/// An interface made by an attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: Option<String>,
    /// Path of the netns it lives in (`None` for host-side interfaces).
    pub sandbox: Option<PathBuf>,
}

/// An address given to the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    /// The address.
    pub address: IpAddr,
    /// Prefix length of its subnet.
    pub prefix_len: u8,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Index into [`Attachment::interfaces`].
    pub interface: Option<usize>,
}

/// A route in the pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub destination: IpAddr,
    /// Destination prefix length.
    pub prefix_len: u8,
    /// Next hop.
    pub gateway: Option<IpAddr>,
}

/// The result of an attach (a CNI result).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    /// Interfaces made.
    pub interfaces: Vec<Interface>,
    /// Addresses given.
    pub ips: Vec<IpConfig>,
    /// Routes added.
    pub routes: Vec<Route>,
    /// DNS settings the network suggests.
    pub dns_servers: Vec<String>,
}

impl Attachment {
    /// The first IPv4 address, else the first address: what Kubernetes reports as podIP.
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.ips
            .iter()
            .find(|ip| ip.address.is_ipv4())
            .or(self.ips.first())
            .map(|ip| ip.address)
    }
}

/// The identity of an attachment, for `gc`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentId {
    /// Sandbox id.
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// A pod network. See the module docs for the contract.
#[async_trait]
pub trait NetworkPlugin: Send + Sync + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &str;
    /// Connects the namespace; returns the addresses it got.
    async fn attach(&self, request: &AttachRequest) -> BackendResult<Attachment>;
    /// Disconnects it and releases what `attach` took. Idempotent.
    async fn detach(&self, request: &AttachRequest) -> BackendResult<()>;
    /// Checks that an attachment is still as `attach` left it.
    async fn check(&self, request: &AttachRequest) -> BackendResult<()>;
    /// Whether the network is ready to attach pods.
    async fn status(&self) -> BackendResult<()>;
    /// Releases every attachment not in `valid`.
    async fn gc(&self, valid: &[AttachmentId]) -> BackendResult<()>;
}

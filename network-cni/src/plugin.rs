//! `wharf_core::backend::NetworkPlugin` for both networks: [`CniNetwork`] (a CNI
//! configuration list run by [`CniRuntime`]) and the native [`BridgeNetwork`].

use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use wharf_core::backend::network::{
    AttachRequest, Attachment, AttachmentId, Interface, IpConfig, NetworkPlugin, Route,
};
use wharf_core::backend::{BackendError, BackendResult, ErrorKind};

use crate::cni::{CniResult, CniRuntime, NetworkConfigList, RuntimeConf};
use crate::error::NetworkError;
use crate::native::{AttachmentRecord, BridgeAttach, BridgeNetwork, HostPort};

impl NetworkError {
    /// The backend error class: what a caller can do about it.
    pub fn kind(&self) -> ErrorKind {
        use NetworkError::*;
        match self {
            ConfigRead { .. } | ConfigInvalid { .. } | InvalidArgument { .. } => {
                ErrorKind::InvalidArgument
            }
            IncompatibleVersion { .. } | UnsupportedOperation { .. } => ErrorKind::Unsupported,
            NoConfig { .. } | NetworkNotFound { .. } | PluginNotFound { .. } | Netns { .. } => {
                ErrorKind::FailedPrecondition
            }
            NotAttached { .. } => ErrorKind::NotFound,
            PluginTimeout { .. } => ErrorKind::Timeout,
            PluginFailed { error, .. } if error.is_retryable() => ErrorKind::Unavailable,
            PluginFailed { error, .. } if error.code == 3 => ErrorKind::NotFound,
            PluginFailed { error, .. } if error.code == 7 => ErrorKind::InvalidArgument,
            Firewall { reason, .. } if reason.contains("already published") => {
                ErrorKind::AlreadyExists
            }
            _ => ErrorKind::Internal,
        }
    }

    fn into_backend(self, operation: &str, object: &str) -> BackendError {
        BackendError::new(self.kind(), operation, object, self.to_string()).with_source(self)
    }
}

fn object(req: &AttachRequest) -> String {
    format!("{}/{}", req.container_id, req.ifname())
}

/// A CNI network: one configuration list driven by a [`CniRuntime`].
#[derive(Debug)]
pub struct CniNetwork {
    runtime: CniRuntime,
    list: NetworkConfigList,
}

impl CniNetwork {
    /// The network `list`, run by `runtime`.
    pub fn new(runtime: CniRuntime, list: NetworkConfigList) -> Self {
        CniNetwork { runtime, list }
    }

    /// The default network found in `conf_dirs` (the first file, as CRI runtimes
    /// pick it), with plugins from the default path and libcni's cache directory.
    pub fn from_conf_dirs(conf_dirs: &[PathBuf]) -> crate::Result<Self> {
        Ok(CniNetwork::new(
            CniRuntime::default(),
            crate::cni::config::load_default(conf_dirs)?,
        ))
    }

    /// The configuration list.
    pub fn list(&self) -> &NetworkConfigList {
        &self.list
    }

    /// The runtime.
    pub fn runtime(&self) -> &CniRuntime {
        &self.runtime
    }

    fn runtime_conf(req: &AttachRequest) -> RuntimeConf {
        let mut rt = RuntimeConf::for_pod(
            &req.container_id,
            &req.netns,
            req.ifname(),
            &req.pod_namespace,
            &req.pod_name,
        );
        if !req.pod_uid.is_empty() {
            rt.args.push(("K8S_POD_UID".into(), req.pod_uid.clone()));
        }
        let mut caps: Map<String, Value> = req
            .capability_args
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !req.port_mappings.is_empty() {
            let ports: Vec<Value> = req
                .port_mappings
                .iter()
                .map(|p| {
                    let mut m = json!({"hostPort": p.host_port, "containerPort": p.container_port,
                                       "protocol": p.protocol.to_ascii_lowercase()});
                    if let Some(ip) = p.host_ip {
                        m["hostIP"] = Value::from(ip.to_string());
                    }
                    m
                })
                .collect();
            caps.insert("portMappings".into(), Value::Array(ports));
        }
        rt.capability_args = caps;
        rt
    }
}

fn from_cni(result: &CniResult) -> Attachment {
    Attachment {
        interfaces: result
            .interfaces
            .iter()
            .map(|i| Interface {
                name: i.name.clone(),
                mac: (!i.mac.is_empty()).then(|| i.mac.clone()),
                sandbox: (!i.sandbox.is_empty()).then(|| PathBuf::from(&i.sandbox)),
            })
            .collect(),
        ips: result
            .ips
            .iter()
            .map(|ip| IpConfig {
                address: ip.address.addr(),
                prefix_len: ip.address.prefix_len(),
                gateway: ip.gateway,
                interface: ip.interface,
            })
            .collect(),
        routes: result
            .routes
            .iter()
            .map(|r| Route {
                destination: r.dst.addr(),
                prefix_len: r.dst.prefix_len(),
                gateway: r.gw,
            })
            .collect(),
        dns_servers: result.dns.nameservers.clone(),
    }
}

#[async_trait]
impl NetworkPlugin for CniNetwork {
    fn name(&self) -> &str {
        &self.list.name
    }

    async fn attach(&self, req: &AttachRequest) -> BackendResult<Attachment> {
        let fail = |e: NetworkError| e.into_backend("attach network", &object(req));
        let cached = self
            .runtime
            .cache()
            .read(&self.list.name, &req.container_id, req.ifname())
            .map_err(fail)?
            .and_then(|c| c.result)
            .and_then(|r| serde_json::from_value::<CniResult>(r).ok());
        if let Some(result) = cached {
            return Ok(from_cni(&result));
        }
        let result = self
            .runtime
            .add(&self.list, &Self::runtime_conf(req))
            .await
            .map_err(fail)?;
        Ok(from_cni(&result))
    }

    async fn detach(&self, req: &AttachRequest) -> BackendResult<()> {
        self.runtime
            .del(&self.list, &Self::runtime_conf(req))
            .await
            .map_err(|e| e.into_backend("detach network", &object(req)))
    }

    async fn check(&self, req: &AttachRequest) -> BackendResult<()> {
        self.runtime
            .check(&self.list, &Self::runtime_conf(req))
            .await
            .map_err(|e| e.into_backend("check network", &object(req)))
    }

    async fn status(&self) -> BackendResult<()> {
        self.runtime
            .status(&self.list)
            .await
            .map_err(|e| e.into_backend("network status", &self.list.name))
    }

    async fn gc(&self, valid: &[AttachmentId]) -> BackendResult<()> {
        let valid: Vec<(String, String)> = valid
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        self.runtime
            .gc(&self.list, &valid)
            .await
            .map_err(|e| e.into_backend("network gc", &self.list.name))
    }
}

fn from_record(r: &AttachmentRecord) -> Attachment {
    let default_route = |gw: &IpAddr| Route {
        destination: if gw.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u8; 16])
        },
        prefix_len: 0,
        gateway: Some(*gw),
    };
    Attachment {
        interfaces: vec![
            Interface {
                name: r.host_veth.clone(),
                mac: None,
                sandbox: None,
            },
            Interface {
                name: r.ifname.clone(),
                mac: Some(r.mac.clone()),
                sandbox: Some(r.netns.clone()),
            },
        ],
        ips: r
            .ips
            .iter()
            .zip(&r.gateways)
            .map(|(ip, gw): (&IpNet, &IpAddr)| IpConfig {
                address: ip.addr(),
                prefix_len: ip.prefix_len(),
                gateway: Some(*gw),
                interface: Some(1),
            })
            .collect(),
        routes: r.gateways.iter().map(default_route).collect(),
        dns_servers: Vec::new(),
    }
}

#[async_trait]
impl NetworkPlugin for BridgeNetwork {
    fn name(&self) -> &str {
        &self.config().name
    }

    async fn attach(&self, req: &AttachRequest) -> BackendResult<Attachment> {
        let attach = BridgeAttach {
            container_id: req.container_id.clone(),
            netns: req.netns.clone(),
            ifname: req.ifname().to_string(),
            ports: req
                .port_mappings
                .iter()
                .map(|p| HostPort {
                    host_ip: p.host_ip,
                    host_port: p.host_port,
                    container_port: p.container_port,
                    protocol: p.protocol.to_ascii_lowercase(),
                })
                .collect(),
        };
        BridgeNetwork::attach(self, &attach)
            .await
            .map(|r| from_record(&r))
            .map_err(|e| e.into_backend("attach network", &object(req)))
    }

    async fn detach(&self, req: &AttachRequest) -> BackendResult<()> {
        BridgeNetwork::detach(self, &req.container_id, req.ifname())
            .await
            .map_err(|e| e.into_backend("detach network", &object(req)))
    }

    async fn check(&self, req: &AttachRequest) -> BackendResult<()> {
        BridgeNetwork::check(self, &req.container_id, req.ifname())
            .await
            .map_err(|e| e.into_backend("check network", &object(req)))
    }

    async fn status(&self) -> BackendResult<()> {
        self.ensure_ready()
            .await
            .map(|_| ())
            .map_err(|e| e.into_backend("network status", &self.config().name))
    }

    async fn gc(&self, valid: &[AttachmentId]) -> BackendResult<()> {
        let valid: Vec<(String, String)> = valid
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        BridgeNetwork::gc(self, &valid)
            .await
            .map_err(|e| e.into_backend("network gc", &self.config().name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_core::backend::network::PortMapping;

    #[test]
    fn cni_runtime_conf_carries_pod_and_ports() {
        let req = AttachRequest {
            container_id: "sb".into(),
            netns: "/run/netns/sb".into(),
            pod_namespace: "prod".into(),
            pod_name: "web".into(),
            pod_uid: "u-1".into(),
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "TCP".into(),
                host_ip: Some("127.0.0.1".parse().unwrap()),
            }],
            ..Default::default()
        };
        let rt = CniNetwork::runtime_conf(&req);
        assert_eq!(rt.ifname, "eth0");
        assert!(rt.args.contains(&("K8S_POD_UID".into(), "u-1".into())));
        assert!(rt
            .args
            .contains(&("K8S_POD_NAMESPACE".into(), "prod".into())));
        assert_eq!(
            rt.capability_args["portMappings"],
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}])
        );
    }

    #[test]
    fn error_kinds() {
        let e = NetworkError::PluginTimeout {
            plugin: "bridge".into(),
            command: "ADD",
            timeout: std::time::Duration::from_secs(1),
        };
        let b = e.into_backend("attach network", "sb/eth0");
        assert!(b.is_retryable());
        assert!(b.to_string().contains("bridge"));
        let nf = NetworkError::NotAttached {
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
        };
        assert!(nf.into_backend("check network", "c/eth0").is_not_found());
    }
}

//! [`SimNetwork`]: a pod network that hands out IPv4 addresses from a CIDR and does
//! nothing else. An address is released on detach and by `gc`.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::backend::network::*;
use crate::backend::{BackendError, BackendResult, ErrorKind};

#[derive(Default)]
struct State {
    attachments: HashMap<AttachmentId, (Attachment, Vec<PortMapping>)>,
    used: BTreeSet<u32>,
}

/// A simulated [`NetworkPlugin`] over one IPv4 subnet (a node's pod CIDR).
#[derive(Clone)]
pub struct SimNetwork {
    base: u32,
    prefix_len: u8,
    state: Arc<Mutex<State>>,
    attach_latency: super::Latency,
}

impl std::fmt::Debug for SimNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNetwork")
            .field(
                "cidr",
                &format!("{}/{}", Ipv4Addr::from(self.base), self.prefix_len),
            )
            .finish()
    }
}

impl SimNetwork {
    /// A network over `cidr` (e.g. `10.244.3.0/24`). The first address is the gateway; pods
    /// get the following ones, lowest free first.
    pub fn new(cidr: &str) -> Result<SimNetwork, BackendError> {
        let bad = |m: &str| BackendError::new(ErrorKind::InvalidArgument, "parse cidr", cidr, m);
        let (addr, len) = cidr
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/LENGTH"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix_len: u8 = len.parse().map_err(|_| bad("bad prefix length"))?;
        if !(8..=30).contains(&prefix_len) {
            return Err(bad("prefix length must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - prefix_len);
        Ok(SimNetwork {
            base: u32::from(addr) & mask,
            prefix_len,
            state: Arc::default(),
            attach_latency: super::Latency::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// Makes `attach` slow: the attachment exists at once, the call returns `delay` later.
    pub fn set_attach_latency(&self, delay: std::time::Duration) {
        self.attach_latency.set(delay);
    }

    /// Number of attachments held.
    pub fn attachments(&self) -> usize {
        self.lock().attachments.len()
    }

    /// Number of addresses in use.
    pub fn allocated(&self) -> usize {
        self.lock().used.len()
    }

    /// The host ports in use, over every attachment.
    pub fn host_ports(&self) -> Vec<PortMapping> {
        self.lock()
            .attachments
            .values()
            .flat_map(|(_, p)| p.iter().cloned())
            .collect()
    }
}

impl SimNetwork {
    fn attach_now(&self, request: &AttachRequest) -> BackendResult<Attachment> {
        let id = AttachmentId {
            container_id: request.container_id.clone(),
            ifname: request.ifname().to_string(),
        };
        let mut s = self.lock();
        if let Some((a, _)) = s.attachments.get(&id) {
            return Ok(a.clone());
        }
        for pm in &request.port_mappings {
            let taken = s
                .attachments
                .values()
                .flat_map(|(_, p)| p)
                .any(|other| other.host_port == pm.host_port && other.protocol == pm.protocol);
            if taken {
                return Err(BackendError::new(
                    ErrorKind::AlreadyExists,
                    "attach network",
                    &request.container_id,
                    format!("host port {}/{} is in use", pm.host_port, pm.protocol),
                ));
            }
        }
        let size = 1u32 << (32 - self.prefix_len);
        // Skip the network address, the gateway and the broadcast address.
        let offset = (2..size - 1).find(|o| !s.used.contains(o)).ok_or_else(|| {
            BackendError::new(
                ErrorKind::Unavailable,
                "attach network",
                &request.container_id,
                "no free address in the pod CIDR",
            )
        })?;
        s.used.insert(offset);
        let attachment = Attachment {
            interfaces: vec![Interface {
                name: id.ifname.clone(),
                mac: Some(format!(
                    "02:00:{:02x}:{:02x}:{:02x}:{:02x}",
                    (self.base + offset) >> 24,
                    ((self.base + offset) >> 16) & 0xff,
                    ((self.base + offset) >> 8) & 0xff,
                    (self.base + offset) & 0xff
                )),
                sandbox: Some(request.netns.clone()),
            }],
            ips: vec![IpConfig {
                address: IpAddr::V4(Ipv4Addr::from(self.base + offset)),
                prefix_len: self.prefix_len,
                gateway: Some(IpAddr::V4(self.gateway())),
                interface: Some(0),
            }],
            routes: vec![Route {
                destination: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                prefix_len: 0,
                gateway: Some(IpAddr::V4(self.gateway())),
            }],
            dns_servers: Vec::new(),
        };
        s.attachments
            .insert(id, (attachment.clone(), request.port_mappings.clone()));
        Ok(attachment)
    }
}

#[async_trait]
impl NetworkPlugin for SimNetwork {
    fn name(&self) -> &str {
        "sim"
    }

    async fn attach(&self, request: &AttachRequest) -> BackendResult<Attachment> {
        let attachment = self.attach_now(request)?;
        self.attach_latency.wait().await;
        Ok(attachment)
    }

    async fn detach(&self, request: &AttachRequest) -> BackendResult<()> {
        let id = AttachmentId {
            container_id: request.container_id.clone(),
            ifname: request.ifname().to_string(),
        };
        let mut s = self.lock();
        if let Some((a, _)) = s.attachments.remove(&id) {
            for ip in &a.ips {
                if let IpAddr::V4(v4) = ip.address {
                    s.used.remove(&(u32::from(v4) - self.base));
                }
            }
        }
        Ok(())
    }

    async fn check(&self, request: &AttachRequest) -> BackendResult<()> {
        let id = AttachmentId {
            container_id: request.container_id.clone(),
            ifname: request.ifname().to_string(),
        };
        if self.lock().attachments.contains_key(&id) {
            Ok(())
        } else {
            Err(BackendError::new(
                ErrorKind::NotFound,
                "check network",
                &request.container_id,
                "no such attachment",
            ))
        }
    }

    async fn status(&self) -> BackendResult<()> {
        Ok(())
    }

    async fn gc(&self, valid: &[AttachmentId]) -> BackendResult<()> {
        let stale: Vec<AttachmentId> = self
            .lock()
            .attachments
            .keys()
            .filter(|id| !valid.contains(id))
            .cloned()
            .collect();
        for id in stale {
            self.detach(&AttachRequest {
                container_id: id.container_id,
                ifname: id.ifname,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str) -> AttachRequest {
        AttachRequest {
            container_id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn allocates_lowest_free_and_releases_on_detach() {
        let net = SimNetwork::new("10.244.1.0/24").unwrap();
        let a = net.attach(&req("a")).await.unwrap();
        let b = net.attach(&req("b")).await.unwrap();
        assert_eq!(a.primary_ip().unwrap().to_string(), "10.244.1.2");
        assert_eq!(b.primary_ip().unwrap().to_string(), "10.244.1.3");
        // Idempotent attach returns the stored result.
        assert_eq!(net.attach(&req("a")).await.unwrap(), a);
        net.detach(&req("a")).await.unwrap();
        net.detach(&req("a")).await.unwrap();
        assert!(net.check(&req("a")).await.is_err());
        let c = net.attach(&req("c")).await.unwrap();
        assert_eq!(c.primary_ip().unwrap().to_string(), "10.244.1.2");
        net.gc(&[AttachmentId {
            container_id: "c".into(),
            ifname: "eth0".into(),
        }])
        .await
        .unwrap();
        assert_eq!(net.allocated(), 1);
    }

    #[tokio::test]
    async fn exhaustion_and_bad_cidr() {
        assert!(SimNetwork::new("10.0.0.0").is_err());
        let net = SimNetwork::new("10.0.0.0/30").unwrap();
        net.attach(&req("a")).await.unwrap();
        let err = net.attach(&req("b")).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn host_port_conflicts() {
        let net = SimNetwork::new("10.0.0.0/24").unwrap();
        let mut r = req("a");
        r.port_mappings.push(PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: None,
        });
        net.attach(&r).await.unwrap();
        r.container_id = "b".into();
        assert_eq!(
            net.attach(&r).await.unwrap_err().kind,
            ErrorKind::AlreadyExists
        );
        assert_eq!(net.host_ports().len(), 1);
    }
}

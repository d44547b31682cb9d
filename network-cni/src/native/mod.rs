//! The native bridge network: Wharf's embedded default, no plugin binaries needed.
//!
//! Pods get a veth pair on a Linux bridge (made over netlink), one address per
//! configured subnet (IPv4 and IPv6 dual stack) from a crash-safe file IPAM, default
//! routes via the bridge, outbound masquerade and host ports with nftables.
//!
//! Every attachment is written down (`<state>/attachments/`) *before* anything is
//! made for it, so a detach or GC after a crash at any point knows what to undo.
//! It owns the bridge, the `wh*` veths on it, its nftables table and its state dir.

mod firewall;
mod ipam;
mod iptables;
mod link;
mod nftnl;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use firewall::{Firewall, FirewallBackend, HostPort};
pub use ipam::{Ipam, Range};
use link::Netlink;

use crate::error::{NetworkError, Result};
use crate::netns::NetNs;

/// How the bridge network is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    /// Network name (names the nftables table and state dir).
    pub name: String,
    /// Bridge device name.
    pub bridge: String,
    /// Pod subnets; the first host address of each is the bridge's (the gateway).
    pub subnets: Vec<IpNet>,
    /// MTU for the veths (the kernel's default when `None`).
    pub mtu: Option<u32>,
    /// Masquerade traffic from pods to outside the subnets.
    pub masquerade: bool,
    /// Where reservations and attachment records live.
    pub state_dir: PathBuf,
    /// nftables or iptables for masquerade and host ports.
    pub firewall: FirewallBackend,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            name: "wharf".into(),
            bridge: "wharf0".into(),
            subnets: vec![
                "10.89.0.0/16".parse().expect("valid"),
                "fd00:89::/64".parse().expect("valid"),
            ],
            mtu: None,
            masquerade: true,
            state_dir: PathBuf::from("/var/lib/wharf/network/wharf"),
            firewall: FirewallBackend::Auto,
        }
    }
}

/// What was made for one attachment; written before it is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// Sandbox id.
    pub container_id: String,
    /// Interface name in the sandbox.
    pub ifname: String,
    /// The sandbox's netns path.
    pub netns: PathBuf,
    /// Host end of the veth.
    pub host_veth: String,
    /// Sandbox end's MAC address.
    pub mac: String,
    /// Addresses given (with prefix length).
    pub ips: Vec<IpNet>,
    /// Gateways (one per address).
    pub gateways: Vec<IpAddr>,
    /// Host ports published.
    pub ports: Vec<HostPort>,
}

/// One attach: which sandbox, which interface, which ports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BridgeAttach {
    /// Sandbox id.
    pub container_id: String,
    /// The sandbox's netns path.
    pub netns: PathBuf,
    /// Interface name in the sandbox (`eth0`).
    pub ifname: String,
    /// Host ports to publish.
    pub ports: Vec<HostPort>,
}

/// The native bridge network.
#[derive(Debug)]
pub struct BridgeNetwork {
    config: BridgeConfig,
    ipam: Ipam,
    firewall: Firewall,
    /// Set once the bridge and the table exist; checked again after a failure.
    ready: tokio::sync::Mutex<Option<u32>>,
}

impl BridgeNetwork {
    /// A network with `config`; nothing is created until the first attach.
    pub fn new(config: BridgeConfig) -> Result<Self> {
        if config.subnets.is_empty() {
            return Err(NetworkError::InvalidArgument {
                field: "subnets",
                reason: "at least one subnet is needed".into(),
            });
        }
        if config.bridge.is_empty() || config.bridge.len() > 15 {
            return Err(NetworkError::InvalidArgument {
                field: "bridge",
                reason: format!("{:?} is not a Linux interface name", config.bridge),
            });
        }
        let ranges = config
            .subnets
            .iter()
            .map(|s| Range { subnet: s.trunc() })
            .collect();
        let ipam = Ipam::new(&config.name, config.state_dir.join("ipam"), ranges);
        let firewall = Firewall::new(
            &config.name,
            &config.bridge,
            &config.subnets,
            config.masquerade,
            config.firewall,
        );
        Ok(BridgeNetwork {
            config,
            ipam,
            firewall,
            ready: tokio::sync::Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// The nftables table.
    pub fn firewall(&self) -> &Firewall {
        &self.firewall
    }

    fn gateways(&self) -> Vec<IpNet> {
        self.ipam
            .ranges()
            .iter()
            .map(|r| IpNet::new(r.gateway(), r.subnet.prefix_len()).expect("prefix fits"))
            .collect()
    }

    /// Creates the bridge and the nftables table if missing; returns the bridge index.
    pub async fn ensure_ready(&self) -> Result<u32> {
        let mut ready = self.ready.lock().await;
        if let Some(index) = *ready {
            return Ok(index);
        }
        let nl = Netlink::host()?;
        let index = nl
            .ensure_bridge(
                &self.config.bridge,
                bridge_mac(&self.config.name),
                &self.gateways(),
            )
            .await?;
        self.firewall.ensure()?;
        *ready = Some(index);
        Ok(index)
    }

    fn records_dir(&self) -> PathBuf {
        self.config.state_dir.join("attachments")
    }

    fn record_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.records_dir()
            .join(format!("{container_id}_{ifname}.json"))
    }

    /// The record of an attachment, if there is one.
    pub fn record(&self, container_id: &str, ifname: &str) -> Result<Option<AttachmentRecord>> {
        read_record(&self.record_path(container_id, ifname))
    }

    /// Every attachment record.
    pub fn records(&self) -> Result<Vec<AttachmentRecord>> {
        let Ok(entries) = std::fs::read_dir(self.records_dir()) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "json") {
                out.extend(read_record(&e.path())?);
            }
        }
        Ok(out)
    }

    fn write_record(&self, r: &AttachmentRecord) -> Result<()> {
        let path = self.record_path(&r.container_id, &r.ifname);
        let fail = |e: std::io::Error| NetworkError::Ipam {
            network: self.config.name.clone(),
            reason: format!("writing {}: {e}", path.display()),
        };
        std::fs::create_dir_all(self.records_dir()).map_err(fail)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(r).expect("serializes")).map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)
    }

    /// Attaches the sandbox: veth, addresses, routes, host ports. Attaching an
    /// existing attachment returns it as recorded. On failure everything made so far
    /// is undone.
    pub async fn attach(&self, req: &BridgeAttach) -> Result<AttachmentRecord> {
        validate(req)?;
        if let Some(r) = self.record(&req.container_id, &req.ifname)? {
            if Netlink::host()?.index(&r.host_veth).await?.is_some() {
                return Ok(r);
            }
        }
        let bridge_index = self.ensure_ready().await?;
        let ns = NetNs::from_path(&req.netns);
        if !ns.exists() {
            return Err(NetworkError::Netns {
                path: req.netns.clone(),
                op: "attach",
                reason: "no network namespace is pinned there".into(),
            });
        }
        let owner = owner(&req.container_id, &req.ifname);
        let ips = self.ipam.allocate(&owner)?;
        let record = AttachmentRecord {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns: req.netns.clone(),
            host_veth: host_veth_name(&req.container_id, &req.ifname),
            mac: pod_mac(&ips),
            gateways: ips
                .iter()
                .map(|ip| Range { subnet: ip.trunc() }.gateway())
                .collect(),
            ips,
            ports: req.ports.clone(),
        };
        if let Err(e) = self.write_record(&record) {
            let _ = self.ipam.release_owner(&owner);
            return Err(e);
        }
        match self.make(&record, bridge_index, &ns).await {
            Ok(()) => Ok(record),
            Err(e) => {
                if let Err(undo) = self.undo(&record).await {
                    tracing::warn!(container = %record.container_id, error = %undo, "undoing a failed attach");
                }
                // The bridge or table may have been removed behind our back.
                *self.ready.lock().await = None;
                Err(e)
            }
        }
    }

    async fn make(&self, r: &AttachmentRecord, bridge_index: u32, ns: &NetNs) -> Result<()> {
        let host = Netlink::host()?;
        host.create_veth(
            &r.host_veth,
            bridge_index,
            ns,
            &r.ifname,
            self.config.mtu,
            &r.mac,
        )
        .await?;
        let pod = Netlink::in_netns(ns)?;
        pod.configure_pod(&r.ifname, &r.ips, &r.gateways).await?;
        let pod_ips: Vec<IpAddr> = r.ips.iter().map(IpNet::addr).collect();
        self.firewall.add_ports(&pod_ips, &r.ports)
    }

    async fn undo(&self, r: &AttachmentRecord) -> Result<()> {
        let pod_ips: Vec<IpAddr> = r.ips.iter().map(IpNet::addr).collect();
        self.firewall.remove_ports(&pod_ips, &r.ports)?;
        Netlink::host()?.delete_link(&r.host_veth).await?;
        self.ipam
            .release_owner(&owner(&r.container_id, &r.ifname))?;
        match std::fs::remove_file(self.record_path(&r.container_id, &r.ifname)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetworkError::Ipam {
                network: self.config.name.clone(),
                reason: format!("removing attachment record: {e}"),
            }),
            _ => Ok(()),
        }
    }

    /// Detaches: host ports, veth, addresses, record. Idempotent; without a record
    /// (a crash before it was written) the veth and reservations are still removed.
    pub async fn detach(&self, container_id: &str, ifname: &str) -> Result<()> {
        match self.record(container_id, ifname)? {
            Some(r) => self.undo(&r).await,
            None => {
                Netlink::host()?
                    .delete_link(&host_veth_name(container_id, ifname))
                    .await?;
                self.ipam.release_owner(&owner(container_id, ifname))
            }
        }
    }

    /// Checks an attachment: recorded, host veth present, addresses in the sandbox.
    pub async fn check(&self, container_id: &str, ifname: &str) -> Result<()> {
        let r = self
            .record(container_id, ifname)?
            .ok_or_else(|| NetworkError::NotAttached {
                network: self.config.name.clone(),
                container_id: container_id.into(),
                ifname: ifname.into(),
            })?;
        let missing = |what: String| NetworkError::Netlink {
            op: "check",
            object: format!("{container_id}/{ifname}"),
            reason: what,
        };
        if Netlink::host()?.index(&r.host_veth).await?.is_none() {
            return Err(missing(format!("host veth {} is gone", r.host_veth)));
        }
        let have = Netlink::in_netns(&NetNs::from_path(&r.netns))?
            .addresses(&r.ifname)
            .await?;
        for ip in &r.ips {
            if !have.contains(&ip.addr()) {
                return Err(missing(format!(
                    "{} is not on {} in the sandbox",
                    ip, r.ifname
                )));
            }
        }
        Ok(())
    }

    /// Releases every attachment not in `valid` (`(container id, ifname)` pairs):
    /// recorded ones are detached, then reservations and `wh*` veths on the bridge
    /// that belong to no valid attachment (left by a crash mid-attach) are removed.
    pub async fn gc(&self, valid: &[(String, String)]) -> Result<()> {
        let is_valid = |id: &str, ifname: &str| valid.iter().any(|(v, i)| v == id && i == ifname);
        for r in self.records()? {
            if !is_valid(&r.container_id, &r.ifname) {
                self.undo(&r).await?;
            }
        }
        let valid_owners: Vec<String> = valid.iter().map(|(id, i)| owner(id, i)).collect();
        for (ip, o) in self.ipam.reservations()? {
            if !valid_owners.contains(&o) {
                self.ipam.release_ip(ip, &o)?;
            }
        }
        let nl = Netlink::host()?;
        if let Some(bridge) = nl.index(&self.config.bridge).await? {
            let valid_veths: Vec<String> =
                valid.iter().map(|(id, i)| host_veth_name(id, i)).collect();
            for port in nl.bridge_ports(bridge).await? {
                if port.starts_with("wh") && !valid_veths.contains(&port) {
                    nl.delete_link(&port).await?;
                }
            }
        }
        Ok(())
    }

    /// Removes the bridge and the nftables table (all pods must be detached).
    pub async fn teardown(&self) -> Result<()> {
        *self.ready.lock().await = None;
        self.firewall.delete()?;
        Netlink::host()?.delete_link(&self.config.bridge).await
    }
}

fn validate(req: &BridgeAttach) -> Result<()> {
    let rt = crate::cni::RuntimeConf {
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
        ..Default::default()
    };
    rt.validate()?;
    for p in &req.ports {
        if !matches!(p.protocol.as_str(), "tcp" | "udp" | "sctp") {
            return Err(NetworkError::InvalidArgument {
                field: "port protocol",
                reason: format!("{:?} is not tcp, udp or sctp", p.protocol),
            });
        }
        if p.host_port == 0 || p.container_port == 0 {
            return Err(NetworkError::InvalidArgument {
                field: "port",
                reason: format!("{}:{} has a zero port", p.host_port, p.container_port),
            });
        }
    }
    Ok(())
}

fn read_record(path: &Path) -> Result<Option<AttachmentRecord>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| NetworkError::Cache {
                path: path.to_owned(),
                reason: format!("not an attachment record: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NetworkError::Cache {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

fn owner(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `wh` + 12 hex digits of a hash of the attachment: stable, so a detach without a
/// record still finds the veth.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!(
        "wh{:012x}",
        fnv(&owner(container_id, ifname)) & 0xffff_ffff_ffff
    )
}

/// The pod's MAC derived from its IPv4 address (`0a:58:` + address, as Kubernetes'
/// bridge plugins do), else from its first address's hash.
fn pod_mac(ips: &[IpNet]) -> String {
    let bytes: [u8; 4] = match ips.iter().find_map(|ip| match ip.addr() {
        IpAddr::V4(a) => Some(a.octets()),
        IpAddr::V6(_) => None,
    }) {
        Some(o) => o,
        None => (fnv(&ips.first().map(|i| i.to_string()).unwrap_or_default()) as u32).to_be_bytes(),
    };
    format!(
        "0a:58:{:02x}:{:02x}:{:02x}:{:02x}",
        bytes[0], bytes[1], bytes[2], bytes[3]
    )
}

fn bridge_mac(name: &str) -> [u8; 6] {
    let h = fnv(name).to_be_bytes();
    // Locally administered, unicast.
    [0x02, h[1], h[2], h[3], h[4], h[5]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_short() {
        let a = host_veth_name("sandbox-1", "eth0");
        assert_eq!(a, host_veth_name("sandbox-1", "eth0"));
        assert_ne!(a, host_veth_name("sandbox-2", "eth0"));
        assert!(a.len() <= 15 && a.starts_with("wh"));
        let ips = [
            "10.89.0.5/16".parse().unwrap(),
            "fd00:89::5/64".parse().unwrap(),
        ];
        assert_eq!(pod_mac(&ips), "0a:58:0a:59:00:05");
        assert_eq!(bridge_mac("x")[0] & 0x03, 0x02);
    }

    #[test]
    fn rejects_bad_config_and_ports() {
        let bad = BridgeConfig {
            subnets: vec![],
            ..BridgeConfig::default()
        };
        assert!(BridgeNetwork::new(bad).is_err());
        let req = BridgeAttach {
            container_id: "c".into(),
            ifname: "eth0".into(),
            ports: vec![HostPort {
                host_ip: None,
                host_port: 80,
                container_port: 80,
                protocol: "icmp".into(),
            }],
            ..Default::default()
        };
        assert!(validate(&req).unwrap_err().to_string().contains("icmp"));
    }
}

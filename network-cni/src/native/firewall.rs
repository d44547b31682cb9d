//! Outbound masquerade and host ports with nftables, or iptables where `nft` is
//! missing (see [`super::iptables`]).
//!
//! One table per network (`inet wharf_<name>`), created once, holds the rules; port
//! mappings are elements of four maps (IPv4/IPv6 × any host address/one host address)
//! that the rules look up, so attaching a pod with ports adds map elements in one
//! transaction instead of rewriting chains. Besides its own table it touches only the
//! `route_localnet` and forwarding sysctls.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::nftnl::{self, Element};
use crate::error::{NetworkError, Result};

/// A host port forwarded to a pod port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPort {
    /// Host address to bind, all local addresses when `None`.
    pub host_ip: Option<IpAddr>,
    /// Port on the host.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

/// Which packet filter programs masquerade and host ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirewallBackend {
    /// nftables when the `nft` binary is on `PATH`, else iptables.
    #[default]
    Auto,
    /// nftables (`nft`).
    Nftables,
    /// iptables and ip6tables (the `nat` table).
    Iptables,
}

/// The packet-filter state of one network: an nftables table, or iptables chains.
#[derive(Debug, Clone)]
pub struct Firewall {
    pub(super) network: String,
    table: String,
    bridge: String,
    pub(super) subnets: Vec<IpNet>,
    pub(super) masquerade: bool,
    backend: FirewallBackend,
}

impl Firewall {
    /// The table for `network` on `bridge` with pods in `subnets`.
    pub fn new(
        network: &str,
        bridge: &str,
        subnets: &[IpNet],
        masquerade: bool,
        backend: FirewallBackend,
    ) -> Self {
        let backend = match backend {
            FirewallBackend::Auto if on_path("nft") => FirewallBackend::Nftables,
            FirewallBackend::Auto => FirewallBackend::Iptables,
            chosen => chosen,
        };
        let table = format!(
            "wharf_{}",
            network
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
        );
        Firewall {
            network: network.into(),
            table,
            bridge: bridge.into(),
            subnets: subnets.to_vec(),
            masquerade,
            backend,
        }
    }

    /// The nftables table's name (also the suffix of the iptables chains).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The iptables chains (host ports, masquerade) this network uses under the
    /// iptables backend.
    pub fn iptables_chains(&self) -> [String; 2] {
        let c = super::iptables::Chains::new(self);
        [c.hostports.clone(), c.masq.clone()]
    }

    /// The backend in use (never `Auto`).
    pub fn backend(&self) -> FirewallBackend {
        self.backend
    }

    fn iptables(&self) -> Option<super::iptables::Chains<'_>> {
        (self.backend == FirewallBackend::Iptables).then(|| super::iptables::Chains::new(self))
    }

    fn fail(&self, reason: String) -> NetworkError {
        NetworkError::Firewall {
            tool: "nft",
            network: self.network.clone(),
            reason,
        }
    }

    /// Creates the table if it does not exist, and sets the sysctls pods need.
    pub fn ensure(&self) -> Result<()> {
        let v6 = self.subnets.iter().any(|s| s.addr().is_ipv6());
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        if v6 {
            let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1");
        }
        // 127.0.0.1:hostPort from the host is DNAT'ed to a pod behind the bridge.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/route_localnet", self.bridge),
            "1",
        );
        if let Some(ipt) = self.iptables() {
            return ipt.ensure();
        }
        let exists = Command::new("nft")
            .args(["list", "table", "inet", &self.table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| self.fail(format!("running nft: {e}")))?;
        if exists.success() {
            return Ok(());
        }
        self.apply(&self.ruleset())
    }

    fn ruleset(&self) -> String {
        let mut post = String::new();
        for s in &self.subnets {
            let fam = if s.addr().is_ipv4() { "ip" } else { "ip6" };
            if self.masquerade {
                post += &format!("    {fam} saddr {s} {fam} daddr != {s} masquerade\n");
            }
            // A pod reaching a pod (itself included) through a host port: without
            // masquerade the reply would bypass the DNAT and be dropped.
            post += &format!("    ct status dnat {fam} saddr {s} {fam} daddr {s} masquerade\n");
        }
        format!(
            r#"table inet {t} {{
  map pm4_any {{ type inet_proto . inet_service : ipv4_addr . inet_service ; }}
  map pm4_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service ; }}
  map pm6_any {{ type inet_proto . inet_service : ipv6_addr . inet_service ; }}
  map pm6_ip {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service ; }}
  chain hostports {{
    dnat ip to ip daddr . meta l4proto . th dport map @pm4_ip
    dnat ip to meta l4proto . th dport map @pm4_any
    dnat ip6 to ip6 daddr . meta l4proto . th dport map @pm6_ip
    dnat ip6 to meta l4proto . th dport map @pm6_any
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump hostports
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    fib daddr type local jump hostports
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
{post}    ct status dnat ip saddr 127.0.0.0/8 masquerade
  }}
}}
"#,
            t = self.table
        )
    }

    /// The map elements for `ports` to a pod at `pod_ips`: one per family the pod has
    /// and the host address (if any) is of.
    pub(super) fn elements(&self, pod_ips: &[IpAddr], ports: &[HostPort]) -> Result<Vec<Element>> {
        let mut out = Vec::new();
        for p in ports {
            let proto = nftnl::proto_number(&p.protocol).ok_or_else(|| {
                self.fail(format!("protocol {:?} is not tcp, udp or sctp", p.protocol))
            })?;
            for ip in pod_ips {
                if p.host_ip.is_some_and(|h| h.is_ipv4() != ip.is_ipv4()) {
                    continue;
                }
                let mut key = Vec::new();
                if let Some(h) = p.host_ip {
                    key.extend(nftnl::part(&nftnl::addr_bytes(h)));
                }
                key.extend(nftnl::part(&[proto]));
                key.extend(nftnl::part(&p.host_port.to_be_bytes()));
                let mut data = nftnl::part(&nftnl::addr_bytes(*ip));
                data.extend(nftnl::part(&p.container_port.to_be_bytes()));
                let map = match (ip.is_ipv4(), p.host_ip.is_some()) {
                    (true, false) => "pm4_any",
                    (true, true) => "pm4_ip",
                    (false, false) => "pm6_any",
                    (false, true) => "pm6_ip",
                };
                let host = p.host_ip.map(|h| format!("{h} . ")).unwrap_or_default();
                let text = format!(
                    "{host}{} . {} : {ip} . {}",
                    p.protocol, p.host_port, p.container_port
                );
                let label = format!(
                    "{}{}/{}",
                    p.host_ip.map(|h| format!("{h}:")).unwrap_or_default(),
                    p.host_port,
                    p.protocol
                );
                out.push(Element {
                    map,
                    key,
                    data,
                    text,
                    label,
                });
            }
        }
        Ok(out)
    }

    /// Publishes `ports` for the pod, all or nothing. A host port already published
    /// (by another pod) is an error naming it.
    pub fn add_ports(&self, pod_ips: &[IpAddr], ports: &[HostPort]) -> Result<()> {
        if let Some(ipt) = self.iptables() {
            return ipt.add_ports(pod_ips, ports);
        }
        let elements = self.elements(pod_ips, ports)?;
        nftnl::apply(&self.table, &elements, true).map_err(|e| {
            if e.errno == nix::libc::EEXIST {
                let what = e.element.unwrap_or_else(|| {
                    ports
                        .iter()
                        .map(|p| format!("{}/{}", p.host_port, p.protocol))
                        .collect::<Vec<_>>()
                        .join(", ")
                });
                self.fail(format!("host port already published: {what}"))
            } else {
                self.fail(format!("adding host ports to table {}: {e}", self.table))
            }
        })
    }

    /// Withdraws the pod's ports; those already gone are fine.
    pub fn remove_ports(&self, pod_ips: &[IpAddr], ports: &[HostPort]) -> Result<()> {
        if let Some(ipt) = self.iptables() {
            return ipt.remove_ports(pod_ips, ports);
        }
        let elements = self.elements(pod_ips, ports)?;
        match nftnl::apply(&self.table, &elements, false) {
            Ok(()) => return Ok(()),
            Err(e) if e.errno != nix::libc::ENOENT => {
                return Err(self.fail(format!(
                    "removing host ports from table {}: {e}",
                    self.table
                )))
            }
            Err(_) => {}
        }
        // Some were gone already, which aborts the whole batch: one at a time.
        for el in elements {
            match nftnl::apply(&self.table, std::slice::from_ref(&el), false) {
                Err(e) if e.errno != nix::libc::ENOENT => {
                    return Err(self.fail(format!("removing host port {}: {e}", el.text)))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Deletes the table (the network is being removed).
    pub fn delete(&self) -> Result<()> {
        if let Some(ipt) = self.iptables() {
            return ipt.delete();
        }
        match self.apply(&format!("delete table inet {}\n", self.table)) {
            Err(e) if !e.to_string().contains("No such file") => Err(e),
            _ => Ok(()),
        }
    }

    fn apply(&self, script: &str) -> Result<()> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.fail(format!("running nft: {e}")))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(script.as_bytes())
            .map_err(|e| self.fail(format!("writing to nft: {e}")))?;
        let out = child
            .wait_with_output()
            .map_err(|e| self.fail(format!("waiting for nft: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.fail(String::from_utf8_lossy(&out.stderr).trim().to_string()))
        }
    }
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_per_family_and_binding() {
        let fw = Firewall::new(
            "pods-1",
            "wharf0",
            &["10.89.0.0/16".parse().unwrap()],
            true,
            FirewallBackend::Nftables,
        );
        assert_eq!(fw.table(), "wharf_pods_1");
        let ips: Vec<IpAddr> = vec!["10.89.0.2".parse().unwrap(), "fd89::2".parse().unwrap()];
        let ports = [
            HostPort {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
            },
            HostPort {
                host_ip: Some("192.0.2.1".parse().unwrap()),
                host_port: 53,
                container_port: 5353,
                protocol: "udp".into(),
            },
        ];
        let els = fw.elements(&ips, &ports).unwrap();
        let text: Vec<_> = els.iter().map(|e| (e.map, e.text.as_str())).collect();
        assert_eq!(
            text,
            [
                ("pm4_any", "tcp . 8080 : 10.89.0.2 . 80"),
                ("pm6_any", "tcp . 8080 : fd89::2 . 80"),
                ("pm4_ip", "192.0.2.1 . udp . 53 : 10.89.0.2 . 5353"),
            ]
        );
        assert_eq!(els[0].key, [6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(els[0].data, [10, 89, 0, 2, 0, 80, 0, 0]);
        assert_eq!(els[2].key, [192, 0, 2, 1, 17, 0, 0, 0, 0, 53, 0, 0]);
        assert!(fw
            .ruleset()
            .contains("ip saddr 10.89.0.0/16 ip daddr != 10.89.0.0/16 masquerade"));
    }
}

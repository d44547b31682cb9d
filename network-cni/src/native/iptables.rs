//! The iptables fallback for hosts without `nft`: the same behaviour as the nftables
//! table, as two chains per family in the `nat` table — `WHARF-HP-<id>` (host ports,
//! jumped to from PREROUTING and OUTPUT for local destinations) and `WHARF-MASQ-<id>`
//! (from POSTROUTING). A host port is one DNAT rule; rules bound to a host address are
//! inserted before the any-address ones, as the nftables maps are looked up.

use std::net::IpAddr;
use std::process::Command;

use super::firewall::{Firewall, HostPort};
use crate::error::{NetworkError, Result};

/// The chains of one network.
pub(super) struct Chains<'a> {
    fw: &'a Firewall,
    pub hostports: String,
    pub masq: String,
}

impl<'a> Chains<'a> {
    pub fn new(fw: &'a Firewall) -> Self {
        let id = fw.network.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        Chains {
            fw,
            hostports: format!("WHARF-HP-{id:08x}"),
            masq: format!("WHARF-MASQ-{id:08x}"),
        }
    }

    fn fail(&self, reason: String) -> NetworkError {
        NetworkError::Firewall {
            tool: "iptables",
            network: self.fw.network.clone(),
            reason,
        }
    }

    fn families(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.fw.subnets.iter().any(|s| s.addr().is_ipv4()) {
            out.push("iptables");
        }
        if self.fw.subnets.iter().any(|s| s.addr().is_ipv6()) {
            out.push("ip6tables");
        }
        out
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<bool> {
        let out = Command::new(tool)
            .args(["-w", "-t", "nat"])
            .args(args)
            .output()
            .map_err(|e| self.fail(format!("running {tool}: {e}")))?;
        if out.status.success() {
            return Ok(true);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        // `-C` of a missing rule, `-N` of an existing chain, `-D` of a missing rule.
        if out.status.code() == Some(1)
            || stderr.contains("exists")
            || stderr.contains("does a matching rule exist")
            || stderr.contains("No chain/target/match")
        {
            return Ok(false);
        }
        Err(self.fail(format!("{tool} {}: {}", args.join(" "), stderr.trim())))
    }

    fn ensure_rule(&self, tool: &str, chain: &str, rule: &[&str]) -> Result<()> {
        let mut check = vec!["-C", chain];
        check.extend_from_slice(rule);
        if !self.run(tool, &check)? {
            let mut add = vec!["-A", chain];
            add.extend_from_slice(rule);
            if !self.run(tool, &add)? {
                return Err(self.fail(format!("{tool}: could not add {}", add.join(" "))));
            }
        }
        Ok(())
    }

    pub fn ensure(&self) -> Result<()> {
        for tool in self.families() {
            let v4 = tool == "iptables";
            self.run(tool, &["-N", &self.hostports])?;
            self.run(tool, &["-N", &self.masq])?;
            let local = [
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
                "-j",
                &self.hostports,
            ];
            self.ensure_rule(tool, "PREROUTING", &local)?;
            self.ensure_rule(tool, "OUTPUT", &local)?;
            self.ensure_rule(tool, "POSTROUTING", &["-j", &self.masq])?;
            for s in self.fw.subnets.iter().filter(|s| s.addr().is_ipv4() == v4) {
                let s = s.to_string();
                if self.fw.masquerade {
                    self.ensure_rule(
                        tool,
                        &self.masq,
                        &["-s", &s, "!", "-d", &s, "-j", "MASQUERADE"],
                    )?;
                }
                let dnat = [
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "DNAT",
                    "-s",
                    &s,
                    "-d",
                    &s,
                    "-j",
                    "MASQUERADE",
                ];
                self.ensure_rule(tool, &self.masq, &dnat)?;
            }
            if v4 {
                let lo = [
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "DNAT",
                    "-s",
                    "127.0.0.0/8",
                    "-j",
                    "MASQUERADE",
                ];
                self.ensure_rule(tool, &self.masq, &lo)?;
            }
        }
        Ok(())
    }

    /// The DNAT rule of one host port to one pod address.
    fn rule(p: &HostPort, pod: IpAddr) -> (&'static str, Vec<String>) {
        let tool = if pod.is_ipv4() {
            "iptables"
        } else {
            "ip6tables"
        };
        let to = match pod {
            IpAddr::V4(a) => format!("{a}:{}", p.container_port),
            IpAddr::V6(a) => format!("[{a}]:{}", p.container_port),
        };
        let mut rule = vec!["-p".to_string(), p.protocol.clone()];
        if let Some(h) = p.host_ip {
            rule.extend(["-d".into(), h.to_string()]);
        }
        rule.extend([
            "--dport".into(),
            p.host_port.to_string(),
            "-j".into(),
            "DNAT".into(),
        ]);
        rule.extend(["--to-destination".into(), to]);
        (tool, rule)
    }

    fn pairs<'p>(
        pod_ips: &'p [IpAddr],
        ports: &'p [HostPort],
    ) -> impl Iterator<Item = (&'p HostPort, IpAddr)> {
        ports.iter().flat_map(move |p| {
            pod_ips
                .iter()
                .filter(move |ip| p.host_ip.is_none_or(|h| h.is_ipv4() == ip.is_ipv4()))
                .map(move |ip| (p, *ip))
        })
    }

    pub fn add_ports(&self, pod_ips: &[IpAddr], ports: &[HostPort]) -> Result<()> {
        let mut added: Vec<(&HostPort, IpAddr)> = Vec::new();
        for (p, ip) in Self::pairs(pod_ips, ports) {
            let (tool, rule) = Self::rule(p, ip);
            if self.taken(tool, p)? {
                let _ = self.remove_pairs(&added);
                return Err(self.fail(format!(
                    "host port already published: {}/{}",
                    p.host_port, p.protocol
                )));
            }
            let mut args: Vec<&str> = if p.host_ip.is_some() {
                vec!["-I", &self.hostports, "1"]
            } else {
                vec!["-A", &self.hostports]
            };
            args.extend(rule.iter().map(String::as_str));
            if let Err(e) = self.run(tool, &args) {
                let _ = self.remove_pairs(&added);
                return Err(e);
            }
            added.push((p, ip));
        }
        Ok(())
    }

    /// Whether a DNAT rule for the same protocol, host port and host address exists.
    fn taken(&self, tool: &str, p: &HostPort) -> Result<bool> {
        let out = Command::new(tool)
            .args(["-w", "-t", "nat", "-S", &self.hostports])
            .output()
            .map_err(|e| self.fail(format!("running {tool}: {e}")))?;
        let listing = String::from_utf8_lossy(&out.stdout);
        let dest = p.host_ip.map(|h| match h {
            IpAddr::V4(a) => format!("-d {a}/32"),
            IpAddr::V6(a) => format!("-d {a}/128"),
        });
        Ok(listing.lines().any(|l| {
            l.contains(&format!("-p {} ", p.protocol))
                && l.contains(&format!("--dport {} ", p.host_port))
                && match &dest {
                    Some(d) => l.contains(d.as_str()),
                    None => !l.contains(" -d "),
                }
        }))
    }

    fn remove_pairs(&self, pairs: &[(&HostPort, IpAddr)]) -> Result<()> {
        for (p, ip) in pairs {
            let (tool, rule) = Self::rule(p, *ip);
            let mut args = vec!["-D", self.hostports.as_str()];
            args.extend(rule.iter().map(String::as_str));
            self.run(tool, &args)?;
        }
        Ok(())
    }

    pub fn remove_ports(&self, pod_ips: &[IpAddr], ports: &[HostPort]) -> Result<()> {
        let pairs: Vec<_> = Self::pairs(pod_ips, ports).collect();
        self.remove_pairs(&pairs)
    }

    pub fn delete(&self) -> Result<()> {
        for tool in self.families() {
            let local = [
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
                "-j",
                &self.hostports,
            ];
            for chain in ["PREROUTING", "OUTPUT"] {
                let mut args = vec!["-D", chain];
                args.extend_from_slice(&local);
                self.run(tool, &args)?;
            }
            self.run(tool, &["-D", "POSTROUTING", "-j", &self.masq])?;
            for chain in [&self.hostports, &self.masq] {
                self.run(tool, &["-F", chain])?;
                self.run(tool, &["-X", chain])?;
            }
        }
        Ok(())
    }
}

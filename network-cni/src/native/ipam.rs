//! Address allocation that survives crashes.
//!
//! Each allocated address is a file `<dir>/<address>` created with `O_EXCL` and holding
//! its owner (`<container id>/<ifname>`). Creating the file *is* the reservation, so a
//! process killed at any point never hands an address out twice: an address is either
//! reserved on disk or free. Reservations whose owner no longer exists are released by
//! GC. Several processes may share a directory: `O_EXCL` arbitrates.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use ipnet::IpNet;

use crate::error::{NetworkError, Result};

/// A subnet to allocate from; its first host address is the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The subnet.
    pub subnet: IpNet,
}

impl Range {
    /// The gateway: the subnet's first host address.
    pub fn gateway(&self) -> IpAddr {
        offset(self.subnet.network(), 1)
    }

    /// Number of candidate addresses (after network, gateway, and broadcast).
    fn size(&self) -> u128 {
        let bits = match self.subnet {
            IpNet::V4(_) => 32,
            IpNet::V6(_) => 128,
        } - u32::from(self.subnet.prefix_len());
        let total = if bits >= 128 {
            u128::MAX
        } else {
            1u128 << bits
        };
        // Cap v6 ranges: a scan never needs more than this many candidates.
        total.saturating_sub(3).min(1 << 20)
    }

    fn candidate(&self, i: u128) -> IpAddr {
        offset(self.subnet.network(), i + 2)
    }
}

fn offset(base: IpAddr, n: u128) -> IpAddr {
    match base {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(n as u32)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(n)).into()),
    }
}

/// An allocator over one directory and a set of ranges (one address from each).
#[derive(Debug)]
pub struct Ipam {
    network: String,
    dir: PathBuf,
    ranges: Vec<Range>,
    /// Where to resume scanning in each range: addresses are handed out round-robin,
    /// so a just-released address is not reused at once.
    cursors: Mutex<Vec<u128>>,
}

impl Ipam {
    /// An allocator for `network` keeping reservations in `dir`.
    pub fn new(network: &str, dir: impl Into<PathBuf>, ranges: Vec<Range>) -> Self {
        let n = ranges.len();
        Ipam {
            network: network.into(),
            dir: dir.into(),
            ranges,
            cursors: Mutex::new(vec![0; n]),
        }
    }

    /// The ranges.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    fn fail(&self, reason: String) -> NetworkError {
        NetworkError::Ipam {
            network: self.network.clone(),
            reason,
        }
    }

    /// Reserves one address in every range for `owner`; all or nothing. An owner that
    /// already holds addresses (a retried ADD) gets the same ones back.
    pub fn allocate(&self, owner: &str) -> Result<Vec<IpNet>> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| self.fail(format!("creating {}: {e}", self.dir.display())))?;
        let held = self.held_by(owner)?;
        let mut out: Vec<IpNet> = Vec::new();
        for (r, range) in self.ranges.iter().enumerate() {
            if let Some(ip) = held.iter().find(|ip| range.subnet.contains(*ip)) {
                out.push(IpNet::new(*ip, range.subnet.prefix_len()).expect("prefix fits"));
                continue;
            }
            match self.reserve_in(r, range, owner) {
                Ok(ip) => out.push(ip),
                Err(e) => {
                    for ip in &out {
                        let _ = self.release_ip(ip.addr(), owner);
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn reserve_in(&self, r: usize, range: &Range, owner: &str) -> Result<IpNet> {
        let size = range.size();
        let start = self.cursors.lock().expect("poisoned")[r];
        for step in 0..size {
            let i = (start + step) % size;
            let ip = range.candidate(i);
            if range.subnet.broadcast() == ip && range.subnet.addr().is_ipv4() {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    // No fsync: a killed process leaves the page cache behind, and after
                    // a power loss the namespaces are gone too and GC reconciles.
                    f.write_all(owner.as_bytes()).map_err(|e| {
                        let _ = std::fs::remove_file(&path);
                        self.fail(format!("writing {}: {e}", path.display()))
                    })?;
                    self.cursors.lock().expect("poisoned")[r] = (i + 1) % size;
                    return Ok(IpNet::new(ip, range.subnet.prefix_len()).expect("prefix fits"));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.fail(format!("reserving {}: {e}", path.display()))),
            }
        }
        Err(self.fail(format!("no free address in {}", range.subnet)))
    }

    /// Releases `ip` if `owner` holds it (a reservation of someone else is kept).
    pub fn release_ip(&self, ip: IpAddr, owner: &str) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match std::fs::read_to_string(&path) {
            Ok(o) if o == owner => std::fs::remove_file(&path)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| self.fail(format!("releasing {}: {e}", path.display()))),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.fail(format!("reading {}: {e}", path.display()))),
        }
    }

    /// Every reservation: (address, owner).
    pub fn reservations(&self) -> Result<Vec<(IpAddr, String)>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.fail(format!("listing {}: {e}", self.dir.display()))),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if let Ok(owner) = std::fs::read_to_string(entry.path()) {
                out.push((ip, owner));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The addresses `owner` holds.
    pub fn held_by(&self, owner: &str) -> Result<Vec<IpAddr>> {
        Ok(self
            .reservations()?
            .into_iter()
            .filter(|(_, o)| o == owner)
            .map(|(ip, _)| ip)
            .collect())
    }

    /// Releases everything `owner` holds.
    pub fn release_owner(&self, owner: &str) -> Result<()> {
        for ip in self.held_by(owner)? {
            self.release_ip(ip, owner)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &std::path::Path, subnets: &[&str]) -> Ipam {
        let ranges = subnets
            .iter()
            .map(|s| Range {
                subnet: s.parse().unwrap(),
            })
            .collect();
        Ipam::new("test", dir, ranges)
    }

    #[test]
    fn allocates_dual_stack_skipping_gateway_and_broadcast() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), &["10.9.0.0/30", "fd00:9::/120"]);
        assert_eq!(ipam.ranges()[0].gateway().to_string(), "10.9.0.1");
        let a = ipam.allocate("a/eth0").unwrap();
        assert_eq!(
            a.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.9.0.2/30", "fd00:9::2/120"]
        );
        assert_eq!(
            ipam.allocate("a/eth0").unwrap(),
            a,
            "a retried ADD gets the same addresses"
        );
        let err = ipam.allocate("b/eth0").unwrap_err().to_string();
        assert!(err.contains("no free address in 10.9.0.0/30"), "{err}");
        assert_eq!(
            ipam.held_by("b/eth0").unwrap(),
            Vec::<IpAddr>::new(),
            "all or nothing"
        );
        ipam.release_owner("a/eth0").unwrap();
        assert!(ipam.reservations().unwrap().is_empty());
    }

    /// The reservation is the file: a second allocator (another process, or this one
    /// after a crash) never hands out an address the first reserved.
    #[test]
    fn reservations_on_disk_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = ipam(dir.path(), &["10.9.0.0/24"]);
        let a = first.allocate("a/eth0").unwrap();
        drop(first);
        let second = ipam(dir.path(), &["10.9.0.0/24"]);
        let b = second.allocate("b/eth0").unwrap();
        assert_ne!(a, b);
        second.release_ip(a[0].addr(), "b/eth0").unwrap();
        assert_eq!(
            second.held_by("a/eth0").unwrap(),
            vec![a[0].addr()],
            "not b's to release"
        );
    }

    #[test]
    fn hands_out_round_robin() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), &["10.9.0.0/24"]);
        let a = ipam.allocate("a/eth0").unwrap();
        ipam.release_owner("a/eth0").unwrap();
        let b = ipam.allocate("b/eth0").unwrap();
        assert_ne!(a, b, "a just-freed address is not reused at once");
    }
}

//! The netlink side of the bridge network: the bridge, one veth pair per attachment
//! (the sandbox end created directly inside the pod's namespace under its final
//! name), addresses and routes. No `ip` subprocesses.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::{NetworkError, Result};
use crate::netns::NetNs;

/// A netlink connection whose socket lives in the host's namespace or in a pod's.
pub(crate) struct Netlink {
    pub handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's (the host's) namespace.
    pub fn host() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetworkError::Netlink {
            op: "connect",
            object: "host".into(),
            reason: e.to_string(),
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection whose socket is opened inside `ns`.
    pub fn in_netns(ns: &NetNs) -> Result<Netlink> {
        // The socket registers with the reactor as it is made, on the thread in `ns`.
        let runtime = tokio::runtime::Handle::current();
        let (conn, handle, _) = ns
            .run(move || {
                let _guard = runtime.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|e| NetworkError::Netlink {
                op: "connect",
                object: ns.path().display().to_string(),
                reason: e.to_string(),
            })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The index of link `name`, if it exists.
    pub async fn index(&self, name: &str) -> Result<Option<u32>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err("get link", name, e)),
        }
    }

    /// Creates the bridge with `mac` if missing, gives it `gateways`, brings it up.
    pub async fn ensure_bridge(&self, name: &str, mac: [u8; 6], gateways: &[IpNet]) -> Result<u32> {
        let index = match self.index(name).await? {
            Some(i) => i,
            None => {
                let msg = LinkBridge::new(name).address(mac.to_vec()).build();
                match self.handle.link().add(msg).execute().await {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(nix::libc::EEXIST) => {}
                    Err(e) => return Err(nl_err("create bridge", name, e)),
                }
                self.index(name)
                    .await?
                    .ok_or_else(|| NetworkError::Netlink {
                        op: "create bridge",
                        object: name.into(),
                        reason: "bridge vanished after creation".into(),
                    })?
            }
        };
        for gw in gateways {
            self.add_address(index, *gw, name).await?;
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| nl_err("set up", name, e))?;
        Ok(index)
    }

    /// Adds an address without duplicate address detection; an existing one is fine.
    pub async fn add_address(&self, index: u32, addr: IpNet, object: &str) -> Result<()> {
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(nix::libc::EEXIST) => Ok(()),
            Err(e) => Err(nl_err("add address", &format!("{addr} on {object}"), e)),
        }
    }

    /// Creates a veth pair: `host` enslaved to the bridge and up, its peer created in
    /// `ns` as `ifname` (down: the kernel refuses to open a veth end before its pair
    /// is linked, so [`Netlink::configure_pod`] brings it up). One netlink request.
    pub async fn create_veth(
        &self,
        host: &str,
        bridge_index: u32,
        ns: &NetNs,
        ifname: &str,
        mtu: Option<u32>,
        mac: &str,
    ) -> Result<()> {
        let ns_file = ns.open()?;
        let mac_bytes: Vec<u8> = mac
            .split(':')
            .filter_map(|b| u8::from_str_radix(b, 16).ok())
            .collect();
        let mut peer = LinkUnspec::new_with_name(ifname)
            .setns_by_fd(ns_file.as_raw_fd())
            .address(mac_bytes);
        let mut veth = LinkVeth::new(host, ifname).controller(bridge_index).up();
        if let Some(mtu) = mtu {
            peer = peer.mtu(mtu);
            veth = veth.mtu(mtu);
        }
        let veth = veth.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        self.handle
            .link()
            .add(veth.build())
            .execute()
            .await
            .map_err(|e| nl_err("create veth", host, e))?;
        // Hairpin: a pod reaching itself through a host port comes back out its own
        // port when br_netfilter rewrites the destination on the bridge.
        if let Some(index) = self.index(host).await? {
            self.handle
                .link()
                .set_port(LinkBridgePort::new(index).hairpin(true).build())
                .execute()
                .await
                .map_err(|e| nl_err("set hairpin", host, e))?;
        }
        Ok(())
    }

    /// Deletes link `name`; a missing link is fine.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(nix::libc::ENODEV) => Ok(()),
            Err(e) => Err(nl_err("delete link", name, e)),
        }
    }

    /// Names of the links enslaved to the bridge.
    pub async fn bridge_ports(&self, bridge_index: u32) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(|e| nl_err("list links", "", e))?
        {
            let master = msg
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == bridge_index));
            if master {
                if let Some(name) = msg.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                }) {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }

    /// Inside the pod: loopback and `ifname` up, `addrs` on `ifname`, default routes
    /// via `gateways`.
    /// Returns the interface's MAC address.
    pub async fn configure_pod(
        &self,
        ifname: &str,
        addrs: &[IpNet],
        gateways: &[IpAddr],
    ) -> Result<String> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(1).up().build())
            .execute()
            .await
            .map_err(|e| nl_err("set up", "lo", e))?;
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(ifname.to_string())
            .execute();
        let link = links
            .try_next()
            .await
            .map_err(|e| nl_err("get link", ifname, e))?
            .ok_or_else(|| NetworkError::Netlink {
                op: "get link",
                object: ifname.into(),
                reason: "not in the pod's namespace".into(),
            })?;
        let index = link.header.index;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| nl_err("set up", ifname, e))?;
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(m) => Some(format_mac(m)),
                _ => None,
            })
            .unwrap_or_default();
        for addr in addrs {
            self.add_address(index, *addr, ifname).await?;
        }
        for gw in gateways {
            let route = match gw {
                IpAddr::V4(g) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .gateway(*g)
                    .output_interface(index)
                    .build(),
                IpAddr::V6(g) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .gateway(*g)
                    .output_interface(index)
                    .build(),
            };
            match self.handle.route().add(route).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(nix::libc::EEXIST) => {}
                Err(e) => return Err(nl_err("add default route", &format!("via {gw}"), e)),
            }
        }
        Ok(mac)
    }

    /// The addresses on `ifname` (for CHECK).
    pub async fn addresses(&self, ifname: &str) -> Result<Vec<IpAddr>> {
        let Some(index) = self.index(ifname).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(|e| nl_err("list addresses", ifname, e))?
        {
            out.extend(msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            }));
        }
        Ok(out)
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl_err(op: &'static str, object: &str, e: rtnetlink::Error) -> NetworkError {
    let reason = match errno(&e) {
        Some(code) => format!("{} ({e})", nix::errno::Errno::from_raw(code).desc()),
        None => e.to_string(),
    };
    NetworkError::Netlink {
        op,
        object: object.to_string(),
        reason,
    }
}

fn format_mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

//! Root tests of the native bridge network: real namespaces, veths, a bridge and an
//! nftables table, each test's own, deleted at the end even on failure.

mod common;

use std::time::Duration;

use common::*;
use wharf_network_cni::native::{
    host_veth_name, BridgeAttach, BridgeConfig, BridgeNetwork, FirewallBackend, HostPort,
};
use wharf_network_cni::netns::NetNs;

struct Setup {
    net: BridgeNetwork,
    cleanup: Cleanup,
}

fn setup(n: u32, octet: u8) -> Option<Setup> {
    setup_with(n, octet, FirewallBackend::Nftables)
}

fn setup_with(n: u32, octet: u8, firewall: FirewallBackend) -> Option<Setup> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    let mut cleanup = Cleanup::new();
    let t = tag(n);
    let dir = tempfile::tempdir().unwrap().keep();
    cleanup.dirs.push(dir.clone());
    let config = BridgeConfig {
        name: format!("wt{t}"),
        bridge: format!("wtb{t}"),
        subnets: vec![
            format!("10.{octet}.0.0/24").parse().unwrap(),
            format!("fd00:{octet}::/64").parse().unwrap(),
        ],
        mtu: None,
        masquerade: true,
        state_dir: dir,
        firewall,
    };
    cleanup.markers.push(format!(" 10.{octet}.0."));
    cleanup.links.push(config.bridge.clone());
    let net = BridgeNetwork::new(config).unwrap();
    cleanup.nft_tables.push(net.firewall().table().to_string());
    Some(Setup { net, cleanup })
}

fn pod(s: &mut Setup, n: u32, name: &str) -> NetNs {
    let ns = NetNs::create(
        "/run/netns".as_ref(),
        &format!("wharf-nt-{}-{name}", tag(n)),
    )
    .unwrap();
    s.cleanup.namespaces.push(ns.clone());
    ns
}

fn request(n: u32, name: &str, ns: &NetNs, ports: Vec<HostPort>) -> BridgeAttach {
    BridgeAttach {
        container_id: format!("{}{name}", tag(n)),
        netns: ns.path().to_owned(),
        ifname: "eth0".into(),
        ports,
    }
}

fn port(host_ip: Option<&str>, host_port: u16, protocol: &str) -> HostPort {
    HostPort {
        host_ip: host_ip.map(|h| h.parse().unwrap()),
        host_port,
        container_port: 80,
        protocol: protocol.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_ping_ports_hairpin_check_detach_gc() {
    let Some(mut s) = setup(11, 233) else { return };
    let p = 21000 + (std::process::id() % 20000) as u16;
    let ns_a = pod(&mut s, 11, "a");
    let ns_b = pod(&mut s, 11, "b");
    let req_a = request(
        11,
        "a",
        &ns_a,
        vec![port(None, p, "tcp"), port(None, p, "udp")],
    );
    let req_b = request(11, "b", &ns_b, vec![port(Some("10.233.0.1"), p + 1, "tcp")]);
    let a = s.net.attach(&req_a).await.unwrap();
    let b = s.net.attach(&req_b).await.unwrap();
    assert_eq!(
        s.net.attach(&req_a).await.unwrap(),
        a,
        "attach again returns the attachment"
    );
    assert_eq!(a.ips.len(), 2, "dual stack: {:?}", a.ips);
    let (a4, a6) = (a.ips[0].addr().to_string(), a.ips[1].addr().to_string());
    let (b4, _b6) = (b.ips[0].addr().to_string(), b.ips[1].addr().to_string());
    assert!(
        a4.starts_with("10.233.0.") && a6.starts_with("fd00:233::"),
        "{a4} {a6}"
    );

    assert!(
        eventually(Duration::from_secs(5), || ping(ns_a.path(), &b4)),
        "a pings b over IPv4"
    );
    assert!(
        eventually(Duration::from_secs(5), || ping(ns_b.path(), &a6)),
        "b pings a over IPv6"
    );
    assert!(ping(ns_a.path(), "10.233.0.1"), "a pings its gateway");

    let _tcp_a = Listener::start(ns_a.path(), 80, false, "hello-a");
    let _udp_a = Listener::start(ns_a.path(), 80, true, "udp-a");
    let _tcp_b = Listener::start(ns_b.path(), 80, false, "hello-b");
    assert_eq!(
        fetch(Some(ns_b.path()), &a4, 80, false),
        "hello-a",
        "pod to pod"
    );
    assert_eq!(
        fetch(Some(ns_b.path()), &a6, 80, false),
        "hello-a",
        "pod to pod over IPv6"
    );
    assert_eq!(
        fetch(None, "10.233.0.1", p, false),
        "hello-a",
        "host → host port (tcp)"
    );
    assert_eq!(
        fetch(None, "127.0.0.1", p, false),
        "hello-a",
        "host → localhost:port"
    );
    assert_eq!(
        fetch(None, "10.233.0.1", p, true),
        "udp-a",
        "host → host port (udp)"
    );
    assert_eq!(
        fetch(Some(ns_b.path()), "10.233.0.1", p, false),
        "hello-a",
        "pod → host port"
    );
    assert_eq!(
        fetch(Some(ns_a.path()), "10.233.0.1", p, false),
        "hello-a",
        "hairpin"
    );
    assert_eq!(
        fetch(None, "10.233.0.1", p + 1, false),
        "hello-b",
        "bound host IP"
    );
    assert_eq!(
        fetch(None, "127.0.0.1", p + 1, false),
        "",
        "not on other host IPs"
    );

    s.net.check(&req_a.container_id, "eth0").await.unwrap();
    s.net.detach(&req_a.container_id, "eth0").await.unwrap();
    s.net.detach(&req_a.container_id, "eth0").await.unwrap();
    assert!(s.net.check(&req_a.container_id, "eth0").await.is_err());
    assert!(!ping(ns_b.path(), &a4));
    assert_eq!(
        fetch(None, "10.233.0.1", p, false),
        "",
        "host port withdrawn"
    );
    assert!(in_ns(ns_a.path(), "ip", &["link", "show", "eth0"])
        .stdout
        .is_empty());

    // b is never detached: GC with nothing valid releases it.
    s.net.gc(&[]).await.unwrap();
    assert!(s.net.records().unwrap().is_empty());
    assert!(in_ns(ns_b.path(), "ip", &["link", "show", "eth0"])
        .stdout
        .is_empty());
    let ports = run("ip", &["link", "show", "master", &s.net.config().bridge]);
    assert!(
        String::from_utf8_lossy(&ports.stdout).trim().is_empty(),
        "no veths left"
    );
    assert!(std::fs::read_dir(s.net.config().state_dir.join("ipam"))
        .unwrap()
        .next()
        .is_none());
    s.net.teardown().await.unwrap();
}

/// A process killed after reserving an address (before or while making the veth)
/// leaves a reservation: no one else gets that address, and GC releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_attach_never_duplicates_and_gc_releases() {
    let Some(mut s) = setup(12, 234) else { return };
    let ns = pod(&mut s, 12, "c");
    // The "crashed" attach: its reservation is on disk, nothing else was made.
    let crashed = wharf_network_cni::native::Ipam::new(
        "x",
        s.net.config().state_dir.join("ipam"),
        s.net
            .config()
            .subnets
            .iter()
            .map(|s| wharf_network_cni::native::Range { subnet: *s })
            .collect(),
    );
    let lost = crashed.allocate("crashed/eth0").unwrap();
    let req = request(12, "c", &ns, vec![]);
    let c = s.net.attach(&req).await.unwrap();
    assert!(
        c.ips.iter().all(|ip| !lost.contains(ip)),
        "{:?} vs {:?}",
        c.ips,
        lost
    );
    s.net
        .gc(&[(req.container_id.clone(), "eth0".into())])
        .await
        .unwrap();
    assert!(
        crashed.held_by("crashed/eth0").unwrap().is_empty(),
        "GC released the orphan"
    );
    s.net.check(&req.container_id, "eth0").await.unwrap();
    s.net.detach(&req.container_id, "eth0").await.unwrap();
    s.net.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_leaves_nothing_half_attached() {
    let Some(mut s) = setup(13, 235) else { return };
    let p = 22000 + (std::process::id() % 20000) as u16;
    // No namespace at that path.
    let ghost = NetNs::from_path(format!("/run/netns/wharf-nt-{}-ghost", tag(13)));
    let err = s
        .net
        .attach(&request(13, "g", &ghost, vec![]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    // A host port another pod holds: the second attach fails whole.
    let ns_a = pod(&mut s, 13, "a");
    let ns_b = pod(&mut s, 13, "b");
    s.net
        .attach(&request(13, "a", &ns_a, vec![port(None, p, "tcp")]))
        .await
        .unwrap();
    let err = s
        .net
        .attach(&request(13, "b", &ns_b, vec![port(None, p, "tcp")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&format!("{p}/tcp")), "{err}");
    assert!(s
        .net
        .record(&format!("{}b", tag(13)), "eth0")
        .unwrap()
        .is_none());
    assert!(
        in_ns(ns_b.path(), "ip", &["link", "show", "eth0"])
            .stdout
            .is_empty(),
        "b's veth undone"
    );
    let held: Vec<_> = std::fs::read_dir(s.net.config().state_dir.join("ipam"))
        .unwrap()
        .collect();
    assert_eq!(held.len(), 2, "only a's two addresses are reserved");
    s.net
        .detach(&format!("{}a", tag(13)), "eth0")
        .await
        .unwrap();
    s.net.teardown().await.unwrap();
}

/// Many attach/detach cycles leave no veths, addresses, routes, map elements,
/// records or reservations behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_test_500_cycles() {
    let Some(mut s) = setup(14, 236) else { return };
    let p = 23000 + (std::process::id() % 20000) as u16;
    let ns = pod(&mut s, 14, "l");
    for i in 0..500u32 {
        let req = request(14, &format!("l{i}"), &ns, vec![port(None, p, "tcp")]);
        s.net
            .attach(&req)
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        s.net
            .detach(&req.container_id, "eth0")
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
    }
    let links = String::from_utf8_lossy(&run("ip", &["-o", "link"]).stdout).into_owned();
    for i in 0..500u32 {
        let veth = host_veth_name(&format!("{}l{i}", tag(14)), "eth0");
        assert!(
            !links.contains(&format!(" {veth}@")),
            "veth {veth} of cycle {i} left"
        );
    }
    let ports = run("ip", &["link", "show", "master", &s.net.config().bridge]);
    assert!(String::from_utf8_lossy(&ports.stdout).trim().is_empty());
    let addrs =
        String::from_utf8_lossy(&in_ns(ns.path(), "ip", &["-o", "addr"]).stdout).into_owned();
    assert!(
        addrs.lines().all(|l| l.contains(" lo ")),
        "only loopback addresses left: {addrs}"
    );
    let routes = String::from_utf8_lossy(&in_ns(ns.path(), "ip", &["route"]).stdout).into_owned();
    assert!(routes.trim().is_empty(), "no routes left: {routes}");
    let table = String::from_utf8_lossy(
        &run("nft", &["list", "table", "inet", s.net.firewall().table()]).stdout,
    )
    .into_owned();
    assert!(!table.contains("elements"), "no map elements left: {table}");
    assert!(s.net.records().unwrap().is_empty());
    assert!(std::fs::read_dir(s.net.config().state_dir.join("ipam"))
        .unwrap()
        .next()
        .is_none());
    s.net.teardown().await.unwrap();
}

/// Without nftables: the same host ports and masquerade through iptables chains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_fallback_host_ports() {
    let Some(mut s) = setup_with(15, 241, FirewallBackend::Iptables) else {
        return;
    };
    let p = 24000 + (std::process::id() % 20000) as u16;
    let ns_a = pod(&mut s, 15, "a");
    let ns_b = pod(&mut s, 15, "b");
    let ns_c = pod(&mut s, 15, "c");
    s.cleanup.markers.extend(s.net.firewall().iptables_chains());
    let req_a = request(
        15,
        "a",
        &ns_a,
        vec![port(None, p, "tcp"), port(Some("10.241.0.1"), p + 1, "tcp")],
    );
    s.net.attach(&req_a).await.unwrap();
    s.net
        .attach(&request(15, "b", &ns_b, vec![]))
        .await
        .unwrap();
    let err = s
        .net
        .attach(&request(15, "c", &ns_c, vec![port(None, p, "tcp")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already published"), "{err}");
    let _tcp_a = Listener::start(ns_a.path(), 80, false, "hello-a");
    assert_eq!(
        fetch(None, "10.241.0.1", p, false),
        "hello-a",
        "host → host port"
    );
    assert_eq!(
        fetch(None, "127.0.0.1", p, false),
        "hello-a",
        "host → localhost:port"
    );
    assert_eq!(
        fetch(Some(ns_b.path()), "10.241.0.1", p, false),
        "hello-a",
        "pod → host port"
    );
    assert_eq!(
        fetch(Some(ns_a.path()), "10.241.0.1", p, false),
        "hello-a",
        "hairpin"
    );
    assert_eq!(
        fetch(None, "10.241.0.1", p + 1, false),
        "hello-a",
        "bound host IP"
    );
    assert_eq!(
        fetch(None, "127.0.0.1", p + 1, false),
        "",
        "not on other host IPs"
    );
    s.net.detach(&req_a.container_id, "eth0").await.unwrap();
    assert_eq!(
        fetch(None, "10.241.0.1", p, false),
        "",
        "host port withdrawn"
    );
    let rules = String::from_utf8_lossy(&run("iptables-save", &["-t", "nat"]).stdout).into_owned();
    assert!(
        !rules.contains("DNAT --to-destination 10.241.0."),
        "DNAT rules removed: {rules}"
    );
    s.net.gc(&[]).await.unwrap();
    s.net.teardown().await.unwrap();
    let rules = String::from_utf8_lossy(&run("iptables-save", &["-t", "nat"]).stdout).into_owned();
    assert!(!rules.contains("10.241.0."), "chains removed: {rules}");
}

//! Root tests against Debian's real CNI plugins in /usr/lib/cni (containernetworking-
//! plugins): bridge + host-local + portmap + firewall + bandwidth. Each test deletes
//! everything it made, also when it fails.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::json;
use wharf_network_cni::cni::{CniRuntime, NetworkConfigList, RuntimeConf};
use wharf_network_cni::netns::NetNs;

const PLUGINS: &str = "/usr/lib/cni";

fn skip() -> bool {
    if !is_root() || !std::path::Path::new(PLUGINS).join("bridge").exists() {
        eprintln!("skipped: needs root and containernetworking-plugins");
        return true;
    }
    false
}

struct Net {
    runtime: CniRuntime,
    list: NetworkConfigList,
    bridge: String,
    gateway: String,
}

/// A network with its own bridge, subnet, IPAM dir and cache dir.
fn network(n: u32, octet: u8, plugins: &[&str], cleanup: &mut Cleanup) -> Net {
    let t = tag(n);
    let dir = tempfile::tempdir().unwrap().keep();
    cleanup.dirs.push(dir.clone());
    let bridge = format!("wb{t}");
    cleanup.links.push(bridge.clone());
    let mut chain = vec![json!({
        "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true,
        "ipam": {"type": "host-local", "dataDir": dir.join("ipam"),
                 "ranges": [[{"subnet": format!("10.{octet}.0.0/24")}]],
                 "routes": [{"dst": "0.0.0.0/0"}]}
    })];
    for p in plugins {
        chain.push(match *p {
            "portmap" => {
                json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true})
            }
            "firewall" => json!({"type": "firewall", "backend": "iptables"}),
            "bandwidth" => json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
            other => panic!("{other}"),
        });
    }
    let doc = json!({"cniVersion": "1.0.0", "name": format!("wharf-test-{t}"), "plugins": chain});
    cleanup.markers.push(format!("wharf-test-{t}"));
    cleanup.markers.push(format!(" 10.{octet}.0."));
    let list = NetworkConfigList::from_conflist(doc.to_string().as_bytes(), "<test>").unwrap();
    Net {
        runtime: CniRuntime::new(vec![PathBuf::from(PLUGINS)], dir.join("cache")),
        list,
        bridge,
        gateway: format!("10.{octet}.0.1"),
    }
}

fn pod(n: u32, name: &str, cleanup: &mut Cleanup) -> (NetNs, RuntimeConf) {
    let ns = NetNs::create(
        "/run/netns".as_ref(),
        &format!("wharf-test-{}-{name}", tag(n)),
    )
    .unwrap();
    cleanup.namespaces.push(ns.clone());
    let rt = RuntimeConf::for_pod(
        &format!("{}{name}", tag(n)),
        ns.path(),
        "eth0",
        "default",
        name,
    );
    (ns, rt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_chain_add_ping_portmap_check_del_gc() {
    if skip() {
        return;
    }
    let mut cleanup = Cleanup::new();
    let net = network(1, 231, &["portmap", "firewall", "bandwidth"], &mut cleanup);
    let (ns_a, mut rt_a) = pod(1, "a", &mut cleanup);
    let (ns_b, rt_b) = pod(1, "b", &mut cleanup);
    let host_port = 20000 + (std::process::id() % 20000) as u16;
    rt_a.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]),
    );
    rt_a.capability_args.insert(
        "bandwidth".into(),
        json!({"ingressRate": 100_000_000, "ingressBurst": 10_000_000,
               "egressRate": 100_000_000, "egressBurst": 10_000_000}),
    );

    let a = net.runtime.add(&net.list, &rt_a).await.unwrap();
    let b = net.runtime.add(&net.list, &rt_b).await.unwrap();
    let ip_a = a
        .sandbox_ips()
        .next()
        .expect("pod a got an address")
        .address
        .addr()
        .to_string();
    let ip_b = b
        .sandbox_ips()
        .next()
        .expect("pod b got an address")
        .address
        .addr()
        .to_string();
    assert!(ip_a.starts_with("10.231.0."), "{ip_a}");
    assert_ne!(ip_a, ip_b);

    assert!(
        eventually(Duration::from_secs(5), || ping(ns_a.path(), &ip_b)),
        "a pings b"
    );
    assert!(ping(ns_b.path(), &ip_a), "b pings a");

    let _server = Listener::start(ns_a.path(), 80, false, "hello-a");
    assert_eq!(
        fetch(Some(ns_b.path()), &ip_a, 80, false),
        "hello-a",
        "direct"
    );
    assert!(
        eventually(Duration::from_secs(5), || fetch(
            None,
            &net.gateway,
            host_port,
            false
        ) == "hello-a"),
        "host reaches the pod through the host port"
    );
    assert_eq!(
        fetch(Some(ns_b.path()), &net.gateway, host_port, false),
        "hello-a",
        "another pod reaches it through the host port"
    );

    // portmap's CHECK fails on IPv4-only results (upstream bug), so CHECK the chain
    // without it: the same attachment, as a list of bridge + firewall + bandwidth.
    let mut no_portmap = net.list.clone();
    no_portmap.plugins.retain(|p| p["type"] != "portmap");
    net.runtime.check(&no_portmap, &rt_a).await.unwrap();

    net.runtime.del(&net.list, &rt_a).await.unwrap();
    net.runtime.del(&net.list, &rt_a).await.unwrap();
    assert!(!net
        .runtime
        .cache()
        .path(&net.list.name, &rt_a.container_id, "eth0")
        .exists());
    assert!(
        in_ns(ns_a.path(), "ip", &["link", "show", "eth0"])
            .stdout
            .is_empty(),
        "veth gone"
    );
    assert!(!ping(ns_b.path(), &ip_a));

    // b is never DEL'd: GC with no valid attachments removes it.
    net.runtime.gc(&net.list, &[]).await.unwrap();
    assert!(net.runtime.cache().list(&net.list.name).unwrap().is_empty());
    assert!(
        in_ns(ns_b.path(), "ip", &["link", "show", "eth0"])
            .stdout
            .is_empty(),
        "b's veth gone"
    );
    let bridge_ports = run("ip", &["link", "show", "master", &net.bridge]);
    assert!(
        String::from_utf8_lossy(&bridge_ports.stdout)
            .trim()
            .is_empty(),
        "no veths left on the bridge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_errors_name_the_plugin_and_leave_nothing_attached() {
    if skip() {
        return;
    }
    let mut cleanup = Cleanup::new();
    let mut net = network(2, 232, &[], &mut cleanup);
    let (ns, rt) = pod(2, "x", &mut cleanup);
    // host-local rejects a range outside its subnet: a CNI error from a real plugin,
    // after bridge already made the veth, which must be undone.
    net.list.plugins[0]["ipam"]["ranges"] =
        json!([[{"subnet": "10.232.0.0/24", "rangeStart": "10.99.0.5"}]]);
    let err = net.runtime.add(&net.list, &rt).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bridge"), "{msg}");
    assert!(
        in_ns(ns.path(), "ip", &["link", "show", "eth0"])
            .stdout
            .is_empty(),
        "nothing attached: {msg}"
    );
    assert!(net.runtime.cache().list(&net.list.name).unwrap().is_empty());
}

//! The native bridge as a CNI plugin binary (`wharf-bridge-cni`), driven by Wharf's
//! own CNI runtime exactly as a third-party runtime would drive it.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::json;
use wharf_network_cni::cni::{CniRuntime, NetworkConfigList, RuntimeConf};
use wharf_network_cni::netns::NetNs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_ping_port_check_del_gc_through_the_plugin_binary() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut cleanup = Cleanup::new();
    let t = tag(41);
    let dir = tempfile::tempdir().unwrap().keep();
    cleanup.dirs.push(dir.clone());
    let bridge = format!("wcb{t}");
    let name = format!("wcb{t}");
    cleanup.links.push(bridge.clone());
    cleanup.nft_tables.push(format!("wharf_{name}"));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_wharf-bridge-cni"));
    let doc = json!({"cniVersion": "1.1.0", "name": name, "plugins": [
        {"type": "wharf-bridge-cni", "bridge": bridge, "dataDir": dir.join("state"),
         "subnets": ["10.242.0.0/24", "fd00:242::/64"], "firewallBackend": "nftables",
         "capabilities": {"portMappings": true}}]});
    let list = NetworkConfigList::from_conflist(doc.to_string().as_bytes(), "<test>").unwrap();
    let cni = CniRuntime::new(vec![bin.parent().unwrap().to_owned()], dir.join("cache"));
    let p = 25000 + (std::process::id() % 20000) as u16;
    let mut rts = Vec::new();
    for pod in ["a", "b"] {
        let ns = NetNs::create("/run/netns".as_ref(), &format!("wharf-cb-{t}-{pod}")).unwrap();
        cleanup.namespaces.push(ns.clone());
        let mut rt = RuntimeConf::for_pod(&format!("{t}{pod}"), ns.path(), "eth0", "default", pod);
        if pod == "a" {
            rt.capability_args.insert(
                "portMappings".into(),
                json!([{"hostPort": p, "containerPort": 80, "protocol": "tcp"}]),
            );
        }
        rts.push(rt);
    }
    cni.status(&list).await.unwrap();
    let a = cni.add(&list, &rts[0]).await.unwrap();
    let b = cni.add(&list, &rts[1]).await.unwrap();
    assert_eq!(a.ips.len(), 2);
    let ip_b = b.ips[0].address.addr().to_string();
    assert!(eventually(Duration::from_secs(5), || ping(
        &rts[0].netns,
        &ip_b
    )));
    let _server = Listener::start(&rts[0].netns, 80, false, "hello-a");
    assert_eq!(
        fetch(Some(&rts[1].netns), "10.242.0.1", p, false),
        "hello-a"
    );
    cni.check(&list, &rts[0]).await.unwrap();
    cni.del(&list, &rts[0]).await.unwrap();
    cni.del(&list, &rts[0]).await.unwrap();
    assert!(cni.check(&list, &rts[0]).await.is_err());
    // b is never DEL'd: GC (cache DEL, then the plugin's own GC) removes it.
    cni.gc(&list, &[]).await.unwrap();
    assert!(in_ns(&rts[1].netns, "ip", &["link", "show", "eth0"])
        .stdout
        .is_empty());
    assert!(std::fs::read_dir(dir.join("state/ipam"))
        .unwrap()
        .next()
        .is_none());
}

/// kill -9 of the plugin at different moments of ADD: no address is ever held twice,
/// a later attach gets a free one, and GC removes every trace of the killed ADDs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_add_never_duplicates_and_gc_cleans_up() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    use wharf_network_cni::native::{
        host_veth_name, BridgeAttach, BridgeConfig, BridgeNetwork, FirewallBackend,
    };

    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut cleanup = Cleanup::new();
    let t = tag(42);
    let dir = tempfile::tempdir().unwrap().keep();
    cleanup.dirs.push(dir.clone());
    let name = format!("wck{t}");
    cleanup.links.push(name.clone());
    cleanup.nft_tables.push(format!("wharf_{name}"));
    let conf = json!({"cniVersion": "1.0.0", "name": name, "type": "wharf-bridge-cni", "bridge": name,
        "dataDir": dir.join("state"), "subnets": ["10.243.0.0/24"], "firewallBackend": "nftables"});
    let bin = env!("CARGO_BIN_EXE_wharf-bridge-cni");
    let mut killed = Vec::new();
    for i in 0..24u64 {
        let ns = NetNs::create("/run/netns".as_ref(), &format!("wharf-ck-{t}-{i}")).unwrap();
        cleanup.namespaces.push(ns.clone());
        let id = format!("{t}k{i}");
        let mut child = Command::new(bin)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &id)
            .env("CNI_NETNS", ns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/nonexistent")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        // Kill once the address is reserved, then a little later each round, so the
        // kills land before the record, before the veth, mid-configuration, or after.
        let owner = format!("{id}/eth0");
        let reserved = eventually(Duration::from_secs(3), || {
            std::fs::read_dir(dir.join("state/ipam"))
                .map(|d| {
                    d.flatten()
                        .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|o| o == owner))
                })
                .unwrap_or(false)
        });
        assert!(reserved, "ADD {i} never reserved an address");
        std::thread::sleep(Duration::from_micros((i % 8) * 300));
        let _ = child.kill();
        let _ = child.wait();
        killed.push(id);
    }
    let state = dir.join("state");
    let net = BridgeNetwork::new(BridgeConfig {
        name: name.clone(),
        bridge: name.clone(),
        subnets: vec!["10.243.0.0/24".parse().unwrap()],
        state_dir: state.clone(),
        firewall: FirewallBackend::Nftables,
        ..BridgeConfig::default()
    })
    .unwrap();
    // Each address is one file, so no address has two owners; and each owner holds at
    // most one address per subnet.
    let mut owners: Vec<String> = std::fs::read_dir(state.join("ipam"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap())
                .collect()
        })
        .unwrap_or_default();
    let held = owners.len();
    owners.sort();
    owners.dedup();
    assert_eq!(owners.len(), held, "an owner holds two addresses");
    let veths =
        String::from_utf8_lossy(&run("ip", &["-o", "link", "show", "master", &name]).stdout)
            .lines()
            .count();
    eprintln!("after 24 kills: {held} addresses reserved, {veths} veths on the bridge");
    let ns = NetNs::create("/run/netns".as_ref(), &format!("wharf-ck-{t}-fresh")).unwrap();
    cleanup.namespaces.push(ns.clone());
    let fresh = BridgeAttach {
        container_id: format!("{t}fresh"),
        netns: ns.path().to_owned(),
        ifname: "eth0".into(),
        ports: vec![],
    };
    let r = net.attach(&fresh).await.unwrap();
    let file = state.join("ipam").join(r.ips[0].addr().to_string());
    assert_eq!(
        std::fs::read_to_string(file).unwrap(),
        format!("{t}fresh/eth0")
    );
    net.gc(&[(fresh.container_id.clone(), "eth0".into())])
        .await
        .unwrap();
    let left: Vec<_> = std::fs::read_dir(state.join("ipam"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(left.len(), 1, "only the fresh pod's address is left");
    let links = String::from_utf8_lossy(&run("ip", &["-o", "link"]).stdout).into_owned();
    for id in &killed {
        assert!(
            !links.contains(&format!(" {}@", host_veth_name(id, "eth0"))),
            "{id}'s veth left"
        );
    }
    net.detach(&fresh.container_id, "eth0").await.unwrap();
    net.teardown().await.unwrap();
}

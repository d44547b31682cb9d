//! The same scenario through `dyn NetworkPlugin` for the CNI runtime (Debian's
//! bridge + host-local + firewall) and the native bridge: attach two pods, they ping
//! each other, CHECK, detach twice, GC removes the pod never detached.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::json;
use wharf_core::backend::network::{AttachRequest, AttachmentId, NetworkPlugin};
use wharf_network_cni::cni::{CniRuntime, NetworkConfigList};
use wharf_network_cni::netns::NetNs;
use wharf_network_cni::{BridgeConfig, BridgeNetwork, CniNetwork};

async fn scenario(plugin: &dyn NetworkPlugin, n: u32, cleanup: &mut Cleanup) {
    let mut reqs = Vec::new();
    for name in ["a", "b"] {
        let ns = NetNs::create(
            "/run/netns".as_ref(),
            &format!("wharf-pt-{}-{name}", tag(n)),
        )
        .unwrap();
        cleanup.namespaces.push(ns.clone());
        reqs.push(AttachRequest {
            container_id: format!("{}{name}", tag(n)),
            netns: ns.path().to_owned(),
            pod_namespace: "default".into(),
            pod_name: name.into(),
            ..Default::default()
        });
    }
    let a = plugin.attach(&reqs[0]).await.unwrap();
    let b = plugin.attach(&reqs[1]).await.unwrap();
    assert_eq!(
        plugin.attach(&reqs[0]).await.unwrap(),
        a,
        "{}: attach is idempotent",
        plugin.name()
    );
    let (ip_a, ip_b) = (a.primary_ip().unwrap(), b.primary_ip().unwrap());
    assert!(ip_a.is_ipv4() && ip_a != ip_b);
    assert!(
        eventually(Duration::from_secs(5), || ping(
            &reqs[0].netns,
            &ip_b.to_string()
        )),
        "{}: a pings b",
        plugin.name()
    );
    plugin.status().await.unwrap();
    plugin.check(&reqs[0]).await.unwrap();
    plugin.detach(&reqs[0]).await.unwrap();
    plugin.detach(&reqs[0]).await.unwrap();
    assert!(!ping(&reqs[1].netns, &ip_a.to_string()));
    let err = plugin.check(&reqs[0]).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let keep = AttachmentId {
        container_id: "someone-else".into(),
        ifname: "eth0".into(),
    };
    plugin.gc(&[keep]).await.unwrap();
    assert!(
        in_ns(&reqs[1].netns, "ip", &["link", "show", "eth0"])
            .stdout
            .is_empty(),
        "{}: GC detached b",
        plugin.name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_network_through_the_trait() {
    if !is_root() || !std::path::Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("skipped: needs root and containernetworking-plugins");
        return;
    }
    let mut cleanup = Cleanup::new();
    let t = tag(21);
    let dir = tempfile::tempdir().unwrap().keep();
    cleanup.dirs.push(dir.clone());
    cleanup.links.push(format!("wb{t}"));
    cleanup.markers.push(format!("wharf-pt-{t}"));
    cleanup.markers.push(" 10.237.0.".into());
    let doc = json!({"cniVersion": "1.0.0", "name": format!("wharf-pt-{t}"), "plugins": [
        {"type": "bridge", "bridge": format!("wb{t}"), "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "dataDir": dir.join("ipam"),
                  "ranges": [[{"subnet": "10.237.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "firewall", "backend": "iptables"}]});
    let list = NetworkConfigList::from_conflist(doc.to_string().as_bytes(), "<test>").unwrap();
    let net = CniNetwork::new(
        CniRuntime::new(vec![PathBuf::from("/usr/lib/cni")], dir.join("cache")),
        list,
    );
    scenario(&net, 21, &mut cleanup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_bridge_through_the_trait() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut cleanup = Cleanup::new();
    let t = tag(22);
    let dir = tempfile::tempdir().unwrap().keep();
    cleanup.dirs.push(dir.clone());
    let net = BridgeNetwork::new(BridgeConfig {
        name: format!("wp{t}"),
        bridge: format!("wpb{t}"),
        subnets: vec![
            "10.238.0.0/24".parse().unwrap(),
            "fd00:238::/64".parse().unwrap(),
        ],
        state_dir: dir,
        ..BridgeConfig::default()
    })
    .unwrap();
    cleanup.links.push(net.config().bridge.clone());
    cleanup.nft_tables.push(net.firewall().table().to_string());
    scenario(&net, 22, &mut cleanup).await;
    net.teardown().await.unwrap();
}

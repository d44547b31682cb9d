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

//! Native bridge attach + detach vs Debian's CNI plugin chain (bridge + host-local +
//! portmap) through the CNI runtime, in the same run, both with one TCP host port.
//! Needs root and containernetworking-plugins; prints a skip line otherwise.
//!
//! `cargo bench -p wharf-network-cni --bench attach`

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use wharf_network_cni::cni::{CniRuntime, NetworkConfigList, RuntimeConf};
use wharf_network_cni::native::{BridgeAttach, BridgeConfig, BridgeNetwork, HostPort};
use wharf_network_cni::netns::NetNs;

struct Bench {
    native: BridgeNetwork,
    native_req: BridgeAttach,
    cni: CniRuntime,
    list: NetworkConfigList,
    cni_rt: RuntimeConf,
}

fn setup(cleanup: &mut Cleanup) -> Bench {
    let t = tag(31);
    let dir = tempfile::tempdir().unwrap().keep();
    cleanup.dirs.push(dir.clone());
    let ns_native = NetNs::create("/run/netns".as_ref(), &format!("wharf-bn-{t}")).unwrap();
    let ns_cni = NetNs::create("/run/netns".as_ref(), &format!("wharf-bc-{t}")).unwrap();
    cleanup
        .namespaces
        .extend([ns_native.clone(), ns_cni.clone()]);
    let native = BridgeNetwork::new(BridgeConfig {
        name: format!("wbn{t}"),
        bridge: format!("wbnb{t}"),
        subnets: vec!["10.239.0.0/24".parse().unwrap()],
        state_dir: dir.join("native"),
        ..BridgeConfig::default()
    })
    .unwrap();
    cleanup.links.push(native.config().bridge.clone());
    cleanup
        .nft_tables
        .push(native.firewall().table().to_string());
    let native_req = BridgeAttach {
        container_id: format!("bn{t}"),
        netns: ns_native.path().to_owned(),
        ifname: "eth0".into(),
        ports: vec![HostPort {
            host_ip: None,
            host_port: 24080,
            container_port: 80,
            protocol: "tcp".into(),
        }],
    };
    let name = format!("wharf-bench-{t}");
    cleanup.markers.push(name.clone());
    cleanup.markers.push(" 10.240.0.".into());
    cleanup.links.push(format!("wbc{t}"));
    let doc = json!({"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": format!("wbc{t}"), "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "dataDir": dir.join("ipam"),
                  "ranges": [[{"subnet": "10.240.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}]});
    let list = NetworkConfigList::from_conflist(doc.to_string().as_bytes(), "<bench>").unwrap();
    let mut cni_rt =
        RuntimeConf::for_pod(&format!("bc{t}"), ns_cni.path(), "eth0", "default", "bench");
    cni_rt.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 24081, "containerPort": 80, "protocol": "tcp"}]),
    );
    Bench {
        native,
        native_req,
        cni: CniRuntime::new(vec![PathBuf::from("/usr/lib/cni")], dir.join("cache")),
        list,
        cni_rt,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn attach_detach(c: &mut Criterion) {
    if !is_root() || !std::path::Path::new("/usr/lib/cni/portmap").exists() {
        eprintln!("attach bench skipped: needs root and containernetworking-plugins");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cleanup = Cleanup::new();
    let b = setup(&mut cleanup);
    // Warm up both (bridges, nft table, plugin VERSION answers).
    rt.block_on(async {
        b.native.attach(&b.native_req).await.unwrap();
        b.native
            .detach(&b.native_req.container_id, "eth0")
            .await
            .unwrap();
        b.cni.add(&b.list, &b.cni_rt).await.unwrap();
        b.cni.del(&b.list, &b.cni_rt).await.unwrap();
    });

    // Paired runs, alternating, for the ratio.
    let (mut n_add, mut n_del, mut c_add, mut c_del) = (vec![], vec![], vec![], vec![]);
    rt.block_on(async {
        for _ in 0..15 {
            let t = Instant::now();
            b.native.attach(&b.native_req).await.unwrap();
            n_add.push(t.elapsed());
            let t = Instant::now();
            b.native
                .detach(&b.native_req.container_id, "eth0")
                .await
                .unwrap();
            n_del.push(t.elapsed());
            let t = Instant::now();
            b.cni.add(&b.list, &b.cni_rt).await.unwrap();
            c_add.push(t.elapsed());
            let t = Instant::now();
            b.cni.del(&b.list, &b.cni_rt).await.unwrap();
            c_del.push(t.elapsed());
        }
    });
    let both =
        |a: &[Duration], d: &[Duration]| median(a.iter().zip(d).map(|(x, y)| *x + *y).collect());
    let (native, cni) = (both(&n_add, &n_del), both(&c_add, &c_del));
    println!(
        "paired medians (15 runs): native attach {:?} detach {:?} total {:?}; \
         CNI bridge+host-local+portmap ADD {:?} DEL {:?} total {:?}; CNI/native = {:.1}x",
        median(n_add.clone()),
        median(n_del.clone()),
        native,
        median(c_add.clone()),
        median(c_del.clone()),
        cni,
        cni.as_secs_f64() / native.as_secs_f64()
    );

    let mut g = c.benchmark_group("attach+detach");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("native bridge (1 host port)", |bench| {
        bench.to_async(&rt).iter(|| async {
            b.native.attach(&b.native_req).await.unwrap();
            b.native
                .detach(&b.native_req.container_id, "eth0")
                .await
                .unwrap();
        })
    });
    g.bench_function("CNI bridge+host-local+portmap (1 host port)", |bench| {
        bench.to_async(&rt).iter(|| async {
            b.cni.add(&b.list, &b.cni_rt).await.unwrap();
            b.cni.del(&b.list, &b.cni_rt).await.unwrap();
        })
    });
    g.finish();
    rt.block_on(b.native.teardown()).unwrap();
}

criterion_group!(benches, attach_detach);
criterion_main!(benches);

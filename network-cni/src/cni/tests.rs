//! The chain logic against small fake plugins (python scripts written by the tests):
//! no root, no real network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::NetworkError;

/// A fake plugin: logs each call (command, env, stdin) as a JSON line to `calls.jsonl`
/// and behaves as its `<name>.json` says: `versions`, `add` (a result, else it echoes
/// `prevResult`), `fail` (command → error object), `garbage` (command), `sleep`.
const FAKE: &str = r#"#!/usr/bin/env python3
import json, os, sys, time
me = os.path.basename(sys.argv[0])
here = os.path.dirname(os.path.abspath(sys.argv[0]))
beh = json.load(open(os.path.join(here, me + ".json")))
cmd = os.environ.get("CNI_COMMAND", "")
raw = sys.stdin.read()
conf = json.loads(raw) if raw.strip() else {}
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps({"plugin": me, "cmd": cmd, "env": env, "conf": conf}) + "\n")
time.sleep(beh.get("sleep", {}).get(cmd, 0))
if cmd in beh.get("fail", {}):
    print(json.dumps(beh["fail"][cmd])); sys.exit(1)
if cmd == beh.get("garbage"):
    print("this is not json"); sys.exit(0)
if cmd == "VERSION":
    print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": beh["versions"]}))
elif cmd == "ADD":
    res = beh.get("add") or conf.get("prevResult")
    print(json.dumps(res))
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    cache: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let cache = dir.path().join("cache");
        std::fs::create_dir(&bin).unwrap();
        Fixture {
            _dir: dir,
            bin,
            cache,
        }
    }

    fn plugin(&self, name: &str, behaviour: Value) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.bin.join(name);
        std::fs::write(&path, FAKE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(self.bin.join(format!("{name}.json")), behaviour.to_string()).unwrap();
    }

    fn runtime(&self) -> CniRuntime {
        CniRuntime::new(
            vec![PathBuf::from("/nonexistent"), self.bin.clone()],
            &self.cache,
        )
    }

    /// The logged calls other than VERSION, as (plugin, command, conf, env).
    fn calls(&self) -> Vec<(String, String, Value, Value)> {
        let Ok(text) = std::fs::read_to_string(self.bin.join("calls.jsonl")) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|c| c["cmd"] != "VERSION")
            .map(|c| {
                (
                    c["plugin"].as_str().unwrap().to_string(),
                    c["cmd"].as_str().unwrap().to_string(),
                    c["conf"].clone(),
                    c["env"].clone(),
                )
            })
            .collect()
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.bin.join("calls.jsonl"));
    }
}

fn list(version: &str, plugins: Value) -> NetworkConfigList {
    let doc = json!({"cniVersion": version, "name": "testnet", "plugins": plugins});
    NetworkConfigList::from_conflist(
        doc.to_string().as_bytes(),
        "/etc/cni/net.d/10-test.conflist",
    )
    .unwrap()
}

fn conf() -> RuntimeConf {
    let mut rt = RuntimeConf::for_pod("sandbox1", "/run/netns/sb1", "eth0", "default", "web");
    rt.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    rt.capability_args
        .insert("bandwidth".into(), json!({"ingressRate": 1000}));
    rt
}

fn old_result() -> Value {
    json!({"cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/sb1"}],
        "ips": [{"version": "4", "address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 0}]})
}

/// ADD: in order, versions negotiated per plugin, results converted both ways, name
/// and cniVersion injected, runtimeConfig = capabilities ∩ args, capabilities removed,
/// CNI_* environment, final result cached in the list's version.
#[tokio::test]
async fn add_runs_chain_in_order_and_caches_final_result() {
    let f = Fixture::new();
    f.plugin(
        "old",
        json!({"versions": ["0.3.1", "0.4.0"], "add": old_result()}),
    );
    f.plugin("new", json!({"versions": ["1.0.0", "1.1.0"]}));
    let net = list(
        "1.1.0",
        json!([{"type": "old", "custom": {"keep": true}},
               {"type": "new", "capabilities": {"portMappings": true, "bandwidth": false, "dns": true}}]),
    );
    let rt = f.runtime();
    let result = rt.add(&net, &conf()).await.unwrap();
    assert_eq!(result.ips[0].address.to_string(), "10.22.0.5/16");
    assert_eq!(result.cni_version, "1.1.0");

    let calls = f.calls();
    let order: Vec<_> = calls.iter().map(|c| (c.0.as_str(), c.1.as_str())).collect();
    assert_eq!(order, [("old", "ADD"), ("new", "ADD")]);
    let (old_conf, new_conf) = (&calls[0].2, &calls[1].2);
    assert_eq!(
        old_conf["cniVersion"], "0.4.0",
        "newest version the plugin shares"
    );
    assert_eq!(old_conf["name"], "testnet");
    assert_eq!(
        old_conf["custom"],
        json!({"keep": true}),
        "unknown keys pass through"
    );
    assert!(old_conf.get("runtimeConfig").is_none());
    assert!(old_conf.get("prevResult").is_none());
    assert_eq!(new_conf["cniVersion"], "1.1.0");
    assert!(new_conf.get("capabilities").is_none());
    assert_eq!(
        new_conf["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );
    assert!(
        new_conf["prevResult"]["ips"][0].get("version").is_none(),
        "converted to 1.1.0"
    );

    let env = &calls[0].3;
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], "sandbox1");
    assert_eq!(env["CNI_NETNS"], "/run/netns/sb1");
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(
        env["CNI_ARGS"],
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sandbox1"
    );
    assert!(env["CNI_PATH"].as_str().unwrap().ends_with("/bin"));

    let cached = rt
        .cache()
        .read("testnet", "sandbox1", "eth0")
        .unwrap()
        .unwrap();
    assert_eq!(cached.result.unwrap()["cniVersion"], "1.1.0");
    assert_eq!(cached.config, net.bytes);
    assert_eq!(cached.netns, "/run/netns/sb1");
}

/// DEL: reverse order, cached result as prevResult (converted to each plugin's
/// version, none for 0.3.x), cache entry gone, and a second DEL succeeds.
#[tokio::test]
async fn del_runs_in_reverse_with_cached_result_and_is_idempotent() {
    let f = Fixture::new();
    f.plugin("first", json!({"versions": ["0.3.1"], "add": old_result()}));
    f.plugin("second", json!({"versions": ["0.4.0"]}));
    let net = list("1.0.0", json!([{"type": "first"}, {"type": "second"}]));
    let rt = f.runtime();
    rt.add(&net, &conf()).await.unwrap();
    f.clear_calls();
    rt.del(&net, &conf()).await.unwrap();
    let calls = f.calls();
    let order: Vec<_> = calls.iter().map(|c| (c.0.as_str(), c.1.as_str())).collect();
    assert_eq!(order, [("second", "DEL"), ("first", "DEL")]);
    assert_eq!(calls[0].2["prevResult"]["ips"][0]["version"], "4");
    assert!(
        calls[1].2.get("prevResult").is_none(),
        "0.3.x DEL has no prevResult"
    );
    assert!(!rt.cache().path("testnet", "sandbox1", "eth0").exists());
    rt.del(&net, &conf()).await.unwrap();
    assert_eq!(f.calls().len(), 4);
}

#[tokio::test]
async fn check_uses_cached_result_unless_disabled() {
    let f = Fixture::new();
    f.plugin("p", json!({"versions": ["1.0.0"], "add": old_result()}));
    f.plugin("q", json!({"versions": ["0.3.1"]}));
    let net = list("1.0.0", json!([{"type": "p"}, {"type": "q"}]));
    let rt = f.runtime();
    assert!(matches!(
        rt.check(&net, &conf()).await,
        Err(NetworkError::NotAttached { .. })
    ));
    rt.add(&net, &conf()).await.unwrap();
    f.clear_calls();
    rt.check(&net, &conf()).await.unwrap();
    let calls = f.calls();
    assert_eq!(calls.len(), 1, "q speaks 0.3.1, which has no CHECK");
    assert_eq!(calls[0].1, "CHECK");
    assert_eq!(
        calls[0].2["prevResult"]["ips"][0]["address"],
        "10.22.0.5/16"
    );

    let mut disabled = net.clone();
    disabled.disable_check = true;
    f.clear_calls();
    rt.check(&disabled, &conf()).await.unwrap();
    assert!(f.calls().is_empty());
    let old = list("0.3.1", json!([{"type": "p"}]));
    assert!(matches!(
        rt.check(&old, &conf()).await,
        Err(NetworkError::UnsupportedOperation { .. })
    ));
}

/// A plugin error is surfaced with its code and message; the whole chain is DEL'd and
/// nothing is cached.
#[tokio::test]
async fn failed_add_surfaces_cni_error_and_undoes_chain() {
    let f = Fixture::new();
    f.plugin("ok", json!({"versions": ["1.0.0"], "add": old_result()}));
    f.plugin("bad", json!({"versions": ["1.0.0"],
        "fail": {"ADD": {"cniVersion": "1.0.0", "code": 7, "msg": "bad subnet", "details": "10.0.0.0/33"}}}));
    let net = list("1.0.0", json!([{"type": "ok"}, {"type": "bad"}]));
    let rt = f.runtime();
    let err = rt.add(&net, &conf()).await.unwrap_err();
    match &err {
        NetworkError::PluginFailed {
            plugin,
            error,
            network,
            ..
        } => {
            assert_eq!(plugin, "bad");
            assert_eq!(network, "testnet");
            assert_eq!(
                (error.code, error.msg.as_str(), error.details.as_str()),
                (7, "bad subnet", "10.0.0.0/33")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("bad subnet"));
    let order: Vec<_> = f.calls().into_iter().map(|c| (c.0, c.1)).collect();
    let want = [("ok", "ADD"), ("bad", "ADD"), ("bad", "DEL"), ("ok", "DEL")]
        .map(|(a, b)| (a.to_string(), b.to_string()));
    assert_eq!(order, want);
    assert!(rt.cache().list("testnet").unwrap().is_empty());
}

#[tokio::test]
async fn garbage_output_and_missing_plugin_name_the_plugin() {
    let f = Fixture::new();
    f.plugin("liar", json!({"versions": ["1.0.0"], "garbage": "ADD"}));
    f.plugin(
        "crasher",
        json!({"versions": ["1.0.0"], "fail": {"ADD": "not an error object"}}),
    );
    let rt = f.runtime();
    let err = rt
        .add(&list("1.0.0", json!([{"type": "liar"}])), &conf())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NetworkError::PluginOutput { plugin, .. } if plugin == "liar"),
        "{err}"
    );
    let err = rt
        .add(&list("1.0.0", json!([{"type": "crasher"}])), &conf())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NetworkError::PluginFailed { plugin, error, .. } if plugin == "crasher" && error.code == 0),
        "{err}"
    );
    let err = rt
        .add(&list("1.0.0", json!([{"type": "nowhere"}])), &conf())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"nowhere\" not found"), "{err}");
    assert!(rt.cache().list("testnet").unwrap().is_empty());
}

#[tokio::test]
async fn hung_plugin_times_out_naming_it() {
    let f = Fixture::new();
    f.plugin("slow", json!({"versions": ["1.0.0"], "sleep": {"ADD": 30}}));
    let rt = f.runtime();
    // VERSION first, under no pressure: python's start-up is slow on a loaded machine.
    rt.plugin_versions("slow").await.unwrap();
    let rt = rt.with_timeout(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let err = rt
        .add(&list("1.0.0", json!([{"type": "slow"}])), &conf())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        matches!(&err, NetworkError::PluginTimeout { plugin, command: "ADD", .. } if plugin == "slow"),
        "{err}"
    );
}

#[tokio::test]
async fn incompatible_plugin_version_is_an_error() {
    let f = Fixture::new();
    f.plugin("ancient", json!({"versions": ["0.1.0", "0.2.0"]}));
    let err = f
        .runtime()
        .add(&list("1.0.0", json!([{"type": "ancient"}])), &conf())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NetworkError::IncompatibleVersion { plugin, .. } if plugin == "ancient"),
        "{err}"
    );
}

/// GC: cached attachments not in the valid list are DEL'd with their cached config;
/// 1.1 plugins then get GC with cni.dev/valid-attachments; 1.0 plugins do not.
#[tokio::test]
async fn gc_deletes_stale_attachments_and_passes_valid_list() {
    let f = Fixture::new();
    f.plugin("p11", json!({"versions": ["1.1.0"], "add": old_result()}));
    f.plugin("p10", json!({"versions": ["1.0.0"]}));
    let net = list("1.1.0", json!([{"type": "p11"}, {"type": "p10"}]));
    let rt = f.runtime();
    let mut keep = conf();
    keep.container_id = "keep".into();
    rt.add(&net, &keep).await.unwrap();
    rt.add(&net, &conf()).await.unwrap();
    f.clear_calls();
    rt.gc(&net, &[("keep".into(), "eth0".into())])
        .await
        .unwrap();
    let calls = f.calls();
    let order: Vec<_> = calls
        .iter()
        .map(|c| (c.0.as_str(), c.1.as_str(), c.3["CNI_CONTAINERID"].as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("p10", "DEL", Some("sandbox1")),
            ("p11", "DEL", Some("sandbox1")),
            ("p11", "GC", None)
        ]
    );
    assert_eq!(
        calls[2].2["cni.dev/valid-attachments"],
        json!([{"containerID": "keep", "ifname": "eth0"}])
    );
    let left: Vec<_> = rt
        .cache()
        .list("testnet")
        .unwrap()
        .into_iter()
        .map(|e| e.container_id)
        .collect();
    assert_eq!(left, ["keep"]);
}

#[tokio::test]
async fn status_asks_1_1_plugins_and_surfaces_not_available() {
    let f = Fixture::new();
    f.plugin(
        "down",
        json!({"versions": ["1.1.0"],
        "fail": {"STATUS": {"cniVersion": "1.1.0", "code": 50, "msg": "no IPs left"}}}),
    );
    let rt = f.runtime();
    let err = rt
        .status(&list("1.1.0", json!([{"type": "down"}])))
        .await
        .unwrap_err();
    match err {
        NetworkError::PluginFailed { error, .. } => assert!(error.is_retryable()),
        other => panic!("unexpected {other:?}"),
    }
    rt.status(&list("1.0.0", json!([{"type": "down"}])))
        .await
        .unwrap();
    assert_eq!(rt.plugin_versions("down").await.unwrap(), ["1.1.0"]);
}

#[test]
fn bad_runtime_conf_is_rejected_before_any_plugin_runs() {
    let mut rt = conf();
    rt.ifname = "a-very-long-interface".into();
    assert!(rt.validate().is_err());
    let mut rt = conf();
    rt.container_id = "../etc".into();
    assert!(rt.validate().is_err());
    assert!(Path::new("/").is_dir());
}

//! `wharf-bridge-cni`: the native bridge network as a CNI plugin, so that other
//! runtimes (containerd, CRI-O, podman) can use it. Speaks CNI 0.4.0, 1.0.0 and 1.1.0.
//!
//! Configuration (besides `cniVersion`, `name`, `type`):
//! `bridge` (default `wharf0`), `subnets` (default `["10.89.0.0/16"]`), `dataDir`
//! (default `/var/lib/wharf/network/<name>`), `mtu`, `ipMasq` (default true),
//! `firewallBackend` (`nftables`/`iptables`, default: whichever is installed), and the
//! `portMappings` capability (`runtimeConfig.portMappings`).

use std::io::Read;
use std::path::PathBuf;

use serde_json::{json, Value};
use wharf_network_cni::cni::version::{convert_result, Version};
use wharf_network_cni::native::{
    AttachmentRecord, BridgeAttach, BridgeConfig, BridgeNetwork, FirewallBackend, HostPort,
};
use wharf_network_cni::NetworkError;

const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

struct CniFailure {
    code: u32,
    msg: String,
    details: String,
}

impl From<NetworkError> for CniFailure {
    fn from(e: NetworkError) -> Self {
        let code = match &e {
            NetworkError::InvalidArgument { .. } | NetworkError::ConfigInvalid { .. } => 7,
            NetworkError::NotAttached { .. } => 3,
            NetworkError::Netns { .. } => 3,
            NetworkError::Firewall { reason, .. } if reason.contains("already published") => 100,
            NetworkError::Ipam { .. } | NetworkError::Cache { .. } => 5,
            _ => 999,
        };
        CniFailure {
            code,
            msg: e.to_string(),
            details: String::new(),
        }
    }
}

fn bad(code: u32, msg: impl Into<String>) -> CniFailure {
    CniFailure {
        code,
        msg: msg.into(),
        details: String::new(),
    }
}

fn env(name: &str) -> Result<String, CniFailure> {
    std::env::var(name).map_err(|_| bad(4, format!("{name} is not set")))
}

fn config(conf: &Value) -> Result<BridgeConfig, CniFailure> {
    let name = conf["name"]
        .as_str()
        .ok_or_else(|| bad(7, "missing \"name\""))?;
    let mut c = BridgeConfig {
        name: name.to_string(),
        state_dir: PathBuf::from(format!("/var/lib/wharf/network/{name}")),
        subnets: vec!["10.89.0.0/16".parse().expect("valid")],
        ..BridgeConfig::default()
    };
    if let Some(b) = conf.get("bridge") {
        c.bridge = b
            .as_str()
            .ok_or_else(|| bad(7, "\"bridge\" must be a string"))?
            .into();
    }
    if let Some(s) = conf.get("subnets") {
        c.subnets = serde_json::from_value(s.clone())
            .map_err(|e| bad(7, format!("\"subnets\" must be a list of CIDRs: {e}")))?;
    }
    if let Some(d) = conf.get("dataDir") {
        c.state_dir = d
            .as_str()
            .ok_or_else(|| bad(7, "\"dataDir\" must be a string"))?
            .into();
    }
    if let Some(m) = conf.get("mtu") {
        c.mtu = Some(
            m.as_u64()
                .ok_or_else(|| bad(7, "\"mtu\" must be a number"))? as u32,
        );
    }
    if let Some(m) = conf.get("ipMasq") {
        c.masquerade = m
            .as_bool()
            .ok_or_else(|| bad(7, "\"ipMasq\" must be a boolean"))?;
    }
    c.firewall = match conf.get("firewallBackend").and_then(Value::as_str) {
        None => FirewallBackend::Auto,
        Some("nftables") => FirewallBackend::Nftables,
        Some("iptables") => FirewallBackend::Iptables,
        Some(other) => {
            return Err(bad(
                7,
                format!("\"firewallBackend\" {other:?} is not nftables or iptables"),
            ))
        }
    };
    Ok(c)
}

fn ports(conf: &Value) -> Result<Vec<HostPort>, CniFailure> {
    let Some(list) = conf
        .pointer("/runtimeConfig/portMappings")
        .and_then(Value::as_array)
    else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|p| {
            let port = |k: &str| {
                p[k].as_u64()
                    .and_then(|v| u16::try_from(v).ok())
                    .ok_or_else(|| bad(7, format!("portMappings: \"{k}\" must be a port number")))
            };
            Ok(HostPort {
                host_port: port("hostPort")?,
                container_port: port("containerPort")?,
                protocol: p["protocol"].as_str().unwrap_or("tcp").to_ascii_lowercase(),
                host_ip: match p.get("hostIP").and_then(Value::as_str) {
                    None | Some("") => None,
                    Some(ip) => Some(
                        ip.parse()
                            .map_err(|_| bad(7, format!("portMappings: hostIP {ip:?}")))?,
                    ),
                },
            })
        })
        .collect()
}

fn result(r: &AttachmentRecord) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": r.host_veth},
            {"name": r.ifname, "mac": r.mac, "sandbox": r.netns},
        ],
        "ips": r.ips.iter().zip(&r.gateways).map(|(ip, gw)| json!({
            "address": ip.to_string(), "gateway": gw.to_string(), "interface": 1
        })).collect::<Vec<_>>(),
        "routes": r.gateways.iter().map(|gw| json!({
            "dst": if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" }
        })).collect::<Vec<_>>(),
    })
}

async fn run(command: &str, conf: &Value) -> Result<Option<Value>, CniFailure> {
    let version = conf["cniVersion"].as_str().unwrap_or("1.1.0");
    let v = Version::parse(version)
        .filter(|v| SUPPORTED.contains(&v.to_string().as_str()))
        .ok_or_else(|| {
            bad(
                1,
                format!("CNI version {version:?} is not supported (supported: {SUPPORTED:?})"),
            )
        })?;
    let net = BridgeNetwork::new(config(conf)?)?;
    match command {
        "ADD" => {
            let req = BridgeAttach {
                container_id: env("CNI_CONTAINERID")?,
                netns: env("CNI_NETNS")?.into(),
                ifname: env("CNI_IFNAME")?,
                ports: ports(conf)?,
            };
            let r = net.attach(&req).await?;
            let out = convert_result(result(&r), Version::V1_1_0, v).map_err(|e| bad(999, e))?;
            Ok(Some(out))
        }
        "DEL" => {
            net.detach(&env("CNI_CONTAINERID")?, &env("CNI_IFNAME")?)
                .await?;
            Ok(None)
        }
        "CHECK" => {
            net.check(&env("CNI_CONTAINERID")?, &env("CNI_IFNAME")?)
                .await?;
            Ok(None)
        }
        "STATUS" => {
            net.ensure_ready().await.map_err(|e| CniFailure {
                code: 50,
                ..e.into()
            })?;
            Ok(None)
        }
        "GC" => {
            let valid: Vec<(String, String)> = conf
                .get("cni.dev/valid-attachments")
                .and_then(Value::as_array)
                .map(|l| {
                    l.iter()
                        .filter_map(|a| {
                            Some((
                                a["containerID"].as_str()?.into(),
                                a["ifname"].as_str()?.into(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            net.gc(&valid).await?;
            Ok(None)
        }
        other => Err(bad(4, format!("unknown CNI_COMMAND {other:?}"))),
    }
}

fn main() {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    if command == "VERSION" {
        println!(
            "{}",
            json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED})
        );
        return;
    }
    let conf: Value = match serde_json::from_str(&stdin) {
        Ok(c) => c,
        Err(e) => {
            println!(
                "{}",
                json!({"cniVersion": "1.1.0", "code": 6, "msg": format!("decoding the configuration: {e}")})
            );
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(&command, &conf)) {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {}
        Err(f) => {
            let version = conf["cniVersion"].as_str().unwrap_or("1.1.0");
            let mut err = json!({"cniVersion": version, "code": f.code, "msg": f.msg});
            if !f.details.is_empty() {
                err["details"] = Value::from(f.details);
            }
            println!("{err}");
            std::process::exit(1);
        }
    }
}

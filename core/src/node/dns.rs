//! A pod's `/etc/resolv.conf`, as kubelet builds it from `dnsPolicy` and `dnsConfig`.
//!
//! - `ClusterFirst` (the default): the cluster's DNS servers, the search path
//!   `<namespace>.svc.<domain> svc.<domain> <domain>` followed by the node's, and
//!   `ndots:5`. Without cluster DNS configured on the node it falls back to `Default`, as
//!   kubelet does. A `hostNetwork` pod gets `Default` unless its policy is
//!   `ClusterFirstWithHostNet`.
//! - `Default`: the node's own resolver configuration (`NodeConfig::resolv_conf`).
//! - `None`: only what `dnsConfig` says.
//!
//! `dnsConfig` is then merged in: its nameservers and searches are appended (without
//! duplicates), its options override options of the same name. At most 3 nameservers and 32
//! search domains are kept.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use crate::backend::runtime::DnsConfig;

/// Nameservers a resolver uses (glibc's MAXNS).
const MAX_NAMESERVERS: usize = 3;
/// Search domains kubelet keeps.
const MAX_SEARCHES: usize = 32;

/// What a node knows of DNS: the cluster's servers and domain, and its own resolver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeDns {
    /// Cluster DNS servers (kubelet's `--cluster-dns`); empty when there is none.
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The node's resolver configuration, for `Default`.
    pub host: DnsConfig,
}

/// Parses the `nameserver`, `search`/`domain` and `options` lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> DnsConfig {
    let mut dns = DnsConfig::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.next().map(str::to_string)),
            // The last of `search` and `domain` wins, as in resolv.conf(5).
            Some("search") | Some("domain") => dns.searches = words.map(str::to_string).collect(),
            Some("options") => dns.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    dns
}

/// The DNS configuration of `pod` on a node with `node`'s settings.
pub fn pod_dns(pod: &Pod, node: &NodeDns) -> DnsConfig {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut dns = match policy {
        "None" => DnsConfig::default(),
        _ if cluster_first && !node.cluster_dns.is_empty() => {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let domain = &node.cluster_domain;
            let mut searches = vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.clone(),
            ];
            searches.extend(node.host.searches.iter().cloned());
            DnsConfig {
                servers: node.cluster_dns.iter().map(IpAddr::to_string).collect(),
                searches,
                options: vec!["ndots:5".to_string()],
            }
        }
        _ => node.host.clone(),
    };
    if let Some(config) = spec.and_then(|s| s.dns_config.as_ref()) {
        for server in config.nameservers.iter().flatten() {
            if !dns.servers.contains(server) {
                dns.servers.push(server.clone());
            }
        }
        for search in config.searches.iter().flatten() {
            if !dns.searches.contains(search) {
                dns.searches.push(search.clone());
            }
        }
        for option in config.options.iter().flatten() {
            let rendered = match &option.value {
                Some(v) => format!("{}:{v}", option.name.as_deref().unwrap_or("")),
                None => option.name.clone().unwrap_or_default(),
            };
            let name = rendered.split(':').next().unwrap_or("").to_string();
            dns.options
                .retain(|o| o.split(':').next().unwrap_or("") != name.as_str());
            dns.options.push(rendered);
        }
    }
    dns.servers.truncate(MAX_NAMESERVERS);
    dns.searches.truncate(MAX_SEARCHES);
    dns
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption, PodSpec};

    fn node(cluster: &[&str]) -> NodeDns {
        NodeDns {
            cluster_dns: cluster.iter().map(|s| s.parse().unwrap()).collect(),
            cluster_domain: "cluster.local".into(),
            host: parse_resolv_conf(
                "# host\nnameserver 192.168.1.1\nnameserver 192.168.1.2 ; second\nsearch corp.example\noptions edns0 ndots:1\n",
            ),
        }
    }

    fn pod(policy: Option<&str>, host_network: bool, config: Option<PodDNSConfig>) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some("shop".into());
        p.spec = Some(PodSpec {
            dns_policy: policy.map(str::to_string),
            host_network: Some(host_network),
            dns_config: config,
            ..Default::default()
        });
        p
    }

    #[test]
    fn resolv_conf_lines() {
        let host = node(&[]).host;
        assert_eq!(host.servers, ["192.168.1.1", "192.168.1.2"]);
        assert_eq!(host.searches, ["corp.example"]);
        assert_eq!(host.options, ["edns0", "ndots:1"]);
    }

    #[test]
    fn cluster_first_uses_cluster_dns_and_search_path() {
        let dns = pod_dns(&pod(None, false, None), &node(&["10.96.0.10"]));
        assert_eq!(dns.servers, ["10.96.0.10"]);
        assert_eq!(
            dns.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        assert_eq!(dns.options, ["ndots:5"]);
    }

    #[test]
    fn fallbacks_to_the_node_resolver() {
        let n = node(&["10.96.0.10"]);
        // No cluster DNS configured, hostNetwork with ClusterFirst, and Default.
        assert_eq!(pod_dns(&pod(None, false, None), &node(&[])), n.host);
        assert_eq!(pod_dns(&pod(Some("ClusterFirst"), true, None), &n), n.host);
        assert_eq!(pod_dns(&pod(Some("Default"), false, None), &n), n.host);
        let with_host_net = pod_dns(&pod(Some("ClusterFirstWithHostNet"), true, None), &n);
        assert_eq!(with_host_net.servers, ["10.96.0.10"]);
    }

    #[test]
    fn dns_config_merges_and_none_uses_only_it() {
        let config = PodDNSConfig {
            nameservers: Some(vec!["1.1.1.1".into(), "10.96.0.10".into()]),
            searches: Some(vec!["extra.example".into()]),
            options: Some(vec![
                PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("2".into()),
                },
                PodDNSConfigOption {
                    name: Some("single-request".into()),
                    value: None,
                },
            ]),
        };
        let merged = pod_dns(
            &pod(None, false, Some(config.clone())),
            &node(&["10.96.0.10"]),
        );
        assert_eq!(merged.servers, ["10.96.0.10", "1.1.1.1"]);
        assert_eq!(
            merged.searches.last().map(String::as_str),
            Some("extra.example")
        );
        assert_eq!(merged.options, ["ndots:2", "single-request"]);
        let only = pod_dns(
            &pod(Some("None"), false, Some(config)),
            &node(&["10.96.0.10"]),
        );
        assert_eq!(only.servers, ["1.1.1.1", "10.96.0.10"]);
        assert_eq!(only.searches, ["extra.example"]);
    }

    #[test]
    fn limits_are_kept() {
        let config = PodDNSConfig {
            nameservers: Some((1..=5).map(|i| format!("10.0.0.{i}")).collect()),
            ..Default::default()
        };
        let dns = pod_dns(&pod(Some("None"), false, Some(config)), &node(&[]));
        assert_eq!(dns.servers.len(), 3);
    }
}

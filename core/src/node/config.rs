//! Container config from a pod spec and an image config: the command line (command/args over
//! entrypoint/cmd), the environment (image env, envFrom, env with fieldRef, resourceFieldRef,
//! configMapKeyRef, secretKeyRef and `$(VAR)` expansion), the security context and the
//! resources. Pure: the ConfigMaps and Secrets the pod refers to are read by the caller.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::downward;
use crate::backend::image::ImageInfo;
use crate::backend::runtime::{
    Capabilities, ContainerConfig, ContainerImage, Mount, Resources, SecurityContext,
};
use crate::quantity;

/// Labels the node agent puts on sandboxes and containers, to find them again.
pub mod labels {
    /// Pod uid.
    pub const POD_UID: &str = "wharf.dev/pod-uid";
    /// Pod name.
    pub const POD_NAME: &str = "wharf.dev/pod-name";
    /// Pod namespace.
    pub const POD_NAMESPACE: &str = "wharf.dev/pod-namespace";
    /// Container name.
    pub const CONTAINER_NAME: &str = "wharf.dev/container-name";
    /// Restart count of the container when it was created.
    pub const RESTART_COUNT: &str = "wharf.dev/restart-count";
}

/// Why a container config could not be made (the container waits with
/// `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A ConfigMap the container needs does not exist.
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    /// A Secret the container needs does not exist.
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    /// A key is missing from a ConfigMap or Secret.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyNotFound {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Object name.
        name: String,
        /// The key.
        key: String,
    },
    /// A fieldRef or resourceFieldRef names an unsupported field.
    #[error("env {var}: unsupported field {field}")]
    UnsupportedField {
        /// The variable.
        var: String,
        /// The field path or resource.
        field: String,
    },
    /// A volumeMount names a volume that was not set up.
    #[error("container {container}: volumeMount {volume} has no such volume")]
    UnknownVolume {
        /// Container name.
        container: String,
        /// Volume name.
        volume: String,
    },
}

/// What the config needs besides the pod, the container and the image.
#[derive(Clone, Debug, Default)]
pub struct ConfigInputs {
    /// ConfigMaps the pod refers to, by name (missing ones are absent).
    pub config_maps: HashMap<String, ConfigMap>,
    /// Secrets the pod refers to, by name.
    pub secrets: HashMap<String, Secret>,
    /// The pod's IPs.
    pub pod_ips: Vec<IpAddr>,
    /// The node's IP.
    pub host_ip: Option<IpAddr>,
    /// Node allocatable cpu (millicores) and memory (bytes), for resourceFieldRef of unset limits.
    pub node_allocatable: (i64, i64),
    /// Host paths of the pod's volumes, by volume name.
    pub volume_paths: BTreeMap<String, std::path::PathBuf>,
    /// Restart count of this container instance.
    pub restart_count: u32,
}

/// The ConfigMap and Secret names a container's env and envFrom refer to.
pub fn referenced_objects(container: &Container) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    for e in container.env.iter().flatten() {
        if let Some(from) = &e.value_from {
            if let Some(r) = &from.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    for f in container.env_from.iter().flatten() {
        if let Some(r) = &f.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &f.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// Expands `$(VAR)` references with `vars`; `$$(VAR)` escapes to `$(VAR)`; unknown
/// references stay as written (Kubernetes' rules).
pub fn expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match vars(name) {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        let ch = input[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn set_var(env: &mut Vec<(String, String)>, name: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => env.push((name.to_string(), value)),
    }
}

fn bytes_to_string(b: &k8s_openapi::ByteString) -> String {
    String::from_utf8_lossy(&b.0).into_owned()
}

fn field_value(
    pod: &Pod,
    inputs: &ConfigInputs,
    var: &str,
    path: &str,
) -> Result<String, ConfigError> {
    let addresses = downward::Addresses {
        pod_ips: &inputs.pod_ips,
        host_ip: inputs.host_ip,
    };
    downward::field_value(pod, path, downward::Use::Env, addresses).map_err(|_| {
        ConfigError::UnsupportedField {
            var: var.to_string(),
            field: path.to_string(),
        }
    })
}

fn resource_value(
    c: &Container,
    inputs: &ConfigInputs,
    var: &str,
    resource: &str,
    divisor: Option<&Quantity>,
) -> Result<String, ConfigError> {
    let allocatable = |name: &str| match name {
        "cpu" => Some(inputs.node_allocatable.0),
        "memory" => Some(inputs.node_allocatable.1),
        // The agent knows no other allocatable: such a limit reads as 0.
        _ => Some(0),
    };
    downward::resource_value(c, resource, divisor, allocatable).map_err(|_| {
        ConfigError::UnsupportedField {
            var: var.to_string(),
            field: resource.to_string(),
        }
    })
}

/// The resolved environment of a container, in order: image env, envFrom, env.
pub fn environment(
    pod: &Pod,
    c: &Container,
    image: &ImageInfo,
    inputs: &ConfigInputs,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = image.config.env.clone();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match inputs.config_maps.get(&r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set_var(&mut env, &format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError::ConfigMapNotFound(r.name.clone())),
            }
        }
        if let Some(r) = &from.secret_ref {
            match inputs.secrets.get(&r.name) {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        set_var(&mut env, &format!("{prefix}{k}"), bytes_to_string(v));
                    }
                    for (k, v) in s.string_data.iter().flatten() {
                        set_var(&mut env, &format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError::SecretNotFound(r.name.clone())),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                Some(field_value(pod, inputs, &e.name, &f.field_path)?)
            } else if let Some(r) = &from.resource_field_ref {
                Some(resource_value(
                    c,
                    inputs,
                    &e.name,
                    &r.resource,
                    r.divisor.as_ref(),
                )?)
            } else if let Some(r) = &from.config_map_key_ref {
                match inputs.config_maps.get(&r.name) {
                    Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => Some(v.clone()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(ConfigError::KeyNotFound {
                                kind: "ConfigMap",
                                namespace: ns,
                                name: r.name.clone(),
                                key: r.key.clone(),
                            })
                        }
                    },
                    None if r.optional == Some(true) => None,
                    None => return Err(ConfigError::ConfigMapNotFound(r.name.clone())),
                }
            } else if let Some(r) = &from.secret_key_ref {
                match inputs.secrets.get(&r.name) {
                    Some(s) => {
                        let v = s
                            .data
                            .as_ref()
                            .and_then(|d| d.get(&r.key))
                            .map(bytes_to_string)
                            .or_else(|| {
                                s.string_data.as_ref().and_then(|d| d.get(&r.key).cloned())
                            });
                        match v {
                            Some(v) => Some(v),
                            None if r.optional == Some(true) => None,
                            None => {
                                return Err(ConfigError::KeyNotFound {
                                    kind: "Secret",
                                    namespace: ns,
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                })
                            }
                        }
                    }
                    None if r.optional == Some(true) => None,
                    None => return Err(ConfigError::SecretNotFound(r.name.clone())),
                }
            } else {
                None
            }
        } else {
            // A literal value may refer to variables defined before it.
            let raw = e.value.clone().unwrap_or_default();
            let snapshot = env.clone();
            Some(expand(&raw, &|name| {
                snapshot
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            }))
        };
        if let Some(v) = value {
            set_var(&mut env, &e.name, v);
        }
    }
    Ok(env)
}

/// The command line: `command` replaces the image entrypoint (and drops its cmd), `args`
/// replaces the image cmd; `$(VAR)` references are expanded from `env`.
pub fn command_line(c: &Container, image: &ImageInfo, env: &[(String, String)]) -> Vec<String> {
    let command = c.command.clone().unwrap_or_default();
    let args = c.args.clone().unwrap_or_default();
    let (head, tail) = match (command.is_empty(), args.is_empty()) {
        (true, true) => (image.config.entrypoint.clone(), image.config.cmd.clone()),
        (true, false) => (image.config.entrypoint.clone(), args),
        (false, _) => (command, args),
    };
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    head.iter()
        .chain(tail.iter())
        .map(|s| expand(s, &lookup))
        .collect()
}

/// A signal name or number (`SIGQUIT`, `QUIT`, `3`) as a number.
pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let n = name.trim_start_matches("SIG");
    Some(match n {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        "STOP" => 19,
        "WINCH" => 28,
        "PWR" => 30,
        _ => return None,
    })
}

fn resources(c: &Container) -> Resources {
    let r = c.resources.as_ref();
    let req = |n: &str| r.and_then(|r| r.requests.as_ref()).and_then(|m| m.get(n));
    let lim = |n: &str| r.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(n));
    let cpu_req = req("cpu")
        .or(lim("cpu"))
        .and_then(|q| quantity::cpu_millis(q).ok());
    let cpu_lim = lim("cpu").and_then(|q| quantity::cpu_millis(q).ok());
    let mem_lim = lim("memory").and_then(|q| quantity::units(q).ok());
    Resources {
        // Kubernetes: shares = millicores * 1024 / 1000, at least 2.
        cpu_shares: Some(cpu_req.map_or(2, |m| ((m * 1024) / 1000).max(2) as u64)),
        cpu_quota: cpu_lim.map(|m| (m * 100_000) / 1000),
        cpu_period: cpu_lim.map(|_| 100_000),
        memory_limit: mem_lim,
        ..Resources::default()
    }
}

fn security(pod: &Pod, c: &Container, image: &ImageInfo) -> SecurityContext {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    SecurityContext {
        run_as_user: sc
            .and_then(|s| s.run_as_user)
            .or(psc.and_then(|p| p.run_as_user)),
        run_as_group: sc
            .and_then(|s| s.run_as_group)
            .or(psc.and_then(|p| p.run_as_group)),
        run_as_username: (!image.config.user.is_empty()).then(|| image.config.user.clone()),
        supplemental_groups: psc
            .and_then(|p| p.supplemental_groups.clone())
            .unwrap_or_default(),
        privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
        readonly_rootfs: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        capabilities: Capabilities {
            add: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
            drop: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
        },
        no_new_privileges: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        seccomp_profile: sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .or(psc.and_then(|p| p.seccomp_profile.as_ref()))
            .and_then(|p| match p.type_.as_str() {
                "Unconfined" => Some("unconfined".to_string()),
                "Localhost" => p.localhost_profile.clone(),
                _ => None,
            }),
    }
}

/// The full container config.
pub fn container_config(
    pod: &Pod,
    c: &Container,
    image: &ImageInfo,
    inputs: &ConfigInputs,
) -> Result<ContainerConfig, ConfigError> {
    let env = environment(pod, c, image, inputs)?;
    let command = command_line(c, image, &env);
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let base = inputs
            .volume_paths
            .get(&m.name)
            .ok_or_else(|| ConfigError::UnknownVolume {
                container: c.name.clone(),
                volume: m.name.clone(),
            })?;
        let host_path = match m.sub_path.as_deref() {
            Some(sub) if !sub.is_empty() => base.join(sub),
            _ => base.clone(),
        };
        mounts.push(Mount {
            container_path: m.mount_path.clone(),
            host_path,
            readonly: m.read_only.unwrap_or(false),
            propagation: match m.mount_propagation.as_deref() {
                Some("HostToContainer") => crate::backend::runtime::Propagation::HostToContainer,
                Some("Bidirectional") => crate::backend::runtime::Propagation::Bidirectional,
                _ => crate::backend::runtime::Propagation::Private,
            },
        });
    }
    let meta = &pod.metadata;
    let mut labels = BTreeMap::new();
    labels.insert(labels::POD_UID.into(), meta.uid.clone().unwrap_or_default());
    labels.insert(
        labels::POD_NAME.into(),
        meta.name.clone().unwrap_or_default(),
    );
    labels.insert(
        labels::POD_NAMESPACE.into(),
        meta.namespace.clone().unwrap_or_default(),
    );
    labels.insert(labels::CONTAINER_NAME.into(), c.name.clone());
    labels.insert(
        labels::RESTART_COUNT.into(),
        inputs.restart_count.to_string(),
    );
    Ok(ContainerConfig {
        name: c.name.clone(),
        attempt: inputs.restart_count,
        image: Some(ContainerImage {
            reference: c.image.clone().unwrap_or_default(),
            id: image.id.clone(),
            rootfs: image.rootfs.clone(),
        }),
        command,
        working_dir: c
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| image.config.working_dir.clone()),
        env,
        mounts,
        devices: Vec::new(),
        labels,
        annotations: BTreeMap::new(),
        log_path: Some(format!("{}/{}.log", c.name, inputs.restart_count).into()),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        resources: resources(c),
        security: security(pod, c, image),
        stop_signal: image.config.stop_signal.as_deref().and_then(signal_number),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::image::ImageConfig;
    use crate::backend::runtime::RootFs;
    use k8s_openapi::api::core::v1::{
        ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector,
        ResourceFieldSelector, ResourceRequirements,
    };

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageInfo {
        ImageInfo {
            id: "sha256:x".into(),
            repo_tags: vec![],
            repo_digests: vec![],
            size: 0,
            config: ImageConfig {
                entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                env: vec![("PATH".into(), "/bin".into())],
                ..Default::default()
            },
            rootfs: RootFs::None,
        }
    }

    fn strs(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn command_and_args_over_entrypoint_and_cmd() {
        let img = image(&["/ep"], &["--default"]);
        let mut c = Container::default();
        assert_eq!(command_line(&c, &img, &[]), ["/ep", "--default"]);
        c.args = strs(&["--x"]);
        assert_eq!(command_line(&c, &img, &[]), ["/ep", "--x"]);
        c.command = strs(&["/bin/sh"]);
        c.args = None;
        assert_eq!(command_line(&c, &img, &[]), ["/bin/sh"]);
        c.args = strs(&["-c", "echo $(GREETING) $$(GREETING) $(MISSING)"]);
        let env = vec![("GREETING".to_string(), "hi".to_string())];
        assert_eq!(
            command_line(&c, &img, &env),
            ["/bin/sh", "-c", "echo hi $(GREETING) $(MISSING)"]
        );
    }

    #[test]
    fn env_sources_and_expansion() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("prod".into());
        pod.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let mut c = Container {
            name: "app".into(),
            ..Default::default()
        };
        c.resources = Some(ResourceRequirements {
            limits: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
            requests: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
            ..Default::default()
        });
        c.env_from = Some(vec![EnvFromSource {
            config_map_ref: Some(k8s_openapi::api::core::v1::ConfigMapEnvSource {
                name: "settings".into(),
                optional: None,
            }),
            prefix: Some("CFG_".into()),
            ..Default::default()
        }]);
        let var = |name: &str, source: EnvVarSource| EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(source),
        };
        c.env = Some(vec![
            var(
                "POD",
                EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".into(),
                        api_version: None,
                    }),
                    ..Default::default()
                },
            ),
            var(
                "APP",
                EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels['app']".into(),
                        api_version: None,
                    }),
                    ..Default::default()
                },
            ),
            var(
                "MEM_MI",
                EnvVarSource {
                    resource_field_ref: Some(ResourceFieldSelector {
                        resource: "limits.memory".into(),
                        divisor: Some(Quantity("1Mi".into())),
                        container_name: None,
                    }),
                    ..Default::default()
                },
            ),
            var(
                "CPU",
                EnvVarSource {
                    resource_field_ref: Some(ResourceFieldSelector {
                        resource: "requests.cpu".into(),
                        divisor: None,
                        container_name: None,
                    }),
                    ..Default::default()
                },
            ),
            var(
                "MODE",
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "settings".into(),
                        key: "mode".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            ),
            EnvVar {
                name: "GREETING".into(),
                value: Some("$(POD) in $(MODE)".into()),
                value_from: None,
            },
        ]);
        let mut inputs = ConfigInputs::default();
        assert_eq!(
            environment(&pod, &c, &image(&[], &[]), &inputs).unwrap_err(),
            ConfigError::ConfigMapNotFound("settings".into())
        );
        let cm = ConfigMap {
            data: Some([("mode".to_string(), "fast".to_string())].into()),
            ..Default::default()
        };
        inputs.config_maps.insert("settings".into(), cm);
        let env = environment(&pod, &c, &image(&[], &[]), &inputs).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/bin"));
        assert_eq!(get("CFG_mode"), Some("fast"));
        assert_eq!(get("POD"), Some("web"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("MEM_MI"), Some("64"));
        assert_eq!(get("CPU"), Some("1"));
        assert_eq!(get("GREETING"), Some("web in fast"));
    }

    #[test]
    fn resources_and_signals() {
        let c = Container {
            resources: Some(ResourceRequirements {
                limits: Some(
                    [
                        ("cpu".to_string(), Quantity("500m".into())),
                        ("memory".to_string(), Quantity("128Mi".into())),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = resources(&c);
        assert_eq!(r.cpu_shares, Some(512));
        assert_eq!(r.cpu_quota, Some(50_000));
        assert_eq!(r.memory_limit, Some(128 << 20));
        assert_eq!(signal_number("SIGQUIT"), Some(3));
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("9"), Some(9));
    }
}

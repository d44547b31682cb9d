//! The plugin chain: ADD in order with `prevResult`, DEL in reverse with the cached
//! result, CHECK, STATUS and GC, each plugin spoken to at a version it supports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use super::cache::{CachedAttachment, ResultCache, DEFAULT_CACHE_DIR};
use super::config::NetworkConfigList;
use super::invoke::{find_plugin, AttachmentEnv, CniCommand, Invocation};
use super::types::CniResult;
use super::version::{convert_result, negotiate, Version, CURRENT_VERSION};
use crate::error::{NetworkError, Result};

/// Where plugins are looked for by default: the spec's directory, then Debian's.
pub const DEFAULT_PLUGIN_PATH: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];

/// What the runtime tells the plugins about one attachment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    /// The sandbox (pod infra container) id: `CNI_CONTAINERID`.
    pub container_id: String,
    /// Path of the sandbox's network namespace: `CNI_NETNS`.
    pub netns: PathBuf,
    /// Interface name inside the sandbox: `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` pairs, in order.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `bandwidth`, `ipRanges`, `dns`, `ips`,
    /// `mac`, ...); each plugin gets those it declares in `capabilities`.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    /// The arguments kubelet's CRI runtimes pass for a pod: `IgnoreUnknown=1`,
    /// `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_INFRA_CONTAINER_ID`.
    pub fn for_pod(
        container_id: &str,
        netns: impl Into<PathBuf>,
        ifname: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        RuntimeConf {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), namespace.into()),
                ("K8S_POD_NAME".into(), name.into()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id.into()),
            ],
            capability_args: Map::new(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| {
            Err(NetworkError::InvalidArgument {
                field,
                reason: reason.to_string(),
            })
        };
        if self.container_id.is_empty()
            || !self
                .container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return bad(
                "container id",
                &format!(
                    "{:?} must be non-empty letters, digits, '_', '.', '-'",
                    self.container_id
                ),
            );
        }
        if self.ifname.is_empty()
            || self.ifname.len() > 15
            || self.ifname == "."
            || self.ifname == ".."
            || self.ifname.contains(['/', ':'])
            || self.ifname.chars().any(char::is_whitespace)
        {
            return bad(
                "interface name",
                &format!("{:?} is not a Linux interface name", self.ifname),
            );
        }
        for (k, v) in &self.args {
            if k.contains([';', '=']) || v.contains(';') {
                return bad("CNI_ARGS", &format!("{k}={v} contains ';' or '='"));
            }
        }
        Ok(())
    }

    fn env(&self) -> AttachmentEnv {
        AttachmentEnv {
            container_id: self.container_id.clone(),
            netns: self.netns.to_string_lossy().into_owned(),
            ifname: self.ifname.clone(),
            args: self
                .args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
        }
    }
}

/// A plugin binary's VERSION answer and the binary's mtime when it was asked.
type KnownVersions = (Option<SystemTime>, Vec<String>);

/// Runs CNI plugin chains.
#[derive(Debug)]
pub struct CniRuntime {
    plugin_path: Vec<PathBuf>,
    cache: ResultCache,
    timeout: Duration,
    /// VERSION answers by binary, invalidated when the binary changes.
    versions: Mutex<HashMap<PathBuf, KnownVersions>>,
}

impl Default for CniRuntime {
    fn default() -> Self {
        CniRuntime::new(
            DEFAULT_PLUGIN_PATH.iter().map(PathBuf::from).collect(),
            DEFAULT_CACHE_DIR,
        )
    }
}

impl CniRuntime {
    /// A runtime looking for plugins on `plugin_path` and caching results under
    /// `cache_dir`, with a 60 s per-plugin timeout.
    pub fn new(plugin_path: Vec<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        CniRuntime {
            plugin_path,
            cache: ResultCache::new(cache_dir),
            timeout: Duration::from_secs(60),
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// Sets how long one plugin run may take before it is killed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The result cache.
    pub fn cache(&self) -> &ResultCache {
        &self.cache
    }

    /// The plugin search path.
    pub fn plugin_path(&self) -> &[PathBuf] {
        &self.plugin_path
    }

    /// Attaches: ADD through the chain, caches and returns the final result. On failure
    /// the chain is DEL'd (best effort) so nothing stays half-attached.
    pub async fn add(&self, net: &NetworkConfigList, rt: &RuntimeConf) -> Result<CniResult> {
        rt.validate()?;
        let env = rt.env();
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            match self
                .run_plugin(net, plugin, CniCommand::Add, Some(&env), rt, prev.as_ref())
                .await
            {
                Ok(result) => prev = result,
                Err(err) => {
                    self.undo_add(net, rt, prev.as_ref()).await;
                    return Err(err);
                }
            }
        }
        let result = prev.ok_or_else(|| NetworkError::PluginOutput {
            plugin: net.plugin_types().last().unwrap_or_default().to_string(),
            command: "ADD",
            reason: "the chain produced no result".into(),
        })?;
        let mut entry = CachedAttachment::new(&net.name, &rt.container_id, &rt.ifname, &net.bytes);
        entry.netns = rt.netns.to_string_lossy().into_owned();
        entry.cni_args = rt
            .args
            .iter()
            .map(|(k, v)| [k.clone(), v.clone()])
            .collect();
        entry.capability_args = rt.capability_args.clone();
        entry.result = Some(result.clone());
        if let Err(err) = self.cache.write(&entry) {
            self.undo_add(net, rt, Some(&result)).await;
            return Err(err);
        }
        typed(&result, net)
    }

    /// Detaches: DEL through the chain in reverse with the cached result, then drops
    /// the cache entry. Idempotent: a second DEL runs the plugins again, which succeed
    /// on what is already gone. The entry is kept if a plugin fails, so DEL can retry.
    pub async fn del(&self, net: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
        rt.validate()?;
        let cached = self.cache.read(&net.name, &rt.container_id, &rt.ifname)?;
        let prev = cached.and_then(|c| c.result);
        self.del_chain(net, rt, prev.as_ref()).await?;
        self.cache.remove(&net.name, &rt.container_id, &rt.ifname)
    }

    /// DEL of the whole chain after a failed ADD: every plugin runs even if one fails,
    /// since the caller gets the ADD error and nothing may stay half-attached.
    async fn undo_add(&self, net: &NetworkConfigList, rt: &RuntimeConf, prev: Option<&Value>) {
        let env = rt.env();
        for plugin in net.plugins.iter().rev() {
            if let Err(e) = self
                .run_plugin(net, plugin, CniCommand::Del, Some(&env), rt, prev)
                .await
            {
                tracing::warn!(network = %net.name, container = %rt.container_id, error = %e, "DEL after failed ADD");
            }
        }
    }

    async fn del_chain(
        &self,
        net: &NetworkConfigList,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<()> {
        let env = rt.env();
        for plugin in net.plugins.iter().rev() {
            self.run_plugin(net, plugin, CniCommand::Del, Some(&env), rt, prev)
                .await?;
        }
        Ok(())
    }

    /// Verifies an attachment: CHECK through the chain with the cached result. Needs
    /// spec 0.4.0; does nothing when the list sets `disableCheck`.
    pub async fn check(&self, net: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
        rt.validate()?;
        if net.cni_version < Version::V0_4_0 {
            return Err(NetworkError::UnsupportedOperation {
                network: net.name.clone(),
                command: "CHECK",
                needs: "0.4.0",
                version: net.cni_version.to_string(),
            });
        }
        if net.disable_check {
            return Ok(());
        }
        let cached = self
            .cache
            .read(&net.name, &rt.container_id, &rt.ifname)?
            .and_then(|c| c.result)
            .ok_or_else(|| NetworkError::NotAttached {
                network: net.name.clone(),
                container_id: rt.container_id.clone(),
                ifname: rt.ifname.clone(),
            })?;
        let env = rt.env();
        for plugin in &net.plugins {
            self.run_plugin(
                net,
                plugin,
                CniCommand::Check,
                Some(&env),
                rt,
                Some(&cached),
            )
            .await?;
        }
        Ok(())
    }

    /// Asks every plugin that speaks 1.1 whether it is ready for ADDs. Lists below 1.1
    /// are ready by definition (libcni's rule).
    pub async fn status(&self, net: &NetworkConfigList) -> Result<()> {
        if net.cni_version < Version::V1_1_0 {
            return Ok(());
        }
        for plugin in &net.plugins {
            self.run_plugin(
                net,
                plugin,
                CniCommand::Status,
                None,
                &RuntimeConf::default(),
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Garbage-collects the network: every cached attachment not in `valid`
    /// (`(container id, ifname)` pairs) is DEL'd with the configuration it was made
    /// with; then, for 1.1 lists, each plugin gets GC with `cni.dev/valid-attachments`.
    /// Every step runs even if one fails; the first error is returned.
    pub async fn gc(&self, net: &NetworkConfigList, valid: &[(String, String)]) -> Result<()> {
        let mut first_error = None;
        for entry in self.cache.list(&net.name)? {
            if valid
                .iter()
                .any(|(id, ifname)| *id == entry.container_id && *ifname == entry.if_name)
            {
                continue;
            }
            let stale_net = NetworkConfigList::from_conflist(&entry.config, "<cache>")
                .or_else(|_| NetworkConfigList::from_conf(&entry.config, "<cache>"))
                .unwrap_or_else(|_| net.clone());
            let rt = RuntimeConf {
                container_id: entry.container_id.clone(),
                netns: PathBuf::from(&entry.netns),
                ifname: entry.if_name.clone(),
                args: entry
                    .cni_args
                    .iter()
                    .map(|[k, v]| (k.clone(), v.clone()))
                    .collect(),
                capability_args: entry.capability_args.clone(),
            };
            tracing::info!(network = %net.name, container = %rt.container_id, "GC: deleting stale attachment");
            if let Err(e) = self.del(&stale_net, &rt).await {
                first_error.get_or_insert(e);
            }
        }
        if net.cni_version >= Version::V1_1_0 && !net.disable_gc {
            let attachments: Vec<Value> = valid
                .iter()
                .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
                .collect();
            let rt = RuntimeConf {
                capability_args: Map::new(),
                ..RuntimeConf::default()
            };
            for plugin in &net.plugins {
                let mut plugin = plugin.clone();
                plugin.insert(
                    "cni.dev/valid-attachments".into(),
                    Value::Array(attachments.clone()),
                );
                if let Err(e) = self
                    .run_plugin(net, &plugin, CniCommand::Gc, None, &rt, None)
                    .await
                {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The versions plugin `plugin_type` supports (its VERSION answer).
    pub async fn plugin_versions(&self, plugin_type: &str) -> Result<Vec<String>> {
        let binary = find_plugin(plugin_type, &self.plugin_path)?;
        self.versions_of(&binary, plugin_type, "<version>").await
    }

    async fn versions_of(
        &self,
        binary: &Path,
        plugin_type: &str,
        network: &str,
    ) -> Result<Vec<String>> {
        let mtime = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
        if let Some((when, versions)) = self.versions.lock().expect("poisoned").get(binary) {
            if *when == mtime {
                return Ok(versions.clone());
            }
        }
        let out = Invocation {
            binary,
            plugin_type,
            network,
            command: CniCommand::Version,
            attachment: None,
            cni_path: &self.plugin_path,
            timeout: self.timeout,
        }
        .run(
            json!({"cniVersion": CURRENT_VERSION})
                .to_string()
                .as_bytes(),
        )
        .await?;
        let answer: Value =
            serde_json::from_slice(&out).map_err(|e| NetworkError::PluginOutput {
                plugin: plugin_type.to_string(),
                command: "VERSION",
                reason: format!("not JSON: {e}"),
            })?;
        let versions: Vec<String> = answer
            .get("supportedVersions")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .ok_or_else(|| NetworkError::PluginOutput {
                plugin: plugin_type.to_string(),
                command: "VERSION",
                reason: "no \"supportedVersions\" list".into(),
            })?;
        self.versions
            .lock()
            .expect("poisoned")
            .insert(binary.to_owned(), (mtime, versions.clone()));
        Ok(versions)
    }

    /// Runs one plugin of the chain and returns its result converted to the list's
    /// version (ADD), or `None` (other commands). Commands the negotiated version does
    /// not have (CHECK below 0.4.0, STATUS/GC below 1.1.0) are skipped.
    async fn run_plugin(
        &self,
        net: &NetworkConfigList,
        plugin: &Map<String, Value>,
        command: CniCommand,
        env: Option<&AttachmentEnv>,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<Option<Value>> {
        let plugin_type = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let binary = find_plugin(plugin_type, &self.plugin_path)?;
        let supported = self.versions_of(&binary, plugin_type, &net.name).await?;
        let version = negotiate(net.cni_version, &supported).ok_or_else(|| {
            NetworkError::IncompatibleVersion {
                plugin: plugin_type.to_string(),
                wanted: net.cni_version.to_string(),
                supported: supported.clone(),
            }
        })?;
        let needs = match command {
            CniCommand::Check => Version::V0_4_0,
            CniCommand::Status | CniCommand::Gc => Version::V1_1_0,
            _ => Version::new(0, 3, 0),
        };
        if version < needs {
            tracing::debug!(plugin = plugin_type, %version, command = command.as_str(), "skipped: not in the plugin's version");
            return Ok(None);
        }
        let mut conf = plugin.clone();
        conf.insert("name".into(), Value::from(net.name.clone()));
        conf.insert("cniVersion".into(), Value::from(version.to_string()));
        let runtime_config = runtime_config(plugin, &rt.capability_args);
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        conf.remove("capabilities");
        // DEL carries prevResult from 0.4.0 on; ADD and CHECK always when there is one.
        let wants_prev = command != CniCommand::Del || version >= Version::V0_4_0;
        if let (Some(prev), true) = (prev, wants_prev) {
            let converted =
                convert_result(prev.clone(), net.cni_version, version).map_err(|reason| {
                    NetworkError::PluginOutput {
                        plugin: plugin_type.to_string(),
                        command: command.as_str(),
                        reason: format!("prevResult: {reason}"),
                    }
                })?;
            conf.insert("prevResult".into(), converted);
        }
        let stdin = serde_json::to_vec(&conf).expect("JSON map serializes");
        tracing::debug!(plugin = plugin_type, command = command.as_str(), network = %net.name, container = %rt.container_id, "running CNI plugin");
        let out = Invocation {
            binary: &binary,
            plugin_type,
            network: &net.name,
            command,
            attachment: env,
            cni_path: &self.plugin_path,
            timeout: self.timeout,
        }
        .run(&stdin)
        .await?;
        if command != CniCommand::Add {
            return Ok(None);
        }
        let garbage = |reason: String| NetworkError::PluginOutput {
            plugin: plugin_type.to_string(),
            command: "ADD",
            reason,
        };
        let result: Value = serde_json::from_slice(&out).map_err(|e| {
            garbage(format!(
                "not JSON ({e}): {:?}",
                String::from_utf8_lossy(&out[..out.len().min(200)])
            ))
        })?;
        if !result.is_object() {
            return Err(garbage("not a JSON object".into()));
        }
        let answered = match result.get("cniVersion").and_then(Value::as_str) {
            Some(v) => Version::parse(v).ok_or_else(|| garbage(format!("cniVersion {v:?}")))?,
            None => version,
        };
        let converted = convert_result(result, answered, net.cni_version).map_err(garbage)?;
        typed(&converted, net).map_err(|e| garbage(e.to_string()))?;
        Ok(Some(converted))
    }
}

/// `runtimeConfig` for one plugin: the capability args it declared it wants.
fn runtime_config(plugin: &Map<String, Value>, args: &Map<String, Value>) -> Map<String, Value> {
    let Some(Value::Object(caps)) = plugin.get("capabilities") else {
        return Map::new();
    };
    caps.iter()
        .filter(|(_, on)| on.as_bool() == Some(true))
        .filter_map(|(cap, _)| args.get(cap).map(|v| (cap.clone(), v.clone())))
        .collect()
}

fn typed(result: &Value, net: &NetworkConfigList) -> Result<CniResult> {
    serde_json::from_value(result.clone()).map_err(|e| NetworkError::PluginOutput {
        plugin: net.plugin_types().last().unwrap_or_default().to_string(),
        command: "ADD",
        reason: format!("result does not match the CNI result schema: {e}"),
    })
}

//! Network configuration lists: parsing `.conflist` and single-plugin `.conf`/`.json`
//! files, and finding them in configuration directories the way CRI runtimes do.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::version::{Version, SUPPORTED_VERSIONS};
use crate::error::{NetworkError, Result};

/// The default configuration directory.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// A network configuration list: a named chain of plugin configurations.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// The network name (unique on the host).
    pub name: String,
    /// The spec version the chain is run at.
    pub cni_version: Version,
    /// Skip CHECK for this network.
    pub disable_check: bool,
    /// Skip plugin GC for this network (1.1).
    pub disable_gc: bool,
    /// Plugin configurations in chain order, each with at least a `type`.
    pub plugins: Vec<Map<String, Value>>,
    /// The file it came from, or `<inline>`.
    pub source: PathBuf,
    /// The configuration's bytes as read (kept in the result cache, as libcni does).
    pub bytes: Vec<u8>,
}

impl NetworkConfigList {
    /// Parses a `.conflist` document.
    pub fn from_conflist(bytes: &[u8], source: impl Into<PathBuf>) -> Result<Self> {
        let source = source.into();
        let invalid = |reason: String| NetworkError::ConfigInvalid {
            path: source.clone(),
            reason,
        };
        let doc: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("not a JSON object: {e}")))?;
        let name = required_name(&doc).map_err(invalid)?;
        let cni_version = pick_version(&doc).map_err(invalid)?;
        let plugins = match doc.get("plugins") {
            Some(Value::Array(list)) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, p)| plugin_object(p).map_err(|r| invalid(format!("plugins[{i}]: {r}"))))
                .collect::<Result<Vec<_>>>()?,
            Some(Value::Array(_)) => return Err(invalid("\"plugins\" is empty".into())),
            Some(_) => return Err(invalid("\"plugins\" must be an array".into())),
            None => return Err(invalid("missing \"plugins\"".into())),
        };
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check: flag(&doc, "disableCheck").map_err(invalid)?,
            disable_gc: flag(&doc, "disableGC").map_err(invalid)?,
            plugins,
            source,
            bytes: bytes.to_vec(),
        })
    }

    /// Parses a single-plugin `.conf`/`.json` document into a one-plugin list.
    pub fn from_conf(bytes: &[u8], source: impl Into<PathBuf>) -> Result<Self> {
        let source = source.into();
        let invalid = |reason: String| NetworkError::ConfigInvalid {
            path: source.clone(),
            reason,
        };
        let doc: Value = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("not a JSON object: {e}")))?;
        let plugin = plugin_object(&doc).map_err(invalid)?;
        let name = required_name(&plugin).map_err(invalid)?;
        let cni_version = pick_version(&plugin).map_err(invalid)?;
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check: false,
            disable_gc: false,
            plugins: vec![plugin],
            source,
            bytes: bytes.to_vec(),
        })
    }

    /// Reads one file, by extension: `.conflist`, or `.conf`/`.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| NetworkError::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("conflist") => Self::from_conflist(&bytes, path),
            _ => Self::from_conf(&bytes, path),
        }
    }

    /// The `type` of each plugin, in chain order.
    pub fn plugin_types(&self) -> impl Iterator<Item = &str> {
        self.plugins
            .iter()
            .map(|p| p.get("type").and_then(Value::as_str).unwrap_or_default())
    }
}

/// Configuration files in `dir`: `.conflist` files first, then `.conf` and `.json`,
/// each group sorted by name. A missing directory has no files.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetworkError::ConfigRead {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut files: Vec<(u8, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| NetworkError::ConfigRead {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let rank = match path.extension().and_then(|e| e.to_str()) {
            Some("conflist") => 0,
            Some("conf" | "json") => 1,
            _ => continue,
        };
        if path.is_file() {
            files.push((rank, path));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// Every configuration in `dirs`, in priority order. A file that does not parse is an
/// error naming it: a broken file must not silently hand pods to the next network.
pub fn load_all(dirs: &[PathBuf]) -> Result<Vec<NetworkConfigList>> {
    let mut lists = Vec::new();
    for dir in dirs {
        for file in config_files(dir)? {
            lists.push(NetworkConfigList::from_file(&file)?);
        }
    }
    Ok(lists)
}

/// The default network: the first configuration in `dirs`.
pub fn load_default(dirs: &[PathBuf]) -> Result<NetworkConfigList> {
    load_all(dirs)?
        .into_iter()
        .next()
        .ok_or_else(|| NetworkError::NoConfig {
            dirs: dirs.to_vec(),
        })
}

/// The configuration named `name` in `dirs`.
pub fn load_named(dirs: &[PathBuf], name: &str) -> Result<NetworkConfigList> {
    load_all(dirs)?
        .into_iter()
        .find(|l| l.name == name)
        .ok_or_else(|| NetworkError::NetworkNotFound {
            name: name.to_string(),
            dirs: dirs.to_vec(),
        })
}

fn required_name(doc: &Map<String, Value>) -> Result<String, String> {
    let name = match doc.get("name") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("\"name\" must be a string".into()),
        None => return Err("missing \"name\"".into()),
    };
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Err(format!(
            "\"name\" {name:?} must start with a letter or digit and hold only letters, digits, '_', '.', '-'"
        ));
    }
    Ok(name.clone())
}

/// `cniVersions` (1.1: the newest one this runtime supports wins) else `cniVersion`.
fn pick_version(doc: &Map<String, Value>) -> Result<Version, String> {
    if let Some(list) = doc.get("cniVersions") {
        let list = list
            .as_array()
            .ok_or_else(|| "\"cniVersions\" must be an array of strings".to_string())?;
        let best = list
            .iter()
            .filter_map(Value::as_str)
            .filter_map(Version::parse)
            .filter(|v| v.is_supported())
            .max();
        if let Some(v) = best {
            return Ok(v);
        }
        if !doc.contains_key("cniVersion") {
            return Err(format!(
                "none of \"cniVersions\" {list:?} is supported (supported: {SUPPORTED_VERSIONS:?})"
            ));
        }
    }
    let raw = match doc.get("cniVersion") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("\"cniVersion\" must be a string".into()),
        None => return Err("missing \"cniVersion\"".into()),
    };
    let v =
        Version::parse(raw).ok_or_else(|| format!("\"cniVersion\" {raw:?} is not a version"))?;
    if !v.is_supported() {
        return Err(format!(
            "\"cniVersion\" {raw} is not supported (supported: {SUPPORTED_VERSIONS:?})"
        ));
    }
    Ok(v)
}

fn plugin_object(v: &Value) -> Result<Map<String, Value>, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "plugin configuration must be a JSON object".to_string())?;
    match obj.get("type") {
        Some(Value::String(t)) if !t.is_empty() && !t.contains('/') && t != "." && t != ".." => {}
        Some(Value::String(t)) => return Err(format!("\"type\" {t:?} is not a plugin name")),
        Some(_) => return Err("\"type\" must be a string".into()),
        None => return Err("missing \"type\"".into()),
    }
    Ok(obj.clone())
}

fn flag(doc: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        // libcni accepts the string forms too.
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("\"{key}\" must be true or false, got {s:?}")),
        Some(other) => Err(format!("\"{key}\" must be true or false, got {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"pods","disableCheck":"true",
        "plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn parses_conflist() {
        let l = NetworkConfigList::from_conflist(LIST.as_bytes(), "/x/10-pods.conflist").unwrap();
        assert_eq!(l.name, "pods");
        assert_eq!(l.cni_version, Version::V1_0_0);
        assert!(l.disable_check);
        assert_eq!(l.plugin_types().collect::<Vec<_>>(), ["bridge", "portmap"]);
    }

    #[test]
    fn prefers_newest_supported_of_cni_versions() {
        let doc = r#"{"cniVersion":"0.4.0","cniVersions":["1.0.0","1.1.0","9.0.0"],"name":"n","plugins":[{"type":"x"}]}"#;
        let l = NetworkConfigList::from_conflist(doc.as_bytes(), "<inline>").unwrap();
        assert_eq!(l.cni_version, Version::V1_1_0);
    }

    #[test]
    fn errors_name_file_and_field() {
        let cases = [
            ("{", "not a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "missing \"name\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"-bad","plugins":[{"type":"x"}]}"#,
                "\"name\"",
            ),
            (
                r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"x"}]}"#,
                "not supported",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, "empty"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                "plugins[0]",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}"#,
                "missing \"type\"",
            ),
        ];
        for (doc, want) in cases {
            let err =
                NetworkConfigList::from_conflist(doc.as_bytes(), "/etc/cni/net.d/bad.conflist")
                    .unwrap_err()
                    .to_string();
            assert!(err.contains("/etc/cni/net.d/bad.conflist"), "{err}");
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn directory_order_conflist_first_then_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let conf = r#"{"cniVersion":"0.4.0","name":"single","type":"bridge"}"#;
        std::fs::write(dir.path().join("00-a.conf"), conf).unwrap();
        std::fs::write(dir.path().join("20-b.conflist"), LIST.replace("pods", "b")).unwrap();
        std::fs::write(dir.path().join("10-a.conflist"), LIST.replace("pods", "a")).unwrap();
        std::fs::write(dir.path().join("README"), "ignored").unwrap();
        let dirs = vec![dir.path().to_owned()];
        let names: Vec<_> = load_all(&dirs)
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["a", "b", "single"]);
        assert_eq!(load_default(&dirs).unwrap().name, "a");
        assert_eq!(load_named(&dirs, "single").unwrap().plugins.len(), 1);
        assert!(matches!(
            load_named(&dirs, "zzz"),
            Err(NetworkError::NetworkNotFound { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_default(&[empty.path().to_owned()]),
            Err(NetworkError::NoConfig { .. })
        ));
    }
}

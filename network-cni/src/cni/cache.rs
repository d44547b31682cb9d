//! The result cache: each attachment's final ADD result and the configuration it was
//! made with, in libcni's layout (`<root>/results/<network>-<container>-<ifname>`,
//! kind `cniCacheV1`), so DEL, CHECK and GC work after a restart and other tools that
//! read libcni's cache understand ours.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{NetworkError, Result};

/// The default cache root, libcni's.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";

const KIND: &str = "cniCacheV1";

/// One cached attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedAttachment {
    /// Always `cniCacheV1`.
    pub kind: String,
    /// The container (sandbox) id.
    pub container_id: String,
    /// The configuration list bytes, base64 as Go encodes `[]byte`.
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    /// Interface name in the sandbox.
    pub if_name: String,
    /// Network name.
    pub network_name: String,
    /// The netns path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    /// CNI_ARGS as pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<[String; 2]>,
    /// Capability args given at ADD.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub capability_args: Map<String, Value>,
    /// The final result, in the configuration's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl CachedAttachment {
    /// A new entry of the current kind.
    pub fn new(network: &str, container_id: &str, ifname: &str, config: &[u8]) -> Self {
        CachedAttachment {
            kind: KIND.into(),
            container_id: container_id.into(),
            config: config.to_vec(),
            if_name: ifname.into(),
            network_name: network.into(),
            netns: String::new(),
            cni_args: Vec::new(),
            capability_args: Map::new(),
            result: None,
        }
    }
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// The cache under one root directory.
#[derive(Debug, Clone)]
pub struct ResultCache {
    root: PathBuf,
}

impl ResultCache {
    /// A cache rooted at `root` (libcni: `/var/lib/cni`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ResultCache { root: root.into() }
    }

    fn results_dir(&self) -> PathBuf {
        self.root.join("results")
    }

    /// The file for one attachment.
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.results_dir()
            .join(format!("{network}-{container_id}-{ifname}"))
    }

    /// Writes an entry atomically (temp file, fsync, rename).
    pub fn write(&self, entry: &CachedAttachment) -> Result<()> {
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        let fail = |reason: String| NetworkError::Cache {
            path: path.clone(),
            reason,
        };
        let dir = self.results_dir();
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("creating directory: {e}")))?;
        let bytes = serde_json::to_vec(entry).map_err(|e| fail(e.to_string()))?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(format!("writing: {e}"))
        })
    }

    /// Reads one entry; `None` when there is none.
    pub fn read(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CachedAttachment>> {
        let path = self.path(network, container_id, ifname);
        read_entry(&path)
    }

    /// Removes one entry; missing is fine.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(network, container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetworkError::Cache {
                path,
                reason: format!("removing: {e}"),
            }),
        }
    }

    /// Every entry of `network`. Files of other kinds or that do not parse are skipped
    /// (with a warning): one corrupt file must not stop GC of the others.
    pub fn list(&self, network: &str) -> Result<Vec<CachedAttachment>> {
        let dir = self.results_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(NetworkError::Cache {
                    path: dir,
                    reason: format!("listing: {e}"),
                })
            }
        };
        let prefix = format!("{network}-");
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with(&prefix) {
                continue;
            }
            match read_entry(&entry.path()) {
                Ok(Some(e)) if e.network_name == network => out.push(e),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "skipping unreadable CNI cache entry"),
            }
        }
        out.sort_by(|a, b| (&a.container_id, &a.if_name).cmp(&(&b.container_id, &b.if_name)));
        Ok(out)
    }
}

fn read_entry(path: &Path) -> Result<Option<CachedAttachment>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(NetworkError::Cache {
                path: path.to_owned(),
                reason: format!("reading: {e}"),
            })
        }
    };
    let entry: CachedAttachment =
        serde_json::from_slice(&bytes).map_err(|e| NetworkError::Cache {
            path: path.to_owned(),
            reason: format!("not a cache entry: {e}"),
        })?;
    if entry.kind != KIND {
        return Err(NetworkError::Cache {
            path: path.to_owned(),
            reason: format!("unknown kind {:?}", entry.kind),
        });
    }
    Ok(Some(entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_libcni_layout() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        let mut e = CachedAttachment::new("pods", "abc", "eth0", b"{\"x\":1}");
        e.result = Some(serde_json::json!({"cniVersion": "1.0.0"}));
        cache.write(&e).unwrap();
        let file = dir.path().join("results/pods-abc-eth0");
        let raw: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(raw["kind"], "cniCacheV1");
        assert_eq!(raw["config"], "eyJ4IjoxfQ==");
        assert_eq!(raw["ifName"], "eth0");
        assert_eq!(cache.read("pods", "abc", "eth0").unwrap(), Some(e.clone()));
        // "pods-x" is another network whose files share the prefix.
        cache
            .write(&CachedAttachment::new("pods-x", "y", "eth0", b"{}"))
            .unwrap();
        assert_eq!(cache.list("pods").unwrap(), vec![e]);
        cache.remove("pods", "abc", "eth0").unwrap();
        cache.remove("pods", "abc", "eth0").unwrap();
        assert_eq!(cache.read("pods", "abc", "eth0").unwrap(), None);
    }
}

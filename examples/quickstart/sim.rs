//! In-tree volumes for the simulated node without root: a configMap volume is its keys
//! written as files into the pod's volume directory (no mounts), an emptyDir is the directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Volume};
use wharf::core::node::InTreeVolumes;
use wharf::core::store::{Api, Store};

/// Files instead of mounts; reads ConfigMaps from the cluster's store.
pub struct FileVolumes {
    store: Arc<dyn Store>,
}

impl FileVolumes {
    /// A handler reading ConfigMaps from `store`.
    pub fn new(store: Arc<dyn Store>) -> FileVolumes {
        FileVolumes { store }
    }
}

#[async_trait]
impl InTreeVolumes for FileVolumes {
    async fn setup(&self, pod: &Pod, volume: &Volume, dir: &Path) -> Result<PathBuf, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(source) = &volume.config_map {
            let store = &self.store;
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let api: Api<ConfigMap> = Api::namespaced(store.clone(), ns);
            let cm = api
                .get_opt(&source.name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("configmap {:?} not found", source.name))?;
            for (key, value) in cm.data.iter().flatten() {
                std::fs::write(dir.join(key), value).map_err(|e| format!("{key}: {e}"))?;
            }
        } else if volume.empty_dir.is_none() {
            return Err(format!(
                "volume {:?}: only configMap and emptyDir in simulated mode",
                volume.name
            ));
        }
        Ok(dir.to_path_buf())
    }

    async fn teardown(&self, _pod: &Pod, _volume: &Volume, dir: &Path) -> Result<(), String> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        }
    }
}

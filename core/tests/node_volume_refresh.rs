//! The node agent keeps the files of running pods' configMap, secret, downwardAPI and
//! projected volumes fresh: every `volume_refresh` it sets them up again with the pod as it is
//! now, never touches other sources, and stops once the pod is torn down.

#![allow(missing_docs)]
mod node_support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, EmptyDirVolumeSource, Pod, Volume};
use node_support::*;
use wharf_core::node::{InTreeVolumes, NodeAgent, NodeConfig};

/// Records every call: (volume, the pod's `version` label) for setups, `-volume` for teardowns.
#[derive(Default)]
struct Recording(Mutex<Vec<(String, String)>>);

impl Recording {
    fn setups(&self, volume: &str) -> Vec<String> {
        let calls = self.0.lock().unwrap();
        calls
            .iter()
            .filter(|(v, _)| v == volume)
            .map(|(_, version)| version.clone())
            .collect()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[async_trait]
impl InTreeVolumes for Recording {
    async fn setup(&self, pod: &Pod, volume: &Volume, dir: &Path) -> Result<PathBuf, String> {
        let version = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("version"))
            .cloned()
            .unwrap_or_default();
        self.0.lock().unwrap().push((volume.name.clone(), version));
        Ok(dir.to_path_buf())
    }

    async fn teardown(&self, _pod: &Pod, volume: &Volume, _dir: &Path) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .push((format!("-{}", volume.name), String::new()));
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn projected_volumes_are_refreshed_while_the_pod_runs() {
    let mut h = Harness::new().await;
    h.stop_agent().await;
    let recording = Arc::new(Recording::default());
    let mut backends = backends(&h);
    backends.in_tree_volumes = Some(recording.clone());
    let mut config = NodeConfig::new(NODE);
    config.volume_refresh = Duration::from_secs(5);
    let agent = NodeAgent::new(config, backends, h.store.clone(), h.clock);
    h.handle = Some(agent.start().await.unwrap());

    let mut p = pod("web", vec![container("app")]);
    p.metadata.labels = Some(labels(&[("version", "1")]));
    p.spec.as_mut().unwrap().volumes = Some(vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "settings".into(),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ]);
    h.create(p).await;
    h.wait("web", Duration::from_secs(60), |s| phase(s) == "Running")
        .await;
    assert_eq!(recording.setups("config"), ["1"]);

    let mut now = h.get("web").await.to_owned_value();
    now.metadata.labels = Some(labels(&[("version", "2")]));
    h.pods().update(now).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let config = recording.setups("config");
    assert!(config.len() >= 2, "no refresh after 6 s: {config:?}");
    assert_eq!(config.last().map(String::as_str), Some("2"), "{config:?}");
    assert_eq!(
        recording.setups("scratch"),
        ["1"],
        "an emptyDir is never set up again"
    );

    h.delete("web").await;
    h.wait_gone("web", Duration::from_secs(60)).await;
    assert_eq!(recording.setups("-config").len(), 1);
    let after_teardown = recording.count();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        recording.count(),
        after_teardown,
        "a torn-down pod's volumes were set up again"
    );
}

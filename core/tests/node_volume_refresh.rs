//! The node agent keeps the files of running pods' configMap, secret, downwardAPI and
//! projected volumes fresh: every `volume_refresh` it sets them up again with the pod as it is
//! now, never touches other sources, and stops once the pod is torn down.

#![allow(missing_docs)]
mod node_support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, EmptyDirVolumeSource, Pod, Volume,
};
use node_support::*;
use wharf_core::node::{InTreeVolumes, NodeAgent, NodeConfig, SourceObjects};
use wharf_core::object::Kind;
use wharf_core::store::Api;

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

/// Records refreshes; the refresh of pods named `slow-*` takes 100 s.
#[derive(Default)]
struct SlowRefresh {
    refreshed: Mutex<Vec<(String, Option<String>)>>,
}

#[async_trait]
impl InTreeVolumes for SlowRefresh {
    async fn setup(&self, _pod: &Pod, _volume: &Volume, dir: &Path) -> Result<PathBuf, String> {
        Ok(dir.to_path_buf())
    }

    async fn refresh(
        &self,
        pod: &Pod,
        volume: &Volume,
        _dir: &Path,
        objects: &SourceObjects,
    ) -> Result<(), String> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let source = volume
            .config_map
            .as_ref()
            .map(|c| c.name.as_str())
            .unwrap_or("");
        let value = objects
            .config_map("default", source)
            .and_then(|cm| cm.data.as_ref()?.get("key").cloned());
        self.refreshed.lock().unwrap().push((name.clone(), value));
        if name.starts_with("slow-") {
            tokio::time::sleep(Duration::from_secs(100)).await;
        }
        Ok(())
    }

    async fn teardown(&self, _pod: &Pod, _volume: &Volume, _dir: &Path) -> Result<(), String> {
        Ok(())
    }
}

fn pod_with_config(name: &str, config_map: &str) -> Pod {
    let mut p = pod(name, vec![container("app")]);
    p.spec.as_mut().unwrap().volumes = Some(vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    p
}

/// A refresh round reads each referenced ConfigMap once, however many pods use it, and
/// takes the pods from the agent's watch instead of reading them; one pod's slow refresh
/// does not hold up another pod's teardown.
#[tokio::test(start_paused = true)]
async fn refresh_reads_each_source_once_and_blocks_no_other_pod() {
    let mut h = Harness::new().await;
    h.stop_agent().await;
    let counting = h.counting.clone();
    let hook = Arc::new(SlowRefresh::default());
    let mut backends = backends(&h);
    backends.in_tree_volumes = Some(hook.clone());
    let mut config = NodeConfig::new(NODE);
    config.volume_refresh = Duration::from_secs(10);
    let agent = NodeAgent::new(config, backends, h.store.clone(), h.clock);
    h.handle = Some(agent.start().await.unwrap());

    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("shared".into());
    cm.data = Some([("key".to_string(), "v1".to_string())].into());
    Api::<ConfigMap>::namespaced(h.store.clone(), "default")
        .create(cm)
        .await
        .unwrap();
    let names = ["a", "b", "c", "slow-d", "e"];
    for name in names {
        h.create(pod_with_config(name, "shared")).await;
    }
    for name in names {
        h.wait(name, Duration::from_secs(60), |s| phase(s) == "Running")
            .await;
    }
    // The first round runs at 10 s (and stays in slow-d's refresh until 110 s).
    h.at(9).await;
    let (pods, cms) = (
        counting.gets_of(&Kind::Pod),
        counting.gets_of(&Kind::ConfigMap),
    );
    h.at(11).await;
    assert_eq!(
        counting.gets_of(&Kind::Pod),
        pods,
        "pods read by the refresh"
    );
    assert_eq!(
        counting.gets_of(&Kind::ConfigMap) - cms,
        1,
        "one read of the ConfigMap per round"
    );
    let refreshed = hook.refreshed.lock().unwrap().clone();
    // Every pod was refreshed in the first round, slow-d's 100 s call holding up no other.
    let mut who: Vec<&str> = refreshed.iter().map(|(n, _)| n.as_str()).collect();
    who.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(who, want, "pods refreshed by the 10 s round");
    assert!(
        refreshed.iter().all(|(_, v)| v.as_deref() == Some("v1")),
        "{refreshed:?}"
    );

    // Deleting another pod while slow-d's refresh runs does not wait for it.
    let start = tokio::time::Instant::now();
    h.delete("a").await;
    h.wait_gone("a", Duration::from_secs(60)).await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "a teardown waited {:?} for another pod's refresh",
        start.elapsed()
    );
}

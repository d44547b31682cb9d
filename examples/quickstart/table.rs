//! A live pod table, like `kubectl get pods --watch`: a row is printed whenever a pod's row
//! changes, and a line when a pod is gone.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::task::JoinHandle;
use wharf::core::store::{Api, ListOptions};

/// The printing task.
pub struct PodTable {
    task: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl PodTable {
    /// Starts printing the pods `api` lists.
    pub fn start(api: Api<Pod>) -> PodTable {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            println!(
                "  {:<28} {:<6} {:<18} {:<9} {:<12} NODE",
                "NAME", "READY", "STATUS", "RESTARTS", "IP"
            );
            let mut shown: BTreeMap<String, String> = BTreeMap::new();
            loop {
                if let Ok(list) = api.list(&ListOptions::default()).await {
                    let mut now = BTreeMap::new();
                    for p in list.iter() {
                        let name = p.metadata.name.clone().unwrap_or_default();
                        now.insert(name, row(p));
                    }
                    for (name, r) in &now {
                        if shown.get(name) != Some(r) {
                            println!("  {name:<28} {r}");
                        }
                    }
                    for name in shown.keys() {
                        if !now.contains_key(name) {
                            println!("  {name:<28} (gone)");
                        }
                    }
                    shown = now;
                }
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        });
        PodTable { task, stop }
    }

    /// Stops printing.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn row(p: &Pod) -> String {
    let status = p.status.as_ref();
    let containers = p.spec.as_ref().map_or(0, |s| s.containers.len());
    let statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or(&[]);
    let ready = statuses.iter().filter(|c| c.ready).count();
    let restarts: i32 = statuses.iter().map(|c| c.restart_count).sum();
    let waiting = statuses
        .iter()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let terminated = statuses
        .iter()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.reason.clone());
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let shown = if p.metadata.deletion_timestamp.is_some() {
        "Terminating".to_string()
    } else if let Some(w) = waiting {
        w
    } else if let Some(t) = terminated {
        t
    } else {
        phase
    };
    let ip = status
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_else(|| "<none>".into());
    let node = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_else(|| "<none>".into());
    format!(
        "{:<6} {:<18} {:<9} {:<12} {node}",
        format!("{ready}/{containers}"),
        shown,
        restarts,
        ip
    )
}

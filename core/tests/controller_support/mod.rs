//! Shared pieces of the controller tests: a store on tokio's paused clock, a stand-in for the
//! node agent that makes pods ready, and helpers to build objects and wait for conditions.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Container, Pod, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use wharf_core::controller::CancellationToken;
use wharf_core::store::memory::MemoryStore;
use wharf_core::store::{ListOptions, Store, WatchEvent, WatchOptions};
use wharf_core::{Clock, Kind, Object};

/// A store whose clock starts at a fixed time and follows tokio's (paused) clock.
pub fn store() -> (Arc<dyn Store>, Clock) {
    let clock = Clock::starting_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    (Arc::new(MemoryStore::with_clock(clock)), clock)
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        ..Default::default()
    }
}

pub fn template(pairs: &[(&str, &str)], image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(pairs)),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// A bare pod with labels (no owner).
pub fn pod(name: &str, pairs: &[(&str, &str)]) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some("default".into());
    p.metadata.labels = Some(labels(pairs));
    p.spec = Some(template(pairs, "busybox").spec.unwrap());
    p
}

/// Marks a pod Running with an IP, and Ready or not.
pub async fn set_ready(store: &Arc<dyn Store>, clock: &Clock, pod: &Object, ready: bool, ip: &str) {
    let Some(p) = pod.as_kind::<Pod>() else {
        return;
    };
    let mut p = p.clone();
    let status = p.status.get_or_insert_with(PodStatus::default);
    status.phase = Some("Running".into());
    status.pod_ip = Some(ip.into());
    status.conditions = Some(vec![PodCondition {
        type_: "Ready".into(),
        status: if ready { "True" } else { "False" }.into(),
        last_transition_time: Some(clock.now_k8s()),
        ..Default::default()
    }]);
    // A pod deleted meanwhile is fine: the caller reads again on the next event.
    let _ = store.update_status(Object::from(p)).await;
}

/// A stand-in for the node agents: every new pod becomes Running and Ready after `delay`.
/// Returns when `shutdown` is cancelled.
pub fn kubelet(store: Arc<dyn Store>, clock: Clock, delay: Duration, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut watch = store
            .watch(&Kind::Pod, &WatchOptions::default())
            .await
            .unwrap();
        let mut n = 0u32;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = watch.next() => e,
            };
            let Some(Ok(WatchEvent::Added(pod))) = event else {
                if event.is_none() {
                    return;
                }
                continue;
            };
            n += 1;
            let ip = format!("10.0.{}.{}", n / 250, n % 250 + 1);
            let (store, clock) = (store.clone(), clock);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(current) = store.get(&Kind::Pod, pod.namespace(), pod.name()).await {
                    if current.uid() == pod.uid() {
                        set_ready(&store, &clock, &current, true, &ip).await;
                    }
                }
            });
        }
    });
}

/// Polls `check` every 100 ms of virtual time until it returns true; panics after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every stored object of `kind` in namespace `default`.
pub async fn list(store: &Arc<dyn Store>, kind: Kind) -> Vec<Arc<Object>> {
    store
        .list(&kind, &ListOptions::namespace("default"))
        .await
        .unwrap()
        .items
}

/// Active (not finished, not deleting) pods.
pub async fn active_pods(store: &Arc<dyn Store>) -> Vec<Arc<Object>> {
    list(store, Kind::Pod)
        .await
        .into_iter()
        .filter(|p| {
            let pod = p.as_kind::<Pod>().unwrap();
            pod.metadata.deletion_timestamp.is_none()
                && !matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
        .collect()
}

pub fn is_ready(p: &Object) -> bool {
    p.as_kind::<Pod>()
        .and_then(|p| p.status.as_ref()?.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

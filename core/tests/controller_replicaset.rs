//! ReplicaSet controller under tokio's paused clock with the memory store.

mod controller_support;

use std::sync::Arc;
use std::time::Duration;

use controller_support::*;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::controllers::replicaset::{ReplicaSetController, BURST_REPLICAS};
use wharf_core::store::{Api, Store, WatchEvent, WatchOptions};
use wharf_core::{Clock, Kind, Object};

fn replica_set(name: &str, replicas: i32, min_ready: i32) -> ReplicaSet {
    let mut rs = ReplicaSet::default();
    rs.metadata.name = Some(name.into());
    rs.metadata.namespace = Some("default".into());
    rs.spec = Some(ReplicaSetSpec {
        replicas: Some(replicas),
        min_ready_seconds: Some(min_ready),
        selector: selector(&[("app", name)]),
        template: Some(template(&[("app", name)], "busybox")),
    });
    rs
}

fn start(store: &Arc<dyn Store>, clock: Clock) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(ReplicaSetController::controller().run(ctx, shutdown.clone()));
    shutdown
}

async fn status(api: &Api<ReplicaSet>, name: &str) -> (i32, i32, i32, i32, Option<i64>) {
    let rs = api.get(name).await.unwrap();
    let s = rs.status.clone().unwrap_or_default();
    (
        s.replicas,
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
        s.fully_labeled_replicas.unwrap_or(0),
        s.observed_generation,
    )
}

#[tokio::test(start_paused = true)]
async fn creates_owned_pods_and_reports_min_ready_availability() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    kubelet(
        store.clone(),
        clock,
        Duration::from_secs(2),
        shutdown.clone(),
    );
    let api: Api<ReplicaSet> = Api::namespaced(store.clone(), "default");
    let rs = api.create(replica_set("web", 3, 10)).await.unwrap();

    eventually(Duration::from_secs(5), "3 ready pods", || async {
        status(&api, "web").await.1 == 3
    })
    .await;
    let pods = active_pods(&store).await;
    assert_eq!(pods.len(), 3);
    for p in &pods {
        let owner = &p.meta().owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, rs.metadata.uid.clone().unwrap());
        assert_eq!(owner.kind, "ReplicaSet");
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert!(p.name().starts_with("web-"));
    }
    // Ready but not yet for minReadySeconds: not available.
    let (replicas, ready, available, labeled, generation) = status(&api, "web").await;
    assert_eq!(
        (replicas, ready, available, labeled, generation),
        (3, 3, 0, 3, Some(1))
    );
    eventually(Duration::from_secs(15), "3 available pods", || async {
        status(&api, "web").await.2 == 3
    })
    .await;
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn scale_down_deletes_not_ready_then_newest_ready() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<ReplicaSet> = Api::namespaced(store.clone(), "default");
    api.create(replica_set("db", 4, 0)).await.unwrap();
    eventually(Duration::from_secs(5), "4 pods", || async {
        active_pods(&store).await.len() == 4
    })
    .await;
    let mut pods = active_pods(&store).await;
    pods.sort_by(|a, b| a.name().cmp(b.name()));
    // pods[0] ready first, pods[1] ready later, pods[2] running not ready, pods[3] pending.
    set_ready(&store, &clock, &pods[0], true, "10.0.0.1").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    set_ready(
        &store,
        &clock,
        &store
            .get(&Kind::Pod, Some("default"), pods[1].name())
            .await
            .unwrap(),
        true,
        "10.0.0.2",
    )
    .await;
    set_ready(
        &store,
        &clock,
        &store
            .get(&Kind::Pod, Some("default"), pods[2].name())
            .await
            .unwrap(),
        false,
        "10.0.0.3",
    )
    .await;

    let table = [
        (3, vec![pods[0].name(), pods[1].name(), pods[2].name()]),
        (2, vec![pods[0].name(), pods[1].name()]),
        (1, vec![pods[0].name()]),
    ];
    for (replicas, survivors) in table {
        let mut rs = api.get("db").await.unwrap().to_owned_value();
        rs.spec.as_mut().unwrap().replicas = Some(replicas);
        api.update(rs).await.unwrap();
        eventually(Duration::from_secs(5), "scale down", || async {
            active_pods(&store).await.len() == replicas as usize
        })
        .await;
        let mut names: Vec<String> = active_pods(&store)
            .await
            .iter()
            .map(|p| p.name().to_string())
            .collect();
        names.sort();
        assert_eq!(names, survivors, "replicas {replicas}");
    }
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn adopts_matching_orphans_and_releases_pods_that_stop_matching() {
    let (store, clock) = store();
    let orphan = store
        .create(Object::from(pod("stray", &[("app", "api")])))
        .await
        .unwrap();
    store
        .create(Object::from(pod("other", &[("app", "else")])))
        .await
        .unwrap();
    let shutdown = start(&store, clock);
    let api: Api<ReplicaSet> = Api::namespaced(store.clone(), "default");
    let rs = api.create(replica_set("api", 2, 0)).await.unwrap();
    let uid = rs.metadata.uid.clone().unwrap();
    let owned_by_rs = |p: &Object| {
        p.meta()
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == uid && r.controller == Some(true))
    };
    eventually(
        Duration::from_secs(5),
        "2 pods owned, the orphan adopted",
        || async {
            let pods = active_pods(&store).await;
            pods.iter().filter(|p| owned_by_rs(p)).count() == 2
                && pods.iter().any(|p| p.name() == "stray" && owned_by_rs(p))
        },
    )
    .await;
    assert_eq!(
        active_pods(&store).await.len(),
        3,
        "only one pod created besides the adopted one"
    );
    let other = store
        .get(&Kind::Pod, Some("default"), "other")
        .await
        .unwrap();
    assert!(other.meta().owner_references.is_none());

    // Relabel the adopted pod: it is released and replaced.
    let mut p = store
        .get(&Kind::Pod, Some("default"), "stray")
        .await
        .unwrap()
        .as_kind::<Pod>()
        .unwrap()
        .clone();
    p.metadata.labels = Some(labels(&[("app", "debug")]));
    store.update(Object::from(p)).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "stray released and replaced",
        || async {
            let stray = store
                .get(&Kind::Pod, Some("default"), "stray")
                .await
                .unwrap();
            let pods = active_pods(&store).await;
            !owned_by_rs(&stray) && pods.iter().filter(|p| owned_by_rs(p)).count() == 2
        },
    )
    .await;
    let _ = orphan;
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn fully_labeled_counts_pods_with_every_template_label() {
    let (store, clock) = store();
    // An orphan the selector matches but without the template's extra label.
    store
        .create(Object::from(pod("plain", &[("app", "front")])))
        .await
        .unwrap();
    let shutdown = start(&store, clock);
    let api: Api<ReplicaSet> = Api::namespaced(store.clone(), "default");
    let mut rs = replica_set("front", 3, 0);
    rs.spec.as_mut().unwrap().template =
        Some(template(&[("app", "front"), ("tier", "web")], "busybox"));
    api.create(rs).await.unwrap();
    eventually(Duration::from_secs(5), "3 pods, one adopted", || async {
        status(&api, "front").await.0 == 3
    })
    .await;
    // (replicas, ready, available, fully labeled, generation)
    assert_eq!(status(&api, "front").await, (3, 0, 0, 2, Some(1)));

    // Labelling the adopted pod like the template makes it fully labeled.
    let mut p = store
        .get(&Kind::Pod, Some("default"), "plain")
        .await
        .unwrap()
        .as_kind::<Pod>()
        .unwrap()
        .clone();
    p.metadata.labels = Some(labels(&[("app", "front"), ("tier", "web")]));
    store.update(Object::from(p)).await.unwrap();
    eventually(Duration::from_secs(5), "3 fully labeled", || async {
        status(&api, "front").await.3 == 3
    })
    .await;
    assert_eq!(active_pods(&store).await.len(), 3);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn counts_and_releases_pods_with_many_distinct_label_sets() {
    // Ten adopted orphans, each with a label of its own: more distinct label sets than the
    // informer's tally keeps apart, so the counts come from its walk over the pods.
    let (store, clock) = store();
    for i in 0..10 {
        let own = format!("p{i}");
        let mut with: Vec<(&str, &str)> = vec![("app", "front"), ("own", &own)];
        if i < 4 {
            with.push(("tier", "web"));
        }
        store
            .create(Object::from(pod(&format!("p{i}"), &with)))
            .await
            .unwrap();
    }
    let shutdown = start(&store, clock);
    let api: Api<ReplicaSet> = Api::namespaced(store.clone(), "default");
    let mut rs = replica_set("front", 10, 0);
    rs.spec.as_mut().unwrap().template =
        Some(template(&[("app", "front"), ("tier", "web")], "busybox"));
    api.create(rs).await.unwrap();
    eventually(Duration::from_secs(5), "10 pods adopted", || async {
        status(&api, "front").await.0 == 10
    })
    .await;
    // (replicas, ready, available, fully labeled, generation): no pod was created.
    assert_eq!(status(&api, "front").await, (10, 0, 0, 4, Some(1)));
    assert_eq!(active_pods(&store).await.len(), 10);

    // A pod relabelled out of the selector is released and replaced.
    let mut p = store
        .get(&Kind::Pod, Some("default"), "p9")
        .await
        .unwrap()
        .as_kind::<Pod>()
        .unwrap()
        .clone();
    p.metadata.labels = Some(labels(&[("app", "back"), ("own", "p9")]));
    store.update(Object::from(p)).await.unwrap();
    eventually(Duration::from_secs(5), "p9 released", || async {
        let p9 = store.get(&Kind::Pod, Some("default"), "p9").await.unwrap();
        p9.meta()
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty())
    })
    .await;
    eventually(Duration::from_secs(5), "a replacement for p9", || async {
        active_pods(&store).await.len() == 11 && status(&api, "front").await.0 == 10
    })
    .await;
    // The replacement has the template's labels.
    assert_eq!(status(&api, "front").await.3, 5);
    shutdown.cancel();
}

/// Records the resourceVersion of every event of `kind` with whether it added (or deleted)
/// an object.
fn record(store: &Arc<dyn Store>, kind: Kind) -> Arc<std::sync::Mutex<Vec<(u64, bool)>>> {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (store, out) = (store.clone(), log.clone());
    tokio::spawn(async move {
        let mut watch = store.watch(&kind, &WatchOptions::default()).await.unwrap();
        while let Some(Ok(event)) = watch.next().await {
            let changed = matches!(event, WatchEvent::Added(_) | WatchEvent::Deleted(_));
            if let Some(rv) = event.resource_version() {
                out.lock().unwrap().push((rv, changed));
            }
        }
    });
    log
}

#[tokio::test(start_paused = true)]
async fn creates_and_deletes_at_most_a_burst_per_reconcile_and_reaches_the_count() {
    let (store, clock) = store();
    let pod_events = record(&store, Kind::Pod);
    let rs_events = record(&store, Kind::ReplicaSet);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let shutdown = start(&store, clock);
    let api: Api<ReplicaSet> = Api::namespaced(store.clone(), "default");
    api.create(replica_set("many", 1_200, 0)).await.unwrap();
    eventually(Duration::from_secs(10), "1,200 pods", || async {
        status(&api, "many").await.0 == 1_200
    })
    .await;
    assert_eq!(active_pods(&store).await.len(), 1_200);

    // Scale down by more than a burst.
    let mut rs = api.get("many").await.unwrap().to_owned_value();
    rs.spec.as_mut().unwrap().replicas = Some(100);
    api.update(rs).await.unwrap();
    eventually(Duration::from_secs(10), "100 pods", || async {
        active_pods(&store).await.len() == 100 && status(&api, "many").await.0 == 100
    })
    .await;
    shutdown.cancel();

    // Each reconcile ends with one status write, and resourceVersions are global: between
    // two writes of the ReplicaSet at most 500 pods were created or deleted.
    let writes: Vec<u64> = rs_events.lock().unwrap().iter().map(|e| e.0).collect();
    let pods: Vec<u64> = pod_events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.1)
        .map(|e| e.0)
        .collect();
    assert_eq!(pods.len(), 1_200 + 1_100, "every create and delete seen");
    let mut most = 0;
    for pair in writes.windows(2) {
        let between = pods
            .iter()
            .filter(|&&rv| rv > pair[0] && rv < pair[1])
            .count();
        most = most.max(between);
    }
    assert_eq!(most, BURST_REPLICAS, "a reconcile writes at most a burst");
}

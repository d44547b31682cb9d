//! Deployment controller (with the ReplicaSet controller) under tokio's paused clock.

mod controller_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use controller_support::*;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::controllers::deployment::{self, DeploymentController, REVISION};
use wharf_core::controllers::replicaset::ReplicaSetController;
use wharf_core::store::{Api, Store, WatchOptions};
use wharf_core::{Clock, Kind};

fn deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    let mut d = Deployment::default();
    d.metadata.name = Some(name.into());
    d.metadata.namespace = Some("default".into());
    d.spec = Some(DeploymentSpec {
        replicas: Some(replicas),
        selector: selector(&[("app", name)]),
        template: template(&[("app", name)], image),
        ..Default::default()
    });
    d
}

fn start(store: &Arc<dyn Store>, clock: Clock) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(ReplicaSetController::controller().run(ctx.clone(), shutdown.clone()));
    tokio::spawn(DeploymentController::controller().run(ctx, shutdown.clone()));
    shutdown
}

async fn set_image(api: &Api<Deployment>, name: &str, image: &str) {
    let mut d = api.get(name).await.unwrap().to_owned_value();
    d.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some(image.into());
    api.update(d).await.unwrap();
}

fn image_of(p: &wharf_core::Object) -> String {
    p.as_kind::<k8s_openapi::api::core::v1::Pod>()
        .and_then(|p| p.spec.as_ref()?.containers[0].image.clone())
        .unwrap_or_default()
}

async fn rolled_out(
    store: &Arc<dyn Store>,
    api: &Api<Deployment>,
    name: &str,
    image: &str,
    n: usize,
) -> bool {
    let pods = active_pods(store).await;
    let d = api.get(name).await.unwrap();
    let s = d.status.clone().unwrap_or_default();
    pods.len() == n
        && pods.iter().all(|p| image_of(p) == image && is_ready(p))
        && s.updated_replicas == Some(n as i32)
        && s.available_replicas == Some(n as i32)
        && s.replicas == Some(n as i32)
}

fn condition(d: &Deployment, kind: &str) -> Option<(String, String)> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

async fn replica_sets(store: &Arc<dyn Store>) -> Vec<ReplicaSet> {
    list(store, Kind::ReplicaSet)
        .await
        .iter()
        .map(|o| o.as_kind::<ReplicaSet>().unwrap().clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn rolling_update_of_ten_stays_within_surge_and_unavailability() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    kubelet(
        store.clone(),
        clock,
        Duration::from_secs(2),
        shutdown.clone(),
    );
    let api: Api<Deployment> = Api::namespaced(store.clone(), "default");
    api.create(deployment("web", 10, "v1")).await.unwrap();
    eventually(Duration::from_secs(60), "v1 rolled out", || {
        rolled_out(&store, &api, "web", "v1", 10)
    })
    .await;
    let d = api.get("web").await.unwrap();
    assert_eq!(
        condition(&d, "Available"),
        Some(("True".into(), "MinimumReplicasAvailable".into()))
    );
    assert_eq!(
        condition(&d, "Progressing"),
        Some(("True".into(), "NewReplicaSetAvailable".into()))
    );
    assert_eq!(d.metadata.annotations.as_ref().unwrap()[REVISION], "1");

    // Watch every pod change during the rollout and check the bounds after each.
    let max_pods = Arc::new(AtomicUsize::new(0));
    let min_ready = Arc::new(AtomicUsize::new(usize::MAX));
    let (s, mx, mn, stop) = (
        store.clone(),
        max_pods.clone(),
        min_ready.clone(),
        shutdown.clone(),
    );
    let rv = store.current_resource_version().await.unwrap();
    let mut watch = store
        .watch(
            &Kind::Pod,
            &WatchOptions {
                resource_version: Some(rv),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                e = watch.next() => if e.is_none() { return },
            }
            let pods = active_pods(&s).await;
            mx.fetch_max(pods.len(), Ordering::SeqCst);
            mn.fetch_min(
                pods.iter().filter(|p| is_ready(p)).count(),
                Ordering::SeqCst,
            );
        }
    });
    set_image(&api, "web", "v2").await;
    eventually(Duration::from_secs(120), "v2 rolled out", || {
        rolled_out(&store, &api, "web", "v2", 10)
    })
    .await;
    assert!(
        max_pods.load(Ordering::SeqCst) <= 13,
        "max pods {}",
        max_pods.load(Ordering::SeqCst)
    );
    assert!(
        min_ready.load(Ordering::SeqCst) >= 8,
        "min ready {}",
        min_ready.load(Ordering::SeqCst)
    );
    assert_eq!(
        max_pods.load(Ordering::SeqCst),
        13,
        "the rollout uses its surge"
    );

    let mut sets = replica_sets(&store).await;
    sets.sort_by_key(|rs| deployment::revision(&rs.metadata));
    assert_eq!(sets.len(), 2);
    let sizes: Vec<_> = sets
        .iter()
        .map(|rs| rs.spec.as_ref().unwrap().replicas.unwrap())
        .collect();
    assert_eq!(sizes, [0, 10]);
    let hash = sets[1].metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(
        sets[1].metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    for p in active_pods(&store).await {
        assert_eq!(p.meta().labels.as_ref().unwrap()["pod-template-hash"], hash);
    }
    let d = api.get("web").await.unwrap();
    assert_eq!(d.metadata.annotations.as_ref().unwrap()[REVISION], "2");
    assert_eq!(
        d.status.as_ref().unwrap().observed_generation,
        d.metadata.generation
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn recreate_removes_old_pods_before_creating_new_ones() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    kubelet(
        store.clone(),
        clock,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let api: Api<Deployment> = Api::namespaced(store.clone(), "default");
    let mut d = deployment("batch", 3, "v1");
    d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        type_: Some("Recreate".into()),
        rolling_update: None,
    });
    api.create(d).await.unwrap();
    eventually(Duration::from_secs(30), "v1", || {
        rolled_out(&store, &api, "batch", "v1", 3)
    })
    .await;
    let mixed = Arc::new(AtomicUsize::new(0));
    let (s, m, stop) = (store.clone(), mixed.clone(), shutdown.clone());
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let pods = active_pods(&s).await;
            let images: std::collections::BTreeSet<_> = pods.iter().map(|p| image_of(p)).collect();
            if images.len() > 1 {
                m.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    set_image(&api, "batch", "v2").await;
    eventually(Duration::from_secs(30), "v2", || {
        rolled_out(&store, &api, "batch", "v2", 3)
    })
    .await;
    assert_eq!(
        mixed.load(Ordering::SeqCst),
        0,
        "old and new pods never coexist"
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn rollback_reuses_the_old_replica_set_and_history_is_limited() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    kubelet(
        store.clone(),
        clock,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let api: Api<Deployment> = Api::namespaced(store.clone(), "default");
    let mut d = deployment("app", 2, "v1");
    d.spec.as_mut().unwrap().revision_history_limit = Some(2);
    api.create(d).await.unwrap();
    for image in ["v1", "v2", "v3", "v4"] {
        if image != "v1" {
            set_image(&api, "app", image).await;
        }
        eventually(Duration::from_secs(60), image, || {
            rolled_out(&store, &api, "app", image, 2)
        })
        .await;
    }
    // History limit 2: the v1 ReplicaSet (revision 1) was deleted.
    eventually(Duration::from_secs(10), "history trimmed", || async {
        replica_sets(&store).await.len() == 3
    })
    .await;
    let mut revisions: Vec<i64> = replica_sets(&store)
        .await
        .iter()
        .map(|rs| deployment::revision(&rs.metadata))
        .collect();
    revisions.sort();
    assert_eq!(revisions, [2, 3, 4]);

    // Undo to the previous revision (v3): its ReplicaSet comes back as revision 5.
    deployment::rollback(store.clone(), "default", "app", 0)
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "back to v3", || {
        rolled_out(&store, &api, "app", "v3", 2)
    })
    .await;
    let sets = replica_sets(&store).await;
    let v3 = sets
        .iter()
        .find(|rs| rs.spec.as_ref().unwrap().replicas == Some(2))
        .unwrap();
    let annotations = v3.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[REVISION], "5");
    assert_eq!(annotations[deployment::REVISION_HISTORY], "3");
    assert_eq!(sets.len(), 3, "no new ReplicaSet for a rollback");
    // Rolling back to a revision that is gone is an error naming it.
    let err = deployment::rollback(store.clone(), "default", "app", 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revision 1 not found"), "{err}");
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn paused_deployment_scales_but_does_not_roll_out_until_resumed() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    kubelet(
        store.clone(),
        clock,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let api: Api<Deployment> = Api::namespaced(store.clone(), "default");
    api.create(deployment("p", 2, "v1")).await.unwrap();
    eventually(Duration::from_secs(30), "v1", || {
        rolled_out(&store, &api, "p", "v1", 2)
    })
    .await;
    let mut d = api.get("p").await.unwrap().to_owned_value();
    d.spec.as_mut().unwrap().paused = Some(true);
    d.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("v2".into());
    api.update(d).await.unwrap();
    eventually(Duration::from_secs(10), "paused condition", || async {
        condition(&api.get("p").await.unwrap(), "Progressing")
            == Some(("Unknown".into(), "DeploymentPaused".into()))
    })
    .await;
    let mut d = api.get("p").await.unwrap().to_owned_value();
    d.spec.as_mut().unwrap().replicas = Some(4);
    api.update(d).await.unwrap();
    // The template changed while paused, so no ReplicaSet is "updated": 4 old pods.
    eventually(
        Duration::from_secs(30),
        "scaled to 4 while paused",
        || async {
            let pods = active_pods(&store).await;
            let status = api.get("p").await.unwrap().status.clone().unwrap();
            pods.len() == 4
                && pods.iter().all(|p| image_of(p) == "v1" && is_ready(p))
                && status.available_replicas == Some(4)
                && status.updated_replicas == Some(0)
        },
    )
    .await;
    assert_eq!(replica_sets(&store).await.len(), 1);

    let mut d = api.get("p").await.unwrap().to_owned_value();
    d.spec.as_mut().unwrap().paused = Some(false);
    api.update(d).await.unwrap();
    eventually(Duration::from_secs(60), "v2 after resume", || {
        rolled_out(&store, &api, "p", "v2", 4)
    })
    .await;
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn stalled_rollout_exceeds_progress_deadline() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<Deployment> = Api::namespaced(store.clone(), "default");
    let mut d = deployment("slow", 2, "v1");
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(30);
    api.create(d).await.unwrap();
    // No kubelet: pods never become ready.
    eventually(Duration::from_secs(10), "progressing", || async {
        condition(&api.get("slow").await.unwrap(), "Progressing").map(|c| c.0)
            == Some("True".into())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        condition(&api.get("slow").await.unwrap(), "Progressing")
            .unwrap()
            .0,
        "True"
    );
    eventually(Duration::from_secs(20), "deadline exceeded", || async {
        condition(&api.get("slow").await.unwrap(), "Progressing")
            == Some(("False".into(), "ProgressDeadlineExceeded".into()))
    })
    .await;
    let d = api.get("slow").await.unwrap();
    assert_eq!(
        condition(&d, "Available"),
        Some(("False".into(), "MinimumReplicasUnavailable".into()))
    );
    assert_eq!(d.status.as_ref().unwrap().unavailable_replicas, Some(2));
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn scaling_during_a_rollout_is_proportional() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<Deployment> = Api::namespaced(store.clone(), "default");
    let mut d = deployment("prop", 10, "v1");
    d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(3)),
            max_unavailable: Some(IntOrString::Int(2)),
        }),
    });
    api.create(d).await.unwrap();
    // Make the v1 pods ready by hand, then start a rollout whose pods never get ready.
    eventually(Duration::from_secs(10), "10 pods", || async {
        active_pods(&store).await.len() == 10
    })
    .await;
    for (i, p) in active_pods(&store).await.iter().enumerate() {
        set_ready(&store, &clock, p, true, &format!("10.1.0.{i}")).await;
    }
    eventually(Duration::from_secs(30), "v1", || {
        rolled_out(&store, &api, "prop", "v1", 10)
    })
    .await;
    set_image(&api, "prop", "v2").await;
    // Stuck rollout: new RS 5 (3 surge + 2 unavailable), old RS 8.
    let sizes = || async {
        let mut sets = replica_sets(&store).await;
        sets.sort_by_key(|rs| deployment::revision(&rs.metadata));
        sets.iter()
            .map(|rs| rs.spec.as_ref().unwrap().replicas.unwrap())
            .collect::<Vec<_>>()
    };
    eventually(
        Duration::from_secs(10),
        "stuck at 8 old + 5 new",
        || async { sizes().await == [8, 5] },
    )
    .await;
    // Scale 10 -> 20: 20+3 allowed, 10 to add, shared 8:5 -> old 14, new 9 (rounding leftover
    // goes to the largest).
    let mut d = api.get("prop").await.unwrap().to_owned_value();
    d.spec.as_mut().unwrap().replicas = Some(20);
    api.update(d).await.unwrap();
    eventually(Duration::from_secs(10), "proportional", || async {
        let s = sizes().await;
        s.iter().sum::<i32>() == 23
    })
    .await;
    let s = sizes().await;
    assert_eq!(s, [14, 9], "sizes {s:?}");
    shutdown.cancel();
}

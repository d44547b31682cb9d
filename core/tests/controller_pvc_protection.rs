//! pvc-protection: a claim gets the finalizer; deleting it while a pod uses it only marks it;
//! it goes when that pod is gone (or has finished), and a claim no pod uses goes at once.

#![allow(missing_docs)]
mod controller_support;

use std::time::Duration;

use controller_support::*;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodStatus, Volume,
};
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::store::{Api, DeleteOptions};
use wharf_core::volume::{PvcProtectionController, PVC_PROTECTION_FINALIZER};

fn claim(name: &str) -> PersistentVolumeClaim {
    let mut c = PersistentVolumeClaim::default();
    c.metadata.name = Some(name.into());
    c.metadata.namespace = Some("default".into());
    c
}

fn pod_using(name: &str, claim: &str) -> Pod {
    let mut p = pod(name, &[]);
    p.spec.as_mut().unwrap().volumes = Some(vec![Volume {
        name: "data".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: None,
        }),
        ..Default::default()
    }]);
    p
}

#[tokio::test(start_paused = true)]
async fn a_claim_in_use_stays_until_its_pods_are_done() {
    let (store, clock) = store();
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(PvcProtectionController::controller().run(ctx, shutdown.clone()));
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(store.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(store.clone(), "default");

    claims.create(claim("used")).await.unwrap();
    claims.create(claim("unused")).await.unwrap();
    pods.create(pod_using("a", "used")).await.unwrap();
    pods.create(pod_using("b", "used")).await.unwrap();
    eventually(Duration::from_secs(5), "both claims protected", || async {
        let mut protected = 0;
        for name in ["used", "unused"] {
            let c = claims.get(name).await.unwrap();
            if c.metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == PVC_PROTECTION_FINALIZER)
            {
                protected += 1;
            }
        }
        protected == 2
    })
    .await;

    claims
        .delete("unused", &DeleteOptions::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the unused claim gone", || async {
        claims.get_opt("unused").await.unwrap().is_none()
    })
    .await;

    claims
        .delete("used", &DeleteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let kept = claims.get("used").await.unwrap();
    assert!(
        kept.metadata.deletion_timestamp.is_some(),
        "the used claim is marked for deletion"
    );

    // Pod a finishes (Succeeded): it no longer uses the claim; b still does.
    let mut a = pods.get("a").await.unwrap().to_owned_value();
    a.status = Some(PodStatus {
        phase: Some("Succeeded".into()),
        ..Default::default()
    });
    pods.update_status(a).await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        claims.get_opt("used").await.unwrap().is_some(),
        "b still uses it"
    );

    pods.delete(
        "b",
        &DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(5),
        "the used claim gone with its last pod",
        || async { claims.get_opt("used").await.unwrap().is_none() },
    )
    .await;
    shutdown.cancel();
}

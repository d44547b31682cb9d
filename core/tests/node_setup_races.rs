//! The node agent under races between a pod's setup and its end: a pod deleted (gracefully
//! or by force) or an agent stopped while the sandbox, the network attachment or the volumes
//! are still being made leaves nothing behind; pods sharing one CSI volume stage it once and
//! unstage it only after the last of them is gone; new pods do not rescan the runtime.

mod node_support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PersistentVolumeSpec, Pod, Volume,
};
use node_support::*;
use tokio::time::Instant;
use wharf_core::backend::volume::{CapacityRange, CreateVolumeRequest, VolumePlugin};
use wharf_core::store::{Api, DeleteOptions};

/// A CSI volume of the harness driver, a PersistentVolume for it and a claim bound to it.
/// Returns the driver's volume id.
async fn bound_claim(h: &Harness, claim: &str) -> String {
    let volume = h
        .volumes
        .create_volume(&CreateVolumeRequest {
            name: format!("pv-{claim}"),
            capacity: CapacityRange {
                required_bytes: 1 << 20,
                limit_bytes: 0,
            },
            ..Default::default()
        })
        .await
        .unwrap();
    let mut pv = PersistentVolume::default();
    pv.metadata.name = Some(format!("pv-{claim}"));
    pv.spec = Some(PersistentVolumeSpec {
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        csi: Some(CSIPersistentVolumeSource {
            driver: DRIVER.into(),
            volume_handle: volume.volume_id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });
    Api::<PersistentVolume>::all(h.store.clone())
        .create(pv)
        .await
        .unwrap();
    let mut pvc = PersistentVolumeClaim::default();
    pvc.metadata.name = Some(claim.into());
    pvc.metadata.namespace = Some("default".into());
    pvc.spec = Some(PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        volume_name: Some(format!("pv-{claim}")),
        ..Default::default()
    });
    Api::<PersistentVolumeClaim>::namespaced(h.store.clone(), "default")
        .create(pvc)
        .await
        .unwrap();
    volume.volume_id
}

fn pod_with_claim(name: &str, claim: &str) -> Pod {
    let mut p = pod(name, vec![container("app")]);
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

/// The setup step made slow.
#[derive(Clone, Copy, Debug)]
enum Step {
    Sandbox,
    Network,
    Volumes,
}

fn slow(h: &Harness, step: Step, delay: Duration) {
    match step {
        Step::Sandbox => h.runtime.set_sandbox_latency(delay),
        Step::Network => h.network.set_attach_latency(delay),
        Step::Volumes => h.volumes.set_node_latency(delay),
    }
}

/// What the simulated backends hold: (containers, sandboxes), attachments, addresses,
/// publications, stagings.
fn live(h: &Harness) -> ((usize, usize), usize, usize, usize, usize) {
    (
        h.runtime.counts(),
        h.network.attachments(),
        h.network.allocated(),
        h.volumes.published().len(),
        h.volumes.staged().len(),
    )
}

const NOTHING: ((usize, usize), usize, usize, usize, usize) = ((0, 0), 0, 0, 0, 0);

/// Waits (virtual time) until the backends hold nothing; panics with what is left.
async fn wait_clean(h: &Harness, step: Step, limit: Duration) {
    let deadline = Instant::now() + limit;
    while live(h) != NOTHING {
        assert!(
            Instant::now() < deadline,
            "{step:?}: left behind (containers, sandboxes), attachments, addresses, \
             publications, stagings: {:?}",
            live(h)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const STEPS: [Step; 3] = [Step::Sandbox, Step::Network, Step::Volumes];

#[tokio::test(start_paused = true)]
async fn pod_deleted_mid_setup_leaves_nothing_behind() {
    for step in STEPS {
        for force in [false, true] {
            let h = Harness::new().await;
            bound_claim(&h, "data").await;
            slow(&h, step, Duration::from_secs(30));
            h.create(pod_with_claim("p", "data")).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            // The slow step has taken effect, and its caller has not heard back yet.
            assert_ne!(live(&h), NOTHING, "{step:?}: nothing set up yet");
            let options = DeleteOptions {
                grace_period_seconds: force.then_some(0),
                ..Default::default()
            };
            h.pods().delete("p", &options).await.unwrap();
            h.wait_gone("p", Duration::from_secs(120)).await;
            wait_clean(&h, step, Duration::from_secs(120)).await;
            // Nothing comes back once the slow call returned.
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert_eq!(live(&h), NOTHING, "{step:?}, force {force}");
            assert_eq!(h.handle.as_ref().unwrap().pod_workers(), 0);
        }
    }
}

/// An agent stopped mid-setup leaves a state the next agent finishes: it adopts the pod and
/// runs it with what was already made, or tears everything down when the pod was deleted
/// meanwhile.
#[tokio::test(start_paused = true)]
async fn agent_stopped_mid_setup_is_finished_by_the_next_agent() {
    for step in STEPS {
        for deleted_meanwhile in [false, true] {
            let mut h = Harness::new().await;
            bound_claim(&h, "data").await;
            slow(&h, step, Duration::from_secs(30));
            h.create(pod_with_claim("p", "data")).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_ne!(live(&h), NOTHING, "{step:?}: nothing set up yet");
            h.stop_agent().await;
            slow(&h, step, Duration::ZERO);
            if deleted_meanwhile {
                h.delete("p").await;
            }
            h.start_agent().await;
            if deleted_meanwhile {
                h.wait_gone("p", Duration::from_secs(120)).await;
                wait_clean(&h, step, Duration::from_secs(120)).await;
                continue;
            }
            h.wait("p", Duration::from_secs(60), |s| phase(s) == "Running")
                .await;
            assert_eq!(
                live(&h),
                ((1, 1), 1, 1, 1, 1),
                "{step:?}: one of each after the restart"
            );
            h.delete("p").await;
            h.wait_gone("p", Duration::from_secs(120)).await;
            wait_clean(&h, step, Duration::from_secs(120)).await;
        }
    }
}

/// Two pods on one claim, started and stopped in every overlap: the volume is staged once,
/// each pod publishes it, and it is unstaged only after the last unpublish.
#[tokio::test(start_paused = true)]
async fn shared_volume_is_staged_once_and_unstaged_after_the_last_pod() {
    for offset_ms in [0u64, 500, 1000, 1500, 2500] {
        let h = Harness::new().await;
        let volume_id = bound_claim(&h, "shared").await;
        h.volumes.set_node_latency(Duration::from_secs(1));
        h.create(pod_with_claim("a", "shared")).await;
        h.wait("a", Duration::from_secs(60), |s| phase(s) == "Running")
            .await;
        // b's stage and publish overlap a's teardown by `offset_ms`.
        h.create(pod_with_claim("b", "shared")).await;
        tokio::time::sleep(Duration::from_millis(offset_ms)).await;
        h.pods()
            .delete("a", &DeleteOptions::default())
            .await
            .unwrap();
        h.wait_gone("a", Duration::from_secs(120)).await;
        let b = h
            .wait("b", Duration::from_secs(120), |s| phase(s) == "Running")
            .await;
        assert_eq!(cstatus(&b, "app").restart_count, 0, "offset {offset_ms}");
        assert_eq!(
            h.volumes.staged(),
            vec![volume_id.clone()],
            "offset {offset_ms}"
        );
        assert_eq!(h.volumes.published().len(), 1, "offset {offset_ms}");
        assert_eq!(h.volumes.redundant_stages(), 0, "offset {offset_ms}");
        assert_eq!(h.volumes.order_violations(), 0, "offset {offset_ms}");

        // Both set up at once, then both deleted at once.
        h.create(pod_with_claim("c", "shared")).await;
        h.wait("c", Duration::from_secs(60), |s| phase(s) == "Running")
            .await;
        assert_eq!(h.volumes.redundant_stages(), 0, "offset {offset_ms}");
        assert_eq!(h.volumes.published().len(), 2);
        h.delete("b").await;
        h.delete("c").await;
        h.wait_gone("b", Duration::from_secs(120)).await;
        h.wait_gone("c", Duration::from_secs(120)).await;
        assert!(h.volumes.published().is_empty());
        assert!(
            h.volumes.staged().is_empty(),
            "offset {offset_ms}: still staged"
        );
        assert_eq!(h.volumes.order_violations(), 0, "offset {offset_ms}");
    }
}

#[tokio::test(start_paused = true)]
async fn pods_concurrently_started_on_one_volume_stage_it_once() {
    let h = Harness::new().await;
    bound_claim(&h, "shared").await;
    h.volumes.set_node_latency(Duration::from_secs(1));
    let names: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    for name in &names {
        h.create(pod_with_claim(name, "shared")).await;
    }
    for name in &names {
        h.wait(name, Duration::from_secs(60), |s| phase(s) == "Running")
            .await;
    }
    assert_eq!(h.volumes.stage_calls(), 1);
    assert_eq!(h.volumes.published().len(), names.len());
    for name in &names[..3] {
        h.delete(name).await;
    }
    for name in &names[..3] {
        h.wait_gone(name, Duration::from_secs(120)).await;
    }
    assert_eq!(
        h.volumes.staged().len(),
        1,
        "unstaged while still published"
    );
    for name in &names[3..] {
        h.delete(name).await;
    }
    for name in &names[3..] {
        h.wait_gone(name, Duration::from_secs(120)).await;
    }
    assert_eq!(live(&h), NOTHING);
    assert_eq!(h.volumes.order_violations(), 0);
}

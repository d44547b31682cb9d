//! The node agent as a whole: Node registration and heartbeat, adoption of running
//! containers after an agent restart, and cleanup after deletion.

mod node_support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use node_support::*;
use wharf_core::store::Api;

#[tokio::test(start_paused = true)]
async fn registers_node_and_renews_lease() {
    let h = Harness::new().await;
    let nodes: Api<Node> = Api::all(h.store.clone());
    let node = nodes.get(NODE).await.unwrap();
    let status = node.status.clone().unwrap();
    let cap = status.capacity.unwrap();
    assert_eq!(cap["nvidia.com/gpu"].0, "2");
    assert_eq!(cap["pods"].0, "110");
    assert_eq!(status.allocatable.unwrap()["cpu"].0, "4");
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("True", Some("KubeletReady"))
    );
    let addresses = status.addresses.unwrap();
    assert_eq!(addresses[0].type_, "InternalIP");
    assert_eq!(addresses[0].address, "192.168.0.10");
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], NODE);
    assert_eq!(labels["zone"], "a");

    let leases: Api<Lease> = Api::namespaced(h.store.clone(), "kube-node-lease");
    let first = leases.get(NODE).await.unwrap().spec.clone().unwrap();
    assert_eq!(first.holder_identity.as_deref(), Some(NODE));
    assert_eq!(first.lease_duration_seconds, Some(40));
    h.at(25).await;
    let later = leases.get(NODE).await.unwrap().spec.clone().unwrap();
    let secs = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>| {
        t.as_ref().unwrap().0.as_second()
    };
    assert_eq!(secs(&later.renew_time) - secs(&first.renew_time), 20);
}

#[tokio::test(start_paused = true)]
async fn restarted_agent_adopts_running_containers() {
    let mut h = Harness::new().await;
    h.create(pod("web", vec![container("app"), container("side")]))
        .await;
    let before = h
        .wait("web", Duration::from_secs(60), |s| phase(s) == "Running")
        .await;
    let id = cstatus(&before, "app").container_id.clone();
    h.stop_agent().await;
    h.at(100).await;
    h.start_agent().await;
    h.at(200).await;
    let after = h.status("web").await;
    assert_eq!(phase(&after), "Running");
    assert_eq!(cstatus(&after, "app").container_id, id);
    assert_eq!(cstatus(&after, "app").restart_count, 0);
    assert_eq!(h.starts("app"), vec![0]);
    assert_eq!(h.runtime.counts(), (2, 1));
    assert_eq!(after.pod_ip, before.pod_ip);
    assert_eq!(h.network.allocated(), 1);
}

#[tokio::test(start_paused = true)]
async fn deletion_removes_everything_then_the_pod() {
    let h = Harness::new().await;
    h.create(pod("gone", vec![container("app")])).await;
    h.wait("gone", Duration::from_secs(60), |s| phase(s) == "Running")
        .await;
    h.delete("gone").await;
    h.wait_gone("gone", Duration::from_secs(60)).await;
    assert_eq!(h.runtime.counts(), (0, 0));
    assert_eq!(h.network.allocated(), 0);
    assert!(h.log().contains(&(0, Ev::Exited("app".into(), 143))));
}

#[tokio::test(start_paused = true)]
async fn missing_configmap_is_a_config_error() {
    let h = Harness::new().await;
    let mut c = container("app");
    c.env_from = Some(vec![k8s_openapi::api::core::v1::EnvFromSource {
        config_map_ref: Some(k8s_openapi::api::core::v1::ConfigMapEnvSource {
            name: "absent".into(),
            optional: None,
        }),
        ..Default::default()
    }]);
    h.create(pod("cfg", vec![c])).await;
    h.at(1).await;
    let st = h.status("cfg").await;
    let w = cstatus(&st, "app").state.clone().unwrap().waiting.unwrap();
    assert_eq!(w.reason.as_deref(), Some("CreateContainerConfigError"));
    assert_eq!(w.message.as_deref(), Some("configmap \"absent\" not found"));
    assert_eq!(phase(&st), "Pending");
}

/// A pod deleted at any point of its start (before, during and right after its container
/// starts) still finishes its graceful termination and disappears.
#[tokio::test(start_paused = true)]
async fn deletion_at_any_moment_of_the_start_completes() {
    let h = Harness::new().await;
    for k in 0..40usize {
        let name = format!("p{k}");
        h.create(pod(&name, vec![container("app")])).await;
        for _ in 0..k {
            tokio::task::yield_now().await;
        }
        h.delete(&name).await;
        h.wait_gone(&name, Duration::from_secs(60)).await;
    }
    assert_eq!(h.runtime.counts(), (0, 0));
    assert_eq!(h.network.allocated(), 0);
}

/// The same on a multi-threaded runtime in real time, where the pod's own status writes,
/// runtime events and the final delete race for the worker's attention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_deleted_right_after_start_go_away_on_threads() {
    let h = Harness::new().await;
    let names: Vec<String> = (0..24).map(|i| format!("t{i}")).collect();
    for name in &names {
        h.create(pod(name, vec![container("app")])).await;
    }
    for name in &names {
        h.wait(name, Duration::from_secs(30), |s| phase(s) == "Running")
            .await;
        h.delete(name).await;
    }
    for name in &names {
        h.wait_gone(name, Duration::from_secs(30)).await;
    }
    assert_eq!(h.runtime.counts(), (0, 0));
    assert_eq!(h.network.allocated(), 0);
}

/// A restarted agent scans the runtime once: it adopts what its pods left, tears down what
/// pods deleted meanwhile left, and pods bound after its start do not scan again.
#[tokio::test(start_paused = true)]
async fn runtime_is_scanned_once_at_start() {
    let mut h = Harness::new().await;
    h.create(pod("keep", vec![container("kept")])).await;
    h.create(pod("orphan", vec![container("orphaned")])).await;
    for name in ["keep", "orphan"] {
        h.wait(name, Duration::from_secs(60), |s| phase(s) == "Running")
            .await;
    }
    h.stop_agent().await;
    let force = wharf_core::store::DeleteOptions {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    h.pods().delete("orphan", &force).await.unwrap();
    let before = h.runtime.list_sandbox_calls();
    h.start_agent().await;
    h.at(10).await;
    assert_eq!(h.runtime.list_sandbox_calls(), before + 1);
    assert_eq!(h.runtime.counts(), (1, 1), "the orphan's sandbox is gone");
    assert_eq!(h.network.allocated(), 1);
    for i in 0..5 {
        h.create(pod(&format!("new{i}"), vec![container("app")]))
            .await;
    }
    for i in 0..5 {
        h.wait(&format!("new{i}"), Duration::from_secs(60), |s| {
            phase(s) == "Running"
        })
        .await;
    }
    assert_eq!(
        h.runtime.list_sandbox_calls(),
        before + 1,
        "a new pod scanned"
    );
    assert_eq!(h.starts("kept"), vec![0], "the kept pod was restarted");
    assert_eq!(cstatus(&h.status("keep").await, "kept").restart_count, 0);
    assert_eq!(h.runtime.counts(), (6, 6));
}

/// A pod whose setup completes at once (sandbox, network, images and starts in one sync, as a
/// kubelet sync does) is written once, already Running and Ready, and a settled pod is not
/// written again: every status write wakes every watcher of pods.
#[tokio::test(start_paused = true)]
async fn a_pod_is_written_once_per_settled_state() {
    let h = Harness::new().await;
    h.create(pod("once", vec![container("app"), container("side")]))
        .await;
    let status = h
        .wait("once", Duration::from_secs(60), |s| phase(s) == "Running")
        .await;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str());
    assert_eq!(ready, Some("True"));
    assert_eq!(h.counting.status_writes_of("once"), 1);
    h.at(120).await;
    assert_eq!(
        h.counting.status_writes_of("once"),
        1,
        "a settled pod was written again"
    );
}

/// A deleted pod's last status (its containers terminated, its final phase) is stored before
/// the agent deletes the object, even when every step of the teardown completes at once.
#[tokio::test(start_paused = true)]
async fn a_deleted_pods_final_status_is_written_before_the_object_goes() {
    use futures::StreamExt;
    use wharf_core::store::{WatchEvent, WatchOptions};

    let h = Harness::new().await;
    h.create(pod("last", vec![container("app")])).await;
    h.wait("last", Duration::from_secs(60), |s| phase(s) == "Running")
        .await;
    let mut events = h.pods().watch(&WatchOptions::default()).await.unwrap();
    h.delete("last").await;
    h.wait_gone("last", Duration::from_secs(60)).await;
    let mut last = None;
    while let Some(event) = events.next().await {
        match event.unwrap() {
            WatchEvent::Modified(o) => last = o.as_kind::<Pod>().and_then(|p| p.status.clone()),
            WatchEvent::Deleted(_) => break,
            _ => {}
        }
    }
    let last = last.expect("a status before the delete");
    assert!(
        matches!(phase(&last), "Succeeded" | "Failed"),
        "last phase {:?}",
        last.phase
    );
    let app = cstatus(&last, "app");
    assert!(
        app.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some(),
        "app not terminated in the last status: {app:?}"
    );
}

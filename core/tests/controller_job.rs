//! Job controller under tokio's paused clock: pods are finished by writing their status.

mod controller_support;

use std::sync::Arc;
use std::time::Duration;

use controller_support::*;
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus,
};
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::controllers::garbage_collector::GarbageCollector;
use wharf_core::controllers::job::{JobController, COMPLETION_INDEX};
use wharf_core::store::{Api, Store};
use wharf_core::{Clock, Kind, Object};

fn start(store: &Arc<dyn Store>, clock: Clock) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(JobController::controller().run(ctx.clone(), shutdown.clone()));
    tokio::spawn(GarbageCollector::new().run(ctx, shutdown.clone()));
    shutdown
}

fn job(name: &str, completions: Option<i32>, parallelism: i32) -> Job {
    let mut t = template(&[("job", name)], "busybox");
    t.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    let mut j = Job::default();
    j.metadata.name = Some(name.into());
    j.metadata.namespace = Some("default".into());
    j.spec = Some(JobSpec {
        completions,
        parallelism: Some(parallelism),
        template: t,
        ..Default::default()
    });
    j
}

/// Ends a pod with `code` (0: Succeeded, else Failed) at the clock's time.
async fn finish(store: &Arc<dyn Store>, clock: &Clock, pod: &Object, code: i32) {
    let mut p = pod.as_kind::<Pod>().unwrap().clone();
    p.status = Some(PodStatus {
        phase: Some(if code == 0 { "Succeeded" } else { "Failed" }.into()),
        container_statuses: Some(vec![ContainerStatus {
            name: "app".into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    finished_at: Some(clock.now_k8s()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    });
    store.update_status(Object::from(p)).await.unwrap();
}

fn condition(j: &Job) -> Option<(String, String)> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.status == "True")
        .map(|c| (c.type_.clone(), c.reason.clone().unwrap_or_default()))
}

#[tokio::test(start_paused = true)]
async fn completions_with_parallelism_then_ttl_deletes_the_job() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<Job> = Api::namespaced(store.clone(), "default");
    let mut j = job("count", Some(5), 2);
    j.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(100);
    api.create(j).await.unwrap();
    for round in 0..5 {
        eventually(Duration::from_secs(5), "active pods", || async {
            active_pods(&store).await.len() == 2.min(5 - round)
        })
        .await;
        let pods = active_pods(&store).await;
        finish(&store, &clock, &pods[0], 0).await;
    }
    eventually(Duration::from_secs(5), "complete", || async {
        condition(&api.get("count").await.unwrap()) == Some(("Complete".into(), String::new()))
    })
    .await;
    let s = api.get("count").await.unwrap().status.clone().unwrap();
    assert_eq!(
        (s.succeeded, s.active, s.failed),
        (Some(5), Some(0), Some(0))
    );
    assert!(s.completion_time.is_some() && s.start_time.is_some());
    assert!(active_pods(&store).await.is_empty(), "no pod left running");
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert!(api.get_opt("count").await.unwrap().is_some());
    eventually(Duration::from_secs(20), "deleted after ttl", || async {
        api.get_opt("count").await.unwrap().is_none()
    })
    .await;
    eventually(Duration::from_secs(5), "pods collected", || async {
        list(&store, Kind::Pod).await.is_empty()
    })
    .await;
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_until_the_backoff_limit() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<Job> = Api::namespaced(store.clone(), "default");
    let mut j = job("flaky", Some(1), 1);
    j.spec.as_mut().unwrap().backoff_limit = Some(3);
    api.create(j).await.unwrap();
    let start = tokio::time::Instant::now();
    let mut created_at = Vec::new();
    for _ in 0..4 {
        eventually(Duration::from_secs(400), "a pod", || async {
            active_pods(&store).await.len() == 1
        })
        .await;
        created_at.push(start.elapsed().as_secs());
        let pod = active_pods(&store).await.remove(0);
        finish(&store, &clock, &pod, 1).await;
    }
    // Replacement pods after 10 s, 20 s, 40 s (polling adds < 1 s).
    let gaps: Vec<u64> = created_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [10, 20, 40], "created at {created_at:?}");
    eventually(Duration::from_secs(5), "failed", || async {
        condition(&api.get("flaky").await.unwrap())
            == Some(("Failed".into(), "BackoffLimitExceeded".into()))
    })
    .await;
    assert_eq!(
        api.get("flaky")
            .await
            .unwrap()
            .status
            .as_ref()
            .unwrap()
            .failed,
        Some(4)
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn indexed_job_runs_each_index_and_pod_failure_policy_fails_fast() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<Job> = Api::namespaced(store.clone(), "default");
    let mut j = job("idx", Some(3), 3);
    j.spec.as_mut().unwrap().completion_mode = Some("Indexed".into());
    api.create(j).await.unwrap();
    eventually(Duration::from_secs(5), "3 pods", || async {
        active_pods(&store).await.len() == 3
    })
    .await;
    let mut indexes: Vec<String> = active_pods(&store)
        .await
        .iter()
        .map(|p| p.meta().annotations.as_ref().unwrap()[COMPLETION_INDEX].clone())
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);
    let pods = active_pods(&store).await;
    let by_index = |i: &str| {
        pods.iter()
            .find(|p| p.meta().annotations.as_ref().unwrap()[COMPLETION_INDEX] == i)
            .unwrap()
            .clone()
    };
    let env = by_index("1")
        .as_kind::<Pod>()
        .unwrap()
        .spec
        .clone()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap();
    assert!(env
        .iter()
        .any(|e| e.name == "JOB_COMPLETION_INDEX" && e.value.as_deref() == Some("1")));
    finish(&store, &clock, &by_index("0"), 0).await;
    finish(&store, &clock, &by_index("2"), 0).await;
    eventually(Duration::from_secs(5), "completed indexes", || async {
        api.get("idx")
            .await
            .unwrap()
            .status
            .as_ref()
            .and_then(|s| s.completed_indexes.clone())
            == Some("0,2".into())
    })
    .await;
    finish(&store, &clock, &by_index("1"), 0).await;
    eventually(Duration::from_secs(5), "complete", || async {
        let j = api.get("idx").await.unwrap();
        condition(&j).map(|c| c.0) == Some("Complete".into())
            && j.status.as_ref().unwrap().completed_indexes.as_deref() == Some("0-2")
    })
    .await;

    // A FailJob rule on exit code 42 fails the Job at the first such failure.
    let mut j = job("policy", Some(2), 2);
    j.spec.as_mut().unwrap().pod_failure_policy = Some(PodFailurePolicy {
        rules: vec![PodFailurePolicyRule {
            action: "FailJob".into(),
            on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                container_name: Some("app".into()),
                operator: "In".into(),
                values: vec![42],
            }),
            on_pod_conditions: None,
        }],
    });
    api.create(j).await.unwrap();
    eventually(Duration::from_secs(5), "2 pods", || async {
        active_pods(&store).await.len() == 2
    })
    .await;
    let pod = active_pods(&store).await.remove(0);
    finish(&store, &clock, &pod, 42).await;
    eventually(Duration::from_secs(5), "failed by policy", || async {
        condition(&api.get("policy").await.unwrap())
            == Some(("Failed".into(), "PodFailurePolicy".into()))
    })
    .await;
    assert!(
        active_pods(&store).await.is_empty(),
        "the other pod was stopped"
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn active_deadline_fails_the_job() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<Job> = Api::namespaced(store.clone(), "default");
    let mut j = job("slow", Some(1), 1);
    j.spec.as_mut().unwrap().active_deadline_seconds = Some(60);
    api.create(j).await.unwrap();
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(active_pods(&store).await.len(), 1);
    eventually(Duration::from_secs(5), "deadline exceeded", || async {
        condition(&api.get("slow").await.unwrap())
            == Some(("Failed".into(), "DeadlineExceeded".into()))
    })
    .await;
    assert!(active_pods(&store).await.is_empty());
    shutdown.cancel();
}

//! CronJob controller under tokio's paused clock. The store's clock starts at
//! 2027-01-15T08:00:00Z; Jobs are finished by writing their status (no Job controller runs).

mod controller_support;

use std::sync::Arc;
use std::time::Duration;

use controller_support::*;
use k8s_openapi::api::batch::v1::{
    CronJob, CronJobSpec, Job, JobCondition, JobSpec, JobStatus, JobTemplateSpec,
};
use k8s_openapi::api::core::v1::Event;
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::controllers::cronjob::{CronJobController, SCHEDULED_TIMESTAMP};
use wharf_core::store::{Api, ListOptions, Store};
use wharf_core::{Clock, Kind, Object};

const MINUTE: Duration = Duration::from_secs(60);

fn start(store: &Arc<dyn Store>, clock: Clock) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(CronJobController::controller().run(ctx, shutdown.clone()));
    shutdown
}

fn cronjob(name: &str, schedule: &str, edit: impl FnOnce(&mut CronJobSpec)) -> CronJob {
    let mut t = template(&[("cron", name)], "busybox");
    t.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    let mut spec = CronJobSpec {
        schedule: schedule.into(),
        job_template: JobTemplateSpec {
            metadata: Some(Default::default()),
            spec: Some(JobSpec {
                template: t,
                ..Default::default()
            }),
        },
        ..Default::default()
    };
    edit(&mut spec);
    let mut cj = CronJob::default();
    cj.metadata.name = Some(name.into());
    cj.metadata.namespace = Some("default".into());
    cj.spec = Some(spec);
    cj
}

/// Jobs in creation order (their names grow with the scheduled minute).
async fn jobs(store: &Arc<dyn Store>) -> Vec<Job> {
    let mut jobs: Vec<Job> = list(store, Kind::Job)
        .await
        .iter()
        .filter(|j| j.meta().deletion_timestamp.is_none())
        .map(|j| j.as_kind::<Job>().unwrap().clone())
        .collect();
    jobs.sort_by_key(|j| j.metadata.name.clone());
    jobs
}

fn names(jobs: &[Job]) -> Vec<String> {
    jobs.iter()
        .map(|j| j.metadata.name.clone().unwrap())
        .collect()
}

/// Marks a Job finished (`Complete` or `Failed`) now.
async fn finish(store: &Arc<dyn Store>, clock: &Clock, job: &Job, kind: &str) {
    let mut j = job.clone();
    j.status = Some(JobStatus {
        start_time: j.metadata.creation_timestamp.clone(),
        completion_time: (kind == "Complete").then(|| clock.now_k8s()),
        conditions: Some(vec![JobCondition {
            type_: kind.into(),
            status: "True".into(),
            last_transition_time: Some(clock.now_k8s()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    store.update_status(Object::from(j)).await.unwrap();
}

async fn events(store: &Arc<dyn Store>, reason: &str) -> Vec<Event> {
    store
        .list(&Kind::Event, &ListOptions::namespace("default"))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|e| e.as_kind::<Event>().cloned())
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
    // Let the woken reconcile run to completion.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(start_paused = true)]
async fn creates_a_job_per_minute_named_by_the_scheduled_minute() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<CronJob> = Api::namespaced(store.clone(), "default");
    api.create(cronjob("tick", "* * * * *", |_| {}))
        .await
        .unwrap();
    advance(Duration::from_secs(1)).await;
    assert!(
        jobs(&store).await.is_empty(),
        "nothing is due before the first minute"
    );

    advance(MINUTE).await;
    let js = jobs(&store).await;
    // 2027-01-15T08:01:00Z is minute 30,000,001 since the epoch.
    assert_eq!(names(&js), ["tick-30000001"]);
    let annotations = js[0].metadata.annotations.clone().unwrap();
    assert_eq!(annotations[SCHEDULED_TIMESTAMP], "2027-01-15T08:01:00Z");
    let owner = &js[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CronJob", Some(true))
    );
    let cj = api.get("tick").await.unwrap();
    let status = cj.status.clone().unwrap();
    assert_eq!(status.active.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        status.last_schedule_time.unwrap().0.as_second(),
        1_800_000_060
    );

    // Allow (the default) runs the next one beside the running one.
    advance(MINUTE).await;
    assert_eq!(
        names(&jobs(&store).await),
        ["tick-30000001", "tick-30000002"]
    );
    let js = jobs(&store).await;
    finish(&store, &clock, &js[0], "Complete").await;
    advance(Duration::from_secs(1)).await;
    let status = api.get("tick").await.unwrap().status.clone().unwrap();
    assert_eq!(status.active.as_ref().map(Vec::len), Some(1));
    assert!(status.last_successful_time.is_some());
    assert_eq!(events(&store, "SawCompletedJob").await.len(), 1);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn forbid_skips_overlapping_runs_and_replace_deletes_the_running_job() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<CronJob> = Api::namespaced(store.clone(), "default");
    api.create(cronjob("forbid", "* * * * *", |s| {
        s.concurrency_policy = Some("Forbid".into());
        s.starting_deadline_seconds = Some(10);
    }))
    .await
    .unwrap();
    api.create(cronjob("replace", "* * * * *", |s| {
        s.concurrency_policy = Some("Replace".into())
    }))
    .await
    .unwrap();
    advance(MINUTE).await;
    advance(MINUTE * 3).await;
    let js = jobs(&store).await;
    let forbid: Vec<String> = names(&js)
        .into_iter()
        .filter(|n| n.starts_with("forbid"))
        .collect();
    let replace: Vec<String> = names(&js)
        .into_iter()
        .filter(|n| n.starts_with("replace"))
        .collect();
    // Forbid: the first run still runs, the three later times were skipped.
    assert_eq!(forbid, ["forbid-30000001"]);
    // Replace: only the latest run is left; the earlier ones were deleted.
    assert_eq!(replace, ["replace-30000004"]);
    assert_eq!(events(&store, "SuccessfulDelete").await.len(), 3);

    // When the forbidding run finishes one second after 08:04, the 08:04 run is still inside
    // its 10 s starting deadline and starts at once, as in Kubernetes.
    let first = js
        .iter()
        .find(|j| j.metadata.name.as_deref() == Some("forbid-30000001"))
        .unwrap();
    finish(&store, &clock, first, "Complete").await;
    advance(Duration::from_secs(1)).await;
    let forbid: Vec<String> = names(&jobs(&store).await)
        .into_iter()
        .filter(|n| n.starts_with("forbid"))
        .collect();
    assert_eq!(forbid, ["forbid-30000001", "forbid-30000004"]);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn suspend_stops_new_runs_until_resumed() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<CronJob> = Api::namespaced(store.clone(), "default");
    api.create(cronjob("paused", "*/5 * * * *", |s| {
        s.suspend = Some(true);
        s.starting_deadline_seconds = Some(30);
    }))
    .await
    .unwrap();
    advance(MINUTE * 12).await;
    assert!(jobs(&store).await.is_empty());

    // Resumed at 08:12: the 08:10 run is outside the 30 s deadline, so the next is 08:15.
    let mut cj = (*api.get("paused").await.unwrap()).clone();
    cj.spec.as_mut().unwrap().suspend = Some(false);
    api.update(cj).await.unwrap();
    advance(Duration::from_secs(1)).await;
    assert!(jobs(&store).await.is_empty());
    advance(MINUTE * 3).await;
    assert_eq!(names(&jobs(&store).await), ["paused-30000015"]);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn history_limits_keep_three_successful_and_one_failed_job() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<CronJob> = Api::namespaced(store.clone(), "default");
    api.create(cronjob("history", "* * * * *", |_| {}))
        .await
        .unwrap();
    for minute in 1..=7 {
        advance(MINUTE).await;
        let js = jobs(&store).await;
        let newest = js.last().unwrap();
        assert_eq!(
            newest.metadata.name.as_deref(),
            Some(format!("history-{}", 30_000_000 + minute).as_str())
        );
        // Minutes 1-5 succeed, 6-7 fail.
        let outcome = if minute <= 5 { "Complete" } else { "Failed" };
        finish(&store, &clock, newest, outcome).await;
    }
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        names(&jobs(&store).await),
        [
            "history-30000003",
            "history-30000004",
            "history-30000005",
            "history-30000007"
        ]
    );
    let status = api.get("history").await.unwrap().status.clone().unwrap();
    assert!(status.active.is_none());
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn time_zone_moves_the_schedule_and_the_annotation() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<CronJob> = Api::namespaced(store.clone(), "default");
    // 10:00 in Tokyo is 01:00 UTC; 09:00 in Paris is 08:00 UTC (already past at 08:00:00).
    api.create(cronjob("paris", "30 9 * * *", |s| {
        s.time_zone = Some("Europe/Paris".into())
    }))
    .await
    .unwrap();
    api.create(cronjob("utc", "30 9 * * *", |_| {}))
        .await
        .unwrap();
    advance(MINUTE * 31).await;
    // 09:30 Paris = 08:30 UTC has run; 09:30 UTC has not.
    let js = jobs(&store).await;
    assert_eq!(names(&js), ["paris-30000030"]);
    assert_eq!(
        js[0].metadata.annotations.as_ref().unwrap()[SCHEDULED_TIMESTAMP],
        "2027-01-15T09:30:00+01:00"
    );
    advance(MINUTE * 60).await;
    assert_eq!(
        names(&jobs(&store).await),
        ["paris-30000030", "utc-30000090"]
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_bad_schedule_or_zone_is_a_warning_event_not_a_panic() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    let api: Api<CronJob> = Api::namespaced(store.clone(), "default");
    api.create(cronjob("bad-schedule", "every minute", |_| {}))
        .await
        .unwrap();
    api.create(cronjob("bad-zone", "* * * * *", |s| {
        s.time_zone = Some("Mars/Olympus_Mons".into())
    }))
    .await
    .unwrap();
    advance(MINUTE * 2).await;
    assert!(jobs(&store).await.is_empty());
    let bad = events(&store, "UnparseableSchedule").await;
    assert_eq!(bad.len(), 1);
    assert!(bad[0].message.as_deref().unwrap().contains("every minute"));
    assert_eq!(bad[0].type_.as_deref(), Some("Warning"));
    let zone = events(&store, "UnknownTimeZone").await;
    assert_eq!(zone.len(), 1);
    assert!(zone[0]
        .message
        .as_deref()
        .unwrap()
        .contains("Mars/Olympus_Mons"));

    // Fixing the schedule starts runs.
    let mut cj = (*api.get("bad-schedule").await.unwrap()).clone();
    cj.spec.as_mut().unwrap().schedule = "@hourly".into();
    api.update(cj).await.unwrap();
    advance(MINUTE * 60).await;
    assert_eq!(names(&jobs(&store).await), ["bad-schedule-30000060"]);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn more_than_100_missed_times_start_only_the_latest_with_a_warning() {
    let (store, clock) = store();
    let api: Api<CronJob> = Api::namespaced(store.clone(), "default");
    api.create(cronjob("late", "* * * * *", |_| {}))
        .await
        .unwrap();
    // The controller starts three hours late.
    tokio::time::sleep(Duration::from_secs(3 * 3600 + 1)).await;
    let shutdown = start(&store, clock);
    advance(Duration::from_secs(1)).await;
    assert_eq!(names(&jobs(&store).await), ["late-30000180"]);
    assert_eq!(events(&store, "TooManyMissedTimes").await.len(), 1);
    shutdown.cancel();
}

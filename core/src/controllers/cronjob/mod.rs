//! The CronJob controller: creates a Job at each scheduled time.
//!
//! Each reconcile does what Kubernetes' `cronjob-controller` (v2) does:
//!
//! 1. `status.active` is rebuilt from the Jobs the CronJob controls that have not finished;
//!    `status.lastSuccessfulTime` follows the latest completion.
//! 2. Finished Jobs beyond `successfulJobsHistoryLimit` (default 3) and
//!    `failedJobsHistoryLimit` (default 1) are deleted, oldest first.
//! 3. Unless `suspend` is set, the most recent scheduled time since `lastScheduleTime` (or the
//!    CronJob's creation) is found. With `startingDeadlineSeconds`, only times inside the
//!    deadline count; a time older than the deadline is a missed start (a `MissSchedule`
//!    event). More than 100 missed times are reported (`TooManyMissedTimes`) and only the
//!    latest runs.
//! 4. `concurrencyPolicy`: `Allow` (default) starts the Job beside running ones, `Forbid` skips
//!    the start while one runs (it starts when the running one finishes, if still inside the
//!    deadline), `Replace` deletes the running Jobs first.
//! 5. The Job is named `<cronjob>-<scheduled time in minutes since the epoch>`, so a retried
//!    reconcile can never start a scheduled time twice, and carries the annotation
//!    `batch.kubernetes.io/cronjob-scheduled-timestamp` (RFC 3339 in the CronJob's zone).
//! 6. The CronJob is requeued just after its next scheduled time, on the [`Clock`], so that it
//!    runs under tokio's paused time as under real time.
//!
//! A schedule or time zone that cannot be parsed is reported as a Warning event
//! (`UnparseableSchedule`, `UnknownTimeZone`) and the CronJob waits for a fix.
//!
//! [`Clock`]: crate::clock::Clock

mod schedule;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;

pub use schedule::{Schedule, ScheduleError};

use super::events::{object_reference, record, EventType};
use super::ownership::controller_reference;
use crate::clock::{from_k8s_time, to_k8s_time};
use crate::controller::{Action, Context, Controller, ControllerError, Observed, Reconciler};
use crate::object::{Kind, Object, Resource, Typed};
use crate::store::{DeleteOptions, StoreError};

/// Annotation with the scheduled time a CronJob's Job was created for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Missed scheduled times beyond which only the latest is started, with a warning.
pub const MAX_MISSED_SCHEDULES: usize = 100;
/// Delay after a scheduled time before the reconcile that starts it (Kubernetes' 100 ms).
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);
/// The component name on the controller's events.
const COMPONENT: &str = "cronjob-controller";

/// Records an event about the CronJob from this controller.
async fn note(ctx: &Context, cronjob: &Object, type_: EventType, reason: &str, message: &str) {
    record(ctx, COMPONENT, cronjob, type_, reason, message).await;
}

/// The CronJob reconciler.
#[derive(Default)]
pub struct CronJobController;

impl CronJobController {
    /// The controller, ready to run.
    pub fn controller() -> Controller<CronJobController> {
        Controller::new("cronjob", Kind::CronJob, CronJobController).owns(Kind::Job)
    }
}

/// `Complete` or `Failed`, when the Job has finished.
fn finished(job: &Job) -> Option<&str> {
    super::job::finished_condition(job).map(|c| c.type_.as_str())
}

/// When a Job started, for history ordering: its startTime, else its creation.
fn started(job: &Job) -> SystemTime {
    job.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map(from_k8s_time)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The name of the Job for `scheduled`: `<cronjob>-<minutes since the epoch>`.
pub fn job_name(cronjob: &str, scheduled: SystemTime) -> String {
    let minutes = scheduled
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0);
    format!("{cronjob}-{minutes}")
}

/// Which scheduled time to start now, as found by [`most_recent_schedule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// The most recent scheduled time not yet started.
    pub scheduled: SystemTime,
    /// How many scheduled times were missed since the last start (at most
    /// `MAX_MISSED_SCHEDULES + 1` are counted).
    pub missed: usize,
}

/// The most recent scheduled time in `(earliest, now]`, where `earliest` is the last scheduled
/// time (or the creation) moved forward to `now − startingDeadlineSeconds` when that is later.
pub fn most_recent_schedule(
    schedule: &Schedule,
    last: SystemTime,
    deadline: Option<Duration>,
    now: SystemTime,
) -> Option<Due> {
    let mut earliest = last;
    if let Some(deadline) = deadline {
        if let Some(window_start) = now.checked_sub(deadline) {
            earliest = earliest.max(window_start);
        }
    }
    if earliest >= now {
        return None;
    }
    let scheduled = schedule.latest_at_or_before(now)?;
    if scheduled <= earliest {
        return None;
    }
    let missed = schedule.count_between(earliest, now, MAX_MISSED_SCHEDULES + 1);
    Some(Due { scheduled, missed })
}

#[async_trait]
impl Reconciler for CronJobController {
    type Error = ControllerError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error> {
        let Some(cronjob) = Typed::<CronJob>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        if cronjob.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let now = ctx.clock.now();
        let spec = cronjob.spec.clone().unwrap_or_default();
        let jobs_informer = ctx.informers.synced(&Kind::Job).await;
        let owned: Vec<Arc<Object>> = jobs_informer.owned_by(object.uid());
        let old_status = cronjob.status.clone().unwrap_or_default();
        let mut status = old_status.clone();

        // 1. Active Jobs and the last success.
        let old_active: BTreeMap<String, ObjectReference> = old_status
            .active
            .iter()
            .flatten()
            .filter_map(|r| Some((r.uid.clone()?, r.clone())))
            .collect();
        let mut active: Vec<Arc<Object>> = Vec::new();
        let mut successful: Vec<(SystemTime, Arc<Object>)> = Vec::new();
        let mut failed: Vec<(SystemTime, Arc<Object>)> = Vec::new();
        for o in &owned {
            let Some(job) = o.as_kind::<Job>() else {
                continue;
            };
            match finished(job) {
                Some(kind) => {
                    if kind == "Complete" {
                        let done = job.status.as_ref().and_then(|s| s.completion_time.clone());
                        if let Some(done) = done {
                            if status
                                .last_successful_time
                                .as_ref()
                                .is_none_or(|t| t.0 < done.0)
                            {
                                status.last_successful_time = Some(done);
                            }
                        }
                        successful.push((started(job), o.clone()));
                    } else {
                        failed.push((started(job), o.clone()));
                    }
                    if old_active.contains_key(o.uid()) {
                        let message = format!("Saw completed job: {}, condition: {kind}", o.name());
                        note(ctx, &object, EventType::Normal, "SawCompletedJob", &message).await;
                    }
                }
                None if o.meta().deletion_timestamp.is_none() => active.push(o.clone()),
                None => {}
            }
        }

        // 2. History limits.
        let keep_ok = spec.successful_jobs_history_limit.unwrap_or(3).max(0) as usize;
        let keep_failed = spec.failed_jobs_history_limit.unwrap_or(1).max(0) as usize;
        self.trim_history(ctx, &object, successful, keep_ok).await?;
        self.trim_history(ctx, &object, failed, keep_failed).await?;

        let finish = |status: CronJobStatus, active: &[Arc<Object>]| {
            let mut status = status;
            status.active = Some(
                active
                    .iter()
                    .map(|j| {
                        old_active
                            .get(j.uid())
                            .cloned()
                            .unwrap_or_else(|| object_reference(j))
                    })
                    .collect(),
            )
            .filter(|a: &Vec<ObjectReference>| !a.is_empty());
            status
        };

        // 3. What is due.
        let schedule = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                let reason = match e {
                    ScheduleError::Unparseable { .. } => "UnparseableSchedule",
                    ScheduleError::UnknownTimeZone { .. } => "UnknownTimeZone",
                };
                note(ctx, &object, EventType::Warning, reason, &e.to_string()).await;
                self.write_status(ctx, &object, &cronjob, finish(status, &active))
                    .await?;
                return Ok(Action::AwaitChange);
            }
        };
        if spec.suspend == Some(true) {
            self.write_status(ctx, &object, &cronjob, finish(status, &active))
                .await?;
            return Ok(Action::AwaitChange);
        }
        let requeue = || match schedule.next_after(now) {
            Some(next) => {
                Action::requeue(next.duration_since(now).unwrap_or_default() + NEXT_SCHEDULE_DELTA)
            }
            None => Action::AwaitChange,
        };
        let last = status
            .last_schedule_time
            .as_ref()
            .or(cronjob.metadata.creation_timestamp.as_ref())
            .map(from_k8s_time)
            .unwrap_or(now);
        let deadline = spec
            .starting_deadline_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64));
        let Some(due) = most_recent_schedule(&schedule, last, deadline, now) else {
            self.write_status(ctx, &object, &cronjob, finish(status, &active))
                .await?;
            return Ok(requeue());
        };
        if due.missed > MAX_MISSED_SCHEDULES {
            let message = format!(
                "too many missed start times (more than {MAX_MISSED_SCHEDULES}): only the latest starts; set or decrease .spec.startingDeadlineSeconds or check clock skew"
            );
            note(
                ctx,
                &object,
                EventType::Warning,
                "TooManyMissedTimes",
                &message,
            )
            .await;
        }
        if deadline.is_some_and(|d| due.scheduled + d < now) {
            let message = format!(
                "Missed scheduled time to start a job: {}",
                schedule.format_rfc3339(due.scheduled)
            );
            note(ctx, &object, EventType::Warning, "MissSchedule", &message).await;
            self.write_status(ctx, &object, &cronjob, finish(status, &active))
                .await?;
            return Ok(requeue());
        }
        let name = job_name(object.name(), due.scheduled);
        if owned.iter().any(|j| j.name() == name) {
            // Started already (the status write that recorded it may have been lost).
            status.last_schedule_time = Some(to_k8s_time(due.scheduled));
            self.write_status(ctx, &object, &cronjob, finish(status, &active))
                .await?;
            return Ok(requeue());
        }

        // 4. Concurrency.
        match spec.concurrency_policy.as_deref() {
            Some("Forbid") if !active.is_empty() => {
                tracing::debug!(cronjob = %object.display_name(), "not starting: a job is still running and concurrencyPolicy is Forbid");
                self.write_status(ctx, &object, &cronjob, finish(status, &active))
                    .await?;
                return Ok(requeue());
            }
            Some("Replace") => {
                for job in std::mem::take(&mut active) {
                    self.delete_job(ctx, &object, &job).await?;
                    let message = format!("Deleted job {}", job.name());
                    note(
                        ctx,
                        &object,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &message,
                    )
                    .await;
                }
            }
            _ => {}
        }

        // 5. Start the Job.
        let job = self.job(&object, &cronjob, &schedule, &name, due.scheduled);
        let created = match ctx.store.create(job.into_object()).await {
            Ok(created) => created,
            Err(StoreError::AlreadyExists { .. }) => {
                // Someone else's Job holds the name; a Job of ours would have been in `owned`.
                let message = format!("job {name} exists and is not controlled by this CronJob");
                note(ctx, &object, EventType::Warning, "FailedCreate", &message).await;
                return Ok(requeue());
            }
            Err(e) => {
                let message = format!("Error creating job: {e}");
                note(ctx, &object, EventType::Warning, "FailedCreate", &message).await;
                return Err(ControllerError::store("create job for", &object, e));
            }
        };
        jobs_informer
            .wait_observed(&Observed::Written(created.clone()))
            .await;
        let message = format!("Created job {name}");
        note(
            ctx,
            &object,
            EventType::Normal,
            "SuccessfulCreate",
            &message,
        )
        .await;
        active.push(created);
        status.last_schedule_time = Some(to_k8s_time(due.scheduled));
        self.write_status(ctx, &object, &cronjob, finish(status, &active))
            .await?;
        Ok(requeue())
    }
}

impl CronJobController {
    fn job(
        &self,
        object: &Object,
        cronjob: &CronJob,
        schedule: &Schedule,
        name: &str,
        scheduled: SystemTime,
    ) -> Job {
        let template = cronjob
            .spec
            .as_ref()
            .map(|s| s.job_template.clone())
            .unwrap_or_default();
        let mut job = Job::default();
        if let Some(meta) = template.metadata {
            job.metadata.labels = meta.labels;
            job.metadata.annotations = meta.annotations;
        }
        job.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(
                SCHEDULED_TIMESTAMP.into(),
                schedule.format_rfc3339(scheduled),
            );
        job.metadata.name = Some(name.to_string());
        job.metadata.namespace = object.namespace().map(str::to_string);
        job.metadata.owner_references = Some(vec![controller_reference(object)]);
        job.spec = template.spec;
        job
    }

    /// Deletes the oldest of `finished` (start time, Job) beyond `keep`.
    async fn trim_history(
        &self,
        ctx: &Context,
        owner: &Object,
        mut finished: Vec<(SystemTime, Arc<Object>)>,
        keep: usize,
    ) -> Result<(), ControllerError> {
        if finished.len() <= keep {
            return Ok(());
        }
        finished.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name().cmp(b.1.name())));
        let excess = finished.len() - keep;
        for (_, job) in finished.into_iter().take(excess) {
            if job.meta().deletion_timestamp.is_none() {
                self.delete_job(ctx, owner, &job).await?;
            }
        }
        Ok(())
    }

    /// Deletes a Job in the background (the garbage collector removes its pods).
    async fn delete_job(
        &self,
        ctx: &Context,
        owner: &Object,
        job: &Object,
    ) -> Result<(), ControllerError> {
        let options = DeleteOptions {
            precondition_uid: Some(job.uid().to_string()),
            ..Default::default()
        };
        match ctx
            .store
            .delete(&Kind::Job, job.namespace(), job.name(), &options)
            .await
        {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => {
                tracing::debug!(cronjob = %owner.display_name(), job = %job.name(), error = %e, "delete failed");
                Err(ControllerError::store("delete job", job, e))
            }
        }
    }

    async fn write_status(
        &self,
        ctx: &Context,
        object: &Object,
        cronjob: &CronJob,
        status: CronJobStatus,
    ) -> Result<(), ControllerError> {
        if cronjob.status.clone().unwrap_or_default() == status {
            return Ok(());
        }
        let mut updated = cronjob.clone();
        updated.status = Some(status);
        let written = ctx
            .store
            .update_status(updated.into_object())
            .await
            .map_err(|e| ControllerError::store("update status of", object, e))?;
        ctx.informers
            .get(&Kind::CronJob)
            .wait_observed(&Observed::Written(written))
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }
    const T: u64 = 1_800_000_000;

    #[test]
    fn job_names_count_minutes_since_the_epoch() {
        assert_eq!(job_name("report", at(T)), "report-30000000");
    }

    #[test]
    fn most_recent_schedule_counts_missed_times() {
        let every_minute = Schedule::parse("* * * * *", None).unwrap();
        // Nothing due yet.
        assert_eq!(
            most_recent_schedule(&every_minute, at(T), None, at(T + 30)),
            None
        );
        // Three missed: only the latest is due.
        let due = most_recent_schedule(&every_minute, at(T), None, at(T + 190)).unwrap();
        assert_eq!(
            due,
            Due {
                scheduled: at(T + 180),
                missed: 3
            }
        );
        // A day missed: more than 100, still the latest.
        let due = most_recent_schedule(&every_minute, at(T), None, at(T + 86_400)).unwrap();
        assert_eq!(due.scheduled, at(T + 86_400));
        assert_eq!(due.missed, MAX_MISSED_SCHEDULES + 1);
        // With a 10-minute deadline only the times inside it count.
        let deadline = Some(Duration::from_secs(600));
        let due = most_recent_schedule(&every_minute, at(T), deadline, at(T + 86_400)).unwrap();
        assert_eq!(due.missed, 10);
    }
}

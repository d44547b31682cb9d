//! The Job controller: runs pods until `completions` of them succeed.
//!
//! - `parallelism` (default 1) bounds the active pods; `completions` (default: the first
//!   success completes the Job once no pod runs) counts successes.
//! - `completionMode: Indexed` gives each pod an index (label and annotation
//!   `batch.kubernetes.io/job-completion-index`, env `JOB_COMPLETION_INDEX`, hostname
//!   `<job>-<index>`) and completes when every index in `0..completions` succeeded;
//!   `status.completedIndexes` lists them in Kubernetes' compressed form (`0-2,5`).
//! - Failed pods count toward `backoffLimit` (default 6; container restarts of
//!   `restartPolicy: OnFailure` pods count too). After a failure, replacement pods wait
//!   10 s × 2^(failures−1), at most 6 minutes, after the last failure.
//! - `podFailurePolicy`: the first rule matching a failed pod (`onExitCodes` with `In`/`NotIn`,
//!   optionally for one container; `onPodConditions`) decides: `FailJob` fails the Job,
//!   `Ignore` does not count the failure, `Count` counts it.
//! - `activeDeadlineSeconds` fails the Job (`DeadlineExceeded`) once it ran that long.
//! - A finished Job (`Complete` or `Failed` condition) has its active pods deleted; with
//!   `ttlSecondsAfterFinished` it is deleted (foreground) that long after it finished.
//!
//! Pods belong to the Job through their controller ownerReference; the controller does not
//! adopt orphans (the Job's generated selector matches only its own uid).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, PodFailurePolicyRule};
use k8s_openapi::api::core::v1::{EnvVar, Pod};

use super::pod_state::{deletion_order, is_active, is_ready, phase};
use super::replicaset::{create_pods, delete_pods, pod_from_template};
use crate::clock::{from_k8s_time, to_k8s_time};
use crate::controller::{Action, Context, Controller, ControllerError, Reconciler};
use crate::object::{Kind, Object, Resource, Typed};
use crate::store::{DeleteOptions, Propagation, StoreError};

/// Label and annotation with an Indexed Job pod's index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Label with the Job's name on its pods.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// Label with the Job's uid on its pods.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

/// First delay before recreating a pod after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest delay before recreating a pod after failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// The Job reconciler.
#[derive(Default)]
pub struct JobController;

impl JobController {
    /// The controller, ready to run.
    pub fn controller() -> Controller<JobController> {
        Controller::new("job", Kind::Job, JobController).owns(Kind::Pod)
    }
}

/// The delay before the next pod after `failures` failures.
pub fn recreation_backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    BACKOFF_BASE
        .saturating_mul(1 << (failures - 1).min(16))
        .min(BACKOFF_MAX)
}

/// Kubernetes' compressed form of a set of indexes: `0-2,5,7-8`.
pub fn compress_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX)?
        .parse()
        .ok()
}

/// When a failed pod failed: its last container finish time, else its creation.
fn failed_at(pod: &Pod) -> SystemTime {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(from_k8s_time)
        .max()
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(from_k8s_time))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// What the pod failure policy says about a failed pod.
enum Verdict {
    FailJob(String),
    Ignore,
    Count,
}

fn judge(rules: &[PodFailurePolicyRule], pod: &Pod) -> Verdict {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    for (i, rule) in rules.iter().enumerate() {
        let matched = if let Some(req) = &rule.on_exit_codes {
            pod.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .filter(|c| req.container_name.as_ref().is_none_or(|n| *n == c.name))
                .find_map(|c| {
                    let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
                    let listed = req.values.contains(&code);
                    let hit = code != 0
                        && match req.operator.as_str() {
                            "In" => listed,
                            "NotIn" => !listed,
                            _ => false,
                        };
                    hit.then(|| {
                        format!(
                            "Container {} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {i}",
                            c.name, rule.action
                        )
                    })
                })
        } else {
            rule.on_pod_conditions.iter().flatten().find_map(|pattern| {
                let status = pattern.status.as_str();
                super::pod_state::condition(pod, &pattern.type_)
                    .filter(|c| c.status == if status.is_empty() { "True" } else { status })
                    .map(|_| {
                        format!(
                            "Pod {ns}/{name} has condition {} matching {} rule at index {i}",
                            pattern.type_, rule.action
                        )
                    })
            })
        };
        if let Some(message) = matched {
            return match rule.action.as_str() {
                "FailJob" => Verdict::FailJob(message),
                "Ignore" => Verdict::Ignore,
                _ => Verdict::Count,
            };
        }
    }
    Verdict::Count
}

pub(crate) fn finished_condition(job: &Job) -> Option<&JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

#[async_trait]
impl Reconciler for JobController {
    type Error = ControllerError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error> {
        let Some(job) = Typed::<Job>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        let now = ctx.clock.now();
        if let Some(done) = finished_condition(&job) {
            return self.finished(ctx, &object, &job, done, now).await;
        }
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let spec = job.spec.clone().unwrap_or_default();
        let pods_informer = ctx.informers.synced(&Kind::Pod).await;
        let pods: Vec<Arc<Object>> = pods_informer.owned_by(object.uid());
        let typed = |o: &Arc<Object>| o.as_kind::<Pod>().cloned();
        let all: Vec<Pod> = pods.iter().filter_map(typed).collect();
        let active: Vec<&Arc<Object>> = pods
            .iter()
            .filter(|p| p.as_kind::<Pod>().is_some_and(is_active))
            .collect();
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let completions = spec.completions;
        let backoff_limit = spec.backoff_limit.unwrap_or(6).max(0);
        let rules = spec
            .pod_failure_policy
            .as_ref()
            .map(|p| p.rules.clone())
            .unwrap_or_default();

        let succeeded_pods: Vec<&Pod> = all.iter().filter(|p| phase(p) == "Succeeded").collect();
        let mut failed = 0i32;
        let mut last_failure = None;
        let mut fail_job = None;
        for pod in all.iter().filter(|p| phase(p) == "Failed") {
            match judge(&rules, pod) {
                Verdict::FailJob(message) => fail_job = fail_job.or(Some(message)),
                Verdict::Ignore => {}
                Verdict::Count => {
                    failed += 1;
                    let at = failed_at(pod);
                    last_failure = Some(last_failure.map_or(at, |l: SystemTime| l.max(at)));
                }
            }
        }
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        let restarts: i32 = if on_failure {
            active
                .iter()
                .filter_map(|p| {
                    p.as_kind::<Pod>()?
                        .status
                        .as_ref()?
                        .container_statuses
                        .clone()
                })
                .flatten()
                .map(|c| c.restart_count)
                .sum()
        } else {
            0
        };
        let succeeded_indexes: BTreeSet<i32> = succeeded_pods
            .iter()
            .filter_map(|p| index_of(p))
            .filter(|i| completions.is_none_or(|c| *i < c))
            .collect();
        let succeeded = if indexed {
            succeeded_indexes.len() as i32
        } else {
            succeeded_pods.len() as i32
        };

        let start_time = job
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .unwrap_or_else(|| to_k8s_time(now));
        let mut status = JobStatus {
            start_time: Some(start_time.clone()),
            succeeded: Some(succeeded),
            failed: Some(failed),
            completed_indexes: indexed.then(|| compress_indexes(&succeeded_indexes)),
            conditions: job.status.as_ref().and_then(|s| s.conditions.clone()),
            ..Default::default()
        };

        // Decide whether the Job is finished.
        let deadline = spec
            .active_deadline_seconds
            .map(|s| from_k8s_time(&start_time) + Duration::from_secs(s.max(0) as u64));
        let complete = if indexed {
            completions.is_some_and(|c| succeeded >= c)
        } else {
            match completions {
                Some(c) => succeeded >= c,
                None => succeeded > 0 && active.is_empty(),
            }
        };
        let failure = if let Some(message) = fail_job {
            Some(("PodFailurePolicy", message))
        } else if failed + restarts > backoff_limit {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".to_string(),
            ))
        } else if deadline.is_some_and(|d| now >= d) {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline".to_string(),
            ))
        } else {
            None
        };
        let mut requeue: Option<Duration> =
            deadline.map(|d| d.duration_since(now).unwrap_or_default());

        if complete || failure.is_some() {
            let (kind, reason, message) = match &failure {
                Some((reason, message)) => ("Failed", *reason, message.clone()),
                None => ("Complete", "", String::new()),
            };
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            conditions.push(JobCondition {
                type_: kind.into(),
                status: "True".into(),
                reason: (!reason.is_empty()).then(|| reason.to_string()),
                message: (!message.is_empty()).then_some(message),
                last_probe_time: Some(to_k8s_time(now)),
                last_transition_time: Some(to_k8s_time(now)),
            });
            if failure.is_none() {
                status.completion_time = Some(to_k8s_time(now));
            }
            let victims: Vec<Arc<Object>> = active.iter().map(|p| (*p).clone()).collect();
            delete_pods(ctx, &victims, &pods_informer).await?;
            status.active = Some(0);
            status.ready = Some(0);
            self.write_status(ctx, &object, &job, status).await?;
            return Ok(Action::AwaitChange);
        }

        // Create or remove pods.
        let wait = last_failure
            .map(|at| {
                (at + recreation_backoff(failed as u32))
                    .duration_since(now)
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let mut active_now = active.len() as i32;
        if indexed {
            let completions = completions.unwrap_or(1);
            let busy: BTreeSet<i32> = active
                .iter()
                .filter_map(|p| index_of(p.as_kind::<Pod>()?))
                .collect();
            let missing: Vec<i32> = (0..completions)
                .filter(|i| !succeeded_indexes.contains(i) && !busy.contains(i))
                .take((parallelism - active_now).max(0) as usize)
                .collect();
            if !missing.is_empty() {
                if wait > Duration::ZERO {
                    requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
                } else {
                    let (created, error) = create_pods(
                        ctx,
                        &object,
                        |k| self.pod(&object, &job, Some(missing[k])),
                        missing.len(),
                    )
                    .await;
                    active_now += created.len() as i32;
                    if let Some(e) = error {
                        return Err(e);
                    }
                }
            }
        } else {
            // Without completions, the first success stops new pods but lets running ones
            // finish.
            let want = match completions {
                Some(c) => parallelism.min((c - succeeded).max(0)),
                None if succeeded > 0 => active_now,
                None => parallelism,
            };
            if active_now < want {
                if wait > Duration::ZERO {
                    requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
                } else {
                    let (created, error) = create_pods(
                        ctx,
                        &object,
                        |_| self.pod(&object, &job, None),
                        (want - active_now) as usize,
                    )
                    .await;
                    active_now += created.len() as i32;
                    if let Some(e) = error {
                        return Err(e);
                    }
                }
            } else if active_now > want {
                let mut victims: Vec<&Arc<Object>> = active.clone();
                victims.sort_by(|a, b| {
                    deletion_order(
                        a.as_kind::<Pod>().expect("pod"),
                        b.as_kind::<Pod>().expect("pod"),
                    )
                });
                let victims: Vec<Arc<Object>> = victims
                    .into_iter()
                    .take((active_now - want) as usize)
                    .cloned()
                    .collect();
                delete_pods(ctx, &victims, &pods_informer).await?;
                active_now = want;
            }
        }
        status.active = Some(active_now);
        status.ready = Some(
            active
                .iter()
                .filter(|p| p.as_kind::<Pod>().is_some_and(is_ready))
                .count() as i32,
        );
        self.write_status(ctx, &object, &job, status).await?;
        Ok(requeue.map_or(Action::AwaitChange, |d| {
            Action::requeue(d + Duration::from_millis(500))
        }))
    }
}

impl JobController {
    fn pod(&self, object: &Object, job: &Job, index: Option<i32>) -> Pod {
        let template = job
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let prefix = match index {
            Some(i) => format!("{}-{i}", object.name()),
            None => object.name().to_string(),
        };
        let mut pod = pod_from_template(object, &template, &prefix);
        let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(JOB_NAME_LABEL.into(), object.name().into());
        labels.insert("job-name".into(), object.name().into());
        labels.insert(CONTROLLER_UID_LABEL.into(), object.uid().into());
        labels.insert("controller-uid".into(), object.uid().into());
        if let Some(i) = index {
            labels.insert(COMPLETION_INDEX.into(), i.to_string());
            pod.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(COMPLETION_INDEX.into(), i.to_string());
            if let Some(spec) = pod.spec.as_mut() {
                spec.hostname = Some(format!("{}-{i}", object.name()));
                for c in spec
                    .containers
                    .iter_mut()
                    .chain(spec.init_containers.iter_mut().flatten())
                {
                    c.env.get_or_insert_with(Vec::new).push(EnvVar {
                        name: "JOB_COMPLETION_INDEX".into(),
                        value: Some(i.to_string()),
                        value_from: None,
                    });
                }
            }
        }
        pod
    }

    async fn write_status(
        &self,
        ctx: &Context,
        object: &Object,
        job: &Job,
        status: JobStatus,
    ) -> Result<(), ControllerError> {
        if job.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = job.clone();
        updated.status = Some(status);
        ctx.store
            .update_status(updated.into_object())
            .await
            .map_err(|e| ControllerError::store("update status of", object, e))?;
        Ok(())
    }

    /// A finished Job: make sure no pod runs, and apply ttlSecondsAfterFinished.
    async fn finished(
        &self,
        ctx: &Context,
        object: &Object,
        job: &Job,
        done: &JobCondition,
        now: SystemTime,
    ) -> Result<Action, ControllerError> {
        let pods = ctx.informers.synced(&Kind::Pod).await;
        let active: Vec<Arc<Object>> = pods
            .owned_by(object.uid())
            .into_iter()
            .filter(|p| p.as_kind::<Pod>().is_some_and(is_active))
            .collect();
        delete_pods(ctx, &active, &pods).await?;
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return Ok(Action::AwaitChange);
        };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let finished = done
            .last_transition_time
            .as_ref()
            .map(from_k8s_time)
            .unwrap_or(now);
        let expires = finished + Duration::from_secs(ttl.max(0) as u64);
        if now < expires {
            return Ok(Action::requeue(
                expires.duration_since(now).unwrap_or_default() + Duration::from_millis(500),
            ));
        }
        let options = DeleteOptions {
            propagation: Propagation::Foreground,
            precondition_uid: Some(object.uid().to_string()),
            ..Default::default()
        };
        match ctx
            .store
            .delete(&Kind::Job, object.namespace(), object.name(), &options)
            .await
        {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(Action::AwaitChange),
            Err(e) => Err(ControllerError::store("delete finished", object, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_ten_seconds_to_six_minutes() {
        let secs: Vec<u64> = (0..8).map(|n| recreation_backoff(n).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 320, 360]);
    }

    #[test]
    fn indexes_compress_to_ranges() {
        let set: BTreeSet<i32> = [0, 1, 2, 5, 7, 8].into_iter().collect();
        assert_eq!(compress_indexes(&set), "0-2,5,7-8");
        assert_eq!(compress_indexes(&BTreeSet::new()), "");
    }
}

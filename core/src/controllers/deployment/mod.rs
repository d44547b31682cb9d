//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets.
//!
//! Each template gets a ReplicaSet named `<deployment>-<pod-template-hash>`, whose selector
//! and pods carry the `pod-template-hash` label, and whose `deployment.kubernetes.io/revision`
//! annotation numbers the rollouts. A reconcile:
//!
//! 1. claims ReplicaSets (adopts matching orphans, releases ones that stopped matching);
//! 2. when paused, or when only `replicas` changed (a scaling event), scales the ReplicaSets
//!    proportionally and stops there;
//! 3. otherwise rolls out: `RollingUpdate` grows the new ReplicaSet within `maxSurge` and
//!    shrinks old ones within `maxUnavailable`; `Recreate` scales old ones to zero, waits for
//!    their pods to be gone, then scales the new one up;
//! 4. deletes old, empty ReplicaSets beyond `revisionHistoryLimit` once the rollout completes;
//! 5. writes the status and the `Available`, `Progressing` (with `progressDeadlineSeconds`)
//!    and `ReplicaFailure` conditions, with Kubernetes' reasons and messages.
//!
//! One deliberate difference from Kubernetes: surge and availability are computed from the
//! pods the ReplicaSets actually have (from the pod cache), not only from ReplicaSet specs and
//! statuses, so that a rollout never exceeds `replicas + maxSurge` pods or drops below
//! `replicas - maxUnavailable` available ones even while a ReplicaSet is still catching up.
//!
//! Rollback is what `kubectl rollout undo` does: [`rollback`] copies an older ReplicaSet's
//! template back into the Deployment, which then rolls out as a new revision.

mod status;
pub mod strategy;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::ownership::{claim, controller_reference, is_controlled_by, safe_hash, selector_of};
use super::pod_state::is_finished;
use crate::clock::from_k8s_time;
use crate::controller::{
    controller_owner, Action, Context, Controller, ControllerError, Informer, Observed, OwnedPods,
    Reconciler,
};
use crate::object::{Kind, Object, Resource, Typed};
use crate::store::{Api, DeleteOptions, Store, StoreError};

/// Annotation with a ReplicaSet's (and its Deployment's) revision number.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Annotation listing the earlier revisions a ReplicaSet had (after rollbacks).
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// Annotation with the Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// Annotation with the Deployment's replicas + maxSurge when the ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Label that ties ReplicaSets and pods to one pod template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

const NOT_COPIED: [&str; 5] = [
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// The Deployment reconciler.
#[derive(Default)]
pub struct DeploymentController;

impl DeploymentController {
    /// The controller, ready to run.
    pub fn controller() -> Controller<DeploymentController> {
        Controller::new("deployment", Kind::Deployment, DeploymentController)
            .owns(Kind::ReplicaSet)
            // Recreate waits for old pods to be gone: a pod that finishes or terminates
            // triggers the Deployment that owns its ReplicaSet, when that Deployment
            // recreates (a rolling update learns of its pods from ReplicaSet statuses, as
            // Kubernetes' deletePod handler also looks at Recreate Deployments only).
            .watches(Kind::Pod, |pod, ctx| {
                let Some(p) = pod.as_kind::<Pod>() else {
                    return Vec::new();
                };
                if p.metadata.deletion_timestamp.is_none() && !is_finished(p) {
                    return Vec::new();
                }
                let Some(rs_key) = controller_owner(pod, &Kind::ReplicaSet) else {
                    return Vec::new();
                };
                let Some(key) = ctx
                    .informers
                    .get(&Kind::ReplicaSet)
                    .get(&rs_key)
                    .and_then(|rs| controller_owner(&rs, &Kind::Deployment))
                else {
                    return Vec::new();
                };
                let recreates = ctx
                    .informers
                    .get(&Kind::Deployment)
                    .get(&key)
                    .is_some_and(|d| d.as_kind::<Deployment>().is_some_and(recreates));
                if recreates {
                    vec![key]
                } else {
                    Vec::new()
                }
            })
    }
}

/// Whether `d` uses the Recreate strategy (RollingUpdate is the default).
fn recreates(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// One reconcile's working state.
struct Sync<'a> {
    ctx: &'a Context,
    object: Arc<Object>,
    d: Deployment,
    replicas: i32,
    surge: i32,
    unavailable: i32,
    rolling: bool,
    replica_sets: Informer,
    conditions: Vec<DeploymentCondition>,
    collision_count: Option<i32>,
    /// What each ReplicaSet's pods amount to, by ReplicaSet uid, read from the pod informer
    /// once when the reconcile starts: every question it asks about pods is answered from the
    /// same snapshot (a ReplicaSet it creates has none).
    pod_counts: HashMap<String, OwnedPods>,
}

#[async_trait]
impl Reconciler for DeploymentController {
    type Error = ControllerError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error> {
        let Some(d) = Typed::<Deployment>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        let d = d.to_owned_value();
        let spec = d.spec.clone().unwrap_or_default();
        let selector = selector_of(&object, Some(&spec.selector))?;
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let rolling_update = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref());
        let rolling = !recreates(&d);
        let (surge, unavailable) = if rolling {
            let (s, u) = strategy::fenceposts(
                rolling_update.and_then(|r| r.max_surge.as_ref()),
                rolling_update.and_then(|r| r.max_unavailable.as_ref()),
                replicas,
            );
            (s, u.min(replicas))
        } else {
            (0, 0)
        };
        let replica_sets = ctx.informers.synced(&Kind::ReplicaSet).await;
        let pods = ctx.informers.synced(&Kind::Pod).await;
        let candidates = replica_sets.owned_or_orphans(object.uid(), object.namespace());
        let owned = claim(&ctx.store, &object, &selector, candidates, &replica_sets).await?;
        let mut all: Vec<ReplicaSet> = owned
            .iter()
            .filter_map(|o| o.as_kind::<ReplicaSet>().cloned())
            .collect();
        sort_by_creation(&mut all);
        let now = ctx.clock.now();
        let pod_counts = all
            .iter()
            .map(|rs| {
                let uid = rs.metadata.uid.clone().unwrap_or_default();
                let min_ready = rs
                    .spec
                    .as_ref()
                    .and_then(|s| s.min_ready_seconds)
                    .unwrap_or(0);
                let counts = pods.owned_pods(&uid, &BTreeMap::new(), min_ready, now);
                (uid, counts)
            })
            .collect();

        let mut sync = Sync {
            ctx,
            conditions: d
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default(),
            collision_count: d.status.as_ref().and_then(|s| s.collision_count),
            object,
            d,
            replicas,
            surge,
            unavailable,
            rolling,
            replica_sets,
            pod_counts,
        };

        if sync.d.metadata.deletion_timestamp.is_some() {
            let new = sync.find_new(&all).and_then(|rs| rs.metadata.name.clone());
            return sync.finish(new, all).await;
        }
        let paused = spec.paused.unwrap_or(false);
        sync.paused_condition(paused);
        if paused || sync.is_scaling_event(&all) {
            let new = sync.new_replica_set(&mut all, false).await?;
            sync.scale(&mut all, new.as_deref()).await?;
            if paused {
                sync.cleanup(&all, new.as_deref()).await?;
            }
            return sync.finish(new, all).await;
        }
        if rolling {
            sync.rollout_rolling(all).await
        } else {
            sync.rollout_recreate(all).await
        }
    }
}

impl Sync<'_> {
    fn template(&self) -> PodTemplateSpec {
        self.d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default()
    }

    /// The ReplicaSet whose template is the Deployment's (ignoring the hash label); the
    /// oldest if several are.
    fn find_new<'r>(&self, all: &'r [ReplicaSet]) -> Option<&'r ReplicaSet> {
        let template = self.template();
        all.iter().find(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignoring_hash(t, &template))
        })
    }

    fn new_index(&self, all: &[ReplicaSet]) -> Option<usize> {
        let new = self.find_new(all)?;
        all.iter()
            .position(|rs| rs.metadata.uid == new.metadata.uid)
    }

    /// Finds (and brings up to date) or, with `create`, creates the new ReplicaSet. Returns
    /// its name; it is also in `all`.
    async fn new_replica_set(
        &mut self,
        all: &mut Vec<ReplicaSet>,
        create: bool,
    ) -> Result<Option<String>, ControllerError> {
        let existing = self.new_index(all);
        let max_old = all
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != existing)
            .map(|(_, rs)| revision(&rs.metadata))
            .max()
            .unwrap_or(0);
        let new_revision = max_old + 1;
        if let Some(i) = existing {
            let mut rs = all[i].clone();
            let mut changed = self.set_new_annotations(&mut rs.metadata, new_revision);
            let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if let Some(spec) = rs.spec.as_mut() {
                if spec.min_ready_seconds != min_ready {
                    spec.min_ready_seconds = min_ready;
                    changed = true;
                }
            }
            if changed {
                all[i] = self.write_rs(rs).await?;
            }
            let name = all[i].metadata.name.clone().unwrap_or_default();
            self.set_deployment_revision(revision(&all[i].metadata))
                .await?;
            if !self.conditions.iter().any(|c| c.type_ == "Progressing") {
                let cond = self.condition(
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    format!("Found new replica set {name:?}"),
                );
                status::set_condition(&mut self.conditions, cond);
            }
            return Ok(Some(name));
        }
        if !create {
            return Ok(None);
        }
        let mut template = self.template();
        let hash = safe_hash(
            &serde_json::to_value(&template).unwrap_or_default(),
            self.collision_count,
        );
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = self
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let name = format!("{}-{}", self.object.name(), hash);
        let all_pods: i32 = all.iter().map(|rs| self.pod_count(rs)).sum();
        let replicas = if self.rolling {
            strategy::new_rs_replicas(self.replicas, self.surge, all_pods, 0)
        } else {
            self.replicas
        };
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.object.namespace().map(str::to_string),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                owner_references: Some(vec![controller_reference(&self.object)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: self.d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                selector,
                template: Some(template.clone()),
            }),
            status: None,
        };
        self.set_new_annotations(&mut rs.metadata, new_revision);
        self.set_replicas_annotations(&mut rs.metadata);
        let created = match self.ctx.store.create(rs.into_object()).await {
            Ok(created) => created,
            Err(StoreError::AlreadyExists { .. }) => {
                // A ReplicaSet of that name exists but is not ours or has another template:
                // a hash collision. Bump collisionCount so the next attempt hashes differently.
                let existing = self
                    .ctx
                    .store
                    .get(&Kind::ReplicaSet, self.object.namespace(), &name)
                    .await
                    .map_err(|e| ControllerError::store("get", &self.object, e))?;
                let ours = is_controlled_by(&existing, self.object.uid())
                    && existing
                        .as_kind::<ReplicaSet>()
                        .and_then(|rs| rs.spec.as_ref()?.template.as_ref())
                        .is_some_and(|t| equal_ignoring_hash(t, &template));
                if ours {
                    existing
                } else {
                    self.collision_count = Some(self.collision_count.unwrap_or(0) + 1);
                    let mut d = self.d.clone();
                    d.status
                        .get_or_insert_with(Default::default)
                        .collision_count = self.collision_count;
                    self.ctx
                        .store
                        .update_status(d.into_object())
                        .await
                        .map_err(|e| ControllerError::store("update status of", &self.object, e))?;
                    return Err(ControllerError::invalid(
                        &self.object,
                        "status.collisionCount",
                        format!("ReplicaSet {name:?} exists with another template; retrying with a new hash"),
                    ));
                }
            }
            Err(e) => {
                return Err(ControllerError::store(
                    "create replica set for",
                    &self.object,
                    e,
                ))
            }
        };
        self.replica_sets
            .wait_observed(&Observed::Written(created.clone()))
            .await;
        let rs = created.as_kind::<ReplicaSet>().cloned().ok_or_else(|| {
            ControllerError::invalid(&self.object, "kind", "store returned a non-ReplicaSet")
        })?;
        self.set_deployment_revision(revision(&rs.metadata)).await?;
        let cond = self.condition(
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set {name:?}"),
        );
        status::set_condition(&mut self.conditions, cond);
        all.push(rs);
        Ok(Some(name))
    }

    /// Copies the Deployment's annotations and sets the revision; returns whether anything
    /// changed.
    fn set_new_annotations(&self, meta: &mut ObjectMeta, new_revision: i64) -> bool {
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        let before = annotations.clone();
        for (k, v) in self.d.metadata.annotations.iter().flatten() {
            if !NOT_COPIED.contains(&k.as_str()) {
                annotations.insert(k.clone(), v.clone());
            }
        }
        let old: i64 = annotations
            .get(REVISION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        if old < new_revision {
            if old > 0 {
                let history = match annotations.get(REVISION_HISTORY) {
                    Some(h) if !h.is_empty() => format!("{h},{old}"),
                    _ => old.to_string(),
                };
                annotations.insert(REVISION_HISTORY.into(), history);
            }
            annotations.insert(REVISION.into(), new_revision.to_string());
        }
        *annotations != before
    }

    fn set_replicas_annotations(&self, meta: &mut ObjectMeta) -> bool {
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        let desired = self.replicas.to_string();
        let max = (self.replicas + self.surge).to_string();
        let changed = annotations.get(DESIRED_REPLICAS) != Some(&desired)
            || annotations.get(MAX_REPLICAS) != Some(&max);
        annotations.insert(DESIRED_REPLICAS.into(), desired);
        annotations.insert(MAX_REPLICAS.into(), max);
        changed
    }

    async fn set_deployment_revision(&mut self, rev: i64) -> Result<(), ControllerError> {
        let rev = rev.to_string();
        if self
            .d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            == Some(&rev)
        {
            return Ok(());
        }
        let mut d = self.d.clone();
        d.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(REVISION.into(), rev);
        let written = self
            .ctx
            .store
            .update(d.into_object())
            .await
            .map_err(|e| ControllerError::store("update revision of", &self.object, e))?;
        if let Some(d) = written.as_kind::<Deployment>() {
            self.d = d.clone();
        }
        Ok(())
    }

    async fn write_rs(&self, rs: ReplicaSet) -> Result<ReplicaSet, ControllerError> {
        let object = rs.into_object();
        let written = self
            .ctx
            .store
            .update(object.clone())
            .await
            .map_err(|e| ControllerError::store("update", &object, e))?;
        self.replica_sets
            .wait_observed(&Observed::Written(written.clone()))
            .await;
        Ok(written.as_kind::<ReplicaSet>().cloned().unwrap_or_default())
    }

    /// Sets a ReplicaSet's replicas (and the replicas annotations); returns whether it wrote.
    async fn scale_rs(
        &self,
        all: &mut [ReplicaSet],
        i: usize,
        size: i32,
    ) -> Result<bool, ControllerError> {
        let mut rs = all[i].clone();
        let size = size.max(0);
        let spec = rs.spec.get_or_insert_with(Default::default);
        let resized = spec.replicas != Some(size);
        spec.replicas = Some(size);
        let annotated = self.set_replicas_annotations(&mut rs.metadata);
        if !resized && !annotated {
            return Ok(false);
        }
        tracing::debug!(deployment = %self.object.display_name(), replica_set = ?rs.metadata.name, size, "scaling replica set");
        all[i] = self.write_rs(rs).await?;
        Ok(resized)
    }

    /// Pods a ReplicaSet has or is about to have: the larger of its spec and its active pods.
    fn pod_count(&self, rs: &ReplicaSet) -> i32 {
        spec_replicas(rs).max(self.active_pods(rs))
    }

    /// What a ReplicaSet's pods amount to, as the reconcile found them.
    fn owned_pods(&self, rs: &ReplicaSet) -> OwnedPods {
        let uid = rs.metadata.uid.as_deref().unwrap_or("");
        self.pod_counts.get(uid).copied().unwrap_or_default()
    }

    fn active_pods(&self, rs: &ReplicaSet) -> i32 {
        self.owned_pods(rs).active as i32
    }

    /// Available pods of a ReplicaSet, from the pod cache, at most its spec.
    fn available_pods(&self, rs: &ReplicaSet) -> i32 {
        (self.owned_pods(rs).available as i32).min(spec_replicas(rs))
    }

    fn is_scaling_event(&self, all: &[ReplicaSet]) -> bool {
        all.iter().filter(|rs| spec_replicas(rs) > 0).any(|rs| {
            annotation_i32(&rs.metadata, DESIRED_REPLICAS).is_some_and(|d| d != self.replicas)
        })
    }

    async fn rollout_rolling(
        mut self,
        mut all: Vec<ReplicaSet>,
    ) -> Result<Action, ControllerError> {
        let new_name = self.new_replica_set(&mut all, true).await?;
        let new =
            index_of(&all, new_name.as_deref()).expect("new replica set was just found or created");
        // Scale the new ReplicaSet up (or down to replicas) within maxSurge.
        let new_size = spec_replicas(&all[new]);
        if new_size != self.replicas {
            let target = if new_size > self.replicas {
                self.replicas
            } else {
                let all_pods: i32 = all.iter().map(|rs| self.pod_count(rs)).sum();
                strategy::new_rs_replicas(self.replicas, self.surge, all_pods, new_size)
            };
            if target != new_size && self.scale_rs(&mut all, new, target).await? {
                return self.finish(new_name, all).await;
            }
        }
        // Scale old ReplicaSets down within maxUnavailable.
        let olds: Vec<usize> = (0..all.len()).filter(|&i| i != new).collect();
        let old_pods: i32 = olds.iter().map(|&i| self.pod_count(&all[i])).sum();
        if old_pods > 0 {
            let all_pods: i32 = all.iter().map(|rs| self.pod_count(rs)).sum();
            let max_down = strategy::max_scaled_down(
                self.replicas,
                self.unavailable,
                all_pods,
                self.pod_count(&all[new]),
                self.available_pods(&all[new]),
            );
            if max_down > 0 {
                // First remove old pods that are not available anyway, oldest ReplicaSet first.
                let mut cleaned = 0;
                for &i in &olds {
                    if cleaned >= max_down {
                        break;
                    }
                    let size = spec_replicas(&all[i]);
                    let unhealthy = size - self.available_pods(&all[i]);
                    if size == 0 || unhealthy <= 0 {
                        continue;
                    }
                    let down = unhealthy.min(max_down - cleaned);
                    self.scale_rs(&mut all, i, size - down).await?;
                    cleaned += down;
                }
                // Then available ones, keeping replicas - maxUnavailable available.
                let min_available = self.replicas - self.unavailable;
                let available: i32 = all.iter().map(|rs| self.available_pods(rs)).sum();
                let mut scaled = 0;
                if available > min_available {
                    let total = available - min_available;
                    for &i in &olds {
                        if scaled >= total {
                            break;
                        }
                        let size = spec_replicas(&all[i]);
                        if size == 0 {
                            continue;
                        }
                        let down = size.min(total - scaled);
                        self.scale_rs(&mut all, i, size - down).await?;
                        scaled += down;
                    }
                }
                if cleaned + scaled > 0 {
                    return self.finish(new_name, all).await;
                }
            }
        }
        self.finish_and_cleanup(new_name, all).await
    }

    async fn rollout_recreate(
        mut self,
        mut all: Vec<ReplicaSet>,
    ) -> Result<Action, ControllerError> {
        let mut new_name = self.new_replica_set(&mut all, false).await?;
        let new = index_of(&all, new_name.as_deref());
        let mut scaled = false;
        for i in 0..all.len() {
            if Some(i) != new && spec_replicas(&all[i]) > 0 {
                scaled |= self.scale_rs(&mut all, i, 0).await?;
            }
        }
        if scaled {
            return self.finish(new_name, all).await;
        }
        // Wait until no old pod runs (terminating pods still count, as in Kubernetes).
        let old_running = all
            .iter()
            .enumerate()
            .any(|(i, rs)| Some(i) != new && self.owned_pods(rs).unfinished > 0);
        if old_running {
            return self.finish(new_name, all).await;
        }
        if new.is_none() {
            new_name = self.new_replica_set(&mut all, true).await?;
        }
        if let Some(i) = index_of(&all, new_name.as_deref()) {
            self.scale_rs(&mut all, i, self.replicas).await?;
        }
        self.finish_and_cleanup(new_name, all).await
    }

    /// Proportional scaling (`scale` in Kubernetes' sync.go).
    async fn scale(
        &mut self,
        all: &mut [ReplicaSet],
        new_name: Option<&str>,
    ) -> Result<(), ControllerError> {
        let new = index_of(all, new_name);
        let active: Vec<usize> = (0..all.len())
            .filter(|&i| spec_replicas(&all[i]) > 0)
            .collect();
        // One active ReplicaSet (or none): it takes all replicas.
        let only = match active.len() {
            0 => new.or(if all.is_empty() {
                None
            } else {
                Some(newest(all))
            }),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = only {
            if spec_replicas(&all[i]) != self.replicas || self.rolling {
                self.scale_rs(all, i, self.replicas).await?;
            }
            return Ok(());
        }
        // The new ReplicaSet is saturated: old ones go to zero.
        if let Some(n) = new {
            let saturated = spec_replicas(&all[n]) == self.replicas
                && annotation_i32(&all[n].metadata, DESIRED_REPLICAS) == Some(self.replicas)
                && self.available_pods(&all[n]) == self.replicas;
            if saturated {
                for i in 0..all.len() {
                    if i != n && spec_replicas(&all[i]) > 0 {
                        self.scale_rs(all, i, 0).await?;
                    }
                }
                return Ok(());
            }
        }
        if !self.rolling {
            return Ok(());
        }
        let current: i32 = active.iter().map(|&i| spec_replicas(&all[i])).sum();
        let allowed = if self.replicas > 0 {
            self.replicas + self.surge
        } else {
            0
        };
        let to_add = allowed - current;
        let mut order = active.clone();
        order.sort_by(|&a, &b| {
            let size = spec_replicas(&all[b]).cmp(&spec_replicas(&all[a]));
            let age = created(&all[a]).cmp(&created(&all[b]));
            // Growing: bigger and newer first; shrinking: bigger and older first.
            size.then(if to_add > 0 { age.reverse() } else { age })
        });
        let status_replicas = self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let mut sizes: BTreeMap<usize, i32> = BTreeMap::new();
        let mut added = 0;
        if to_add != 0 {
            for &i in &order {
                let size = spec_replicas(&all[i]);
                let annotated =
                    annotation_i32(&all[i].metadata, MAX_REPLICAS).unwrap_or(status_replicas);
                let share = strategy::proportion(size, self.replicas, self.surge, annotated);
                let left = to_add - added;
                let share = if to_add > 0 {
                    share.min(left)
                } else {
                    share.max(left)
                };
                sizes.insert(i, size + share);
                added += share;
            }
            if let Some(&first) = order.first() {
                *sizes.entry(first).or_insert(0) += to_add - added;
            }
        }
        for &i in &order {
            let size = sizes.get(&i).copied().unwrap_or(spec_replicas(&all[i]));
            self.scale_rs(all, i, size.max(0)).await?;
        }
        Ok(())
    }

    /// Deletes old, empty ReplicaSets beyond `revisionHistoryLimit` (oldest revision first).
    async fn cleanup(
        &self,
        all: &[ReplicaSet],
        new_name: Option<&str>,
    ) -> Result<(), ControllerError> {
        let limit = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let mut empty: Vec<&ReplicaSet> = all
            .iter()
            .filter(|rs| rs.metadata.name.as_deref() != new_name)
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && rs.status.as_ref().map_or(0, |s| s.replicas) == 0
                    && rs.metadata.deletion_timestamp.is_none()
                    && self.active_pods(rs) == 0
            })
            .collect();
        if empty.len() <= limit {
            return Ok(());
        }
        empty.sort_by_key(|rs| (revision(&rs.metadata), created(rs)));
        let surplus = empty.len() - limit;
        for rs in empty.into_iter().take(surplus) {
            let name = rs.metadata.name.as_deref().unwrap_or("");
            let options = DeleteOptions {
                precondition_uid: rs.metadata.uid.clone(),
                ..Default::default()
            };
            match self
                .ctx
                .store
                .delete(&Kind::ReplicaSet, self.object.namespace(), name, &options)
                .await
            {
                Ok(deleted) => {
                    self.replica_sets
                        .wait_observed(&Observed::from(&deleted))
                        .await
                }
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => {
                    return Err(ControllerError::store(
                        "delete old replica set of",
                        &self.object,
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    async fn finish_and_cleanup(
        self,
        new_name: Option<String>,
        all: Vec<ReplicaSet>,
    ) -> Result<Action, ControllerError> {
        let new = index_of(&all, new_name.as_deref());
        let complete = new.is_some_and(|n| {
            spec_replicas(&all[n]) == self.replicas
                && self.available_pods(&all[n]) == self.replicas
                && all
                    .iter()
                    .enumerate()
                    .all(|(i, rs)| i == n || self.pod_count(rs) == 0)
        });
        if complete {
            self.cleanup(&all, new_name.as_deref()).await?;
        }
        self.finish(new_name, all).await
    }
}

/// Rolls a Deployment back to the template of an earlier revision, as `kubectl rollout undo`
/// does: `revision` 0 means the previous one. The Deployment then rolls that template out as
/// a new revision.
pub async fn rollback(
    store: Arc<dyn Store>,
    namespace: &str,
    name: &str,
    revision: i64,
) -> Result<(), ControllerError> {
    let api: Api<Deployment> = Api::namespaced(store.clone(), namespace);
    let d = api.get(name).await.map_err(|e| {
        ControllerError::store_key(
            "get",
            &Kind::Deployment,
            &crate::controller::ObjectKey::namespaced(namespace, name),
            e,
        )
    })?;
    let rs_api: Api<ReplicaSet> = Api::namespaced(store, namespace);
    let list = rs_api
        .list(&Default::default())
        .await
        .map_err(|e| ControllerError::store("list replica sets of", d.object(), e))?;
    let mut owned: Vec<_> = list
        .into_iter()
        .filter(|rs| is_controlled_by(rs.object(), d.object().uid()))
        .collect();
    owned.sort_by_key(|rs| std::cmp::Reverse(self::revision(&rs.metadata)));
    let target = if revision == 0 {
        owned.get(1)
    } else {
        owned
            .iter()
            .find(|rs| self::revision(&rs.metadata) == revision)
    };
    let Some(target) = target else {
        return Err(ControllerError::invalid(
            d.object(),
            "metadata.annotations",
            if revision == 0 {
                "no previous revision to roll back to".to_string()
            } else {
                format!("revision {revision} not found")
            },
        ));
    };
    let mut template = target
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    let mut updated = d.to_owned_value();
    updated.spec.get_or_insert_with(Default::default).template = template;
    api.update(updated)
        .await
        .map_err(|e| ControllerError::store("roll back", d.object(), e))?;
    Ok(())
}

fn equal_ignoring_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    fn strip(t: &PodTemplateSpec) -> PodTemplateSpec {
        let mut t = t.clone();
        let meta = t.metadata.get_or_insert_with(Default::default);
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(POD_TEMPLATE_HASH);
            if labels.is_empty() {
                meta.labels = None;
            }
        }
        if meta == &ObjectMeta::default() {
            t.metadata = None;
        }
        t
    }
    strip(a) == strip(b)
}

/// The revision annotation of an object, 0 when absent.
pub fn revision(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn annotation_i32(meta: &ObjectMeta, key: &str) -> Option<i32> {
    meta.annotations.as_ref()?.get(key)?.parse().ok()
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> std::time::SystemTime {
    rs.metadata
        .creation_timestamp
        .as_ref()
        .map(from_k8s_time)
        .unwrap_or(std::time::UNIX_EPOCH)
}

fn sort_by_creation(all: &mut [ReplicaSet]) {
    all.sort_by(|a, b| {
        created(a)
            .cmp(&created(b))
            .then(a.metadata.name.cmp(&b.metadata.name))
    });
}

fn newest(all: &[ReplicaSet]) -> usize {
    (0..all.len())
        .max_by(|&a, &b| created(&all[a]).cmp(&created(&all[b])).then(a.cmp(&b)))
        .unwrap_or(0)
}

fn index_of(all: &[ReplicaSet], name: Option<&str>) -> Option<usize> {
    let name = name?;
    all.iter()
        .position(|rs| rs.metadata.name.as_deref() == Some(name))
}

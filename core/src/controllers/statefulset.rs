//! The StatefulSet controller: pods with stable names, stable storage and ordered rollouts.
//!
//! Pod `i` of set `web` is called `web-<start + i>` (`spec.ordinals.start`, default 0), has
//! `hostname` = its name and `subdomain` = `spec.serviceName` (so the headless Service gives it
//! the DNS name `web-0.<service>`), and carries the labels
//! `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and
//! `controller-revision-hash` (the name of the [`history`] revision it was made from). Each
//! `volumeClaimTemplates` entry `data` gives it the claim `data-web-<ordinal>`, created before
//! the pod and kept when the pod goes, unless `persistentVolumeClaimRetentionPolicy` says
//! `Delete` (claims then get an ownerReference to the set or to the condemned pod, and the
//! garbage collector removes them with it).
//!
//! A reconcile follows Kubernetes' `updateStatefulSet`:
//!
//! 1. every ordinal below `replicas`, in order: a missing pod is created, a Failed or
//!    Succeeded one deleted and made again. With `OrderedReady` the pass stops at the first
//!    pod just created, terminating, or not Running and Ready (and available for
//!    `minReadySeconds`); with `Parallel` it goes on;
//! 2. pods at ordinals at or above `replicas` are deleted from the highest down, with
//!    `OrderedReady` one at a time, each only once every lower pod is healthy;
//! 3. `RollingUpdate`: the highest pod at ordinal index ≥ `partition` that is not on the
//!    update revision is deleted (it comes back on the new template at step 1), one at a
//!    time, waiting for each to be healthy again. `OnDelete` leaves that to the user;
//! 4. status: `replicas`, `readyReplicas`, `availableReplicas`, `currentReplicas`,
//!    `updatedReplicas`, `currentRevision`, `updateRevision`, `observedGeneration`,
//!    `collisionCount`; when every pod runs the update revision and is ready, it becomes the
//!    current revision. Old revisions no pod uses go beyond `revisionHistoryLimit`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::history::{self, History, CONTROLLER_REVISION_HASH};
use super::ownership::{claim, selector_of};
use super::pod_state::{check_available, is_finished, is_running_and_ready, is_terminating};
use super::replicaset::{delete_pods, pod_from_template};
use crate::controller::ObjectKey;
use crate::controller::{
    Action, Context, Controller, ControllerError, Informer, Observed, Reconciler,
};
use crate::object::{Kind, Object, Resource, Typed};
use crate::store::StoreError;

/// Label with the name of a StatefulSet pod.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label with the ordinal of a StatefulSet pod.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// How long to wait before looking again at a claim that is still being deleted (claims do not
/// trigger this controller).
const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// The StatefulSet reconciler.
#[derive(Default)]
pub struct StatefulSetController;

impl StatefulSetController {
    /// The controller, ready to run.
    pub fn controller() -> Controller<StatefulSetController> {
        Controller::new("statefulset", Kind::StatefulSet, StatefulSetController)
            .owns(Kind::Pod)
            .owns(Kind::ControllerRevision)
    }
}

/// The ordinal of the pod called `pod` in the set called `set` (`<set>-<ordinal>`).
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let digits = pod.strip_prefix(set)?.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The name of the claim from template `template` for the pod at `ordinal` of set `set`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// One reconcile's working state.
struct Sync<'a> {
    ctx: &'a Context,
    object: Arc<Object>,
    spec: StatefulSetSpec,
    start: i32,
    monotonic: bool,
    history: History,
    current: String,
    current_template: PodTemplateSpec,
    pods: Informer,
    claims: Informer,
    /// When to look again (a pod about to pass minReadySeconds, a claim being deleted).
    wait: Option<Duration>,
}

#[async_trait]
impl Reconciler for StatefulSetController {
    type Error = ControllerError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error> {
        let Some(set) = Typed::<StatefulSet>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        if set.metadata.deletion_timestamp.is_some() {
            // The garbage collector removes the pods; nothing to roll out.
            return Ok(Action::AwaitChange);
        }
        let spec = set.spec.clone().unwrap_or_default();
        let selector = selector_of(&object, Some(&spec.selector))?;
        let status = set.status.clone().unwrap_or_default();
        let history = history::sync(
            ctx,
            &object,
            &selector,
            &spec.template,
            status.collision_count,
        )
        .await?;
        let update_name = name_of(&history.update.metadata);
        let current = status
            .current_revision
            .as_deref()
            .and_then(|name| history.get(name))
            .unwrap_or(&history.update);
        let current_template = history::template_of(current).unwrap_or(spec.template.clone());
        let current = name_of(&current.metadata);
        tracing::debug!(set = %object.display_name(), %current, update = %update_name, "statefulset revisions");

        let pods = ctx.informers.synced(&Kind::Pod).await;
        let claims = ctx.informers.synced(&Kind::PersistentVolumeClaim).await;
        let mut sync = Sync {
            ctx,
            start: spec
                .ordinals
                .as_ref()
                .and_then(|o| o.start)
                .unwrap_or(0)
                .max(0),
            monotonic: spec.pod_management_policy.as_deref() != Some("Parallel"),
            spec,
            object,
            history,
            current,
            current_template,
            pods,
            claims,
            wait: None,
        };
        let candidates = sync
            .pods
            .owned_or_orphans(sync.object.uid(), sync.object.namespace());
        let owned = claim(&ctx.store, &sync.object, &selector, candidates, &sync.pods).await?;
        let members = sync.members(owned);
        sync.manage(members).await?;
        sync.finish(&set, status).await
    }
}

fn name_of(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn pod(object: &Arc<Object>) -> &Pod {
    object
        .as_kind::<Pod>()
        .expect("the pod informer holds pods")
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(CONTROLLER_REVISION_HASH)
        .map(String::as_str)
}

/// The set's pods split by ordinal: `replicas[i]` is the pod at ordinal `start + i`, and
/// `condemned` holds the pods above the range, lowest ordinal first.
struct Members {
    replicas: Vec<Option<Arc<Object>>>,
    condemned: Vec<Arc<Object>>,
}

impl Sync<'_> {
    fn replicas(&self) -> i32 {
        self.spec.replicas.unwrap_or(1).max(0)
    }

    fn min_ready(&self) -> i32 {
        self.spec.min_ready_seconds.unwrap_or(0)
    }

    fn members(&self, owned: Vec<Arc<Object>>) -> Members {
        let replicas = self.replicas();
        let mut members = Members {
            replicas: vec![None; replicas as usize],
            condemned: Vec::new(),
        };
        let mut condemned = Vec::new();
        for object in owned {
            let Some(ordinal) = ordinal_of(self.object.name(), object.name()) else {
                continue;
            };
            let index = ordinal - self.start;
            if (0..replicas).contains(&index) {
                members.replicas[index as usize] = Some(object);
            } else {
                condemned.push((ordinal, object));
            }
        }
        condemned.sort_by_key(|(ordinal, _)| *ordinal);
        members.condemned = condemned.into_iter().map(|(_, o)| o).collect();
        members
    }

    /// Whether `pod` is Running, Ready and available.
    fn is_available(&mut self, pod: &Pod) -> bool {
        is_running_and_ready(pod)
            && check_available(pod, self.min_ready(), self.ctx.clock.now(), &mut self.wait)
    }

    fn is_healthy(&mut self, pod: &Pod) -> bool {
        !is_terminating(pod) && self.is_available(pod)
    }

    async fn manage(&mut self, mut members: Members) -> Result<(), ControllerError> {
        let monotonic = self.monotonic;
        let first_unhealthy = {
            let all: Vec<Arc<Object>> = members
                .replicas
                .iter()
                .flatten()
                .chain(&members.condemned)
                .cloned()
                .collect();
            all.into_iter().find(|p| !self.is_healthy(pod(p)))
        };

        // 1. Bring every ordinal below `replicas` into being, in order.
        for index in 0..members.replicas.len() {
            let ordinal = self.start + index as i32;
            if let Some(existing) = members.replicas[index].clone() {
                let p = pod(&existing);
                if is_finished(p) && !is_terminating(p) {
                    tracing::info!(pod = %existing.display_name(), phase = ?p.status.as_ref().and_then(|s| s.phase.as_deref()), "recreating finished statefulset pod");
                    delete_pods(self.ctx, std::slice::from_ref(&existing), &self.pods).await?;
                    members.replicas[index] = None;
                }
            }
            let Some(existing) = members.replicas[index].clone() else {
                if self.create_claims(ordinal).await? {
                    members.replicas[index] = self.create_pod(index, ordinal).await?;
                }
                if monotonic {
                    return Ok(());
                }
                continue;
            };
            let p = pod(&existing);
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending") {
                self.create_claims(ordinal).await?;
            }
            if monotonic && (is_terminating(p) || !self.is_available(p)) {
                return Ok(());
            }
            self.fix_identity(&existing, ordinal).await?;
            self.fix_retention(ordinal, None).await?;
        }

        // 2. Scale down from the highest ordinal.
        for condemned in members.condemned.iter().rev() {
            let p = pod(condemned);
            if is_terminating(p) {
                if monotonic {
                    return Ok(());
                }
                continue;
            }
            let first = first_unhealthy
                .as_ref()
                .is_some_and(|f| f.uid() == condemned.uid());
            if monotonic && !first && !self.is_available(p) {
                return Ok(());
            }
            let ordinal = ordinal_of(self.object.name(), condemned.name()).unwrap_or(0);
            self.fix_retention(ordinal, Some(condemned)).await?;
            tracing::info!(pod = %condemned.display_name(), "scaling statefulset down");
            delete_pods(self.ctx, std::slice::from_ref(condemned), &self.pods).await?;
            if monotonic {
                return Ok(());
            }
        }

        // 3. Roll the update revision out, from the highest ordinal down to the partition.
        let strategy = self.spec.update_strategy.clone().unwrap_or_default();
        if strategy.type_.as_deref() == Some("OnDelete") {
            return Ok(());
        }
        let partition = strategy
            .rolling_update
            .and_then(|r| r.partition)
            .unwrap_or(0)
            .max(0) as usize;
        let update = name_of(&self.history.update.metadata);
        for index in (partition..members.replicas.len()).rev() {
            let Some(existing) = members.replicas[index].clone() else {
                return Ok(());
            };
            let p = pod(&existing);
            if revision_of(p) != Some(update.as_str()) && !is_terminating(p) {
                tracing::info!(pod = %existing.display_name(), revision = %update, "updating statefulset pod");
                delete_pods(self.ctx, std::slice::from_ref(&existing), &self.pods).await?;
                return Ok(());
            }
            if !self.is_healthy(p) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The pod at `ordinal`, on the current revision below the partition and on the update
    /// revision elsewhere (as Kubernetes' `newVersionedStatefulSetPod`).
    fn new_pod(&self, index: usize, ordinal: i32) -> Pod {
        let strategy = self.spec.update_strategy.as_ref();
        let rolling = strategy.and_then(|s| s.type_.as_deref()) != Some("OnDelete");
        let partition = strategy
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.partition);
        let current_replicas = self
            .object
            .as_kind::<StatefulSet>()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.current_replicas)
            .unwrap_or(0);
        let old = rolling
            && match partition {
                Some(p) => (index as i32) < p,
                None => (index as i32) < current_replicas,
            };
        let (template, revision) = if old {
            (&self.current_template, self.current.clone())
        } else {
            (&self.spec.template, name_of(&self.history.update.metadata))
        };
        let name = format!("{}-{ordinal}", self.object.name());
        let mut pod = pod_from_template(&self.object, template, &name);
        pod.metadata.generate_name = None;
        pod.metadata.name = Some(name.clone());
        let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(POD_NAME_LABEL.into(), name.clone());
        labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
        labels.insert(CONTROLLER_REVISION_HASH.into(), revision);
        let spec = pod.spec.get_or_insert_with(Default::default);
        spec.hostname = Some(name);
        if let Some(service) = self.spec.service_name.as_deref().filter(|s| !s.is_empty()) {
            spec.subdomain = Some(service.to_string());
        }
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        for template in self.claim_templates() {
            let volume_name = name_of(&template.metadata);
            volumes.retain(|v| v.name != volume_name);
            volumes.push(Volume {
                name: volume_name.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&volume_name, self.object.name(), ordinal),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
        pod
    }

    async fn create_pod(
        &self,
        index: usize,
        ordinal: i32,
    ) -> Result<Option<Arc<Object>>, ControllerError> {
        let pod = self.new_pod(index, ordinal);
        tracing::info!(set = %self.object.display_name(), ordinal, "creating statefulset pod");
        match self.ctx.store.create(pod.into_object()).await {
            Ok(created) => {
                self.pods
                    .wait_observed(&Observed::Written(created.clone()))
                    .await;
                Ok(Some(created))
            }
            // The previous pod of this ordinal is still on its way out.
            Err(StoreError::AlreadyExists { .. }) => Ok(None),
            Err(e) => Err(ControllerError::store("create pod for", &self.object, e)),
        }
    }

    fn claim_templates(&self) -> &[PersistentVolumeClaim] {
        self.spec.volume_claim_templates.as_deref().unwrap_or(&[])
    }

    fn retention(&self) -> (bool, bool) {
        let policy = self.spec.persistent_volume_claim_retention_policy.as_ref();
        let delete = |v: Option<&String>| v.map(String::as_str) == Some("Delete");
        (
            delete(policy.and_then(|p| p.when_deleted.as_ref())),
            delete(policy.and_then(|p| p.when_scaled.as_ref())),
        )
    }

    fn set_reference(&self) -> OwnerReference {
        OwnerReference {
            controller: None,
            block_owner_deletion: None,
            ..super::ownership::controller_reference(&self.object)
        }
    }

    /// Creates the missing claims of the pod at `ordinal`. Returns false when one is still
    /// being deleted (the pod must wait for it to go, then get a fresh one).
    async fn create_claims(&mut self, ordinal: i32) -> Result<bool, ControllerError> {
        let (delete_with_set, _) = self.retention();
        let mut ready = true;
        for template in self.claim_templates().to_vec() {
            let name = claim_name(&name_of(&template.metadata), self.object.name(), ordinal);
            let key = ObjectKey {
                namespace: self.object.namespace().map(str::to_string),
                name: name.clone(),
            };
            if let Some(existing) = self.claims.get(&key) {
                if existing.meta().deletion_timestamp.is_some() {
                    ready = false;
                    self.wait = Some(self.wait.map_or(CLAIM_RETRY, |w| w.min(CLAIM_RETRY)));
                }
                continue;
            }
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(self.spec.selector.match_labels.clone().unwrap_or_default());
            let claim = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: self.object.namespace().map(str::to_string),
                    labels: Some(labels),
                    annotations: template.metadata.annotations.clone(),
                    owner_references: delete_with_set.then(|| vec![self.set_reference()]),
                    ..Default::default()
                },
                spec: template.spec.clone(),
                status: None,
            };
            match self.ctx.store.create(claim.into_object()).await {
                Ok(created) => self.claims.wait_observed(&Observed::Written(created)).await,
                Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(ControllerError::store("create claim for", &self.object, e)),
            }
        }
        Ok(ready)
    }

    /// Brings the ownerReferences of the claims of `ordinal` in line with the retention
    /// policy: the set owns them when `whenDeleted: Delete`; a condemned pod owns them when
    /// `whenScaled: Delete`, so that they go when it goes.
    async fn fix_retention(
        &self,
        ordinal: i32,
        condemned: Option<&Arc<Object>>,
    ) -> Result<(), ControllerError> {
        let (delete_with_set, delete_on_scale) = self.retention();
        let pod_owner = condemned
            .filter(|_| delete_on_scale)
            .map(|p| OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: p.name().to_string(),
                uid: p.uid().to_string(),
                controller: None,
                block_owner_deletion: None,
            });
        for template in self.claim_templates() {
            let key = ObjectKey {
                namespace: self.object.namespace().map(str::to_string),
                name: claim_name(&name_of(&template.metadata), self.object.name(), ordinal),
            };
            let Some(existing) = self.claims.get(&key) else {
                continue;
            };
            let refs = existing.meta().owner_references.clone().unwrap_or_default();
            let mut wanted: Vec<OwnerReference> = refs
                .iter()
                .filter(|r| {
                    r.uid != self.object.uid() && !(r.kind == "Pod" && r.api_version == "v1")
                })
                .cloned()
                .collect();
            // A condemned pod's claims follow the pod alone (Kubernetes'
            // `updateClaimOwnerRefForSetAndPod`).
            match &pod_owner {
                Some(owner) => wanted.push(owner.clone()),
                None if delete_with_set => wanted.push(self.set_reference()),
                None => {}
            }
            let same = wanted.len() == refs.len() && wanted.iter().all(|w| refs.contains(w));
            if same {
                continue;
            }
            let mut updated = (*existing).clone();
            updated.meta_mut().owner_references = (!wanted.is_empty()).then_some(wanted);
            match self.ctx.store.update(updated).await {
                Ok(written) => self.claims.wait_observed(&Observed::Written(written)).await,
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(ControllerError::store("update claim of", &self.object, e)),
            }
        }
        Ok(())
    }

    /// Puts the identity labels back on an adopted pod that lacks them.
    async fn fix_identity(
        &self,
        existing: &Arc<Object>,
        ordinal: i32,
    ) -> Result<(), ControllerError> {
        let labels = existing.meta().labels.as_ref();
        let has = |k: &str, v: &str| labels.and_then(|l| l.get(k)).map(String::as_str) == Some(v);
        let index = ordinal.to_string();
        if has(POD_NAME_LABEL, existing.name()) && has(POD_INDEX_LABEL, &index) {
            return Ok(());
        }
        let mut updated = (**existing).clone();
        let labels = updated.meta_mut().labels.get_or_insert_with(BTreeMap::new);
        labels.insert(POD_NAME_LABEL.into(), existing.name().to_string());
        labels.insert(POD_INDEX_LABEL.into(), index);
        match self.ctx.store.update(updated).await {
            Ok(written) => self.pods.wait_observed(&Observed::Written(written)).await,
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(ControllerError::store("label pod of", &self.object, e)),
        }
        Ok(())
    }

    /// Writes the status from the pod cache (which reflects this reconcile's writes) and
    /// trims the revision history.
    async fn finish(
        mut self,
        set: &Typed<StatefulSet>,
        previous: StatefulSetStatus,
    ) -> Result<Action, ControllerError> {
        let update = name_of(&self.history.update.metadata);
        let mut status = StatefulSetStatus {
            observed_generation: set.metadata.generation,
            collision_count: self.history.collision_count,
            current_revision: Some(self.current.clone()),
            update_revision: Some(update.clone()),
            conditions: previous.conditions.clone(),
            ..Default::default()
        };
        let (mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0);
        let mut live: BTreeSet<String> = [self.current.clone(), update.clone()].into();
        for object in self.pods.owned_by(self.object.uid()) {
            if ordinal_of(self.object.name(), object.name()).is_none() {
                continue;
            }
            let p = pod(&object);
            status.replicas += 1;
            if is_running_and_ready(p) {
                ready += 1;
                if self.is_available(p) {
                    available += 1;
                }
            }
            let revision = revision_of(p);
            if let Some(r) = revision {
                live.insert(r.to_string());
            }
            if !is_terminating(p) {
                if revision == Some(self.current.as_str()) {
                    current += 1;
                }
                if revision == Some(update.as_str()) {
                    updated += 1;
                }
            }
        }
        status.ready_replicas = Some(ready);
        status.available_replicas = Some(available);
        status.current_replicas = Some(current);
        status.updated_replicas = Some(updated);
        let rolling = self
            .spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            != Some("OnDelete");
        if rolling && updated == status.replicas && ready == status.replicas {
            status.current_revision = Some(update);
            status.current_replicas = Some(updated);
        }
        if set.status.as_ref() != Some(&status) {
            let mut written = set.to_owned_value();
            written.status = Some(status);
            self.ctx
                .store
                .update_status(written.into_object())
                .await
                .map_err(|e| ControllerError::store("update status of", &self.object, e))?;
        }
        let limit = self.spec.revision_history_limit.unwrap_or(10);
        history::truncate(self.ctx, &self.object, &self.history, &live, limit).await?;
        Ok(self.wait.map_or(Action::AwaitChange, Action::requeue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_parse_only_from_the_set_prefix() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web", "web-a"), None);
        assert_eq!(ordinal_of("web", "web-+1"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-db-1"), None);
        assert_eq!(claim_name("data", "web", 3), "data-web-3");
    }
}

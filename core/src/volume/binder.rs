//! PersistentVolume and PersistentVolumeClaim controllers (Kubernetes' PV controller).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimStatus, PersistentVolumeSpec, PersistentVolumeStatus, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{claims_of, DEFAULT_CLASS, PROVISIONED_BY, SELECTED_NODE};
use crate::backend::volume::{
    AccessMode, AccessType, CapacityRange, CreateVolumeRequest, VolumeCapability,
};
use crate::backend::{BackendError, VolumePlugin};
use crate::controller::{Action, Context, Controller, ControllerError, ObjectKey, Reconciler};
use crate::object::{Kind, Object, Typed};
use crate::quantity;
use crate::store::{Api, DeleteOptions, LabelSelector, ListOptions};

/// What a volume controller can fail with.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A store call or an invalid field.
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// The CSI driver refused to create or delete a volume.
    #[error("{operation} for {object} with driver {driver}: {source}")]
    Driver {
        /// `provision` or `delete`.
        operation: &'static str,
        /// The claim or volume.
        object: String,
        /// The driver's name.
        driver: String,
        /// The driver's error.
        #[source]
        source: BackendError,
    },
}

/// The CSI access mode of a Kubernetes access mode.
pub(crate) fn access_mode(mode: &str) -> AccessMode {
    match mode {
        "ReadOnlyMany" => AccessMode::MultiNodeReaderOnly,
        "ReadWriteMany" => AccessMode::MultiNodeMultiWriter,
        "ReadWriteOncePod" => AccessMode::SingleNodeSingleWriter,
        _ => AccessMode::SingleNodeWriter,
    }
}

fn storage_bytes(list: Option<&BTreeMap<String, Quantity>>) -> i64 {
    list.and_then(|l| l.get("storage"))
        .and_then(|q| quantity::units(q).ok())
        .unwrap_or(0)
}

fn claim_key(pv: &PersistentVolume) -> Option<ObjectKey> {
    let claim = pv.spec.as_ref()?.claim_ref.as_ref()?;
    Some(ObjectKey::namespaced(
        claim.namespace.as_deref().unwrap_or("default"),
        claim.name.as_deref()?,
    ))
}

/// Binds claims to volumes, provisioning volumes through the drivers it is given.
pub struct PersistentVolumeClaimController {
    drivers: Vec<Arc<dyn VolumePlugin>>,
}

impl PersistentVolumeClaimController {
    /// A controller that provisions through `drivers` (matched by StorageClass provisioner).
    pub fn controller(drivers: Vec<Arc<dyn VolumePlugin>>) -> Controller<Self> {
        Controller::new(
            "persistentvolume-binder",
            Kind::PersistentVolumeClaim,
            PersistentVolumeClaimController { drivers },
        )
        .watches(Kind::PersistentVolume, |pv, _| {
            pv.as_kind::<PersistentVolume>()
                .and_then(claim_key)
                .into_iter()
                .collect()
        })
        .watches(Kind::Pod, |pod, _| {
            // A scheduled pod is the first consumer of its WaitForFirstConsumer claims.
            let Some(pod) = pod.as_kind::<Pod>() else {
                return Vec::new();
            };
            if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none()
            {
                return Vec::new();
            }
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            claims_of(pod)
                .map(|c| ObjectKey::namespaced(namespace, c))
                .collect()
        })
    }

    /// For a claim whose class binds at the first consumer: the node chosen for it (the
    /// `volume.kubernetes.io/selected-node` annotation), set here from the first pod using
    /// the claim that is scheduled. `None` while no such pod exists.
    async fn selected_node(
        &self,
        ctx: &Context,
        claim: &Typed<PersistentVolumeClaim>,
    ) -> Result<Option<String>, VolumeError> {
        let annotations = claim.metadata.annotations.as_ref();
        if let Some(node) = annotations.and_then(|a| a.get(SELECTED_NODE)) {
            return Ok(Some(node.clone()));
        }
        let namespace = claim.metadata.namespace.as_deref().unwrap_or("default");
        let name = claim.metadata.name.as_deref().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(ctx.store.clone(), namespace);
        let pods = pods
            .list(&ListOptions::default())
            .await
            .map_err(|e| ControllerError::store("list consumers of", claim.object(), e))?;
        let node = pods
            .iter()
            .filter(|p| claims_of(p).any(|c| c == name))
            .find_map(|p| p.spec.as_ref()?.node_name.clone());
        let Some(node) = node else {
            return Ok(None);
        };
        let mut annotated = claim.to_owned_value();
        annotated
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(SELECTED_NODE.to_string(), node.clone());
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.store.clone(), namespace);
        claims
            .update(annotated)
            .await
            .map_err(|e| ControllerError::store("select node for", claim.object(), e))?;
        Ok(Some(node))
    }

    fn driver(&self, name: &str) -> Option<&Arc<dyn VolumePlugin>> {
        self.drivers.iter().find(|d| d.name() == name)
    }

    async fn class_of(&self, ctx: &Context, claim: &PersistentVolumeClaim) -> Option<StorageClass> {
        let classes: Api<StorageClass> = Api::all(ctx.store.clone());
        let list = classes.list(&ListOptions::default()).await.ok()?;
        let wanted = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone());
        list.into_iter()
            .find(|c| match &wanted {
                Some(name) => c.metadata.name.as_deref() == Some(name.as_str()),
                None => c
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS))
                    .is_some_and(|v| v == "true"),
            })
            .map(|c| c.to_owned_value())
    }
}

/// Whether a class binds its claims only once a pod using them is scheduled.
fn waits_for_consumer(class: Option<&StorageClass>) -> bool {
    class.and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer")
}

/// Whether `pv` can serve `claim`: class, access modes, size, selector, not claimed by
/// another claim, and available.
fn fits(pv: &PersistentVolume, claim: &PersistentVolumeClaim, class: Option<&str>) -> bool {
    let (Some(spec), Some(want)) = (pv.spec.as_ref(), claim.spec.as_ref()) else {
        return false;
    };
    if pv.metadata.deletion_timestamp.is_some() {
        return false;
    }
    if let Some(r) = &spec.claim_ref {
        if r.uid.as_deref() != claim.metadata.uid.as_deref() {
            return false;
        }
    }
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released") {
        return false;
    }
    if spec.storage_class_name.as_deref().unwrap_or("") != class.unwrap_or("") {
        return false;
    }
    let modes = spec.access_modes.as_deref().unwrap_or(&[]);
    if !want
        .access_modes
        .iter()
        .flatten()
        .all(|m| modes.contains(m))
    {
        return false;
    }
    let requested = storage_bytes(want.resources.as_ref().and_then(|r| r.requests.as_ref()));
    if storage_bytes(spec.capacity.as_ref()) < requested {
        return false;
    }
    if let Some(selector) = &want.selector {
        match LabelSelector::from_k8s(selector) {
            Ok(s) if s.matches(pv.metadata.labels.as_ref()) => {}
            _ => return false,
        }
    }
    true
}

#[async_trait]
impl Reconciler for PersistentVolumeClaimController {
    type Error = VolumeError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, VolumeError> {
        let Some(claim) = Typed::<PersistentVolumeClaim>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let namespace = object.namespace().unwrap_or("default");
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.store.clone(), namespace);
        let volumes: Api<PersistentVolume> = Api::all(ctx.store.clone());
        let store_err = |op: &'static str, o: &Object| {
            let o = o.clone();
            move |e| VolumeError::Controller(ControllerError::store(op, &o, e))
        };

        let class = self.class_of(ctx, &claim).await;
        let class_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone())
            .or_else(|| class.as_ref().and_then(|c| c.metadata.name.clone()));

        // Already bound: make sure both statuses say so.
        let bound_name = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
        let pv = match bound_name {
            Some(name) => volumes
                .get_opt(&name)
                .await
                .map_err(store_err("get", &object))?,
            None if waits_for_consumer(class.as_ref())
                && self.selected_node(ctx, &claim).await?.is_none() =>
            {
                // WaitForFirstConsumer: nothing is bound or provisioned before a pod using
                // the claim is scheduled.
                None
            }
            None => {
                let all = volumes
                    .list(&ListOptions::default())
                    .await
                    .map_err(store_err("list", &object))?;
                let mut candidates: Vec<_> = all
                    .into_iter()
                    .filter(|pv| fits(pv, &claim, class_name.as_deref()))
                    .collect();
                candidates.sort_by_key(|pv| {
                    storage_bytes(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()))
                });
                match candidates.into_iter().next() {
                    Some(pv) => Some(pv),
                    None => self.provision(ctx, &claim, class.as_ref()).await?,
                }
            }
        };
        let Some(pv) = pv else {
            if claim.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Pending") {
                let mut pending = claim.to_owned_value();
                pending.status.get_or_insert_with(Default::default).phase = Some("Pending".into());
                claims
                    .update_status(pending)
                    .await
                    .map_err(store_err("update status", &object))?;
            }
            return Ok(Action::AwaitChange);
        };

        // Bind the volume to the claim, then the claim to the volume.
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let mut pv_value = pv.to_owned_value();
        let spec = pv_value.spec.get_or_insert_with(Default::default);
        if spec.claim_ref.as_ref().and_then(|r| r.uid.as_deref()) != claim.metadata.uid.as_deref() {
            spec.claim_ref = Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(namespace.to_string()),
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
                ..Default::default()
            });
            pv_value = volumes
                .update(pv_value)
                .await
                .map_err(store_err("bind", pv.object()))?
                .to_owned_value();
        }
        if pv_value.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            pv_value.status = Some(PersistentVolumeStatus {
                phase: Some("Bound".into()),
                ..Default::default()
            });
            volumes
                .update_status(pv_value.clone())
                .await
                .map_err(store_err("update status", pv.object()))?;
        }
        let mut claim_value = claim.to_owned_value();
        if claim_value
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            != Some(pv_name.as_str())
        {
            claim_value
                .spec
                .get_or_insert_with(Default::default)
                .volume_name = Some(pv_name);
            claim_value = claims
                .update(claim_value)
                .await
                .map_err(store_err("bind", &object))?
                .to_owned_value();
        }
        let pv_spec = pv_value.spec.clone().unwrap_or_default();
        let status = PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            access_modes: pv_spec.access_modes.clone(),
            capacity: pv_spec.capacity.clone(),
            ..Default::default()
        };
        if claim_value.status.as_ref() != Some(&status) {
            claim_value.status = Some(status);
            claims
                .update_status(claim_value)
                .await
                .map_err(store_err("update status", &object))?;
        }
        Ok(Action::AwaitChange)
    }
}

impl PersistentVolumeClaimController {
    /// Creates a volume for `claim` through its class's provisioner; returns the new PV.
    async fn provision(
        &self,
        ctx: &Context,
        claim: &Typed<PersistentVolumeClaim>,
        class: Option<&StorageClass>,
    ) -> Result<Option<Typed<PersistentVolume>>, VolumeError> {
        let Some(class) = class else {
            return Ok(None);
        };
        let Some(driver) = self.driver(&class.provisioner) else {
            // Another provisioner's class: not ours to provision.
            return Ok(None);
        };
        let spec = claim.spec.clone().unwrap_or_default();
        let requested = storage_bytes(spec.resources.as_ref().and_then(|r| r.requests.as_ref()));
        let modes = spec
            .access_modes
            .clone()
            .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
        let fs_type = class
            .parameters
            .as_ref()
            .and_then(|p| p.get("csi.storage.k8s.io/fstype"))
            .cloned()
            .unwrap_or_default();
        let uid = claim.metadata.uid.clone().unwrap_or_default();
        let name = format!("pvc-{uid}");
        let request = CreateVolumeRequest {
            name: name.clone(),
            capacity: CapacityRange {
                required_bytes: requested.max(0) as u64,
                limit_bytes: 0,
            },
            capabilities: modes
                .iter()
                .map(|m| VolumeCapability {
                    access_type: AccessType::Mount {
                        fs_type: fs_type.clone(),
                        mount_flags: class.mount_options.clone().unwrap_or_default(),
                    },
                    access_mode: access_mode(m),
                })
                .collect(),
            parameters: class.parameters.clone().unwrap_or_default(),
            ..Default::default()
        };
        let volume =
            driver
                .create_volume(&request)
                .await
                .map_err(|source| VolumeError::Driver {
                    operation: "provision",
                    object: claim.object().display_name(),
                    driver: class.provisioner.clone(),
                    source,
                })?;
        let capacity = if volume.capacity_bytes > 0 {
            volume.capacity_bytes as i64
        } else {
            requested
        };
        let mut pv = PersistentVolume::default();
        pv.metadata.name = Some(name);
        pv.metadata.annotations = Some(BTreeMap::from([(
            PROVISIONED_BY.to_string(),
            class.provisioner.clone(),
        )]));
        pv.spec = Some(PersistentVolumeSpec {
            access_modes: Some(modes),
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(capacity.to_string()),
            )])),
            csi: Some(CSIPersistentVolumeSource {
                driver: class.provisioner.clone(),
                volume_handle: volume.volume_id,
                volume_attributes: Some(volume.volume_context),
                fs_type: (!fs_type.is_empty()).then_some(fs_type),
                ..Default::default()
            }),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: class.metadata.name.clone(),
            volume_mode: spec.volume_mode.clone(),
            mount_options: class.mount_options.clone(),
            ..Default::default()
        });
        let volumes: Api<PersistentVolume> = Api::all(ctx.store.clone());
        match volumes.create(pv).await {
            Ok(created) => Ok(Some(created)),
            // A previous reconcile made it already (its create answer was lost).
            Err(crate::store::StoreError::AlreadyExists { .. }) => volumes
                .get_opt(&format!("pvc-{uid}"))
                .await
                .map_err(|e| ControllerError::store("get", claim.object(), e).into()),
            Err(e) => Err(ControllerError::store("create volume for", claim.object(), e).into()),
        }
    }
}

/// Releases volumes whose claims are gone and reclaims them by their policy: `Delete`
/// deletes the driver's volume and the PV, `Retain` leaves it `Released`.
pub struct PersistentVolumeController {
    drivers: Vec<Arc<dyn VolumePlugin>>,
}

impl PersistentVolumeController {
    /// A controller that deletes volumes through `drivers`.
    pub fn controller(drivers: Vec<Arc<dyn VolumePlugin>>) -> Controller<Self> {
        Controller::new(
            "persistentvolume-reclaimer",
            Kind::PersistentVolume,
            PersistentVolumeController { drivers },
        )
        .watches(Kind::PersistentVolumeClaim, |claim, _ctx| {
            // A claim change (deletion) concerns the volume it was bound to.
            claim
                .as_kind::<PersistentVolumeClaim>()
                .and_then(|c| c.spec.as_ref()?.volume_name.clone())
                .map(|v| ObjectKey::cluster(&v))
                .into_iter()
                .collect()
        })
    }
}

#[async_trait]
impl Reconciler for PersistentVolumeController {
    type Error = VolumeError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, VolumeError> {
        let Some(pv) = Typed::<PersistentVolume>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        let volumes: Api<PersistentVolume> = Api::all(ctx.store.clone());
        let phase = pv.status.as_ref().and_then(|s| s.phase.clone());
        let Some(claim_ref) = pv.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
            if phase.as_deref() != Some("Available") {
                let mut v = pv.to_owned_value();
                v.status = Some(PersistentVolumeStatus {
                    phase: Some("Available".into()),
                    ..Default::default()
                });
                volumes
                    .update_status(v)
                    .await
                    .map_err(|e| ControllerError::store("update status", &object, e))?;
            }
            return Ok(Action::AwaitChange);
        };
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(
            ctx.store.clone(),
            claim_ref.namespace.as_deref().unwrap_or("default"),
        );
        let claim = claims
            .get_opt(claim_ref.name.as_deref().unwrap_or(""))
            .await
            .map_err(|e| ControllerError::store("get claim of", &object, e))?;
        let claim_alive = claim.is_some_and(|c| c.metadata.uid == claim_ref.uid);
        if claim_alive {
            return Ok(Action::AwaitChange);
        }
        // The claim is gone: release, then reclaim.
        let policy = pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.clone())
            .unwrap_or_else(|| "Retain".into());
        if policy == "Delete" {
            if let Some(csi) = pv.spec.as_ref().and_then(|s| s.csi.as_ref()) {
                let Some(driver) = self.drivers.iter().find(|d| d.name() == csi.driver) else {
                    return Ok(Action::AwaitChange);
                };
                driver
                    .delete_volume(&csi.volume_handle, &Default::default())
                    .await
                    .map_err(|source| VolumeError::Driver {
                        operation: "delete",
                        object: object.display_name(),
                        driver: csi.driver.clone(),
                        source,
                    })?;
            }
            match volumes
                .delete(object.name(), &DeleteOptions::default())
                .await
            {
                Ok(_) | Err(crate::store::StoreError::NotFound { .. }) => {}
                Err(e) => return Err(ControllerError::store("delete", &object, e).into()),
            }
            return Ok(Action::AwaitChange);
        }
        if phase.as_deref() != Some("Released") {
            let mut v = pv.to_owned_value();
            v.status = Some(PersistentVolumeStatus {
                phase: Some("Released".into()),
                ..Default::default()
            });
            volumes
                .update_status(v)
                .await
                .map_err(|e| ControllerError::store("update status", &object, e))?;
        }
        Ok(Action::AwaitChange)
    }
}

//! The Endpoints and EndpointSlice controllers: for every Service with a selector, publish the
//! addresses of the pods it selects, so that a proxy routes to ready pods only.
//!
//! Both read the same facts from a pod ([`PodEndpoint`]): it has an IP, it is not finished,
//! `serving` is its Ready condition, `terminating` is its deletionTimestamp, and `ready` is
//! serving and not terminating. Endpoints lists ready pods under `addresses` and not-ready
//! ones under `notReadyAddresses` (terminating pods are left out); EndpointSlices keep
//! terminating pods with their conditions, at most [`MAX_ENDPOINTS_PER_SLICE`] per slice.
//! Pods whose named `targetPort` resolves to different numbers go to different subsets and
//! slices, as in Kubernetes. `publishNotReadyAddresses` makes every pod ready.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ownership::{controller_reference, is_controlled_by};
use super::pod_state::{is_finished, is_ready};
use crate::controller::{
    Action, Context, Controller, ControllerError, ObjectKey, Observed, Reconciler,
};
use crate::object::{Kind, Object, Resource, Typed};
use crate::store::{DeleteOptions, LabelSelector, StoreError};

/// Most endpoints in one EndpointSlice (kube-controller-manager's default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Label naming the Service of an EndpointSlice.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// A Service port resolved against a pod: name, number, protocol, appProtocol.
pub type ResolvedPort = (Option<String>, i32, Option<String>, Option<String>);

/// One pod as an endpoint of a Service.
#[derive(Clone, Debug, PartialEq)]
pub struct PodEndpoint {
    /// The pod's IP.
    pub ip: String,
    /// The pod's name.
    pub name: String,
    /// The pod's uid.
    pub uid: String,
    /// The node the pod runs on.
    pub node_name: Option<String>,
    /// The pod is Ready (or the Service publishes not-ready addresses).
    pub serving: bool,
    /// The pod is being deleted.
    pub terminating: bool,
    /// The Service's ports resolved against this pod.
    pub ports: Vec<ResolvedPort>,
}

impl PodEndpoint {
    /// Whether traffic should go to this endpoint.
    pub fn ready(&self) -> bool {
        self.serving && !self.terminating
    }
}

/// The endpoints of `service` among `pods`, sorted by pod name.
pub fn pod_endpoints(service: &Service, pods: &[Arc<Object>]) -> Vec<PodEndpoint> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let selector = LabelSelector::from_labels(selector);
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut out = Vec::new();
    for object in pods {
        let Some(pod) = object.as_kind::<Pod>() else {
            continue;
        };
        if !selector.matches(pod.metadata.labels.as_ref()) || is_finished(pod) {
            continue;
        }
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let mut ports = Vec::new();
        let mut resolved_all = true;
        for port in spec.ports.iter().flatten() {
            match target_port(pod, port.target_port.as_ref(), port.port) {
                Some(n) => ports.push((
                    port.name.clone(),
                    n,
                    Some(port.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    port.app_protocol.clone(),
                )),
                None => resolved_all = false,
            }
        }
        if !resolved_all && ports.is_empty() && spec.ports.as_ref().is_some_and(|p| !p.is_empty()) {
            continue;
        }
        out.push(PodEndpoint {
            ip,
            name: object.name().to_string(),
            uid: object.uid().to_string(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            serving: publish_not_ready || is_ready(pod),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            ports,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn target_port(pod: &Pod, target: Option<&IntOrString>, port: i32) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

fn pod_ref(namespace: &str, e: &PodEndpoint) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: Some(namespace.to_string()),
        name: Some(e.name.clone()),
        uid: Some(e.uid.clone()),
        ..Default::default()
    }
}

/// Pods (cached) in `service`'s namespace.
fn pods_for(ctx: &Context, service: &Object) -> Vec<Arc<Object>> {
    ctx.informers
        .get(&Kind::Pod)
        .list_namespace(service.namespace().unwrap_or("default"))
}

/// Maps a pod to the Services in its namespace whose selector matches it.
fn services_selecting(pod: &Object, ctx: &Context) -> Vec<ObjectKey> {
    let Some(ns) = pod.namespace() else {
        return Vec::new();
    };
    ctx.informers
        .get(&Kind::Service)
        .list_namespace(ns)
        .iter()
        .filter(|svc| {
            svc.as_kind::<Service>()
                .and_then(|s| s.spec.as_ref()?.selector.as_ref())
                .filter(|s| !s.is_empty())
                .is_some_and(|sel| {
                    let labels = pod.meta().labels.as_ref();
                    sel.iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
                })
        })
        .map(|svc| ObjectKey::of(svc))
        .collect()
}

/// Keeps an `Endpoints` object per Service.
#[derive(Default)]
pub struct EndpointsController;

impl EndpointsController {
    /// The controller, ready to run.
    pub fn controller() -> Controller<EndpointsController> {
        Controller::new("endpoints", Kind::Service, EndpointsController)
            .watches(Kind::Pod, services_selecting)
            .watches(Kind::Endpoints, |ep, _| vec![ObjectKey::of(ep)])
    }
}

#[async_trait]
impl Reconciler for EndpointsController {
    type Error = ControllerError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error> {
        let Some(service) = Typed::<Service>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        if service
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_none_or(|s| s.is_empty())
        {
            // Services without a selector have user-managed Endpoints.
            return Ok(Action::AwaitChange);
        }
        let ns = object.namespace().unwrap_or("default").to_string();
        let endpoints = pod_endpoints(&service, &pods_for(ctx, &object));
        let mut groups: BTreeMap<&[ResolvedPort], EndpointSubset> = BTreeMap::new();
        for e in endpoints.iter().filter(|e| !e.terminating) {
            let ports: Vec<CorePort> = e
                .ports
                .iter()
                .map(|(name, port, protocol, app)| CorePort {
                    name: name.clone(),
                    port: *port,
                    protocol: protocol.clone(),
                    app_protocol: app.clone(),
                })
                .collect();
            let subset = groups.entry(&e.ports).or_insert_with(|| EndpointSubset {
                ports: (!ports.is_empty()).then_some(ports),
                ..Default::default()
            });
            let address = EndpointAddress {
                ip: e.ip.clone(),
                node_name: e.node_name.clone(),
                target_ref: Some(pod_ref(&ns, e)),
                hostname: None,
            };
            let list = if e.ready() {
                subset.addresses.get_or_insert_with(Vec::new)
            } else {
                subset.not_ready_addresses.get_or_insert_with(Vec::new)
            };
            list.push(address);
        }
        for subset in groups.values_mut() {
            for list in [&mut subset.addresses, &mut subset.not_ready_addresses]
                .into_iter()
                .flatten()
            {
                list.sort_by(|a, b| a.ip.cmp(&b.ip));
            }
        }
        let subsets: Vec<EndpointSubset> = groups.into_values().collect();
        let subsets = (!subsets.is_empty()).then_some(subsets);
        let informer = ctx.informers.synced(&Kind::Endpoints).await;
        let existing = informer.get(&ObjectKey::of(&object));
        let existing = existing.as_ref().and_then(|o| o.as_kind::<Endpoints>());
        let labels = service.metadata.labels.clone();
        match existing {
            Some(ep) if ep.subsets == subsets && ep.metadata.labels == labels => {}
            Some(ep) => {
                let mut ep = ep.clone();
                ep.subsets = subsets;
                ep.metadata.labels = labels;
                let written = ctx
                    .store
                    .update(ep.into_object())
                    .await
                    .map_err(|e| ControllerError::store("update endpoints of", &object, e))?;
                informer.wait_observed(&Observed::Written(written)).await;
            }
            None => {
                let ep = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(object.name().to_string()),
                        namespace: Some(ns),
                        labels,
                        ..Default::default()
                    },
                    subsets,
                };
                match ctx.store.create(ep.into_object()).await {
                    Ok(written) => informer.wait_observed(&Observed::Written(written)).await,
                    // Created meanwhile by another writer: the watch brings it back here.
                    Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => {
                        return Err(ControllerError::store("create endpoints of", &object, e))
                    }
                }
            }
        }
        Ok(Action::AwaitChange)
    }

    async fn cleanup(&self, key: &ObjectKey, ctx: &Context) -> Result<Action, Self::Error> {
        let informer = ctx.informers.synced(&Kind::Endpoints).await;
        if informer.get(key).is_some() {
            match ctx
                .store
                .delete(
                    &Kind::Endpoints,
                    key.namespace.as_deref(),
                    &key.name,
                    &DeleteOptions::default(),
                )
                .await
            {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => {
                    return Err(ControllerError::store_key(
                        "delete",
                        &Kind::Endpoints,
                        key,
                        e,
                    ))
                }
            }
        }
        Ok(Action::AwaitChange)
    }
}

/// Keeps a Service's EndpointSlices.
#[derive(Default)]
pub struct EndpointSliceController;

impl EndpointSliceController {
    /// The controller, ready to run.
    pub fn controller() -> Controller<EndpointSliceController> {
        Controller::new("endpointslice", Kind::Service, EndpointSliceController)
            .owns(Kind::EndpointSlice)
            .watches(Kind::Pod, services_selecting)
    }
}

fn address_type(ip: &str) -> &'static str {
    if ip.contains(':') {
        "IPv6"
    } else {
        "IPv4"
    }
}

#[async_trait]
impl Reconciler for EndpointSliceController {
    type Error = ControllerError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error> {
        let Some(service) = Typed::<Service>::new(object.clone()) else {
            return Ok(Action::AwaitChange);
        };
        if service
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_none_or(|s| s.is_empty())
        {
            return Ok(Action::AwaitChange);
        }
        let ns = object.namespace().unwrap_or("default").to_string();
        let endpoints = pod_endpoints(&service, &pods_for(ctx, &object));
        // Desired slices: grouped by (address type, ports), chunked.
        let mut groups: BTreeMap<(&str, &[ResolvedPort]), Vec<Endpoint>> = BTreeMap::new();
        for e in &endpoints {
            groups
                .entry((address_type(&e.ip), &e.ports))
                .or_default()
                .push(Endpoint {
                    addresses: vec![e.ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(e.ready()),
                        serving: Some(e.serving),
                        terminating: Some(e.terminating),
                    }),
                    node_name: e.node_name.clone(),
                    target_ref: Some(pod_ref(&ns, e)),
                    ..Default::default()
                });
        }
        let informer = ctx.informers.synced(&Kind::EndpointSlice).await;
        let mut existing: Vec<EndpointSlice> = informer
            .owned_by(object.uid())
            .iter()
            .filter(|o| is_controlled_by(o, object.uid()))
            .filter_map(|o| o.as_kind::<EndpointSlice>().cloned())
            .collect();
        existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut labels = service.metadata.labels.clone().unwrap_or_default();
        labels.insert(SERVICE_NAME_LABEL.into(), object.name().to_string());
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());

        let mut last_write = None;
        let mut used = vec![false; existing.len()];
        for ((address_type, ports), endpoints) in groups {
            let ports: Vec<EndpointPort> = ports
                .iter()
                .map(|(name, port, protocol, app)| EndpointPort {
                    name: name.clone(),
                    port: Some(*port),
                    protocol: protocol.clone(),
                    app_protocol: app.clone(),
                })
                .collect();
            let ports = (!ports.is_empty()).then_some(ports);
            for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
                // Reuse a slice of the same shape, else create one.
                let slot = existing.iter().enumerate().position(|(i, s)| {
                    !used[i] && s.address_type == address_type && s.ports == ports
                });
                let slice = EndpointSlice {
                    address_type: address_type.to_string(),
                    endpoints: chunk.to_vec(),
                    ports: ports.clone(),
                    metadata: ObjectMeta::default(),
                };
                match slot {
                    Some(i) => {
                        used[i] = true;
                        let current = &existing[i];
                        if current.endpoints == slice.endpoints
                            && current.metadata.labels.as_ref() == Some(&labels)
                        {
                            continue;
                        }
                        let mut updated = current.clone();
                        updated.endpoints = slice.endpoints;
                        updated.metadata.labels = Some(labels.clone());
                        let written =
                            ctx.store.update(updated.into_object()).await.map_err(|e| {
                                ControllerError::store("update endpoint slice of", &object, e)
                            })?;
                        last_write = Some(written);
                    }
                    None => {
                        let mut slice = slice;
                        slice.metadata = ObjectMeta {
                            generate_name: Some(format!("{}-", object.name())),
                            namespace: Some(ns.clone()),
                            labels: Some(labels.clone()),
                            owner_references: Some(vec![controller_reference(&object)]),
                            ..Default::default()
                        };
                        let written = ctx.store.create(slice.into_object()).await.map_err(|e| {
                            ControllerError::store("create endpoint slice of", &object, e)
                        })?;
                        last_write = Some(written);
                    }
                }
            }
        }
        for (i, slice) in existing.iter().enumerate() {
            if used[i] {
                continue;
            }
            let name = slice.metadata.name.as_deref().unwrap_or("");
            match ctx
                .store
                .delete(
                    &Kind::EndpointSlice,
                    Some(&ns),
                    name,
                    &DeleteOptions::default(),
                )
                .await
            {
                Ok(deleted) => informer.wait_observed(&Observed::from(&deleted)).await,
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => {
                    return Err(ControllerError::store(
                        "delete endpoint slice of",
                        &object,
                        e,
                    ))
                }
            }
        }
        if let Some(write) = last_write {
            informer.wait_observed(&Observed::Written(write)).await;
        }
        Ok(Action::AwaitChange)
    }
}

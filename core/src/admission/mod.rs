//! Admission: what the API server does to an object between receiving it and storing it,
//! for the plugins Wharf's engine relies on — LimitRange (defaults and bounds for container
//! requests and limits) and ResourceQuota (object counts and compute resources per
//! namespace).
//!
//! [`AdmittingStore`] wraps any [`Store`] and runs, on create: Kubernetes defaulting
//! ([`manifest::apply_defaults`](crate::manifest::apply_defaults)), then LimitRange defaulting
//! and checks for Pods (and storage bounds for PersistentVolumeClaims), optionally validation
//! ([`AdmittingStore::validating`]), then every ResourceQuota of the namespace. A refused object is
//! [`StoreError::Invalid`] and nothing is written. After a create, the quotas it concerns get
//! their `status.hard` and `status.used` refreshed.
//!
//! Admissions in one namespace are serialized by this wrapper, so quota checks are exact for
//! all writers that go through the same `AdmittingStore`. Updates pass through unchanged:
//! a Pod's resources are immutable once created.
//!
//! ```
//! # use wharf_core::admission::AdmittingStore;
//! # use wharf_core::store::memory::MemoryStore;
//! # use wharf_core::manifest;
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = AdmittingStore::new(MemoryStore::new());
//! let quota = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: q}\nspec: {hard: {pods: 1}}";
//! manifest::apply(&store, manifest::load_str(quota, "q.yaml").unwrap().into_objects()).await.unwrap();
//! let pod = |name: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec: {{containers: [{{name: c, image: busybox}}]}}");
//! manifest::apply(&store, manifest::load_str(&pod("a"), "a.yaml").unwrap().into_objects()).await.unwrap();
//! let err = manifest::apply(&store, manifest::load_str(&pod("b"), "b.yaml").unwrap().into_objects()).await.unwrap_err();
//! assert!(err.to_string().contains("exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1"));
//! # });
//! ```

pub mod limit_range;
mod quota;
mod resources;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{LimitRange, ResourceQuota};

use crate::manifest;
use crate::object::{Kind, Object};
use crate::store::{
    DeleteOptions, Deleted, ListOptions, ObjectList, Result, Store, StoreError, WatchOptions,
    WatchStream,
};

/// A [`Store`] that runs admission (defaulting, LimitRange, ResourceQuota) on create.
pub struct AdmittingStore<S> {
    inner: S,
    /// Whether creates are validated like the API server does (`manifest::validate`).
    validating: bool,
    /// One lock per namespace: admission reads usage, then writes.
    namespaces: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<S: Store> AdmittingStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> AdmittingStore<S> {
        AdmittingStore {
            inner,
            validating: false,
            namespaces: Mutex::new(HashMap::new()),
        }
    }

    /// Also validates every created object ([`manifest::validate`]) after admission, as the
    /// API server does; off by default so that programs creating minimal objects (simulations,
    /// tests) are not refused.
    pub fn validating(mut self) -> AdmittingStore<S> {
        self.validating = true;
        self
    }

    /// The wrapped store (writes to it skip admission).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn namespace_lock(&self, namespace: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(namespace.to_string()).or_default().clone()
    }

    async fn typed<K: crate::object::Resource>(&self, namespace: &str) -> Result<Vec<K>> {
        let list = self
            .inner
            .list(&K::OBJECT_KIND, &ListOptions::namespace(namespace))
            .await?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| o.as_kind::<K>().cloned())
            .collect())
    }

    /// Admits `object` into `namespace` and creates it.
    async fn admit_and_create(&self, mut object: Object, namespace: &str) -> Result<Arc<Object>> {
        let refuse = |object: &Object, field: String, message: String| StoreError::Invalid {
            kind: object.kind().name().to_string(),
            name: object.name().to_string(),
            field,
            message,
        };
        if let Object::Pod(pod) = &mut object {
            let ranges: Vec<LimitRange> = self.typed(namespace).await?;
            if !ranges.is_empty() {
                limit_range::apply_defaults(pod, &ranges);
                let errors = limit_range::check(pod, &ranges);
                if !errors.is_empty() {
                    let message = errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Err(refuse(
                        &object,
                        errors[0].field.clone(),
                        format!("forbidden: {message}"),
                    ));
                }
            }
        }

        if let Object::PersistentVolumeClaim(claim) = &object {
            let ranges: Vec<LimitRange> = self.typed(namespace).await?;
            let errors = limit_range::check_claim(claim, &ranges);
            if let Some(first) = errors.first() {
                return Err(refuse(
                    &object,
                    first.field.clone(),
                    format!("forbidden: {}", first.message),
                ));
            }
        }
        if self.validating {
            let errors = manifest::validate(&object);
            if let Some(first) = errors.first() {
                let message = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(refuse(&object, first.field.clone(), message));
            }
        }

        let quotas: Vec<ResourceQuota> = self.typed(namespace).await?;
        let concerned: Vec<&ResourceQuota> = quotas
            .iter()
            .filter(|q| {
                let hard = q.spec.as_ref().and_then(|s| s.hard.as_ref());
                hard.is_some_and(|h| h.keys().any(|name| quota::usage(&object, name).is_some()))
                    && quota::selects(q, &object)
            })
            .collect();
        let kind = object.kind();
        if !concerned.is_empty() {
            let existing = self
                .inner
                .list(&kind, &ListOptions::namespace(namespace))
                .await?
                .items;
            for q in &concerned {
                if let Err(message) = quota::check(q, &object, &existing) {
                    let field = format!("quota/{}", q.metadata.name.as_deref().unwrap_or(""));
                    return Err(refuse(&object, field, format!("forbidden: {message}")));
                }
            }
        }

        let created = self.inner.create(object).await?;
        if !concerned.is_empty() {
            self.refresh_quotas(&concerned, &created, &kind, namespace)
                .await;
        }
        Ok(created)
    }

    /// Best effort: the quota status is informative; admission recomputes usage itself.
    async fn refresh_quotas(
        &self,
        quotas: &[&ResourceQuota],
        created: &Object,
        kind: &Kind,
        namespace: &str,
    ) {
        let objects = match self
            .inner
            .list(kind, &ListOptions::namespace(namespace))
            .await
        {
            Ok(list) => list.items,
            Err(e) => {
                tracing::debug!(error = %e, "quota status not refreshed");
                return;
            }
        };
        for q in quotas {
            if let Some(next) = quota::status(q, created, &objects) {
                if let Err(e) = self.inner.update_status(Object::from(next)).await {
                    tracing::debug!(quota = ?q.metadata.name, error = %e, "quota status not refreshed");
                }
            }
        }
    }
}

#[async_trait]
impl<S: Store> Store for AdmittingStore<S> {
    async fn create(&self, mut object: Object) -> Result<Arc<Object>> {
        manifest::apply_defaults(&mut object);
        let namespace = match object.namespace() {
            Some(ns) if object.kind().is_namespaced() => ns.to_string(),
            _ => {
                if self.validating {
                    if let Some(e) = manifest::validate(&object).into_iter().next() {
                        return Err(StoreError::Invalid {
                            kind: object.kind().name().to_string(),
                            name: object.name().to_string(),
                            field: e.field,
                            message: e.message,
                        });
                    }
                }
                return self.inner.create(object).await;
            }
        };
        let lock = self.namespace_lock(&namespace);
        let _admitting = lock.lock().await;
        self.admit_and_create(object, &namespace).await
    }

    async fn get(&self, kind: &Kind, namespace: Option<&str>, name: &str) -> Result<Arc<Object>> {
        self.inner.get(kind, namespace, name).await
    }

    async fn list(&self, kind: &Kind, options: &ListOptions) -> Result<ObjectList> {
        self.inner.list(kind, options).await
    }

    async fn update(&self, object: Object) -> Result<Arc<Object>> {
        self.inner.update(object).await
    }

    async fn update_status(&self, object: Object) -> Result<Arc<Object>> {
        self.inner.update_status(object).await
    }

    async fn delete(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deleted> {
        self.inner.delete(kind, namespace, name, options).await
    }

    async fn watch(&self, kind: &Kind, options: &WatchOptions) -> Result<WatchStream> {
        self.inner.watch(kind, options).await
    }

    async fn current_resource_version(&self) -> Result<u64> {
        self.inner.current_resource_version().await
    }

    async fn kinds(&self) -> Result<Vec<Kind>> {
        self.inner.kinds().await
    }

    async fn bind(&self, binding: &crate::store::PodBinding) -> Result<Arc<Object>> {
        self.inner.bind(binding).await
    }
}

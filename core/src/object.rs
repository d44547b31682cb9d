//! The object model: every Kubernetes kind Wharf understands, as one [`Object`] enum over the
//! k8s-openapi types, plus [`DynamicObject`] for kinds a user defines.
//!
//! The store keeps objects as `Arc<Object>` so that a list or a watch event shares the stored
//! value instead of copying it; [`Typed`] gives a typed view of such a shared object.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// A user-defined kind (a custom resource): its apiVersion, kind and scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomKind {
    /// `group/version`, or `version` for the core group.
    pub api_version: String,
    /// The kind, e.g. `Database`.
    pub kind: String,
    /// Whether objects of this kind live in a namespace.
    pub namespaced: bool,
}

/// An object of a kind Wharf has no Rust type for (a custom resource): metadata plus the rest
/// of the document as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct DynamicObject {
    /// `apiVersion` of the object.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind` of the object.
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Every other top-level field (`spec`, `status`, `data`, ...).
    #[serde(flatten)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

macro_rules! kinds {
    ($( $variant:ident => $ty:ty, $namespaced:expr; )*) => {
        /// Identifies a kind of object: one of the built-in Kubernetes kinds, or a custom one.
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $(
                #[doc = concat!("`", stringify!($variant), "`")]
                $variant,
            )*
            /// A user-defined kind.
            Custom(Arc<CustomKind>),
        }

        impl Kind {
            /// Every built-in kind.
            pub const BUILTIN: &'static [Kind] = &[$(Kind::$variant),*];

            /// The `apiVersion` of this kind.
            pub fn api_version(&self) -> &str {
                match self {
                    $(Kind::$variant => <$ty as k8s_openapi::Resource>::API_VERSION,)*
                    Kind::Custom(c) => &c.api_version,
                }
            }

            /// The `kind` string of this kind.
            pub fn name(&self) -> &str {
                match self {
                    $(Kind::$variant => <$ty as k8s_openapi::Resource>::KIND,)*
                    Kind::Custom(c) => &c.kind,
                }
            }

            /// Whether objects of this kind live in a namespace.
            pub fn is_namespaced(&self) -> bool {
                match self {
                    $(Kind::$variant => $namespaced,)*
                    Kind::Custom(c) => c.namespaced,
                }
            }

            /// The built-in kind with this apiVersion and kind, if any.
            pub fn builtin(api_version: &str, kind: &str) -> Option<Kind> {
                $(
                    if api_version == <$ty as k8s_openapi::Resource>::API_VERSION
                        && kind == <$ty as k8s_openapi::Resource>::KIND
                    {
                        return Some(Kind::$variant);
                    }
                )*
                None
            }
        }

        /// One stored object of any kind.
        #[derive(Clone, Debug, PartialEq)]
        ///
        /// Variants are boxed so that an object takes the memory of its own kind only.
        pub enum Object {
            $(
                #[doc = concat!("A `", stringify!($variant), "`.")]
                $variant(Box<$ty>),
            )*
            /// An object of a user-defined kind.
            Custom(Box<DynamicObject>),
        }

        impl Object {
            /// The kind of this object. For a custom object the scope is not known from the
            /// object alone and is reported as namespaced when it has a namespace.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Object::$variant(_) => Kind::$variant,)*
                    Object::Custom(d) => Kind::Custom(Arc::new(CustomKind {
                        api_version: d.api_version.clone(),
                        kind: d.kind.clone(),
                        namespaced: d.metadata.namespace.is_some(),
                    })),
                }
            }

            /// The object's metadata.
            pub fn meta(&self) -> &ObjectMeta {
                match self {
                    $(Object::$variant(o) => &o.metadata,)*
                    Object::Custom(d) => &d.metadata,
                }
            }

            /// The object's metadata, mutably.
            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(Object::$variant(o) => &mut o.metadata,)*
                    Object::Custom(d) => &mut d.metadata,
                }
            }

            /// The object as JSON, with `apiVersion` and `kind`.
            pub fn to_json(&self) -> serde_json::Value {
                let value = match self {
                    $(Object::$variant(o) => serde_json::to_value(&**o),)*
                    Object::Custom(d) => serde_json::to_value(&**d),
                };
                // Serializing these types cannot fail: they hold only JSON-representable data.
                value.unwrap_or(serde_json::Value::Null)
            }

            /// Decodes an object of a known kind from JSON. A kind with no Rust type becomes
            /// [`Object::Custom`].
            pub fn from_json(kind: &Kind, value: serde_json::Value) -> Result<Object, serde_json::Error> {
                Ok(match kind {
                    $(Kind::$variant => Object::$variant(Box::new(serde_json::from_value(value)?)),)*
                    Kind::Custom(_) => Object::Custom(Box::new(serde_json::from_value(value)?)),
                })
            }
        }

        $(
            impl Resource for $ty {
                const OBJECT_KIND: Kind = Kind::$variant;
                fn into_object(self) -> Object {
                    Object::$variant(Box::new(self))
                }
                fn from_object(object: &Object) -> Option<&Self> {
                    match object {
                        Object::$variant(o) => Some(o),
                        _ => None,
                    }
                }
                fn from_object_mut(object: &mut Object) -> Option<&mut Self> {
                    match object {
                        Object::$variant(o) => Some(o),
                        _ => None,
                    }
                }
                fn try_from_object(object: Object) -> Result<Self, Object> {
                    match object {
                        Object::$variant(o) => Ok(*o),
                        other => Err(other),
                    }
                }
            }

            impl From<$ty> for Object {
                fn from(o: $ty) -> Object {
                    Object::$variant(Box::new(o))
                }
            }
        )*
    };
}

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::autoscaling::v2 as autoscaling;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::coordination::v1 as coordination;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::rbac::v1 as rbac;
use k8s_openapi::api::storage::v1 as storage;

kinds! {
    Pod => core::Pod, true;
    Node => core::Node, false;
    Namespace => core::Namespace, false;
    Service => core::Service, true;
    Endpoints => core::Endpoints, true;
    ConfigMap => core::ConfigMap, true;
    Secret => core::Secret, true;
    PersistentVolume => core::PersistentVolume, false;
    PersistentVolumeClaim => core::PersistentVolumeClaim, true;
    LimitRange => core::LimitRange, true;
    ResourceQuota => core::ResourceQuota, true;
    Event => core::Event, true;
    ServiceAccount => core::ServiceAccount, true;
    Deployment => apps::Deployment, true;
    ReplicaSet => apps::ReplicaSet, true;
    StatefulSet => apps::StatefulSet, true;
    DaemonSet => apps::DaemonSet, true;
    ControllerRevision => apps::ControllerRevision, true;
    Job => batch::Job, true;
    CronJob => batch::CronJob, true;
    HorizontalPodAutoscaler => autoscaling::HorizontalPodAutoscaler, true;
    EndpointSlice => discovery::EndpointSlice, true;
    StorageClass => storage::StorageClass, false;
    CSIDriver => storage::CSIDriver, false;
    CSINode => storage::CSINode, false;
    VolumeAttachment => storage::VolumeAttachment, false;
    Role => rbac::Role, true;
    RoleBinding => rbac::RoleBinding, true;
    ClusterRole => rbac::ClusterRole, false;
    ClusterRoleBinding => rbac::ClusterRoleBinding, false;
    Lease => coordination::Lease, true;
}

impl Kind {
    /// A custom kind.
    pub fn custom(
        api_version: impl Into<String>,
        kind: impl Into<String>,
        namespaced: bool,
    ) -> Kind {
        Kind::Custom(Arc::new(CustomKind {
            api_version: api_version.into(),
            kind: kind.into(),
            namespaced,
        }))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Object {
    /// The object's name (empty when unset).
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or("")
    }

    /// The object's namespace, if it has one.
    pub fn namespace(&self) -> Option<&str> {
        self.meta().namespace.as_deref()
    }

    /// The object's uid (empty when unset).
    pub fn uid(&self) -> &str {
        self.meta().uid.as_deref().unwrap_or("")
    }

    /// The object's resourceVersion as a number, if it has a valid one.
    pub fn resource_version(&self) -> Option<u64> {
        self.meta().resource_version.as_deref()?.parse().ok()
    }

    /// `namespace/name`, or `name` for a cluster-scoped object: how errors and logs name it.
    pub fn display_name(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{}/{}", ns, self.name()),
            None => self.name().to_string(),
        }
    }

    /// A typed reference to this object, when it is of kind `K`.
    pub fn as_kind<K: Resource>(&self) -> Option<&K> {
        K::from_object(self)
    }

    /// The value of a field for field selectors, e.g. `metadata.name`, `spec.nodeName`,
    /// `status.phase`. Looks the path up in the JSON form of the object for the fields that
    /// have no fast path.
    pub fn field(&self, path: &str) -> Option<Cow<'_, str>> {
        match path {
            "metadata.name" => return Some(Cow::Borrowed(self.name())),
            "metadata.namespace" => return Some(Cow::Borrowed(self.namespace().unwrap_or(""))),
            _ => {}
        }
        if let Object::Pod(pod) = self {
            match path {
                "spec.nodeName" => {
                    return Some(Cow::Borrowed(
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.node_name.as_deref())
                            .unwrap_or(""),
                    ))
                }
                "status.phase" => {
                    return Some(Cow::Borrowed(
                        pod.status
                            .as_ref()
                            .and_then(|s| s.phase.as_deref())
                            .unwrap_or(""),
                    ))
                }
                _ => {}
            }
        }
        let json = self.to_json();
        let mut cur = &json;
        for part in path.split('.') {
            cur = cur.get(part)?;
        }
        match cur {
            serde_json::Value::String(s) => Some(Cow::Owned(s.clone())),
            serde_json::Value::Null => Some(Cow::Borrowed("")),
            other => Some(Cow::Owned(other.to_string())),
        }
    }
}

impl Serialize for Object {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// A Kubernetes kind with a Rust type, stored as a variant of [`Object`].
pub trait Resource:
    k8s_openapi::Metadata<Ty = ObjectMeta> + Clone + Send + Sync + fmt::Debug + 'static
{
    /// The kind of this type.
    const OBJECT_KIND: Kind;
    /// Wraps the value in an [`Object`].
    fn into_object(self) -> Object;
    /// The value inside `object`, when it is of this kind.
    fn from_object(object: &Object) -> Option<&Self>;
    /// The value inside `object`, mutably, when it is of this kind.
    fn from_object_mut(object: &mut Object) -> Option<&mut Self>;
    /// Unwraps `object`, or gives it back when it is of another kind.
    fn try_from_object(object: Object) -> Result<Self, Object>;
}

/// A shared, stored object known to be of kind `K`: derefs to `K` without copying.
pub struct Typed<K> {
    object: Arc<Object>,
    _kind: PhantomData<fn() -> K>,
}

impl<K: Resource> Typed<K> {
    /// A typed view of `object`, or `None` when it is of another kind.
    pub fn new(object: Arc<Object>) -> Option<Typed<K>> {
        K::from_object(&object)?;
        Some(Typed {
            object,
            _kind: PhantomData,
        })
    }

    /// The shared object behind this view.
    pub fn object(&self) -> &Arc<Object> {
        &self.object
    }

    /// Gives back the shared object.
    pub fn into_object(self) -> Arc<Object> {
        self.object
    }

    /// A copy of the typed value, for modifying and writing back.
    pub fn to_owned_value(&self) -> K {
        (**self).clone()
    }
}

impl<K: Resource> Deref for Typed<K> {
    type Target = K;
    fn deref(&self) -> &K {
        // The constructor checked the kind.
        K::from_object(&self.object).expect("Typed holds an object of its kind")
    }
}

impl<K> Clone for Typed<K> {
    fn clone(&self) -> Self {
        Typed {
            object: self.object.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K: Resource> fmt::Debug for Typed<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    #[test]
    fn kinds_round_trip_through_object() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("default".into());
        let object = pod.clone().into_object();
        assert_eq!(object.kind(), Kind::Pod);
        assert_eq!(object.kind().api_version(), "v1");
        assert_eq!(object.display_name(), "default/web");
        assert_eq!(object.as_kind::<Pod>(), Some(&pod));
        assert_eq!(
            Kind::builtin("apps/v1", "Deployment"),
            Some(Kind::Deployment)
        );
        assert_eq!(Kind::builtin("v1", "Deployment"), None);
        let json = object.to_json();
        assert_eq!(json["kind"], "Pod");
        assert_eq!(Object::from_json(&Kind::Pod, json).unwrap(), object);
    }

    #[test]
    fn field_selector_values() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("a".into());
        pod.spec = Some(Default::default());
        pod.spec.as_mut().unwrap().node_name = Some("n1".into());
        let object = Object::Pod(Box::new(pod));
        assert_eq!(object.field("spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(object.field("status.phase").as_deref(), Some(""));
        assert_eq!(object.field("spec.restartPolicy"), None);
        assert_eq!(object.field("metadata.name").as_deref(), Some("a"));
    }
}

//! `manifest::apply` against the in-memory store: created / configured / unchanged like
//! `kubectl apply`, fields set by others kept, nothing half-applied.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use wharf_core::manifest::{self, ApplyAction, ManifestError};
use wharf_core::object::Kind;
use wharf_core::store::memory::MemoryStore;
use wharf_core::store::{
    DeleteOptions, Deleted, ListOptions, ObjectList, WatchOptions, WatchStream,
};
use wharf_core::{Object, Store, StoreError};

fn web() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests/web.yaml");
    std::fs::read_to_string(path).unwrap()
}

fn actions(applied: &[manifest::Applied]) -> Vec<String> {
    applied.iter().map(ToString::to_string).collect()
}

async fn deployment(store: &dyn Store) -> Deployment {
    let object = store
        .get(&Kind::Deployment, Some("default"), "web")
        .await
        .unwrap();
    object.as_kind::<Deployment>().unwrap().clone()
}

#[tokio::test]
async fn create_then_unchanged_then_configured() {
    let store = MemoryStore::new();
    let m = manifest::load_str(&web(), "web.yaml").unwrap();
    let applied = manifest::apply_manifest(&store, &m).await.unwrap();
    assert_eq!(
        actions(&applied),
        ["deployment.apps/web created", "service/web created"]
    );
    let first = deployment(&store).await;
    assert_eq!(first.metadata.generation, Some(1));
    assert!(first
        .metadata
        .annotations
        .as_ref()
        .unwrap()
        .contains_key(manifest::LAST_APPLIED_ANNOTATION));

    let applied = manifest::apply_manifest(&store, &m).await.unwrap();
    assert_eq!(
        actions(&applied),
        ["deployment.apps/web unchanged", "service/web unchanged"]
    );

    let changed = web().replace("nginx:1.27", "nginx:1.28");
    let m = manifest::load_str(&changed, "web.yaml").unwrap();
    let applied = manifest::apply_manifest(&store, &m).await.unwrap();
    assert_eq!(applied[0].action, ApplyAction::Configured);
    assert_eq!(applied[1].action, ApplyAction::Unchanged);
    let second = deployment(&store).await;
    assert_eq!(second.metadata.uid, first.metadata.uid);
    assert_eq!(second.metadata.generation, Some(2));
    let image = second.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("nginx:1.28"));
}

#[tokio::test]
async fn fields_set_by_others_survive_and_removed_fields_go() {
    let store = MemoryStore::new();
    let m = manifest::load_str(&web(), "web.yaml").unwrap();
    manifest::apply_manifest(&store, &m).await.unwrap();

    // An autoscaler scales the Deployment and its controller writes status.
    let mut scaled = deployment(&store).await;
    scaled.spec.as_mut().unwrap().replicas = Some(5);
    store.update(Object::from(scaled)).await.unwrap();
    let mut with_status = deployment(&store).await;
    with_status.status = Some(Default::default());
    with_status.status.as_mut().unwrap().observed_generation = Some(2);
    store
        .update_status(Object::from(with_status))
        .await
        .unwrap();

    // The manifest does not mention replicas: re-applying it leaves them alone.
    let applied = manifest::apply_manifest(&store, &m).await.unwrap();
    assert_eq!(applied[0].action, ApplyAction::Unchanged);
    assert_eq!(deployment(&store).await.spec.unwrap().replicas, Some(5));

    // A label that was applied and is no longer in the manifest is removed; status stays.
    let without_label = web().replacen("  labels:\n    app: web\n", "", 1);
    let m = manifest::load_str(&without_label, "web.yaml").unwrap();
    let applied = manifest::apply_manifest(&store, &m).await.unwrap();
    assert_eq!(applied[0].action, ApplyAction::Configured);
    let now = deployment(&store).await;
    assert!(now.metadata.labels.as_ref().is_none_or(|l| l.is_empty()));
    assert_eq!(now.spec.as_ref().unwrap().replicas, Some(5));
    assert_eq!(now.status.unwrap().observed_generation, Some(2));
}

#[tokio::test]
async fn invalid_objects_apply_nothing() {
    let store = MemoryStore::new();
    let mut objects = manifest::load_str(&web(), "web.yaml")
        .unwrap()
        .into_objects();
    // Break the Service after loading: apply validates again before writing anything.
    if let Object::Service(svc) = &mut objects[1] {
        svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 0;
    }
    let err = manifest::apply(&store, objects).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("(Service \"web\"): spec.ports[0].port: Invalid value: 0"),
        "{text}"
    );
    let list = store
        .list(&Kind::Deployment, &ListOptions::default())
        .await
        .unwrap();
    assert!(list.items.is_empty(), "nothing may be written");
}

/// A store that refuses to create Services, to see a failing apply undo its writes.
struct RefuseServices(MemoryStore);

#[async_trait]
impl Store for RefuseServices {
    async fn create(&self, object: Object) -> Result<Arc<Object>, StoreError> {
        if object.kind() == Kind::Service {
            return Err(StoreError::Backend("disk full".into()));
        }
        self.0.create(object).await
    }
    async fn get(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Arc<Object>, StoreError> {
        self.0.get(kind, namespace, name).await
    }
    async fn list(&self, kind: &Kind, options: &ListOptions) -> Result<ObjectList, StoreError> {
        self.0.list(kind, options).await
    }
    async fn update(&self, object: Object) -> Result<Arc<Object>, StoreError> {
        self.0.update(object).await
    }
    async fn update_status(&self, object: Object) -> Result<Arc<Object>, StoreError> {
        self.0.update_status(object).await
    }
    async fn delete(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deleted, StoreError> {
        self.0.delete(kind, namespace, name, options).await
    }
    async fn watch(&self, kind: &Kind, options: &WatchOptions) -> Result<WatchStream, StoreError> {
        self.0.watch(kind, options).await
    }
    async fn current_resource_version(&self) -> Result<u64, StoreError> {
        self.0.current_resource_version().await
    }
}

#[tokio::test]
async fn a_failed_write_undoes_the_earlier_ones() {
    let store = RefuseServices(MemoryStore::new());
    let m = manifest::load_str(&web(), "web.yaml").unwrap();
    let err = manifest::apply_manifest(&store, &m).await.unwrap_err();
    assert!(matches!(err, ManifestError::Store { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("applying Service default/web: store backend: disk full"),
        "{err}"
    );
    let left = store
        .get(&Kind::Deployment, Some("default"), "web")
        .await
        .unwrap_err();
    assert!(matches!(left, StoreError::NotFound { .. }), "{left}");
}

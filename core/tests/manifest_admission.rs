//! Admission on the store path: LimitRange defaults and bounds, ResourceQuota counts and
//! compute sums, with a MemoryStore behind an AdmittingStore.

use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use wharf_core::admission::limit_range::LIMIT_RANGER_ANNOTATION;
use wharf_core::admission::AdmittingStore;
use wharf_core::manifest;
use wharf_core::object::Kind;
use wharf_core::store::memory::MemoryStore;
use wharf_core::{Object, Store};

fn objects(yaml: &str) -> Vec<Object> {
    manifest::load_str(yaml, "test.yaml")
        .unwrap()
        .into_objects()
}

async fn setup(store: &dyn Store, yaml: &str) {
    manifest::apply(store, objects(yaml)).await.unwrap();
}

fn pod(name: &str, namespace: &str, resources: &str) -> Object {
    objects(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  containers:\n  - name: app\n    image: busybox:1.36\n    resources: {resources}\n"
    ))
    .remove(0)
}

async fn create(store: &dyn Store, object: Object) -> Result<Pod, String> {
    store
        .create(object)
        .await
        .map(|o| o.as_kind::<Pod>().unwrap().clone())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn limit_range_defaults_requests_and_limits() {
    let store = AdmittingStore::new(MemoryStore::new());
    setup(
        &store,
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: defaults, namespace: team}\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m, memory: 256Mi}\n    defaultRequest: {cpu: 100m}\n",
    )
    .await;
    let created = create(&store, pod("p", "team", "{}")).await.unwrap();
    let c = &created.spec.as_ref().unwrap().containers[0];
    let r = c.resources.as_ref().unwrap();
    assert_eq!(r.limits.as_ref().unwrap()["cpu"].0, "500m");
    assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "256Mi");
    assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "100m");
    // No defaultRequest for memory: the LimitRange's defaulting copied the default limit.
    assert_eq!(r.requests.as_ref().unwrap()["memory"].0, "256Mi");
    let note = &created.metadata.annotations.as_ref().unwrap()[LIMIT_RANGER_ANNOTATION];
    assert_eq!(
        note,
        "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app"
    );

    // Another namespace has no LimitRange: nothing is added.
    let plain = create(&store, pod("p", "other", "{}")).await.unwrap();
    let resources = plain.spec.unwrap().containers[0].resources.clone().unwrap();
    assert!(resources.limits.is_none() && resources.requests.is_none());
}

#[tokio::test]
async fn limit_range_bounds_are_enforced_with_field_paths() {
    let store = AdmittingStore::new(MemoryStore::new());
    setup(
        &store,
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: bounds}\nspec:\n  limits:\n  - type: Container\n    max: {cpu: '1'}\n    min: {memory: 32Mi}\n",
    )
    .await;
    let err = create(
        &store,
        pod("big", "default", "{limits: {cpu: '2', memory: 64Mi}}"),
    )
    .await
    .unwrap_err();
    assert!(err.contains("invalid Pod \"big\""), "{err}");
    assert!(
        err.contains("spec.containers[0].resources.limits.cpu: maximum cpu usage per Container is 1, but limit is 2 (LimitRange \"bounds\")"),
        "{err}"
    );
    let err = create(
        &store,
        pod("small", "default", "{limits: {cpu: 500m, memory: 16Mi}}"),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("spec.containers[0].resources.requests.memory: minimum memory usage per Container is 32Mi, but request is 16Mi"),
        "{err}"
    );
    assert!(create(
        &store,
        pod("ok", "default", "{limits: {cpu: 500m, memory: 64Mi}}")
    )
    .await
    .is_ok());
    let list = store.list(&Kind::Pod, &Default::default()).await.unwrap();
    assert_eq!(list.items.len(), 1, "refused pods are not stored");
}

#[tokio::test]
async fn quota_counts_pods_and_ignores_finished_ones() {
    let store = AdmittingStore::new(MemoryStore::new());
    setup(
        &store,
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: pods-q}\nspec: {hard: {pods: 2}}\n",
    )
    .await;
    create(&store, pod("a", "default", "{}")).await.unwrap();
    create(&store, pod("b", "default", "{}")).await.unwrap();
    let err = create(&store, pod("c", "default", "{}")).await.unwrap_err();
    assert!(
        err.contains(
            "forbidden: exceeded quota: pods-q, requested: pods=1, used: pods=2, limited: pods=2"
        ),
        "{err}"
    );
    let quota = store
        .get(&Kind::ResourceQuota, Some("default"), "pods-q")
        .await
        .unwrap();
    let status = quota
        .as_kind::<ResourceQuota>()
        .unwrap()
        .status
        .clone()
        .unwrap();
    assert_eq!(status.used.unwrap()["pods"].0, "2");
    assert_eq!(status.hard.unwrap()["pods"].0, "2");

    // A pod that failed no longer uses quota.
    let mut a = store
        .get(&Kind::Pod, Some("default"), "a")
        .await
        .unwrap()
        .as_kind::<Pod>()
        .unwrap()
        .clone();
    a.status.get_or_insert_with(Default::default).phase = Some("Failed".into());
    store.update_status(Object::from(a)).await.unwrap();
    create(&store, pod("c", "default", "{}")).await.unwrap();
    // Other namespaces are not limited by this quota.
    create(&store, pod("d", "elsewhere", "{}")).await.unwrap();
}

#[tokio::test]
async fn quota_sums_compute_resources_and_requires_them() {
    let store = AdmittingStore::new(MemoryStore::new());
    setup(
        &store,
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: compute}\nspec: {hard: {requests.cpu: '1', limits.memory: 1Gi}}\n",
    )
    .await;
    let err = create(&store, pod("bare", "default", "{}"))
        .await
        .unwrap_err();
    assert!(
        err.contains(
            "failed quota: compute: must specify limits.memory for: app; requests.cpu for: app"
        ),
        "{err}"
    );
    let sized = "{requests: {cpu: 400m}, limits: {memory: 256Mi}}";
    create(&store, pod("a", "default", sized)).await.unwrap();
    create(&store, pod("b", "default", sized)).await.unwrap();
    let err = create(&store, pod("c", "default", sized))
        .await
        .unwrap_err();
    assert!(
        err.contains("exceeded quota: compute, requested: requests.cpu=400m, used: requests.cpu=800m, limited: requests.cpu=1"),
        "{err}"
    );
    // A pod with limits only requests its limits (API defaulting runs before admission).
    create(
        &store,
        pod("d", "default", "{limits: {cpu: 200m, memory: 256Mi}}"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn quota_counts_other_kinds() {
    let store = AdmittingStore::new(MemoryStore::new());
    setup(
        &store,
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: objects}\nspec: {hard: {configmaps: 1, count/deployments.apps: 0}}\n",
    )
    .await;
    setup(
        &store,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\n",
    )
    .await;
    let err = manifest::apply(
        &store,
        objects("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: two}\n"),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("exceeded quota: objects, requested: configmaps=1, used: configmaps=1, limited: configmaps=1"), "{err}");
    let err = manifest::apply(
        &store,
        manifest::load_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/manifests/web.yaml"
        ))
        .unwrap()
        .into_objects(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("count/deployments.apps=1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_overrun_a_quota() {
    let store = std::sync::Arc::new(AdmittingStore::new(MemoryStore::new()));
    setup(
        &*store,
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: q}\nspec: {hard: {pods: 3}}\n",
    )
    .await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create(pod(&format!("p{i}"), "default", "{}"))
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 3);
}

#[tokio::test]
async fn claims_are_bounded_and_validation_is_opt_in() {
    let store = AdmittingStore::new(MemoryStore::new()).validating();
    setup(
        &store,
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: storage}\nspec:\n  limits:\n  - type: PersistentVolumeClaim\n    max: {storage: 10Gi}\n",
    )
    .await;
    let claim = |name: &str, size: &str| {
        objects(&format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: {size}}}}}\n"
        ))
        .remove(0)
    };
    let err = store
        .create(claim("big", "20Gi"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.resources.requests.storage: forbidden: maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"),
        "{err}"
    );
    store.create(claim("small", "5Gi")).await.unwrap();

    // With validation on, an object the API server would refuse is refused here too.
    let mut bad = pod("p", "default", "{}");
    if let Object::Pod(p) = &mut bad {
        p.spec.as_mut().unwrap().containers[0].image = None;
    }
    let err = store.create(bad.clone()).await.unwrap_err().to_string();
    assert!(
        err.contains("spec.containers[0].image: Required value"),
        "{err}"
    );
    // Without it, simulations may create minimal pods.
    let lenient = AdmittingStore::new(MemoryStore::new());
    lenient.create(bad).await.unwrap();
}

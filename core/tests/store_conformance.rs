//! The store conformance suite against [`MemoryStore`].

use std::sync::Arc;
use std::time::Duration;

use wharf_core::store::conformance;
use wharf_core::store::memory::{MemoryStore, MemoryStoreOptions};
use wharf_core::store::{
    DeleteOptions, Deleted, ListOptions, ObjectList, Result, Store, WatchOptions, WatchStream,
};
use wharf_core::{Kind, Object};

fn make() -> Arc<dyn Store> {
    Arc::new(MemoryStore::with_options(MemoryStoreOptions {
        // Small enough for the expiry check to see compaction.
        history_per_kind: conformance::EXPIRY_WRITES / 2,
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_conformance_suite() {
    conformance::run_all(&make).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_no_update() {
    // Run alone too, with more threads than the suite, to shake out races.
    for _ in 0..5 {
        conformance::concurrent_writers(make()).await;
    }
}

/// A store that forwards everything to a [`MemoryStore`] but keeps the trait's default
/// `bind` (two writes), so that the default is held to the same contract.
struct DefaultBind(MemoryStore);

#[async_trait::async_trait]
impl Store for DefaultBind {
    async fn create(&self, object: Object) -> Result<Arc<Object>> {
        self.0.create(object).await
    }
    async fn get(&self, kind: &Kind, namespace: Option<&str>, name: &str) -> Result<Arc<Object>> {
        self.0.get(kind, namespace, name).await
    }
    async fn list(&self, kind: &Kind, options: &ListOptions) -> Result<ObjectList> {
        self.0.list(kind, options).await
    }
    async fn update(&self, object: Object) -> Result<Arc<Object>> {
        self.0.update(object).await
    }
    async fn update_status(&self, object: Object) -> Result<Arc<Object>> {
        self.0.update_status(object).await
    }
    async fn delete(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deleted> {
        self.0.delete(kind, namespace, name, options).await
    }
    async fn watch(&self, kind: &Kind, options: &WatchOptions) -> Result<WatchStream> {
        self.0.watch(kind, options).await
    }
    async fn current_resource_version(&self) -> Result<u64> {
        self.0.current_resource_version().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_bind_passes_the_binding_check() {
    conformance::pod_binding(Arc::new(DefaultBind(MemoryStore::new()))).await;
}

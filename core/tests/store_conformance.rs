//! The store conformance suite against [`MemoryStore`].

use std::sync::Arc;
use std::time::Duration;

use wharf_core::store::conformance;
use wharf_core::store::memory::{MemoryStore, MemoryStoreOptions};
use wharf_core::store::Store;

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

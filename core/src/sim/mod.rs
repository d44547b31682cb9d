//! Simulated backends: deterministic, programmable implementations of every backend trait,
//! driven by tokio's clock so that tests run under `tokio::time::pause()` and a benchmark can
//! simulate thousands of nodes in one process.
//!
//! Costs are kept per object small: a container or an attachment is a record in a map; the
//! only task is one timer per [`SimRuntime`], started when the first timed exit is scheduled.

pub mod image;
pub mod network;
pub mod prober;
pub mod runtime;
pub mod volume;

pub use image::{SimImage, SimImageService};
pub use network::SimNetwork;
pub use prober::{probe_key, SimProber};
pub use runtime::{Behavior, ExecRule, SimRuntime};
pub use volume::SimVolumes;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A programmable delay of a simulated call, for tests that need a step to be slow (a pod
/// deleted while its sandbox is being made, an agent stopped mid-setup). The call takes
/// effect first and then waits, so the object exists before the caller hears back: the
/// worst case for a caller that gives up or is cancelled. Zero (the default) costs nothing.
#[derive(Clone, Debug, Default)]
pub(crate) struct Latency(Arc<AtomicU64>);

impl Latency {
    pub(crate) fn set(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.0.store(nanos, Ordering::Relaxed);
    }

    pub(crate) async fn wait(&self) {
        let nanos = self.0.load(Ordering::Relaxed);
        if nanos > 0 {
            tokio::time::sleep(Duration::from_nanos(nanos)).await;
        }
    }
}

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

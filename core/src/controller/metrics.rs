//! Counters and durations of a controller, as atomics that a metrics exporter reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (in milliseconds) of the reconcile-duration histogram buckets; a last bucket
/// counts everything slower.
pub const DURATION_BUCKETS_MS: [u64; 8] = [1, 5, 10, 50, 100, 500, 1_000, 5_000];

/// A controller's counters. Every field is updated by the runner; read them with
/// [`Metrics::snapshot`].
#[derive(Debug, Default)]
pub struct Metrics {
    triggers: AtomicU64,
    merged: AtomicU64,
    reconciles: AtomicU64,
    errors: AtomicU64,
    requeues: AtomicU64,
    queued: AtomicU64,
    running: AtomicU64,
    duration_nanos: AtomicU64,
    max_duration_nanos: AtomicU64,
    buckets: [AtomicU64; DURATION_BUCKETS_MS.len() + 1],
}

/// A point-in-time copy of [`Metrics`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Events that asked for a reconcile.
    pub triggers: u64,
    /// Triggers merged into an already queued or running reconcile.
    pub merged: u64,
    /// Reconciles finished (successfully or not).
    pub reconciles: u64,
    /// Reconciles that returned an error.
    pub errors: u64,
    /// Reconciles scheduled by a requeue-after or a backoff.
    pub requeues: u64,
    /// Objects waiting in the queue (ready or delayed).
    pub queued: u64,
    /// Reconciles running now.
    pub running: u64,
    /// Total time spent reconciling.
    pub total_duration: Duration,
    /// Longest single reconcile.
    pub max_duration: Duration,
    /// Reconcile counts per [`DURATION_BUCKETS_MS`] bucket, plus one for slower ones.
    pub duration_buckets: Vec<u64>,
}

impl Metrics {
    pub(crate) fn trigger(&self, merged: bool) {
        self.triggers.fetch_add(1, Ordering::Relaxed);
        if merged {
            self.merged.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn requeue(&self) {
        self.requeues.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_queue(&self, queued: usize, running: usize) {
        self.queued.store(queued as u64, Ordering::Relaxed);
        self.running.store(running as u64, Ordering::Relaxed);
    }

    pub(crate) fn finished(&self, took: Duration, failed: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = took.as_nanos().min(u64::MAX as u128) as u64;
        self.duration_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.max_duration_nanos.fetch_max(nanos, Ordering::Relaxed);
        let ms = took.as_millis() as u64;
        let bucket = DURATION_BUCKETS_MS
            .iter()
            .position(|&b| ms < b)
            .unwrap_or(DURATION_BUCKETS_MS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            triggers: get(&self.triggers),
            merged: get(&self.merged),
            reconciles: get(&self.reconciles),
            errors: get(&self.errors),
            requeues: get(&self.requeues),
            queued: get(&self.queued),
            running: get(&self.running),
            total_duration: Duration::from_nanos(get(&self.duration_nanos)),
            max_duration: Duration::from_nanos(get(&self.max_duration_nanos)),
            duration_buckets: self.buckets.iter().map(get).collect(),
        }
    }
}

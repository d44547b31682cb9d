//! The work queue: deduplicates triggers per key, schedules requeues and backoff, bounds
//! concurrency, and never runs two jobs for one key at once.
//!
//! It is one task that owns all queue state (no locks): it receives keys from a channel,
//! starts jobs in a `JoinSet` up to the concurrency limit, and wakes for the earliest delayed
//! key.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::Action;

/// How a job ended.
pub(crate) enum Outcome {
    /// The job succeeded; the action says when to run it again.
    Success(Action),
    /// The job failed; the action (from the error policy) says when to retry.
    Failure(Action),
}

/// Settings of a queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueSettings {
    pub concurrency: usize,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

struct State<K> {
    ready: VecDeque<K>,
    /// Keys in `ready`.
    queued: HashSet<K>,
    /// Keys with a job running.
    running: HashSet<K>,
    /// Running keys triggered again: they go back to `ready` when their job ends.
    dirty: HashSet<K>,
    delayed: BTreeMap<(Instant, u64), K>,
    delayed_at: HashMap<K, (Instant, u64)>,
    failures: HashMap<K, u32>,
    seq: u64,
}

impl<K: Hash + Eq + Clone> State<K> {
    fn new() -> Self {
        State {
            ready: VecDeque::new(),
            queued: HashSet::new(),
            running: HashSet::new(),
            dirty: HashSet::new(),
            delayed: BTreeMap::new(),
            delayed_at: HashMap::new(),
            failures: HashMap::new(),
            seq: 0,
        }
    }

    /// Queues `key` now. Returns whether the trigger was merged into pending work.
    fn trigger(&mut self, key: K) -> bool {
        if self.running.contains(&key) {
            return !self.dirty.insert(key);
        }
        if let Some(at) = self.delayed_at.remove(&key) {
            self.delayed.remove(&at);
        }
        if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
            false
        } else {
            true
        }
    }

    /// Queues `key` after `delay`, unless it is queued sooner already.
    fn schedule(&mut self, key: K, delay: Duration) {
        if self.queued.contains(&key) {
            return;
        }
        let at = Instant::now() + delay;
        if let Some(&(existing, seq)) = self.delayed_at.get(&key) {
            if existing <= at {
                return;
            }
            self.delayed.remove(&(existing, seq));
        }
        self.seq += 1;
        self.delayed.insert((at, self.seq), key.clone());
        self.delayed_at.insert(key, (at, self.seq));
    }

    fn promote_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.delayed_at.remove(&key);
            if self.queued.insert(key.clone()) {
                self.ready.push_back(key);
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.delayed.keys().next().map(|(at, _)| *at)
    }
}

/// Runs jobs for keys arriving on `triggers` until `shutdown`, then waits for running jobs.
pub(crate) async fn run<K, F, Fut>(
    mut triggers: mpsc::UnboundedReceiver<K>,
    settings: QueueSettings,
    metrics: &Metrics,
    shutdown: CancellationToken,
    job: F,
) where
    K: Hash + Eq + Clone + Send + 'static,
    F: Fn(K) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let mut state: State<K> = State::new();
    let mut jobs: JoinSet<(K, Outcome)> = JoinSet::new();
    let concurrency = settings.concurrency.max(1);
    let mut triggers_open = true;
    loop {
        state.promote_due();
        while state.running.len() < concurrency {
            let Some(key) = state.ready.pop_front() else {
                break;
            };
            state.queued.remove(&key);
            state.running.insert(key.clone());
            let work = job(key.clone());
            jobs.spawn(async move {
                let outcome = AssertUnwindSafe(work)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        tracing::error!("controller job panicked; retrying with backoff");
                        Outcome::Failure(Action::Backoff)
                    });
                (key, outcome)
            });
        }
        metrics.set_queue(
            state.queued.len() + state.delayed.len(),
            state.running.len(),
        );
        let next_due = state.next_due();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = jobs.join_next() => {
                // Panics are caught inside the job, so a join error means cancellation, which
                // only happens when the runtime shuts down.
                let Ok((key, outcome)) = done else { continue };
                state.running.remove(&key);
                let delay = match outcome {
                    Outcome::Success(action) => {
                        state.failures.remove(&key);
                        match action {
                            Action::RequeueAfter(d) => Some(d),
                            Action::AwaitChange => None,
                            Action::Backoff => Some(backoff(&mut state, &key, &settings)),
                        }
                    }
                    Outcome::Failure(action) => match action {
                        Action::RequeueAfter(d) => Some(d),
                        Action::AwaitChange => None,
                        Action::Backoff => Some(backoff(&mut state, &key, &settings)),
                    },
                };
                if state.dirty.remove(&key) {
                    state.trigger(key);
                } else if let Some(delay) = delay {
                    metrics.requeue();
                    state.schedule(key, delay);
                }
            }
            key = triggers.recv(), if triggers_open => match key {
                Some(key) => {
                    let merged = state.trigger(key);
                    metrics.trigger(merged);
                }
                None => triggers_open = false,
            },
            _ = sleep_until(next_due), if next_due.is_some() => {}
        }
    }
    // Graceful shutdown: no new jobs; let the running ones finish.
    while jobs.join_next().await.is_some() {}
    metrics.set_queue(0, 0);
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

fn backoff<K: Hash + Eq + Clone>(
    state: &mut State<K>,
    key: &K,
    settings: &QueueSettings,
) -> Duration {
    let failures = state.failures.entry(key.clone()).or_insert(0);
    let exp = (*failures).min(32);
    *failures += 1;
    settings
        .backoff_base
        .saturating_mul(1u32 << exp.min(31))
        .min(settings.backoff_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    fn settings(concurrency: usize) -> QueueSettings {
        QueueSettings {
            concurrency,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_running_one_pending_per_key() {
        let (tx, rx) = mpsc::unbounded_channel();
        let runs = Arc::new(AtomicUsize::new(0));
        let overlap = Arc::new(Mutex::new((0usize, 0usize)));
        let shutdown = CancellationToken::new();
        let metrics = Metrics::default();
        for _ in 0..5 {
            tx.send("a").unwrap();
        }
        let (r, o, s) = (runs.clone(), overlap.clone(), shutdown.clone());
        let sender = tx.clone();
        tokio::spawn(async move {
            // Triggers arriving while the first job runs merge into one pending job.
            tokio::time::sleep(Duration::from_millis(50)).await;
            for _ in 0..5 {
                sender.send("a").unwrap();
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            s.cancel();
        });
        run(rx, settings(4), &metrics, shutdown, move |_k| {
            let (r, o) = (r.clone(), o.clone());
            async move {
                {
                    let mut g = o.lock().unwrap();
                    g.0 += 1;
                    g.1 = g.1.max(g.0);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                o.lock().unwrap().0 -= 1;
                r.fetch_add(1, Ordering::SeqCst);
                Outcome::Success(Action::AwaitChange)
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(overlap.lock().unwrap().1, 1, "never two jobs for one key");
        let m = metrics.snapshot();
        assert_eq!(m.triggers, 10);
        assert_eq!(m.merged, 8);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_limit_and_exponential_backoff_that_resets() {
        let (tx, rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let metrics = Metrics::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        for k in 0..6u32 {
            tx.send(k).unwrap();
        }
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            s.cancel();
        });
        let start = Instant::now();
        let (l, r, p) = (log.clone(), running.clone(), peak.clone());
        run(rx, settings(2), &metrics, shutdown, move |k| {
            let (l, r, p) = (l.clone(), r.clone(), p.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                if k != 0 {
                    return Outcome::Success(Action::AwaitChange);
                }
                let mut log = l.lock().unwrap();
                log.push(start.elapsed());
                // Key 0 fails four times, succeeds, then fails again.
                match log.len() {
                    5 => Outcome::Success(Action::AwaitChange),
                    n if n < 5 => Outcome::Failure(Action::Backoff),
                    _ => Outcome::Success(Action::AwaitChange),
                }
            }
        })
        .await;
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 5);
        let gaps: Vec<u128> = log.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
        // Each retry waits twice as long (10, 20, 40, 80 ms) plus the 1 ms job.
        assert_eq!(gaps, vec![11, 21, 41, 81]);
        assert_eq!(
            metrics.snapshot().errors,
            0,
            "errors are counted by the runner"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_after_and_earlier_trigger_wins() {
        let (tx, rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let metrics = Metrics::default();
        let times = Arc::new(Mutex::new(Vec::new()));
        tx.send(()).unwrap();
        let s = shutdown.clone();
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(70)).await;
            sender.send(()).unwrap();
            tokio::time::sleep(Duration::from_secs(100)).await;
            s.cancel();
        });
        let start = Instant::now();
        let t = times.clone();
        run(rx, settings(1), &metrics, shutdown, move |_| {
            let t = t.clone();
            async move {
                t.lock().unwrap().push(start.elapsed().as_secs());
                Outcome::Success(Action::requeue(Duration::from_secs(60)))
            }
        })
        .await;
        assert_eq!(*times.lock().unwrap(), vec![0, 60, 70, 130]);
    }
}

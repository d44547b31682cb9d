//! The controller runtime against the memory store: triggers from owned objects, error
//! backoff, metrics, informer recovery after a lagged watch, and leader election.

mod controller_support;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use controller_support::*;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use wharf_core::controller::{
    Action, CancellationToken, Context, Controller, ControllerConfig, ControllerError, Informer,
    LeaderElection, LeaderElector, LeaseLock, LeaseSettings, ObjectKey, Reconciler,
};
use wharf_core::store::memory::{MemoryStore, MemoryStoreOptions};
use wharf_core::store::{Store, StoreError};
use wharf_core::{Kind, Object};

fn config_map(name: &str, owner: Option<&Object>) -> Object {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.metadata.namespace = Some("default".into());
    if let Some(o) = owner {
        cm.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: o.name().into(),
            uid: o.uid().into(),
            controller: Some(true),
            ..Default::default()
        }]);
    }
    Object::from(cm)
}

/// Records reconciles; fails the first `failures` reconciles of "flaky".
struct Recorder {
    log: Arc<Mutex<Vec<(String, Duration)>>>,
    failures: AtomicU32,
    start: tokio::time::Instant,
}

#[async_trait]
impl Reconciler for Recorder {
    type Error = ControllerError;
    async fn reconcile(&self, object: Arc<Object>, _: &Context) -> Result<Action, ControllerError> {
        self.log
            .lock()
            .unwrap()
            .push((object.name().to_string(), self.start.elapsed()));
        if object.name() == "flaky" && self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return Err(ControllerError::invalid(&object, "data", "not yet"));
        }
        if object.name() == "periodic" {
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        Ok(Action::await_change())
    }
}

#[tokio::test(start_paused = true)]
async fn runner_triggers_backs_off_requeues_and_counts() {
    let (store, clock) = store();
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    let log = Arc::new(Mutex::new(Vec::new()));
    let controller = Controller::new(
        "recorder",
        Kind::ConfigMap,
        Recorder {
            log: log.clone(),
            failures: AtomicU32::new(3),
            start: tokio::time::Instant::now(),
        },
    )
    .owns(Kind::ConfigMap)
    .config(ControllerConfig {
        concurrency: 2,
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
    });
    let metrics = controller.metrics();
    let task = tokio::spawn(controller.run(ctx, shutdown.clone()));
    store.create(config_map("flaky", None)).await.unwrap();
    let periodic = store.create(config_map("periodic", None)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(65)).await;
    let times = |name: &str| -> Vec<u64> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, t)| t.as_secs())
            .collect()
    };
    // Failures back off 1 s, 2 s, 4 s; the success resets the backoff.
    assert_eq!(times("flaky"), [0, 1, 3, 7]);
    assert_eq!(times("periodic"), [0, 30, 60]);
    // A change to an owned object reconciles its owner.
    store
        .create(config_map("child", Some(&periodic)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(times("periodic"), [0, 30, 60, 65]);
    let m = metrics.snapshot();
    assert_eq!(m.errors, 3);
    assert!(m.reconciles >= 9, "{m:?}");
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_owned_object_that_changes_controller_reconciles_both_owners() {
    let (store, clock) = store();
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    let log = Arc::new(Mutex::new(Vec::new()));
    let controller = Controller::new(
        "recorder",
        Kind::ConfigMap,
        Recorder {
            log: log.clone(),
            failures: AtomicU32::new(0),
            start: tokio::time::Instant::now(),
        },
    )
    .owns(Kind::ConfigMap);
    let metrics = controller.metrics();
    let task = tokio::spawn(controller.run(ctx, shutdown.clone()));
    let a = store.create(config_map("owner-a", None)).await.unwrap();
    let b = store.create(config_map("owner-b", None)).await.unwrap();
    let child = store.create(config_map("child", Some(&a))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let taken = |log: &Mutex<Vec<(String, Duration)>>| -> Vec<String> {
        let mut names: Vec<String> = log.lock().unwrap().drain(..).map(|(n, _)| n).collect();
        names.sort();
        names
    };
    taken(&log);

    // A change that keeps the controller reconciles that owner only, triggered once (the old
    // state is not mapped again: nothing was merged).
    let merged = metrics.snapshot().merged;
    let mut edited = (*child).clone();
    if let Object::ConfigMap(cm) = &mut edited {
        cm.data = Some([("k".to_string(), "v".to_string())].into());
    }
    let child = store.update(edited).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(taken(&log), ["child", "owner-a"]);
    assert_eq!(metrics.snapshot().merged, merged);

    // A change of controller reconciles the old owner (which lost it) and the new one.
    let mut moved = config_map("child", Some(&b));
    moved.meta_mut().resource_version = child.meta().resource_version.clone();
    moved.meta_mut().uid = child.meta().uid.clone();
    store.update(moved).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(taken(&log), ["child", "owner-a", "owner-b"]);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn informer_lists_again_after_its_watch_lags() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::with_options(MemoryStoreOptions {
        watch_buffer: 2,
        ..Default::default()
    }));
    let shutdown = CancellationToken::new();
    let informer = Informer::start(store.clone(), Kind::ConfigMap, shutdown.clone());
    informer.wait_synced().await;
    let mut events = informer.subscribe();
    // A burst without yielding overflows the watcher's buffer.
    for i in 0..20 {
        store
            .create(config_map(&format!("cm{i}"), None))
            .await
            .unwrap();
    }
    store
        .delete(
            &Kind::ConfigMap,
            Some("default"),
            "cm3",
            &Default::default(),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "cache caught up", || async {
        informer.len() == 19
    })
    .await;
    assert!(informer
        .get(&ObjectKey::namespaced("default", "cm19"))
        .is_some());
    assert!(informer
        .get(&ObjectKey::namespaced("default", "cm3"))
        .is_none());
    let mut applied = 0;
    while let Ok(e) = events.try_recv() {
        if let wharf_core::controller::CacheEvent::Applied { .. } = e {
            applied += 1;
        }
    }
    assert!(applied >= 19, "subscribers saw every object ({applied})");
    shutdown.cancel();
}

/// A LeaseLock whose store calls can be made to fail, as if the instance lost its network.
struct Partitioned {
    inner: LeaseLock,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl LeaderElector for Partitioned {
    fn identity(&self) -> &str {
        self.inner.identity()
    }
    async fn try_acquire_or_renew(&self) -> Result<bool, StoreError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("partitioned".into()));
        }
        self.inner.try_acquire_or_renew().await
    }
    async fn release(&self) -> Result<(), StoreError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("partitioned".into()));
        }
        self.inner.release().await
    }
}

#[tokio::test(start_paused = true)]
async fn one_leader_at_a_time_and_failover() {
    let (store, clock) = store();
    let settings = LeaseSettings::default();
    let leading = Arc::new(AtomicUsize::new(0));
    let max_leading = Arc::new(AtomicUsize::new(0));
    let leaders = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let start = tokio::time::Instant::now();
    let mut cuts = Vec::new();
    let mut tokens = Vec::new();
    for id in ["a", "b"] {
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let elector = Arc::new(Partitioned {
            inner: LeaseLock::new(
                store.clone(),
                "default",
                "controller-manager",
                id,
                settings,
                clock,
            ),
            cut: cut.clone(),
        });
        cuts.push(cut);
        let token = CancellationToken::new();
        tokens.push(token.clone());
        let (l, m, log) = (leading.clone(), max_leading.clone(), leaders.clone());
        tokio::spawn(LeaderElection::run(elector, settings, token, move |lost| {
            let (l, m, log) = (l.clone(), m.clone(), log.clone());
            let id = id.to_string();
            async move {
                let now = l.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                log.lock().unwrap().push((id, start.elapsed().as_secs()));
                lost.cancelled().await;
                l.fetch_sub(1, Ordering::SeqCst);
            }
        }));
        // b starts a little later, so a wins the first election.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(leaders.lock().unwrap().clone(), [("a".to_string(), 0)]);

    // a is partitioned: it stops leading after the renew deadline, and b takes over once the
    // lease has not changed for leaseDuration.
    cuts[0].store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let log = leaders.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].0, "b");
    assert!(
        (75..=80).contains(&log[1].1),
        "b took over at {}s",
        log[1].1
    );
    assert_eq!(max_leading.load(Ordering::SeqCst), 1, "never two leaders");

    // b shuts down and releases the lease; a (healed) takes it within a retry period.
    cuts[0].store(false, Ordering::SeqCst);
    tokens[1].cancel();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = leaders.lock().unwrap().clone();
    assert_eq!(log.last().unwrap().0, "a", "{log:?}");
    assert_eq!(max_leading.load(Ordering::SeqCst), 1);
    tokens[0].cancel();
}

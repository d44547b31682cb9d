//! Behaviour specific to [`MemoryStore`]: its clock, lag handling, bookmarks under the paused
//! clock, watcher routing, and a model check of indexes and watch transitions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use wharf_core::clock::from_k8s_time;
use wharf_core::store::conformance::{config_map, pod};
use wharf_core::store::memory::{MemoryStore, MemoryStoreOptions};
use wharf_core::store::{
    DeleteOptions, FieldSelector, LabelSelector, ListOptions, Store, StoreError, WatchEvent,
    WatchOptions, WatchStream,
};
use wharf_core::{Clock, Kind, Object};

fn on_node(node: &str) -> WatchOptions {
    WatchOptions {
        selector: ListOptions {
            fields: Some(FieldSelector::eq("spec.nodeName", node)),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Every event queued on `w` right now (outside tokio's cooperative budget, which would
/// report an empty queue after 128 receives).
fn drain(w: &mut WatchStream) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    while let Some(Some(item)) = tokio::task::unconstrained(w.next()).now_or_never() {
        out.push(item.expect("watch event"));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn timestamps_follow_the_paused_clock() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let store = MemoryStore::with_clock(Clock::starting_at(start));
    let created = store.create(pod("t", "p", &[], Some("n1"))).await.unwrap();
    let ts = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        from_k8s_time(t.expect("timestamp"))
    };
    assert_eq!(ts(created.meta().creation_timestamp.as_ref()), start);
    tokio::time::sleep(Duration::from_secs(100)).await;
    let marked = store
        .delete(&Kind::Pod, Some("t"), "p", &DeleteOptions::default())
        .await
        .unwrap();
    let meta = marked.object().meta();
    assert_eq!(
        ts(meta.deletion_timestamp.as_ref()),
        start + Duration::from_secs(130),
        "deletionTimestamp = now + 30 s default grace"
    );
    assert_eq!(
        meta.generation,
        Some(2),
        "marking for deletion bumps generation"
    );
}

#[tokio::test]
async fn a_lagging_watcher_is_dropped_and_told() {
    let store = MemoryStore::with_options(MemoryStoreOptions {
        watch_buffer: 8,
        ..Default::default()
    });
    let mut slow = store
        .watch(&Kind::ConfigMap, &Default::default())
        .await
        .unwrap();
    let mut fast = store
        .watch(&Kind::ConfigMap, &Default::default())
        .await
        .unwrap();
    assert_eq!(store.watcher_count(), 2);
    for i in 0..20 {
        store
            .create(config_map("lag", &format!("c{i}"), &[]))
            .await
            .unwrap();
        assert_eq!(drain(&mut fast).len(), 1, "a reading watcher keeps up");
    }
    match slow.next().await {
        Some(Err(StoreError::WatchLagged { kind })) => assert_eq!(kind, "ConfigMap"),
        other => panic!("expected WatchLagged, got {other:?}"),
    }
    assert!(slow.next().await.is_none(), "the lagged watch ends");
    assert_eq!(
        store.watcher_count(),
        1,
        "the lagged watcher is unregistered"
    );
    drop(fast);
    assert_eq!(store.watcher_count(), 0, "a dropped watch is unregistered");
}

#[tokio::test(start_paused = true)]
async fn idle_watchers_get_bookmarks_on_the_paused_clock() {
    let store = MemoryStore::new();
    let options = WatchOptions {
        bookmarks: true,
        ..on_node("n1")
    };
    let mut w = store.watch(&Kind::Pod, &options).await.unwrap();
    assert!(matches!(w.next().await, Some(Ok(WatchEvent::Bookmark(0)))));
    let other = store.create(config_map("bm", "c", &[])).await.unwrap();
    let started = tokio::time::Instant::now();
    let Some(Ok(WatchEvent::Bookmark(rv))) = w.next().await else {
        panic!("expected a bookmark")
    };
    assert_eq!(Some(rv), other.resource_version());
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(60),
        "after the bookmark interval"
    );
}

#[tokio::test]
async fn node_watchers_see_only_their_pods() {
    const NODES: usize = 200;
    const PODS: usize = 1_000;
    let store = MemoryStore::new();
    let mut watchers = Vec::new();
    for n in 0..NODES {
        watchers.push(
            store
                .watch(&Kind::Pod, &on_node(&format!("n{n}")))
                .await
                .unwrap(),
        );
    }
    let mut unscheduled = store.watch(&Kind::Pod, &on_node("")).await.unwrap();
    for i in 0..PODS {
        store
            .create(pod("ns", &format!("p{i}"), &[], None))
            .await
            .unwrap();
    }
    assert_eq!(drain(&mut unscheduled).len(), PODS);
    for w in &mut watchers {
        assert!(drain(w).is_empty(), "unbound pods reach no node watcher");
    }
    for i in 0..PODS {
        let current = store
            .get(&Kind::Pod, Some("ns"), &format!("p{i}"))
            .await
            .unwrap();
        let mut p = current.as_kind::<Pod>().unwrap().clone();
        p.spec.as_mut().unwrap().node_name = Some(format!("n{}", i % NODES));
        store.update(p.into()).await.unwrap();
    }
    for (n, w) in watchers.iter_mut().enumerate() {
        let events = drain(w);
        assert_eq!(events.len(), PODS / NODES);
        for e in events {
            let WatchEvent::Added(pod) = e else {
                panic!("binding is an add: {e:?}")
            };
            assert_eq!(
                pod.field("spec.nodeName").as_deref(),
                Some(format!("n{n}").as_str())
            );
        }
    }
    let left = drain(&mut unscheduled);
    assert_eq!(left.len(), PODS);
    assert!(left.iter().all(|e| matches!(e, WatchEvent::Deleted(_))));
    let listed = store
        .list(&Kind::Pod, &on_node("n7").selector)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), PODS / NODES, "list by the node index");
}

#[tokio::test]
async fn history_is_kept_per_kind() {
    let store = MemoryStore::with_options(MemoryStoreOptions {
        history_per_kind: 10,
        ..Default::default()
    });
    let p = store.create(pod("h", "p", &[], None)).await.unwrap();
    let since = p.resource_version().unwrap() - 1;
    for i in 0..50 {
        store
            .create(config_map("h", &format!("c{i}"), &[]))
            .await
            .unwrap();
    }
    let e = store
        .watch(
            &Kind::ConfigMap,
            &WatchOptions {
                resource_version: Some(since),
                ..Default::default()
            },
        )
        .await
        .err()
        .expect("ConfigMap history is compacted");
    assert!(
        matches!(e, StoreError::Expired { requested, oldest } if requested == since && oldest > since)
    );
    let mut pods = store
        .watch(
            &Kind::Pod,
            &WatchOptions {
                resource_version: Some(since),
                ..Default::default()
            },
        )
        .await
        .expect("a busy kind does not expire a quiet one");
    assert!(matches!(
        drain(&mut pods).as_slice(),
        [WatchEvent::Added(_)]
    ));
}

#[derive(Clone, Debug)]
enum Op {
    Create(usize, usize, usize, usize),
    Relabel(usize, usize, usize),
    Bind(usize, usize, usize),
    Phase(usize, usize, bool),
    Delete(usize, usize),
}

const NAMESPACES: [&str; 2] = ["a", "b"];
const NAMES: [&str; 4] = ["p0", "p1", "p2", "p3"];
const NODES: [&str; 3] = ["", "n1", "n2"];
const APPS: [&str; 2] = ["web", "db"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 0..4usize, 0..2usize, 0..3usize)
            .prop_map(|(a, b, c, d)| Op::Create(a, b, c, d)),
        (0..2usize, 0..4usize, 0..2usize).prop_map(|(a, b, c)| Op::Relabel(a, b, c)),
        (0..2usize, 0..4usize, 0..3usize).prop_map(|(a, b, c)| Op::Bind(a, b, c)),
        (0..2usize, 0..4usize, any::<bool>()).prop_map(|(a, b, c)| Op::Phase(a, b, c)),
        (0..2usize, 0..4usize).prop_map(|(a, b)| Op::Delete(a, b)),
    ]
}

fn selectors() -> Vec<ListOptions> {
    let fields = |s: &str| Some(FieldSelector::parse(s).unwrap());
    let labels = |s: &str| Some(LabelSelector::parse(s).unwrap());
    vec![
        ListOptions::default(),
        ListOptions::namespace("a"),
        ListOptions {
            fields: fields("spec.nodeName=n1"),
            ..Default::default()
        },
        ListOptions {
            fields: fields("spec.nodeName="),
            ..Default::default()
        },
        ListOptions {
            labels: labels("app=web"),
            ..Default::default()
        },
        ListOptions {
            labels: labels("app=db"),
            fields: fields("spec.nodeName=n2"),
            ..Default::default()
        },
        ListOptions {
            fields: fields("metadata.name=p1,status.phase!=Failed"),
            ..Default::default()
        },
        ListOptions {
            namespace: Some("b".into()),
            fields: fields("spec.nodeName!=n1"),
            ..Default::default()
        },
    ]
}

async fn apply(store: &MemoryStore, op: &Op) {
    let edit = |ns: usize, name: usize, f: Box<dyn FnOnce(&mut Pod) + Send>| async move {
        let Ok(current) = store
            .get(&Kind::Pod, Some(NAMESPACES[ns]), NAMES[name])
            .await
        else {
            return;
        };
        let mut p = current.as_kind::<Pod>().unwrap().clone();
        f(&mut p);
        let object: Object = p.clone().into();
        if p.status.is_some() {
            store.update_status(object.clone()).await.unwrap();
        }
        store.update(object).await.unwrap();
    };
    match *op {
        Op::Create(ns, name, app, node) => {
            let node = Some(NODES[node]).filter(|n| !n.is_empty());
            let _ = store
                .create(pod(
                    NAMESPACES[ns],
                    NAMES[name],
                    &[("app", APPS[app])],
                    node,
                ))
                .await;
        }
        Op::Relabel(ns, name, app) => {
            edit(
                ns,
                name,
                Box::new(move |p| {
                    p.metadata.labels = Some([("app".to_string(), APPS[app].to_string())].into());
                    p.metadata.resource_version = None;
                }),
            )
            .await
        }
        Op::Bind(ns, name, node) => {
            edit(
                ns,
                name,
                Box::new(move |p| {
                    p.spec.as_mut().unwrap().node_name = Some(NODES[node].to_string());
                }),
            )
            .await
        }
        Op::Phase(ns, name, failed) => {
            edit(
                ns,
                name,
                Box::new(move |p| {
                    let phase = if failed { "Failed" } else { "Running" };
                    p.status.get_or_insert_with(Default::default).phase = Some(phase.into());
                    p.metadata.resource_version = None;
                }),
            )
            .await
        }
        Op::Delete(ns, name) => {
            let grace = DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            let _ = store
                .delete(&Kind::Pod, Some(NAMESPACES[ns]), NAMES[name], &grace)
                .await;
        }
    }
}

/// The state a watcher reconstructs from its events.
fn replay(state: &mut BTreeMap<String, Arc<Object>>, events: Vec<WatchEvent>) {
    for e in events {
        match e {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                state.insert(o.display_name(), o);
            }
            WatchEvent::Deleted(o) => {
                assert!(
                    state.remove(&o.display_name()).is_some(),
                    "delete of an unseen object"
                );
            }
            WatchEvent::Bookmark(_) => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Lists through the indexes equal a filtered full scan, and every watcher — live from the
    /// start, or replaying history — reconstructs exactly what a list returns.
    #[test]
    fn watchers_and_indexes_agree_with_lists(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = MemoryStore::new();
            let mut live = Vec::new();
            for s in selectors() {
                let options = WatchOptions { selector: s.clone(), ..Default::default() };
                live.push((s, store.watch(&Kind::Pod, &options).await.unwrap()));
            }
            for op in &ops {
                apply(&store, op).await;
            }
            let all = store.list(&Kind::Pod, &ListOptions::default()).await.unwrap().items;
            for (selector, mut w) in live {
                let listed = store.list(&Kind::Pod, &selector).await.unwrap().items;
                let scanned: Vec<_> = all.iter().filter(|o| selector.matches(o)).cloned().collect();
                assert_eq!(listed, scanned, "index list for {selector:?}");
                let expected: BTreeMap<_, _> =
                    listed.iter().map(|o| (o.display_name(), o.clone())).collect();
                let mut seen = BTreeMap::new();
                replay(&mut seen, drain(&mut w));
                assert_eq!(seen, expected, "live watcher for {selector:?}");
                let from_start = WatchOptions {
                    selector: selector.clone(),
                    resource_version: Some(0),
                    ..Default::default()
                };
                let mut replayed = store.watch(&Kind::Pod, &from_start).await.unwrap();
                let mut seen = BTreeMap::new();
                replay(&mut seen, drain(&mut replayed));
                assert_eq!(seen, expected, "history replay for {selector:?}");
            }
        });
    }
}

#[tokio::test]
async fn bind_is_one_write_and_one_event() {
    let store = MemoryStore::new();
    let created = store.create(pod("b", "p", &[], None)).await.unwrap();
    let mut all = store
        .watch(
            &Kind::Pod,
            &WatchOptions {
                resource_version: created.resource_version(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let binding = wharf_core::store::PodBinding::of(&created, "n1", Clock::new().now_k8s());
    let bound = store.bind(&binding).await.unwrap();
    assert_eq!(
        bound.resource_version(),
        created.resource_version().map(|rv| rv + 1),
        "one resourceVersion for spec and status"
    );
    tokio::task::yield_now().await;
    let events = drain(&mut all);
    assert_eq!(events.len(), 1, "one event: {events:?}");
    let WatchEvent::Modified(o) = &events[0] else {
        panic!("expected Modified, got {:?}", events[0]);
    };
    assert_eq!(o.field("spec.nodeName").as_deref(), Some("n1"));
    let pod = o.as_kind::<Pod>().unwrap();
    let conditions = pod.status.as_ref().unwrap().conditions.as_ref().unwrap();
    assert!(conditions
        .iter()
        .any(|c| c.type_ == "PodScheduled" && c.status == "True"));
}

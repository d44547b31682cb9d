//! Conformance checks of `watch`: order, resumption, selectors, bookmarks and expiry.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};

use super::{config_map, pod, rv, with};
use crate::object::Kind;
use crate::store::{
    DeleteOptions, FieldSelector, LabelSelector, ListOptions, Store, StoreError, WatchEvent,
    WatchOptions, WatchStream,
};

/// How many changes [`watch_expired`] writes: the store must keep fewer for one kind.
pub const EXPIRY_WRITES: usize = 5_000;
/// How long [`watch_bookmarks`] waits for an idle watcher's bookmark.
pub const BOOKMARK_WAIT: Duration = Duration::from_secs(90);
/// How long a check waits for an event it expects.
const EVENT_WAIT: Duration = Duration::from_secs(10);
/// How long a check waits to be sure no event comes.
const QUIET: Duration = Duration::from_millis(200);

async fn next(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_WAIT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {EVENT_WAIT:?}"),
    }
}

/// The next event that is not a bookmark.
async fn next_change(stream: &mut WatchStream) -> WatchEvent {
    loop {
        match next(stream).await {
            WatchEvent::Bookmark(_) => continue,
            event => return event,
        }
    }
}

async fn quiet(stream: &mut WatchStream) {
    if let Ok(Some(item)) = tokio::time::timeout(QUIET, stream.next()).await {
        if !matches!(item, Ok(WatchEvent::Bookmark(_))) {
            panic!("unexpected watch event {item:?}");
        }
    }
}

/// `Added ns/name`, `Modified ns/name`, ... for assertions.
fn describe(event: &WatchEvent) -> String {
    match event {
        WatchEvent::Added(o) => format!("Added {}", o.display_name()),
        WatchEvent::Modified(o) => format!("Modified {}", o.display_name()),
        WatchEvent::Deleted(o) => format!("Deleted {}", o.display_name()),
        WatchEvent::Bookmark(rv) => format!("Bookmark {rv}"),
    }
}

async fn changes(stream: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_change(stream).await);
    }
    out
}

fn assert_increasing(events: &[WatchEvent]) {
    let rvs: Vec<u64> = events
        .iter()
        .filter_map(WatchEvent::resource_version)
        .collect();
    assert!(
        rvs.windows(2).all(|w| w[0] < w[1]),
        "resourceVersions not increasing: {rvs:?}"
    );
}

fn from(rv: u64) -> WatchOptions {
    WatchOptions {
        resource_version: Some(rv),
        ..Default::default()
    }
}

async fn delete_cm(store: &Arc<dyn Store>, ns: &str, name: &str) {
    store
        .delete(&Kind::ConfigMap, Some(ns), name, &DeleteOptions::default())
        .await
        .expect("delete");
}

/// A watch from resourceVersion `n` replays every later change in order, then live ones.
pub async fn watch_from_resource_version(store: Arc<dyn Store>) {
    let a = store.create(config_map("wrv", "a", &[])).await.unwrap();
    let start = rv(&a);
    let b = store.create(config_map("wrv", "b", &[])).await.unwrap();
    store
        .create(pod("wrv", "other-kind", &[], None))
        .await
        .unwrap();
    store
        .update(with::<ConfigMap>(&b, |c| {
            c.data = Some([("k".into(), "v".into())].into())
        }))
        .await
        .unwrap();
    delete_cm(&store, "wrv", "b").await;
    store.create(config_map("wrv", "c", &[])).await.unwrap();
    let mut w = store
        .watch(&Kind::ConfigMap, &from(start))
        .await
        .expect("watch");
    let replay = changes(&mut w, 4).await;
    let got: Vec<String> = replay.iter().map(describe).collect();
    assert_eq!(
        got,
        [
            "Added wrv/b",
            "Modified wrv/b",
            "Deleted wrv/b",
            "Added wrv/c"
        ]
    );
    assert_increasing(&replay);
    let last = replay[2]
        .object()
        .and_then(|o| o.as_kind::<ConfigMap>())
        .unwrap();
    assert_eq!(
        last.data.as_ref().map(|d| d["k"].as_str()),
        Some("v"),
        "a delete carries the last state"
    );
    quiet(&mut w).await;
    let live = store
        .update(with::<ConfigMap>(&a, |c| {
            c.data = Some([("x".into(), "y".into())].into())
        }))
        .await
        .unwrap();
    let event = next_change(&mut w).await;
    assert_eq!(describe(&event), "Modified wrv/a");
    assert_eq!(event.resource_version(), Some(rv(&live)));
}

/// A watch without a resourceVersion starts with an `Added` for every existing object.
pub async fn watch_without_resource_version(store: Arc<dyn Store>) {
    for name in ["x", "y"] {
        store.create(config_map("wnone", name, &[])).await.unwrap();
    }
    store
        .create(config_map("elsewhere", "z", &[]))
        .await
        .unwrap();
    let options = WatchOptions {
        selector: ListOptions::namespace("wnone"),
        ..Default::default()
    };
    let mut w = store.watch(&Kind::ConfigMap, &options).await.unwrap();
    let mut initial: Vec<String> = changes(&mut w, 2).await.iter().map(describe).collect();
    initial.sort();
    assert_eq!(initial, ["Added wnone/x", "Added wnone/y"]);
    quiet(&mut w).await;
    store.create(config_map("wnone", "new", &[])).await.unwrap();
    store
        .create(config_map("elsewhere", "new", &[]))
        .await
        .unwrap();
    assert_eq!(describe(&next_change(&mut w).await), "Added wnone/new");
    quiet(&mut w).await;
}

/// List, write, then watch from the list's resourceVersion: exactly the writes after the
/// list arrive, none before it.
pub async fn watch_resumes_after_list(store: Arc<dyn Store>) {
    let mut objects = Vec::new();
    for i in 0..5 {
        objects.push(
            store
                .create(config_map("resume", &format!("o{i}"), &[]))
                .await
                .unwrap(),
        );
    }
    let list = store
        .list(&Kind::ConfigMap, &ListOptions::namespace("resume"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 5);
    for o in &objects[..2] {
        store
            .update(with::<ConfigMap>(o, |c| {
                c.data = Some([("n".into(), "1".into())].into())
            }))
            .await
            .unwrap();
    }
    delete_cm(&store, "resume", "o4").await;
    let mut w = store
        .watch(&Kind::ConfigMap, &from(list.resource_version))
        .await
        .unwrap();
    let got: Vec<String> = changes(&mut w, 3).await.iter().map(describe).collect();
    assert_eq!(
        got,
        [
            "Modified resume/o0",
            "Modified resume/o1",
            "Deleted resume/o4"
        ]
    );
    quiet(&mut w).await;
}

/// Selectors apply per watcher; an object that starts or stops matching is an `Added` or a
/// `Deleted` for that watcher (a pod bound to a node reaches that node's watcher).
pub async fn watch_selectors(store: Arc<dyn Store>) {
    let on = |node: &str| WatchOptions {
        selector: ListOptions {
            fields: Some(FieldSelector::eq("spec.nodeName", node)),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut node1 = store.watch(&Kind::Pod, &on("n1")).await.unwrap();
    let mut unscheduled = store.watch(&Kind::Pod, &on("")).await.unwrap();
    let web = WatchOptions {
        selector: ListOptions {
            labels: Some(LabelSelector::parse("app=web").unwrap()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut labelled = store.watch(&Kind::Pod, &web).await.unwrap();

    let p = store
        .create(pod("sel", "p", &[("app", "web")], None))
        .await
        .unwrap();
    assert_eq!(
        describe(&next_change(&mut unscheduled).await),
        "Added sel/p"
    );
    assert_eq!(describe(&next_change(&mut labelled).await), "Added sel/p");
    quiet(&mut node1).await;

    let bound = store
        .update(with::<Pod>(&p, |p| {
            p.spec.as_mut().unwrap().node_name = Some("n1".into())
        }))
        .await
        .unwrap();
    let added = next_change(&mut node1).await;
    assert_eq!(
        describe(&added),
        "Added sel/p",
        "binding reaches the node's watcher"
    );
    assert_eq!(added.resource_version(), Some(rv(&bound)));
    let left = next_change(&mut unscheduled).await;
    assert_eq!(
        describe(&left),
        "Deleted sel/p",
        "the pod left the unscheduled selector"
    );
    assert_eq!(left.resource_version(), Some(rv(&bound)));
    assert_eq!(
        describe(&next_change(&mut labelled).await),
        "Modified sel/p"
    );

    let relabelled = store
        .update(with::<Pod>(&bound, |p| {
            p.metadata.labels = Some([("app".into(), "db".into())].into())
        }))
        .await
        .unwrap();
    let gone = next_change(&mut labelled).await;
    assert_eq!(
        describe(&gone),
        "Deleted sel/p",
        "stopped matching the label selector"
    );
    let last = gone.object().unwrap();
    assert_eq!(
        last.meta().labels.as_ref().map(|l| l["app"].as_str()),
        Some("web"),
        "the delete carries the last state that matched"
    );
    assert_eq!(describe(&next_change(&mut node1).await), "Modified sel/p");
    store
        .delete(
            &Kind::Pod,
            Some("sel"),
            "p",
            &DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let deleted = next_change(&mut node1).await;
    assert_eq!(describe(&deleted), "Deleted sel/p");
    assert!(deleted.resource_version() > Some(rv(&relabelled)));
    quiet(&mut labelled).await;
    quiet(&mut unscheduled).await;
}

/// A watcher sees the marking delete as `Modified` and the removal of the last finalizer as
/// `Deleted`.
pub async fn watch_finalized_delete(store: Arc<dyn Store>) {
    let mut held = config_map("wfin", "held", &[]);
    held.meta_mut().finalizers = Some(vec!["example.com/hold".into()]);
    let created = store.create(held).await.unwrap();
    let mut w = store
        .watch(&Kind::ConfigMap, &from(rv(&created)))
        .await
        .unwrap();
    let marked = store
        .delete(
            &Kind::ConfigMap,
            Some("wfin"),
            "held",
            &DeleteOptions::default(),
        )
        .await
        .unwrap();
    let event = next_change(&mut w).await;
    assert_eq!(describe(&event), "Modified wfin/held");
    assert!(event.object().unwrap().meta().deletion_timestamp.is_some());
    store
        .update(with::<ConfigMap>(marked.object(), |c| {
            c.metadata.finalizers = None
        }))
        .await
        .unwrap();
    assert_eq!(describe(&next_change(&mut w).await), "Deleted wfin/held");
}

/// Bookmarks: one ends the initial state of a watch without resourceVersion, and an idle
/// watcher gets one with a recent resourceVersion it can resume from.
pub async fn watch_bookmarks(store: Arc<dyn Store>) {
    store.create(config_map("bm", "a", &[])).await.unwrap();
    let options = WatchOptions {
        selector: ListOptions::namespace("bm"),
        bookmarks: true,
        ..Default::default()
    };
    let mut w = store.watch(&Kind::ConfigMap, &options).await.unwrap();
    assert_eq!(describe(&next(&mut w).await), "Added bm/a");
    let WatchEvent::Bookmark(initial) = next(&mut w).await else {
        panic!("a bookmark ends the initial events")
    };
    assert!(initial >= store.current_resource_version().await.unwrap().min(initial));
    // Writes the watcher does not select move the store's resourceVersion on.
    let other = store
        .create(config_map("elsewhere", "b", &[]))
        .await
        .unwrap();
    let idle = tokio::time::timeout(BOOKMARK_WAIT, async {
        loop {
            match w.next().await {
                Some(Ok(WatchEvent::Bookmark(rv))) if rv >= super::rv(&other) => return rv,
                Some(Ok(WatchEvent::Bookmark(_))) => continue,
                other => panic!("expected a bookmark, got {other:?}"),
            }
        }
    })
    .await
    .expect("an idle watcher gets a bookmark");
    let mut resumed = store
        .watch(
            &Kind::ConfigMap,
            &WatchOptions {
                resource_version: Some(idle),
                ..options
            },
        )
        .await
        .unwrap();
    store.create(config_map("bm", "c", &[])).await.unwrap();
    assert_eq!(describe(&next_change(&mut resumed).await), "Added bm/c");
}

/// A resourceVersion older than the retained history is `Expired`; a recent one works.
pub async fn watch_expired(store: Arc<dyn Store>) {
    let first = store.create(config_map("exp", "churn", &[])).await.unwrap();
    let mut current = first.clone();
    for i in 0..EXPIRY_WRITES {
        current = store
            .update(with::<ConfigMap>(&current, |c| {
                c.data = Some([("i".into(), i.to_string())].into())
            }))
            .await
            .unwrap();
    }
    let Err(e) = store.watch(&Kind::ConfigMap, &from(rv(&first))).await else {
        panic!("watch from a compacted resourceVersion must fail")
    };
    assert!(matches!(e, StoreError::Expired { .. }), "old watch: {e}");
    assert!(e.to_string().contains("too old"), "{e}");
    let mut w = store
        .watch(&Kind::ConfigMap, &from(rv(&current)))
        .await
        .expect("recent watch");
    store.create(config_map("exp", "after", &[])).await.unwrap();
    assert_eq!(describe(&next_change(&mut w).await), "Added exp/after");
}

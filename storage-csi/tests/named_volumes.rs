//! Docker-style named volumes on the hostpath driver over its socket (recorded mounts):
//! create is idempotent, in-use volumes cannot be removed, the mount follows its users, and
//! the registry survives a reopen.

#![allow(missing_docs)]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use wharf_core::backend::ErrorKind;
use wharf_storage_csi::named::NamedVolumes;

#[tokio::test]
async fn named_volume_lifecycle() {
    let h = Harness::recorded();
    let csi = Arc::new(h.client().await);
    let registry = h.path("docker-volumes");
    let volumes = NamedVolumes::open(csi.clone(), NODE, &registry)
        .await
        .unwrap();
    let labels = BTreeMap::from([("app".to_string(), "db".to_string())]);
    let v = volumes.create("pgdata", labels.clone(), GIB).await.unwrap();
    assert_eq!(v.driver, "hostpath.csi.wharf.dev");
    assert_eq!(
        volumes
            .create("pgdata", BTreeMap::new(), GIB)
            .await
            .unwrap()
            .volume_id,
        v.volume_id
    );
    assert_eq!(
        volumes
            .create("bad/name", BTreeMap::new(), 0)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::InvalidArgument
    );
    assert_eq!(volumes.list().await.len(), 1);
    assert_eq!(volumes.inspect("pgdata").await.unwrap().labels, labels);

    let mountpoint = volumes.acquire("pgdata", "c1").await.unwrap();
    volumes.acquire("pgdata", "c2").await.unwrap();
    let mounts = h.recorded.as_ref().unwrap().mounts();
    assert!(mounts.contains_key(&mountpoint));
    assert_eq!(
        mounts.len(),
        2,
        "one staging, one publish for two containers: {mounts:?}"
    );

    let err = volumes.remove("pgdata").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FailedPrecondition);
    assert!(
        err.message.contains("c1") && err.message.contains("c2"),
        "{err}"
    );

    // The registry is durable.
    drop(volumes);
    let volumes = NamedVolumes::open(csi.clone(), NODE, &registry)
        .await
        .unwrap();
    assert_eq!(volumes.inspect("pgdata").await.unwrap().users.len(), 2);

    volumes.release("pgdata", "c1").await.unwrap();
    assert_eq!(
        h.recorded.as_ref().unwrap().mounts().len(),
        2,
        "still used by c2"
    );
    volumes.release("pgdata", "c2").await.unwrap();
    volumes.release("pgdata", "c2").await.unwrap();
    assert!(h.recorded.as_ref().unwrap().mounts().is_empty());
    volumes.remove("pgdata").await.unwrap();
    assert_eq!(
        volumes.remove("pgdata").await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert!(volumes.list().await.is_empty());
    assert!(h.driver().state().volumes.is_empty());
    assert!(!exists(&registry.join("pgdata")));
}

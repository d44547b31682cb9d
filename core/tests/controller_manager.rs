//! All built-in controllers together: a Deployment behind a Service ends up as ready
//! endpoints, and the manager shuts down cleanly.

mod controller_support;

use std::collections::BTreeMap;
use std::time::Duration;

use controller_support::*;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Endpoints, Service, ServicePort, ServiceSpec};
use wharf_core::controllers::ControllerManager;
use wharf_core::store::{Api, DeleteOptions};
use wharf_core::Kind;

#[tokio::test(start_paused = true)]
async fn deployment_behind_a_service_becomes_ready_endpoints() {
    let (store, clock) = store();
    let manager = ControllerManager::start(store.clone(), clock);
    let kubelet_stop = wharf_core::controller::CancellationToken::new();
    kubelet(
        store.clone(),
        clock,
        Duration::from_secs(1),
        kubelet_stop.clone(),
    );

    let mut d = Deployment::default();
    d.metadata.name = Some("web".into());
    d.spec = Some(DeploymentSpec {
        replicas: Some(3),
        selector: selector(&[("app", "web")]),
        template: template(&[("app", "web")], "nginx"),
        ..Default::default()
    });
    Api::<Deployment>::namespaced(store.clone(), "default")
        .create(d)
        .await
        .unwrap();
    let mut svc = Service::default();
    svc.metadata.name = Some("web".into());
    svc.spec = Some(ServiceSpec {
        selector: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
        ports: Some(vec![ServicePort {
            port: 80,
            ..Default::default()
        }]),
        ..Default::default()
    });
    Api::<Service>::namespaced(store.clone(), "default")
        .create(svc)
        .await
        .unwrap();

    let endpoints: Api<Endpoints> = Api::namespaced(store.clone(), "default");
    eventually(Duration::from_secs(30), "3 ready endpoints", || async {
        endpoints.get_opt("web").await.unwrap().is_some_and(|ep| {
            ep.subsets
                .iter()
                .flatten()
                .map(|s| s.addresses.as_ref().map_or(0, |a| a.len()))
                .sum::<usize>()
                == 3
        })
    })
    .await;
    let names: Vec<&str> = manager.metrics().iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"deployment") && names.contains(&"garbage-collector"));
    let deployment_metrics = &manager
        .metrics()
        .iter()
        .find(|(n, _)| n == "deployment")
        .unwrap()
        .1;
    assert!(deployment_metrics.snapshot().reconciles > 0);

    // Deleting the Deployment removes its ReplicaSet and pods through the garbage collector.
    Api::<Deployment>::namespaced(store.clone(), "default")
        .delete("web", &DeleteOptions::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "everything collected", || async {
        list(&store, Kind::ReplicaSet).await.is_empty() && list(&store, Kind::Pod).await.is_empty()
    })
    .await;
    kubelet_stop.cancel();
    manager.shutdown().await;
}

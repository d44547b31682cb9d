//! Endpoints and EndpointSlice controllers follow pod readiness.

mod controller_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use controller_support::*;
use k8s_openapi::api::core::v1::{Endpoints, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use wharf_core::controller::{CancellationToken, Context};
use wharf_core::controllers::endpoints::{EndpointSliceController, EndpointsController};
use wharf_core::store::{Api, DeleteOptions, Store};
use wharf_core::{Clock, Kind, Object};

fn start(store: &Arc<dyn Store>, clock: Clock) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), clock, shutdown.clone());
    tokio::spawn(EndpointsController::controller().run(ctx.clone(), shutdown.clone()));
    tokio::spawn(EndpointSliceController::controller().run(ctx, shutdown.clone()));
    shutdown
}

fn service(name: &str, app: &str) -> Service {
    let mut s = Service::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some("default".into());
    s.spec = Some(ServiceSpec {
        selector: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
        ports: Some(vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: Some(IntOrString::Int(8080)),
            ..Default::default()
        }]),
        ..Default::default()
    });
    s
}

/// (ready, not ready) addresses of the Endpoints.
async fn addresses(api: &Api<Endpoints>, name: &str) -> (Vec<String>, Vec<String>) {
    let Some(ep) = api.get_opt(name).await.unwrap() else {
        return (vec![], vec![]);
    };
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for s in ep.subsets.iter().flatten() {
        ready.extend(s.addresses.iter().flatten().map(|a| a.ip.clone()));
        not_ready.extend(s.not_ready_addresses.iter().flatten().map(|a| a.ip.clone()));
    }
    ready.sort();
    not_ready.sort();
    (ready, not_ready)
}

async fn slices(store: &Arc<dyn Store>) -> Vec<EndpointSlice> {
    list(store, Kind::EndpointSlice)
        .await
        .iter()
        .map(|o| o.as_kind::<EndpointSlice>().unwrap().clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn endpoints_follow_readiness() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    Api::<Service>::namespaced(store.clone(), "default")
        .create(service("web", "web"))
        .await
        .unwrap();
    let a = store
        .create(Object::from(pod("a", &[("app", "web")])))
        .await
        .unwrap();
    let b = store
        .create(Object::from(pod("b", &[("app", "web")])))
        .await
        .unwrap();
    store
        .create(Object::from(pod("c", &[("app", "db")])))
        .await
        .unwrap();
    set_ready(&store, &clock, &a, true, "10.0.0.1").await;
    set_ready(&store, &clock, &b, false, "10.0.0.2").await;
    let api: Api<Endpoints> = Api::namespaced(store.clone(), "default");
    let s = |r: &[&str]| r.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    eventually(Duration::from_secs(5), "a ready, b not ready", || async {
        addresses(&api, "web").await == (s(&["10.0.0.1"]), s(&["10.0.0.2"]))
    })
    .await;
    let ep = api.get("web").await.unwrap();
    let ports = ep.subsets.as_ref().unwrap()[0].ports.clone().unwrap();
    assert_eq!(
        (ports[0].port, ports[0].name.as_deref()),
        (8080, Some("http"))
    );
    eventually(Duration::from_secs(5), "slice conditions", || async {
        let sl = slices(&store).await;
        sl.len() == 1 && {
            let mut conds: Vec<_> = sl[0]
                .endpoints
                .iter()
                .map(|e| {
                    let c = e.conditions.clone().unwrap();
                    (e.addresses[0].clone(), c.ready, c.serving, c.terminating)
                })
                .collect();
            conds.sort();
            conds
                == vec![
                    ("10.0.0.1".into(), Some(true), Some(true), Some(false)),
                    ("10.0.0.2".into(), Some(false), Some(false), Some(false)),
                ]
        }
    })
    .await;
    let sl = &slices(&store).await[0];
    assert_eq!(sl.address_type, "IPv4");
    let labels = sl.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["kubernetes.io/service-name"], "web");
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );

    // b becomes ready, a stops being ready.
    let b = store.get(&Kind::Pod, Some("default"), "b").await.unwrap();
    set_ready(&store, &clock, &b, true, "10.0.0.2").await;
    let a = store.get(&Kind::Pod, Some("default"), "a").await.unwrap();
    set_ready(&store, &clock, &a, false, "10.0.0.1").await;
    eventually(Duration::from_secs(5), "b ready, a not", || async {
        addresses(&api, "web").await == (s(&["10.0.0.2"]), s(&["10.0.0.1"]))
    })
    .await;
    // a removed: gone from both.
    store
        .delete(&Kind::Pod, Some("default"), "a", &DeleteOptions::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "a gone", || async {
        addresses(&api, "web").await == (s(&["10.0.0.2"]), vec![])
            && slices(&store).await[0].endpoints.len() == 1
    })
    .await;
    // The Service removed: its Endpoints go too.
    Api::<Service>::namespaced(store.clone(), "default")
        .delete("web", &DeleteOptions::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "endpoints removed", || async {
        api.get_opt("web").await.unwrap().is_none()
    })
    .await;
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn slices_hold_at_most_one_hundred_endpoints() {
    let (store, clock) = store();
    let shutdown = start(&store, clock);
    Api::<Service>::namespaced(store.clone(), "default")
        .create(service("big", "big"))
        .await
        .unwrap();
    for i in 0..250 {
        let p = store
            .create(Object::from(pod(&format!("p{i:03}"), &[("app", "big")])))
            .await
            .unwrap();
        set_ready(
            &store,
            &clock,
            &p,
            i % 2 == 0,
            &format!("10.2.{}.{}", i / 200, i % 200 + 1),
        )
        .await;
    }
    eventually(
        Duration::from_secs(10),
        "250 endpoints in 3 slices",
        || async {
            let sl = slices(&store).await;
            sl.iter().map(|s| s.endpoints.len()).sum::<usize>() == 250
        },
    )
    .await;
    let mut sizes: Vec<usize> = slices(&store)
        .await
        .iter()
        .map(|s| s.endpoints.len())
        .collect();
    sizes.sort();
    assert_eq!(sizes, [50, 100, 100]);
    let api: Api<Endpoints> = Api::namespaced(store.clone(), "default");
    let (ready, not_ready) = addresses(&api, "big").await;
    assert_eq!((ready.len(), not_ready.len()), (125, 125));
    shutdown.cancel();
}

//! A user-defined kind reconciled by the user's own controller.
//!
//! `Greeting` (`example.wharf.dev/v1`) has `spec.message`; the `greeter` controller keeps a
//! ConfigMap `<name>-greeting` holding `Hello, <message>!` (owned by the Greeting) and
//! reports what it did in the Greeting's status. The program creates a Greeting, changes it,
//! deletes it, and checks the ConfigMap follows each time.
//!
//! ```text
//! cargo run --example custom_controller
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;
use wharf::core::cluster::ClusterBuilder;
use wharf::core::controller::{
    Action, CancellationToken, Context, Controller, ControllerError, ObjectKey, Reconciler,
};
use wharf::core::object::{DynamicObject, Kind, Object};
use wharf::core::store::{Api, DeleteOptions, StoreError};

const NS: &str = "default";

fn greeting_kind() -> Kind {
    Kind::custom("example.wharf.dev/v1", "Greeting", true)
}

/// The user's reconciler.
struct Greeter;

#[async_trait]
impl Reconciler for Greeter {
    type Error = ControllerError;

    async fn reconcile(&self, object: Arc<Object>, ctx: &Context) -> Result<Action, Self::Error> {
        let Object::Custom(greeting) = &*object else {
            return Ok(Action::AwaitChange);
        };
        let message = greeting
            .data
            .get("spec")
            .and_then(|s| s.get("message"))
            .and_then(|m| m.as_str())
            .ok_or_else(|| ControllerError::invalid(&object, "spec.message", "missing"))?;
        let name = greeting.metadata.name.clone().unwrap_or_default();
        let wanted = BTreeMap::from([("greeting".to_string(), format!("Hello, {message}!"))]);

        // The owned ConfigMap: create it, or bring its data in line.
        let config_maps: Api<ConfigMap> = Api::namespaced(ctx.store.clone(), NS);
        let cm_name = format!("{name}-greeting");
        let write = match config_maps.get_opt(&cm_name).await {
            Ok(Some(cm)) if cm.data.as_ref() == Some(&wanted) => Ok(()),
            Ok(Some(cm)) => {
                let mut cm = cm.to_owned_value();
                cm.data = Some(wanted);
                config_maps.update(cm).await.map(drop)
            }
            Ok(None) => {
                let owner = OwnerReference {
                    api_version: greeting.api_version.clone(),
                    kind: greeting.kind.clone(),
                    name: name.clone(),
                    uid: greeting.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                };
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(cm_name.clone()),
                        namespace: Some(NS.to_string()),
                        owner_references: Some(vec![owner]),
                        ..ObjectMeta::default()
                    },
                    data: Some(wanted),
                    ..ConfigMap::default()
                };
                config_maps.create(cm).await.map(drop)
            }
            Err(e) => Err(e),
        };
        write.map_err(|e| ControllerError::store("write config map", &object, e))?;

        // Status: what was observed; written only when it changes (a write is an event).
        let status = json!({
            "observedGeneration": greeting.metadata.generation,
            "configMap": cm_name,
            "message": message,
        });
        if greeting.data.get("status") != Some(&status) {
            let mut updated: DynamicObject = (**greeting).clone();
            updated.data.insert("status".to_string(), status);
            ctx.store
                .update_status(Object::Custom(Box::new(updated)))
                .await
                .map_err(|e| ControllerError::store("update status", &object, e))?;
        }
        println!("  reconciled greeting/{name}: ConfigMap {cm_name} says \"Hello, {message}!\"");
        Ok(Action::AwaitChange)
    }

    async fn cleanup(&self, key: &ObjectKey, ctx: &Context) -> Result<Action, Self::Error> {
        // Deleted Greeting: its ConfigMap goes too (the garbage collector would also do it
        // through the ownerReference; deleting here does not wait for it).
        let config_maps: Api<ConfigMap> = Api::namespaced(ctx.store.clone(), NS);
        match config_maps
            .delete(&format!("{}-greeting", key.name), &DeleteOptions::default())
            .await
        {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => {
                return Err(ControllerError::store_key(
                    "delete config map",
                    &Kind::ConfigMap,
                    key,
                    e,
                ))
            }
        }
        println!("  cleaned up after greeting/{}", key.name);
        Ok(Action::AwaitChange)
    }
}

async fn wait_for<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            println!("ok: {what}");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("timed out waiting for: {what}")
}

async fn greeting_says(api: &Api<ConfigMap>, text: &str) -> bool {
    api.get_opt("hello-greeting")
        .await
        .ok()
        .flatten()
        .and_then(|cm| cm.data.as_ref()?.get("greeting").cloned())
        .as_deref()
        == Some(text)
}

#[tokio::main]
async fn main() -> Result<()> {
    // A cluster without nodes: the store and the built-in controllers are enough.
    let cluster = ClusterBuilder::new().without_scheduler().start().await?;
    let store = cluster.store().clone();

    let shutdown = CancellationToken::new();
    let ctx = Context::new(store.clone(), cluster.clock(), shutdown.clone());
    let controller = Controller::new("greeter", greeting_kind(), Greeter).owns(Kind::ConfigMap);
    let metrics = controller.metrics();
    let runner = tokio::spawn(controller.run(ctx, shutdown.clone()));

    let config_maps = cluster.api::<ConfigMap>(NS);
    let greeting: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.wharf.dev/v1",
        "kind": "Greeting",
        "metadata": {"name": "hello", "namespace": NS},
        "spec": {"message": "world"},
    }))?;
    println!("create greeting/hello (message: world)");
    store.create(Object::Custom(Box::new(greeting))).await?;
    wait_for("ConfigMap hello-greeting says Hello, world!", || {
        greeting_says(&config_maps, "Hello, world!")
    })
    .await?;
    wait_for("greeting/hello status reports the ConfigMap", || async {
        let g = store.get(&greeting_kind(), Some(NS), "hello").await;
        g.is_ok_and(|g| match &*g {
            Object::Custom(d) => d
                .data
                .get("status")
                .and_then(|s| s.get("configMap"))
                .is_some_and(|c| c == "hello-greeting"),
            _ => false,
        })
    })
    .await?;

    println!("change greeting/hello (message: Wharf)");
    let current = store.get(&greeting_kind(), Some(NS), "hello").await?;
    let Object::Custom(d) = &*current else {
        bail!("greeting/hello is not a custom object")
    };
    let mut changed = (**d).clone();
    changed
        .data
        .insert("spec".to_string(), json!({"message": "Wharf"}));
    store.update(Object::Custom(Box::new(changed))).await?;
    wait_for("ConfigMap hello-greeting says Hello, Wharf!", || {
        greeting_says(&config_maps, "Hello, Wharf!")
    })
    .await?;

    println!("delete greeting/hello");
    store
        .delete(
            &greeting_kind(),
            Some(NS),
            "hello",
            &DeleteOptions::default(),
        )
        .await?;
    wait_for("ConfigMap hello-greeting gone", || async {
        config_maps
            .get_opt("hello-greeting")
            .await
            .is_ok_and(|c| c.is_none())
    })
    .await?;

    shutdown.cancel();
    runner.await?;
    cluster.shutdown().await;
    println!("greeter metrics: {:?}", metrics.snapshot());
    Ok(())
}

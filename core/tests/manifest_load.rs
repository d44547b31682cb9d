//! Loading manifests: typed objects with Kubernetes defaults, and errors that point into the
//! file (source, document, line/column, field path).

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use wharf_core::manifest::{self, Loader, ManifestError};
use wharf_core::object::CustomKind;
use wharf_core::Object;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/manifests")
        .join(name)
}

fn error_of(text: &str) -> String {
    manifest::load_str(text, "test.yaml")
        .unwrap_err()
        .to_string()
}

#[test]
fn deployment_and_service_load_typed_with_defaults() {
    let manifest = manifest::load_file(fixture("web.yaml")).unwrap();
    assert!(manifest.warnings.is_empty(), "{:?}", manifest.warnings);
    let objects: Vec<&Object> = manifest.objects().collect();
    assert_eq!(objects.len(), 2, "the trailing empty document is skipped");

    let deploy: &Deployment = objects[0].as_kind().expect("a Deployment");
    assert_eq!(deploy.metadata.namespace.as_deref(), Some("default"));
    let spec = deploy.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    assert_eq!(spec.min_ready_seconds, Some(0));
    let strategy = spec.strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_surge, Some(IntOrString::String("25%".into())));
    assert_eq!(
        rolling.max_unavailable,
        Some(IntOrString::String("25%".into()))
    );

    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Always"));
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirst"));
    assert_eq!(pod.scheduler_name.as_deref(), Some("default-scheduler"));
    let nginx = &pod.containers[0];
    assert_eq!(nginx.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        pod.containers[1].image_pull_policy.as_deref(),
        Some("Always")
    );
    assert_eq!(
        nginx.termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    assert_eq!(nginx.termination_message_policy.as_deref(), Some("File"));
    assert_eq!(
        nginx.ports.as_ref().unwrap()[0].protocol.as_deref(),
        Some("TCP")
    );
    let probe = nginx.readiness_probe.as_ref().unwrap();
    assert_eq!(
        (
            probe.timeout_seconds,
            probe.period_seconds,
            probe.success_threshold,
            probe.failure_threshold
        ),
        (Some(1), Some(10), Some(1), Some(3))
    );
    let http = probe.http_get.as_ref().unwrap();
    assert_eq!(http.path.as_deref(), Some("/"));
    assert_eq!(http.scheme.as_deref(), Some("HTTP"));
    assert_eq!(http.port, IntOrString::String("http".into()));

    let svc: &Service = objects[1].as_kind().expect("a Service");
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.session_affinity.as_deref(), Some("None"));
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(port.target_port, Some(IntOrString::Int(80)));
    assert_eq!(manifest.items[1].origin.document, Some(2));
}

#[test]
fn wrong_type_names_file_document_position_and_field() {
    let path = fixture("bad-port.yaml");
    let err = manifest::load_file(&path).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("bad-port.yaml:23:26"), "{text}");
    assert!(text.contains("document 2 (Deployment \"api\")"), "{text}");
    assert!(
        text.contains(
            "spec.template.spec.containers[0].ports[0].containerPort: expected an integer, found string \"http\""
        ),
        "{text}"
    );
    let origin = err.origin().unwrap();
    assert_eq!(
        (origin.document, origin.line, origin.column),
        (Some(2), Some(23), Some(26))
    );
}

#[test]
fn all_or_nothing_one_bad_document_fails_the_source() {
    // The ConfigMap in document 1 is fine, the Deployment in document 2 is not: nothing loads.
    assert!(manifest::load_file(fixture("bad-port.yaml")).is_err());
    // Every problem in the source is reported, not only the first.
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec:\n  containers: [{name: a, image: x}]\n---\napiVersion: v1\nkind: Nope\nmetadata: {name: x}\n";
    let err = manifest::load_str(text, "two.yaml").unwrap_err();
    assert_eq!(err.errors().len(), 2, "{err}");
    let text = err.to_string();
    assert!(text.starts_with("2 errors:"), "{text}");
    assert!(
        text.contains("two.yaml:3:18: document 1 (Pod \"Bad_Name\"): metadata.name: Invalid value"),
        "{text}"
    );
    assert!(
        text.contains("two.yaml:8:7: document 2 (Nope \"x\"): unknown kind \"Nope\""),
        "{text}"
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n data: {x: 1}\n";
    let err = manifest::load_str(text, "broken.yaml").unwrap_err();
    let ManifestError::Syntax { origin, message } = &err else {
        panic!("{err}")
    };
    assert_eq!(origin.line, Some(5), "{err}");
    assert!(origin.column.is_some());
    assert!(err.to_string().starts_with("broken.yaml:5:"), "{err}");
    assert!(!message.is_empty());
}

#[test]
fn unknown_kind_and_api_version_get_a_hint() {
    let text =
        error_of("apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: old}\n");
    assert!(
        text.contains("test.yaml:2:7: document 1 (Deployment \"old\"): unknown kind \"Deployment\" in apiVersion \"extensions/v1beta1\"; Deployment is served as apiVersion apps/v1"),
        "{text}"
    );
    let text = error_of("kind: Pod\nmetadata: {name: p}\n");
    assert!(
        text.contains("document 1 (Pod \"p\"): apiVersion: required field is missing"),
        "{text}"
    );
}

#[test]
fn missing_required_fields_are_named() {
    let text = error_of(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers: [{image: nginx}]\n",
    );
    // k8s-openapi requires `selector` on apps/v1 Deployments and `name` on containers; each
    // is reported with the position of the object that lacks it.
    assert!(text.starts_with("2 errors:"), "{text}");
    assert!(text.contains("test.yaml:5:3: document 1 (Deployment \"web\"): spec.selector: required field is missing"), "{text}");
    assert!(text.contains("test.yaml:7:20: document 1 (Deployment \"web\"): spec.template.spec.containers[0].name: required field is missing"), "{text}");
    let text = error_of(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: nginx}]\n",
    );
    assert!(text.contains("test.yaml:5:3: document 1 (Deployment \"web\"): spec.selector: required field is missing"), "{text}");
    let text = error_of(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - image: nginx\n",
    );
    assert!(text.contains("test.yaml:6:5: document 1 (Pod \"p\"): spec.containers[0].name: required field is missing"), "{text}");
}

#[test]
fn unknown_fields_are_dropped_with_a_warning() {
    let manifest = manifest::load_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicyy: Never\n  nodeSelectorr: {a: b}\n",
        "typo.yaml",
    )
    .unwrap();
    let warnings: Vec<String> = manifest.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("spec.containers[0].imagePullPolicyy: unknown field")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("spec.nodeSelectorr: unknown field")),
        "{warnings:?}"
    );
}

#[test]
fn validation_errors_carry_field_paths() {
    // Selector does not match the template.
    let text = error_of(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: other}}\n    spec:\n      containers: [{name: web, image: nginx}]\n",
    );
    assert!(text.contains("test.yaml:7:24: document 1 (Deployment \"web\"): spec.template.metadata.labels: Invalid value: {app=other}: `selector` does not match template `labels`"), "{text}");

    // Duplicate container names and a port out of range.
    let text = error_of(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: x, ports: [{containerPort: 70000}]}\n  - {name: a, image: busybox}\n",
    );
    assert!(text.contains("spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"), "{text}");
    assert!(
        text.contains("spec.containers[1].name: Duplicate value: \"a\""),
        "{text}"
    );

    // A Job's pod template defaults to restartPolicy Always, which Jobs refuse.
    let text = error_of(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec:\n      containers: [{name: c, image: busybox}]\n",
    );
    assert!(text.contains("spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""), "{text}");
}

#[test]
fn job_cronjob_statefulset_daemonset_defaults() {
    let manifest = manifest::load_str(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    metadata: {labels: {app: once}}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox:1.36}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: c, image: busybox}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: postgres:16}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      initContainers: [{name: side, image: envoy:1, restartPolicy: Always}]
      containers: [{name: agent, image: agent:1}]
"#,
        "workloads.yaml",
    )
    .unwrap();
    let json: Vec<serde_json::Value> = manifest.objects().map(Object::to_json).collect();
    let job = &json[0]["spec"];
    assert_eq!(job["completions"], 1);
    assert_eq!(job["parallelism"], 1);
    assert_eq!(job["backoffLimit"], 6);
    assert_eq!(job["completionMode"], "NonIndexed");
    assert_eq!(job["suspend"], false);
    assert_eq!(json[0]["metadata"]["labels"]["app"], "once");
    let cron = &json[1]["spec"];
    assert_eq!(cron["concurrencyPolicy"], "Allow");
    assert_eq!(cron["suspend"], false);
    assert_eq!(cron["successfulJobsHistoryLimit"], 3);
    assert_eq!(cron["failedJobsHistoryLimit"], 1);
    assert_eq!(
        cron["jobTemplate"]["spec"]["template"]["spec"]["dnsPolicy"],
        "ClusterFirst"
    );
    let sts = &json[2]["spec"];
    assert_eq!(sts["replicas"], 1);
    assert_eq!(sts["podManagementPolicy"], "OrderedReady");
    assert_eq!(sts["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(sts["updateStrategy"]["rollingUpdate"]["partition"], 0);
    assert_eq!(sts["revisionHistoryLimit"], 10);
    assert_eq!(
        sts["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
        "Retain"
    );
    assert_eq!(
        sts["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
        "Retain"
    );
    let ds = &json[3]["spec"];
    assert_eq!(ds["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
    assert_eq!(ds["updateStrategy"]["rollingUpdate"]["maxSurge"], 0);
    assert_eq!(ds["revisionHistoryLimit"], 10);
    let init = &ds["template"]["spec"]["initContainers"][0];
    assert_eq!(
        init["restartPolicy"], "Always",
        "a sidecar keeps its own restartPolicy"
    );
}

#[test]
fn storage_and_hpa_defaults() {
    let manifest = manifest::load_str(
        r#"
{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": 1073741824}}}}
---
{"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv1", "namespace": "ignored"},
 "spec": {"capacity": {"storage": "1Gi"}, "hostPath": {"path": "/tmp/pv1"}}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  maxReplicas: 10
  behavior:
    scaleDown:
      policies: [{type: Pods, value: 1, periodSeconds: 60}]
"#,
        "storage.yaml",
    )
    .unwrap();
    let json: Vec<serde_json::Value> = manifest.objects().map(Object::to_json).collect();
    assert_eq!(json[0]["spec"]["volumeMode"], "Filesystem");
    assert_eq!(
        json[0]["spec"]["resources"]["requests"]["storage"],
        "1073741824"
    );
    assert_eq!(json[1]["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert!(json[1]["metadata"].get("namespace").is_none());
    assert_eq!(manifest.warnings.len(), 1, "{:?}", manifest.warnings);
    let hpa = &json[2]["spec"];
    assert_eq!(hpa["minReplicas"], 1);
    assert_eq!(
        hpa["metrics"][0]["resource"]["target"]["averageUtilization"],
        80
    );
    assert_eq!(
        hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        300
    );
    assert_eq!(hpa["behavior"]["scaleDown"]["policies"][0]["type"], "Pods");
    assert_eq!(hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"], 0);
    assert_eq!(hpa["behavior"]["scaleUp"]["policies"][1]["value"], 100);
}

#[test]
fn lists_unpack_and_name_their_items() {
    let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: a}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: b}
  data: {key: [1, 2]}
"#;
    let err = manifest::load_str(text, "list.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("list.yaml:11:15: document 1, items[1] (ConfigMap \"b\"): data.key: expected a string, found a list"),
        "{err}"
    );
    let ok = manifest::load_str(&text.replace("[1, 2]", "v"), "list.yaml").unwrap();
    let names: Vec<&str> = ok.objects().map(Object::name).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn custom_kinds_load_once_registered() {
    let text =
        "apiVersion: example.com/v1\nkind: Database\nmetadata: {name: main}\nspec: {size: 3}\n";
    let err = manifest::load_str(text, "db.yaml").unwrap_err().to_string();
    assert!(err.contains("unknown kind \"Database\""), "{err}");
    let loader = Loader::new()
        .register(CustomKind {
            api_version: "example.com/v1".into(),
            kind: "Database".into(),
            namespaced: true,
        })
        .default_namespace("team-a");
    let manifest = loader.load_str(text, "db.yaml").unwrap();
    let Object::Custom(db) = &manifest.items[0].object else {
        panic!("expected a custom object")
    };
    assert_eq!(db.metadata.namespace.as_deref(), Some("team-a"));
    assert_eq!(db.data["spec"]["size"], 3);
}

/// A temporary directory removed on drop, even when the test panics.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn directories_load_whole_or_not_at_all() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("wharf-manifest-dir-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::copy(fixture("web.yaml"), dir.0.join("a-web.yaml")).unwrap();
    std::fs::write(dir.0.join("notes.txt"), "not a manifest").unwrap();
    let ok = manifest::load_dir(&dir.0).unwrap();
    assert_eq!(ok.items.len(), 2);
    std::fs::copy(fixture("bad-port.yaml"), dir.0.join("b-bad.yaml")).unwrap();
    let err = manifest::load_dir(&dir.0).unwrap_err().to_string();
    assert!(err.contains("b-bad.yaml:23:26: document 2"), "{err}");
}

#[test]
fn json_and_quantities_from_numbers() {
    let manifest = manifest::load_str(
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"ns1"},
            "spec":{"containers":[{"name":"c","image":"busybox:1.36",
              "resources":{"limits":{"cpu":1,"memory":"128Mi"}}}]}}"#,
        "pod.json",
    )
    .unwrap();
    let pod = manifest.items[0].object.to_json();
    assert_eq!(pod["metadata"]["namespace"], "ns1");
    let resources = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(resources["limits"]["cpu"], "1");
    // A Pod with limits and no requests requests its limits.
    assert_eq!(resources["requests"]["memory"], "128Mi");
}

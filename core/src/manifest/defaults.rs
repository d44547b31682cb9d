//! Kubernetes defaulting: the values the API server's `SetDefaults_*` functions fill in when
//! an object is created, for the fields Wharf's engine reads.
//!
//! [`apply_defaults`] is idempotent and never overwrites a field that is set, so the store
//! may run it on every write. Like the API server, pod-spec defaults apply to every pod
//! template (Deployment, Job, CronJob's job template, ...), while the Pod-only defaults
//! (requests copied from limits) apply to Pods alone.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::autoscaling::v2 as autoscaling;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::object::Object;

/// The namespace of a namespaced object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Mode of files projected from Secrets, ConfigMaps, downward API and projected volumes
/// (0644).
pub const DEFAULT_FILE_MODE: i32 = 0o644;

/// Fills in the defaults of `object`, as the API server does on create.
pub fn apply_defaults(object: &mut Object) {
    if object.kind().is_namespaced() && !matches!(object, Object::Custom(_)) {
        let meta = object.meta_mut();
        if meta.namespace.as_deref().unwrap_or("").is_empty() {
            meta.namespace = Some(DEFAULT_NAMESPACE.to_string());
        }
    }
    match object {
        Object::Pod(pod) => {
            let spec = pod.spec.get_or_insert_with(Default::default);
            pod_spec(spec);
            pod_only(spec);
            let status = pod.status.get_or_insert_with(Default::default);
            set(&mut status.phase, "Pending");
        }
        Object::Deployment(d) => deployment(d),
        Object::ReplicaSet(rs) => {
            if let Some(spec) = rs.spec.as_mut() {
                set(&mut spec.replicas, 1);
                if let Some(t) = spec.template.as_mut() {
                    template(t);
                }
            }
        }
        Object::StatefulSet(s) => stateful_set(s),
        Object::DaemonSet(d) => daemon_set(d),
        Object::Job(job) => {
            if let Some(spec) = job.spec.as_mut() {
                job_spec(spec);
                // A Job without labels takes its template's.
                let template_labels = spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone());
                if job.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) {
                    if let Some(labels) = template_labels {
                        job.metadata.labels = Some(labels);
                    }
                }
            }
        }
        Object::CronJob(cj) => {
            if let Some(spec) = cj.spec.as_mut() {
                set(&mut spec.concurrency_policy, "Allow");
                set(&mut spec.suspend, false);
                set(&mut spec.successful_jobs_history_limit, 3);
                set(&mut spec.failed_jobs_history_limit, 1);
                if let Some(job) = spec.job_template.spec.as_mut() {
                    template(&mut job.template);
                }
            }
        }
        Object::Service(svc) => service(svc),
        Object::Endpoints(ep) => {
            for subset in ep.subsets.iter_mut().flatten() {
                for port in subset.ports.iter_mut().flatten() {
                    set(&mut port.protocol, "TCP");
                }
            }
        }
        Object::EndpointSlice(slice) => {
            for port in slice.ports.iter_mut().flatten() {
                set(&mut port.protocol, "TCP");
                set(&mut port.name, "");
            }
        }
        Object::PersistentVolumeClaim(pvc) => {
            let spec = pvc.spec.get_or_insert_with(Default::default);
            set(&mut spec.volume_mode, "Filesystem");
            let status = pvc.status.get_or_insert_with(Default::default);
            set(&mut status.phase, "Pending");
        }
        Object::PersistentVolume(pv) => {
            let spec = pv.spec.get_or_insert_with(Default::default);
            set(&mut spec.persistent_volume_reclaim_policy, "Retain");
            set(&mut spec.volume_mode, "Filesystem");
            let status = pv.status.get_or_insert_with(Default::default);
            set(&mut status.phase, "Pending");
        }
        Object::Namespace(ns) => {
            // The namespace strategy labels every namespace with its name, so that
            // namespace selectors can pick it.
            if let Some(name) = ns.metadata.name.clone() {
                ns.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .entry("kubernetes.io/metadata.name".to_string())
                    .or_insert(name);
            }
            let spec = ns.spec.get_or_insert_with(Default::default);
            set(&mut spec.finalizers, vec!["kubernetes".to_string()]);
            let status = ns.status.get_or_insert_with(Default::default);
            set(&mut status.phase, "Active");
        }
        Object::Secret(secret) => set(&mut secret.type_, "Opaque"),
        Object::Node(node) => {
            if let Some(status) = node.status.as_mut() {
                if status.allocatable.is_none() {
                    status.allocatable = status.capacity.clone();
                }
            }
        }
        Object::LimitRange(lr) => {
            for item in lr.spec.iter_mut().flat_map(|s| s.limits.iter_mut()) {
                limit_range_item(item);
            }
        }
        Object::HorizontalPodAutoscaler(hpa) => hpa_defaults(hpa),
        Object::StorageClass(sc) => {
            set(&mut sc.reclaim_policy, "Delete");
            set(&mut sc.volume_binding_mode, "Immediate");
        }
        Object::CSIDriver(driver) => {
            let spec = &mut driver.spec;
            set(&mut spec.attach_required, true);
            set(&mut spec.pod_info_on_mount, false);
            set(&mut spec.requires_republish, false);
            set(&mut spec.storage_capacity, false);
            set(&mut spec.fs_group_policy, "ReadWriteOnceWithFSType");
            set(
                &mut spec.volume_lifecycle_modes,
                vec!["Persistent".to_string()],
            );
        }
        Object::RoleBinding(rb) => {
            for subject in rb.subjects.iter_mut().flatten() {
                rbac_subject(subject);
            }
        }
        Object::ClusterRoleBinding(rb) => {
            for subject in rb.subjects.iter_mut().flatten() {
                rbac_subject(subject);
            }
        }
        _ => {}
    }
}

/// Sets `field` to `value` when it is unset.
fn set<T>(field: &mut Option<T>, value: impl Into<T>) {
    if field.is_none() {
        *field = Some(value.into());
    }
}

fn template(template: &mut core::PodTemplateSpec) {
    pod_spec(template.spec.get_or_insert_with(Default::default));
}

/// `SetDefaults_PodSpec` and everything nested in a pod spec.
pub(crate) fn pod_spec(spec: &mut core::PodSpec) {
    set(&mut spec.restart_policy, "Always");
    set(&mut spec.termination_grace_period_seconds, 30);
    set(&mut spec.dns_policy, "ClusterFirst");
    set(&mut spec.scheduler_name, "default-scheduler");
    set(
        &mut spec.security_context,
        core::PodSecurityContext::default(),
    );
    set(&mut spec.enable_service_links, true);
    let host_network = spec.host_network == Some(true);
    for c in spec.containers.iter_mut() {
        container(c, host_network);
    }
    // A sidecar's own restartPolicy (Always) is the user's choice: not defaulted here.
    for c in spec.init_containers.iter_mut().flatten() {
        container(c, host_network);
    }
    for v in spec.volumes.iter_mut().flatten() {
        volume(v);
    }
}

/// `SetDefaults_Pod`: defaults of a Pod that a pod template does not get.
fn pod_only(spec: &mut core::PodSpec) {
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        // A container with limits but no requests requests its limits.
        if let Some(resources) = c.resources.as_mut() {
            if let Some(limits) = resources.limits.as_ref() {
                let requests = resources.requests.get_or_insert_with(BTreeMap::new);
                for (name, limit) in limits {
                    requests
                        .entry(name.clone())
                        .or_insert_with(|| limit.clone());
                }
            }
        }
    }
}

fn container(c: &mut core::Container, host_network: bool) {
    if c.image_pull_policy.is_none() {
        let policy = match c.image.as_deref() {
            Some(image) if image_tag(image).is_some_and(|t| t != "latest") => "IfNotPresent",
            _ => "Always",
        };
        c.image_pull_policy = Some(policy.to_string());
    }
    set(&mut c.termination_message_path, "/dev/termination-log");
    set(&mut c.termination_message_policy, "File");
    for port in c.ports.iter_mut().flatten() {
        set(&mut port.protocol, "TCP");
        if host_network && port.host_port.is_none() {
            port.host_port = Some(port.container_port);
        }
    }
    for probe in [
        c.liveness_probe.as_mut(),
        c.readiness_probe.as_mut(),
        c.startup_probe.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        probe_defaults(probe);
    }
    if let Some(lifecycle) = c.lifecycle.as_mut() {
        for handler in [lifecycle.post_start.as_mut(), lifecycle.pre_stop.as_mut()]
            .into_iter()
            .flatten()
        {
            if let Some(http) = handler.http_get.as_mut() {
                set(&mut http.path, "/");
                set(&mut http.scheme, "HTTP");
            }
        }
    }
    for env in c.env.iter_mut().flatten() {
        if let Some(field_ref) = env.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            set(&mut field_ref.api_version, "v1");
        }
    }
}

/// The tag of an image reference, if it has one (a digest counts as pinned).
fn image_tag(image: &str) -> Option<&str> {
    if let Some((_, digest)) = image.split_once('@') {
        return Some(digest);
    }
    // The tag follows the last ':' after the last '/' (a registry may carry a port).
    let last = image.rsplit('/').next().unwrap_or(image);
    last.rsplit_once(':').map(|(_, tag)| tag)
}

/// `SetDefaults_Probe` and `SetDefaults_HTTPGetAction`.
pub(crate) fn probe_defaults(probe: &mut core::Probe) {
    set(&mut probe.timeout_seconds, 1);
    set(&mut probe.period_seconds, 10);
    set(&mut probe.success_threshold, 1);
    set(&mut probe.failure_threshold, 3);
    if let Some(http) = probe.http_get.as_mut() {
        set(&mut http.path, "/");
        set(&mut http.scheme, "HTTP");
    }
}

fn volume(v: &mut core::Volume) {
    if !has_source(v) {
        v.empty_dir = Some(Default::default());
    }
    if let Some(s) = v.secret.as_mut() {
        set(&mut s.default_mode, DEFAULT_FILE_MODE);
    }
    if let Some(s) = v.config_map.as_mut() {
        set(&mut s.default_mode, DEFAULT_FILE_MODE);
    }
    if let Some(s) = v.downward_api.as_mut() {
        set(&mut s.default_mode, DEFAULT_FILE_MODE);
    }
    if let Some(s) = v.projected.as_mut() {
        set(&mut s.default_mode, DEFAULT_FILE_MODE);
    }
    if let Some(h) = v.host_path.as_mut() {
        set(&mut h.type_, "");
    }
}

/// Whether a volume names any source (`SetDefaults_Volume` gives emptyDir to one that does
/// not).
fn has_source(v: &core::Volume) -> bool {
    v.host_path.is_some()
        || v.empty_dir.is_some()
        || v.secret.is_some()
        || v.config_map.is_some()
        || v.persistent_volume_claim.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
        || v.csi.is_some()
        || v.ephemeral.is_some()
        || v.image.is_some()
        || v.nfs.is_some()
        || v.iscsi.is_some()
        || v.fc.is_some()
        || v.aws_elastic_block_store.is_some()
        || v.azure_disk.is_some()
        || v.azure_file.is_some()
        || v.cephfs.is_some()
        || v.cinder.is_some()
        || v.flex_volume.is_some()
        || v.flocker.is_some()
        || v.gce_persistent_disk.is_some()
        || v.git_repo.is_some()
        || v.glusterfs.is_some()
        || v.photon_persistent_disk.is_some()
        || v.portworx_volume.is_some()
        || v.quobyte.is_some()
        || v.rbd.is_some()
        || v.scale_io.is_some()
        || v.storageos.is_some()
        || v.vsphere_volume.is_some()
}

fn deployment(d: &mut apps::Deployment) {
    let Some(spec) = d.spec.as_mut() else { return };
    set(&mut spec.replicas, 1);
    let strategy = spec.strategy.get_or_insert_with(Default::default);
    set(&mut strategy.type_, "RollingUpdate");
    if strategy.type_.as_deref() == Some("RollingUpdate") {
        let rolling = strategy.rolling_update.get_or_insert_with(Default::default);
        set(
            &mut rolling.max_unavailable,
            IntOrString::String("25%".into()),
        );
        set(&mut rolling.max_surge, IntOrString::String("25%".into()));
    }
    set(&mut spec.revision_history_limit, 10);
    set(&mut spec.progress_deadline_seconds, 600);
    set(&mut spec.min_ready_seconds, 0);
    template(&mut spec.template);
}

fn stateful_set(s: &mut apps::StatefulSet) {
    let Some(spec) = s.spec.as_mut() else { return };
    set(&mut spec.replicas, 1);
    set(&mut spec.pod_management_policy, "OrderedReady");
    let strategy = spec.update_strategy.get_or_insert_with(Default::default);
    if strategy.type_.is_none() {
        strategy.type_ = Some("RollingUpdate".into());
        set(
            &mut strategy.rolling_update,
            apps::RollingUpdateStatefulSetStrategy::default(),
        );
    }
    if strategy.type_.as_deref() == Some("RollingUpdate") {
        if let Some(rolling) = strategy.rolling_update.as_mut() {
            set(&mut rolling.partition, 0);
        }
    }
    set(&mut spec.revision_history_limit, 10);
    set(&mut spec.min_ready_seconds, 0);
    let retention = spec
        .persistent_volume_claim_retention_policy
        .get_or_insert_with(Default::default);
    set(&mut retention.when_deleted, "Retain");
    set(&mut retention.when_scaled, "Retain");
    template(&mut spec.template);
    for claim in spec.volume_claim_templates.iter_mut().flatten() {
        let claim_spec = claim.spec.get_or_insert_with(Default::default);
        set(&mut claim_spec.volume_mode, "Filesystem");
    }
}

fn daemon_set(d: &mut apps::DaemonSet) {
    let Some(spec) = d.spec.as_mut() else { return };
    let strategy = spec.update_strategy.get_or_insert_with(Default::default);
    set(&mut strategy.type_, "RollingUpdate");
    if strategy.type_.as_deref() == Some("RollingUpdate") {
        let rolling = strategy.rolling_update.get_or_insert_with(Default::default);
        set(&mut rolling.max_unavailable, IntOrString::Int(1));
        set(&mut rolling.max_surge, IntOrString::Int(0));
    }
    set(&mut spec.revision_history_limit, 10);
    set(&mut spec.min_ready_seconds, 0);
    template(&mut spec.template);
}

fn job_spec(spec: &mut batch::JobSpec) {
    // Both unset: a non-parallel Job. Parallelism alone set: a work queue (no completions).
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    set(&mut spec.parallelism, 1);
    if spec.backoff_limit.is_none() {
        spec.backoff_limit = Some(if spec.backoff_limit_per_index.is_some() {
            i32::MAX
        } else {
            6
        });
    }
    set(&mut spec.completion_mode, "NonIndexed");
    set(&mut spec.suspend, false);
    set(&mut spec.manual_selector, false);
    let replacement = if spec.pod_failure_policy.is_some() {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    set(&mut spec.pod_replacement_policy, replacement);
    if let Some(policy) = spec.pod_failure_policy.as_mut() {
        for rule in policy.rules.iter_mut() {
            for pattern in rule.on_pod_conditions.iter_mut().flatten() {
                if pattern.status.is_empty() {
                    pattern.status = "True".into();
                }
            }
        }
    }
    template(&mut spec.template);
}

fn service(svc: &mut core::Service) {
    let spec = svc.spec.get_or_insert_with(Default::default);
    set(&mut spec.type_, "ClusterIP");
    set(&mut spec.session_affinity, "None");
    if spec.session_affinity.as_deref() == Some("ClientIP") {
        let config = spec
            .session_affinity_config
            .get_or_insert_with(Default::default);
        let client_ip = config.client_ip.get_or_insert_with(Default::default);
        set(&mut client_ip.timeout_seconds, 10800);
    }
    let ty = spec.type_.clone().unwrap_or_default();
    if ty != "ExternalName" {
        set(&mut spec.internal_traffic_policy, "Cluster");
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set(&mut spec.external_traffic_policy, "Cluster");
    }
    if ty == "LoadBalancer" {
        set(&mut spec.allocate_load_balancer_node_ports, true);
    }
    for port in spec.ports.iter_mut().flatten() {
        set(&mut port.protocol, "TCP");
        if port.target_port.is_none() {
            port.target_port = Some(IntOrString::Int(port.port));
        }
    }
}

/// `SetDefaults_LimitRangeItem`: for containers, the default limit falls back to the max,
/// and the default request to the default limit, then to the min.
fn limit_range_item(item: &mut core::LimitRangeItem) {
    if item.type_ != "Container" {
        return;
    }
    let default = item.default.get_or_insert_with(BTreeMap::new);
    for (name, max) in item.max.iter().flatten() {
        default.entry(name.clone()).or_insert_with(|| max.clone());
    }
    let default = default.clone();
    let request = item.default_request.get_or_insert_with(BTreeMap::new);
    for (name, value) in default.iter().chain(item.min.iter().flatten()) {
        request.entry(name.clone()).or_insert_with(|| value.clone());
    }
}

fn hpa_defaults(hpa: &mut autoscaling::HorizontalPodAutoscaler) {
    let Some(spec) = hpa.spec.as_mut() else {
        return;
    };
    set(&mut spec.min_replicas, 1);
    if spec.metrics.as_ref().is_none_or(Vec::is_empty) {
        spec.metrics = Some(vec![autoscaling::MetricSpec {
            type_: "Resource".into(),
            resource: Some(autoscaling::ResourceMetricSource {
                name: "cpu".into(),
                target: autoscaling::MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(80),
                    ..Default::default()
                },
            }),
            ..Default::default()
        }]);
    }
    // As in the API server, behavior is completed only when given; a controller reading an
    // HPA without one uses `hpa_scale_up_default` / `hpa_scale_down_default`.
    if let Some(behavior) = spec.behavior.as_mut() {
        behavior.scale_up = Some(complete_rules(
            behavior.scale_up.take(),
            hpa_scale_up_default(),
        ));
        behavior.scale_down = Some(complete_rules(
            behavior.scale_down.take(),
            hpa_scale_down_default(),
        ));
    }
}

fn complete_rules(
    given: Option<autoscaling::HPAScalingRules>,
    mut default: autoscaling::HPAScalingRules,
) -> autoscaling::HPAScalingRules {
    let Some(given) = given else { return default };
    if given.select_policy.is_some() {
        default.select_policy = given.select_policy;
    }
    if given.stabilization_window_seconds.is_some() {
        default.stabilization_window_seconds = given.stabilization_window_seconds;
    }
    if given.policies.is_some() {
        default.policies = given.policies;
    }
    if given.tolerance.is_some() {
        default.tolerance = given.tolerance;
    }
    default
}

fn policy(type_: &str, value: i32, period_seconds: i32) -> autoscaling::HPAScalingPolicy {
    autoscaling::HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds,
    }
}

/// The HPA scale-up rules Kubernetes uses when none are given: no stabilization, the larger
/// of 4 pods or 100 % per 15 s.
pub fn hpa_scale_up_default() -> autoscaling::HPAScalingRules {
    autoscaling::HPAScalingRules {
        stabilization_window_seconds: Some(0),
        select_policy: Some("Max".into()),
        policies: Some(vec![policy("Pods", 4, 15), policy("Percent", 100, 15)]),
        tolerance: None,
    }
}

/// The HPA scale-down rules Kubernetes uses when none are given: 300 s stabilization, up to
/// 100 % per 15 s.
pub fn hpa_scale_down_default() -> autoscaling::HPAScalingRules {
    autoscaling::HPAScalingRules {
        stabilization_window_seconds: Some(300),
        select_policy: Some("Max".into()),
        policies: Some(vec![policy("Percent", 100, 15)]),
        tolerance: None,
    }
}

fn rbac_subject(subject: &mut k8s_openapi::api::rbac::v1::Subject) {
    if subject.api_group.is_none() {
        subject.api_group = Some(match subject.kind.as_str() {
            "ServiceAccount" => String::new(),
            _ => "rbac.authorization.k8s.io".to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn quantity(text: &str) -> Quantity {
        Quantity(text.to_string())
    }

    #[test]
    fn image_pull_policy_follows_the_tag() {
        let policy = |image: &str| {
            let mut c = core::Container {
                name: "c".into(),
                image: Some(image.into()),
                ..Default::default()
            };
            container(&mut c, false);
            c.image_pull_policy.unwrap()
        };
        assert_eq!(policy("nginx"), "Always");
        assert_eq!(policy("nginx:latest"), "Always");
        assert_eq!(policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(policy("localhost:5000/nginx"), "Always");
        assert_eq!(policy("localhost:5000/nginx:1"), "IfNotPresent");
        assert_eq!(policy("nginx@sha256:abcd"), "IfNotPresent");
    }

    #[test]
    fn limit_range_defaults_chain() {
        let mut item = core::LimitRangeItem {
            type_: "Container".into(),
            max: Some([("cpu".to_string(), quantity("2"))].into()),
            min: Some([("memory".to_string(), quantity("64Mi"))].into()),
            ..Default::default()
        };
        limit_range_item(&mut item);
        assert_eq!(item.default.as_ref().unwrap()["cpu"], quantity("2"));
        assert_eq!(item.default_request.as_ref().unwrap()["cpu"], quantity("2"));
        assert_eq!(
            item.default_request.as_ref().unwrap()["memory"],
            quantity("64Mi")
        );
    }

    #[test]
    fn pod_requests_default_to_limits_but_templates_do_not() {
        let c = core::Container {
            name: "c".into(),
            image: Some("i".into()),
            resources: Some(core::ResourceRequirements {
                limits: Some([("cpu".to_string(), quantity("1"))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = core::PodSpec {
            containers: vec![c],
            ..Default::default()
        };
        let mut pod = Object::Pod(Box::new(core::Pod {
            spec: Some(spec.clone()),
            ..Default::default()
        }));
        apply_defaults(&mut pod);
        let Object::Pod(pod) = pod else { panic!() };
        let requests = pod.spec.as_ref().unwrap().containers[0]
            .resources
            .as_ref()
            .unwrap()
            .requests
            .clone();
        assert_eq!(requests.unwrap()["cpu"], quantity("1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));

        let mut tpl = core::PodTemplateSpec {
            spec: Some(spec),
            ..Default::default()
        };
        template(&mut tpl);
        let c = &tpl.spec.unwrap().containers[0];
        assert!(c.resources.as_ref().unwrap().requests.is_none());
        assert_eq!(
            c.termination_message_path.as_deref(),
            Some("/dev/termination-log")
        );
    }

    #[test]
    fn defaulting_is_idempotent() {
        let mut svc = Object::Service(Box::new(core::Service {
            spec: Some(core::ServiceSpec {
                ports: Some(vec![core::ServicePort {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }));
        apply_defaults(&mut svc);
        let once = svc.clone();
        apply_defaults(&mut svc);
        assert_eq!(once, svc);
    }
}

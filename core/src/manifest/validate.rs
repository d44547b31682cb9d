//! Validation beyond types: the rules of the API server's validation that Wharf's engine
//! relies on — names, labels, selectors that match their templates, unique container and
//! port names, ports in range, restart policies, probe thresholds, requests within limits.
//!
//! Runs on a defaulted object (as the API server validates after defaulting), so a Job
//! template without a restartPolicy fails as it does on Kubernetes.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::object::Object;
use crate::quantity::parse_milli;
use crate::store::selector;

/// One invalid field: its JSON path and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The JSON path, e.g. `spec.template.spec.containers[1].name`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Checks `object` (already defaulted). Returns every invalid field, empty when valid.
pub fn validate(object: &Object) -> Vec<FieldError> {
    let mut v = Validator::default();
    let name_rule = match object {
        Object::Namespace(_) => NameRule::Label,
        Object::Service(_) => NameRule::Dns1035,
        Object::Role(_)
        | Object::RoleBinding(_)
        | Object::ClusterRole(_)
        | Object::ClusterRoleBinding(_)
        | Object::Custom(_) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    };
    v.meta(object.meta(), "metadata", name_rule);
    match object {
        Object::Pod(pod) => {
            if let Some(spec) = &pod.spec {
                v.pod_spec(spec, "spec", Restart::Any);
            }
        }
        Object::Deployment(d) => {
            if let Some(spec) = &d.spec {
                v.non_negative(spec.replicas, "spec.replicas");
                v.non_negative(spec.revision_history_limit, "spec.revisionHistoryLimit");
                v.non_negative(spec.min_ready_seconds, "spec.minReadySeconds");
                if let (Some(deadline), Some(min_ready)) =
                    (spec.progress_deadline_seconds, spec.min_ready_seconds)
                {
                    if deadline <= min_ready {
                        v.err(
                            "spec.progressDeadlineSeconds",
                            "must be greater than minReadySeconds",
                        );
                    }
                }
                v.workload_selector(&spec.selector, &spec.template, "spec", "deployment");
                v.template(&spec.template, "spec.template", Restart::Always);
                if let Some(strategy) = &spec.strategy {
                    v.one_of(
                        strategy.type_.as_deref(),
                        "spec.strategy.type",
                        &["RollingUpdate", "Recreate"],
                    );
                    match (strategy.type_.as_deref(), &strategy.rolling_update) {
                        (Some("Recreate"), Some(_)) => v.err(
                            "spec.strategy.rollingUpdate",
                            "may not be specified when strategy `type` is 'Recreate'",
                        ),
                        (_, Some(rolling)) => v.surge_and_unavailable(
                            rolling.max_surge.as_ref(),
                            rolling.max_unavailable.as_ref(),
                            "spec.strategy.rollingUpdate",
                        ),
                        _ => {}
                    }
                }
            }
        }
        Object::ReplicaSet(rs) => {
            if let Some(spec) = &rs.spec {
                v.non_negative(spec.replicas, "spec.replicas");
                if let Some(template) = &spec.template {
                    v.workload_selector(&spec.selector, template, "spec", "replicaset");
                    v.template(template, "spec.template", Restart::Always);
                }
            }
        }
        Object::StatefulSet(s) => {
            if let Some(spec) = &s.spec {
                v.non_negative(spec.replicas, "spec.replicas");
                v.one_of(
                    spec.pod_management_policy.as_deref(),
                    "spec.podManagementPolicy",
                    &["OrderedReady", "Parallel"],
                );
                if let Some(strategy) = &spec.update_strategy {
                    v.one_of(
                        strategy.type_.as_deref(),
                        "spec.updateStrategy.type",
                        &["RollingUpdate", "OnDelete"],
                    );
                    let partition = strategy.rolling_update.as_ref().and_then(|r| r.partition);
                    v.non_negative(partition, "spec.updateStrategy.rollingUpdate.partition");
                }
                v.workload_selector(&spec.selector, &spec.template, "spec", "statefulset");
                // Mounts may name a volumeClaimTemplate: validate the template as the
                // controller makes pods from it, with a volume per claim template.
                let mut template = spec.template.clone();
                if let Some(pod) = template.spec.as_mut() {
                    let volumes = pod.volumes.get_or_insert_with(Vec::new);
                    for claim in spec.volume_claim_templates.iter().flatten() {
                        let name = claim.metadata.name.clone().unwrap_or_default();
                        if !volumes.iter().any(|v| v.name == name) {
                            volumes.push(core::Volume {
                                name,
                                persistent_volume_claim: Some(
                                    core::PersistentVolumeClaimVolumeSource {
                                        claim_name: String::new(),
                                        read_only: None,
                                    },
                                ),
                                ..Default::default()
                            });
                        }
                    }
                }
                v.template(&template, "spec.template", Restart::Always);
            }
        }
        Object::DaemonSet(d) => {
            if let Some(spec) = &d.spec {
                if let Some(strategy) = &spec.update_strategy {
                    v.one_of(
                        strategy.type_.as_deref(),
                        "spec.updateStrategy.type",
                        &["RollingUpdate", "OnDelete"],
                    );
                    if let Some(rolling) = &strategy.rolling_update {
                        v.surge_and_unavailable(
                            rolling.max_surge.as_ref(),
                            rolling.max_unavailable.as_ref(),
                            "spec.updateStrategy.rollingUpdate",
                        );
                    }
                }
                v.workload_selector(&spec.selector, &spec.template, "spec", "daemonset");
                v.template(&spec.template, "spec.template", Restart::Always);
            }
        }
        Object::Job(job) => {
            if let Some(spec) = &job.spec {
                v.job_spec(spec, "spec");
            }
        }
        Object::CronJob(cj) => {
            if let Some(spec) = &cj.spec {
                if spec.schedule.trim().is_empty() {
                    v.err("spec.schedule", "Required value");
                }
                v.one_of(
                    spec.concurrency_policy.as_deref(),
                    "spec.concurrencyPolicy",
                    &["Allow", "Forbid", "Replace"],
                );
                if let Some(job) = &spec.job_template.spec {
                    v.job_spec(job, "spec.jobTemplate.spec");
                }
            }
        }
        Object::Service(svc) => {
            if let Some(spec) = &svc.spec {
                v.service_spec(spec);
            }
        }
        _ => {}
    }
    v.errors
}

#[derive(Clone, Copy, PartialEq)]
enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    PathSegment,
}

/// Which pod restartPolicy a context allows.
#[derive(Clone, Copy, PartialEq)]
enum Restart {
    Any,
    Always,
    NeverOrOnFailure,
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn non_negative<T: Into<i64> + Copy>(&mut self, value: Option<T>, field: &str) {
        if let Some(n) = value {
            let n: i64 = n.into();
            if n < 0 {
                self.err(
                    field,
                    format!("Invalid value: {n}: must be greater than or equal to 0"),
                );
            }
        }
    }

    fn one_of(&mut self, value: Option<&str>, field: &str, allowed: &[&str]) {
        if let Some(value) = value {
            if !allowed.contains(&value) {
                self.err(
                    field,
                    format!(
                        "Unsupported value: {value:?}: supported values: {}",
                        quoted(allowed)
                    ),
                );
            }
        }
    }

    fn meta(&mut self, meta: &ObjectMeta, path: &str, rule: NameRule) {
        let name = meta.name.as_deref().unwrap_or("");
        if name.is_empty() {
            if meta.generate_name.as_deref().unwrap_or("").is_empty() {
                self.err(
                    format!("{path}.name"),
                    "Required value: name or generateName is required",
                );
            }
        } else if let Some(problem) = name_problem(name, rule) {
            self.err(
                format!("{path}.name"),
                format!("Invalid value: {name:?}: {problem}"),
            );
        }
        if let Some(ns) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
            if let Some(problem) = dns1123_label(ns) {
                self.err(
                    format!("{path}.namespace"),
                    format!("Invalid value: {ns:?}: {problem}"),
                );
            }
        }
        self.labels(meta.labels.as_ref(), &format!("{path}.labels"));
        for key in meta.annotations.iter().flatten().map(|(k, _)| k) {
            if let Some(problem) = qualified_name(key) {
                self.err(
                    format!("{path}.annotations"),
                    format!("Invalid value: {key:?}: {problem}"),
                );
            }
        }
    }

    fn labels(&mut self, labels: Option<&BTreeMap<String, String>>, path: &str) {
        for (key, value) in labels.into_iter().flatten() {
            if let Some(problem) = qualified_name(key) {
                self.err(path, format!("Invalid value: {key:?}: {problem}"));
            }
            if let Some(problem) = label_value(value) {
                self.err(
                    format!("{path}.{key}"),
                    format!("Invalid value: {value:?}: {problem}"),
                );
            }
        }
    }

    /// apps/v1: a selector is required, non-empty, and must match the template's labels.
    fn workload_selector(
        &mut self,
        selector: &LabelSelector,
        template: &core::PodTemplateSpec,
        path: &str,
        what: &str,
    ) {
        let parsed = match selector::LabelSelector::from_k8s(selector) {
            Ok(s) => s,
            Err(e) => return self.err(format!("{path}.selector"), e.to_string()),
        };
        if parsed.is_empty() {
            return self.err(
                format!("{path}.selector"),
                format!("Invalid value: empty selector is invalid for {what}"),
            );
        }
        let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
        if !parsed.matches(labels) {
            self.err(
                format!("{path}.template.metadata.labels"),
                format!(
                    "Invalid value: {}: `selector` does not match template `labels`",
                    show_labels(labels)
                ),
            );
        }
    }

    fn template(&mut self, template: &core::PodTemplateSpec, path: &str, restart: Restart) {
        if let Some(meta) = &template.metadata {
            self.labels(meta.labels.as_ref(), &format!("{path}.metadata.labels"));
        }
        match &template.spec {
            Some(spec) => self.pod_spec(spec, &format!("{path}.spec"), restart),
            None => self.err(format!("{path}.spec"), "Required value"),
        }
    }

    fn job_spec(&mut self, spec: &k8s_openapi::api::batch::v1::JobSpec, path: &str) {
        self.non_negative(spec.parallelism, &format!("{path}.parallelism"));
        self.non_negative(spec.completions, &format!("{path}.completions"));
        self.non_negative(spec.backoff_limit, &format!("{path}.backoffLimit"));
        self.one_of(
            spec.completion_mode.as_deref(),
            &format!("{path}.completionMode"),
            &["NonIndexed", "Indexed"],
        );
        if spec.completion_mode.as_deref() == Some("Indexed") && spec.completions.is_none() {
            self.err(
                format!("{path}.completions"),
                "Required value: when completion mode is Indexed",
            );
        }
        if let Some(selector) = &spec.selector {
            if spec.manual_selector == Some(true) {
                let parsed = selector::LabelSelector::from_k8s(selector);
                let labels = spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.as_ref());
                if parsed.is_ok_and(|s| !s.matches(labels)) {
                    self.err(
                        format!("{path}.template.metadata.labels"),
                        "Invalid value: `selector` does not match template `labels`",
                    );
                }
            }
        }
        self.template(
            &spec.template,
            &format!("{path}.template"),
            Restart::NeverOrOnFailure,
        );
    }

    fn pod_spec(&mut self, spec: &core::PodSpec, path: &str, restart: Restart) {
        let allowed: &[&str] = match restart {
            Restart::Any => &["Always", "OnFailure", "Never"],
            Restart::Always => &["Always"],
            Restart::NeverOrOnFailure => &["OnFailure", "Never"],
        };
        if let Some(policy) = spec.restart_policy.as_deref() {
            if !allowed.contains(&policy) {
                self.err(
                    format!("{path}.restartPolicy"),
                    format!(
                        "Unsupported value: {policy:?}: supported values: {}",
                        quoted(allowed)
                    ),
                );
            }
        }
        self.one_of(
            spec.dns_policy.as_deref(),
            &format!("{path}.dnsPolicy"),
            &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        );
        self.non_negative(
            spec.termination_grace_period_seconds,
            &format!("{path}.terminationGracePeriodSeconds"),
        );
        if spec.containers.is_empty() {
            self.err(format!("{path}.containers"), "Required value");
        }
        let mut names = HashSet::new();
        let mut port_names = HashSet::new();
        let volumes: HashSet<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        for (i, volume) in spec.volumes.iter().flatten().enumerate() {
            if let Some(problem) = dns1123_label(&volume.name) {
                self.err(
                    format!("{path}.volumes[{i}].name"),
                    format!("Invalid value: {:?}: {problem}", volume.name),
                );
            }
        }
        if volumes.len() != spec.volumes.as_ref().map_or(0, Vec::len) {
            self.err(
                format!("{path}.volumes"),
                "Duplicate value: volume names must be unique",
            );
        }
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            let cpath = format!("{path}.initContainers[{i}]");
            self.container(c, &cpath, &mut names, &mut port_names, &volumes);
            if let Some(policy) = c.restart_policy.as_deref() {
                if policy != "Always" {
                    self.err(
                        format!("{cpath}.restartPolicy"),
                        format!("Unsupported value: {policy:?}: supported values: \"Always\""),
                    );
                }
            }
            if c.restart_policy.as_deref() != Some("Always") {
                for (probe, field) in [
                    (&c.liveness_probe, "livenessProbe"),
                    (&c.readiness_probe, "readinessProbe"),
                    (&c.startup_probe, "startupProbe"),
                ] {
                    if probe.is_some() {
                        self.err(format!("{cpath}.{field}"), "Forbidden: may not be set for init containers without restartPolicy=Always");
                    }
                }
            }
        }
        for (i, c) in spec.containers.iter().enumerate() {
            let cpath = format!("{path}.containers[{i}]");
            self.container(c, &cpath, &mut names, &mut port_names, &volumes);
            if c.restart_policy.is_some() && c.restart_policy_rules.is_none() {
                self.err(
                    format!("{cpath}.restartPolicy"),
                    "Forbidden: may not be set for non-init containers without restartPolicyRules",
                );
            }
        }
    }

    fn container(
        &mut self,
        c: &core::Container,
        path: &str,
        names: &mut HashSet<String>,
        port_names: &mut HashSet<String>,
        volumes: &HashSet<&str>,
    ) {
        if c.name.is_empty() {
            self.err(format!("{path}.name"), "Required value");
        } else if let Some(problem) = dns1123_label(&c.name) {
            self.err(
                format!("{path}.name"),
                format!("Invalid value: {:?}: {problem}", c.name),
            );
        } else if !names.insert(c.name.clone()) {
            self.err(
                format!("{path}.name"),
                format!("Duplicate value: {:?}", c.name),
            );
        }
        if c.image.as_deref().unwrap_or("").trim().is_empty() {
            self.err(format!("{path}.image"), "Required value");
        }
        self.one_of(
            c.image_pull_policy.as_deref(),
            &format!("{path}.imagePullPolicy"),
            &["Always", "IfNotPresent", "Never"],
        );
        for (i, port) in c.ports.iter().flatten().enumerate() {
            let ppath = format!("{path}.ports[{i}]");
            if !(1..=65535).contains(&port.container_port) {
                self.err(
                    format!("{ppath}.containerPort"),
                    format!(
                        "Invalid value: {}: must be between 1 and 65535, inclusive",
                        port.container_port
                    ),
                );
            }
            if let Some(host_port) = port.host_port {
                if !(0..=65535).contains(&host_port) {
                    self.err(
                        format!("{ppath}.hostPort"),
                        format!(
                            "Invalid value: {host_port}: must be between 1 and 65535, inclusive"
                        ),
                    );
                }
            }
            self.one_of(
                port.protocol.as_deref(),
                &format!("{ppath}.protocol"),
                &["TCP", "UDP", "SCTP"],
            );
            if let Some(name) = port.name.as_deref() {
                if let Some(problem) = port_name(name) {
                    self.err(
                        format!("{ppath}.name"),
                        format!("Invalid value: {name:?}: {problem}"),
                    );
                } else if !port_names.insert(name.to_string()) {
                    self.err(
                        format!("{ppath}.name"),
                        format!("Duplicate value: {name:?}"),
                    );
                }
            }
        }
        for (probe, field) in [
            (&c.liveness_probe, "livenessProbe"),
            (&c.readiness_probe, "readinessProbe"),
            (&c.startup_probe, "startupProbe"),
        ] {
            if let Some(probe) = probe {
                self.probe(probe, &format!("{path}.{field}"), field != "readinessProbe");
            }
        }
        for (i, mount) in c.volume_mounts.iter().flatten().enumerate() {
            if !volumes.contains(mount.name.as_str()) {
                self.err(
                    format!("{path}.volumeMounts[{i}].name"),
                    format!("Not found: {:?}", mount.name),
                );
            }
            if mount.mount_path.is_empty() {
                self.err(
                    format!("{path}.volumeMounts[{i}].mountPath"),
                    "Required value",
                );
            }
        }
        if let Some(resources) = &c.resources {
            self.resources(resources, &format!("{path}.resources"));
        }
    }

    fn probe(&mut self, probe: &core::Probe, path: &str, success_must_be_one: bool) {
        let handlers = [
            probe.exec.is_some(),
            probe.http_get.is_some(),
            probe.tcp_socket.is_some(),
            probe.grpc.is_some(),
        ]
        .iter()
        .filter(|h| **h)
        .count();
        match handlers {
            0 => self.err(path, "Required value: must specify a handler type"),
            1 => {}
            _ => self.err(path, "Forbidden: may not specify more than 1 handler type"),
        }
        for (value, field, min) in [
            (probe.initial_delay_seconds, "initialDelaySeconds", 0),
            (probe.timeout_seconds, "timeoutSeconds", 1),
            (probe.period_seconds, "periodSeconds", 1),
            (probe.success_threshold, "successThreshold", 1),
            (probe.failure_threshold, "failureThreshold", 1),
        ] {
            if let Some(v) = value {
                if v < min {
                    self.err(
                        format!("{path}.{field}"),
                        format!("Invalid value: {v}: must be greater than or equal to {min}"),
                    );
                }
            }
        }
        if success_must_be_one && probe.success_threshold.is_some_and(|s| s != 1) {
            self.err(
                format!("{path}.successThreshold"),
                "Invalid value: must be 1",
            );
        }
        if let Some(http) = &probe.http_get {
            self.int_or_name_port(&http.port, &format!("{path}.httpGet.port"));
        }
        if let Some(tcp) = &probe.tcp_socket {
            self.int_or_name_port(&tcp.port, &format!("{path}.tcpSocket.port"));
        }
        if let Some(grpc) = &probe.grpc {
            if !(1..=65535).contains(&grpc.port) {
                self.err(
                    format!("{path}.grpc.port"),
                    format!(
                        "Invalid value: {}: must be between 1 and 65535, inclusive",
                        grpc.port
                    ),
                );
            }
        }
    }

    fn int_or_name_port(&mut self, port: &IntOrString, path: &str) {
        match port {
            IntOrString::Int(n) if !(1..=65535).contains(n) => self.err(
                path,
                format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
            ),
            IntOrString::String(name) => {
                if let Some(problem) = port_name(name) {
                    self.err(path, format!("Invalid value: {name:?}: {problem}"));
                }
            }
            _ => {}
        }
    }

    fn resources(&mut self, r: &core::ResourceRequirements, path: &str) {
        for (list, field) in [(&r.requests, "requests"), (&r.limits, "limits")] {
            for (name, q) in list.iter().flatten() {
                match parse_milli(&q.0) {
                    Err(e) => self.err(
                        format!("{path}.{field}.{name}"),
                        format!("Invalid value: {e}"),
                    ),
                    Ok(v) if v < 0 => self.err(
                        format!("{path}.{field}.{name}"),
                        format!(
                            "Invalid value: {:?}: must be greater than or equal to 0",
                            q.0
                        ),
                    ),
                    Ok(_) => {}
                }
            }
        }
        if let (Some(requests), Some(limits)) = (&r.requests, &r.limits) {
            for (name, request) in requests {
                let Some(limit) = limits.get(name) else {
                    continue;
                };
                if let (Ok(req), Ok(lim)) = (parse_milli(&request.0), parse_milli(&limit.0)) {
                    if req > lim {
                        self.err(
                            format!("{path}.requests.{name}"),
                            format!(
                                "Invalid value: {:?}: must be less than or equal to {name} limit of {}",
                                request.0, limit.0
                            ),
                        );
                    }
                }
            }
        }
    }

    fn surge_and_unavailable(
        &mut self,
        surge: Option<&IntOrString>,
        unavailable: Option<&IntOrString>,
        path: &str,
    ) {
        let zero = |v: Option<&IntOrString>| match v {
            None => true,
            Some(IntOrString::Int(n)) => *n == 0,
            Some(IntOrString::String(s)) => s.trim_end_matches('%').parse::<i64>() == Ok(0),
        };
        for (value, field) in [(surge, "maxSurge"), (unavailable, "maxUnavailable")] {
            match value {
                Some(IntOrString::Int(n)) if *n < 0 => self.err(
                    format!("{path}.{field}"),
                    format!("Invalid value: {n}: must be greater than or equal to 0"),
                ),
                Some(IntOrString::String(s)) => match s.strip_suffix('%').map(str::parse::<i64>) {
                    Some(Ok(p)) if (0..=100).contains(&p) || field == "maxSurge" && p >= 0 => {}
                    Some(Ok(p)) => self.err(
                        format!("{path}.{field}"),
                        format!("Invalid value: \"{p}%\": must not be greater than 100%"),
                    ),
                    _ => self.err(
                        format!("{path}.{field}"),
                        format!(
                            "Invalid value: {s:?}: must be an integer or a percentage (e.g. '5%')"
                        ),
                    ),
                },
                _ => {}
            }
        }
        if zero(surge) && zero(unavailable) {
            self.err(
                format!("{path}.maxUnavailable"),
                "Invalid value: may not be 0 when `maxSurge` is 0",
            );
        }
    }

    fn service_spec(&mut self, spec: &core::ServiceSpec) {
        self.one_of(
            spec.type_.as_deref(),
            "spec.type",
            &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
        );
        self.one_of(
            spec.session_affinity.as_deref(),
            "spec.sessionAffinity",
            &["None", "ClientIP"],
        );
        let ports = spec.ports.as_deref().unwrap_or_default();
        if ports.is_empty()
            && spec.type_.as_deref() != Some("ExternalName")
            && spec.cluster_ip.as_deref() != Some("None")
        {
            self.err("spec.ports", "Required value");
        }
        let mut names = HashSet::new();
        for (i, port) in ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            if !(1..=65535).contains(&port.port) {
                self.err(
                    format!("{path}.port"),
                    format!(
                        "Invalid value: {}: must be between 1 and 65535, inclusive",
                        port.port
                    ),
                );
            }
            self.one_of(
                port.protocol.as_deref(),
                &format!("{path}.protocol"),
                &["TCP", "UDP", "SCTP"],
            );
            match port.name.as_deref().unwrap_or("") {
                "" if ports.len() > 1 => self.err(format!("{path}.name"), "Required value"),
                "" => {}
                name => {
                    if let Some(problem) = dns1123_label(name) {
                        self.err(
                            format!("{path}.name"),
                            format!("Invalid value: {name:?}: {problem}"),
                        );
                    } else if !names.insert(name.to_string()) {
                        self.err(format!("{path}.name"), format!("Duplicate value: {name:?}"));
                    }
                }
            }
            if let Some(target) = &port.target_port {
                self.int_or_name_port(target, &format!("{path}.targetPort"));
            }
            if let Some(node_port) = port.node_port {
                if !(0..=65535).contains(&node_port) {
                    self.err(
                        format!("{path}.nodePort"),
                        format!(
                            "Invalid value: {node_port}: must be between 1 and 65535, inclusive"
                        ),
                    );
                }
            }
        }
    }
}

fn quoted(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn show_labels(labels: Option<&BTreeMap<String, String>>) -> String {
    let pairs: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{{{}}}", pairs.join(","))
}

fn name_problem(name: &str, rule: NameRule) -> Option<String> {
    match rule {
        NameRule::Subdomain => dns1123_subdomain(name),
        NameRule::Label => dns1123_label(name),
        NameRule::Dns1035 => dns1035_label(name),
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                Some(format!("may not be '{name}'"))
            } else if name.contains(['/', '%']) {
                Some("may not contain '/' or '%'".into())
            } else {
                None
            }
        }
    }
}

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: at most 63 characters, lowercase alphanumerics and '-', starting and
/// ending with an alphanumeric. `None` when valid.
pub fn dns1123_label(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return Some("must be no more than 63 characters and not empty".into());
    }
    let ok = is_alnum_lower(b[0])
        && is_alnum_lower(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-');
    (!ok).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
         and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')"
            .to_string()
    })
}

/// RFC 1123 subdomain: at most 253 characters, dot-separated RFC 1123 labels.
pub fn dns1123_subdomain(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 253 {
        return Some("must be no more than 253 characters and not empty".into());
    }
    let ok = s.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && is_alnum_lower(b[0])
            && is_alnum_lower(b[b.len() - 1])
            && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
    });
    (!ok).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
         or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"
            .to_string()
    })
}

/// RFC 1035 label (Service names): like an RFC 1123 label, but starting with a letter.
pub fn dns1035_label(s: &str) -> Option<String> {
    if let Some(problem) = dns1123_label(s) {
        return Some(problem);
    }
    (!s.as_bytes()[0].is_ascii_lowercase()).then(|| {
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with \
         an alphabetic character, and end with an alphanumeric character (e.g. 'my-name')"
            .to_string()
    })
}

/// A label or annotation key: an optional DNS subdomain prefix and '/', then a name of at
/// most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric.
pub fn qualified_name(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if let Some(problem) = dns1123_subdomain(prefix) {
            return Some(format!("prefix part {problem}"));
        }
    }
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    (!ok).then(|| {
        "name part must consist of at most 63 alphanumeric characters, '-', '_' or '.', and must \
         start and end with an alphanumeric character"
            .to_string()
    })
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' or '.', starting and ending
/// with an alphanumeric.
pub fn label_value(value: &str) -> Option<String> {
    let b = value.as_bytes();
    if b.is_empty() {
        return None;
    }
    let ok = b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    (!ok).then(|| {
        "a valid label must be an empty string or consist of at most 63 alphanumeric characters, \
         '-', '_' or '.', and must start and end with an alphanumeric character"
            .to_string()
    })
}

/// An IANA service name (container and named ports): at most 15 lowercase alphanumerics
/// and '-', with at least one letter, no leading, trailing or doubled '-'.
pub fn port_name(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 15
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--");
    (!ok).then(|| {
        "must be no more than 15 lowercase alphanumeric characters or '-', contain at least one \
         letter, and not start, end or repeat '-'"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert!(dns1123_label("web-1").is_none());
        assert!(dns1123_label("Web").is_some());
        assert!(dns1123_label("-a").is_some());
        assert!(dns1123_subdomain("a.b-c.d").is_none());
        assert!(dns1123_subdomain("a..b").is_some());
        assert!(dns1035_label("1abc").is_some());
        assert!(dns1035_label("abc1").is_none());
        assert!(qualified_name("app.kubernetes.io/name").is_none());
        assert!(qualified_name("bad key").is_some());
        assert!(label_value("").is_none());
        assert!(label_value("v1.2_x").is_none());
        assert!(label_value("-x").is_some());
        assert!(port_name("http").is_none());
        assert!(port_name("8080").is_some());
        assert!(port_name("a--b").is_some());
        assert!(port_name("a-very-long-port-name").is_some());
    }
}

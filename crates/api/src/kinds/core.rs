//! core/v1 kinds: defaulting and validation as upstream's `pkg/apis/core/v1/defaults.go` and
//! `pkg/apis/core/validation`.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{
    ComponentStatus, ConfigMap, Container, ContainerPort, Endpoints, Event, LimitRange, Namespace, NamespaceSpec,
    NamespaceStatus, Node, PersistentVolume, PersistentVolumeClaim, Pod, PodSpec, PodStatus, PodTemplate,
    PodTemplateSpec, Probe, ReplicationController, ResourceQuota, Secret, Service, ServiceAccount, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::{Kind, NameRule};
use crate::field::{FieldError, FieldPath};

fn default_str(slot: &mut Option<String>, value: &str) {
    if slot.as_deref().is_none_or(str::is_empty) {
        *slot = Some(value.to_string());
    }
}

fn default_val<T>(slot: &mut Option<T>, value: T) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

fn default_probe(p: &mut Option<Probe>) {
    let Some(p) = p else { return };
    default_val(&mut p.timeout_seconds, 1);
    default_val(&mut p.period_seconds, 10);
    default_val(&mut p.success_threshold, 1);
    default_val(&mut p.failure_threshold, 3);
    if let Some(h) = &mut p.http_get {
        default_str(&mut h.path, "/");
        default_str(&mut h.scheme, "HTTP");
    }
    if let Some(g) = &mut p.grpc {
        default_val(&mut g.service, String::new());
    }
}

/// `image:tag` or `image@digest`; upstream pulls `Always` when the tag is missing or `latest`.
fn default_pull_policy(image: Option<&str>) -> &'static str {
    let Some(image) = image else { return "IfNotPresent" };
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_ports(ports: &mut Option<Vec<ContainerPort>>, host_network: bool) {
    for p in ports.iter_mut().flatten() {
        default_str(&mut p.protocol, "TCP");
        if host_network && p.host_port.is_none() {
            p.host_port = Some(p.container_port);
        }
    }
}

fn default_container(c: &mut Container, host_network: bool) {
    default_str(&mut c.image_pull_policy, default_pull_policy(c.image.as_deref()));
    default_str(&mut c.termination_message_path, "/dev/termination-log");
    default_str(&mut c.termination_message_policy, "File");
    default_ports(&mut c.ports, host_network);
    default_probe(&mut c.liveness_probe);
    default_probe(&mut c.readiness_probe);
    default_probe(&mut c.startup_probe);
    // Requests default to limits when only limits are given (upstream's SetDefaults_Pod).
    let res = c.resources.get_or_insert_with(Default::default);
    if let Some(limits) = &res.limits {
        let requests = res.requests.get_or_insert_with(BTreeMap::new);
        for (k, v) in limits {
            requests.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    for e in c.env.iter_mut().flatten() {
        if let Some(f) = e.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            default_str(&mut f.api_version, "v1");
        }
    }
}

fn default_volume(v: &mut Volume) {
    if let Some(s) = &mut v.secret {
        default_val(&mut s.default_mode, 0o644);
    }
    if let Some(c) = &mut v.config_map {
        default_val(&mut c.default_mode, 0o644);
    }
    if let Some(d) = &mut v.downward_api {
        default_val(&mut d.default_mode, 0o644);
        for item in d.items.iter_mut().flatten() {
            if let Some(f) = &mut item.field_ref {
                default_str(&mut f.api_version, "v1");
            }
        }
    }
    if let Some(p) = &mut v.projected {
        default_val(&mut p.default_mode, 0o644);
    }
    if let Some(h) = &mut v.host_path {
        default_val(&mut h.type_, String::new());
    }
    if v.empty_dir.is_none()
        && v.host_path.is_none()
        && v.secret.is_none()
        && v.config_map.is_none()
        && v.persistent_volume_claim.is_none()
        && v.projected.is_none()
        && v.downward_api.is_none()
        && v.csi.is_none()
        && v.ephemeral.is_none()
        && v.nfs.is_none()
        && v.image.is_none()
    {
        // A volume with no source is an emptyDir (upstream's SetDefaults_Volume).
        v.empty_dir = Some(Default::default());
    }
}

/// Defaults of a pod spec, wherever it appears (pods and every pod template).
pub(crate) fn default_pod_spec(spec: &mut PodSpec) {
    default_str(&mut spec.restart_policy, "Always");
    default_str(&mut spec.dns_policy, "ClusterFirst");
    default_str(&mut spec.scheduler_name, "default-scheduler");
    default_val(&mut spec.termination_grace_period_seconds, 30);
    default_val(&mut spec.security_context, Default::default());
    default_val(&mut spec.enable_service_links, true);
    let host_network = spec.host_network == Some(true);
    for c in &mut spec.containers {
        default_container(c, host_network);
    }
    for c in spec.init_containers.iter_mut().flatten() {
        default_container(c, host_network);
    }
    for v in spec.volumes.iter_mut().flatten() {
        default_volume(v);
    }
}

pub(crate) fn default_pod_template(t: &mut Option<PodTemplateSpec>) {
    if let Some(spec) = t.as_mut().and_then(|t| t.spec.as_mut()) {
        default_pod_spec(spec);
    }
}

fn validate_container(c: &Container, path: &FieldPath, names: &mut HashSet<String>, errs: &mut Vec<FieldError>) {
    if c.name.is_empty() {
        errs.push(FieldError::required(&path.key("name"), ""));
    } else {
        for msg in super::validate_dns1123_label(&c.name) {
            errs.push(FieldError::invalid(&path.key("name"), json!(c.name), &msg));
        }
        if !names.insert(c.name.clone()) {
            errs.push(FieldError::duplicate(&path.key("name"), json!(c.name)));
        }
    }
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        errs.push(FieldError::required(&path.key("image"), ""));
    }
    if let Some(p) = &c.image_pull_policy {
        const SUPPORTED: [&str; 3] = ["Always", "IfNotPresent", "Never"];
        if !SUPPORTED.contains(&p.as_str()) {
            errs.push(FieldError::not_supported(&path.key("imagePullPolicy"), json!(p), &SUPPORTED));
        }
    }
    for (i, port) in c.ports.iter().flatten().enumerate() {
        let pp = path.key("ports").index(i);
        if !(1..=65535).contains(&port.container_port) {
            errs.push(FieldError::invalid(
                &pp.key("containerPort"),
                json!(port.container_port),
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(proto) = &port.protocol {
            const SUPPORTED: [&str; 3] = ["SCTP", "TCP", "UDP"];
            if !SUPPORTED.contains(&proto.as_str()) {
                errs.push(FieldError::not_supported(&pp.key("protocol"), json!(proto), &SUPPORTED));
            }
        }
    }
    if let Some(res) = &c.resources {
        for (name, q) in res.requests.iter().flatten() {
            if let Some(limit) = res.limits.as_ref().and_then(|l| l.get(name))
                && crate::quantity::parse(&q.0).zip(crate::quantity::parse(&limit.0)).is_some_and(|(r, l)| r > l)
            {
                errs.push(FieldError::invalid(
                    &path.key("resources").key("requests").map_key(name),
                    json!(q.0),
                    &format!("must be less than or equal to {name} limit of {}", limit.0),
                ));
            }
        }
        for (kind, map) in [("limits", &res.limits), ("requests", &res.requests)] {
            for (name, q) in map.iter().flatten() {
                validate_quantity(q, &path.key("resources").key(kind).map_key(name), errs);
            }
        }
    }
}

fn validate_quantity(q: &Quantity, path: &FieldPath, errs: &mut Vec<FieldError>) {
    match crate::quantity::parse(&q.0) {
        None => errs.push(FieldError::invalid(
            path,
            json!(q.0),
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
        )),
        Some(v) if v < 0.0 => errs.push(FieldError::invalid(path, json!(q.0), "must be greater than or equal to 0")),
        Some(_) => {}
    }
}

pub(crate) fn validate_pod_spec(spec: &PodSpec, path: &FieldPath, errs: &mut Vec<FieldError>) {
    if spec.containers.is_empty() {
        errs.push(FieldError::required(&path.key("containers"), ""));
    }
    let mut names = HashSet::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        validate_container(c, &path.key("initContainers").index(i), &mut names, errs);
    }
    for (i, c) in spec.containers.iter().enumerate() {
        validate_container(c, &path.key("containers").index(i), &mut names, errs);
    }
    if let Some(p) = &spec.restart_policy {
        const SUPPORTED: [&str; 3] = ["Always", "OnFailure", "Never"];
        if !SUPPORTED.contains(&p.as_str()) {
            errs.push(FieldError::not_supported(&path.key("restartPolicy"), json!(p), &SUPPORTED));
        }
    }
    if let Some(p) = &spec.dns_policy {
        const SUPPORTED: [&str; 4] = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !SUPPORTED.contains(&p.as_str()) {
            errs.push(FieldError::not_supported(&path.key("dnsPolicy"), json!(p), &SUPPORTED));
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds
        && g < 0
    {
        errs.push(FieldError::invalid(
            &path.key("terminationGracePeriodSeconds"),
            json!(g),
            "must be greater than or equal to 0",
        ));
    }
    let mut volume_names = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let vp = path.key("volumes").index(i);
        for msg in super::validate_dns1123_label(&v.name) {
            errs.push(FieldError::invalid(&vp.key("name"), json!(v.name), &msg));
        }
        if !volume_names.insert(v.name.clone()) {
            errs.push(FieldError::duplicate(&vp.key("name"), json!(v.name)));
        }
    }
    for (ci, c) in spec.containers.iter().enumerate() {
        for (mi, m) in c.volume_mounts.iter().flatten().enumerate() {
            if !volume_names.contains(&m.name) {
                errs.push(FieldError::not_found(
                    &path.key("containers").index(ci).key("volumeMounts").index(mi).key("name"),
                    json!(m.name),
                ));
            }
        }
    }
}

/// The QoS class upstream computes from requests and limits.
fn qos_class(spec: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let res = c.resources.as_ref();
        let requests = res.and_then(|r| r.requests.as_ref());
        let limits = res.and_then(|r| r.limits.as_ref());
        for name in ["cpu", "memory"] {
            let req = requests.and_then(|m| m.get(name));
            let lim = limits.and_then(|m| m.get(name));
            if req.is_some() || lim.is_some() {
                any = true;
            }
            match (req, lim) {
                (Some(r), Some(l)) if crate::quantity::parse(&r.0) == crate::quantity::parse(&l.0) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

impl Kind for Pod {
    const FIELD_LABELS: &'static [(&'static str, &'static str)] = &[
        ("spec.nodeName", "spec.nodeName"),
        ("spec.restartPolicy", "spec.restartPolicy"),
        ("spec.schedulerName", "spec.schedulerName"),
        ("spec.serviceAccountName", "spec.serviceAccountName"),
        ("spec.hostNetwork", "spec.hostNetwork"),
        ("status.phase", "status.phase"),
        ("status.podIP", "status.podIP"),
        ("status.nominatedNodeName", "status.nominatedNodeName"),
    ];

    fn set_defaults(&mut self) {
        if let Some(spec) = &mut self.spec {
            default_pod_spec(spec);
            // priority and preemptionPolicy come from the Priority admission step, as upstream.
            default_val(&mut spec.host_network, false);
        }
    }

    fn prepare_for_create(&mut self) {
        let qos = self.spec.as_ref().map(qos_class).unwrap_or("BestEffort");
        self.status =
            Some(PodStatus { phase: Some("Pending".into()), qos_class: Some(qos.into()), ..Default::default() });
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        match &self.spec {
            Some(spec) => validate_pod_spec(spec, &FieldPath::new("spec"), errs),
            None => errs.push(FieldError::required(&FieldPath::new("spec"), "")),
        }
    }

    fn validate_update(&self, old: &Self, errs: &mut Vec<FieldError>) {
        // Upstream allows changing only images, activeDeadlineSeconds, tolerations (additions)
        // and terminationGracePeriodSeconds of a pod's spec; everything else is immutable.
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else { return };
        let mut new_c = new.clone();
        for (n, o) in new_c.containers.iter_mut().zip(&old.containers) {
            n.image = o.image.clone();
        }
        for (n, o) in new_c.init_containers.iter_mut().flatten().zip(old.init_containers.iter().flatten()) {
            n.image = o.image.clone();
        }
        new_c.active_deadline_seconds = old.active_deadline_seconds;
        new_c.tolerations = old.tolerations.clone();
        new_c.termination_grace_period_seconds = old.termination_grace_period_seconds;
        new_c.scheduling_gates = old.scheduling_gates.clone();
        if new_c != *old {
            errs.push(FieldError::forbidden(
                &FieldPath::new("spec"),
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            ));
        }
    }
}

fn validate_service_ports(svc: &Service, errs: &mut Vec<FieldError>) {
    let Some(spec) = &svc.spec else { return };
    let path = FieldPath::new("spec");
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    const TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !TYPES.contains(&kind) {
        errs.push(FieldError::not_supported(&path.key("type"), json!(kind), &TYPES));
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if ports.is_empty() && kind != "ExternalName" && !headless {
        errs.push(FieldError::required(&path.key("ports"), ""));
    }
    if kind == "ExternalName" && spec.external_name.as_deref().is_none_or(str::is_empty) {
        errs.push(FieldError::required(&path.key("externalName"), ""));
    }
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = path.key("ports").index(i);
        if ports.len() > 1 && p.name.as_deref().is_none_or(str::is_empty) {
            errs.push(FieldError::required(&pp.key("name"), ""));
        }
        if let Some(n) = &p.name
            && !n.is_empty()
            && !names.insert(n.clone())
        {
            errs.push(FieldError::duplicate(&pp.key("name"), json!(n)));
        }
        if !(1..=65535).contains(&p.port) {
            errs.push(FieldError::invalid(&pp.key("port"), json!(p.port), "must be between 1 and 65535, inclusive"));
        }
        if let Some(IntOrString::Int(t)) = &p.target_port
            && !(1..=65535).contains(t)
        {
            errs.push(FieldError::invalid(&pp.key("targetPort"), json!(t), "must be between 1 and 65535, inclusive"));
        }
        if let Some(np) = p.node_port
            && np != 0
            && kind == "ClusterIP"
        {
            errs.push(FieldError::forbidden(&pp.key("nodePort"), "may not be used when `type` is 'ClusterIP'"));
        }
    }
}

impl Kind for Service {
    const NAME_RULE: NameRule = NameRule::Dns1035Label;

    fn set_defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_str(&mut spec.type_, "ClusterIP");
        default_str(&mut spec.session_affinity, "None");
        if spec.type_.as_deref() != Some("ExternalName") {
            default_str(&mut spec.internal_traffic_policy, "Cluster");
        }
        if matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
            default_str(&mut spec.external_traffic_policy, "Cluster");
        }
        if spec.type_.as_deref() == Some("LoadBalancer") {
            default_val(&mut spec.allocate_load_balancer_node_ports, true);
        }
        if spec.session_affinity.as_deref() == Some("ClientIP") {
            let cfg = spec.session_affinity_config.get_or_insert_with(Default::default);
            let ip = cfg.client_ip.get_or_insert_with(Default::default);
            default_val(&mut ip.timeout_seconds, 10800);
        }
        for p in spec.ports.iter_mut().flatten() {
            default_str(&mut p.protocol, "TCP");
            if p.target_port.is_none() {
                p.target_port = Some(IntOrString::Int(p.port));
            }
        }
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        validate_service_ports(self, errs);
    }

    fn validate_update(&self, old: &Self, errs: &mut Vec<FieldError>) {
        let new_ip = self.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
        let old_ip = old.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
        let changing_type =
            self.spec.as_ref().and_then(|s| s.type_.as_deref()) != old.spec.as_ref().and_then(|s| s.type_.as_deref());
        if new_ip.is_some_and(|ip| !ip.is_empty()) && new_ip != old_ip && !changing_type {
            errs.push(FieldError::invalid(
                &FieldPath::new("spec").key("clusterIPs").index(0),
                json!(new_ip),
                "may not change once set",
            ));
        }
    }
}

impl Kind for Namespace {
    const NAME_RULE: NameRule = NameRule::Label;
    const FIELD_LABELS: &'static [(&'static str, &'static str)] = &[("status.phase", "status.phase")];

    fn set_defaults(&mut self) {
        // Every namespace carries its own name as a label (NamespaceDefaultLabelName).
        if let Some(name) = self.metadata.name.clone() {
            self.metadata.labels.get_or_insert_with(BTreeMap::new).insert("kubernetes.io/metadata.name".into(), name);
        }
    }

    fn prepare_for_create(&mut self) {
        let spec = self.spec.get_or_insert_with(NamespaceSpec::default);
        let finalizers = spec.finalizers.get_or_insert_with(Vec::new);
        if !finalizers.iter().any(|f| f == "kubernetes") {
            finalizers.push("kubernetes".into());
        }
        self.status = Some(NamespaceStatus { phase: Some("Active".into()), ..Default::default() });
    }
}

impl Kind for Secret {
    const FIELD_LABELS: &'static [(&'static str, &'static str)] = &[("type", "type")];
    const WRITE_ONLY_FIELDS: &'static [&'static str] = &["stringData"];

    fn set_defaults(&mut self) {
        default_str(&mut self.type_, "Opaque");
        // `stringData` is write-only: upstream's conversion merges it into `data` (its keys win)
        // and never stores it, so readers and the node agent only ever see `data`.
        if let Some(strings) = self.string_data.take() {
            let data = self.data.get_or_insert_with(Default::default);
            for (key, value) in strings {
                data.insert(key, k8s_openapi::ByteString(value.into_bytes()));
            }
        }
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        let mut total = 0;
        for k in self.data.iter().flat_map(|d| d.keys()).chain(self.string_data.iter().flat_map(|d| d.keys())) {
            if !is_config_key(k) {
                errs.push(FieldError::invalid(
                    &FieldPath::new("data").map_key(k),
                    json!(k),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
        }
        for v in self.data.iter().flat_map(|d| d.values()) {
            total += v.0.len();
        }
        if total > 1024 * 1024 {
            errs.push(FieldError::too_long(&FieldPath::new("data"), 1024 * 1024));
        }
    }
}

fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

impl Kind for ConfigMap {
    fn validate(&self, errs: &mut Vec<FieldError>) {
        let keys = self.data.iter().flat_map(|d| d.keys()).chain(self.binary_data.iter().flat_map(|d| d.keys()));
        for k in keys {
            if !is_config_key(k) {
                errs.push(FieldError::invalid(
                    &FieldPath::new("data").map_key(k),
                    json!(k),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
        }
    }
}

impl Kind for ReplicationController {
    const FIELD_LABELS: &'static [(&'static str, &'static str)] = &[("status.replicas", "status.replicas")];

    fn set_defaults(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        default_val(&mut spec.replicas, 1);
        // An RC without a selector selects its template's labels, and is labelled with them.
        let template_labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone());
        if let Some(labels) = template_labels {
            if spec.selector.as_ref().is_none_or(BTreeMap::is_empty) {
                spec.selector = Some(labels.clone());
            }
            if self.metadata.labels.as_ref().is_none_or(BTreeMap::is_empty) {
                self.metadata.labels = Some(labels);
            }
        }
        default_pod_template(&mut spec.template);
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        let path = FieldPath::new("spec");
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required(&path, ""));
            return;
        };
        if let Some(r) = spec.replicas
            && r < 0
        {
            errs.push(FieldError::invalid(&path.key("replicas"), json!(r), "must be greater than or equal to 0"));
        }
        let selector = spec.selector.clone().unwrap_or_default();
        if selector.is_empty() {
            errs.push(FieldError::required(&path.key("selector"), ""));
        }
        match &spec.template {
            None => errs.push(FieldError::required(&path.key("template"), "")),
            Some(t) => {
                let labels = t.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
                if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    errs.push(FieldError::invalid(
                        &path.key("template").key("metadata").key("labels"),
                        json!(labels),
                        "`selector` does not match template `labels`",
                    ));
                }
                match &t.spec {
                    Some(s) => validate_pod_spec(s, &path.key("template").key("spec"), errs),
                    None => errs.push(FieldError::required(&path.key("template").key("spec"), "")),
                }
            }
        }
    }
}

impl Kind for PodTemplate {
    fn set_defaults(&mut self) {
        default_pod_template(&mut self.template);
    }
}

impl Kind for Node {
    const FIELD_LABELS: &'static [(&'static str, &'static str)] = &[("spec.unschedulable", "spec.unschedulable")];
}

impl Kind for Event {
    const FIELD_LABELS: &'static [(&'static str, &'static str)] = &[
        ("involvedObject.kind", "involvedObject.kind"),
        ("involvedObject.namespace", "involvedObject.namespace"),
        ("involvedObject.name", "involvedObject.name"),
        ("involvedObject.uid", "involvedObject.uid"),
        ("involvedObject.apiVersion", "involvedObject.apiVersion"),
        ("involvedObject.resourceVersion", "involvedObject.resourceVersion"),
        ("involvedObject.fieldPath", "involvedObject.fieldPath"),
        ("reason", "reason"),
        ("reportingComponent", "reportingComponent"),
        ("source", "source.component"),
        ("type", "type"),
    ];
}

impl Kind for PersistentVolumeClaim {
    fn set_defaults(&mut self) {
        if let Some(spec) = &mut self.spec {
            default_str(&mut spec.volume_mode, "Filesystem");
        }
    }

    fn prepare_for_create(&mut self) {
        self.status = Some(k8s_openapi::api::core::v1::PersistentVolumeClaimStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
    }
}

impl Kind for PersistentVolume {
    fn set_defaults(&mut self) {
        if let Some(spec) = &mut self.spec {
            default_str(&mut spec.persistent_volume_reclaim_policy, "Retain");
            default_str(&mut spec.volume_mode, "Filesystem");
        }
    }

    fn prepare_for_create(&mut self) {
        self.status = Some(k8s_openapi::api::core::v1::PersistentVolumeStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
    }
}

impl Kind for Endpoints {
    fn set_defaults(&mut self) {
        for s in self.subsets.iter_mut().flatten() {
            for p in s.ports.iter_mut().flatten() {
                default_str(&mut p.protocol, "TCP");
            }
        }
    }
}

impl Kind for ComponentStatus {}
impl Kind for LimitRange {}
impl Kind for ResourceQuota {}
impl Kind for ServiceAccount {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_or_untagged_images_pull_always() {
        assert_eq!(default_pull_policy(Some("nginx")), "Always");
        assert_eq!(default_pull_policy(Some("nginx:latest")), "Always");
        assert_eq!(default_pull_policy(Some("nginx:1.25")), "IfNotPresent");
        assert_eq!(default_pull_policy(Some("localhost:5000/busybox")), "Always");
        assert_eq!(default_pull_policy(Some("localhost:5000/busybox:1")), "IfNotPresent");
        assert_eq!(default_pull_policy(Some("busybox@sha256:abc")), "IfNotPresent");
    }

    #[test]
    fn qos_follows_requests_and_limits() {
        let mut spec: PodSpec = serde_json::from_value(json!({"containers": [{"name": "a", "image": "x"}]})).unwrap();
        assert_eq!(qos_class(&spec), "BestEffort");
        spec.containers[0].resources =
            Some(serde_json::from_value(json!({"limits": {"cpu": "1", "memory": "1Gi"}})).unwrap());
        default_pod_spec(&mut spec);
        assert_eq!(qos_class(&spec), "Guaranteed");
        spec.containers[0].resources = Some(serde_json::from_value(json!({"requests": {"cpu": "100m"}})).unwrap());
        assert_eq!(qos_class(&spec), "Burstable");
    }

    #[test]
    fn secret_string_data_merges_into_data_and_is_not_kept() {
        let mut secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "s"},
            "data": {"a": "b2xk", "keep": "eA=="},
            "stringData": {"a": "new", "b": "plain"}
        }))
        .unwrap();
        secret.set_defaults();
        let stored = serde_json::to_value(&secret).unwrap();
        assert_eq!(stored["data"], json!({"a": "bmV3", "b": "cGxhaW4=", "keep": "eA=="}));
        assert!(stored.get("stringData").is_none());
        assert_eq!(stored["type"], "Opaque");
    }

    #[test]
    fn secret_string_data_is_not_an_unknown_field_for_strict_validation() {
        let input = json!({"metadata": {"name": "s"}, "stringData": {"a": "x"}, "stringDatum": {"b": "y"}});
        let mut secret: Secret = serde_json::from_value(input.clone()).unwrap();
        secret.set_defaults();
        let output = serde_json::to_value(&secret).unwrap();
        assert_eq!(super::super::unknown_fields(&input, &output, Secret::WRITE_ONLY_FIELDS), ["stringDatum"]);
    }
}

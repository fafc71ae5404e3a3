//! What an object uses of a quota, per kind (upstream's `pkg/quota/v1/evaluator/core` and the
//! generic object-count evaluator): pods, services and persistent volume claims have their own
//! rules; everything else counts as one `count/<resource>.<group>`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

use super::{ResourceList, ScopeSelector};
use crate::quantity::Exact;

/// Resources whose use every container must state when a quota limits them (upstream keeps this
/// for backward compatibility: quota on cpu or memory forces explicit requests).
const VALIDATION_SET: [&str; 6] = ["cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"];

/// The compute resources a pod is charged for, besides its count.
const POD_RESOURCES: [&str; 11] = [
    "count/pods",
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
];

const SERVICE_RESOURCES: [&str; 4] = ["count/services", "services", "services.nodeports", "services.loadbalancers"];

const PVC_RESOURCES: [&str; 3] = ["count/persistentvolumeclaims", "persistentvolumeclaims", "requests.storage"];

const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

/// Core resources that kept their pre-`count/` quota name.
const LEGACY_COUNT_NAMES: [&str; 4] = ["configmaps", "secrets", "replicationcontrollers", "resourcequotas"];

/// Why an object could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvaluatorError {
    #[error("decoding {kind} for quota")]
    Decode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// The evaluator for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evaluator {
    Pods,
    Services,
    PersistentVolumeClaims,
    /// Any other resource: one object, one unit of `count/<resource>[.<group>]`.
    ObjectCount {
        group: String,
        resource: String,
    },
}

/// `count/pods` for core resources, `count/deployments.apps` otherwise.
pub fn object_count_name(group: &str, resource: &str) -> String {
    if group.is_empty() { format!("count/{resource}") } else { format!("count/{resource}.{group}") }
}

fn is_extended_resource(name: &str) -> bool {
    // Upstream: a domain-prefixed name outside kubernetes.io that is not a requests. alias.
    name.contains('/') && !name.starts_with("requests.") && !name.contains("kubernetes.io/")
}

fn is_hugepages(name: &str) -> bool {
    name.starts_with("hugepages-")
}

impl Evaluator {
    /// The evaluator for objects of `resource` in `group`.
    pub fn for_resource(group: &str, resource: &str) -> Evaluator {
        match (group, resource) {
            ("", "pods") => Evaluator::Pods,
            ("", "services") => Evaluator::Services,
            ("", "persistentvolumeclaims") => Evaluator::PersistentVolumeClaims,
            _ => Evaluator::ObjectCount { group: group.into(), resource: resource.into() },
        }
    }

    /// Which evaluator counts a quota's hard resource `name`, as `(group, resource)`.
    pub fn owner_of(name: &str) -> Option<(String, String)> {
        let core = |r: &str| Some((String::new(), r.to_string()));
        if let Some(rest) = name.strip_prefix("count/") {
            return Some(match rest.split_once('.') {
                Some((resource, group)) => (group.to_string(), resource.to_string()),
                None => (String::new(), rest.to_string()),
            });
        }
        if POD_RESOURCES.contains(&name)
            || is_hugepages(name)
            || name.strip_prefix("requests.").is_some_and(|r| is_hugepages(r) || is_extended_resource(r))
        {
            return core("pods");
        }
        if SERVICE_RESOURCES.contains(&name) {
            return core("services");
        }
        if PVC_RESOURCES.contains(&name) || name.contains(STORAGE_CLASS_SUFFIX) {
            return core("persistentvolumeclaims");
        }
        if LEGACY_COUNT_NAMES.contains(&name) {
            return core(name);
        }
        None
    }

    /// The group and resource this evaluator counts.
    pub fn group_resource(&self) -> (String, String) {
        match self {
            Evaluator::Pods => (String::new(), "pods".into()),
            Evaluator::Services => (String::new(), "services".into()),
            Evaluator::PersistentVolumeClaims => (String::new(), "persistentvolumeclaims".into()),
            Evaluator::ObjectCount { group, resource } => (group.clone(), resource.clone()),
        }
    }

    /// The names among `names` this evaluator accounts for (upstream's `MatchingResources`).
    pub fn matching_resources<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
        let (group, resource) = self.group_resource();
        names
            .into_iter()
            .filter(|n| Self::owner_of(n).is_some_and(|o| o == (group.clone(), resource.clone())))
            .cloned()
            .collect()
    }

    /// Whether an object is in every scope of `selectors` (upstream's `Matches` minus the
    /// resource check). Only pods have scopes; a scoped quota matches nothing else.
    pub fn matches_scopes(&self, selectors: &[ScopeSelector], obj: &Value) -> Result<bool, EvaluatorError> {
        if selectors.is_empty() {
            return Ok(true);
        }
        match self {
            Evaluator::Pods => {
                let pod = decode::<Pod>(obj, "Pod")?;
                Ok(selectors.iter().all(|s| pod_matches_scope(s, &pod)))
            }
            _ => Ok(false),
        }
    }

    /// What an object uses (upstream's `Usage`); `now` decides whether a terminating pod still
    /// counts.
    pub fn usage(&self, obj: &Value, now: jiff::Timestamp) -> Result<ResourceList, EvaluatorError> {
        Ok(match self {
            Evaluator::Pods => pod_usage(&decode::<Pod>(obj, "Pod")?, now),
            Evaluator::Services => service_usage(&decode::<Service>(obj, "Service")?),
            Evaluator::PersistentVolumeClaims => {
                pvc_usage(&decode::<PersistentVolumeClaim>(obj, "PersistentVolumeClaim")?)
            }
            Evaluator::ObjectCount { group, resource } => {
                let mut out = ResourceList::new();
                out.insert(object_count_name(group, resource), Exact::from_int(1));
                if group.is_empty() && LEGACY_COUNT_NAMES.contains(&resource.as_str()) {
                    out.insert(resource.clone(), Exact::from_int(1));
                }
                out
            }
        })
    }

    /// Requirements a quota places on the object itself (upstream's `Constraints`): a pod must
    /// state requests or limits for the compute resources a quota limits.
    pub fn constraints(&self, required: &BTreeSet<String>, obj: &Value) -> Result<Result<(), String>, EvaluatorError> {
        match self {
            Evaluator::Pods => Ok(pod_constraints(required, &decode::<Pod>(obj, "Pod")?)),
            _ => Ok(Ok(())),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(obj: &Value, kind: &'static str) -> Result<T, EvaluatorError> {
    serde_json::from_value(obj.clone()).map_err(|source| EvaluatorError::Decode { kind, source })
}

fn qty(list: Option<&BTreeMap<String, Quantity>>, name: &str) -> Option<Exact> {
    list?.get(name).and_then(|q| Exact::parse(&q.0))
}

fn one() -> Exact {
    Exact::from_int(1)
}

/// Whether a pod still consumes quota: not in a terminal phase, and not stuck terminating past
/// its grace period (upstream's `QuotaV1Pod`).
pub fn pod_counts(pod: &Pod, now: jiff::Timestamp) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Failed" | "Succeeded")) {
        return false;
    }
    if let (Some(deleted), Some(grace)) = (&pod.metadata.deletion_timestamp, pod.metadata.deletion_grace_period_seconds)
        && let Ok(end) = deleted.0.checked_add(jiff::SignedDuration::from_secs(grace))
        && now > end
    {
        return false;
    }
    true
}

/// A container's compute usage (upstream's `podComputeUsageHelper`).
fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("pods".into(), one());
    for (name, aliases) in [
        ("cpu", ["cpu", "requests.cpu"]),
        ("memory", ["memory", "requests.memory"]),
        ("ephemeral-storage", ["ephemeral-storage", "requests.ephemeral-storage"]),
    ] {
        if let Some(r) = requests.get(name) {
            for a in aliases {
                out.insert(a.into(), *r);
            }
        }
        if let Some(l) = limits.get(name) {
            out.insert(format!("limits.{name}"), *l);
        }
    }
    for (name, r) in requests {
        if is_hugepages(name) {
            out.insert(name.clone(), *r);
            out.insert(format!("requests.{name}"), *r);
        } else if is_extended_resource(name) {
            out.insert(format!("requests.{name}"), *r);
        }
    }
    out
}

fn container_list(c: &Container, limits: bool) -> ResourceList {
    let res = c.resources.as_ref();
    let list = if limits { res.and_then(|r| r.limits.as_ref()) } else { res.and_then(|r| r.requests.as_ref()) };
    list.map(super::from_api).unwrap_or_default()
}

fn max_into(acc: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        if acc.get(k).is_none_or(|cur| v > cur) {
            acc.insert(k.clone(), *v);
        }
    }
}

/// A pod's effective requests or limits: containers summed, init containers as a maximum,
/// sidecars (restartable init containers) added, pod-level cpu/memory taking precedence, then
/// the overhead (upstream's `PodRequests` / `PodLimits`).
pub fn pod_resources(pod: &Pod, limits: bool) -> ResourceList {
    let Some(spec) = pod.spec.as_ref() else { return ResourceList::new() };
    let mut total = ResourceList::new();
    for c in &spec.containers {
        total = super::add(&total, &container_list(c, limits));
    }
    let mut sidecars = ResourceList::new();
    let mut init_max = ResourceList::new();
    for c in spec.init_containers.iter().flatten() {
        let own = container_list(c, limits);
        let this = if c.restart_policy.as_deref() == Some("Always") {
            total = super::add(&total, &own);
            sidecars = super::add(&sidecars, &own);
            sidecars.clone()
        } else {
            super::add(&own, &sidecars)
        };
        max_into(&mut init_max, &this);
    }
    max_into(&mut total, &init_max);
    if let Some(pod_level) = spec.resources.as_ref() {
        let list = if limits { pod_level.limits.as_ref() } else { pod_level.requests.as_ref() };
        for name in ["cpu", "memory"] {
            if let Some(v) = qty(list, name) {
                total.insert(name.into(), v);
            }
        }
    }
    if let Some(overhead) = spec.overhead.as_ref() {
        total = super::add(&total, &super::from_api(overhead));
    }
    total
}

/// What a pod uses: always its object count; compute resources only while it is not finished.
pub fn pod_usage(pod: &Pod, now: jiff::Timestamp) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("count/pods".into(), one());
    if !pod_counts(pod, now) {
        return out;
    }
    super::add(&out, &compute_usage(&pod_resources(pod, false), &pod_resources(pod, true)))
}

/// A pod is BestEffort when no container requests or limits cpu or memory.
pub fn is_best_effort(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return true };
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            qty(c.resources.as_ref().and_then(|x| x.requests.as_ref()), r).is_none_or(|q| q.is_zero())
                && qty(c.resources.as_ref().and_then(|x| x.limits.as_ref()), r).is_none_or(|q| q.is_zero())
        })
    })
}

/// Whether a pod is in one scope (upstream's `podMatchesScopeFunc`).
pub fn pod_matches_scope(sel: &ScopeSelector, pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let deadline = spec.and_then(|s| s.active_deadline_seconds);
    match sel.scope_name.as_str() {
        "Terminating" => deadline.is_some_and(|d| d >= 0),
        "NotTerminating" => deadline.is_none_or(|d| d < 0),
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        "PriorityClass" => {
            let class = spec.and_then(|s| s.priority_class_name.as_deref()).filter(|c| !c.is_empty());
            match sel.operator.as_str() {
                "Exists" => class.is_some(),
                "DoesNotExist" => class.is_none(),
                "In" => class.is_some_and(|c| sel.values.iter().any(|v| v == c)),
                "NotIn" => class.is_none_or(|c| !sel.values.iter().any(|v| v == c)),
                _ => false,
            }
        }
        "CrossNamespacePodAffinity" => has_cross_namespace_affinity(pod),
        _ => false,
    }
}

fn has_cross_namespace_affinity(pod: &Pod) -> bool {
    let Some(aff) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else { return false };
    let terms = |a: Option<&k8s_openapi::api::core::v1::PodAffinity>| {
        a.map(|a| {
            a.required_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .cloned()
                .chain(
                    a.preferred_during_scheduling_ignored_during_execution
                        .iter()
                        .flatten()
                        .map(|w| w.pod_affinity_term.clone()),
                )
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
    };
    let anti = aff.pod_anti_affinity.as_ref().map(|a| k8s_openapi::api::core::v1::PodAffinity {
        required_during_scheduling_ignored_during_execution: a
            .required_during_scheduling_ignored_during_execution
            .clone(),
        preferred_during_scheduling_ignored_during_execution: a
            .preferred_during_scheduling_ignored_during_execution
            .clone(),
    });
    terms(aff.pod_affinity.as_ref())
        .into_iter()
        .chain(terms(anti.as_ref()))
        .any(|t| t.namespaces.is_some_and(|n| !n.is_empty()) || t.namespace_selector.is_some())
}

/// Every container must state what a quota on cpu or memory needs (upstream's pod
/// `Constraints`): `must specify limits.cpu for: c1; requests.memory for: c1,c2`.
pub fn pod_constraints(required: &BTreeSet<String>, pod: &Pod) -> Result<(), String> {
    let required: BTreeSet<&str> = required.iter().map(String::as_str).filter(|r| VALIDATION_SET.contains(r)).collect();
    let Some(spec) = pod.spec.as_ref() else { return Ok(()) };
    let mut missing: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let usage = compute_usage(&container_list(c, false), &container_list(c, true));
        for r in &required {
            if !usage.contains_key(*r) {
                missing.entry(r).or_default().insert(c.name.as_str());
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| format!("{r} for: {}", names.iter().copied().collect::<Vec<_>>().join(",")))
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// What a service uses: its count, node ports for NodePort and LoadBalancer types, and a load
/// balancer.
pub fn service_usage(svc: &Service) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("count/services".into(), one());
    out.insert("services".into(), one());
    let spec = svc.spec.as_ref();
    let ports = spec.and_then(|s| s.ports.as_ref()).map_or(0, Vec::len);
    let ports = i64::try_from(ports).unwrap_or(i64::MAX);
    match spec.and_then(|s| s.type_.as_deref()) {
        Some("NodePort") => {
            out.insert("services.nodeports".into(), Exact::from_int(ports));
        }
        Some("LoadBalancer") => {
            let node_ports = if spec.and_then(|s| s.allocate_load_balancer_node_ports) == Some(false) {
                let with = spec
                    .and_then(|s| s.ports.as_ref())
                    .map_or(0, |p| p.iter().filter(|p| p.node_port.is_some_and(|n| n != 0)).count());
                i64::try_from(with).unwrap_or(i64::MAX)
            } else {
                ports
            };
            out.insert("services.nodeports".into(), Exact::from_int(node_ports));
            out.insert("services.loadbalancers".into(), one());
        }
        _ => {}
    }
    out
}

/// A claim's storage class: the beta annotation first, then `spec.storageClassName`.
fn claim_class(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class").cloned())
        .or_else(|| pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()))
        .filter(|c| !c.is_empty())
}

/// What a claim uses: its count and requested storage (rounded up to a whole byte), also per
/// storage class.
pub fn pvc_usage(pvc: &PersistentVolumeClaim) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("persistentvolumeclaims".into(), one());
    out.insert("count/persistentvolumeclaims".into(), one());
    let class = claim_class(pvc);
    if let Some(class) = &class {
        out.insert(format!("{class}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"), one());
    }
    let requested =
        qty(pvc.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref()), "storage");
    // An expanding claim is charged for the larger of what it asks and what it was given.
    let allocated = qty(pvc.status.as_ref().and_then(|s| s.allocated_resources.as_ref()), "storage");
    let storage = match (requested, allocated) {
        (Some(r), Some(a)) => Some(r.max(a)),
        (r, a) => r.or(a),
    };
    if let Some(storage) = storage {
        let whole = storage.ceil();
        out.insert("requests.storage".into(), whole);
        if let Some(class) = &class {
            out.insert(format!("{class}{STORAGE_CLASS_SUFFIX}requests.storage"), whole);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn pod(v: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": v})
    }

    fn usage(e: &Evaluator, obj: &Value) -> String {
        super::super::pretty_print(&e.usage(obj, now()).unwrap())
    }

    #[test]
    fn pods_are_charged_their_requests_limits_and_count() {
        let p = pod(json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m"}}},
            {"name": "b", "resources": {"requests": {"cpu": "150m", "memory": "64Mi"}}},
        ]}));
        assert_eq!(
            usage(&Evaluator::Pods, &p),
            "count/pods=1,cpu=250m,limits.cpu=200m,memory=128Mi,pods=1,requests.cpu=250m,requests.memory=128Mi"
        );
    }

    #[test]
    fn init_containers_count_as_their_maximum_and_sidecars_add() {
        let p = pod(json!({
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}],
            "initContainers": [
                {"name": "i", "resources": {"requests": {"cpu": "1"}}},
                {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
            ],
        }));
        let got = Evaluator::Pods.usage(&p, now()).unwrap();
        assert_eq!(got["requests.cpu"].to_string(), "1");
        let p2 = pod(json!({
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}],
            "initContainers": [{"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}}],
        }));
        assert_eq!(Evaluator::Pods.usage(&p2, now()).unwrap()["requests.cpu"].to_string(), "150m");
    }

    #[test]
    fn finished_pods_only_count_as_objects() {
        let mut p = pod(json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}));
        p["status"] = json!({"phase": "Succeeded"});
        assert_eq!(usage(&Evaluator::Pods, &p), "count/pods=1");
        p["status"] = json!({"phase": "Running"});
        p["metadata"]["deletionTimestamp"] = json!("2025-12-31T23:00:00Z");
        p["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        assert_eq!(usage(&Evaluator::Pods, &p), "count/pods=1");
    }

    #[test]
    fn scopes_select_pods_by_deadline_qos_and_priority_class() {
        let best_effort: Pod = serde_json::from_value(pod(json!({"containers": [{"name": "a"}]}))).unwrap();
        let burstable: Pod =
            serde_json::from_value(pod(json!({"activeDeadlineSeconds": 10, "priorityClassName": "high",
            "containers": [{"name": "a", "resources": {"requests": {"memory": "1Mi"}}}]})))
            .unwrap();
        let s = |name: &str, op: &str, values: &[&str]| ScopeSelector {
            scope_name: name.into(),
            operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert!(pod_matches_scope(&s("BestEffort", "Exists", &[]), &best_effort));
        assert!(!pod_matches_scope(&s("BestEffort", "Exists", &[]), &burstable));
        assert!(pod_matches_scope(&s("NotBestEffort", "Exists", &[]), &burstable));
        assert!(pod_matches_scope(&s("Terminating", "Exists", &[]), &burstable));
        assert!(pod_matches_scope(&s("NotTerminating", "Exists", &[]), &best_effort));
        assert!(pod_matches_scope(&s("PriorityClass", "In", &["high"]), &burstable));
        assert!(!pod_matches_scope(&s("PriorityClass", "In", &["high"]), &best_effort));
        assert!(pod_matches_scope(&s("PriorityClass", "NotIn", &["high"]), &best_effort));
        assert!(pod_matches_scope(&s("PriorityClass", "DoesNotExist", &[]), &best_effort));
    }

    #[test]
    fn quota_on_cpu_requires_every_container_to_request_it() {
        let p: Pod = serde_json::from_value(pod(json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "1"}}}, {"name": "b"}, {"name": "c"}]})))
        .unwrap();
        let required: BTreeSet<String> =
            ["requests.cpu", "pods", "limits.memory"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            pod_constraints(&required, &p),
            Err("must specify limits.memory for: a,b,c; requests.cpu for: b,c".into())
        );
    }

    #[test]
    fn services_and_claims_count_ports_and_storage() {
        let svc =
            json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}});
        assert_eq!(usage(&Evaluator::Services, &svc), "count/services=1,services=1,services.nodeports=2");
        let lb = json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}});
        assert_eq!(
            usage(&Evaluator::Services, &lb),
            "count/services=1,services=1,services.loadbalancers=1,services.nodeports=1"
        );
        let pvc = json!({"metadata": {"name": "c"}, "spec": {"storageClassName": "gold", "resources": {"requests": {"storage": "1Gi"}}}});
        assert_eq!(
            usage(&Evaluator::PersistentVolumeClaims, &pvc),
            "count/persistentvolumeclaims=1,gold.storageclass.storage.k8s.io/persistentvolumeclaims=1,gold.storageclass.storage.k8s.io/requests.storage=1Gi,persistentvolumeclaims=1,requests.storage=1Gi"
        );
    }

    #[test]
    fn hard_resources_belong_to_their_evaluator() {
        assert_eq!(Evaluator::owner_of("requests.cpu"), Some((String::new(), "pods".into())));
        assert_eq!(Evaluator::owner_of("count/deployments.apps"), Some(("apps".into(), "deployments".into())));
        assert_eq!(Evaluator::owner_of("configmaps"), Some((String::new(), "configmaps".into())));
        assert_eq!(Evaluator::owner_of("services.nodeports"), Some((String::new(), "services".into())));
        assert_eq!(Evaluator::owner_of("requests.nvidia.com/gpu"), Some((String::new(), "pods".into())));
        let cm = Evaluator::for_resource("", "configmaps");
        assert_eq!(usage(&cm, &json!({"metadata": {"name": "x"}})), "configmaps=1,count/configmaps=1");
    }
}

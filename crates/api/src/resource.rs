//! What a pod requests and what a node offers, in the units the scheduler and the node agent
//! account in (upstream's `k8s.io/component-helpers/resource` and the scheduler's `Resource`):
//! both must count a pod the same way, or the agent would refuse pods the scheduler placed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// What upstream counts for a pod that requests no cpu: 0.1 core.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// What upstream counts for a pod that requests no memory: 200 MiB.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Amounts of the resources the scheduler accounts: cpu in millicores, memory and
/// ephemeral storage in bytes, a pod count, and every other (extended, hugepages) resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resource {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub allowed_pod_number: i64,
    pub scalar: BTreeMap<String, i64>,
}

impl Resource {
    /// The amounts of a resource list (`requests`, `allocatable`, `overhead`).
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let mut r = Resource::default();
        for (name, q) in list {
            r.set(name, q);
        }
        r
    }

    fn set(&mut self, name: &str, q: &Quantity) {
        match name {
            "cpu" => self.milli_cpu = milli_value(q),
            "memory" => self.memory = value(q),
            "ephemeral-storage" => self.ephemeral_storage = value(q),
            "pods" => self.allowed_pod_number = value(q),
            other => {
                self.scalar.insert(other.to_string(), value(q));
            }
        }
    }

    pub fn add(&mut self, o: &Resource) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.allowed_pod_number += o.allowed_pod_number;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resource) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.allowed_pod_number -= o.allowed_pod_number;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Keeps, per resource, the larger of the two.
    pub fn max_with(&mut self, o: &Resource) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        self.allowed_pod_number = self.allowed_pod_number.max(o.allowed_pod_number);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    pub fn scalar(&self, name: &str) -> i64 {
        self.scalar.get(name).copied().unwrap_or(0)
    }
}

fn rounded(v: f64) -> i64 {
    // Quantities are decimal; the float parse may be a hair off an integer ("100m" * 1000).
    let r = v.round();
    if (v - r).abs() < 1e-6 { r as i64 } else { v.ceil() as i64 }
}

/// A quantity's value rounded up to an integer, as upstream's `Quantity.Value()`.
pub fn value(q: &Quantity) -> i64 {
    crate::quantity::parse(&q.0).map(rounded).unwrap_or(0)
}

/// A quantity's value in thousandths, rounded up, as upstream's `Quantity.MilliValue()`.
pub fn milli_value(q: &Quantity) -> i64 {
    crate::quantity::parse(&q.0).map(|v| rounded(v * 1000.0)).unwrap_or(0)
}

/// One container's requests; a resource with only a limit requests its limit (upstream's
/// defaulting does the same). With `non_zero`, missing cpu and memory requests count as
/// upstream's defaults, as the scorers use them.
fn container_requests(c: &Container, non_zero: bool) -> Resource {
    let res = c.resources.as_ref();
    let mut list: BTreeMap<String, Quantity> = res.and_then(|r| r.limits.clone()).unwrap_or_default();
    list.extend(res.and_then(|r| r.requests.clone()).unwrap_or_default());
    let mut r = Resource::from_list(&list);
    if non_zero {
        if !list.contains_key("cpu") {
            r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
        }
        if !list.contains_key("memory") {
            r.memory = DEFAULT_MEMORY_REQUEST;
        }
    }
    r
}

/// What a pod requests, as upstream's `PodRequests`: the sum of its app containers and
/// sidecars (init containers with `restartPolicy: Always`), or the largest init container
/// plus the sidecars started before it if that is more, plus the pod's overhead. Pod-level
/// `spec.resources.requests` replace the containers' sum for the resources they name.
pub fn pod_requests(pod: &Pod, non_zero: bool) -> Resource {
    let Some(spec) = pod.spec.as_ref() else { return Resource::default() };
    let mut reqs = Resource::default();
    for c in &spec.containers {
        reqs.add(&container_requests(c, non_zero));
    }
    let mut sidecars = Resource::default();
    let mut init_max = Resource::default();
    for c in spec.init_containers.iter().flatten() {
        let own = container_requests(c, non_zero);
        let during = if c.restart_policy.as_deref() == Some("Always") {
            reqs.add(&own);
            sidecars.add(&own);
            sidecars.clone()
        } else {
            let mut tmp = own;
            tmp.add(&sidecars);
            tmp
        };
        init_max.max_with(&during);
    }
    reqs.max_with(&init_max);
    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        for (name, q) in pod_level {
            if name == "cpu" || name == "memory" || name.starts_with("hugepages-") {
                reqs.set(name, q);
            }
        }
    }
    if let Some(overhead) = &spec.overhead {
        reqs.add(&Resource::from_list(overhead));
    }
    reqs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec})).unwrap()
    }

    fn ctr(requests: serde_json::Value) -> serde_json::Value {
        json!({"name": "c", "image": "i", "resources": {"requests": requests}})
    }

    #[test]
    fn sums_app_containers_and_rounds_quantities() {
        let p = pod(json!({"containers": [ctr(json!({"cpu": "100m", "memory": "1Gi"})), ctr(json!({"cpu": "0.25"}))]}));
        let r = pod_requests(&p, false);
        assert_eq!(r.milli_cpu, 350);
        assert_eq!(r.memory, 1 << 30);
    }

    #[test]
    fn init_containers_count_when_larger_than_the_app_sum() {
        let p = pod(json!({
            "initContainers": [ctr(json!({"cpu": "2"})), ctr(json!({"memory": "10"}))],
            "containers": [ctr(json!({"cpu": "1", "memory": "100"}))],
        }));
        let r = pod_requests(&p, false);
        assert_eq!((r.milli_cpu, r.memory), (2000, 100));
    }

    #[test]
    fn sidecars_add_to_the_app_sum_and_to_later_init_containers() {
        let mut sidecar = ctr(json!({"cpu": "500m"}));
        sidecar["restartPolicy"] = json!("Always");
        let p = pod(json!({
            "initContainers": [sidecar, ctr(json!({"cpu": "1800m"}))],
            "containers": [ctr(json!({"cpu": "1"}))],
        }));
        // app: 1 + 0.5 sidecar = 1.5; the init container runs beside the sidecar: 2.3.
        assert_eq!(pod_requests(&p, false).milli_cpu, 2300);
    }

    #[test]
    fn overhead_is_added_and_limits_stand_in_for_missing_requests() {
        let p = pod(json!({
            "containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "1"}}}],
            "overhead": {"cpu": "250m", "example.com/foo": "1"},
        }));
        let r = pod_requests(&p, false);
        assert_eq!(r.milli_cpu, 1250);
        assert_eq!(r.scalar("example.com/foo"), 1);
    }

    #[test]
    fn non_zero_requests_use_upstream_defaults() {
        let p = pod(json!({"containers": [{"name": "c", "image": "i"}]}));
        let r = pod_requests(&p, true);
        assert_eq!((r.milli_cpu, r.memory), (DEFAULT_MILLI_CPU_REQUEST, DEFAULT_MEMORY_REQUEST));
        assert_eq!(pod_requests(&p, false), Resource::default());
    }
}

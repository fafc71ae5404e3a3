//! Pod admission on the node (upstream's `canAdmitPod`: the eviction manager's admit handler
//! and `lifecycle.PredicateAdmitHandler`). A pod the scheduler placed may still not fit when it
//! arrives: the node came under disk or memory pressure since, or pods bound by name (not
//! scheduled) already use what it asks for. Such a pod is rejected: it turns `Failed` with
//! upstream's reason and message and never runs. Pods already running are never re-judged.
//! (Of `GeneralPredicates`, the resource fit is checked here; node name, selector, ports and
//! NoExecute taints are left to the scheduler.)

use k8s_openapi::api::core::v1::{NodeStatus, Pod, Taint};
use tug_api::resource::{Resource, pod_requests};

use crate::qos::{QosClass, pod_qos};

/// The reason of a pod rejected for node pressure (the eviction manager's).
pub const EVICTED: &str = "Evicted";
/// Priorities from here up are critical (upstream's `SystemCriticalPriority`).
const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;
/// The taint the node lifecycle puts on a node under memory pressure.
const MEMORY_PRESSURE_TAINT: &str = "node.kubernetes.io/memory-pressure";

/// Why a pod may not run here: the status reason and message (and the event's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

/// Upstream's `IsCriticalPod`: static and mirror pods, and pods of system-critical priority,
/// are admitted under pressure.
pub fn is_critical(pod: &Pod) -> bool {
    crate::static_pods::is_static(pod)
        || crate::static_pods::is_mirror(pod)
        || pod.spec.as_ref().and_then(|s| s.priority).is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

/// Decides whether `pod` may start on a node whose status is `node`, beside the pods already
/// admitted there.
pub fn admit(pod: &Pod, admitted: &[&Pod], node: &NodeStatus) -> Result<(), Rejection> {
    admit_under_pressure(pod, node)?;
    admit_resources(pod, admitted, node)
}

/// The eviction manager's admission: under memory pressure alone, only BestEffort pods that do
/// not tolerate the memory-pressure taint are refused; under disk or PID pressure every pod
/// that is not critical.
fn admit_under_pressure(pod: &Pod, node: &NodeStatus) -> Result<(), Rejection> {
    let pressures: Vec<&str> = node
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.status == "True" && matches!(c.type_.as_str(), "MemoryPressure" | "DiskPressure" | "PIDPressure"))
        .map(|c| c.type_.as_str())
        .collect();
    if pressures.is_empty() || is_critical(pod) {
        return Ok(());
    }
    if pressures == ["MemoryPressure"] {
        let taint = Taint { key: MEMORY_PRESSURE_TAINT.into(), effect: "NoSchedule".into(), ..Default::default() };
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
        if pod_qos(pod) != QosClass::BestEffort || tug_api::taints::tolerated_by(tolerations, &taint) {
            return Ok(());
        }
    }
    Err(Rejection {
        reason: EVICTED.into(),
        // Go prints the condition list as `[A B]`.
        message: format!("The node had condition: [{}]. ", pressures.join(" ")),
    })
}

/// The resource part of upstream's `GeneralPredicates` (`noderesources.Fits`): the pod count
/// first, then cpu, memory, ephemeral storage and extended resources against allocatable less
/// what the admitted pods request.
fn admit_resources(pod: &Pod, admitted: &[&Pod], node: &NodeStatus) -> Result<(), Rejection> {
    let allocatable = node.allocatable.as_ref().or(node.capacity.as_ref()).map(Resource::from_list).unwrap_or_default();
    let mut used = Resource::default();
    for other in admitted {
        used.add(&pod_requests(other, false));
    }
    let insufficient = |name: &str, requested: i64, used: i64, capacity: i64| Rejection {
        reason: format!("OutOf{name}"),
        message: format!(
            "Node didn't have enough resource: {name}, requested: {requested}, used: {used}, capacity: {capacity}"
        ),
    };
    let pods = admitted.len() as i64;
    if pods + 1 > allocatable.allowed_pod_number {
        return Err(insufficient("pods", 1, pods, allocatable.allowed_pod_number));
    }
    let wanted = pod_requests(pod, false);
    let checks = [
        ("cpu", wanted.milli_cpu, used.milli_cpu, allocatable.milli_cpu),
        ("memory", wanted.memory, used.memory, allocatable.memory),
        ("ephemeral-storage", wanted.ephemeral_storage, used.ephemeral_storage, allocatable.ephemeral_storage),
    ];
    for (name, requested, used, capacity) in checks {
        if requested > 0 && requested > capacity - used {
            return Err(insufficient(name, requested, used, capacity));
        }
    }
    for (name, requested) in &wanted.scalar {
        let capacity = allocatable.scalar(name);
        if *requested > 0 && *requested > capacity - used.scalar(name) {
            return Err(insufficient(name, *requested, used.scalar(name), capacity));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeCondition;
    use serde_json::json;

    fn node(conditions: &[(&str, &str)], cpu: &str, pods: &str) -> NodeStatus {
        NodeStatus {
            conditions: Some(
                conditions
                    .iter()
                    .map(|(t, s)| NodeCondition { type_: t.to_string(), status: s.to_string(), ..Default::default() })
                    .collect(),
            ),
            allocatable: Some(
                [("cpu", cpu), ("memory", "4Gi"), ("pods", pods), ("ephemeral-storage", "10Gi")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(v.into())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn pod(resources: serde_json::Value, extra: serde_json::Value) -> Pod {
        let mut spec = json!({"containers": [{"name": "c", "image": "i", "resources": resources}]});
        spec.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": spec})).unwrap()
    }

    #[test]
    fn disk_pressure_refuses_every_pod_but_critical_ones() {
        let status = node(&[("Ready", "True"), ("DiskPressure", "True")], "2", "110");
        let burstable = pod(json!({"requests": {"cpu": "100m"}}), json!({}));
        let rejection = admit(&burstable, &[], &status).expect_err("refused");
        assert_eq!(
            rejection,
            Rejection { reason: "Evicted".into(), message: "The node had condition: [DiskPressure]. ".into() }
        );
        let critical = pod(json!({}), json!({"priority": 2_000_001_000}));
        assert_eq!(admit(&critical, &[], &status), Ok(()));
        let both = node(&[("MemoryPressure", "True"), ("DiskPressure", "True")], "2", "110");
        assert_eq!(
            admit(&burstable, &[], &both).expect_err("refused").message,
            "The node had condition: [MemoryPressure DiskPressure]. "
        );
    }

    #[test]
    fn memory_pressure_refuses_only_best_effort_pods_without_the_toleration() {
        let status = node(&[("MemoryPressure", "True"), ("DiskPressure", "False")], "2", "110");
        let best_effort = pod(json!({}), json!({}));
        assert_eq!(admit(&best_effort, &[], &status).expect_err("refused").reason, "Evicted");
        let burstable = pod(json!({"requests": {"memory": "10Mi"}}), json!({}));
        assert_eq!(admit(&burstable, &[], &status), Ok(()));
        let tolerating = pod(
            json!({}),
            json!({"tolerations": [{"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert_eq!(admit(&tolerating, &[], &status), Ok(()));
    }

    #[test]
    fn resources_are_counted_against_the_pods_already_admitted() {
        let status = node(&[("Ready", "True")], "2", "3");
        let one_cpu = pod(json!({"requests": {"cpu": "1"}}), json!({}));
        let big = pod(json!({"requests": {"cpu": "1500m"}}), json!({}));
        assert_eq!(
            admit(&big, &[&one_cpu], &status),
            Err(Rejection {
                reason: "OutOfcpu".into(),
                message: "Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000".into(),
            })
        );
        assert_eq!(admit(&one_cpu, &[&one_cpu], &status), Ok(()));
        let full = admit(&one_cpu, &[&one_cpu, &one_cpu, &one_cpu], &status).expect_err("refused");
        assert_eq!(full.reason, "OutOfpods");
        assert_eq!(full.message, "Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3");
        let gpu = pod(json!({"requests": {"example.com/gpu": "1"}, "limits": {"example.com/gpu": "1"}}), json!({}));
        assert_eq!(admit(&gpu, &[], &status).expect_err("refused").reason, "OutOfexample.com/gpu");
    }
}

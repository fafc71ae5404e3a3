//! Upstream's `TriggerTimeTracker` (`pkg/controller/util/endpoint`): the time of the earliest
//! change that a sync of a service's endpoints is about to publish, for the
//! `endpoints.kubernetes.io/last-change-trigger-time` annotation (the input of the network
//! programming latency SLI).
//!
//! A pod's trigger time is the last transition of its Ready condition, a service's its creation.
//! A sync reports the earliest of those that moved since the previous sync of the service; the
//! first sync of a service reports the service's creation.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::Timestamp;

#[derive(Default, Clone)]
struct ServiceState {
    service_trigger: Option<Timestamp>,
    pod_triggers: HashMap<String, Timestamp>,
}

/// The tracker of one controller, keyed by service `namespace/name`.
#[derive(Default)]
pub struct TriggerTimeTracker {
    services: Mutex<HashMap<String, ServiceState>>,
}

fn pod_trigger_time(pod: &Pod) -> Option<Timestamp> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == "Ready")?.last_transition_time.as_ref().map(|t| t.0)
}

impl TriggerTimeTracker {
    /// The trigger time of this sync of `svc` over `pods`; `None` when nothing moved.
    pub fn compute(&self, key: &str, svc: &Service, pods: &[&Pod]) -> Option<Timestamp> {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let known = services.contains_key(key);
        let state = services.entry(key.to_string()).or_default();
        let mut min_changed: Option<Timestamp> = None;
        let mut pod_triggers = HashMap::new();
        for pod in pods {
            let (Some(t), Some(name)) = (pod_trigger_time(pod), pod.metadata.name.as_ref()) else { continue };
            pod_triggers.insert(name.clone(), t);
            if state.pod_triggers.get(name).is_none_or(|last| t > *last) {
                min_changed = Some(min_changed.map_or(t, |m| m.min(t)));
            }
        }
        let service_trigger = svc.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if let Some(t) = service_trigger
            && state.service_trigger.is_none_or(|last| t > last)
        {
            min_changed = Some(min_changed.map_or(t, |m| m.min(t)));
        }
        *state = ServiceState { service_trigger, pod_triggers };
        if !known {
            return service_trigger;
        }
        min_changed
    }

    /// Forgets a deleted service.
    pub fn delete(&self, key: &str) {
        self.services.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ready_at: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": ready_at}]}}))
        .unwrap()
    }

    #[test]
    fn reports_the_earliest_change_since_the_last_sync() {
        let svc: Service =
            serde_json::from_value(json!({"metadata": {"name": "s", "creationTimestamp": "2026-01-01T00:00:00Z"}}))
                .unwrap();
        let t = TriggerTimeTracker::default();
        let a = pod("a", "2026-01-01T00:00:10Z");
        assert_eq!(t.compute("ns/s", &svc, &[&a]).unwrap().to_string(), "2026-01-01T00:00:00Z");
        assert_eq!(t.compute("ns/s", &svc, &[&a]), None, "nothing moved");
        let b = pod("b", "2026-01-01T00:00:30Z");
        let a2 = pod("a", "2026-01-01T00:00:20Z");
        assert_eq!(t.compute("ns/s", &svc, &[&a2, &b]).unwrap().to_string(), "2026-01-01T00:00:20Z");
    }
}

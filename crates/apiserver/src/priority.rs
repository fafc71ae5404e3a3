//! Pod priority (upstream's `plugin/pkg/admission/priority` and the scheduling API's built-in
//! classes): every new pod gets `spec.priority` and `spec.preemptionPolicy` from its
//! `priorityClassName`, or from the class marked `globalDefault`, or 0; at most one class is
//! the global default; the two system classes exist from the start.

use std::sync::Arc;

use serde_json::{Value, json};
use tug_api::ApiError;
use tug_api::status::Subject;

use crate::admission_cache::Cached;
use crate::server::ApiServer;

/// The built-in classes upstream's apiserver creates on start (name, value, description).
pub const SYSTEM_PRIORITY_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

const DEFAULT_PREEMPTION_POLICY: &str = "PreemptLowerPriority";

fn pods() -> Subject<'static> {
    Subject { group: "", resource: "pods", kind: "Pod" }
}

fn priority_classes() -> Subject<'static> {
    Subject { group: "scheduling.k8s.io", resource: "priorityclasses", kind: "PriorityClass" }
}

impl ApiServer {
    /// Creates the system priority classes that are missing.
    pub(crate) async fn ensure_system_priority_classes(&self) -> Result<(), ApiError> {
        for (name, value, description) in SYSTEM_PRIORITY_CLASSES {
            let class = json!({
                "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": name}, "value": value, "description": description,
                "preemptionPolicy": DEFAULT_PREEMPTION_POLICY,
            });
            self.ensure_object("scheduling.k8s.io", "v1", "priorityclasses", class, false).await?;
        }
        Ok(())
    }

    async fn priority_classes(&self) -> Result<Vec<Arc<Cached>>, ApiError> {
        let registry = self.registry();
        let rt = registry.lookup("scheduling.k8s.io", "v1", "priorityclasses").expect("priority classes are served");
        let prefix = rt.prefix(None);
        if let Some(cached) = self.admission_caches.priority_classes.list(&prefix).await {
            return Ok(cached);
        }
        let listed = self
            .store
            .list(&prefix, tug_store::ListOptions::default())
            .await
            .map_err(|e| crate::objects::store_error(rt, "", e))?;
        listed
            .items
            .into_iter()
            .map(|kv| Ok(Arc::new(Cached { value: crate::codec::decode_stored(&kv)?, kv })))
            .collect()
    }

    /// Sets a new pod's priority and preemption policy from its class.
    pub(crate) async fn admit_pod_priority(&self, pod: &mut Value) -> Result<(), ApiError> {
        let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let class_name = pod.pointer("/spec/priorityClassName").and_then(Value::as_str).unwrap_or_default().to_string();
        let classes = self.priority_classes().await?;
        let mut classes = classes.iter().map(|c| &c.value);
        let class = if class_name.is_empty() {
            classes.find(|c| c["globalDefault"].as_bool() == Some(true))
        } else {
            let found = classes.find(|c| c.pointer("/metadata/name").and_then(Value::as_str) == Some(&class_name));
            if found.is_none() {
                return Err(ApiError::forbidden(
                    pods(),
                    &name,
                    format_args!("no PriorityClass with name {class_name} was found"),
                ));
            }
            found
        };
        let (priority, policy, default_name) = match class {
            Some(c) => (
                c["value"].as_i64().unwrap_or(0),
                c["preemptionPolicy"].as_str().unwrap_or(DEFAULT_PREEMPTION_POLICY).to_string(),
                c.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string(),
            ),
            None => (0, DEFAULT_PREEMPTION_POLICY.to_string(), String::new()),
        };
        let spec = pod
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("pod has no spec"))?;
        if let Some(given) = spec.get("priority").and_then(Value::as_i64)
            && given != priority
        {
            return Err(ApiError::forbidden(
                pods(),
                &name,
                format_args!(
                    "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name"
                ),
            ));
        }
        if let Some(given) = spec.get("preemptionPolicy").and_then(Value::as_str)
            && given != policy
        {
            return Err(ApiError::forbidden(
                pods(),
                &name,
                format_args!(
                    "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
                ),
            ));
        }
        spec.insert("priority".into(), json!(priority));
        spec.insert("preemptionPolicy".into(), json!(policy));
        if class_name.is_empty() && !default_name.is_empty() {
            spec.insert("priorityClassName".into(), json!(default_name));
        }
        Ok(())
    }

    /// At most one PriorityClass may be the global default.
    pub(crate) async fn admit_priority_class(&self, class: &Value) -> Result<(), ApiError> {
        if class["globalDefault"].as_bool() != Some(true) {
            return Ok(());
        }
        let name = class.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let classes = self.priority_classes().await?;
        let other = classes.iter().map(|c| &c.value).find(|c| {
            c["globalDefault"].as_bool() == Some(true)
                && c.pointer("/metadata/name").and_then(Value::as_str) != Some(name)
        });
        if let Some(other) = other {
            let other_name = other.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            return Err(ApiError::forbidden(
                priority_classes(),
                name,
                format_args!(
                    "PriorityClass {name} is marked as default and another default PriorityClass {other_name} already exists"
                ),
            ));
        }
        Ok(())
    }
}

//! Conversion between two served views of one stored object, as upstream converts between
//! versions through its internal type: autoscaling/v1 and v2 HorizontalPodAutoscalers, and
//! core/v1 and events.k8s.io/v1 Events.

use serde_json::{Map, Value, json};

use crate::status::ApiError;

/// Where autoscaling/v1 keeps the v2 fields it cannot express, as upstream does.
const HPA_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
const HPA_CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const HPA_CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
const HPA_BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// Converts `obj` to `to_api_version` (the object's own `kind` is kept).
pub fn convert(obj: Value, to_api_version: &str) -> Result<Value, ApiError> {
    let from = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    if from == to_api_version {
        return Ok(obj);
    }
    match (kind.as_str(), from.as_str(), to_api_version) {
        ("HorizontalPodAutoscaler", "autoscaling/v2", "autoscaling/v1") => Ok(hpa_v2_to_v1(obj)),
        ("HorizontalPodAutoscaler", "autoscaling/v1", "autoscaling/v2") => Ok(hpa_v1_to_v2(obj)),
        ("Event", "v1", "events.k8s.io/v1") => Ok(rename_event(obj, to_api_version, CORE_TO_EVENTS)),
        ("Event", "events.k8s.io/v1", "v1") => Ok(rename_event(obj, to_api_version, EVENTS_TO_CORE)),
        _ => Err(ApiError::internal(format!("no conversion of {kind} from {from} to {to_api_version}"))),
    }
}

fn annotations(obj: &mut Value) -> &mut Map<String, Value> {
    let meta = obj.as_object_mut().expect("object").entry("metadata").or_insert_with(|| json!({}));
    meta.as_object_mut()
        .expect("metadata is an object")
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("annotations are an object")
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource" && m["resource"]["name"] == "cpu" && m["resource"]["target"]["type"] == "Utilization"
}

fn hpa_v2_to_v1(mut obj: Value) -> Value {
    obj["apiVersion"] = json!("autoscaling/v1");
    let spec = obj["spec"].take();
    let status = obj["status"].take();
    let metrics: Vec<Value> = spec["metrics"].as_array().cloned().unwrap_or_default();
    let (cpu, others): (Vec<Value>, Vec<Value>) = metrics.into_iter().partition(is_cpu_utilization);
    let mut v1_spec = json!({
        "scaleTargetRef": spec["scaleTargetRef"],
        "maxReplicas": spec["maxReplicas"],
    });
    if !spec["minReplicas"].is_null() {
        v1_spec["minReplicas"] = spec["minReplicas"].clone();
    }
    if let Some(m) = cpu.first() {
        v1_spec["targetCPUUtilizationPercentage"] = m["resource"]["target"]["averageUtilization"].clone();
    }
    let mut extra = Vec::new();
    if !others.is_empty() {
        extra.push((HPA_METRICS_ANNOTATION, Value::Array(others)));
    }
    if !spec["behavior"].is_null() {
        extra.push((HPA_BEHAVIOR_ANNOTATION, spec["behavior"].clone()));
    }
    let mut v1_status = json!({});
    if !status.is_null() {
        for f in ["observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas"] {
            if !status[f].is_null() {
                v1_status[f] = status[f].clone();
            }
        }
        let current: Vec<Value> = status["currentMetrics"].as_array().cloned().unwrap_or_default();
        let (cpu_now, other_now): (Vec<Value>, Vec<Value>) =
            current.into_iter().partition(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu");
        if let Some(u) = cpu_now.first().map(|m| m["resource"]["current"]["averageUtilization"].clone())
            && !u.is_null()
        {
            v1_status["currentCPUUtilizationPercentage"] = u;
        }
        if !other_now.is_empty() {
            extra.push((HPA_CURRENT_METRICS_ANNOTATION, Value::Array(other_now)));
        }
        if let Some(c) = status["conditions"].as_array().filter(|c| !c.is_empty()) {
            extra.push((HPA_CONDITIONS_ANNOTATION, Value::Array(c.clone())));
        }
    }
    if !extra.is_empty() {
        let ann = annotations(&mut obj);
        for (k, v) in extra {
            ann.insert(k.into(), Value::String(v.to_string()));
        }
    }
    obj["spec"] = v1_spec;
    obj["status"] = v1_status;
    obj
}

fn hpa_v1_to_v2(mut obj: Value) -> Value {
    obj["apiVersion"] = json!("autoscaling/v2");
    let spec = obj["spec"].take();
    let status = obj["status"].take();
    let mut taken = Map::new();
    if let Some(ann) = obj.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        for k in
            [HPA_METRICS_ANNOTATION, HPA_CURRENT_METRICS_ANNOTATION, HPA_CONDITIONS_ANNOTATION, HPA_BEHAVIOR_ANNOTATION]
        {
            if let Some(Value::String(s)) = ann.remove(k)
                && let Ok(v) = serde_json::from_str::<Value>(&s)
            {
                taken.insert(k.into(), v);
            }
        }
        if ann.is_empty() {
            obj["metadata"].as_object_mut().map(|m| m.remove("annotations"));
        }
    }
    let mut metrics = Vec::new();
    if let Some(t) = spec["targetCPUUtilizationPercentage"].as_i64() {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": t}}}));
    }
    if let Some(Value::Array(more)) = taken.remove(HPA_METRICS_ANNOTATION) {
        metrics.extend(more);
    }
    let mut v2_spec = json!({"scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": spec["maxReplicas"]});
    if !spec["minReplicas"].is_null() {
        v2_spec["minReplicas"] = spec["minReplicas"].clone();
    }
    if !metrics.is_empty() {
        v2_spec["metrics"] = Value::Array(metrics);
    }
    if let Some(b) = taken.remove(HPA_BEHAVIOR_ANNOTATION) {
        v2_spec["behavior"] = b;
    }
    let mut v2_status = json!({"desiredReplicas": status["desiredReplicas"].as_i64().unwrap_or(0)});
    for f in ["observedGeneration", "lastScaleTime", "currentReplicas"] {
        if !status[f].is_null() {
            v2_status[f] = status[f].clone();
        }
    }
    let mut current = Vec::new();
    if let Some(u) = status["currentCPUUtilizationPercentage"].as_i64() {
        current.push(json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": u}}}));
    }
    if let Some(Value::Array(more)) = taken.remove(HPA_CURRENT_METRICS_ANNOTATION) {
        current.extend(more);
    }
    if !current.is_empty() {
        v2_status["currentMetrics"] = Value::Array(current);
    }
    if let Some(c) = taken.remove(HPA_CONDITIONS_ANNOTATION) {
        v2_status["conditions"] = c;
    }
    obj["spec"] = v2_spec;
    obj["status"] = v2_status;
    obj
}

/// Field renames between core/v1 Event and events.k8s.io/v1 Event.
const CORE_TO_EVENTS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];
const EVENTS_TO_CORE: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

fn rename_event(obj: Value, to: &str, renames: &[(&str, &str)]) -> Value {
    let Value::Object(map) = obj else { return obj };
    let mut out = Map::new();
    for (k, v) in map {
        let key = renames.iter().find(|(from, _)| *from == k).map_or(k.clone(), |(_, to)| to.to_string());
        out.insert(key, v);
    }
    out.insert("apiVersion".into(), json!(to));
    // core/v1 requires involvedObject; events.k8s.io requires eventTime-or-not; both keep
    // metadata, reason, type, action, related, series and reportingInstance unchanged.
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_cpu_target_round_trips_between_v1_and_v2() {
        let v1 = json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                     "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60},
            "status": {"currentReplicas": 2, "desiredReplicas": 3}
        });
        let v2 = convert(v1.clone(), "autoscaling/v2").unwrap();
        assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
        let back = convert(v2, "autoscaling/v1").unwrap();
        assert_eq!(back["spec"], v1["spec"]);
        assert_eq!(back["status"]["desiredReplicas"], 3);
    }

    #[test]
    fn v2_only_metrics_survive_a_trip_through_v1() {
        let v2 = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "w"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 3,
                     "metrics": [{"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}}]},
            "status": {"desiredReplicas": 1}
        });
        let v1 = convert(v2.clone(), "autoscaling/v1").unwrap();
        assert!(v1["metadata"]["annotations"][HPA_METRICS_ANNOTATION].is_string());
        let back = convert(v1, "autoscaling/v2").unwrap();
        assert_eq!(back["spec"]["metrics"], v2["spec"]["metrics"]);
        assert!(back["metadata"].get("annotations").is_none());
    }

    #[test]
    fn events_rename_fields_between_groups() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}, "involvedObject": {"kind": "Pod"}, "message": "hi"});
        let ev = convert(core, "events.k8s.io/v1").unwrap();
        assert_eq!(ev["regarding"]["kind"], "Pod");
        assert_eq!(ev["note"], "hi");
        assert_eq!(convert(ev, "v1").unwrap()["message"], "hi");
    }
}

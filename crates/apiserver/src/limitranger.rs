//! LimitRange admission (upstream's `plugin/pkg/admission/limitranger`) and the LimitRange
//! object's own defaulting and validation.
//!
//! A new pod's containers get the `default` limits and `defaultRequest` requests of every
//! Container item of the namespace's LimitRanges for resources they do not state, noted in the
//! `kubernetes.io/limit-ranger` annotation; then every Container and Pod item's min, max and
//! maxLimitRequestRatio are enforced, and PersistentVolumeClaim items' storage min and max on
//! new claims. Violations are 403 Forbidden, worded as upstream.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{LimitRange, LimitRangeItem, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Deserialize as _;
use serde_json::{Value, json};
use tug_api::field::{FieldError, FieldPath};
use tug_api::quantity::Exact;
use tug_api::quota::evaluator::pod_resources;
use tug_api::{ApiError, ResourceType};

use crate::codec;
use crate::objects::store_error;
use crate::server::ApiServer;

const ANNOTATION: &str = "kubernetes.io/limit-ranger";
const CONTAINER: &str = "Container";
const POD: &str = "Pod";
const CLAIM: &str = "PersistentVolumeClaim";

type Resources = BTreeMap<String, Exact>;

fn read(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
    list.map(tug_api::quota::from_api).unwrap_or_default()
}

impl ApiServer {
    async fn limit_ranges(&self, ns: &str) -> Result<Vec<LimitRange>, ApiError> {
        let registry = self.registry();
        let rt = registry.lookup("", "v1", "limitranges").expect("limit ranges are served");
        let prefix = rt.prefix(Some(ns));
        if let Some(cached) = self.admission_caches.limit_ranges.list(&prefix).await {
            return cached.iter().map(|c| LimitRange::deserialize(&c.value).map_err(ApiError::internal)).collect();
        }
        let listed = self.store.list(&prefix, Default::default()).await.map_err(|e| store_error(rt, "", e))?;
        listed
            .items
            .iter()
            .map(|kv| serde_json::from_value(codec::decode_stored(kv)?).map_err(ApiError::internal))
            .collect()
    }

    /// Applies the namespace's LimitRanges to a new pod or claim: defaults, then limits.
    pub(crate) async fn admit_limit_ranges(&self, rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
        let is_pod = rt.group.is_empty() && rt.plural == "pods";
        let is_claim = rt.group.is_empty() && rt.plural == "persistentvolumeclaims";
        if !is_pod && !is_claim {
            return Ok(());
        }
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
        let ranges = self.limit_ranges(&ns).await?;
        if ranges.is_empty() {
            return Ok(());
        }
        let mut errors = Vec::new();
        if is_pod {
            for range in &ranges {
                apply_pod_defaults(range, obj);
            }
            let pod: Pod = serde_json::from_value(obj.clone()).map_err(ApiError::internal)?;
            for range in &ranges {
                validate_pod(range, &pod, &mut errors);
            }
        } else {
            let claim: PersistentVolumeClaim = serde_json::from_value(obj.clone()).map_err(ApiError::internal)?;
            for range in &ranges {
                validate_claim(range, &claim, &mut errors);
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        Err(ApiError::forbidden(rt.subject(), name, aggregate(errors)))
    }
}

/// Upstream's aggregate error text: one message as is, several deduplicated in brackets.
fn aggregate(errors: Vec<String>) -> String {
    let mut seen = BTreeSet::new();
    let unique: Vec<String> = errors.into_iter().filter(|e| seen.insert(e.clone())).collect();
    match unique.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// The default limits and requests of a range's Container items; later items win.
fn container_defaults(range: &LimitRange) -> (Resources, Resources) {
    let mut limits = Resources::new();
    let mut requests = Resources::new();
    for item in range.spec.as_ref().map(|s| s.limits.as_slice()).unwrap_or_default() {
        if item.type_ == CONTAINER {
            requests.extend(read(item.default_request.as_ref()));
            limits.extend(read(item.default.as_ref()));
        }
    }
    (limits, requests)
}

/// Fills in missing container requests and limits from one range and annotates what was set
/// (upstream's `mergePodResourceRequirements`).
pub fn apply_pod_defaults(range: &LimitRange, pod: &mut Value) {
    let (limits, requests) = container_defaults(range);
    if limits.is_empty() && requests.is_empty() {
        return;
    }
    let mut notes = Vec::new();
    for (field, prefix) in [("containers", "container"), ("initContainers", "init container")] {
        let Some(containers) = pod.pointer_mut(&format!("/spec/{field}")).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let set_requests = merge(c, "requests", &requests);
            let set_limits = merge(c, "limits", &limits);
            if !set_requests.is_empty() {
                notes.push(format!("{} request for {prefix} {name}", set_requests.join(", ")));
            }
            if !set_limits.is_empty() {
                notes.push(format!("{} limit for {prefix} {name}", set_limits.join(", ")));
            }
        }
    }
    if notes.is_empty() {
        return;
    }
    if !pod["metadata"]["annotations"].is_object() {
        pod["metadata"]["annotations"] = json!({});
    }
    pod["metadata"]["annotations"][ANNOTATION] = json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
}

/// Sets the defaults a container lacks under `resources.<which>`; returns their names, sorted.
fn merge(container: &mut Value, which: &str, defaults: &Resources) -> Vec<String> {
    let mut set = Vec::new();
    if defaults.is_empty() {
        return set;
    }
    if !container["resources"].is_object() {
        container["resources"] = json!({});
    }
    if !container["resources"][which].is_object() {
        container["resources"][which] = json!({});
    }
    let list = &mut container["resources"][which];
    for (k, v) in defaults {
        if list.get(k).is_none() {
            list[k] = json!(v.to_string());
            set.push(k.clone());
        }
    }
    set
}

fn min_constraint(kind: &str, name: &str, enforced: Exact, req: Option<Exact>, lim: Option<Exact>) -> Option<String> {
    let Some(req) = req else {
        return Some(format!("minimum {name} usage per {kind} is {enforced}.  No request is specified"));
    };
    if req < enforced {
        return Some(format!("minimum {name} usage per {kind} is {enforced}, but request is {req}"));
    }
    match lim {
        Some(lim) if lim < enforced => {
            Some(format!("minimum {name} usage per {kind} is {enforced}, but limit is {lim}"))
        }
        _ => None,
    }
}

fn max_constraint(kind: &str, name: &str, enforced: Exact, req: Option<Exact>, lim: Option<Exact>) -> Option<String> {
    let Some(lim) = lim else {
        return Some(format!("maximum {name} usage per {kind} is {enforced}.  No limit is specified"));
    };
    if lim > enforced {
        return Some(format!("maximum {name} usage per {kind} is {enforced}, but limit is {lim}"));
    }
    match req {
        Some(req) if req > enforced => {
            Some(format!("maximum {name} usage per {kind} is {enforced}, but request is {req}"))
        }
        _ => None,
    }
}

fn ratio_constraint(kind: &str, name: &str, enforced: Exact, req: Option<Exact>, lim: Option<Exact>) -> Option<String> {
    let Some(req) = req.filter(|r| r.milli_value() != 0) else {
        return Some(format!(
            "{name} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"
        ));
    };
    let Some(lim) = lim.filter(|l| l.milli_value() != 0) else {
        return Some(format!(
            "{name} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"
        ));
    };
    #[allow(clippy::cast_precision_loss)] // ratios are compared as floats, as upstream does
    let observed = lim.milli_value() as f64 / req.milli_value() as f64;
    #[allow(clippy::cast_precision_loss)]
    let max = enforced.milli_value() as f64 / 1000.0;
    (observed > max).then(|| {
        format!("{name} max limit to request ratio per {kind} is {enforced}, but provided ratio is {observed:.6}")
    })
}

/// Enforces one item's min, max and ratio on a set of requests and limits.
fn enforce(item: &LimitRangeItem, requests: &Resources, limits: &Resources, errors: &mut Vec<String>) {
    let kind = item.type_.as_str();
    for (k, v) in read(item.min.as_ref()) {
        errors.extend(min_constraint(kind, &k, v, requests.get(&k).copied(), limits.get(&k).copied()));
    }
    for (k, v) in read(item.max.as_ref()) {
        errors.extend(max_constraint(kind, &k, v, requests.get(&k).copied(), limits.get(&k).copied()));
    }
    for (k, v) in read(item.max_limit_request_ratio.as_ref()) {
        errors.extend(ratio_constraint(kind, &k, v, requests.get(&k).copied(), limits.get(&k).copied()));
    }
}

/// Upstream's `PodValidateLimitFunc`: Container items per container, Pod items on the pod's
/// effective requests and limits.
pub fn validate_pod(range: &LimitRange, pod: &Pod, errors: &mut Vec<String>) {
    let Some(spec) = pod.spec.as_ref() else { return };
    for item in range.spec.as_ref().map(|s| s.limits.as_slice()).unwrap_or_default() {
        if item.type_ == CONTAINER {
            for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
                let res = c.resources.as_ref();
                let requests = read(res.and_then(|r| r.requests.as_ref()));
                let limits = read(res.and_then(|r| r.limits.as_ref()));
                enforce(item, &requests, &limits, errors);
            }
        } else if item.type_ == POD {
            enforce(item, &pod_resources(pod, false), &pod_resources(pod, true), errors);
        }
    }
}

/// Upstream's `PersistentVolumeClaimValidateLimitFunc`: storage requests within min and max.
pub fn validate_claim(range: &LimitRange, claim: &PersistentVolumeClaim, errors: &mut Vec<String>) {
    let requests = read(claim.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref()));
    for item in range.spec.as_ref().map(|s| s.limits.as_slice()).unwrap_or_default() {
        if item.type_ != CLAIM {
            continue;
        }
        for (k, v) in read(item.min.as_ref()) {
            errors.extend(min_constraint(CLAIM, &k, v, requests.get(&k).copied(), None));
        }
        for (k, v) in read(item.max.as_ref()) {
            match requests.get(&k) {
                None => errors.push(format!("maximum {k} usage per {CLAIM} is {v}.  No request is specified")),
                Some(req) if *req > v => {
                    errors.push(format!("maximum {k} usage per {CLAIM} is {v}, but request is {req}"))
                }
                Some(_) => {}
            }
        }
    }
}

/// Upstream's LimitRange defaulting: a Container item's default limit falls back to its max,
/// its default request to the default limit, then to its min.
pub fn default_limit_range(obj: &mut Value) {
    let Some(items) = obj.pointer_mut("/spec/limits").and_then(Value::as_array_mut) else { return };
    for item in items {
        if item["type"].as_str() != Some(CONTAINER) {
            continue;
        }
        for (from, to) in [("max", "default"), ("default", "defaultRequest"), ("min", "defaultRequest")] {
            let Some(src) = item.get(from).and_then(Value::as_object).cloned() else { continue };
            if !item[to].is_object() {
                item[to] = json!({});
            }
            for (k, v) in src {
                if item[to].get(&k).is_none() {
                    item[to][&k] = v;
                }
            }
        }
    }
}

/// Upstream's `ValidateLimitRange` ordering checks: min <= defaultRequest <= default <= max,
/// ratios at least 1 and within max/min, no defaults on Pod items, storage bounds on claims.
pub fn validate_limit_range(range: &LimitRange) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let items = range.spec.as_ref().map(|s| s.limits.as_slice()).unwrap_or_default();
    let base = FieldPath::new("spec").key("limits");
    let q = |v: &Exact| Value::String(v.to_string());
    for (i, item) in items.iter().enumerate() {
        let path = base.index(i);
        let min = read(item.min.as_ref());
        let max = read(item.max.as_ref());
        let default = read(item.default.as_ref());
        let default_request = read(item.default_request.as_ref());
        let ratio = read(item.max_limit_request_ratio.as_ref());
        if item.type_ == POD {
            if !default.is_empty() {
                errs.push(FieldError::forbidden(&path.key("default"), "may not be specified when `type` is 'Pod'"));
            }
            if !default_request.is_empty() {
                errs.push(FieldError::forbidden(
                    &path.key("defaultRequest"),
                    "may not be specified when `type` is 'Pod'",
                ));
            }
        }
        if item.type_ == CLAIM && !min.contains_key("storage") && !max.contains_key("storage") {
            errs.push(FieldError::required(
                &path.key("limits"),
                "either minimum or maximum storage value is required, but neither was provided",
            ));
        }
        let keys: BTreeSet<&String> = min
            .keys()
            .chain(max.keys())
            .chain(default.keys())
            .chain(default_request.keys())
            .chain(ratio.keys())
            .collect();
        for k in keys {
            let (mn, mx, d, dr, r) = (min.get(k), max.get(k), default.get(k), default_request.get(k), ratio.get(k));
            if let (Some(mn), Some(mx)) = (mn, mx)
                && mn > mx
            {
                errs.push(FieldError::invalid(
                    &path.key("min").map_key(k),
                    q(mn),
                    &format!("min value {mn} is greater than max value {mx}"),
                ));
            }
            if let (Some(dr), Some(mn)) = (dr, mn)
                && mn > dr
            {
                errs.push(FieldError::invalid(
                    &path.key("defaultRequest").map_key(k),
                    q(dr),
                    &format!("min value {mn} is greater than default request value {dr}"),
                ));
            }
            if let (Some(dr), Some(mx)) = (dr, mx)
                && dr > mx
            {
                errs.push(FieldError::invalid(
                    &path.key("defaultRequest").map_key(k),
                    q(dr),
                    &format!("default request value {dr} is greater than max value {mx}"),
                ));
            }
            if let (Some(dr), Some(d)) = (dr, d)
                && dr > d
            {
                errs.push(FieldError::invalid(
                    &path.key("defaultRequest").map_key(k),
                    q(dr),
                    &format!("default request value {dr} is greater than default limit value {d}"),
                ));
            }
            if let (Some(d), Some(mn)) = (d, mn)
                && mn > d
            {
                errs.push(FieldError::invalid(
                    &path.key("default").map_key(k),
                    q(mn),
                    &format!("min value {mn} is greater than default value {d}"),
                ));
            }
            if let (Some(d), Some(mx)) = (d, mx)
                && d > mx
            {
                errs.push(FieldError::invalid(
                    &path.key("default").map_key(k),
                    q(mx),
                    &format!("default value {d} is greater than max value {mx}"),
                ));
            }
            if let Some(r) = r {
                if *r < Exact::from_int(1) {
                    errs.push(FieldError::invalid(
                        &path.key("maxLimitRequestRatio").map_key(k),
                        q(r),
                        &format!("ratio {r} is less than 1"),
                    ));
                }
                if let (Some(mn), Some(mx)) = (mn, mx)
                    && mn.milli_value() != 0
                {
                    #[allow(clippy::cast_precision_loss)] // as upstream, a float ratio
                    let limit = mx.milli_value() as f64 / mn.milli_value() as f64;
                    #[allow(clippy::cast_precision_loss)]
                    let value = r.milli_value() as f64 / 1000.0;
                    if value > limit {
                        errs.push(FieldError::invalid(
                            &path.key("maxLimitRequestRatio").map_key(k),
                            q(r),
                            &format!("ratio {r} is greater than max/min = {limit:.6}"),
                        ));
                    }
                }
            }
        }
    }
    errs
}

/// Defaults and validates a LimitRange being created or updated.
pub(crate) fn admit_limit_range(obj: &mut Value) -> Result<(), ApiError> {
    default_limit_range(obj);
    let range: LimitRange = serde_json::from_value(obj.clone()).map_err(ApiError::internal)?;
    let errs = validate_limit_range(&range);
    if errs.is_empty() {
        return Ok(());
    }
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    Err(ApiError::invalid("", "LimitRange", name, &errs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(items: Value) -> LimitRange {
        serde_json::from_value(json!({"metadata": {"name": "lr"}, "spec": {"limits": items}})).unwrap()
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    #[test]
    fn defaults_fill_missing_requests_and_limits_and_say_so() {
        let lr = range(json!([{"type": "Container", "default": {"cpu": "500m", "memory": "128Mi"},
            "defaultRequest": {"cpu": "100m", "memory": "64Mi"}}]));
        let mut p =
            pod(json!([{"name": "a"}, {"name": "b", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}}]));
        apply_pod_defaults(&lr, &mut p);
        assert_eq!(p.pointer("/spec/containers/0/resources/requests/cpu"), Some(&json!("100m")));
        assert_eq!(p.pointer("/spec/containers/0/resources/limits/memory"), Some(&json!("128Mi")));
        assert_eq!(p.pointer("/spec/containers/1/resources/limits/cpu"), Some(&json!("1")));
        assert_eq!(
            p.pointer("/metadata/annotations/kubernetes.io~1limit-ranger"),
            Some(&json!(
                "LimitRanger plugin set: cpu, memory request for container a; cpu, memory limit for container a; memory request for container b; memory limit for container b"
            ))
        );
    }

    #[test]
    fn container_max_min_and_ratio_are_enforced_with_upstream_wording() {
        let lr = range(json!([{"type": "Container", "max": {"cpu": "500m"}, "min": {"memory": "10Mi"},
            "maxLimitRequestRatio": {"cpu": "2"}}]));
        let p: Pod = serde_json::from_value(pod(json!([{"name": "a", "resources": {
            "limits": {"cpu": "1", "memory": "5Mi"}, "requests": {"cpu": "250m", "memory": "5Mi"}}}])))
        .unwrap();
        let mut errors = Vec::new();
        validate_pod(&lr, &p, &mut errors);
        assert_eq!(
            errors,
            vec![
                "minimum memory usage per Container is 10Mi, but request is 5Mi".to_string(),
                "maximum cpu usage per Container is 500m, but limit is 1".to_string(),
                "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000".to_string(),
            ]
        );
        assert_eq!(aggregate(vec!["a".into(), "a".into()]), "a");
        assert_eq!(aggregate(vec!["a".into(), "b".into()]), "[a, b]");
    }

    #[test]
    fn pod_items_apply_to_the_sum_of_containers() {
        let lr = range(json!([{"type": "Pod", "max": {"memory": "100Mi"}}]));
        let p: Pod = serde_json::from_value(pod(json!([
            {"name": "a", "resources": {"limits": {"memory": "60Mi"}}},
            {"name": "b", "resources": {"limits": {"memory": "60Mi"}}}])))
        .unwrap();
        let mut errors = Vec::new();
        validate_pod(&lr, &p, &mut errors);
        assert_eq!(errors, vec!["maximum memory usage per Pod is 100Mi, but limit is 120Mi".to_string()]);
    }

    #[test]
    fn claims_must_request_storage_within_bounds() {
        let lr =
            range(json!([{"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "2Gi"}}]));
        let c: PersistentVolumeClaim = serde_json::from_value(
            json!({"metadata": {"name": "c"}, "spec": {"resources": {"requests": {"storage": "5Gi"}}}}),
        )
        .unwrap();
        let mut errors = Vec::new();
        validate_claim(&lr, &c, &mut errors);
        assert_eq!(
            errors,
            vec!["maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi".to_string()]
        );
    }

    #[test]
    fn limit_ranges_default_and_validate_their_ordering() {
        let mut obj =
            json!({"metadata": {"name": "lr"}, "spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}}]}});
        default_limit_range(&mut obj);
        assert_eq!(obj.pointer("/spec/limits/0/default/cpu"), Some(&json!("1")));
        assert_eq!(obj.pointer("/spec/limits/0/defaultRequest/cpu"), Some(&json!("1")));
        let bad = range(json!([{"type": "Container", "min": {"cpu": "200m"}, "default": {"cpu": "2"},
            "defaultRequest": {"cpu": "100m"}, "max": {"cpu": "1"}}]));
        let msgs: Vec<String> = validate_limit_range(&bad).iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            vec![
                "spec.limits[0].defaultRequest[cpu]: Invalid value: \"100m\": min value 200m is greater than default request value 100m".to_string(),
                "spec.limits[0].default[cpu]: Invalid value: \"1\": default value 2 is greater than max value 1".to_string(),
            ]
        );
        let pod_defaults = range(json!([{"type": "Pod", "default": {"cpu": "1"}}]));
        assert_eq!(
            validate_limit_range(&pod_defaults)[0].to_string(),
            "spec.limits[0].default: Forbidden: may not be specified when `type` is 'Pod'"
        );
    }
}

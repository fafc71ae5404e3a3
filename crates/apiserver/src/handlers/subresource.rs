//! Subresources: status, scale, pods' binding and eviction, namespaces' finalize, and the
//! node-agent subresources (log, exec, ...), which are served by the node agent.

use http::Response;
use serde_json::{Value, json};
use tug_api::field::{FieldError, FieldPath};
use tug_api::selector::LabelSelector;
use tug_api::{ApiError, ResourceType, custom, status};
use tug_store::StoreError;

use super::delete::{DeleteOptions, delete_object};
use super::write::{self, check_type};
use super::{Call, body_object};
use crate::codec;
use crate::objects::{Mutation, now_rfc3339, store_error};
use crate::request::Verb;
use crate::response::{self, Body};

pub(crate) async fn serve(call: &Call<'_>, sub: &str) -> Result<Response<Body>, ApiError> {
    if call.rt.namespaced && call.req.namespace.is_none() {
        return Err(ApiError::path_not_found());
    }
    let verb = call.req.verb;
    match (sub, verb) {
        ("status" | "approval", Verb::Get) => super::read::get(call).await,
        ("status" | "approval", Verb::Update) => write::update(call, Some("status")).await,
        ("status" | "approval", Verb::Patch) => write::patch(call, Some("status")).await,
        ("finalize", Verb::Update) => finalize(call).await,
        ("scale", Verb::Get | Verb::Update | Verb::Patch) => scale(call).await,
        ("binding", Verb::Create) => bind(call, None).await,
        ("eviction", Verb::Create) => evict(call).await,
        ("token", Verb::Create) => crate::serviceaccount::create_token(call).await,
        ("log" | "exec" | "attach" | "portforward" | "proxy", _) => node_agent_subresource(call, sub).await,
        _ => Err(ApiError::method_not_allowed(verb.as_str(), call.rt.subject())),
    }
}

/// The `autoscaling/v1 Scale` view of a workload, or of a custom resource through the paths
/// its definition names.
fn scale_of(rt: &ResourceType, obj: &Value) -> Result<Value, ApiError> {
    let (spec_replicas, status_replicas, selector) = match rt.ops.scale_paths() {
        Some(paths) => (
            custom::get_path(obj, &paths.spec_replicas).and_then(Value::as_i64).unwrap_or(0),
            custom::get_path(obj, &paths.status_replicas).and_then(Value::as_i64).unwrap_or(0),
            paths
                .label_selector
                .as_deref()
                .and_then(|p| custom::get_path(obj, p))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ),
        None => (
            obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0),
            obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            workload_selector(obj)?,
        ),
    };
    let meta = &obj["metadata"];
    let mut scale_meta = json!({});
    for f in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = meta.get(f) {
            scale_meta[f] = v.clone();
        }
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": spec_replicas},
        "status": {"replicas": status_replicas, "selector": selector},
    }))
}

/// A built-in workload's selector, serialized.
fn workload_selector(obj: &Value) -> Result<String, ApiError> {
    Ok(match obj.pointer("/spec/selector") {
        Some(Value::Object(m)) if m.contains_key("matchLabels") || m.contains_key("matchExpressions") => {
            let sel: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
                serde_json::from_value(Value::Object(m.clone())).map_err(ApiError::internal)?;
            LabelSelector::from_label_selector(&sel).map_err(ApiError::internal)?.to_string()
        }
        // ReplicationControllers select with a plain map.
        Some(Value::Object(m)) => {
            m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
        }
        _ => String::new(),
    })
}

async fn scale(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    if call.req.verb == Verb::Get {
        let (obj, _) = call.srv.read(call.rt, call.ns(), call.name()).await?;
        return Ok(response::json(200, &scale_of(call.rt, &obj)?));
    }
    let dry_run = call.query.dry_run()?;
    let patch = if call.req.verb == Verb::Patch { Some(write::parse_patch(call)?) } else { None };
    let body = if patch.is_none() { Some(body_object(call)?) } else { None };
    let manager = if patch.is_some() {
        write::manager(call, "PatchOptions", Some(false))?
    } else {
        write::manager(call, "UpdateOptions", None)?
    };
    let (out, _) = call
        .srv
        .update_object_as(call.rt, call.ns(), call.name(), Some("scale"), dry_run, Some(&manager), |current| {
            let current_scale = scale_of(call.rt, current)?;
            let desired = match (&patch, &body) {
                (Some((pt, doc)), _) => {
                    let scale_call_view = write::PatchKind::new(*pt, doc);
                    write::apply_patch_to(scale_call_view, &current_scale, None)?
                }
                (_, Some(b)) => b.clone(),
                _ => unreachable!("either a patch or a body"),
            };
            let replicas = desired.pointer("/spec/replicas");
            let replicas = match replicas {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_i64().ok_or_else(|| ApiError::bad_request("spec.replicas must be an integer"))?,
            };
            if replicas < 0 {
                return Err(ApiError::invalid(
                    "autoscaling",
                    "Scale",
                    call.name(),
                    &[FieldError::invalid(
                        &FieldPath::new("spec").key("replicas"),
                        json!(replicas),
                        "must be greater than or equal to 0",
                    )],
                ));
            }
            // The patched Scale carries the current resourceVersion; only one the client wrote
            // (in a body or in the patch itself) pins the write, so a patch meeting a concurrent
            // write is re-applied to the newer object instead of failing with a conflict.
            let written = match &patch {
                Some((_, doc)) => doc,
                None => &desired,
            };
            let pinned = written.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty());
            let mut next = current.clone();
            match call.rt.ops.scale_paths() {
                Some(paths) => custom::set_path(&mut next, &paths.spec_replicas, json!(replicas)),
                None => next["spec"]["replicas"] = json!(replicas),
            }
            match pinned {
                Some(rv) => next["metadata"]["resourceVersion"] = json!(rv),
                None => {
                    next["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
                }
            }
            Ok(Mutation::Write(next))
        })
        .await?;
    Ok(response::json(200, &scale_of(call.rt, &out)?))
}

/// Assigns a pod to a node (`pods/binding`, and the `bindings` resource).
pub(crate) async fn bind(call: &Call<'_>, pod_name: Option<&str>) -> Result<Response<Body>, ApiError> {
    let body = body_object(call)?;
    let name = pod_name.unwrap_or(call.name()).to_string();
    let node = body.pointer("/target/name").and_then(Value::as_str).filter(|n| !n.is_empty());
    let Some(node) = node else {
        return Err(ApiError::invalid(
            "",
            "Binding",
            &name,
            &[FieldError::required(&FieldPath::new("target").key("name"), "")],
        ));
    };
    let registry = call.srv.registry();
    let pods = registry.lookup("", "v1", "pods").expect("pods are served");
    let ns = call.req.namespace.as_deref();
    let key = pods.key(ns, &name);
    loop {
        let (mut pod, rev) = call.srv.read(pods, ns, &name).await?;
        if let Some(uid) = body.pointer("/metadata/uid").and_then(Value::as_str)
            && pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
        {
            return Err(ApiError::conflict(pods.subject(), &name, "Precondition failed: UID mismatch"));
        }
        if crate::objects::is_deleting(&pod) {
            return Err(ApiError::conflict(
                pods.subject(),
                &name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        if let Some(existing) = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                pods.subject(),
                &name,
                &format!("pod {name} is already assigned to node \"{existing}\""),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        let conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let mut conditions: Vec<Value> = conditions.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
        pod["status"]["conditions"] = Value::Array(conditions);
        if call.query.dry_run()? {
            break;
        }
        let bytes = codec::encode_for_storage(&pod)?;
        match call.srv.store.update(&key, bytes, rev).await {
            Ok(_) => break,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(store_error(pods, &name, e)),
        }
    }
    Ok(response::json(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// `pods/eviction`: a delete that respects PodDisruptionBudgets.
async fn evict(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let body = body_object(call)?;
    let pods = call.rt;
    let ns = call.ns();
    let name = call.name();
    let (pod, _) = call.srv.read(pods, ns, name).await?;
    let mut opts = DeleteOptions::default();
    if let Some(d) = body.get("deleteOptions").filter(|d| d.is_object()) {
        opts.grace_period = d.get("gracePeriodSeconds").and_then(Value::as_i64);
        opts.precondition_uid = d.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string);
        opts.precondition_rv = d.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string);
    }
    opts.dry_run = call.query.dry_run()?;
    // Pods that are not running or already terminating cannot be disrupted further: evict
    // them without a budget (upstream's `canIgnorePDB`).
    let running = pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running");
    if running && pod.pointer("/metadata/deletionTimestamp").is_none_or(Value::is_null) {
        check_disruption_budgets(call, &pod).await?;
    }
    delete_object(call.srv, pods, ns, name, &opts).await?;
    Ok(response::json(201, &status::success_status(pods.subject(), name, None)))
}

/// Upstream's `EvictionsRetry`: how often a budget is re-read after a conflicting write.
const EVICTION_RETRIES: usize = 5;
/// Upstream's `MaxDisruptedPodSize`.
const MAX_DISRUPTED_PODS: usize = 2000;

fn budget_error(cause: String) -> ApiError {
    ApiError {
        code: 429,
        reason: "TooManyRequests",
        message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
        details: Some(Box::new(status::Details {
            causes: vec![status::Cause { reason: "DisruptionBudget".into(), message: cause, field: None }],
            ..Default::default()
        })),
    }
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
        cs.iter().any(|c| c["type"].as_str() == Some("Ready") && c["status"].as_str() == Some("True"))
    })
}

/// The budgets in the pod's namespace whose selector matches it.
async fn matching_budgets(call: &Call<'_>, pod: &Value) -> Result<Vec<tug_store::KeyValue>, ApiError> {
    let registry = call.srv.registry();
    let pdbs = registry.lookup("policy", "v1", "poddisruptionbudgets").expect("pdbs are served");
    let list =
        call.srv.store.list(&pdbs.prefix(call.ns()), Default::default()).await.map_err(|e| store_error(pdbs, "", e))?;
    let labels = pod.pointer("/metadata/labels");
    let mut out = Vec::new();
    for kv in list.items {
        let pdb = codec::decode_stored(&kv)?;
        let Some(sel) = pdb.pointer("/spec/selector") else { continue };
        let Ok(sel) =
            serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>(sel.clone())
        else {
            continue;
        };
        let Ok(sel) = LabelSelector::from_label_selector(&sel) else { continue };
        if sel.matches_json(labels) {
            out.push(kv);
        }
    }
    Ok(out)
}

/// Upstream's eviction check: at most one budget; an unready pod may go without spending a
/// disruption when its budget's policy allows; otherwise a disruption is spent (decremented
/// and the pod recorded in `disruptedPods`) with a compare-and-swap, or the eviction is
/// refused with 429.
async fn check_disruption_budgets(call: &Call<'_>, pod: &Value) -> Result<(), ApiError> {
    let registry = call.srv.registry();
    let pdbs = registry.lookup("policy", "v1", "poddisruptionbudgets").expect("pdbs are served");
    let mut matching = matching_budgets(call, pod).await?;
    if matching.len() > 1 {
        return Err(ApiError::internal(
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
        ));
    }
    let Some(mut kv) = matching.pop() else { return Ok(()) };
    let pod_name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let dry_run = call.query.dry_run()?;
    for attempt in 0..EVICTION_RETRIES {
        if attempt > 0 {
            kv = match call.srv.store.get(&kv.key).await.map_err(|e| store_error(pdbs, "", e))? {
                Some(kv) => kv,
                None => return Ok(()),
            };
        }
        let pdb = codec::decode_stored(&kv)?;
        let pdb_name = pdb.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let int = |p: &str| pdb.pointer(p).and_then(Value::as_i64).unwrap_or(0);
        let (healthy, desired) = (int("/status/currentHealthy"), int("/status/desiredHealthy"));
        if !is_ready(pod) {
            if pdb.pointer("/spec/unhealthyPodEvictionPolicy").and_then(Value::as_str) == Some("AlwaysAllow") {
                return Ok(());
            }
            if healthy >= desired && desired > 0 {
                return Ok(());
            }
        }
        if int("/status/observedGeneration") < int("/metadata/generation") {
            return Err(budget_error(format!(
                "The disruption budget {pdb_name} is still being processed by the server."
            )));
        }
        let allowed = int("/status/disruptionsAllowed");
        if allowed < 0 {
            return Err(ApiError::forbidden(pdbs.subject(), &pdb_name, "pdb disruptions allowed is negative"));
        }
        let disrupted = pdb.pointer("/status/disruptedPods").and_then(Value::as_object).map_or(0, |m| m.len());
        if disrupted > MAX_DISRUPTED_PODS {
            return Err(ApiError::forbidden(
                pdbs.subject(),
                &pdb_name,
                "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
            ));
        }
        if allowed == 0 {
            return Err(budget_error(format!(
                "The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently"
            )));
        }
        if dry_run {
            return Ok(());
        }
        // Spend one disruption, as upstream does, so concurrent evictions cannot overspend.
        let mut next = pdb.clone();
        next["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if !next["status"]["disruptedPods"].is_object() {
            next["status"]["disruptedPods"] = json!({});
        }
        next["status"]["disruptedPods"][&pod_name] = json!(now_rfc3339());
        let bytes = codec::encode_for_storage(&next)?;
        match call.srv.store.update(&kv.key, bytes, kv.mod_revision).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(other) => return Err(store_error(pdbs, &pdb_name, other)),
        }
    }
    let name = kv.key.rsplit('/').next().unwrap_or_default().to_string();
    Err(ApiError::modified_conflict(pdbs.subject(), &name))
}

/// `namespaces/<name>/finalize`: only `spec.finalizers` change.
async fn finalize(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let mut body = body_object(call)?;
    check_type(call, &mut body)?;
    let finalizers = body.pointer("/spec/finalizers").cloned().unwrap_or(json!([]));
    let (out, _) = call
        .srv
        .update_object_as(
            call.rt,
            None,
            call.name(),
            Some("finalize"),
            call.query.dry_run()?,
            Some(&write::manager(call, "UpdateOptions", None)?),
            |current| {
                let mut next = current.clone();
                next["spec"]["finalizers"] = finalizers.clone();
                next["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
                Ok(Mutation::Write(next))
            },
        )
        .await?;
    Ok(call.object(200, &out))
}

/// Subresources the node agent serves. Until a node agent runs the pod, upstream answers these
/// with the errors below.
async fn node_agent_subresource(call: &Call<'_>, sub: &str) -> Result<Response<Body>, ApiError> {
    let (obj, _) = call.srv.read(call.rt, call.ns(), call.name()).await?;
    if call.rt.kind == "Pod" && obj.pointer("/spec/nodeName").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(format!("pod {} does not have a host assigned", call.name())));
    }
    Err(ApiError::service_unavailable(format!(
        "the {sub} subresource needs a node agent connection, which this server does not have yet"
    )))
}

//! delete and deletecollection, with graceful deletion, finalizers, propagation policies and
//! preconditions as upstream's generic registry applies them.

use http::Response;
use serde_json::{Value, json};
use tug_api::custom::CLEANUP_FINALIZER;
use tug_api::{ApiError, ResourceType, status};
use tug_store::StoreError;

use super::Call;
use super::read::{Filter, list_page};
use crate::codec;
use crate::objects::{is_deleting, now_rfc3339, store_error};
use crate::response::{self, Body};
use crate::server::ApiServer;

const ORPHAN: &str = "orphan";
/// Kinds whose registry upstream builds with `ReturnDeletedObject: true`: a delete answers with
/// the object rather than a `Status` (the published OpenAPI's 200 responses say the same).
const RETURN_DELETED_OBJECT: [(&str, &str); 12] = [
    ("", "Pod"),
    ("", "PodTemplate"),
    ("", "PersistentVolume"),
    ("", "PersistentVolumeClaim"),
    ("", "ResourceQuota"),
    ("", "Service"),
    ("", "ServiceAccount"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("storage.k8s.io", "VolumeAttributesClass"),
];
/// Namespaces upstream's NamespaceLifecycle admission refuses to delete.
const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];
const FOREGROUND: &str = "foregroundDeletion";

fn is_crd(rt: &ResourceType) -> bool {
    rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition"
}

/// `DeleteOptions`, from the body and the query.
#[derive(Debug, Default, Clone)]
pub(crate) struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
    /// `orphanDependents: false` was given: the one case upstream answers a pending deletion
    /// with 202 Accepted rather than 200.
    pub orphan_dependents_false: bool,
}

impl DeleteOptions {
    pub fn from_call(call: &Call<'_>) -> Result<DeleteOptions, ApiError> {
        let mut o = DeleteOptions { dry_run: call.query.dry_run()?, ..Default::default() };
        if !call.body.is_empty() {
            let body = codec::decode_body(call.content_type.as_deref(), &call.body)?;
            if !body.is_object() {
                return Err(ApiError::bad_request("DeleteOptions must be a JSON object"));
            }
            if let Some(kind) = body.get("kind").and_then(Value::as_str)
                && kind != "DeleteOptions"
            {
                return Err(ApiError::bad_request(format!("expected DeleteOptions, got {kind}")));
            }
            o.grace_period = body.get("gracePeriodSeconds").and_then(Value::as_i64);
            o.propagation = body.get("propagationPolicy").and_then(Value::as_str).map(str::to_string);
            o.orphan_dependents_false = body.get("orphanDependents").and_then(Value::as_bool) == Some(false);
            if body.get("orphanDependents").and_then(Value::as_bool) == Some(true) && o.propagation.is_none() {
                o.propagation = Some("Orphan".into());
            }
            o.precondition_uid = body.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string);
            o.precondition_rv =
                body.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string);
            if let Some(d) = body.get("dryRun").and_then(Value::as_array) {
                for v in d {
                    match v.as_str() {
                        Some("All") => o.dry_run = true,
                        other => return Err(ApiError::bad_request(format!("Invalid dry run value: {other:?}"))),
                    }
                }
            }
        }
        if let Some(g) = call.query.int("gracePeriodSeconds")? {
            o.grace_period = Some(g);
        }
        if let Some(p) = call.query.get("propagationPolicy").filter(|p| !p.is_empty()) {
            o.propagation = Some(p.to_string());
        }
        if call.query.get("orphanDependents") == Some("false") {
            o.orphan_dependents_false = true;
        }
        if call.query.flag("orphanDependents") && o.propagation.is_none() {
            o.propagation = Some("Orphan".into());
        }
        if let Some(p) = &o.propagation
            && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
        {
            return Err(ApiError::invalid(
                "",
                "DeleteOptions",
                "",
                &[tug_api::field::FieldError::not_supported(
                    &tug_api::field::FieldPath::new("propagationPolicy"),
                    json!(p),
                    &["Foreground", "Background", "Orphan", "nil"],
                )],
            ));
        }
        if let Some(g) = o.grace_period
            && g < 0
        {
            o.grace_period = Some(0);
        }
        Ok(o)
    }
}

/// What a delete did: removed the object, or marked it for a deletion that completes later.
pub(crate) enum Deleted {
    Now(Value),
    Pending(Value),
}

pub(crate) async fn delete(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let opts = DeleteOptions::from_call(call)?;
    // NamespaceLifecycle: the namespaces the cluster itself needs stay.
    if call.rt.group.is_empty() && call.rt.kind == "Namespace" && IMMORTAL_NAMESPACES.contains(&call.name()) {
        return Err(ApiError::forbidden(call.rt.subject(), call.name(), "this namespace may not be deleted"));
    }
    match delete_object(call.srv, call.rt, call.ns(), call.name(), &opts).await? {
        Deleted::Pending(obj) => Ok(call.object(if opts.orphan_dependents_false { 202 } else { 200 }, &obj)),
        Deleted::Now(obj) if RETURN_DELETED_OBJECT.contains(&(&*call.rt.group, &*call.rt.kind)) => {
            Ok(call.object(200, &obj))
        }
        Deleted::Now(obj) => {
            let uid = obj.pointer("/metadata/uid").and_then(Value::as_str);
            Ok(response::json(200, &status::success_status(call.rt.subject(), call.name(), uid)))
        }
    }
}

/// The grace period a pod gets: the request's, else its spec's; none for a pod that never
/// reached a node or has finished, as upstream's pod strategy decides.
fn grace_period(rt: &ResourceType, obj: &Value, opts: &DeleteOptions) -> i64 {
    if rt.kind != "Pod" || !rt.group.is_empty() {
        return 0;
    }
    let scheduled = obj.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
    let finished = matches!(obj.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
    if !scheduled || finished {
        return 0;
    }
    opts.grace_period
        .or_else(|| obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
        .unwrap_or(30)
}

fn finalizers_for(obj: &Value, opts: &DeleteOptions) -> Vec<Value> {
    let mut f: Vec<Value> = obj.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
    match opts.propagation.as_deref() {
        Some("Orphan") => {
            f.retain(|x| x != FOREGROUND);
            if !f.iter().any(|x| x == ORPHAN) {
                f.push(json!(ORPHAN));
            }
        }
        Some("Foreground") => {
            f.retain(|x| x != ORPHAN);
            if !f.iter().any(|x| x == FOREGROUND) {
                f.push(json!(FOREGROUND));
            }
        }
        Some("Background") => f.retain(|x| x != ORPHAN && x != FOREGROUND),
        _ => {}
    }
    f
}

/// Deletes one object with upstream's semantics; shared by delete, deletecollection and
/// eviction.
pub(crate) async fn delete_object(
    srv: &ApiServer,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    let key = rt.key(ns, name);
    loop {
        let (current, rev) = srv.read(rt, ns, name).await?;
        if let Some(uid) = &opts.precondition_uid
            && current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str())
        {
            return Err(ApiError::conflict(
                rt.subject(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    current.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("")
                ),
            ));
        }
        if let Some(want) = &opts.precondition_rv
            && want != &rev.to_string()
        {
            return Err(ApiError::conflict(
                rt.subject(),
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in meta: {rev}"
                ),
            ));
        }
        let grace = grace_period(rt, &current, opts);
        let mut finalizers = finalizers_for(&current, opts);
        // A CustomResourceDefinition stays until its custom resources are gone (upstream adds
        // this finalizer on the first delete, and the CRD controller removes it).
        let crd_cleanup = is_crd(rt) && !is_deleting(&current);
        if crd_cleanup && !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
            finalizers.push(json!(CLEANUP_FINALIZER));
        }
        // Namespaces wait for their contents to go: `spec.finalizers` hold them.
        let ns_finalizers = rt.kind == "Namespace"
            && current.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
        if grace > 0 || !finalizers.is_empty() || ns_finalizers {
            let mut next = current.clone();
            let already = is_deleting(&current);
            if !already || grace > 0 {
                let shorter = current
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .is_none_or(|g| grace < g);
                if !already || shorter {
                    let when = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
                    let when = jiff::Timestamp::from_second(when.as_second()).unwrap_or(when);
                    next["metadata"]["deletionTimestamp"] = json!(when.to_string());
                    next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                }
            }
            if !finalizers.is_empty() {
                next["metadata"]["finalizers"] = Value::Array(finalizers);
            }
            if ns_finalizers {
                next["status"]["phase"] = json!("Terminating");
            }
            if crd_cleanup {
                if !next["status"].is_object() {
                    next["status"] = json!({});
                }
                crate::crd::set_condition(
                    &mut next["status"],
                    json!({
                        "type": "Terminating",
                        "status": "True",
                        "lastTransitionTime": now_rfc3339(),
                        "reason": "InstanceDeletionPending",
                        "message": "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon",
                    }),
                );
            }
            if next == current || opts.dry_run {
                return Ok(Deleted::Pending(next));
            }
            let bytes = srv.storage_bytes(rt, &next)?;
            match srv.store.update(&key, bytes, rev).await {
                Ok(new_rev) => {
                    codec::set_resource_version(&mut next, new_rev);
                    return Ok(Deleted::Pending(next));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(rt, name, e)),
            }
        }
        if opts.dry_run {
            return Ok(Deleted::Now(current));
        }
        match srv.store.delete(&key, Some(rev)).await {
            Ok(_) => {
                srv.after_delete(rt, &current).await;
                let mut gone = current;
                if gone.pointer("/metadata/deletionTimestamp").is_none() {
                    gone["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                    gone["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                }
                return Ok(Deleted::Now(gone));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => return Err(ApiError::not_found(rt.subject(), name)),
            Err(e) => return Err(store_error(rt, name, e)),
        }
    }
}

pub(crate) async fn delete_collection(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let opts = DeleteOptions::from_call(call)?;
    let filter = Filter::from_call(call)?;
    let prefix = call.rt.prefix(call.ns());
    let page = list_page(call, &prefix, &filter).await?;
    let mut items = Vec::new();
    for kv in &page.items {
        let obj = codec::decode_stored(kv)?;
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
        match delete_object(call.srv, call.rt, ns.as_deref(), &name, &opts).await {
            Ok(Deleted::Now(o) | Deleted::Pending(o)) => items.push(o),
            // Deleted meanwhile by someone else: nothing left to do.
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(response::json(
        200,
        &json!({"kind": call.rt.list_kind, "apiVersion": call.rt.api_version(), "metadata": {}, "items": items}),
    ))
}

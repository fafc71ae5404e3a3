//! Server-side apply: `PATCH` with `Content-Type: application/apply-patch+yaml`.
//!
//! The body is the manager's whole intent for the object (YAML or JSON). If the object exists,
//! [`tug_api::apply::FieldManager::apply`] merges it into the stored object in the
//! optimistic-concurrency loop, and the result is admitted like any update; if it does not, the
//! configuration applied to nothing is created through the normal create path (defaults,
//! admission, allocation), as upstream's patch handler creates on apply.

use http::Response;
use serde_json::Value;
use tug_api::ApiError;

use super::Call;
use super::write::{check_namespace, field_validation};
use crate::codec;
use crate::objects::{Mutation, now_rfc3339, take_managed_fields};
use crate::response::Body;

/// The media type of apply patches.
const APPLY_PATCH: &str = "application/apply-patch+yaml";

pub(crate) fn is_apply_patch(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| c.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(APPLY_PATCH))
}

/// `group/version, Kind=kind`, as upstream prints a GroupVersionKind.
fn gvk_string(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    format!("{group}/{version}, Kind={kind}")
}

/// The applied configuration: a YAML (or JSON, which is YAML) object of the endpoint's kind,
/// naming the object of the URL.
fn configuration(call: &Call<'_>) -> Result<Value, ApiError> {
    if call.body.is_empty() {
        return Err(ApiError::bad_request("the body of the request was empty"));
    }
    let config = codec::decode_yaml(&call.body)?;
    if !config.is_object() {
        return Err(ApiError::bad_request("error decoding YAML: the applied configuration must be an object"));
    }
    let text = |p: &str| config.pointer(p).and_then(Value::as_str).unwrap_or("");
    if text("/apiVersion") != call.rt.api_version() || text("/kind") != call.rt.kind {
        return Err(ApiError::bad_request(format!(
            "invalid object type: {}",
            gvk_string(text("/apiVersion"), text("/kind"))
        )));
    }
    if text("/metadata/name") != call.name() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            text("/metadata/name"),
            call.name()
        )));
    }
    if let Some(ns) = call.ns()
        && !text("/metadata/namespace").is_empty()
        && text("/metadata/namespace") != ns
    {
        return Err(ApiError::bad_request(format!(
            "the namespace of the object ({}) does not match the namespace on the request ({ns})",
            text("/metadata/namespace")
        )));
    }
    Ok(config)
}

/// Whether an error is the NotFound of the object itself (rather than, say, of its namespace).
fn object_not_found(call: &Call<'_>, e: &ApiError) -> bool {
    e.code == 404
        && e.details.as_ref().is_some_and(|d| d.name.as_deref() == Some(call.name()) && d.kind == call.rt.plural)
}

pub(crate) async fn apply(call: &Call<'_>, subresource: Option<&str>) -> Result<Response<Body>, ApiError> {
    let dry_run = call.query.dry_run()?;
    field_validation(call)?;
    let manager = call.query.get("fieldManager").unwrap_or_default().to_owned();
    let force = match call.query.get("force") {
        None | Some("" | "false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid value {other:?} for query parameter force: must be a boolean"
            )));
        }
    };
    let config = configuration(call)?;
    let now = now_rfc3339();
    // Created between our read and our create, or deleted between them: try again.
    for _ in 0..5 {
        let updated = call
            .srv
            .update_object_as(call.rt, call.ns(), call.name(), subresource, dry_run, Some(&manager), |current| {
                let mut applied = call.srv.with_field_manager(call.rt, subresource, |fm| {
                    fm.apply(Some(current), &config, &manager, force, &now)
                })?;
                // Only a resourceVersion in the configuration is a precondition; without
                // one, a concurrent write makes the apply start over.
                if config.pointer("/metadata/resourceVersion").is_none() {
                    applied["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
                }
                Ok(Mutation::Applied(applied))
            })
            .await;
        match updated {
            Ok((out, _)) => return Ok(call.object(200, &out)),
            Err(e) if subresource.is_none() && object_not_found(call, &e) => {}
            Err(e) => return Err(e),
        }
        match create(call, &config, &manager, force, &now, dry_run).await {
            Err(e) if e.reason == "AlreadyExists" => continue,
            other => return other,
        }
    }
    Err(ApiError::modified_conflict(call.rt.subject(), call.name()))
}

/// Creates the object the configuration describes, with the applier as its only manager.
async fn create(
    call: &Call<'_>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let mut obj = call.srv.with_field_manager(call.rt, None, |fm| fm.apply(None, config, manager, force, now))?;
    if let Some(uid) = obj.pointer("/metadata/uid").and_then(Value::as_str).filter(|u| !u.is_empty()) {
        return Err(ApiError::conflict(
            call.rt.subject(),
            call.name(),
            &format!("uid mismatch: the provided object specified uid {uid}, and no existing object was found"),
        ));
    }
    if obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
    }
    check_namespace(call, &mut obj)?;
    let managed = take_managed_fields(&mut obj);
    let mut admitted = call.srv.admit_new(call.rt, obj)?;
    if let (Some(meta), Some(m)) = (admitted.object.get_mut("metadata").and_then(Value::as_object_mut), managed) {
        meta.insert("managedFields".into(), m);
    }
    let created = call.srv.store_new(call.rt, admitted.object, dry_run).await?;
    Ok(call.object(201, &created))
}

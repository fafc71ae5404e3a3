//! create, update and patch.

use http::Response;
use serde_json::{Value, json};
use tug_api::{ApiError, patch};

use super::{Call, apply, body_object};
use crate::managed_fields::{validate_options, write_manager};
use crate::objects::{Mutation, take_managed_fields};
use crate::response::{self, Body};

/// The characters upstream's `generateName` suffix is drawn from (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix() -> String {
    let u = uuid::Uuid::new_v4();
    u.as_bytes()[..5].iter().map(|b| NAME_ALPHABET[*b as usize % NAME_ALPHABET.len()] as char).collect()
}

/// How unknown fields are treated (`?fieldValidation=`), upstream's default being `Warn`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

pub(crate) fn field_validation(call: &Call<'_>) -> Result<FieldValidation, ApiError> {
    match call.query.get("fieldValidation") {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation {other} is invalid, valid values are: Ignore, Warn, Strict"
        ))),
    }
}

/// Applies the field validation policy to fields the typed decode dropped.
fn unknown_fields(call: &Call<'_>, fields: &[String]) -> Result<Vec<String>, ApiError> {
    if fields.is_empty() {
        return Ok(Vec::new());
    }
    match field_validation(call)? {
        FieldValidation::Ignore => Ok(Vec::new()),
        FieldValidation::Warn => Ok(fields.iter().map(|f| format!("unknown field \"{f}\"")).collect()),
        FieldValidation::Strict => {
            let list: Vec<String> = fields.iter().map(|f| format!("unknown field \"{f}\"")).collect();
            Err(ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                list.join(", "),
                kind = call.rt.kind,
                version = call.rt.version
            )))
        }
    }
}

/// The unknown fields of a submitted object under the request's field validation policy:
/// warnings to send, or a `BadRequest` under `Strict`.
fn strict_check(call: &Call<'_>, obj: &Value) -> Result<Vec<String>, ApiError> {
    match call.rt.ops.normalize(obj.clone()) {
        Ok(typed) => {
            unknown_fields(call, &tug_api::kinds::unknown_fields(obj, &typed, call.rt.ops.write_only_fields()))
        }
        // Decoding errors are reported by admission with their field path.
        Err(_) => Ok(Vec::new()),
    }
}

/// Checks `apiVersion` and `kind` of a submitted object against the URL, filling them in when
/// absent as upstream's decoder defaults them from the endpoint.
pub(crate) fn check_type(call: &Call<'_>, obj: &mut Value) -> Result<(), ApiError> {
    let expected_version = call.rt.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = json!(expected_version),
        Some(v) if v == expected_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected_version})"
            )));
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = json!(call.rt.kind),
        Some(k) if k == call.rt.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                call.rt.kind
            )));
        }
    }
    match obj.get("metadata") {
        None | Some(Value::Null) => obj["metadata"] = json!({}),
        Some(Value::Object(_)) => {}
        Some(_) => return Err(ApiError::bad_request("metadata must be a JSON object")),
    }
    Ok(())
}

/// Makes sure the object's namespace matches the request's.
pub(crate) fn check_namespace(call: &Call<'_>, obj: &mut Value) -> Result<(), ApiError> {
    let Some(ns) = call.ns() else {
        if call.rt.namespaced {
            return Err(ApiError::path_not_found());
        }
        obj["metadata"].as_object_mut().map(|m| m.remove("namespace"));
        return Ok(());
    };
    match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        None | Some("") => obj["metadata"]["namespace"] = json!(ns),
        Some(n) if n == ns => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    Ok(())
}

/// The field manager a non-apply write is recorded as, after validating `?fieldManager=`.
pub(crate) fn manager(call: &Call<'_>, options_kind: &str, patch: Option<bool>) -> Result<String, ApiError> {
    let field_manager = call.query.get("fieldManager");
    validate_options(options_kind, field_manager, patch, call.query.get("force").is_some())?;
    Ok(write_manager(field_manager, call.user_agent.as_deref()))
}

pub(crate) async fn create(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let dry_run = call.query.dry_run()?;
    let manager = manager(call, "CreateOptions", None)?;
    let mut obj = body_object(call)?;
    check_type(call, &mut obj)?;
    check_namespace(call, &mut obj)?;
    if obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
    }
    let generated = obj.pointer("/metadata/name").and_then(Value::as_str).is_none_or(str::is_empty);
    let prefix = obj.pointer("/metadata/generateName").and_then(Value::as_str).unwrap_or("").to_string();
    if !generated || prefix.is_empty() {
        return create_one(call, obj, dry_run, &manager).await;
    }
    // Generated names may collide; upstream retries a few times before giving up.
    let mut last_err = None;
    for _ in 0..8 {
        let mut candidate = obj.clone();
        candidate["metadata"]["name"] = json!(format!("{prefix}{}", random_suffix()));
        match create_one(call, candidate, dry_run, &manager).await {
            Err(e) if e.reason == "AlreadyExists" => last_err = Some(e),
            other => return other,
        }
    }
    Err(last_err.unwrap_or_else(|| ApiError::internal("name generation failed")))
}

async fn create_one(call: &Call<'_>, mut obj: Value, dry_run: bool, manager: &str) -> Result<Response<Body>, ApiError> {
    let requested = take_managed_fields(&mut obj);
    if call.rt.group == "certificates.k8s.io" && call.rt.kind == "CertificateSigningRequest" {
        // As upstream's CSR strategy: the requester is who created it, never what the body
        // claims; the approver decides on it.
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("username".into(), json!(call.user.name));
            spec.insert("groups".into(), json!(call.user.groups));
            spec.remove("extra");
            match &call.user.uid {
                Some(uid) => spec.insert("uid".into(), json!(uid)),
                None => spec.remove("uid"),
            };
        }
    }
    let mut admitted = call.srv.admit_new(call.rt, obj)?;
    let warnings = unknown_fields(call, &admitted.unknown_fields)?;
    call.srv.track_write(call.rt, None, None, requested.as_ref(), &mut admitted.object, manager)?;
    let created = call.srv.store_new(call.rt, admitted.object, dry_run).await?;
    Ok(response::with_warnings(call.object(201, &created), &warnings))
}

pub(crate) async fn update(call: &Call<'_>, subresource: Option<&str>) -> Result<Response<Body>, ApiError> {
    let dry_run = call.query.dry_run()?;
    let manager = manager(call, "UpdateOptions", None)?;
    let mut obj = body_object(call)?;
    check_type(call, &mut obj)?;
    check_namespace(call, &mut obj)?;
    let warnings = strict_check(call, &obj)?;
    let (out, _) = call
        .srv
        .update_object_as(call.rt, call.ns(), call.name(), subresource, dry_run, Some(&manager), |_| {
            Ok(Mutation::Write(obj.clone()))
        })
        .await?;
    Ok(response::with_warnings(call.object(200, &out), &warnings))
}

/// The patch formats, by content type.
#[derive(Clone, Copy)]
pub(crate) enum PatchType {
    Json,
    Merge,
    Strategic,
}

fn patch_type(content_type: Option<&str>) -> Result<PatchType, ApiError> {
    let media = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase()).unwrap_or_default();
    match media.as_str() {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        other => Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"
            ),
            details: None,
        }),
    }
}

/// Applies a patch document to the current object of this call's resource.
fn apply_patch(call: &Call<'_>, kind: PatchKind<'_>, current: &Value) -> Result<Value, ApiError> {
    let schema_name = call.rt.ops.schema_name();
    apply_patch_to(kind, current, Some((call.srv.schemas(), schema_name.as_str())))
}

/// Applies a patch document to `current`. Strategic merge patches need the type's schema for
/// their merge keys; without one they merge as JSON merge patches, as upstream does for types
/// it has no struct for.
pub(crate) fn apply_patch_to(
    kind: PatchKind<'_>,
    current: &Value,
    strategic: Option<(&tug_api::schema::SchemaSet, &str)>,
) -> Result<Value, ApiError> {
    let PatchKind(pt, doc) = kind;
    let result = match (pt, strategic) {
        (PatchType::Json, _) => {
            patch::json::apply_json_patch(current, doc).map_err(|e| match e.upstream_status_code() {
                413 => ApiError::request_entity_too_large(patch::json::MAX_COPY_BYTES),
                422 => ApiError { code: 422, reason: "Invalid", message: e.to_string(), details: None },
                _ => ApiError::bad_request(e.to_string()),
            })?
        }
        (PatchType::Merge, _) | (PatchType::Strategic, None) => patch::merge::apply_merge_patch(current, doc),
        (PatchType::Strategic, Some((schema, name))) => {
            patch::strategic::apply_strategic_merge_patch(current, doc, schema, name)
                .map_err(|e| ApiError::bad_request(e.to_string()))?
        }
    };
    if !result.is_object() {
        return Err(ApiError::bad_request("the patched object must be a JSON object"));
    }
    Ok(result)
}

/// A patch document and its format.
pub(crate) struct PatchKind<'a>(PatchType, &'a Value);

impl<'a> PatchKind<'a> {
    pub fn new(pt: PatchType, doc: &'a Value) -> Self {
        PatchKind(pt, doc)
    }
}

pub(crate) fn parse_patch(call: &Call<'_>) -> Result<(PatchType, Value), ApiError> {
    let pt = patch_type(call.content_type.as_deref())?;
    if matches!(pt, PatchType::Strategic) && !call.rt.ops.accepts_strategic_merge_patch() {
        // Custom resources have no patch strategies: upstream does not offer this format.
        return Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
            details: None,
        });
    }
    if call.body.is_empty() {
        return Err(ApiError::bad_request("the body of the request was empty"));
    }
    let doc: Value = serde_json::from_slice(&call.body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: invalid JSON: {e}")))?;
    match (pt, &doc) {
        (PatchType::Json, Value::Array(_)) | (PatchType::Merge | PatchType::Strategic, Value::Object(_)) => {
            Ok((pt, doc))
        }
        (PatchType::Json, _) => Err(ApiError::bad_request("json patch must be a JSON array of operations")),
        _ => Err(ApiError::bad_request("patch must be a JSON object")),
    }
}

pub(crate) async fn patch(call: &Call<'_>, subresource: Option<&str>) -> Result<Response<Body>, ApiError> {
    if apply::is_apply_patch(call.content_type.as_deref()) {
        manager(call, "PatchOptions", Some(true))?;
        return apply::apply(call, subresource).await;
    }
    let dry_run = call.query.dry_run()?;
    let manager = manager(call, "PatchOptions", Some(false))?;
    let (pt, doc) = parse_patch(call)?;
    let mut warnings = Vec::new();
    let (out, _) = call
        .srv
        .update_object_as(call.rt, call.ns(), call.name(), subresource, dry_run, Some(&manager), |current| {
            let mut patched = apply_patch(call, PatchKind(pt, &doc), current)?;
            check_type(call, &mut patched)?;
            // A patch that does not mention resourceVersion must not pin the current one.
            if doc.pointer("/metadata/resourceVersion").is_none() {
                patched["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
            }
            warnings = strict_check(call, &patched)?;
            Ok(Mutation::Write(patched))
        })
        .await?;
    Ok(response::with_warnings(call.object(200, &out), &warnings))
}

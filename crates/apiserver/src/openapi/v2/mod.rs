//! OpenAPI v2: the Swagger 2.0 document of every served resource at `/openapi/v2`, as JSON or
//! as gnostic's `openapi.v2.Document` protobuf.
//!
//! kubectl up to 1.2x downloads the protobuf form before `apply`/`create` with the default
//! `--validate=strict` (and fails if it cannot), for `explain`, and to see whether PATCH accepts
//! `fieldValidation` (then the server validates). kubectl's parser (kube-openapi's
//! `pkg/util/proto`) rejects the whole document over a single reference to a missing
//! definition, an array without `items` or a schema with several types, so the document is
//! built to satisfy it: the same paths and operations as the v3 documents (converted by
//! [`convert`]), and every component schema of the server's [`tug_api::schema::SchemaSet`] as a
//! definition.
//!
//! The document is built on first request and kept with its protobuf encoding and an ETag
//! until the registry changes (custom resources come and go with their definitions).

mod convert;
mod encode;
mod fields;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Map, Value, json};
use tug_api::ApiError;

use crate::response::{self, Body};
use crate::server::ApiServer;

/// The protobuf media type kubectl asks for, and the one upstream answers with (Go's
/// `mime.ParseMediaType`, which client-go applies to every response, rejects the `@` form).
pub const PROTOBUF_CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
/// The older spelling of the protobuf media type, still accepted in `Accept`.
const PROTOBUF_AT_SUBTYPE: &str = "com.github.proto-openapi.spec.v2@v1.0+protobuf";
const PROTOBUF_SUBTYPE: &str = "com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The document in both encodings, as served.
#[derive(Debug)]
pub struct Served {
    pub json: Bytes,
    pub protobuf: Bytes,
    /// Quoted, as it goes into the `ETag` header; one for both encodings, as upstream (`Vary:
    /// Accept` tells caches apart).
    pub etag: String,
}

/// The served document and the registry generation it was built from.
pub type Cache = Mutex<Option<(u64, Arc<Served>)>>;

/// A custom resource's definition in v2 form. Upstream publishes only `type: object` for a
/// schema that preserves unknown fields at its root: kubectl's v2 validation would otherwise
/// reject every field the schema does not name.
fn custom_definition(v3: &Value) -> Value {
    if v3.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        let mut out = json!({"type": "object"});
        if let Some(gvk) = v3.get("x-kubernetes-group-version-kind") {
            out["x-kubernetes-group-version-kind"] = gvk.clone();
        }
        return out;
    }
    convert::schema(v3)
}

/// The Swagger 2.0 document of every resource `srv` serves.
pub fn document(srv: &ApiServer) -> Value {
    let registry = srv.registry();
    // Sorted by path, as upstream's document is.
    let mut paths: BTreeMap<String, Value> = BTreeMap::new();
    for g in registry.groups() {
        for version in &g.versions {
            let Ok(v3) = super::group_version(srv, &registry, g.group, version) else {
                continue;
            };
            for (path, item) in v3.get("paths").and_then(Value::as_object).into_iter().flatten() {
                paths.insert(path.clone(), convert::path_item(item));
            }
        }
    }
    let mut definitions: BTreeMap<String, Value> = match srv.schemas().to_components_json() {
        Value::Object(defs) => defs.into_iter().map(|(name, def)| (name, convert::schema(&def))).collect(),
        _ => BTreeMap::new(),
    };
    for rt in registry.all().filter(|rt| rt.custom) {
        for (name, def) in rt.ops.own_definitions() {
            definitions.insert(name, custom_definition(&def));
        }
    }
    let definitions: Map<String, Value> = definitions.into_iter().collect();
    json!({
        "swagger": "2.0",
        "info": {
            "title": "Kubernetes",
            "version": format!("v{}.{}.0", crate::discovery::KUBE_MAJOR, crate::discovery::KUBE_MINOR),
        },
        "paths": paths,
        "definitions": definitions,
    })
}

/// The protobuf encoding (gnostic's `openapi.v2.Document`) of a Swagger 2.0 document.
pub fn to_protobuf(doc: &Value) -> Vec<u8> {
    encode::document(doc)
}

fn build(srv: &ApiServer) -> Served {
    let doc = document(srv);
    let json = serde_json::to_vec(&doc).unwrap_or_default();
    let protobuf = to_protobuf(&doc);
    let digest = ring::digest::digest(&ring::digest::SHA512, &json);
    let etag = format!("\"{}\"", digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<String>());
    Served { json: json.into(), protobuf: protobuf.into(), etag }
}

/// The served document, built on first use after each registry change (off the async workers:
/// it takes a moment).
pub async fn served(srv: &ApiServer) -> Arc<Served> {
    let generation = srv.registry().generation();
    if let Some((built_from, served)) = srv.openapi_v2.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        && *built_from == generation
    {
        return served.clone();
    }
    let builder = srv.clone();
    let served = match tokio::task::spawn_blocking(move || Arc::new(build(&builder))).await {
        Ok(s) => s,
        // The build panicked on the blocking pool; the same panic would recur here.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    *srv.openapi_v2.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, served.clone()));
    served
}

/// Which encoding an `Accept` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Protobuf,
}

/// Upstream's negotiation: the clauses by decreasing quality, the first that matches JSON or
/// one of the two protobuf spellings wins; no `Accept` means `*/*`, which is JSON.
pub fn negotiate(accept: Option<&str>) -> Option<Format> {
    let header = accept.map(str::trim).filter(|h| !h.is_empty()).unwrap_or("*/*");
    let mut clauses: Vec<(f32, &str, &str)> = header
        .split(',')
        .filter_map(|clause| {
            let mut parts = clause.split(';').map(str::trim);
            let (ty, sub) = parts.next()?.split_once('/')?;
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim() == "q")
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            Some((q, ty.trim(), sub.trim()))
        })
        .filter(|(q, _, _)| *q > 0.0)
        .collect();
    // Stable: equal qualities keep the client's order.
    clauses.sort_by(|a, b| b.0.total_cmp(&a.0));
    let offered =
        [("json", Format::Json), (PROTOBUF_AT_SUBTYPE, Format::Protobuf), (PROTOBUF_SUBTYPE, Format::Protobuf)];
    clauses.iter().find_map(|(_, ty, sub)| {
        if !ty.eq_ignore_ascii_case("application") && *ty != "*" {
            return None;
        }
        offered.iter().find(|(s, _)| sub.eq_ignore_ascii_case(s) || *sub == "*").map(|(_, f)| *f)
    })
}

/// Whether an `If-None-Match` header names `etag`.
fn matches_etag(if_none_match: Option<&str>, etag: &str) -> bool {
    if_none_match.is_some_and(|h| {
        h.split(',').map(str::trim).any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
    })
}

/// `GET /openapi/v2`: the document in the encoding `accept` asks for; 304 when `if_none_match`
/// names the current one; 406 for any other media type.
pub async fn serve(
    srv: &ApiServer,
    accept: Option<&str>,
    if_none_match: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let Some(format) = negotiate(accept) else {
        return Err(ApiError {
            code: 406,
            reason: "NotAcceptable",
            message: format!(
                "only the following media types are accepted: application/json, {PROTOBUF_CONTENT_TYPE} (got {:?})",
                accept.unwrap_or_default()
            ),
            details: None,
        });
    };
    let served = served(srv).await;
    let (body, content_type) = match format {
        Format::Json => (served.json.clone(), "application/json"),
        Format::Protobuf => (served.protobuf.clone(), PROTOBUF_CONTENT_TYPE),
    };
    let not_modified = matches_etag(if_none_match, &served.etag);
    let mut resp = Response::new(response::full(if not_modified { Bytes::new() } else { body }));
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    if let Ok(etag) = HeaderValue::from_str(&served.etag) {
        headers.insert(header::ETAG, etag);
    }
    Ok(resp)
}

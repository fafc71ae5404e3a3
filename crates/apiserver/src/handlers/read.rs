//! get and list, with selectors, paging and the Table form.

use base64::Engine;
use bytes::{BufMut, BytesMut};
use http::Response;
use serde_json::{Value, json};
use tug_api::selector::{FieldSelector, LabelSelector};
use tug_api::{ApiError, ResourceType};
use tug_store::{KeyValue, ListOptions, Revision};

use super::Call;
use crate::codec::{self, Accept};
use crate::objects::store_error;
use crate::response::{self, Body};

pub(crate) async fn get(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let key = call.rt.key(call.ns(), call.name());
    let kv = call
        .srv
        .store
        .get(&key)
        .await
        .map_err(|e| store_error(call.rt, call.name(), e))?
        .ok_or_else(|| ApiError::not_found(call.rt.subject(), call.name()))?;
    if call.accept == Accept::Json && call.rt.storage_version {
        return Ok(response::json_bytes(200, codec::stored_to_wire(&kv.value, kv.mod_revision)));
    }
    let obj = call.srv.to_view(call.rt, codec::decode_stored(&kv)?)?;
    Ok(match call.accept {
        Accept::PartialMetadata => response::json(200, &partial_metadata(&obj)),
        _ => call.object(200, &obj),
    })
}

/// The selectors of a list or watch, parsed and checked against the kind's field labels.
pub(crate) struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    pub fn from_call(call: &Call<'_>) -> Result<Filter, ApiError> {
        let labels = match call.query.get("labelSelector") {
            None | Some("") => LabelSelector::everything(),
            Some(s) => LabelSelector::parse(s)
                .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
        };
        let fields = match call.query.get("fieldSelector") {
            None | Some("") => FieldSelector::everything(),
            Some(s) => FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?,
        };
        let supported = call.rt.ops.field_labels();
        for r in fields.requirements() {
            if !supported.contains(&r.field) {
                // Kinds with their own field labels answer as their conversion function does;
                // the others as upstream's default one.
                return Err(ApiError::bad_request(if supported.len() > 2 {
                    format!("field label not supported: {}", r.field)
                } else {
                    format!(
                        "\"{}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
                        r.field
                    )
                }));
            }
        }
        Ok(Filter { labels, fields })
    }

    pub fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// Whether an object stored under `key` may match: a `metadata.name=` term is decided by
    /// the key alone, whose last segment is the name, without decoding the object. (Informers
    /// of one object, such as the root CA publisher's of `kube-root-ca.crt`, watch a whole
    /// resource this way.)
    pub fn may_match_key(&self, key: &str) -> bool {
        self.fields.requires_exact_match("metadata.name").is_none_or(|name| key.rsplit('/').next() == Some(name))
    }

    /// Whether the filter reads nothing but labels, so that an object's metadata decides it.
    pub fn needs_only_labels(&self) -> bool {
        self.fields.is_empty()
    }

    /// Whether an object with this `metadata` passes a filter that needs only labels.
    pub fn matches_metadata(&self, metadata: &Value) -> bool {
        self.labels.matches_json(metadata.get("labels"))
    }

    pub fn matches(&self, rt: &ResourceType, obj: &Value) -> bool {
        self.labels.matches_json(obj.pointer("/metadata/labels")) && self.fields.matches(|f| rt.ops.field_label(obj, f))
    }
}

/// The continue token: where the next page starts and the revision the list is read at, in
/// upstream's shape (`{"v":"meta.k8s.io/v1","rv":N,"start":"..."}`, base64).
fn encode_continue(revision: Revision, next_key: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": next_key});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str, prefix: &str) -> Result<(Revision, String), ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|_| invalid())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| invalid())?;
    let (Some(rv), Some(start)) = (v["rv"].as_i64(), v["start"].as_str()) else { return Err(invalid()) };
    if v["v"] != "meta.k8s.io/v1" || !start.starts_with(prefix) || rv <= 0 {
        return Err(invalid());
    }
    Ok((rv, start.to_string()))
}

/// One page of a list: the matching stored objects, and where to continue.
pub(crate) struct Page {
    pub items: Vec<KeyValue>,
    pub revision: Revision,
    pub next: Option<String>,
    pub remaining: Option<usize>,
}

/// Reads up to `limit` matching objects under `prefix`, scanning further pages of the store
/// when the selectors filter some out, as upstream's paged list does.
pub(crate) async fn list_page(call: &Call<'_>, prefix: &str, filter: &Filter) -> Result<Page, ApiError> {
    let limit = match call.query.int("limit")? {
        Some(l) if l > 0 => l as usize,
        _ => 0,
    };
    let mut start_key = None;
    let mut revision = None;
    if let Some(token) = call.query.get("continue").filter(|t| !t.is_empty()) {
        let (rv, start) = decode_continue(token, prefix)?;
        revision = Some(rv);
        start_key = Some(start);
    } else if let Some(rv) = call.query.get("resourceVersion").filter(|rv| !rv.is_empty() && *rv != "0") {
        let rv = parse_resource_version(rv)?;
        match call.query.get("resourceVersionMatch") {
            Some("Exact") => revision = Some(rv),
            None | Some("") | Some("NotOlderThan") => {
                let current = call.srv.store.current_revision().await.map_err(|e| store_error(call.rt, "", e))?;
                if rv > current {
                    return Err(ApiError::timeout(format!("Too large resource version: {rv}, current: {current}")));
                }
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
        }
    }
    let mut items = Vec::new();
    loop {
        let want = if limit == 0 { 0 } else { limit - items.len() };
        let page = call
            .srv
            .store
            .list(prefix, ListOptions { limit: want, start_key: start_key.clone(), revision })
            .await
            .map_err(|e| match e {
                tug_store::StoreError::Compacted { .. } if call.query.get("continue").is_some() => ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ),
                other => store_error(call.rt, "", other),
            })?;
        revision = Some(page.revision);
        let last_key = page.items.last().map(|kv| kv.key.clone());
        for kv in page.items {
            if filter.is_everything() {
                items.push(kv);
            } else {
                let obj = call.srv.to_view(call.rt, codec::decode_stored(&kv)?)?;
                if filter.matches(call.rt, &obj) {
                    items.push(kv);
                }
            }
        }
        let full = limit != 0 && items.len() >= limit;
        match (page.more, last_key) {
            (true, Some(last)) if !full => start_key = Some(format!("{last}\0")),
            (true, Some(last)) => {
                let remaining = filter.is_everything().then_some(page.remaining);
                return Ok(Page { items, revision: page.revision, next: Some(format!("{last}\0")), remaining });
            }
            _ => return Ok(Page { items, revision: page.revision, next: None, remaining: None }),
        }
    }
}

pub(crate) async fn list(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let filter = Filter::from_call(call)?;
    let prefix = call.rt.prefix(call.ns());
    let page = list_page(call, &prefix, &filter).await?;
    let mut meta = json!({"resourceVersion": page.revision.to_string()});
    if let Some(next) = &page.next {
        meta["continue"] = json!(encode_continue(page.revision, next));
        if let Some(r) = page.remaining {
            meta["remainingItemCount"] = json!(r);
        }
    }
    if call.accept == Accept::Json && call.rt.storage_version {
        // Fast path: splice the stored bytes into the list without parsing them.
        let mut out = BytesMut::with_capacity(256 + page.items.iter().map(|kv| kv.value.len() + 32).sum::<usize>());
        out.put_slice(
            format!(
                "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
                call.rt.list_kind,
                call.rt.api_version(),
                meta
            )
            .as_bytes(),
        );
        for (i, kv) in page.items.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(&codec::stored_to_wire(&kv.value, kv.mod_revision));
        }
        out.put_slice(b"]}");
        return Ok(response::json_bytes(200, out.freeze()));
    }
    let mut objects = Vec::with_capacity(page.items.len());
    for kv in &page.items {
        objects.push(call.srv.to_view(call.rt, codec::decode_stored(kv)?)?);
    }
    Ok(match call.accept {
        Accept::Table => response::json(200, &table_of(call, &objects, meta)),
        Accept::PartialMetadata => response::json(
            200,
            &json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "items": objects.iter().map(partial_metadata).collect::<Vec<_>>(),
            }),
        ),
        Accept::Yaml => response::yaml(
            200,
            &json!({"kind": call.rt.list_kind, "apiVersion": call.rt.api_version(), "metadata": meta, "items": objects}),
        ),
        _ => response::json(
            200,
            &json!({"kind": call.rt.list_kind, "apiVersion": call.rt.api_version(), "metadata": meta, "items": objects}),
        ),
    })
}

pub(crate) fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

/// The Table form of some objects, with `includeObject` as the client asked.
pub(crate) fn table_of(call: &Call<'_>, objects: &[Value], list_meta: Value) -> Value {
    use tug_api::table::IncludeObject;
    let include = match call.query.get("includeObject") {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    };
    call.rt.ops.table(objects, &list_meta, include, jiff::Timestamp::now())
}

/// A `resourceVersion` parameter: a store revision, never negative.
pub(crate) fn parse_resource_version(rv: &str) -> Result<Revision, ApiError> {
    rv.parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

//! Bodies in and out: request decoding (JSON or YAML), the stored form of objects, and the
//! media types a client may ask for.
//!
//! Objects are stored as JSON without `metadata.resourceVersion`: the store revision that last
//! wrote them is their resourceVersion, inserted when they are read, as upstream's etcd3 storage
//! does. Because the server writes every stored object itself, with `apiVersion`, `kind` and then
//! `metadata` first, the resourceVersion can be spliced into the bytes without parsing them.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use tug_api::ApiError;
use tug_store::{KeyValue, Revision};

/// The largest request body accepted, as upstream's 3 MiB limit.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Decodes a request body by its content type.
pub fn decode_body(content_type: Option<&str>, body: &[u8]) -> Result<Value, ApiError> {
    let media = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    match media.as_deref() {
        None | Some("") | Some("application/json") | Some("*/*") => decode_json(body),
        Some("application/yaml") | Some("application/x-yaml") | Some("text/yaml") => decode_yaml(body),
        // kubectl 1.32+ sends built-in objects as protobuf; responses stay JSON, which it accepts.
        Some(ct) if tug_api::protobuf::is_protobuf_content_type(ct) => tug_api::protobuf::decode_request_body(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding protobuf request body: {e}"))),
        Some(other) => Err(ApiError::unsupported_media_type(other)),
    }
}

pub fn decode_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body: invalid JSON: {e}")))
}

pub fn decode_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value =
        serde_yaml::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    Ok(v)
}

/// The stored form: the object without its resourceVersion (nor selfLink), with `apiVersion`,
/// `kind` and `metadata` first (k8s-openapi serialises fields alphabetically, so a
/// ControllerRevision's `data`, which holds a template with its own metadata, would come
/// first): [`stored_to_wire`] then finds the object's metadata within a few bytes. Written
/// straight from `obj`, without copying it.
pub fn encode_for_storage(obj: &Value) -> Result<Bytes, ApiError> {
    serde_json::to_vec(&StoredForm(obj)).map(Bytes::from).map_err(ApiError::internal)
}

/// Serialises an object in its stored form (see [`encode_for_storage`]).
struct StoredForm<'a>(&'a Value);

/// Serialises a metadata map without the fields the store does not keep.
struct StoredMetadata<'a>(&'a serde_json::Map<String, Value>);

const LEADING_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];
const UNSTORED_METADATA: [&str; 2] = ["resourceVersion", "selfLink"];

impl serde::Serialize for StoredForm<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Value::Object(map) = self.0 else { return self.0.serialize(serializer) };
        let mut out = serializer.serialize_map(Some(map.len()))?;
        for key in LEADING_FIELDS {
            match map.get(key) {
                Some(Value::Object(meta)) if key == "metadata" => out.serialize_entry(key, &StoredMetadata(meta))?,
                Some(v) => out.serialize_entry(key, v)?,
                None => {}
            }
        }
        for (k, v) in map.iter().filter(|(k, _)| !LEADING_FIELDS.contains(&k.as_str())) {
            out.serialize_entry(k, v)?;
        }
        out.end()
    }
}

impl serde::Serialize for StoredMetadata<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut out = serializer.serialize_map(None)?;
        for (k, v) in self.0.iter().filter(|(k, _)| !UNSTORED_METADATA.contains(&k.as_str())) {
            out.serialize_entry(k, v)?;
        }
        out.end()
    }
}

/// A stored object's bytes with its resourceVersion set, as clients receive it.
pub fn stored_to_wire(value: &[u8], revision: Revision) -> Bytes {
    let Some(insert_at) = top_level_metadata(value) else {
        return Bytes::copy_from_slice(value);
    };
    splice_resource_version(value, insert_at, revision)
}

/// The `metadata` object of a stored object with its resourceVersion set, as a watch of
/// `PartialObjectMetadata` sends it, cut from the stored bytes without parsing the rest.
pub fn stored_metadata_to_wire(value: &[u8], revision: Revision) -> Option<Bytes> {
    let inside = top_level_metadata(value)?;
    let end = closing_brace(value, inside)?;
    Some(splice_resource_version(&value[inside - 1..=end], 1, revision))
}

/// `value` with `"resourceVersion":"<revision>"` inserted at `insert_at`, just inside the `{`
/// of a metadata object that has none.
fn splice_resource_version(value: &[u8], insert_at: usize, revision: Revision) -> Bytes {
    let mut out = BytesMut::with_capacity(value.len() + 32);
    out.put_slice(&value[..insert_at]);
    out.put_slice(b"\"resourceVersion\":\"");
    out.put_slice(revision.to_string().as_bytes());
    out.put_u8(b'"');
    if value.get(insert_at) != Some(&b'}') {
        out.put_u8(b',');
    }
    out.put_slice(&value[insert_at..]);
    out.freeze()
}

/// The position of the `}` that closes the object whose content starts at `inside` (just
/// after its `{`), skipping nested objects and strings.
fn closing_brace(value: &[u8], inside: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = inside;
    while i < value.len() {
        match value[i] {
            b'"' => {
                i += 1;
                while i < value.len() && value[i] != b'"' {
                    i += if value[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' => depth += 1,
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The position just inside the `{` that opens the top-level object's `metadata` value. Nested
/// objects (a template's metadata) and strings are skipped, whatever the key order.
fn top_level_metadata(value: &[u8]) -> Option<usize> {
    let skip_space = |mut i: usize| {
        while value.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut depth = 0usize;
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < value.len() && value[i] != b'"' {
                    i += if value[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 && value.get(start..=i) == Some(b"\"metadata\"") {
                    let colon = skip_space(i + 1);
                    if value.get(colon) == Some(&b':') {
                        let open = skip_space(colon + 1);
                        if value.get(open) == Some(&b'{') {
                            return Some(open + 1);
                        }
                    }
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// A stored object parsed, with its resourceVersion.
pub fn decode_stored(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not valid JSON: {e}", kv.key)))?;
    set_resource_version(&mut v, kv.mod_revision);
    Ok(v)
}

pub fn set_resource_version(obj: &mut Value, revision: Revision) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(revision.to_string()));
    }
}

/// What the client accepts, of the forms this server can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    Json,
    Yaml,
    /// `application/json;as=Table;v=v1;g=meta.k8s.io`
    Table,
    /// `application/json;as=APIGroupDiscoveryList;v=v2;g=apidiscovery.k8s.io`
    AggregatedDiscovery,
    /// `application/json;as=PartialObjectMetadata(List);v=v1;g=meta.k8s.io`
    PartialMetadata,
}

/// Picks the first acceptable media type of an `Accept` header, as upstream negotiates.
pub fn negotiate(accept: Option<&str>) -> Result<Accept, ApiError> {
    let Some(header) = accept.filter(|h| !h.trim().is_empty()) else { return Ok(Accept::Json) };
    for part in header.split(',') {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or("").to_ascii_lowercase();
        let mut as_ = None;
        let mut g = None;
        let mut v = None;
        for p in params {
            if let Some((k, val)) = p.split_once('=') {
                match k.trim() {
                    "as" => as_ = Some(val.trim().to_string()),
                    "g" => g = Some(val.trim().to_string()),
                    "v" => v = Some(val.trim().to_string()),
                    _ => {}
                }
            }
        }
        let json_like = matches!(media.as_str(), "application/json" | "*/*" | "application/*");
        match (media.as_str(), as_.as_deref(), g.as_deref(), v.as_deref()) {
            (_, Some("Table"), Some("meta.k8s.io"), Some("v1") | Some("v1beta1")) if json_like => {
                return Ok(Accept::Table);
            }
            (_, Some("APIGroupDiscoveryList"), Some("apidiscovery.k8s.io"), Some("v2")) if json_like => {
                return Ok(Accept::AggregatedDiscovery);
            }
            (_, Some("PartialObjectMetadata" | "PartialObjectMetadataList"), Some("meta.k8s.io"), Some("v1"))
                if json_like =>
            {
                return Ok(Accept::PartialMetadata);
            }
            (_, Some(_), _, _) => continue,
            ("application/yaml", None, _, _) => return Ok(Accept::Yaml),
            (_, None, _, _) if json_like => return Ok(Accept::Json),
            _ => continue,
        }
    }
    Err(ApiError::not_acceptable(header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_level_metadata_gets_the_resource_version_whatever_comes_first() {
        // As stored before objects were written metadata-first: a ControllerRevision's data
        // holds a template with metadata of its own, and a string may contain the key too.
        let stored = br#"{"apiVersion":"apps/v1","data":{"spec":{"template":{"metadata":{"labels":{}}}},"note":"\"metadata\":{"},"kind":"ControllerRevision","metadata" : {"name":"r"},"revision":1}"#;
        let v: Value = serde_json::from_slice(&stored_to_wire(stored, 9)).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "9");
        assert!(v["data"]["spec"]["template"]["metadata"].get("resourceVersion").is_none());
        assert!(stored_to_wire(br#"{"data":{"metadata":{}}}"#, 3).as_ref() == br#"{"data":{"metadata":{}}}"#);
    }

    #[test]
    fn objects_are_stored_with_their_metadata_first() {
        let obj = serde_json::json!({"apiVersion": "apps/v1", "data": {"x": 1}, "kind": "ControllerRevision", "metadata": {"name": "r", "resourceVersion": "5", "selfLink": "/x", "uid": "u"}, "revision": 1});
        let stored = encode_for_storage(&obj).unwrap();
        assert_eq!(
            std::str::from_utf8(&stored).unwrap(),
            r#"{"apiVersion":"apps/v1","kind":"ControllerRevision","metadata":{"name":"r","uid":"u"},"data":{"x":1},"revision":1}"#
        );
    }

    #[test]
    fn resource_version_is_spliced_into_stored_bytes() {
        let stored = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"},"data":{}}"#;
        let wire = stored_to_wire(stored, 42);
        let v: Value = serde_json::from_slice(&wire).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["name"], "a");
        let empty = stored_to_wire(br#"{"metadata":{}}"#, 7);
        assert_eq!(&empty[..], br#"{"metadata":{"resourceVersion":"7"}}"#);
    }

    #[test]
    fn a_stored_objects_metadata_is_cut_out_with_its_resource_version() {
        let stored = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","annotations":{"x":"}{\"}"},"labels":{}},"data":{"k":"}"}}"#;
        let metadata = stored_metadata_to_wire(stored, 42).unwrap();
        assert_eq!(
            std::str::from_utf8(&metadata).unwrap(),
            r#"{"resourceVersion":"42","name":"a","annotations":{"x":"}{\"}"},"labels":{}}"#
        );
        assert_eq!(&stored_metadata_to_wire(br#"{"metadata":{}}"#, 7).unwrap()[..], br#"{"resourceVersion":"7"}"#);
        assert!(stored_metadata_to_wire(br#"{"metadata":{"name":"a""#, 7).is_none(), "unterminated");
        assert!(stored_metadata_to_wire(br#"{"data":{}}"#, 7).is_none(), "no metadata");
    }

    #[test]
    fn kubectl_get_accept_header_negotiates_table() {
        let h = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(h)).unwrap(), Accept::Table);
        let d = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(Some(d)).unwrap(), Accept::AggregatedDiscovery);
        assert_eq!(negotiate(Some("application/vnd.kubernetes.protobuf, */*")).unwrap(), Accept::Json);
        assert_eq!(negotiate(Some("application/vnd.kubernetes.protobuf")).unwrap_err().code, 406);
    }

    #[test]
    fn malformed_json_and_yaml_are_bad_requests() {
        assert_eq!(decode_body(Some("application/json"), b"{").unwrap_err().code, 400);
        assert_eq!(decode_body(Some("application/yaml"), b"a: [").unwrap_err().code, 400);
        assert_eq!(decode_body(Some("text/plain"), b"x").unwrap_err().code, 415);
        assert_eq!(decode_body(Some("application/yaml"), b"a: 1").unwrap()["a"], 1);
    }
}

//! Upstream's protobuf envelope: the magic `k8s\0`, then a `runtime.Unknown` message.
//!
//! `runtime.Unknown` (k8s.io/apimachinery/pkg/runtime/generated.proto) is
//! `typeMeta = 1` (a `TypeMeta` of `apiVersion = 1`, `kind = 2`), `raw = 2` (the object's own
//! message, without type information), `contentEncoding = 3` and `contentType = 4`. Upstream's
//! decoder reads only the type and `raw`; so does this one.

use serde_json::{Map, Value};

use super::ProtobufError;
use super::decode::decode_object;
use super::table::Table;
use super::wire::{bytes_field, for_each_field, string_field};

/// The four bytes before every envelope: `k8s` and the encoding style, 0 (an `Unknown`).
pub(crate) const MAGIC: [u8; 4] = [0x6b, 0x38, 0x73, 0x00];

/// The parts of `runtime.Unknown` the decoder needs.
#[derive(Debug, Default, PartialEq, Eq)]
struct Unknown<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
}

impl<'a> Unknown<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, ProtobufError> {
        let mut unknown = Unknown::default();
        for_each_field("Unknown", data, |number, value| {
            match number {
                1 => {
                    let type_meta = bytes_field("typeMeta", value)?;
                    for_each_field("TypeMeta", type_meta, |number, value| {
                        match number {
                            1 => unknown.api_version = string_field("apiVersion", value)?,
                            2 => unknown.kind = string_field("kind", value)?,
                            _ => {}
                        }
                        Ok(())
                    })
                    .map_err(|e| e.within("typeMeta"))?;
                }
                2 => unknown.raw = bytes_field("raw", value)?,
                // contentEncoding and contentType: upstream's decoder ignores them too.
                _ => {}
            }
            Ok(())
        })?;
        Ok(unknown)
    }
}

/// Decodes a whole envelope into a JSON object with `kind` and `apiVersion` first, in the order
/// Go's `TypeMeta` writes them. `depth` counts the envelopes and messages this one is nested in
/// (a `RawExtension` may hold another envelope).
pub(crate) fn decode(table: &Table, body: &[u8], depth: usize) -> Result<Value, ProtobufError> {
    if body.is_empty() {
        return Err(ProtobufError::EmptyData);
    }
    let Some(data) = body.strip_prefix(&MAGIC) else {
        return Err(ProtobufError::MissingPrefix);
    };
    if data.is_empty() {
        return Err(ProtobufError::EmptyBody);
    }
    let unknown = Unknown::parse(data)?;
    if unknown.kind.is_empty() {
        return Err(ProtobufError::MissingKind { api_version: unknown.api_version });
    }
    if unknown.api_version.is_empty() {
        return Err(ProtobufError::MissingApiVersion { kind: unknown.kind });
    }
    let message = table.kind(&unknown.api_version, &unknown.kind).ok_or_else(|| ProtobufError::NotRegistered {
        api_version: unknown.api_version.clone(),
        kind: unknown.kind.clone(),
    })?;
    let fields = decode_object(table, message, unknown.raw, depth)?;
    let mut object = Map::with_capacity(fields.len() + 2);
    object.insert("kind".to_owned(), Value::String(unknown.kind));
    object.insert("apiVersion".to_owned(), Value::String(unknown.api_version));
    // A kind whose own fields include `kind` (ObjectReference) keeps its own value.
    object.extend(fields);
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protobuf::table::table;
    use crate::protobuf::tests::encoder::{Msg, envelope};

    #[test]
    fn unknown_reads_type_meta_and_raw_and_ignores_content_fields() {
        let data = Msg::new()
            .msg(1, Msg::new().string(1, "apps/v1").string(2, "Deployment"))
            .bytes(2, b"\x0a\x00")
            .string(3, "")
            .string(4, "")
            .into_bytes();
        let unknown = Unknown::parse(&data).unwrap();
        assert_eq!(unknown, Unknown { api_version: "apps/v1".into(), kind: "Deployment".into(), raw: b"\x0a\x00" });
    }

    #[test]
    fn empty_data_and_missing_prefix_and_empty_body_are_errors() {
        let t = table();
        assert_eq!(decode(t, b"", 0).unwrap_err().to_string(), "empty data");
        assert_eq!(
            decode(t, b"{\"kind\":\"ConfigMap\"}", 0).unwrap_err().to_string(),
            "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]"
        );
        assert_eq!(
            decode(t, b"k8s", 0).unwrap_err().to_string(),
            "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]"
        );
        assert_eq!(decode(t, &MAGIC, 0).unwrap_err().to_string(), "empty body");
    }

    #[test]
    fn missing_kind_or_api_version_is_reported_as_upstream_does() {
        let t = table();
        let no_kind = envelope("v1", "", Msg::new());
        assert_eq!(
            decode(t, &no_kind, 0).unwrap_err().to_string(),
            "Object 'Kind' is missing in 'runtime.TypeMeta{APIVersion:\"v1\", Kind:\"\"}'"
        );
        let no_version = envelope("", "ConfigMap", Msg::new());
        assert_eq!(
            decode(t, &no_version, 0).unwrap_err().to_string(),
            "Object 'apiVersion' is missing in 'runtime.TypeMeta{APIVersion:\"\", Kind:\"ConfigMap\"}'"
        );
    }

    #[test]
    fn unregistered_kind_is_reported_with_its_group_version() {
        let body = envelope("example.com/v1", "Widget", Msg::new());
        let err = decode(table(), &body, 0).unwrap_err();
        assert!(matches!(err, ProtobufError::NotRegistered { .. }));
        assert_eq!(err.to_string(), "no kind \"Widget\" is registered for version \"example.com/v1\"");
    }

    #[test]
    fn type_meta_of_the_wrong_wire_type_is_an_error() {
        let mut body = MAGIC.to_vec();
        body.extend(Msg::new().varint(1, 3).into_bytes());
        let err = decode(table(), &body, 0).unwrap_err();
        assert_eq!(err.to_string(), "proto: wrong wireType = 0 for field typeMeta at typeMeta");
    }

    #[test]
    fn kind_and_api_version_come_first() {
        let body = envelope("v1", "Namespace", Msg::new().msg(1, Msg::new().string(1, "team-a")));
        let value = decode(table(), &body, 0).unwrap();
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["kind", "apiVersion", "metadata"]);
    }
}

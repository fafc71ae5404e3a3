//! Reading the fields printers need from a JSON object.
//!
//! Upstream prints typed internal objects, where an absent field is the zero value: `""`, `0`,
//! `false`, an empty list. These readers give the same zero values for absent or null fields,
//! and keep the `Option` where upstream's field is a pointer and the printer tells nil apart.

use jiff::Timestamp;
use serde_json::Value;

use super::duration::human_duration;

/// The value at a JSON pointer (`/spec/replicas`), absent when missing or null.
pub(super) fn get<'a>(obj: &'a Value, pointer: &str) -> Option<&'a Value> {
    obj.pointer(pointer).filter(|v| !v.is_null())
}

pub(super) fn opt_text<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    get(obj, pointer).and_then(Value::as_str)
}

/// A string field, `""` when absent.
pub(super) fn text<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    opt_text(obj, pointer).unwrap_or("")
}

pub(super) fn opt_int(obj: &Value, pointer: &str) -> Option<i64> {
    get(obj, pointer).and_then(Value::as_i64)
}

/// An integer field, `0` when absent.
pub(super) fn int(obj: &Value, pointer: &str) -> i64 {
    opt_int(obj, pointer).unwrap_or(0)
}

pub(super) fn opt_flag(obj: &Value, pointer: &str) -> Option<bool> {
    get(obj, pointer).and_then(Value::as_bool)
}

/// A boolean field, `false` when absent.
pub(super) fn flag(obj: &Value, pointer: &str) -> bool {
    opt_flag(obj, pointer).unwrap_or(false)
}

/// A list field, empty when absent.
pub(super) fn list<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    get(obj, pointer).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// The number of entries of a list or map field (`len()` in Go), 0 when absent.
pub(super) fn count(obj: &Value, pointer: &str) -> i64 {
    let len = match get(obj, pointer) {
        Some(Value::Array(items)) => items.len(),
        Some(Value::Object(entries)) => entries.len(),
        _ => 0,
    };
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// Whether a field is present and not null (a non-nil pointer in Go).
pub(super) fn has(obj: &Value, pointer: &str) -> bool {
    get(obj, pointer).is_some()
}

/// `metadata.name`.
pub(super) fn name(obj: &Value) -> &str {
    text(obj, "/metadata/name")
}

/// A `metav1.Time` or `metav1.MicroTime` field; absent (Go's zero time) when missing or
/// unparseable.
pub(super) fn timestamp(obj: &Value, pointer: &str) -> Option<Timestamp> {
    opt_text(obj, pointer).and_then(|s| s.parse().ok())
}

/// Upstream's `translateTimestampSince`: how long ago, or `<unknown>` for the zero time.
pub(super) fn since(time: Option<Timestamp>, now: Timestamp) -> String {
    match time {
        Some(time) => human_duration(now.duration_since(time)),
        None => "<unknown>".into(),
    }
}

/// The AGE cell: the time since `metadata.creationTimestamp`.
pub(super) fn age(obj: &Value, now: Timestamp) -> String {
    since(timestamp(obj, "/metadata/creationTimestamp"), now)
}

/// Whether `metadata.deletionTimestamp` is set.
pub(super) fn deleting(obj: &Value) -> bool {
    has(obj, "/metadata/deletionTimestamp")
}

/// The status of the first condition of `kind` in a `conditions` list, as upstream's
/// `hasJobCondition`-style lookups do (later duplicates are ignored).
pub(super) fn condition_status<'a>(conditions: &'a [Value], kind: &str) -> Option<&'a str> {
    conditions.iter().find(|c| text(c, "/type") == kind).map(|c| text(c, "/status"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absent_and_null_fields_read_as_go_zero_values() {
        let obj = json!({"spec": {"replicas": null, "paused": true, "names": ["a"]}});
        assert_eq!(int(&obj, "/spec/replicas"), 0);
        assert_eq!(opt_int(&obj, "/spec/replicas"), None);
        assert_eq!(text(&obj, "/spec/missing"), "");
        assert!(flag(&obj, "/spec/paused"));
        assert_eq!(list(&obj, "/spec/names").len(), 1);
        assert_eq!(count(&obj, "/spec"), 3);
        assert!(!has(&obj, "/spec/replicas"));
    }

    #[test]
    fn ages_are_unknown_without_a_creation_timestamp() {
        let now: Timestamp = "2024-05-01T12:00:00Z".parse().unwrap();
        assert_eq!(age(&json!({"metadata": {}}), now), "<unknown>");
        let obj = json!({"metadata": {"creationTimestamp": "2024-05-01T11:56:58Z"}});
        assert_eq!(age(&obj, now), "3m2s");
        let micro = json!({"eventTime": "2024-05-01T11:59:59.500000Z"});
        assert_eq!(since(timestamp(&micro, "/eventTime"), now), "0s");
    }
}

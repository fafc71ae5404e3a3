//! JSON merge patch (RFC 7386): applying one, and computing one from two documents.
//!
//! Applying follows the RFC as upstream's server applies `application/merge-patch+json`
//! (evanphx/json-patch v4 `MergePatch`): objects merge member by member, a `null` member
//! deletes, anything else replaces. Where the patch puts a value somewhere the document has no
//! object to merge into (a new member, or over a non-object), upstream also drops the `null`
//! members of objects nested anywhere inside that value, arrays included; that is followed here
//! so that such documents come out the same.
//!
//! Upstream's server rejects a merge patch that is `null`, a string, a number or a boolean with
//! 400 "Invalid JSON Patch" before applying it; [`apply_merge_patch`] instead applies the RFC
//! (the patch replaces the document), so the server checks the patch's type itself.

use serde_json::{Map, Number, Value};

/// Applies `patch` to a copy of `doc`.
pub fn apply_merge_patch(doc: &Value, patch: &Value) -> Value {
    match (doc, patch) {
        (Value::Object(_), Value::Object(_)) => merge(doc.clone(), patch),
        // A top-level array patch is returned without its nested nulls, as upstream does.
        (_, Value::Object(_) | Value::Array(_)) => without_nulls(patch),
        _ => patch.clone(),
    }
}

/// Merges `patch` into `current`.
fn merge(current: Value, patch: &Value) -> Value {
    let Value::Object(mut members) = current else {
        return without_nulls(patch);
    };
    let Value::Object(patch_members) = patch else {
        return patch.clone();
    };
    for (key, patch_value) in patch_members {
        if patch_value.is_null() {
            // shift_remove keeps the remaining members in document order.
            members.shift_remove(key);
            continue;
        }
        let merged = match members.get_mut(key).map(Value::take) {
            None | Some(Value::Null) => without_nulls(patch_value),
            Some(existing) => merge(existing, patch_value),
        };
        members.insert(key.clone(), merged);
    }
    Value::Object(members)
}

/// `value` with every null object member removed, at any depth; null array elements stay.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(members) => Value::Object(
            members.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The merge patch that turns `original` into `modified`, as upstream's `CreateMergePatch`
/// computes it for two objects: changed and added members with their new values, removed
/// members as `null`, unchanged members left out, objects diffed recursively and everything
/// else (arrays included) replaced whole. Numbers compare by value (`1` equals `1.0`), as they
/// do once upstream decodes them. When either side is not an object the patch is `modified`
/// itself, which replaces the document.
pub fn create_merge_patch(original: &Value, modified: &Value) -> Value {
    match (original, modified) {
        (Value::Object(original), Value::Object(modified)) => Value::Object(diff(original, modified)),
        _ => modified.clone(),
    }
}

fn diff(original: &Map<String, Value>, modified: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for (key, new) in modified {
        match (original.get(key), new) {
            (Some(Value::Object(old)), Value::Object(new)) => {
                let nested = diff(old, new);
                if !nested.is_empty() {
                    patch.insert(key.clone(), Value::Object(nested));
                }
            }
            (Some(old), new) if equal(old, new) => {}
            _ => {
                patch.insert(key.clone(), new.clone());
            }
        }
    }
    for key in original.keys() {
        if !modified.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    patch
}

/// Deep equality in which numbers compare by value, not by representation.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => numbers_equal(a, b),
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(a, b)| equal(a, b)),
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

fn numbers_equal(a: &Number, b: &Number) -> bool {
    // Integers compare exactly, so that large ones that share a float are still different.
    if a.is_f64() || b.is_f64() { a.as_f64() == b.as_f64() } else { a == b }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386_appendix_a_examples_apply() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": "b", "b": "c"}), json!({"a": null}), json!({"b": "c"})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (json!({"a": {"b": "c"}}), json!({"a": {"b": "d", "c": null}}), json!({"a": {"b": "d"}})),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
        ];
        for (doc, patch, want) in cases {
            assert_eq!(apply_merge_patch(&doc, &patch), want, "{doc} + {patch}");
        }
    }

    #[test]
    fn merging_keeps_member_order_and_leaves_the_input_alone() {
        let doc = json!({"a": 1, "b": 2, "c": 3});
        let out = apply_merge_patch(&doc, &json!({"b": null, "a": 9, "d": 4}));
        assert_eq!(out.as_object().unwrap().keys().collect::<Vec<_>>(), ["a", "c", "d"]);
        assert_eq!(doc, json!({"a": 1, "b": 2, "c": 3}));
    }

    #[test]
    fn labels_merge_and_delete_like_kubectl_patch() {
        let doc = json!({"metadata": {"name": "web", "labels": {"app": "web", "tier": "fe"}}, "spec": {"replicas": 1}});
        let patch = json!({"metadata": {"labels": {"tier": null, "canary": "true"}}, "spec": {"replicas": 3}});
        assert_eq!(
            apply_merge_patch(&doc, &patch),
            json!({"metadata": {"name": "web", "labels": {"app": "web", "canary": "true"}}, "spec": {"replicas": 3}})
        );
    }

    #[test]
    fn nulls_nested_in_new_values_are_dropped_as_upstream_does() {
        let doc = json!({"keep": [1], "n": null});
        let patch =
            json!({"new": {"x": null, "list": [{"y": null, "z": 1}, null]}, "keep": [{"w": null}], "n": {"v": null}});
        assert_eq!(apply_merge_patch(&doc, &patch), json!({"keep": [{}], "n": {}, "new": {"list": [{"z": 1}, null]}}));
    }

    #[test]
    fn arrays_replacing_an_object_keep_their_nulls_as_upstream_does() {
        let doc = json!({"a": {"b": 1}});
        assert_eq!(apply_merge_patch(&doc, &json!({"a": [{"c": null}]})), json!({"a": [{"c": null}]}));
    }

    #[test]
    fn top_level_array_patches_lose_nested_nulls() {
        assert_eq!(apply_merge_patch(&json!({"a": 1}), &json!([{"b": null}, null])), json!([{}, null]));
    }

    #[test]
    fn created_patch_holds_changes_additions_and_removals() {
        let original = json!({"a": 1, "b": {"c": "x", "d": "y"}, "e": [1, 2], "f": true, "gone": "z"});
        let modified = json!({"a": 1, "b": {"c": "x", "d": "w"}, "e": [1, 2, 3], "f": true, "new": {"n": 1}});
        assert_eq!(
            create_merge_patch(&original, &modified),
            json!({"b": {"d": "w"}, "e": [1, 2, 3], "new": {"n": 1}, "gone": null})
        );
    }

    #[test]
    fn created_patch_is_empty_for_equal_documents() {
        let doc = json!({"a": {"b": [1, {"c": null}]}, "n": null, "x": 1});
        assert_eq!(create_merge_patch(&doc, &doc.clone()), json!({}));
        assert_eq!(create_merge_patch(&json!({"x": 1}), &json!({"x": 1.0})), json!({}));
        assert_eq!(create_merge_patch(&json!({"o": {}}), &json!({"o": {}})), json!({}));
    }

    #[test]
    fn created_patch_replaces_values_that_change_type() {
        assert_eq!(create_merge_patch(&json!({"a": {"b": 1}}), &json!({"a": [1]})), json!({"a": [1]}));
        assert_eq!(create_merge_patch(&json!({"a": "1"}), &json!({"a": 1})), json!({"a": 1}));
        assert_eq!(create_merge_patch(&json!({"a": null}), &json!({"a": {"b": 1}})), json!({"a": {"b": 1}}));
        assert_eq!(create_merge_patch(&json!({"a": 1}), &json!({"a": null})), json!({"a": null}));
    }

    #[test]
    fn created_patch_distinguishes_large_integers() {
        let original = json!({"n": 9_007_199_254_740_993_u64});
        let modified = json!({"n": 9_007_199_254_740_992_u64});
        assert_eq!(create_merge_patch(&original, &modified), modified);
    }

    #[test]
    fn created_patch_for_non_objects_is_the_modified_document() {
        assert_eq!(create_merge_patch(&json!([1]), &json!([2])), json!([2]));
        assert_eq!(create_merge_patch(&json!({"a": 1}), &json!("x")), json!("x"));
    }

    #[test]
    fn applying_a_created_patch_yields_the_modified_document() {
        let pairs = [
            (json!({"a": 1, "b": {"c": [1], "d": {"e": "f"}}}), json!({"b": {"c": [2], "d": {}}, "g": "h"})),
            (
                json!({"metadata": {"labels": {"a": "1"}, "annotations": {"x": "y"}}}),
                json!({"metadata": {"labels": {"a": "2", "b": "3"}}}),
            ),
            (json!({}), json!({"spec": {"containers": [{"name": "c", "image": "busybox"}]}})),
        ];
        for (original, modified) in pairs {
            let patch = create_merge_patch(&original, &modified);
            assert_eq!(apply_merge_patch(&original, &patch), modified, "patch {patch}");
        }
    }
}

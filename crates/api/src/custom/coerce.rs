//! What the apiextensions server does to a custom resource before validating it: unknown
//! fields are pruned (and reported, for `fieldValidation`), nulls the schema does not allow and
//! has no default for are dropped, and `default`s are filled in.

use serde_json::{Map, Value};

use super::structural::{Additional, Schema};

/// The fields every object (and every embedded resource) has besides those its schema names.
const META_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// Removes the fields `schema` does not know from a whole custom resource; returns their paths
/// (`spec.foo`, `spec.items[0].bar`), sorted, as upstream reports unknown fields.
pub fn prune(obj: &mut Value, schema: &Schema) -> Vec<String> {
    // The resource root is always an embedded resource: apiVersion, kind and metadata stay.
    let mut out = Vec::new();
    if schema.embedded_resource {
        prune_node(obj, Some(schema), "", &mut out);
    } else {
        let root = Schema { embedded_resource: true, ..schema.clone() };
        prune_node(obj, Some(&root), "", &mut out);
    }
    out.sort();
    out
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

fn additional_schema(s: &Schema) -> Option<Option<&Schema>> {
    s.additional_properties.as_ref().map(|a| match a {
        Additional::Schema(values) => Some(&**values),
        Additional::Allows(_) => None,
    })
}

fn prune_node(x: &mut Value, s: Option<&Schema>, path: &str, out: &mut Vec<String>) {
    if let Some(s) = s
        && s.preserve_unknown_fields
    {
        skip_prune(x, s, path, out);
        return;
    }
    match x {
        Value::Object(map) => {
            let Some(s) = s else {
                out.extend(map.keys().map(|k| child_path(path, k)));
                map.clear();
                return;
            };
            let mut removed = Vec::new();
            for (k, v) in map.iter_mut() {
                if s.embedded_resource && META_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                if let Some(prop) = s.properties.get(k) {
                    prune_node(v, Some(prop), &child_path(path, k), out);
                } else if let Some(values) = additional_schema(s) {
                    prune_node(v, values, &child_path(path, k), out);
                } else {
                    if !META_FIELDS.contains(&k.as_str()) || !path.is_empty() {
                        out.push(child_path(path, k));
                    }
                    removed.push(k.clone());
                }
            }
            for k in removed {
                map.shift_remove(&k);
            }
        }
        Value::Array(items) => {
            let item_schema = s.and_then(|s| s.items.as_deref());
            for (i, v) in items.iter_mut().enumerate() {
                prune_node(v, item_schema, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Below a node that preserves unknown fields, only the fields the schema names are pruned.
fn skip_prune(x: &mut Value, s: &Schema, path: &str, out: &mut Vec<String>) {
    match x {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if s.embedded_resource && META_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                if let Some(prop) = s.properties.get(k) {
                    prune_node(v, Some(prop), &child_path(path, k), out);
                } else if let Some(values) = additional_schema(s) {
                    prune_node(v, values, &child_path(path, k), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = s.items.as_deref() {
                for (i, v) in items.iter_mut().enumerate() {
                    skip_prune(v, item_schema, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Drops null fields the schema neither allows (`nullable`) nor has a default for.
pub fn prune_nulls(x: &mut Value, s: Option<&Schema>) {
    match x {
        Value::Object(map) => {
            let drop: Vec<String> = map
                .iter()
                .filter(|(k, v)| {
                    v.is_null() && s.and_then(|s| s.field(k)).is_some_and(|f| !f.nullable && f.default.is_none())
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in drop {
                map.shift_remove(&k);
            }
            for (k, v) in map.iter_mut() {
                prune_nulls(v, s.and_then(|s| s.field(k)));
            }
        }
        Value::Array(items) => {
            let item_schema = s.and_then(|s| s.items.as_deref());
            for v in items {
                prune_nulls(v, item_schema);
            }
        }
        _ => {}
    }
}

fn is_non_nullable_null(v: &Value, s: &Schema) -> bool {
    v.is_null() && !s.nullable
}

/// Fills in `default`s of absent (or disallowed null) fields, then defaults inside them.
pub fn apply_defaults(x: &mut Value, s: &Schema) {
    match x {
        Value::Object(map) => {
            for (k, prop) in &s.properties {
                let Some(default) = &prop.default else { continue };
                if map.get(k).is_none_or(|v| is_non_nullable_null(v, prop)) {
                    map.insert(k.clone(), default.clone());
                }
            }
            default_fields(map, s);
        }
        Value::Array(items) => {
            let Some(item_schema) = s.items.as_deref() else { return };
            for v in items {
                if is_non_nullable_null(v, item_schema)
                    && let Some(d) = &item_schema.default
                {
                    *v = d.clone();
                }
                apply_defaults(v, item_schema);
            }
        }
        _ => {}
    }
}

fn default_fields(map: &mut Map<String, Value>, s: &Schema) {
    for (k, v) in map.iter_mut() {
        if let Some(prop) = s.properties.get(k) {
            apply_defaults(v, prop);
        } else if let Some(Additional::Schema(values)) = &s.additional_properties {
            if is_non_nullable_null(v, values)
                && let Some(d) = &values.default
            {
                *v = d.clone();
            }
            apply_defaults(v, values);
        }
    }
}

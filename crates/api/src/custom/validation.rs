//! Validation of a custom resource against its version's structural schema, with the errors
//! upstream reports: kube-openapi's schema validator produces messages such as
//! `spec.replicas in body must be of type integer: "string"`, which the apiextensions server
//! turns into field errors (`Required`, `NotSupported` for enums, `TooLong`, `TooMany`,
//! `TypeInvalid`, else `Invalid` with the message as detail).
//!
//! Paths follow the validator's naming: a property of the root is `spec`, nested ones
//! `spec.replicas`, list items `spec.ports[0]`, map values and missing required fields
//! `<parent>.<key>`. Each node runs the validators in upstream's order: type, composition
//! (`allOf`, `anyOf`, `oneOf`, `not`), string, number, list, enum, object.

use serde_json::Value;

use super::structural::{Additional, Schema};
use crate::field::{FieldError, FieldPath};

/// Upstream's validator names where the value came from; for custom resources, the body.
const IN: &str = "body";

/// Validates `value` (a whole custom resource) against `schema`, appending field errors.
pub fn validate(schema: &Schema, value: &Value, errs: &mut Vec<FieldError>) {
    node(schema, value, "", errs);
}

/// The field path of an error about the validator path `name` (upstream trims its leading dot).
fn field_path(name: &str) -> FieldPath {
    match name.trim_start_matches('.') {
        "" => FieldPath::new("<nil>"),
        trimmed => FieldPath::new(trimmed),
    }
}

/// The JSON type of a value as upstream's validator names it.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A float as Go's `%v` prints it: integral values without a fraction.
pub(crate) fn go_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e21 { format!("{}", f as i64) } else { format!("{f}") }
}

fn node(s: &Schema, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    check_type(s, v, path, errs);
    if v.is_null() {
        check_enum(s, v, path, errs);
        return;
    }
    check_composition(s, v, path, errs);
    match v {
        Value::String(text) => check_string(s, text, path, errs),
        Value::Number(_) => check_number(s, v, path, errs),
        _ => {}
    }
    if let Value::Array(items) = v {
        check_list(s, items, path, errs);
    }
    check_enum(s, v, path, errs);
    if let Value::Object(map) = v {
        check_object(s, map, path, errs);
    }
}

fn check_type(s: &Schema, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(types) = s.type_names() else { return };
    let contains = |t: &str| types.split(',').any(|x| x == t);
    let actual = json_type(v);
    if v.is_null() {
        if !s.nullable {
            let msg = format!("{path} in {IN} must be of type {types}: \"null\"");
            errs.push(FieldError::type_invalid(&field_path(path), Value::from("null"), &msg));
        }
        return;
    }
    // A formatted string type accepts strings and lists without further type checks.
    if !(contains("integer") || contains("number")) && s.format.is_some() && (v.is_string() || v.is_array()) {
        return;
    }
    let float_int = actual == "number" && v.as_f64().is_some_and(|f| f.fract() == 0.0) && contains("integer");
    let int_float = actual == "integer" && contains("number");
    if !(contains(actual) || float_int || int_float) {
        let msg = format!("{path} in {IN} must be of type {types}: {actual:?}");
        errs.push(FieldError::type_invalid(&field_path(path), Value::from(actual), &msg));
    }
}

/// Validates against each subschema; returns the errors of each.
fn sub_results(schemas: &[Schema], v: &Value, path: &str) -> Vec<Vec<FieldError>> {
    schemas
        .iter()
        .map(|sub| {
            let mut e = Vec::new();
            node(sub, v, path, &mut e);
            e
        })
        .collect()
}

fn composition_error(detail: String) -> FieldError {
    // These messages carry no field name upstream, so they land on the (nil) root path.
    FieldError::invalid(&FieldPath::new("<nil>"), Value::from(""), &detail)
}

fn check_composition(s: &Schema, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if !s.all_of.is_empty() {
        let results = sub_results(&s.all_of, v, path);
        let valid = results.iter().filter(|r| r.is_empty()).count();
        let failed = valid < results.len();
        errs.extend(results.into_iter().flatten());
        if failed {
            let extra = if valid == 0 { ". None validated" } else { "" };
            errs.push(composition_error(format!("{path:?} must validate all the schemas (allOf){extra}")));
        }
    }
    if !s.any_of.is_empty() {
        let results = sub_results(&s.any_of, v, path);
        if !results.iter().any(Vec::is_empty) {
            errs.push(composition_error(format!("{path:?} must validate at least one schema (anyOf)")));
            errs.extend(results.into_iter().next().unwrap_or_default());
        }
    }
    if !s.one_of.is_empty() {
        let results = sub_results(&s.one_of, v, path);
        let valid = results.iter().filter(|r| r.is_empty()).count();
        if valid != 1 {
            let extra =
                if valid == 0 { "Found none valid".to_string() } else { format!("Found {valid} valid alternatives") };
            errs.push(composition_error(format!("{path:?} must validate one and only one schema (oneOf). {extra}")));
            if valid == 0 {
                errs.extend(results.into_iter().next().unwrap_or_default());
            }
        }
    }
    if let Some(not) = &s.not {
        let mut e = Vec::new();
        node(not, v, path, &mut e);
        if e.is_empty() {
            errs.push(composition_error(format!("{path:?} must not validate the schema (not)")));
        }
    }
}

fn check_string(s: &Schema, text: &str, path: &str, errs: &mut Vec<FieldError>) {
    let len = text.chars().count() as i64;
    if let Some(max) = s.max_length
        && len > max
    {
        errs.push(FieldError::too_long(&field_path(path), usize::try_from(max).unwrap_or(0)));
    }
    if let Some(min) = s.min_length
        && len < min
    {
        let msg = format!("{path} in {IN} should be at least {min} chars long");
        errs.push(FieldError::invalid(&field_path(path), Value::from(text), &msg));
    }
    if let Some(p) = &s.pattern {
        let (matched, shown) = match &p.regex {
            Ok(re) => (re.is_match(text), p.source.clone()),
            Err(e) => (false, format!("{}, but pattern is invalid: {e}", p.source)),
        };
        if !matched {
            let msg = format!("{path} in {IN} should match '{shown}'");
            errs.push(FieldError::invalid(&field_path(path), Value::from(text), &msg));
        }
    }
}

fn check_number(s: &Schema, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let as_int = v.as_i64();
    let f = v.as_f64().unwrap_or(0.0);
    if let Some(factor) = s.multiple_of {
        if factor <= 0.0 {
            let msg = format!("factor MultipleOf declared for {path} must be positive: {}", go_float(factor));
            errs.push(FieldError::invalid(&field_path(path), Value::from(factor), &msg));
        } else {
            let ok = match as_int {
                Some(i) if (factor as i64) != 0 => i % (factor as i64) == 0,
                _ => (f / factor).fract() == 0.0,
            };
            if !ok {
                let msg = format!("{path} in {IN} should be a multiple of {}", go_float(factor));
                errs.push(FieldError::invalid(&field_path(path), v.clone(), &msg));
            }
        }
    }
    // Integers compare against the bound truncated to an integer, as upstream's validator does.
    let bound = |b: f64| if as_int.is_some() { format!("{}", b as i64) } else { go_float(b) };
    if let Some(max) = s.maximum {
        let over = match as_int {
            Some(i) => i > max as i64 || (s.exclusive_maximum && i == max as i64),
            None => f > max || (s.exclusive_maximum && f == max),
        };
        if over {
            let rel = if s.exclusive_maximum { "less than" } else { "less than or equal to" };
            let msg = format!("{path} in {IN} should be {rel} {}", bound(max));
            errs.push(FieldError::invalid(&field_path(path), v.clone(), &msg));
        }
    }
    if let Some(min) = s.minimum {
        let under = match as_int {
            Some(i) => i < min as i64 || (s.exclusive_minimum && i == min as i64),
            None => f < min || (s.exclusive_minimum && f == min),
        };
        if under {
            let rel = if s.exclusive_minimum { "greater than" } else { "greater than or equal to" };
            let msg = format!("{path} in {IN} should be {rel} {}", bound(min));
            errs.push(FieldError::invalid(&field_path(path), v.clone(), &msg));
        }
    }
}

fn check_list(s: &Schema, items: &[Value], path: &str, errs: &mut Vec<FieldError>) {
    if let Some(item_schema) = &s.items {
        for (i, item) in items.iter().enumerate() {
            node(item_schema, item, &format!("{path}[{i}]"), errs);
        }
    }
    let size = items.len();
    if let Some(min) = s.min_items
        && (size as i64) < min
    {
        let msg = format!("{path} in {IN} should have at least {min} items");
        errs.push(FieldError::invalid(&field_path(path), Value::from(size), &msg));
    }
    if let Some(max) = s.max_items
        && (size as i64) > max
    {
        errs.push(FieldError::too_many(&field_path(path), size, usize::try_from(max).unwrap_or(0)));
    }
    if s.unique_items && items.iter().enumerate().any(|(i, a)| items[..i].iter().any(|b| same_value(a, b))) {
        let msg = format!("{path} in {IN} shouldn't contain duplicates");
        errs.push(FieldError::invalid(&field_path(path), Value::from(""), &msg));
    }
}

/// JSON equality where numbers compare by value (upstream converts an integer to compare it
/// with a float enum value).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn check_enum(s: &Schema, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(values) = &s.enum_values else { return };
    if values.iter().any(|e| same_value(e, v)) {
        return;
    }
    let supported: Vec<String> = values
        .iter()
        .map(|e| match e {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    errs.push(FieldError::not_supported(&field_path(path), v.clone(), &supported));
}

fn check_object(s: &Schema, map: &serde_json::Map<String, Value>, path: &str, errs: &mut Vec<FieldError>) {
    let size = map.len();
    if let Some(min) = s.min_properties
        && (size as i64) < min
    {
        let msg = format!("{path} in {IN} should have at least {min} properties");
        errs.push(FieldError::invalid(&field_path(path), Value::from(size), &msg));
    }
    if let Some(max) = s.max_properties
        && (size as i64) > max
    {
        errs.push(FieldError::too_many(&field_path(path), size, usize::try_from(max).unwrap_or(0)));
    }
    match &s.additional_properties {
        Some(Additional::Allows(false)) => {
            for key in map.keys().filter(|k| !s.properties.contains_key(*k)) {
                let msg = format!("{path}.{key} in {IN} is a forbidden property");
                errs.push(FieldError::invalid(&field_path(path), Value::from(key.as_str()), &msg));
            }
        }
        Some(Additional::Schema(values)) => {
            for (key, value) in map.iter().filter(|(k, _)| !s.properties.contains_key(*k)) {
                node(values, value, &format!("{path}.{key}"), errs);
            }
        }
        _ => {}
    }
    for (name, prop) in &s.properties {
        if let Some(value) = map.get(name) {
            let child = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
            node(prop, value, &child, errs);
        }
    }
    for key in &s.required {
        if !map.contains_key(key) {
            errs.push(FieldError::required(&field_path(&format!("{path}.{key}")), ""));
        }
    }
    if s.embedded_resource {
        let base = field_path(path);
        for (field, value) in [("apiVersion", map.get("apiVersion")), ("kind", map.get("kind"))] {
            if value.and_then(Value::as_str).is_none_or(str::is_empty) {
                errs.push(FieldError::required(&base.key(field), "must not be empty"));
            }
        }
    }
}

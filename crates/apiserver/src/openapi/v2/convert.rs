//! Turns the OpenAPI v3 shapes this server publishes into upstream's Swagger 2.0 shapes.
//!
//! Schemas: references point into `#/definitions/`; a description attached to a reference
//! through a one-element `allOf` sits next to the `$ref` again, as upstream's v2 document has
//! it; the scalar one-of types (`IntOrString`, `Quantity`) become `type: string`, keeping their
//! `format` (upstream's `OpenAPISchemaType`/`OpenAPISchemaFormat`); keywords v2 lacks
//! (`nullable`, `oneOf`, `anyOf`, `not`, `writeOnly`, `deprecated`) are dropped.
//!
//! Operations: a `requestBody` becomes an `in: body` parameter plus `consumes`; responses lose
//! their content maps for a `schema` plus `produces`; parameters carry their schema's keywords
//! themselves.

use serde_json::{Map, Value, json};

/// Where v3 references point.
const V3_PREFIX: &str = "#/components/schemas/";
/// Where v2 references point.
pub const V2_PREFIX: &str = "#/definitions/";

/// The HTTP methods a path item may hold operations for.
const METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "head", "patch"];

/// A v3 schema (a definition or any schema inside one) in v2 form.
pub fn schema(v3: &Value) -> Value {
    let Some(object) = v3.as_object() else {
        return v3.clone();
    };
    let mut out = Map::new();
    // `allOf: [{$ref}]` (+ description, extensions): v3's way to annotate a reference.
    let single_ref = object
        .get("allOf")
        .and_then(Value::as_array)
        .filter(|all| all.len() == 1)
        .and_then(|all| all[0].as_object())
        .filter(|only| only.len() == 1)
        .and_then(|only| only.get("$ref"))
        .and_then(Value::as_str);
    for (key, value) in object {
        match key.as_str() {
            "$ref" => {
                out.insert(key.clone(), reference(value));
            }
            "allOf" if single_ref.is_some() => {
                out.insert("$ref".into(), reference(&Value::from(single_ref.unwrap_or_default())));
            }
            "allOf" => {
                let all = value.as_array().map(|a| a.iter().map(schema).collect()).unwrap_or_default();
                out.insert(key.clone(), Value::Array(all));
            }
            "properties" => {
                let properties = value
                    .as_object()
                    .map(|p| p.iter().map(|(k, v)| (k.clone(), schema(v))).collect())
                    .unwrap_or_default();
                out.insert(key.clone(), Value::Object(properties));
            }
            "items" => {
                let items = match value {
                    Value::Array(many) => Value::Array(many.iter().map(schema).collect()),
                    one => schema(one),
                };
                out.insert(key.clone(), items);
            }
            "additionalProperties" => {
                out.insert(key.clone(), if value.is_object() { schema(value) } else { value.clone() });
            }
            "oneOf" | "anyOf" => {
                // Upstream's v2 spells its scalar one-of types (int-or-string, quantity) as
                // strings; any other union has no v2 form and is left untyped.
                let scalar_string = value
                    .as_array()
                    .is_some_and(|alts| alts.iter().any(|a| a.get("type").and_then(Value::as_str) == Some("string")));
                if scalar_string && !object.contains_key("type") {
                    out.insert("type".into(), "string".into());
                }
            }
            "nullable" | "not" | "writeOnly" | "deprecated" => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

fn reference(v3: &Value) -> Value {
    match v3.as_str() {
        Some(r) => match r.strip_prefix(V3_PREFIX) {
            Some(name) => Value::String(format!("{V2_PREFIX}{name}")),
            None => Value::String(r.to_string()),
        },
        None => v3.clone(),
    }
}

/// A v3 path item (operations and shared parameters) in v2 form.
pub fn path_item(v3: &Value) -> Value {
    let Some(item) = v3.as_object() else {
        return v3.clone();
    };
    let mut out = Map::new();
    for (key, value) in item {
        if METHODS.contains(&key.as_str()) {
            out.insert(key.clone(), operation(value));
        } else if key == "parameters" {
            out.insert(key.clone(), Value::Array(value.as_array().into_iter().flatten().map(parameter).collect()));
        } else if key.starts_with("x-") || key == "$ref" {
            out.insert(key.clone(), value.clone());
        }
    }
    Value::Object(out)
}

/// A v3 parameter: the `schema`'s keywords move onto the parameter itself.
fn parameter(v3: &Value) -> Value {
    let Some(p) = v3.as_object() else {
        return v3.clone();
    };
    let mut out = Map::new();
    for (key, value) in p {
        match key.as_str() {
            "schema" => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    out.insert(k.clone(), v.clone());
                }
            }
            "$ref" => {
                out.insert(key.clone(), value.clone());
            }
            "style" | "explode" | "allowReserved" | "example" | "examples" | "content" | "deprecated" => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

/// Upstream's v2 response descriptions.
fn status_text(code: &str) -> &'static str {
    match code {
        "200" => "OK",
        "201" => "Created",
        "202" => "Accepted",
        "401" => "Unauthorized",
        _ => "",
    }
}

/// The first schema of a v3 `content` map, in v2 form.
fn content_schema(content: Option<&Value>) -> Option<Value> {
    content?.as_object()?.values().find_map(|media| media.get("schema")).map(schema)
}

fn push_unique(list: &mut Vec<Value>, media: &str) {
    if !list.iter().any(|m| m == media) {
        list.push(Value::from(media));
    }
}

/// A v3 operation in v2 form.
fn operation(v3: &Value) -> Value {
    let Some(op) = v3.as_object() else {
        return v3.clone();
    };
    let mut consumes = Vec::new();
    let mut produces = Vec::new();
    let mut parameters = Vec::new();
    if let Some(body) = op.get("requestBody") {
        for media in body.get("content").and_then(Value::as_object).into_iter().flatten().map(|(k, _)| k) {
            push_unique(&mut consumes, media);
        }
        let mut p = json!({"in": "body", "name": "body"});
        if body.get("required").and_then(Value::as_bool) == Some(true) {
            p["required"] = true.into();
        }
        if let Some(s) = content_schema(body.get("content")) {
            p["schema"] = s;
        }
        parameters.push(p);
    }
    if consumes.is_empty() {
        consumes.push("*/*".into());
    }
    parameters.extend(op.get("parameters").and_then(Value::as_array).into_iter().flatten().map(parameter));
    let mut responses = Map::new();
    for (code, r) in op.get("responses").and_then(Value::as_object).into_iter().flatten() {
        let content = r.get("content");
        for media in content.and_then(Value::as_object).into_iter().flatten().map(|(k, _)| k) {
            push_unique(&mut produces, media);
        }
        let description =
            r.get("description").and_then(Value::as_str).filter(|d| !d.is_empty()).unwrap_or_else(|| status_text(code));
        let mut v2 = json!({"description": description});
        if let Some(s) = content_schema(content) {
            v2["schema"] = s;
        }
        responses.insert(code.clone(), v2);
    }
    responses.entry("401").or_insert_with(|| json!({"description": status_text("401")}));
    if produces.is_empty() {
        produces.push("application/json".into());
    }
    let mut out = Map::new();
    for key in ["tags", "summary", "description", "externalDocs", "operationId"] {
        if let Some(v) = op.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    out.insert("consumes".into(), Value::Array(consumes));
    out.insert("produces".into(), Value::Array(produces));
    if !parameters.is_empty() {
        out.insert("parameters".into(), Value::Array(parameters));
    }
    out.insert("responses".into(), Value::Object(responses));
    out.insert("schemes".into(), json!(["https"]));
    if let Some(v) = op.get("deprecated") {
        out.insert("deprecated".into(), v.clone());
    }
    for (key, value) in op.iter().filter(|(k, _)| k.starts_with("x-")) {
        out.insert(key.clone(), value.clone());
    }
    Value::Object(out)
}

//! The OpenAPI definitions of a custom resource version, as upstream's CRD OpenAPI builder
//! publishes them: the version's schema with `apiVersion`, `kind` and `metadata` added (also to
//! every embedded resource), marked with its group, version and kind, plus the `<Kind>List`
//! definition. Definitions are named after the reversed group: `com.example.stable.v1.CronTab`.

use serde_json::{Map, Value, json};

use crate::schema::REF_PREFIX;

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const API_VERSION_DOC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DOC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const EMBEDDED_API_VERSION_DOC: &str = "apiVersion defines the versioned schema of this representation of an object. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const EMBEDDED_KIND_DOC: &str = "kind is a string value representing the type of this object. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const METADATA_DOC: &str = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const LIST_METADATA_DOC: &str = "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// `stable.example.com`, `v1`, `CronTab` → `com.example.stable.v1.CronTab`.
pub fn definition_name(group: &str, version: &str, kind: &str) -> String {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

fn reference(name: &str, description: &str) -> Value {
    json!({"allOf": [{"$ref": format!("{REF_PREFIX}{name}")}], "description": description})
}

fn string_property(description: &str) -> Value {
    json!({"description": description, "type": "string"})
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!([{"group": group, "kind": kind, "version": version}])
}

/// Adds `apiVersion`, `kind` and `metadata` to every `x-kubernetes-embedded-resource` below
/// (and including) `schema`.
fn add_embedded_properties(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else { return };
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        props.values_mut().for_each(add_embedded_properties);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = obj.get_mut(key).filter(|c| c.is_object()) {
            add_embedded_properties(child);
        }
    }
    if obj.get("x-kubernetes-embedded-resource") != Some(&Value::Bool(true)) {
        return;
    }
    let props = obj.entry("properties").or_insert_with(|| json!({}));
    if let Value::Object(props) = props {
        props.insert("apiVersion".into(), string_property(EMBEDDED_API_VERSION_DOC));
        props.insert("kind".into(), string_property(EMBEDDED_KIND_DOC));
        props.insert("metadata".into(), reference(OBJECT_META, METADATA_DOC));
    }
    let required = obj.entry("required").or_insert_with(|| json!([]));
    if let Value::Array(required) = required {
        for field in ["kind", "apiVersion"] {
            if !required.iter().any(|r| r == field) {
                required.push(json!(field));
            }
        }
    }
}

/// The definition of the resource and of its list, named.
pub fn definitions(
    group: &str,
    version: &str,
    kind: &str,
    list_kind: &str,
    plural: &str,
    schema: Option<&Value>,
) -> Vec<(String, Value)> {
    let name = definition_name(group, version, kind);
    let mut def = match schema {
        Some(Value::Object(s)) => Value::Object(s.clone()),
        _ => json!({"type": "object"}),
    };
    if schema.is_some() {
        add_embedded_properties(&mut def);
        let obj = def.as_object_mut().expect("object schema");
        let props = obj.entry("properties").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(props) = props {
            props.insert("apiVersion".into(), string_property(API_VERSION_DOC));
            props.insert("kind".into(), string_property(KIND_DOC));
            props.insert("metadata".into(), reference(OBJECT_META, METADATA_DOC));
        }
    }
    def["x-kubernetes-group-version-kind"] = gvk(group, version, kind);
    let list = json!({
        "description": format!("{list_kind} is a list of {kind}"),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": string_property(API_VERSION_DOC),
            "items": {
                "description": format!("List of {plural}. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"),
                "type": "array",
                "items": {"$ref": format!("{REF_PREFIX}{name}")},
            },
            "kind": string_property(KIND_DOC),
            "metadata": reference(LIST_META, LIST_METADATA_DOC),
        },
        "x-kubernetes-group-version-kind": gvk(group, version, list_kind),
    });
    vec![(name, def), (definition_name(group, version, list_kind), list)]
}

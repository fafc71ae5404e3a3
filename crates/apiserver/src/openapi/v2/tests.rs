use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};

use super::fields::{self, TABLE};
use super::wire::Writer;
use super::{Format, convert, encode, matches_etag, negotiate};
use crate::server::{ApiServer, ServerOptions};

// ---- a test-only protobuf reader ----

#[derive(Debug, Clone, Copy, PartialEq)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
}

fn read_varint(b: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*pos];
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
        assert!(shift < 64, "varint too long");
    }
}

/// Every field of a message, in order; panics on anything malformed.
fn decode(b: &[u8]) -> Vec<(u32, Wire<'_>)> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < b.len() {
        let key = read_varint(b, &mut pos);
        let field = u32::try_from(key >> 3).expect("field number fits");
        assert!(field > 0, "field number 0");
        let value = match key & 7 {
            0 => Wire::Varint(read_varint(b, &mut pos)),
            1 => {
                let v = u64::from_le_bytes(b[pos..pos + 8].try_into().expect("8 bytes"));
                pos += 8;
                Wire::Fixed64(v)
            }
            2 => {
                let len = usize::try_from(read_varint(b, &mut pos)).expect("length fits");
                let v = &b[pos..pos + len];
                pos += len;
                Wire::Len(v)
            }
            t => panic!("unexpected wire type {t}"),
        };
        out.push((field, value));
    }
    assert_eq!(pos, b.len(), "message overruns its buffer");
    out
}

fn all_len(b: &[u8], field: u32) -> Vec<&[u8]> {
    decode(b)
        .into_iter()
        .filter(|(f, _)| *f == field)
        .map(|(_, v)| match v {
            Wire::Len(b) => b,
            other => panic!("field {field} is {other:?}, not length-delimited"),
        })
        .collect()
}

fn one_len(b: &[u8], field: u32) -> &[u8] {
    let all = all_len(b, field);
    assert_eq!(all.len(), 1, "field {field} occurs {} times", all.len());
    all[0]
}

fn string(b: &[u8], field: u32) -> String {
    all_len(b, field).first().map(|s| String::from_utf8(s.to_vec()).expect("utf-8")).unwrap_or_default()
}

fn strings(b: &[u8], field: u32) -> Vec<String> {
    all_len(b, field).into_iter().map(|s| String::from_utf8(s.to_vec()).expect("utf-8")).collect()
}

fn varint(b: &[u8], field: u32) -> Option<u64> {
    decode(b).into_iter().find_map(|(f, v)| match v {
        Wire::Varint(v) if f == field => Some(v),
        _ => None,
    })
}

/// `repeated NamedX` entries as (name, value bytes).
fn named(b: &[u8], field: u32) -> Vec<(String, &[u8])> {
    all_len(b, field).into_iter().map(|entry| (string(entry, 1), one_len(entry, 2))).collect()
}

/// A message's `vendor_extension` entries as (name, YAML parsed back).
fn extensions(b: &[u8], field: u32) -> Vec<(String, Value)> {
    named(b, field)
        .into_iter()
        .map(|(name, any)| {
            let yaml = string(any, fields::Any::yaml);
            (name, serde_yaml::from_str(&yaml).expect("extension is YAML"))
        })
        .collect()
}

// ---- field numbers ----

/// Declarations copied by hand from gnostic-models' `openapiv2/OpenAPIv2.proto`.
const PROTO_FACTS: &str = "
    Document.swagger = 1  Document.info = 2  Document.paths = 8  Document.definitions = 9
    Document.vendor_extension = 16  Info.title = 1  Info.version = 2
    Paths.vendor_extension = 1  Paths.path = 2  NamedPathItem.name = 1  NamedPathItem.value = 2
    PathItem.get = 2  PathItem.put = 3  PathItem.post = 4  PathItem.delete = 5  PathItem.patch = 8
    PathItem.parameters = 9  Operation.operation_id = 5  Operation.produces = 6
    Operation.consumes = 7  Operation.parameters = 8  Operation.responses = 9
    Operation.vendor_extension = 13  ParametersItem.parameter = 1
    ParametersItem.json_reference = 2  Parameter.body_parameter = 1
    Parameter.non_body_parameter = 2  BodyParameter.schema = 5  BodyParameter.in = 3
    NonBodyParameter.query_parameter_sub_schema = 3  NonBodyParameter.path_parameter_sub_schema = 4
    QueryParameterSubSchema.name = 4  QueryParameterSubSchema.type = 6
    QueryParameterSubSchema.unique_items = 20  QueryParameterSubSchema.vendor_extension = 23
    PathParameterSubSchema.required = 1  PathParameterSubSchema.type = 5
    PathParameterSubSchema.unique_items = 19  PrimitivesItems.type = 1  PrimitivesItems.enum = 16
    Responses.response_code = 1  NamedResponseValue.value = 2  ResponseValue.response = 1
    Response.description = 1  Response.schema = 2  SchemaItem.schema = 1
    Definitions.additional_properties = 1  NamedSchema.name = 1  NamedSchema.value = 2
    Schema._ref = 1  Schema.format = 2  Schema.description = 4  Schema.default = 5
    Schema.required = 19  Schema.enum = 20  Schema.additional_properties = 21  Schema.type = 22
    Schema.items = 23  Schema.all_of = 24  Schema.properties = 25  Schema.vendor_extension = 31
    AdditionalPropertiesItem.schema = 1  AdditionalPropertiesItem.boolean = 2  TypeItem.value = 1
    ItemsItem.schema = 1  Properties.additional_properties = 1  NamedAny.name = 1
    NamedAny.value = 2  Any.value = 1  Any.yaml = 2
";

#[test]
fn field_numbers_match_the_proto() {
    let mut facts = PROTO_FACTS.split_whitespace();
    let mut checked = 0;
    while let Some(name) = facts.next() {
        assert_eq!(facts.next(), Some("="));
        let number: u32 = facts.next().and_then(|n| n.parse().ok()).expect("a field number");
        let (message, field) = name.split_once('.').expect("Message.field");
        let ours = TABLE
            .iter()
            .find(|(m, f, _)| *m == message && f.trim_end_matches('_') == field)
            .unwrap_or_else(|| panic!("{name} is not in the table"));
        assert_eq!(ours.2, number, "{name}");
        checked += 1;
    }
    assert!(checked > 60);
}

#[test]
fn field_numbers_are_unique_per_message() {
    let mut seen = HashSet::new();
    for (message, field, number) in TABLE {
        assert!(*number > 0);
        assert!(seen.insert((*message, *number)), "{message} uses {number} twice ({field})");
    }
}

// ---- wire format ----

#[test]
fn writer_encodes_varints_strings_and_defaults_as_protobuf_does() {
    let mut w = Writer::new();
    w.int64(1, 150);
    w.string(2, "testing");
    w.string(3, ""); // proto3 default: left out
    w.bool(4, false); // left out
    w.bool_always(5, false); // oneof member: kept
    w.int64(6, -1);
    w.double(7, 1.5);
    w.message(8, |_| {}); // an empty message is still present
    let bytes = w.into_bytes();
    assert_eq!(&bytes[..3], &[0x08, 0x96, 0x01]);
    assert_eq!(&bytes[3..12], b"\x12\x07testing");
    assert_eq!(&bytes[12..14], &[0x28, 0x00]);
    let fields = decode(&bytes);
    assert_eq!(fields[3], (6, Wire::Varint(u64::MAX)));
    assert_eq!(fields[4], (7, Wire::Fixed64(1.5f64.to_bits())));
    assert_eq!(fields[5], (8, Wire::Len(&[])));
    assert_eq!(fields.len(), 6);
}

#[test]
fn schema_round_trips_through_the_decoder() {
    use fields::{AdditionalPropertiesItem as Ap, ItemsItem, Properties, Schema, TypeItem};
    let schema = json!({
        "description": "a thing",
        "type": "object",
        "required": ["containers", "name"],
        "properties": {
            "containers": {
                "type": "array",
                "items": {"$ref": "#/definitions/io.k8s.api.core.v1.Container"},
                "x-kubernetes-patch-merge-key": "name",
                "x-kubernetes-patch-strategy": "merge",
            },
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "additionalProperties": false},
            "replicas": {"type": "integer", "format": "int32", "minimum": 0, "maxLength": 3},
        },
        "x-kubernetes-group-version-kind": [{"group": "apps", "kind": "Deployment", "version": "v1"}],
    });
    let mut w = Writer::new();
    encode::schema(&mut w, &schema);
    let b = w.into_bytes();
    assert_eq!(string(&b, Schema::description), "a thing");
    assert_eq!(strings(one_len(&b, Schema::type_), TypeItem::value), ["object"]);
    assert_eq!(strings(&b, Schema::required), ["containers", "name"]);
    let props = named(one_len(&b, Schema::properties), Properties::additional_properties);
    let names: Vec<&str> = props.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["containers", "labels", "free", "replicas"]);

    let containers = props[0].1;
    let items = all_len(one_len(containers, Schema::items), ItemsItem::schema);
    assert_eq!(items.len(), 1);
    assert_eq!(string(items[0], Schema::_ref), "#/definitions/io.k8s.api.core.v1.Container");
    assert_eq!(
        extensions(containers, Schema::vendor_extension),
        [
            ("x-kubernetes-patch-merge-key".to_string(), json!("name")),
            ("x-kubernetes-patch-strategy".to_string(), json!("merge"))
        ]
    );

    let labels_values = one_len(one_len(props[1].1, Schema::additional_properties), Ap::schema);
    assert_eq!(strings(one_len(labels_values, Schema::type_), TypeItem::value), ["string"]);
    assert_eq!(varint(one_len(props[2].1, Schema::additional_properties), Ap::boolean), Some(0));

    let replicas = props[3].1;
    assert_eq!(string(replicas, Schema::format), "int32");
    assert_eq!(varint(replicas, Schema::max_length), Some(3));
    // A zero minimum is proto3's default and not written.
    assert!(decode(replicas).iter().all(|(f, _)| *f != Schema::minimum));

    assert_eq!(
        extensions(&b, Schema::vendor_extension),
        [("x-kubernetes-group-version-kind".to_string(), schema["x-kubernetes-group-version-kind"].clone())]
    );
}

/// What kubectl's `--validate` fallback does with the v2 document: find the path whose PATCH
/// carries the kind, and look for a `fieldValidation` query parameter on it.
fn patch_supports_field_validation(doc: &[u8], gvk: &Value) -> Option<bool> {
    use fields::{
        Document, NonBodyParameter, Operation, Parameter, ParametersItem, PathItem, Paths, QueryParameterSubSchema as Q,
    };
    for (_, item) in named(one_len(doc, Document::paths), Paths::path) {
        let Some(patch) = all_len(item, PathItem::patch).first().copied() else {
            continue;
        };
        let kinds = extensions(patch, Operation::vendor_extension);
        if !kinds.iter().any(|(n, v)| n == "x-kubernetes-group-version-kind" && v == gvk) {
            continue;
        }
        return Some(all_len(patch, Operation::parameters).into_iter().any(|p| {
            all_len(p, ParametersItem::parameter)
                .into_iter()
                .flat_map(|p| all_len(p, Parameter::non_body_parameter))
                .flat_map(|p| all_len(p, NonBodyParameter::query_parameter_sub_schema))
                .any(|q| string(q, Q::name) == "fieldValidation" && string(q, Q::in_) == "query")
        }));
    }
    None
}

#[test]
fn path_item_round_trips_with_its_parameters_and_responses() {
    use fields::{
        BodyParameter, NamedResponseValue, NonBodyParameter, Operation, Parameter, ParametersItem, PathItem,
        PathParameterSubSchema as P, Response, ResponseValue, Responses, Schema, SchemaItem,
    };
    let doc = single_path_document();
    let bytes = encode::document(&doc);
    let gvk = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    assert_eq!(patch_supports_field_validation(&bytes, &gvk), Some(true));
    assert_eq!(patch_supports_field_validation(&bytes, &json!({"group": "", "version": "v1", "kind": "Pod"})), None);

    let paths = named(one_len(&bytes, fields::Document::paths), fields::Paths::path);
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0].0, "/apis/apps/v1/namespaces/{namespace}/deployments/{name}");
    let item = paths[0].1;
    let shared = all_len(item, PathItem::parameters);
    assert_eq!(shared.len(), 2);
    let name = one_len(
        one_len(one_len(shared[0], ParametersItem::parameter), Parameter::non_body_parameter),
        NonBodyParameter::path_parameter_sub_schema,
    );
    assert_eq!(string(name, P::name), "name");
    assert_eq!(varint(name, P::required), Some(1));
    assert_eq!(string(name, P::type_), "string");

    let patch = one_len(item, PathItem::patch);
    assert_eq!(string(patch, Operation::operation_id), "patchAppsV1NamespacedDeployment");
    assert!(strings(patch, Operation::consumes).contains(&"application/strategic-merge-patch+json".to_string()));
    let first = one_len(all_len(patch, Operation::parameters)[0], ParametersItem::parameter);
    let body = one_len(first, Parameter::body_parameter);
    assert_eq!(string(body, BodyParameter::in_), "body");
    assert_eq!(
        string(one_len(body, BodyParameter::schema), Schema::_ref),
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
    );

    let responses = all_len(one_len(patch, Operation::responses), Responses::response_code);
    let ok = responses.iter().find(|r| string(r, NamedResponseValue::name) == "200").expect("a 200 response");
    let ok = one_len(one_len(ok, NamedResponseValue::value), ResponseValue::response);
    assert_eq!(string(ok, Response::description), "OK");
    let schema = one_len(one_len(ok, Response::schema), SchemaItem::schema);
    assert_eq!(string(schema, Schema::_ref), "#/definitions/io.k8s.api.apps.v1.Deployment");
}

/// One v3 path item, as the v3 builder makes it, converted.
fn single_path_document() -> Value {
    let deployment = json!({"$ref": "#/components/schemas/io.k8s.api.apps.v1.Deployment"});
    let patch = json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"});
    let query = |name: &str| json!({"name": name, "in": "query", "description": "d", "schema": {"type": "string", "uniqueItems": true}});
    let path = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}});
    let v3 = json!({
        "patch": {
            "description": "partially update the specified Deployment",
            "operationId": "patchAppsV1NamespacedDeployment",
            "parameters": [query("dryRun"), query("fieldManager"), query("fieldValidation")],
            "requestBody": {"content": {
                "application/json-patch+json": {"schema": patch},
                "application/merge-patch+json": {"schema": patch},
                "application/strategic-merge-patch+json": {"schema": patch},
            }, "required": true},
            "responses": {"200": {"content": {"application/json": {"schema": deployment}, "application/yaml": {"schema": deployment}}}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        },
        "parameters": [path("name"), path("namespace")],
    });
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.36.0"},
        "paths": {"/apis/apps/v1/namespaces/{namespace}/deployments/{name}": convert::path_item(&v3)},
    })
}

// ---- v3 to v2 ----

#[test]
fn v3_shapes_become_upstream_v2_shapes() {
    let v3 = json!({
        "type": "object",
        "properties": {
            "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "description": "m"},
            "port": {"description": "p", "format": "int-or-string", "oneOf": [{"type": "integer"}, {"type": "string"}]},
            "amount": {"oneOf": [{"type": "string"}, {"type": "number"}]},
            "maybe": {"type": "string", "nullable": true},
        },
    });
    let v2 = convert::schema(&v3);
    assert_eq!(
        v2["properties"]["metadata"],
        json!({"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "description": "m"})
    );
    assert_eq!(v2["properties"]["port"], json!({"description": "p", "format": "int-or-string", "type": "string"}));
    assert_eq!(v2["properties"]["amount"], json!({"type": "string"}));
    assert_eq!(v2["properties"]["maybe"], json!({"type": "string"}));
}

// ---- the served document ----

fn server() -> ApiServer {
    ApiServer::new(Arc::new(tug_store::memory::MemoryStore::new()), None, ServerOptions::default())
}

fn served_document() -> &'static (Value, Vec<u8>) {
    static DOC: OnceLock<(Value, Vec<u8>)> = OnceLock::new();
    DOC.get_or_init(|| {
        let doc = super::document(&server());
        let bytes = super::to_protobuf(&doc);
        (doc, bytes)
    })
}

#[test]
fn document_says_swagger_2_and_kubernetes_version() {
    let (doc, bytes) = served_document();
    assert_eq!(doc["swagger"], "2.0");
    assert_eq!(doc["info"], json!({"title": "Kubernetes", "version": "v1.36.0"}));
    assert_eq!(string(bytes, fields::Document::swagger), "2.0");
    let info = one_len(bytes, fields::Document::info);
    assert_eq!(string(info, fields::Info::version), "v1.36.0");
    let definitions = named(one_len(bytes, fields::Document::definitions), fields::Definitions::additional_properties);
    assert_eq!(definitions.len(), doc["definitions"].as_object().map_or(0, |d| d.len()));
    let paths = named(one_len(bytes, fields::Document::paths), fields::Paths::path);
    assert_eq!(paths.len(), doc["paths"].as_object().map_or(0, |d| d.len()));
}

#[test]
fn every_patch_operation_accepts_field_validation() {
    let (doc, bytes) = served_document();
    let mut patches = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let Some(patch) = item.get("patch") else {
            continue;
        };
        patches += 1;
        let names: Vec<&str> = patch["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query")
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(names.contains(&"fieldValidation"), "{path}: {names:?}");
    }
    assert!(patches > 50, "only {patches} PATCH operations");
    for gvk in [
        json!({"group": "apps", "version": "v1", "kind": "Deployment"}),
        json!({"group": "", "version": "v1", "kind": "ConfigMap"}),
    ] {
        assert_eq!(patch_supports_field_validation(bytes, &gvk), Some(true), "{gvk}");
    }
}

fn walk<'a>(v: &'a Value, at: &mut String, visit: &mut impl FnMut(&str, &'a Value)) {
    visit(at, v);
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let len = at.len();
                at.push('/');
                at.push_str(k);
                walk(c, at, visit);
                at.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                walk(c, at, visit);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

#[test]
fn document_references_only_existing_definitions() {
    let (doc, _) = served_document();
    let definitions = doc["definitions"].as_object().expect("definitions");
    let mut refs = 0;
    walk(doc, &mut String::new(), &mut |at, v| {
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let name = r.strip_prefix("#/definitions/").unwrap_or_else(|| panic!("{at}: $ref {r}"));
            assert!(definitions.contains_key(name), "{at}: dangling $ref {r}");
            refs += 1;
        }
    });
    assert!(refs > 1000, "only {refs} references");
    let text = serde_json::to_string(doc).expect("json");
    assert!(!text.contains("#/components/"));
}

/// The rules kube-openapi's `pkg/util/proto` (kubectl's parser) enforces on every definition;
/// one violation makes kubectl reject the whole document.
fn check_parsable(at: &str, s: &Value) {
    let Some(o) = s.as_object() else { panic!("{at}: schema is not an object") };
    for key in ["oneOf", "anyOf", "nullable", "not"] {
        assert!(!o.contains_key(key), "{at}: v3-only keyword {key}");
    }
    if o.contains_key("$ref") {
        assert!(!o.contains_key("type"), "{at}: a reference with a type");
        assert!(
            o.get("properties").and_then(Value::as_object).is_none_or(|p| p.is_empty()),
            "{at}: a reference with properties"
        );
        return;
    }
    let ty = match o.get("type") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(other) => panic!("{at}: type {other}"),
    };
    let recurse_properties = || {
        for (name, p) in o.get("properties").and_then(Value::as_object).into_iter().flatten() {
            check_parsable(&format!("{at}.{name}"), p);
        }
    };
    match ty {
        None | Some("object") if o.contains_key("properties") => recurse_properties(),
        None => {}
        Some("object") => {
            if let Some(values @ Value::Object(_)) = o.get("additionalProperties") {
                check_parsable(&format!("{at}{{}}"), values);
            }
        }
        Some("array") => {
            let items = o.get("items").unwrap_or_else(|| panic!("{at}: array without items"));
            assert!(items.is_object(), "{at}: array must have exactly one item schema");
            check_parsable(&format!("{at}[]"), items);
        }
        Some("string" | "integer" | "number" | "boolean") => {}
        Some(other) => panic!("{at}: unknown primitive type {other}"),
    }
}

#[test]
fn every_definition_parses_as_kubectl_parses_it() {
    let (doc, _) = served_document();
    let definitions = doc["definitions"].as_object().expect("definitions");
    assert!(definitions.len() > 400, "only {} definitions", definitions.len());
    for (name, def) in definitions {
        check_parsable(name, def);
    }
    let int_or_string = &definitions["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
    assert_eq!((&int_or_string["type"], &int_or_string["format"]), (&json!("string"), &json!("int-or-string")));
    assert_eq!(definitions["io.k8s.apimachinery.pkg.api.resource.Quantity"]["type"], "string");
    let deployment = &definitions["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        deployment["x-kubernetes-group-version-kind"],
        json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
    );
    assert_eq!(deployment["properties"]["spec"]["$ref"], "#/definitions/io.k8s.api.apps.v1.DeploymentSpec");
    let containers = &definitions["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
}

#[test]
fn protobuf_definitions_carry_kinds_and_merge_keys() {
    use fields::{Definitions, Document, NamedSchema, Properties, Schema};
    let (_, bytes) = served_document();
    let definitions = all_len(one_len(bytes, Document::definitions), Definitions::additional_properties);
    let pod_spec = definitions
        .iter()
        .find(|d| string(d, NamedSchema::name) == "io.k8s.api.core.v1.PodSpec")
        .map(|d| one_len(d, NamedSchema::value))
        .expect("PodSpec");
    let containers = named(one_len(pod_spec, Schema::properties), Properties::additional_properties)
        .into_iter()
        .find(|(n, _)| n == "containers")
        .expect("containers")
        .1;
    let ext = extensions(containers, Schema::vendor_extension);
    assert!(ext.contains(&("x-kubernetes-patch-merge-key".to_string(), json!("name"))), "{ext:?}");
    let deployment = definitions
        .iter()
        .find(|d| string(d, NamedSchema::name) == "io.k8s.api.apps.v1.Deployment")
        .map(|d| one_len(d, NamedSchema::value))
        .expect("Deployment");
    let ext = extensions(deployment, Schema::vendor_extension);
    assert_eq!(
        ext,
        [(
            "x-kubernetes-group-version-kind".to_string(),
            json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
        )]
    );
}

// ---- serving ----

#[test]
fn negotiation_follows_upstream() {
    assert_eq!(negotiate(None), Some(Format::Json));
    assert_eq!(negotiate(Some("")), Some(Format::Json));
    assert_eq!(negotiate(Some("application/json")), Some(Format::Json));
    assert_eq!(negotiate(Some("*/*")), Some(Format::Json));
    assert_eq!(negotiate(Some("application/com.github.proto-openapi.spec.v2@v1.0+protobuf")), Some(Format::Protobuf));
    assert_eq!(negotiate(Some("application/com.github.proto-openapi.spec.v2.v1.0+protobuf")), Some(Format::Protobuf));
    assert_eq!(
        negotiate(Some("application/json;q=0.5, application/com.github.proto-openapi.spec.v2@v1.0+protobuf")),
        Some(Format::Protobuf)
    );
    assert_eq!(negotiate(Some("application/yaml")), None);
    assert_eq!(negotiate(Some("text/html, application/json;q=0")), None);
}

#[test]
fn etags_match_quoted_lists_and_wildcards() {
    assert!(matches_etag(Some("\"AB\""), "\"AB\""));
    assert!(matches_etag(Some("\"X\", W/\"AB\""), "\"AB\""));
    assert!(matches_etag(Some("*"), "\"AB\""));
    assert!(!matches_etag(Some("\"ABC\""), "\"AB\""));
    assert!(!matches_etag(None, "\"AB\""));
}

#[tokio::test]
async fn serves_protobuf_json_and_not_modified() {
    use http_body_util::BodyExt;
    let srv = server();
    let proto = super::serve(&srv, Some("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"), None)
        .await
        .expect("served");
    assert_eq!(proto.status(), 200);
    assert_eq!(proto.headers()["content-type"], super::PROTOBUF_CONTENT_TYPE);
    let etag = proto.headers()["etag"].to_str().expect("ascii").to_string();
    let body = proto.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(string(&body, fields::Document::swagger), "2.0");

    let json = super::serve(&srv, Some("application/json"), None).await.expect("served");
    assert_eq!(json.headers()["content-type"], "application/json");
    assert_eq!(json.headers()["etag"].to_str().expect("ascii"), etag);
    let body = json.into_body().collect().await.expect("body").to_bytes();
    let doc: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(doc["swagger"], "2.0");

    let cached = super::serve(&srv, None, Some(&etag)).await.expect("served");
    assert_eq!(cached.status(), 304);
    let err = super::serve(&srv, Some("application/yaml"), None).await.expect_err("not acceptable");
    assert_eq!(err.code, 406);
}

//! Encodes a Swagger 2.0 document (as JSON) into gnostic's `openapi.v2.Document` protobuf
//! message, the form kubectl downloads from `/openapi/v2`.
//!
//! The mapping is gnostic's: every JSON object becomes its message, `x-` keys become
//! `vendor_extension` entries whose `Any.yaml` holds the value as YAML text, maps keyed by
//! user-chosen names (paths, definitions, properties, responses) become repeated `Named*`
//! messages in the document's order, and `oneof` messages pick their member from the JSON's
//! shape (`$ref` or not, `in: body` or not, a schema or a boolean). Keys this server never
//! publishes (security, tags, XML, headers, examples) are not encoded.

use serde_json::{Map, Value};

use super::fields::{
    AdditionalPropertiesItem, Any, BodyParameter, Definitions, Document, ExternalDocs, FormDataParameterSubSchema,
    HeaderParameterSubSchema, Info, ItemsItem, JsonReference, NamedAny, NamedPathItem, NamedResponseValue, NamedSchema,
    NonBodyParameter, Operation, Parameter, ParametersItem, PathItem, PathParameterSubSchema, Paths, PrimitivesItems,
    Properties, QueryParameterSubSchema, Response, ResponseValue, Responses, Schema, SchemaItem, TypeItem,
};
use super::wire::Writer;

/// The protobuf encoding of a Swagger 2.0 document.
pub fn document(doc: &Value) -> Vec<u8> {
    let mut w = Writer::new();
    let Some(doc) = doc.as_object() else {
        return w.into_bytes();
    };
    w.string(Document::swagger, str_of(doc, "swagger"));
    if let Some(info) = doc.get("info").and_then(Value::as_object) {
        w.message(Document::info, |w| {
            w.string(Info::title, str_of(info, "title"));
            w.string(Info::version, str_of(info, "version"));
            w.string(Info::description, str_of(info, "description"));
            w.string(Info::terms_of_service, str_of(info, "termsOfService"));
            extensions(w, Info::vendor_extension, info);
        });
    }
    w.string(Document::host, str_of(doc, "host"));
    w.string(Document::base_path, str_of(doc, "basePath"));
    strings(&mut w, Document::schemes, doc.get("schemes"));
    strings(&mut w, Document::consumes, doc.get("consumes"));
    strings(&mut w, Document::produces, doc.get("produces"));
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        w.message(Document::paths, |w| {
            extensions(w, Paths::vendor_extension, paths);
            for (name, item) in paths.iter().filter(|(k, _)| !k.starts_with("x-")) {
                w.message(Paths::path, |w| {
                    w.string(NamedPathItem::name, name);
                    w.message(NamedPathItem::value, |w| path_item(w, item));
                });
            }
        });
    }
    if let Some(definitions) = doc.get("definitions").and_then(Value::as_object) {
        w.message(Document::definitions, |w| {
            for (name, def) in definitions {
                w.message(Definitions::additional_properties, |w| named_schema(w, name, def));
            }
        });
    }
    extensions(&mut w, Document::vendor_extension, doc);
    w.into_bytes()
}

fn path_item(w: &mut Writer, item: &Value) {
    let Some(item) = item.as_object() else { return };
    w.string(PathItem::_ref, str_of(item, "$ref"));
    for (method, field) in [
        ("get", PathItem::get),
        ("put", PathItem::put),
        ("post", PathItem::post),
        ("delete", PathItem::delete),
        ("options", PathItem::options),
        ("head", PathItem::head),
        ("patch", PathItem::patch),
    ] {
        if let Some(op) = item.get(method).and_then(Value::as_object) {
            w.message(field, |w| operation(w, op));
        }
    }
    for p in item.get("parameters").and_then(Value::as_array).into_iter().flatten() {
        w.message(PathItem::parameters, |w| parameters_item(w, p));
    }
    extensions(w, PathItem::vendor_extension, item);
}

fn operation(w: &mut Writer, op: &Map<String, Value>) {
    strings(w, Operation::tags, op.get("tags"));
    w.string(Operation::summary, str_of(op, "summary"));
    w.string(Operation::description, str_of(op, "description"));
    if let Some(docs) = op.get("externalDocs").and_then(Value::as_object) {
        w.message(Operation::external_docs, |w| external_docs(w, docs));
    }
    w.string(Operation::operation_id, str_of(op, "operationId"));
    strings(w, Operation::produces, op.get("produces"));
    strings(w, Operation::consumes, op.get("consumes"));
    for p in op.get("parameters").and_then(Value::as_array).into_iter().flatten() {
        w.message(Operation::parameters, |w| parameters_item(w, p));
    }
    if let Some(responses) = op.get("responses").and_then(Value::as_object) {
        w.message(Operation::responses, |w| {
            for (code, r) in responses.iter().filter(|(k, _)| !k.starts_with("x-")) {
                w.message(Responses::response_code, |w| {
                    w.string(NamedResponseValue::name, code);
                    w.message(NamedResponseValue::value, |w| response_value(w, r));
                });
            }
            extensions(w, Responses::vendor_extension, responses);
        });
    }
    strings(w, Operation::schemes, op.get("schemes"));
    w.bool(Operation::deprecated, bool_of(op, "deprecated"));
    extensions(w, Operation::vendor_extension, op);
}

fn response_value(w: &mut Writer, r: &Value) {
    let Some(r) = r.as_object() else { return };
    if let Some(reference) = r.get("$ref").and_then(Value::as_str) {
        w.message(ResponseValue::json_reference, |w| json_reference(w, reference, r));
        return;
    }
    w.message(ResponseValue::response, |w| {
        w.string(Response::description, str_of(r, "description"));
        if let Some(s) = r.get("schema") {
            w.message(Response::schema, |w| w.message(SchemaItem::schema, |w| schema(w, s)));
        }
        extensions(w, Response::vendor_extension, r);
    });
}

fn json_reference(w: &mut Writer, reference: &str, object: &Map<String, Value>) {
    w.string(JsonReference::_ref, reference);
    w.string(JsonReference::description, str_of(object, "description"));
}

fn parameters_item(w: &mut Writer, p: &Value) {
    let Some(p) = p.as_object() else { return };
    if let Some(reference) = p.get("$ref").and_then(Value::as_str) {
        w.message(ParametersItem::json_reference, |w| json_reference(w, reference, p));
        return;
    }
    w.message(ParametersItem::parameter, |w| {
        let location = str_of(p, "in");
        if location == "body" {
            w.message(Parameter::body_parameter, |w| {
                w.string(BodyParameter::description, str_of(p, "description"));
                w.string(BodyParameter::name, str_of(p, "name"));
                w.string(BodyParameter::in_, location);
                w.bool(BodyParameter::required, bool_of(p, "required"));
                if let Some(s) = p.get("schema") {
                    w.message(BodyParameter::schema, |w| schema(w, s));
                }
                extensions(w, BodyParameter::vendor_extension, p);
            });
            return;
        }
        let (member, numbers) = match location {
            "query" => (NonBodyParameter::query_parameter_sub_schema, &QUERY),
            "path" => (NonBodyParameter::path_parameter_sub_schema, &PATH),
            "header" => (NonBodyParameter::header_parameter_sub_schema, &HEADER),
            _ => (NonBodyParameter::form_data_parameter_sub_schema, &FORM_DATA),
        };
        w.message(Parameter::non_body_parameter, |w| {
            w.message(member, |w| sub_schema(w, p, numbers));
        });
    });
}

/// Where a non-body parameter message (or `PrimitivesItems`) keeps each keyword; the four
/// parameter messages and `PrimitivesItems` number the same keywords differently.
struct SubSchemaNumbers {
    required: Option<u32>,
    in_: Option<u32>,
    description: Option<u32>,
    name: Option<u32>,
    allow_empty_value: Option<u32>,
    type_: u32,
    format: u32,
    items: u32,
    collection_format: u32,
    default: u32,
    maximum: u32,
    exclusive_maximum: u32,
    minimum: u32,
    exclusive_minimum: u32,
    max_length: u32,
    min_length: u32,
    pattern: u32,
    max_items: u32,
    min_items: u32,
    unique_items: u32,
    enum_: u32,
    multiple_of: u32,
    vendor_extension: u32,
}

/// Builds the numbers of one parameter-like message from its field module.
macro_rules! sub_schema_numbers {
    ($m:ident, $allow_empty:expr) => {
        SubSchemaNumbers {
            required: Some($m::required),
            in_: Some($m::in_),
            description: Some($m::description),
            name: Some($m::name),
            allow_empty_value: $allow_empty,
            type_: $m::type_,
            format: $m::format,
            items: $m::items,
            collection_format: $m::collection_format,
            default: $m::default,
            maximum: $m::maximum,
            exclusive_maximum: $m::exclusive_maximum,
            minimum: $m::minimum,
            exclusive_minimum: $m::exclusive_minimum,
            max_length: $m::max_length,
            min_length: $m::min_length,
            pattern: $m::pattern,
            max_items: $m::max_items,
            min_items: $m::min_items,
            unique_items: $m::unique_items,
            enum_: $m::enum_,
            multiple_of: $m::multiple_of,
            vendor_extension: $m::vendor_extension,
        }
    };
}

const QUERY: SubSchemaNumbers =
    sub_schema_numbers!(QueryParameterSubSchema, Some(QueryParameterSubSchema::allow_empty_value));
const FORM_DATA: SubSchemaNumbers =
    sub_schema_numbers!(FormDataParameterSubSchema, Some(FormDataParameterSubSchema::allow_empty_value));
const PATH: SubSchemaNumbers = sub_schema_numbers!(PathParameterSubSchema, None);
const HEADER: SubSchemaNumbers = sub_schema_numbers!(HeaderParameterSubSchema, None);
const PRIMITIVES_ITEMS: SubSchemaNumbers = SubSchemaNumbers {
    required: None,
    in_: None,
    description: None,
    name: None,
    allow_empty_value: None,
    type_: PrimitivesItems::type_,
    format: PrimitivesItems::format,
    items: PrimitivesItems::items,
    collection_format: PrimitivesItems::collection_format,
    default: PrimitivesItems::default,
    maximum: PrimitivesItems::maximum,
    exclusive_maximum: PrimitivesItems::exclusive_maximum,
    minimum: PrimitivesItems::minimum,
    exclusive_minimum: PrimitivesItems::exclusive_minimum,
    max_length: PrimitivesItems::max_length,
    min_length: PrimitivesItems::min_length,
    pattern: PrimitivesItems::pattern,
    max_items: PrimitivesItems::max_items,
    min_items: PrimitivesItems::min_items,
    unique_items: PrimitivesItems::unique_items,
    enum_: PrimitivesItems::enum_,
    multiple_of: PrimitivesItems::multiple_of,
    vendor_extension: PrimitivesItems::vendor_extension,
};

fn sub_schema(w: &mut Writer, p: &Map<String, Value>, n: &SubSchemaNumbers) {
    let opt_string = |field: Option<u32>, key: &str, w: &mut Writer| {
        if let Some(field) = field {
            w.string(field, str_of(p, key));
        }
    };
    if let Some(field) = n.required {
        w.bool(field, bool_of(p, "required"));
    }
    opt_string(n.in_, "in", w);
    opt_string(n.description, "description", w);
    opt_string(n.name, "name", w);
    if let Some(field) = n.allow_empty_value {
        w.bool(field, bool_of(p, "allowEmptyValue"));
    }
    w.string(n.type_, str_of(p, "type"));
    w.string(n.format, str_of(p, "format"));
    if let Some(items) = p.get("items").and_then(Value::as_object) {
        w.message(n.items, |w| sub_schema(w, items, &PRIMITIVES_ITEMS));
    }
    w.string(n.collection_format, str_of(p, "collectionFormat"));
    if let Some(v) = p.get("default") {
        any(w, n.default, v);
    }
    w.double(n.maximum, f64_of(p, "maximum"));
    w.bool(n.exclusive_maximum, bool_of(p, "exclusiveMaximum"));
    w.double(n.minimum, f64_of(p, "minimum"));
    w.bool(n.exclusive_minimum, bool_of(p, "exclusiveMinimum"));
    w.int64(n.max_length, i64_of(p, "maxLength"));
    w.int64(n.min_length, i64_of(p, "minLength"));
    w.string(n.pattern, str_of(p, "pattern"));
    w.int64(n.max_items, i64_of(p, "maxItems"));
    w.int64(n.min_items, i64_of(p, "minItems"));
    w.bool(n.unique_items, bool_of(p, "uniqueItems"));
    for v in p.get("enum").and_then(Value::as_array).into_iter().flatten() {
        any(w, n.enum_, v);
    }
    w.double(n.multiple_of, f64_of(p, "multipleOf"));
    extensions(w, n.vendor_extension, p);
}

fn named_schema(w: &mut Writer, name: &str, s: &Value) {
    w.string(NamedSchema::name, name);
    w.message(NamedSchema::value, |w| schema(w, s));
}

/// A `Schema` message. `pub(super)` so tests can encode one alone.
pub(super) fn schema(w: &mut Writer, s: &Value) {
    let Some(s) = s.as_object() else { return };
    w.string(Schema::_ref, str_of(s, "$ref"));
    w.string(Schema::format, str_of(s, "format"));
    w.string(Schema::title, str_of(s, "title"));
    w.string(Schema::description, str_of(s, "description"));
    if let Some(v) = s.get("default") {
        any(w, Schema::default, v);
    }
    w.double(Schema::multiple_of, f64_of(s, "multipleOf"));
    w.double(Schema::maximum, f64_of(s, "maximum"));
    w.bool(Schema::exclusive_maximum, bool_of(s, "exclusiveMaximum"));
    w.double(Schema::minimum, f64_of(s, "minimum"));
    w.bool(Schema::exclusive_minimum, bool_of(s, "exclusiveMinimum"));
    w.int64(Schema::max_length, i64_of(s, "maxLength"));
    w.int64(Schema::min_length, i64_of(s, "minLength"));
    w.string(Schema::pattern, str_of(s, "pattern"));
    w.int64(Schema::max_items, i64_of(s, "maxItems"));
    w.int64(Schema::min_items, i64_of(s, "minItems"));
    w.bool(Schema::unique_items, bool_of(s, "uniqueItems"));
    w.int64(Schema::max_properties, i64_of(s, "maxProperties"));
    w.int64(Schema::min_properties, i64_of(s, "minProperties"));
    strings(w, Schema::required, s.get("required"));
    for v in s.get("enum").and_then(Value::as_array).into_iter().flatten() {
        any(w, Schema::enum_, v);
    }
    match s.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            w.message(Schema::additional_properties, |w| w.bool_always(AdditionalPropertiesItem::boolean, *b))
        }
        Some(inner @ Value::Object(_)) => w.message(Schema::additional_properties, |w| {
            w.message(AdditionalPropertiesItem::schema, |w| schema(w, inner))
        }),
        _ => {}
    }
    match s.get("type") {
        Some(Value::String(t)) => w.message(Schema::type_, |w| w.repeated_string(TypeItem::value, t)),
        Some(Value::Array(types)) => w.message(Schema::type_, |w| {
            for t in types.iter().filter_map(Value::as_str) {
                w.repeated_string(TypeItem::value, t);
            }
        }),
        _ => {}
    }
    match s.get("items") {
        Some(one @ Value::Object(_)) => w.message(Schema::items, |w| w.message(ItemsItem::schema, |w| schema(w, one))),
        Some(Value::Array(many)) => w.message(Schema::items, |w| {
            for item in many {
                w.message(ItemsItem::schema, |w| schema(w, item));
            }
        }),
        _ => {}
    }
    for sub in s.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        w.message(Schema::all_of, |w| schema(w, sub));
    }
    if let Some(properties) = s.get("properties").and_then(Value::as_object) {
        w.message(Schema::properties, |w| {
            for (name, p) in properties {
                w.message(Properties::additional_properties, |w| named_schema(w, name, p));
            }
        });
    }
    w.string(Schema::discriminator, str_of(s, "discriminator"));
    w.bool(Schema::read_only, bool_of(s, "readOnly"));
    if let Some(docs) = s.get("externalDocs").and_then(Value::as_object) {
        w.message(Schema::external_docs, |w| external_docs(w, docs));
    }
    if let Some(v) = s.get("example") {
        any(w, Schema::example, v);
    }
    extensions(w, Schema::vendor_extension, s);
}

fn external_docs(w: &mut Writer, docs: &Map<String, Value>) {
    w.string(ExternalDocs::description, str_of(docs, "description"));
    w.string(ExternalDocs::url, str_of(docs, "url"));
    extensions(w, ExternalDocs::vendor_extension, docs);
}

/// The object's `x-` keys, as repeated `NamedAny` in `field`.
fn extensions(w: &mut Writer, field: u32, object: &Map<String, Value>) {
    for (name, value) in object.iter().filter(|(k, _)| k.starts_with("x-")) {
        w.message(field, |w| {
            w.string(NamedAny::name, name);
            w.message(NamedAny::value, |w| w.string(Any::yaml, &yaml(value)));
        });
    }
}

/// An `Any` holding `value` as YAML, as gnostic fills `default`, `enum` and `example`.
fn any(w: &mut Writer, field: u32, value: &Value) {
    w.message(field, |w| w.string(Any::yaml, &yaml(value)));
}

/// YAML text of a JSON value, as gnostic stores extension values (`merge\n`, `- group: apps\n  ...`).
pub(super) fn yaml(value: &Value) -> String {
    // Serializing a JSON value cannot fail; JSON text is valid YAML should it ever.
    serde_yaml::to_string(value).unwrap_or_else(|_| value.to_string())
}

fn strings(w: &mut Writer, field: u32, list: Option<&Value>) {
    for s in list.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        w.repeated_string(field, s);
    }
}

fn str_of<'a>(object: &'a Map<String, Value>, key: &str) -> &'a str {
    object.get(key).and_then(Value::as_str).unwrap_or("")
}

fn bool_of(object: &Map<String, Value>, key: &str) -> bool {
    object.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn i64_of(object: &Map<String, Value>, key: &str) -> i64 {
    object.get(key).and_then(Value::as_i64).unwrap_or(0)
}

fn f64_of(object: &Map<String, Value>, key: &str) -> f64 {
    object.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

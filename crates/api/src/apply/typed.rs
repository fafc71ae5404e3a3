//! What structured merge needs to know about a value at some place in an object, read from the
//! published OpenAPI schemas ([`SchemaSet`]) as upstream's `schemaconv` reads them:
//!
//! - a definition with `properties` is a struct; it is atomic (replaced whole) when its field or
//!   its definition says `x-kubernetes-map-type: atomic`;
//! - an object with `additionalProperties` is a map, granular unless `map-type: atomic`;
//! - a list is associative when `x-kubernetes-list-type` is `map` (items identified by
//!   `list-map-keys`) or `set` (scalar items identified by value), or, without a list type, when
//!   its patch strategy merges (by the patch merge key); otherwise it is atomic;
//! - scalars are leaves; and anything the schema does not describe (free-form objects such as
//!   `RawExtension`, definitions the set lacks) is "deduced" from the value: objects merge per
//!   key, lists and scalars are leaves.

use serde_json::{Map, Value};

use crate::schema::{ListType, MapType, PatchStrategy, REF_PREFIX, SchemaExtensions, SchemaSet};

/// The kind of scalar a schema allows, for validation of applied configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarKind {
    String,
    Numeric,
    Boolean,
    /// Int-or-string, quantities, times: any scalar.
    Untyped,
}

/// How the items of a list are identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListKind<'s> {
    /// The list is one value.
    Atomic,
    /// Scalar items, identified by their value.
    Set,
    /// Object items, identified by these key fields.
    Map(Vec<&'s str>),
}

/// A value's type at one place in an object.
#[derive(Debug, Clone)]
pub(crate) enum Atom<'s> {
    /// A definition with named fields.
    Struct {
        definition: &'s str,
        properties: &'s Map<String, Value>,
        atomic: bool,
    },
    /// An object with arbitrary keys; `values` is the schema of its values.
    Map {
        values: &'s Value,
        atomic: bool,
    },
    /// A list; `items` is the schema of its items.
    List {
        items: &'s Value,
        kind: ListKind<'s>,
    },
    Scalar(ScalarKind),
    /// Not described: objects are granular maps of deduced values, lists and scalars leaves.
    Deduced,
}

/// Defaults of list map keys that upstream's OpenAPI documents carry (`default:`) and the
/// published schemas here do not: an item that omits such a key is identified with the default,
/// as the server would fill it in.
const KEY_DEFAULTS: &[(&str, &str, &str)] =
    &[("io.k8s.api.core.v1.ContainerPort", "protocol", "TCP"), ("io.k8s.api.core.v1.ServicePort", "protocol", "TCP")];

/// Reads atoms out of a schema set.
#[derive(Clone, Copy)]
pub(crate) struct Schema<'s> {
    pub set: &'s SchemaSet,
}

impl<'s> Schema<'s> {
    /// The atom of a top-level definition, e.g. `io.k8s.api.apps.v1.Deployment`.
    pub fn root(&self, definition: &'s str) -> Atom<'s> {
        self.named(definition, &SchemaExtensions::default())
    }

    /// The atom of a property (or item, or map value) schema.
    pub fn resolve(&self, schema: &'s Value) -> Atom<'s> {
        let Some(object) = schema.as_object() else {
            return Atom::Deduced;
        };
        let extensions = extensions(schema);
        if let Some(name) = reference(object) {
            return self.named(name, &extensions);
        }
        self.inline(object, &extensions)
    }

    fn inline(&self, object: &'s Map<String, Value>, extensions: &SchemaExtensions<'s>) -> Atom<'s> {
        match object.get("type").and_then(Value::as_str) {
            Some("array") => match object.get("items") {
                Some(items) => Atom::List { items, kind: list_kind(extensions) },
                None => Atom::Deduced,
            },
            Some("object") => {
                match (object.get("properties").and_then(Value::as_object), object.get("additionalProperties")) {
                    (Some(properties), _) => Atom::Struct {
                        definition: "",
                        properties,
                        atomic: extensions.map_type == Some(MapType::Atomic),
                    },
                    (None, Some(values @ Value::Object(_))) => {
                        Atom::Map { values, atomic: extensions.map_type == Some(MapType::Atomic) }
                    }
                    _ => Atom::Deduced,
                }
            }
            Some("string") => match object.get("format").and_then(Value::as_str) {
                None | Some("") | Some("byte") => Atom::Scalar(ScalarKind::String),
                Some(_) => Atom::Scalar(ScalarKind::Untyped),
            },
            Some("integer" | "number") => Atom::Scalar(ScalarKind::Numeric),
            Some("boolean") => Atom::Scalar(ScalarKind::Boolean),
            Some(_) => Atom::Scalar(ScalarKind::Untyped),
            None if object.contains_key("oneOf") || object.contains_key("x-kubernetes-int-or-string") => {
                Atom::Scalar(ScalarKind::Untyped)
            }
            None => Atom::Deduced,
        }
    }

    fn named(&self, name: &'s str, field: &SchemaExtensions<'s>) -> Atom<'s> {
        let Some(definition) = self.set.definition(name) else {
            return Atom::Deduced;
        };
        let Some(object) = definition.as_object() else {
            return Atom::Deduced;
        };
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            let own = extensions(definition);
            let atomic = match field.map_type.or(own.map_type) {
                Some(MapType::Atomic) => true,
                Some(MapType::Granular) | None => false,
            };
            return Atom::Struct { definition: name, properties, atomic };
        }
        // Merge the field's extensions over the definition's for lists and maps.
        let mut extensions = extensions(definition);
        if field.list_type.is_some() || field.patch_strategy.is_some() {
            extensions.list_type = field.list_type;
            extensions.list_map_keys = field.list_map_keys.clone();
            extensions.patch_strategy = field.patch_strategy;
            extensions.patch_merge_key = field.patch_merge_key;
        }
        if field.map_type.is_some() {
            extensions.map_type = field.map_type;
        }
        self.inline(object, &extensions)
    }

    /// The atom of a struct field, or `None` when the struct does not declare it.
    pub fn field(&self, properties: &'s Map<String, Value>, name: &str) -> Option<Atom<'s>> {
        properties.get(name).map(|schema| self.resolve(schema))
    }

    /// The definition name of a list's object items (for key defaults), if they are named.
    pub fn items_definition(&self, items: &'s Value) -> &'s str {
        match self.resolve(items) {
            Atom::Struct { definition, .. } => definition,
            _ => "",
        }
    }
}

/// The patch and list extensions of a schema. Most schemas have none, and a scan of their few
/// keys is cheaper than looking each extension up.
fn extensions(schema: &Value) -> SchemaExtensions<'_> {
    match schema.as_object() {
        Some(o) if o.keys().any(|k| k.starts_with("x-kubernetes-")) => {
            SchemaExtensions::from_schema(schema).unwrap_or_default()
        }
        _ => SchemaExtensions::default(),
    }
}

/// The definition a schema refers to, directly or through a single-element `allOf`.
fn reference(object: &Map<String, Value>) -> Option<&str> {
    if let Some(first) = object.get("allOf").and_then(Value::as_array).and_then(|all| all.first()) {
        return first.as_object().and_then(reference);
    }
    object.get("$ref").and_then(Value::as_str).map(|r| r.strip_prefix(REF_PREFIX).unwrap_or(r))
}

/// Upstream's `getListElementRelationship`: the list type wins, else the patch strategy.
fn list_kind<'s>(extensions: &SchemaExtensions<'s>) -> ListKind<'s> {
    match extensions.list_type {
        Some(ListType::Atomic) => ListKind::Atomic,
        Some(ListType::Set) => ListKind::Set,
        Some(ListType::Map) => ListKind::Map(extensions.list_map_keys.clone()),
        None => match extensions.patch_strategy {
            Some(PatchStrategy::Merge | PatchStrategy::MergeAndRetainKeys) => match extensions.patch_merge_key {
                Some(key) => ListKind::Map(vec![key]),
                None => ListKind::Set,
            },
            _ => ListKind::Atomic,
        },
    }
}

/// The default of a list map key, for items that omit it.
pub(crate) fn key_default(items_definition: &str, key: &str) -> Option<Value> {
    KEY_DEFAULTS
        .iter()
        .find(|(d, k, _)| *d == items_definition && *k == key)
        .map(|(_, _, v)| Value::String((*v).to_owned()))
}

/// A readable name of a JSON value's type, for validation messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

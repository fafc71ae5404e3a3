//! Questions about one field of a definition: what it holds and how it is patched.
//!
//! Strategic merge patch, field validation and server-side apply all walk objects alongside
//! their schema; they need the same answers, with `$ref`s followed, so they ask here.

use serde_json::Value;

use super::extensions::SchemaExtensions;

/// Where references point: the definitions of the OpenAPI v3 document.
pub const REF_PREFIX: &str = "#/components/schemas/";

/// What a value of a schema holds, with `$ref`s resolved to definition names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueType<'a> {
    /// A named definition (`io.k8s.api.core.v1.Container`, also the scalar-like
    /// `io.k8s.apimachinery.pkg.util.intstr.IntOrString`).
    Named(&'a str),
    /// An array of elements of the inner type.
    List(Box<ValueType<'a>>),
    /// An object with arbitrary keys (`additionalProperties`) whose values have the inner type.
    Map(Box<ValueType<'a>>),
    /// A JSON scalar: `string`, `integer`, `number` or `boolean`.
    Primitive(&'a str),
    /// Anything: a free-form object or a schema without a type.
    Untyped,
}

impl<'a> ValueType<'a> {
    /// The type described by a schema as this crate publishes it: a `$ref`, a single-element
    /// `allOf` wrapping a `$ref` (how OpenAPI 3.0 attaches a description to a reference), an
    /// array, a map or a scalar.
    pub fn of(schema: &'a Value) -> Self {
        let Some(object) = schema.as_object() else {
            return Self::Untyped;
        };
        if let Some(first) = object.get("allOf").and_then(Value::as_array).and_then(|all| all.first()) {
            return Self::of(first);
        }
        if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
            return Self::Named(reference.strip_prefix(REF_PREFIX).unwrap_or(reference));
        }
        match object.get("type").and_then(Value::as_str) {
            Some("array") => Self::List(Box::new(object.get("items").map_or(Self::Untyped, Self::of))),
            Some("object") => match object.get("additionalProperties") {
                Some(values @ Value::Object(_)) => Self::Map(Box::new(Self::of(values))),
                _ => Self::Untyped,
            },
            Some(scalar) => Self::Primitive(scalar),
            None => Self::Untyped,
        }
    }

    /// The definition name, for [`ValueType::Named`].
    pub fn definition_name(&self) -> Option<&'a str> {
        match self {
            Self::Named(name) => Some(name),
            _ => None,
        }
    }

    /// The element type, for [`ValueType::List`].
    pub fn list_items(&self) -> Option<&ValueType<'a>> {
        match self {
            Self::List(items) => Some(items),
            _ => None,
        }
    }

    /// The value type, for [`ValueType::Map`].
    pub fn map_values(&self) -> Option<&ValueType<'a>> {
        match self {
            Self::Map(values) => Some(values),
            _ => None,
        }
    }
}

/// One property of a definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Field<'a> {
    /// The definition the field belongs to.
    pub definition: &'a str,
    /// The field's JSON name.
    pub name: &'a str,
    /// The property's schema as published (description, extensions, `allOf`/`items`).
    pub schema: &'a Value,
    /// What the field holds.
    pub value_type: ValueType<'a>,
    /// How the field is patched and merged.
    pub extensions: SchemaExtensions<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reference_wrapped_in_all_of_resolves_to_its_definition() {
        let schema = json!({
            "allOf": [{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentStrategy"}],
            "description": "The deployment strategy to use."
        });
        assert_eq!(ValueType::of(&schema), ValueType::Named("io.k8s.api.apps.v1.DeploymentStrategy"));
    }

    #[test]
    fn arrays_and_maps_resolve_their_element_types() {
        let list = json!({"type": "array", "items": {"$ref": "#/components/schemas/a.B"}});
        assert_eq!(ValueType::of(&list).list_items(), Some(&ValueType::Named("a.B")));
        let map = json!({"type": "object", "additionalProperties": {"type": "string"}});
        assert_eq!(ValueType::of(&map).map_values(), Some(&ValueType::Primitive("string")));
        let nested = json!({"type": "array", "items": {"type": "array", "items": {"type": "string"}}});
        assert_eq!(
            ValueType::of(&nested),
            ValueType::List(Box::new(ValueType::List(Box::new(ValueType::Primitive("string")))))
        );
    }

    #[test]
    fn free_form_objects_are_untyped() {
        assert_eq!(ValueType::of(&json!({"type": "object"})), ValueType::Untyped);
        assert_eq!(ValueType::of(&json!({"x-kubernetes-int-or-string": true})), ValueType::Untyped);
        assert_eq!(ValueType::of(&json!({"type": "object", "additionalProperties": true})), ValueType::Untyped);
    }
}

//! Kubernetes' strategic merge patch (`application/strategic-merge-patch+json`), applied the way
//! upstream's `k8s.io/apimachinery/pkg/util/strategicpatch` applies a patch on the server.
//!
//! A strategic merge patch is a JSON merge patch whose lists can be merged instead of replaced.
//! Which lists merge, and by which key, is a fact of the API carried by the schema's
//! `x-kubernetes-patch-strategy` and `x-kubernetes-patch-merge-key` extensions (see
//! [`crate::schema`]); the patch itself can carry directives:
//!
//! - `$patch: replace` in a map replaces the map instead of merging it; in a list, replaces the
//!   list with the patch's other elements.
//! - `$patch: delete` in a map empties it; as a list element, deletes the elements with the same
//!   merge key.
//! - `$retainKeys: [..]` in a map drops every field of the original not listed.
//! - `$deleteFromPrimitiveList/<field>: [..]` removes values from a merged list of scalars.
//! - `$setElementOrder/<field>: [..]` gives the order of a merged list's elements.
//!
//! Fields the schema does not describe (free-form objects such as `RawExtension`, fields the
//! schema lacks, definitions the set lacks such as custom resources) are merged with plain JSON
//! merge patch semantics, as upstream treats unstructured content; upstream's server refuses
//! strategic merge patches for custom resources altogether, which the API server decides.
//!
//! Quirks of upstream are kept on purpose, since clients were written against them: a new
//! element of a merged list goes before the original's elements unless `$setElementOrder` says
//! otherwise, `$patch: delete` on a map leaves an empty map, and directives inside a value that
//! replaces (rather than merges into) the original are kept as they are.

mod list;
#[cfg(test)]
mod tests;

use std::fmt;

use serde_json::{Map, Value};

use crate::schema::{PatchStrategy, SchemaError, SchemaExtensions, SchemaSet, ValueType};

const PATCH_DIRECTIVE: &str = "$patch";
const RETAIN_KEYS_DIRECTIVE: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";

/// Which input document a [`StrategicPatchError::NotAnObject`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    Original,
    Patch,
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Original => "original object",
            Self::Patch => "patch",
        })
    }
}

/// A patch that cannot be applied. `path` is where in the object, e.g.
/// `.spec.template.spec.containers["name"="nginx"].env`.
///
/// Upstream's API server answers the malformed-directive errors (`InvalidRetainKeys`,
/// `InvalidSetElementOrder`, `InvalidDeleteFromPrimitiveList`, `NotAnObject`) with 400 Bad
/// Request, `ListOfLists` with 422, and the others with 500.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StrategicPatchError {
    #[error("invalid JSON document: the {document} is not a JSON object")]
    NotAnObject { document: Document },
    #[error("unknown patch type: {value} in map at {path}")]
    UnknownPatchType { path: String, value: Value },
    #[error("merging lists cannot yet be specified in the patch at {path}")]
    MergeDirectiveInList { path: String },
    #[error("map: {element} does not contain declared merge key: {merge_key} at {path}")]
    MissingMergeKey { path: String, merge_key: String, element: Value },
    #[error("cannot merge lists without merge key at {path}")]
    NoMergeKey { path: String },
    #[error("invalid patch format of retainKeys at {path}")]
    InvalidRetainKeys { path: String },
    #[error("invalid patch format of setElementOrder list {key:?} at {path}")]
    InvalidSetElementOrder { path: String, key: String },
    #[error("the order in patch list doesn't match the $setElementOrder list at {path}")]
    SetElementOrderMismatch { path: String },
    #[error("invalid patch format of primitive list {key:?} at {path}")]
    InvalidDeleteFromPrimitiveList { path: String, key: String },
    #[error("lists of lists are not supported at {path}")]
    ListOfLists { path: String },
    #[error("list element types are not identical at {path}")]
    MixedElementTypes { path: String },
    #[error("no elements in any of the given lists at {path}")]
    NoElements { path: String },
    #[error("expected a {expected}, but received a {actual} at {path}")]
    UnexpectedType { path: String, expected: &'static str, actual: &'static str },
    #[error("invalid schema at {path}")]
    Schema {
        path: String,
        #[source]
        source: Box<SchemaError>,
    },
}

/// Applies a strategic merge patch to an object of the definition `def_name` (e.g.
/// `io.k8s.api.apps.v1.Deployment`) and returns the patched object. Neither input is changed.
pub fn apply_strategic_merge_patch(
    original: &Value,
    patch: &Value,
    schema: &SchemaSet,
    def_name: &str,
) -> Result<Value, StrategicPatchError> {
    let Value::Object(original) = original else {
        return Err(StrategicPatchError::NotAnObject { document: Document::Original });
    };
    let Value::Object(patch) = patch else {
        return Err(StrategicPatchError::NotAnObject { document: Document::Patch });
    };
    let patcher = Patcher { schema };
    let position = patcher.position_of(&ValueType::Named(def_name));
    let merged = patcher.merge_objects(original.clone(), patch.clone(), &position, Path::ROOT)?;
    Ok(Value::Object(merged))
}

/// Where in the object, for error messages. Built on the stack as the merge descends, and only
/// rendered when something fails.
#[derive(Clone, Copy)]
struct Path<'p> {
    parent: Option<&'p Path<'p>>,
    segment: &'p str,
}

impl<'p> Path<'p> {
    const ROOT: Path<'static> = Path { parent: None, segment: "" };

    /// A field, or (a segment starting with `[`) a list element.
    fn child<'q>(&'q self, segment: &'q str) -> Path<'q> {
        Path { parent: Some(self), segment }
    }

    fn render(&self) -> String {
        let mut segments = Vec::new();
        let mut at = Some(self);
        while let Some(path) = at {
            if path.parent.is_some() {
                segments.push(path.segment);
            }
            at = path.parent;
        }
        if segments.is_empty() {
            return ".".to_owned();
        }
        segments.iter().rev().fold(String::new(), |mut rendered, segment| {
            if !segment.starts_with('[') {
                rendered.push('.');
            }
            rendered.push_str(segment);
            rendered
        })
    }
}

/// What the schema knows about the value at some place in the object.
#[derive(Debug, Clone)]
enum Position<'s> {
    /// An object with named fields: a definition's name and `properties`.
    Fields(&'s str, &'s Map<String, Value>),
    /// An object with arbitrary keys whose values all have one type.
    MapOf(ValueType<'s>),
    /// Nothing: merged as a JSON merge patch.
    Untyped,
}

/// How to merge one field, from its schema.
struct FieldPlan<'s> {
    strategy: Option<PatchStrategy>,
    merge_key: Option<&'s str>,
    /// For an object field, the object's position; for a list field, its elements'.
    position: Position<'s>,
}

/// The merge, bound to the schema set it reads patch metadata from.
struct Patcher<'s> {
    schema: &'s SchemaSet,
}

impl<'s> Patcher<'s> {
    fn position_of(&self, value_type: &ValueType<'s>) -> Position<'s> {
        match value_type {
            ValueType::Named(name) => {
                let Some(definition) = self.schema.definition(name) else {
                    return Position::Untyped;
                };
                if let Some(fields) = definition.get("properties").and_then(Value::as_object) {
                    return Position::Fields(name, fields);
                }
                match ValueType::of(definition) {
                    ValueType::Map(values) => Position::MapOf(*values),
                    _ => Position::Untyped,
                }
            }
            ValueType::Map(values) => Position::MapOf((**values).clone()),
            _ => Position::Untyped,
        }
    }

    /// The schema of `key` in an object at `position`: its extensions and what it holds.
    fn field(
        &self,
        position: &Position<'s>,
        key: &str,
        path: Path<'_>,
    ) -> Result<(SchemaExtensions<'s>, ValueType<'s>), StrategicPatchError> {
        match position {
            Position::Fields(definition, fields) => match fields.get(key) {
                Some(property) => {
                    let extensions =
                        SchemaExtensions::from_schema(property).map_err(|source| StrategicPatchError::Schema {
                            path: path.child(key).render(),
                            source: Box::new(SchemaError::InvalidExtension {
                                definition: (*definition).to_owned(),
                                field: key.to_owned(),
                                source,
                            }),
                        })?;
                    Ok((extensions, ValueType::of(property)))
                }
                None => Ok((SchemaExtensions::default(), ValueType::Untyped)),
            },
            Position::MapOf(values) => Ok((SchemaExtensions::default(), values.clone())),
            Position::Untyped => Ok((SchemaExtensions::default(), ValueType::Untyped)),
        }
    }

    /// How to merge an object-valued field.
    fn object_field(
        &self,
        position: &Position<'s>,
        key: &str,
        path: Path<'_>,
    ) -> Result<FieldPlan<'s>, StrategicPatchError> {
        let (extensions, value_type) = self.field(position, key, path)?;
        Ok(FieldPlan {
            strategy: extensions.patch_strategy,
            merge_key: extensions.patch_merge_key,
            position: self.position_of(&value_type),
        })
    }

    /// How to merge a list-valued field.
    fn list_field(
        &self,
        position: &Position<'s>,
        key: &str,
        path: Path<'_>,
    ) -> Result<FieldPlan<'s>, StrategicPatchError> {
        let (extensions, value_type) = self.field(position, key, path)?;
        Ok(FieldPlan {
            strategy: extensions.patch_strategy,
            merge_key: extensions.patch_merge_key,
            position: value_type.list_items().map_or(Position::Untyped, |items| self.position_of(items)),
        })
    }

    /// Merges two objects at a position: strategically where the schema is known, as a JSON
    /// merge patch where it is not.
    fn merge_objects(
        &self,
        original: Map<String, Value>,
        patch: Map<String, Value>,
        position: &Position<'s>,
        path: Path<'_>,
    ) -> Result<Map<String, Value>, StrategicPatchError> {
        match position {
            Position::Untyped => Ok(json_merge_objects(original, patch)),
            _ => self.merge_map(original, patch, position, path),
        }
    }

    fn merge_map(
        &self,
        mut original: Map<String, Value>,
        mut patch: Map<String, Value>,
        position: &Position<'s>,
        path: Path<'_>,
    ) -> Result<Map<String, Value>, StrategicPatchError> {
        if let Some(directive) = patch.get(PATCH_DIRECTIVE) {
            return match directive.as_str() {
                Some("replace") => {
                    patch.shift_remove(PATCH_DIRECTIVE);
                    Ok(patch)
                }
                Some("delete") => Ok(Map::new()),
                _ => Err(StrategicPatchError::UnknownPatchType { path: path.render(), value: directive.clone() }),
            };
        }
        apply_retain_keys(&mut original, &mut patch, path)?;
        self.apply_set_element_order(&mut original, &mut patch, position, path)?;

        for (key, patch_value) in patch {
            let (key, deletes_from_list) = if key.starts_with(DELETE_FROM_PRIMITIVE_LIST) {
                let field = directive_field(&key, DELETE_FROM_PRIMITIVE_LIST).ok_or_else(|| {
                    StrategicPatchError::InvalidDeleteFromPrimitiveList { path: path.render(), key: key.clone() }
                })?;
                (field.to_owned(), true)
            } else {
                (key, false)
            };
            // A null deletes the field, whatever the field holds.
            if patch_value.is_null() {
                original.shift_remove(&key);
                continue;
            }
            let Some(current) = original.get_mut(&key) else {
                // Nothing to merge with: the patch's value is taken, minus its nulls and any
                // element or map that carries a `$patch` directive.
                if !deletes_from_list && let Some(value) = without_directives(without_nulls(patch_value)) {
                    original.insert(key, value);
                }
                continue;
            };
            let field_path = path.child(&key);
            let merged = match (std::mem::take(current), patch_value) {
                (Value::Object(current), Value::Object(patch_value)) => {
                    let plan = self.object_field(position, &key, path)?;
                    if plan.strategy == Some(PatchStrategy::Replace) {
                        Some(Value::Object(patch_value))
                    } else {
                        Some(Value::Object(self.merge_objects(current, patch_value, &plan.position, field_path)?))
                    }
                }
                (Value::Array(current), Value::Array(patch_value)) => {
                    let plan = self.list_field(position, &key, path)?;
                    Some(Value::Array(self.merge_list_field(
                        current,
                        patch_value,
                        &plan,
                        deletes_from_list,
                        field_path,
                    )?))
                }
                (current, patch_value) if scalar_kind(&current) == scalar_kind(&patch_value) => {
                    // Two scalars of one type: the patch's value wins.
                    Some(patch_value)
                }
                (current, patch_value) => {
                    if deletes_from_list {
                        Some(current)
                    } else {
                        without_directives(without_nulls(patch_value))
                    }
                }
            };
            match merged {
                Some(value) => {
                    original.insert(key, value);
                }
                None => {
                    original.shift_remove(&key);
                }
            }
        }
        Ok(original)
    }

    /// Merges a list field by its strategy: merged if the strategy says so (or if the patch
    /// lists values to delete), otherwise replaced by the patch's list as it is.
    fn merge_list_field(
        &self,
        original: Vec<Value>,
        patch: Vec<Value>,
        plan: &FieldPlan<'s>,
        deletes_from_list: bool,
        path: Path<'_>,
    ) -> Result<Vec<Value>, StrategicPatchError> {
        if plan.strategy.is_some_and(PatchStrategy::merges) || deletes_from_list {
            self.merge_list(original, patch, plan.merge_key, &plan.position, deletes_from_list, path)
        } else {
            Ok(patch)
        }
    }
}

/// `$retainKeys`: the original keeps only the listed fields, and the patch may set no others.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    path: Path<'_>,
) -> Result<(), StrategicPatchError> {
    let Some(retained) = patch.shift_remove(RETAIN_KEYS_DIRECTIVE) else {
        return Ok(());
    };
    let invalid = || StrategicPatchError::InvalidRetainKeys { path: path.render() };
    let Value::Array(retained) = retained else {
        return Err(invalid());
    };
    let is_retained = |key: &str| retained.iter().any(|name| name.as_str() == Some(key));
    let sets_other_field = patch.iter().any(|(key, value)| {
        !value.is_null()
            && !key.starts_with(DELETE_FROM_PRIMITIVE_LIST)
            && !key.starts_with(SET_ELEMENT_ORDER)
            && !is_retained(key)
    });
    if sets_other_field {
        return Err(invalid());
    }
    original.retain(|key, _| is_retained(key));
    Ok(())
}

/// The field a `$directive/<field>` key names, if it has that form.
fn directive_field<'k>(key: &'k str, directive: &str) -> Option<&'k str> {
    let (prefix, field) = key.split_once('/')?;
    (prefix == directive).then_some(field)
}

/// Drops null fields from every object in a value: a patch's nulls delete, so there is nothing
/// for them to say where the original has no value.
fn without_nulls(mut value: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(object) => {
                object.retain(|_, field| !field.is_null());
                object.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    value
}

/// Drops every object carrying a `$patch` directive (and so the whole value, if it is one), as
/// upstream does when a patch value has nothing to merge into.
fn without_directives(value: Value) -> Option<Value> {
    match value {
        Value::Object(object) => {
            if object.contains_key(PATCH_DIRECTIVE) {
                return None;
            }
            Some(Value::Object(
                object.into_iter().filter_map(|(key, field)| without_directives(field).map(|f| (key, f))).collect(),
            ))
        }
        Value::Array(items) => Some(Value::Array(items.into_iter().filter_map(without_directives).collect())),
        scalar => Some(scalar),
    }
}

/// JSON merge patch (RFC 7386) of two objects, keeping the original's key order.
fn json_merge_objects(mut original: Map<String, Value>, patch: Map<String, Value>) -> Map<String, Value> {
    for (key, patch_value) in patch {
        if patch_value.is_null() {
            original.shift_remove(&key);
            continue;
        }
        match (original.get_mut(&key), patch_value) {
            (Some(Value::Object(current)), Value::Object(patch_value)) => {
                let merged = json_merge_objects(std::mem::take(current), patch_value);
                *current = merged;
            }
            (_, Value::Object(patch_value)) => {
                original.insert(key, Value::Object(json_merge_objects(Map::new(), patch_value)));
            }
            (_, patch_value) => {
                original.insert(key, patch_value);
            }
        }
    }
    original
}

/// The JSON kinds upstream tells apart (Go decodes integers and other numbers to different
/// types, so they differ here too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Integer,
    Float,
    String,
    List,
    Map,
}

fn scalar_kind(value: &Value) -> Kind {
    match value {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(number) if number.is_i64() => Kind::Integer,
        Value::Number(_) => Kind::Float,
        Value::String(_) => Kind::String,
        Value::Array(_) => Kind::List,
        Value::Object(_) => Kind::Map,
    }
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

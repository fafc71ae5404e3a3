//! The OpenAPI component schemas of the served types.
//!
//! A [`SchemaSet`] is built by adding k8s-openapi types one by one; schemars generates their
//! schemas with OpenAPI 3.0 settings, so definitions are named as upstream names them
//! (`io.k8s.api.apps.v1.Deployment`) and referenced as `#/components/schemas/<name>`. What
//! k8s-openapi's schemas lack and clients rely on is added here:
//!
//! - `x-kubernetes-group-version-kind` on top-level kinds, which kubectl uses to find a kind's
//!   schema in `/openapi/v3`;
//! - the patch and list extensions of upstream's Go types (the table `patch_metadata.txt`, whose
//!   header says how it was derived), which kubectl needs to compute strategic merge patches and
//!   the server needs to apply them;
//! - `<Kind>List` definitions, which k8s-openapi models as a generic `List<T>` without a schema;
//! - upstream's v3 shapes for `IntOrString` and `Quantity`.
//!
//! The set answers questions about fields ([`SchemaSet::field`]) and renders the
//! `components.schemas` object of an OpenAPI v3 document ([`SchemaSet::to_components_json`]);
//! the API server builds the paths around it.

mod extensions;
mod field;
mod table;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use k8s_openapi::{ListableResource, Resource};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

pub use extensions::{
    ExtensionError, GROUP_VERSION_KIND, LIST_MAP_KEYS, LIST_TYPE, ListType, MAP_TYPE, MapType, PATCH_MERGE_KEY,
    PATCH_STRATEGY, PatchStrategy, SchemaExtensions,
};
pub use field::{Field, REF_PREFIX, ValueType};

use table::PATCH_METADATA;

const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// A group, version and kind, as `x-kubernetes-group-version-kind` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupVersionKind {
    /// The API group; empty for the core group.
    pub group: String,
    /// The version, e.g. `v1`.
    pub version: String,
    /// The kind, e.g. `Deployment`.
    pub kind: String,
}

impl GroupVersionKind {
    /// Builds a group, version and kind from its parts.
    pub fn new(group: impl Into<String>, version: impl Into<String>, kind: impl Into<String>) -> Self {
        Self { group: group.into(), version: version.into(), kind: kind.into() }
    }

    /// The group, version and kind of a k8s-openapi type.
    pub fn of<T: Resource>() -> Self {
        Self::new(T::GROUP, T::VERSION, T::KIND)
    }

    fn to_json(&self) -> Value {
        // Keys in upstream's (alphabetical) order.
        json!({"group": self.group, "kind": self.kind, "version": self.version})
    }
}

/// A failed question about the set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    #[error("no schema definition named {definition}")]
    UnknownDefinition { definition: String },
    #[error("schema definition {definition} has no field {field:?}")]
    UnknownField { definition: String, field: String },
    #[error("field {field:?} of schema definition {definition}")]
    InvalidExtension {
        definition: String,
        field: String,
        #[source]
        source: ExtensionError,
    },
}

/// The component schemas of the served types, with upstream's Kubernetes extensions.
///
/// The set holds only JSON, so it is cheap to share between threads once built.
#[derive(Debug, Clone, Default)]
pub struct SchemaSet {
    /// Every definition, in the order it was generated.
    definitions: Map<String, Value>,
    /// Which definition serves each kind.
    kinds: HashMap<GroupVersionKind, String>,
}

impl SchemaSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a top-level kind (and every definition it references), marked with its group,
    /// version and kind. Returns the kind's definition name. Adding a type twice is harmless.
    pub fn add<T: JsonSchema + Resource>(&mut self) -> &str {
        let name = self.generate::<T>();
        self.mark_kind(&name, GroupVersionKind::of::<T>());
        self.name_in_set(&name)
    }

    /// Adds a listable kind as [`SchemaSet::add`] does, plus its `<Kind>List` definition
    /// (`io.k8s.api.apps.v1.DeploymentList`), which list and watch responses are described by.
    /// Returns the kind's definition name.
    pub fn add_with_list<T: JsonSchema + ListableResource>(&mut self) -> &str {
        let item = self.add::<T>().to_owned();
        let list_meta = self.generate::<ListMeta>();
        let list = list_definition_name(&item, T::KIND, T::LIST_KIND);
        if !self.definitions.contains_key(&list) {
            let definition = self.list_definition(&item, &list_meta, T::KIND, T::LIST_KIND);
            self.definitions.insert(list.clone(), definition);
        }
        self.mark_kind(&list, GroupVersionKind::new(T::GROUP, T::VERSION, T::LIST_KIND));
        self.name_in_set(&item)
    }

    /// Adds a type that is not itself a served kind (e.g. `DeleteOptions`, `WatchEvent`), and
    /// every definition it references. Returns its definition name.
    pub fn add_type<T: JsonSchema>(&mut self) -> &str {
        let name = self.generate::<T>();
        self.name_in_set(&name)
    }

    /// Marks a definition as serving one more kind. Upstream does this for meta types that
    /// every group serves, e.g. `DeleteOptions` lists one kind per group version.
    pub fn add_group_version_kind(&mut self, definition: &str, gvk: GroupVersionKind) -> Result<(), SchemaError> {
        if !self.definitions.contains_key(definition) {
            return Err(SchemaError::UnknownDefinition { definition: definition.to_owned() });
        }
        self.mark_kind(definition, gvk);
        Ok(())
    }

    /// A definition's schema as published.
    pub fn definition(&self, name: &str) -> Option<&Value> {
        self.definitions.get(name)
    }

    /// The names of all definitions, in the order they were added.
    pub fn definition_names(&self) -> impl Iterator<Item = &str> {
        self.definitions.keys().map(String::as_str)
    }

    /// The definition that serves a kind, e.g. `io.k8s.api.apps.v1.Deployment` for
    /// `apps/v1 Deployment`.
    pub fn definition_for_kind(&self, gvk: &GroupVersionKind) -> Option<&str> {
        self.kinds.get(gvk).map(String::as_str)
    }

    /// The number of definitions.
    pub fn len(&self) -> usize {
        self.definitions.len()
    }

    /// Whether the set has no definitions.
    pub fn is_empty(&self) -> bool {
        self.definitions.is_empty()
    }

    /// A field of a definition: its schema, what it holds and how it is patched.
    pub fn field<'a>(&'a self, definition: &str, field: &str) -> Result<Field<'a>, SchemaError> {
        let (definition, schema) = self
            .definitions
            .get_key_value(definition)
            .ok_or_else(|| SchemaError::UnknownDefinition { definition: definition.to_owned() })?;
        let (name, property) = schema
            .get("properties")
            .and_then(Value::as_object)
            .and_then(|properties| properties.get_key_value(field))
            .ok_or_else(|| SchemaError::UnknownField { definition: definition.clone(), field: field.to_owned() })?;
        let extensions = SchemaExtensions::from_schema(property).map_err(|source| SchemaError::InvalidExtension {
            definition: definition.clone(),
            field: field.to_owned(),
            source,
        })?;
        Ok(Field { definition, name, schema: property, value_type: ValueType::of(property), extensions })
    }

    /// The `components.schemas` object of an OpenAPI v3 document: every definition, sorted by
    /// name as upstream's documents are.
    pub fn to_components_json(&self) -> Value {
        let mut names: Vec<&String> = self.definitions.keys().collect();
        names.sort();
        Value::Object(names.into_iter().map(|name| (name.clone(), self.definitions[name].clone())).collect())
    }

    /// Generates `T`'s definition and those it references, skipping what the set already has.
    /// Returns `T`'s definition name.
    fn generate<T: JsonSchema>(&mut self) -> String {
        // A generator is not `Sync`, so the set does not keep one. Lending it the definitions
        // made so far tells it which ones already exist, so it only generates the new ones.
        let mut generator = SchemaSettings::openapi3().into_generator();
        *generator.definitions_mut() = std::mem::take(&mut self.definitions);
        let existing: HashSet<String> = generator.definitions().keys().cloned().collect();
        generator.subschema_for::<T>();
        let mut definitions = generator.take_definitions(false);
        for (name, definition) in definitions.iter_mut() {
            if existing.contains(name) {
                continue;
            }
            if let Ok(schema) = <&mut Schema>::try_from(&mut *definition) {
                for transform in generator.transforms_mut() {
                    transform.transform(schema);
                }
            }
            decorate(name, definition);
        }
        self.definitions = definitions;
        T::schema_name().into_owned()
    }

    fn mark_kind(&mut self, definition: &str, gvk: GroupVersionKind) {
        if let Some(Value::Object(schema)) = self.definitions.get_mut(definition) {
            // k8s-openapi types hold metadata as a plain struct, so schemars lists it as
            // required; upstream's published schemas never require a kind's metadata.
            if let Some(Value::Array(required)) = schema.get_mut("required") {
                required.retain(|r| r != "metadata");
                if required.is_empty() {
                    schema.remove("required");
                }
            }
            let kinds = schema.entry(GROUP_VERSION_KIND).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(kinds) = kinds {
                let entry = gvk.to_json();
                if !kinds.contains(&entry) {
                    kinds.push(entry);
                }
            }
        }
        self.kinds.insert(gvk, definition.to_owned());
    }

    fn name_in_set(&self, name: &str) -> &str {
        // Return the set's own copy so callers can hold the name while the set lives.
        self.definitions.get_key_value(name).map_or("", |(name, _)| name.as_str())
    }

    /// The `<Kind>List` definition upstream publishes for every listable kind.
    fn list_definition(&self, item: &str, list_meta: &str, kind: &str, list_kind: &str) -> Value {
        // apiVersion and kind are described identically on every kind; reuse the item's.
        let item_property = |name: &str| {
            self.definitions
                .get(item)
                .and_then(|schema| schema.pointer(&format!("/properties/{name}")))
                .cloned()
                .unwrap_or_else(|| json!({"type": "string"}))
        };
        json!({
            "description": format!("{list_kind} is a list of {kind} objects."),
            "type": "object",
            "properties": {
                "apiVersion": item_property("apiVersion"),
                "items": {
                    "description": format!("List of {kind} objects."),
                    "type": "array",
                    "items": {"$ref": format!("{REF_PREFIX}{item}")},
                },
                "kind": item_property("kind"),
                "metadata": {
                    "allOf": [{"$ref": format!("{REF_PREFIX}{list_meta}")}],
                    "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
                },
            },
            "required": ["items"],
        })
    }
}

/// `io.k8s.api.apps.v1.Deployment` → `io.k8s.api.apps.v1.DeploymentList`.
fn list_definition_name(item: &str, kind: &str, list_kind: &str) -> String {
    match item.strip_suffix(kind) {
        Some(package) => format!("{package}{list_kind}"),
        None => format!("{item}List"),
    }
}

/// Adds what k8s-openapi's schema of a definition lacks compared to upstream's document.
fn decorate(name: &str, definition: &mut Value) {
    let Some(schema) = definition.as_object_mut() else {
        return;
    };
    // Upstream's v3 documents describe these two as one-of scalars (their
    // OpenAPIV3OneOfTypes); k8s-openapi has only the structural-schema marker.
    match name {
        INT_OR_STRING => {
            schema.shift_remove("x-kubernetes-int-or-string");
            schema.insert("format".into(), "int-or-string".into());
            schema.insert("oneOf".into(), json!([{"type": "integer"}, {"type": "string"}]));
        }
        QUANTITY => {
            schema.shift_remove("x-kubernetes-int-or-string");
            schema.insert("oneOf".into(), json!([{"type": "string"}, {"type": "number"}]));
        }
        _ => {}
    }
    let Some(metadata) = PATCH_METADATA.definition(name) else {
        return;
    };
    metadata.own.write_to(schema);
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        for (field, extensions) in &metadata.fields {
            if let Some(Value::Object(property)) = properties.get_mut(*field) {
                extensions.write_to(property);
            }
        }
    }
}

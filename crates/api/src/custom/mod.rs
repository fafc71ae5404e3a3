//! Custom resources: the resources CustomResourceDefinitions define, served from JSON as
//! upstream's apiextensions server serves them.
//!
//! [`resource_types`] turns a definition into one registry entry per served version. Each
//! entry's [`KindOps`] ([`CustomResource`]) does what upstream's custom resource codec and
//! strategy do: unknown fields are pruned against the version's structural schema (and reported
//! like a built-in kind's unknown fields), disallowed nulls dropped, `default`s filled in, and
//! the object validated (metadata, then the schema: [`validation`]). Versions convert with the
//! `None` strategy: only `apiVersion` changes. Tables come from the version's printer columns.
//!
//! What a definition's status says (accepted names, conditions) and when its resources are
//! served is the API server's business: this module only reads definitions.

mod coerce;
mod openapi;
mod structural;
#[cfg(test)]
mod tests;
mod validation;

use std::borrow::Cow;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionVersion,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::field::{FieldError, FieldPath};
use crate::kinds::{Admitted, KindOps, NameRule, ScalePaths, dropped_fields, validate_object_meta};
use crate::registry::{ResourceType, STANDARD_VERBS};
use crate::status::ApiError;
use crate::table::{CustomColumn, IncludeObject, custom_table};

pub use openapi::definition_name;
pub use structural::Schema;
pub(crate) use validation::go_float;

/// The finalizer the API server puts on a definition being deleted, and removes once all its
/// custom resources are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

const STATUS: &[&str] = &["status"];
const SCALE: &[&str] = &["scale"];
const SCALE_STATUS: &[&str] = &["scale", "status"];

/// The names a definition's resources are served under: the accepted names once the API server
/// accepted them, else the requested ones.
pub fn served_names(crd: &CustomResourceDefinition) -> CustomResourceDefinitionNames {
    match crd.status.as_ref().and_then(|s| s.accepted_names.as_ref()) {
        Some(accepted) if !accepted.plural.is_empty() && !accepted.kind.is_empty() => accepted.clone(),
        _ => crd.spec.names.clone(),
    }
}

/// Whether a definition's condition of this type is `True`.
pub fn condition_is_true(crd: &CustomResourceDefinition, type_: &str) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// One registry entry per served version of a definition.
pub fn resource_types(crd: &CustomResourceDefinition) -> Vec<ResourceType> {
    let names = served_names(crd);
    let spec = &crd.spec;
    let group = spec.group.clone();
    let kind = names.kind.clone();
    let list_kind = names.list_kind.clone().filter(|l| !l.is_empty()).unwrap_or_else(|| format!("{kind}List"));
    let singular = names.singular.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| kind.to_lowercase());
    let namespaced = spec.scope == "Namespaced";
    let preserve_unknown_fields = spec.preserve_unknown_fields.unwrap_or(false);
    let terminating = crd.metadata.deletion_timestamp.is_some() || condition_is_true(crd, "Terminating");
    let owned = |list: &Option<Vec<String>>| list.iter().flatten().map(|s| Cow::Owned(s.clone())).collect();
    spec.versions
        .iter()
        .filter(|v| v.served)
        .map(|v| {
            let mut ops =
                CustomResource::new(&group, v, &kind, &list_kind, &names.plural, namespaced, preserve_unknown_fields);
            ops.terminating = terminating;
            let subresources = match (ops.scale.is_some(), ops.status) {
                (true, true) => SCALE_STATUS,
                (true, false) => SCALE,
                (false, true) => STATUS,
                (false, false) => &[],
            };
            ResourceType {
                group: Cow::Owned(group.clone()),
                version: Cow::Owned(v.name.clone()),
                kind: Cow::Owned(kind.clone()),
                list_kind: Cow::Owned(list_kind.clone()),
                plural: Cow::Owned(names.plural.clone()),
                singular: Cow::Owned(singular.clone()),
                namespaced,
                short_names: owned(&names.short_names),
                categories: owned(&names.categories),
                verbs: STANDARD_VERBS,
                subresources,
                storage_key: Cow::Owned(format!("{group}/{}", names.plural)),
                storage_version: v.storage,
                custom: true,
                ops: Box::new(ops),
            }
        })
        .collect()
}

/// The [`KindOps`] of one version of a custom resource.
pub struct CustomResource {
    group: String,
    version: String,
    kind: String,
    list_kind: String,
    plural: String,
    namespaced: bool,
    /// The version's structural schema; none means every field is kept.
    schema: Option<Arc<Schema>>,
    /// The schema as published in OpenAPI.
    published: Option<Value>,
    /// `spec.preserveUnknownFields` (only ever true for definitions from `v1beta1`).
    preserve_unknown_fields: bool,
    status: bool,
    scale: Option<ScalePaths>,
    columns: Vec<CustomColumn>,
    /// `selectableFields`: extra field selector labels, with the paths they read.
    selectable: Vec<(String, String)>,
    /// The definition is being deleted: no new objects.
    terminating: bool,
}

impl CustomResource {
    fn new(
        group: &str,
        v: &CustomResourceDefinitionVersion,
        kind: &str,
        list_kind: &str,
        plural: &str,
        namespaced: bool,
        preserve_unknown_fields: bool,
    ) -> CustomResource {
        let props = v.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
        let subresources = v.subresources.as_ref();
        let columns: Vec<CustomColumn> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .filter_map(|c| {
                CustomColumn::new(
                    &c.name,
                    &c.type_,
                    c.format.as_deref(),
                    c.description.as_deref(),
                    c.priority,
                    &c.json_path,
                )
                .ok()
            })
            .collect();
        CustomResource {
            group: group.to_string(),
            version: v.name.clone(),
            kind: kind.to_string(),
            list_kind: list_kind.to_string(),
            plural: plural.to_string(),
            namespaced,
            schema: props.map(|p| Arc::new(Schema::from_props(p))),
            published: props.and_then(|p| serde_json::to_value(p).ok()),
            preserve_unknown_fields,
            status: subresources.and_then(|s| s.status.as_ref()).is_some(),
            scale: subresources.and_then(|s| s.scale.as_ref()).map(|s| ScalePaths {
                spec_replicas: s.spec_replicas_path.clone(),
                status_replicas: s.status_replicas_path.clone(),
                label_selector: s.label_selector_path.clone().filter(|p| !p.is_empty()),
            }),
            columns: if columns.is_empty() { vec![CustomColumn::age()] } else { columns },
            selectable: v
                .selectable_fields
                .iter()
                .flatten()
                .map(|f| (f.json_path.trim_start_matches('.').to_string(), f.json_path.clone()))
                .collect(),
            terminating: false,
        }
    }

    fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    fn decode_error(&self, why: impl std::fmt::Display) -> ApiError {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {why}",
            kind = self.kind,
            version = self.version
        ))
    }

    /// Upstream's schema coercion and defaulting: returns the object as it would be stored and
    /// the paths of the fields dropped as unknown.
    fn coerce(&self, mut obj: Value) -> Result<(Value, Vec<String>), ApiError> {
        if !obj.is_object() {
            return Err(self.decode_error("expected an object"));
        }
        let mut unknown = Vec::new();
        // metadata is ObjectMeta whatever the schema says; its unknown fields are dropped.
        let raw_meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let meta: ObjectMeta = serde_path_to_error::deserialize(&raw_meta).map_err(|e| {
            let path = e.path().to_string();
            self.decode_error(format_args!("metadata.{path}: {}", e.into_inner()))
        })?;
        let meta_json = serde_json::to_value(&meta).map_err(ApiError::internal)?;
        unknown.extend(dropped_fields(&raw_meta, &meta_json).into_iter().map(|p| format!("metadata.{p}")));
        obj["metadata"] = meta_json;
        if let Some(schema) = &self.schema {
            if !self.preserve_unknown_fields {
                unknown.extend(coerce::prune(&mut obj, schema));
                coerce::prune_nulls(&mut obj, Some(schema));
            }
            coerce::apply_defaults(&mut obj, schema);
        }
        // apiVersion, kind and metadata first, as every stored object has them (the store codec
        // finds the object's metadata by its position).
        if let Value::Object(map) = &mut obj {
            let mut placed = 0;
            for key in ["apiVersion", "kind", "metadata"] {
                if let Some(v) = map.shift_remove(key) {
                    map.shift_insert(placed, key.to_string(), v);
                    placed += 1;
                }
            }
        }
        Ok((obj, unknown))
    }

    fn validate(&self, obj: &Value) -> Result<(), ApiError> {
        let mut errs = Vec::new();
        let meta: ObjectMeta = serde_json::from_value(obj["metadata"].clone()).unwrap_or_default();
        validate_object_meta(&meta, NameRule::Subdomain, self.namespaced, &mut errs);
        if let Some(schema) = &self.schema {
            validation::validate(schema, obj, &mut errs);
        }
        if let Some(scale) = &self.scale {
            self.validate_replicas(obj, &scale.spec_replicas, &mut errs);
            self.validate_replicas(obj, &scale.status_replicas, &mut errs);
        }
        if errs.is_empty() {
            return Ok(());
        }
        let name = meta.name.or(meta.generate_name).unwrap_or_default();
        Err(ApiError::invalid(&self.group, &self.kind, &name, &errs))
    }

    /// The replicas fields the scale subresource uses must hold non-negative 32-bit integers
    /// (their type is the schema's business).
    fn validate_replicas(&self, obj: &Value, path: &str, errs: &mut Vec<FieldError>) {
        let Some(replicas) = get_path(obj, path).and_then(Value::as_i64) else { return };
        let field = FieldPath::new(path.trim_start_matches('.'));
        if replicas < 0 {
            errs.push(FieldError::invalid(&field, json!(replicas), "should be a non-negative integer"));
        } else if replicas > i64::from(i32::MAX) {
            errs.push(FieldError::invalid(
                &field,
                json!(replicas),
                &format!("should be less than or equal to {}", i32::MAX),
            ));
        }
    }
}

/// The value at a dotted path (`.spec.replicas`), as the scale subresource addresses fields.
pub fn get_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').filter(|p| !p.is_empty()).try_fold(obj, |cur, part| cur.get(part))
}

/// Sets the value at a dotted path, creating the objects on the way.
pub fn set_path(obj: &mut Value, path: &str, value: Value) {
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    let Some((last, parents)) = parts.split_last() else { return };
    let mut cur = obj;
    for part in parents {
        if !cur.get(*part).is_some_and(Value::is_object) {
            cur[*part] = json!({});
        }
        cur = &mut cur[*part];
    }
    cur[*last] = value;
}

impl KindOps for CustomResource {
    fn admit_create(&self, obj: Value) -> Result<Admitted, ApiError> {
        if self.terminating {
            return Err(ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: "create not allowed while custom resource definition is terminating".into(),
                details: None,
            });
        }
        let (mut object, unknown_fields) = self.coerce(obj)?;
        // With a status subresource, status is written only through it.
        if self.status
            && let Some(m) = object.as_object_mut()
        {
            m.shift_remove("status");
        }
        object["metadata"]["generation"] = json!(1);
        self.validate(&object)?;
        Ok(Admitted { object, unknown_fields })
    }

    fn admit_update(&self, obj: Value, old: &Value) -> Result<Admitted, ApiError> {
        let (mut object, unknown_fields) = self.coerce(obj)?;
        // Without a status subresource, status is part of what the generation counts.
        if !self.status && object.get("status") != old.get("status") {
            let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            object["metadata"]["generation"] = json!(g + 1);
        }
        self.validate(&object)?;
        Ok(Admitted { object, unknown_fields })
    }

    fn normalize(&self, obj: Value) -> Result<Value, ApiError> {
        self.coerce(obj).map(|(o, _)| o)
    }

    fn field_label(&self, obj: &Value, label: &str) -> Option<String> {
        let path = match label {
            "metadata.name" | "metadata.namespace" => label,
            other => self.selectable.iter().find(|(l, _)| l == other)?.1.as_str(),
        };
        Some(match get_path(obj, path) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        })
    }

    fn field_labels(&self) -> Vec<String> {
        let mut v = vec!["metadata.name".to_string(), "metadata.namespace".to_string()];
        v.extend(self.selectable.iter().map(|(l, _)| l.clone()));
        v
    }

    fn add_schema(&self, _set: &mut crate::schema::SchemaSet) {}

    fn schema_name(&self) -> String {
        definition_name(&self.group, &self.version, &self.kind)
    }

    fn own_definitions(&self) -> Vec<(String, Value)> {
        openapi::definitions(
            &self.group,
            &self.version,
            &self.kind,
            &self.list_kind,
            &self.plural,
            self.published.as_ref(),
        )
    }

    fn convert(&self, mut obj: Value, to_api_version: &str) -> Result<Value, ApiError> {
        // The `None` conversion strategy: the same fields under another version.
        obj["apiVersion"] = Value::String(to_api_version.to_string());
        Ok(obj)
    }

    fn table(&self, objects: &[Value], list_meta: &Value, include: IncludeObject, now: Timestamp) -> Value {
        custom_table(&self.columns, objects, list_meta, include, now)
    }

    fn accepts_strategic_merge_patch(&self) -> bool {
        false
    }

    fn scale_paths(&self) -> Option<&ScalePaths> {
        self.scale.as_ref()
    }
}

impl std::fmt::Debug for CustomResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomResource({} {})", self.api_version(), self.kind)
    }
}

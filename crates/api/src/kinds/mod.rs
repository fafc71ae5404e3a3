//! Kind-specific behaviour of the built-in types: defaulting, validation, field labels and the
//! preparation upstream's registry strategies do before an object is stored.
//!
//! Generic machinery works on JSON; this module is where typed code lives (design rule 4). Each
//! served type implements [`Kind`]; most need only a few of its hooks. [`Typed`] turns a `Kind`
//! into the object-safe [`KindOps`] the registry stores.

mod apps;
mod batch;
mod core;
mod meta;
mod other;

use std::marker::PhantomData;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::field::FieldError;
use crate::status::ApiError;
use crate::table::IncludeObject;

pub use meta::{NameRule, validate_dns1123_label, validate_dns1123_subdomain, validate_object_meta};

/// A served built-in type and the behaviour upstream gives it.
pub trait Kind:
    k8s_openapi::Resource
    + k8s_openapi::ListableResource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + schemars::JsonSchema
    + Send
    + Sync
    + 'static
{
    /// Fields `?fieldSelector=` accepts besides `metadata.name` and `metadata.namespace`:
    /// (label, dotted JSON path to read it from).
    const FIELD_LABELS: &'static [(&'static str, &'static str)] = &[];

    /// How names of this kind are validated.
    const NAME_RULE: NameRule = NameRule::Subdomain;

    /// Top-level fields accepted on writes but folded into others and never stored (a Secret's
    /// `stringData`): strict field validation must not call them unknown.
    const WRITE_ONLY_FIELDS: &'static [&'static str] = &[];

    /// Upstream's defaulting (`SetObjectDefaults_<Kind>`).
    fn set_defaults(&mut self) {}

    /// What the create strategy resets or fills in before validation (e.g. a new pod's phase).
    fn prepare_for_create(&mut self) {}

    /// What the update strategy carries over from the stored object or derives from the
    /// change, before validation (e.g. a DaemonSet's template generation).
    fn prepare_for_update(&mut self, _old: &Self) {}

    /// Validation of the whole object (metadata is validated generically before this).
    fn validate(&self, _errs: &mut Vec<FieldError>) {}

    /// Extra checks on update, e.g. immutable fields.
    fn validate_update(&self, _old: &Self, _errs: &mut Vec<FieldError>) {}
}

/// What the API server needs of a kind, without knowing its Rust type. Built-in kinds get it
/// from [`Typed`]; custom resources from [`crate::custom::CustomResource`].
pub trait KindOps: Send + Sync {
    /// Decodes into the typed struct, applies create preparation and defaults, validates, and
    /// encodes again. Fields the type does not have are dropped (and reported in the result).
    fn admit_create(&self, obj: Value) -> Result<Admitted, ApiError>;

    /// The same for an update, with the stored object for update-only validation.
    fn admit_update(&self, obj: Value, old: &Value) -> Result<Admitted, ApiError>;

    /// Decodes and re-encodes (defaults applied), for objects that were not submitted by a
    /// client, such as the stored form read back.
    fn normalize(&self, obj: Value) -> Result<Value, ApiError>;

    /// The value of a field label of `obj`, or `None` if this kind does not support the label.
    fn field_label(&self, obj: &Value, label: &str) -> Option<String>;

    /// The field labels this kind supports, for error messages.
    fn field_labels(&self) -> Vec<String>;

    /// See [`Kind::WRITE_ONLY_FIELDS`].
    fn write_only_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// Adds this type's schema (and those it refers to) to an OpenAPI schema set.
    fn add_schema(&self, set: &mut crate::schema::SchemaSet);

    /// The OpenAPI definition name, e.g. `io.k8s.api.core.v1.Pod`.
    fn schema_name(&self) -> String;

    /// OpenAPI definitions this kind publishes that the shared set (built from
    /// [`KindOps::add_schema`] once) does not hold: those of custom resources, which come and go
    /// with their definitions. Name and schema, with references into the shared set.
    fn own_definitions(&self) -> Vec<(String, Value)> {
        Vec::new()
    }

    /// Converts an object of this kind to another served version of it.
    fn convert(&self, obj: Value, to_api_version: &str) -> Result<Value, ApiError> {
        crate::convert::convert(obj, to_api_version)
    }

    /// The `Table` of some objects of this kind (server-side printing for `kubectl get`).
    fn table(&self, objects: &[Value], list_meta: &Value, include: IncludeObject, now: Timestamp) -> Value;

    /// Whether strategic merge patches apply to this kind. Upstream accepts them only for
    /// kinds it has Go structs (and so patch strategies) for, never for custom resources.
    fn accepts_strategic_merge_patch(&self) -> bool {
        true
    }

    /// Where the scale subresource reads and writes replicas, for kinds whose scale is not the
    /// built-in `spec.replicas` / `status.replicas` / `spec.selector` (custom resources).
    fn scale_paths(&self) -> Option<&ScalePaths> {
        None
    }
}

/// A custom resource's scale subresource: dotted JSON paths (`.spec.replicas`) of the desired
/// and observed replicas and of the serialized label selector.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// The result of admission: the object to store, and the fields that were dropped because the
/// type does not have them (upstream reports those as warnings, or as errors under
/// `fieldValidation=Strict`).
#[derive(Debug)]
pub struct Admitted {
    pub object: Value,
    pub unknown_fields: Vec<String>,
}

/// The [`KindOps`] of a [`Kind`].
pub struct Typed<T>(PhantomData<fn() -> T>);

impl<T> Default for Typed<T> {
    fn default() -> Self {
        Typed(PhantomData)
    }
}

impl<T: Kind> Typed<T> {
    fn decode(obj: &Value) -> Result<T, ApiError> {
        // Tracking the path costs an allocation per key; only a failed decode is run again
        // with it, for upstream's message naming the field.
        if let Ok(typed) = <T as serde::Deserialize>::deserialize(obj) {
            return Ok(typed);
        }
        serde_path_to_error::deserialize::<_, T>(obj).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let why = if path == "." { inner.to_string() } else { format!("{path}: {inner}") };
            ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: {why}",
                kind = T::KIND,
                version = T::VERSION
            ))
        })
    }

    fn encode(obj: &T) -> Result<Value, ApiError> {
        let mut v = serde_json::to_value(obj).map_err(ApiError::internal)?;
        // k8s-openapi writes apiVersion/kind itself; keep them first for readable output.
        if let Value::Object(m) = &mut v {
            m.shift_insert(0, "apiVersion".into(), Value::String(T::API_VERSION.into()));
            m.shift_insert(1, "kind".into(), Value::String(T::KIND.into()));
        }
        Ok(v)
    }

    fn validation_result(obj: &T, errs: Vec<FieldError>) -> Result<(), ApiError> {
        if errs.is_empty() {
            return Ok(());
        }
        let name = obj.metadata().name.clone().or_else(|| obj.metadata().generate_name.clone());
        Err(ApiError::invalid(T::GROUP, T::KIND, name.as_deref().unwrap_or(""), &errs))
    }
}

impl<T: Kind> KindOps for Typed<T> {
    fn admit_create(&self, obj: Value) -> Result<Admitted, ApiError> {
        let mut typed = Self::decode(&obj)?;
        typed.prepare_for_create();
        typed.set_defaults();
        let mut errs = Vec::new();
        validate_object_meta(typed.metadata(), T::NAME_RULE, is_namespaced::<T>(), &mut errs);
        typed.validate(&mut errs);
        Self::validation_result(&typed, errs)?;
        let object = Self::encode(&typed)?;
        let unknown_fields = unknown_fields(&obj, &object, T::WRITE_ONLY_FIELDS);
        Ok(Admitted { object, unknown_fields })
    }

    fn admit_update(&self, obj: Value, old: &Value) -> Result<Admitted, ApiError> {
        let mut typed = Self::decode(&obj)?;
        let old_typed = Self::decode(old)?;
        typed.set_defaults();
        typed.prepare_for_update(&old_typed);
        let mut errs = Vec::new();
        validate_object_meta(typed.metadata(), T::NAME_RULE, is_namespaced::<T>(), &mut errs);
        typed.validate(&mut errs);
        typed.validate_update(&old_typed, &mut errs);
        Self::validation_result(&typed, errs)?;
        let object = Self::encode(&typed)?;
        let unknown_fields = unknown_fields(&obj, &object, T::WRITE_ONLY_FIELDS);
        Ok(Admitted { object, unknown_fields })
    }

    fn normalize(&self, obj: Value) -> Result<Value, ApiError> {
        let mut typed = Self::decode(&obj)?;
        typed.set_defaults();
        Self::encode(&typed)
    }

    fn field_label(&self, obj: &Value, label: &str) -> Option<String> {
        let path = match label {
            "metadata.name" => "metadata.name",
            "metadata.namespace" => "metadata.namespace",
            other => T::FIELD_LABELS.iter().find(|(l, _)| *l == other)?.1,
        };
        let mut cur = obj;
        for part in path.split('.') {
            match cur.get(part) {
                Some(v) => cur = v,
                None => return Some(String::new()),
            }
        }
        Some(match cur {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        })
    }

    fn write_only_fields(&self) -> &'static [&'static str] {
        T::WRITE_ONLY_FIELDS
    }

    fn field_labels(&self) -> Vec<String> {
        let mut v = vec!["metadata.name".to_string(), "metadata.namespace".to_string()];
        v.extend(T::FIELD_LABELS.iter().map(|(l, _)| l.to_string()));
        v
    }

    fn add_schema(&self, set: &mut crate::schema::SchemaSet) {
        set.add_with_list::<T>();
    }

    fn schema_name(&self) -> String {
        <T as schemars::JsonSchema>::schema_name().into_owned()
    }

    fn table(&self, objects: &[Value], list_meta: &Value, include: IncludeObject, now: Timestamp) -> Value {
        crate::table::table(T::GROUP, T::KIND, objects, list_meta, include, now)
    }
}

fn is_namespaced<T: k8s_openapi::Resource>() -> bool {
    std::any::type_name::<T::Scope>().ends_with("NamespaceResourceScope")
}

/// Paths of fields present (and not null) in `input` but absent from `output`: the fields the
/// typed decode dropped because the type does not have them.
/// What strict field validation calls unknown: the fields of `input` that decoding lost in
/// `output`, less the kind's write-only ones ([`Kind::WRITE_ONLY_FIELDS`]).
pub fn unknown_fields(input: &Value, output: &Value, write_only: &[&str]) -> Vec<String> {
    let mut fields = dropped_fields(input, output);
    fields
        .retain(|f| !write_only.iter().any(|w| f == w || f.strip_prefix(w).is_some_and(|rest| rest.starts_with('.'))));
    fields
}

pub fn dropped_fields(input: &Value, output: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_dropped(input, output, &mut Vec::new(), &mut out);
    out
}

/// One step of the path to a field.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `spec.containers[0].name`: paths are spelled out only for dropped fields, which are rare,
/// rather than for every field walked.
fn render(path: &[Step<'_>], last: &str) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if !out.is_empty() {
        out.push('.');
    }
    out.push_str(last);
    out
}

fn walk_dropped<'a>(input: &'a Value, output: &Value, path: &mut Vec<Step<'a>>, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                match o.get(k) {
                    Some(ov) => {
                        path.push(Step::Key(k));
                        walk_dropped(v, ov, path, out);
                        path.pop();
                    }
                    None if v.is_null() || is_empty_container(v) => {}
                    None => out.push(render(path, k)),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (idx, (iv, ov)) in i.iter().zip(o).enumerate() {
                path.push(Step::Index(idx));
                walk_dropped(iv, ov, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dropped_fields_reports_unknown_nested_keys() {
        let input = json!({"spec": {"replicas": 1, "replicaz": 2, "template": {"x": {"y": 1}}}});
        let output = json!({"spec": {"replicas": 1, "template": {}}});
        assert_eq!(dropped_fields(&input, &output), vec!["spec.replicaz", "spec.template.x"]);
        let input = json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "nmae": "c"}]}, "extra": 1});
        let output = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(dropped_fields(&input, &output), vec!["spec.containers[1].nmae", "extra"]);
    }
}

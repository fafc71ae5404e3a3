//! A CustomResourceDefinition version's `openAPIV3Schema`, read once into the shape the
//! validation, pruning and defaulting walks need (upstream's `structuralschema.Structural` plus
//! its value validations).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use regex::Regex;
use serde_json::Value;

/// One node of a structural schema.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// `object`, `array`, `string`, `integer`, `number` or `boolean`; none for int-or-string and
    /// for nodes that only preserve unknown fields.
    pub type_: Option<String>,
    pub format: Option<String>,
    pub nullable: bool,
    /// `x-kubernetes-int-or-string`: an integer or a string.
    pub int_or_string: bool,
    /// `x-kubernetes-preserve-unknown-fields`: fields the schema does not name are kept.
    pub preserve_unknown_fields: bool,
    /// `x-kubernetes-embedded-resource`: a whole object with `apiVersion`, `kind` and `metadata`.
    pub embedded_resource: bool,
    pub properties: BTreeMap<String, Schema>,
    pub additional_properties: Option<Additional>,
    pub items: Option<Box<Schema>>,
    pub required: Vec<String>,
    pub enum_values: Option<Vec<Value>>,
    pub default: Option<Value>,
    pub minimum: Option<f64>,
    pub exclusive_minimum: bool,
    pub maximum: Option<f64>,
    pub exclusive_maximum: bool,
    pub multiple_of: Option<f64>,
    pub min_length: Option<i64>,
    pub max_length: Option<i64>,
    pub pattern: Option<Pattern>,
    pub min_items: Option<i64>,
    pub max_items: Option<i64>,
    pub unique_items: bool,
    pub min_properties: Option<i64>,
    pub max_properties: Option<i64>,
    pub all_of: Vec<Schema>,
    pub any_of: Vec<Schema>,
    pub one_of: Vec<Schema>,
    pub not: Option<Box<Schema>>,
}

/// `additionalProperties`: a schema for the values of a map, or a plain allowance.
#[derive(Debug, Clone)]
pub enum Additional {
    Allows(bool),
    Schema(Box<Schema>),
}

impl Additional {
    pub fn schema(&self) -> Option<&Schema> {
        match self {
            Additional::Schema(s) => Some(s),
            Additional::Allows(_) => None,
        }
    }
}

/// A `pattern`, compiled once. Upstream matches with Go's RE2, which the `regex` crate's syntax
/// follows; a pattern that does not compile fails every value, as upstream's validator does.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub source: String,
    pub regex: Result<Regex, String>,
}

impl Schema {
    /// Reads a CRD's `openAPIV3Schema`.
    pub fn from_props(p: &JSONSchemaProps) -> Schema {
        let many = |list: &Option<Vec<JSONSchemaProps>>| list.iter().flatten().map(Schema::from_props).collect();
        Schema {
            type_: p.type_.clone().filter(|t| !t.is_empty()),
            format: p.format.clone().filter(|f| !f.is_empty()),
            nullable: p.nullable.unwrap_or(false),
            int_or_string: p.x_kubernetes_int_or_string.unwrap_or(false),
            preserve_unknown_fields: p.x_kubernetes_preserve_unknown_fields.unwrap_or(false),
            embedded_resource: p.x_kubernetes_embedded_resource.unwrap_or(false),
            properties: p.properties.iter().flatten().map(|(k, v)| (k.clone(), Schema::from_props(v))).collect(),
            additional_properties: p.additional_properties.as_ref().map(|a| match a {
                JSONSchemaPropsOrBool::Bool(b) => Additional::Allows(*b),
                JSONSchemaPropsOrBool::Schema(s) => Additional::Schema(Box::new(Schema::from_props(s))),
            }),
            items: match &p.items {
                Some(JSONSchemaPropsOrArray::Schema(s)) => Some(Box::new(Schema::from_props(s))),
                // Structural schemas allow only one item schema; take the first of a tuple.
                Some(JSONSchemaPropsOrArray::Schemas(list)) => list.first().map(|s| Box::new(Schema::from_props(s))),
                None => None,
            },
            required: p.required.clone().unwrap_or_default(),
            enum_values: p.enum_.as_ref().map(|e| e.iter().map(|j| j.0.clone()).collect()),
            default: p.default.as_ref().map(|d| d.0.clone()),
            minimum: p.minimum,
            exclusive_minimum: p.exclusive_minimum.unwrap_or(false),
            maximum: p.maximum,
            exclusive_maximum: p.exclusive_maximum.unwrap_or(false),
            multiple_of: p.multiple_of,
            min_length: p.min_length,
            max_length: p.max_length,
            pattern: p
                .pattern
                .as_ref()
                .map(|source| Pattern { source: source.clone(), regex: Regex::new(source).map_err(|e| e.to_string()) }),
            min_items: p.min_items,
            max_items: p.max_items,
            unique_items: p.unique_items.unwrap_or(false),
            min_properties: p.min_properties,
            max_properties: p.max_properties,
            all_of: many(&p.all_of),
            any_of: many(&p.any_of),
            one_of: many(&p.one_of),
            not: p.not.as_ref().map(|n| Box::new(Schema::from_props(n))),
        }
    }

    /// The schema of a field of an object: a named property, else the map's value schema.
    pub fn field(&self, name: &str) -> Option<&Schema> {
        self.properties.get(name).or_else(|| self.additional_properties.as_ref().and_then(Additional::schema))
    }

    /// The schema at a dotted path (`.spec.replicas`), if the schema names it.
    pub fn at_path(&self, path: &str) -> Option<&Schema> {
        let mut cur = self;
        for part in path.split('.').filter(|p| !p.is_empty()) {
            cur = cur.field(part)?;
        }
        Some(cur)
    }

    /// The JSON types this node accepts, as upstream's validator joins them in messages.
    pub fn type_names(&self) -> Option<String> {
        if self.int_or_string { Some("integer,string".into()) } else { self.type_.clone() }
    }
}

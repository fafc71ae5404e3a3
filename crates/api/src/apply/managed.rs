//! `metadata.managedFields`: one entry per manager, decoded into field sets and encoded back
//! as upstream encodes them (sorted by operation, time, manager, apiVersion, subresource).
//!
//! A manager is identified as upstream's `BuildManagerIdentifier` identifies it: by name,
//! operation and subresource, plus the API version for `Update` entries (an applier keeps one
//! entry whatever version it applies through).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::fieldpath::Set;
use crate::field::{FieldError, FieldPath};

/// The longest manager name upstream accepts.
pub const FIELD_MANAGER_MAX_LENGTH: usize = 128;
/// The longest subresource name upstream accepts in an entry.
const SUBRESOURCE_MAX_LENGTH: usize = 256;

/// What kind of write a manager made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

/// A manager's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManagerId {
    pub manager: String,
    pub operation: Operation,
    /// Empty for `Apply`, whose entries do not depend on the version applied through.
    pub api_version: String,
    /// Empty for the main resource.
    pub subresource: String,
}

impl ManagerId {
    pub fn new(manager: &str, operation: Operation, api_version: &str, subresource: &str) -> Self {
        ManagerId {
            manager: if manager.is_empty() { "unknown".into() } else { manager.into() },
            operation,
            api_version: if operation == Operation::Apply { String::new() } else { api_version.into() },
            subresource: subresource.into(),
        }
    }

    /// Upstream's identifier string (the entry as JSON without fields and time), which conflict
    /// messages are sorted by.
    pub fn identifier(&self) -> String {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation.as_str()));
        if !self.api_version.is_empty() {
            m.insert("apiVersion".into(), json!(self.api_version));
        }
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m).to_string()
    }

    /// As upstream's conflict messages name a manager: `"kubectl-edit" using apps/v1`.
    pub fn describe(&self) -> String {
        let mut out = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            out.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            out.push_str(&format!(" using {}", self.api_version));
        }
        out
    }
}

/// The fields one manager owns, at the API version it wrote them in.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedSet {
    pub set: Set,
    pub api_version: String,
    pub applied: bool,
}

/// Every manager's fields and the time of its last change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Managed {
    pub fields: BTreeMap<ManagerId, VersionedSet>,
    pub times: BTreeMap<ManagerId, String>,
}

/// A `managedFields` list that cannot be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("managedFields must be a list")]
    NotAList,
    #[error("managed fields entry {index} is not an object")]
    NotAnObject { index: usize },
    #[error("operation must be `Apply` or `Update`")]
    Operation,
    #[error("apiVersion must not be empty")]
    ApiVersion,
    #[error("missing fieldsType in managed fields entry {index}")]
    MissingFieldsType { index: usize },
    #[error("invalid fieldsType {fields_type:?} in managed fields entry {index}")]
    FieldsType { index: usize, fields_type: String },
    #[error("error decoding set: {0}")]
    Set(#[from] super::fieldpath::FieldsError),
}

impl Managed {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Decodes `metadata.managedFields` (absent or null is empty).
    pub fn decode(entries: Option<&Value>) -> Result<Managed, DecodeError> {
        let mut managed = Managed::default();
        let entries = match entries {
            None | Some(Value::Null) => return Ok(managed),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(DecodeError::NotAList),
        };
        for (index, entry) in entries.iter().enumerate() {
            let Value::Object(e) = entry else {
                return Err(DecodeError::NotAnObject { index });
            };
            let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
            let operation = match text("operation") {
                "Apply" => Operation::Apply,
                "Update" => Operation::Update,
                _ => return Err(DecodeError::Operation),
            };
            let api_version = text("apiVersion");
            if api_version.is_empty() {
                return Err(DecodeError::ApiVersion);
            }
            match text("fieldsType") {
                "FieldsV1" => {}
                "" => return Err(DecodeError::MissingFieldsType { index }),
                other => {
                    return Err(DecodeError::FieldsType { index, fields_type: other.into() });
                }
            }
            let set = match e.get("fieldsV1") {
                None | Some(Value::Null) => Set::new(),
                Some(fields) => Set::from_fields_v1(fields)?,
            };
            // Decoding keeps the name as written, "unknown" is only for new entries.
            let id = ManagerId {
                manager: text("manager").into(),
                operation,
                api_version: if operation == Operation::Apply { String::new() } else { api_version.into() },
                subresource: text("subresource").into(),
            };
            let vs = VersionedSet { set, api_version: api_version.into(), applied: operation == Operation::Apply };
            match e.get("time").and_then(Value::as_str) {
                Some(t) => managed.times.insert(id.clone(), t.into()),
                None => managed.times.remove(&id),
            };
            managed.fields.insert(id, vs);
        }
        Ok(managed)
    }

    /// The `managedFields` list, or `None` when no manager is left.
    pub fn encode(&self) -> Option<Value> {
        if self.fields.is_empty() {
            return None;
        }
        let mut entries: Vec<(&ManagerId, &VersionedSet, Option<&String>)> =
            self.fields.iter().map(|(id, vs)| (id, vs, self.times.get(id))).collect();
        entries.sort_by(|a, b| {
            let op = |e: &(&ManagerId, &VersionedSet, Option<&String>)| {
                if e.1.applied { Operation::Apply } else { e.0.operation }
            };
            op(a)
                .cmp(&op(b))
                .then_with(|| seconds(a.2).cmp(&seconds(b.2)))
                .then_with(|| a.0.manager.cmp(&b.0.manager))
                .then_with(|| a.1.api_version.cmp(&b.1.api_version))
                .then_with(|| a.0.subresource.cmp(&b.0.subresource))
        });
        let list = entries
            .into_iter()
            .map(|(id, vs, time)| {
                let mut e = Map::new();
                e.insert("manager".into(), json!(id.manager));
                let operation = if vs.applied { Operation::Apply } else { id.operation };
                e.insert("operation".into(), json!(operation.as_str()));
                e.insert("apiVersion".into(), json!(vs.api_version));
                if let Some(t) = time {
                    e.insert("time".into(), json!(t));
                }
                e.insert("fieldsType".into(), json!("FieldsV1"));
                e.insert("fieldsV1".into(), vs.set.to_fields_v1());
                if !id.subresource.is_empty() {
                    e.insert("subresource".into(), json!(id.subresource));
                }
                Value::Object(e)
            })
            .collect();
        Some(Value::Array(list))
    }
}

/// Seconds since the epoch of an RFC 3339 time (0 when absent or malformed), as upstream sorts.
pub(crate) fn seconds(time: Option<&String>) -> i64 {
    time.and_then(|t| t.parse::<jiff::Timestamp>().ok()).map_or(0, |t| t.as_second())
}

/// Whether a request's `managedFields` asks to reset them: an empty list, or a list of one
/// empty entry.
pub fn is_reset(requested: Option<&Value>) -> bool {
    match requested {
        Some(Value::Array(a)) if a.is_empty() => true,
        Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
            Value::Object(e) => e.values().all(|v| match v {
                Value::Null => true,
                Value::String(s) => s.is_empty(),
                Value::Object(o) => o.is_empty(),
                _ => false,
            }),
            _ => false,
        },
        _ => false,
    }
}

/// Upstream's `ValidateFieldManager`: at most 128 bytes, printable characters only.
pub fn validate_field_manager(manager: &str, path: &FieldPath) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if manager.len() > FIELD_MANAGER_MAX_LENGTH {
        errs.push(FieldError::too_long(path, FIELD_MANAGER_MAX_LENGTH));
    }
    for (i, c) in manager.char_indices() {
        if c.is_control() || (c.is_whitespace() && c != ' ') {
            errs.push(FieldError::invalid(
                path,
                json!(manager),
                &format!("invalid character {} (at position {i})", go_rune(c)),
            ));
        }
    }
    errs
}

/// Go's `%#U` of a rune: `U+000A`.
fn go_rune(c: char) -> String {
    format!("U+{:04X}", c as u32)
}

/// Upstream's `ValidateManagedFields` of an object's entries.
pub fn validate_managed_fields(entries: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Value::Array(entries) = entries else {
        return errs;
    };
    let base = FieldPath::new("metadata").key("managedFields");
    for (i, entry) in entries.iter().enumerate() {
        let at = base.index(i);
        let text = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or("");
        let operation = text("operation");
        if !matches!(operation, "Apply" | "Update") {
            errs.push(FieldError::invalid(&at.key("operation"), json!(operation), "must be `Apply` or `Update`"));
        }
        let fields_type = text("fieldsType");
        if !fields_type.is_empty() && fields_type != "FieldsV1" {
            errs.push(FieldError::invalid(&at.key("fieldsType"), json!(fields_type), "must be `FieldsV1`"));
        }
        errs.extend(validate_field_manager(text("manager"), &at.key("manager")));
        if text("subresource").len() > SUBRESOURCE_MAX_LENGTH {
            errs.push(FieldError::too_long(&at.key("subresource"), SUBRESOURCE_MAX_LENGTH));
        }
    }
    errs
}

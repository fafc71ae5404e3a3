//! Field paths and field validation errors, worded as upstream's `field.ErrorList` so that the
//! messages users see in `kubectl` output read the same as on Kubernetes.

use std::fmt;

use serde_json::Value;

use crate::status::Cause;

/// A path into an object, printed as upstream does: `spec.containers[0].image`,
/// `metadata.labels[app]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn new(root: &str) -> Self {
        FieldPath(root.to_string())
    }

    /// A child field.
    pub fn key(&self, name: &str) -> Self {
        if self.0.is_empty() { FieldPath(name.to_string()) } else { FieldPath(format!("{}.{name}", self.0)) }
    }

    /// An element of a list.
    pub fn index(&self, i: usize) -> Self {
        FieldPath(format!("{}[{i}]", self.0))
    }

    /// An entry of a map.
    pub fn map_key(&self, k: &str) -> Self {
        FieldPath(format!("{}[{k}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What is wrong with a field; the variants are upstream's `field.ErrorType`s.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldErrorKind {
    Required,
    Invalid(Value),
    /// A value of the wrong JSON type (upstream's `TypeInvalid`, printed as `Invalid value`).
    TypeInvalid(Value),
    NotSupported {
        value: Value,
        supported: Vec<String>,
    },
    Duplicate(Value),
    Forbidden,
    TooLong {
        max: usize,
    },
    TooMany {
        actual: usize,
        max: usize,
    },
    NotFound(Value),
}

/// One validation failure.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
    pub detail: String,
}

impl FieldError {
    pub fn required(path: &FieldPath, detail: &str) -> Self {
        Self::at(path, FieldErrorKind::Required, detail)
    }

    pub fn invalid(path: &FieldPath, value: Value, detail: &str) -> Self {
        Self::at(path, FieldErrorKind::Invalid(value), detail)
    }

    pub fn type_invalid(path: &FieldPath, value: Value, detail: &str) -> Self {
        Self::at(path, FieldErrorKind::TypeInvalid(value), detail)
    }

    pub fn not_supported<S: AsRef<str>>(path: &FieldPath, value: Value, supported: &[S]) -> Self {
        Self::at(
            path,
            FieldErrorKind::NotSupported {
                value,
                supported: supported.iter().map(|s| s.as_ref().to_string()).collect(),
            },
            "",
        )
    }

    pub fn duplicate(path: &FieldPath, value: Value) -> Self {
        Self::at(path, FieldErrorKind::Duplicate(value), "")
    }

    pub fn not_found(path: &FieldPath, value: Value) -> Self {
        Self::at(path, FieldErrorKind::NotFound(value), "")
    }

    pub fn forbidden(path: &FieldPath, detail: &str) -> Self {
        Self::at(path, FieldErrorKind::Forbidden, detail)
    }

    pub fn too_long(path: &FieldPath, max: usize) -> Self {
        Self::at(path, FieldErrorKind::TooLong { max }, "")
    }

    pub fn too_many(path: &FieldPath, actual: usize, max: usize) -> Self {
        Self::at(path, FieldErrorKind::TooMany { actual, max }, "")
    }

    fn at(path: &FieldPath, kind: FieldErrorKind, detail: &str) -> Self {
        FieldError { field: path.to_string(), kind, detail: detail.to_string() }
    }

    /// upstream's `CauseType` for this error.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::TypeInvalid(_) => "FieldValueTypeInvalid",
            FieldErrorKind::NotSupported { .. } => "FieldValueNotSupported",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong { .. } => "FieldValueTooLong",
            FieldErrorKind::TooMany { .. } => "FieldValueTooMany",
            FieldErrorKind::NotFound(_) => "FieldValueNotFound",
        }
    }

    /// The message without the field, as upstream's `ErrorBody`.
    pub fn body(&self) -> String {
        let with_detail = |s: String| {
            if self.detail.is_empty() { s } else { format!("{s}: {}", self.detail) }
        };
        match &self.kind {
            FieldErrorKind::Required => with_detail("Required value".into()),
            FieldErrorKind::Invalid(v) | FieldErrorKind::TypeInvalid(v) => {
                with_detail(format!("Invalid value: {}", show(v)))
            }
            FieldErrorKind::NotSupported { value, supported } => {
                let mut s = format!("Unsupported value: {}", show(value));
                if !supported.is_empty() {
                    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
                    s.push_str(&format!(": supported values: {}", list.join(", ")));
                }
                s
            }
            FieldErrorKind::Duplicate(v) => with_detail(format!("Duplicate value: {}", show(v))),
            FieldErrorKind::Forbidden => with_detail("Forbidden".into()),
            FieldErrorKind::TooLong { max } => format!("Too long: may not be more than {max} bytes"),
            FieldErrorKind::TooMany { actual, max } => {
                format!("Too many: {actual}: must have at most {max} items")
            }
            FieldErrorKind::NotFound(v) => with_detail(format!("Not found: {}", show(v))),
        }
    }

    pub fn cause(&self) -> Cause {
        Cause { reason: self.reason().to_string(), message: self.body(), field: Some(self.field.clone()) }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// Values print as Go's `%q` for strings and plainly otherwise.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_print_like_upstream() {
        let p = FieldPath::new("spec").key("containers").index(2).key("env").map_key("A");
        assert_eq!(p.as_str(), "spec.containers[2].env[A]");
    }

    #[test]
    fn unsupported_value_lists_choices_quoted() {
        let e = FieldError::not_supported(
            &FieldPath::new("spec").key("restartPolicy"),
            json!("Sometimes"),
            &["Always", "OnFailure", "Never"],
        );
        assert_eq!(
            e.to_string(),
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
    }

    #[test]
    fn invalid_integer_is_unquoted() {
        let e = FieldError::invalid(
            &FieldPath::new("spec").key("replicas"),
            json!(-1),
            "must be greater than or equal to 0",
        );
        assert_eq!(e.to_string(), "spec.replicas: Invalid value: -1: must be greater than or equal to 0");
    }
}

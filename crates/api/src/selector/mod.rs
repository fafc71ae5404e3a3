//! Label and field selectors, and the label key/value syntax they share with validation.
//!
//! [`LabelSelector`] parses `?labelSelector=` strings and converts `metav1.LabelSelector`s
//! from object specs, then matches `metadata.labels`; [`FieldSelector`] parses
//! `?fieldSelector=` and matches whatever field values its caller supplies. Both follow
//! upstream's `k8s.io/apimachinery/pkg/labels` and `pkg/fields`: the same strings are accepted,
//! the same canonical forms printed, and the same error texts returned, because clients show
//! those to users. [`syntax`] holds the label key, label value and qualified name checks with
//! upstream's messages.

mod field;
mod invalid;
mod label;
mod label_parse;
pub mod syntax;

pub use field::{FieldOperator, FieldRequirement, FieldSelector, FieldSelectorError, escape_value};
pub use invalid::{BadValue, InvalidValue, InvalidValues};
pub use label::{Expected, LabelSelector, Operator, Requirement, SelectorError};
pub use syntax::{validate_label_key, validate_label_value, validate_qualified_name};

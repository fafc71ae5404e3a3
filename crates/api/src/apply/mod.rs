//! Server-side apply and `metadata.managedFields`: which manager owns which fields of an object,
//! as upstream's structured-merge-diff and the API server's field manager keep them.
//!
//! - [`fieldpath`]: paths and sets of paths, and their `FieldsV1` form.
//! - `typed`, `walk`, `merge`: the schema-driven operations on values (field sets, comparison,
//!   merge of an applied configuration, removal by a field set), reading list and map types from
//!   the published OpenAPI schemas ([`crate::schema::SchemaSet`]).
//! - [`managed`]: the `managedFields` entries, decoded and encoded as upstream does.
//! - [`FieldManager`]: what every write does with them ([`FieldManager::update`]) and what an
//!   apply patch does ([`FieldManager::apply`]).
//!
//! The module does no I/O; the API server calls it on each write with the stored object.

pub mod fieldpath;
pub mod managed;
mod manager;
mod merge;
#[cfg(test)]
mod tests;
mod typed;
mod walk;

pub use manager::{ApplyError, Conflict, FieldManager, LAST_APPLIED_ANNOTATION, Reset};
pub use walk::Comparison;

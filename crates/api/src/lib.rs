//! Kubernetes API machinery, independent of transport and storage.
//!
//! This crate owns what the API means: which resources exist (a registry built from the
//! k8s-openapi types, extended with the resources of CustomResourceDefinitions), how objects
//! are defaulted and validated (custom resources against their structural schemas), how
//! selectors match, how patches apply, how errors are reported as `Status` objects and how
//! lists print as tables. It does no I/O and knows nothing of HTTP or of the store; the API
//! server and client-side components build on it.

pub mod apply;
pub mod convert;
pub mod cron;
pub mod custom;
pub mod field;
pub mod kinds;
pub mod metrics;
pub mod patch;
pub mod protobuf;
pub mod pv_helpers;
pub mod quantity;
pub mod quota;
pub mod registry;
pub mod resource;
pub mod schema;
pub mod selector;
pub mod status;
pub mod table;
pub mod taints;

pub use registry::{Registry, ResourceType};
pub use status::ApiError;

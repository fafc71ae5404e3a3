//! The Tugboat API server: the Kubernetes REST API over HTTPS.
//!
//! It owns the HTTP surface (routing, content negotiation, watch streams, discovery, OpenAPI,
//! metrics), authentication, built-in admission and the cluster's bootstrap objects. It is the
//! only component that touches the [`tug_store::Store`] (design rule 1); what objects mean
//! (defaults, validation, patches, selectors) comes from `tug_api`.

mod admission;
pub mod authn;
mod bootstrap;
mod codec;
mod discovery;
mod handlers;
mod metrics;
mod objects;
mod openapi;
pub mod pki;
mod request;
mod response;
mod server;

pub use admission::Ipv4Cidr;
pub use bootstrap::SYSTEM_NAMESPACES;
pub use server::{ApiServer, ServerOptions};

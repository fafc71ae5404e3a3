//! The Tugboat API server: the Kubernetes REST API over HTTPS.
//!
//! It owns the HTTP surface (routing, content negotiation, watch streams, discovery, OpenAPI,
//! metrics), authentication, built-in admission and the cluster's bootstrap objects, and brings
//! CustomResourceDefinitions to life (their status, the serving and the cleanup of their custom
//! resources: upstream's in-process apiextensions controllers). It is the only component that
//! touches the [`tug_store::Store`] (design rule 1); what objects mean (defaults, validation,
//! patches, selectors) comes from `tug_api`.

mod admission;
mod admission_cache;
pub mod authn;
mod bootstrap;
mod codec;
mod crd;
mod discovery;
mod handlers;
mod limitranger;
mod managed_fields;
mod metrics;
mod metrics_server;
mod objects;
mod openapi;
pub mod pki;
mod priority;
mod proxy;
mod request;
mod resourcequota;
mod response;
mod server;
pub mod serviceaccount;
mod storageclass;
mod storageprotection;

pub use admission::Ipv4Cidr;
pub use bootstrap::SYSTEM_NAMESPACES;
pub use server::{ApiServer, ServerOptions};

//! The node agent: the kubelet's role in Tugboat.
//!
//! It registers this machine as a Node and keeps its status and Lease fresh, watches the pods
//! bound to the node and runs one worker per pod that converges the runtime's sandboxes and
//! containers to the pod spec, writes pod status through the status subresource, and serves
//! logs, exec, attach and port-forward over HTTPS for the API server to proxy.
//!
//! It reaches cluster state only through the API (a `kube::Client`), and containers only
//! through the CRI-shaped traits of `tug-runtime` ([`RuntimeService`], [`ImageService`]), so the
//! same agent drives the built-in runtime or an external CRI runtime.
//!
//! [`RuntimeService`]: tug_runtime::cri::RuntimeService
//! [`ImageService`]: tug_runtime::ImageService

pub mod config;

pub use config::Config;

//! The API server's side of the node agent: `pods/log`, `pods/exec`, `pods/attach`,
//! `pods/portforward` and `nodes/proxy`, served by forwarding to the node agent's HTTPS API
//! (upstream's kubelet paths `/containerLogs`, `/exec`, `/attach`, `/portForward`, and any path
//! for the node proxy), as upstream's `LogREST`, `ExecREST`, `AttachREST`, `PortForwardREST` and
//! the node `ProxyREST` do.
//!
//! The agent is found through its Node object (preferred address and
//! `status.daemonEndpoints.kubeletEndpoint.Port`); the connection is TLS with the cluster CA and
//! the API server's `kube-apiserver-kubelet-client` certificate ([`crate::pki::ClusterPki::kubelet_client_config`]).
//! Streaming requests (exec, attach, port-forward) are HTTP/1.1 upgrades: the upgrade is
//! forwarded as is and, once the agent answers `101`, the two upgraded connections are spliced,
//! so whatever protocol the client and the agent agree on (SPDY/3.1, WebSocket
//! `v5.channel.k8s.io`, SPDY tunnelled in WebSocket) flows through unchanged. Upstream instead
//! translates WebSocket clients to SPDY towards the kubelet; our agent speaks both, so plain
//! splicing is enough.
//!
//! This module never touches the store directly: it reads Pods and Nodes through
//! [`ApiServer::read`], like any handler.

mod kubelet;
mod log;
mod node;
mod stream;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::Value;
use tug_api::{ApiError, ResourceType};

pub(crate) use kubelet::{KubeletClient, empty, locate};

use crate::request::{Query, ResourceRequest, Verb};
use crate::response::Body;
use crate::server::ApiServer;

impl ApiServer {
    /// Sets the TLS configuration the server connects to node agents with (see
    /// [`crate::pki::ClusterPki::kubelet_client_config`]); without one, logs, exec, attach,
    /// port-forward and the node proxy answer 503. Only the first call has an effect.
    pub fn set_kubelet_client_config(&self, config: rustls::ClientConfig) {
        let _ = self.kubelet_client.set(Arc::new(KubeletClient::new(config)));
    }
}

/// Whether `req` is one of the node agent's subresources this module serves. The request must
/// then be handed to [`serve`] with its body unread: upgrades and proxied bodies need it.
pub(crate) fn handles(rt: &ResourceType, req: &ResourceRequest) -> bool {
    matches!(
        (&*rt.group, &*rt.kind, req.subresource.as_deref()),
        ("", "Pod", Some("log" | "exec" | "attach" | "portforward")) | ("", "Node", Some("proxy"))
    )
}

/// Serves a request [`handles`] accepted.
pub(crate) async fn serve(
    srv: &ApiServer,
    rt: &ResourceType,
    rr: &ResourceRequest,
    query: &Query,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let name = rr.name.as_deref().unwrap_or_default();
    if rt.namespaced != rr.namespace.is_some() || name.is_empty() {
        return Err(ApiError::path_not_found());
    }
    let sub = rr.subresource.as_deref().unwrap_or_default();
    let Some(client) = srv.kubelet_client.get().cloned() else {
        return Err(ApiError::service_unavailable(format!(
            "the {sub} subresource needs a node agent connection, which this server is not configured with"
        )));
    };
    let ns = rr.namespace.as_deref().unwrap_or_default();
    match (sub, rr.verb) {
        ("log", Verb::Get) => log::serve(srv, &client, rt, ns, name, query).await,
        ("exec" | "attach" | "portforward", Verb::Get | Verb::Create) => {
            stream::serve(srv, &client, rt, ns, name, sub, req).await
        }
        ("proxy", _) => node::serve(srv, &client, rt, name, req).await,
        _ => Err(ApiError::method_not_allowed(rr.verb.as_str(), rt.subject())),
    }
}

/// The containers of a pod in upstream's visiting order: init containers, containers,
/// ephemeral containers.
fn container_names(pod: &Value) -> Vec<&str> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect()
}

/// The container a log or exec request is about, chosen as upstream's `validateContainer`
/// chooses it: the one named, which must exist, or the only one of the pod.
fn choose_container(pod: &Value, requested: Option<&str>) -> Result<String, ApiError> {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    match requested.filter(|c| !c.is_empty()) {
        Some(c) if container_names(pod).contains(&c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None => {
            let containers = pod["spec"]["containers"].as_array().map(Vec::as_slice).unwrap_or_default();
            match containers {
                [one] => Ok(one["name"].as_str().unwrap_or_default().to_string()),
                [] => Err(ApiError::bad_request(format!("a container name must be specified for pod {name}"))),
                _ => Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    container_names(pod).join(" ")
                ))),
            }
        }
    }
}

/// An error that is not an API status upstream: it reaches the client as a 500 with reason
/// `Unknown` (empty) and the error's text, as upstream's `ErrorToAPIStatus` sends it.
fn unknown_error(message: String) -> ApiError {
    ApiError { code: 500, reason: "", message, details: None }
}

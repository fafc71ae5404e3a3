//! `nodes/<name>/proxy/<path>` (any method): upstream's node `ProxyREST`, which forwards the
//! request to the node agent's HTTPS API at `<path>` with the query, and streams the answer back
//! (`kubectl get --raw /api/v1/nodes/N/proxy/healthz`, metrics scrapers). Upgrade requests are
//! spliced as for exec.

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tug_api::{ApiError, ResourceType};

use super::kubelet::{self, KubeletClient};
use crate::response::Body;
use crate::server::ApiServer;

/// `name`, `name:port` or `scheme:name:port`, as upstream's `SplitSchemeNamePort` reads a
/// proxy target; `None` when malformed.
fn split_scheme_name_port(id: &str) -> Option<(Option<&str>, &str, Option<&str>)> {
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => (None, *name, None),
        [name, port] => (None, *name, Some(*port)),
        [scheme, name, port] => (Some(*scheme), *name, Some(*port)),
        _ => return None,
    };
    if name.is_empty() || scheme.is_some_and(|s| !matches!(s, "" | "http" | "https")) {
        return None;
    }
    Some((scheme.filter(|s| !s.is_empty()), name, port.filter(|p| !p.is_empty())))
}

/// The part of the request path after `.../nodes/<id>/proxy`, where the agent's path starts.
fn subpath<'a>(path: &'a str, id: &str) -> &'a str {
    let marker = format!("/nodes/{id}/proxy");
    path.find(&marker).map(|at| &path[at + marker.len()..]).unwrap_or_default()
}

pub(super) async fn serve(
    srv: &ApiServer,
    client: &KubeletClient,
    _nodes: &ResourceType,
    id: &str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let Some((_scheme, name, port)) = split_scheme_name_port(id) else {
        return Err(ApiError::bad_request(format!("invalid node request {id:?}")));
    };
    let loc = kubelet::locate(srv, name).await?;
    if let Some(port) = port.filter(|p| *p != loc.port.to_string()) {
        // Upstream reaches other ports of the node without the kubelet's credentials; only the
        // node agent is reachable here.
        return Err(ApiError::bad_request(format!(
            "proxying to port {port} of node {name} is not supported: only the node agent's port {} is",
            loc.port
        )));
    }
    let mut path = subpath(req.uri().path(), id).to_string();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    if let Some(q) = req.uri().query() {
        path = format!("{path}?{q}");
    }
    let upgrade = kubelet::is_upgrade_request(req.headers());
    let headers = kubelet::forwarded_request_headers(req.headers(), upgrade);
    let method = req.method().clone();
    let on_client = upgrade.then(|| hyper::upgrade::on(&mut req));
    let body = if upgrade { kubelet::empty() } else { req.into_body().boxed() };
    tracing::debug!(node = name, agent = %loc, %method, %path, "proxying to a node agent");
    // Upstream's proxy transport words a backend it cannot reach as a 503.
    let resp = client
        .send(&loc, false, method, &path, headers, body)
        .await
        .map_err(|e| ApiError::service_unavailable(format!("error trying to reach service: {e}")))?;
    match on_client {
        Some(on_client) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
            Ok(kubelet::splice_upgrade(on_client, resp))
        }
        _ => Ok(kubelet::relay_response(resp)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_targets_name_a_node_and_maybe_a_port() {
        assert_eq!(split_scheme_name_port("n1"), Some((None, "n1", None)));
        assert_eq!(split_scheme_name_port("n1:10250"), Some((None, "n1", Some("10250"))));
        assert_eq!(split_scheme_name_port("https:n1:10250"), Some((Some("https"), "n1", Some("10250"))));
        assert_eq!(split_scheme_name_port("ftp:n1:21"), None);
        assert_eq!(split_scheme_name_port("a:b:c:d"), None);
        assert_eq!(split_scheme_name_port(":10250"), None);
    }

    #[test]
    fn subpath_keeps_everything_after_proxy_including_a_trailing_slash() {
        assert_eq!(subpath("/api/v1/nodes/n1/proxy/metrics/cadvisor", "n1"), "/metrics/cadvisor");
        assert_eq!(subpath("/api/v1/nodes/n1/proxy/logs/", "n1"), "/logs/");
        assert_eq!(subpath("/api/v1/nodes/n1/proxy", "n1"), "");
    }
}

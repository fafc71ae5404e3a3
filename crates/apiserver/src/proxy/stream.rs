//! `pods/exec`, `pods/attach` and `pods/portforward`: upstream's `ExecREST`, `AttachREST` and
//! `PortForwardREST`. The request is checked as upstream's `streamLocation` checks it (pod,
//! container, node), then its upgrade is forwarded to the node agent's `/exec`, `/attach` or
//! `/portForward` path with upstream's query (`command`, `input`, `output`, `error`, `tty`;
//! `port`), and the two upgraded connections are spliced.

use http::{Request, Response, header};
use hyper::body::Incoming;
use serde_json::Value;
use tug_api::{ApiError, ResourceType};

use super::kubelet::{self, KubeletClient};
use super::{choose_container, unknown_error};
use crate::response::Body;
use crate::server::ApiServer;

/// `PodExecOptions` / `PodAttachOptions`, read from the query (`command` may repeat).
#[derive(Debug, Default, PartialEq)]
pub(super) struct RemoteCommandOptions {
    pub container: Option<String>,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

fn truthy(v: &str) -> bool {
    !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
}

impl RemoteCommandOptions {
    pub fn parse(params: &[(String, String)]) -> Self {
        let first = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let flag = |key: &str| first(key).is_some_and(truthy);
        RemoteCommandOptions {
            container: first("container").filter(|c| !c.is_empty()).map(str::to_string),
            command: params.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect(),
            stdin: flag("stdin"),
            // Upstream defaults both to true after reading the query, whatever the client sent;
            // the node agent drops stderr when a TTY merges it into stdout.
            stdout: true,
            stderr: true,
            tty: flag("tty"),
        }
    }

    /// The node agent's query, as upstream's `streamParams` writes it (keys sorted).
    pub fn agent_query(&self, with_command: bool) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if with_command {
            for c in &self.command {
                q.append_pair("command", c);
            }
        }
        if self.stderr {
            q.append_pair("error", "1");
        }
        if self.stdin {
            q.append_pair("input", "1");
        }
        if self.stdout {
            q.append_pair("output", "1");
        }
        if self.tty {
            q.append_pair("tty", "1");
        }
        q.finish()
    }
}

/// The `ports` of a port-forward request, which may repeat and may each list several.
fn ports(params: &[(String, String)]) -> Result<Vec<u16>, ApiError> {
    let mut out = Vec::new();
    for (_, v) in params.iter().filter(|(k, _)| k == "ports") {
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            out.push(p.parse::<u16>().map_err(|_| {
                ApiError::bad_request(format!("invalid value {p:?} for query parameter ports: must be a port number"))
            })?);
        }
    }
    Ok(out)
}

pub(super) async fn serve(
    srv: &ApiServer,
    client: &KubeletClient,
    pods: &ResourceType,
    ns: &str,
    name: &str,
    sub: &str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let params: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()).into_owned().collect();
    let (pod, _) = srv.read(pods, Some(ns), name).await?;
    let (target, query) = if sub == "portforward" {
        let ports = ports(&params)?;
        let query = if ports.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            form_urlencoded::Serializer::new(String::new()).append_pair("port", &list.join(",")).finish()
        };
        (format!("/portForward/{ns}/{name}"), query)
    } else {
        let opts = RemoteCommandOptions::parse(&params);
        let container = choose_container(&pod, opts.container.as_deref())?;
        (format!("/{sub}/{ns}/{name}/{container}"), opts.agent_query(sub == "exec"))
    };
    let Some(node) = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    };
    let loc = kubelet::locate(srv, node).await?;
    if !kubelet::is_upgrade_request(req.headers()) {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let path = if query.is_empty() { target } else { format!("{target}?{query}") };
    let mut headers = kubelet::forwarded_request_headers(req.headers(), true);
    // The upgrade request goes on without a body.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    let on_client = hyper::upgrade::on(&mut req);
    tracing::debug!(pod = name, namespace = ns, subresource = sub, node, agent = %loc, "proxying a streaming request");
    let resp = client
        .send(&loc, false, req.method().clone(), &path, headers, kubelet::empty())
        .await
        .map_err(|e| unknown_error(format!("error dialing backend: {e}")))?;
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        Ok(kubelet::splice_upgrade(on_client, resp))
    } else {
        // Upstream passes the agent's refusal through as it is; clients print its text
        // (`unable to upgrade connection: ...`).
        Ok(kubelet::relay_response(resp))
    }
}

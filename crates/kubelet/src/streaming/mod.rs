//! The kubelet's streaming server protocols: `exec`, `attach` and `port-forward`.
//!
//! Mirrors upstream's `k8s.io/kubelet/pkg/cri/streaming` (`remotecommand`, `portforward`) and the
//! transports of `k8s.io/apimachinery/pkg/util/httpstream`: SPDY/3.1 (kubectl up to 1.29 and the
//! fallback of newer ones), WebSocket channels (`v5.channel.k8s.io` and older, kubectl 1.30+), and
//! SPDY tunnelled in a WebSocket for port-forward (`SPDY/3.1+portforward.k8s.io`, KEP-4006).
//!
//! This module only speaks the wire protocols. What runs behind a session (a process in a
//! container, a TCP connection in a pod's network namespace) comes from the caller through the
//! `open` and `connect` callbacks, so the HTTP routing and container lookup stay in the server.

mod portforward;
mod proxy;
mod remotecommand;
mod spdy;
mod websocket;

#[cfg(test)]
mod kubectl_tests;
#[cfg(test)]
mod tests;

use std::future::Future;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use tug_runtime::cri::{RuntimeError, StreamSession};

pub use proxy::proxy;

/// Which remote command endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteCommandKind {
    Exec,
    Attach,
}

/// Options parsed from the query (command (repeated), stdin, stdout, stderr, tty, container).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteCommandOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Errors of the streaming protocols.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("invalid query parameter {name}: {value:?}")]
    InvalidQuery { name: String, value: String },
    #[error("you must specify at least 1 of stdin, stdout, stderr")]
    NoStreams,
    #[error("io error on the streaming connection")]
    Io(#[from] std::io::Error),
    #[error("spdy protocol error: {0}")]
    Spdy(&'static str),
    #[error("spdy header block could not be {operation}")]
    HeaderCompression { operation: &'static str },
    #[error("websocket protocol error: {0}")]
    WebSocket(&'static str),
    #[error("the connection was closed")]
    ConnectionClosed,
    #[error("timed out waiting for the client to create streams")]
    StreamTimeout,
    #[error("the http upgrade failed")]
    Upgrade(#[source] hyper::Error),
}

/// The query parameter values upstream's clients use for true: kubectl sends `true`, the
/// API server's kubelet URLs `1`.
fn query_bool(name: &str, value: &str) -> Result<bool, StreamingError> {
    match value {
        "1" | "true" | "True" | "TRUE" | "t" | "T" => Ok(true),
        "0" | "false" | "False" | "FALSE" | "f" | "F" | "" => Ok(false),
        _ => Err(StreamingError::InvalidQuery { name: name.to_string(), value: value.to_string() }),
    }
}

/// Parses the options of an exec or attach request. Accepts both kubectl's names (`stdin`,
/// `stdout`, `stderr`) and the names of upstream's kubelet URLs (`input`, `output`, `error`).
pub fn parse_remote_command_query(query: Option<&str>) -> Result<RemoteCommandOptions, StreamingError> {
    let mut options = RemoteCommandOptions::default();
    for (name, value) in form_pairs(query.unwrap_or("")) {
        match name.as_str() {
            "command" => options.command.push(value),
            "stdin" | "input" => options.stdin = query_bool(&name, &value)?,
            "stdout" | "output" => options.stdout = query_bool(&name, &value)?,
            "stderr" | "error" => options.stderr = query_bool(&name, &value)?,
            "tty" => options.tty = query_bool(&name, &value)?,
            _ => {}
        }
    }
    // Upstream bypasses stderr with a TTY: the terminal carries both output streams.
    if options.tty {
        options.stderr = false;
    }
    if !options.stdin && !options.stdout && !options.stderr {
        return Err(StreamingError::NoStreams);
    }
    Ok(options)
}

/// Splits an `application/x-www-form-urlencoded` query into decoded pairs.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// Answers the upgrade (101 with the negotiated protocol; 400/403 plain text otherwise) and, in
/// a spawned task after hyper's upgrade completes, opens the session with `open` and pumps it.
pub async fn remote_command<F, Fut>(
    req: hyper::Request<hyper::body::Incoming>,
    options: RemoteCommandOptions,
    open: F,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>>
where
    F: FnOnce(RemoteCommandOptions) -> Fut + Send + 'static,
    Fut: Future<Output = Result<StreamSession, RuntimeError>> + Send + 'static,
{
    if websocket::is_websocket_request(req.headers()) {
        remotecommand::serve_websocket(req, options, open)
    } else {
        remotecommand::serve_spdy(req, options, open)
    }
}

/// Answers a port-forward upgrade (SPDY, SPDY tunnelled in a WebSocket, or the WebSocket channel
/// protocol) and forwards every stream pair the client opens to the connection `connect` makes.
pub async fn port_forward<C, Fut>(
    req: hyper::Request<hyper::body::Incoming>,
    connect: C,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>>
where
    C: Fn(u16) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<tokio::net::TcpStream, RuntimeError>> + Send + 'static,
{
    portforward::serve(req, connect)
}

/// A plain-text error answer, as upstream's kubelet writes them (`http.Error`).
fn plain_error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = message.into();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

/// All values of a header, split at commas (clients send lists either way).
fn header_tokens(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Whether the `Connection` header asks for an upgrade.
fn connection_upgrade(headers: &HeaderMap) -> bool {
    header_tokens(headers, header::CONNECTION.as_str()).iter().any(|t| t.eq_ignore_ascii_case("upgrade"))
}

//! The connection to a node agent: where it listens (from its Node object), the TLS connection,
//! one HTTP/1.1 exchange per connection, and relaying bodies and upgraded connections.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;
use tug_api::ApiError;

use crate::response::Body;
use crate::server::ApiServer;

/// The port of a node agent whose Node does not say, as upstream's `--kubelet-port`.
const DEFAULT_KUBELET_PORT: u16 = 10250;
/// The address types tried in order. Upstream's default starts with `Hostname`; like k3s we
/// start with the addresses, since node host names often do not resolve from the server.
const PREFERRED_ADDRESS_TYPES: [&str; 5] = ["InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"];
/// Upstream's kubelet client dial and TLS handshake timeouts.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of reaching a node agent. Their text ends up in the `Status` the client sees, so it
/// reads like upstream's Go errors (`dial tcp 10.0.0.5:10250: connect: connection refused`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum KubeletError {
    #[error("dial tcp {addr}: connect: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("dial tcp {addr}: i/o timeout")]
    ConnectTimeout { addr: String },
    #[error("tls: handshake with {addr}: {source}")]
    Tls { addr: String, source: io::Error },
    #[error("tls: handshake with {addr}: timeout")]
    TlsTimeout { addr: String },
    #[error("invalid host name {host:?}")]
    ServerName { host: String, source: rustls_pki_types::InvalidDnsNameError },
    #[error("http handshake with {addr}: {source}")]
    Handshake { addr: String, source: hyper::Error },
    #[error("{source}")]
    Send { source: hyper::Error },
    #[error("building the request to {addr}: {source}")]
    Request { addr: String, source: http::Error },
}

/// Where a node agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Location {
    /// `host:port`, with IPv6 addresses in brackets as in URLs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// The body of a request to a node agent: empty, or the client's request body passed on.
pub(crate) type Outgoing = BoxBody<Bytes, hyper::Error>;

pub(crate) fn empty() -> Outgoing {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Connects to node agents; shared by every request.
pub(crate) struct KubeletClient {
    verified: TlsConnector,
    /// For `insecureSkipTLSVerifyBackend=true` log requests: the agent's certificate is not
    /// checked (the handshake's signatures still are), as upstream's insecure kubelet transport.
    insecure: TlsConnector,
}

impl KubeletClient {
    pub fn new(config: rustls::ClientConfig) -> Self {
        let mut insecure = config.clone();
        let provider = insecure.crypto_provider().clone();
        insecure.dangerous().set_certificate_verifier(Arc::new(AnyServerCert(provider)));
        KubeletClient {
            verified: TlsConnector::from(Arc::new(config)),
            insecure: TlsConnector::from(Arc::new(insecure)),
        }
    }

    /// Sends one request on a new connection and returns the agent's response. With
    /// `with_upgrades`, the connection stays usable for `hyper::upgrade::on` on the response.
    pub async fn send(
        &self,
        loc: &Location,
        insecure: bool,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Outgoing,
    ) -> Result<Response<Incoming>, KubeletError> {
        let addr = loc.to_string();
        let tcp = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect((loc.host.as_str(), loc.port))).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => return Err(KubeletError::Connect { addr, source }),
            Err(_) => return Err(KubeletError::ConnectTimeout { addr }),
        };
        let _ = tcp.set_nodelay(true);
        let server_name = match loc.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(loc.host.clone())
                .map_err(|source| KubeletError::ServerName { host: loc.host.clone(), source })?,
        };
        let connector = if insecure { &self.insecure } else { &self.verified };
        let tls = match tokio::time::timeout(TLS_TIMEOUT, connector.connect(server_name, tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(source)) => return Err(KubeletError::Tls { addr, source }),
            Err(_) => return Err(KubeletError::TlsTimeout { addr }),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| KubeletError::Handshake { addr: addr.clone(), source })?;
        let conn_addr = addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(addr = %conn_addr, error = %e, "node agent connection ended with an error");
            }
        });
        let mut builder = Request::builder().method(method).uri(path_and_query);
        if let Some(h) = builder.headers_mut() {
            *h = headers;
            h.insert(header::HOST, HeaderValue::from_str(&addr).unwrap_or(HeaderValue::from_static("localhost")));
        }
        let req = builder.body(body).map_err(|source| KubeletError::Request { addr, source })?;
        sender.send_request(req).await.map_err(|source| KubeletError::Send { source })
    }
}

/// Where the node agent of `node_name` listens, as upstream's `NodeConnectionInfoGetter` finds
/// it. A missing Node is the Node's `NotFound`; a Node without a usable address is a 500 naming
/// the addresses it has.
pub(crate) async fn locate(srv: &ApiServer, node_name: &str) -> Result<Location, ApiError> {
    let registry = srv.registry();
    let nodes = registry.lookup("", "v1", "nodes").expect("nodes are served");
    let (node, _) = srv.read(nodes, None, node_name).await?;
    let addresses = node.pointer("/status/addresses").and_then(Value::as_array).cloned().unwrap_or_default();
    let host = PREFERRED_ADDRESS_TYPES.iter().find_map(|wanted| {
        addresses
            .iter()
            .filter(|a| a["type"].as_str() == Some(wanted))
            .find_map(|a| a["address"].as_str().filter(|s| !s.is_empty()))
    });
    let Some(host) = host else {
        let known: Vec<String> = addresses
            .iter()
            .map(|a| format!("{{{} {}}}", a["type"].as_str().unwrap_or(""), a["address"].as_str().unwrap_or("")))
            .collect();
        return Err(super::unknown_error(format!(
            "no preferred addresses found; known addresses: [{}]",
            known.join(" ")
        )));
    };
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok(Location { host: host.to_string(), port })
}

/// Hop-by-hop headers, which a proxy does not pass on (RFC 9110 section 7.6.1), except on
/// upgrades, where `Connection` and `Upgrade` are the point.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The headers of a client request worth passing to a node agent: everything but the client's
/// credentials (the agent trusts the API server's certificate, and upstream's authentication
/// filter drops `Authorization` too), the host, and, unless upgrading, hop-by-hop headers.
pub(crate) fn forwarded_request_headers(headers: &HeaderMap, upgrade: bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        let skip = matches!(n, "authorization" | "host")
            || n.starts_with("impersonate-")
            || (!upgrade && HOP_BY_HOP.contains(&n));
        if !skip {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Whether a request asks to switch protocols (`Connection: Upgrade` and an `Upgrade` header),
/// as upstream's `httpstream.IsUpgradeRequest` reads it.
pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

/// Passes the agent's response to the client: its status, its end-to-end headers and its body,
/// streamed as it arrives.
pub(crate) fn relay_response(resp: Response<Incoming>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(Body::new(Relay(body)));
    *out.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

/// Answers a client's upgrade request with the agent's `101` and, once both sides have switched,
/// copies bytes both ways until either side closes.
pub(crate) fn splice_upgrade(client: hyper::upgrade::OnUpgrade, mut resp: Response<Incoming>) -> Response<Body> {
    let backend = hyper::upgrade::on(&mut resp);
    let mut out = Response::new(crate::response::full(Bytes::new()));
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    // Every header of the agent's 101 (Upgrade, Connection, Sec-WebSocket-Accept and
    // -Protocol, X-Stream-Protocol-Version) is the client's business.
    *out.headers_mut() = resp.headers().clone();
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(both) => both,
            Err(e) => {
                debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            Ok((up, down)) => debug!(bytes_to_agent = up, bytes_to_client = down, "streaming connection closed"),
            Err(e) => debug!(error = %e, "streaming connection ended with an error"),
        }
    });
    out
}

/// Reads at most `limit` bytes of an error response's body, as upstream's response checker does.
pub(crate) async fn read_error_body(body: Incoming, limit: usize) -> String {
    let mut body = body;
    let mut out = Vec::new();
    while out.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    out.truncate(limit);
    String::from_utf8_lossy(&out).into_owned()
}

/// A node agent's response body passed on to the client. The API server's bodies cannot fail,
/// so an error from the agent ends the body early: the client sees the stream end, as it would
/// with upstream when the kubelet's connection drops.
struct Relay(Incoming);

impl HttpBody for Relay {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.0).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(e))) => {
                debug!(error = %e, "node agent response body ended with an error");
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// Accepts any server certificate; only for requests that explicitly ask not to verify the
/// node agent (`insecureSkipTLSVerifyBackend`). Handshake signatures are still checked, so the
/// peer must hold the key of the certificate it shows.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

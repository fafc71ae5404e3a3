//! Sessions a CRI runtime serves itself: the runtime answers `Exec`, `Attach` and `PortForward`
//! with a URL of its streaming server, and the kubelet replays the client's upgrade request
//! (SPDY or WebSocket, whatever the client asked for) to that URL and, once the runtime has
//! switched protocols, splices the two connections. Upstream's kubelet does the same with its
//! `UpgradeAwareHandler` (streaming requests are proxied, not redirected, since 1.20).

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use super::plain_error;

/// Why the runtime's streaming server could not be reached.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("invalid streaming URL {url:?} from the container runtime")]
    InvalidUrl { url: String },
    #[error("connecting to the container runtime's streaming server at {address}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the container runtime's streaming server")]
    Http(#[source] hyper::Error),
}

/// Proxies `req` (an exec, attach or port-forward upgrade) to the runtime's streaming `url`.
pub async fn proxy(req: Request<Incoming>, url: &str) -> Response<Full<Bytes>> {
    match forward(req, url).await {
        Ok(response) => response,
        Err(error) => {
            warn!(%error, url, "proxying a streaming session to the container runtime");
            let mut message = error.to_string();
            if let Some(source) = std::error::Error::source(&error) {
                message = format!("{message}: {source}");
            }
            plain_error(StatusCode::INTERNAL_SERVER_ERROR, message)
        }
    }
}

async fn forward(req: Request<Incoming>, url: &str) -> Result<Response<Full<Bytes>>, ProxyError> {
    let invalid = || ProxyError::InvalidUrl { url: url.to_owned() };
    let target: Uri = url.parse().map_err(|_| invalid())?;
    // Runtimes serve plain HTTP on loopback (containerd's default); TLS streaming is not set up.
    if target.scheme_str() != Some("http") {
        return Err(invalid());
    }
    let address = target.authority().ok_or_else(invalid)?.to_string();
    let path = target.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|source| ProxyError::Connect { address: address.clone(), source })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(ProxyError::Http)?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            debug!(%error, "streaming connection to the runtime ended");
        }
    });
    let mut upstream = Request::builder().method(req.method().clone()).uri(path);
    for (name, value) in req.headers() {
        // The runtime's server is addressed by its own host; credentials for the kubelet stay here.
        if name != header::HOST && name != header::AUTHORIZATION {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = upstream
        .header(header::HOST, HeaderValue::from_str(&address).map_err(|_| invalid())?)
        .body(Empty::<Bytes>::new())
        .map_err(|_| invalid())?;
    let response = sender.send_request(upstream).await.map_err(ProxyError::Http)?;
    let mut answer = Response::builder().status(response.status());
    for (name, value) in response.headers() {
        answer = answer.header(name, value);
    }
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The runtime refused (a protocol it does not speak, an expired token): its answer goes
        // back as it is, so the client can fall back (WebSocket to SPDY) or show the error.
        let body = response.into_body().collect().await.map_err(ProxyError::Http)?.to_bytes();
        return Ok(answer.body(Full::new(body)).expect("headers copied from a valid response"));
    }
    tokio::spawn(async move {
        let (client, runtime) = tokio::join!(hyper::upgrade::on(req), hyper::upgrade::on(response));
        match (client, runtime) {
            (Ok(client), Ok(runtime)) => {
                let (mut client, mut runtime) = (TokioIo::new(client), TokioIo::new(runtime));
                if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut runtime).await {
                    debug!(%error, "proxied streaming session ended");
                }
            }
            (client, runtime) => {
                warn!(client = client.is_ok(), runtime = runtime.is_ok(), "a streaming upgrade failed");
            }
        }
    });
    Ok(answer.body(Full::new(Bytes::new())).expect("headers copied from a valid response"))
}

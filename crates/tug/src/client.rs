//! The API client every long-running component of `tug` uses: kube-rs' request stack over
//! HTTP/2, as client-go talks to an API server.
//!
//! kube-rs' own client speaks HTTP/1.1, where every watch holds a connection of its own: the
//! controllers, scheduler, node agent, proxy and DNS of one server keep about 150 watches
//! open, so as many TLS connections (each with buffers on both ends) made up most of an idle
//! server's heap. Over HTTP/2 they are streams of one connection.
//!
//! The components inside a `tug server` process reach that server's API over an in-memory pipe
//! instead ([`in_process`]): the same HTTP/2 requests, without TLS and TCP in between.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube::client::ConfigExt;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, ServiceBuilder};
use tug_apiserver::ApiServer;
use tug_apiserver::authn::UserInfo;

/// Per-stream and per-connection flow-control windows (client-go's HTTP/2 transport uses the
/// same): a watch nobody reads for a while must not stall the others by filling a small
/// connection window. A window is credit, not memory: only unread data takes memory.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 1 << 30;

/// A connection that answers no ping within this long after a quiet spell is given up and
/// the watches on it resume on a new one (client-go's HTTP/2 health check: 30 s, 15 s).
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// How much one direction of an in-process connection buffers before its writer waits for the
/// reader: a few HTTP/2 frames (16 KiB each by default), so that a burst of watch events is
/// handed over in a few large writes.
const IN_PROCESS_PIPE_BUFFER: usize = 256 << 10;

/// The HTTP/2 client settings both transports share.
fn http2_transport() -> hyper_util::client::legacy::Builder {
    let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    builder
        .http2_only(true)
        .timer(TokioTimer::new())
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW);
    builder
}

/// A client for `config`'s cluster whose requests share one HTTP/2 connection.
pub fn client(config: kube::Config) -> anyhow::Result<kube::Client> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    http.set_nodelay(true);
    let tls = config.rustls_client_config().context("building the client's TLS configuration")?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http2()
        .wrap_connector(http);
    let transport = http2_transport()
        .http2_keep_alive_interval(PING_INTERVAL)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().context("building the client's authentication")?)
        .layer(config.extra_headers_layer().context("building the client's headers")?)
        .map_err(BoxError::from)
        .service(transport);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// A client of `server`, in this process, whose requests share one in-memory HTTP/2 connection
/// and are authenticated as `user`; see [`ApiServer::serve_in_process`]. Each client has its
/// own connection, as one built by [`client`] does. The connection ends with `shutdown`.
pub fn in_process(server: ApiServer, user: UserInfo, shutdown: CancellationToken) -> kube::Client {
    // Requests need a scheme and an authority; the connector ignores both.
    let config = kube::Config::new(http::Uri::from_static("http://in-process"));
    let transport = http2_transport().build(InProcessConnector { server, user, shutdown });
    let service = ServiceBuilder::new().layer(config.base_uri_layer()).map_err(BoxError::from).service(transport);
    kube::Client::new(service, config.default_namespace)
}

/// Makes connections to an [`ApiServer`] of this process: each is a pipe whose other end the
/// server serves from a task of its own.
#[derive(Clone)]
struct InProcessConnector {
    server: ApiServer,
    user: UserInfo,
    shutdown: CancellationToken,
}

impl tower::Service<http::Uri> for InProcessConnector {
    type Response = TokioIo<InProcessStream>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (client_end, server_end) = tokio::io::duplex(IN_PROCESS_PIPE_BUFFER);
        tokio::spawn(self.server.clone().serve_in_process(server_end, self.user.clone(), self.shutdown.clone()));
        std::future::ready(Ok(TokioIo::new(InProcessStream(client_end))))
    }
}

/// The client's end of an in-process connection.
struct InProcessStream(DuplexStream);

impl Connection for InProcessStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for InProcessStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for InProcessStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::{StreamExt as _, TryStreamExt as _};
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
    use tug_apiserver::ServerOptions;

    use super::*;

    fn config_map(name: &str) -> ConfigMap {
        ConfigMap { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() }
    }

    #[tokio::test]
    async fn an_in_process_client_reads_writes_and_watches_until_the_server_shuts_down() {
        let server = ApiServer::new(Arc::new(tug_store::memory::MemoryStore::new()), None, ServerOptions::default());
        server.bootstrap().await.unwrap();
        server.set_ready();
        let shutdown = CancellationToken::new();
        let admin = UserInfo {
            name: "system:admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            uid: None,
        };
        let client = in_process(server, admin, shutdown.clone());

        let namespaces: Api<Namespace> = Api::all(client.clone());
        let names: Vec<String> = namespaces
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        assert!(names.iter().any(|n| n == "kube-system"), "{names:?}");

        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let first = config_maps.create(&PostParams::default(), &config_map("first")).await.unwrap();
        let since = first.metadata.resource_version.unwrap();
        let mut events = config_maps.watch(&WatchParams::default(), &since).await.unwrap().boxed();
        config_maps.create(&PostParams::default(), &config_map("second")).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), events.try_next()).await.unwrap().unwrap();
        match event {
            Some(WatchEvent::Added(cm)) => assert_eq!(cm.metadata.name.as_deref(), Some("second")),
            other => panic!("expected the second ConfigMap's creation, got {other:?}"),
        }
        // The API's own checks apply as on any connection: a duplicate is refused.
        let duplicate = config_maps.create(&PostParams::default(), &config_map("second")).await.unwrap_err();
        assert!(matches!(duplicate, kube::Error::Api(ref s) if s.code == 409), "{duplicate:?}");

        shutdown.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap();
        assert!(!matches!(ended, Some(Ok(_))), "the watch went on after shutdown: {ended:?}");
        assert!(config_maps.get("first").await.is_err(), "a request was served after shutdown");
    }
}

//! The API client every long-running component of `tug` uses: kube-rs' request stack over
//! HTTP/2, as client-go talks to an API server.
//!
//! kube-rs' own client speaks HTTP/1.1, where every watch holds a connection of its own: the
//! controllers, scheduler, node agent, proxy and DNS of one server keep about 150 watches
//! open, so as many TLS connections (each with buffers on both ends) made up most of an idle
//! server's heap. Over HTTP/2 they are streams of one connection.

use std::time::Duration;

use anyhow::Context;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use tower::{BoxError, ServiceBuilder};

/// Per-stream and per-connection flow-control windows (client-go's HTTP/2 transport uses the
/// same): a watch nobody reads for a while must not stall the others by filling a small
/// connection window. A window is credit, not memory: only unread data takes memory.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 1 << 30;

/// A connection that answers no ping within this long after a quiet spell is given up and
/// the watches on it resume on a new one (client-go's HTTP/2 health check: 30 s, 15 s).
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(15);

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
    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .timer(TokioTimer::new())
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
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

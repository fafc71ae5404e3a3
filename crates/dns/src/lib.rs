//! Cluster DNS (CoreDNS's role): answers the names of `--cluster-domain` (services, headless
//! endpoints, pods, SRV ports, ExternalName CNAMEs, reverse names) from Services,
//! EndpointSlices and Pods watched through the API, and forwards every other name to the host's
//! resolvers behind a small cache. It publishes itself as Service `kube-system/kube-dns`.
//!
//! It reads the cluster only through the API with kube-rs (design rule 1) and owns nothing but
//! the kube-dns Service and its EndpointSlice; packet routing to it is the service proxy's job.

pub mod forward;
pub mod metrics;
pub mod publish;
pub mod server;
pub mod view;
pub mod watch;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use forward::Forwarder;
pub use server::{Handler, SharedView};
pub use view::View;

pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listening for DNS on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// Where the server publishes itself.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The kube-dns Service's clusterIP (`--cluster-dns`).
    pub cluster_ip: IpAddr,
    /// The address put in the slice when listening on all addresses.
    pub advertise: IpAddr,
    pub node_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub domain: String,
    /// UDP and TCP address to serve on (port 0: any free port).
    pub listen: SocketAddr,
    /// Resolvers for names outside the cluster.
    pub upstreams: Vec<SocketAddr>,
    pub publish: Option<Publish>,
    /// Where to serve `/metrics` (CoreDNS's port is 9153); None: not served.
    pub metrics: Option<SocketAddr>,
}

/// Binds the listeners (an error here is returned at once), then serves, watches the cluster
/// and publishes kube-dns in the background until `shutdown`. Returns the bound address.
pub async fn start(
    client: Client,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let view = Arc::new(SharedView::new(View::new(&options.domain)));
    // Never forward to ourselves: a loop would answer nothing, slowly.
    let upstreams: Vec<SocketAddr> = options.upstreams.iter().copied().filter(|u| *u != options.listen).collect();
    let handler = Arc::new(Handler::new(view.clone(), Forwarder::new(upstreams.clone())));
    let (bound, serving) = server::listen(options.listen, handler.clone(), shutdown.clone())
        .await
        .map_err(|source| Error::Listen { addr: options.listen, source })?;
    info!(addr = %bound, domain = %options.domain, ?upstreams, "cluster DNS is listening");
    if let Some(addr) = options.metrics {
        // Metrics are a convenience: a taken port must not stop name service.
        match metrics::listen(addr, handler.metrics(), shutdown.clone()).await {
            Ok(addr) => info!(%addr, "cluster DNS metrics at /metrics"),
            Err(e) => warn!(%addr, error = %e, "cannot serve the cluster DNS metrics"),
        }
    }
    let watching = tokio::spawn(watch::run(client.clone(), options.domain.clone(), view, shutdown.clone()));
    let publishing = options.publish.clone().map(|p| {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let ip = if bound.ip().is_unspecified() { p.advertise } else { bound.ip() };
            let endpoint = SocketAddr::new(ip, bound.port());
            let mut delay = Duration::from_millis(200);
            loop {
                match publish::publish(&client, p.cluster_ip, endpoint, p.node_name.as_deref()).await {
                    Ok(()) => {
                        info!(cluster_ip = %p.cluster_ip, %endpoint, "published service kube-system/kube-dns");
                        return;
                    }
                    Err(e @ publish::Error::ClusterIpTaken { .. }) => {
                        // Retrying cannot change a clusterIP: say so once.
                        warn!(error = %e, "the kube-dns service keeps its address");
                        return;
                    }
                    Err(e) => warn!(error = %e, "publishing the cluster DNS service; retrying"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        })
    });
    let task = tokio::spawn(async move {
        let _ = serving.await;
        let _ = watching.await;
        if let Some(p) = publishing {
            let _ = p.await;
        }
    });
    Ok((bound, task))
}

//! The controller manager.
//!
//! Each controller lives in its own module, named as upstream's `pkg/controller/<name>`, and
//! reaches cluster state only through the Kubernetes API with a kube-rs client (design rule 1),
//! so any of them can be swapped for upstream's and they exercise our API as real clients do.
pub mod deployment;
pub mod events;
pub mod expectations;
pub mod garbagecollector;
mod informer;
pub mod namespace;
pub mod replicaset;

use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Runs every controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let gc = {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            // Discovery may fail while the API server is still starting: retry.
            loop {
                match garbagecollector::run(client.clone(), shutdown.clone()).await {
                    Ok(()) => return,
                    Err(e) => warn!(error = %e, "garbage collector stopped; restarting"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                }
            }
        })
    };
    let ns = tokio::spawn(namespace::run(client.clone(), shutdown.clone()));
    let rs = tokio::spawn(replicaset::run(client.clone(), shutdown.clone()));
    let deploy = tokio::spawn(deployment::run(client, shutdown));
    let _ = tokio::join!(gc, ns, rs, deploy);
}

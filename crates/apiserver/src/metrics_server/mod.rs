//! The resource metrics pipeline, built into the API server: upstream's metrics-server (which
//! k3s runs as an add-on) as a module. Every [`METRIC_RESOLUTION`] it scrapes the
//! `/metrics/resource` endpoint of every Ready node's agent, over the same TLS client the node
//! proxy uses, keeps the last two points per node and container ([`storage`]), and serves
//! `metrics.k8s.io/v1beta1` from them ([`api`]) for `kubectl top` and the
//! HorizontalPodAutoscaler.
//!
//! Like the rest of the API server it reads Nodes and Pods from the store through the server's
//! own read paths; it never writes.

mod api;
mod decode;
mod storage;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

pub(crate) use api::{GROUP, aggregated_group, api_group, resource_list, serve};

use crate::proxy::{KubeletClient, empty, locate};
use crate::server::ApiServer;

/// How often the node agents are scraped (metrics-server's `--metric-resolution` default).
pub const METRIC_RESOLUTION: Duration = Duration::from_secs(15);
/// How long one node's scrape may take (metrics-server's `--kubelet-request-timeout` default).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// A larger answer is refused (a node agent with thousands of containers stays far below).
const MAX_RESPONSE_BYTES: usize = 32 << 20;
/// The annotation `tug sim-nodes` puts on its Nodes: they have no agent to scrape (as kwok's
/// fake nodes have none for metrics-server), and their addresses lead off the machine.
const ANNOTATION_SIMULATED: &str = "sim.tugboat.dev/node";

/// Errors scraping one node.
#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("locating the node agent: {0}")]
    Locate(#[source] tug_api::ApiError),
    #[error("requesting /metrics/resource: {0}")]
    Request(String),
    #[error("the node agent answered {status}")]
    Status { status: StatusCode },
    #[error("reading the answer: {0}")]
    Body(String),
    #[error("decoding the answer: {0}")]
    Decode(#[from] decode::DecodeError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// The metrics pipeline's state, shared by the scraper and the API.
#[derive(Debug)]
pub(crate) struct MetricsServer {
    storage: Mutex<storage::Storage>,
    /// Nodes whose last scrape failed: a failure is a warning once, then debug until it heals.
    failing: Mutex<HashSet<String>>,
}

impl Default for MetricsServer {
    fn default() -> Self {
        MetricsServer {
            storage: Mutex::new(storage::Storage::new(METRIC_RESOLUTION)),
            failing: Mutex::new(HashSet::new()),
        }
    }
}

impl MetricsServer {
    pub(crate) fn storage(&self) -> MutexGuard<'_, storage::Storage> {
        self.storage.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ApiServer {
    /// Scrapes the node agents every [`METRIC_RESOLUTION`] until `shutdown` (the first round at
    /// once). Does nothing on a server without a node agent client.
    pub(crate) async fn run_metrics_server(self, shutdown: CancellationToken) {
        let Some(client) = self.kubelet_client.get().cloned() else { return };
        let mut tick = tokio::time::interval(METRIC_RESOLUTION);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let batch = self.scrape(&client).await;
            self.metrics_server.storage().store(batch);
        }
    }

    /// One round: every Ready node at once, each within [`SCRAPE_TIMEOUT`].
    async fn scrape(&self, client: &Arc<KubeletClient>) -> storage::Batch {
        let nodes = match self.ready_nodes().await {
            Ok(nodes) => nodes,
            Err(error) => {
                warn!(%error, "listing nodes to scrape failed");
                return storage::Batch::default();
            }
        };
        let rounds = nodes.iter().map(|name| {
            async move {
                let result = match tokio::time::timeout(SCRAPE_TIMEOUT, self.scrape_node(client, name)).await {
                    Ok(result) => result,
                    Err(_) => Err(ScrapeError::Timeout(SCRAPE_TIMEOUT)),
                };
                let mut failing = self.metrics_server.failing.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(batch) => {
                        if failing.remove(name) {
                            info!("scraping the node agent works again");
                        }
                        Some(batch)
                    }
                    Err(error) if failing.insert(name.clone()) => {
                        warn!(%error, "scraping the node agent failed");
                        None
                    }
                    Err(error) => {
                        debug!(%error, "scraping the node agent failed");
                        None
                    }
                }
            }
            .instrument(info_span!("scrape_node", node = %name))
        });
        let results = join_all(rounds).await;
        // Nodes that left the cluster are no longer failing.
        self.metrics_server.failing.lock().unwrap_or_else(|e| e.into_inner()).retain(|n| nodes.contains(n));
        let mut batch = storage::Batch::default();
        for node_batch in results.into_iter().flatten() {
            batch.nodes.extend(node_batch.nodes);
            for (key, containers) in node_batch.pods {
                // A pod reported by two nodes (a stale agent) counts once, as metrics-server does.
                batch.pods.entry(key).or_insert(containers);
            }
        }
        debug!(nodes = batch.nodes.len(), pods = batch.pods.len(), "scrape finished");
        batch
    }

    async fn scrape_node(&self, client: &KubeletClient, name: &str) -> Result<storage::Batch, ScrapeError> {
        let location = locate(self, name).await.map_err(ScrapeError::Locate)?;
        let response = client
            .send(&location, false, Method::GET, "/metrics/resource", HeaderMap::new(), empty())
            .await
            .map_err(|e| ScrapeError::Request(e.to_string()))?;
        if response.status() != StatusCode::OK {
            return Err(ScrapeError::Status { status: response.status() });
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ScrapeError::Body(e.to_string()))?
            .to_bytes();
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        Ok(decode::decode_batch(&String::from_utf8_lossy(&body), now_ms, name)?)
    }

    /// The names of the nodes whose Ready condition is True, simulated ones left out.
    async fn ready_nodes(&self) -> Result<Vec<String>, tug_api::ApiError> {
        let everything =
            (tug_api::selector::LabelSelector::everything(), tug_api::selector::FieldSelector::everything());
        let nodes = api::list_objects(self, "nodes", None, &everything.0, &everything.1).await?;
        let mut ready = Vec::new();
        for node in nodes {
            let is_ready = node
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let simulated = node.pointer("/metadata/annotations").and_then(|a| a.get(ANNOTATION_SIMULATED)).is_some();
            if let Some(name) =
                node.pointer("/metadata/name").and_then(Value::as_str).filter(|_| is_ready && !simulated)
            {
                ready.push(name.to_string());
            }
        }
        Ok(ready)
    }
}

//! The pod garbage collector (upstream's `pkg/controller/podgc`). Every `gc_period` it deletes:
//!
//! - terminated pods (Succeeded/Failed) beyond `--terminated-pod-gc-threshold`, oldest first;
//! - terminating pods on nodes that are not ready and carry the `out-of-service` taint (force);
//! - orphaned pods bound to a node that does not exist, once the node has been missing for a
//!   quarantine period and a fresh read confirms it (marked Failed with a `DisruptionTarget`
//!   condition first, then force-deleted);
//! - terminating pods that were never scheduled (force).
//!
//! This module deletes pods and writes their status only.

use crate::informer::Informers;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Upstream's `--terminated-pod-gc-threshold` default.
pub const TERMINATED_POD_GC_THRESHOLD: usize = 12500;
/// Upstream's `gcCheckPeriod`.
pub const GC_PERIOD: Duration = Duration::from_secs(20);
/// Upstream's `quarantineTime`: how long a node must be missing before its pods are orphans.
pub const QUARANTINE: Duration = Duration::from_secs(40);
const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// Why deleting a pod failed (retried on the next pass).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("marking pod {pod} failed")]
    MarkFailed {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting pod {pod}")]
    Delete {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("checking whether node {node} exists")]
    NodeLookup {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// The collector's settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Terminated pods kept before the oldest are deleted; 0 disables that part.
    pub terminated_pod_gc_threshold: usize,
    pub gc_period: Duration,
    pub quarantine: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { terminated_pod_gc_threshold: TERMINATED_POD_GC_THRESHOLD, gc_period: GC_PERIOD, quarantine: QUARANTINE }
    }
}

fn is_terminated(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref().filter(|n| !n.is_empty())
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// The terminated pods to delete so that at most `threshold` remain: the oldest by creation.
pub fn terminated_to_delete(pods: &[Arc<Pod>], threshold: usize) -> Vec<Arc<Pod>> {
    let mut terminated: Vec<Arc<Pod>> =
        pods.iter().filter(|p| is_terminated(p) && p.metadata.deletion_timestamp.is_none()).cloned().collect();
    if threshold == 0 || terminated.len() <= threshold {
        return Vec::new();
    }
    terminated.sort_by(|a, b| {
        a.metadata.creation_timestamp.as_ref().map(|t| t.0).cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    let excess = terminated.len() - threshold;
    terminated.truncate(excess);
    terminated
}

/// Whether a node is out of service: not ready and tainted `out-of-service` with NoExecute.
pub fn is_out_of_service(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == OUT_OF_SERVICE_TAINT && t.effect == "NoExecute"));
    !ready && tainted
}

struct PodGc {
    client: Client,
    options: Options,
    pods: Store<Pod>,
    nodes: Store<Node>,
    /// Nodes seen missing and since when.
    missing_since: HashMap<String, Instant>,
}

/// Runs the pod garbage collector until `shutdown`.
pub async fn run(informers: Informers, options: Options, shutdown: CancellationToken) {
    let client = informers.client();
    let (pods, pod_writer) = informers.store::<Pod>().await;
    let (nodes, node_writer) = informers.store::<Node>().await;
    let pod_informer = pod_writer.run(shutdown.clone(), |_| {});
    let node_informer = node_writer.run(shutdown.clone(), |_| {});
    let mut gc = PodGc { client, options, pods, nodes, missing_since: HashMap::new() };
    let work = async move {
        let _ = gc.pods.wait_until_ready().await;
        let _ = gc.nodes.wait_until_ready().await;
        info!(threshold = gc.options.terminated_pod_gc_threshold, "starting pod garbage collector");
        let mut tick = tokio::time::interval(gc.options.gc_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            gc.gc().await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = pod_informer => {}
        _ = node_informer => {}
        _ = work => {}
    }
}

impl PodGc {
    async fn gc(&mut self) {
        let pods = self.pods.state();
        for pod in terminated_to_delete(&pods, self.options.terminated_pod_gc_threshold) {
            info!(pod = %key(&pod), "deleting terminated pod beyond the threshold");
            self.report(self.delete(&pod, None).await);
        }
        self.gc_terminating(&pods).await;
        self.gc_orphaned(&pods).await;
        self.gc_unscheduled_terminating(&pods).await;
    }

    fn report(&self, result: Result<(), Error>) {
        if let Err(e) = result {
            warn!(error = %e, source = ?std::error::Error::source(&e).map(|s| s.to_string()), "pod garbage collection failed");
        }
    }

    /// Terminating pods on out-of-service nodes (upstream's `gcTerminating`).
    async fn gc_terminating(&self, pods: &[Arc<Pod>]) {
        let out: HashSet<String> =
            self.nodes.state().iter().filter(|n| is_out_of_service(n)).map(|n| n.name_any()).collect();
        for pod in pods {
            let on_out = node_name(pod).is_some_and(|n| out.contains(n));
            if on_out && pod.metadata.deletion_timestamp.is_some() && !is_terminated(pod) {
                info!(pod = %key(pod), "force-deleting terminating pod on an out-of-service node");
                self.report(self.mark_failed_and_delete(pod, None).await);
            }
        }
    }

    /// Pods on nodes that no longer exist (upstream's `gcOrphaned`).
    async fn gc_orphaned(&mut self, pods: &[Arc<Pod>]) {
        let now = Instant::now();
        let existing: HashSet<String> = self.nodes.state().iter().map(|n| n.name_any()).collect();
        let referenced: HashSet<&str> = pods.iter().filter_map(|p| node_name(p)).collect();
        self.missing_since.retain(|n, _| referenced.contains(n.as_str()) && !existing.contains(n));
        for n in &referenced {
            if !existing.contains(*n) {
                self.missing_since.entry(n.to_string()).or_insert(now);
            }
        }
        let quarantined: Vec<String> = self
            .missing_since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= self.options.quarantine)
            .map(|(n, _)| n.clone())
            .collect();
        let api: Api<Node> = Api::all(self.client.clone());
        for node in quarantined {
            // The cache may lag: ask the server before declaring pods orphans.
            match api.get_opt(&node).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    self.missing_since.remove(&node);
                    continue;
                }
                Err(source) => {
                    self.report(Err(Error::NodeLookup { node, source }));
                    continue;
                }
            }
            for pod in pods.iter().filter(|p| node_name(p) == Some(node.as_str())) {
                info!(pod = %key(pod), %node, "deleting orphaned pod: its node no longer exists");
                let condition = PodCondition {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                    reason: Some("DeletionByPodGC".into()),
                    message: Some("PodGC: node no longer exists".into()),
                    last_transition_time: Some(Time(Timestamp::now())),
                    ..Default::default()
                };
                self.report(self.mark_failed_and_delete(pod, Some(condition)).await);
            }
        }
    }

    /// Terminating pods never bound to a node (upstream's `gcUnscheduledTerminating`).
    async fn gc_unscheduled_terminating(&self, pods: &[Arc<Pod>]) {
        for pod in pods {
            if pod.metadata.deletion_timestamp.is_some() && node_name(pod).is_none() {
                info!(pod = %key(pod), "force-deleting unscheduled terminating pod");
                self.report(self.mark_failed_and_delete(pod, None).await);
            }
        }
    }

    /// Upstream's `markFailedAndDeletePodWithCondition`: a pod not yet terminal is marked
    /// Failed (with `condition`), then deleted with no grace period.
    async fn mark_failed_and_delete(&self, pod: &Pod, condition: Option<PodCondition>) -> Result<(), Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        if !is_terminated(pod) {
            let mut updated = pod.clone();
            let status = updated.status.get_or_insert_with(Default::default);
            status.phase = Some("Failed".into());
            if let Some(c) = condition {
                let conditions = status.conditions.get_or_insert_with(Vec::new);
                conditions.retain(|x| x.type_ != c.type_);
                conditions.push(c);
            }
            match api.replace_status(&pod.name_any(), &PostParams::default(), &updated).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(source) => return Err(Error::MarkFailed { pod: key(pod), source }),
            }
        }
        self.delete(pod, Some(0)).await
    }

    async fn delete(&self, pod: &Pod, grace: Option<u32>) -> Result<(), Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: grace,
            preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                debug!(pod = %key(pod), "pod already gone or replaced");
                Ok(())
            }
            Err(source) => Err(Error::Delete { pod: key(pod), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, PodStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, phase: &str, created_secs: i64) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(Timestamp::from_second(created_secs).unwrap())),
                ..Default::default()
            },
            status: Some(PodStatus { phase: Some(phase.into()), ..Default::default() }),
            ..Default::default()
        })
    }

    #[test]
    fn oldest_terminated_pods_beyond_the_threshold_are_deleted() {
        let pods = vec![
            pod("new", "Succeeded", 300),
            pod("old", "Failed", 100),
            pod("mid", "Succeeded", 200),
            pod("run", "Running", 1),
        ];
        let victims: Vec<String> = terminated_to_delete(&pods, 2).iter().map(|p| p.name_any()).collect();
        assert_eq!(victims, ["old"]);
        assert!(terminated_to_delete(&pods, 3).is_empty());
        assert!(terminated_to_delete(&pods, 0).is_empty(), "0 disables the threshold");
    }

    #[test]
    fn out_of_service_needs_the_taint_and_a_node_not_ready() {
        let mut node = Node {
            spec: Some(NodeSpec {
                taints: Some(vec![Taint {
                    key: OUT_OF_SERVICE_TAINT.into(),
                    effect: "NoExecute".into(),
                    value: Some("nodeshutdown".into()),
                    time_added: None,
                }]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(is_out_of_service(&node));
        node.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "True".into();
        assert!(!is_out_of_service(&node));
    }
}

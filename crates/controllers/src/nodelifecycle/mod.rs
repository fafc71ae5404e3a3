//! The node lifecycle controller (upstream's `pkg/controller/nodelifecycle`) and, beside it, the
//! taint eviction controller ([`tainteviction`], upstream's `pkg/controller/tainteviction`),
//! which shares its node and pod informers.
//!
//! Every `node_monitor_period` it looks at each node's `kube-node-lease` Lease and Ready
//! condition. A node whose kubelet has renewed neither for `--node-monitor-grace-period`
//! (counted on this controller's clock from when it last saw either change) gets Ready and the
//! pressure conditions set to Unknown. Conditions are mirrored as taints: NoSchedule ones at
//! once (TaintNodesByCondition), and `not-ready`/`unreachable` NoExecute ones through a
//! per-zone rate limiter as upstream (0.1 nodes/s; none while a small zone is mostly down, and
//! none at all while every zone is fully down: then the controller suspects itself or the
//! network rather than the nodes and lifts the NoExecute taints). Pods on a node that is not
//! ready get their Ready condition set to False (MarkPodsNotReady).
//!
//! This module writes node status conditions, node taints and pod Ready conditions only.

pub mod health;
pub mod tainteviction;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::events::{NORMAL, Recorder, WARNING};
use crate::informer::{self, Change, Informers};
use health::{TokenBucket, ZoneState};
use tainteviction::TaintEviction;

/// Upstream's `--node-monitor-grace-period` default.
pub const NODE_MONITOR_GRACE_PERIOD: Duration = Duration::from_secs(40);
/// Upstream's `--node-startup-grace-period`: for nodes that never posted a Ready condition.
pub const NODE_STARTUP_GRACE_PERIOD: Duration = Duration::from_secs(60);
/// Upstream's `--node-monitor-period`.
pub const NODE_MONITOR_PERIOD: Duration = Duration::from_secs(5);
/// How often the zones' taint queues are worked (upstream's `nodeEvictionPeriod`).
const EVICTION_PERIOD: Duration = Duration::from_millis(100);
/// The namespace of the kubelets' heartbeat Leases.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// Why a write of the controller failed (retried on the next pass).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("updating the status of node {node}")]
    NodeStatus {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the taints of node {node}")]
    Taints {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("marking pod {pod} not ready")]
    PodStatus {
        pod: String,
        #[source]
        source: kube::Error,
    },
}

/// The controller's timings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub node_monitor_grace_period: Duration,
    pub node_startup_grace_period: Duration,
    pub node_monitor_period: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node_monitor_grace_period: NODE_MONITOR_GRACE_PERIOD,
            node_startup_grace_period: NODE_STARTUP_GRACE_PERIOD,
            node_monitor_period: NODE_MONITOR_PERIOD,
        }
    }
}

/// What the controller last saw of a node's heartbeats.
struct NodeHealth {
    /// When (on our clock) a heartbeat was last seen.
    probe: Instant,
    ready_heartbeat: Option<(Option<Time>, Option<Time>)>,
    lease_renew: Option<MicroTime>,
}

/// A zone's state and its NoExecute tainting queue.
struct Zone {
    state: ZoneState,
    limiter: TokenBucket,
    queue: VecDeque<String>,
}

struct Controller {
    client: Client,
    options: Options,
    nodes: Store<Node>,
    pods: Store<Pod>,
    leases: Store<Lease>,
    recorder: Recorder,
    health: HashMap<String, NodeHealth>,
    zones: HashMap<String, Zone>,
    all_disrupted: bool,
}

/// The nodes of each zone with their Ready status, as this pass left them.
type NodesByZone = BTreeMap<String, Vec<(Arc<Node>, Option<String>)>>;

/// Pods bound to `node` in `pods`.
fn pods_on(pods: &Store<Pod>, node: &str) -> Vec<Arc<Pod>> {
    pods.state_filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
}

fn taints_of(node: &Node) -> Vec<Taint> {
    node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default()
}

/// Runs the node lifecycle and taint eviction controllers until `shutdown`.
pub async fn run(informers: Informers, options: Options, shutdown: CancellationToken) {
    let client = informers.client();
    let (nodes, node_writer) = informers.store::<Node>().await;
    let (pods, pod_writer) = informers.store::<Pod>().await;
    let (leases, lease_writer) = reflector::store::<Lease>();
    let eviction = TaintEviction::new(client.clone(), nodes.clone());
    // Nodes whose conditions call for other NoSchedule taints, handled at once as upstream's
    // node update queue does rather than on the next monitor pass.
    let (retaint_tx, mut retaint_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let node_informer = {
        let (eviction, pods) = (eviction.clone(), pods.clone());
        node_writer.run(shutdown.clone(), move |change| {
            if let Change::Add(n) | Change::Update(_, n) = &change
                && health::with_condition_taints(&taints_of(n), &health::condition_taints(n)).is_some()
            {
                let _ = retaint_tx.send(n.name_any());
            }
            eviction.node_changed(&change, |n| pods_on(&pods, n))
        })
    };
    let pod_informer = pod_writer.run(shutdown.clone(), {
        let eviction = eviction.clone();
        move |change: Change<Pod>| eviction.pod_changed(&change)
    });
    let lease_informer = informer::run(
        Api::<Lease>::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
        lease_writer,
        shutdown.clone(),
        |_| {},
    );
    let mut controller = Controller {
        recorder: Recorder::new(client.clone(), "node-controller"),
        client,
        options,
        nodes,
        pods,
        leases,
        health: HashMap::new(),
        zones: HashMap::new(),
        all_disrupted: false,
    };
    let work = async move {
        let _ = controller.nodes.wait_until_ready().await;
        let _ = controller.pods.wait_until_ready().await;
        let _ = controller.leases.wait_until_ready().await;
        info!(grace_period = ?controller.options.node_monitor_grace_period, "starting node lifecycle controller");
        let mut monitor = tokio::time::interval(controller.options.node_monitor_period);
        let mut evict = tokio::time::interval(EVICTION_PERIOD);
        monitor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        evict.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = monitor.tick() => controller.monitor_node_health().await,
                _ = evict.tick() => controller.taint_from_queues().await,
                Some(name) = retaint_rx.recv() => {
                    let node = controller.nodes.get(&ObjectRef::new(&name));
                    if let Some(node) = node
                        && let Err(e) = controller.sync_condition_taints(&node).await
                    {
                        warn!(node = %name, error = %e, "cannot update condition taints");
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = node_informer => {}
        _ = pod_informer => {}
        _ = lease_informer => {}
        _ = work => {}
    }
}

impl Controller {
    /// Upstream's `monitorNodeHealth`.
    async fn monitor_node_health(&mut self) {
        let nodes = self.nodes.state();
        let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        self.health.retain(|n, _| names.contains(n));
        for zone in self.zones.values_mut() {
            zone.queue.retain(|n| names.contains(n));
        }
        let mut by_zone: NodesByZone = BTreeMap::new();
        for node in nodes {
            let current = match self.try_update_node_health(&node).await {
                Ok(n) => n,
                Err(e) => {
                    warn!(node = %node.name_any(), error = %e, "cannot update node health; will retry");
                    node.clone()
                }
            };
            let name = node.name_any();
            let (observed, now_ready) = (health::ready_status(&node), health::ready_status(&current));
            if now_ready.is_some_and(|r| r != "True") {
                if observed == Some("True") {
                    self.recorder.record(
                        &*current,
                        NORMAL,
                        "NodeNotReady",
                        format!("Node {name} status is now: NodeNotReady"),
                    );
                }
                self.mark_pods_not_ready(&name).await;
            }
            if let Err(e) = self.sync_condition_taints(&current).await {
                warn!(node = %name, error = %e, "cannot update condition taints");
            }
            let ready = now_ready.map(str::to_string);
            by_zone.entry(health::zone_key(&current)).or_default().push((current, ready));
        }
        self.handle_disruption(by_zone).await;
    }

    /// Notes heartbeats and sets the conditions Unknown once the grace period is over; returns
    /// the node as it now is (the cached one itself, not a copy, unless it was written: this
    /// pass visits every node every few seconds).
    async fn try_update_node_health(&mut self, node: &Arc<Node>) -> Result<Arc<Node>, Error> {
        let name = node.name_any();
        let now = Instant::now();
        let ready = health::ready_condition(node);
        let heartbeat = ready.map(|c| (c.last_heartbeat_time.clone(), c.last_transition_time.clone()));
        let lease = self.leases.get(&ObjectRef::new(&name).within(NODE_LEASE_NAMESPACE));
        let renew = lease.and_then(|l| l.spec.as_ref()?.renew_time.clone());
        let h = self.health.entry(name.clone()).or_insert_with(|| NodeHealth {
            probe: now,
            ready_heartbeat: heartbeat.clone(),
            lease_renew: renew.clone(),
        });
        if h.ready_heartbeat != heartbeat {
            h.ready_heartbeat = heartbeat;
            h.probe = now;
        }
        if renew.is_some() && h.lease_renew.as_ref().is_none_or(|old| Some(&old.0) < renew.as_ref().map(|r| &r.0)) {
            h.lease_renew = renew;
            h.probe = now;
        }
        let grace = if ready.is_none() {
            self.options.node_startup_grace_period
        } else {
            self.options.node_monitor_grace_period
        };
        if !health::is_stale(h.probe, grace, now) {
            return Ok(node.clone());
        }
        let mut updated = (**node).clone();
        if !health::mark_unknown(&mut updated, Timestamp::now()) {
            return Ok(node.clone());
        }
        info!(node = %name, "node stopped posting status; conditions set to Unknown");
        let api: Api<Node> = Api::all(self.client.clone());
        let written = api
            .replace_status(&name, &PostParams::default(), &updated)
            .await
            .map_err(|source| Error::NodeStatus { node: name.clone(), source })?;
        // What we wrote is our own update, not a kubelet heartbeat.
        if let Some(h) = self.health.get_mut(&name) {
            h.ready_heartbeat = health::ready_condition(&written)
                .map(|c| (c.last_heartbeat_time.clone(), c.last_transition_time.clone()));
        }
        Ok(Arc::new(written))
    }

    /// Upstream's `MarkPodsNotReady`.
    async fn mark_pods_not_ready(&self, node: &str) {
        for pod in pods_on(&self.pods, node) {
            let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
            if !conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")) {
                continue;
            }
            let mut updated = (*pod).clone();
            if let Some(c) = updated
                .status
                .as_mut()
                .and_then(|s| s.conditions.as_mut())
                .and_then(|c| c.iter_mut().find(|c| c.type_ == "Ready"))
            {
                c.status = "False".into();
                c.last_transition_time = Some(Time(Timestamp::now()));
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            match api.replace_status(&pod.name_any(), &PostParams::default(), &updated).await {
                Ok(_) => self.recorder.record(&*pod, WARNING, "NodeNotReady", "Node is not ready".into()),
                Err(source) => {
                    let e = Error::PodStatus {
                        pod: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                        source,
                    };
                    debug!(error = %e, "will retry on the next pass");
                }
            }
        }
    }

    /// Writes the taints `change` computes from the freshly read node; retries on conflicts.
    async fn update_taints(&self, name: &str, change: impl Fn(&Node) -> Option<Vec<Taint>>) -> Result<(), Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut node = match api.get_opt(name).await {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(()),
                Err(source) => return Err(Error::Taints { node: name.into(), source }),
            };
            let Some(taints) = change(&node) else { return Ok(()) };
            node.spec.get_or_insert_with(Default::default).taints = Some(taints);
            match api.replace(name, &PostParams::default(), &node).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => continue,
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(source) => return Err(Error::Taints { node: name.into(), source }),
            }
        }
    }

    /// TaintNodesByCondition: NoSchedule taints follow the conditions at once.
    async fn sync_condition_taints(&self, node: &Node) -> Result<(), Error> {
        let wanted = health::condition_taints(node);
        if health::with_condition_taints(&taints_of(node), &wanted).is_none() {
            return Ok(());
        }
        self.update_taints(&node.name_any(), |n| {
            health::with_condition_taints(&taints_of(n), &health::condition_taints(n))
        })
        .await
    }

    /// Upstream's `handleDisruption` and the NoExecute tainting pass's bookkeeping.
    async fn handle_disruption(&mut self, by_zone: NodesByZone) {
        let now = Instant::now();
        let states: HashMap<&String, ZoneState> =
            by_zone.iter().map(|(z, nodes)| (z, health::zone_state(nodes.iter().map(|(_, r)| r.as_deref())))).collect();
        self.zones.retain(|z, _| by_zone.contains_key(z));
        let all_disrupted = !states.is_empty() && states.values().all(|s| *s == ZoneState::FullDisruption);
        if all_disrupted {
            if !self.all_disrupted {
                warn!("all nodes are not ready: entering master disruption mode (no evictions)");
            }
            self.all_disrupted = true;
            for zone in self.zones.values_mut() {
                zone.queue.clear();
            }
            for (node, _) in by_zone.values().flatten() {
                self.remove_no_execute_taint(node).await;
            }
            return;
        }
        if self.all_disrupted {
            info!("some nodes are ready again: exiting master disruption mode");
            self.all_disrupted = false;
            // Start from full buckets, as upstream resets its limiters.
            self.zones.clear();
        }
        for (zone_name, nodes) in &by_zone {
            let state = states[zone_name];
            let qps = health::zone_qps(state, nodes.len());
            let zone = self.zones.entry(zone_name.clone()).or_insert_with(|| Zone {
                state,
                limiter: TokenBucket::new(qps, now),
                queue: VecDeque::new(),
            });
            if zone.state != state {
                info!(zone = %zone_name.replace('\0', ""), ?state, "zone state changed");
                zone.state = state;
            }
            if zone.limiter.qps() != qps {
                zone.limiter = TokenBucket::new(qps, now);
            }
            for (node, ready) in nodes {
                let name = node.name_any();
                let wanted = health::no_execute_taint_key(ready.as_deref());
                let has_it = health::with_no_execute_taint(&taints_of(node), wanted, Timestamp::now()).is_none();
                if wanted.is_none() {
                    zone.queue.retain(|n| *n != name);
                } else if !has_it && !zone.queue.contains(&name) {
                    zone.queue.push_back(name);
                }
            }
        }
        for (node, ready) in by_zone.values().flatten() {
            if health::no_execute_taint_key(ready.as_deref()).is_none() {
                self.remove_no_execute_taint(node).await;
            }
        }
    }

    /// Lifts the not-ready/unreachable NoExecute taints (upstream's `markNodeAsReachable`).
    async fn remove_no_execute_taint(&self, node: &Node) {
        if health::with_no_execute_taint(&taints_of(node), None, Timestamp::now()).is_none() {
            return;
        }
        let result = self
            .update_taints(&node.name_any(), |n| health::with_no_execute_taint(&taints_of(n), None, Timestamp::now()))
            .await;
        if let Err(e) = result {
            warn!(node = %node.name_any(), error = %e, "cannot remove NoExecute taint");
        }
    }

    /// Taints the queued nodes as far as each zone's limiter allows (upstream's
    /// `doNoExecuteTaintingPass`). The taint is decided from the node as read just before
    /// writing, so a node that recovered meanwhile is left alone.
    async fn taint_from_queues(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        for zone in self.zones.values_mut() {
            while !zone.queue.is_empty() && zone.limiter.try_accept(now) {
                if let Some(name) = zone.queue.pop_front() {
                    due.push(name);
                }
            }
        }
        for name in due {
            let result = self
                .update_taints(&name, |n| {
                    let key = health::no_execute_taint_key(health::ready_status(n))?;
                    health::with_no_execute_taint(&taints_of(n), Some(key), Timestamp::now())
                })
                .await;
            match result {
                Ok(()) => info!(node = %name, "node tainted for eviction (NoExecute)"),
                Err(e) => warn!(node = %name, error = %e, "cannot add NoExecute taint; will retry"),
            }
        }
    }
}

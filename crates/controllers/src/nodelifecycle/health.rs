//! The pure decisions of the node lifecycle controller: when a node's conditions go Unknown,
//! which taints its conditions call for, how disrupted a zone is, and how fast nodes of a zone
//! may be tainted for eviction. No I/O here, so all of it is unit-tested.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
pub const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
pub const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
pub const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";
pub const TAINT_PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
pub const NO_SCHEDULE: &str = "NoSchedule";
pub const NO_EXECUTE: &str = "NoExecute";

/// Condition types set to Unknown with Ready when the kubelet goes silent (upstream's list).
const OTHER_CONDITIONS: [&str; 3] = ["MemoryPressure", "DiskPressure", "PIDPressure"];

/// Upstream's `--unhealthy-zone-threshold`: share of not-ready nodes making a zone unhealthy.
pub const UNHEALTHY_ZONE_THRESHOLD: f64 = 0.55;
/// Upstream's `--large-cluster-size-threshold`.
pub const LARGE_CLUSTER_THRESHOLD: usize = 50;
/// Upstream's `--node-eviction-rate` (nodes tainted per second per healthy zone).
pub const EVICTION_QPS: f64 = 0.1;
/// Upstream's `--secondary-node-eviction-rate` (for unhealthy zones of large clusters).
pub const SECONDARY_EVICTION_QPS: f64 = 0.01;

/// The Ready condition of a node, if it has one.
pub fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

/// The status (`True`, `False`, `Unknown`) of a node's Ready condition; `None` when missing.
pub fn ready_status(node: &Node) -> Option<&str> {
    ready_condition(node).map(|c| c.status.as_str())
}

/// Sets Ready and the pressure conditions to Unknown as upstream does when the kubelet stopped
/// posting status (or never did). Returns whether anything changed.
pub fn mark_unknown(node: &mut Node, now: Timestamp) -> bool {
    let status = node.status.get_or_insert_with(Default::default);
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let mut changed = false;
    for type_ in std::iter::once("Ready").chain(OTHER_CONDITIONS) {
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            None => {
                conditions.push(NodeCondition {
                    type_: type_.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
            Some(c) if c.status != "Unknown" => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(Time(now));
                changed = true;
            }
            Some(_) => {}
        }
    }
    changed
}

fn taint(key: &str, effect: &str) -> Taint {
    Taint { key: key.into(), effect: effect.into(), value: None, time_added: None }
}

/// The NoSchedule taints a node's conditions and `spec.unschedulable` call for (upstream's
/// TaintNodesByCondition), in upstream's order.
pub fn condition_taints(node: &Node) -> Vec<Taint> {
    let mut taints = Vec::new();
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    for c in conditions {
        let key = match (c.type_.as_str(), c.status.as_str()) {
            ("Ready", "False") => TAINT_NOT_READY,
            ("Ready", "Unknown") => TAINT_UNREACHABLE,
            ("MemoryPressure", "True") => TAINT_MEMORY_PRESSURE,
            ("DiskPressure", "True") => TAINT_DISK_PRESSURE,
            ("NetworkUnavailable", "True") => TAINT_NETWORK_UNAVAILABLE,
            ("PIDPressure", "True") => TAINT_PID_PRESSURE,
            _ => continue,
        };
        taints.push(taint(key, NO_SCHEDULE));
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        taints.push(taint(TAINT_UNSCHEDULABLE, NO_SCHEDULE));
    }
    taints
}

/// Whether `key` is one of the taints [`condition_taints`] manages.
pub fn is_condition_taint_key(key: &str) -> bool {
    [
        TAINT_NOT_READY,
        TAINT_UNREACHABLE,
        TAINT_MEMORY_PRESSURE,
        TAINT_DISK_PRESSURE,
        TAINT_NETWORK_UNAVAILABLE,
        TAINT_PID_PRESSURE,
        TAINT_UNSCHEDULABLE,
    ]
    .contains(&key)
}

/// `taints` with the NoSchedule condition taints replaced by `wanted`; `None` when unchanged.
pub fn with_condition_taints(taints: &[Taint], wanted: &[Taint]) -> Option<Vec<Taint>> {
    let managed = |t: &Taint| t.effect == NO_SCHEDULE && is_condition_taint_key(&t.key);
    let current: Vec<&Taint> = taints.iter().filter(|t| managed(t)).collect();
    let same = current.len() == wanted.len() && wanted.iter().all(|w| current.iter().any(|c| c.key == w.key));
    if same {
        return None;
    }
    let mut out: Vec<Taint> = taints.iter().filter(|t| !managed(t)).cloned().collect();
    out.extend(wanted.iter().cloned());
    Some(out)
}

/// The NoExecute taint a Ready status calls for: not-ready for False, unreachable for Unknown,
/// none for True. A node without a Ready condition has not registered fully: none either.
pub fn no_execute_taint_key(ready: Option<&str>) -> Option<&'static str> {
    match ready {
        Some("False") => Some(TAINT_NOT_READY),
        Some("Unknown") => Some(TAINT_UNREACHABLE),
        _ => None,
    }
}

/// `taints` with the not-ready/unreachable NoExecute taints replaced by `key`'s (stamped with
/// `now`, kept as is if already there); `None` when unchanged.
pub fn with_no_execute_taint(taints: &[Taint], key: Option<&str>, now: Timestamp) -> Option<Vec<Taint>> {
    let managed = |t: &Taint| t.effect == NO_EXECUTE && (t.key == TAINT_NOT_READY || t.key == TAINT_UNREACHABLE);
    let current: Vec<&Taint> = taints.iter().filter(|t| managed(t)).collect();
    match key {
        Some(k) if current.len() == 1 && current[0].key == k => return None,
        None if current.is_empty() => return None,
        _ => {}
    }
    let mut out: Vec<Taint> = taints.iter().filter(|t| !managed(t)).cloned().collect();
    if let Some(k) = key {
        out.push(Taint { time_added: Some(Time(now)), ..taint(k, NO_EXECUTE) });
    }
    Some(out)
}

/// A zone's health (upstream's `ZoneState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// Upstream's `ComputeZoneState` over the Ready statuses of a zone's nodes.
pub fn zone_state<'a>(ready: impl IntoIterator<Item = Option<&'a str>>) -> ZoneState {
    let (mut ready_nodes, mut not_ready) = (0usize, 0usize);
    for r in ready {
        if r == Some("True") {
            ready_nodes += 1;
        } else {
            not_ready += 1;
        }
    }
    if ready_nodes == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && not_ready as f64 / (ready_nodes + not_ready) as f64 >= UNHEALTHY_ZONE_THRESHOLD {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// The tainting rate of a zone in `state` with `size` nodes (upstream's `setLimiterInZone`).
pub fn zone_qps(state: ZoneState, size: usize) -> f64 {
    match state {
        ZoneState::Normal | ZoneState::FullDisruption => EVICTION_QPS,
        ZoneState::PartialDisruption if size > LARGE_CLUSTER_THRESHOLD => SECONDARY_EVICTION_QPS,
        ZoneState::PartialDisruption => 0.0,
    }
}

/// The zone a node is in: region and zone labels, as upstream's `GetZoneKey`.
pub fn zone_key(node: &Node) -> String {
    let labels = node.metadata.labels.as_ref();
    let get = |k: &str| labels.and_then(|l| l.get(k)).cloned().unwrap_or_default();
    let region = get("topology.kubernetes.io/region");
    let zone = get("topology.kubernetes.io/zone");
    if region.is_empty() && zone.is_empty() { String::new() } else { format!("{region}:\x00:{zone}") }
}

/// A token bucket with a burst of one (client-go's `NewTokenBucketRateLimiter(qps, 1)`); a
/// rate of zero never admits.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    qps: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `qps`.
    pub fn new(qps: f64, now: Instant) -> Self {
        Self { qps, tokens: 1.0, last: now }
    }

    pub fn qps(&self) -> f64 {
        self.qps
    }

    /// Takes a token if one is there at `now`.
    pub fn try_accept(&mut self, now: Instant) -> bool {
        if self.qps <= 0.0 {
            return false;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(1.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether a node silent since `last_probe` has outlived its grace period at `now`.
pub fn is_stale(last_probe: Instant, grace: Duration, now: Instant) -> bool {
    now.saturating_duration_since(last_probe) > grace
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};

    fn node(conditions: &[(&str, &str)]) -> Node {
        Node {
            status: Some(NodeStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(t, s)| NodeCondition {
                            type_: (*t).into(),
                            status: (*s).into(),
                            reason: Some("KubeletReady".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn silent_node_gets_unknown_conditions_with_upstream_reasons() {
        let mut n = node(&[("Ready", "True"), ("MemoryPressure", "False")]);
        assert!(mark_unknown(&mut n, Timestamp::now()));
        let ready = ready_condition(&n).unwrap();
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(ready.message.as_deref(), Some("Kubelet stopped posting node status."));
        let conds = n.status.as_ref().unwrap().conditions.as_ref().unwrap();
        let disk = conds.iter().find(|c| c.type_ == "DiskPressure").unwrap();
        assert_eq!((disk.status.as_str(), disk.reason.as_deref()), ("Unknown", Some("NodeStatusNeverUpdated")));
        assert!(!mark_unknown(&mut n, Timestamp::now()), "already unknown: nothing to change");
    }

    #[test]
    fn conditions_map_to_no_schedule_taints() {
        let mut n = node(&[("Ready", "Unknown"), ("DiskPressure", "True"), ("MemoryPressure", "False")]);
        n.spec = Some(NodeSpec { unschedulable: Some(true), ..Default::default() });
        let keys: Vec<String> = condition_taints(&n).into_iter().map(|t| t.key).collect();
        assert_eq!(keys, [TAINT_UNREACHABLE, TAINT_DISK_PRESSURE, TAINT_UNSCHEDULABLE]);
    }

    #[test]
    fn condition_taints_are_swapped_keeping_foreign_taints() {
        let foreign = taint("dedicated", NO_SCHEDULE);
        let current = vec![foreign.clone(), taint(TAINT_NOT_READY, NO_SCHEDULE)];
        let wanted = vec![taint(TAINT_UNREACHABLE, NO_SCHEDULE)];
        let out = with_condition_taints(&current, &wanted).unwrap();
        assert_eq!(out, vec![foreign.clone(), wanted[0].clone()]);
        assert!(with_condition_taints(&out, &wanted).is_none());
    }

    #[test]
    fn no_execute_taint_tracks_the_ready_condition() {
        assert_eq!(no_execute_taint_key(Some("Unknown")), Some(TAINT_UNREACHABLE));
        assert_eq!(no_execute_taint_key(Some("False")), Some(TAINT_NOT_READY));
        assert_eq!(no_execute_taint_key(Some("True")), None);
        let now = Timestamp::now();
        let t = with_no_execute_taint(&[], Some(TAINT_UNREACHABLE), now).unwrap();
        assert_eq!(t[0].time_added, Some(Time(now)));
        assert!(with_no_execute_taint(&t, Some(TAINT_UNREACHABLE), now).is_none());
        let swapped = with_no_execute_taint(&t, Some(TAINT_NOT_READY), now).unwrap();
        assert_eq!(swapped.len(), 1);
        assert_eq!(swapped[0].key, TAINT_NOT_READY);
        assert_eq!(with_no_execute_taint(&swapped, None, now).unwrap(), vec![]);
    }

    #[test]
    fn zone_states_follow_upstream_thresholds() {
        assert_eq!(zone_state([Some("True"), Some("Unknown")]), ZoneState::Normal);
        assert_eq!(zone_state([Some("Unknown"), None]), ZoneState::FullDisruption);
        let partial = [Some("True"), Some("False"), Some("Unknown"), Some("Unknown")];
        assert_eq!(zone_state(partial), ZoneState::PartialDisruption);
        assert_eq!(zone_qps(ZoneState::PartialDisruption, 10), 0.0);
        assert_eq!(zone_qps(ZoneState::PartialDisruption, 51), SECONDARY_EVICTION_QPS);
        assert_eq!(zone_qps(ZoneState::Normal, 3), EVICTION_QPS);
    }

    #[test]
    fn token_bucket_admits_one_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.1, t0);
        assert!(b.try_accept(t0));
        assert!(!b.try_accept(t0 + Duration::from_secs(5)));
        assert!(b.try_accept(t0 + Duration::from_secs(10)));
        let mut never = TokenBucket::new(0.0, t0);
        assert!(!never.try_accept(t0 + Duration::from_secs(1000)));
    }
}

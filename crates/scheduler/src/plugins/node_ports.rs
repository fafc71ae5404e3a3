//! NodePorts: a pod asking for a `hostPort` cannot go where another pod already holds the
//! same port and protocol on an overlapping host IP (`0.0.0.0`, the default, overlaps every
//! address). Only app containers and sidecars (init containers with `restartPolicy: Always`)
//! count, as they run for the pod's whole life. Removing the holder resolves the conflict, so
//! the rejection is plain `Unschedulable` (preemption may help), and the deletion of an assigned
//! pod is the cluster event that brings such a pod back ([`is_schedulable_after_pod_deleted`]).

use k8s_openapi::api::core::v1::{ContainerPort, Pod};

use crate::framework::{Code, CycleState, FilterPlugin, NodeInfo, Plugin, PreFilterPlugin, Status};

pub const NAME: &str = "NodePorts";
/// Upstream's reason.
pub const REASON: &str = "node(s) didn't have free ports for the requested pod ports";
const WILDCARD: &str = "0.0.0.0";

/// A host port in use: (host IP, protocol, port), with upstream's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    fn from_container_port(p: &ContainerPort) -> Self {
        Self {
            ip: p.host_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| WILDCARD.to_string()),
            protocol: p.protocol.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "TCP".to_string()),
            port: p.host_port.unwrap_or(0),
        }
    }

    /// Upstream's `HostPortInfo.CheckConflict`: same protocol and port, and either address
    /// is the wildcard or both are the same.
    pub fn conflicts_with(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == WILDCARD || other.ip == WILDCARD || self.ip == other.ip)
    }
}

/// The host ports a pod holds (upstream's `GetHostPorts`).
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    sidecars
        .chain(spec.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(HostPort::from_container_port)
        .collect()
}

/// Whether any of `wanted` conflicts with a port a pod on `node` holds.
pub fn fits_ports(wanted: &[HostPort], node: &NodeInfo) -> bool {
    if wanted.is_empty() {
        return true;
    }
    !node.pods.iter().flat_map(|p| host_ports(p)).any(|used| wanted.iter().any(|w| w.conflicts_with(&used)))
}

/// Upstream's queueing hint for an assigned pod's deletion: the pod waiting for ports may
/// fit again only if the deleted pod held a port it wants.
pub fn is_schedulable_after_pod_deleted(waiting: &Pod, deleted: &Pod) -> bool {
    let wanted = host_ports(waiting);
    host_ports(deleted).iter().any(|used| wanted.iter().any(|w| w.conflicts_with(used)))
}

struct PreFilterState(Vec<HostPort>);

pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl PreFilterPlugin for NodePorts {
    fn pre_filter(&self, state: &mut CycleState, pod: &Pod, _: &[NodeInfo]) -> Status {
        let ports = host_ports(pod);
        if ports.is_empty() {
            return Status::skip();
        }
        state.write(NAME, PreFilterState(ports));
        Status::success()
    }
}

impl FilterPlugin for NodePorts {
    fn filter(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        let computed;
        let wanted = match state.read::<PreFilterState>(NAME) {
            Some(s) => &s.0,
            None => {
                computed = host_ports(pod);
                &computed
            }
        };
        if fits_ports(wanted, node) { Status::success() } else { Status::new(Code::Unschedulable, REASON) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{plain_node, pod};
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn with_ports(ports: Value) -> Pod {
        pod(json!({"containers": [{"name": "c", "image": "i", "ports": ports}]}))
    }

    fn filter(p: &Pod, n: &NodeInfo) -> Status {
        let mut state = CycleState::new();
        assert!(NodePorts.pre_filter(&mut state, p, &[]).is_success());
        NodePorts.filter(&state, p, n)
    }

    fn node_holding(ports: Value) -> NodeInfo {
        let mut n = plain_node("n");
        n.add_pod(Arc::new(with_ports(ports)));
        n
    }

    #[test]
    fn the_same_host_port_and_protocol_conflicts() {
        let n = node_holding(json!([{"containerPort": 80, "hostPort": 8080}]));
        let s = filter(&with_ports(json!([{"containerPort": 81, "hostPort": 8080}])), &n);
        assert_eq!(s, Status::new(Code::Unschedulable, REASON));
        assert!(filter(&with_ports(json!([{"containerPort": 80, "hostPort": 8081}])), &n).is_success());
        let udp = with_ports(json!([{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]));
        assert!(filter(&udp, &n).is_success());
    }

    #[test]
    fn the_wildcard_address_overlaps_every_address() {
        let specific = node_holding(json!([{"containerPort": 80, "hostPort": 80, "hostIP": "10.0.0.1"}]));
        assert!(!filter(&with_ports(json!([{"containerPort": 80, "hostPort": 80}])), &specific).is_success());
        let other_ip = with_ports(json!([{"containerPort": 80, "hostPort": 80, "hostIP": "10.0.0.2"}]));
        assert!(filter(&other_ip, &specific).is_success());
        let same_ip = with_ports(json!([{"containerPort": 80, "hostPort": 80, "hostIP": "10.0.0.1"}]));
        assert!(!filter(&same_ip, &specific).is_success());
        let wildcard = node_holding(json!([{"containerPort": 80, "hostPort": 80, "hostIP": "0.0.0.0"}]));
        assert!(!filter(&other_ip, &wildcard).is_success());
    }

    #[test]
    fn pods_without_host_ports_skip_the_filter() {
        let p = with_ports(json!([{"containerPort": 80}]));
        assert_eq!(NodePorts.pre_filter(&mut CycleState::new(), &p, &[]).code, Code::Skip);
    }

    #[test]
    fn sidecars_hold_ports_but_plain_init_containers_do_not() {
        let p = pod(json!({
            "initContainers": [
                {"name": "init", "image": "i", "ports": [{"containerPort": 1, "hostPort": 9001}]},
                {"name": "side", "image": "i", "restartPolicy": "Always", "ports": [{"containerPort": 2, "hostPort": 9002}]},
            ],
            "containers": [{"name": "c", "image": "i"}],
        }));
        assert_eq!(host_ports(&p).iter().map(|h| h.port).collect::<Vec<_>>(), vec![9002]);
    }

    #[test]
    fn deleting_the_holder_of_a_wanted_port_is_what_helps() {
        let waiting = with_ports(json!([{"containerPort": 80, "hostPort": 8080}]));
        assert!(is_schedulable_after_pod_deleted(
            &waiting,
            &with_ports(json!([{"containerPort": 1, "hostPort": 8080}]))
        ));
        assert!(!is_schedulable_after_pod_deleted(
            &waiting,
            &with_ports(json!([{"containerPort": 1, "hostPort": 9090}]))
        ));
    }
}

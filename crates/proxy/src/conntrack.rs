//! Stale UDP flows. A UDP "connection" is only a conntrack entry, and the kernel keeps sending
//! a flow's packets to the endpoint it was first NATed to for as long as packets keep coming:
//! a client that never pauses (DNS from a busy resolver, syslog, metrics) would keep talking
//! to a deleted pod forever. So after each sync, as upstream's kube-proxy does, the flows of
//! UDP endpoints that went away are deleted, and so are the flows to a service IP that had no
//! endpoint (their packets were rejected, and the entries would keep new packets from being
//! NATed now that there is one). TCP needs none of this: a dead endpoint resets the connection.
//!
//! Deletion uses the `conntrack` tool (Debian's conntrack package), as upstream did for years.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::serviceport::{Protocol, ServicePort};

/// One set of UDP flows to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StaleFlows {
    /// Flows whose original destination is this service address (it had no endpoint).
    ToServiceIp(Ipv4Addr),
    /// Flows to this service address that were NATed to `endpoint`, which is gone.
    Nat { service_ip: Ipv4Addr, endpoint: Ipv4Addr },
    /// Flows to this NodePort that were NATed to `endpoint`, which is gone.
    NodePortNat { node_port: u16, endpoint: Ipv4Addr },
}

impl StaleFlows {
    /// The `conntrack` arguments that delete these flows.
    pub fn conntrack_args(&self) -> Vec<String> {
        let mut args = vec!["-D".to_string(), "-p".into(), "udp".into()];
        match *self {
            StaleFlows::ToServiceIp(ip) => args.extend(["--orig-dst".into(), ip.to_string()]),
            StaleFlows::Nat { service_ip, endpoint } => {
                args.extend(["--orig-dst".into(), service_ip.to_string(), "--dst-nat".into(), endpoint.to_string()])
            }
            StaleFlows::NodePortNat { node_port, endpoint } => {
                args.extend(["--orig-port-dst".into(), node_port.to_string(), "--dst-nat".into(), endpoint.to_string()])
            }
        }
        args
    }
}

/// The UDP flows made stale by going from `old` to `new` service ports.
pub fn stale(old: &[ServicePort], new: &[ServicePort]) -> BTreeSet<StaleFlows> {
    let udp = |ports: &[ServicePort]| -> BTreeMap<String, ServicePort> {
        ports.iter().filter(|p| p.protocol == Protocol::Udp).map(|p| (p.id(), p.clone())).collect()
    };
    let (old, new) = (udp(old), udp(new));
    let mut flows = BTreeSet::new();
    for (id, before) in &old {
        let after_ips: BTreeSet<Ipv4Addr> =
            new.get(id).map(|p| p.endpoints.iter().map(|e| e.ip).collect()).unwrap_or_default();
        for endpoint in before.endpoints.iter().map(|e| e.ip).filter(|ip| !after_ips.contains(ip)) {
            for service_ip in std::iter::once(before.cluster_ip).chain(before.external_ips.iter().copied()) {
                flows.insert(StaleFlows::Nat { service_ip, endpoint });
            }
            if let Some(node_port) = before.node_port {
                flows.insert(StaleFlows::NodePortNat { node_port, endpoint });
            }
        }
    }
    for (id, after) in &new {
        let had_endpoints = old.get(id).is_some_and(|p| !p.endpoints.is_empty());
        if !had_endpoints && !after.endpoints.is_empty() {
            for ip in std::iter::once(after.cluster_ip).chain(after.external_ips.iter().copied()) {
                flows.insert(StaleFlows::ToServiceIp(ip));
            }
        }
    }
    flows
}

/// Deletes `flows`; failures are logged (a missing tool once), never fatal: the rules matter
/// more, and the next change tries again.
pub async fn delete(flows: &BTreeSet<StaleFlows>) {
    for flow in flows {
        let output = tokio::process::Command::new("conntrack").args(flow.conntrack_args()).output().await;
        match output {
            // It exits 1 when nothing matched, which is not a failure here.
            Ok(out) if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("0 flow entries") => {
                tracing::debug!(?flow, "deleted stale UDP flows");
            }
            Ok(out) => {
                tracing::warn!(?flow, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "deleting stale UDP flows")
            }
            Err(error) => {
                tracing::warn!(%error, "cannot run conntrack to delete stale UDP flows (install the conntrack package)");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serviceport::Endpoint;

    fn udp_port(endpoints: &[[u8; 4]], node_port: Option<u16>) -> ServicePort {
        ServicePort {
            namespace: "ns".into(),
            name: "dns".into(),
            port_name: String::new(),
            protocol: Protocol::Udp,
            cluster_ip: Ipv4Addr::new(10, 43, 0, 10),
            port: 53,
            node_port,
            external_ips: Vec::new(),
            affinity_timeout_seconds: None,
            endpoints: endpoints.iter().map(|ip| Endpoint { ip: Ipv4Addr::from(*ip), port: 53 }).collect(),
            local_endpoints: Vec::new(),
            internal_local: false,
            external_local: false,
            health_check_node_port: None,
        }
    }

    #[test]
    fn a_removed_udp_endpoint_makes_its_nat_flows_stale() {
        let old = [udp_port(&[[10, 42, 0, 5], [10, 42, 0, 6]], Some(30053))];
        let new = [udp_port(&[[10, 42, 0, 6]], Some(30053))];
        let gone = Ipv4Addr::new(10, 42, 0, 5);
        assert_eq!(
            stale(&old, &new),
            BTreeSet::from([
                StaleFlows::Nat { service_ip: Ipv4Addr::new(10, 43, 0, 10), endpoint: gone },
                StaleFlows::NodePortNat { node_port: 30053, endpoint: gone },
            ])
        );
    }

    #[test]
    fn a_udp_service_getting_its_first_endpoint_clears_the_flows_to_its_ip() {
        let old = [udp_port(&[], None)];
        let new = [udp_port(&[[10, 42, 0, 5]], None)];
        assert_eq!(stale(&old, &new), BTreeSet::from([StaleFlows::ToServiceIp(Ipv4Addr::new(10, 43, 0, 10))]));
        assert_eq!(stale(&[], &new), BTreeSet::from([StaleFlows::ToServiceIp(Ipv4Addr::new(10, 43, 0, 10))]));
    }

    #[test]
    fn tcp_and_unchanged_udp_ports_leave_flows_alone() {
        let mut tcp = udp_port(&[[10, 42, 0, 5]], None);
        tcp.protocol = Protocol::Tcp;
        assert!(stale(std::slice::from_ref(&tcp), &[]).is_empty());
        let same = [udp_port(&[[10, 42, 0, 5]], None)];
        assert!(stale(&same, &same).is_empty());
    }

    #[test]
    fn the_conntrack_command_names_the_flows_by_destination_and_nat() {
        let flow = StaleFlows::Nat { service_ip: Ipv4Addr::new(10, 43, 0, 10), endpoint: Ipv4Addr::new(10, 42, 0, 5) };
        assert_eq!(flow.conntrack_args().join(" "), "-D -p udp --orig-dst 10.43.0.10 --dst-nat 10.42.0.5");
    }
}

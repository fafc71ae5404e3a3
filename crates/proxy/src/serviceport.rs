//! What the proxy programs, as plain values: one [`ServicePort`] per port of every Service with
//! a virtual IP, with the endpoints traffic to it goes to (upstream's `ServicePort` and its
//! endpoint slice cache, folded into one pure function of the API objects).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Upstream's default for `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// A service port's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(text: Option<&str>) -> Option<Self> {
        match text.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The name nftables knows it by (`meta l4proto tcp`).
    pub fn nft_name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One endpoint a service port sends traffic to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// One port of one Service, with what it is reached by and where its traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name; empty for a Service's single unnamed port.
    pub port_name: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// Set for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` and the load balancer's ingress IPs: reached like a NodePort (from
    /// outside, so masqueraded).
    pub external_ips: Vec<Ipv4Addr>,
    /// sessionAffinity ClientIP: how long a client sticks to its endpoint.
    pub affinity_timeout_seconds: Option<u32>,
    /// Where traffic goes: the ready endpoints, or when none is ready the serving-terminating
    /// ones (upstream's fallback); empty means connections are rejected.
    pub endpoints: Vec<Endpoint>,
    /// The endpoints on this node, chosen the same way among this node's endpoints only.
    pub local_endpoints: Vec<Endpoint>,
    /// internalTrafficPolicy Local: the ClusterIP only reaches this node's endpoints.
    pub internal_local: bool,
    /// externalTrafficPolicy Local: NodePorts and external IPs reached from outside go only
    /// to this node's endpoints, without masquerade (the client's address is kept).
    pub external_local: bool,
    /// The service's `healthCheckNodePort` (LoadBalancer with externalTrafficPolicy Local).
    pub health_check_node_port: Option<u16>,
}

impl ServicePort {
    /// `namespace/name/protocol/port-name` (the port number when unnamed): unique per node,
    /// and usable inside nftables chain names.
    pub fn id(&self) -> String {
        let port = if self.port_name.is_empty() { self.port.to_string() } else { self.port_name.clone() };
        format!("{}/{}/{}/{}", self.namespace, self.name, self.protocol.nft_name(), port)
    }
}

/// Every service port that has a virtual IP, sorted, with its endpoints from `slices`, as
/// seen from the node `node_name`. Headless, ExternalName and IPv6-only services have no
/// virtual IP here and are skipped.
pub fn service_ports<'a>(
    node_name: &str,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<ServicePort> {
    // Slices by (namespace, service name).
    let mut slices_of: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(service) = slice.metadata.labels.as_ref().and_then(|labels| labels.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        slices_of.entry((namespace, service.clone())).or_default().push(slice);
    }

    let mut ports = Vec::new();
    for service in services {
        let Some(spec) = service.spec.as_ref() else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok()) else {
            continue;
        };
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.clone().unwrap_or_default();
        let mut external_ips: Vec<Ipv4Addr> =
            spec.external_ips.iter().flatten().filter_map(|ip| ip.parse().ok()).collect();
        let ingress = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        external_ips.extend(ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()));
        external_ips.sort();
        external_ips.dedup();
        let affinity_timeout_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
        });
        let slices = slices_of.get(&(namespace.clone(), name.clone())).map(Vec::as_slice).unwrap_or_default();
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else { continue };
            let Ok(number) = u16::try_from(port.port) else { continue };
            let port_name = port.name.clone().unwrap_or_default();
            let node_port = port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0);
            ports.push(ServicePort {
                namespace: namespace.clone(),
                name: name.clone(),
                protocol,
                cluster_ip,
                port: number,
                node_port,
                external_ips: external_ips.clone(),
                affinity_timeout_seconds,
                endpoints: endpoints_for(slices, &port_name, protocol, None),
                local_endpoints: endpoints_for(slices, &port_name, protocol, Some(node_name)),
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                external_local: spec.external_traffic_policy.as_deref() == Some("Local")
                    && (node_port.is_some() || !external_ips.is_empty()),
                health_check_node_port: spec
                    .health_check_node_port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0),
                port_name,
            });
        }
    }
    ports.sort_by_key(ServicePort::id);
    ports
}

/// The endpoints of the port named `port_name` (only those on node `on_node` if given): the
/// ready ones, else the serving-terminating.
fn endpoints_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    on_node: Option<&str>,
) -> Vec<Endpoint> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        let matching = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == port_name
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        });
        let Some(port) = matching.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) else { continue };
        for endpoint in slice.endpoints.iter().flatten() {
            if on_node.is_some_and(|node| endpoint.node_name.as_deref() != Some(node)) {
                continue;
            }
            let conditions = endpoint.conditions.as_ref();
            // Unset conditions mean ready (and so serving), as upstream reads them.
            let is_ready = conditions.and_then(|c| c.ready) != Some(false);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = conditions.and_then(|c| c.terminating) == Some(true);
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<Ipv4Addr>() else { continue };
                let endpoint = Endpoint { ip, port };
                if is_ready {
                    ready.insert(endpoint);
                } else if serving && is_terminating {
                    terminating.insert(endpoint);
                }
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    chosen.into_iter().collect()
}

#[cfg(test)]
#[path = "serviceport_tests.rs"]
mod tests;

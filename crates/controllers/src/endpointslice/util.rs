//! What the endpoint controllers share about pods, services and endpoints (upstream's
//! `staging/src/k8s.io/endpointslice/util` and `pkg/controller/util/endpoint`): which pods are
//! endpoints, how a service's target port resolves in a pod, and the identity of an endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::Selector;

/// The label naming the Service of an EndpointSlice.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming the controller that manages an EndpointSlice.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Endpoints with this label set to "true" are not mirrored to EndpointSlices.
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// The label marking the Endpoints and slices of a headless Service.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// When the change that led to these endpoints happened.
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The annotation `kubectl apply` keeps its last configuration in.
pub const ANNOTATION_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub const ADDRESS_TYPE_IPV4: &str = "IPv4";
pub const ADDRESS_TYPE_IPV6: &str = "IPv6";

/// The pod's Ready condition is True.
pub fn is_pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// The pod's IPs, primary first.
pub fn pod_ips(pod: &Pod) -> Vec<&str> {
    let Some(status) = pod.status.as_ref() else { return Vec::new() };
    let mut ips: Vec<&str> =
        status.pod_ips.iter().flatten().map(|p| p.ip.as_str()).filter(|ip| !ip.is_empty()).collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())
    {
        ips.push(ip);
    }
    ips
}

pub fn is_ipv6(ip: &str) -> bool {
    matches!(ip.parse::<IpAddr>(), Ok(IpAddr::V6(_)))
}

/// Upstream's `ShouldPodBeInEndpoints`: the pod has an IP, is not terminating (unless
/// `include_terminating`), and is not finished for good under its restart policy.
pub fn should_pod_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    if pod_ips(pod).is_empty() {
        return false;
    }
    if !include_terminating && pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => phase != "Failed" && phase != "Succeeded",
        Some("OnFailure") => phase != "Succeeded",
        _ => true,
    }
}

/// A pod's hostname is published when its subdomain names the service (upstream's
/// `ShouldSetHostname`).
pub fn should_set_hostname(pod: &Pod, svc: &Service) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    spec.hostname.as_deref().is_some_and(|h| !h.is_empty())
        && spec.subdomain.as_deref() == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace
}

/// The pod's port a service port's target names (upstream's `podutil.FindPort`): a number is
/// itself; a name is looked up among the containers' ports (then sidecars') of the same
/// protocol. `None` when the pod has no such port.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let sidecars =
                spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// The service has a cluster IP (upstream's `IsServiceIPSet`): not headless.
pub fn is_service_ip_set(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// The selector of a service that selects pods; `None` for selectorless services, whose
/// endpoints are managed by someone else (an empty selector is one that was never set: the
/// API's storage does not keep empty maps).
pub fn service_selector(svc: &Service) -> Option<Selector> {
    let sel = svc.spec.as_ref()?.selector.as_ref().filter(|s| !s.is_empty())?;
    Some(sel.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// ExternalName services get no endpoints.
pub fn is_external_name(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
}

/// `namespace/name`.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Splits a `namespace/name` key.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// The identity of an endpoint in a set (upstream's `hashEndpoint`): its addresses, hostname
/// and the object it points at. Endpoints with the same identity are the same endpoint, maybe
/// in another state.
pub fn endpoint_identity(ep: &Endpoint) -> String {
    let mut addresses: Vec<&str> = ep.addresses.iter().map(String::as_str).collect();
    addresses.sort_unstable();
    let target = ep.target_ref.as_ref();
    format!(
        "{}|{}|{}|{}",
        addresses.join(","),
        ep.hostname.as_deref().unwrap_or(""),
        target.and_then(|t| t.namespace.as_deref()).unwrap_or(""),
        target.and_then(|t| t.name.as_deref()).unwrap_or("")
    )
}

/// A set of endpoints by identity; ordered so that packing is deterministic.
#[derive(Debug, Default, Clone)]
pub struct EndpointSet(BTreeMap<String, Endpoint>);

impl EndpointSet {
    pub fn insert(&mut self, ep: Endpoint) {
        self.0.insert(endpoint_identity(&ep), ep);
    }
    pub fn get(&self, ep: &Endpoint) -> Option<&Endpoint> {
        self.0.get(&endpoint_identity(ep))
    }
    pub fn remove(&mut self, ep: &Endpoint) -> Option<Endpoint> {
        self.0.remove(&endpoint_identity(ep))
    }
    pub fn pop(&mut self) -> Option<Endpoint> {
        self.0.pop_first().map(|(_, ep)| ep)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The key of a set of ports regardless of their order (upstream's `PortMapKey`), prefixed by
/// an address type when the caller groups by both.
pub fn port_map_key(ports: &[EndpointPort]) -> String {
    let set: BTreeSet<String> = ports
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}/{}",
                p.name.as_deref().unwrap_or(""),
                p.port.unwrap_or(0),
                p.protocol.as_deref().unwrap_or(""),
                p.app_protocol.as_deref().unwrap_or("")
            )
        })
        .collect();
    set.into_iter().collect::<Vec<_>>().join(";")
}

/// Whether a pod update can change the endpoints of the services selecting it (upstream's
/// `podEndpointsChanged`, plus what decides the resolved ports).
pub fn pod_endpoints_changed(old: &Pod, cur: &Pod) -> bool {
    if old.metadata.deletion_timestamp.is_some() != cur.metadata.deletion_timestamp.is_some()
        || is_pod_ready(old) != is_pod_ready(cur)
        || pod_ips(old) != pod_ips(cur)
        || old.metadata.labels != cur.metadata.labels
    {
        return true;
    }
    let phase = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone());
    if phase(old) != phase(cur) {
        return true;
    }
    let shape = |p: &Pod| {
        p.spec.as_ref().map(|s| {
            (
                s.node_name.clone(),
                s.hostname.clone(),
                s.subdomain.clone(),
                s.containers.iter().map(|c| c.ports.clone()).collect::<Vec<_>>(),
                s.init_containers.iter().flatten().map(|c| c.ports.clone()).collect::<Vec<_>>(),
            )
        })
    };
    shape(old) != shape(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_named_target_port_resolves_per_pod_and_protocol() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "ports": [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}
        ]}}));
        let port = |target: IntOrString, protocol: &str| ServicePort {
            port: 80,
            target_port: Some(target),
            protocol: Some(protocol.into()),
            ..Default::default()
        };
        assert_eq!(find_port(&p, &port(IntOrString::String("http".into()), "TCP")), Some(8080));
        assert_eq!(find_port(&p, &port(IntOrString::String("http".into()), "UDP")), None);
        assert_eq!(find_port(&p, &port(IntOrString::String("dns".into()), "UDP")), Some(53));
        assert_eq!(find_port(&p, &port(IntOrString::String("nope".into()), "TCP")), None);
        assert_eq!(find_port(&p, &port(IntOrString::Int(9000), "TCP")), Some(9000));
    }

    #[test]
    fn finished_and_terminating_pods_are_not_endpoints() {
        let base = json!({"metadata": {"name": "p"}, "spec": {"containers": [], "restartPolicy": "Never"},
            "status": {"podIP": "10.0.0.1", "phase": "Running"}});
        assert!(should_pod_be_in_endpoints(&pod(base.clone()), false));
        let mut done = base.clone();
        done["status"]["phase"] = json!("Succeeded");
        assert!(!should_pod_be_in_endpoints(&pod(done), true));
        let mut going = base.clone();
        going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(!should_pod_be_in_endpoints(&pod(going.clone()), false));
        assert!(should_pod_be_in_endpoints(&pod(going), true));
        let mut no_ip = base;
        no_ip["status"]["podIP"] = json!(null);
        assert!(!should_pod_be_in_endpoints(&pod(no_ip), true));
    }

    #[test]
    fn port_map_keys_ignore_order() {
        let p = |name: &str, port| EndpointPort {
            name: Some(name.into()),
            port: Some(port),
            protocol: Some("TCP".into()),
            ..Default::default()
        };
        assert_eq!(port_map_key(&[p("a", 1), p("b", 2)]), port_map_key(&[p("b", 2), p("a", 1)]));
        assert_ne!(port_map_key(&[p("a", 1)]), port_map_key(&[p("a", 2)]));
    }
}

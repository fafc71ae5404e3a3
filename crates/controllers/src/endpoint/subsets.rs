//! The subsets of a service's Endpoints (upstream's `syncService` address loop, and
//! `RepackSubsets` of `pkg/api/v1/endpoints`): pure functions of the service and its pods.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, ObjectReference, Pod, Service};

use crate::endpointslice::util::{
    find_port, is_ipv6, is_pod_ready, is_service_ip_set, pod_ips, should_pod_be_in_endpoints, should_set_hostname,
};

/// The most addresses one Endpoints object holds (upstream's `maxCapacity`).
pub const MAX_CAPACITY: usize = 1000;
/// Set on an Endpoints object that was cut down to [`MAX_CAPACITY`] addresses.
pub const ANNOTATION_OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";

/// The address of `pod` in the service's IP family (upstream's
/// `podToEndpointAddressForService`); `None` when the pod has no IP of that family.
pub fn pod_address(svc: &Service, pod: &Pod) -> Option<EndpointAddress> {
    let ips = pod_ips(pod);
    let spec = svc.spec.as_ref();
    let want_v6 = match spec.and_then(|s| s.ip_families.as_ref()).and_then(|f| f.first()) {
        Some(family) => family == "IPv6",
        None if is_service_ip_set(svc) => is_ipv6(spec.and_then(|s| s.cluster_ip.as_deref()).unwrap_or("")),
        // A headless service without families follows the pod's primary IP.
        None => is_ipv6(ips.first()?),
    };
    let ip = ips.into_iter().find(|ip| is_ipv6(ip) == want_v6)?;
    Some(EndpointAddress {
        ip: ip.to_string(),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        hostname: None,
    })
}

/// The subsets for `svc` from the pods its selector matches, not yet repacked: one subset per
/// pod and resolved port, ready or not.
pub fn desired_subsets(svc: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut subsets = Vec::new();
    for pod in pods {
        if !should_pod_be_in_endpoints(pod, publish_not_ready) {
            continue;
        }
        let Some(mut address) = pod_address(svc, pod) else { continue };
        if should_set_hostname(pod, svc) {
            address.hostname = pod.spec.as_ref().and_then(|s| s.hostname.clone());
        }
        let ready = publish_not_ready || is_pod_ready(pod);
        let subset = |ports: Option<Vec<EndpointPort>>| {
            let addresses = Some(vec![address.clone()]);
            if ready {
                EndpointSubset { addresses, ports, not_ready_addresses: None }
            } else {
                EndpointSubset { not_ready_addresses: addresses, ports, addresses: None }
            }
        };
        let ports = spec.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            // Only a headless service may have addresses without ports.
            if spec.cluster_ip.as_deref() == Some("None") {
                subsets.push(subset(None));
            }
            continue;
        }
        for sp in ports {
            // A pod without the named port is no endpoint of this port.
            let Some(port) = find_port(pod, sp) else { continue };
            subsets.push(subset(Some(vec![EndpointPort {
                name: sp.name.clone().filter(|n| !n.is_empty()),
                port,
                protocol: sp.protocol.clone(),
                app_protocol: sp.app_protocol.clone(),
            }])));
        }
    }
    subsets
}

type AddressKey = (String, String);
/// A port by its fields; `port` -1 stands for "no ports".
type PortKey = (String, i32, String, String);

fn address_key(a: &EndpointAddress) -> AddressKey {
    (a.ip.clone(), a.target_ref.as_ref().and_then(|t| t.uid.clone()).unwrap_or_default())
}

fn port_key(p: &Option<EndpointPort>) -> PortKey {
    match p {
        None => (String::new(), -1, String::new(), String::new()),
        Some(p) => (
            p.name.clone().unwrap_or_default(),
            p.port,
            p.protocol.clone().unwrap_or_default(),
            p.app_protocol.clone().unwrap_or_default(),
        ),
    }
}

/// Upstream's `RepackSubsets`: the same addresses and ports, grouped so that every subset holds
/// the ports that share exactly the same addresses (an address ready for any port of a group
/// stays ready), deduplicated by IP and target uid, in a canonical order.
pub fn repack_subsets(subsets: &[EndpointSubset]) -> Vec<EndpointSubset> {
    let mut addresses: HashMap<AddressKey, EndpointAddress> = HashMap::new();
    // Per port (None: no ports), the addresses and whether each is ready.
    let mut by_port: BTreeMap<PortKey, (Option<EndpointPort>, BTreeMap<AddressKey, bool>)> = BTreeMap::new();
    for ss in subsets {
        let ports: Vec<Option<EndpointPort>> = match ss.ports.as_deref() {
            None | Some([]) => vec![None],
            Some(ports) => ports.iter().cloned().map(Some).collect(),
        };
        for port in ports {
            let (_, set) = by_port.entry(port_key(&port)).or_insert_with(|| (port.clone(), BTreeMap::new()));
            for a in ss.addresses.iter().flatten() {
                let k = address_key(a);
                addresses.entry(k.clone()).or_insert_with(|| a.clone());
                set.insert(k, true);
            }
            for a in ss.not_ready_addresses.iter().flatten() {
                let k = address_key(a);
                addresses.entry(k.clone()).or_insert_with(|| a.clone());
                // Ready for one subset means ready.
                set.entry(k).or_insert(false);
            }
        }
    }
    // Ports sharing the same set of addresses (with the same readiness) form one subset.
    let mut groups: BTreeMap<Vec<(AddressKey, bool)>, Vec<Option<EndpointPort>>> = BTreeMap::new();
    for (_, (port, set)) in by_port {
        if set.is_empty() {
            continue;
        }
        groups.entry(set.into_iter().collect()).or_default().push(port);
    }
    let mut out: Vec<EndpointSubset> = groups
        .into_iter()
        .map(|(set, ports)| {
            let pick = |ready: bool| {
                let list: Vec<EndpointAddress> =
                    set.iter().filter(|(_, r)| *r == ready).map(|(k, _)| addresses[k].clone()).collect();
                (!list.is_empty()).then_some(list)
            };
            let ports: Vec<EndpointPort> = ports.into_iter().flatten().collect();
            EndpointSubset {
                addresses: pick(true),
                not_ready_addresses: pick(false),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect();
    out.sort_by_key(|ss| {
        ss.ports.iter().flatten().map(|p| port_key(&Some(p.clone()))).next().unwrap_or_else(|| port_key(&None))
    });
    out
}

fn count(subsets: &[EndpointSubset]) -> (usize, usize) {
    subsets.iter().fold((0, 0), |(r, n), ss| {
        (r + ss.addresses.as_ref().map_or(0, Vec::len), n + ss.not_ready_addresses.as_ref().map_or(0, Vec::len))
    })
}

/// Cuts the subsets down to [`MAX_CAPACITY`] addresses, as upstream's `truncateEndpoints`:
/// not-ready addresses go first; each subset keeps its share (rounded up) of what is kept.
/// Returns whether anything was cut.
pub fn truncate(subsets: &mut [EndpointSubset]) -> bool {
    let (ready, not_ready) = count(subsets);
    if ready + not_ready <= MAX_CAPACITY {
        return false;
    }
    let truncate_ready = ready > MAX_CAPACITY;
    let (max, total) = if truncate_ready { (MAX_CAPACITY, ready) } else { (MAX_CAPACITY - ready, not_ready) };
    let mut can_be_added = max;
    for ss in subsets.iter_mut() {
        let list = if truncate_ready { &mut ss.addresses } else { &mut ss.not_ready_addresses };
        let in_subset = list.as_ref().map_or(0, Vec::len);
        let share = (in_subset as f64 / total as f64 * max as f64).ceil() as usize;
        let keep = share.min(can_be_added);
        if let Some(l) = list.as_mut() {
            l.truncate(keep);
        }
        can_be_added -= list.as_ref().map_or(0, Vec::len);
        if truncate_ready {
            ss.not_ready_addresses = None;
        }
    }
    true
}

/// Upstream's `capacityAnnotationSetCorrectly`: stored subsets within capacity and no
/// over-capacity annotation (a truncated object is always rewritten, as its desired subsets
/// never equal the stored ones anyway).
pub fn capacity_annotation_set_correctly(
    annotations: Option<&BTreeMap<String, String>>,
    subsets: &[EndpointSubset],
) -> bool {
    let (ready, not_ready) = count(subsets);
    let n = ready + not_ready;
    if n > MAX_CAPACITY {
        return false;
    }
    let set = annotations.is_some_and(|a| a.contains_key(ANNOTATION_OVER_CAPACITY));
    !set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> EndpointAddress {
        EndpointAddress {
            ip: ip.into(),
            target_ref: Some(ObjectReference { uid: Some(format!("uid-{ip}")), ..Default::default() }),
            ..Default::default()
        }
    }

    fn port(name: &str, n: i32) -> EndpointPort {
        EndpointPort { name: Some(name.into()), port: n, protocol: Some("TCP".into()), app_protocol: None }
    }

    fn ss(ready: &[&str], not_ready: &[&str], ports: &[EndpointPort]) -> EndpointSubset {
        let list = |ips: &[&str]| (!ips.is_empty()).then(|| ips.iter().map(|ip| addr(ip)).collect());
        EndpointSubset {
            addresses: list(ready),
            not_ready_addresses: list(not_ready),
            ports: (!ports.is_empty()).then(|| ports.to_vec()),
        }
    }

    fn ips(list: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        list.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn repacking_merges_addresses_of_the_same_port_in_order() {
        let out = repack_subsets(&[
            ss(&["10.0.0.2"], &[], &[port("http", 80)]),
            ss(&[], &["10.0.0.3"], &[port("http", 80)]),
            ss(&["10.0.0.1"], &[], &[port("http", 80)]),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(ips(&out[0].addresses), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(ips(&out[0].not_ready_addresses), ["10.0.0.3"]);
    }

    #[test]
    fn repacking_groups_ports_that_share_all_addresses() {
        let out = repack_subsets(&[
            ss(&["10.0.0.1"], &[], &[port("http", 80)]),
            ss(&["10.0.0.1"], &[], &[port("https", 443)]),
            ss(&["10.0.0.2"], &[], &[port("http", 80)]),
            ss(&["10.0.0.2"], &[], &[port("https", 443)]),
            // Only this pod has the named metrics port.
            ss(&["10.0.0.2"], &[], &[port("metrics", 9090)]),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].ports.as_ref().unwrap(), &[port("http", 80), port("https", 443)]);
        assert_eq!(ips(&out[0].addresses), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(out[1].ports.as_ref().unwrap(), &[port("metrics", 9090)]);
        assert_eq!(ips(&out[1].addresses), ["10.0.0.2"]);
    }

    #[test]
    fn repacking_keeps_an_address_ready_if_any_subset_says_so() {
        let out =
            repack_subsets(&[ss(&[], &["10.0.0.1"], &[port("http", 80)]), ss(&["10.0.0.1"], &[], &[port("http", 80)])]);
        assert_eq!(ips(&out[0].addresses), ["10.0.0.1"]);
        assert!(out[0].not_ready_addresses.is_none());
    }

    #[test]
    fn repacking_keeps_portless_subsets() {
        let out = repack_subsets(&[ss(&["10.0.0.1"], &[], &[]), ss(&["10.0.0.2"], &[], &[])]);
        assert_eq!(out.len(), 1);
        assert!(out[0].ports.is_none());
        assert_eq!(ips(&out[0].addresses), ["10.0.0.1", "10.0.0.2"]);
    }

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": spec}))
            .unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool, port: Option<i32>) -> Pod {
        let ports: Vec<_> = port.into_iter().map(|p| serde_json::json!({"name": "http", "containerPort": p})).collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"nodeName": "n1", "hostname": name, "subdomain": "web", "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    #[test]
    fn named_ports_resolve_per_pod_and_readiness_splits_addresses() {
        let svc = service(serde_json::json!({"clusterIP": "10.96.0.1",
            "ports": [{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}]}));
        let (a, b, c) = (
            pod("a", "10.0.0.1", true, Some(8080)),
            pod("b", "10.0.0.2", false, Some(8080)),
            pod("c", "10.0.0.3", true, None),
        );
        let out = repack_subsets(&desired_subsets(&svc, &[&a, &b, &c]));
        assert_eq!(out.len(), 1);
        assert_eq!(ips(&out[0].addresses), ["10.0.0.1"]);
        assert_eq!(ips(&out[0].not_ready_addresses), ["10.0.0.2"]);
        assert_eq!(out[0].ports.as_ref().unwrap()[0].port, 8080);
        let address = &out[0].addresses.as_ref().unwrap()[0];
        assert_eq!(address.node_name.as_deref(), Some("n1"));
        assert_eq!(address.hostname.as_deref(), Some("a"), "the pod's subdomain names the service");
        assert_eq!(address.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
    }

    #[test]
    fn publishing_not_ready_addresses_makes_every_address_ready() {
        let svc = service(serde_json::json!({"clusterIP": "10.96.0.1", "publishNotReadyAddresses": true,
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}));
        let b = pod("b", "10.0.0.2", false, None);
        let out = repack_subsets(&desired_subsets(&svc, &[&b]));
        assert_eq!(ips(&out[0].addresses), ["10.0.0.2"]);
        assert!(out[0].not_ready_addresses.is_none());
    }

    #[test]
    fn only_a_headless_service_lists_addresses_without_ports() {
        let a = pod("a", "10.0.0.1", true, None);
        let headless = service(serde_json::json!({"clusterIP": "None"}));
        let out = repack_subsets(&desired_subsets(&headless, &[&a]));
        assert_eq!(ips(&out[0].addresses), ["10.0.0.1"]);
        assert!(out[0].ports.is_none());
        let plain = service(serde_json::json!({"clusterIP": "10.96.0.1"}));
        assert!(desired_subsets(&plain, &[&a]).is_empty());
    }

    fn many(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}.{}.{}", i / 250, i % 250)).collect()
    }

    #[test]
    fn truncation_drops_not_ready_addresses_first() {
        let ready = many("10.1", 900);
        let not_ready = many("10.2", 300);
        let r: Vec<&str> = ready.iter().map(String::as_str).collect();
        let n: Vec<&str> = not_ready.iter().map(String::as_str).collect();
        let mut subsets = vec![ss(&r, &n, &[port("http", 80)])];
        assert!(!capacity_annotation_set_correctly(None, &subsets));
        assert!(truncate(&mut subsets));
        assert_eq!(count(&subsets), (900, 100));
        let annotated = BTreeMap::from([(ANNOTATION_OVER_CAPACITY.to_string(), "truncated".to_string())]);
        assert!(!capacity_annotation_set_correctly(Some(&annotated), &subsets));
        assert!(capacity_annotation_set_correctly(None, &subsets));
    }

    #[test]
    fn truncation_shares_ready_addresses_between_subsets() {
        let a = many("10.1", 800);
        let b = many("10.2", 400);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let b: Vec<&str> = b.iter().map(String::as_str).collect();
        let mut subsets = vec![ss(&a, &["10.9.0.1"], &[port("a", 1)]), ss(&b, &[], &[port("b", 2)])];
        assert!(truncate(&mut subsets));
        // 800/1200 of 1000 rounded up, then what is left.
        assert_eq!(subsets[0].addresses.as_ref().unwrap().len(), 667);
        assert_eq!(subsets[1].addresses.as_ref().unwrap().len(), 333);
        assert!(subsets[0].not_ready_addresses.is_none());
        let mut small = vec![ss(&["10.0.0.1"], &[], &[port("a", 1)])];
        assert!(!truncate(&mut small));
        assert!(capacity_annotation_set_correctly(None, &small));
    }
}

//! What to write to bring a service's EndpointSlices in line with its pods (upstream's
//! `staging/src/k8s.io/endpointslice/reconciler.go`), as a pure function: the [`Plan`] of
//! slices to create, update and delete.
//!
//! The strategy is upstream's, which keeps churn low: endpoints are grouped by address type and
//! by their set of resolved ports; existing slices keep the endpoints still wanted (updated in
//! place when they changed) and are deleted when none is; new endpoints first fill the slices
//! being updated anyway (fullest first), then the one unchanged slice they fit best, and only
//! then new slices of at most `max_endpoints` each; a create and a delete of the same address
//! type become one update. A service with no endpoints keeps one empty placeholder slice.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::util::{
    ADDRESS_TYPE_IPV4, ADDRESS_TYPE_IPV6, EndpointSet, LABEL_HEADLESS, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, find_port,
    is_ipv6, is_pod_ready, is_service_ip_set, pod_ips, port_map_key, should_pod_be_in_endpoints, should_set_hostname,
};

/// The most endpoints per slice (upstream's `--max-endpoints-per-slice` default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The `managed-by` label value of this controller's slices.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// The node label giving an endpoint's zone.
const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// The writes a reconcile needs.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<EndpointSlice>,
    /// Pods left out because their node is unknown (retried later).
    pub missing_nodes: Vec<String>,
}

/// The address types a service's slices carry (upstream's `getAddressTypesForService`).
pub fn address_types(svc: &Service) -> BTreeSet<&'static str> {
    let spec = svc.spec.as_ref();
    let mut types: BTreeSet<&'static str> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(ADDRESS_TYPE_IPV4),
            "IPv6" => Some(ADDRESS_TYPE_IPV6),
            _ => None,
        })
        .collect();
    if types.is_empty() {
        let ip = spec.and_then(|s| s.cluster_ip.as_deref()).unwrap_or("");
        // Upstream falls back to both families for a headless service without families, which
        // its API server never stores; here such a service gets the single-stack default.
        types.insert(if is_service_ip_set(svc) && is_ipv6(ip) { ADDRESS_TYPE_IPV6 } else { ADDRESS_TYPE_IPV4 });
    }
    types
}

/// The ports of `pod` for the service's ports it has (upstream's `getEndpointPorts`).
pub fn endpoint_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            Some(EndpointPort {
                port: Some(find_port(pod, sp)?),
                name: Some(sp.name.clone().unwrap_or_default()),
                protocol: sp.protocol.clone(),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// The endpoint of `pod` (upstream's `podToEndpoint`).
pub fn pod_to_endpoint(pod: &Pod, node: Option<&Node>, svc: &Service, address_type: &str) -> Endpoint {
    let serving = is_pod_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let publish = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    // A terminating pod is never ready, unless not-ready addresses are published anyway.
    let ready = publish || (serving && !terminating);
    let want_v6 = address_type == ADDRESS_TYPE_IPV6;
    Endpoint {
        addresses: pod_ips(pod).into_iter().filter(|ip| is_ipv6(ip) == want_v6).map(String::from).collect(),
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
        zone: node
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(LABEL_ZONE))
            .filter(|z| !z.is_empty())
            .cloned(),
        hostname: if should_set_hostname(pod, svc) { pod.spec.as_ref().and_then(|s| s.hostname.clone()) } else { None },
        ..Default::default()
    }
}

/// The labels of the service's slices (upstream's `setEndpointSliceLabels`): the service's,
/// but for the reserved ones, plus the headless mark and the reserved ones set by us.
pub fn desired_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != LABEL_SERVICE_NAME && k.as_str() != LABEL_MANAGED_BY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if is_service_ip_set(svc) {
        labels.remove(LABEL_HEADLESS);
    } else {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    }
    labels.insert(LABEL_SERVICE_NAME.into(), svc.metadata.name.clone().unwrap_or_default());
    labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    labels
}

/// A new, empty slice of the service (upstream's `newEndpointSlice`), named by the API server.
pub fn new_slice(svc: &Service, ports: &[EndpointPort], address_type: &str) -> EndpointSlice {
    let name = svc.metadata.name.clone().unwrap_or_default();
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(desired_labels(svc)),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name,
                uid: svc.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: Some(Vec::new()),
        ports: Some(ports.to_vec()),
    }
}

fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == svc.metadata.uid.as_ref() && o.kind == "Service" && o.api_version == "v1")
}

fn endpoints_of(slice: &EndpointSlice) -> &[Endpoint] {
    slice.endpoints.as_deref().unwrap_or_default()
}

fn name_of(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

/// The plan for `svc` given its selected `pods`, the `node` lookup, and its existing slices
/// (those labelled as this controller's for the service, not being deleted).
pub fn reconcile(
    svc: &Service,
    pods: &[&Pod],
    node: &dyn Fn(&str) -> Option<Node>,
    existing: &[&EndpointSlice],
    max_endpoints: usize,
) -> Plan {
    let types = address_types(svc);
    let mut plan = Plan::default();
    let mut by_type: BTreeMap<&str, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        if types.contains(slice.address_type.as_str()) {
            by_type.entry(slice.address_type.as_str()).or_default().push(slice);
        } else {
            plan.delete.push((*slice).clone());
        }
    }
    for t in &types {
        let slices = by_type.remove(t).unwrap_or_default();
        reconcile_by_address_type(svc, pods, node, &slices, t, max_endpoints, &mut plan);
    }
    recycle(svc, &mut plan);
    plan
}

fn reconcile_by_address_type(
    svc: &Service,
    pods: &[&Pod],
    node: &dyn Fn(&str) -> Option<Node>,
    existing: &[&EndpointSlice],
    address_type: &str,
    max_endpoints: usize,
    plan: &mut Plan,
) {
    let (mut create, mut update, mut delete) = (Vec::new(), Vec::new(), Vec::new());
    let mut existing_by_ports: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        if owned_by(slice, svc) {
            existing_by_ports.entry(port_map_key(slice.ports.as_deref().unwrap_or_default())).or_default().push(slice);
        } else {
            // A slice of an older service of the same name, waiting for the garbage collector.
            delete.push((*slice).clone());
        }
    }
    let publish = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    let mut desired: BTreeMap<String, (Vec<EndpointPort>, EndpointSet)> = BTreeMap::new();
    for pod in pods {
        if !should_pod_be_in_endpoints(pod, true) {
            continue;
        }
        let ports = endpoint_ports(svc, pod);
        let (_, set) = desired.entry(port_map_key(&ports)).or_insert_with(|| (ports, EndpointSet::default()));
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("");
        let n = node(node_name);
        // A pod on an unknown node is left out (and retried), unless the user asked for
        // every address to be published.
        if n.is_none() && !publish {
            plan.missing_nodes.push(pod.metadata.name.clone().unwrap_or_default());
            continue;
        }
        let ep = pod_to_endpoint(pod, n.as_ref(), svc, address_type);
        if !ep.addresses.is_empty() {
            set.insert(ep);
        }
    }
    for (key, (ports, set)) in &desired {
        let old = existing_by_ports.get(key).cloned().unwrap_or_default();
        let (c, u, d) = reconcile_by_port_mapping(svc, &old, set.clone(), ports, address_type, max_endpoints);
        create.extend(c);
        update.extend(u);
        delete.extend(d);
    }
    for (key, slices) in existing_by_ports {
        if !desired.contains_key(&key) {
            delete.extend(slices.into_iter().cloned());
        }
    }
    // A service without endpoints keeps one empty placeholder slice.
    if existing.len() == delete.len() && create.is_empty() {
        let placeholder = new_slice(svc, &[], address_type);
        if delete.len() == 1 && same_placeholder(&delete[0], &placeholder) {
            delete.clear();
        } else {
            create.push(placeholder);
        }
    }
    plan.create.extend(create);
    plan.update.extend(update);
    plan.delete.extend(delete);
}

/// Upstream's `placeholderSliceCompare`: same namespace, labels, address type, and no ports
/// or endpoints.
fn same_placeholder(a: &EndpointSlice, placeholder: &EndpointSlice) -> bool {
    a.metadata.namespace == placeholder.metadata.namespace
        && a.metadata.labels.clone().unwrap_or_default() == placeholder.metadata.labels.clone().unwrap_or_default()
        && a.address_type == placeholder.address_type
        && endpoints_of(a).is_empty()
        && a.ports.as_deref().unwrap_or_default().is_empty()
}

/// Upstream's `reconcileByPortMapping`, for the slices and endpoints of one set of ports.
fn reconcile_by_port_mapping(
    svc: &Service,
    existing: &[&EndpointSlice],
    mut desired: EndpointSet,
    ports: &[EndpointPort],
    address_type: &str,
    max: usize,
) -> (Vec<EndpointSlice>, Vec<EndpointSlice>, Vec<EndpointSlice>) {
    let mut by_name: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let (mut unchanged, mut to_update, mut to_delete) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let labels = desired_labels(svc);

    // 1. Keep the wanted endpoints of each slice, in their desired state.
    for slice in existing {
        let name = name_of(slice);
        let mut kept = Vec::new();
        let mut changed = false;
        for ep in endpoints_of(slice) {
            if let Some(want) = desired.remove(ep) {
                changed |= &want != ep;
                kept.push(want);
            }
        }
        let labels_changed = slice.metadata.labels.as_ref() != Some(&labels);
        if changed || kept.len() != endpoints_of(slice).len() {
            if kept.is_empty() {
                to_delete.insert(name.clone());
                by_name.insert(name, (*slice).clone());
            } else {
                let mut s = (*slice).clone();
                s.endpoints = Some(kept);
                s.metadata.labels = Some(labels.clone());
                to_update.insert(name.clone());
                by_name.insert(name, s);
            }
        } else if labels_changed {
            let mut s = (*slice).clone();
            s.metadata.labels = Some(labels.clone());
            to_update.insert(name.clone());
            by_name.insert(name, s);
        } else {
            unchanged.insert(name.clone());
            by_name.insert(name, (*slice).clone());
        }
    }

    // 2. Fill the slices being updated anyway, fullest first.
    if !desired.is_empty() && !to_update.is_empty() {
        let mut names: Vec<&String> = to_update.iter().collect();
        names.sort_by_key(|n| std::cmp::Reverse(endpoints_of(&by_name[*n]).len()));
        for name in names {
            let s = by_name.get_mut(name).expect("slice to update is known");
            fill(s, &mut desired, max);
        }
    }

    // 3. Put what is left into the unchanged slice it fits best, else into new slices.
    let mut create = Vec::new();
    while !desired.is_empty() {
        let mut target = None;
        if desired.len() < max && !unchanged.is_empty() {
            target = slice_to_fill(unchanged.iter().map(|n| &by_name[n]), desired.len(), max).map(name_of);
        }
        match target {
            Some(name) => {
                let s = by_name.get_mut(&name).expect("unchanged slice is known");
                fill(s, &mut desired, max);
                unchanged.remove(&name);
                to_update.insert(name);
            }
            None => {
                let mut s = new_slice(svc, ports, address_type);
                fill(&mut s, &mut desired, max);
                create.push(s);
            }
        }
    }
    let take = |names: BTreeSet<String>, by_name: &mut BTreeMap<String, EndpointSlice>| {
        names.into_iter().filter_map(|n| by_name.remove(&n)).collect::<Vec<_>>()
    };
    let update = take(to_update, &mut by_name);
    let delete = take(to_delete, &mut by_name);
    (create, update, delete)
}

fn fill(slice: &mut EndpointSlice, desired: &mut EndpointSet, max: usize) {
    let eps = slice.endpoints.get_or_insert_with(Vec::new);
    while eps.len() < max {
        let Some(ep) = desired.pop() else { break };
        eps.push(ep);
    }
}

/// The slice that `n` more endpoints fill the closest to `max` (upstream's `getSliceToFill`).
fn slice_to_fill<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    n: usize,
    max: usize,
) -> Option<&'a EndpointSlice> {
    let mut best: Option<(usize, &EndpointSlice)> = None;
    for s in slices {
        let used = endpoints_of(s).len() + n;
        if used > max {
            continue;
        }
        let diff = max - used;
        if best.is_none_or(|(d, _)| diff < d) {
            best = Some((diff, s));
            if diff == 0 {
                break;
            }
        }
    }
    best.map(|(_, s)| s)
}

/// Upstream's `finalize` preamble: a create and a delete of the same address type become an
/// update of the slice that would have been deleted.
fn recycle(svc: &Service, plan: &mut Plan) {
    let mut i = 0;
    while i < plan.delete.len() && !plan.create.is_empty() {
        let last = plan.create.len() - 1;
        let old = &plan.delete[i];
        if old.address_type == plan.create[last].address_type && owned_by(old, svc) {
            let old = plan.delete.remove(i);
            let mut slice = plan.create.remove(last);
            slice.metadata.name = old.metadata.name;
            slice.metadata.generate_name = None;
            slice.metadata.resource_version = old.metadata.resource_version;
            slice.metadata.uid = old.metadata.uid;
            slice.metadata.annotations = old.metadata.annotations;
            plan.update.push(slice);
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
#[path = "reconciler_tests.rs"]
mod tests;

//! What to write to mirror one custom Endpoints object into EndpointSlices (upstream's
//! `pkg/controller/endpointslicemirroring/reconciler.go`), as a pure function.
//!
//! The Endpoints' subsets are repacked first; each subset (one set of ports) and address family
//! becomes one slice of at most `max_endpoints` endpoints (the rest is skipped, with a warning),
//! carrying the Endpoints' labels and annotations. Of the existing slices of a set of ports the
//! first is kept (rewritten when anything differs) and the others deleted; a create and a
//! delete of the same address type become one update.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::endpoint::subsets::repack_subsets;
use crate::endpointslice::util::{
    ADDRESS_TYPE_IPV4, ADDRESS_TYPE_IPV6, ANNOTATION_LAST_APPLIED, ANNOTATION_TRIGGER_TIME, EndpointSet,
    LABEL_MANAGED_BY, LABEL_SERVICE_NAME, port_map_key,
};

/// The `managed-by` label value of mirrored slices.
pub const CONTROLLER_NAME: &str = "endpointslicemirroring-controller.k8s.io";
/// The most addresses mirrored per subset (upstream's `--mirroring-max-endpoints-per-subset`).
pub const MAX_ENDPOINTS_PER_SUBSET: usize = 1000;

/// The writes a reconcile needs, and what it could not mirror.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<EndpointSlice>,
    /// Addresses that are no IP.
    pub invalid: usize,
    /// Addresses not mirrored, invalid ones included.
    pub skipped: usize,
}

/// An address as a slice endpoint, and its address type; `None` for an address that is no IP
/// (upstream's `addressToEndpoint`).
fn address_to_endpoint(a: &EndpointAddress, ready: bool) -> Option<(Endpoint, &'static str)> {
    let ip: IpAddr = a.ip.parse().ok()?;
    let address_type = if ip.is_ipv6() { ADDRESS_TYPE_IPV6 } else { ADDRESS_TYPE_IPV4 };
    let ep = Endpoint {
        // Written back in canonical form, as upstream re-formats irregular IPs.
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions { ready: Some(ready), ..Default::default() }),
        target_ref: a.target_ref.clone(),
        node_name: a.node_name.clone(),
        hostname: a.hostname.clone().filter(|h| !h.is_empty()),
        ..Default::default()
    };
    Some((ep, address_type))
}

/// The labels and annotations mirrored slices carry.
fn mirrored_meta(endpoints: &Endpoints) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels = endpoints.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_SERVICE_NAME.into(), endpoints.metadata.name.clone().unwrap_or_default());
    labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    let mut annotations = endpoints.metadata.annotations.clone().unwrap_or_default();
    annotations.remove(ANNOTATION_TRIGGER_TIME);
    annotations.remove(ANNOTATION_LAST_APPLIED);
    (labels, annotations)
}

/// A new slice mirroring `endpoints` (upstream's `newEndpointSlice`): named `name`, or by the
/// API server when there is none yet.
fn new_slice(endpoints: &Endpoints, ports: &[EndpointPort], address_type: &str, name: Option<String>) -> EndpointSlice {
    let (labels, annotations) = mirrored_meta(endpoints);
    let ep_name = endpoints.metadata.name.clone().unwrap_or_default();
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: name.is_none().then(|| format!("{ep_name}-")),
            name,
            namespace: endpoints.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Endpoints".into(),
                name: ep_name,
                uid: endpoints.metadata.uid.clone().unwrap_or_default(),
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

/// The key of a group of slices: their ports and address type.
fn group_key(ports: &[EndpointPort], address_type: &str) -> String {
    format!("{address_type}#{}", port_map_key(ports))
}

/// The plan mirroring `endpoints` over its `existing` mirrored slices.
pub fn reconcile(endpoints: &Endpoints, existing: &[&EndpointSlice], max_endpoints: usize) -> Plan {
    let mut plan = Plan::default();
    let mut desired: BTreeMap<String, (Vec<EndpointPort>, &'static str, EndpointSet)> = BTreeMap::new();
    for subset in repack_subsets(endpoints.subsets.as_deref().unwrap_or_default()) {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_default()),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let all = subset.addresses.iter().flatten().map(|a| (a, true));
        let all = all.chain(subset.not_ready_addresses.iter().flatten().map(|a| (a, false)));
        let mut added = 0;
        let mut total = 0;
        for (address, ready) in all {
            total += 1;
            if added >= max_endpoints {
                continue;
            }
            match address_to_endpoint(address, ready) {
                Some((ep, address_type)) => {
                    let (_, _, set) = desired
                        .entry(group_key(&ports, address_type))
                        .or_insert_with(|| (ports.clone(), address_type, EndpointSet::default()));
                    set.insert(ep);
                    added += 1;
                }
                None => plan.invalid += 1,
            }
        }
        plan.skipped += total - added;
    }

    let mut existing_by_key: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        existing_by_key
            .entry(group_key(slice.ports.as_deref().unwrap_or_default(), &slice.address_type))
            .or_default()
            .push(slice);
    }
    for (key, (ports, address_type, set)) in desired.iter_mut() {
        let old = existing_by_key.remove(key).unwrap_or_default();
        reconcile_by_port_mapping(endpoints, &old, std::mem::take(set), ports, address_type, max_endpoints, &mut plan);
    }
    for slices in existing_by_key.into_values() {
        plan.delete.extend(slices.into_iter().cloned());
    }
    recycle(&mut plan);
    plan
}

/// Upstream's `reconcileByPortMapping` for the mirroring controller.
fn reconcile_by_port_mapping(
    endpoints: &Endpoints,
    existing: &[&EndpointSlice],
    mut desired: EndpointSet,
    ports: &[EndpointPort],
    address_type: &str,
    max: usize,
    plan: &mut Plan,
) {
    if desired.is_empty() {
        plan.delete.extend(existing.iter().map(|s| (*s).clone()));
        return;
    }
    let mut name = None;
    if let Some((first, rest)) = existing.split_first() {
        plan.delete.extend(rest.iter().map(|s| (*s).clone()));
        let (labels, annotations) = mirrored_meta(endpoints);
        let have = first.endpoints.as_deref().unwrap_or_default();
        let same_endpoints =
            have.len() == desired.len() && have.iter().all(|ep| desired.get(ep).is_some_and(|want| want == ep));
        if same_endpoints
            && first.metadata.labels.clone().unwrap_or_default() == labels
            && first.metadata.annotations.clone().unwrap_or_default() == annotations
        {
            return;
        }
        name = first.metadata.name.clone();
    }
    let existing_first = existing.first();
    let mut slice = new_slice(endpoints, ports, address_type, name);
    if let Some(first) = existing_first {
        slice.metadata.resource_version = first.metadata.resource_version.clone();
    }
    let eps = slice.endpoints.get_or_insert_with(Vec::new);
    while eps.len() < max {
        let Some(ep) = desired.pop() else { break };
        eps.push(ep);
    }
    if slice.metadata.name.is_some() { plan.update.push(slice) } else { plan.create.push(slice) }
}

/// Upstream's `recycleSlices`: a slice to create takes the name of a slice of the same address
/// type that was to be deleted.
fn recycle(plan: &mut Plan) {
    let mut creates = std::mem::take(&mut plan.create);
    for mut slice in creates.drain(..) {
        match plan.delete.iter().position(|d| d.address_type == slice.address_type) {
            Some(i) => {
                let old = plan.delete.remove(i);
                slice.metadata.name = old.metadata.name;
                slice.metadata.generate_name = None;
                slice.metadata.resource_version = old.metadata.resource_version;
                plan.update.push(slice);
            }
            None => plan.create.push(slice),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn endpoints(subsets: serde_json::Value) -> Endpoints {
        serde_json::from_value(json!({
            "metadata": {"name": "ext", "namespace": "ns", "uid": "ep-uid", "labels": {"team": "a"},
                "annotations": {"note": "x", "endpoints.kubernetes.io/last-change-trigger-time": "t"}},
            "subsets": subsets,
        }))
        .unwrap()
    }

    fn stored(plan: Plan) -> Vec<EndpointSlice> {
        let mut out = plan.update;
        for (i, mut s) in plan.create.into_iter().enumerate() {
            s.metadata.name = Some(format!("ext-{i}"));
            out.push(s);
        }
        out
    }

    fn run(ep: &Endpoints, existing: &[EndpointSlice]) -> Plan {
        let existing: Vec<&EndpointSlice> = existing.iter().collect();
        reconcile(ep, &existing, MAX_ENDPOINTS_PER_SUBSET)
    }

    #[test]
    fn a_subset_becomes_one_slice_per_address_type() {
        let ep = endpoints(json!([{
            "addresses": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
            "notReadyAddresses": [{"ip": "10.0.0.2", "hostname": "h"}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        }]));
        let plan = run(&ep, &[]);
        assert_eq!(plan.create.len(), 2);
        let v4 = plan.create.iter().find(|s| s.address_type == "IPv4").unwrap();
        let eps = v4.endpoints.as_ref().unwrap();
        assert_eq!(eps.len(), 2);
        let not_ready = eps.iter().find(|e| e.addresses == ["10.0.0.2"]).unwrap();
        assert_eq!(not_ready.conditions.as_ref().unwrap().ready, Some(false));
        assert_eq!(not_ready.hostname.as_deref(), Some("h"));
        let labels = v4.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_MANAGED_BY], CONTROLLER_NAME);
        assert_eq!(labels[LABEL_SERVICE_NAME], "ext");
        assert_eq!(labels["team"], "a");
        let annotations = v4.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.get("note").map(String::as_str), Some("x"));
        assert!(!annotations.contains_key(ANNOTATION_TRIGGER_TIME));
        assert_eq!(v4.metadata.owner_references.as_ref().unwrap()[0].kind, "Endpoints");
    }

    #[test]
    fn mirrored_state_needs_no_writes_and_changes_update_in_place() {
        let ep = endpoints(json!([{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80, "protocol": "TCP"}]}]));
        let slices = stored(run(&ep, &[]));
        let plan = run(&ep, &slices);
        assert!(plan.create.is_empty() && plan.update.is_empty() && plan.delete.is_empty(), "{plan:?}");
        let moved =
            endpoints(json!([{"addresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 8080, "protocol": "TCP"}]}]));
        let plan = run(&moved, &slices);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.update.len(), 1);
        assert_eq!(plan.update[0].metadata.name.as_deref(), Some("ext-0"));
    }

    #[test]
    fn invalid_and_excess_addresses_are_skipped() {
        let addresses: Vec<_> = (0..5).map(|i| json!({"ip": format!("10.0.0.{i}")})).collect();
        let mut ep = endpoints(json!([{"addresses": addresses, "ports": [{"port": 80, "protocol": "TCP"}]}]));
        ep.subsets.as_mut().unwrap()[0]
            .addresses
            .as_mut()
            .unwrap()
            .push(EndpointAddress { ip: "not-an-ip".into(), ..Default::default() });
        let plan = reconcile(&ep, &[], 3);
        assert_eq!(plan.create[0].endpoints.as_ref().unwrap().len(), 3);
        assert_eq!(plan.skipped, 3);
    }

    #[test]
    fn no_addresses_means_no_slices() {
        let ep = endpoints(json!([{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80, "protocol": "TCP"}]}]));
        let slices = stored(run(&ep, &[]));
        let plan = run(&endpoints(json!([])), &slices);
        assert_eq!(plan.delete.len(), 1);
        assert!(plan.create.is_empty() && plan.update.is_empty());
    }
}

//! Printers of cluster machinery: leases and lease candidates, priority and runtime classes,
//! dynamic resource allocation, storage versions.

use jiff::Timestamp;
use serde_json::Value;

use super::format::list_with_more;
use super::object::{age, deleting, flag, has, int, list, name, opt_text, text};
use super::{AGE, Column, NAME, Printer, docs};

pub(super) const PRINTERS: &[Printer] = &[
    Printer::new("coordination.k8s.io", "Lease", LEASE_COLUMNS, lease_cells),
    Printer::new("coordination.k8s.io", "LeaseCandidate", LEASE_CANDIDATE_COLUMNS, lease_candidate_cells),
    Printer::new("scheduling.k8s.io", "PriorityClass", PRIORITY_CLASS_COLUMNS, priority_class_cells),
    Printer::new("node.k8s.io", "RuntimeClass", RUNTIME_CLASS_COLUMNS, runtime_class_cells),
    Printer::new("resource.k8s.io", "DeviceClass", NAME_AND_AGE, name_and_age_cells),
    Printer::new("resource.k8s.io", "ResourceClaim", RESOURCE_CLAIM_COLUMNS, resource_claim_cells),
    Printer::new("resource.k8s.io", "ResourceClaimTemplate", NAME_AND_AGE, name_and_age_cells),
    Printer::new("resource.k8s.io", "ResourceSlice", RESOURCE_SLICE_COLUMNS, resource_slice_cells),
    Printer::new("internal.apiserver.k8s.io", "StorageVersion", STORAGE_VERSION_COLUMNS, storage_version_cells),
];

const LEASE_COLUMNS: &[Column] = &[NAME, Column::string("Holder", docs::LEASE_SPEC_HOLDER), AGE];

fn lease_cells(lease: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(lease).into(), text(lease, "/spec/holderIdentity").into(), age(lease, now).into()]
}

/// Upstream describes these two columns with keys ObjectMeta does not have: the empty string.
const LEASE_CANDIDATE_COLUMNS: &[Column] = &[
    NAME,
    Column::string("LeaseName", docs::LEASE_CANDIDATE_SPEC_LEASE_NAME),
    Column::string("BinaryVersion", ""),
    Column::string("EmulationVersion", ""),
    AGE,
];

fn lease_candidate_cells(candidate: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(candidate).into(),
        text(candidate, "/spec/leaseName").into(),
        text(candidate, "/spec/binaryVersion").into(),
        text(candidate, "/spec/emulationVersion").into(),
        age(candidate, now).into(),
    ]
}

const PRIORITY_CLASS_COLUMNS: &[Column] = &[
    NAME,
    Column::integer("Value", docs::PRIORITY_CLASS_VALUE),
    Column::boolean("Global-Default", docs::PRIORITY_CLASS_GLOBAL_DEFAULT),
    AGE,
    Column::string("PreemptionPolicy", docs::PRIORITY_CLASS_PREEMPTION_POLICY),
];

fn priority_class_cells(pc: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(pc).into(),
        int(pc, "/value").into(),
        flag(pc, "/globalDefault").into(),
        age(pc, now).into(),
        text(pc, "/preemptionPolicy").into(),
    ]
}

/// Upstream describes the handler with a key ObjectMeta does not have: the empty string.
const RUNTIME_CLASS_COLUMNS: &[Column] = &[NAME, Column::string("Handler", ""), AGE];

fn runtime_class_cells(rc: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(rc).into(), text(rc, "/handler").into(), age(rc, now).into()]
}

const NAME_AND_AGE: &[Column] = &[NAME, AGE];

fn name_and_age_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(obj).into(), age(obj, now).into()]
}

const RESOURCE_CLAIM_COLUMNS: &[Column] =
    &[NAME, Column::string("State", "A summary of the current state (allocated, pending, reserved, etc.)."), AGE];

/// `pending`, `allocated`, `allocated,reserved`, with `deleted` first while being deleted.
fn resource_claim_state(claim: &Value) -> String {
    let mut states = Vec::new();
    if deleting(claim) {
        states.push("deleted");
    }
    if !has(claim, "/status/allocation") {
        if !deleting(claim) {
            states.push("pending");
        }
    } else {
        states.push("allocated");
        if !list(claim, "/status/reservedFor").is_empty() {
            states.push("reserved");
        }
    }
    states.join(",")
}

fn resource_claim_cells(claim: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(claim).into(), resource_claim_state(claim).into(), age(claim, now).into()]
}

const RESOURCE_SLICE_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Node", docs::RESOURCE_SLICE_NODE_NAME),
    Column::string("Driver", docs::RESOURCE_SLICE_DRIVER),
    Column::string("Pool", docs::RESOURCE_POOL_NAME),
    AGE,
];

fn resource_slice_cells(slice: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(slice).into(),
        text(slice, "/spec/nodeName").into(),
        text(slice, "/spec/driver").into(),
        text(slice, "/spec/pool/name").into(),
        age(slice, now).into(),
    ]
}

const STORAGE_VERSION_COLUMNS: &[Column] = &[
    NAME,
    Column::string("CommonEncodingVersion", docs::STORAGE_VERSION_COMMON_ENCODING),
    Column::string("StorageVersions", docs::STORAGE_VERSION_VERSIONS),
    AGE,
];

fn storage_version_cells(sv: &Value, now: Timestamp) -> Vec<Value> {
    let versions: Vec<String> = list(sv, "/status/storageVersions")
        .iter()
        .map(|v| format!("{}={}", text(v, "/apiServerID"), text(v, "/encodingVersion")))
        .collect();
    vec![
        name(sv).into(),
        opt_text(sv, "/status/commonEncodingVersion").unwrap_or("<unset>").into(),
        list_with_more(&versions, 3).into(),
        age(sv, now).into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn lease_shows_its_holder() {
        let lease = json!({"metadata": {"name": "kube-scheduler"}, "spec": {"holderIdentity": "cp-1_3b9e"}});
        assert_eq!(lease_cells(&lease, now())[1], "cp-1_3b9e");
        assert_eq!(lease_cells(&json!({"metadata": {"name": "free"}, "spec": {}}), now())[1], "");
    }

    #[test]
    fn priority_class_shows_value_default_and_policy() {
        let pc = json!({"metadata": {"name": "system-node-critical"}, "value": 2000001000, "preemptionPolicy": "PreemptLowerPriority"});
        assert_eq!(
            priority_class_cells(&pc, now()),
            [
                json!("system-node-critical"),
                json!(2000001000),
                json!(false),
                json!("<unknown>"),
                json!("PreemptLowerPriority")
            ]
        );
    }

    #[test]
    fn runtime_class_shows_its_handler() {
        let rc = json!({"metadata": {"name": "gvisor"}, "handler": "runsc"});
        assert_eq!(runtime_class_cells(&rc, now())[1], "runsc");
    }

    #[test]
    fn resource_claims_summarise_their_state() {
        let pending = json!({"metadata": {"name": "gpu"}});
        assert_eq!(resource_claim_state(&pending), "pending");
        let reserved = json!({"metadata": {"name": "gpu"}, "status": {"allocation": {}, "reservedFor": [{"resource": "pods", "name": "p"}]}});
        assert_eq!(resource_claim_state(&reserved), "allocated,reserved");
        let deleted = json!({"metadata": {"name": "gpu", "deletionTimestamp": "2024-05-01T11:00:00Z"}});
        assert_eq!(resource_claim_state(&deleted), "deleted");
    }

    #[test]
    fn resource_slices_and_storage_versions() {
        let slice = json!({"metadata": {"name": "n1-gpu"}, "spec": {"nodeName": "n1", "driver": "gpu.example.com", "pool": {"name": "n1"}}});
        assert_eq!(resource_slice_cells(&slice, now())[1..4], [json!("n1"), json!("gpu.example.com"), json!("n1")]);
        let sv = json!({"metadata": {"name": "apps.deployments"}, "status": {"commonEncodingVersion": "apps/v1",
            "storageVersions": [{"apiServerID": "a", "encodingVersion": "apps/v1"}]}});
        assert_eq!(storage_version_cells(&sv, now())[1..3], [json!("apps/v1"), json!("a=apps/v1")]);
    }
}

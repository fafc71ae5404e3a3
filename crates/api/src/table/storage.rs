//! Printers of volumes and storage.k8s.io: persistent volumes and claims, storage and volume
//! attributes classes, CSI drivers, nodes and capacities, volume attachments.

use jiff::Timestamp;
use serde_json::Value;

use super::format::access_modes;
use super::object::{age, count, deleting, flag, get, has, list, name, opt_flag, opt_text, text};
use super::quantity::quantity_cell;
use super::{AGE, Column, NAME, Printer, docs};

pub(super) const PRINTERS: &[Printer] = &[
    Printer::new("", "PersistentVolume", PV_COLUMNS, pv_cells),
    Printer::new("", "PersistentVolumeClaim", PVC_COLUMNS, pvc_cells),
    Printer::new("storage.k8s.io", "StorageClass", STORAGE_CLASS_COLUMNS, storage_class_cells),
    Printer::new("storage.k8s.io", "VolumeAttributesClass", VAC_COLUMNS, vac_cells),
    Printer::new("storage.k8s.io", "CSIDriver", CSI_DRIVER_COLUMNS, csi_driver_cells),
    Printer::new("storage.k8s.io", "CSINode", CSI_NODE_COLUMNS, csi_node_cells),
    Printer::new("storage.k8s.io", "VolumeAttachment", VOLUME_ATTACHMENT_COLUMNS, volume_attachment_cells),
    Printer::new("storage.k8s.io", "CSIStorageCapacity", CSI_CAPACITY_COLUMNS, csi_capacity_cells),
];

/// The beta annotation still takes precedence over `storageClassName`, as upstream's helpers
/// have it.
const BETA_STORAGE_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    get(obj, "/metadata/annotations").and_then(|a| a.get(key)).and_then(Value::as_str)
}

const PV_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Capacity", docs::PV_SPEC_CAPACITY),
    Column::string("Access Modes", docs::PV_SPEC_ACCESS_MODES),
    Column::string("Reclaim Policy", docs::PV_SPEC_RECLAIM_POLICY),
    Column::string("Status", docs::PV_STATUS_PHASE),
    Column::string("Claim", docs::PV_SPEC_CLAIM_REF),
    Column::string("StorageClass", "StorageClass of the pv"),
    Column::string("VolumeAttributesClass", "VolumeAttributesClass of the pv"),
    Column::string("Reason", docs::PV_STATUS_REASON),
    AGE,
    Column::string("VolumeMode", docs::PV_SPEC_VOLUME_MODE).wide(),
];

fn pv_cells(pv: &Value, now: Timestamp) -> Vec<Value> {
    let claim = if has(pv, "/spec/claimRef") {
        format!("{}/{}", text(pv, "/spec/claimRef/namespace"), text(pv, "/spec/claimRef/name"))
    } else {
        String::new()
    };
    let phase = if deleting(pv) { "Terminating" } else { text(pv, "/status/phase") };
    let class = annotation(pv, BETA_STORAGE_CLASS_ANNOTATION).unwrap_or_else(|| text(pv, "/spec/storageClassName"));
    vec![
        name(pv).into(),
        quantity_cell(get(pv, "/spec/capacity/storage")).into(),
        access_modes(list(pv, "/spec/accessModes")).into(),
        text(pv, "/spec/persistentVolumeReclaimPolicy").into(),
        phase.into(),
        claim.into(),
        class.into(),
        opt_text(pv, "/spec/volumeAttributesClassName").unwrap_or("<unset>").into(),
        text(pv, "/status/reason").into(),
        age(pv, now).into(),
        opt_text(pv, "/spec/volumeMode").unwrap_or("<unset>").into(),
    ]
}

const PVC_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Status", docs::PVC_STATUS_PHASE),
    Column::string("Volume", docs::PVC_SPEC_VOLUME_NAME),
    Column::string("Capacity", docs::PVC_STATUS_CAPACITY),
    Column::string("Access Modes", docs::PVC_STATUS_ACCESS_MODES),
    Column::string("StorageClass", "StorageClass of the pvc"),
    Column::string("VolumeAttributesClass", "VolumeAttributesClass of the pvc"),
    AGE,
    Column::string("VolumeMode", docs::PVC_SPEC_VOLUME_MODE).wide(),
];

fn pvc_cells(pvc: &Value, now: Timestamp) -> Vec<Value> {
    let phase = if deleting(pvc) { "Terminating" } else { text(pvc, "/status/phase") };
    let volume = text(pvc, "/spec/volumeName");
    // Capacity and access modes are the bound volume's, shown only once there is one.
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (quantity_cell(get(pvc, "/status/capacity/storage")), access_modes(list(pvc, "/status/accessModes")))
    };
    let class = annotation(pvc, BETA_STORAGE_CLASS_ANNOTATION).unwrap_or_else(|| text(pvc, "/spec/storageClassName"));
    vec![
        name(pvc).into(),
        phase.into(),
        volume.into(),
        capacity.into(),
        modes.into(),
        class.into(),
        opt_text(pvc, "/spec/volumeAttributesClassName").unwrap_or("<unset>").into(),
        age(pvc, now).into(),
        opt_text(pvc, "/spec/volumeMode").unwrap_or("<unset>").into(),
    ]
}

const STORAGE_CLASS_COLUMNS: &[Column] = &[
    NAME,
    Column::string("Provisioner", docs::STORAGE_CLASS_PROVISIONER),
    Column::string("ReclaimPolicy", docs::STORAGE_CLASS_RECLAIM_POLICY),
    Column::string("VolumeBindingMode", docs::STORAGE_CLASS_BINDING_MODE),
    Column::string("AllowVolumeExpansion", docs::STORAGE_CLASS_EXPANSION),
    AGE,
];

/// The default class is marked in its name, by the GA or the beta annotation.
fn is_default_class(obj: &Value) -> bool {
    ["storageclass.kubernetes.io/is-default-class", "storageclass.beta.kubernetes.io/is-default-class"]
        .iter()
        .any(|key| annotation(obj, key) == Some("true"))
}

fn storage_class_cells(sc: &Value, now: Timestamp) -> Vec<Value> {
    let mut display = name(sc).to_string();
    if is_default_class(sc) {
        display.push_str(" (default)");
    }
    vec![
        display.into(),
        text(sc, "/provisioner").into(),
        opt_text(sc, "/reclaimPolicy").unwrap_or("Delete").into(),
        opt_text(sc, "/volumeBindingMode").unwrap_or("Immediate").into(),
        flag(sc, "/allowVolumeExpansion").into(),
        age(sc, now).into(),
    ]
}

const VAC_COLUMNS: &[Column] = &[NAME, Column::string("DriverName", docs::VAC_DRIVER_NAME), AGE];

fn vac_cells(vac: &Value, now: Timestamp) -> Vec<Value> {
    let mut display = name(vac).to_string();
    if annotation(vac, "volumeattributesclass.alpha.kubernetes.io/is-default-class") == Some("true") {
        display.push_str(" (default)");
    }
    vec![display.into(), text(vac, "/driverName").into(), age(vac, now).into()]
}

const CSI_DRIVER_COLUMNS: &[Column] = &[
    NAME,
    Column::boolean("AttachRequired", docs::CSI_DRIVER_ATTACH_REQUIRED),
    Column::boolean("PodInfoOnMount", docs::CSI_DRIVER_POD_INFO_ON_MOUNT),
    Column::boolean("StorageCapacity", docs::CSI_DRIVER_STORAGE_CAPACITY),
    Column::string("TokenRequests", docs::CSI_DRIVER_TOKEN_REQUESTS),
    Column::boolean("RequiresRepublish", docs::CSI_DRIVER_REQUIRES_REPUBLISH),
    Column::string("Modes", docs::CSI_DRIVER_MODES),
    AGE,
];

fn csi_driver_cells(driver: &Value, now: Timestamp) -> Vec<Value> {
    let modes: Vec<&str> = list(driver, "/spec/volumeLifecycleModes").iter().filter_map(Value::as_str).collect();
    let modes = if modes.is_empty() { "<none>".to_string() } else { modes.join(",") };
    let token_requests = match get(driver, "/spec/tokenRequests").and_then(Value::as_array) {
        Some(requests) => requests.iter().map(|r| text(r, "/audience")).collect::<Vec<_>>().join(","),
        None => "<unset>".to_string(),
    };
    vec![
        name(driver).into(),
        // Drivers need attaching unless they say otherwise.
        opt_flag(driver, "/spec/attachRequired").unwrap_or(true).into(),
        flag(driver, "/spec/podInfoOnMount").into(),
        flag(driver, "/spec/storageCapacity").into(),
        token_requests.into(),
        flag(driver, "/spec/requiresRepublish").into(),
        modes.into(),
        age(driver, now).into(),
    ]
}

const CSI_NODE_COLUMNS: &[Column] =
    &[NAME, Column::integer("Drivers", "Drivers indicates the number of CSI drivers registered on the node"), AGE];

fn csi_node_cells(node: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(node).into(), count(node, "/spec/drivers").into(), age(node, now).into()]
}

const VOLUME_ATTACHMENT_COLUMNS: &[Column] = &[
    NAME,
    // Upstream marks this column, too, as holding a name.
    Column::string("Attacher", docs::VA_SPEC_ATTACHER).named(),
    Column::string("PV", docs::VA_SOURCE_PV_NAME),
    Column::string("Node", docs::VA_SPEC_NODE_NAME),
    Column::boolean("Attached", docs::VA_STATUS_ATTACHED),
    AGE,
];

fn volume_attachment_cells(va: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(va).into(),
        text(va, "/spec/attacher").into(),
        text(va, "/spec/source/persistentVolumeName").into(),
        text(va, "/spec/nodeName").into(),
        flag(va, "/status/attached").into(),
        age(va, now).into(),
    ]
}

const CSI_CAPACITY_COLUMNS: &[Column] = &[
    NAME,
    Column::string("StorageClassName", docs::CSI_CAPACITY_STORAGE_CLASS),
    Column::string("Capacity", docs::CSI_CAPACITY_CAPACITY),
];

fn csi_capacity_cells(capacity: &Value, _now: Timestamp) -> Vec<Value> {
    let amount = match get(capacity, "/capacity") {
        Some(q) => quantity_cell(Some(q)),
        None => "<unset>".to_string(),
    };
    vec![name(capacity).into(), text(capacity, "/storageClassName").into(), amount.into()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn bound_pv_shows_capacity_modes_claim_and_class() {
        let pv = json!({
            "metadata": {"name": "pvc-1f2e", "creationTimestamp": "2024-04-30T12:00:00Z"},
            "spec": {"capacity": {"storage": "10240Mi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Delete",
                "claimRef": {"namespace": "default", "name": "data-db-0"}, "storageClassName": "local-path", "volumeMode": "Filesystem"},
            "status": {"phase": "Bound"},
        });
        assert_eq!(
            pv_cells(&pv, now()),
            [
                json!("pvc-1f2e"),
                json!("10Gi"),
                json!("RWO"),
                json!("Delete"),
                json!("Bound"),
                json!("default/data-db-0"),
                json!("local-path"),
                json!("<unset>"),
                json!(""),
                json!("24h"),
                json!("Filesystem")
            ]
        );
    }

    #[test]
    fn deleted_pv_is_terminating_and_beta_annotation_wins() {
        let pv = json!({"metadata": {"name": "p", "deletionTimestamp": "2024-05-01T11:00:00Z",
            "annotations": {"volume.beta.kubernetes.io/storage-class": "old"}}, "spec": {"storageClassName": "new"}, "status": {"phase": "Released"}});
        let cells = pv_cells(&pv, now());
        assert_eq!(cells[1], "0");
        assert_eq!(cells[4], "Terminating");
        assert_eq!(cells[5], "");
        assert_eq!(cells[6], "old");
    }

    #[test]
    fn pending_claim_hides_capacity_until_bound() {
        let mut pvc = json!({
            "metadata": {"name": "data-db-0"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "local-path"},
            "status": {"phase": "Pending"},
        });
        assert_eq!(
            pvc_cells(&pvc, now())[1..7],
            [json!("Pending"), json!(""), json!(""), json!(""), json!("local-path"), json!("<unset>")]
        );
        pvc["spec"]["volumeName"] = json!("pvc-1f2e");
        pvc["status"] =
            json!({"phase": "Bound", "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"]});
        assert_eq!(pvc_cells(&pvc, now())[1..5], [json!("Bound"), json!("pvc-1f2e"), json!("1Gi"), json!("RWO,ROX")]);
    }

    #[test]
    fn default_storage_class_is_marked_and_defaults_filled() {
        let sc = json!({"metadata": {"name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"});
        assert_eq!(
            storage_class_cells(&sc, now())[..5],
            [
                json!("local-path (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false)
            ]
        );
    }

    #[test]
    fn csi_driver_fills_upstream_defaults() {
        let driver = json!({"metadata": {"name": "hostpath.csi.k8s.io"}, "spec": {"podInfoOnMount": true, "volumeLifecycleModes": ["Persistent", "Ephemeral"],
            "tokenRequests": [{"audience": "vault"}, {"audience": "aws"}]}});
        assert_eq!(
            csi_driver_cells(&driver, now())[1..7],
            [json!(true), json!(true), json!(false), json!("vault,aws"), json!(false), json!("Persistent,Ephemeral")]
        );
        let bare = json!({"metadata": {"name": "d"}});
        assert_eq!(csi_driver_cells(&bare, now())[4..7], [json!("<unset>"), json!(false), json!("<none>")]);
    }

    #[test]
    fn csi_nodes_attachments_and_capacities() {
        let node = json!({"metadata": {"name": "n1"}, "spec": {"drivers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(csi_node_cells(&node, now())[1], 2);
        let va = json!({"metadata": {"name": "csi-1"}, "spec": {"attacher": "hostpath.csi.k8s.io", "nodeName": "n1", "source": {"persistentVolumeName": "pv-1"}}, "status": {"attached": true}});
        assert_eq!(
            volume_attachment_cells(&va, now())[1..5],
            [json!("hostpath.csi.k8s.io"), json!("pv-1"), json!("n1"), json!(true)]
        );
        let cap = json!({"metadata": {"name": "c"}, "storageClassName": "fast", "capacity": "2048Mi"});
        assert_eq!(csi_capacity_cells(&cap, now())[1..], [json!("fast"), json!("2Gi")]);
        assert_eq!(csi_capacity_cells(&json!({"metadata": {"name": "c"}}), now())[2], "<unset>");
    }
}

//! The reconciler (upstream's `attachdetach/reconciler`): compares a node's desired attachments
//! with its VolumeAttachment objects, the actual state, and says what to do. Attaching is
//! creating the VolumeAttachment; the driver's attacher sets `status.attached`. Detaching is
//! deleting it, only once the kubelet no longer lists the volume in `status.volumesInUse` (it
//! is unmounted), unless the node is gone or detaching is forced; the volume leaves the node's
//! `status.volumesAttached` before the object is deleted, as upstream's
//! `RemoveVolumeFromReportAsAttached` comes before `Detach`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{AttachedVolume, Node};
use k8s_openapi::api::storage::v1::{VolumeAttachment, VolumeAttachmentSource, VolumeAttachmentSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::desired_state::Attachment;

/// What a sync of one node does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// VolumeAttachments to create.
    pub create: Vec<VolumeAttachment>,
    /// VolumeAttachments to delete now.
    pub detach: Vec<String>,
    /// VolumeAttachments no longer wanted whose volume is still mounted.
    pub waiting: Vec<String>,
    /// The node's `status.volumesAttached`, sorted by name.
    pub attached: Vec<AttachedVolume>,
    /// Wanted VolumeAttachments attached and not reported on the node yet.
    pub newly_attached: Vec<String>,
}

/// The VolumeAttachment attaching `a` to `node` (upstream's CSI attacher's `Attach`).
pub fn attachment_object(name: &str, node: &str, a: &Attachment) -> VolumeAttachment {
    VolumeAttachment {
        metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() },
        spec: VolumeAttachmentSpec {
            attacher: a.driver.clone(),
            node_name: node.to_string(),
            source: VolumeAttachmentSource { persistent_volume_name: Some(a.volume.clone()), ..Default::default() },
        },
        status: None,
    }
}

pub fn is_attached(va: &VolumeAttachment) -> bool {
    va.status.as_ref().is_some_and(|s| s.attached)
}

/// Plans the sync of `node_name` (`node` is `None` when it is gone). `attachments` are the
/// VolumeAttachments for the node; `unique_name` gives the unique volume name
/// (`kubernetes.io/csi/<driver>^<handle>`) of one that is not wanted, `None` when its volume is
/// gone; `forced` says whether one may be detached although still in use.
pub fn plan(
    node_name: &str,
    node: Option<&Node>,
    desired: &BTreeMap<String, Attachment>,
    attachments: &[Arc<VolumeAttachment>],
    unique_name: impl Fn(&VolumeAttachment) -> Option<String>,
    forced: impl Fn(&str) -> bool,
) -> Plan {
    let status = node.and_then(|n| n.status.as_ref());
    let in_use: HashSet<&str> =
        status.and_then(|s| s.volumes_in_use.as_ref()).into_iter().flatten().map(String::as_str).collect();
    let reported: HashSet<&str> =
        status.and_then(|s| s.volumes_attached.as_ref()).into_iter().flatten().map(|v| v.name.as_str()).collect();
    let existing: HashSet<String> = attachments.iter().map(|va| va.name_any()).collect();
    let mut plan = Plan {
        create: desired
            .iter()
            .filter(|(name, _)| !existing.contains(*name))
            .map(|(name, a)| attachment_object(name, node_name, a))
            .collect(),
        ..Default::default()
    };
    for va in attachments {
        let name = va.name_any();
        if va.metadata.deletion_timestamp.is_some() {
            // Detaching already; a wanted one is made again once it is gone.
            continue;
        }
        if let Some(a) = desired.get(&name) {
            if is_attached(va) {
                let unique = tug_csi::volume_unique_name(&a.driver, &a.handle);
                if !reported.contains(unique.as_str()) {
                    plan.newly_attached.push(name);
                }
                plan.attached.push(AttachedVolume { name: unique, device_path: String::new() });
            }
            continue;
        }
        let unique = unique_name(va);
        match unique {
            Some(unique) if node.is_some() && in_use.contains(unique.as_str()) && !forced(&name) => {
                if is_attached(va) {
                    plan.attached.push(AttachedVolume { name: unique, device_path: String::new() });
                }
                plan.waiting.push(name);
            }
            _ => plan.detach.push(name),
        }
    }
    plan.attached.sort_by(|a, b| a.name.cmp(&b.name));
    plan
}

/// The multi-attach error for a pod in `namespace` wanting `volume` while `users` (namespace,
/// name) use it on other nodes, worded as upstream's: names only from the pod's own namespace.
pub fn multi_attach_message(volume: &str, namespace: &str, users: &[(String, String)]) -> String {
    let local: Vec<&str> = users.iter().filter(|(ns, _)| ns == namespace).map(|(_, name)| name.as_str()).collect();
    let elsewhere = users.len() - local.len();
    let detail = match (local.is_empty(), elsewhere) {
        (true, 0) => "Volume is already exclusively attached to one node and can't be attached to another".to_string(),
        (true, n) => format!("Volume is already used by {n} pod(s) in different namespaces"),
        (false, 0) => format!("Volume is already used by pod(s) {}", local.join(", ")),
        (false, n) => {
            format!("Volume is already used by pod(s) {} and {n} pod(s) in different namespaces", local.join(", "))
        }
    };
    format!("Multi-Attach error for volume {volume:?} {detail}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn want(volume: &str) -> Attachment {
        Attachment { volume: volume.into(), driver: "d".into(), handle: format!("h-{volume}"), pods: vec![] }
    }

    fn va(name: &str, volume: &str, attached: bool, deleting: bool) -> Arc<VolumeAttachment> {
        let mut v: VolumeAttachment = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"attacher": "d", "nodeName": "n1", "source": {"persistentVolumeName": volume}},
            "status": {"attached": attached}
        }))
        .unwrap();
        if deleting {
            v.metadata.deletion_timestamp = Some(serde_json::from_value(json!("2026-11-27T00:00:00Z")).unwrap());
        }
        Arc::new(v)
    }

    fn node(in_use: &[&str], attached: &[&str]) -> Node {
        let attached: Vec<_> = attached.iter().map(|n| json!({"name": n, "devicePath": ""})).collect();
        serde_json::from_value(json!({"metadata": {"name": "n1"},
            "status": {"volumesInUse": in_use, "volumesAttached": attached}}))
        .unwrap()
    }

    fn unique(va: &VolumeAttachment) -> Option<String> {
        let pv = va.spec.source.persistent_volume_name.as_deref()?;
        Some(tug_csi::volume_unique_name("d", &format!("h-{pv}")))
    }

    #[test]
    fn a_multi_attach_error_names_only_the_pods_of_the_asking_pods_namespace() {
        let users =
            |list: &[(&str, &str)]| list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        assert_eq!(
            multi_attach_message("pv1", "ns", &users(&[("ns", "a"), ("ns", "b"), ("other", "c")])),
            "Multi-Attach error for volume \"pv1\" Volume is already used by pod(s) a, b and 1 pod(s) in different namespaces"
        );
        assert_eq!(
            multi_attach_message("pv1", "ns", &users(&[("other", "c")])),
            "Multi-Attach error for volume \"pv1\" Volume is already used by 1 pod(s) in different namespaces"
        );
        assert_eq!(
            multi_attach_message("pv1", "ns", &[]),
            "Multi-Attach error for volume \"pv1\" Volume is already exclusively attached to one node and can't be attached to another"
        );
    }

    #[test]
    fn a_wanted_volume_without_an_attachment_gets_one_naming_driver_node_and_volume() {
        let desired = BTreeMap::from([("csi-a".to_string(), want("pv1"))]);
        let p = plan("n1", Some(&node(&[], &[])), &desired, &[], unique, |_| false);
        assert_eq!(p.create, vec![attachment_object("csi-a", "n1", &want("pv1"))]);
        let spec = &p.create[0].spec;
        assert_eq!((spec.attacher.as_str(), spec.node_name.as_str()), ("d", "n1"));
        assert_eq!(spec.source.persistent_volume_name.as_deref(), Some("pv1"));
        assert!(p.attached.is_empty() && p.detach.is_empty());
    }

    #[test]
    fn only_attached_volumes_are_reported_on_the_node_and_new_ones_are_said_once() {
        let desired = BTreeMap::from([("csi-a".to_string(), want("pv1")), ("csi-b".to_string(), want("pv2"))]);
        let vas = [va("csi-a", "pv1", true, false), va("csi-b", "pv2", false, false)];
        let p = plan("n1", Some(&node(&[], &[])), &desired, &vas, unique, |_| false);
        assert!(p.create.is_empty());
        let u1 = tug_csi::volume_unique_name("d", "h-pv1");
        assert_eq!(p.attached, vec![AttachedVolume { name: u1.clone(), device_path: String::new() }]);
        assert_eq!(p.newly_attached, ["csi-a"]);
        let p = plan("n1", Some(&node(&[], &[&u1])), &desired, &vas, unique, |_| false);
        assert!(p.newly_attached.is_empty());
    }

    #[test]
    fn an_unwanted_volume_is_detached_only_once_the_node_stops_using_it() {
        let vas = [va("csi-a", "pv1", true, false)];
        let u1 = tug_csi::volume_unique_name("d", "h-pv1");
        let mounted = plan("n1", Some(&node(&[&u1], &[&u1])), &BTreeMap::new(), &vas, unique, |_| false);
        assert_eq!(mounted.waiting, ["csi-a"]);
        assert!(mounted.detach.is_empty());
        assert_eq!(mounted.attached.len(), 1, "still reported while mounted");
        let unmounted = plan("n1", Some(&node(&[], &[&u1])), &BTreeMap::new(), &vas, unique, |_| false);
        assert_eq!(unmounted.detach, ["csi-a"]);
        assert!(unmounted.attached.is_empty(), "leaves the node's report before it is deleted");
        let forced = plan("n1", Some(&node(&[&u1], &[&u1])), &BTreeMap::new(), &vas, unique, |_| true);
        assert_eq!(forced.detach, ["csi-a"]);
    }

    #[test]
    fn attachments_of_a_node_that_is_gone_are_detached_and_those_being_deleted_are_left_alone() {
        let vas = [va("csi-a", "pv1", true, false), va("csi-b", "pv2", true, true)];
        let p = plan("n1", None, &BTreeMap::new(), &vas, unique, |_| false);
        assert_eq!(p.detach, ["csi-a"]);
        let desired = BTreeMap::from([("csi-b".to_string(), want("pv2"))]);
        let p = plan("n1", Some(&node(&[], &[])), &desired, &vas[1..], unique, |_| false);
        assert!(p.create.is_empty() && p.detach.is_empty() && p.attached.is_empty());
    }
}

//! The desired state of the world (upstream's `cache.DesiredStateOfWorld`, filled by its pod
//! handlers and populator): which CSI volumes a node needs attached, from the pods scheduled to
//! it. A volume is wanted for a pod that is not terminated, through a claim that is bound to a
//! PersistentVolume with `spec.csi` whose driver needs attaching (no CSIDriver object, or one
//! with `attachRequired` not false). Inline `csi` volumes are ephemeral and never attached, as
//! upstream's CSI plugin says.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ContainerStatus, Node, PersistentVolume, PersistentVolumeClaim, Pod, Volume};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::ResourceExt;

use crate::volume::ephemeral;

/// The node annotation by which the kubelet leaves attaching to this controller (upstream's
/// `ControllerManagedAttachAnnotation`); nodes without it attach for themselves.
pub const CONTROLLER_MANAGED_ATTACH_ANNOTATION: &str = "volumes.kubernetes.io/controller-managed-attach-detach";

/// What the desired state reads from the caches.
pub trait Lister {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>>;
    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>>;
    fn driver(&self, name: &str) -> Option<Arc<CSIDriver>>;
}

/// A volume a node needs attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The PersistentVolume's name (the VolumeAttachment's `source.persistentVolumeName`).
    pub volume: String,
    pub driver: String,
    pub handle: String,
    /// The pods wanting it, `namespace/name`, for events.
    pub pods: Vec<(String, String)>,
}

/// Whether this controller attaches volumes for `node`.
pub fn is_controller_managed(node: &Node) -> bool {
    node.annotations().get(CONTROLLER_MANAGED_ATTACH_ANNOTATION).map(String::as_str) == Some("true")
}

/// The node a pod is scheduled to.
pub fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref().filter(|n| !n.is_empty())
}

/// Upstream's `IsPodTerminated`: finished, or being deleted with no container running.
pub fn is_terminated(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded")) {
        return true;
    }
    // As upstream's `notRunning`: a container is running unless its state says terminated or
    // waiting.
    let none_running = |list: Option<&Vec<ContainerStatus>>| {
        list.into_iter()
            .flatten()
            .all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some() || s.waiting.is_some()))
    };
    pod.metadata.deletion_timestamp.is_some()
        && none_running(status.and_then(|s| s.init_container_statuses.as_ref()))
        && none_running(status.and_then(|s| s.container_statuses.as_ref()))
        && none_running(status.and_then(|s| s.ephemeral_container_statuses.as_ref()))
}

/// The claim behind a pod volume: a `persistentVolumeClaim` one, or the claim made for an
/// `ephemeral` one when the pod owns it.
fn claim_of(pod: &Pod, volume: &Volume, lister: &impl Lister) -> Option<Arc<PersistentVolumeClaim>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(source) = &volume.persistent_volume_claim {
        return lister.claim(&ns, &source.claim_name);
    }
    volume.ephemeral.as_ref()?;
    lister.claim(&ns, &ephemeral::claim_name(pod, &volume.name)).filter(|c| ephemeral::is_for_pod(c, pod))
}

/// The attachable CSI volume behind a pod volume (upstream's `CreateVolumeSpec` followed by the
/// CSI plugin's `CanAttach`), `None` when there is nothing to attach or not yet (claim unbound).
fn attachable(pod: &Pod, volume: &Volume, lister: &impl Lister) -> Option<(String, String, String)> {
    let claim = claim_of(pod, volume, lister)?;
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let pv_name = claim.spec.as_ref()?.volume_name.as_deref().filter(|n| !n.is_empty())?;
    if !bound {
        return None;
    }
    let pv = lister.volume(pv_name)?;
    let spec = pv.spec.as_ref()?;
    // A volume bound to another claim of the same name is not this claim's.
    if spec.claim_ref.as_ref().and_then(|r| r.uid.as_ref()) != claim.metadata.uid.as_ref() {
        return None;
    }
    let csi = spec.csi.as_ref()?;
    let attach_required = lister.driver(&csi.driver).is_none_or(|d| d.spec.attach_required != Some(false));
    attach_required.then(|| (pv_name.to_string(), csi.driver.clone(), csi.volume_handle.clone()))
}

/// The volumes `node` needs attached, by VolumeAttachment name, from `pods` (those scheduled to
/// it). Nothing for a node that is gone or attaches for itself.
pub fn desired_for_node<'a>(
    node: Option<&Node>,
    pods: impl IntoIterator<Item = &'a Pod>,
    lister: &impl Lister,
) -> BTreeMap<String, Attachment> {
    let mut out: BTreeMap<String, Attachment> = BTreeMap::new();
    let Some(node) = node.filter(|n| is_controller_managed(n)) else { return out };
    let node_name = node.name_any();
    for pod in pods {
        if node_of(pod) != Some(node_name.as_str()) || is_terminated(pod) {
            continue;
        }
        let pod_key = (pod.namespace().unwrap_or_default(), pod.name_any());
        for volume in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
            let Some((pv, driver, handle)) = attachable(pod, volume, lister) else { continue };
            let name = tug_csi::attachment_name(&handle, &driver, &node_name);
            let entry = out.entry(name).or_insert_with(|| Attachment { volume: pv, driver, handle, pods: Vec::new() });
            if !entry.pods.contains(&pod_key) {
                entry.pods.push(pod_key.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::{Value, json};

    use super::*;

    #[derive(Default)]
    struct Objects {
        claims: HashMap<(String, String), Arc<PersistentVolumeClaim>>,
        volumes: HashMap<String, Arc<PersistentVolume>>,
        drivers: HashMap<String, Arc<CSIDriver>>,
    }

    impl Lister for Objects {
        fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
            self.claims.get(&(namespace.to_string(), name.to_string())).cloned()
        }
        fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
            self.volumes.get(name).cloned()
        }
        fn driver(&self, name: &str) -> Option<Arc<CSIDriver>> {
            self.drivers.get(name).cloned()
        }
    }

    impl Objects {
        /// A claim `ns/claim` bound to the CSI volume `pv` with handle `h-<pv>` of `driver`.
        fn bound(mut self, claim: &str, pv: &str, driver: &str) -> Self {
            let uid = format!("uid-{claim}");
            self.claims.insert(
                ("ns".into(), claim.into()),
                Arc::new(from(json!({
                    "metadata": {"name": claim, "namespace": "ns", "uid": uid},
                    "spec": {"volumeName": pv},
                    "status": {"phase": "Bound"}
                }))),
            );
            self.volumes.insert(
                pv.into(),
                Arc::new(from(json!({
                    "metadata": {"name": pv},
                    "spec": {"csi": {"driver": driver, "volumeHandle": format!("h-{pv}")},
                             "claimRef": {"name": claim, "namespace": "ns", "uid": uid}}
                }))),
            );
            self
        }
    }

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn node(managed: bool) -> Node {
        let annotations = if managed { json!({CONTROLLER_MANAGED_ATTACH_ANNOTATION: "true"}) } else { json!({}) };
        from(json!({"metadata": {"name": "n1", "annotations": annotations}}))
    }

    fn pod(name: &str, node: &str, volumes: Value) -> Pod {
        from(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}], "volumes": volumes}
        }))
    }

    fn claim_volume(claim: &str) -> Value {
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}])
    }

    #[test]
    fn a_bound_csi_claim_of_a_pod_on_a_managed_node_is_wanted_under_upstreams_name() {
        let objects = Objects::default().bound("c1", "pv1", "d.example");
        let pods = [pod("p", "n1", claim_volume("c1")), pod("q", "n1", claim_volume("c1"))];
        let desired = desired_for_node(Some(&node(true)), &pods, &objects);
        let name = tug_csi::attachment_name("h-pv1", "d.example", "n1");
        assert!(name.starts_with("csi-") && name.len() == 4 + 64, "{name}");
        assert_eq!(
            desired.get(&name),
            Some(&Attachment {
                volume: "pv1".into(),
                driver: "d.example".into(),
                handle: "h-pv1".into(),
                pods: vec![("ns".into(), "p".into()), ("ns".into(), "q".into())],
            })
        );
        assert_eq!(desired.len(), 1);
    }

    #[test]
    fn nothing_is_wanted_for_a_node_that_is_gone_or_attaches_for_itself_or_pods_elsewhere() {
        let objects = Objects::default().bound("c1", "pv1", "d.example");
        let pods = [pod("p", "n1", claim_volume("c1"))];
        assert!(desired_for_node(None, &pods, &objects).is_empty());
        assert!(desired_for_node(Some(&node(false)), &pods, &objects).is_empty());
        let elsewhere = [pod("p", "n2", claim_volume("c1"))];
        assert!(desired_for_node(Some(&node(true)), &elsewhere, &objects).is_empty());
    }

    #[test]
    fn a_driver_with_attach_required_false_is_not_attached_and_one_without_an_object_is() {
        let mut objects = Objects::default().bound("c1", "pv1", "skip.example").bound("c2", "pv2", "none.example");
        objects.drivers.insert(
            "skip.example".into(),
            Arc::new(from(json!({"metadata": {"name": "skip.example"}, "spec": {"attachRequired": false}}))),
        );
        let pods = [pod(
            "p",
            "n1",
            json!([{"name": "a", "persistentVolumeClaim": {"claimName": "c1"}},
                   {"name": "b", "persistentVolumeClaim": {"claimName": "c2"}}]),
        )];
        let desired = desired_for_node(Some(&node(true)), &pods, &objects);
        assert_eq!(desired.values().map(|a| a.volume.as_str()).collect::<Vec<_>>(), ["pv2"]);
    }

    #[test]
    fn unbound_claims_foreign_volumes_and_non_csi_volumes_are_not_attached() {
        let mut objects = Objects::default().bound("c1", "pv1", "d.example").bound("c2", "pv2", "d.example");
        // c1 still pending.
        let mut c1 = (*objects.claims[&("ns".into(), "c1".into())]).clone();
        c1.status = None;
        objects.claims.insert(("ns".into(), "c1".into()), Arc::new(c1));
        // pv2 bound to another claim of the same name.
        let mut pv2 = (*objects.volumes["pv2"]).clone();
        pv2.spec.as_mut().unwrap().claim_ref.as_mut().unwrap().uid = Some("other".into());
        objects.volumes.insert("pv2".into(), Arc::new(pv2));
        // pv3 is a hostPath volume.
        objects = objects.bound("c3", "pv3", "d.example");
        let mut pv3 = (*objects.volumes["pv3"]).clone();
        pv3.spec.as_mut().unwrap().csi = None;
        objects.volumes.insert("pv3".into(), Arc::new(pv3));
        let pods = [pod(
            "p",
            "n1",
            json!([{"name": "a", "persistentVolumeClaim": {"claimName": "c1"}},
                   {"name": "b", "persistentVolumeClaim": {"claimName": "c2"}},
                   {"name": "c", "persistentVolumeClaim": {"claimName": "c3"}},
                   {"name": "d", "persistentVolumeClaim": {"claimName": "missing"}},
                   {"name": "e", "csi": {"driver": "d.example"}}]),
        )];
        assert!(desired_for_node(Some(&node(true)), &pods, &objects).is_empty());
    }

    #[test]
    fn an_ephemeral_volume_is_attached_through_the_claim_the_pod_owns() {
        let mut objects = Objects::default().bound("p-scratch", "pv1", "d.example");
        let pods = [pod("p", "n1", json!([{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}]))];
        assert!(desired_for_node(Some(&node(true)), &pods, &objects).is_empty(), "claim not owned by the pod");
        let mut claim = (*objects.claims[&("ns".into(), "p-scratch".into())]).clone();
        claim.metadata.owner_references = Some(vec![from(
            json!({"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "uid-p", "controller": true}),
        )]);
        objects.claims.insert(("ns".into(), "p-scratch".into()), Arc::new(claim));
        let desired = desired_for_node(Some(&node(true)), &pods, &objects);
        assert_eq!(desired.values().map(|a| a.volume.as_str()).collect::<Vec<_>>(), ["pv1"]);
    }

    #[test]
    fn a_terminated_pod_wants_nothing_but_a_deleted_one_with_a_running_container_still_does() {
        let objects = Objects::default().bound("c1", "pv1", "d.example");
        let mut done = pod("p", "n1", claim_volume("c1"));
        done.status = Some(from(json!({"phase": "Succeeded"})));
        assert!(desired_for_node(Some(&node(true)), [&done], &objects).is_empty());
        let mut deleting = pod("p", "n1", claim_volume("c1"));
        deleting.metadata.deletion_timestamp = Some(from(json!("2026-11-27T00:00:00Z")));
        deleting.status =
            Some(from(json!({"phase": "Running", "containerStatuses": [{"name": "c", "image": "i", "imageID": "",
                "ready": true, "restartCount": 0, "state": {"running": {}}}]})));
        assert_eq!(desired_for_node(Some(&node(true)), [&deleting], &objects).len(), 1);
        deleting.status = Some(from(json!({"phase": "Running", "containerStatuses": [{"name": "c", "image": "i",
            "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0}}}]})));
        assert!(desired_for_node(Some(&node(true)), [&deleting], &objects).is_empty());
    }
}

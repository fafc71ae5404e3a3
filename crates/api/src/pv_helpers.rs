//! What a PersistentVolume and a PersistentVolumeClaim mean to each other (upstream's
//! `component-helpers/storage/volume/pv_helpers.go`): the claim's class, whether a volume's
//! access modes, volume mode and class fit a claim, and the best volume for a claim.
//!
//! Both the PersistentVolume controller (binding) and the scheduler's VolumeBinding plugin
//! (which volumes a node could use) decide with these, as upstream shares them, so they live
//! here at the bottom of the crate graph.

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};

use crate::selector::LabelSelector;

/// Set on a claim and a volume once the controller has bound them.
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// Set on a claim or volume whose binding the controller (not the user) made.
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The plugin or external provisioner that created a volume.
pub const ANN_DYNAMICALLY_PROVISIONED: &str = "pv.kubernetes.io/provisioned-by";
/// The node the scheduler chose for a claim's first consumer (delayed binding).
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Which provisioner is to provision a claim.
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// The class of a claim or volume before `storageClassName` existed; still honoured.
pub const ANN_BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
/// Marks the StorageClass new claims without a class get.
pub const ANN_IS_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
pub const ANN_BETA_IS_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// The `volumeBindingMode` that delays binding until a pod uses the claim.
pub const WAIT_FOR_FIRST_CONSUMER: &str = "WaitForFirstConsumer";

fn annotation<'a>(meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

/// Whether `meta` carries annotation `key` (any value).
pub fn has_annotation(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, key: &str) -> bool {
    annotation(meta, key).is_some()
}

/// The claim's class: the beta annotation wins over `storageClassName`; "" is no class.
pub fn claim_class(claim: &PersistentVolumeClaim) -> String {
    if let Some(c) = annotation(&claim.metadata, ANN_BETA_STORAGE_CLASS) {
        return c.to_string();
    }
    claim.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default()
}

/// The volume's class, as [`claim_class`].
pub fn volume_class(volume: &PersistentVolume) -> String {
    if let Some(c) = annotation(&volume.metadata, ANN_BETA_STORAGE_CLASS) {
        return c.to_string();
    }
    volume.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default()
}

/// Whether a class's StorageClass is marked default (the annotation, or its beta name, "true").
pub fn is_default_class(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    annotation(meta, ANN_IS_DEFAULT_CLASS) == Some("true")
        || annotation(meta, ANN_BETA_IS_DEFAULT_CLASS) == Some("true")
}

/// The storage a claim requests, in bytes (0 when it says none).
pub fn requested_bytes(claim: &PersistentVolumeClaim) -> f64 {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| crate::quantity::parse(&q.0))
        .unwrap_or(0.0)
}

/// A volume's capacity in bytes (0 when it says none).
pub fn capacity_bytes(volume: &PersistentVolume) -> f64 {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| crate::quantity::parse(&q.0))
        .unwrap_or(0.0)
}

/// Whether the volume offers every access mode the claim asks for (upstream's
/// `CheckAccessModes`).
pub fn access_modes_fit(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> bool {
    let wanted = claim.spec.as_ref().and_then(|s| s.access_modes.as_ref());
    let offered = volume.spec.as_ref().and_then(|s| s.access_modes.clone()).unwrap_or_default();
    wanted.into_iter().flatten().all(|m| offered.contains(m))
}

/// Whether the claim and volume disagree on `volumeMode` (unset is `Filesystem`).
pub fn volume_mode_mismatch(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> bool {
    let claim_mode = claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref()).unwrap_or("Filesystem");
    let volume_mode = volume.spec.as_ref().and_then(|s| s.volume_mode.as_deref()).unwrap_or("Filesystem");
    claim_mode != volume_mode
}

/// Whether the volume's `claimRef` names this claim (and, if it has a uid, this very claim).
pub fn is_volume_bound_to_claim(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else { return false };
    if r.name != claim.metadata.name || r.namespace != claim.metadata.namespace {
        return false;
    }
    match r.uid.as_deref() {
        None | Some("") => true,
        uid => uid == claim.metadata.uid.as_deref(),
    }
}

/// The `claimRef` a volume bound to `claim` carries.
pub fn claim_reference(claim: &PersistentVolumeClaim) -> ObjectReference {
    let meta = &claim.metadata;
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

fn phase(volume: &PersistentVolume) -> &str {
    volume.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

/// Upstream's `FindMatchingVolume`: a volume pre-bound to the claim wins; otherwise the
/// smallest Available, unclaimed volume with enough capacity, the claim's class, labels its
/// selector accepts, the claim's volume mode and all its access modes. `node_fits` is the
/// scheduler's node-affinity check (`None` for the controller); with `delay_binding` and no
/// node, only pre-bound volumes match, since the scheduler chooses the others.
pub fn find_matching_volume<'a>(
    claim: &PersistentVolumeClaim,
    volumes: impl IntoIterator<Item = &'a PersistentVolume>,
    node_fits: Option<&dyn Fn(&PersistentVolume) -> bool>,
    excluded: &dyn Fn(&PersistentVolume) -> bool,
    delay_binding: bool,
) -> Option<&'a PersistentVolume> {
    let requested = requested_bytes(claim);
    let class = claim_class(claim);
    // An invalid selector matches nothing, as upstream's conversion error does.
    let selector = claim
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .map(|s| LabelSelector::from_label_selector(s).unwrap_or_else(|_| LabelSelector::nothing()));
    let mut smallest: Option<(&PersistentVolume, f64)> = None;
    for volume in volumes {
        if excluded(volume) || volume_mode_mismatch(claim, volume) {
            continue;
        }
        let size = capacity_bytes(volume);
        let node_ok = node_fits.is_none_or(|f| f(volume));
        if is_volume_bound_to_claim(volume, claim) {
            // A pre-bound volume is the only candidate that may be too small: then the claim
            // waits rather than take another.
            if size < requested || volume_class(volume) != class || !node_ok {
                continue;
            }
            return Some(volume);
        }
        if node_fits.is_none() && delay_binding {
            continue;
        }
        if phase(volume) != "Available" || volume.spec.as_ref().is_some_and(|s| s.claim_ref.is_some()) {
            continue;
        }
        let labels = volume.metadata.labels.clone().unwrap_or_default();
        if selector.as_ref().is_some_and(|s| !s.matches_map(&labels)) {
            continue;
        }
        if volume_class(volume) != class || !node_ok || !access_modes_fit(claim, volume) {
            continue;
        }
        if size >= requested && smallest.is_none_or(|(_, s)| size < s) {
            smallest = Some((volume, size));
        }
    }
    smallest.map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn claim(spec: Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "c", "namespace": "ns", "uid": "u1"}, "spec": spec}))
            .unwrap()
    }

    fn volume(name: &str, size: &str, extra: Value) -> PersistentVolume {
        let mut spec = json!({"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.get("spec").and_then(Value::as_object)) {
            s.extend(e.clone());
        }
        let labels = extra.get("labels").cloned().unwrap_or(json!({}));
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
            "status": {"phase": extra.get("phase").cloned().unwrap_or(json!("Available"))},
        }))
        .unwrap()
    }

    fn pick<'a>(c: &PersistentVolumeClaim, vs: &'a [PersistentVolume], delay: bool) -> Option<&'a str> {
        find_matching_volume(c, vs, None, &|_| false, delay).map(|v| v.metadata.name.as_deref().unwrap())
    }

    fn rwo(size: &str) -> Value {
        json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}})
    }

    #[test]
    fn the_smallest_volume_that_fits_wins() {
        let vs = [volume("big", "10Gi", json!({})), volume("fit", "2Gi", json!({})), volume("small", "1Gi", json!({}))];
        assert_eq!(pick(&claim(rwo("1500Mi")), &vs, false), Some("fit"));
        assert_eq!(pick(&claim(rwo("20Gi")), &vs, false), None);
    }

    #[test]
    fn access_modes_must_all_be_offered() {
        let vs = [
            volume("rwo", "1Gi", json!({})),
            volume("rwx", "5Gi", json!({"spec": {"accessModes": ["ReadWriteOnce", "ReadWriteMany"]}})),
        ];
        let c = claim(json!({"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}));
        assert_eq!(pick(&c, &vs, false), Some("rwx"));
    }

    #[test]
    fn the_class_must_be_equal_and_empty_means_no_class() {
        let vs =
            [volume("fast", "1Gi", json!({"spec": {"storageClassName": "fast"}})), volume("none", "5Gi", json!({}))];
        let mut spec = rwo("1Gi");
        assert_eq!(pick(&claim(spec.clone()), &vs, false), Some("none"));
        spec["storageClassName"] = json!("fast");
        assert_eq!(pick(&claim(spec.clone()), &vs, false), Some("fast"));
        spec["storageClassName"] = json!("slow");
        assert_eq!(pick(&claim(spec), &vs, false), None);
    }

    #[test]
    fn the_selector_filters_by_label() {
        let vs = [
            volume("a", "1Gi", json!({"labels": {"tier": "a"}})),
            volume("b", "5Gi", json!({"labels": {"tier": "b"}})),
        ];
        let mut spec = rwo("1Gi");
        spec["selector"] = json!({"matchLabels": {"tier": "b"}});
        assert_eq!(pick(&claim(spec), &vs, false), Some("b"));
    }

    #[test]
    fn volume_mode_must_agree() {
        let vs = [volume("block", "1Gi", json!({"spec": {"volumeMode": "Block"}})), volume("fs", "5Gi", json!({}))];
        assert_eq!(pick(&claim(rwo("1Gi")), &vs, false), Some("fs"));
        let mut spec = rwo("1Gi");
        spec["volumeMode"] = json!("Block");
        assert_eq!(pick(&claim(spec), &vs, false), Some("block"));
    }

    #[test]
    fn claimed_or_unavailable_volumes_are_skipped_but_a_pre_bound_one_wins() {
        let other = json!({"spec": {"claimRef": {"name": "other", "namespace": "ns"}}});
        let mine = json!({"spec": {"claimRef": {"name": "c", "namespace": "ns"}}, "phase": "Available"});
        let vs = [
            volume("taken", "1Gi", other),
            volume("released", "1Gi", json!({"phase": "Released"})),
            volume("free", "1Gi", json!({})),
            volume("mine", "9Gi", mine),
        ];
        assert_eq!(pick(&claim(rwo("1Gi")), &vs, false), Some("mine"));
        assert_eq!(pick(&claim(rwo("1Gi")), &vs[..3], false), Some("free"));
    }

    #[test]
    fn delayed_binding_without_a_node_matches_only_pre_bound_volumes() {
        let vs = [volume("free", "1Gi", json!({}))];
        assert_eq!(pick(&claim(rwo("1Gi")), &vs, true), None);
        let fits: &dyn Fn(&PersistentVolume) -> bool = &|_| true;
        assert!(find_matching_volume(&claim(rwo("1Gi")), &vs, Some(fits), &|_| false, true).is_some());
        let unfit: &dyn Fn(&PersistentVolume) -> bool = &|_| false;
        assert!(find_matching_volume(&claim(rwo("1Gi")), &vs, Some(unfit), &|_| false, true).is_none());
    }

    #[test]
    fn the_beta_annotation_gives_the_class() {
        let c: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "c", "annotations": {ANN_BETA_STORAGE_CLASS: "gold"}},
            "spec": {"storageClassName": "silver"}
        }))
        .unwrap();
        assert_eq!(claim_class(&c), "gold");
    }
}

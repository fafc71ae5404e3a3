//! Pure helpers of the StatefulSet controller (upstream's
//! `pkg/controller/statefulset/stateful_set_utils.go`): pod identity (name, ordinal, labels,
//! hostname and subdomain), stable storage (the claims made from `volumeClaimTemplates` and the
//! volumes naming them), the claim retention policy as owner references, the revision data
//! (a patch replacing the pod template) and the pod health predicates.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use serde_json::json;

use crate::history::CONTROLLER_REVISION_HASH_LABEL;
use crate::replicaset::ranking;

/// The label naming a pod of a set (upstream's `StatefulSetPodNameLabel`).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label carrying a pod's ordinal (upstream's `PodIndexLabel`).
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub const RETAIN: &str = "Retain";
pub const DELETE: &str = "Delete";

/// `<set>-<ordinal>`.
pub fn pod_name(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

/// The parent name and ordinal of a pod name `<parent>-<ordinal>` (upstream's
/// `getParentNameAndOrdinal`): the ordinal is the digits after the last dash.
pub fn parent_and_ordinal(name: &str) -> Option<(&str, i32)> {
    let (parent, ord) = name.rsplit_once('-')?;
    if parent.is_empty() || ord.is_empty() || !ord.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parent, ord.parse().ok()?))
}

/// A pod's ordinal, if its name has one.
pub fn ordinal(pod: &Pod) -> Option<i32> {
    parent_and_ordinal(pod.metadata.name.as_deref()?).map(|(_, o)| o)
}

pub fn replicas(set: &StatefulSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// `spec.ordinals.start` (0 by default).
pub fn start_ordinal(set: &StatefulSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.ordinals.as_ref()).and_then(|o| o.start).unwrap_or(0)
}

/// One past the last ordinal of the set's replicas.
pub fn end_ordinal(set: &StatefulSet) -> i32 {
    start_ordinal(set) + replicas(set)
}

/// Whether a pod's ordinal is one the set wants (upstream's `podInOrdinalRange`).
pub fn in_ordinal_range(pod: &Pod, set: &StatefulSet) -> bool {
    ordinal(pod).is_some_and(|o| o >= start_ordinal(set) && o < end_ordinal(set))
}

pub fn min_ready_seconds(set: &StatefulSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
}

/// Whether pods may be created and deleted all at once (`Parallel`) rather than one by one.
pub fn allows_burst(set: &StatefulSet) -> bool {
    set.spec.as_ref().and_then(|s| s.pod_management_policy.as_deref()) == Some("Parallel")
}

/// The update strategy's type, `RollingUpdate` when unset (the API default).
pub fn is_on_delete(set: &StatefulSet) -> bool {
    set.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|u| u.type_.as_deref()) == Some("OnDelete")
}

/// The rolling update's partition, if the strategy has one.
pub fn partition(set: &StatefulSet) -> Option<i32> {
    let strategy = set.spec.as_ref()?.update_strategy.as_ref()?;
    strategy.rolling_update.as_ref()?.partition
}

/// How many pods a rolling update may have unavailable (upstream's
/// `getStatefulSetMaxUnavailable`): the absolute or percentage value (rounded down), at least 1.
pub fn max_unavailable(set: &StatefulSet) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let value = set
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref());
    let n = match value {
        None => 1,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) => (p * i64::from(replicas(set)) / 100) as i32,
            None => 1,
        },
    };
    n.max(1)
}

/// The retention policy, both fields defaulting to `Retain`.
pub fn retention_policy(set: &StatefulSet) -> (&str, &str) {
    let p = set.spec.as_ref().and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let when_deleted = p.and_then(|p| p.when_deleted.as_deref()).unwrap_or(RETAIN);
    let when_scaled = p.and_then(|p| p.when_scaled.as_deref()).unwrap_or(RETAIN);
    (when_deleted, when_scaled)
}

fn template(set: &StatefulSet) -> Option<&PodTemplateSpec> {
    set.spec.as_ref().map(|s| &s.template)
}

/// `<claim>-<set>-<ordinal>` (upstream's `getPersistentVolumeClaimName`).
pub fn claim_name(set: &StatefulSet, claim_template: &str, ordinal: i32) -> String {
    format!("{claim_template}-{}-{ordinal}", set.name_any())
}

/// The claims of the pod with `ordinal`, keyed by template name in template order (upstream's
/// `getPersistentVolumeClaims`): each template renamed, in the set's namespace, labelled with
/// the set's `matchLabels` on top of its own.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<(String, PersistentVolumeClaim)> {
    let Some(spec) = &set.spec else { return Vec::new() };
    let match_labels = spec.selector.match_labels.clone().unwrap_or_default();
    let mut claims = Vec::new();
    for t in spec.volume_claim_templates.iter().flatten() {
        let template_name = t.name_any();
        let mut claim = t.clone();
        claim.metadata.name = Some(claim_name(set, &template_name, ordinal));
        claim.metadata.namespace = set.namespace();
        claim.metadata.labels.get_or_insert_with(BTreeMap::new).extend(match_labels.clone());
        claim.metadata.resource_version = None;
        claim.metadata.uid = None;
        claim.status = None;
        claims.push((template_name, claim));
    }
    claims
}

/// Points the pod's volumes named after claim templates at the pod's claims, keeping its
/// other volumes (upstream's `updateStorage`).
pub fn update_storage(set: &StatefulSet, pod: &mut Pod, ordinal: i32) {
    let claims = claims_for(set, ordinal);
    if claims.is_empty() {
        return;
    }
    let Some(spec) = pod.spec.as_mut() else { return };
    let mut volumes: Vec<Volume> = claims
        .iter()
        .map(|(name, claim)| Volume {
            name: name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.name_any(),
                read_only: None,
            }),
            ..Default::default()
        })
        .collect();
    for v in spec.volumes.take().unwrap_or_default() {
        if !claims.iter().any(|(name, _)| *name == v.name) {
            volumes.push(v);
        }
    }
    spec.volumes = Some(volumes);
}

/// Whether the pod's volumes name the pod's claims (upstream's `storageMatches`).
pub fn storage_matches(set: &StatefulSet, pod: &Pod) -> bool {
    let Some(ord) = ordinal(pod) else { return false };
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    claims_for(set, ord).iter().all(|(name, claim)| {
        volumes.into_iter().flatten().any(|v| {
            v.name == *name && v.persistent_volume_claim.as_ref().is_some_and(|p| p.claim_name == claim.name_any())
        })
    })
}

/// Sets the pod's name, namespace and identity labels (upstream's `updateIdentity`).
pub fn update_identity(set: &StatefulSet, pod: &mut Pod, ordinal: i32) {
    let name = pod_name(&set.name_any(), ordinal);
    pod.metadata.name = Some(name.clone());
    pod.metadata.namespace = set.namespace();
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name);
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
}

/// Whether the pod has the identity its name gives it (upstream's `identityMatches`).
pub fn identity_matches(set: &StatefulSet, pod: &Pod) -> bool {
    let Some((parent, ord)) = pod.metadata.name.as_deref().and_then(parent_and_ordinal) else { return false };
    let label = |k: &str| pod.metadata.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str);
    parent == set.name_any()
        && pod.metadata.namespace == set.namespace()
        && label(POD_NAME_LABEL) == pod.metadata.name.as_deref()
        && label(POD_INDEX_LABEL) == Some(ord.to_string().as_str())
}

/// The controller reference a set puts on its pods and revisions.
pub fn controller_ref(set: &StatefulSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: set.name_any(),
        uid: set.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pod with `ordinal` as `set` describes it (upstream's `newStatefulSetPod`): the template,
/// the controller reference, the identity, `hostname` = pod name and `subdomain` = the
/// governing service, and the claims' volumes.
pub fn new_pod(set: &StatefulSet, ordinal: i32) -> Pod {
    let template = template(set).cloned().unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut pod = Pod {
        metadata: ObjectMeta {
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_ref(set)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    update_identity(set, &mut pod, ordinal);
    if let Some(spec) = pod.spec.as_mut() {
        spec.hostname = pod.metadata.name.clone();
        spec.subdomain = set.spec.as_ref().and_then(|s| s.service_name.clone()).filter(|s| !s.is_empty());
    }
    update_storage(set, &mut pod, ordinal);
    pod
}

/// The pod with `ordinal` at the right revision (upstream's `newVersionedStatefulSetPod`):
/// below the partition (or, without a rolling-update config, below the current replicas) a
/// rolling update keeps the current revision; everything else gets the update revision.
pub fn new_versioned_pod(
    current_set: &StatefulSet,
    update_set: &StatefulSet,
    current_revision: &str,
    update_revision: &str,
    ordinal: i32,
) -> Pod {
    let start = start_ordinal(current_set);
    let rolling = !is_on_delete(current_set);
    let has_rolling_config =
        current_set.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).is_some_and(|u| u.rolling_update.is_some());
    let keep_current = match partition(current_set) {
        Some(p) => ordinal < start + p,
        None if rolling && !has_rolling_config => {
            ordinal < start + current_set.status.as_ref().and_then(|s| s.current_replicas).unwrap_or(0)
        }
        None => false,
    };
    let (set, revision) = if keep_current { (current_set, current_revision) } else { (update_set, update_revision) };
    let mut pod = new_pod(set, ordinal);
    set_revision(&mut pod, revision);
    pod
}

pub fn set_revision(pod: &mut Pod, revision: &str) {
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(CONTROLLER_REVISION_HASH_LABEL.into(), revision.into());
}

/// The revision a pod was made from (its `controller-revision-hash` label).
pub fn pod_revision(pod: &Pod) -> &str {
    pod.metadata.labels.as_ref().and_then(|l| l.get(CONTROLLER_REVISION_HASH_LABEL)).map_or("", String::as_str)
}

/// The data of the set's revision (upstream's `getPatch`): a strategic merge patch that
/// replaces the pod template, which `kubectl rollout undo` applies as it is. Keys are sorted,
/// as Go's encoder writes maps, so that equal templates always hash alike.
pub fn revision_data(set: &StatefulSet) -> serde_json::Value {
    let mut template = serde_json::to_value(template(set).cloned().unwrap_or_default()).unwrap_or_default();
    if let Some(t) = template.as_object_mut() {
        t.insert("$patch".into(), json!("replace"));
    }
    sorted(json!({"spec": {"template": template}}))
}

fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let ordered: BTreeMap<String, serde_json::Value> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            serde_json::Value::Object(ordered.into_iter().collect())
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(sorted).collect()),
        v => v,
    }
}

/// The set with the pod template a revision holds (upstream's `ApplyRevision`, for the
/// template-replacing patches this controller writes).
pub fn apply_revision(set: &StatefulSet, data: Option<&serde_json::Value>) -> StatefulSet {
    let mut out = set.clone();
    let template = data.and_then(|d| d.pointer("/spec/template")).cloned().map(|mut t| {
        if let Some(o) = t.as_object_mut() {
            o.remove("$patch");
        }
        t
    });
    if let (Some(spec), Some(Ok(t))) = (out.spec.as_mut(), template.map(serde_json::from_value::<PodTemplateSpec>)) {
        spec.template = t;
    }
    out
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

/// Whether the pod object exists (upstream's `isCreated`: it has a phase).
pub fn is_created(pod: &Pod) -> bool {
    !phase(pod).is_empty()
}

pub fn is_pending(pod: &Pod) -> bool {
    phase(pod) == "Pending"
}

pub fn is_failed(pod: &Pod) -> bool {
    phase(pod) == "Failed"
}

pub fn is_succeeded(pod: &Pod) -> bool {
    phase(pod) == "Succeeded"
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

pub fn is_running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && ranking::is_ready(pod)
}

pub fn is_running_and_available(pod: &Pod, min_ready_seconds: i32, now: k8s_openapi::jiff::Timestamp) -> bool {
    phase(pod) == "Running" && ranking::is_available(pod, min_ready_seconds, now)
}

/// Running, ready and not being deleted (upstream's `isHealthy`).
pub fn is_healthy(pod: &Pod) -> bool {
    is_running_and_ready(pod) && !is_terminating(pod)
}

fn owner_ref_to(kind: &str, api_version: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    }
}

fn has_ref(claim: &PersistentVolumeClaim, uid: Option<&str>) -> bool {
    claim.metadata.owner_references.iter().flatten().any(|r| Some(r.uid.as_str()) == uid)
}

fn set_ref(claim: &mut PersistentVolumeClaim, r: OwnerReference) -> bool {
    if has_ref(claim, Some(&r.uid)) {
        return false;
    }
    claim.metadata.owner_references.get_or_insert_with(Vec::new).push(r);
    true
}

fn remove_ref(claim: &mut PersistentVolumeClaim, uid: Option<&str>) -> bool {
    let Some(refs) = claim.metadata.owner_references.as_mut() else { return false };
    let before = refs.len();
    refs.retain(|r| Some(r.uid.as_str()) != uid);
    refs.len() != before
}

/// Gives a claim the owner references its set's retention policy calls for (upstream's
/// `updateClaimOwnerRefForSetAndPod`): the set owns it when claims go with the set, the pod
/// owns it once the pod is scaled away and claims go with scale-down; the garbage collector
/// does the deleting. Returns whether the claim changed.
pub fn update_claim_owner_refs(claim: &mut PersistentVolumeClaim, set: &StatefulSet, pod: &Pod) -> bool {
    let (when_deleted, when_scaled) = retention_policy(set);
    let set_uid = set.metadata.uid.as_deref();
    let pod_uid = pod.metadata.uid.as_deref();
    let scaled_down = !in_ordinal_range(pod, set);
    let set_owner = || owner_ref_to("StatefulSet", "apps/v1", &set.metadata);
    let pod_owner = || owner_ref_to("Pod", "v1", &pod.metadata);
    let mut changed = false;
    match (when_scaled == DELETE, when_deleted == DELETE) {
        (false, false) => {
            changed |= remove_ref(claim, set_uid);
            changed |= remove_ref(claim, pod_uid);
        }
        (false, true) => {
            changed |= set_ref(claim, set_owner());
            changed |= remove_ref(claim, pod_uid);
        }
        (true, false) => {
            changed |= remove_ref(claim, set_uid);
            if scaled_down && pod_uid.is_some() {
                changed |= set_ref(claim, pod_owner());
            } else {
                changed |= remove_ref(claim, pod_uid);
            }
        }
        (true, true) => {
            if scaled_down && pod_uid.is_some() {
                changed |= remove_ref(claim, set_uid);
                changed |= set_ref(claim, pod_owner());
            } else {
                changed |= set_ref(claim, set_owner());
                changed |= remove_ref(claim, pod_uid);
            }
        }
    }
    changed
}

/// Whether a claim still belongs to an earlier pod of the same name (upstream's
/// `hasStaleOwnerRef`): it would be deleted with that pod, so a new pod must wait for it.
pub fn claim_is_stale(claim: &PersistentVolumeClaim, pod: &Pod) -> bool {
    claim.metadata.owner_references.iter().flatten().any(|r| {
        r.kind == "Pod"
            && Some(r.name.as_str()) == pod.metadata.name.as_deref()
            && Some(r.uid.as_str()) != pod.metadata.uid.as_deref()
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetOrdinals, StatefulSetPersistentVolumeClaimRetentionPolicy,
        StatefulSetSpec, StatefulSetUpdateStrategy,
    };
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::*;

    pub(crate) fn set(name: &str, replicas: i32) -> StatefulSet {
        let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
        StatefulSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some("set-uid".into()),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                service_name: Some("svc".into()),
                selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            image: Some("img:1".into()),
                            ..Default::default()
                        }],
                        volumes: Some(vec![Volume { name: "scratch".into(), ..Default::default() }]),
                        ..Default::default()
                    }),
                },
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta { name: Some("data".into()), ..Default::default() },
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn ordinals_come_from_the_last_dash() {
        assert_eq!(parent_and_ordinal("web-0"), Some(("web", 0)));
        assert_eq!(parent_and_ordinal("my-web-12"), Some(("my-web", 12)));
        assert_eq!(parent_and_ordinal("web"), None);
        assert_eq!(parent_and_ordinal("web-"), None);
        assert_eq!(parent_and_ordinal("web-x1"), None);
        assert_eq!(parent_and_ordinal("-3"), None);
    }

    #[test]
    fn ordinal_range_follows_start_and_replicas() {
        let mut s = set("web", 3);
        s.spec.as_mut().unwrap().ordinals = Some(StatefulSetOrdinals { start: Some(5) });
        let pod =
            |n: &str| Pod { metadata: ObjectMeta { name: Some(n.into()), ..Default::default() }, ..Default::default() };
        assert!(!in_ordinal_range(&pod("web-4"), &s));
        assert!(in_ordinal_range(&pod("web-5"), &s));
        assert!(in_ordinal_range(&pod("web-7"), &s));
        assert!(!in_ordinal_range(&pod("web-8"), &s));
    }

    #[test]
    fn new_pods_carry_their_identity_and_storage() {
        let s = set("web", 3);
        let pod = new_pod(&s, 2);
        assert_eq!(pod.metadata.name.as_deref(), Some("web-2"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[POD_NAME_LABEL], "web-2");
        assert_eq!(labels[POD_INDEX_LABEL], "2");
        assert_eq!(labels["app"], "web");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("svc"));
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes[0].name, "data");
        assert_eq!(volumes[0].persistent_volume_claim.as_ref().unwrap().claim_name, "data-web-2");
        assert_eq!(volumes[1].name, "scratch");
        assert_eq!(pod.metadata.owner_references.as_ref().unwrap()[0].kind, "StatefulSet");
        assert!(identity_matches(&s, &pod));
        assert!(storage_matches(&s, &pod));
        let mut renamed = pod.clone();
        renamed.metadata.labels.as_mut().unwrap().insert(POD_INDEX_LABEL.into(), "7".into());
        assert!(!identity_matches(&s, &renamed));
    }

    #[test]
    fn claims_are_named_per_ordinal_and_labelled_with_the_selector() {
        let claims = claims_for(&set("web", 1), 4);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].0, "data");
        assert_eq!(claims[0].1.metadata.name.as_deref(), Some("data-web-4"));
        assert_eq!(claims[0].1.metadata.labels.as_ref().unwrap()["app"], "web");
    }

    #[test]
    fn pods_below_the_partition_keep_the_current_revision() {
        let mut s = set("web", 4);
        s.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateStatefulSetStrategy { partition: Some(2), max_unavailable: None }),
        });
        let revs: Vec<_> =
            (0..4).map(|o| pod_revision(&new_versioned_pod(&s, &s, "cur", "upd", o)).to_string()).collect();
        assert_eq!(revs, ["cur", "cur", "upd", "upd"]);
    }

    #[test]
    fn revision_data_replaces_the_template_and_applies_back() {
        let s = set("web", 1);
        let data = revision_data(&s);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        assert_eq!(data.as_object().unwrap().len(), 1);
        let mut other = s.clone();
        other.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].image = Some("img:2".into());
        assert_ne!(revision_data(&other), data);
        let back = apply_revision(&other, Some(&data));
        assert_eq!(back.spec.unwrap().template, s.spec.unwrap().template);
    }

    #[test]
    fn max_unavailable_takes_percentages_down_and_at_least_one() {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let mut s = set("web", 10);
        let with = |s: &mut StatefulSet, v: IntOrString| {
            s.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy { partition: None, max_unavailable: Some(v) }),
            });
        };
        assert_eq!(max_unavailable(&s), 1);
        with(&mut s, IntOrString::String("25%".into()));
        assert_eq!(max_unavailable(&s), 2);
        with(&mut s, IntOrString::String("5%".into()));
        assert_eq!(max_unavailable(&s), 1);
        with(&mut s, IntOrString::Int(3));
        assert_eq!(max_unavailable(&s), 3);
    }

    #[test]
    fn retention_policy_maps_to_owner_references() {
        let mut s = set("web", 1);
        let policy = |s: &mut StatefulSet, deleted: &str, scaled: &str| {
            s.spec.as_mut().unwrap().persistent_volume_claim_retention_policy =
                Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(deleted.into()),
                    when_scaled: Some(scaled.into()),
                });
        };
        let mut pod = new_pod(&s, 0);
        pod.metadata.uid = Some("pod-uid".into());
        let mut scaled_away = new_pod(&s, 3);
        scaled_away.metadata.uid = Some("pod3-uid".into());
        let owners = |c: &PersistentVolumeClaim| -> Vec<String> {
            c.metadata.owner_references.iter().flatten().map(|r| r.kind.clone()).collect()
        };

        let mut claim = claims_for(&s, 0).remove(0).1;
        assert!(!update_claim_owner_refs(&mut claim, &s, &pod));
        assert!(owners(&claim).is_empty());

        policy(&mut s, DELETE, RETAIN);
        assert!(update_claim_owner_refs(&mut claim, &s, &pod));
        assert_eq!(owners(&claim), ["StatefulSet"]);
        assert!(!update_claim_owner_refs(&mut claim, &s, &pod));

        policy(&mut s, RETAIN, DELETE);
        let mut claim3 = claims_for(&s, 3).remove(0).1;
        assert!(update_claim_owner_refs(&mut claim3, &s, &scaled_away));
        assert_eq!(owners(&claim3), ["Pod"]);
        assert!(update_claim_owner_refs(&mut claim, &s, &pod));
        assert!(owners(&claim).is_empty());

        policy(&mut s, DELETE, DELETE);
        assert!(update_claim_owner_refs(&mut claim, &s, &pod));
        assert_eq!(owners(&claim), ["StatefulSet"]);
        assert!(!update_claim_owner_refs(&mut claim3, &s, &scaled_away));

        // A claim owned by a previous pod of the same name is stale for a new one.
        let fresh = new_pod(&s, 3);
        assert!(claim_is_stale(&claim3, &fresh));
        assert!(!claim_is_stale(&claim3, &scaled_away));
    }
}

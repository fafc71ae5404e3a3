//! Pure helpers of the DaemonSet controller (upstream's `pkg/controller/daemon/util`): the
//! tolerations every daemon pod gets, the node affinity that pins a pod to its node, the labels
//! that say which revision a pod runs, and the rolling update's surge/unavailable budgets.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, PodTemplateSpec,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::deployment::deployment_util::scaled_value;

/// The label carrying the hash of the revision a pod was made from.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
/// The label carrying the template generation a pod was made from.
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
/// The annotation in which the API server keeps a DaemonSet's template generation (apps/v1
/// has no `spec.templateGeneration`).
pub const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
/// The field a node affinity term matches the node's name with.
const NODE_NAME_FIELD: &str = "metadata.name";

const NO_SCHEDULE: &str = "NoSchedule";
const NO_EXECUTE: &str = "NoExecute";

/// The tolerations upstream adds to every daemon pod (`AddOrUpdateDaemonPodTolerations`): a
/// daemon keeps running on not-ready or unreachable nodes and is placed on nodes under
/// pressure or cordoned; host-network daemons also on nodes whose network is not ready.
fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut t = vec![
        exists("node.kubernetes.io/not-ready", NO_EXECUTE),
        exists("node.kubernetes.io/unreachable", NO_EXECUTE),
        exists("node.kubernetes.io/disk-pressure", NO_SCHEDULE),
        exists("node.kubernetes.io/memory-pressure", NO_SCHEDULE),
        exists("node.kubernetes.io/pid-pressure", NO_SCHEDULE),
        exists("node.kubernetes.io/unschedulable", NO_SCHEDULE),
    ];
    if host_network {
        t.push(exists("node.kubernetes.io/network-unavailable", NO_SCHEDULE));
    }
    t
}

/// Adds the daemon tolerations to `spec` (upstream's `AddOrUpdateTolerationInPodSpec` for
/// each): one with the same key, operator, value and effect is replaced, others appended.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let host_network = spec.host_network == Some(true);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for new in daemon_tolerations(host_network) {
        let same = |t: &Toleration| {
            t.key == new.key
                && t.operator.as_deref().unwrap_or("Equal") == new.operator.as_deref().unwrap_or("Equal")
                && t.value.as_deref().unwrap_or("") == new.value.as_deref().unwrap_or("")
                && t.effect == new.effect
        };
        match tolerations.iter_mut().find(|t| same(t)) {
            Some(existing) => *existing = new,
            None => tolerations.push(new),
        }
    }
}

/// Pins a pod to `node` through required node affinity (upstream's
/// `ReplaceDaemonSetPodNodeNameNodeAffinity`): the required terms are replaced by one matching
/// the node's name, so the default scheduler binds it there (the controller has already
/// checked that the node satisfies the template's own terms); preferred terms are kept.
pub fn pin_to_node(affinity: Option<Affinity>, node: &str) -> Affinity {
    let required = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: NODE_NAME_FIELD.into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    };
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(required);
    affinity
}

/// The node a daemon pod is for (upstream's `GetTargetNodeName`): where it is bound, else the
/// node its required affinity pins it to.
pub fn target_node_name(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().flat_map(|t| t.match_fields.iter().flatten()).find_map(|r| {
        match (r.key.as_str(), r.operator.as_str(), r.values.as_deref()) {
            (NODE_NAME_FIELD, "In", Some([v])) => Some(v.clone()),
            _ => None,
        }
    })
}

/// The DaemonSet's template generation (upstream's `GetTemplateGeneration`): the annotation the
/// API server maintains; failing that, `metadata.generation`, which also only grows and so
/// still tells an older template from the current one.
pub fn template_generation(ds: &DaemonSet) -> Option<i64> {
    let annotated = ds
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TEMPLATE_GENERATION_ANNOTATION))
        .and_then(|v| v.parse().ok());
    annotated.or(ds.metadata.generation)
}

/// The template new pods are made from (upstream's `CreatePodTemplate`): the DaemonSet's, with
/// the daemon tolerations and the generation and revision labels.
pub fn pod_template(ds: &DaemonSet, generation: Option<i64>, hash: &str) -> PodTemplateSpec {
    let mut template = ds.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    add_daemon_tolerations(template.spec.get_or_insert_with(PodSpec::default));
    let labels = template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(BTreeMap::new);
    if let Some(g) = generation {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), g.to_string());
    }
    if !hash.is_empty() {
        labels.insert(REVISION_HASH_LABEL.into(), hash.into());
    }
    template
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// Whether a pod runs the current template (upstream's `IsPodUpdated`): its revision hash or
/// its template generation is the current one.
pub fn is_pod_updated(pod: &Pod, hash: &str, generation: Option<i64>) -> bool {
    let hash_matches = !hash.is_empty() && label(pod, REVISION_HASH_LABEL) == Some(hash);
    let generation_matches =
        generation.is_some_and(|g| label(pod, TEMPLATE_GENERATION_LABEL) == Some(g.to_string().as_str()));
    hash_matches || generation_matches
}

fn rolling_update_value(
    ds: &DaemonSet,
    pick: fn(&k8s_openapi::api::apps::v1::RollingUpdateDaemonSet) -> Option<&IntOrString>,
) -> Option<&IntOrString> {
    let strategy = ds.spec.as_ref()?.update_strategy.as_ref()?;
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") != "RollingUpdate" {
        return None;
    }
    pick(strategy.rolling_update.as_ref()?)
}

/// How many pods may be unavailable during a rolling update of `desired` (upstream's
/// `UnavailableCount`, percentages rounded up); 0 outside a rolling update.
pub fn unavailable_count(ds: &DaemonSet, desired: i32) -> i32 {
    rolling_update_value(ds, |r| r.max_unavailable.as_ref()).and_then(|v| scaled_value(v, desired, true)).unwrap_or(0)
}

/// How many nodes may run an extra new pod during a rolling update of `desired` (upstream's
/// `SurgeCount`, percentages rounded up); 0 outside a rolling update.
pub fn surge_count(ds: &DaemonSet, desired: i32) -> i32 {
    rolling_update_value(ds, |r| r.max_surge.as_ref()).and_then(|v| scaled_value(v, desired, true)).unwrap_or(0)
}

/// Whether the rolling update surges (upstream's `AllowsSurge`).
pub fn allows_surge(ds: &DaemonSet) -> bool {
    surge_count(ds, 1) != 0
}

/// `(maxSurge, maxUnavailable)` for `desired` nodes; an impossible configuration (both zero)
/// falls back to one unavailable, as upstream's `updatedDesiredNodeCounts`.
pub fn rolling_budgets(ds: &DaemonSet, desired: i32) -> (i32, i32) {
    let (surge, unavailable) = (surge_count(ds, desired), unavailable_count(ds, desired));
    if desired > 0 && surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn ds(kind: &str, surge: Option<IntOrString>, unavailable: Option<IntOrString>) -> DaemonSet {
        DaemonSet {
            spec: Some(DaemonSetSpec {
                update_strategy: Some(DaemonSetUpdateStrategy {
                    type_: Some(kind.into()),
                    rolling_update: Some(RollingUpdateDaemonSet { max_surge: surge, max_unavailable: unavailable }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pct(s: &str) -> Option<IntOrString> {
        Some(IntOrString::String(s.into()))
    }

    #[test]
    fn percentages_round_up_for_both_budgets() {
        let d = ds("RollingUpdate", pct("10%"), pct("30%"));
        assert_eq!(surge_count(&d, 5), 1);
        assert_eq!(unavailable_count(&d, 5), 2);
        assert_eq!(rolling_budgets(&d, 5), (1, 2));
        assert!(allows_surge(&d));
    }

    #[test]
    fn absolute_budgets_are_taken_as_they_are() {
        let d = ds("RollingUpdate", Some(IntOrString::Int(0)), Some(IntOrString::Int(2)));
        assert_eq!(rolling_budgets(&d, 10), (0, 2));
        assert!(!allows_surge(&d));
    }

    #[test]
    fn zero_budgets_fall_back_to_one_unavailable() {
        let d = ds("RollingUpdate", Some(IntOrString::Int(0)), pct("0%"));
        assert_eq!(rolling_budgets(&d, 3), (0, 1));
        assert_eq!(rolling_budgets(&d, 0), (0, 0));
    }

    #[test]
    fn on_delete_has_no_budgets() {
        let d = ds("OnDelete", Some(IntOrString::Int(1)), Some(IntOrString::Int(1)));
        assert_eq!((surge_count(&d, 3), unavailable_count(&d, 3)), (0, 0));
    }

    #[test]
    fn tolerations_are_added_once_and_network_only_for_host_network() {
        let mut spec = PodSpec {
            tolerations: Some(vec![Toleration {
                key: Some("node.kubernetes.io/unschedulable".into()),
                operator: Some("Exists".into()),
                effect: Some(NO_SCHEDULE.into()),
                toleration_seconds: None,
                value: None,
            }]),
            ..Default::default()
        };
        add_daemon_tolerations(&mut spec);
        add_daemon_tolerations(&mut spec);
        let keys: Vec<_> = spec.tolerations.as_ref().unwrap().iter().map(|t| t.key.clone().unwrap()).collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
        assert!(!keys.iter().any(|k| k.contains("network-unavailable")));
        spec.host_network = Some(true);
        add_daemon_tolerations(&mut spec);
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 7);
    }

    #[test]
    fn pinning_replaces_required_terms_and_keeps_preferred_ones() {
        let affinity: Affinity = serde_json::from_value(serde_json::json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}}]
        }}))
        .unwrap();
        let pinned = pin_to_node(Some(affinity), "n1");
        let na = pinned.node_affinity.as_ref().unwrap();
        assert_eq!(na.preferred_during_scheduling_ignored_during_execution.as_ref().unwrap().len(), 1);
        let pod =
            Pod { spec: Some(PodSpec { affinity: Some(pinned.clone()), ..Default::default() }), ..Default::default() };
        assert_eq!(target_node_name(&pod).as_deref(), Some("n1"));
        let terms = &na.required_during_scheduling_ignored_during_execution.as_ref().unwrap().node_selector_terms;
        assert_eq!(terms.len(), 1);
        assert!(terms[0].match_expressions.is_none());
    }

    #[test]
    fn a_bound_pod_targets_its_node() {
        let pod = Pod {
            spec: Some(PodSpec {
                node_name: Some("bound".into()),
                affinity: Some(pin_to_node(None, "other")),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(target_node_name(&pod).as_deref(), Some("bound"));
        assert_eq!(target_node_name(&Pod::default()), None);
    }

    #[test]
    fn a_pod_is_updated_by_hash_or_generation() {
        let pod = |labels: &[(&str, &str)]| Pod {
            metadata: ObjectMeta {
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(is_pod_updated(&pod(&[(REVISION_HASH_LABEL, "abc")]), "abc", Some(2)));
        assert!(is_pod_updated(&pod(&[(TEMPLATE_GENERATION_LABEL, "2")]), "abc", Some(2)));
        assert!(!is_pod_updated(
            &pod(&[(REVISION_HASH_LABEL, "old"), (TEMPLATE_GENERATION_LABEL, "1")]),
            "abc",
            Some(2)
        ));
        assert!(!is_pod_updated(&pod(&[]), "", None));
    }

    #[test]
    fn the_template_carries_revision_labels_and_tolerations() {
        let mut d = ds("RollingUpdate", None, None);
        d.metadata.generation = Some(3);
        assert_eq!(template_generation(&d), Some(3));
        d.metadata.annotations = Some([(TEMPLATE_GENERATION_ANNOTATION.to_string(), "2".to_string())].into());
        assert_eq!(template_generation(&d), Some(2));
        let t = pod_template(&d, template_generation(&d), "h1");
        let labels = t.metadata.unwrap().labels.unwrap();
        assert_eq!(labels.get(TEMPLATE_GENERATION_LABEL).map(String::as_str), Some("2"));
        assert_eq!(labels.get(REVISION_HASH_LABEL).map(String::as_str), Some("h1"));
        assert_eq!(t.spec.unwrap().tolerations.unwrap().len(), 6);
    }
}

//! apps/v1 kinds: defaults from upstream's `pkg/apis/apps/v1/defaults.go`, and the validation
//! every workload shares (a selector that matches its own template).

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy, ReplicaSet,
    RollingUpdateDaemonSet, RollingUpdateDeployment, RollingUpdateStatefulSetStrategy, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::Kind;
use super::core::{default_pod_spec, validate_pod_spec};
use crate::field::{FieldError, FieldPath};
use crate::selector::LabelSelector as Selector;

fn pct(s: &str) -> Option<IntOrString> {
    Some(IntOrString::String(s.into()))
}

fn default_template(t: &mut PodTemplateSpec) {
    if let Some(spec) = &mut t.spec {
        default_pod_spec(spec);
    }
}

/// The checks upstream's `ValidatePodTemplateSpecForReplicaSet` and friends share: a non-empty
/// selector that selects the template's labels, and a valid pod spec.
pub(crate) fn validate_workload(
    selector: Option<&LabelSelector>,
    template: Option<&PodTemplateSpec>,
    replicas: Option<i32>,
    path: &FieldPath,
    errs: &mut Vec<FieldError>,
) {
    if let Some(r) = replicas
        && r < 0
    {
        errs.push(FieldError::invalid(&path.key("replicas"), json!(r), "must be greater than or equal to 0"));
    }
    let parsed = match selector {
        None => {
            errs.push(FieldError::required(&path.key("selector"), ""));
            None
        }
        Some(s)
            if s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|e| e.is_empty()) =>
        {
            errs.push(FieldError::invalid(&path.key("selector"), json!(s), "empty selector is invalid for deployment"));
            None
        }
        Some(s) => match Selector::from_label_selector(s) {
            Ok(sel) => Some(sel),
            Err(e) => {
                errs.push(FieldError::invalid(&path.key("selector"), json!(s), &e.to_string()));
                None
            }
        },
    };
    let Some(template) = template else {
        errs.push(FieldError::required(&path.key("template"), ""));
        return;
    };
    let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    if let Some(sel) = parsed
        && !sel.matches_map(&labels)
    {
        errs.push(FieldError::invalid(
            &path.key("template").key("metadata").key("labels"),
            json!(labels),
            "`selector` does not match template `labels`",
        ));
    }
    match &template.spec {
        Some(s) => validate_pod_spec(s, &path.key("template").key("spec"), errs),
        None => errs.push(FieldError::required(&path.key("template").key("spec"), "")),
    }
}

fn validate_immutable_selector(new: &LabelSelector, old: &LabelSelector, errs: &mut Vec<FieldError>) {
    if new != old {
        errs.push(FieldError::invalid(&FieldPath::new("spec").key("selector"), json!(new), "field is immutable"));
    }
}

impl Kind for Deployment {
    fn set_defaults(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        spec.replicas.get_or_insert(1);
        let strategy = spec.strategy.get_or_insert_with(DeploymentStrategy::default);
        let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if kind == "RollingUpdate" {
            let ru = strategy.rolling_update.get_or_insert_with(RollingUpdateDeployment::default);
            if ru.max_unavailable.is_none() {
                ru.max_unavailable = pct("25%");
            }
            if ru.max_surge.is_none() {
                ru.max_surge = pct("25%");
            }
        }
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        default_template(&mut spec.template);
    }

    fn prepare_for_create(&mut self) {
        self.status = None;
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        let path = FieldPath::new("spec");
        let Some(spec) = &self.spec else {
            return errs.push(FieldError::required(&path, ""));
        };
        validate_workload(Some(&spec.selector), Some(&spec.template), spec.replicas, &path, errs);
        if let Some(s) = &spec.strategy {
            const TYPES: [&str; 2] = ["Recreate", "RollingUpdate"];
            if let Some(t) = &s.type_
                && !TYPES.contains(&t.as_str())
            {
                errs.push(FieldError::not_supported(&path.key("strategy").key("type"), json!(t), &TYPES));
            }
            if s.type_.as_deref() == Some("Recreate") && s.rolling_update.is_some() {
                errs.push(FieldError::forbidden(
                    &path.key("strategy").key("rollingUpdate"),
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
            if let Some(ru) = &s.rolling_update {
                let zero = |v: &Option<IntOrString>| {
                    matches!(v, Some(IntOrString::Int(0))) || matches!(v, Some(IntOrString::String(s)) if s == "0%")
                };
                if zero(&ru.max_surge) && zero(&ru.max_unavailable) {
                    errs.push(FieldError::invalid(
                        &path.key("strategy").key("rollingUpdate").key("maxUnavailable"),
                        json!(ru.max_unavailable),
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
            }
        }
        if let (Some(p), Some(m)) = (spec.progress_deadline_seconds, spec.min_ready_seconds)
            && p <= m
        {
            errs.push(FieldError::invalid(
                &path.key("progressDeadlineSeconds"),
                json!(p),
                "must be greater than minReadySeconds",
            ));
        }
    }

    fn validate_update(&self, old: &Self, errs: &mut Vec<FieldError>) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            validate_immutable_selector(&n.selector, &o.selector, errs);
        }
    }
}

impl Kind for ReplicaSet {
    const FIELD_LABELS: &'static [(&'static str, &'static str)] = &[("status.replicas", "status.replicas")];

    fn set_defaults(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        spec.replicas.get_or_insert(1);
        if let Some(t) = &mut spec.template {
            default_template(t);
        }
    }

    fn prepare_for_create(&mut self) {
        self.status = None;
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        let path = FieldPath::new("spec");
        let Some(spec) = &self.spec else {
            return errs.push(FieldError::required(&path, ""));
        };
        validate_workload(Some(&spec.selector), spec.template.as_ref(), spec.replicas, &path, errs);
    }

    fn validate_update(&self, old: &Self, errs: &mut Vec<FieldError>) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            validate_immutable_selector(&n.selector, &o.selector, errs);
        }
    }
}

impl Kind for StatefulSet {
    fn set_defaults(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        spec.replicas.get_or_insert(1);
        spec.pod_management_policy.get_or_insert_with(|| "OrderedReady".into());
        let strategy = spec.update_strategy.get_or_insert_with(StatefulSetUpdateStrategy::default);
        let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if kind == "RollingUpdate" {
            let ru = strategy.rolling_update.get_or_insert_with(RollingUpdateStatefulSetStrategy::default);
            ru.partition.get_or_insert(0);
            if ru.max_unavailable.is_none() {
                ru.max_unavailable = Some(IntOrString::Int(1));
            }
        }
        spec.revision_history_limit.get_or_insert(10);
        let policy = spec
            .persistent_volume_claim_retention_policy
            .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
        policy.when_deleted.get_or_insert_with(|| "Retain".into());
        policy.when_scaled.get_or_insert_with(|| "Retain".into());
        for pvc in spec.volume_claim_templates.iter_mut().flatten() {
            if let Some(s) = &mut pvc.spec {
                s.volume_mode.get_or_insert_with(|| "Filesystem".into());
            }
            pvc.status.get_or_insert_with(|| k8s_openapi::api::core::v1::PersistentVolumeClaimStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            });
        }
        default_template(&mut spec.template);
    }

    fn prepare_for_create(&mut self) {
        self.status = None;
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        let path = FieldPath::new("spec");
        let Some(spec) = &self.spec else {
            return errs.push(FieldError::required(&path, ""));
        };
        // The containers may mount the volumes of the claim templates: upstream checks the
        // template as the pods will be, with a claim volume per template.
        let mut template = spec.template.clone();
        if let Some(pod) = template.spec.as_mut() {
            for claim in spec.volume_claim_templates.iter().flatten() {
                let name = claim.metadata.name.clone().unwrap_or_default();
                pod.volumes.get_or_insert_default().push(k8s_openapi::api::core::v1::Volume {
                    name: name.clone(),
                    persistent_volume_claim: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                        claim_name: name,
                        read_only: None,
                    }),
                    ..Default::default()
                });
            }
        }
        validate_workload(Some(&spec.selector), Some(&template), spec.replicas, &path, errs);
        if let Some(p) = &spec.pod_management_policy {
            const POLICIES: [&str; 2] = ["OrderedReady", "Parallel"];
            if !POLICIES.contains(&p.as_str()) {
                errs.push(FieldError::not_supported(&path.key("podManagementPolicy"), json!(p), &POLICIES));
            }
        }
    }

    fn validate_update(&self, old: &Self, errs: &mut Vec<FieldError>) {
        // Upstream lets an update change only replicas, ordinals, template, updateStrategy,
        // revisionHistoryLimit, persistentVolumeClaimRetentionPolicy and minReadySeconds.
        let (Some(n), Some(o)) = (&self.spec, &old.spec) else { return };
        let mut n = n.clone();
        n.replicas = o.replicas;
        n.ordinals = o.ordinals.clone();
        n.template = o.template.clone();
        n.update_strategy = o.update_strategy.clone();
        n.revision_history_limit = o.revision_history_limit;
        n.persistent_volume_claim_retention_policy = o.persistent_volume_claim_retention_policy.clone();
        n.min_ready_seconds = o.min_ready_seconds;
        if n != *o {
            errs.push(FieldError::forbidden(
                &FieldPath::new("spec"),
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
}

/// The annotation upstream stores a DaemonSet's template generation in.
pub const DAEMONSET_TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

fn template_generation(ds: &DaemonSet) -> i64 {
    ds.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DAEMONSET_TEMPLATE_GENERATION))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

fn set_template_generation(ds: &mut DaemonSet, generation: i64) {
    ds.metadata
        .annotations
        .get_or_insert_default()
        .insert(DAEMONSET_TEMPLATE_GENERATION.to_string(), generation.to_string());
}

impl Kind for DaemonSet {
    fn set_defaults(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        let strategy = spec.update_strategy.get_or_insert_with(DaemonSetUpdateStrategy::default);
        let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if kind == "RollingUpdate" {
            let ru = strategy.rolling_update.get_or_insert_with(RollingUpdateDaemonSet::default);
            if ru.max_unavailable.is_none() {
                ru.max_unavailable = Some(IntOrString::Int(1));
            }
            if ru.max_surge.is_none() {
                ru.max_surge = Some(IntOrString::Int(0));
            }
        }
        spec.revision_history_limit.get_or_insert(10);
        default_template(&mut spec.template);
    }

    fn prepare_for_create(&mut self) {
        self.status = None;
        set_template_generation(self, 1);
    }

    /// Upstream keeps the DaemonSet's template generation (an internal field) in this
    /// annotation: carried over on every update, and one more when the template changes. The
    /// controller labels pods with it (`pod-template-generation`).
    fn prepare_for_update(&mut self, old: &Self) {
        let previous = template_generation(old);
        let changed = self.spec.as_ref().map(|s| &s.template) != old.spec.as_ref().map(|s| &s.template);
        set_template_generation(self, if changed { previous + 1 } else { previous.max(1) });
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        let path = FieldPath::new("spec");
        let Some(spec) = &self.spec else {
            return errs.push(FieldError::required(&path, ""));
        };
        validate_workload(Some(&spec.selector), Some(&spec.template), None, &path, errs);
        if let Some(p) = spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref())
            && p != "Always"
        {
            errs.push(FieldError::not_supported(
                &path.key("template").key("spec").key("restartPolicy"),
                json!(p),
                &["Always"],
            ));
        }
    }

    fn validate_update(&self, old: &Self, errs: &mut Vec<FieldError>) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            validate_immutable_selector(&n.selector, &o.selector, errs);
        }
    }
}

impl Kind for ControllerRevision {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{KindOps, Typed};
    use serde_json::Value;

    fn daemon_set(image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "ds", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "ds"}},
                "template": {"metadata": {"labels": {"app": "ds"}}, "spec": {"containers": [{"name": "c", "image": image}]}}
            }
        })
    }

    #[test]
    fn daemon_set_template_generation_starts_at_one_and_counts_template_changes() {
        let ops = Typed::<DaemonSet>::default();
        let generation = |v: &Value| v["metadata"]["annotations"][DAEMONSET_TEMPLATE_GENERATION].clone();
        let created = ops.admit_create(daemon_set("a")).unwrap().object;
        assert_eq!(generation(&created), "1");
        // A client's update that drops the annotation cannot reset it.
        let same = ops.admit_update(daemon_set("a"), &created).unwrap().object;
        assert_eq!(generation(&same), "1");
        let changed = ops.admit_update(daemon_set("b"), &same).unwrap().object;
        assert_eq!(generation(&changed), "2");
    }

    #[test]
    fn stateful_set_containers_may_mount_their_claim_templates() {
        let ops = Typed::<StatefulSet>::default();
        let sts = |mount: &str| {
            json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "db", "namespace": "default"},
                "spec": {
                    "selector": {"matchLabels": {"app": "db"}},
                    "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [
                        {"name": "c", "image": "i", "volumeMounts": [{"name": mount, "mountPath": "/data"}]}]}},
                    "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]
                }
            })
        };
        assert!(ops.admit_create(sts("data")).is_ok());
        assert!(ops.admit_create(sts("other")).is_err());
    }
}

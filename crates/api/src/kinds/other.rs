//! The kinds of the remaining served groups. Most store what they are given; the defaults and
//! checks here are the ones upstream applies to them.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, MutatingWebhookConfiguration, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler as HpaV1;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler as HpaV2;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as EventV1;
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use k8s_openapi::api::networking::v1::{IPAddress, Ingress, IngressClass, NetworkPolicy, ServiceCIDR};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::{
    CSIDriver, CSINode, CSIStorageCapacity, StorageClass, VolumeAttachment, VolumeAttributesClass,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionStatus,
};
use serde_json::json;

use super::{Kind, NameRule};
use crate::field::{FieldError, FieldPath};

impl Kind for HpaV2 {
    fn set_defaults(&mut self) {
        {
            let spec = &mut self.spec;
            spec.min_replicas.get_or_insert(1);
            if spec.metrics.as_ref().is_none_or(Vec::is_empty) {
                // Upstream's default target: 80% average CPU utilisation.
                spec.metrics = Some(vec![
                    serde_json::from_value(json!({
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}
                    }))
                    .expect("static metric spec is valid"),
                ]);
            }
            // Upstream's `SetDefaults_HorizontalPodAutoscalerBehavior`: a behavior that is set
            // has its unset parts filled in; an unset one stays unset (the controller applies
            // the same rules, with its own scale-down window).
            if let Some(behavior) = spec.behavior.as_mut() {
                let up = behavior.scale_up.get_or_insert_with(Default::default);
                up.stabilization_window_seconds.get_or_insert(0);
                up.select_policy.get_or_insert_with(|| "Max".into());
                up.policies.get_or_insert_with(|| vec![scaling_policy("Pods", 4), scaling_policy("Percent", 100)]);
                let down = behavior.scale_down.get_or_insert_with(Default::default);
                down.select_policy.get_or_insert_with(|| "Max".into());
                down.policies.get_or_insert_with(|| vec![scaling_policy("Percent", 100)]);
            }
        }
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        validate_hpa_bounds(Some((self.spec.min_replicas, self.spec.max_replicas)), errs);
    }
}

/// A scaling policy over upstream's default 15 s period.
fn scaling_policy(type_: &str, value: i32) -> k8s_openapi::api::autoscaling::v2::HPAScalingPolicy {
    k8s_openapi::api::autoscaling::v2::HPAScalingPolicy { type_: type_.into(), value, period_seconds: 15 }
}

impl Kind for HpaV1 {
    fn set_defaults(&mut self) {
        self.spec.min_replicas.get_or_insert(1);
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        validate_hpa_bounds(Some((self.spec.min_replicas, self.spec.max_replicas)), errs);
    }
}

fn validate_hpa_bounds(bounds: Option<(Option<i32>, i32)>, errs: &mut Vec<FieldError>) {
    let Some((min, max)) = bounds else {
        return errs.push(FieldError::required(&FieldPath::new("spec"), ""));
    };
    let path = FieldPath::new("spec");
    if let Some(min) = min
        && min < 1
    {
        errs.push(FieldError::invalid(&path.key("minReplicas"), json!(min), "must be greater than or equal to 1"));
    }
    if max < 1 {
        errs.push(FieldError::invalid(&path.key("maxReplicas"), json!(max), "must be greater than or equal to 1"));
    } else if min.is_some_and(|m| m > max) {
        errs.push(FieldError::invalid(
            &path.key("maxReplicas"),
            json!(max),
            "must be greater than or equal to `minReplicas`",
        ));
    }
}

impl Kind for Ingress {
    fn validate(&self, errs: &mut Vec<FieldError>) {
        let path = FieldPath::new("spec").key("rules");
        for (i, rule) in self.spec.iter().flat_map(|s| s.rules.iter().flatten()).enumerate() {
            for (j, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let pp = path.index(i).key("http").key("paths").index(j);
                const TYPES: [&str; 3] = ["Exact", "ImplementationSpecific", "Prefix"];
                if !TYPES.contains(&p.path_type.as_str()) {
                    errs.push(FieldError::not_supported(&pp.key("pathType"), json!(p.path_type), &TYPES));
                }
                if p.path_type != "ImplementationSpecific" && !p.path.as_deref().unwrap_or("").starts_with('/') {
                    errs.push(FieldError::invalid(&pp.key("path"), json!(p.path), "must be an absolute path"));
                }
            }
        }
    }
}

impl Kind for NetworkPolicy {
    fn set_defaults(&mut self) {
        if let Some(spec) = &mut self.spec {
            for rule in spec.ingress.iter_mut().flatten() {
                for p in rule.ports.iter_mut().flatten() {
                    p.protocol.get_or_insert_with(|| "TCP".into());
                }
            }
            for rule in spec.egress.iter_mut().flatten() {
                for p in rule.ports.iter_mut().flatten() {
                    p.protocol.get_or_insert_with(|| "TCP".into());
                }
            }
            if spec.policy_types.is_none() {
                let mut types = vec!["Ingress".to_string()];
                if spec.egress.is_some() {
                    types.push("Egress".into());
                }
                spec.policy_types = Some(types);
            }
        }
    }
}

impl Kind for EndpointSlice {
    fn set_defaults(&mut self) {
        for p in self.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
            p.name.get_or_insert_with(String::new);
        }
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        const TYPES: [&str; 3] = ["FQDN", "IPv4", "IPv6"];
        if !TYPES.contains(&self.address_type.as_str()) {
            errs.push(FieldError::not_supported(&FieldPath::new("addressType"), json!(self.address_type), &TYPES));
        }
    }
}

/// The highest priority a user-defined PriorityClass may have (upstream's
/// `HighestUserDefinablePriority`); the system classes sit above it.
pub const HIGHEST_USER_DEFINABLE_PRIORITY: i32 = 1_000_000_000;
/// The built-in system classes and their values.
const SYSTEM_PRIORITY_CLASSES: [(&str, i32); 2] =
    [("system-node-critical", 2_000_001_000), ("system-cluster-critical", 2_000_000_000)];

impl Kind for PriorityClass {
    fn set_defaults(&mut self) {
        self.preemption_policy.get_or_insert_with(|| "PreemptLowerPriority".into());
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        if name.starts_with("system-") {
            let problem = match SYSTEM_PRIORITY_CLASSES.iter().find(|(n, _)| *n == name) {
                None => Some(format!("{name} is not a known system priority class")),
                Some((_, value)) if Some(*value) != self.value => {
                    Some(format!("value of {name} PriorityClass must be {value}"))
                }
                Some(_) if self.global_default == Some(true) => {
                    Some(format!("globalDefault of {name} PriorityClass must be false"))
                }
                Some(_) => None,
            };
            if let Some(problem) = problem {
                errs.push(FieldError::forbidden(
                    &FieldPath::new("metadata").key("name"),
                    &format!(
                        "priority class names with 'system-' prefix are reserved for system use only. error: {problem}"
                    ),
                ));
            }
        } else if self.value.unwrap_or(0) > HIGHEST_USER_DEFINABLE_PRIORITY {
            errs.push(FieldError::forbidden(
                &FieldPath::new("value"),
                &format!("maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE_PRIORITY}"),
            ));
        }
    }

    fn validate_update(&self, old: &Self, errs: &mut Vec<FieldError>) {
        if self.value != old.value {
            errs.push(FieldError::forbidden(&FieldPath::new("value"), "may not be changed in an update."));
        }
        if self.preemption_policy != old.preemption_policy {
            errs.push(FieldError::invalid(
                &FieldPath::new("preemptionPolicy"),
                json!(self.preemption_policy),
                "field is immutable",
            ));
        }
    }
}

impl Kind for StorageClass {
    fn set_defaults(&mut self) {
        self.reclaim_policy.get_or_insert_with(|| "Delete".into());
        self.volume_binding_mode.get_or_insert_with(|| "Immediate".into());
    }
}

impl Kind for CertificateSigningRequest {
    const FIELD_LABELS: &'static [(&'static str, &'static str)] = &[("spec.signerName", "spec.signerName")];
}

impl Kind for Role {
    const NAME_RULE: NameRule = NameRule::PathSegment;
}
impl Kind for ClusterRole {
    const NAME_RULE: NameRule = NameRule::PathSegment;
}
impl Kind for RoleBinding {
    const NAME_RULE: NameRule = NameRule::PathSegment;
}
impl Kind for ClusterRoleBinding {
    const NAME_RULE: NameRule = NameRule::PathSegment;
}

impl Kind for CustomResourceDefinition {
    /// upstream's `SetDefaults_CustomResourceDefinitionSpec`.
    fn set_defaults(&mut self) {
        let names = &mut self.spec.names;
        if names.singular.as_deref().is_none_or(str::is_empty) {
            names.singular = Some(names.kind.to_lowercase());
        }
        if names.list_kind.as_deref().is_none_or(str::is_empty) && !names.kind.is_empty() {
            names.list_kind = Some(format!("{}List", names.kind));
        }
        self.spec.conversion.get_or_insert_with(|| CustomResourceConversion { strategy: "None".into(), webhook: None });
    }

    /// A new definition has no accepted names yet; its storage version is recorded as stored.
    fn prepare_for_create(&mut self) {
        let stored: Vec<String> =
            self.spec.versions.iter().filter(|v| v.storage).map(|v| v.name.clone()).take(1).collect();
        self.status = Some(CustomResourceDefinitionStatus {
            accepted_names: Some(CustomResourceDefinitionNames::default()),
            stored_versions: Some(stored),
            ..Default::default()
        });
    }

    /// upstream's `ValidateCustomResourceDefinition`, in its essentials: the name is
    /// `<plural>.<group>`, the scope is known, and exactly one served version is stored.
    fn validate(&self, errs: &mut Vec<FieldError>) {
        let spec = &self.spec;
        let path = FieldPath::new("spec");
        let expected = format!("{}.{}", spec.names.plural, spec.group);
        if self.metadata.name.as_deref() != Some(expected.as_str()) {
            errs.push(FieldError::invalid(
                &FieldPath::new("metadata").key("name"),
                json!(self.metadata.name),
                "must be spec.names.plural+\".\"+spec.group",
            ));
        }
        if spec.group.is_empty() {
            errs.push(FieldError::required(&path.key("group"), ""));
        } else if !spec.group.contains('.') {
            errs.push(FieldError::invalid(
                &path.key("group"),
                json!(spec.group),
                "should be a domain with at least one dot",
            ));
        }
        const SCOPES: [&str; 2] = ["Cluster", "Namespaced"];
        if !SCOPES.contains(&spec.scope.as_str()) {
            errs.push(FieldError::not_supported(&path.key("scope"), json!(spec.scope), &SCOPES));
        }
        if spec.names.kind.is_empty() {
            errs.push(FieldError::required(&path.key("names").key("kind"), ""));
        }
        if spec.versions.is_empty() {
            errs.push(FieldError::invalid(
                &path.key("versions"),
                json!([]),
                "must have exactly one version marked as storage version",
            ));
        } else if spec.versions.iter().filter(|v| v.storage).count() != 1 {
            errs.push(FieldError::invalid(
                &path.key("versions"),
                json!(spec.versions.iter().map(|v| &v.name).collect::<Vec<_>>()),
                "must have exactly one version marked as storage version",
            ));
        }
    }
}

impl Kind for EventV1 {}
impl Kind for Lease {}
impl Kind for IngressClass {}
impl Kind for IPAddress {}
impl Kind for ServiceCIDR {}
impl Kind for RuntimeClass {}
impl Kind for PodDisruptionBudget {}
impl Kind for CSIDriver {}
impl Kind for CSINode {}
impl Kind for CSIStorageCapacity {}
impl Kind for VolumeAttachment {}
impl Kind for VolumeAttributesClass {}
impl Kind for MutatingWebhookConfiguration {}
impl Kind for ValidatingWebhookConfiguration {}
impl Kind for ValidatingAdmissionPolicy {}
impl Kind for ValidatingAdmissionPolicyBinding {}
impl Kind for MutatingAdmissionPolicy {}
impl Kind for MutatingAdmissionPolicyBinding {}
impl Kind for FlowSchema {}
impl Kind for PriorityLevelConfiguration {}

#[cfg(test)]
mod hpa_tests {
    use super::*;

    fn hpa(behavior: serde_json::Value) -> HpaV2 {
        serde_json::from_value(json!({
            "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "maxReplicas": 5, "behavior": behavior}
        }))
        .unwrap()
    }

    #[test]
    fn a_behavior_that_is_set_gets_upstreams_rules_where_unset_and_keeps_its_own() {
        let mut h = hpa(json!({"scaleDown": {"stabilizationWindowSeconds": 60}}));
        h.set_defaults();
        let behavior = serde_json::to_value(h.spec.behavior.unwrap()).unwrap();
        assert_eq!(
            behavior,
            json!({
                "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                    {"type": "Pods", "value": 4, "periodSeconds": 15},
                    {"type": "Percent", "value": 100, "periodSeconds": 15}]},
                "scaleDown": {"stabilizationWindowSeconds": 60, "selectPolicy": "Max", "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": 15}]}
            })
        );
    }

    #[test]
    fn an_unset_behavior_stays_unset() {
        let mut h = hpa(serde_json::Value::Null);
        h.set_defaults();
        assert!(h.spec.behavior.is_none());
        assert_eq!(h.spec.min_replicas, Some(1));
    }
}

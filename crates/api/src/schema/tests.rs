//! Tests of the whole set built from every k8s-openapi kind, checked against upstream's
//! published shapes.

use std::sync::LazyLock;

use k8s_openapi::{api, apiextensions_apiserver, apimachinery, kube_aggregator};
use serde_json::{Value, json};

use super::table::PATCH_METADATA;
use super::*;

/// Every type k8s-openapi implements `Resource` for (103 with feature v1_36), as a registry
/// serving all of them would add them.
fn every_kind() -> SchemaSet {
    let mut set = SchemaSet::new();
    set.add_with_list::<api::admissionregistration::v1::MutatingAdmissionPolicy>();
    set.add_with_list::<api::admissionregistration::v1::MutatingAdmissionPolicyBinding>();
    set.add_with_list::<api::admissionregistration::v1::MutatingWebhookConfiguration>();
    set.add_with_list::<api::admissionregistration::v1::ValidatingAdmissionPolicy>();
    set.add_with_list::<api::admissionregistration::v1::ValidatingAdmissionPolicyBinding>();
    set.add_with_list::<api::admissionregistration::v1::ValidatingWebhookConfiguration>();
    set.add_with_list::<api::admissionregistration::v1alpha1::MutatingAdmissionPolicy>();
    set.add_with_list::<api::admissionregistration::v1alpha1::MutatingAdmissionPolicyBinding>();
    set.add_with_list::<api::admissionregistration::v1beta1::MutatingAdmissionPolicy>();
    set.add_with_list::<api::admissionregistration::v1beta1::MutatingAdmissionPolicyBinding>();
    set.add_with_list::<api::apiserverinternal::v1alpha1::StorageVersion>();
    set.add_with_list::<api::apps::v1::ControllerRevision>();
    set.add_with_list::<api::apps::v1::DaemonSet>();
    set.add_with_list::<api::apps::v1::Deployment>();
    set.add_with_list::<api::apps::v1::ReplicaSet>();
    set.add_with_list::<api::apps::v1::StatefulSet>();
    set.add::<api::authentication::v1::SelfSubjectReview>();
    set.add::<api::authentication::v1::TokenRequest>();
    set.add::<api::authentication::v1::TokenReview>();
    set.add::<api::authorization::v1::LocalSubjectAccessReview>();
    set.add::<api::authorization::v1::SelfSubjectAccessReview>();
    set.add::<api::authorization::v1::SelfSubjectRulesReview>();
    set.add::<api::authorization::v1::SubjectAccessReview>();
    set.add_with_list::<api::autoscaling::v1::HorizontalPodAutoscaler>();
    set.add::<api::autoscaling::v1::Scale>();
    set.add_with_list::<api::autoscaling::v2::HorizontalPodAutoscaler>();
    set.add_with_list::<api::batch::v1::CronJob>();
    set.add_with_list::<api::batch::v1::Job>();
    set.add_with_list::<api::certificates::v1::CertificateSigningRequest>();
    set.add_with_list::<api::certificates::v1alpha1::ClusterTrustBundle>();
    set.add_with_list::<api::certificates::v1beta1::ClusterTrustBundle>();
    set.add_with_list::<api::certificates::v1beta1::PodCertificateRequest>();
    set.add_with_list::<api::coordination::v1::Lease>();
    set.add_with_list::<api::coordination::v1alpha2::LeaseCandidate>();
    set.add_with_list::<api::coordination::v1beta1::LeaseCandidate>();
    set.add::<api::core::v1::Binding>();
    set.add_with_list::<api::core::v1::ComponentStatus>();
    set.add_with_list::<api::core::v1::ConfigMap>();
    set.add_with_list::<api::core::v1::Endpoints>();
    set.add_with_list::<api::core::v1::Event>();
    set.add_with_list::<api::core::v1::LimitRange>();
    set.add_with_list::<api::core::v1::Namespace>();
    set.add_with_list::<api::core::v1::Node>();
    set.add_with_list::<api::core::v1::PersistentVolume>();
    set.add_with_list::<api::core::v1::PersistentVolumeClaim>();
    set.add_with_list::<api::core::v1::Pod>();
    set.add_with_list::<api::core::v1::PodTemplate>();
    set.add_with_list::<api::core::v1::ReplicationController>();
    set.add_with_list::<api::core::v1::ResourceQuota>();
    set.add_with_list::<api::core::v1::Secret>();
    set.add_with_list::<api::core::v1::Service>();
    set.add_with_list::<api::core::v1::ServiceAccount>();
    set.add_with_list::<api::discovery::v1::EndpointSlice>();
    set.add_with_list::<api::events::v1::Event>();
    set.add_with_list::<api::flowcontrol::v1::FlowSchema>();
    set.add_with_list::<api::flowcontrol::v1::PriorityLevelConfiguration>();
    set.add_with_list::<api::networking::v1::Ingress>();
    set.add_with_list::<api::networking::v1::IngressClass>();
    set.add_with_list::<api::networking::v1::IPAddress>();
    set.add_with_list::<api::networking::v1::NetworkPolicy>();
    set.add_with_list::<api::networking::v1::ServiceCIDR>();
    set.add_with_list::<api::networking::v1beta1::IPAddress>();
    set.add_with_list::<api::networking::v1beta1::ServiceCIDR>();
    set.add_with_list::<api::node::v1::RuntimeClass>();
    set.add::<api::policy::v1::Eviction>();
    set.add_with_list::<api::policy::v1::PodDisruptionBudget>();
    set.add_with_list::<api::rbac::v1::ClusterRole>();
    set.add_with_list::<api::rbac::v1::ClusterRoleBinding>();
    set.add_with_list::<api::rbac::v1::Role>();
    set.add_with_list::<api::rbac::v1::RoleBinding>();
    set.add_with_list::<api::resource::v1::DeviceClass>();
    set.add_with_list::<api::resource::v1::ResourceClaim>();
    set.add_with_list::<api::resource::v1::ResourceClaimTemplate>();
    set.add_with_list::<api::resource::v1::ResourceSlice>();
    set.add_with_list::<api::resource::v1alpha3::DeviceTaintRule>();
    set.add_with_list::<api::resource::v1alpha3::ResourcePoolStatusRequest>();
    set.add_with_list::<api::resource::v1beta1::DeviceClass>();
    set.add_with_list::<api::resource::v1beta1::ResourceClaim>();
    set.add_with_list::<api::resource::v1beta1::ResourceClaimTemplate>();
    set.add_with_list::<api::resource::v1beta1::ResourceSlice>();
    set.add_with_list::<api::resource::v1beta2::DeviceClass>();
    set.add_with_list::<api::resource::v1beta2::DeviceTaintRule>();
    set.add_with_list::<api::resource::v1beta2::ResourceClaim>();
    set.add_with_list::<api::resource::v1beta2::ResourceClaimTemplate>();
    set.add_with_list::<api::resource::v1beta2::ResourceSlice>();
    set.add_with_list::<api::scheduling::v1::PriorityClass>();
    set.add_with_list::<api::scheduling::v1alpha2::PodGroup>();
    set.add_with_list::<api::scheduling::v1alpha2::Workload>();
    set.add_with_list::<api::storage::v1::CSIDriver>();
    set.add_with_list::<api::storage::v1::CSINode>();
    set.add_with_list::<api::storage::v1::CSIStorageCapacity>();
    set.add_with_list::<api::storage::v1::StorageClass>();
    set.add_with_list::<api::storage::v1::VolumeAttachment>();
    set.add_with_list::<api::storage::v1::VolumeAttributesClass>();
    set.add_with_list::<api::storage::v1beta1::VolumeAttributesClass>();
    set.add_with_list::<api::storagemigration::v1beta1::StorageVersionMigration>();
    set.add_with_list::<apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>();
    set.add::<apimachinery::pkg::apis::meta::v1::APIGroup>();
    set.add::<apimachinery::pkg::apis::meta::v1::APIGroupList>();
    set.add::<apimachinery::pkg::apis::meta::v1::APIResourceList>();
    set.add::<apimachinery::pkg::apis::meta::v1::APIVersions>();
    set.add::<apimachinery::pkg::apis::meta::v1::Status>();
    set.add_with_list::<kube_aggregator::pkg::apis::apiregistration::v1::APIService>();
    set
}

static EVERY_KIND: LazyLock<SchemaSet> = LazyLock::new(every_kind);

fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            // JSONSchemaProps has a property named `$ref`; only a string is a reference.
            if let Some(Value::String(reference)) = object.get("$ref") {
                found.push(reference.clone());
            }
            object.values().for_each(|v| references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

#[test]
fn definitions_are_named_and_referenced_as_upstream() {
    let set = &*EVERY_KIND;
    let deployment = set.definition("io.k8s.api.apps.v1.Deployment").unwrap();
    assert_eq!(
        deployment["properties"]["spec"]["allOf"],
        json!([{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"}])
    );
    assert!(set.definition("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta").is_some());
    assert!(set.definition("io.k8s.api.core.v1.PodSpec").is_some());
}

#[test]
fn every_reference_resolves_within_the_set() {
    let set = &*EVERY_KIND;
    let mut found = Vec::new();
    references(&set.to_components_json(), &mut found);
    assert!(found.len() > 1000);
    for reference in found {
        let name =
            reference.strip_prefix(REF_PREFIX).unwrap_or_else(|| panic!("{reference} is not a components reference"));
        assert!(set.definition(name).is_some(), "{reference} does not resolve");
    }
}

#[test]
fn references_never_have_siblings_as_openapi_3_0_ignores_them() {
    fn check(value: &Value) {
        match value {
            Value::Object(object) => {
                // JSONSchemaProps has a property named `$ref`; only a string is a reference.
                if object.get("$ref").is_some_and(Value::is_string) {
                    assert_eq!(object.len(), 1, "$ref with siblings: {value}");
                }
                object.values().for_each(check);
            }
            Value::Array(items) => items.iter().for_each(check),
            _ => {}
        }
    }
    check(&EVERY_KIND.to_components_json());
}

#[test]
fn top_level_kinds_carry_their_group_version_kind() {
    let set = &*EVERY_KIND;
    let deployment = set.definition("io.k8s.api.apps.v1.Deployment").unwrap();
    assert_eq!(deployment[GROUP_VERSION_KIND], json!([{"group": "apps", "kind": "Deployment", "version": "v1"}]));
    let pod = set.definition("io.k8s.api.core.v1.Pod").unwrap();
    assert_eq!(pod[GROUP_VERSION_KIND], json!([{"group": "", "kind": "Pod", "version": "v1"}]));
    let spec = set.definition("io.k8s.api.apps.v1.DeploymentSpec").unwrap();
    assert!(spec.get(GROUP_VERSION_KIND).is_none());
    assert_eq!(
        set.definition_for_kind(&GroupVersionKind::new("apps", "v1", "Deployment")),
        Some("io.k8s.api.apps.v1.Deployment")
    );
    assert_eq!(
        set.definition_for_kind(&GroupVersionKind::new("", "v1", "Status")),
        Some("io.k8s.apimachinery.pkg.apis.meta.v1.Status")
    );
}

#[test]
fn listable_kinds_get_a_list_definition_like_upstream() {
    let set = &*EVERY_KIND;
    let list = set.definition("io.k8s.api.apps.v1.DeploymentList").unwrap();
    assert_eq!(list[GROUP_VERSION_KIND], json!([{"group": "apps", "kind": "DeploymentList", "version": "v1"}]));
    assert_eq!(list["required"], json!(["items"]));
    assert_eq!(
        list["properties"]["items"]["items"],
        json!({"$ref": "#/components/schemas/io.k8s.api.apps.v1.Deployment"})
    );
    assert_eq!(
        list["properties"]["metadata"]["allOf"],
        json!([{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"}])
    );
    assert_eq!(
        set.definition_for_kind(&GroupVersionKind::new("", "v1", "PodList")),
        Some("io.k8s.api.core.v1.PodList")
    );
    // Review-style kinds are not listable and get no list.
    assert!(set.definition("io.k8s.api.authentication.v1.TokenReviewList").is_none());
}

#[test]
fn every_kind_yields_the_expected_number_of_definitions() {
    // k8s-openapi (v1_36) has 683 definitions; all but Patch, WatchEvent and version.Info (which
    // only operations use) are reachable from the 103 kinds, and 88 kinds are listable. A
    // change means k8s-openapi or the set's construction changed.
    assert_eq!(EVERY_KIND.len(), 683 - 3 + 88);
    assert!(EVERY_KIND.definition("io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent").is_none());
}

#[test]
fn every_table_entry_decorates_an_existing_field() {
    let set = &*EVERY_KIND;
    let mut decorated = 0;
    for (definition, metadata) in PATCH_METADATA.iter() {
        let Some(schema) = set.definition(definition) else {
            panic!("table definition {definition} is not generated from any kind");
        };
        if !metadata.own.is_empty() {
            assert_eq!(SchemaExtensions::from_schema(schema).unwrap(), metadata.own);
            decorated += 1;
        }
        for (field, extensions) in &metadata.fields {
            let found =
                set.field(definition, field).unwrap_or_else(|e| panic!("table entry {definition}.{field}: {e}"));
            assert_eq!(&found.extensions, extensions, "{definition}.{field}");
            decorated += 1;
        }
    }
    assert_eq!(decorated, 407 + 36);
}

#[test]
fn field_query_resolves_lists_maps_and_named_types() {
    let set = &*EVERY_KIND;
    let containers = set.field("io.k8s.api.core.v1.PodSpec", "containers").unwrap();
    assert_eq!(containers.value_type, ValueType::List(Box::new(ValueType::Named("io.k8s.api.core.v1.Container"))));
    assert_eq!(containers.extensions.patch_strategy, Some(PatchStrategy::Merge));
    assert_eq!(containers.extensions.patch_merge_key, Some("name"));
    assert_eq!(containers.extensions.list_type, Some(ListType::Map));

    let labels = set.field("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "labels").unwrap();
    assert_eq!(labels.value_type, ValueType::Map(Box::new(ValueType::Primitive("string"))));
    assert!(labels.extensions.is_empty());

    let strategy = set.field("io.k8s.api.apps.v1.DeploymentSpec", "strategy").unwrap();
    assert_eq!(strategy.value_type, ValueType::Named("io.k8s.api.apps.v1.DeploymentStrategy"));
    assert_eq!(strategy.extensions.patch_strategy, Some(PatchStrategy::RetainKeys));

    let limits = set.field("io.k8s.api.core.v1.ResourceRequirements", "limits").unwrap();
    assert_eq!(limits.value_type, ValueType::Map(Box::new(ValueType::Named(QUANTITY))));
    let replicas = set.field("io.k8s.api.apps.v1.DeploymentSpec", "replicas").unwrap();
    assert_eq!(replicas.value_type, ValueType::Primitive("integer"));
}

#[test]
fn field_query_reports_unknown_definitions_and_fields() {
    let set = &*EVERY_KIND;
    assert_eq!(
        set.field("io.k8s.api.apps.v1.Nothing", "spec").unwrap_err(),
        SchemaError::UnknownDefinition { definition: "io.k8s.api.apps.v1.Nothing".into() }
    );
    assert_eq!(
        set.field("io.k8s.api.apps.v1.DeploymentSpec", "replica").unwrap_err(),
        SchemaError::UnknownField { definition: "io.k8s.api.apps.v1.DeploymentSpec".into(), field: "replica".into() }
    );
}

#[test]
fn int_or_string_and_quantity_take_upstream_v3_shapes() {
    let set = &*EVERY_KIND;
    let int_or_string = set.definition(INT_OR_STRING).unwrap();
    assert_eq!(int_or_string["format"], "int-or-string");
    assert_eq!(int_or_string["oneOf"], json!([{"type": "integer"}, {"type": "string"}]));
    assert!(int_or_string.get("x-kubernetes-int-or-string").is_none());
    let quantity = set.definition(QUANTITY).unwrap();
    assert_eq!(quantity["oneOf"], json!([{"type": "string"}, {"type": "number"}]));
}

#[test]
fn adding_a_kind_twice_changes_nothing() {
    let mut set = SchemaSet::new();
    set.add_with_list::<api::apps::v1::Deployment>();
    let once = set.to_components_json();
    let name = set.add_with_list::<api::apps::v1::Deployment>().to_owned();
    assert_eq!(name, "io.k8s.api.apps.v1.Deployment");
    assert_eq!(set.to_components_json(), once);
}

#[test]
fn meta_types_can_serve_several_kinds() {
    let mut set = SchemaSet::new();
    let name = set.add_type::<apimachinery::pkg::apis::meta::v1::DeleteOptions>().to_owned();
    set.add_group_version_kind(&name, GroupVersionKind::new("", "v1", "DeleteOptions")).unwrap();
    set.add_group_version_kind(&name, GroupVersionKind::new("apps", "v1", "DeleteOptions")).unwrap();
    assert_eq!(
        set.definition(&name).unwrap()[GROUP_VERSION_KIND],
        json!([
            {"group": "", "kind": "DeleteOptions", "version": "v1"},
            {"group": "apps", "kind": "DeleteOptions", "version": "v1"},
        ])
    );
    assert!(matches!(
        set.add_group_version_kind("io.k8s.Nothing", GroupVersionKind::new("", "v1", "X")),
        Err(SchemaError::UnknownDefinition { .. })
    ));
}

#[test]
fn components_are_sorted_by_name_and_carry_the_extensions_kubectl_reads() {
    let mut set = SchemaSet::new();
    set.add_with_list::<api::core::v1::Service>();
    set.add_with_list::<apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>();
    set.add_with_list::<kube_aggregator::pkg::apis::apiregistration::v1::APIService>();
    let components = set.to_components_json();
    let names: Vec<&String> = components.as_object().unwrap().keys().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    let ports = &components["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"];
    assert_eq!(ports[PATCH_STRATEGY], "merge");
    assert_eq!(ports[PATCH_MERGE_KEY], "port");
    assert_eq!(ports[LIST_TYPE], "map");
    assert_eq!(ports[LIST_MAP_KEYS], json!(["port", "protocol"]));
    assert_eq!(components["io.k8s.api.core.v1.ServiceSpec"]["properties"]["selector"][MAP_TYPE], "atomic");
}

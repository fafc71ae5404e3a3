//! The table's JSON names against a second source: k8s-openapi's schemas, generated from
//! upstream's OpenAPI, which is generated from the same Go json tags. Every message the schemas
//! also describe must name exactly the properties the schema names (with inline fields expanded).

use std::collections::BTreeSet;

use k8s_openapi::api::{
    admissionregistration::v1 as admissionregistration, apps::v1 as apps, authentication::v1 as authentication,
    authorization::v1 as authorization, autoscaling::v1 as autoscaling1, autoscaling::v2 as autoscaling2,
    batch::v1 as batch, certificates::v1 as certificates, coordination::v1 as coordination, core::v1 as core,
    discovery::v1 as discovery, events::v1 as events, flowcontrol::v1 as flowcontrol, networking::v1 as networking,
    node::v1 as node, policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling, storage::v1 as storage,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::generate::SchemaSettings;
use serde_json::Value;

use crate::protobuf::table::{FieldType, Message, Table, table};

macro_rules! definitions_of {
    ($($ty:ty),* $(,)?) => {{
        let mut generator = SchemaSettings::openapi3().into_generator();
        $( generator.subschema_for::<$ty>(); )*
        generator.take_definitions(false)
    }};
}

/// The JSON property names a message's object has, inline fields expanded.
fn json_names(table: &Table, message: &Message, out: &mut BTreeSet<String>) {
    for field in &message.fields {
        match (field.inline, field.ty) {
            (true, FieldType::Message(index)) => json_names(table, table.message_at(index), out),
            _ => {
                out.insert(field.json_name.to_owned());
            }
        }
    }
}

/// The table message a schema definition (`io.k8s.api.apps.v1.Deployment`) describes.
fn message_for<'t>(table: &'t Table, definition: &str) -> Option<&'t Message> {
    let (package, name) = definition.rsplit_once('.')?;
    let proto = format!("k8s.io.{}", package.strip_prefix("io.k8s.")?);
    let package = table.packages().iter().find(|p| p.proto == proto)?;
    table.message(&format!("{}.{name}", package.alias))
}

#[test]
fn json_names_match_k8s_openapi_schemas_of_every_served_kind() {
    let definitions = definitions_of!(
        core::Binding,
        core::ComponentStatus,
        core::ConfigMap,
        core::Endpoints,
        core::Event,
        core::LimitRange,
        core::Namespace,
        core::Node,
        core::PersistentVolume,
        core::PersistentVolumeClaim,
        core::Pod,
        core::PodTemplate,
        core::ReplicationController,
        core::ResourceQuota,
        core::Secret,
        core::Service,
        core::ServiceAccount,
        core::EphemeralContainer,
        apps::ControllerRevision,
        apps::DaemonSet,
        apps::Deployment,
        apps::ReplicaSet,
        apps::StatefulSet,
        batch::CronJob,
        batch::Job,
        autoscaling1::HorizontalPodAutoscaler,
        autoscaling1::Scale,
        autoscaling2::HorizontalPodAutoscaler,
        networking::Ingress,
        networking::IngressClass,
        networking::NetworkPolicy,
        networking::IPAddress,
        networking::ServiceCIDR,
        rbac::ClusterRole,
        rbac::ClusterRoleBinding,
        rbac::Role,
        rbac::RoleBinding,
        coordination::Lease,
        discovery::EndpointSlice,
        policy::Eviction,
        policy::PodDisruptionBudget,
        storage::CSIDriver,
        storage::CSINode,
        storage::CSIStorageCapacity,
        storage::StorageClass,
        storage::VolumeAttachment,
        storage::VolumeAttributesClass,
        events::Event,
        scheduling::PriorityClass,
        node::RuntimeClass,
        certificates::CertificateSigningRequest,
        admissionregistration::MutatingWebhookConfiguration,
        admissionregistration::ValidatingWebhookConfiguration,
        admissionregistration::ValidatingAdmissionPolicy,
        admissionregistration::ValidatingAdmissionPolicyBinding,
        flowcontrol::FlowSchema,
        flowcontrol::PriorityLevelConfiguration,
        authentication::TokenReview,
        authentication::TokenRequest,
        authentication::SelfSubjectReview,
        authorization::SubjectAccessReview,
        authorization::SelfSubjectAccessReview,
        authorization::LocalSubjectAccessReview,
        authorization::SelfSubjectRulesReview,
        meta::DeleteOptions,
        meta::Status,
        meta::APIResourceList,
        meta::APIGroupList,
        meta::APIVersions,
    );
    let table = table();
    let mut compared = 0;
    let mut mismatches = Vec::new();
    for (definition, schema) in &definitions {
        let Some(message) = message_for(table, definition) else {
            continue;
        };
        if message.custom.is_some() || message.is_list {
            continue;
        }
        let mut ours = BTreeSet::new();
        json_names(table, message, &mut ours);
        let mut theirs: BTreeSet<String> = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        // TypeMeta is not part of the object's message; the envelope carries it.
        for type_meta in ["apiVersion", "kind"] {
            if !ours.contains(type_meta) {
                theirs.remove(type_meta);
            }
        }
        compared += 1;
        if ours != theirs {
            let only_ours: Vec<_> = ours.difference(&theirs).collect();
            let only_theirs: Vec<_> = theirs.difference(&ours).collect();
            mismatches.push(format!("{definition}: table only {only_ours:?}, schema only {only_theirs:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // The kinds above reach most of the table's messages; fewer means a broken mapping.
    assert!(compared > 300, "compared only {compared} messages");
}

//! Tests of the whole decoder: real kubectl bodies, hand-built objects of the common kinds, the
//! table's JSON names against k8s-openapi's schemas, and hostile input.

pub(crate) mod encoder;
mod json_names;
mod kubectl;
mod objects;
mod robustness;

use super::is_protobuf_content_type;

#[test]
fn protobuf_content_type_is_recognised_with_or_without_parameters() {
    assert!(is_protobuf_content_type("application/vnd.kubernetes.protobuf"));
    assert!(is_protobuf_content_type("application/vnd.kubernetes.protobuf; charset=utf-8"));
    assert!(is_protobuf_content_type("Application/VND.Kubernetes.Protobuf"));
    assert!(is_protobuf_content_type(" application/vnd.kubernetes.protobuf;stream=watch"));
}

#[test]
fn other_content_types_are_not_protobuf() {
    assert!(!is_protobuf_content_type("application/json"));
    assert!(!is_protobuf_content_type("application/vnd.kubernetes.protobuf+json"));
    assert!(!is_protobuf_content_type("application/apply-patch+yaml"));
    assert!(!is_protobuf_content_type(""));
}

//! Objects of the common kinds, hand-encoded field by field as upstream's generated code writes
//! them, decoded into the JSON a JSON client sends for the same object.

use serde_json::{Value, json};

use super::encoder::{Msg, envelope, int_or_string_int, int_or_string_str, object_meta, quantity};
use crate::protobuf::{ProtobufError, decode_request_body};

fn decode(api_version: &str, kind: &str, object: Msg) -> Value {
    decode_request_body(&envelope(api_version, kind, object)).unwrap()
}

fn decode_err(api_version: &str, kind: &str, object: Msg) -> ProtobufError {
    decode_request_body(&envelope(api_version, kind, object)).unwrap_err()
}

/// A container as kubectl writes it: every non-pointer field, zero or not.
fn container(name: &str, image: &str) -> Msg {
    Msg::new()
        .string(1, name)
        .string(2, image)
        .string(5, "")
        .string(13, "")
        .string(14, "")
        .bool(16, false)
        .bool(17, false)
        .bool(18, false)
        .string(20, "")
}

fn pod_template(labels: &[(&str, &str)], spec: Msg) -> Msg {
    Msg::new().msg(1, object_meta("", labels)).msg(2, spec)
}

#[test]
fn deployment_with_strategy_resources_probes_env_and_volumes() {
    let web = container("web", "nginx:1.27")
        .msg(6, Msg::new().string(1, "http").int(2, 0).int(3, 80).string(4, "TCP").string(5, ""))
        .msg(
            7,
            Msg::new()
                .string(1, "PASSWORD")
                .string(2, "")
                .msg(3, Msg::new().msg(4, Msg::new().msg(1, Msg::new().string(1, "db")).string(2, "password"))),
        )
        .msg(
            8,
            Msg::new().entry_msg(1, "memory", quantity("128Mi")).entry_msg(1, "cpu", quantity("500m")).entry_msg(
                2,
                "cpu",
                quantity("250m"),
            ),
        )
        .msg(9, Msg::new().string(1, "config").bool(2, true).string(3, "/etc/web"))
        .msg(
            10,
            Msg::new()
                .msg(1, Msg::new().msg(2, Msg::new().string(1, "/healthz").msg(2, int_or_string_str("http"))))
                .int(2, 5)
                .int(3, 0)
                .int(4, 10)
                .int(5, 0)
                .int(6, 3),
        );
    let volume = Msg::new()
        .string(1, "config")
        .msg(2, Msg::new().msg(19, Msg::new().msg(1, Msg::new().string(1, "web-config")).int(3, 0o644)));
    let spec = Msg::new()
        .int(1, 0)
        .msg(2, Msg::new().entry(1, "app", "web"))
        .msg(3, pod_template(&[("app", "web")], Msg::new().msg(1, volume).msg(2, web).string(3, "Always")))
        .msg(
            4,
            Msg::new()
                .string(1, "RollingUpdate")
                .msg(2, Msg::new().msg(1, int_or_string_int(0)).msg(2, int_or_string_str("25%"))),
        )
        .int(5, 0)
        .bool(7, false);
    let object = Msg::new().msg(1, object_meta("web", &[("app", "web")])).msg(2, spec).msg(3, Msg::new());

    let decoded = decode("apps/v1", "Deployment", object);
    let expected = json!({
        "kind": "Deployment",
        "apiVersion": "apps/v1",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "volumes": [{"name": "config", "configMap": {"name": "web-config", "defaultMode": 420}}],
                    "containers": [{
                        "name": "web",
                        "image": "nginx:1.27",
                        "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                        "env": [{
                            "name": "PASSWORD",
                            "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}
                        }],
                        "resources": {
                            "limits": {"cpu": "500m", "memory": "128Mi"},
                            "requests": {"cpu": "250m"}
                        },
                        "volumeMounts": [{"name": "config", "readOnly": true, "mountPath": "/etc/web"}],
                        "livenessProbe": {
                            "httpGet": {"path": "/healthz", "port": "http"},
                            "initialDelaySeconds": 5,
                            "periodSeconds": 10,
                            "failureThreshold": 3
                        }
                    }],
                    "restartPolicy": "Always"
                }
            },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}
            }
        },
        "status": {}
    });
    assert_eq!(decoded, expected);
}

#[test]
fn map_keys_come_out_sorted_as_go_writes_them() {
    let meta = object_meta("x", &[("zeta", "1"), ("alpha", "2"), ("mid", "3")]);
    let decoded = decode("v1", "ConfigMap", Msg::new().msg(1, meta));
    let keys: Vec<&String> = decoded["metadata"]["labels"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["alpha", "mid", "zeta"]);
}

#[test]
fn service_ports_with_numeric_and_named_target_ports() {
    let port = |name: &str, port: i64, target: Msg| {
        Msg::new().string(1, name).string(2, "TCP").int(3, port).msg(4, target).int(5, 0)
    };
    let spec = Msg::new()
        .msg(1, port("http", 80, int_or_string_int(8080)))
        .msg(1, port("metrics", 9090, int_or_string_str("metrics")))
        .entry(2, "app", "web")
        .string(3, "")
        .string(4, "ClusterIP")
        .string(7, "")
        .bool(13, false);
    let object = Msg::new().msg(1, object_meta("web", &[])).msg(2, spec).msg(3, Msg::new().msg(1, Msg::new()));
    let decoded = decode("v1", "Service", object);
    assert_eq!(
        decoded,
        json!({
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {"name": "web"},
            "spec": {
                "ports": [
                    {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
                    {"name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": "metrics"}
                ],
                "selector": {"app": "web"},
                "type": "ClusterIP"
            },
            "status": {"loadBalancer": {}}
        })
    );
}

#[test]
fn job_keeps_zero_and_false_pointer_fields() {
    let spec = Msg::new()
        .int(1, 0)
        .int(2, 1)
        .int(7, 0)
        .bool(5, false)
        .msg(6, pod_template(&[], Msg::new().msg(2, container("work", "busybox")).string(3, "Never")))
        .bool(10, false);
    let decoded = decode("batch/v1", "Job", Msg::new().msg(1, object_meta("once", &[])).msg(2, spec));
    assert_eq!(
        decoded["spec"],
        json!({
            "parallelism": 0,
            "completions": 1,
            "backoffLimit": 0,
            "manualSelector": false,
            "template": {
                "metadata": {},
                "spec": {"containers": [{"name": "work", "image": "busybox"}], "restartPolicy": "Never"}
            },
            "suspend": false
        })
    );
}

#[test]
fn secret_bytes_and_string_data_and_immutable() {
    let object = Msg::new()
        .msg(1, object_meta("tls", &[]))
        .msg(2, Msg::new().string(1, "tls.key").bytes(2, &[0, 1, 2, 0xff]))
        .msg(2, Msg::new().string(1, "empty"))
        .entry(4, "note", "plain")
        .string(3, "kubernetes.io/tls")
        .bool(5, true);
    let decoded = decode("v1", "Secret", object);
    assert_eq!(
        decoded,
        json!({
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": {"name": "tls"},
            "immutable": true,
            "data": {"empty": "", "tls.key": "AAEC/w=="},
            "stringData": {"note": "plain"},
            "type": "kubernetes.io/tls"
        })
    );
}

#[test]
fn container_name_without_omitempty_stays_even_when_empty() {
    let spec = Msg::new().msg(2, container("", "busybox"));
    let decoded = decode("v1", "Pod", Msg::new().msg(1, object_meta("p", &[])).msg(2, spec));
    assert_eq!(decoded["spec"]["containers"][0], json!({"name": "", "image": "busybox"}));
}

#[test]
fn events_carry_micro_time_and_time() {
    let object = Msg::new()
        .msg(1, object_meta("e", &[]))
        .msg(2, Msg::new().int(1, 1_704_164_705).int(2, 123_456_000))
        .msg(3, Msg::new().int(1, 2).msg(2, Msg::new().int(1, 1_704_164_706)))
        .string(4, "tug-controller")
        .string(7, "Started")
        .msg(13, Msg::new().int(1, 1_704_164_700))
        .msg(14, Msg::new())
        .int(15, 0);
    let decoded = decode("events.k8s.io/v1", "Event", object);
    assert_eq!(decoded["eventTime"], "2024-01-02T03:05:05.123456Z");
    assert_eq!(decoded["series"], json!({"count": 2, "lastObservedTime": "2024-01-02T03:05:06.000000Z"}));
    assert_eq!(decoded["deprecatedFirstTimestamp"], "2024-01-02T03:05:00Z");
    // A zero Time without omitzero marshals as null, as Go writes it.
    assert_eq!(decoded["deprecatedLastTimestamp"], Value::Null);
    assert!(decoded.get("deprecatedCount").is_none());
}

#[test]
fn creation_timestamp_is_written_when_set() {
    let meta = Msg::new().string(1, "x").msg(8, Msg::new().int(1, 1_704_164_705));
    let decoded = decode("v1", "Namespace", Msg::new().msg(1, meta));
    assert_eq!(decoded["metadata"]["creationTimestamp"], "2024-01-02T03:05:05Z");
}

#[test]
fn managed_fields_and_owner_references() {
    let meta = object_meta("x", &[])
        .msg(
            13,
            Msg::new()
                .string(1, "ReplicaSet")
                .string(3, "web-1")
                .string(4, "uid-1")
                .string(5, "apps/v1")
                .bool(6, true)
                .bool(7, false),
        )
        .msg(
            17,
            Msg::new()
                .string(1, "kubectl-create")
                .string(2, "Update")
                .string(3, "v1")
                .msg(4, Msg::new().int(1, 0))
                .string(6, "FieldsV1")
                .msg(7, Msg::new().bytes(1, br#"{"f:data":{"f:a":{}}}"#))
                .string(8, ""),
        );
    let decoded = decode("v1", "ConfigMap", Msg::new().msg(1, meta));
    assert_eq!(
        decoded["metadata"],
        json!({
            "name": "x",
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "uid-1",
                "controller": true, "blockOwnerDeletion": false
            }],
            "managedFields": [{
                "manager": "kubectl-create", "operation": "Update", "apiVersion": "v1",
                "time": "1970-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {"f:a": {}}}
            }]
        })
    );
}

#[test]
fn controller_revision_data_is_the_embedded_json() {
    let object = Msg::new()
        .msg(1, object_meta("rev", &[]))
        .msg(2, Msg::new().bytes(1, br#"{"spec":{"template":{"$patch":"replace"}}}"#))
        .int(3, 4);
    let decoded = decode("apps/v1", "ControllerRevision", object);
    assert_eq!(decoded["data"], json!({"spec": {"template": {"$patch": "replace"}}}));
    assert_eq!(decoded["revision"], 4);
}

#[test]
fn raw_extension_holding_a_protobuf_envelope_is_decoded_too() {
    let inner = envelope("v1", "ConfigMap", Msg::new().msg(1, object_meta("inner", &[])).entry(2, "a", "b"));
    let list = Msg::new().msg(1, Msg::new()).msg(2, Msg::new().bytes(1, &inner));
    let decoded = decode("v1", "List", list);
    assert_eq!(
        decoded["items"],
        json!([{"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "inner"}, "data": {"a": "b"}}])
    );
}

#[test]
fn extra_values_are_arrays_of_strings() {
    let spec = Msg::new()
        .string(3, "alice")
        .string(4, "devs")
        .entry_msg(5, "scopes", Msg::new().string(1, "read").string(1, "write"))
        .entry_msg(5, "empty", Msg::new());
    let decoded = decode("authorization.k8s.io/v1", "SubjectAccessReview", Msg::new().msg(2, spec));
    assert_eq!(
        decoded["spec"],
        json!({"user": "alice", "groups": ["devs"], "extra": {"empty": [], "scopes": ["read", "write"]}})
    );
}

#[test]
fn repeated_numbers_decode_packed_or_one_by_one() {
    let one_by_one = Msg::new().int(4, 1000).int(4, -1);
    let mut packed_payload = Msg::new().raw(&[0xe8, 0x07]).into_bytes();
    packed_payload.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    let packed = Msg::new().bytes(4, &packed_payload);
    for security_context in [one_by_one, packed] {
        let spec = Msg::new().msg(14, security_context);
        let decoded = decode("v1", "Pod", Msg::new().msg(2, spec));
        assert_eq!(decoded["spec"]["securityContext"], json!({"supplementalGroups": [1000, -1]}));
    }
}

#[test]
fn unknown_fields_are_skipped() {
    let object = Msg::new()
        .msg(1, object_meta("x", &[]).string(999, "from the future"))
        .int(4000, 7)
        .raw(&[0x85, 0xfa, 0x01, 1, 2, 3, 4]) // field 4000, fixed32
        .entry(2, "a", "b");
    let decoded = decode("v1", "ConfigMap", object);
    assert_eq!(
        decoded,
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x"}, "data": {"a": "b"}})
    );
}

#[test]
fn a_message_field_written_twice_is_merged() {
    let object = Msg::new().msg(1, Msg::new().string(1, "x")).msg(1, Msg::new().entry(11, "app", "web"));
    let decoded = decode("v1", "ConfigMap", object);
    assert_eq!(decoded["metadata"], json!({"name": "x", "labels": {"app": "web"}}));
}

#[test]
fn wrong_wire_type_names_the_field_and_its_path() {
    let spec = Msg::new().string(1, "three");
    let err = decode_err("apps/v1", "Deployment", Msg::new().msg(2, spec));
    assert_eq!(err.to_string(), "proto: wrong wireType = 2 for field replicas at spec.replicas");

    let bad_port = Msg::new().string(3, "eighty");
    let containers = Msg::new().msg(2, container("a", "x")).msg(2, container("b", "y").msg(6, bad_port));
    let err = decode_err("v1", "Pod", Msg::new().msg(2, containers));
    assert_eq!(
        err.to_string(),
        "proto: wrong wireType = 2 for field containerPort at spec.containers[1].ports[0].containerPort"
    );
}

#[test]
fn errors_inside_inline_fields_and_maps_name_the_json_path() {
    let volume = Msg::new().string(1, "v").msg(2, Msg::new().msg(19, Msg::new().string(3, "rw")));
    let err = decode_err("v1", "Pod", Msg::new().msg(2, Msg::new().msg(1, volume)));
    assert_eq!(
        err.to_string(),
        "proto: wrong wireType = 2 for field defaultMode at spec.volumes[0].configMap.defaultMode"
    );

    let limits = Msg::new().entry_msg(1, "cpu", Msg::new().int(1, 5));
    let spec = Msg::new().msg(2, container("a", "x").msg(8, limits));
    let err = decode_err("v1", "Pod", Msg::new().msg(2, spec));
    assert_eq!(
        err.to_string(),
        "proto: wrong wireType = 0 for field string at spec.containers[0].resources.limits[cpu].string"
    );
}

#[test]
fn truncated_object_is_an_unexpected_eof() {
    let mut object = Msg::new().msg(1, object_meta("x", &[])).into_bytes();
    object.truncate(object.len() - 3);
    let err = decode_err("v1", "ConfigMap", Msg::new().raw(&object));
    assert_eq!(err.to_string(), "unexpected EOF");
}

#[test]
fn meta_kinds_decode_under_any_served_group_version() {
    let options = Msg::new().int(1, 0).msg(2, Msg::new().string(1, "uid-1")).string(4, "Foreground");
    let decoded = decode("apps/v1", "DeleteOptions", options);
    assert_eq!(
        decoded,
        json!({
            "kind": "DeleteOptions", "apiVersion": "apps/v1", "gracePeriodSeconds": 0,
            "preconditions": {"uid": "uid-1"}, "propagationPolicy": "Foreground"
        })
    );
}

#[test]
fn proto_names_that_differ_from_json_names_use_the_json_ones() {
    let params = Msg::new().string(1, "example.com").string(2, "Params").string(3, "p");
    let object = Msg::new().msg(1, object_meta("c", &[])).msg(2, Msg::new().string(1, "ctrl").msg(2, params));
    let decoded = decode("networking.k8s.io/v1", "IngressClass", object);
    assert_eq!(decoded["spec"]["parameters"], json!({"apiGroup": "example.com", "kind": "Params", "name": "p"}));
}

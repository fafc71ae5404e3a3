//! Bodies real kubectl sent (see `testdata/README.md`), decoded into the JSON the same kubectl
//! writes for the same object.

use serde_json::Value;

use crate::protobuf::decode_request_body;

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../testdata/", $name, ".pb")).as_slice(),
            include_str!(concat!("../testdata/", $name, ".json")),
        )
    };
}

const FIXTURES: &[(&str, &[u8], &str)] = &[
    fixture!("create-configmap"),
    fixture!("create-secret-generic"),
    fixture!("create-namespace"),
    fixture!("create-deployment"),
    fixture!("create-deployment-multi-image"),
    fixture!("create-service-clusterip"),
    fixture!("create-service-nodeport"),
    fixture!("create-job"),
    fixture!("create-cronjob"),
    fixture!("create-quota"),
    fixture!("create-pdb"),
    fixture!("create-role"),
    fixture!("create-clusterrolebinding"),
    fixture!("create-ingress"),
    fixture!("create-priorityclass"),
    fixture!("create-serviceaccount"),
];

pub(super) fn bodies() -> impl Iterator<Item = &'static [u8]> {
    FIXTURES.iter().map(|&(_, body, _)| body)
}

fn decoded(name: &str) -> Value {
    let (_, body, _) = FIXTURES.iter().find(|(n, _, _)| *n == name).unwrap();
    decode_request_body(body).unwrap()
}

#[test]
fn every_captured_body_decodes_to_kubectls_json_in_its_key_order() {
    for (name, body, json) in FIXTURES {
        let expected: Value = serde_json::from_str(json).unwrap();
        let actual = decode_request_body(body).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Compared as text so that key order counts too.
        assert_eq!(
            serde_json::to_string_pretty(&actual).unwrap(),
            serde_json::to_string_pretty(&expected).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn configmap_keeps_empty_values_and_base64_encodes_binary_data() {
    let cm = decoded("create-configmap");
    assert_eq!(cm["data"]["empty"], "");
    assert_eq!(cm["data"]["text"], "line1\nline2\n");
    assert_eq!(cm["binaryData"]["bin"].as_str().unwrap().len(), 88);
    // The empty namespace, uid, resourceVersion ... kubectl writes are not in the JSON.
    assert_eq!(cm["metadata"], serde_json::json!({"name": "game-config"}));
}

#[test]
fn secret_data_is_base64() {
    let secret = decoded("create-secret-generic");
    assert_eq!(secret["data"]["password"], "czNjcj10IQ==");
    assert_eq!(secret["type"], "Opaque");
}

#[test]
fn deployment_keeps_zero_replicas_and_template_and_empty_status() {
    let deployment = decoded("create-deployment");
    assert_eq!(deployment["spec"]["replicas"], 0);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx:1.27");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(deployment["status"], serde_json::json!({}));
    assert!(deployment["metadata"].get("creationTimestamp").is_none());
}

#[test]
fn service_target_ports_are_numbers_or_names() {
    let service = decoded("create-service-clusterip");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(service["spec"]["ports"][1]["targetPort"], "https");
}

#[test]
fn pdb_min_available_percentage_is_a_string_and_status_zeros_stay() {
    let pdb = decoded("create-pdb");
    assert_eq!(pdb["spec"]["minAvailable"], "50%");
    assert_eq!(pdb["status"]["expectedPods"], 0);
}

#[test]
fn quota_hard_limits_are_quantity_strings() {
    let quota = decoded("create-quota");
    assert_eq!(quota["spec"]["hard"], serde_json::json!({"cpu": "1500m", "memory": "1Gi", "pods": "2"}));
}

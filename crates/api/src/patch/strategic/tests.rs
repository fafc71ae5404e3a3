//! Strategic merge patches as kubectl and controllers send them, with results as upstream's
//! server computes them.

use std::sync::LazyLock;

use k8s_openapi::api::{apps, core};
use serde_json::{Value, json};

use super::*;

const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";
const SERVICE: &str = "io.k8s.api.core.v1.Service";
const POD: &str = "io.k8s.api.core.v1.Pod";

static SCHEMAS: LazyLock<SchemaSet> = LazyLock::new(|| {
    let mut set = SchemaSet::new();
    set.add_with_list::<apps::v1::Deployment>();
    set.add_with_list::<apps::v1::ControllerRevision>();
    set.add_with_list::<core::v1::Service>();
    set.add_with_list::<core::v1::Pod>();
    set
});

fn apply(def_name: &str, original: Value, patch: Value) -> Value {
    apply_strategic_merge_patch(&original, &patch, &SCHEMAS, def_name)
        .unwrap_or_else(|error| panic!("patch failed: {error}"))
}

fn apply_err(def_name: &str, original: Value, patch: Value) -> StrategicPatchError {
    apply_strategic_merge_patch(&original, &patch, &SCHEMAS, def_name).expect_err("patch should fail")
}

/// A Deployment whose pod template has the given containers.
fn deployment(containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}
            },
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers}
            }
        }
    })
}

fn template_patch(spec: Value) -> Value {
    json!({"spec": {"template": {"spec": spec}}})
}

fn containers(object: &Value) -> &Value {
    &object["spec"]["template"]["spec"]["containers"]
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array().unwrap().iter().map(|item| item["name"].as_str().unwrap()).collect()
}

fn nginx() -> Value {
    json!({
        "name": "nginx",
        "image": "nginx:1.25",
        "ports": [{"containerPort": 80, "protocol": "TCP"}],
        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    })
}

#[test]
fn container_fields_merge_into_the_container_with_the_same_name() {
    let patched = apply(
        DEPLOYMENT,
        deployment(json!([nginx()])),
        template_patch(json!({"containers": [{"name": "nginx", "image": "nginx:1.27"}]})),
    );
    let nginx = &containers(&patched)[0];
    assert_eq!(nginx["image"], "nginx:1.27");
    assert_eq!(nginx["ports"], json!([{"containerPort": 80, "protocol": "TCP"}]));
    assert_eq!(names(&nginx["env"]), ["A", "B"]);
    assert_eq!(patched["spec"]["replicas"], 2);
}

#[test]
fn a_new_container_goes_before_the_existing_ones_as_upstream_puts_it() {
    let patched = apply(
        DEPLOYMENT,
        deployment(json!([nginx()])),
        template_patch(json!({"containers": [{"name": "sidecar", "image": "busybox"}]})),
    );
    assert_eq!(names(containers(&patched)), ["sidecar", "nginx"]);
}

#[test]
fn env_merges_by_name_and_ports_by_container_port() {
    let patched = apply(
        DEPLOYMENT,
        deployment(json!([nginx()])),
        template_patch(json!({"containers": [{
            "name": "nginx",
            "env": [{"name": "B", "value": "changed"}],
            "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}]
        }]})),
    );
    let nginx = &containers(&patched)[0];
    assert_eq!(nginx["env"], json!([{"name": "A", "value": "1"}, {"name": "B", "value": "changed"}]));
    assert_eq!(
        nginx["ports"],
        json!([{"containerPort": 80, "protocol": "TCP", "name": "http"}, {"containerPort": 443}])
    );
}

#[test]
fn kubectl_apply_patch_with_set_element_order_keeps_the_declared_order() {
    // What kubectl apply sends after a sidecar was added after nginx and B's value changed.
    let patch = template_patch(json!({
        "$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}],
        "containers": [
            {
                "$setElementOrder/env": [{"name": "A"}, {"name": "B"}],
                "env": [{"name": "B", "value": "3"}],
                "name": "nginx"
            },
            {"image": "busybox", "name": "sidecar"}
        ]
    }));
    let patched = apply(DEPLOYMENT, deployment(json!([nginx()])), patch);
    assert_eq!(names(containers(&patched)), ["nginx", "sidecar"]);
    let nginx = &containers(&patched)[0];
    assert_eq!(nginx["env"], json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]));
    assert!(nginx.get("$setElementOrder/env").is_none());
    assert_eq!(nginx["image"], "nginx:1.25");
}

#[test]
fn set_element_order_places_server_only_elements_by_their_original_neighbours() {
    let original = deployment(json!([
        {"name": "a", "image": "a"}, {"name": "b"}, {"name": "x"}, {"name": "y"},
        {"name": "w"}, {"name": "c"}, {"name": "d"}
    ]));
    let patch = template_patch(json!({
        "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}, {"name": "d"}, {"name": "c"}]
    }));
    let patched = apply(DEPLOYMENT, original, patch);
    assert_eq!(names(containers(&patched)), ["b", "a", "x", "y", "w", "d", "c"]);
    assert_eq!(containers(&patched)[1]["image"], "a");
}

#[test]
fn set_element_order_inserts_new_elements_where_it_says() {
    let original = deployment(json!([{"name": "one", "image": "x"}, {"name": "two"}]));
    let patch = template_patch(json!({
        "$setElementOrder/containers": [
            {"name": "one"}, {"name": "four"}, {"name": "two"}, {"name": "three"}
        ],
        "containers": [{"name": "four", "image": "4"}, {"name": "three", "image": "3"}]
    }));
    let patched = apply(DEPLOYMENT, original, patch);
    assert_eq!(names(containers(&patched)), ["one", "four", "two", "three"]);
}

#[test]
fn without_set_element_order_new_elements_follow_the_patch_elements_they_trail() {
    let original = deployment(json!([{"name": "a"}, {"name": "b"}, {"name": "c"}]));
    let patch = template_patch(json!({"containers": [{"name": "b", "image": "b2"}, {"name": "d"}]}));
    let patched = apply(DEPLOYMENT, original, patch);
    assert_eq!(names(containers(&patched)), ["a", "b", "d", "c"]);
}

#[test]
fn patch_delete_element_removes_the_container() {
    let original = deployment(json!([nginx(), {"name": "sidecar", "image": "busybox"}]));
    let patch = template_patch(json!({"containers": [{"name": "sidecar", "$patch": "delete"}]}));
    let patched = apply(DEPLOYMENT, original, patch);
    assert_eq!(names(containers(&patched)), ["nginx"]);
}

#[test]
fn patch_replace_element_replaces_the_whole_list() {
    let original = deployment(json!([nginx(), {"name": "sidecar"}]));
    let patch = template_patch(json!({"containers": [
        {"name": "only", "image": "x"},
        {"$patch": "replace"}
    ]}));
    let patched = apply(DEPLOYMENT, original, patch);
    assert_eq!(containers(&patched), &json!([{"name": "only", "image": "x"}]));
}

#[test]
fn patch_replace_on_a_map_replaces_it() {
    let patched = apply(
        DEPLOYMENT,
        deployment(json!([nginx()])),
        json!({"metadata": {"labels": {"$patch": "replace", "tier": "front"}}}),
    );
    assert_eq!(patched["metadata"]["labels"], json!({"tier": "front"}));
    assert_eq!(patched["metadata"]["name"], "web");
}

#[test]
fn patch_delete_on_a_map_leaves_it_empty() {
    let patched =
        apply(DEPLOYMENT, deployment(json!([nginx()])), json!({"metadata": {"labels": {"$patch": "delete"}}}));
    assert_eq!(patched["metadata"]["labels"], json!({}));
}

#[test]
fn patch_merge_directive_is_rejected_on_maps_and_list_elements() {
    let error =
        apply_err(DEPLOYMENT, deployment(json!([nginx()])), json!({"metadata": {"labels": {"$patch": "merge"}}}));
    assert_eq!(error, StrategicPatchError::UnknownPatchType { path: ".metadata.labels".into(), value: json!("merge") });
    let error = apply_err(
        DEPLOYMENT,
        deployment(json!([nginx()])),
        template_patch(json!({"containers": [{"name": "nginx", "$patch": "merge"}]})),
    );
    assert_eq!(error, StrategicPatchError::MergeDirectiveInList { path: ".spec.template.spec.containers".into() });
}

#[test]
fn unknown_patch_directive_value_is_rejected() {
    let error = apply_err(
        DEPLOYMENT,
        deployment(json!([nginx()])),
        template_patch(json!({"containers": [{"name": "nginx", "$patch": "shred"}]})),
    );
    assert!(matches!(error, StrategicPatchError::UnknownPatchType { .. }));
}

#[test]
fn null_deletes_a_field() {
    let patched = apply(
        DEPLOYMENT,
        deployment(json!([nginx()])),
        json!({"spec": {"replicas": null}, "metadata": {"labels": {"app": null}}}),
    );
    assert!(patched["spec"].get("replicas").is_none());
    assert_eq!(patched["metadata"]["labels"], json!({}));
}

#[test]
fn retain_keys_switches_the_deployment_strategy() {
    // kubectl apply after changing the strategy from RollingUpdate to Recreate.
    let patch = json!({"spec": {"strategy": {
        "$retainKeys": ["type"],
        "rollingUpdate": null,
        "type": "Recreate"
    }}});
    let patched = apply(DEPLOYMENT, deployment(json!([nginx()])), patch);
    assert_eq!(patched["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn retain_keys_clears_fields_the_patch_does_not_mention() {
    let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
    let patched = apply(DEPLOYMENT, deployment(json!([nginx()])), patch);
    assert_eq!(patched["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn retain_keys_rejects_a_patch_setting_fields_it_does_not_list() {
    let patch = json!({"spec": {"strategy": {
        "$retainKeys": ["type"],
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1}
    }}});
    let error = apply_err(DEPLOYMENT, deployment(json!([nginx()])), patch);
    assert_eq!(error, StrategicPatchError::InvalidRetainKeys { path: ".spec.strategy".into() });
    let error =
        apply_err(DEPLOYMENT, deployment(json!([nginx()])), json!({"spec": {"strategy": {"$retainKeys": "type"}}}));
    assert!(matches!(error, StrategicPatchError::InvalidRetainKeys { .. }));
}

#[test]
fn volumes_merge_by_name_and_retain_keys_switches_the_volume_source() {
    let mut original = deployment(json!([nginx()]));
    original["spec"]["template"]["spec"]["volumes"] = json!([
        {"name": "data", "emptyDir": {}},
        {"name": "config", "configMap": {"name": "web-config"}}
    ]);
    let patch = template_patch(json!({
        "$setElementOrder/volumes": [{"name": "data"}, {"name": "config"}],
        "volumes": [{
            "$retainKeys": ["hostPath", "name"],
            "hostPath": {"path": "/srv/data"},
            "name": "data"
        }]
    }));
    let patched = apply(DEPLOYMENT, original, patch);
    assert_eq!(
        patched["spec"]["template"]["spec"]["volumes"],
        json!([
            {"name": "data", "hostPath": {"path": "/srv/data"}},
            {"name": "config", "configMap": {"name": "web-config"}}
        ])
    );
}

#[test]
fn service_ports_merge_by_port() {
    let original = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}
            ]
        }
    });
    let patch = json!({"spec": {"ports": [{"port": 443, "targetPort": 9443}]}});
    let patched = apply(SERVICE, original, patch);
    assert_eq!(
        patched["spec"]["ports"],
        json!([
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
            {"name": "https", "port": 443, "targetPort": 9443, "protocol": "TCP"}
        ])
    );
}

#[test]
fn service_selector_merges_per_key() {
    let original = json!({"spec": {"selector": {"app": "web", "tier": "front"}}});
    let patch = json!({"spec": {"selector": {"tier": "back"}}});
    let patched = apply(SERVICE, original, patch);
    assert_eq!(patched["spec"]["selector"], json!({"app": "web", "tier": "back"}));
}

#[test]
fn owner_references_merge_by_uid() {
    let original = json!({"metadata": {"name": "p", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs-1", "uid": "u1"}
    ]}});
    let patch = json!({"metadata": {"ownerReferences": [
        {"uid": "u1", "controller": true},
        {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "u2"}
    ]}});
    let patched = apply(POD, original, patch);
    let owners = &patched["metadata"]["ownerReferences"];
    assert_eq!(owners.as_array().unwrap().len(), 2);
    assert_eq!(owners[0]["uid"], "u1");
    assert_eq!(owners[0]["name"], "rs-1");
    assert_eq!(owners[0]["controller"], true);
    assert_eq!(owners[1]["uid"], "u2");
}

#[test]
fn finalizers_are_unioned_and_delete_from_primitive_list_removes_them() {
    let original = json!({"metadata": {"finalizers": ["a", "b"]}});
    let patched = apply(POD, original.clone(), json!({"metadata": {"finalizers": ["c", "a"]}}));
    assert_eq!(patched["metadata"]["finalizers"], json!(["c", "a", "b"]));

    let patched =
        apply(POD, original, json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["d"]}}));
    assert_eq!(patched["metadata"]["finalizers"], json!(["d", "b"]));
}

#[test]
fn delete_from_primitive_list_of_a_missing_list_adds_nothing() {
    let patched = apply(
        POD,
        json!({"metadata": {"name": "p"}}),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
    );
    assert_eq!(patched, json!({"metadata": {"name": "p"}}));
}

#[test]
fn set_element_order_orders_a_list_of_scalars() {
    let original = json!({"metadata": {"finalizers": ["a", "b", "c"]}});
    let patch = json!({"metadata": {
        "$setElementOrder/finalizers": ["c", "d", "a", "b"],
        "finalizers": ["d"]
    }});
    let patched = apply(POD, original, patch);
    assert_eq!(patched["metadata"]["finalizers"], json!(["c", "d", "a", "b"]));
}

#[test]
fn tolerations_have_no_merge_key_and_are_replaced_whole() {
    let original = json!({"spec": {"tolerations": [
        {"key": "a", "operator": "Exists"},
        {"key": "b", "operator": "Exists"}
    ]}});
    let patch = json!({"spec": {"tolerations": [{"key": "c", "operator": "Exists"}]}});
    let patched = apply(POD, original, patch);
    assert_eq!(patched["spec"]["tolerations"], json!([{"key": "c", "operator": "Exists"}]));
}

#[test]
fn atomic_lists_such_as_container_args_are_replaced() {
    let original = json!({"spec": {"containers": [{"name": "c", "args": ["-a", "-b"]}]}});
    let patch = json!({"spec": {"containers": [{"name": "c", "args": ["-z"]}]}});
    let patched = apply(POD, original, patch);
    assert_eq!(patched["spec"]["containers"][0]["args"], json!(["-z"]));
}

#[test]
fn resource_maps_merge_per_resource_name() {
    let original = json!({"spec": {"containers": [{
        "name": "c",
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}
    }]}});
    let patch = json!({"spec": {"containers": [{
        "name": "c",
        "resources": {"limits": {"cpu": "500m"}, "requests": {"cpu": "100m"}}
    }]}});
    let patched = apply(POD, original, patch);
    assert_eq!(
        patched["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "100m"}})
    );
}

#[test]
fn replace_strategy_replaces_a_struct_whole() {
    // PodDisruptionBudgetSpec.selector is the one field upstream marks `replace`; the set here
    // does not serve PDBs, so check the schema-driven decision on a set that does.
    let mut set = SchemaSet::new();
    set.add_with_list::<k8s_openapi::api::policy::v1::PodDisruptionBudget>();
    let original = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "minAvailable": 1}});
    let patch = json!({"spec": {"selector": {"matchExpressions": [
        {"key": "app", "operator": "In", "values": ["b"]}
    ]}}});
    let patched =
        apply_strategic_merge_patch(&original, &patch, &set, "io.k8s.api.policy.v1.PodDisruptionBudget").unwrap();
    assert_eq!(patched["spec"]["selector"], patch["spec"]["selector"]);
    assert_eq!(patched["spec"]["minAvailable"], 1);
}

#[test]
fn new_values_lose_their_nulls_and_directive_elements() {
    let patch = json!({"spec": {
        "initContainers": [
            {"name": "init", "image": "busybox", "command": null},
            {"name": "gone", "$patch": "delete"}
        ],
        "nodeSelector": {"disk": "ssd", "zone": null}
    }});
    let patched = apply(POD, json!({"spec": {}}), patch);
    assert_eq!(
        patched["spec"],
        json!({
            "initContainers": [{"name": "init", "image": "busybox"}],
            "nodeSelector": {"disk": "ssd"}
        })
    );
}

#[test]
fn a_value_of_another_type_replaces_the_original() {
    let patched = apply(POD, json!({"metadata": {"labels": {"a": "b"}}}), json!({"metadata": {"labels": "oops"}}));
    assert_eq!(patched["metadata"]["labels"], "oops");
}

#[test]
fn custom_resources_fall_back_to_json_merge_patch() {
    let original = json!({
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "spec": {"items": [{"name": "a"}, {"name": "b"}], "size": {"w": 1, "h": 2}}
    });
    let patch = json!({"spec": {
        "items": [{"name": "c", "$patch": "delete"}],
        "size": {"h": null, "d": 3}
    }});
    let patched = apply("com.example.v1.Widget", original, patch);
    assert_eq!(patched["spec"], json!({"items": [{"name": "c", "$patch": "delete"}], "size": {"w": 1, "d": 3}}));
}

#[test]
fn free_form_fields_merge_as_json_merge_patch() {
    // ControllerRevision.data is a RawExtension: no schema below it.
    let original = json!({"data": {"spec": {"template": {"$patch": "replace", "a": 1}}, "b": [1, 2]}});
    let patch = json!({"data": {"spec": {"template": {"c": 2}}, "b": [3]}});
    let patched = apply("io.k8s.api.apps.v1.ControllerRevision", original, patch);
    assert_eq!(patched["data"], json!({"spec": {"template": {"$patch": "replace", "a": 1, "c": 2}}, "b": [3]}));
}

#[test]
fn fields_the_schema_lacks_merge_as_json_merge_patch() {
    let original = json!({"spec": {"futureField": {"list": [1], "keep": true}}});
    let patch = json!({"spec": {"futureField": {"list": [2]}}});
    let patched = apply(DEPLOYMENT, original, patch);
    assert_eq!(patched["spec"]["futureField"], json!({"list": [2], "keep": true}));
}

#[test]
fn missing_merge_key_names_the_list() {
    let error = apply_err(
        DEPLOYMENT,
        deployment(json!([nginx()])),
        template_patch(json!({"containers": [{"image": "nginx:1.27"}]})),
    );
    assert_eq!(
        error,
        StrategicPatchError::MissingMergeKey {
            path: ".spec.template.spec.containers".into(),
            merge_key: "name".into(),
            element: json!({"image": "nginx:1.27"})
        }
    );
}

#[test]
fn errors_inside_merged_elements_name_the_element() {
    let error = apply_err(
        DEPLOYMENT,
        deployment(json!([nginx()])),
        template_patch(json!({"containers": [{"name": "nginx", "env": [{"value": "x"}]}]})),
    );
    let StrategicPatchError::MissingMergeKey { path, .. } = error else {
        panic!("unexpected error {error}");
    };
    assert_eq!(path, r#".spec.template.spec.containers["name"="nginx"].env"#);
}

#[test]
fn set_element_order_that_contradicts_the_patch_list_is_rejected() {
    let patch = template_patch(json!({
        "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
        "containers": [{"name": "a"}, {"name": "b"}]
    }));
    let error = apply_err(DEPLOYMENT, deployment(json!([{"name": "a"}, {"name": "b"}])), patch);
    assert!(matches!(error, StrategicPatchError::SetElementOrderMismatch { .. }));
}

#[test]
fn malformed_directive_keys_are_rejected() {
    let error = apply_err(
        DEPLOYMENT,
        deployment(json!([nginx()])),
        template_patch(json!({"$setElementOrderContainers": [{"name": "nginx"}]})),
    );
    assert!(matches!(error, StrategicPatchError::InvalidSetElementOrder { .. }));
    let error = apply_err(
        POD,
        json!({"metadata": {"finalizers": ["a"]}}),
        json!({"metadata": {"$deleteFromPrimitiveList": ["a"]}}),
    );
    assert!(matches!(error, StrategicPatchError::InvalidDeleteFromPrimitiveList { .. }));
    let error = apply_err(POD, json!({"metadata": {}}), json!({"metadata": {"$setElementOrder/finalizers": "a"}}));
    assert!(matches!(error, StrategicPatchError::UnexpectedType { expected: "list", .. }));
}

#[test]
fn merged_lists_must_hold_one_kind_of_scalar_and_no_lists() {
    let error = apply_err(POD, json!({"metadata": {"finalizers": ["a"]}}), json!({"metadata": {"finalizers": [1]}}));
    assert!(matches!(error, StrategicPatchError::MixedElementTypes { .. }));
    let error =
        apply_err(POD, json!({"metadata": {"finalizers": [["a"]]}}), json!({"metadata": {"finalizers": [["b"]]}}));
    assert!(matches!(error, StrategicPatchError::ListOfLists { .. }));
}

#[test]
fn documents_must_be_objects() {
    assert_eq!(apply_err(POD, json!([]), json!({})), StrategicPatchError::NotAnObject { document: Document::Original });
    assert_eq!(apply_err(POD, json!({}), json!("x")), StrategicPatchError::NotAnObject { document: Document::Patch });
}

#[test]
fn an_empty_patch_changes_nothing() {
    let original = deployment(json!([nginx(), {"name": "sidecar"}]));
    assert_eq!(apply(DEPLOYMENT, original.clone(), json!({})), original);
}

#[test]
fn set_element_order_for_a_new_list_drops_elements_with_directives() {
    let patch = json!({"spec": {
        "$setElementOrder/initContainers": [{"name": "a"}, {"name": "b"}],
        "initContainers": [
            {"name": "a", "image": "a"},
            {"name": "gone", "$patch": "delete"},
            {"name": "b", "image": "b"}
        ]
    }});
    let patched = apply(POD, json!({"spec": {}}), patch);
    assert_eq!(patched["spec"], json!({"initContainers": [{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]}));
}

#[test]
fn directive_errors_at_the_top_name_the_root() {
    assert_eq!(
        apply_err(POD, json!({}), json!({"$patch": "merge"})),
        StrategicPatchError::UnknownPatchType { path: ".".into(), value: json!("merge") }
    );
}

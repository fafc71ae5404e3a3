use serde_json::{Value, json};

use super::*;

fn crd(schema: Value, subresources: Value) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "crontabs.stable.example.com"},
        "spec": {
            "group": "stable.example.com",
            "scope": "Namespaced",
            "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"], "categories": ["all"]},
            "versions": [
                {
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": [{"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"}],
                },
                {"name": "v1beta1", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                {"name": "v0", "served": false, "storage": false},
            ],
        },
    }))
    .unwrap()
}

fn crontab_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["cronSpec"],
                "properties": {
                    "cronSpec": {"type": "string", "pattern": "^(\\d+|\\*)(/\\d+)?(\\s+(\\d+|\\*)(/\\d+)?){4}$"},
                    "image": {"type": "string", "minLength": 2, "maxLength": 10},
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                    "mode": {"type": "string", "enum": ["Fast", "Slow"]},
                    "port": {"x-kubernetes-int-or-string": true},
                    "note": {"type": "string", "nullable": true},
                    "tags": {"type": "array", "maxItems": 2, "minItems": 1, "items": {"type": "string"}},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "template": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                    "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "policy": {"type": "object", "default": {}, "properties": {"retries": {"type": "integer", "default": 3}}},
                },
            },
            "status": {"type": "object", "properties": {"replicas": {"type": "integer"}, "selector": {"type": "string"}}},
        },
    })
}

fn ops() -> ResourceType {
    let scale = json!({"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}});
    resource_types(&crd(crontab_schema(), scale)).into_iter().next().unwrap()
}

fn crontab(spec: Value) -> Value {
    json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "c1", "namespace": "default"}, "spec": spec})
}

fn causes(e: &ApiError) -> Vec<String> {
    e.details
        .as_ref()
        .unwrap()
        .causes
        .iter()
        .map(|c| format!("{}: {}", c.field.clone().unwrap_or_default(), c.message))
        .collect()
}

#[test]
fn one_registry_entry_per_served_version() {
    let types = resource_types(&crd(crontab_schema(), json!({"status": {}})));
    assert_eq!(types.len(), 2);
    let v1 = &types[0];
    assert_eq!((&*v1.group, &*v1.version, &*v1.kind, &*v1.plural), ("stable.example.com", "v1", "CronTab", "crontabs"));
    assert_eq!(v1.list_kind, "CronTabList");
    assert_eq!(v1.short_names, vec!["ct"]);
    assert_eq!(v1.subresources, &["status"]);
    assert!(v1.storage_version && v1.custom && v1.namespaced);
    assert_eq!(v1.key(Some("ns1"), "c1"), "/registry/stable.example.com/crontabs/ns1/c1");
    assert!(!types[1].storage_version);
    assert_eq!(types[1].subresources, &[] as &[&str]);
}

#[test]
fn wrong_type_is_reported_as_upstream_words_it() {
    let e = ops().ops.admit_create(crontab(json!({"cronSpec": "* * * * */5", "replicas": "three"}))).unwrap_err();
    assert_eq!(e.code, 422);
    assert_eq!(
        e.message,
        "CronTab.stable.example.com \"c1\" is invalid: spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""
    );
    assert_eq!(e.details.as_ref().unwrap().causes[0].reason, "FieldValueTypeInvalid");
}

#[test]
fn value_validations_produce_field_errors() {
    let spec = json!({
        "image": "x", "replicas": 11, "mode": "Medium", "tags": ["a", "b", "c"], "port": true, "note": null,
        "limits": {"cpu": "lots"}, "template": {"spec": {}},
    });
    let e = ops().ops.admit_create(crontab(spec)).unwrap_err();
    assert_eq!(
        causes(&e),
        vec![
            "spec.image: Invalid value: \"x\": spec.image in body should be at least 2 chars long",
            "spec.limits.cpu: Invalid value: \"string\": spec.limits.cpu in body must be of type integer: \"string\"",
            "spec.mode: Unsupported value: \"Medium\": supported values: \"Fast\", \"Slow\"",
            "spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\"",
            "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10",
            "spec.tags: Too many: 3: must have at most 2 items",
            "spec.template.apiVersion: Required value: must not be empty",
            "spec.template.kind: Required value: must not be empty",
            "spec.cronSpec: Required value",
        ]
    );
}

#[test]
fn string_limits_patterns_and_minimums() {
    let spec = json!({"cronSpec": "every minute", "image": "much-too-long-image", "replicas": 0, "tags": []});
    let e = ops().ops.admit_create(crontab(spec)).unwrap_err();
    let got = causes(&e);
    assert!(got.contains(&"spec.cronSpec: Invalid value: \"every minute\": spec.cronSpec in body should match '^(\\d+|\\*)(/\\d+)?(\\s+(\\d+|\\*)(/\\d+)?){4}$'".to_string()), "{got:?}");
    assert!(got.contains(&"spec.image: Too long: may not be more than 10 bytes".to_string()), "{got:?}");
    assert!(
        got.contains(
            &"spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1".to_string()
        ),
        "{got:?}"
    );
    assert!(
        got.contains(&"spec.tags: Invalid value: 0: spec.tags in body should have at least 1 items".to_string()),
        "{got:?}"
    );
}

#[test]
fn valid_objects_are_pruned_defaulted_and_keep_what_the_schema_preserves() {
    let spec = json!({
        "cronSpec": "* * * * */5", "port": "http", "note": null, "bogus": 1, "replicas": null,
        "extra": {"anything": {"goes": true}},
        "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}, "junk": 2},
    });
    let mut obj = crontab(spec);
    obj["unknownTop"] = json!("x");
    obj["metadata"]["bogusMeta"] = json!(1);
    obj["status"] = json!({"replicas": 5});
    let admitted = ops().ops.admit_create(obj).unwrap();
    assert_eq!(admitted.unknown_fields, vec!["metadata.bogusMeta", "spec.bogus", "spec.template.junk", "unknownTop"]);
    let o = admitted.object;
    assert_eq!(o["spec"]["replicas"], 1, "a non-nullable null takes the default");
    assert_eq!(o["spec"]["note"], Value::Null, "nullable nulls stay");
    assert_eq!(o["spec"]["policy"], json!({"retries": 3}), "defaults apply inside defaults");
    assert_eq!(o["spec"]["extra"], json!({"anything": {"goes": true}}));
    assert_eq!(o["spec"]["template"]["metadata"], json!({"name": "p"}));
    assert!(o.get("status").is_none(), "status is written only through its subresource");
    assert_eq!(o["metadata"]["generation"], 1);
}

#[test]
fn normalize_reports_unknown_fields_for_strict_validation() {
    let cr = ops();
    let obj = crontab(json!({"cronSpec": "* * * * *", "replicaz": 2}));
    let normalized = cr.ops.normalize(obj.clone()).unwrap();
    assert_eq!(dropped_fields(&obj, &normalized), vec!["spec.replicaz"]);
}

#[test]
fn status_changes_bump_the_generation_only_without_a_status_subresource() {
    let no_status = resource_types(&crd(crontab_schema(), Value::Null)).remove(0);
    let mut old = crontab(json!({"cronSpec": "* * * * *"}));
    old["metadata"]["generation"] = json!(4);
    let mut new = old.clone();
    new["status"] = json!({"replicas": 2});
    let admitted = no_status.ops.admit_update(new.clone(), &old).unwrap();
    assert_eq!(admitted.object["metadata"]["generation"], 5);
    let admitted = ops().ops.admit_update(new, &old).unwrap();
    assert_eq!(admitted.object["metadata"]["generation"], 4);
}

#[test]
fn scale_replicas_must_be_non_negative() {
    let e = ops().ops.admit_update(crontab(json!({"cronSpec": "* * * * *", "replicas": 2})), &json!({})).map(|_| ());
    assert!(e.is_ok());
    let mut obj = crontab(json!({"cronSpec": "* * * * *", "replicas": 2}));
    obj["status"] = json!({"replicas": -1});
    let e = ops().ops.admit_update(obj, &json!({})).unwrap_err();
    assert!(causes(&e).iter().any(|c| c.starts_with("status.replicas: Invalid value: -1")), "{:?}", causes(&e));
    let paths = ops().ops.scale_paths().cloned().unwrap();
    assert_eq!(paths.label_selector.as_deref(), Some(".status.selector"));
}

#[test]
fn versions_convert_by_renaming_the_api_version() {
    let types = resource_types(&crd(crontab_schema(), Value::Null));
    let stored = crontab(json!({"cronSpec": "* * * * *"}));
    let v1beta1 = types[1].ops.convert(stored.clone(), "stable.example.com/v1beta1").unwrap();
    assert_eq!(v1beta1["apiVersion"], "stable.example.com/v1beta1");
    assert_eq!(v1beta1["spec"], stored["spec"]);
}

#[test]
fn tables_use_printer_columns_or_age() {
    let types = resource_types(&crd(crontab_schema(), Value::Null));
    let obj = crontab(json!({"cronSpec": "* * * * *"}));
    let t = types[0].ops.table(std::slice::from_ref(&obj), &json!({}), IncludeObject::None, Timestamp::UNIX_EPOCH);
    assert_eq!(t["rows"][0]["cells"], json!(["c1", "* * * * *"]));
    let t = types[1].ops.table(&[obj], &json!({}), IncludeObject::None, Timestamp::UNIX_EPOCH);
    assert_eq!(t["columnDefinitions"][1]["name"], "Age");
}

#[test]
fn strategic_merge_patch_is_not_accepted() {
    assert!(!ops().ops.accepts_strategic_merge_patch());
}

#[test]
fn published_schema_adds_type_and_object_meta() {
    let defs = ops().ops.own_definitions();
    assert_eq!(defs[0].0, "com.example.stable.v1.CronTab");
    assert_eq!(defs[1].0, "com.example.stable.v1.CronTabList");
    let def = &defs[0].1;
    assert_eq!(
        def["x-kubernetes-group-version-kind"],
        json!([{"group": "stable.example.com", "kind": "CronTab", "version": "v1"}])
    );
    assert_eq!(
        def["properties"]["metadata"]["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert_eq!(def["properties"]["spec"]["properties"]["template"]["required"], json!(["kind", "apiVersion"]));
    assert_eq!(def["properties"]["spec"]["properties"]["replicas"]["default"], 1);
}

#[test]
fn selectable_fields_become_field_labels() {
    let mut c = crd(crontab_schema(), Value::Null);
    c.spec.versions[0].selectable_fields =
        Some(vec![serde_json::from_value(json!({"jsonPath": ".spec.mode"})).unwrap()]);
    let t = resource_types(&c).remove(0);
    assert!(t.ops.field_labels().contains(&"spec.mode".to_string()));
    assert_eq!(t.ops.field_label(&crontab(json!({"mode": "Fast"})), "spec.mode").as_deref(), Some("Fast"));
}

#[test]
fn composition_and_object_limits() {
    let schema: Schema = Schema::from_props(
        &serde_json::from_value(json!({
            "type": "object",
            "maxProperties": 1,
            "properties": {"a": {"type": "integer", "anyOf": [{"minimum": 5}, {"maximum": 1}]}},
        }))
        .unwrap(),
    );
    let mut errs = Vec::new();
    validation::validate(&schema, &json!({"a": 3, "b": 1}), &mut errs);
    let got: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        vec![
            "<nil>: Too many: 2: must have at most 1 items",
            "<nil>: Invalid value: \"\": \"a\" must validate at least one schema (anyOf)",
            "a: Invalid value: 3: a in body should be greater than or equal to 5",
        ]
    );
}

#[test]
fn type_and_object_metadata_come_first() {
    let obj = json!({
        "spec": {"cronSpec": "* * * * *", "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "inner"}}},
        "metadata": {"name": "c1", "namespace": "default"},
        "kind": "CronTab",
        "apiVersion": "stable.example.com/v1",
    });
    let object = ops().ops.admit_create(obj).unwrap().object;
    let keys: Vec<&String> = object.as_object().unwrap().keys().collect();
    assert_eq!(keys[..3], ["apiVersion", "kind", "metadata"]);
}

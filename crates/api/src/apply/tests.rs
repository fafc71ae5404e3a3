//! Behaviour of field sets, merge, pruning, conflicts and managedFields bookkeeping, on real
//! kinds' schemas.

use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use serde_json::{Value, json};

use super::fieldpath::{Path, PathElement, Set};
use super::managed::{Managed, ManagerId, Operation};
use super::typed::Schema;
use super::walk::{FieldSetWalk, compare};
use super::*;
use crate::schema::SchemaSet;
use crate::status::ApiError;

const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";
const CONFIG_MAP: &str = "io.k8s.api.core.v1.ConfigMap";
const T1: &str = "2026-01-01T00:00:00Z";
const T2: &str = "2026-01-01T00:01:00Z";

fn schemas() -> &'static SchemaSet {
    static SET: OnceLock<SchemaSet> = OnceLock::new();
    SET.get_or_init(|| {
        let mut set = SchemaSet::new();
        set.add_with_list::<Deployment>();
        set.add_with_list::<ConfigMap>();
        set.add_with_list::<Pod>();
        set.add_with_list::<Service>();
        set
    })
}

fn deployments() -> FieldManager<'static> {
    FieldManager::new(schemas(), DEPLOYMENT, "apps/v1", "", Reset::Status)
}

fn config_maps() -> FieldManager<'static> {
    FieldManager::new(schemas(), CONFIG_MAP, "v1", "", Reset::Nothing)
}

fn deployment(replicas: i64, containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers},
            },
        },
    })
}

fn nginx() -> Value {
    json!({"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80}]})
}

fn sidecar() -> Value {
    json!({"name": "sidecar", "image": "busybox", "args": ["sleep", "3600"]})
}

fn field_set(definition: &'static str, value: &Value) -> Set {
    let schema = Schema { set: schemas() };
    let mut walk = FieldSetWalk::new(schema, true);
    let set = walk.run(value, &schema.root(definition));
    assert!(walk.errors.is_empty(), "{:?}", walk.errors);
    set
}

fn entries(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/managedFields").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn entry<'a>(obj: &'a Value, manager: &str) -> &'a Value {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .and_then(|list| list.iter().find(|e| e["manager"] == manager))
        .unwrap_or_else(|| panic!("no entry for {manager} in {obj:#}"))
}

fn owned(obj: &Value, manager: &str) -> Set {
    Set::from_fields_v1(&entry(obj, manager)["fieldsV1"]).unwrap()
}

fn path(fields: &[&str]) -> Vec<PathElement> {
    Path::fields(fields).0
}

fn container(name: &str) -> PathElement {
    PathElement::Key(vec![("name".into(), json!(name))])
}

fn containers_path(name: &str, field: Option<&str>) -> Vec<PathElement> {
    let mut p = path(&["spec", "template", "spec", "containers"]);
    p.push(container(name));
    if let Some(f) = field {
        p.push(PathElement::Field(f.into()));
    }
    p
}

#[test]
fn field_set_of_a_deployment_keys_containers_and_ports_and_owns_map_entries() {
    let set = field_set(DEPLOYMENT, &deployment(2, json!([nginx()])));
    let fields = set.to_fields_v1();
    let c = &fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"];
    assert_eq!(c["."], json!({}), "a list item is a member: {fields:#}");
    // The port omits its protocol: the key carries the default, as upstream's schema has it.
    assert_eq!(c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["f:containerPort"], json!({}));
    assert_eq!(
        fields["f:metadata"]["f:labels"],
        json!({"f:app": {}}),
        "a map entry is owned, the map field itself is not"
    );
    assert_eq!(fields["f:spec"]["f:selector"], json!({}), "LabelSelector is an atomic struct: one leaf");
    assert!(set.has(&path(&["spec", "replicas"])));
    assert!(!set.has(&path(&["spec"])));
}

#[test]
fn applied_configuration_with_undeclared_or_mistyped_fields_is_rejected() {
    let mut config = deployment(1, json!([nginx()]));
    config["spec"]["replicaz"] = json!(3);
    config["spec"]["paused"] = json!("yes");
    let err = deployments().apply(None, &config, "kubectl", false, T1).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("failed to create typed patch object (default/web; apps/v1, Kind=Deployment): errors:\n"),
        "{message}"
    );
    assert!(message.contains(".spec.replicaz: field not declared in schema"), "{message}");
    assert!(message.contains(".spec.paused: expected boolean"), "{message}");
    assert_eq!(ApiError::from(err).code, 500);

    let mut config = deployment(1, json!([nginx()]));
    config["metadata"]["managedFields"] = json!([]);
    let err = deployments().apply(None, &config, "kubectl", false, T1).unwrap_err();
    assert_eq!(
        (ApiError::from(err.clone()).code, err.to_string().as_str()),
        (400, "metadata.managedFields must be nil")
    );

    let config = deployment(1, json!([nginx(), nginx()]));
    let err = deployments().apply(None, &config, "kubectl", false, T1).unwrap_err();
    assert!(
        err.to_string().contains(".spec.template.spec.containers: duplicate entries for key [name=\"nginx\"]"),
        "{err}"
    );
}

#[test]
fn create_records_the_creator_as_an_update_manager_without_bookkeeping_fields() {
    let mut obj = deployment(2, json!([nginx()]));
    obj["metadata"]["uid"] = json!("u1");
    obj["metadata"]["creationTimestamp"] = json!(T1);
    deployments().update(None, None, &mut obj, "kubectl-create", T1);
    let list = entries(&obj);
    assert_eq!(list.len(), 1);
    let e = &list[0];
    assert_eq!(
        (
            e["manager"].as_str(),
            e["operation"].as_str(),
            e["apiVersion"].as_str(),
            e["time"].as_str(),
            e["fieldsType"].as_str()
        ),
        (Some("kubectl-create"), Some("Update"), Some("apps/v1"), Some(T1), Some("FieldsV1"))
    );
    let fields = &e["fieldsV1"];
    assert!(fields.get("f:apiVersion").is_none() && fields.get("f:kind").is_none());
    assert!(fields["f:metadata"].get("f:name").is_none() && fields["f:metadata"].get("f:uid").is_none());
    assert_eq!(fields["f:metadata"]["f:labels"], json!({".": {}, "f:app": {}}), "a new map is owned itself");
    assert_eq!(fields["f:spec"]["f:replicas"], json!({}));
    assert!(fields.get(".").is_none() && fields["f:spec"].get(".").is_none(), "structs are not owned themselves");
}

#[test]
fn update_moves_changed_fields_to_the_writer_and_keeps_the_rest() {
    let mut live = deployment(2, json!([nginx()]));
    deployments().update(None, None, &mut live, "kubectl-create", T1);
    let mut new = live.clone();
    new["spec"]["replicas"] = json!(5);
    deployments().update(Some(&live), None, &mut new, "kubectl-scale", T2);
    assert!(owned(&new, "kubectl-scale").has(&path(&["spec", "replicas"])));
    assert!(!owned(&new, "kubectl-create").has(&path(&["spec", "replicas"])));
    assert!(owned(&new, "kubectl-create").has(&containers_path("nginx", Some("image"))));
    assert_eq!(entry(&new, "kubectl-create")["time"], T1, "an untouched manager keeps its time");

    // A write that changes nothing changes no entry.
    let mut same = new.clone();
    deployments().update(Some(&new), None, &mut same, "other", T2);
    assert_eq!(entries(&same), entries(&new));
}

#[test]
fn requests_can_reset_managed_fields_and_untracked_objects_stay_untracked() {
    let mut live = deployment(2, json!([nginx()]));
    deployments().update(None, None, &mut live, "kubectl-create", T1);
    let mut new = live.clone();
    new["spec"]["replicas"] = json!(3);
    deployments().update(Some(&live), Some(&json!([])), &mut new, "kubectl-edit", T2);
    assert!(new["metadata"].get("managedFields").is_none(), "{new:#}");
    // Entries that cannot be decoded are ignored in favour of the live ones.
    let mut again = live.clone();
    again["spec"]["replicas"] = json!(4);
    deployments().update(Some(&live), Some(&json!([{"manager": "x", "operation": "Bogus"}])), &mut again, "m", T2);
    assert_eq!(entries(&again).len(), 2);
    // A request may set valid entries directly.
    let custom = json!([{"manager": "mine", "operation": "Update", "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:paused": {}}}}]);
    let mut set = live.clone();
    deployments().update(Some(&live), Some(&custom), &mut set, "m", T2);
    assert_eq!(entries(&set).len(), 1);
    assert_eq!(entry(&set, "mine")["fieldsV1"], json!({"f:spec": {"f:paused": {}}}));
}

#[test]
fn apply_creates_with_the_configuration_fields_only() {
    let config = deployment(2, json!([nginx()]));
    let out = deployments().apply(None, &config, "kubectl", false, T1).unwrap();
    let list = entries(&out);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["operation"], "Apply");
    assert_eq!(list[0]["time"], T1);
    let mut expected = field_set(DEPLOYMENT, &config);
    for p in [&["apiVersion"][..], &["kind"], &["metadata", "name"], &["metadata", "namespace"]] {
        assert!(expected.has(&path(p)));
    }
    expected = expected.difference(
        &Set::from_fields_v1(
            &json!({"f:apiVersion": {}, "f:kind": {}, "f:metadata": {"f:name": {}, "f:namespace": {}}}),
        )
        .unwrap(),
    );
    assert_eq!(owned(&out, "kubectl"), expected);
    assert_eq!(out["spec"]["replicas"], 2);
}

#[test]
fn applying_the_same_configuration_again_changes_nothing() {
    let config = deployment(2, json!([nginx()]));
    let first = deployments().apply(None, &config, "kubectl", false, T1).unwrap();
    let second = deployments().apply(Some(&first), &config, "kubectl", false, T2).unwrap();
    assert_eq!(second, first, "no change, not even the time");
}

#[test]
fn apply_conflicts_with_another_managers_field_and_force_takes_it_over() {
    let first = deployments().apply(None, &deployment(1, json!([nginx()])), "kubectl", false, T1).unwrap();
    let mut scaled = first.clone();
    scaled["spec"]["replicas"] = json!(2);
    deployments().update(Some(&first), None, &mut scaled, "kubectl-client-side-apply", T2);

    let err = deployments().apply(Some(&scaled), &deployment(3, json!([nginx()])), "kubectl", false, T2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
    );
    let status = ApiError::from(err).to_status();
    assert_eq!(status["code"], 409);
    assert_eq!(status["reason"], "Conflict");
    assert_eq!(
        status["details"]["causes"],
        json!([{"reason": "FieldManagerConflict", "message": "conflict with \"kubectl-client-side-apply\" using apps/v1", "field": ".spec.replicas"}])
    );

    // Applying the value the other manager set is no conflict: the field becomes shared.
    let shared = deployments().apply(Some(&scaled), &deployment(2, json!([nginx()])), "kubectl", false, T2).unwrap();
    assert!(owned(&shared, "kubectl").has(&path(&["spec", "replicas"])));
    assert!(owned(&shared, "kubectl-client-side-apply").has(&path(&["spec", "replicas"])));

    let forced = deployments().apply(Some(&scaled), &deployment(3, json!([nginx()])), "kubectl", true, T2).unwrap();
    assert_eq!(forced["spec"]["replicas"], 3);
    assert!(owned(&forced, "kubectl").has(&path(&["spec", "replicas"])));
    assert!(
        forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["manager"] != "kubectl-client-side-apply"),
        "a manager left with nothing is dropped: {forced:#}"
    );
}

#[test]
fn conflicts_with_several_managers_are_grouped_by_manager() {
    let live = deployments().apply(None, &deployment(1, json!([nginx()])), "a", false, T1).unwrap();
    let mut config = deployment(2, json!([{"name": "nginx", "image": "nginx:2", "ports": [{"containerPort": 80}]}]));
    config["metadata"]["labels"]["app"] = json!("x");
    let with_b = deployments().apply(Some(&live), &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"paused": true}}), "b", false, T1).unwrap();
    let mut updated = with_b.clone();
    updated["spec"]["paused"] = json!(false);
    let err = deployments().apply(Some(&updated), &config, "b", false, T2).unwrap_err();
    let ApplyError::Conflicts(list) = &err else { panic!("{err}") };
    assert_eq!(list.len(), 3, "{err}");
    assert_eq!(
        err.to_string(),
        "Apply failed with 3 conflicts: conflicts with \"a\":\n- .metadata.labels.app\n- .spec.replicas\n- .spec.template.spec.containers[name=\"nginx\"].image"
    );
}

#[test]
fn fields_dropped_from_the_configuration_are_removed_unless_someone_else_owns_them() {
    let mut config = deployment(1, json!([nginx()]));
    config["spec"]["paused"] = json!(true);
    config["metadata"]["labels"]["tier"] = json!("front");
    let live = deployments().apply(None, &config, "kubectl", false, T1).unwrap();
    // Another manager also sets the tier label (to the same value): it shares ownership.
    let mut shared = live.clone();
    shared["metadata"]["annotations"] = json!({"note": "x"});
    let shared = deployments()
        .apply(Some(&shared), &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"tier": "front"}}}), "other", false, T1)
        .unwrap();

    let out = deployments().apply(Some(&shared), &deployment(1, json!([nginx()])), "kubectl", false, T2).unwrap();
    assert!(out["spec"].get("paused").is_none(), "{out:#}");
    assert_eq!(out["metadata"]["labels"]["tier"], "front", "still owned by other");
    assert!(!owned(&out, "kubectl").has(&path(&["metadata", "labels", "tier"])));
    assert!(!owned(&out, "kubectl").has(&path(&["spec", "paused"])));
}

#[test]
fn dropping_a_container_removes_it_and_keeps_the_others() {
    let live = deployments().apply(None, &deployment(1, json!([nginx(), sidecar()])), "kubectl", false, T1).unwrap();
    assert_eq!(live["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 2);
    let out = deployments().apply(Some(&live), &deployment(1, json!([nginx()])), "kubectl", false, T2).unwrap();
    let containers = out["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{out:#}");
    assert_eq!(containers[0]["name"], "nginx");
    assert!(!owned(&out, "kubectl").has(&containers_path("sidecar", None)));
}

#[test]
fn items_and_entries_of_other_managers_survive_an_apply() {
    let live = deployments().apply(None, &deployment(1, json!([nginx()])), "kubectl", false, T1).unwrap();
    // Someone else adds a container and a label through an update.
    let mut edited = live.clone();
    edited["spec"]["template"]["spec"]["containers"].as_array_mut().unwrap().insert(0, sidecar());
    edited["metadata"]["labels"]["owner"] = json!("ops");
    deployments().update(Some(&live), None, &mut edited, "kubectl-edit", T2);
    assert!(owned(&edited, "kubectl-edit").has(&containers_path("sidecar", None)));

    let mut config = deployment(1, json!([{"name": "nginx", "image": "nginx:1.28", "ports": [{"containerPort": 80}]}]));
    config["metadata"]["labels"]["tier"] = json!("front");
    let out = deployments().apply(Some(&edited), &config, "kubectl", false, T2).unwrap();
    let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sidecar", "nginx"], "live-only items stay in place");
    assert_eq!(out["spec"]["template"]["spec"]["containers"][1]["image"], "nginx:1.28");
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", "owner": "ops", "tier": "front"}),
        "granular maps merge per key"
    );
}

#[test]
fn atomic_lists_are_replaced_and_sets_are_unioned() {
    let live = deployments().apply(None, &deployment(1, json!([sidecar()])), "kubectl", false, T1).unwrap();
    let config = deployment(1, json!([{"name": "sidecar", "image": "busybox", "args": ["sleep", "10"]}]));
    let out = deployments().apply(Some(&live), &config, "kubectl", false, T2).unwrap();
    assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["args"], json!(["sleep", "10"]));
    let fields = owned(&out, "kubectl").to_fields_v1();
    assert_eq!(
        fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"sidecar\"}"]["f:args"],
        json!({})
    );

    // metadata.finalizers is a set: applying one finalizer keeps another manager's.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["a/x"]}});
    let live = config_maps().apply(None, &cm, "one", false, T1).unwrap();
    let cm2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["b/y"]}});
    let out = config_maps().apply(Some(&live), &cm2, "two", false, T2).unwrap();
    assert_eq!(out["metadata"]["finalizers"], json!(["a/x", "b/y"]));
    assert!(owned(&out, "two").has(&[
        PathElement::Field("metadata".into()),
        PathElement::Field("finalizers".into()),
        PathElement::Value(json!("b/y"))
    ]));
}

#[test]
fn status_is_not_owned_through_the_main_resource() {
    let mut config = deployment(1, json!([nginx()]));
    config["status"] = json!({"replicas": 7});
    let out = deployments().apply(None, &config, "kubectl", false, T1).unwrap();
    assert!(!owned(&out, "kubectl").has(&path(&["status", "replicas"])));
    let status = FieldManager::new(schemas(), DEPLOYMENT, "apps/v1", "status", Reset::AllButStatus);
    let mut new = out.clone();
    new["status"] = json!({"replicas": 1, "readyReplicas": 1});
    status.update(Some(&out), None, &mut new, "controller", T2);
    let e = entry(&new, "controller");
    assert_eq!(e["subresource"], "status");
    assert_eq!(e["fieldsV1"], json!({"f:status": {"f:readyReplicas": {}, "f:replicas": {}}}));
}

#[test]
fn kubectl_takes_over_fields_its_client_side_apply_annotation_still_matches() {
    let csa_config = deployment(2, json!([nginx()]));
    let mut live = csa_config.clone();
    live["metadata"]["annotations"] = json!({LAST_APPLIED_ANNOTATION: serde_json::to_string(&csa_config).unwrap()});
    deployments().update(None, None, &mut live, "kubectl-client-side-apply", T1);

    // Same values as the annotation: kubectl may take them over without a conflict.
    let mut changed = deployment(2, json!([{"name": "nginx", "image": "nginx:2", "ports": [{"containerPort": 80}]}]));
    changed["metadata"]["annotations"] = json!({"x": "y"});
    let out = deployments().apply(Some(&live), &changed, "kubectl", false, T2).unwrap();
    assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:2");
    let annotation = out["metadata"]["annotations"][LAST_APPLIED_ANNOTATION].as_str().unwrap();
    assert!(
        annotation.ends_with('\n') && annotation.contains("nginx:2"),
        "the annotation follows the applied configuration: {annotation}"
    );

    // Another field manager does not get that allowance.
    let err = deployments().apply(Some(&live), &changed, "helm", false, T2).unwrap_err();
    assert!(matches!(err, ApplyError::Conflicts(_)), "{err}");
}

#[test]
fn objects_untracked_before_their_first_apply_get_a_placeholder_manager() {
    let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "uid": "u"}, "data": {"a": "1", "b": "2"}});
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let out = config_maps().apply(Some(&live), &config, "mine", false, T1).unwrap();
    assert_eq!(entry(&out, "before-first-apply")["operation"], "Update");
    assert!(owned(&out, "before-first-apply").has(&path(&["data", "b"])));
    assert!(owned(&out, "mine").has(&path(&["data", "a"])));
    // The placeholder owns "a" too: dropping it from the configuration keeps it.
    let out = config_maps()
        .apply(
            Some(&out),
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
            "mine",
            false,
            T2,
        )
        .unwrap();
    assert_eq!(out["data"], json!({"a": "1", "b": "2"}));
}

#[test]
fn update_managers_past_ten_are_merged_into_ancient_changes() {
    let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
    config_maps().update(None, None, &mut obj, "m0", "2026-01-01T00:00:00Z");
    for i in 1..=11 {
        let mut next = obj.clone();
        next["data"][format!("k{i}")] = json!("v");
        config_maps().update(Some(&obj), None, &mut next, &format!("m{i}"), &format!("2026-01-01T00:00:{i:02}Z"));
        obj = next;
    }
    let managers: Vec<String> = entries(&obj).iter().map(|e| e["manager"].as_str().unwrap().to_owned()).collect();
    assert_eq!(managers.len(), 10, "{managers:?}");
    assert!(managers.contains(&"ancient-changes".to_owned()), "{managers:?}");
    let ancient = owned(&obj, "ancient-changes");
    assert!(ancient.has(&path(&["data", "k1"])) && ancient.has(&path(&["data", "k2"])), "{ancient:?}");
}

#[test]
fn managed_fields_round_trip_in_upstream_order() {
    let list = json!([
        {"manager": "b", "operation": "Update", "apiVersion": "v1", "time": T2, "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:x": {}}}},
        {"manager": "z", "operation": "Apply", "apiVersion": "v1", "time": T2, "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:y": {}}}},
        {"manager": "a", "operation": "Update", "apiVersion": "v1", "time": T1, "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:z": {}}}, "subresource": "status"},
    ]);
    let managed = Managed::decode(Some(&list)).unwrap();
    let encoded = managed.encode().unwrap();
    let order: Vec<&str> = encoded.as_array().unwrap().iter().map(|e| e["manager"].as_str().unwrap()).collect();
    assert_eq!(order, ["z", "a", "b"], "Apply first, then by time");
    assert_eq!(encoded[1], list[2]);
    assert!(managed.fields.contains_key(&ManagerId::new("z", Operation::Apply, "ignored", "")));
    assert!(Managed::decode(Some(&json!([{"manager": "x", "operation": "Update", "apiVersion": "v1"}]))).is_err());
}

#[test]
fn comparison_reports_added_modified_and_removed_leaves() {
    let schema = Schema { set: schemas() };
    let old = deployment(1, json!([nginx(), sidecar()]));
    let new = deployment(2, json!([nginx()]));
    let cmp = compare(schema, &old, &new, &schema.root(DEPLOYMENT));
    assert_eq!(cmp.modified.paths(), vec![Path::fields(&["spec", "replicas"])]);
    assert!(cmp.added.is_empty());
    assert!(cmp.removed.has(&containers_path("sidecar", None)));
    assert!(cmp.removed.has(&containers_path("sidecar", Some("image"))));
}

//! OpenAPI: v3 (below) serves the `/openapi/v3` index and one document per group version, with paths for
//! every resource and the component schemas they reference.
//!
//! kubectl relies on these documents: `apply` finds each kind's patch strategies and merge keys
//! here (through the PATCH operation's `x-kubernetes-group-version-kind`), `explain` reads the
//! schemas' descriptions, and field validation is delegated to the server when PATCH accepts a
//! `fieldValidation` parameter.

pub mod v2;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tug_api::{ApiError, Registry, ResourceType};

use crate::server::ApiServer;

/// A hash for the index's URLs, so clients cache each document until the server changes:
/// documents of built-in groups change with the build, those of custom resources with the
/// registry (`generation`, when the group version serves custom resources).
fn doc_hash(gv: &str, generation: Option<u64>) -> String {
    // FNV-1a over the version and group version: stable per build and document.
    let mut h: u64 = 0xcbf29ce484222325;
    let generation = generation.map(|g| g.to_string()).unwrap_or_default();
    for b in env!("CARGO_PKG_VERSION").bytes().chain(gv.bytes()).chain(generation.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// `/openapi/v3`: where each group version's document is.
pub fn root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for g in registry.groups() {
        for v in &g.versions {
            let p = gv_path(g.group, v);
            let custom = registry.resources_in(g.group, v).any(|rt| rt.custom).then(|| registry.generation());
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", doc_hash(&p, custom))}),
            );
        }
    }
    json!({"paths": paths})
}

fn op_id(verb: &str, rt: &ResourceType, namespaced_path: bool, suffix: &str) -> String {
    let group = rt
        .group
        .split('.')
        .next()
        .filter(|g| !g.is_empty())
        .map(|g| {
            let mut c = g.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .unwrap_or_else(|| "Core".into());
    let version = {
        let mut c = rt.version.chars();
        c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
    };
    let scope = if namespaced_path { "Namespaced" } else { "" };
    format!("{verb}{group}{version}{scope}{}{suffix}", rt.kind)
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn json_response(schema: &str) -> Value {
    json!({"content": {"application/json": {"schema": schema_ref(schema)}, "application/yaml": {"schema": schema_ref(schema)}}})
}

/// Paths of one resource.
fn resource_paths(rt: &ResourceType, schema: &str, paths: &mut Map<String, Value>) {
    let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let base = format!("/{}", gv_path(&rt.group, &rt.version));
    let collection = if rt.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", rt.plural)
    } else {
        format!("{base}/{}", rt.plural)
    };
    let item = format!("{collection}/{{name}}");
    let write_params = vec![
        query_param("dryRun", "When present, indicates that modifications should not be persisted."),
        query_param(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        query_param(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.",
        ),
    ];
    let mut path_params = vec![
        json!({"name": "name", "in": "path", "required": true, "description": format!("name of the {}", rt.kind), "schema": {"type": "string", "uniqueItems": true}}),
    ];
    let mut coll_params = Vec::new();
    if rt.namespaced {
        let ns = json!({"name": "namespace", "in": "path", "required": true, "description": "object name and auth scope, such as for teams and projects", "schema": {"type": "string", "uniqueItems": true}});
        path_params.push(ns.clone());
        coll_params.push(ns);
    }
    let body = json!({"content": {"*/*": {"schema": schema_ref(schema)}}, "required": true});
    let list_schema = format!("{schema}List");
    let mut coll = Map::new();
    if rt.supports("list") {
        coll.insert(
            "get".into(),
            json!({
                "description": format!("list or watch objects of kind {}", rt.kind),
                "operationId": op_id("list", rt, rt.namespaced, ""),
                "responses": {"200": json_response(&list_schema)},
                "x-kubernetes-action": "list",
                "x-kubernetes-group-version-kind": gvk,
            }),
        );
    }
    if rt.supports("create") {
        coll.insert(
            "post".into(),
            json!({
                "description": format!("create a {}", rt.kind),
                "operationId": op_id("create", rt, rt.namespaced, ""),
                "parameters": write_params,
                "requestBody": body,
                "responses": {"200": json_response(schema), "201": json_response(schema), "202": json_response(schema)},
                "x-kubernetes-action": "post",
                "x-kubernetes-group-version-kind": gvk,
            }),
        );
    }
    if rt.supports("deletecollection") {
        coll.insert(
            "delete".into(),
            json!({
                "description": format!("delete collection of {}", rt.kind),
                "operationId": op_id("deletecollection", rt, rt.namespaced, ""),
                "responses": {"200": json_response("io.k8s.apimachinery.pkg.apis.meta.v1.Status")},
                "x-kubernetes-action": "deletecollection",
                "x-kubernetes-group-version-kind": gvk,
            }),
        );
    }
    if !coll_params.is_empty() {
        coll.insert("parameters".into(), Value::Array(coll_params));
    }
    paths.insert(collection.clone(), Value::Object(coll));
    let mut patch_types = vec!["application/json-patch+json", "application/merge-patch+json"];
    if rt.ops.accepts_strategic_merge_patch() {
        patch_types.push("application/strategic-merge-patch+json");
    }
    let patch_content: Map<String, Value> = patch_types
        .into_iter()
        .map(|t| (t.to_string(), json!({"schema": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch")})))
        .collect();
    let patch_body = json!({"content": patch_content, "required": true});
    let mut item_ops = Map::new();
    let object_ops = |sub: &str, ops: &mut Map<String, Value>, target: &str, target_kind: &Value| {
        let suffix = match sub {
            "" => String::new(),
            s => {
                let mut c = s.chars();
                c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
            }
        };
        if rt.supports("get") {
            ops.insert(
                "get".into(),
                json!({
                    "description": format!("read the specified {}", rt.kind),
                    "operationId": op_id("read", rt, rt.namespaced, &suffix),
                    "responses": {"200": json_response(target)},
                    "x-kubernetes-action": "get",
                    "x-kubernetes-group-version-kind": target_kind,
                }),
            );
        }
        if rt.supports("update") {
            ops.insert(
                "put".into(),
                json!({
                    "description": format!("replace the specified {}", rt.kind),
                    "operationId": op_id("replace", rt, rt.namespaced, &suffix),
                    "parameters": write_params,
                    "requestBody": {"content": {"*/*": {"schema": schema_ref(target)}}, "required": true},
                    "responses": {"200": json_response(target), "201": json_response(target)},
                    "x-kubernetes-action": "put",
                    "x-kubernetes-group-version-kind": target_kind,
                }),
            );
        }
        if rt.supports("patch") {
            ops.insert(
                "patch".into(),
                json!({
                    "description": format!("partially update the specified {}", rt.kind),
                    "operationId": op_id("patch", rt, rt.namespaced, &suffix),
                    "parameters": write_params,
                    "requestBody": patch_body,
                    "responses": {"200": json_response(target), "201": json_response(target)},
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": target_kind,
                }),
            );
        }
        ops.insert("parameters".into(), Value::Array(path_params.clone()));
    };
    object_ops("", &mut item_ops, schema, &gvk);
    if rt.supports("delete") {
        item_ops.insert("delete".into(), json!({
            "description": format!("delete a {}", rt.kind),
            "operationId": op_id("delete", rt, rt.namespaced, ""),
            "requestBody": {"content": {"*/*": {"schema": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions")}}},
            "responses": {"200": json_response(schema), "202": json_response(schema)},
            "x-kubernetes-action": "delete",
            "x-kubernetes-group-version-kind": gvk,
        }));
    }
    paths.insert(item.clone(), Value::Object(item_ops));
    for sub in rt.subresources {
        let (target, kind) = match *sub {
            "status" => (schema.to_string(), gvk.clone()),
            "scale" => (
                "io.k8s.api.autoscaling.v1.Scale".to_string(),
                json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
            ),
            _ => continue,
        };
        let mut ops = Map::new();
        object_ops(sub, &mut ops, &target, &kind);
        paths.insert(format!("{item}/{sub}"), Value::Object(ops));
    }
}

/// Every definition `roots` refer to, directly or through others.
fn referenced<'a>(
    definition: impl Fn(&str) -> Option<&'a Value>,
    roots: impl IntoIterator<Item = String>,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<String> = roots.into_iter().collect();
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(def) = definition(&name) {
            collect_refs(def, &mut queue);
        }
    }
    seen
}

fn collect_refs(v: &Value, out: &mut VecDeque<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                out.push_back(name.to_string());
            }
            m.values().for_each(|c| collect_refs(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| collect_refs(c, out)),
        _ => {}
    }
}

/// `/openapi/v3/apis/<group>/<version>`.
pub fn group_version(srv: &ApiServer, registry: &Registry, group: &str, version: &str) -> Result<Value, ApiError> {
    let resources: Vec<&Arc<ResourceType>> = registry.resources_in(group, version).collect();
    if resources.is_empty() {
        return Err(ApiError::path_not_found());
    }
    let set = srv.schemas();
    let mut paths = Map::new();
    let mut roots = vec![
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".to_string(),
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions".to_string(),
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status".to_string(),
    ];
    // Definitions of custom resources, which the shared set does not hold.
    let mut own: Map<String, Value> = Map::new();
    for rt in &resources {
        let schema = rt.ops.schema_name();
        resource_paths(rt, &schema, &mut paths);
        let definitions = rt.ops.own_definitions();
        if definitions.is_empty() {
            roots.push(format!("{schema}List"));
        }
        for (name, def) in definitions {
            roots.push(name.clone());
            own.insert(name, def);
        }
        roots.push(schema);
        if rt.has_subresource("scale") {
            roots.push("io.k8s.api.autoscaling.v1.Scale".into());
        }
    }
    let names = referenced(|n| own.get(n).or_else(|| set.definition(n)), roots);
    let mut schemas = Map::new();
    for n in names {
        if let Some(d) = own.get(&n).or_else(|| set.definition(&n)) {
            schemas.insert(n, d.clone());
        }
    }
    Ok(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", crate::discovery::KUBE_MAJOR, crate::discovery::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

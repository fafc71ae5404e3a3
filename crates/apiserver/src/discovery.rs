//! Discovery: `/version`, the legacy `/api` and `/apis` documents, and aggregated discovery
//! (`apidiscovery.k8s.io/v2`), which kubectl 1.30+ asks for first.

use serde_json::{Value, json};
use tug_api::{Registry, ResourceType};

/// The Kubernetes version this server implements.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "36";

pub fn version_info() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "emulationMajor": KUBE_MAJOR,
        "emulationMinor": KUBE_MINOR,
        "minCompatibilityMajor": KUBE_MAJOR,
        "minCompatibilityMinor": "35",
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0+tug{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": option_env!("TUG_GIT_COMMIT").unwrap_or("unknown"),
        "gitTreeState": "clean",
        "buildDate": option_env!("TUG_BUILD_DATE").unwrap_or("1970-01-01T00:00:00Z"),
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The kind, group and version a subresource answers with, and its verbs.
fn subresource_facts<'a>(rt: &'a ResourceType, sub: &str) -> (&'a str, &'a str, String, &'static [&'static str]) {
    const GPU: &[&str] = &["get", "patch", "update"];
    match sub {
        "status" | "ephemeralcontainers" | "resize" | "approval" => (&rt.group, &rt.version, rt.kind.to_string(), GPU),
        "scale" => ("autoscaling", "v1", "Scale".into(), GPU),
        "binding" => ("", "v1", "Binding".into(), &["create"]),
        "eviction" => ("policy", "v1", "Eviction".into(), &["create"]),
        "log" => ("", "v1", "Pod".into(), &["get"]),
        "exec" => ("", "v1", "PodExecOptions".into(), &["create", "get"]),
        "attach" => ("", "v1", "PodAttachOptions".into(), &["create", "get"]),
        "portforward" => ("", "v1", "PodPortForwardOptions".into(), &["create", "get"]),
        "proxy" => ("", "v1", format!("{}ProxyOptions", rt.kind), &["create", "delete", "get", "patch", "update"]),
        "finalize" => ("", "v1", "Namespace".into(), &["update"]),
        "token" => ("authentication.k8s.io", "v1", "TokenRequest".into(), &["create"]),
        _ => (&rt.group, &rt.version, rt.kind.to_string(), GPU),
    }
}

/// `/api/v1` or `/apis/<group>/<version>`: an `APIResourceList`.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    if group == crate::metrics_server::GROUP {
        return (version == "v1beta1").then(crate::metrics_server::resource_list);
    }
    let mut resources = Vec::new();
    for rt in registry.resources_in(group, version) {
        let mut r = json!({
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": rt.verbs,
        });
        if !rt.short_names.is_empty() {
            r["shortNames"] = json!(rt.short_names);
        }
        if !rt.categories.is_empty() {
            r["categories"] = json!(rt.categories);
        }
        resources.push(r);
        for sub in rt.subresources {
            let (g, v, kind, verbs) = subresource_facts(rt, sub);
            let mut s = json!({
                "name": format!("{}/{sub}", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if (g, v) != (&*rt.group, &*rt.version) {
                s["group"] = json!(g);
                s["version"] = json!(v);
            }
            resources.push(s);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

fn group_doc(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs[0]})
}

/// `/api`: the core group's versions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `/apis`: every named group.
pub fn group_list(registry: &Registry) -> Value {
    let mut groups: Vec<Value> =
        registry.groups().iter().filter(|g| !g.group.is_empty()).map(|g| group_doc(g.group, &g.versions)).collect();
    groups.push(group_doc(crate::metrics_server::GROUP, &["v1beta1"]));
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    if name == crate::metrics_server::GROUP {
        return Some(crate::metrics_server::api_group());
    }
    let g = registry.groups().into_iter().find(|g| g.group == name && !name.is_empty())?;
    let mut doc = group_doc(g.group, &g.versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// The media type of aggregated discovery responses, which clients check.
pub const AGGREGATED_CONTENT_TYPE: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Aggregated discovery of the core group (`core == true`, at `/api`) or of all named groups
/// (at `/apis`).
pub fn aggregated(registry: &Registry, core: bool) -> Value {
    let mut items: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|g| g.group.is_empty() == core)
        .map(|g| {
            let versions: Vec<Value> = g
                .versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> =
                        registry.resources_in(g.group, v).map(|rt| aggregated_resource(rt)).collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g.group, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    if !core {
        items.push(crate::metrics_server::aggregated_group());
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn aggregated_resource(rt: &ResourceType) -> Value {
    let mut r = json!({
        "resource": rt.plural,
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": rt.singular,
        "verbs": rt.verbs,
    });
    if !rt.short_names.is_empty() {
        r["shortNames"] = json!(rt.short_names);
    }
    if !rt.categories.is_empty() {
        r["categories"] = json!(rt.categories);
    }
    if !rt.subresources.is_empty() {
        let subs: Vec<Value> = rt
            .subresources
            .iter()
            .map(|s| {
                let (g, v, kind, verbs) = subresource_facts(rt, s);
                json!({"subresource": s, "responseKind": {"group": g, "version": v, "kind": kind}, "verbs": verbs})
            })
            .collect();
        r["subresources"] = Value::Array(subs);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_resource_list_has_scale_subresource_in_autoscaling() {
        let r = Registry::builtin();
        let list = resource_list(&r, "apps", "v1").unwrap();
        let scale = list["resources"].as_array().unwrap().iter().find(|r| r["name"] == "deployments/scale").unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["kind"], "Scale");
        let deploy = list["resources"].as_array().unwrap().iter().find(|r| r["name"] == "deployments").unwrap();
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        assert_eq!(deploy["categories"], json!(["all"]));
    }

    #[test]
    fn aggregated_discovery_separates_core_from_named_groups() {
        let r = Registry::builtin();
        let core = aggregated(&r, true);
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        assert_eq!(core["items"][0]["metadata"]["name"], "");
        let named = aggregated(&r, false);
        let names: Vec<&str> =
            named["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"apps"));
        assert!(!names.contains(&""));
    }

    #[test]
    fn unknown_group_version_has_no_resource_list() {
        assert!(resource_list(&Registry::builtin(), "apps", "v9").is_none());
    }
}

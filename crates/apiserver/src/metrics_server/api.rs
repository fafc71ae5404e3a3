//! The `metrics.k8s.io/v1beta1` API: `nodes` (NodeMetrics, cluster-scoped) and `pods`
//! (PodMetrics, namespaced), get and list, served from the [`Storage`](super::storage::Storage)
//! as metrics-server serves them: objects are listed first (with the label selector, then the
//! field selector on `metadata.name`/`metadata.namespace`) and joined with their metrics;
//! those without metrics yet are left out of lists and are `NotFound` on get.
//!
//! The types are [`tug_api::metrics`]'s, serialised exactly as upstream: CPU in nanocores
//! (`"1500m"`, `"123456n"`), memory in bytes in binary form (`"16Ki"`), the window as a Go
//! duration (`"15.012s"`).

use std::collections::BTreeMap;

use http::Response;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tug_api::ApiError;
use tug_api::metrics::{ContainerMetrics, NodeMetrics, NodeMetricsList, PodMetrics, PodMetricsList};
use tug_api::protobuf::go_duration;
use tug_api::quantity::Exact;
use tug_api::selector::{FieldSelector, LabelSelector};
use tug_api::status::Subject;

use super::storage::{PodUsage, Usage};
use crate::codec;
use crate::request::{Query, ResourceRequest, Verb};
use crate::response::{self, Body};
use crate::server::ApiServer;

pub(crate) const GROUP: &str = "metrics.k8s.io";
pub(crate) const VERSION: &str = "v1beta1";
const API_VERSION: &str = "metrics.k8s.io/v1beta1";

/// The legacy discovery entry of the group (in `/apis`), and `/apis/metrics.k8s.io`.
pub(crate) fn api_group() -> Value {
    let version = json!({"groupVersion": API_VERSION, "version": VERSION});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [version], "preferredVersion": version})
}

/// `/apis/metrics.k8s.io/v1beta1`, as metrics-server answers it (no singular names, no short names).
pub(crate) fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": API_VERSION,
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
        ],
    })
}

/// The group's entry in aggregated discovery (`apidiscovery.k8s.io/v2` at `/apis`).
pub(crate) fn aggregated_group() -> Value {
    let resource = |name: &str, kind: &str, scope: &str| {
        json!({
            "resource": name,
            "responseKind": {"group": GROUP, "version": VERSION, "kind": kind},
            "scope": scope,
            "singularResource": "",
            "verbs": ["get", "list"],
        })
    };
    json!({
        "metadata": {"name": GROUP, "creationTimestamp": null},
        "versions": [{
            "version": VERSION,
            "resources": [resource("nodes", "NodeMetrics", "Cluster"), resource("pods", "PodMetrics", "Namespaced")],
            "freshness": "Current",
        }],
    })
}

fn subject(resource: &'static str) -> Subject<'static> {
    Subject { group: GROUP, resource, kind: "" }
}

/// Serves a resource request of the group.
pub(crate) async fn serve(srv: &ApiServer, rr: &ResourceRequest, query: &Query) -> Result<Response<Body>, ApiError> {
    let (qualified, namespaced) = match rr.resource.as_str() {
        "nodes" => ("nodemetrics", false),
        "pods" => ("podmetrics", true),
        _ => return Err(ApiError::path_not_found()),
    };
    if rr.version != VERSION || rr.subresource.is_some() || (!namespaced && rr.namespace.is_some()) {
        return Err(ApiError::path_not_found());
    }
    let pods = namespaced;
    let body = match (rr.verb, rr.name.as_deref()) {
        // A pod is got only within its namespace: `/pods/<name>` is no path upstream serves.
        (Verb::Get, Some(name)) if pods => match rr.namespace.as_deref() {
            Some(namespace) => get_pod(srv, namespace, name).await?,
            None => return Err(ApiError::path_not_found()),
        },
        (Verb::Get, Some(name)) => get_node(srv, name).await?,
        (Verb::List, None) => {
            let (labels, fields) = selectors(query)?;
            if pods {
                list_pods(srv, rr.namespace.as_deref(), &labels, &fields).await?
            } else {
                list_nodes(srv, &labels, &fields).await?
            }
        }
        (verb, _) => return Err(ApiError::method_not_allowed(verb.as_str(), subject(qualified))),
    };
    Ok(response::json(200, &body))
}

fn selectors(query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = match query.get("labelSelector") {
        None | Some("") => LabelSelector::everything(),
        Some(s) => {
            LabelSelector::parse(s).map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?
        }
    };
    let fields = match query.get("fieldSelector") {
        None | Some("") => FieldSelector::everything(),
        Some(s) => FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    for r in fields.requirements() {
        if !matches!(r.field.as_str(), "metadata.name" | "metadata.namespace") {
            return Err(ApiError::bad_request(format!(
                "\"{}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
                r.field
            )));
        }
    }
    Ok((labels, fields))
}

/// The stored objects of a core resource (`nodes`, `pods`) in `namespace` (all when `None`)
/// that match the selectors, in key order.
pub(super) async fn list_objects(
    srv: &ApiServer,
    plural: &str,
    namespace: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Result<Vec<Value>, ApiError> {
    let registry = srv.registry();
    let rt = registry.lookup("", "v1", plural).expect("core resources are served");
    let listed = srv
        .store
        .list(&rt.prefix(namespace), Default::default())
        .await
        .map_err(|e| crate::objects::store_error(rt, "", e))?;
    let mut objects = Vec::new();
    for kv in &listed.items {
        let obj = codec::decode_stored(kv)?;
        let field =
            |f: &str| obj.pointer(&format!("/{}", f.replace('.', "/"))).and_then(Value::as_str).map(str::to_string);
        if labels.matches_json(obj.pointer("/metadata/labels")) && fields.matches(field) {
            objects.push(obj);
        }
    }
    Ok(objects)
}

/// The metadata metrics-server gives a metrics object: the object's name, namespace and
/// labels, and the time of the answer as its creation.
fn metadata_of(obj: &Value) -> ObjectMeta {
    let text = |p: &str| obj.pointer(p).and_then(Value::as_str).map(str::to_string);
    let labels = obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect());
    ObjectMeta {
        name: text("/metadata/name"),
        namespace: text("/metadata/namespace"),
        labels,
        creation_timestamp: Some(Time(Timestamp::now())),
        ..ObjectMeta::default()
    }
}

fn usage_quantities(usage: &Usage) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu_quantity(usage.cpu_nanocores))),
        ("memory".to_string(), Quantity(memory_quantity(usage.memory_bytes))),
    ])
}

fn node_metrics(obj: &Value, usage: &Usage) -> NodeMetrics {
    NodeMetrics {
        kind: None,
        api_version: None,
        metadata: metadata_of(obj),
        timestamp: time_of(usage.timestamp),
        window: go_duration(usage.window),
        usage: usage_quantities(usage),
    }
}

fn pod_metrics(obj: &Value, usage: &PodUsage) -> PodMetrics {
    PodMetrics {
        kind: None,
        api_version: None,
        metadata: metadata_of(obj),
        timestamp: time_of(usage.timestamp),
        window: go_duration(usage.window),
        containers: usage
            .containers
            .iter()
            .map(|(name, u)| ContainerMetrics { name: name.clone(), usage: usage_quantities(u) })
            .collect(),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

async fn get_node(srv: &ApiServer, name: &str) -> Result<Value, ApiError> {
    let registry = srv.registry();
    let nodes = registry.lookup("", "v1", "nodes").expect("nodes are served");
    // The node lister's NotFound, as metrics-server passes it on.
    let (node, _) = srv.read(nodes, None, name).await.map_err(|e| {
        if e.code == 404 { ApiError::not_found(Subject { group: "", resource: "node", kind: "Node" }, name) } else { e }
    })?;
    let usage =
        srv.metrics_server.storage().node(name).ok_or_else(|| ApiError::not_found(subject("nodemetrics"), name))?;
    let mut metrics = node_metrics(&node, &usage);
    metrics.kind = Some("NodeMetrics".into());
    metrics.api_version = Some(API_VERSION.into());
    to_json(&metrics)
}

async fn get_pod(srv: &ApiServer, namespace: &str, name: &str) -> Result<Value, ApiError> {
    let registry = srv.registry();
    let pods = registry.lookup("", "v1", "pods").expect("pods are served");
    let (pod, _) = srv.read(pods, Some(namespace), name).await?;
    let not_found = || ApiError::not_found(subject("podmetrics"), &format!("{namespace}/{name}"));
    let usage = srv.metrics_server.storage().pod(namespace, name).ok_or_else(not_found)?;
    let mut metrics = pod_metrics(&pod, &usage);
    metrics.kind = Some("PodMetrics".into());
    metrics.api_version = Some(API_VERSION.into());
    to_json(&metrics)
}

async fn list_nodes(srv: &ApiServer, labels: &LabelSelector, fields: &FieldSelector) -> Result<Value, ApiError> {
    let nodes = list_objects(srv, "nodes", None, labels, fields).await?;
    let storage = srv.metrics_server.storage();
    let mut items: Vec<NodeMetrics> = nodes
        .iter()
        .filter_map(|node| {
            let name = node.pointer("/metadata/name").and_then(Value::as_str)?;
            Some(node_metrics(node, &storage.node(name)?))
        })
        .collect();
    items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    to_json(&NodeMetricsList {
        kind: "NodeMetricsList".into(),
        api_version: API_VERSION.into(),
        metadata: ListMeta::default(),
        items,
    })
}

async fn list_pods(
    srv: &ApiServer,
    namespace: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Result<Value, ApiError> {
    let pods = list_objects(srv, "pods", namespace, labels, fields).await?;
    let storage = srv.metrics_server.storage();
    let mut items: Vec<PodMetrics> = pods
        .iter()
        .filter_map(|pod| {
            let name = pod.pointer("/metadata/name").and_then(Value::as_str)?;
            let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str)?;
            Some(pod_metrics(pod, &storage.pod(ns, name)?))
        })
        .collect();
    items.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    to_json(&PodMetricsList {
        kind: "PodMetricsList".into(),
        api_version: API_VERSION.into(),
        metadata: ListMeta::default(),
        items,
    })
}

/// Nanocores as metrics-server's CPU quantity (scale -9, decimal), printed canonically:
/// `1500000000` is `"1500m"`, `123456` is `"123456n"`.
fn cpu_quantity(nanocores: u64) -> String {
    Exact::parse(&format!("{nanocores}n")).map(|q| q.to_string()).unwrap_or_else(|| format!("{nanocores}n"))
}

/// Bytes as metrics-server's memory quantity (binary format): `"16Ki"` when a multiple of
/// 1024, plain bytes otherwise.
fn memory_quantity(bytes: u64) -> String {
    let binary = Exact::parse(&format!("{}Ki", bytes / 1024)).unwrap_or(Exact::ZERO);
    (binary + Exact::from_int((bytes % 1024) as i64)).to_string()
}

/// `metav1.Time` of nanoseconds since the epoch (serialised to the second).
fn time_of(nanos: i64) -> Time {
    Time(Timestamp::from_nanosecond(i128::from(nanos)).unwrap_or(Timestamp::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_print_as_metrics_server_prints_them() {
        assert_eq!(cpu_quantity(1_000_000_000), "1");
        assert_eq!(cpu_quantity(1_500_000_000), "1500m");
        assert_eq!(cpu_quantity(123_456), "123456n");
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(memory_quantity(16 * 1024), "16Ki");
        assert_eq!(memory_quantity(1 << 20), "1Mi");
        assert_eq!(memory_quantity(1_000_000), "1000000");
        assert_eq!(memory_quantity(0), "0");
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(15_012_000_000), "15.012s");
        assert_eq!(go_duration(15_000_000_000), "15s");
        assert_eq!(go_duration(60_500_000_000), "1m0.5s");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(12), "12ns");
    }

    #[test]
    fn pod_metrics_serialise_as_upstream() {
        let usage = Usage {
            cpu_nanocores: 2_500_000,
            memory_bytes: 4096,
            timestamp: 1_700_000_000_123_000_000,
            window: 15_001_000_000,
        };
        let pod = json!({"metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}}});
        let metrics = pod_metrics(
            &pod,
            &PodUsage { containers: vec![("app".into(), usage)], timestamp: usage.timestamp, window: usage.window },
        );
        let value = serde_json::to_value(&metrics).unwrap();
        assert_eq!(value["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(value["window"], "15.001s");
        assert_eq!(value["containers"], json!([{"name": "app", "usage": {"cpu": "2500u", "memory": "4Ki"}}]));
        assert_eq!(value["metadata"]["labels"], json!({"app": "web"}));
        assert!(value["metadata"]["creationTimestamp"].is_string());
        assert!(value.get("kind").is_none(), "list items carry no kind");
        let list = serde_json::to_value(PodMetricsList {
            kind: "PodMetricsList".into(),
            api_version: API_VERSION.into(),
            metadata: ListMeta::default(),
            items: vec![],
        })
        .unwrap();
        assert_eq!(
            list,
            json!({"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": []})
        );
    }
}

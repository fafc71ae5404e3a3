//! The metrics API against an in-process server: Nodes and Pods in a memory store, points put
//! in the storage as two scrape rounds would, and requests served as a client sends them.

use std::collections::HashMap;
use std::sync::Arc;

use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::storage::{Batch, PodKey, Point};
use crate::request::{self, Query, Route};
use crate::server::ApiServer;

const S: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000 * S;

async fn server() -> ApiServer {
    let srv = ApiServer::new(Arc::new(tug_store::memory::MemoryStore::new()), None, crate::ServerOptions::default());
    srv.bootstrap().await.unwrap();
    let node = json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"role": "worker"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    });
    srv.ensure_object("", "v1", "nodes", node, false).await.unwrap();
    for ns in ["default", "kube-system"] {
        let account =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
        srv.ensure_object("", "v1", "serviceaccounts", account, false).await.unwrap();
    }
    for (ns, name, app) in [("default", "web", "web"), ("default", "db", "db"), ("kube-system", "dns", "dns")] {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
        });
        srv.ensure_object("", "v1", "pods", pod, false).await.unwrap();
    }
    srv
}

/// Two rounds 15 s apart: the node and `web` and `dns` at one core, `db` seen once only.
fn scrape_rounds(srv: &ApiServer) {
    let round = |at: i64, cpu: u64, with_db: bool| {
        let point = |memory| Point {
            start_time: T0 - 3600 * S,
            timestamp: at,
            cumulative_cpu_nanos: cpu,
            memory_bytes: memory,
        };
        let mut batch = Batch::default();
        batch.nodes.insert("n1".into(), point(1 << 30));
        let mut pods = vec![("default", "web"), ("kube-system", "dns")];
        if with_db {
            pods.push(("default", "db"));
        }
        for (namespace, name) in pods {
            let key = PodKey { namespace: namespace.into(), name: name.into() };
            batch.pods.insert(key, HashMap::from([("main".to_string(), point(16 << 20))]));
        }
        batch
    };
    srv.metrics_server.storage().store(round(T0, 100 * S as u64, false));
    srv.metrics_server.storage().store(round(T0 + 15 * S, 115 * S as u64, true));
}

async fn get(srv: &ApiServer, path_and_query: &str) -> (u16, Value) {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let query = Query::parse(Some(query));
    let result = match request::route(&http::Method::GET, path, &query).unwrap() {
        Route::Resource(rr) => super::serve(srv, &rr, &query).await,
        other => panic!("not a resource route: {other:?}"),
    };
    let response = result.unwrap_or_else(|e| crate::response::error(&e));
    let code = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&body).unwrap())
}

fn names(list: &Value) -> Vec<&str> {
    list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn pods_with_metrics_are_listed_by_namespace_and_selectors() {
    let srv = server().await;
    scrape_rounds(&srv);
    let (code, all) = get(&srv, "/apis/metrics.k8s.io/v1beta1/pods").await;
    assert_eq!(code, 200);
    assert_eq!(
        (all["kind"].as_str(), all["apiVersion"].as_str()),
        (Some("PodMetricsList"), Some("metrics.k8s.io/v1beta1"))
    );
    // `db` has one point only: no metrics yet, so it is left out.
    assert_eq!(names(&all), ["web", "dns"]);
    let web = &all["items"][0];
    assert_eq!(web["containers"], json!([{"name": "main", "usage": {"cpu": "1", "memory": "16Mi"}}]));
    assert_eq!(web["window"], "15s");
    assert_eq!(web["metadata"]["labels"], json!({"app": "web"}));

    let (_, default) = get(&srv, "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods").await;
    assert_eq!(names(&default), ["web"]);
    let (_, selected) = get(&srv, "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=app%20in%20(dns,db)").await;
    assert_eq!(names(&selected), ["dns"]);
    let (_, by_name) =
        get(&srv, "/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=metadata.namespace%3Dkube-system").await;
    assert_eq!(names(&by_name), ["dns"]);
    let (code, bad) = get(&srv, "/apis/metrics.k8s.io/v1beta1/pods?fieldSelector=spec.nodeName%3Dn1").await;
    assert_eq!((code, bad["reason"].as_str()), (400, Some("BadRequest")));
}

#[tokio::test]
async fn get_answers_not_found_as_metrics_server_does() {
    let srv = server().await;
    scrape_rounds(&srv);
    let (code, web) = get(&srv, "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web").await;
    assert_eq!(code, 200);
    assert_eq!(web["kind"], "PodMetrics");
    let (code, db) = get(&srv, "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/db").await;
    assert_eq!(code, 404);
    assert_eq!(db["message"], "podmetrics.metrics.k8s.io \"default/db\" not found");
    assert_eq!(db["details"], json!({"name": "default/db", "group": "metrics.k8s.io", "kind": "podmetrics"}));
    let (code, gone) = get(&srv, "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope").await;
    assert_eq!((code, gone["message"].as_str()), (404, Some("pods \"nope\" not found")));

    let (code, node) = get(&srv, "/apis/metrics.k8s.io/v1beta1/nodes/n1").await;
    assert_eq!(code, 200);
    assert_eq!((node["kind"].as_str(), node["usage"]["cpu"].as_str()), (Some("NodeMetrics"), Some("1")));
    assert_eq!(node["usage"]["memory"], "1Gi");
    let (code, missing) = get(&srv, "/apis/metrics.k8s.io/v1beta1/nodes/n2").await;
    assert_eq!((code, missing["message"].as_str()), (404, Some("node \"n2\" not found")));
    let (_, nodes) = get(&srv, "/apis/metrics.k8s.io/v1beta1/nodes?labelSelector=role%3Dworker").await;
    assert_eq!(names(&nodes), ["n1"]);
    let (_, none) = get(&srv, "/apis/metrics.k8s.io/v1beta1/nodes?labelSelector=role%3Dcontrol-plane").await;
    assert_eq!(names(&none), Vec::<&str>::new());

    let (code, watch) = get(&srv, "/apis/metrics.k8s.io/v1beta1/pods?watch=true").await;
    assert_eq!((code, watch["reason"].as_str()), (405, Some("MethodNotAllowed")));
    let (code, _) = get(&srv, "/apis/metrics.k8s.io/v1alpha1/pods").await;
    assert_eq!(code, 404);
    let (code, _) = get(&srv, "/apis/metrics.k8s.io/v1beta1/pods/web").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn simulated_and_unready_nodes_are_not_scraped() {
    let srv = server().await;
    for (name, ready, simulated) in [("sim-1", "True", true), ("down", "False", false)] {
        let mut node = json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        });
        if simulated {
            node["metadata"]["annotations"] = json!({super::ANNOTATION_SIMULATED: "true"});
        }
        srv.ensure_object("", "v1", "nodes", node, false).await.unwrap();
    }
    assert_eq!(srv.ready_nodes().await.unwrap(), ["n1"]);
}

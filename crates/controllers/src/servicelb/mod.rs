//! The built-in service load balancer (k3s' servicelb role): a Service of `type: LoadBalancer`
//! with no `loadBalancerClass` gets the addresses of the cluster's nodes as its
//! `status.loadBalancer.ingress`, and every node's service proxy then answers the service's
//! ports on its own address (as kube-proxy does for any load balancer IP).
//!
//! As in k3s: a node's ExternalIP is used when it has one, else its InternalIP; only Ready
//! nodes count; when some nodes carry `svccontroller.k3s.cattle.io/enablelb=true`, only those
//! do. A node address can serve a given protocol and port for one service only, so a service
//! asking for a port an older load balancer service holds stays pending (no ingress) until
//! that port is free, where k3s' svclb pods would stay unschedulable.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// k3s' label choosing the nodes that serve load balancers.
pub const ENABLE_LB_LABEL: &str = "svccontroller.k3s.cattle.io/enablelb";

/// Why a service could not be synced; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the node cache never filled")]
    NodesNotSynced(#[source] reflector::store::WriterDropped),
    #[error("writing the load balancer status of service {namespace}/{name}")]
    Status {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

struct Context {
    client: Client,
    services: Store<Service>,
    nodes: Store<Node>,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let services: Api<Service> = Api::all(client.clone());
    let controller = Controller::new(services, watcher::Config::default());
    let store = controller.store();
    let (nodes, writer) = reflector::store::<Node>();
    let ctx = Arc::new(Context { client: client.clone(), services: store, nodes });
    // Nodes coming, going or changing readiness change every load balancer's addresses; the
    // cache they fill is what addresses are taken from.
    let node_changes =
        reflector::reflector(writer, watcher::watcher(Api::<Node>::all(client), watcher::Config::default()))
            .touched_objects()
            .filter_map(|node| async move { node.ok().map(|_| ()) });
    info!("starting service load balancer controller");
    controller
        .reconcile_all_on(node_changes)
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "service load balancer reconcile failed");
            }
        })
        .await;
}

fn error_policy(svc: Arc<Service>, err: &Error, _: Arc<Context>) -> Action {
    warn!(service = %svc.name_any(), error = %err, "service load balancer sync will be retried");
    Action::requeue(Duration::from_secs(5))
}

/// Whether this controller serves the service.
fn is_ours(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none())
        && svc.metadata.deletion_timestamp.is_none()
}

/// The (protocol, port) pairs a service needs on every node address.
fn ports(svc: &Service) -> BTreeSet<(String, i32)> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
        .collect()
}

/// Whether `a` got its ports before `b`: older first, then by namespace and name.
fn precedes(a: &Service, b: &Service) -> bool {
    let key = |s: &Service| (s.metadata.creation_timestamp.clone().map(|t| t.0), s.namespace(), s.name_any());
    key(a) < key(b)
}

/// The addresses load balancers get: one per eligible Ready node, sorted.
fn node_addresses(nodes: &[Node]) -> Vec<IpAddr> {
    let labelled = |n: &Node| n.labels().get(ENABLE_LB_LABEL).map(String::as_str) == Some("true");
    let only_labelled = nodes.iter().any(labelled);
    let ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let mut addresses: Vec<IpAddr> = nodes
        .iter()
        .filter(|n| ready(n) && (!only_labelled || labelled(n)))
        .filter_map(|n| {
            let addresses = n.status.as_ref()?.addresses.as_ref()?;
            let of = |kind: &str| addresses.iter().find(|a| a.type_ == kind).and_then(|a| a.address.parse().ok());
            of("ExternalIP").or_else(|| of("InternalIP"))
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// The ingress the service should have, given every service there is.
fn desired_ingress(svc: &Service, all: &[Arc<Service>], nodes: &[Node]) -> Vec<IpAddr> {
    if !is_ours(svc) {
        return Vec::new();
    }
    let mine = ports(svc);
    let taken = all.iter().any(|other| {
        other.uid() != svc.uid() && is_ours(other) && precedes(other, svc) && !ports(other).is_disjoint(&mine)
    });
    if taken { Vec::new() } else { node_addresses(nodes) }
}

fn current_ingress(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| ingress.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let current = current_ingress(&svc);
    if !is_ours(&svc) {
        // A service that stopped being ours (type or class changed) loses what we gave it;
        // other load balancers' services are not touched.
        let was_ours = svc.spec.as_ref().is_some_and(|s| s.load_balancer_class.is_none());
        if current.is_empty() || !was_ours || svc.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
    }
    // Never from a cache still filling: a partial node list would take addresses away.
    ctx.nodes.wait_until_ready().await.map_err(Error::NodesNotSynced)?;
    let nodes: Vec<Node> = ctx.nodes.state().iter().map(|n| Node::clone(n)).collect();
    let desired: Vec<String> =
        desired_ingress(&svc, &ctx.services.state(), &nodes).iter().map(ToString::to_string).collect();
    if desired == current {
        return Ok(Action::await_change());
    }
    let (namespace, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
    let ingress: Vec<_> = desired.iter().map(|ip| json!({"ip": ip, "ipMode": "VIP"})).collect();
    let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
    Api::<Service>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Status { namespace: namespace.clone(), name: name.clone(), source })?;
    if desired.is_empty() && is_ours(&svc) {
        info!(service = %format!("{namespace}/{name}"), "load balancer pending: its ports are held by an older load balancer service");
    } else {
        info!(service = %format!("{namespace}/{name}"), ingress = ?desired, "load balancer addresses set");
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus, ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    fn node(name: &str, ready: bool, addresses: &[(&str, &str)], enable: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: enable.map(|v| [(ENABLE_LB_LABEL.to_string(), v.to_string())].into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress { type_: t.to_string(), address: a.to_string() })
                        .collect(),
                ),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn lb(name: &str, created: i64, port: i32) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(name.into()),
                creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ports: Some(vec![ServicePort { port, ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn ready_nodes_give_their_external_or_internal_address() {
        let nodes = [
            node("a", true, &[("InternalIP", "10.0.0.2")], None),
            node("b", true, &[("InternalIP", "10.0.0.3"), ("ExternalIP", "203.0.113.3")], None),
            node("c", false, &[("InternalIP", "10.0.0.4")], None),
        ];
        let got: Vec<String> = node_addresses(&nodes).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["10.0.0.2", "203.0.113.3"]);
    }

    #[test]
    fn labelled_nodes_alone_serve_when_any_is_labelled() {
        let nodes = [
            node("a", true, &[("InternalIP", "10.0.0.2")], Some("true")),
            node("b", true, &[("InternalIP", "10.0.0.3")], None),
        ];
        let got: Vec<String> = node_addresses(&nodes).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["10.0.0.2"]);
    }

    #[test]
    fn a_port_held_by_an_older_load_balancer_leaves_the_newer_pending() {
        let nodes = [node("a", true, &[("InternalIP", "10.0.0.2")], None)];
        let (old, new, other) = (lb("old", 100, 80), lb("new", 200, 80), lb("other", 300, 443));
        let all = vec![old.clone(), new.clone(), other.clone()];
        assert_eq!(desired_ingress(&old, &all, &nodes).len(), 1);
        assert!(desired_ingress(&new, &all, &nodes).is_empty());
        assert_eq!(desired_ingress(&other, &all, &nodes).len(), 1);
        // Once the holder is gone, the port is free.
        assert_eq!(desired_ingress(&new, &[new.clone(), other], &nodes).len(), 1);
    }

    #[test]
    fn services_of_another_class_or_type_get_nothing() {
        let nodes = [node("a", true, &[("InternalIP", "10.0.0.2")], None)];
        let mut classed = (*lb("x", 1, 80)).clone();
        classed.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        assert!(desired_ingress(&classed, &[], &nodes).is_empty());
        let mut cluster_ip = (*lb("y", 1, 80)).clone();
        cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert!(desired_ingress(&cluster_ip, &[], &nodes).is_empty());
    }
}

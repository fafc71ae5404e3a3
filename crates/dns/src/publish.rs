//! How pods find the server: Service `kube-system/kube-dns` at the `--cluster-dns` address
//! and an EndpointSlice pointing at where this server listens, as kubeadm and k3s publish
//! CoreDNS. The service has no selector, so the endpointslice controller leaves its slice
//! alone (like the `kubernetes` service's); the slice's managed-by label names us.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

pub const NAMESPACE: &str = "kube-system";
pub const SERVICE_NAME: &str = "kube-dns";
/// The `endpointslice.kubernetes.io/managed-by` value of the slice we write.
pub const MANAGED_BY: &str = "dns.tugboat.io";
const FIELD_MANAGER: &str = "tug-dns";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("publishing service {NAMESPACE}/{SERVICE_NAME}")]
    Service { source: kube::Error },
    #[error("publishing endpointslice {NAMESPACE}/{SERVICE_NAME}")]
    EndpointSlice { source: kube::Error },
    #[error(
        "the cluster dns address {cluster_ip} is taken by service {NAMESPACE}/{SERVICE_NAME} with clusterIP {actual}"
    )]
    ClusterIpTaken { cluster_ip: IpAddr, actual: String },
}

/// The kube-dns Service as upstream's manifests describe it (minus the selector: our server is
/// not a pod).
pub fn service(cluster_ip: IpAddr) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": SERVICE_NAME,
            "namespace": NAMESPACE,
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "CoreDNS",
            },
            "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip.to_string(),
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
            ],
        },
    })
}

/// The slice pointing the service's DNS ports at `listen`.
pub fn endpoint_slice(listen: SocketAddr, node_name: Option<&str>) -> serde_json::Value {
    let address_type = if listen.is_ipv4() { "IPv4" } else { "IPv6" };
    let mut endpoint = json!({"addresses": [listen.ip().to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}});
    if let Some(node) = node_name {
        endpoint["nodeName"] = json!(node);
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": SERVICE_NAME,
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": SERVICE_NAME,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                "k8s-app": "kube-dns",
            },
        },
        "addressType": address_type,
        "endpoints": [endpoint],
        "ports": [
            {"name": "dns", "port": listen.port(), "protocol": "UDP"},
            {"name": "dns-tcp", "port": listen.port(), "protocol": "TCP"},
        ],
    })
}

/// Creates the Service if missing (its clusterIP cannot change later) and points the slice at
/// `listen`.
pub async fn publish(
    client: &Client,
    cluster_ip: IpAddr,
    listen: SocketAddr,
    node_name: Option<&str>,
) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let existing = services.get_opt(SERVICE_NAME).await.map_err(|source| Error::Service { source })?;
    // A service of the same name with another address is reported after the slice is
    // written: pods configured with that address still reach us through it.
    let mut taken = None;
    match existing.and_then(|s| s.spec).and_then(|s| s.cluster_ip) {
        Some(actual) if actual != cluster_ip.to_string() => taken = Some(Error::ClusterIpTaken { cluster_ip, actual }),
        Some(_) => {}
        None => {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            services
                .patch(SERVICE_NAME, &params, &Patch::Apply(service(cluster_ip)))
                .await
                .map_err(|source| Error::Service { source })?;
        }
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    slices
        .patch(SERVICE_NAME, &params, &Patch::Apply(endpoint_slice(listen, node_name)))
        .await
        .map_err(|source| Error::EndpointSlice { source })?;
    taken.map_or(Ok(()), Err)
}

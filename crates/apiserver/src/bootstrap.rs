//! What a cluster has from its first start: the system namespaces, and the `kubernetes`
//! service in `default` pointing at this server. Custom resources of stored definitions are
//! served from the start too.

use serde_json::json;
use tug_api::ApiError;
use tug_store::StoreError;

use crate::server::ApiServer;

/// How often the store's history is compacted (upstream's default `--etcd-compaction-interval`).
const COMPACTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// The namespaces every cluster has.
pub const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

impl ApiServer {
    /// Creates what is missing of the cluster's built-in objects, and points the `kubernetes`
    /// service's endpoints at this server. Safe to run on every start.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        self.start_namespace_cache();
        self.admission_caches.start(&self.store);
        for ns in SYSTEM_NAMESPACES {
            self.ensure_object(
                "",
                "v1",
                "namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                false,
            )
            .await?;
        }
        self.reconcile_kubernetes_service().await?;
        self.ensure_system_priority_classes().await?;
        // Serve the custom resources of the definitions already stored before answering.
        self.sync_custom_resources().await?;
        self.start_compaction();
        // Like upstream's endpoint reconciler, keep the service pointing at this server even if
        // someone edits or deletes it.
        let srv = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = srv.reconcile_kubernetes_service().await {
                    tracing::warn!(error = %e, "reconciling the kubernetes service");
                }
            }
        });
        Ok(())
    }

    /// Compacts the store history every five minutes, as upstream's apiserver does: each round
    /// forgets what came before the revision the previous round saw, so watches and paged lists
    /// can resume from anything less than five to ten minutes old.
    fn start_compaction(&self) {
        let srv = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COMPACTION_INTERVAL);
            tick.tick().await;
            let mut previous = None;
            loop {
                tick.tick().await;
                if let Some(rev) = previous {
                    match srv.store.compact(rev).await {
                        Ok(()) => {}
                        // Another server on the same etcd compacted further already.
                        Err(StoreError::Compacted { compacted, .. }) => {
                            tracing::debug!(revision = rev, compacted, "the datastore was compacted by another server");
                        }
                        Err(e) => tracing::warn!(error = %e, revision = rev, "compacting the datastore"),
                    }
                }
                previous = srv.store.current_revision().await.ok().filter(|r| *r > 0);
            }
        });
    }

    /// The `kubernetes` service in `default`, and its endpoints at this server.
    async fn reconcile_kubernetes_service(&self) -> Result<(), ApiError> {
        let ip = self.options.service_cidr.nth(1).to_string();
        let port = self.options.port;
        self.ensure_object(
            "",
            "v1",
            "services",
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": ip,
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
                    "sessionAffinity": "None",
                },
            }),
            false,
        )
        .await?;
        let address = self.options.advertise_address.to_string();
        self.ensure_object(
            "",
            "v1",
            "endpoints",
            json!({
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": [{"addresses": [{"ip": address}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
            }),
            true,
        )
        .await?;
        self.ensure_object(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "kubernetes"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }),
            true,
        )
        .await?;
        Ok(())
    }

    /// Publishes ConfigMap `kube-public/cluster-info` as kubeadm does: `data.kubeconfig` holds a
    /// kubeconfig with the cluster's `server_url` and CA and no user, so that a joining node can
    /// learn the CA with its bootstrap token (and check it against the hash it was given).
    /// Rewritten on every start, so a changed address is published.
    pub async fn publish_cluster_info(&self, server_url: &str, ca_pem: &str) -> Result<(), ApiError> {
        use base64::Engine as _;
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "", "cluster": {
                "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca_pem),
                "server": server_url,
            }}],
            "contexts": [],
            "users": [],
            "preferences": {},
        });
        let kubeconfig = serde_yaml::to_string(&kubeconfig)
            .map_err(|e| ApiError::internal(format!("encoding the cluster-info kubeconfig: {e}")))?;
        self.ensure_object(
            "",
            "v1",
            "configmaps",
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cluster-info", "namespace": "kube-public"},
                "data": {"kubeconfig": kubeconfig},
            }),
            true,
        )
        .await
    }
}

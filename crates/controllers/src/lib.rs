//! The controller manager.
//!
//! Each controller lives in its own module, named as upstream's `pkg/controller/<name>`, and
//! reaches cluster state only through the Kubernetes API with a kube-rs client (design rule 1),
//! so any of them can be swapped for upstream's and they exercise our API as real clients do.
pub mod certificates;
pub mod controller_ref;
pub mod cronjob;
pub mod daemon;
pub mod deletions;
pub mod deployment;
pub mod disruption;
pub mod endpoint;
pub mod endpointslice;
pub mod endpointslicemirroring;
pub mod events;
pub mod expectations;
pub mod garbagecollector;
pub mod history;
pub mod informer;
pub mod job;
pub mod leaderelection;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podautoscaler;
pub mod podgc;
pub mod replicaset;
pub mod resourcequota;
pub mod rootcacertpublisher;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;
pub mod ttlafterfinished;
pub mod volume;

use kube::Client;

pub use informer::Informers;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// What the controllers are configured with: the controller manager's flags.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The cluster CA bundle (PEM) published as `kube-root-ca.crt` in every namespace
    /// (`--root-ca-file`); without it there is no publisher, as upstream.
    pub root_ca: Option<String>,
    /// Pod CIDRs for nodes (`--cluster-cidr`, `--node-cidr-mask-size`); `None` allocates none.
    pub node_ipam: Option<(nodeipam::Ipv4Net, u8)>,
    /// `--node-monitor-grace-period` and the node lifecycle controller's other timings.
    pub node_lifecycle: nodelifecycle::Options,
    /// `--terminated-pod-gc-threshold` and the pod garbage collector's other timings.
    pub pod_gc: podgc::Options,
    /// The CA the CSR signer issues certificates with (`--cluster-signing-cert-file`,
    /// `--cluster-signing-key-file`); without it nothing is signed, as upstream.
    pub cluster_signing: Option<certificates::SigningCa>,
    /// Where the built-in local-path provisioner puts volumes on the nodes
    /// (`--default-local-storage-path`); `None` when it is disabled (`--disable local-storage`).
    pub local_storage_path: Option<std::path::PathBuf>,
    /// The horizontal pod autoscaler's flags (`--horizontal-pod-autoscaler-sync-period`, ...).
    pub horizontal_pod_autoscaler: podautoscaler::Options,
}

/// Runs every controller until `shutdown`.
pub async fn run(client: Client, options: Options, shutdown: CancellationToken) {
    // One watch and cache per resource type for all controllers.
    let informers = Informers::new(client.clone(), shutdown.clone());
    let node_ipam = options
        .node_ipam
        .map(|(cidr, mask)| tokio::spawn(nodeipam::run(informers.clone(), cidr, mask, shutdown.clone())));
    let node_lifecycle = tokio::spawn(nodelifecycle::run(informers.clone(), options.node_lifecycle, shutdown.clone()));
    let pod_gc = tokio::spawn(podgc::run(informers.clone(), options.pod_gc, shutdown.clone()));
    let service_accounts = tokio::spawn(serviceaccount::run(client.clone(), shutdown.clone()));
    let root_ca =
        options.root_ca.map(|ca| tokio::spawn(rootcacertpublisher::run(client.clone(), ca, shutdown.clone())));
    let csr_approving = tokio::spawn(certificates::csrapproving::run(client.clone(), shutdown.clone()));
    let csr_signing = options
        .cluster_signing
        .map(|ca| tokio::spawn(certificates::csrsigning::run(client.clone(), ca, shutdown.clone())));
    // The garbage collector's watches tell the quota controller of deletions.
    let deletions = deletions::DeletionFeed::default();
    let quota_deletions = deletions.subscribe();
    let gc = {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            // Discovery may fail while the API server is still starting: retry.
            loop {
                match garbagecollector::run(client.clone(), deletions.clone(), shutdown.clone()).await {
                    Ok(()) => return,
                    Err(e) => warn!(error = %e, "garbage collector stopped; restarting"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                }
            }
        })
    };
    let ns = tokio::spawn(namespace::run(client.clone(), shutdown.clone()));
    let endpoints = tokio::spawn(endpoint::run(informers.clone(), shutdown.clone()));
    let endpoint_slices = tokio::spawn(endpointslice::run(informers.clone(), shutdown.clone()));
    let mirroring = tokio::spawn(endpointslicemirroring::run(informers.clone(), shutdown.clone()));
    let rs = tokio::spawn(replicaset::run(informers.clone(), shutdown.clone()));
    let sts = tokio::spawn(statefulset::run(informers.clone(), shutdown.clone()));
    let daemon_sets = tokio::spawn(daemon::run(informers.clone(), shutdown.clone()));
    let jobs = tokio::spawn(job::run(informers.clone(), shutdown.clone()));
    let cronjobs = tokio::spawn(cronjob::run(informers.clone(), shutdown.clone()));
    let ttl = tokio::spawn(ttlafterfinished::run(informers.clone(), shutdown.clone()));
    let volumes = tokio::spawn(volume::persistentvolume::run(informers.clone(), shutdown.clone()));
    let ephemeral = tokio::spawn(volume::ephemeral::run(informers.clone(), shutdown.clone()));
    let pvc_protection = tokio::spawn(volume::pvcprotection::run(informers.clone(), shutdown.clone()));
    let pv_protection = tokio::spawn(volume::pvprotection::run(informers.clone(), shutdown.clone()));
    let attach_detach = tokio::spawn(volume::attachdetach::run(informers.clone(), shutdown.clone()));
    let local_path = options
        .local_storage_path
        .map(|path| tokio::spawn(volume::local_path::run(informers.clone(), path, shutdown.clone())));
    let quota = tokio::spawn(resourcequota::run(
        informers.clone(),
        quota_deletions,
        resourcequota::DEFAULT_RESYNC,
        shutdown.clone(),
    ));
    let disruption = tokio::spawn(disruption::run(informers.clone(), shutdown.clone()));
    let hpa = tokio::spawn(podautoscaler::run(informers.clone(), options.horizontal_pod_autoscaler, shutdown.clone()));
    let deploy = tokio::spawn(deployment::run(informers.clone(), shutdown));
    let _ = tokio::join!(gc, ns, rs, deploy, sts, daemon_sets);
    let _ = tokio::join!(endpoints, endpoint_slices, mirroring);
    let _ = tokio::join!(jobs, cronjobs, ttl);
    let _ = tokio::join!(quota, disruption, hpa);
    let _ = tokio::join!(volumes, ephemeral, pvc_protection, pv_protection, attach_detach);
    if let Some(local_path) = local_path {
        let _ = local_path.await;
    }
    let _ = service_accounts.await;
    let _ = tokio::join!(node_lifecycle, pod_gc);
    if let Some(node_ipam) = node_ipam {
        let _ = node_ipam.await;
    }
    let _ = csr_approving.await;
    if let Some(csr_signing) = csr_signing {
        let _ = csr_signing.await;
    }
    if let Some(root_ca) = root_ca {
        let _ = root_ca.await;
    }
}

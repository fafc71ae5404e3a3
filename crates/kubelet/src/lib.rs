//! The node agent: the kubelet's role in Tugboat.
//!
//! It registers this machine as a Node and keeps its status and Lease fresh, watches the pods
//! bound to the node and runs one worker per pod that converges the runtime's sandboxes and
//! containers to the pod spec, writes pod status through the status subresource, and serves
//! logs, exec, attach and port-forward over HTTPS for the API server to proxy.
//!
//! It reaches cluster state only through the API (a `kube::Client`), and containers only
//! through the CRI-shaped traits of `tug-runtime` ([`RuntimeService`], [`ImageService`]), so the
//! same agent drives the built-in runtime or an external CRI runtime.
//!
//! [`RuntimeService`]: tug_runtime::cri::RuntimeService
//! [`ImageService`]: tug_runtime::ImageService

pub mod admission;
pub mod config;
pub mod container_log_manager;
pub mod dns;
pub mod envvars;
pub mod etc_hosts;
pub mod events;
pub mod eviction;
pub mod image_gc_manager;
pub mod kuberuntime;
pub mod local_path;
pub mod logs;
pub mod machine;
pub mod node_status;
pub mod nodelease;
pub mod pluginmanager;
pub mod pod_manager;
pub mod pod_workers;
pub mod prober;
pub mod qos;
pub mod server;
pub mod static_pods;
pub mod stats;
pub mod status_manager;
pub mod streaming;
pub mod termination_message;
pub mod volumemanager;

pub use config::Config;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tug_runtime::ImageService;
use tug_runtime::cri::RuntimeService;

/// Why the node agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("registering the node: {0}")]
    Register(#[from] node_status::NodeStatusError),
    #[error("eviction settings: {0}")]
    Eviction(#[from] eviction::EvictionError),
}

/// Runs the node agent until `shutdown`: registers the Node and keeps its status and Lease
/// fresh, serves the agent's HTTPS API, and runs this node's pods. On shutdown the pods'
/// containers are left running; the next start adopts them.
pub async fn run(
    client: kube::Client,
    config: Config,
    runtime: Arc<dyn RuntimeService>,
    images: Arc<dyn ImageService>,
    shutdown: CancellationToken,
) -> Result<(), KubeletError> {
    let config = Arc::new(config);
    eviction::thresholds(&config)?;
    let latest_status = Arc::new(node_status::LatestNodeStatus::default());
    node_status::register(&client, &config, images.as_ref(), runtime.as_ref(), &latest_status).await?;
    let node_status = tokio::spawn(node_status::run(
        client.clone(),
        config.clone(),
        images.clone(),
        runtime.clone(),
        latest_status.clone(),
        shutdown.clone(),
    ));
    let server = tokio::spawn(serve_api(config.clone(), runtime.clone(), shutdown.clone()));
    let image_gc_manager =
        Arc::new(image_gc_manager::ImageGcManager::new(config.image_gc, runtime.clone(), images.clone()));
    let image_gc = tokio::spawn(image_gc_manager::run(image_gc_manager.clone(), config.clone(), shutdown.clone()));
    let log_rotation = tokio::spawn(container_log_manager::run(
        runtime.clone(),
        container_log_manager::LogRotatePolicy::default(),
        shutdown.clone(),
    ));
    // No CPU is reserved for the system: allocatable CPU is the machine's.
    let cpus = machine::machine_info().map_or(1, |m| m.num_cpus);
    kuberuntime::ensure_qos_cgroups(i64::from(cpus) * 1000).await;
    let local_path = tokio::spawn(local_path::run(client.clone(), config.node_name.clone(), shutdown.clone()));
    let plugins = tokio::spawn(pluginmanager::run(client.clone(), config.clone(), shutdown.clone()));

    let recorder = Arc::new(events::EventRecorder::new(client.clone(), config.node_name.clone()));
    let (eviction_runtime, eviction_images) = (runtime.clone(), images.clone());
    let manager =
        Arc::new(kuberuntime::KubeRuntimeManager::new(client.clone(), config.clone(), runtime, images, recorder));
    let status = Arc::new(status_manager::StatusManager::new(client.clone()));
    let workers = pod_workers::PodWorkers::new(manager.clone(), status, latest_status.clone(), shutdown.clone());
    let eviction = tokio::spawn(eviction::eviction_manager::run(
        client.clone(),
        config.clone(),
        eviction_runtime,
        eviction_images,
        image_gc_manager,
        workers.clone(),
        latest_status,
        shutdown.clone(),
    ));
    let manifests = config.pod_manifest_path.clone();
    pod_manager::run(client, config.node_name.clone(), manifests, workers, manager, shutdown.clone()).await;
    let _ = tokio::join!(node_status, server, image_gc, log_rotation, local_path, plugins, eviction);
    Ok(())
}

/// The agent's HTTPS API (logs, exec, attach, port-forward). A failure to serve is logged: the
/// pods keep running without it.
async fn serve_api(config: Arc<Config>, runtime: Arc<dyn RuntimeService>, shutdown: CancellationToken) {
    if let Err(error) = server::serve(config, runtime, shutdown).await {
        tracing::error!(%error, "the node agent's HTTPS API stopped");
    }
}

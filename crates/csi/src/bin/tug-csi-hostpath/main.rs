//! `tug-csi-hostpath`: a small but real CSI driver for tests, in the manner of
//! kubernetes-csi/csi-driver-host-path. Volumes are directories under `--state-dir`; one process
//! serves Identity, Controller and Node on `--endpoint`, and, given `--registration-dir`, also
//! plays node-driver-registrar for the kubelet's plugin watcher.

mod controller;
mod driver;
mod identity;
mod mounter;
mod node;
mod registrar;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tug_csi::registration::registration_server::RegistrationServer;
use tug_csi::v1::controller_server::ControllerServer;
use tug_csi::v1::identity_server::IdentityServer;
use tug_csi::v1::node_server::NodeServer;

use crate::driver::Driver;

#[derive(Parser, Debug)]
#[command(version, about = "A hostpath CSI driver for tests")]
struct Args {
    /// The CSI endpoint to serve: unix:///abs/path or /abs/path.
    #[arg(long)]
    endpoint: String,
    #[arg(long, default_value = "hostpath.csi.tugboat.dev")]
    driver_name: String,
    /// The node id NodeGetInfo reports (usually the node's name).
    #[arg(long)]
    node_id: String,
    /// Where volumes and their metadata are kept.
    #[arg(long)]
    state_dir: PathBuf,
    /// NodeGetInfo's max_volumes_per_node (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_volumes_per_node: i64,
    /// Serve the kubelet registration API in this directory (the kubelet's plugins_registry).
    #[arg(long)]
    registration_dir: Option<PathBuf>,
    /// The CSI socket path to hand to the kubelet (defaults to the endpoint's path).
    #[arg(long)]
    kubelet_registration_path: Option<String>,
}

/// Binds a unix socket, replacing a stale socket file a previous run left behind.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("remove stale socket {}", path.display()));
        }
        _ => {}
    }
    tug_csi::bind_unix(path).with_context(|| format!("bind {}", path.display()))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(error = %err, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let socket = tug_csi::socket_path(&args.endpoint)?;
    let driver = Arc::new(Driver {
        name: args.driver_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: args.node_id.clone(),
        max_volumes_per_node: args.max_volumes_per_node,
        store: state::VolumeStore::open(&args.state_dir)?,
        mounter: Arc::new(mounter::SysMounter),
        lock: tokio::sync::Mutex::new(()),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let csi_listener = bind(&socket)?;
    let csi = Server::builder()
        .add_service(IdentityServer::new(identity::IdentityService(driver.clone())))
        .add_service(ControllerServer::new(controller::ControllerService(driver.clone())))
        .add_service(NodeServer::new(node::NodeService(driver.clone())))
        .serve_with_incoming_shutdown(UnixListenerStream::new(csi_listener), stopped(stop_rx.clone()));
    tracing::info!(driver = %args.driver_name, endpoint = %socket.display(), node = %args.node_id, "serving CSI");

    let reg_socket = args.registration_dir.as_ref().map(|dir| dir.join(format!("{}-reg.sock", args.driver_name)));
    let registration = match &reg_socket {
        Some(path) => {
            let listener = bind(path)?;
            let registrar = registrar::Registrar {
                driver_name: args.driver_name.clone(),
                endpoint: args.kubelet_registration_path.clone().unwrap_or_else(|| socket.display().to_string()),
            };
            tracing::info!(socket = %path.display(), "serving plugin registration");
            let server = Server::builder()
                .add_service(RegistrationServer::new(registrar))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped(stop_rx.clone()));
            Some(server)
        }
        None => None,
    };

    let signal = async {
        shutdown_signal().await;
        tracing::info!("shutting down");
        // The registration socket goes first: its removal is how the kubelet learns the
        // plugin is gone.
        if let Some(path) = &reg_socket {
            let _ = std::fs::remove_file(path);
        }
        let _ = stop_tx.send(true);
    };
    let registration = async {
        match registration {
            Some(server) => server.await,
            None => Ok(()),
        }
    };
    let (csi_result, reg_result, ()) = tokio::join!(csi, registration, signal);
    let _ = std::fs::remove_file(&socket);
    csi_result.context("CSI server")?;
    reg_result.context("registration server")?;
    Ok(())
}

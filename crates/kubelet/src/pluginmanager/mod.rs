//! The kubelet's plugin manager (upstream `pkg/kubelet/pluginmanager`) for CSI drivers.
//!
//! A plugin announces itself with a socket in `<kubelet root>/plugins_registry` that serves the
//! registration API (node-driver-registrar does this for CSI drivers). The watcher polls that
//! directory; for a new socket it calls `GetInfo`, validates the plugin (type `CSIPlugin`, a
//! supported version), asks the driver `NodeGetInfo` on its own endpoint and records the driver
//! in the CSINode object, the Node's `csi.volume.kubernetes.io/nodeid` annotation and topology
//! labels ([`nodeinfomanager`]), then reports the outcome with `NotifyRegistrationStatus`. A
//! socket that disappears deregisters its driver. The registered drivers' endpoints are kept in
//! a process-wide registry ([`csi_driver_endpoint`]), as upstream's `csiDrivers` store, for the
//! CSI volume plugin.

pub mod nodeinfomanager;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tug_csi::registration::registration_client::RegistrationClient;
use tug_csi::registration::{InfoRequest, RegistrationStatus};
use tug_csi::v1::NodeGetInfoRequest;
use tug_csi::v1::node_client::NodeClient;

use crate::Config;
use nodeinfomanager::NodeInfoError;

/// The plugin type CSI drivers register as.
pub const CSI_PLUGIN_TYPE: &str = "CSIPlugin";
/// How often the registry directory is scanned.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a failed registration waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// The deadline of each gRPC call to a plugin (upstream uses a second for GetInfo, more for CSI).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a plugin could not be registered; the message goes back to the plugin in
/// NotifyRegistrationStatus, worded as upstream's.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("failed to dial socket {socket}, err: {source}")]
    Dial {
        socket: String,
        #[source]
        source: tug_csi::ConnectError,
    },
    #[error("failed to get plugin info using RPC GetInfo at socket {socket}, err: {source}")]
    GetInfo {
        socket: String,
        #[source]
        source: tonic::Status,
    },
    #[error("no handler registered for plugin type: {plugin_type} at socket {socket}")]
    UnknownType { plugin_type: String, socket: String },
    #[error("RegisterPlugin error -- plugin registration failed with err: {0}")]
    Validate(String),
    #[error("error connecting to CSI driver {driver} at {endpoint}: {source}")]
    DriverDial {
        driver: String,
        endpoint: String,
        #[source]
        source: tug_csi::ConnectError,
    },
    #[error("error retrieving node info from CSI driver {driver}: {source}")]
    NodeGetInfo {
        driver: String,
        #[source]
        source: tonic::Status,
    },
    #[error("error updating CSINode object with CSI driver node info: {0}")]
    NodeInfo(#[from] NodeInfoError),
    #[error("calling the plugin at {socket} timed out")]
    Timeout { socket: String },
}

/// A registered CSI driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiDriver {
    /// The driver's CSI socket, as it registered it.
    pub endpoint: String,
}

fn drivers() -> &'static RwLock<HashMap<String, CsiDriver>> {
    static DRIVERS: std::sync::OnceLock<RwLock<HashMap<String, CsiDriver>>> = std::sync::OnceLock::new();
    DRIVERS.get_or_init(Default::default)
}

/// The endpoint of a registered CSI driver, `None` when no such driver registered.
pub fn csi_driver_endpoint(driver: &str) -> Option<String> {
    drivers().read().unwrap_or_else(|e| e.into_inner()).get(driver).map(|d| d.endpoint.clone())
}

/// Puts a driver in the registry as if it had registered (volume plugin tests).
#[cfg(test)]
pub(crate) fn register_driver_for_tests(driver: &str, endpoint: &str) {
    drivers()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(driver.to_owned(), CsiDriver { endpoint: endpoint.to_owned() });
}

/// Where plugins put their registration sockets.
pub fn registry_dir(config: &Config) -> PathBuf {
    config.agent_dir.join("kubelet").join("plugins_registry")
}

/// Upstream's CSI handler accepts plugins supporting a 1.x version of the CSI API.
fn supports_csi_v1(versions: &[String]) -> bool {
    versions.iter().any(|v| {
        let v = v.trim_start_matches('v');
        v.split('.').next() == Some("1")
    })
}

/// Runs the plugin watcher until `shutdown`.
pub async fn run(client: kube::Client, config: Arc<Config>, shutdown: CancellationToken) {
    let dir = registry_dir(&config);
    if let Err(error) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), %error, "cannot create the plugin registry directory; CSI drivers cannot register");
        return;
    }
    let nodeinfo = nodeinfomanager::NodeInfoManager::new(client, config.node_name.clone());
    // Upstream's kubelet makes the node's CSINode object at start, drivers or not.
    let mut csinode_ready = false;
    // socket -> (driver name, socket inode), for the sockets that registered.
    let mut registered: BTreeMap<PathBuf, (String, u64)> = BTreeMap::new();
    // socket -> (inode, when it last failed), so a broken plugin is retried but not hammered.
    let mut failed: HashMap<PathBuf, (u64, Instant)> = HashMap::new();
    loop {
        if !csinode_ready {
            match nodeinfo.ensure_csinode().await {
                Ok(()) => csinode_ready = true,
                Err(error) => tracing::warn!(%error, "creating the CSINode object"),
            }
        }
        let present = sockets(&dir);
        for socket in gone_or_replaced(&registered, &present) {
            if let Some((driver, _)) = registered.remove(&socket) {
                deregister(&nodeinfo, &driver).await;
            }
        }
        failed.retain(|socket, (ino, _)| present.get(socket) == Some(ino));
        for (socket, ino) in &present {
            let backing_off = failed.get(socket).is_some_and(|(_, at)| at.elapsed() < RETRY_AFTER);
            if registered.contains_key(socket) || backing_off {
                continue;
            }
            match register(&nodeinfo, socket).await {
                Ok(driver) => {
                    failed.remove(socket);
                    registered.insert(socket.clone(), (driver, *ino));
                }
                Err(()) => {
                    failed.insert(socket.clone(), (*ino, Instant::now()));
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

/// The registered sockets that are gone, or were replaced by a new socket at the same path (a
/// restarted plugin, which upstream's watcher sees as a removal and a creation).
fn gone_or_replaced(registered: &BTreeMap<PathBuf, (String, u64)>, present: &BTreeMap<PathBuf, u64>) -> Vec<PathBuf> {
    registered
        .iter()
        .filter(|(socket, (_, ino))| present.get(*socket) != Some(ino))
        .map(|(socket, _)| socket.clone())
        .collect()
}

/// The sockets in the registry directory with their inodes (dot files are skipped, as
/// upstream's watcher does).
fn sockets(dir: &Path) -> BTreeMap<PathBuf, u64> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeMap::new() };
    entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let meta = std::fs::symlink_metadata(e.path()).ok()?;
            meta.file_type().is_socket().then(|| (e.path(), meta.ino()))
        })
        .collect()
}

async fn with_timeout<T>(
    socket: &str,
    call: impl std::future::Future<Output = Result<T, RegistrationError>>,
) -> Result<T, RegistrationError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(RegistrationError::Timeout { socket: socket.to_owned() }))
}

/// Registers the plugin behind `socket`; returns its name. Failures are logged and reported to
/// the plugin.
async fn register(nodeinfo: &nodeinfomanager::NodeInfoManager, socket: &Path) -> Result<String, ()> {
    let socket_name = socket.display().to_string();
    let channel = match with_timeout(&socket_name, async {
        tug_csi::connect(&socket_name)
            .await
            .map_err(|source| RegistrationError::Dial { socket: socket_name.clone(), source })
    })
    .await
    {
        Ok(channel) => channel,
        Err(error) => {
            tracing::warn!(socket = %socket_name, %error, "plugin registration");
            return Err(());
        }
    };
    let mut registration = RegistrationClient::new(channel);
    let outcome = with_timeout(&socket_name, async {
        let info = registration
            .get_info(InfoRequest {})
            .await
            .map_err(|source| RegistrationError::GetInfo { socket: socket_name.clone(), source })?
            .into_inner();
        if info.r#type != CSI_PLUGIN_TYPE {
            return Err(RegistrationError::UnknownType { plugin_type: info.r#type, socket: socket_name.clone() });
        }
        if !supports_csi_v1(&info.supported_versions) {
            return Err(RegistrationError::Validate(format!(
                "none of the versions specified {:?} are supported",
                info.supported_versions
            )));
        }
        // A registrar may leave the endpoint out: then the registration socket is the driver's.
        let endpoint = if info.endpoint.is_empty() { socket_name.clone() } else { info.endpoint.clone() };
        register_csi_driver(nodeinfo, &info.name, &endpoint).await?;
        Ok(info.name)
    })
    .await;
    let status = match &outcome {
        Ok(_) => RegistrationStatus { plugin_registered: true, error: String::new() },
        Err(error) => RegistrationStatus { plugin_registered: false, error: error.to_string() },
    };
    if let Err(error) = registration.notify_registration_status(status).await {
        tracing::warn!(socket = %socket_name, %error, "reporting the registration status to the plugin");
    }
    match outcome {
        Ok(driver) => {
            tracing::info!(driver = %driver, socket = %socket_name, "registered CSI driver");
            Ok(driver)
        }
        Err(error) => {
            tracing::warn!(socket = %socket_name, %error, "plugin registration failed");
            Err(())
        }
    }
}

/// Upstream's CSI `RegisterPlugin`: the driver joins the registry, then its NodeGetInfo goes to
/// the API; if that fails it leaves the registry again.
async fn register_csi_driver(
    nodeinfo: &nodeinfomanager::NodeInfoManager,
    driver: &str,
    endpoint: &str,
) -> Result<(), RegistrationError> {
    drivers()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(driver.to_owned(), CsiDriver { endpoint: endpoint.to_owned() });
    let result = async {
        let channel = tug_csi::connect(endpoint).await.map_err(|source| RegistrationError::DriverDial {
            driver: driver.to_owned(),
            endpoint: endpoint.to_owned(),
            source,
        })?;
        let info = NodeClient::new(channel)
            .node_get_info(NodeGetInfoRequest {})
            .await
            .map_err(|source| RegistrationError::NodeGetInfo { driver: driver.to_owned(), source })?
            .into_inner();
        let topology: BTreeMap<String, String> =
            info.accessible_topology.map(|t| t.segments.into_iter().collect()).unwrap_or_default();
        nodeinfo.install_driver(driver, &info.node_id, info.max_volumes_per_node, &topology).await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        drivers().write().unwrap_or_else(|e| e.into_inner()).remove(driver);
    }
    result
}

async fn deregister(nodeinfo: &nodeinfomanager::NodeInfoManager, driver: &str) {
    drivers().write().unwrap_or_else(|e| e.into_inner()).remove(driver);
    match nodeinfo.uninstall_driver(driver).await {
        Ok(()) => tracing::info!(driver, "deregistered CSI driver"),
        Err(error) => tracing::warn!(driver, %error, "removing the CSI driver from the CSINode object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_csi_v1_versions_are_supported() {
        assert!(supports_csi_v1(&["1.0.0".into()]));
        assert!(supports_csi_v1(&["0.3.0".into(), "v1.2.0".into()]));
        assert!(!supports_csi_v1(&["0.3.0".into()]));
        assert!(!supports_csi_v1(&[]));
    }

    #[test]
    fn only_sockets_not_dot_files_are_plugins() {
        let dir = tempfile::tempdir().unwrap();
        let _a = std::os::unix::net::UnixListener::bind(dir.path().join("a-reg.sock")).unwrap();
        let _hidden = std::os::unix::net::UnixListener::bind(dir.path().join(".hidden.sock")).unwrap();
        std::fs::write(dir.path().join("plain-file"), b"").unwrap();
        let found = sockets(dir.path());
        assert_eq!(found.keys().collect::<Vec<_>>(), vec![&dir.path().join("a-reg.sock")]);
    }

    #[test]
    fn a_socket_that_is_gone_or_replaced_is_deregistered() {
        let registered = BTreeMap::from([
            (PathBuf::from("/r/a.sock"), ("a".to_string(), 1)),
            (PathBuf::from("/r/b.sock"), ("b".to_string(), 2)),
            (PathBuf::from("/r/c.sock"), ("c".to_string(), 3)),
        ]);
        let present = BTreeMap::from([(PathBuf::from("/r/a.sock"), 1), (PathBuf::from("/r/b.sock"), 20)]);
        assert_eq!(
            gone_or_replaced(&registered, &present),
            vec![PathBuf::from("/r/b.sock"), PathBuf::from("/r/c.sock")]
        );
    }
}

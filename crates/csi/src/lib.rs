//! The Container Storage Interface (CSI) for Tugboat: the generated `csi.v1` gRPC API (Identity,
//! Controller, Node; clients and servers), the kubelet plugin registration API, a client that
//! connects to a driver's unix socket, and the names Kubernetes derives from a CSI volume.
//!
//! The kubelet's plugin manager and volume plugin and the attach/detach controller build on the
//! wire protocol and the names. [`sidecar`] holds the controller-side sidecar roles
//! (external-provisioner, external-attacher) that `tug csi-controller` runs beside a driver:
//! the one part of this crate that talks to the Kubernetes API. The `tug-csi-hostpath` binary
//! is a small driver of our own for tests.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated CSI v1 API (package `csi.v1`).
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

/// The generated kubelet plugin registration API (package `pluginregistration`, served by a
/// plugin on a socket in the kubelet's `plugins_registry` directory).
#[allow(clippy::all, missing_docs)]
pub mod registration {
    tonic::include_proto!("pluginregistration");
}

pub mod sidecar;

/// Why a connection to a CSI (or registration) socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("endpoint {endpoint:?} is not a unix socket path (want unix:///abs/path or /abs/path)")]
    InvalidEndpoint { endpoint: String },
    #[error("connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The socket path of a CSI endpoint: `unix:///abs/path`, `unix:/abs/path` or a plain absolute
/// path (the forms CSI sidecars and the kubelet accept).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ConnectError> {
    let path = endpoint.strip_prefix("unix://").or_else(|| endpoint.strip_prefix("unix:")).unwrap_or(endpoint);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(ConnectError::InvalidEndpoint { endpoint: endpoint.to_string() })
    }
}

/// Connects to a gRPC server on a unix socket. The channel is HTTP/2 over the socket; the URI
/// authority is a placeholder because the connector ignores it.
pub async fn connect(endpoint: &str) -> Result<Channel, ConnectError> {
    let path = socket_path(endpoint)?;
    let connector_path = path.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let path = connector_path.clone();
        async move {
            let stream = connect_unix(&path).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is only a placeholder: it always parses, and the connector never looks at it.
    Endpoint::from_static("http://[::1]:50051")
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Connect { path, source })
}

/// The longest socket path `sockaddr_un` holds (108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Runs `f` with a path to `path` that fits in a `sockaddr_un`: a long path is reached through
/// `/proc/self/fd/<dir fd>/<name>`, with the directory held open meanwhile. Kubelet directories
/// under a deep data dir easily exceed the limit (`.../plugins_registry/<driver>-reg.sock`).
fn with_socket_path<T>(path: &Path, f: impl FnOnce(&Path) -> std::io::Result<T>) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return f(path) };
    let dir = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    let result = f(&short);
    drop(dir);
    result
}

/// Connects to a unix socket at any path length (see [`with_socket_path`]).
pub async fn connect_unix(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let stream = with_socket_path(path, |short| {
        let stream = std::os::unix::net::UnixStream::connect(short)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    })?;
    tokio::net::UnixStream::from_std(stream)
}

/// Binds a unix socket at any path length (see [`with_socket_path`]). Must run inside a tokio
/// runtime.
pub fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let listener = with_socket_path(path, |short| {
        let listener = std::os::unix::net::UnixListener::bind(short)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })?;
    tokio::net::UnixListener::from_std(listener)
}

/// The unique volume name the kubelet and the attach-detach controller use for a CSI volume
/// (`node.status.volumesInUse`, `volumesAttached`): `kubernetes.io/csi/<driver>^<handle>`.
pub fn volume_unique_name(driver: &str, volume_handle: &str) -> String {
    format!("kubernetes.io/csi/{driver}^{volume_handle}")
}

/// The name of the VolumeAttachment for a CSI volume on a node, as upstream's csi attacher
/// derives it: `csi-<hex sha256(volumeHandle + driver + nodeName)>`.
pub fn attachment_name(volume_handle: &str, driver: &str, node_name: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(volume_handle.as_bytes());
    hasher.update(driver.as_bytes());
    hasher.update(node_name.as_bytes());
    format!("csi-{}", hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_accepts_unix_urls_and_absolute_paths() {
        assert_eq!(socket_path("unix:///run/csi.sock").unwrap(), PathBuf::from("/run/csi.sock"));
        assert_eq!(socket_path("unix:/run/csi.sock").unwrap(), PathBuf::from("/run/csi.sock"));
        assert_eq!(socket_path("/run/csi.sock").unwrap(), PathBuf::from("/run/csi.sock"));
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
        assert!(socket_path("relative.sock").is_err());
    }

    #[tokio::test]
    async fn sockets_with_paths_longer_than_sun_len_bind_and_connect() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("driver-reg.sock");
        assert!(path.as_os_str().len() > MAX_SOCKET_PATH);
        let listener = bind_unix(&path).unwrap();
        assert!(path.exists());
        let (accepted, connected) = tokio::join!(listener.accept(), connect_unix(&path));
        accepted.unwrap();
        connected.unwrap();
    }

    #[test]
    fn volume_unique_name_is_upstreams() {
        assert_eq!(volume_unique_name("hostpath.csi.k8s.io", "vol-1"), "kubernetes.io/csi/hostpath.csi.k8s.io^vol-1");
    }

    #[test]
    fn attachment_name_hashes_handle_driver_node_in_that_order() {
        // sha256("vol-1" "drv" "node-a") computed independently with sha256sum.
        let expected = {
            let mut h = Sha256::new();
            h.update(b"vol-1drvnode-a");
            format!("csi-{}", hex::encode(h.finalize()))
        };
        assert_eq!(attachment_name("vol-1", "drv", "node-a"), expected);
        assert_eq!(attachment_name("vol-1", "drv", "node-a").len(), 4 + 64);
    }
}

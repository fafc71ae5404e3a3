//! The CRI client: [`RemoteRuntime`] drives an external container runtime (containerd's CRI
//! plugin, CRI-O) over the CRI v1 gRPC API on its unix socket, behind the same
//! [`RuntimeService`](crate::cri::RuntimeService) and [`ImageService`](crate::ImageService)
//! traits the built-in runtime implements, as upstream's `remote` runtime service does for the
//! kubelet (`--container-runtime-endpoint`).
//!
//! What the external runtime owns then: images (pulled by the runtime, with the credentials the
//! kubelet passes in `AuthConfig`), sandboxes (their network comes from the runtime's own CNI
//! configuration), containers, and their logs, which the runtime writes in the CRI log format at
//! `log_directory/log_path`, the very files the kubelet's log reader opens.
//!
//! Interactive sessions (`Exec`, `Attach`, `PortForward`) are served by the runtime's own
//! streaming server: the runtime answers with a URL, which
//! [`RuntimeService::streaming_url`](crate::cri::RuntimeService::streaming_url) hands to the
//! kubelet's server, which proxies the client's upgraded connection there, as upstream's kubelet
//! does. `ExecSync` (probes) is a plain call.
//!
//! Pod networking is the runtime's (its CNI configuration directory); the node agent puts a
//! configuration for the node's podCIDR there (`tug_network::runtime_cni`).

mod convert;
mod images;
mod runtime;

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cri::RuntimeError;

/// The generated CRI v1 messages and clients (package `runtime.v1`, proto/cri/api.proto).
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

use v1::image_service_client::ImageServiceClient;
use v1::runtime_service_client::RuntimeServiceClient;

/// The CRI API version this client speaks.
const CRI_VERSION: &str = "v1";

/// How long a CRI call may take, as the kubelet's default `--runtime-request-timeout` (2m).
/// Image pulls have no deadline (upstream's neither); exec and stop add their own timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why [`RemoteRuntime::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("container runtime endpoint {endpoint:?} is not a unix socket (want unix:///path/to/socket)")]
    InvalidEndpoint { endpoint: String },
    #[error("connecting to the container runtime at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the container runtime at {path} does not serve CRI {CRI_VERSION} (runtime.v1.RuntimeService)")]
    Unsupported {
        path: PathBuf,
        #[source]
        source: Box<tonic::Status>,
    },
    #[error("the container runtime at {path} answered Version with API {api_version:?}, not {CRI_VERSION}")]
    WrongVersion { path: PathBuf, api_version: String },
}

/// An external CRI runtime reached over its unix socket.
#[derive(Clone)]
pub struct RemoteRuntime {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// What `Version` said: `containerd` and `1.6.20~ds1` (see `runtime_version`).
    name: String,
    version: String,
}

impl std::fmt::Debug for RemoteRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRuntime").field("name", &self.name).field("version", &self.version).finish()
    }
}

/// The socket path of `unix:///path` (or a bare absolute path, as the kubelet also accepts).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ConnectError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(ConnectError::InvalidEndpoint { endpoint: endpoint.to_owned() })
    }
}

impl RemoteRuntime {
    /// Connects to the runtime at `endpoint` (`unix:///run/containerd/containerd.sock`) and checks
    /// that it speaks CRI v1.
    pub async fn connect(endpoint: &str) -> Result<Self, ConnectError> {
        let path = socket_path(endpoint)?;
        let socket = path.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        });
        // gRPC needs an http URI; the connector ignores it and dials the socket.
        let channel = Endpoint::from_static("http://localhost")
            .connect_timeout(Duration::from_secs(10))
            .connect_with_connector(connector)
            .await
            .map_err(|source| ConnectError::Connect { path: path.clone(), source })?;
        let mut runtime = RuntimeServiceClient::new(channel.clone());
        let version = runtime
            .version(request(v1::VersionRequest { version: CRI_VERSION.to_owned() }))
            .await
            .map_err(|status| ConnectError::Unsupported { path: path.clone(), source: Box::new(status) })?
            .into_inner();
        if version.runtime_api_version != CRI_VERSION {
            return Err(ConnectError::WrongVersion { path, api_version: version.runtime_api_version });
        }
        tracing::info!(
            runtime = %version.runtime_name,
            version = %version.runtime_version,
            path = %path.display(),
            "connected to the container runtime"
        );
        Ok(RemoteRuntime {
            runtime,
            images: ImageServiceClient::new(channel),
            name: version.runtime_name,
            version: version.runtime_version,
        })
    }
}

/// A request with the default CRI deadline.
fn request<T>(message: T) -> tonic::Request<T> {
    request_with_timeout(message, REQUEST_TIMEOUT)
}

fn request_with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// A failed call: the runtime gone (or not answering) is `Unavailable`, the rest keeps the
/// runtime's status. Callers map `NotFound` themselves, knowing what was looked for.
fn rpc_error(operation: &'static str, status: tonic::Status) -> RuntimeError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            RuntimeError::Unavailable(format!("{operation}: {}", status.message()))
        }
        _ => RuntimeError::Rpc { operation, source: Box::new(status) },
    }
}

//! The controller-side CSI sidecars in one process (`tug csi-controller`): what upstream ships as
//! the kubernetes-csi external-provisioner and external-attacher containers next to a driver's
//! controller plugin. They talk to the driver over its CSI socket and to the cluster only
//! through the Kubernetes API (kube-rs), so either can be swapped for upstream's.
//!
//! - [`provisioner`]: claims the PersistentVolume binder handed to this driver get a volume
//!   (`CreateVolume`) and a PersistentVolume pre-bound to them; Released volumes with reclaim
//!   policy Delete are deleted (`DeleteVolume`) before their object goes.
//! - [`attacher`]: VolumeAttachments for this driver are published to their node
//!   (`ControllerPublishVolume`) and unpublished when deleted.

pub mod attacher;
pub mod provisioner;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeSpec, Secret};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::v1::controller_client::ControllerClient;
use crate::v1::controller_service_capability::{self, rpc};
use crate::v1::identity_client::IdentityClient;
use crate::v1::plugin_capability::{self, service};
use crate::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode};
use crate::v1::{
    ControllerGetCapabilitiesRequest, GetPluginCapabilitiesRequest, GetPluginInfoRequest, VolumeCapability,
};

/// Why the driver could not be read or a sidecar call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the CSI driver")]
    Connect(#[from] crate::ConnectError),
    #[error("calling {call} on the CSI driver")]
    Rpc {
        call: &'static str,
        #[source]
        source: tonic::Status,
    },
    #[error("the CSI driver reported an empty name")]
    NoName,
}

/// What the sidecars learn from the driver at start.
#[derive(Debug, Clone)]
pub struct Driver {
    /// `GetPluginInfo`'s name: the provisioner and attacher name in Kubernetes objects.
    pub name: String,
    /// `CREATE_DELETE_VOLUME`: the provisioner runs.
    pub create_delete: bool,
    /// `PUBLISH_UNPUBLISH_VOLUME`: attaching calls the driver; without it, only marks attached.
    pub publish_unpublish: bool,
    /// `VOLUME_ACCESSIBILITY_CONSTRAINTS`: volumes have topology.
    pub topology: bool,
    channel: Channel,
}

impl Driver {
    fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }
}

/// How often a driver that does not accept connections yet is tried again.
const CONNECT_RETRY: Duration = Duration::from_secs(1);

/// Connects to the driver at `endpoint`, waiting for it to listen as upstream's sidecars do,
/// and reads its name and capabilities, each call within `timeout`.
pub async fn probe(endpoint: &str, timeout: Duration) -> Result<Driver, Error> {
    let channel = loop {
        match crate::connect(endpoint).await {
            Ok(channel) => break channel,
            Err(crate::ConnectError::Connect { path, source }) => {
                warn!(path = %path.display(), error = %source, "the CSI driver is not listening yet; retrying");
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut identity = IdentityClient::new(channel.clone());
    let name = identity
        .get_plugin_info(request(GetPluginInfoRequest {}, timeout))
        .await
        .map_err(|source| Error::Rpc { call: "GetPluginInfo", source })?
        .into_inner()
        .name;
    if name.is_empty() {
        return Err(Error::NoName);
    }
    let plugin_caps = identity
        .get_plugin_capabilities(request(GetPluginCapabilitiesRequest {}, timeout))
        .await
        .map_err(|source| Error::Rpc { call: "GetPluginCapabilities", source })?
        .into_inner()
        .capabilities;
    let topology = plugin_caps.iter().any(|c| {
        matches!(c.r#type, Some(plugin_capability::Type::Service(s))
            if s.r#type == service::Type::VolumeAccessibilityConstraints as i32)
    });
    let controller_caps = ControllerClient::new(channel.clone())
        .controller_get_capabilities(request(ControllerGetCapabilitiesRequest {}, timeout))
        .await
        .map_err(|source| Error::Rpc { call: "ControllerGetCapabilities", source })?
        .into_inner()
        .capabilities;
    let has = |t: rpc::Type| {
        controller_caps
            .iter()
            .any(|c| matches!(c.r#type, Some(controller_service_capability::Type::Rpc(r)) if r.r#type == t as i32))
    };
    Ok(Driver {
        name,
        create_delete: has(rpc::Type::CreateDeleteVolume),
        publish_unpublish: has(rpc::Type::PublishUnpublishVolume),
        topology,
        channel,
    })
}

/// Runs the provisioner (when the driver creates volumes) and the attacher until `shutdown`;
/// every driver call is given `timeout`.
pub async fn run(client: Client, driver: Driver, timeout: Duration, shutdown: CancellationToken) {
    info!(driver = %driver.name, create_delete = driver.create_delete, publish_unpublish = driver.publish_unpublish,
        "starting csi controller sidecars");
    let provisioner = async {
        if driver.create_delete {
            provisioner::run(client.clone(), driver.clone(), timeout, shutdown.clone()).await;
        }
    };
    let attacher = attacher::run(client.clone(), driver.clone(), timeout, shutdown.clone());
    tokio::join!(provisioner, attacher);
}

/// A gRPC request with a deadline.
fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(timeout);
    r
}

/// A gRPC error as Go's grpc status prints it (`rpc error: code = X desc = Y`), which upstream's
/// event messages carry.
fn status_message(s: &tonic::Status) -> String {
    format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
}

/// Failures in a row per object, for upstream's per-item exponential backoff.
#[derive(Default)]
struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    /// The wait after another failure of `key`: 1 s doubling to 5 min.
    fn next(&self, key: String) -> Action {
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key).or_default();
        *n = n.saturating_add(1);
        Action::requeue(Duration::from_secs(1u64 << (*n - 1).min(9)).min(MAX_BACKOFF))
    }

    fn reset(&self, key: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Runs `sync` for every object of `api` (kube-runtime's controller: a queue that never runs
/// one object twice at once) until `shutdown`; a failed object is retried with backoff.
async fn run_controller<K, C, F, Fut, E>(
    api: Api<K>,
    ctx: Arc<C>,
    what: &'static str,
    shutdown: CancellationToken,
    sync: F,
) where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    C: Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let sync = Arc::new(sync);
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            move |obj: Arc<K>, state: Arc<(Arc<C>, Backoff)>| {
                let sync = sync.clone();
                async move {
                    let result = sync(obj.clone(), state.0.clone()).await;
                    if result.is_ok() {
                        state.1.reset(&obj.uid().unwrap_or_default());
                    }
                    result
                }
            },
            move |obj, e, state| {
                warn!(object = %obj.name_any(), what, error = %e, "sync failed; retrying");
                state.1.next(obj.uid().unwrap_or_default())
            },
            Arc::new((ctx, Backoff::default())),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// A cache of every object of a kind, kept by a reflector until `shutdown`.
fn cache<K>(api: Api<K>, shutdown: CancellationToken) -> (Store<K>, impl Future<Output = ()>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff())
        .take_until(shutdown.cancelled_owned())
        .for_each(|_| futures::future::ready(()));
    (reader, stream)
}

/// The sanitized driver name upstream's sidecars put in finalizers: every character other than
/// letters, digits and `-` becomes `-`, and a trailing `-` gets an `X`.
pub fn sanitize_driver_name(driver: &str) -> String {
    let mut name: String =
        driver.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    if name.ends_with('-') {
        name.push('X');
    }
    name
}

/// The CSI access mode for a Kubernetes one.
fn access_mode(mode: &str) -> Mode {
    match mode {
        "ReadWriteOnce" => Mode::SingleNodeWriter,
        "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
        "ReadWriteMany" => Mode::MultiNodeMultiWriter,
        "ReadWriteOncePod" => Mode::SingleNodeSingleWriter,
        _ => Mode::Unknown,
    }
}

/// A volume capability: block for `volumeMode: Block`, else a mount with `fs_type` and
/// `mount_flags`.
fn capability(mode: Mode, block: bool, fs_type: &str, mount_flags: &[String]) -> VolumeCapability {
    let access_type = if block {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume {
            fs_type: fs_type.to_string(),
            mount_flags: mount_flags.to_vec(),
            volume_mount_group: String::new(),
        })
    };
    VolumeCapability { access_mode: Some(AccessMode { mode: mode as i32 }), access_type: Some(access_type) }
}

/// The one capability a PersistentVolume is published with (upstream's attacher
/// `GetVolumeCapabilities`): the widest of its access modes.
fn volume_capability(spec: &PersistentVolumeSpec) -> VolumeCapability {
    let modes = spec.access_modes.clone().unwrap_or_default();
    let has = |m: &str| modes.iter().any(|x| x == m);
    let mode = if has("ReadWriteMany") {
        Mode::MultiNodeMultiWriter
    } else if has("ReadOnlyMany") {
        Mode::MultiNodeReaderOnly
    } else if has("ReadWriteOncePod") && !has("ReadWriteOnce") {
        Mode::SingleNodeSingleWriter
    } else {
        Mode::SingleNodeWriter
    };
    let block = spec.volume_mode.as_deref() == Some("Block");
    let fs_type = spec.csi.as_ref().and_then(|c| c.fs_type.clone()).unwrap_or_default();
    capability(mode, block, &fs_type, spec.mount_options.as_deref().unwrap_or_default())
}

/// The data of a Secret, as strings, for a driver call's `secrets`.
async fn read_secret(client: &Client, namespace: &str, name: &str) -> Result<HashMap<String, String>, kube::Error> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace).get(name).await?;
    let data: BTreeMap<_, _> = secret.data.unwrap_or_default();
    Ok(data.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned())).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn driver_names_are_sanitized_as_upstreams_sidecars_do() {
        assert_eq!(sanitize_driver_name("hostpath.csi.tugboat.dev"), "hostpath-csi-tugboat-dev");
        assert_eq!(sanitize_driver_name("example.com/driver."), "example-com-driver-X");
    }

    #[test]
    fn a_volume_is_published_with_its_widest_access_mode_and_its_fs_type() {
        let spec: PersistentVolumeSpec = serde_json::from_value(json!({
            "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
            "mountOptions": ["noatime"],
            "csi": {"driver": "d", "volumeHandle": "h", "fsType": "xfs"}
        }))
        .unwrap();
        let cap = volume_capability(&spec);
        assert_eq!(cap.access_mode.unwrap().mode, Mode::MultiNodeReaderOnly as i32);
        let Some(AccessType::Mount(m)) = cap.access_type else { panic!("a mount capability") };
        assert_eq!((m.fs_type.as_str(), m.mount_flags.as_slice()), ("xfs", ["noatime".to_string()].as_slice()));
        let block: PersistentVolumeSpec = serde_json::from_value(json!({"volumeMode": "Block"})).unwrap();
        assert_eq!(volume_capability(&block).access_type, Some(AccessType::Block(BlockVolume {})));
    }

    #[test]
    fn grpc_errors_read_as_go_prints_them() {
        let s = tonic::Status::resource_exhausted("no space");
        assert_eq!(status_message(&s), "rpc error: code = ResourceExhausted desc = no space");
    }
}

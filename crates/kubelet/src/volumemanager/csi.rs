//! The CSI volume plugin (upstream `pkg/volume/csi`): volumes of PersistentVolumes with
//! `spec.csi` and inline `csi:` pod volumes (CSI ephemeral volumes), served by drivers that
//! registered through the [plugin manager](crate::pluginmanager).
//!
//! Setup follows upstream's order: the CSIDriver object decides whether the volume must be
//! attached first (default yes) and whether pod info goes into the volume context; an attached
//! volume waits for its VolumeAttachment (`csi-<sha256>`) to say `attached` and passes its
//! metadata as publish_context; a driver with STAGE_UNSTAGE_VOLUME stages it once per node at
//! `<kubelet root>/plugins/kubernetes.io/csi/<driver>/<sha256(handle)>/globalmount`; then it is
//! published at `<pod dir>/volumes/kubernetes.io~csi/<name>/mount`. Next to each mount a
//! `vol_data.json` (upstream's file) records driver and handle, so teardown, the unstage
//! decision and the node's `volumesInUse` work from the disk, across agent restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{CSIPersistentVolumeSource, CSIVolumeSource, PersistentVolume, Pod, Volume};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::Status;
use tug_csi::v1::node_client::NodeClient;
use tug_csi::v1::node_service_capability::{self, rpc};
use tug_csi::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};
use tug_csi::v1::{
    NodeGetCapabilitiesRequest, NodePublishVolumeRequest, NodeStageVolumeRequest, NodeUnpublishVolumeRequest,
    NodeUnstageVolumeRequest, VolumeCapability,
};

use super::mount;
use super::source::{ObjectSource, SourceError};
use crate::Config;

/// Upstream's plugin directory name under `<pod dir>/volumes`.
pub const CSI_DIR: &str = "kubernetes.io~csi";
const VOL_DATA: &str = "vol_data.json";
const PERSISTENT: &str = "Persistent";
const EPHEMERAL: &str = "Ephemeral";
/// How long one setup waits for the attach-detach controller before it reports and retries.
const ATTACH_WAIT: Duration = Duration::from_secs(2);

/// Why a CSI volume could not be set up or torn down, worded as upstream's.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error("driver name {driver} not found in the list of registered CSI drivers")]
    DriverNotRegistered { driver: String },
    #[error("failed to connect to CSI driver {driver}: {source}")]
    Connect {
        driver: String,
        #[source]
        source: tug_csi::ConnectError,
    },
    #[error("rpc error: code = {code:?} desc = {message}", code = .0.code(), message = .0.message())]
    Rpc(Status),
    #[error("volume mode \"Ephemeral\" not supported by driver {driver} ({reason})")]
    EphemeralNotSupported { driver: String, reason: String },
    #[error("volume {handle} has GET error for volume attachment {attachment}: {source}")]
    AttachmentGet {
        handle: String,
        attachment: String,
        #[source]
        source: SourceError,
    },
    #[error("volumeattachments.storage.k8s.io \"{attachment}\" not found")]
    AttachmentNotFound { attachment: String },
    #[error("{message}")]
    AttachError { message: String },
    #[error("attachment timeout for volume {handle}")]
    AttachTimeout { handle: String },
    #[error("failed to find the secret {name} in the namespace {namespace} with error: secrets \"{name}\" not found")]
    SecretNotFound { namespace: String, name: String },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<Status> for CsiError {
    fn from(status: Status) -> Self {
        CsiError::Rpc(status)
    }
}

impl From<CsiError> for super::SetUpError {
    /// Boxed: a gRPC status is large, and every volume result carries the error type.
    fn from(error: CsiError) -> Self {
        super::SetUpError::Csi(Box::new(error))
    }
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CsiError {
    let path = path.to_path_buf();
    move |source| CsiError::Io { operation, path, source }
}

/// Upstream's `vol_data.json`, next to a publish target and a staging path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeData {
    #[serde(rename = "specVolID")]
    pub spec_vol_id: String,
    #[serde(rename = "volumeHandle")]
    pub volume_handle: String,
    #[serde(rename = "driverName")]
    pub driver_name: String,
    #[serde(rename = "nodeName")]
    pub node_name: String,
    #[serde(rename = "attachmentID", default, skip_serializing_if = "String::is_empty")]
    pub attachment_id: String,
    #[serde(rename = "volumeLifecycleMode")]
    pub volume_lifecycle_mode: String,
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Upstream's handle for an inline ephemeral volume: `csi-<sha256(podUID + volume name)>`.
pub fn ephemeral_volume_handle(pod_uid: &str, volume: &str) -> String {
    format!("csi-{}", sha256_hex(&format!("{pod_uid}{volume}")))
}

/// The per-node staging directory of a volume (its `globalmount` is the staging path).
pub fn staging_dir(config: &Config, driver: &str, handle: &str) -> PathBuf {
    config
        .agent_dir
        .join("kubelet")
        .join("plugins")
        .join("kubernetes.io")
        .join("csi")
        .join(driver)
        .join(sha256_hex(handle))
}

/// Upstream's `asCSIAccessModeV1` for the PV's first access mode.
pub fn access_mode_of(mode: Option<&str>) -> access_mode::Mode {
    match mode {
        Some("ReadOnlyMany") => access_mode::Mode::MultiNodeReaderOnly,
        Some("ReadWriteMany") => access_mode::Mode::MultiNodeMultiWriter,
        _ => access_mode::Mode::SingleNodeWriter,
    }
}

fn capability(fs_type: Option<&str>, mount_flags: Vec<String>, mode: access_mode::Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs_type.unwrap_or_default().to_owned(),
            mount_flags,
            volume_mount_group: String::new(),
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// Upstream's `getPodInfoAttrs`: the volume context keys a driver with podInfoOnMount gets.
pub fn pod_info_attributes(pod: &Pod, ephemeral: bool) -> BTreeMap<String, String> {
    let meta = &pod.metadata;
    let service_account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default();
    BTreeMap::from([
        ("csi.storage.k8s.io/pod.name".into(), meta.name.clone().unwrap_or_default()),
        ("csi.storage.k8s.io/pod.namespace".into(), meta.namespace.clone().unwrap_or_default()),
        ("csi.storage.k8s.io/pod.uid".into(), meta.uid.clone().unwrap_or_default()),
        ("csi.storage.k8s.io/serviceAccount.name".into(), service_account),
        ("csi.storage.k8s.io/ephemeral".into(), ephemeral.to_string()),
    ])
}

/// Serialises CSI node operations of this agent: two pods sharing a volume must not stage it
/// twice, and the unstage decision must not race a new publication.
fn node_lock() -> &'static tokio::sync::Mutex<()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    &LOCK
}

async fn node_client(driver: &str) -> Result<NodeClient<tonic::transport::Channel>, CsiError> {
    let endpoint = crate::pluginmanager::csi_driver_endpoint(driver)
        .ok_or_else(|| CsiError::DriverNotRegistered { driver: driver.to_owned() })?;
    let channel =
        tug_csi::connect(&endpoint).await.map_err(|source| CsiError::Connect { driver: driver.to_owned(), source })?;
    Ok(NodeClient::new(channel))
}

async fn stage_unstage_supported(client: &mut NodeClient<tonic::transport::Channel>) -> Result<bool, CsiError> {
    let caps = client.node_get_capabilities(NodeGetCapabilitiesRequest {}).await?.into_inner();
    Ok(caps.capabilities.iter().any(|cap| {
        matches!(&cap.r#type, Some(node_service_capability::Type::Rpc(r)) if r.r#type == rpc::Type::StageUnstageVolume as i32)
    }))
}

async fn secrets(
    source: &dyn ObjectSource,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<HashMap<String, String>, CsiError> {
    let (Some(namespace), Some(name)) = (namespace, name) else { return Ok(HashMap::new()) };
    let secret = source
        .secret(namespace, name)
        .await?
        .ok_or_else(|| CsiError::SecretNotFound { namespace: namespace.to_owned(), name: name.to_owned() })?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect())
}

fn write_vol_data(dir: &Path, data: &VolumeData) -> Result<(), CsiError> {
    std::fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    let path = dir.join(VOL_DATA);
    let bytes = serde_json::to_vec(data).unwrap_or_default();
    std::fs::write(&path, bytes).map_err(io_error("write", &path))
}

fn read_vol_data(dir: &Path) -> Option<VolumeData> {
    serde_json::from_slice(&std::fs::read(dir.join(VOL_DATA)).ok()?).ok()
}

/// The vol_data of every CSI volume published into a pod on this node: (pod uid, data).
fn published_volumes(config: &Config) -> Vec<(String, VolumeData)> {
    let pods = config.agent_dir.join("kubelet").join("pods");
    let Ok(entries) = std::fs::read_dir(pods) else { return Vec::new() };
    let mut found = Vec::new();
    for pod in entries.flatten() {
        let uid = pod.file_name().to_string_lossy().into_owned();
        let Ok(volumes) = std::fs::read_dir(pod.path().join("volumes").join(CSI_DIR)) else { continue };
        for volume in volumes.flatten() {
            if let Some(data) = read_vol_data(&volume.path()) {
                found.push((uid.clone(), data));
            }
        }
    }
    found
}

/// The node's `volumesInUse`: the attachable CSI volumes pods on this node use, as
/// `kubernetes.io/csi/<driver>^<handle>`. An empty list is `None`, unless the Node reported
/// some before (then an empty list clears them).
pub fn volumes_in_use(config: &Config, previous: Option<&[String]>) -> Option<Vec<String>> {
    let names: BTreeSet<String> = published_volumes(config)
        .into_iter()
        .filter(|(_, data)| !data.attachment_id.is_empty())
        .map(|(_, data)| tug_csi::volume_unique_name(&data.driver_name, &data.volume_handle))
        .collect();
    if names.is_empty() && previous.is_none_or(|p| p.is_empty()) {
        return None;
    }
    Some(names.into_iter().collect())
}

/// What driver, handle and settings one publication uses.
struct Publication<'a> {
    driver: &'a str,
    handle: String,
    /// The pod volume directory (`.../kubernetes.io~csi/<name>`); the target is its `mount`.
    dir: PathBuf,
    readonly: bool,
    capability: VolumeCapability,
    volume_context: HashMap<String, String>,
    publish_secrets: HashMap<String, String>,
    data: VolumeData,
}

/// Sets up the CSI volume of a bound PersistentVolume for `pod`; returns the publish target.
pub async fn setup_persistent(
    source: &dyn ObjectSource,
    config: &Config,
    pod: &Pod,
    pv: &PersistentVolume,
    csi: &CSIPersistentVolumeSource,
    claim_read_only: bool,
) -> Result<PathBuf, CsiError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let pv_name = pv.metadata.name.as_deref().unwrap_or_default();
    if let Some(target) = already_published(&super::volume_dir(config, uid, CSI_DIR, pv_name))? {
        return Ok(target);
    }
    let driver_spec = source.csi_driver(&csi.driver).await?.map(|d| d.spec);
    let attach_required = driver_spec.as_ref().and_then(|s| s.attach_required).unwrap_or(true);
    let pod_info = driver_spec.as_ref().and_then(|s| s.pod_info_on_mount).unwrap_or(false);
    let spec = pv.spec.as_ref();
    let mode = access_mode_of(spec.and_then(|s| s.access_modes.as_ref()).and_then(|m| m.first()).map(String::as_str));
    let mount_flags = spec.and_then(|s| s.mount_options.clone()).unwrap_or_default();
    let capability = capability(csi.fs_type.as_deref(), mount_flags, mode);
    let attributes: HashMap<String, String> = csi.volume_attributes.clone().unwrap_or_default().into_iter().collect();
    let mut volume_context = attributes.clone();
    if pod_info {
        volume_context.extend(pod_info_attributes(pod, false));
    }
    let attachment = tug_csi::attachment_name(&csi.volume_handle, &csi.driver, &config.node_name);
    let data = VolumeData {
        spec_vol_id: pv_name.to_owned(),
        volume_handle: csi.volume_handle.clone(),
        driver_name: csi.driver.clone(),
        node_name: config.node_name.clone(),
        attachment_id: if attach_required { attachment.clone() } else { String::new() },
        volume_lifecycle_mode: PERSISTENT.into(),
    };
    let publish_ref = csi.node_publish_secret_ref.as_ref();
    let publication = Publication {
        driver: &csi.driver,
        handle: csi.volume_handle.clone(),
        dir: super::volume_dir(config, uid, CSI_DIR, pv_name),
        readonly: claim_read_only || csi.read_only == Some(true),
        capability: capability.clone(),
        volume_context,
        publish_secrets: secrets(
            source,
            publish_ref.and_then(|r| r.namespace.as_deref()),
            publish_ref.and_then(|r| r.name.as_deref()),
        )
        .await?,
        data,
    };
    let _guard = node_lock().lock().await;
    let target = publication.dir.join("mount");
    // Recorded before waiting for the attachment, so the node reports the volume in use.
    write_vol_data(&publication.dir, &publication.data)?;
    if is_mounted(&target)? {
        return Ok(target);
    }
    let publish_context = if attach_required {
        wait_for_attachment(source, &csi.volume_handle, &attachment).await?
    } else {
        HashMap::new()
    };
    let mut client = node_client(&csi.driver).await?;
    let staging = if stage_unstage_supported(&mut client).await? {
        let dir = staging_dir(config, &csi.driver, &csi.volume_handle);
        let globalmount = dir.join("globalmount");
        if !is_mounted(&globalmount)? {
            write_vol_data(&dir, &publication.data)?;
            let stage_ref = csi.node_stage_secret_ref.as_ref();
            let stage_secrets = secrets(
                source,
                stage_ref.and_then(|r| r.namespace.as_deref()),
                stage_ref.and_then(|r| r.name.as_deref()),
            )
            .await?;
            client
                .node_stage_volume(NodeStageVolumeRequest {
                    volume_id: csi.volume_handle.clone(),
                    publish_context: publish_context.clone(),
                    staging_target_path: globalmount.display().to_string(),
                    volume_capability: Some(capability),
                    secrets: stage_secrets,
                    volume_context: attributes,
                })
                .await?;
            tracing::info!(driver = %csi.driver, handle = %csi.volume_handle, path = %globalmount.display(), "staged CSI volume");
        }
        Some(globalmount)
    } else {
        None
    };
    publish(&mut client, &publication, staging.as_deref(), publish_context).await
}

/// Sets up an inline `csi:` volume (a CSI ephemeral volume) for `pod`.
pub async fn setup_inline(
    source: &dyn ObjectSource,
    config: &Config,
    pod: &Pod,
    volume: &Volume,
    csi: &CSIVolumeSource,
) -> Result<PathBuf, CsiError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    if let Some(target) = already_published(&super::volume_dir(config, uid, CSI_DIR, &volume.name))? {
        return Ok(target);
    }
    let driver_spec = source.csi_driver(&csi.driver).await?.map(|d| d.spec);
    let Some(driver_spec) = driver_spec else {
        return Err(CsiError::EphemeralNotSupported {
            driver: csi.driver.clone(),
            reason: "no CSIDriver object".into(),
        });
    };
    let modes = driver_spec.volume_lifecycle_modes.clone().unwrap_or_else(|| vec![PERSISTENT.into()]);
    if !modes.iter().any(|m| m == EPHEMERAL) {
        return Err(CsiError::EphemeralNotSupported {
            driver: csi.driver.clone(),
            reason: format!("only supports {modes:?}"),
        });
    }
    let mut volume_context: HashMap<String, String> =
        csi.volume_attributes.clone().unwrap_or_default().into_iter().collect();
    if driver_spec.pod_info_on_mount == Some(true) {
        volume_context.extend(pod_info_attributes(pod, true));
    }
    let handle = ephemeral_volume_handle(uid, &volume.name);
    let publish_ref = csi.node_publish_secret_ref.as_ref().map(|r| r.name.as_str());
    let publication = Publication {
        driver: &csi.driver,
        handle: handle.clone(),
        dir: super::volume_dir(config, uid, CSI_DIR, &volume.name),
        readonly: csi.read_only == Some(true),
        capability: capability(csi.fs_type.as_deref(), Vec::new(), access_mode::Mode::SingleNodeWriter),
        volume_context,
        publish_secrets: secrets(source, publish_ref.map(|_| namespace), publish_ref).await?,
        data: VolumeData {
            spec_vol_id: volume.name.clone(),
            volume_handle: handle,
            driver_name: csi.driver.clone(),
            node_name: config.node_name.clone(),
            attachment_id: String::new(),
            volume_lifecycle_mode: EPHEMERAL.into(),
        },
    };
    let _guard = node_lock().lock().await;
    let target = publication.dir.join("mount");
    write_vol_data(&publication.dir, &publication.data)?;
    if is_mounted(&target)? {
        return Ok(target);
    }
    let mut client = node_client(&csi.driver).await?;
    publish(&mut client, &publication, None, HashMap::new()).await
}

async fn publish(
    client: &mut NodeClient<tonic::transport::Channel>,
    publication: &Publication<'_>,
    staging: Option<&Path>,
    publish_context: HashMap<String, String>,
) -> Result<PathBuf, CsiError> {
    let target = publication.dir.join("mount");
    client
        .node_publish_volume(NodePublishVolumeRequest {
            volume_id: publication.handle.clone(),
            publish_context,
            staging_target_path: staging.map(|p| p.display().to_string()).unwrap_or_default(),
            target_path: target.display().to_string(),
            volume_capability: Some(publication.capability.clone()),
            readonly: publication.readonly,
            secrets: publication.publish_secrets.clone(),
            volume_context: publication.volume_context.clone(),
        })
        .await?;
    tracing::info!(driver = publication.driver, handle = %publication.handle, target = %target.display(), "published CSI volume");
    Ok(target)
}

/// The target of a volume set up at an earlier sync (the pod worker calls setup at every sync;
/// a published volume needs no API reads or driver calls).
fn already_published(dir: &Path) -> Result<Option<PathBuf>, CsiError> {
    let target = dir.join("mount");
    Ok((read_vol_data(dir).is_some() && is_mounted(&target)?).then_some(target))
}

fn is_mounted(path: &Path) -> Result<bool, CsiError> {
    mount::is_mounted(path).map_err(io_error("read mountinfo for", path))
}

/// Upstream's `waitForVolumeAttachment`: the attachment's metadata once it says attached.
async fn wait_for_attachment(
    source: &dyn ObjectSource,
    handle: &str,
    attachment: &str,
) -> Result<HashMap<String, String>, CsiError> {
    let deadline = tokio::time::Instant::now() + ATTACH_WAIT;
    loop {
        let found = source.volume_attachment(attachment).await.map_err(|source| CsiError::AttachmentGet {
            handle: handle.to_owned(),
            attachment: attachment.to_owned(),
            source,
        })?;
        let Some(found) = found else {
            return Err(CsiError::AttachmentNotFound { attachment: attachment.to_owned() });
        };
        let status = found.status.unwrap_or_default();
        if status.attached {
            return Ok(status.attachment_metadata.unwrap_or_default().into_iter().collect());
        }
        if let Some(message) = status.attach_error.and_then(|e| e.message) {
            return Err(CsiError::AttachError { message });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CsiError::AttachTimeout { handle: handle.to_owned() });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Unpublishes every CSI volume of the pod and unstages those no other pod on the node uses.
/// Called before the generic teardown unmounts what is left and deletes the directories.
pub async fn teardown_pod(config: &Config, pod_uid: &str) -> Result<(), CsiError> {
    let csi_dir = config.pod_dir(pod_uid).join("volumes").join(CSI_DIR);
    let Ok(entries) = std::fs::read_dir(&csi_dir) else { return Ok(()) };
    let _guard = node_lock().lock().await;
    let mut first_error = None;
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(data) = read_vol_data(&dir) else { continue };
        if let Err(error) = teardown_volume(config, pod_uid, &dir, &data).await {
            tracing::warn!(driver = %data.driver_name, handle = %data.volume_handle, %error, "tearing down CSI volume");
            first_error.get_or_insert(error);
            continue;
        }
        let _ = std::fs::remove_file(dir.join(VOL_DATA));
    }
    first_error.map_or(Ok(()), Err)
}

async fn teardown_volume(config: &Config, pod_uid: &str, dir: &Path, data: &VolumeData) -> Result<(), CsiError> {
    let target = dir.join("mount");
    let mut client = node_client(&data.driver_name).await?;
    client
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: data.volume_handle.clone(),
            target_path: target.display().to_string(),
        })
        .await?;
    tracing::info!(driver = %data.driver_name, handle = %data.volume_handle, target = %target.display(), "unpublished CSI volume");
    if data.volume_lifecycle_mode == EPHEMERAL {
        return Ok(());
    }
    let still_used = published_volumes(config).into_iter().any(|(uid, other)| {
        uid != pod_uid && other.driver_name == data.driver_name && other.volume_handle == data.volume_handle
    });
    let staging = staging_dir(config, &data.driver_name, &data.volume_handle);
    if still_used || !staging.join(VOL_DATA).exists() {
        return Ok(());
    }
    client
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: data.volume_handle.clone(),
            staging_target_path: staging.join("globalmount").display().to_string(),
        })
        .await?;
    tracing::info!(driver = %data.driver_name, handle = %data.volume_handle, "unstaged CSI volume");
    match std::fs::remove_dir_all(&staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("remove", &staging)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "csi_tests.rs"]
mod component_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_handles_and_staging_dirs_follow_upstream() {
        let handle = ephemeral_volume_handle("uid-1", "scratch");
        assert_eq!(handle, format!("csi-{}", sha256_hex("uid-1scratch")));
        let config = Config::for_tests(Path::new("/data/agent"));
        let dir = staging_dir(&config, "d.csi", "vol-1");
        assert_eq!(dir, Path::new("/data/agent/kubelet/plugins/kubernetes.io/csi/d.csi").join(sha256_hex("vol-1")));
    }

    #[test]
    fn access_modes_map_as_upstreams() {
        assert_eq!(access_mode_of(Some("ReadWriteOnce")), access_mode::Mode::SingleNodeWriter);
        assert_eq!(access_mode_of(Some("ReadOnlyMany")), access_mode::Mode::MultiNodeReaderOnly);
        assert_eq!(access_mode_of(Some("ReadWriteMany")), access_mode::Mode::MultiNodeMultiWriter);
        assert_eq!(access_mode_of(Some("ReadWriteOncePod")), access_mode::Mode::SingleNodeWriter);
        assert_eq!(access_mode_of(None), access_mode::Mode::SingleNodeWriter);
    }

    #[test]
    fn volumes_in_use_lists_attachable_volumes_of_pods_and_clears_once_reported() {
        let root = tempfile::tempdir().unwrap();
        let config = Config::for_tests(root.path());
        assert_eq!(volumes_in_use(&config, None), None);
        let data = |handle: &str, attachment: &str| VolumeData {
            spec_vol_id: "pv".into(),
            volume_handle: handle.into(),
            driver_name: "d.csi".into(),
            node_name: "node-1".into(),
            attachment_id: attachment.into(),
            volume_lifecycle_mode: PERSISTENT.into(),
        };
        let dir = |uid: &str, name: &str| config.pod_dir(uid).join("volumes").join(CSI_DIR).join(name);
        write_vol_data(&dir("a", "pv1"), &data("h1", "csi-1")).unwrap();
        write_vol_data(&dir("b", "pv1"), &data("h1", "csi-1")).unwrap();
        write_vol_data(&dir("b", "pv2"), &data("h2", "")).unwrap();
        assert_eq!(volumes_in_use(&config, None), Some(vec!["kubernetes.io/csi/d.csi^h1".to_string()]));
        std::fs::remove_dir_all(config.pod_dir("a")).unwrap();
        std::fs::remove_dir_all(config.pod_dir("b")).unwrap();
        assert_eq!(volumes_in_use(&config, None), None);
        assert_eq!(volumes_in_use(&config, Some(&["x".to_string()])), Some(vec![]));
    }

    #[test]
    fn pod_info_has_upstreams_keys() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.uid = Some("u".into());
        let info = pod_info_attributes(&pod, true);
        assert_eq!(info["csi.storage.k8s.io/pod.name"], "p");
        assert_eq!(info["csi.storage.k8s.io/pod.namespace"], "ns");
        assert_eq!(info["csi.storage.k8s.io/pod.uid"], "u");
        assert_eq!(info["csi.storage.k8s.io/serviceAccount.name"], "");
        assert_eq!(info["csi.storage.k8s.io/ephemeral"], "true");
    }
}

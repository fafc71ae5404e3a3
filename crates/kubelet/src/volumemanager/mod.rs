//! Pod volumes: the kubelet's volume manager and its in-tree plugins for what pods use without
//! a storage system (emptyDir, hostPath, configMap, secret, downwardAPI, projected),
//! persistentVolumeClaims bound to hostPath or local PersistentVolumes, and CSI volumes
//! (PersistentVolumes with `spec.csi`, inline `csi:` volumes) through [`csi`].
//!
//! Each volume lives under `<pod dir>/volumes/<plugin>/<volume>` with upstream's plugin
//! directory names (`kubernetes.io~configmap`, ...), except hostPath and local volumes, which
//! are the node's own paths. Setup is idempotent: the pod worker calls it at every sync, and
//! API-backed contents (configMap, secret, downwardAPI, projected) are republished through the
//! [`atomic_writer`] when they changed. Secret, downwardAPI and projected volumes sit on a tmpfs,
//! as upstream, so their contents never reach the disk; teardown unmounts every mount under the
//! pod directory before deleting anything.

pub mod atomic_writer;
pub mod configmap;
pub mod csi;
pub mod downward_api;
pub mod empty_dir;
pub mod host_path;
pub mod mount;
pub mod projected;
pub mod secret;
pub mod source;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use tug_runtime::cri::{Mount, MountPropagation};

use crate::Config;
use atomic_writer::{AtomicWriteError, Payload};
use downward_api::{FieldError, NodeAllocatable};
pub use source::{KubeSource, ObjectSource, SourceError};

/// The host path of each of a pod's volumes, by volume name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodVolumes {
    pub by_name: BTreeMap<String, PathBuf>,
}

/// Why one volume could not be set up: the part of upstream's FailedMount message after
/// `MountVolume.SetUp failed for volume "v" : `.
#[derive(Debug, thiserror::Error)]
pub enum SetUpError {
    #[error("configmap \"{name}\" not found")]
    ConfigMapNotFound { name: String },
    #[error("secret \"{name}\" not found")]
    SecretNotFound { name: String },
    #[error("configmap references non-existent config key: {key}")]
    MissingConfigMapKey { key: String },
    #[error("references non-existent secret key: {key}")]
    MissingSecretKey { key: String },
    #[error("persistentvolumeclaim \"{name}\" not found")]
    ClaimNotFound { name: String },
    #[error("PVC {namespace}/{name} is not bound")]
    ClaimNotBound { namespace: String, name: String },
    #[error("persistentvolume \"{name}\" not found")]
    VolumeNotFound { name: String },
    #[error("hostPath {} doesn't exist", path.display())]
    HostPathMissing { path: PathBuf },
    #[error("hostPath type check failed: {} is not a {expected}, it's a {actual}", path.display())]
    HostPathType { path: PathBuf, expected: &'static str, actual: &'static str },
    #[error("hostPath type check failed, {} is not a {expected}, unable to determine its type", path.display())]
    HostPathUnknownType { path: PathBuf, expected: &'static str },
    #[error("{kind} is an invalid volume type")]
    InvalidHostPathType { kind: String },
    #[error("emptyDir medium {medium:?} is not supported")]
    UnsupportedMedium { medium: String },
    #[error("{what} are not supported by this node")]
    Unsupported { what: &'static str },
    #[error("the token request was answered without a token")]
    TokenWithoutStatus,
    #[error("volume setup task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Csi(#[from] Box<csi::CsiError>),
    #[error(transparent)]
    Write(#[from] AtomicWriteError),
    #[error("{operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Several sources of a projected volume failed (upstream's aggregate: `[a, b]`).
    #[error("[{}]", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Aggregate(Vec<SetUpError>),
}

impl SetUpError {
    fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SetUpError {
        let path = path.to_path_buf();
        move |source| SetUpError::Io { operation, path, source }
    }
}

/// Errors of the volume manager, worded as upstream's events and container waiting messages.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {source}")]
    SetUp {
        volume: String,
        #[source]
        source: SetUpError,
    },
    #[error("cannot find volume \"{volume}\" to mount into container \"{container}\"")]
    NoSuchVolume { volume: String, container: String },
    #[error("error SubPath `{sub_path}` must not be an absolute path")]
    SubPathAbsolute { sub_path: String },
    #[error("unable to provision SubPath `{sub_path}`: must not contain '..'")]
    SubPathBacksteps { sub_path: String },
    #[error("missing value for {}", keys.join(", "))]
    SubPathExprMissing { keys: Vec<String> },
    #[error("subpath {:?} not within volume path {:?}", path.display(), volume.display())]
    SubPathEscapes { path: PathBuf, volume: PathBuf },
    #[error("invalid MountPropagation mode: {mode:?}")]
    InvalidPropagation { mode: String },
    #[error("{operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounts remain under {} after unmounting: {}", dir.display(), remaining.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    MountsRemain { dir: PathBuf, remaining: Vec<PathBuf> },
}

/// Upstream's plugin directory names under `<pod dir>/volumes`.
const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
const CONFIGMAP: &str = "kubernetes.io~configmap";
const SECRET: &str = "kubernetes.io~secret";
const DOWNWARD_API: &str = "kubernetes.io~downward-api";
const PROJECTED: &str = "kubernetes.io~projected";

fn volume_dir(config: &Config, pod_uid: &str, plugin: &str, volume: &str) -> PathBuf {
    config.pod_dir(pod_uid).join("volumes").join(plugin).join(volume)
}

/// Where a pod's emptyDir volume `volume` lives on the node.
pub fn empty_dir_path(config: &Config, pod_uid: &str, volume: &str) -> PathBuf {
    volume_dir(config, pod_uid, EMPTY_DIR, volume)
}

/// Sets up (or refreshes) every volume of the pod and returns where each one is on the host.
///
/// Idempotent: called at every pod sync; updates configMap/secret/downwardAPI/projected
/// contents in place (atomic `..data` swap) when they changed; refreshes service account
/// tokens at 80% of their lifetime.
pub async fn setup_pod_volumes(client: &kube::Client, config: &Config, pod: &Pod) -> Result<PodVolumes, VolumeError> {
    setup_pod_volumes_from(&KubeSource(client.clone()), config, pod).await
}

/// [`setup_pod_volumes`] with the API objects from any [`ObjectSource`].
pub async fn setup_pod_volumes_from(
    source: &dyn ObjectSource,
    config: &Config,
    pod: &Pod,
) -> Result<PodVolumes, VolumeError> {
    let node = NodeAllocatable::of_machine(&config.agent_dir);
    let mut volumes = PodVolumes::default();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = setup_volume(source, config, pod, volume, &node)
            .await
            .map_err(|source| VolumeError::SetUp { volume: volume.name.clone(), source })?;
        volumes.by_name.insert(volume.name.clone(), path);
    }
    Ok(volumes)
}

fn fs_group(pod: &Pod) -> Option<i64> {
    pod.spec.as_ref()?.security_context.as_ref()?.fs_group
}

async fn setup_volume(
    source: &dyn ObjectSource,
    config: &Config,
    pod: &Pod,
    volume: &Volume,
    node: &NodeAllocatable,
) -> Result<PathBuf, SetUpError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let fs_group = fs_group(pod);
    let name = &volume.name;
    if let Some(empty_dir) = &volume.empty_dir {
        let dir = volume_dir(config, uid, EMPTY_DIR, name);
        let size = empty_dir::memory_volume_size(pod, empty_dir, node.memory);
        let empty_dir = empty_dir.clone();
        return blocking(move || {
            let fresh = !dir.exists();
            empty_dir::setup(&dir, &empty_dir, size)?;
            // Ownership is given once, at creation: later the files are the containers' own.
            if fresh && let Some(gid) = fs_group {
                set_volume_ownership(&dir, gid, false).map_err(SetUpError::io("set ownership of", &dir))?;
            }
            Ok(dir)
        })
        .await;
    }
    if let Some(host_path) = &volume.host_path {
        let host_path = host_path.clone();
        return blocking(move || host_path::setup(&host_path)).await;
    }
    if let Some(cm) = &volume.config_map {
        let optional = cm.optional.unwrap_or(false);
        let dir = volume_dir(config, uid, CONFIGMAP, name);
        let object = configmap::fetch(source, namespace, &cm.name, optional).await?;
        let default_mode = cm.default_mode.unwrap_or(configmap::DEFAULT_MODE);
        let payload = configmap::payload(object.as_ref(), cm.items.as_deref(), default_mode, optional)?;
        return publish(dir, false, payload, fs_group).await;
    }
    if let Some(s) = &volume.secret {
        let optional = s.optional.unwrap_or(false);
        let secret_name = s.secret_name.as_deref().unwrap_or_default();
        let dir = volume_dir(config, uid, SECRET, name);
        let object = secret::fetch(source, namespace, secret_name, optional).await?;
        let default_mode = s.default_mode.unwrap_or(secret::DEFAULT_MODE);
        let payload = secret::payload(object.as_ref(), s.items.as_deref(), default_mode, optional)?;
        return publish(dir, true, payload, fs_group).await;
    }
    if let Some(d) = &volume.downward_api {
        let dir = volume_dir(config, uid, DOWNWARD_API, name);
        let default_mode = d.default_mode.unwrap_or(0o644);
        let payload = downward_api::payload(pod, d.items.as_deref().unwrap_or_default(), default_mode, node)?;
        return publish(dir, true, payload, fs_group).await;
    }
    if let Some(p) = &volume.projected {
        let dir = volume_dir(config, uid, PROJECTED, name);
        let payload = projected::payload(source, pod, p, fs_group, node).await?;
        return publish(dir, true, payload, fs_group).await;
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        return claim_path(source, config, pod, &claim.claim_name, claim.read_only == Some(true)).await;
    }
    if let Some(inline) = &volume.csi {
        return Ok(csi::setup_inline(source, config, pod, volume, inline).await?);
    }
    if volume.ephemeral.is_some() {
        // The ephemeral volume controller names the claim `<pod>-<volume>`.
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        return claim_path(source, config, pod, &format!("{pod_name}-{name}"), false).await;
    }
    Err(SetUpError::Unsupported { what: unsupported_kind(volume) })
}

fn unsupported_kind(volume: &Volume) -> &'static str {
    match volume {
        v if v.nfs.is_some() => "nfs volumes",
        v if v.iscsi.is_some() => "iscsi volumes",
        v if v.image.is_some() => "image volumes",
        _ => "volumes of this type",
    }
}

/// A bound claim's volume on this node: the PersistentVolume's hostPath or local path, or its
/// CSI volume published for the pod.
async fn claim_path(
    source: &dyn ObjectSource,
    config: &Config,
    pod: &Pod,
    claim_name: &str,
    read_only: bool,
) -> Result<PathBuf, SetUpError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let claim = source
        .persistent_volume_claim(namespace, claim_name)
        .await?
        .ok_or_else(|| SetUpError::ClaimNotFound { name: claim_name.to_owned() })?;
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let volume_name = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|n| !n.is_empty());
    let Some(volume_name) = volume_name.filter(|_| bound) else {
        return Err(SetUpError::ClaimNotBound { namespace: namespace.to_owned(), name: claim_name.to_owned() });
    };
    let pv = source
        .persistent_volume(&volume_name)
        .await?
        .ok_or_else(|| SetUpError::VolumeNotFound { name: volume_name.clone() })?;
    if let Some(csi_source) = pv.spec.as_ref().and_then(|s| s.csi.as_ref()) {
        return Ok(csi::setup_persistent(source, config, pod, &pv, csi_source, read_only).await?);
    }
    let spec = pv.spec.unwrap_or_default();
    if let Some(host_path) = &spec.host_path {
        return host_path::setup(&k8s_openapi::api::core::v1::HostPathVolumeSource {
            path: host_path.path.clone(),
            type_: host_path.type_.clone(),
        });
    }
    if let Some(local) = &spec.local {
        let path = PathBuf::from(&local.path);
        if !path.exists() {
            return Err(SetUpError::HostPathMissing { path });
        }
        return Ok(path);
    }
    Err(SetUpError::Unsupported { what: "persistent volumes other than hostPath, local and CSI" })
}

/// Publishes an API-backed volume's files: the directory (on a tmpfs for `in_memory`), then the
/// atomic write, with fsGroup ownership as upstream (files group-readable, directories setgid).
async fn publish(
    dir: PathBuf,
    in_memory: bool,
    payload: Payload,
    fs_group: Option<i64>,
) -> Result<PathBuf, SetUpError> {
    blocking(move || publish_blocking(&dir, in_memory, payload, fs_group).map(|()| dir)).await
}

/// Runs file system work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SetUpError> + Send + 'static,
) -> Result<T, SetUpError> {
    tokio::task::spawn_blocking(work).await?
}

fn publish_blocking(
    dir: &Path,
    in_memory: bool,
    mut payload: Payload,
    fs_group: Option<i64>,
) -> Result<(), SetUpError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(SetUpError::io("create directory", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).map_err(SetUpError::io("chmod", dir))?;
    }
    if in_memory && !mount::is_mounted(dir).map_err(SetUpError::io("read mountinfo for", dir))? {
        mount::mount_tmpfs(dir, None).map_err(SetUpError::io("mount tmpfs on", dir))?;
    }
    if fs_group.is_some() {
        // The modes the ownership pass leaves, so that an unchanged payload compares equal.
        for file in payload.values_mut() {
            file.mode |= READ_ONLY_MASK;
        }
    }
    let changed = atomic_writer::write(dir, &payload, |ts_dir| match fs_group {
        Some(gid) => set_volume_ownership(ts_dir, gid, true),
        None => Ok(()),
    })?;
    if changed {
        if let Some(gid) = fs_group {
            set_volume_ownership_of(dir, gid, true).map_err(SetUpError::io("set ownership of", dir))?;
        }
        tracing::debug!(dir = %dir.display(), "volume contents published");
    }
    Ok(())
}

const READ_WRITE_MASK: u32 = 0o660;
const READ_ONLY_MASK: u32 = 0o440;
const EXEC_MASK: u32 = 0o110;
const SETGID: u32 = 0o2000;

/// Upstream's `SetVolumeOwnership`: every entry under `dir` gets group `gid`; files become
/// group readable (and writable unless `readonly`), directories also setgid and searchable.
fn set_volume_ownership(dir: &Path, gid: i64, readonly: bool) -> std::io::Result<()> {
    set_volume_ownership_of(dir, gid, readonly)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            set_volume_ownership(&entry?.path(), gid, readonly)?;
        }
    }
    Ok(())
}

fn set_volume_ownership_of(path: &Path, gid: i64, readonly: bool) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, None, Some(gid as u32))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mut mask = if readonly { READ_ONLY_MASK } else { READ_WRITE_MASK };
    if meta.is_dir() {
        mask |= SETGID | EXEC_MASK;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode((meta.permissions().mode() & 0o7777) | mask))
}

/// Unmounts every volume of the pod (tmpfs of memory-backed volumes, anything else mounted
/// under the pod directory) and deletes the volume directories. Nothing is deleted while a
/// mount remains, so that a leftover bind mount never exposes host files to the deletion.
pub async fn teardown_pod_volumes(config: &Config, pod_uid: &str) -> Result<(), VolumeError> {
    projected::forget_pod_tokens(pod_uid);
    // The drivers unmount their volumes first; what they leave is unmounted below.
    if let Err(error) = csi::teardown_pod(config, pod_uid).await {
        tracing::warn!(pod_uid, %error, "tearing down CSI volumes");
    }
    let pod_dir = config.pod_dir(pod_uid);
    let volumes_dir = pod_dir.join("volumes");
    tokio::task::spawn_blocking(move || teardown_blocking(&pod_dir, &volumes_dir)).await.map_err(|e| {
        VolumeError::Io { operation: "tear down", path: PathBuf::new(), source: std::io::Error::other(e) }
    })?
}

fn teardown_blocking(pod_dir: &Path, volumes_dir: &Path) -> Result<(), VolumeError> {
    let mounted = |dir: &Path| {
        mount::mounts_under(dir).map_err(|source| VolumeError::Io {
            operation: "read mountinfo for",
            path: dir.to_path_buf(),
            source,
        })
    };
    for path in mounted(pod_dir)? {
        if let Err(source) = mount::unmount(&path) {
            tracing::warn!(path = %path.display(), error = %source, "unmounting a pod volume failed");
        }
    }
    let remaining = mounted(pod_dir)?;
    if !remaining.is_empty() {
        return Err(VolumeError::MountsRemain { dir: pod_dir.to_path_buf(), remaining });
    }
    match std::fs::remove_dir_all(volumes_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VolumeError::Io { operation: "remove", path: volumes_dir.to_path_buf(), source }),
    }
}

/// The CRI mounts of one container: volumeMounts with readOnly, subPath, subPathExpr
/// (expanded with `env`), mountPropagation.
pub fn container_mounts(
    pod: &Pod,
    container: &Container,
    volumes: &PodVolumes,
    env: &[(String, String)],
) -> Result<Vec<Mount>, VolumeError> {
    let pod_volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default();
    let mut mounts = Vec::new();
    for volume_mount in container.volume_mounts.iter().flatten() {
        let no_such =
            || VolumeError::NoSuchVolume { volume: volume_mount.name.clone(), container: container.name.clone() };
        let volume_path = volumes.by_name.get(&volume_mount.name).ok_or_else(no_such)?;
        let spec = pod_volumes.iter().find(|v| v.name == volume_mount.name);
        // API-backed volumes are always read-only in the container, as upstream's plugins say.
        let must_read_only = spec.is_some_and(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some()
                || v.persistent_volume_claim.as_ref().is_some_and(|c| c.read_only == Some(true))
        });
        let sub_path = match volume_mount.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
            Some(expr) => expand_sub_path_expr(expr, env)?,
            None => volume_mount.sub_path.clone().unwrap_or_default(),
        };
        let host_path =
            if sub_path.is_empty() { volume_path.clone() } else { prepare_sub_path(volume_path, &sub_path)? };
        let propagation = match volume_mount.mount_propagation.as_deref() {
            None | Some("None") => MountPropagation::Private,
            Some("HostToContainer") => MountPropagation::HostToContainer,
            Some("Bidirectional") => MountPropagation::Bidirectional,
            Some(other) => return Err(VolumeError::InvalidPropagation { mode: other.to_owned() }),
        };
        mounts.push(Mount {
            container_path: volume_mount.mount_path.clone(),
            host_path,
            readonly: volume_mount.read_only.unwrap_or(false) || must_read_only,
            propagation,
        });
    }
    Ok(mounts)
}

/// Upstream's `ExpandContainerVolumeMounts`: `$(VAR)` from the container's environment; an
/// unknown or empty variable is an error.
fn expand_sub_path_expr(expr: &str, env: &[(String, String)]) -> Result<String, VolumeError> {
    let mut missing = Vec::new();
    let expanded = crate::envvars::expand_with(expr, |name| {
        let value = env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
        if value.is_empty() && !missing.iter().any(|m| m == name) {
            missing.push(name.to_owned());
        }
        Some(value)
    });
    if !missing.is_empty() {
        missing.sort();
        return Err(VolumeError::SubPathExprMissing { keys: missing });
    }
    Ok(expanded)
}

/// Checks a subPath, creates it (0755) when missing as upstream does, and resolves it so that
/// a symlink planted by a container cannot point the mount outside the volume.
fn prepare_sub_path(volume_path: &Path, sub_path: &str) -> Result<PathBuf, VolumeError> {
    if Path::new(sub_path).is_absolute() {
        return Err(VolumeError::SubPathAbsolute { sub_path: sub_path.to_owned() });
    }
    if Path::new(sub_path).components().any(|c| c == Component::ParentDir) {
        return Err(VolumeError::SubPathBacksteps { sub_path: sub_path.to_owned() });
    }
    let io = |operation, path: &Path| {
        let path = path.to_path_buf();
        move |source| VolumeError::Io { operation, path, source }
    };
    let joined = volume_path.join(sub_path);
    if std::fs::symlink_metadata(&joined).is_err() {
        std::fs::create_dir_all(&joined).map_err(io("create subPath", &joined))?;
        std::fs::set_permissions(&joined, std::fs::Permissions::from_mode(0o755)).map_err(io("chmod", &joined))?;
    }
    let volume = volume_path.canonicalize().map_err(io("resolve", volume_path))?;
    let resolved = joined.canonicalize().map_err(io("resolve", &joined))?;
    if !resolved.starts_with(&volume) {
        return Err(VolumeError::SubPathEscapes { path: resolved, volume });
    }
    Ok(resolved)
}

/// A node agent configuration for tests, with its data under `agent_dir`.
#[cfg(test)]
pub(crate) fn test_config(agent_dir: &Path) -> Config {
    Config::for_tests(agent_dir)
}

#[cfg(test)]
mod tests;

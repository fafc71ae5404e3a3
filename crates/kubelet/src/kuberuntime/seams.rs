//! Calls into the modules other parts of the agent own (volumes, environment, DNS, the managed
//! /etc/hosts, and the runtime's cgroups), in the shapes the pod sync wants: errors that become
//! waiting messages are rendered, cgroup work runs off the async threads, and failures that
//! must not stop a pod (cgroup limits) are logged here.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};
use tug_runtime::cri::{DnsConfig, Mount};

use crate::config::Config;
use crate::qos::PodLimits;
use tug_runtime::cgroups::{self, CgroupLimits};

pub use crate::volumemanager::PodVolumes as Volumes;
pub use crate::volumemanager::VolumeError as VolumeSetupError;

/// `$(VAR)` expansion as upstream's `expansion` package: `$$` escapes, unknown names stay.
pub(crate) fn expand_env(input: &str, env: &[(String, String)]) -> String {
    crate::envvars::expand(input, env)
}

pub(crate) async fn setup_pod_volumes(
    client: &kube::Client,
    config: &Config,
    pod: &Pod,
) -> Result<Volumes, VolumeSetupError> {
    crate::volumemanager::setup_pod_volumes(client, config, pod).await
}

pub(crate) async fn teardown_pod_volumes(config: &Config, uid: &str) -> Result<(), VolumeSetupError> {
    crate::volumemanager::teardown_pod_volumes(config, uid).await
}

/// The container's mounts; the error is the `CreateContainerConfigError` message.
pub(crate) fn container_mounts(
    pod: &Pod,
    container: &Container,
    volumes: &Volumes,
    env: &[(String, String)],
) -> Result<Vec<Mount>, String> {
    crate::volumemanager::container_mounts(pod, container, volumes, env).map_err(|e| e.to_string())
}

/// The container's environment; the error is the `CreateContainerConfigError` message.
pub(crate) async fn container_env(
    client: &kube::Client,
    pod: &Pod,
    node_name: &str,
    host_ip: &str,
    pod_ips: &[String],
    container: &Container,
) -> Result<Vec<(String, String)>, String> {
    let ctx = crate::envvars::EnvContext { pod, node_name, host_ip, pod_ips };
    crate::envvars::container_env(client, &ctx, container).await.map_err(|e| e.to_string())
}

pub(crate) fn dns_config(pod: &Pod, config: &Config) -> Option<DnsConfig> {
    crate::dns::dns_config(pod, config)
}

pub(crate) fn write_etc_hosts(config: &Config, pod: &Pod, pod_ips: &[String]) -> std::io::Result<Option<PathBuf>> {
    crate::etc_hosts::write_etc_hosts(config, pod, pod_ips).map(Some)
}

/// Creates (or updates) the pod's cgroup with its pod-level limits. A failure is logged: the
/// containers still get their own limits from the runtime.
pub(crate) async fn ensure_cgroup(path: &str, limits: &PodLimits) {
    let cg = CgroupLimits {
        cpu_shares: Some(limits.cpu_shares),
        cpu_quota: limits.cpu_quota,
        cpu_period: limits.cpu_quota.map(|_| crate::qos::QUOTA_PERIOD),
        memory_limit: limits.memory_limit,
        pids_limit: None,
    };
    let owned = path.to_string();
    match tokio::task::spawn_blocking(move || cgroups::ensure(&owned, &cg)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, path, "creating the pod cgroup"),
        Err(error) => tracing::warn!(%error, path, "creating the pod cgroup"),
    }
}

/// Where the agent notes the pods whose cgroups it made (`AGENT_DIR/pod-cgroups/<uid>`), so that
/// a pod cgroup left behind (the agent stopped between removing a pod's sandboxes and its
/// cgroup) is found and removed later. Only its own notes count: the agents of a dev cluster
/// share one machine's cgroups, and another node's pods are not orphans.
fn pod_cgroup_notes(config: &Config) -> PathBuf {
    config.agent_dir.join("pod-cgroups")
}

/// Notes that this agent makes a cgroup for pod `uid`. A failure is logged: the cgroup is still
/// removed with the pod, only not found again after a crash.
pub(crate) fn note_pod_cgroup(config: &Config, uid: &str) {
    let dir = pod_cgroup_notes(config);
    if let Err(error) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(uid), b"")) {
        tracing::warn!(%error, pod_uid = uid, "noting the pod cgroup");
    }
}

pub(crate) fn forget_pod_cgroup(config: &Config, uid: &str) {
    let _ = std::fs::remove_file(pod_cgroup_notes(config).join(uid));
}

/// The pods whose cgroups this agent made and has not removed yet.
pub(crate) fn noted_pod_cgroups(config: &Config) -> Vec<String> {
    std::fs::read_dir(pod_cgroup_notes(config))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
        .collect()
}

/// Removes a pod cgroup (killing anything left in it). Idempotent. Whether it is gone; a
/// failure is logged.
pub(crate) async fn remove_cgroup(path: &str) -> bool {
    let owned = path.to_string();
    match tokio::task::spawn_blocking(move || cgroups::remove(&owned)).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(%error, path, "removing the pod cgroup");
            false
        }
        Err(error) => {
            tracing::warn!(%error, path, "removing the pod cgroup");
            false
        }
    }
}

/// The node-level QoS cgroups, made once at start: all pods together weigh what the node's
/// allocatable CPU does (upstream's node allocatable cgroup), so that the pods of a busy node
/// are not squeezed to one CPU's default weight against the host's processes; best-effort pods
/// share the least weight.
pub(crate) async fn ensure_qos_cgroups(allocatable_milli_cpu: i64) {
    let pods =
        CgroupLimits { cpu_shares: Some(crate::qos::milli_cpu_to_shares(allocatable_milli_cpu)), ..Default::default() };
    let result = tokio::task::spawn_blocking(move || {
        cgroups::ensure(crate::qos::KUBEPODS, &pods)?;
        cgroups::ensure(crate::qos::BURSTABLE, &CgroupLimits::default())?;
        cgroups::ensure(crate::qos::BESTEFFORT, &CgroupLimits { cpu_shares: Some(2), ..Default::default() })
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "creating the QoS cgroups"),
        Err(error) => tracing::warn!(%error, "creating the QoS cgroups"),
    }
}

//! The emptyDir volume plugin (upstream's `pkg/volume/emptydir`): a directory in the pod's
//! directory, or a tmpfs with `medium: Memory`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, EmptyDirVolumeSource, Pod};

use super::{SetUpError, mount};

fn memory_limit(container: &Container) -> Option<f64> {
    let limits = container.resources.as_ref()?.limits.as_ref()?;
    tug_api::quantity::parse(&limits.get("memory")?.0)
}

/// The pod's memory limit as its cgroup gets it: the app containers' limits summed (or the
/// largest init container's, if more), only when every container has one.
fn pod_memory_limit(pod: &Pod) -> Option<f64> {
    let spec = pod.spec.as_ref()?;
    let mut sum = 0.0;
    for container in &spec.containers {
        sum += memory_limit(container)?;
    }
    let mut limit = sum;
    for container in spec.init_containers.iter().flatten() {
        limit = f64::max(limit, memory_limit(container)?);
    }
    Some(limit)
}

/// Upstream's `calculateEmptyDirMemorySize`: the node's allocatable memory, lowered to the pod's
/// memory limit and then to the volume's `sizeLimit` when those are smaller.
pub fn memory_volume_size(pod: &Pod, source: &EmptyDirVolumeSource, node_memory: f64) -> u64 {
    let mut size = node_memory;
    if let Some(pod_limit) = pod_memory_limit(pod).filter(|l| *l > 0.0 && *l <= size) {
        size = pod_limit;
    }
    let volume_limit = source.size_limit.as_ref().and_then(|q| tug_api::quantity::parse(&q.0));
    if let Some(volume_limit) = volume_limit.filter(|l| *l > 0.0 && *l <= size) {
        size = volume_limit;
    }
    size as u64
}

/// Creates the volume directory (mode 0777, as upstream) and, for `medium: Memory`, mounts a
/// tmpfs of `memory_size` bytes on it.
pub fn setup(dir: &Path, source: &EmptyDirVolumeSource, memory_size: u64) -> Result<(), SetUpError> {
    std::fs::create_dir_all(dir).map_err(SetUpError::io("create directory", dir))?;
    match source.medium.as_deref() {
        None | Some("") => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
                .map_err(SetUpError::io("chmod", dir))?;
        }
        Some("Memory") => {
            if !mount::is_mounted(dir).map_err(SetUpError::io("read mountinfo for", dir))? {
                mount::mount_tmpfs(dir, Some(memory_size)).map_err(SetUpError::io("mount tmpfs on", dir))?;
            }
        }
        Some(other) => return Err(SetUpError::UnsupportedMedium { medium: other.to_owned() }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"spec": {"containers": containers}})).unwrap()
    }

    fn source(size_limit: Option<&str>) -> EmptyDirVolumeSource {
        serde_json::from_value(serde_json::json!({"medium": "Memory", "sizeLimit": size_limit})).unwrap()
    }

    const NODE: f64 = 8.0 * 1073741824.0;

    #[test]
    fn memory_size_is_the_smallest_of_node_pod_and_volume_limits() {
        let limited = pod(serde_json::json!([
            {"name": "a", "resources": {"limits": {"memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"memory": "32Mi"}}}
        ]));
        assert_eq!(memory_volume_size(&limited, &source(None), NODE), 96 * 1048576);
        assert_eq!(memory_volume_size(&limited, &source(Some("1Mi")), NODE), 1048576);
        assert_eq!(memory_volume_size(&limited, &source(Some("1Gi")), NODE), 96 * 1048576);
        let unlimited =
            pod(serde_json::json!([{"name": "a", "resources": {"limits": {"memory": "64Mi"}}}, {"name": "b"}]));
        assert_eq!(memory_volume_size(&unlimited, &source(None), NODE), NODE as u64);
    }
}

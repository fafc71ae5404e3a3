//! The node agent's eviction of pods that outgrow their local storage (upstream's eviction
//! manager, `emptyDirLimitEviction`): an emptyDir volume holding more than its `sizeLimit`
//! gets its pod evicted, stopped at once and marked `Failed` with reason `Evicted`, so that its
//! controller makes a new one and the node's disk is not filled by one pod.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;

use crate::config::Config;

/// The pod status reason and event reason of an eviction.
pub const REASON: &str = "Evicted";
/// The condition an evicted pod gets, as upstream (reason `TerminationByKubelet`).
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";
pub const TERMINATION_BY_KUBELET: &str = "TerminationByKubelet";

/// Why `pod` must be evicted, in upstream's words, if one of its emptyDir volumes holds more
/// than its `sizeLimit`.
pub fn local_storage_violation(config: &Config, pod: &Pod) -> Option<String> {
    let uid = pod.metadata.uid.as_deref()?;
    let volumes = pod.spec.as_ref()?.volumes.as_ref()?;
    volumes.iter().find_map(|volume| {
        let limit = volume.empty_dir.as_ref()?.size_limit.as_ref()?;
        let bytes = tug_api::quantity::parse(&limit.0).filter(|b| *b > 0.0)?;
        let used = disk_usage(&crate::volumemanager::empty_dir_path(config, uid, &volume.name));
        (used as f64 > bytes)
            .then(|| format!("Usage of EmptyDir volume {:?} exceeds the limit {:?}. ", volume.name, limit.0))
    })
}

/// The disk space the files under `dir` take (allocated blocks, as `du` counts them), not
/// following symbolic links; what cannot be read counts as nothing.
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(dir) else { return 0 };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for entry in entries.flatten() {
            total += disk_usage(&entry.path());
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(limit: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": [
                {"name": "scratch", "emptyDir": {"sizeLimit": limit}},
                {"name": "unlimited", "emptyDir": {}},
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn an_empty_dir_over_its_size_limit_evicts_the_pod_with_upstreams_message() {
        let root = tempfile::tempdir().unwrap();
        let config = Config::for_tests(root.path());
        let dir = crate::volumemanager::empty_dir_path(&config, "u1", "scratch");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("small"), vec![1u8; 100 * 1024]).unwrap();
        assert_eq!(local_storage_violation(&config, &pod("1Mi")), None);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub").join("big"), vec![1u8; 2 << 20]).unwrap();
        assert_eq!(
            local_storage_violation(&config, &pod("1Mi")).as_deref(),
            Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ")
        );
        assert_eq!(local_storage_violation(&config, &pod("10Mi")), None);
    }

    #[test]
    fn disk_usage_counts_allocated_blocks_and_not_what_links_point_to() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f"), vec![1u8; 64 * 1024]).unwrap();
        std::os::unix::fs::symlink("/usr", root.path().join("link")).unwrap();
        let used = disk_usage(root.path());
        assert!((64 * 1024..1 << 20).contains(&used), "{used}");
    }
}

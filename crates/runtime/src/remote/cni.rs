//! The pod network of an external runtime: containerd's CRI plugin (like CRI-O) sets up each
//! sandbox's network itself, through the CNI plugins its configuration directory names. The
//! node agent then only has to put a configuration there for the node's podCIDR, as k3s writes
//! one for its flannel (`10-flannel.conflist`): the standard `bridge` plugin on a bridge of its
//! own ([`BRIDGE`], not the built-in network's `cni0`, so that agents with either runtime can
//! share a host), addresses from `host-local` in the podCIDR, and `portmap` for hostPorts.

use std::path::{Path, PathBuf};

/// The file the agent writes (sorted first, so containerd, which loads the first, takes it).
pub const CONFIG_FILE: &str = "10-tug.conflist";

/// The bridge the pods of an external runtime attach to.
pub const BRIDGE: &str = "tug-cri0";

/// The configuration's network name (and host-local's directory under `/var/lib/cni/networks`).
const NETWORK_NAME: &str = "tug";

#[derive(Debug, thiserror::Error)]
pub enum CniConfigError {
    #[error("{operation} {path}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The conflist for a node whose pods take addresses from `pod_cidr`.
pub fn bridge_config(pod_cidr: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// Whether `dir` holds a network configuration (`*.conflist`, `*.conf`, `*.json`) other than
/// ours: the operator's, which the runtime then uses as it is.
fn has_other_config(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name != CONFIG_FILE && (name.ends_with(".conflist") || name.ends_with(".conf") || name.ends_with(".json"))
    })
}

/// Writes [`bridge_config`] for `pod_cidr` into `dir` as [`CONFIG_FILE`], unless another
/// configuration is there or ours already says the same. Returns whether it wrote. The file
/// appears whole (written aside, then renamed): the runtime watches the directory.
pub fn ensure_bridge_config(dir: &Path, pod_cidr: &str) -> Result<bool, CniConfigError> {
    if has_other_config(dir) {
        return Ok(false);
    }
    let io = |operation, path: &Path| {
        let path = path.to_owned();
        move |source| CniConfigError::Io { operation, path, source }
    };
    let path = dir.join(CONFIG_FILE);
    let body = serde_json::to_vec_pretty(&bridge_config(pod_cidr)).expect("a JSON value serializes");
    if std::fs::read(&path).is_ok_and(|old| old == body) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let temp = dir.join(format!(".{CONFIG_FILE}.tmp"));
    std::fs::write(&temp, body).map_err(io("writing", &temp))?;
    std::fs::rename(&temp, &path).map_err(io("renaming to", &path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_bridges_pods_in_the_pod_cidr_with_host_ports() {
        let config = bridge_config("10.42.3.0/24");
        assert_eq!(config["plugins"][0]["type"], "bridge");
        assert_eq!(config["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.42.3.0/24");
        assert_eq!(config["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn ours_follows_the_pod_cidr_and_the_operators_config_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        assert!(ensure_bridge_config(&conf, "10.42.0.0/24").unwrap());
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(conf.join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(written, bridge_config("10.42.0.0/24"));
        assert!(!ensure_bridge_config(&conf, "10.42.0.0/24").unwrap(), "unchanged");
        assert!(ensure_bridge_config(&conf, "10.42.9.0/24").unwrap(), "a new podCIDR rewrites ours");
        std::fs::remove_file(conf.join(CONFIG_FILE)).unwrap();
        std::fs::write(conf.join("05-mine.conf"), "{}").unwrap();
        assert!(!ensure_bridge_config(&conf, "10.42.0.0/24").unwrap());
        assert!(!conf.join(CONFIG_FILE).exists());
    }
}

//! The pod network of an external runtime: containerd's CRI plugin (like CRI-O) sets up each
//! sandbox's network itself, through the CNI plugins its configuration directory names. The
//! node agent puts a configuration there for the node's podCIDR, as k3s writes one for its
//! flannel (`10-flannel.conflist`): the standard `bridge` plugin on a bridge of its own
//! ([`BRIDGE`], not the built-in network's `cni0`, so that agents with either runtime can
//! share a host), addresses from `host-local` in the podCIDR, the pods' MTU less the overlay's
//! overhead, and `portmap` for hostPorts.
//!
//! As under flannel, the bridge plugin masquerades nothing: traffic between pods keeps the
//! pods' own addresses (the overlay carries it between nodes), and traffic leaving the
//! cluster's pod networks is masqueraded by the same nftables table the built-in network
//! uses ([`nftables`]), which follows every node's podCIDR.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;

use crate::nftables::{self, Ruleset};
use crate::subnet::NodeSubnet;
use crate::{NetworkError, link, set_sysctl};

/// The file the agent writes (sorted first, so containerd, which loads the first, takes it).
pub const CONFIG_FILE: &str = "10-tug.conflist";

/// The bridge the pods of an external runtime attach to.
pub const BRIDGE: &str = "tug-cri0";

/// The configuration's network name.
const NETWORK_NAME: &str = "tug";

/// The conflist for a node whose pods take addresses from `pod_cidr`, kept by host-local in
/// `ipam_dir`, on links of `mtu` bytes.
pub fn bridge_config(pod_cidr: Ipv4Net, mtu: u32, ipam_dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir,
                    "ranges": [[{"subnet": pod_cidr.trunc().to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// The podCIDR a configuration of ours hands addresses from.
fn subnet_of(config: &serde_json::Value) -> Option<Ipv4Net> {
    config.pointer("/plugins/0/ipam/ranges/0/0/subnet")?.as_str()?.parse().ok()
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

/// What [`ensure_bridge_config`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Whether the file was (re)written.
    pub written: bool,
    /// The podCIDR our configuration named before, when it named another.
    pub previous: Option<Ipv4Net>,
}

/// Writes `config` into `dir` as [`CONFIG_FILE`], unless another configuration is there or
/// ours already says the same. The file appears whole (written aside, then renamed): the
/// runtime watches the directory.
pub fn ensure_bridge_config(dir: &Path, config: &serde_json::Value) -> Result<Written, NetworkError> {
    let unchanged = Written { written: false, previous: None };
    if has_other_config(dir) {
        return Ok(unchanged);
    }
    let io = |operation, path: &Path| {
        let path = path.to_owned();
        move |source| NetworkError::Io { operation, path, source }
    };
    let path = dir.join(CONFIG_FILE);
    let body = serde_json::to_vec_pretty(config).expect("a JSON value serializes");
    let old = std::fs::read(&path).ok();
    if old.as_deref() == Some(body.as_slice()) {
        return Ok(unchanged);
    }
    let previous = old
        .and_then(|old| serde_json::from_slice::<serde_json::Value>(&old).ok())
        .and_then(|old| subnet_of(&old))
        .filter(|old| Some(*old) != subnet_of(config));
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let temp = dir.join(format!(".{CONFIG_FILE}.tmp"));
    std::fs::write(&temp, body).map_err(io("writing", &temp))?;
    std::fs::rename(&temp, &path).map_err(io("renaming to", &path))?;
    Ok(Written { written: true, previous })
}

/// How the node agent configures an external runtime's pod network.
#[derive(Debug, Clone)]
pub struct RuntimeCniConfig {
    /// Where the runtime reads its CNI configuration (containerd's `/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// Where host-local keeps the addresses it handed out.
    pub ipam_dir: PathBuf,
    /// The node's address: the MTU of the link holding it bounds the pods' MTU.
    pub node_ip: Ipv4Addr,
    /// Bytes the overlay adds to every packet (50 for VXLAN), taken off the pods' MTU.
    pub overlay_overhead: u32,
}

#[derive(Default)]
struct State {
    subnet: Option<Ipv4Net>,
    cluster_cidrs: Vec<Ipv4Net>,
}

/// The node's side of an external runtime's pod network: its CNI configuration and the
/// masquerade of traffic leaving the cluster's pod networks.
pub struct RuntimeCniNetwork {
    config: RuntimeCniConfig,
    handle: rtnetlink::Handle,
    state: Mutex<State>,
    /// Serialises rule updates so that the last ruleset written is the newest.
    rules: tokio::sync::Mutex<()>,
}

impl RuntimeCniNetwork {
    /// Must be called inside a tokio runtime (it opens a netlink connection).
    pub fn new(config: RuntimeCniConfig) -> Result<Self, NetworkError> {
        let handle = crate::open_netlink()?;
        Ok(RuntimeCniNetwork { config, handle, state: Mutex::default(), rules: tokio::sync::Mutex::new(()) })
    }

    /// The netlink connection of the node's own namespace, for the overlay to share.
    pub fn netlink(&self) -> rtnetlink::Handle {
        self.handle.clone()
    }

    async fn apply_rules(&self) -> Result<(), NetworkError> {
        let _serial = self.rules.lock().await;
        let ruleset = {
            let state = self.state.lock().unwrap();
            // hostPorts are the portmap plugin's: the table's hostport chain stays empty.
            Ruleset {
                bridge: BRIDGE.into(),
                pod_cidr: state.subnet,
                cluster_cidrs: state.cluster_cidrs.clone(),
                host_ports: Vec::new(),
            }
        };
        nftables::apply(&ruleset).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl NodeSubnet for RuntimeCniNetwork {
    async fn set_subnet(&self, cidr: Ipv4Net) -> Result<Vec<Ipv4Net>, NetworkError> {
        let cidr = cidr.trunc();
        if self.state.lock().unwrap().subnet == Some(cidr) {
            return Ok(Vec::new());
        }
        let mtu = link::pod_mtu(&self.handle, self.config.node_ip, self.config.overlay_overhead).await?;
        let config = bridge_config(cidr, mtu, &self.config.ipam_dir);
        let written = ensure_bridge_config(&self.config.conf_dir, &config)?;
        set_sysctl("net/ipv4/ip_forward", "1");
        if written.written {
            tracing::info!(dir = %self.config.conf_dir.display(), pod_cidr = %cidr, mtu, "CNI configuration for the container runtime");
        }
        self.state.lock().unwrap().subnet = Some(cidr);
        self.apply_rules().await?;
        Ok(written.previous.into_iter().collect())
    }

    async fn set_cluster_cidrs(&self, mut cidrs: Vec<Ipv4Net>) -> Result<(), NetworkError> {
        cidrs.sort();
        cidrs.dedup();
        {
            let mut state = self.state.lock().unwrap();
            if state.cluster_cidrs == cidrs {
                return Ok(());
            }
            state.cluster_cidrs = cidrs;
        }
        self.apply_rules().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn the_config_bridges_pods_in_the_pod_cidr_unmasqueraded_with_host_ports() {
        let config = bridge_config(net("10.42.3.0/24"), 1450, Path::new("/d/ipam"));
        let bridge = &config["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], BRIDGE);
        assert_eq!(bridge["ipMasq"], false, "pod-to-pod traffic keeps its addresses; the node's table masquerades");
        assert_eq!(bridge["mtu"], 1450);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.42.3.0/24");
        assert_eq!(bridge["ipam"]["dataDir"], "/d/ipam");
        assert_eq!(config["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(subnet_of(&config), Some(net("10.42.3.0/24")));
    }

    #[test]
    fn ours_follows_the_pod_cidr_and_the_operators_config_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        let ipam = dir.path().join("ipam");
        let first = bridge_config(net("10.42.0.0/24"), 1450, &ipam);
        assert_eq!(ensure_bridge_config(&conf, &first).unwrap(), Written { written: true, previous: None });
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(conf.join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(written, first);
        assert_eq!(ensure_bridge_config(&conf, &first).unwrap(), Written { written: false, previous: None });
        let new_mtu = bridge_config(net("10.42.0.0/24"), 1500, &ipam);
        assert_eq!(ensure_bridge_config(&conf, &new_mtu).unwrap(), Written { written: true, previous: None });
        let moved = bridge_config(net("10.42.9.0/24"), 1500, &ipam);
        assert_eq!(
            ensure_bridge_config(&conf, &moved).unwrap(),
            Written { written: true, previous: Some(net("10.42.0.0/24")) },
            "a new podCIDR rewrites ours and names the old one"
        );
        std::fs::remove_file(conf.join(CONFIG_FILE)).unwrap();
        std::fs::write(conf.join("05-mine.conf"), "{}").unwrap();
        assert_eq!(ensure_bridge_config(&conf, &first).unwrap(), Written { written: false, previous: None });
        assert!(!conf.join(CONFIG_FILE).exists());
    }
}

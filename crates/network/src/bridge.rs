//! The built-in pod network of a node: one bridge, a veth pair per sandbox, addresses from
//! the node's podCIDR (the CNI bridge + host-local + portmap plugins' behaviour, as k3s
//! configures them under flannel).
//!
//! # On-disk state (`state_dir`, e.g. `DATA_DIR/agent/network/`)
//!
//! ```text
//! ipam/<subnet>/<ip>          the sandbox id holding that address (see ipam)
//! hostports/<sandbox>.json    the sandbox's hostPort rules, re-applied after a restart
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;

use crate::ipam::HostLocalIpam;
use crate::nftables::{self, HostPortRule, Ruleset};
use crate::{AttachRequest, Attachment, HostPort, NetworkError, NetworkStatus, PodNetwork, link, netns, set_sysctl};

/// The interface name pods see.
const POD_INTERFACE: &str = "eth0";

/// How the node's bridge network is set up.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The bridge's name (`cni0`, as k3s names it).
    pub bridge: String,
    /// Where addresses and hostPort rules are kept across restarts.
    pub state_dir: PathBuf,
    /// The node's address: the MTU of the link holding it bounds the pods' MTU.
    pub node_ip: Ipv4Addr,
    /// Bytes the overlay adds to every packet (50 for VXLAN), taken off the pods' MTU.
    pub overlay_overhead: u32,
}

/// The node's subnet once its podCIDR is known.
#[derive(Clone)]
struct Subnet {
    cidr: Ipv4Net,
    ipam: Arc<HostLocalIpam>,
    bridge_index: u32,
    mtu: u32,
}

#[derive(Default)]
struct State {
    subnet: Option<Subnet>,
    cluster_cidrs: Vec<Ipv4Net>,
    host_ports: BTreeMap<String, Vec<HostPortRule>>,
}

/// The built-in [`PodNetwork`].
pub struct BridgeNetwork {
    config: BridgeConfig,
    handle: rtnetlink::Handle,
    state: Mutex<State>,
    /// Serialises rule updates so that the last ruleset written is the newest.
    rules: tokio::sync::Mutex<()>,
}

impl BridgeNetwork {
    /// A network that is not ready until [`set_subnet`](Self::set_subnet) gives it the node's
    /// podCIDR. Must be called inside a tokio runtime (it opens a netlink connection).
    pub fn new(config: BridgeConfig) -> Result<Self, NetworkError> {
        let handle = crate::open_netlink()?;
        let host_ports = load_host_ports(&config.state_dir.join("hostports"));
        Ok(BridgeNetwork {
            config,
            handle,
            state: Mutex::new(State { host_ports, ..State::default() }),
            rules: tokio::sync::Mutex::new(()),
        })
    }

    /// The netlink connection of the node's own namespace, for the overlay to share.
    pub fn netlink(&self) -> rtnetlink::Handle {
        self.handle.clone()
    }

    /// The node's podCIDR, once known.
    pub fn subnet(&self) -> Option<Ipv4Net> {
        self.state.lock().unwrap().subnet.as_ref().map(|s| s.cidr)
    }

    /// Sets up the bridge for `cidr` (its first address is the pods' gateway), turns on
    /// forwarding and makes the network ready. Returns the subnets this node had before (a
    /// node deleted and registered again gets a new podCIDR): their gateway addresses are
    /// removed from the bridge, and the caller removes what else refers to them.
    pub async fn set_subnet(&self, cidr: Ipv4Net) -> Result<Vec<Ipv4Net>, NetworkError> {
        let cidr = cidr.trunc();
        if self.subnet() == Some(cidr) {
            return Ok(Vec::new());
        }
        let mtu = link::pod_mtu(&self.handle, self.config.node_ip, self.config.overlay_overhead).await?;
        let bridge = &self.config.bridge;
        let bridge_index = link::ensure_bridge(&self.handle, bridge, mtu).await?;
        let root = self.config.state_dir.join("ipam");
        let ipam = tokio::task::spawn_blocking(move || HostLocalIpam::open(&root, cidr)).await??;
        link::ensure_address(&self.handle, bridge_index, ipam.gateway(), cidr.prefix_len()).await?;
        set_sysctl("net/ipv4/ip_forward", "1");
        // A hostPort reached through 127.0.0.1 is DNATed out of the bridge; the kernel drops
        // such packets unless the bridge accepts local-net sources.
        set_sysctl(&format!("net/ipv4/conf/{bridge}/route_localnet"), "1");
        let stale = self.forget_other_subnets(bridge_index, cidr).await?;
        tracing::info!(bridge = %bridge, subnet = %cidr, gateway = %ipam.gateway(), mtu, "pod network ready");
        self.state.lock().unwrap().subnet = Some(Subnet { cidr, ipam: Arc::new(ipam), bridge_index, mtu });
        self.apply_rules().await?;
        Ok(stale)
    }

    /// Removes the gateway addresses and address stores of subnets this node held before
    /// `current` (known from the stores on disk, so also across restarts). Only our own: the
    /// bridge may carry other agents' subnets when several share one host.
    async fn forget_other_subnets(&self, bridge_index: u32, current: Ipv4Net) -> Result<Vec<Ipv4Net>, NetworkError> {
        let root = self.config.state_dir.join("ipam");
        let Ok(entries) = std::fs::read_dir(&root) else { return Ok(Vec::new()) };
        let mut stale = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().replacen('-', "/", 1);
            let Ok(old) = name.parse::<Ipv4Net>() else { continue };
            if old == current {
                continue;
            }
            if let Some(gateway) = old.hosts().next() {
                link::remove_address(&self.handle, bridge_index, gateway, old.prefix_len()).await?;
            }
            if let Err(source) = std::fs::remove_dir_all(entry.path()) {
                return Err(NetworkError::Io { operation: "removing", path: entry.path(), source });
            }
            tracing::info!(subnet = %old, "forgot a podCIDR this node no longer has");
            stale.push(old);
        }
        Ok(stale)
    }

    /// Sets the pod networks of every node: traffic to them is not masqueraded.
    pub async fn set_cluster_cidrs(&self, mut cidrs: Vec<Ipv4Net>) -> Result<(), NetworkError> {
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

    async fn apply_rules(&self) -> Result<(), NetworkError> {
        let _serial = self.rules.lock().await;
        let ruleset = {
            let state = self.state.lock().unwrap();
            Ruleset {
                bridge: self.config.bridge.clone(),
                pod_cidr: state.subnet.as_ref().map(|s| s.cidr),
                cluster_cidrs: state.cluster_cidrs.clone(),
                host_ports: state.host_ports.values().flatten().cloned().collect(),
            }
        };
        nftables::apply(&ruleset).await?;
        Ok(())
    }

    fn host_ports_file(&self, sandbox_id: &str) -> PathBuf {
        self.config.state_dir.join("hostports").join(format!("{sandbox_id}.json"))
    }

    fn save_host_ports(&self, sandbox_id: &str, rules: &[HostPortRule]) -> Result<(), NetworkError> {
        let path = self.host_ports_file(sandbox_id);
        let io = |source| NetworkError::Io { operation: "writing", path: path.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let saved: Vec<SavedHostPort> =
            rules.iter().map(|r| SavedHostPort { pod_ip: r.pod_ip, port: r.port }).collect();
        std::fs::write(&path, serde_json::to_vec(&saved).unwrap_or_default()).map_err(io)
    }

    async fn try_attach(&self, subnet: &Subnet, request: &AttachRequest, ip: Ipv4Addr) -> Result<(), NetworkError> {
        let (host, peer) = veth_names(&request.sandbox_id);
        link::create_veth(&self.handle, &host, &peer, subnet.mtu, subnet.bridge_index).await?;
        let netns = std::fs::File::open(&request.netns)
            .map_err(|source| NetworkError::Netns { path: request.netns.clone(), source })?;
        link::move_to_netns(&self.handle, &peer, netns.as_raw_fd()).await?;
        let (prefix, gateway) = (subnet.cidr.prefix_len(), subnet.ipam.gateway());
        netns::run_in(&request.netns, move |handle| async move {
            link::configure_pod_interface(&handle, &peer, POD_INTERFACE, ip, prefix, gateway).await
        })
        .await??;
        if !request.host_ports.is_empty() {
            let rules: Vec<HostPortRule> = request
                .host_ports
                .iter()
                .map(|&port| HostPortRule { sandbox_id: request.sandbox_id.clone(), pod_ip: ip, port })
                .collect();
            self.save_host_ports(&request.sandbox_id, &rules)?;
            self.state.lock().unwrap().host_ports.insert(request.sandbox_id.clone(), rules);
            self.apply_rules().await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl PodNetwork for BridgeNetwork {
    fn status(&self) -> NetworkStatus {
        match self.subnet() {
            Some(_) => NetworkStatus::Ready,
            None => NetworkStatus::NotReady("the node has no podCIDR yet".into()),
        }
    }

    async fn attach(&self, request: &AttachRequest) -> Result<Attachment, NetworkError> {
        let subnet = self.state.lock().unwrap().subnet.clone();
        let Some(subnet) = subnet else {
            return Err(NetworkError::NotReady("the node has no podCIDR yet".into()));
        };
        let ipam = subnet.ipam.clone();
        let owner = request.sandbox_id.clone();
        let ip = tokio::task::spawn_blocking(move || ipam.allocate(&owner)).await??;
        if let Err(error) = self.try_attach(&subnet, request, ip).await {
            if let Err(cleanup) = self.detach(&request.sandbox_id).await {
                tracing::warn!(sandbox = %request.sandbox_id, error = %cleanup, "cleaning up a failed attach");
            }
            return Err(error);
        }
        tracing::debug!(sandbox = %request.sandbox_id, pod = %request.pod_name, namespace = %request.pod_namespace, %ip, "sandbox attached");
        Ok(Attachment { ips: vec![IpAddr::V4(ip)] })
    }

    async fn detach(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        let (host, _) = veth_names(sandbox_id);
        link::delete(&self.handle, &host).await?;
        let had_ports = self.state.lock().unwrap().host_ports.remove(sandbox_id).is_some();
        match std::fs::remove_file(self.host_ports_file(sandbox_id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NetworkError::Io { operation: "removing", path: self.host_ports_file(sandbox_id), source });
            }
        }
        if had_ports {
            self.apply_rules().await?;
        }
        let subnet = self.state.lock().unwrap().subnet.clone();
        if let Some(subnet) = subnet {
            let owner = sandbox_id.to_owned();
            tokio::task::spawn_blocking(move || subnet.ipam.release(&owner)).await??;
        }
        Ok(())
    }

    async fn retain(&self, live: &[String]) -> Result<(), NetworkError> {
        let subnet = self.state.lock().unwrap().subnet.clone();
        let mut orphans: Vec<String> =
            self.state.lock().unwrap().host_ports.keys().filter(|id| !live.contains(id)).cloned().collect();
        if let Some(subnet) = &subnet {
            let held = subnet.ipam.allocations()?;
            orphans.extend(held.into_iter().map(|(_, owner)| owner).filter(|o| !live.contains(o)));
            // veths on the bridge whose sandbox is gone (their namespace may still be pinned).
            let expected: Vec<String> = live.iter().map(|id| veth_names(id).0).collect();
            for port in link::ports_of(&self.handle, subnet.bridge_index).await? {
                if let Some(name) = link::name(&port)
                    && name.starts_with("veth")
                    && !expected.iter().any(|e| e == name)
                {
                    tracing::info!(link = %name, "removing an orphaned pod interface");
                    link::delete(&self.handle, name).await?;
                }
            }
        }
        orphans.sort();
        orphans.dedup();
        for orphan in orphans {
            tracing::info!(sandbox = %orphan, "releasing the network of a sandbox that no longer exists");
            self.detach(&orphan).await?;
        }
        Ok(())
    }
}

/// The host-side and temporary pod-side names of a sandbox's veth pair: "veth" or "vtmp" and
/// eleven hex digits of a hash of the sandbox id (interface names are at most 15 bytes).
pub fn veth_names(sandbox_id: &str) -> (String, String) {
    // FNV-1a: stable across releases, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sandbox_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let suffix = format!("{:011x}", hash & 0xfff_ffff_ffff);
    (format!("veth{suffix}"), format!("vtmp{suffix}"))
}

/// A hostPort rule as kept on disk.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedHostPort {
    pod_ip: Ipv4Addr,
    port: HostPort,
}

fn load_host_ports(dir: &std::path::Path) -> BTreeMap<String, Vec<HostPortRule>> {
    let mut all = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return all };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        let Ok(bytes) = std::fs::read(&path) else { continue };
        match serde_json::from_slice::<Vec<SavedHostPort>>(&bytes) {
            Ok(saved) => {
                let rules = saved
                    .into_iter()
                    .map(|s| HostPortRule { sandbox_id: id.clone(), pod_ip: s.pod_ip, port: s.port })
                    .collect();
                all.insert(id, rules);
            }
            Err(error) => tracing::warn!(path = %path.display(), %error, "ignoring an unreadable hostPort record"),
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_the_kernels_limit_and_differ_per_sandbox() {
        let (host, peer) = veth_names("0123456789abcdef0123456789abcdef");
        assert_eq!(host.len(), 15);
        assert_eq!(peer.len(), 15);
        assert_eq!(host[4..], peer[4..]);
        assert_ne!(veth_names("a").0, veth_names("b").0);
        assert_eq!(veth_names("a"), veth_names("a"));
    }
}

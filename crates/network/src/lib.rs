//! The pod network of a node: what flannel and the CNI bridge, host-local and portmap plugins
//! do for a Kubernetes node.
//!
//! Every pod sandbox that does not use the host's network gets a veth pair: one end, `eth0`,
//! in the sandbox's network namespace with an address from the node's `spec.podCIDR`; the other
//! on the node's bridge, whose address is the pods' gateway. Addresses are handed out by a
//! host-local store on disk ([`ipam`]), so a restart of the node agent neither forgets nor
//! reuses them. hostPort mappings and the masquerade of traffic leaving the cluster's pod
//! networks are nftables rules in one table of our own ([`nftables`]).
//!
//! The node's subnet comes from the API: [`subnet::run`] watches the Nodes (as flannel does) for
//! this node's podCIDR and every node's, and reconfigures the bridge and the rules when they
//! change. Until the podCIDR is known the network is not ready and sandboxes cannot attach;
//! the kubelet reports that on the Node as upstream's does.
//!
//! The container runtime calls [`PodNetwork`] when it creates and removes sandboxes (as
//! containerd calls CNI plugins); this crate never touches containers or the store.

pub mod bridge;
pub mod cni;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod nftables;
pub mod overlay;
pub mod runtime_cni;
pub mod subnet;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

pub use bridge::BridgeNetwork;

/// The transport protocol of a hostPort mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The protocol's name in nftables rules.
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A container port published on the node (`ports[].hostPort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct HostPort {
    pub protocol: Protocol,
    pub host_port: u16,
    pub container_port: u16,
    /// Only traffic to this node address is forwarded; all of the node's addresses when `None`.
    pub host_ip: Option<Ipv4Addr>,
}

/// What the runtime asks when a sandbox joins the network (CNI's ADD).
#[derive(Debug, Clone)]
pub struct AttachRequest {
    /// The sandbox's id: the owner of its address and links.
    pub sandbox_id: String,
    /// The sandbox's network namespace (a pinned namespace file).
    pub netns: PathBuf,
    pub pod_namespace: String,
    pub pod_name: String,
    pub host_ports: Vec<HostPort>,
}

/// What a sandbox got from the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The pod's addresses, the primary one first.
    pub ips: Vec<IpAddr>,
}

/// Whether the network can attach sandboxes now (CRI's `NetworkReady` condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkStatus {
    Ready,
    /// Not yet, with a reason for the Node's Ready condition.
    NotReady(String),
}

/// Why a sandbox could not join or leave the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network not ready: {0}")]
    NotReady(String),
    #[error(transparent)]
    Ipam(#[from] ipam::IpamError),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error(transparent)]
    Nftables(#[from] nftables::NftError),
    #[error("entering the network namespace {path}: {source}")]
    Netns { path: PathBuf, source: std::io::Error },
    #[error("{operation} {path}: {source}")]
    Io { operation: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cni(#[from] cni::CniError),
    #[error("a network task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A netlink connection to the calling thread's network namespace, its connection task spawned
/// on the current tokio runtime (so it must be called inside one).
pub(crate) fn open_netlink() -> Result<rtnetlink::Handle, NetworkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|source| NetworkError::Io {
        operation: "opening a netlink socket in",
        path: "/proc/self/ns/net".into(),
        source,
    })?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Writes a sysctl under /proc/sys, logging (not failing) when it cannot.
pub(crate) fn set_sysctl(key: &str, value: &str) {
    let path = format!("/proc/sys/{key}");
    if let Err(error) = std::fs::write(&path, value) {
        tracing::warn!(%path, %error, "cannot set sysctl");
    }
}

/// A pod network, as the container runtime uses it (the role CNI plugins play for containerd).
#[async_trait::async_trait]
pub trait PodNetwork: Send + Sync {
    fn status(&self) -> NetworkStatus;
    /// Gives the sandbox its interface, address, routes and hostPorts. Calling it again for the
    /// same sandbox returns the same address.
    async fn attach(&self, request: &AttachRequest) -> Result<Attachment, NetworkError>;
    /// Removes what [`attach`](Self::attach) set up for the sandbox and frees its address.
    /// Succeeds when there is nothing to remove.
    async fn detach(&self, sandbox_id: &str) -> Result<(), NetworkError>;
    /// Frees the addresses, links and rules of every sandbox not in `live` (found orphaned
    /// after a restart).
    async fn retain(&self, live: &[String]) -> Result<(), NetworkError>;
}

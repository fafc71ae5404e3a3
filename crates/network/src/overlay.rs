//! Routes to the other nodes' pod networks: flannel's `vxlan` and `host-gw` backends.
//!
//! With VXLAN every node has a `flannel.1` device (VNI 1, UDP port 8472, no learning) whose
//! address is its podCIDR's network address. For each other node it installs, as flannel does:
//! a route `<their podCIDR> via <their network address> dev flannel.1 onlink`, a permanent
//! neighbour entry mapping that address to their VTEP's MAC, and a forwarding entry sending
//! that MAC to their public IP. The MAC and public IP come from the Node annotations in
//! flannel's own format, which this node publishes for itself too, so tugboat nodes and
//! flannel nodes read each other. With host-gw the route is simply `<their podCIDR> via
//! <their public IP>` (nodes must share an L2 segment).
//!
//! Routes carry a protocol number of our own so that, after a restart, routes to nodes that
//! left meanwhile are found and removed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::NetworkError;
use crate::link::{self, LinkError};

/// flannel's VXLAN device, network identifier and port (the Linux kernel's VXLAN port).
pub const VXLAN_DEVICE: &str = "flannel.1";
pub const VXLAN_VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
/// Bytes VXLAN adds to a packet (outer Ethernet, IP, UDP and VXLAN headers).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The Node annotations of flannel's kube subnet manager.
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
pub const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// The routing protocol number our routes carry ("static" is 4; 0x74 is unassigned).
const ROUTE_PROTOCOL: RouteProtocol = RouteProtocol::Other(0x74);

/// How pods on different nodes reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Vxlan,
    HostGw,
}

impl Backend {
    /// The name in `backend-type` annotations and `--flannel-backend`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
        }
    }

    /// What the backend takes off the pods' MTU.
    pub fn overhead(self) -> u32 {
        match self {
            Backend::Vxlan => VXLAN_OVERHEAD,
            Backend::HostGw => 0,
        }
    }
}

/// Another node as the overlay sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    /// Its VTEP's MAC (VXLAN only).
    pub vtep_mac: Option<[u8; 6]>,
}

/// The peer a Node describes for `backend`: its podCIDR and, from its annotations, its public IP
/// and VTEP MAC. `None` until it has published them (or when it runs another backend).
pub fn peer_of(node: &Node, backend: Backend) -> Option<Peer> {
    let subnet = *crate::subnet::pod_cidrs(node).first()?;
    let annotations = node.metadata.annotations.as_ref()?;
    if annotations.get(BACKEND_TYPE).map(String::as_str) != Some(backend.name()) {
        return None;
    }
    let public_ip = annotations.get(PUBLIC_IP)?.parse().ok()?;
    let vtep_mac = match backend {
        Backend::Vxlan => {
            let data: serde_json::Value = serde_json::from_str(annotations.get(BACKEND_DATA)?).ok()?;
            Some(parse_mac(data.get("VtepMAC")?.as_str()?)?)
        }
        Backend::HostGw => None,
    };
    Some(Peer { subnet, public_ip, vtep_mac })
}

/// The annotations a node publishes for itself, in flannel's format.
pub fn annotations(backend: Backend, public_ip: Ipv4Addr, vtep_mac: Option<[u8; 6]>) -> BTreeMap<String, String> {
    let data = match (backend, vtep_mac) {
        (Backend::Vxlan, Some(mac)) => serde_json::json!({"VNI": VXLAN_VNI, "VtepMAC": format_mac(mac)}).to_string(),
        _ => "null".to_owned(),
    };
    BTreeMap::from([
        (BACKEND_DATA.to_owned(), data),
        (BACKEND_TYPE.to_owned(), backend.name().to_owned()),
        (KUBE_SUBNET_MANAGER.to_owned(), "true".to_owned()),
        (PUBLIC_IP.to_owned(), public_ip.to_string()),
    ])
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text.split(':').map(|p| u8::from_str_radix(p, 16).ok()).collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// What to change to go from the peers installed to the peers wanted: peers to (re)install
/// and subnets to remove. Peers on this very host (same public IP) are left to the shared
/// bridge, which already routes their podCIDR.
pub fn plan(installed: &BTreeMap<Ipv4Net, Peer>, wanted: &[Peer], own_ip: Ipv4Addr) -> (Vec<Peer>, Vec<Ipv4Net>) {
    let wanted: BTreeMap<Ipv4Net, Peer> =
        wanted.iter().filter(|p| p.public_ip != own_ip).map(|p| (p.subnet, *p)).collect();
    let install = wanted.values().filter(|p| installed.get(&p.subnet) != Some(p)).copied().collect();
    let remove = installed.keys().filter(|s| !wanted.contains_key(s)).copied().collect();
    (install, remove)
}

/// The overlay of one node.
pub struct Overlay {
    backend: Backend,
    node_ip: Ipv4Addr,
    handle: Handle,
    installed: tokio::sync::Mutex<Installed>,
}

#[derive(Default)]
struct Installed {
    /// The VXLAN device's index once set up.
    device: Option<u32>,
    /// Whether routes left by an earlier run were looked for.
    swept: bool,
    peers: BTreeMap<Ipv4Net, Peer>,
}

impl Overlay {
    pub fn new(backend: Backend, node_ip: Ipv4Addr, handle: Handle) -> Self {
        Overlay { backend, node_ip, handle, installed: tokio::sync::Mutex::new(Installed::default()) }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Prepares this node's end for its podCIDR `own` (the VXLAN device, with VXLAN) and
    /// returns the annotations that tell other nodes how to reach it.
    pub async fn setup(&self, own: Ipv4Net) -> Result<BTreeMap<String, String>, NetworkError> {
        let mac = match self.backend {
            Backend::HostGw => None,
            Backend::Vxlan => {
                let (index, mac) = self.ensure_vxlan_device().await?;
                link::ensure_address(&self.handle, index, own.network(), 32).await?;
                self.installed.lock().await.device = Some(index);
                Some(mac)
            }
        };
        Ok(annotations(self.backend, self.node_ip, mac))
    }

    /// Removes this node's addresses for podCIDRs it no longer has from the VXLAN device.
    pub async fn forget(&self, subnets: &[Ipv4Net]) -> Result<(), NetworkError> {
        let device = self.installed.lock().await.device;
        let device = match device {
            Some(index) => Some(index),
            None => link::index_of(&self.handle, VXLAN_DEVICE).await?,
        };
        if let Some(index) = device {
            for subnet in subnets {
                link::remove_address(&self.handle, index, subnet.network(), 32).await?;
            }
        }
        Ok(())
    }

    /// Makes the routes (and, with VXLAN, neighbour and forwarding entries) match `peers`.
    pub async fn sync(&self, peers: &[Peer]) -> Result<(), NetworkError> {
        let mut installed = self.installed.lock().await;
        if self.backend == Backend::Vxlan && installed.device.is_none() {
            return Ok(());
        }
        let first = !installed.swept;
        if first {
            installed.peers = self.routes_from_earlier_runs().await?;
            installed.swept = true;
        }
        let (install, remove) = plan(&installed.peers, peers, self.node_ip);
        let changed = first || !install.is_empty() || !remove.is_empty();
        for subnet in remove {
            self.remove_route(subnet).await?;
            installed.peers.remove(&subnet);
            tracing::info!(%subnet, "removed the route to a node that left");
        }
        for peer in install {
            self.install(installed.device, &peer).await?;
            installed.peers.insert(peer.subnet, peer);
            tracing::info!(subnet = %peer.subnet, public_ip = %peer.public_ip, backend = self.backend.name(), "route to a node's pods");
        }
        if let (true, Some(device)) = (changed, installed.device) {
            let current: Vec<Peer> = installed.peers.values().copied().collect();
            self.prune_vxlan_entries(device, &current).await?;
        }
        Ok(())
    }

    /// Deletes the neighbour and forwarding entries of the VXLAN device that no current peer
    /// needs: those of nodes that left, or of a node's VTEP before it rejoined with a new MAC.
    async fn prune_vxlan_entries(&self, device: u32, peers: &[Peer]) -> Result<(), NetworkError> {
        let listing = |family| {
            self.handle.neighbours().get().set_address_family(family).execute().try_collect::<Vec<NeighbourMessage>>()
        };
        let failed = |operation: &'static str| {
            move |source| NetworkError::Link(LinkError::Netlink { operation, name: VXLAN_DEVICE.into(), source })
        };
        let neighbours = listing(AddressFamily::Inet).await.map_err(failed("listing the neighbours of"))?;
        for entry in neighbours.into_iter().filter(|n| n.header.ifindex == device) {
            let wanted = neighbour_ip(&entry).is_some_and(|ip| peers.iter().any(|p| p.subnet.network() == ip));
            if !wanted {
                self.handle.neighbours().del(entry).execute().await.map_err(failed("deleting a neighbour of"))?;
            }
        }
        let forwarding = listing(AddressFamily::Bridge).await.map_err(failed("listing the forwarding entries of"))?;
        for entry in forwarding.into_iter().filter(|n| n.header.ifindex == device) {
            let Some(mac) = neighbour_mac(&entry) else { continue };
            // The kernel's own entries (the all-zero default) are not ours to remove.
            if mac == [0; 6] || peers.iter().any(|p| p.vtep_mac == Some(mac)) {
                continue;
            }
            self.handle.neighbours().del(entry).execute().await.map_err(failed("deleting a forwarding entry of"))?;
        }
        Ok(())
    }

    async fn ensure_vxlan_device(&self) -> Result<(u32, [u8; 6]), NetworkError> {
        let parent = link::index_of_link_with(&self.handle, self.node_ip).await?;
        if link::get(&self.handle, VXLAN_DEVICE).await?.is_none() {
            let parent_mtu = match parent {
                Some(index) => link::mtu_by_index(&self.handle, index).await?,
                None => None,
            };
            let mtu = parent_mtu.filter(|_| !self.node_ip.is_loopback()).unwrap_or(1500) - VXLAN_OVERHEAD;
            let mut device =
                LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI).local(self.node_ip).port(VXLAN_PORT).learning(false);
            if let Some(index) = parent {
                device = device.dev(index);
            }
            if let Err(source) = self.handle.link().add(device.mtu(mtu).build()).execute().await {
                return Err(LinkError::Netlink { operation: "creating", name: VXLAN_DEVICE.into(), source }.into());
            }
        }
        let device = link::get(&self.handle, VXLAN_DEVICE).await?.ok_or(LinkError::NotFound(VXLAN_DEVICE.into()))?;
        let index = device.header.index;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|source| LinkError::Netlink { operation: "bringing up", name: VXLAN_DEVICE.into(), source })?;
        let mac = device
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
            .ok_or(LinkError::NotFound(format!("{VXLAN_DEVICE} MAC address")))?;
        Ok((index, mac))
    }

    fn route(&self, device: Option<u32>, peer: &Peer) -> RouteMessage {
        let subnet = peer.subnet;
        let builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .protocol(ROUTE_PROTOCOL);
        match (self.backend, device) {
            (Backend::Vxlan, Some(index)) => builder.gateway(subnet.network()).output_interface(index).onlink().build(),
            _ => builder.gateway(peer.public_ip).build(),
        }
    }

    async fn install(&self, device: Option<u32>, peer: &Peer) -> Result<(), NetworkError> {
        let failed = |operation: &'static str| {
            let name = peer.subnet.to_string();
            move |source| NetworkError::Link(LinkError::Netlink { operation, name, source })
        };
        if let (Backend::Vxlan, Some(index), Some(mac)) = (self.backend, device, peer.vtep_mac) {
            self.handle
                .neighbours()
                .add(index, IpAddr::V4(peer.subnet.network()))
                .link_layer_address(&mac)
                .replace()
                .execute()
                .await
                .map_err(failed("adding the neighbour entry for"))?;
            self.handle
                .neighbours()
                .add_bridge(index, &mac)
                .destination(IpAddr::V4(peer.public_ip))
                .flags(NeighbourFlags::Own)
                .replace()
                .execute()
                .await
                .map_err(failed("adding the forwarding entry for"))?;
        }
        self.handle.route().add(self.route(device, peer)).replace().execute().await.map_err(failed("routing"))
    }

    async fn remove_route(&self, subnet: Ipv4Net) -> Result<(), NetworkError> {
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .protocol(ROUTE_PROTOCOL)
            .build();
        match self.handle.route().del(message).execute().await {
            Ok(()) => Ok(()),
            // ESRCH: already gone.
            Err(rtnetlink::Error::NetlinkError(e)) if e.code.map(|c| -c.get()) == Some(3) => Ok(()),
            Err(source) => {
                Err(LinkError::Netlink { operation: "removing the route to", name: subnet.to_string(), source }.into())
            }
        }
    }

    /// Routes of ours already in the table (from before a restart), as peers to reconcile.
    async fn routes_from_earlier_runs(&self) -> Result<BTreeMap<Ipv4Net, Peer>, NetworkError> {
        let all: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::Netlink { operation: "listing", name: "routes".into(), source })?;
        let mut found = BTreeMap::new();
        for route in all.iter().filter(|r| r.header.protocol == ROUTE_PROTOCOL) {
            let destination = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let Some(subnet) = destination.and_then(|ip| Ipv4Net::new(ip, route.header.destination_prefix_length).ok())
            else {
                continue;
            };
            // An impossible peer: whatever is wanted differs from it, so it is reinstalled or removed.
            found.insert(subnet, Peer { subnet, public_ip: Ipv4Addr::UNSPECIFIED, vtep_mac: None });
        }
        Ok(found)
    }
}

/// The IPv4 address a neighbour entry maps.
fn neighbour_ip(entry: &NeighbourMessage) -> Option<Ipv4Addr> {
    entry.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

/// The MAC address of a neighbour or forwarding entry.
fn neighbour_mac(entry: &NeighbourMessage) -> Option<[u8; 6]> {
    entry.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;

    fn node(cidr: &str, annotations: BTreeMap<String, String>) -> Node {
        Node {
            metadata: ObjectMeta { name: Some("n".into()), annotations: Some(annotations), ..Default::default() },
            spec: Some(NodeSpec {
                pod_cidr: Some(cidr.into()),
                pod_cidrs: Some(vec![cidr.into()]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn published_annotations_read_back_as_the_same_peer_in_flannels_format() {
        let mac = [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f];
        let ip: Ipv4Addr = "172.30.0.3".parse().unwrap();
        let published = annotations(Backend::Vxlan, ip, Some(mac));
        assert_eq!(published[BACKEND_DATA], r#"{"VNI":1,"VtepMAC":"0a:1b:2c:3d:4e:5f"}"#);
        assert_eq!(published[BACKEND_TYPE], "vxlan");
        assert_eq!(published[PUBLIC_IP], "172.30.0.3");
        assert_eq!(published[KUBE_SUBNET_MANAGER], "true");
        let peer = peer_of(&node("10.42.1.0/24", published), Backend::Vxlan).unwrap();
        assert_eq!(peer, Peer { subnet: "10.42.1.0/24".parse().unwrap(), public_ip: ip, vtep_mac: Some(mac) });
    }

    #[test]
    fn a_node_without_annotations_or_on_another_backend_is_no_peer_yet() {
        assert_eq!(peer_of(&node("10.42.1.0/24", BTreeMap::new()), Backend::Vxlan), None);
        let host_gw = annotations(Backend::HostGw, "172.30.0.3".parse().unwrap(), None);
        assert_eq!(host_gw[BACKEND_DATA], "null");
        assert_eq!(peer_of(&node("10.42.1.0/24", host_gw.clone()), Backend::Vxlan), None);
        assert!(peer_of(&node("10.42.1.0/24", host_gw), Backend::HostGw).is_some());
    }

    #[test]
    fn the_plan_installs_new_and_changed_peers_removes_gone_ones_and_skips_this_host() {
        let own: Ipv4Addr = "172.30.0.2".parse().unwrap();
        let peer = |cidr: &str, ip: &str, mac: u8| Peer {
            subnet: cidr.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            vtep_mac: Some([2, 0, 0, 0, 0, mac]),
        };
        let installed = BTreeMap::from([
            ("10.42.1.0/24".parse().unwrap(), peer("10.42.1.0/24", "172.30.0.3", 1)),
            ("10.42.2.0/24".parse().unwrap(), peer("10.42.2.0/24", "172.30.0.4", 2)),
            ("10.42.3.0/24".parse().unwrap(), peer("10.42.3.0/24", "172.30.0.5", 3)),
        ]);
        let wanted = [
            peer("10.42.1.0/24", "172.30.0.3", 1), // unchanged
            peer("10.42.2.0/24", "172.30.0.4", 9), // rejoined with a new VTEP
            peer("10.42.4.0/24", "172.30.0.6", 4), // new
            peer("10.42.5.0/24", "172.30.0.2", 5), // on this host: the bridge routes it
        ];
        let (install, remove) = plan(&installed, &wanted, own);
        assert_eq!(install, vec![wanted[1], wanted[2]]);
        assert_eq!(remove, vec!["10.42.3.0/24".parse::<Ipv4Net>().unwrap()]);
    }

    #[test]
    fn macs_print_and_parse_as_flannel_writes_them() {
        assert_eq!(parse_mac("ff:00:0a:1B:2c:3d"), Some([0xff, 0, 0x0a, 0x1b, 0x2c, 0x3d]));
        assert_eq!(parse_mac("ff:00"), None);
        assert_eq!(format_mac([0xff, 0, 0x0a, 0x1b, 0x2c, 0x3d]), "ff:00:0a:1b:2c:3d");
    }
}

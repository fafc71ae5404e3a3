//! Pod IPs for simulated pods: each node hands out addresses from its `spec.podCIDR` (set by the
//! node IPAM controller) or, until it has one, from a range of its own outside the default
//! cluster CIDR. An address stays with its pod (keyed by UID) until the pod is gone.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// A node's address range: `base` plus offsets 1..size-1 (network and broadcast excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    base: u32,
    size: u32,
}

impl Range {
    /// Parses `a.b.c.d/len` (IPv4 only, as the pod network is); `None` for anything else.
    fn parse(cidr: &str) -> Option<Range> {
        let (addr, len) = cidr.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let len: u32 = len.parse().ok()?;
        if !(8..=30).contains(&len) {
            return None;
        }
        let size = 1u32 << (32 - len);
        Some(Range { base: u32::from(addr) & !(size - 1), size })
    }

    /// The range of node `index` before it has a podCIDR: 10.128.0.0/9 cut into /24s.
    fn fallback(index: usize) -> Range {
        let slot = (index % (1 << 15)) as u32;
        Range { base: u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (slot << 8), size: 256 }
    }
}

#[derive(Debug)]
struct NodeNet {
    range: Range,
    used: BTreeSet<u32>,
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<String, NodeNet>,
    /// Pod UID -> (node, address).
    pods: HashMap<String, (String, u32)>,
}

/// Every simulated node's pod addresses.
#[derive(Debug, Default)]
pub struct PodNetworks {
    state: Mutex<State>,
}

impl PodNetworks {
    /// Sets node `index`'s range from its podCIDR (or the fallback range when it has none). The
    /// addresses already handed out stay valid.
    pub fn set_range(&self, node: &str, index: usize, pod_cidr: Option<&str>) {
        let range = pod_cidr.and_then(Range::parse).unwrap_or_else(|| Range::fallback(index));
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.nodes.get_mut(node) {
            Some(net) if net.range != range => {
                net.range = range;
                net.used.clear();
            }
            Some(_) => {}
            None => {
                state.nodes.insert(node.to_string(), NodeNet { range, used: BTreeSet::new() });
            }
        }
    }

    /// The address of pod `uid` on `node`: the one it already has, else the lowest free one.
    /// `None` when the node is unknown or its range is full.
    pub fn allocate(&self, node: &str, uid: &str) -> Option<String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((owner, addr)) = state.pods.get(uid)
            && owner == node
        {
            return Some(Ipv4Addr::from(*addr).to_string());
        }
        let net = state.nodes.get_mut(node)?;
        let offset = (1..net.range.size - 1).find(|o| !net.used.contains(&(net.range.base + o)))?;
        let addr = net.range.base + offset;
        net.used.insert(addr);
        state.pods.insert(uid.to_string(), (node.to_string(), addr));
        Some(Ipv4Addr::from(addr).to_string())
    }

    /// Records an address a pod already has (pods found when the simulator restarts).
    pub fn observe(&self, node: &str, uid: &str, ip: &str) {
        let Ok(addr) = ip.parse::<Ipv4Addr>() else { return };
        let addr = u32::from(addr);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.pods.contains_key(uid) {
            return;
        }
        if let Some(net) = state.nodes.get_mut(node) {
            net.used.insert(addr);
        }
        state.pods.insert(uid.to_string(), (node.to_string(), addr));
    }

    /// Frees the address of a pod that is gone.
    pub fn release(&self, uid: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((node, addr)) = state.pods.remove(uid)
            && let Some(net) = state.nodes.get_mut(&node)
        {
            net.used.remove(&addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_the_pod_cidr_and_stay_with_their_pod() {
        let nets = PodNetworks::default();
        nets.set_range("n0", 0, Some("10.42.3.0/24"));
        assert_eq!(nets.allocate("n0", "a").as_deref(), Some("10.42.3.1"));
        assert_eq!(nets.allocate("n0", "b").as_deref(), Some("10.42.3.2"));
        assert_eq!(nets.allocate("n0", "a").as_deref(), Some("10.42.3.1"));
        nets.release("a");
        assert_eq!(nets.allocate("n0", "c").as_deref(), Some("10.42.3.1"));
    }

    #[test]
    fn nodes_without_a_pod_cidr_get_distinct_fallback_ranges() {
        let nets = PodNetworks::default();
        nets.set_range("n0", 0, None);
        nets.set_range("n1", 1, Some("not a cidr"));
        assert_eq!(nets.allocate("n0", "a").as_deref(), Some("10.128.0.1"));
        assert_eq!(nets.allocate("n1", "b").as_deref(), Some("10.128.1.1"));
        assert_eq!(nets.allocate("unknown", "c"), None);
    }

    #[test]
    fn a_full_range_hands_out_nothing_more() {
        let nets = PodNetworks::default();
        nets.set_range("n0", 0, Some("10.0.0.0/30"));
        assert!(nets.allocate("n0", "a").is_some());
        assert!(nets.allocate("n0", "b").is_some());
        assert_eq!(nets.allocate("n0", "c"), None);
    }

    #[test]
    fn observed_addresses_are_not_handed_out_again() {
        let nets = PodNetworks::default();
        nets.set_range("n0", 0, Some("10.42.0.0/24"));
        nets.observe("n0", "old", "10.42.0.1");
        assert_eq!(nets.allocate("n0", "new").as_deref(), Some("10.42.0.2"));
    }
}

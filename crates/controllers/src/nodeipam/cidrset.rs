//! The set of per-node subnets carved out of the cluster CIDR (upstream's
//! `pkg/controller/nodeipam/ipam/cidrset`): allocation is round-robin from the last one handed
//! out, so a subnet released by a deleted node is not immediately given to a new node.
//!
//! IPv4 only for now; dual-stack cluster CIDRs are not supported yet.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Why a CIDR could not be parsed, occupied or allocated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{value:?} is not an IPv4 CIDR like 10.42.0.0/16")]
    Parse { value: String },
    #[error("node CIDR mask size {mask} must be between the cluster CIDR's prefix {prefix} and 30")]
    MaskSize { mask: u8, prefix: u8 },
    #[error("{cidr} is not a /{mask} inside the cluster CIDR {cluster}")]
    OutOfRange { cidr: String, cluster: String, mask: u8 },
    #[error("the cluster CIDR {cluster} has no free /{mask} left")]
    Full { cluster: String, mask: u8 },
}

/// An IPv4 network: base address and prefix length, the base masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Ipv4Net {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let err = || CidrError::Parse { value: s.to_string() };
        let (ip, prefix) = s.trim().split_once('/').ok_or_else(err)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        if prefix > 32 {
            return Err(err());
        }
        Ok(Self { base: Ipv4Addr::from(u32::from(ip) & mask(prefix)), prefix })
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
}

/// The subnets of one cluster CIDR and which of them are taken.
#[derive(Debug, Clone)]
pub struct CidrSet {
    cluster: Ipv4Net,
    mask: u8,
    used: BTreeSet<u32>,
    next_candidate: u32,
}

impl CidrSet {
    /// The /`mask` subnets of `cluster`, none taken.
    pub fn new(cluster: Ipv4Net, mask: u8) -> Result<Self, CidrError> {
        if mask < cluster.prefix || mask > 30 {
            return Err(CidrError::MaskSize { mask, prefix: cluster.prefix });
        }
        Ok(Self { cluster, mask, used: BTreeSet::new(), next_candidate: 0 })
    }

    /// How many subnets the cluster CIDR holds.
    pub fn capacity(&self) -> u32 {
        let bits = u32::from(self.mask - self.cluster.prefix);
        if bits >= 32 { u32::MAX } else { 1 << bits }
    }

    fn subnet(&self, index: u32) -> Ipv4Net {
        let size = 1u64 << (32 - u32::from(self.mask));
        let base = u64::from(u32::from(self.cluster.base)) + u64::from(index) * size;
        Ipv4Net { base: Ipv4Addr::from(base as u32), prefix: self.mask }
    }

    fn index_of(&self, cidr: &str) -> Result<u32, CidrError> {
        let net: Ipv4Net = cidr.parse()?;
        let inside = net.prefix == self.mask
            && (u32::from(net.base) & mask(self.cluster.prefix)) == u32::from(self.cluster.base);
        if !inside {
            return Err(CidrError::OutOfRange {
                cidr: cidr.to_string(),
                cluster: self.cluster.to_string(),
                mask: self.mask,
            });
        }
        Ok((u32::from(net.base) - u32::from(self.cluster.base)) >> (32 - u32::from(self.mask)))
    }

    /// Forgets every allocation (the round-robin position is kept).
    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// Marks `cidr` (a node's existing podCIDR) as taken.
    pub fn occupy(&mut self, cidr: &str) -> Result<(), CidrError> {
        let i = self.index_of(cidr)?;
        self.used.insert(i);
        Ok(())
    }

    /// Gives `cidr` back.
    pub fn release(&mut self, cidr: &str) -> Result<(), CidrError> {
        let i = self.index_of(cidr)?;
        self.used.remove(&i);
        Ok(())
    }

    /// Whether `cidr` is taken.
    pub fn is_used(&self, cidr: &str) -> bool {
        self.index_of(cidr).is_ok_and(|i| self.used.contains(&i))
    }

    /// Takes the next free subnet after the last one handed out.
    pub fn allocate_next(&mut self) -> Result<Ipv4Net, CidrError> {
        let cap = self.capacity();
        for step in 0..cap {
            let i = (self.next_candidate.wrapping_add(step)) % cap;
            if self.used.insert(i) {
                self.next_candidate = (i + 1) % cap;
                return Ok(self.subnet(i));
            }
        }
        Err(CidrError::Full { cluster: self.cluster.to_string(), mask: self.mask })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cluster: &str, mask: u8) -> CidrSet {
        CidrSet::new(cluster.parse().unwrap(), mask).unwrap()
    }

    #[test]
    fn allocates_distinct_slash_24s_in_order() {
        let mut s = set("10.42.0.0/16", 24);
        assert_eq!(s.capacity(), 256);
        assert_eq!(s.allocate_next().unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(s.allocate_next().unwrap().to_string(), "10.42.1.0/24");
    }

    #[test]
    fn skips_subnets_recovered_from_existing_nodes() {
        let mut s = set("10.42.0.0/16", 24);
        s.occupy("10.42.0.0/24").unwrap();
        s.occupy("10.42.1.0/24").unwrap();
        assert_eq!(s.allocate_next().unwrap().to_string(), "10.42.2.0/24");
    }

    #[test]
    fn released_subnets_are_reused_only_after_wrapping_around() {
        let mut s = set("10.42.0.0/22", 24);
        let a = s.allocate_next().unwrap().to_string();
        s.allocate_next().unwrap();
        s.release(&a).unwrap();
        assert_eq!(s.allocate_next().unwrap().to_string(), "10.42.2.0/24");
        assert_eq!(s.allocate_next().unwrap().to_string(), "10.42.3.0/24");
        assert_eq!(s.allocate_next().unwrap().to_string(), a);
        assert!(matches!(s.allocate_next(), Err(CidrError::Full { .. })));
    }

    #[test]
    fn rejects_cidrs_outside_the_cluster_range_or_of_another_size() {
        let mut s = set("10.42.0.0/16", 24);
        assert!(s.occupy("10.43.0.0/24").is_err());
        assert!(s.occupy("10.42.0.0/25").is_err());
        assert!(s.occupy("nonsense").is_err());
        assert!(CidrSet::new("10.42.0.0/16".parse().unwrap(), 8).is_err());
    }

    #[test]
    fn parsing_masks_the_base_address() {
        let n: Ipv4Net = "10.42.7.9/16".parse().unwrap();
        assert_eq!(n.to_string(), "10.42.0.0/16");
    }
}

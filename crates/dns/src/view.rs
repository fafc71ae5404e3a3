//! The cluster's names as CoreDNS's `kubernetes` plugin answers them, built from Services,
//! EndpointSlices and Pods: pure data in, answers out (no I/O), so that it is tested without an
//! API server or sockets.
//!
//! Names are kept as lower-case strings without the final dot; DNS names are case-insensitive.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// TTL of cluster records: the `kubernetes` plugin's default.
pub const TTL: u32 = 5;

/// The label tying an EndpointSlice to its Service.
const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// What the view says about one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The name is ours and exists; the records may be empty (NODATA: it exists with other types).
    Answer(Vec<Record>),
    /// The name is in the cluster domain (or a reverse name we own) and does not exist.
    NxDomain,
    /// Not a name this view answers: the forwarder's.
    NotOurs,
}

#[derive(Debug, Default, Clone)]
struct Node {
    a: BTreeSet<Ipv4Addr>,
    aaaa: BTreeSet<Ipv6Addr>,
    cname: Option<String>,
    /// (port, target) pairs, in insertion order without duplicates.
    srv: Vec<(u16, String)>,
}

/// The in-memory zone of `--cluster-domain` plus the reverse names of service and pod IPs.
#[derive(Debug, Clone)]
pub struct View {
    domain: String,
    names: HashMap<String, Node>,
    /// Names that exist only as parents of other names (`<ns>.svc.<domain>`, `svc.<domain>`).
    interior: HashSet<String>,
    ptr: HashMap<IpAddr, String>,
    serial: u32,
    /// Whether the view was built from the cluster's objects. Until it is, the DNS knows no
    /// name of the cluster domain, and a missing name would be a wrong answer, not a fact.
    synced: bool,
}

fn lower(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The name an endpoint is known by under its service: its hostname, else its address with
/// dashes (CoreDNS's `endpointHostname`).
fn endpoint_label(hostname: Option<&str>, ip: &IpAddr) -> String {
    match hostname.filter(|h| !h.is_empty()) {
        Some(h) => h.to_ascii_lowercase(),
        None => ip.to_string().replace(['.', ':'], "-"),
    }
}

impl View {
    /// An empty view of `domain` (e.g. `cluster.local`), the one served before the cluster's
    /// objects have been read.
    pub fn new(domain: &str) -> Self {
        let mut view = Self {
            domain: lower(domain),
            names: HashMap::new(),
            interior: HashSet::new(),
            ptr: HashMap::new(),
            serial: 1,
            synced: false,
        };
        view.interior.insert(format!("svc.{}", view.domain));
        view.interior.insert(format!("pod.{}", view.domain));
        view
    }

    /// Whether the view holds the cluster's objects ([`View::build`]) rather than none yet.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The view of these objects. `serial` goes into the SOA: it changes when the view does.
    pub fn build(domain: &str, services: &[&Service], slices: &[&EndpointSlice], pods: &[&Pod], serial: u32) -> Self {
        let mut view = Self::new(domain);
        view.serial = serial;
        view.synced = true;
        // Pods first: a service's or endpoint's reverse name wins over the pod's.
        for pod in pods {
            view.add_pod(pod);
        }
        let mut slices_by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let (Some(ns), Some(svc)) = (
                slice.metadata.namespace.as_deref(),
                slice.metadata.labels.as_ref().and_then(|l| l.get(LABEL_SERVICE_NAME)).map(String::as_str),
            ) else {
                continue;
            };
            slices_by_service.entry((ns, svc)).or_default().push(slice);
        }
        for svc in services {
            let (Some(ns), Some(name)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref()) else {
                continue;
            };
            let slices = slices_by_service.get(&(ns, name)).map(Vec::as_slice).unwrap_or_default();
            view.add_service(ns, name, svc, slices);
        }
        view
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn service_name(&self, ns: &str, name: &str) -> String {
        format!("{}.{}.svc.{}", name.to_ascii_lowercase(), ns.to_ascii_lowercase(), self.domain)
    }

    fn add_pod(&mut self, pod: &Pod) {
        let Some(ns) = pod.metadata.namespace.as_deref() else { return };
        if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
            // Its address is the node's: no name of its own.
            return;
        }
        let ips = pod.status.as_ref().and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().map(|p| p.ip.as_str());
        for ip in ips.chain(pod.status.as_ref().and_then(|s| s.pod_ip.as_deref())) {
            if let Ok(ip) = ip.parse::<IpAddr>() {
                let target = format!("{}.{}.pod.{}", endpoint_label(None, &ip), ns.to_ascii_lowercase(), self.domain);
                self.ptr.insert(ip, target);
            }
        }
    }

    fn node(&mut self, name: String) -> &mut Node {
        // Every parent up to the domain exists too (empty non-terminals answer NODATA).
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if parent.len() <= self.domain.len() {
                break;
            }
            self.interior.insert(parent.to_string());
            rest = parent;
        }
        self.names.entry(name).or_default()
    }

    fn add_srv(&mut self, name: String, port: u16, target: &str) {
        let node = self.node(name);
        if !node.srv.iter().any(|(p, t)| *p == port && t == target) {
            node.srv.push((port, target.to_string()));
        }
    }

    fn add_service(&mut self, ns: &str, name: &str, svc: &Service, slices: &[&EndpointSlice]) {
        let Some(spec) = svc.spec.as_ref() else { return };
        let fqdn = self.service_name(ns, name);
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec.external_name.as_deref().filter(|t| !t.is_empty()) {
                self.node(fqdn).cname = Some(lower(target));
            }
            return;
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        // The service's own name exists even before it has endpoints (NODATA, not NXDOMAIN).
        self.node(fqdn.clone());
        if !headless {
            let ips = spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.as_ref());
            for ip in ips.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                let node = self.node(fqdn.clone());
                match ip {
                    IpAddr::V4(v4) => node.a.insert(v4),
                    IpAddr::V6(v6) => node.aaaa.insert(v6),
                };
                self.ptr.insert(ip, fqdn.clone());
            }
            for port in spec.ports.iter().flatten() {
                let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else { continue };
                let Ok(number) = u16::try_from(port.port) else { continue };
                let proto = port.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                let srv_name = format!("_{}._{proto}.{fqdn}", port_name.to_ascii_lowercase());
                self.add_srv(srv_name, number, &fqdn);
                self.add_srv(fqdn.clone(), number, &fqdn);
            }
        }
        for slice in slices {
            for endpoint in slice.endpoints.iter().flatten() {
                let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                for ip in endpoint.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    let host = format!("{}.{fqdn}", endpoint_label(endpoint.hostname.as_deref(), &ip));
                    // Reverse names of endpoints are answered for every service, as CoreDNS does.
                    self.ptr.insert(ip, host.clone());
                    if !headless || !ready {
                        continue;
                    }
                    for target in [&fqdn, &host] {
                        let node = self.node(target.clone());
                        match ip {
                            IpAddr::V4(v4) => node.a.insert(v4),
                            IpAddr::V6(v6) => node.aaaa.insert(v6),
                        };
                    }
                    for port in slice.ports.iter().flatten() {
                        let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else { continue };
                        let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else { continue };
                        let proto = port.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                        let srv_name = format!("_{}._{proto}.{fqdn}", port_name.to_ascii_lowercase());
                        self.add_srv(srv_name, number, &host);
                        self.add_srv(fqdn.clone(), number, &host);
                    }
                }
            }
        }
    }

    /// The zone's SOA record (CoreDNS's values; the minimum TTL is the record TTL, which bounds
    /// negative caching).
    pub fn soa(&self) -> Record {
        let name = to_name(&self.domain);
        let soa = SOA::new(
            to_name(&format!("ns.dns.{}", self.domain)),
            to_name(&format!("hostmaster.{}", self.domain)),
            self.serial,
            7200,
            1800,
            86400,
            TTL,
        );
        Record::from_rdata(name, TTL, RData::SOA(soa))
    }

    /// Answers `qname`/`qtype` from the view.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let name = lower(&qname.to_ascii());
        if let Some(ip) = parse_reverse(&name) {
            return match self.ptr.get(&ip) {
                Some(target) if qtype == RecordType::PTR || qtype == RecordType::ANY => {
                    Lookup::Answer(vec![Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(to_name(target))))])
                }
                Some(_) => Lookup::Answer(vec![]),
                None => Lookup::NotOurs,
            };
        }
        if name != self.domain && !name.ends_with(&format!(".{}", self.domain)) {
            return Lookup::NotOurs;
        }
        if name == self.domain {
            return Lookup::Answer(if qtype == RecordType::SOA { vec![self.soa()] } else { vec![] });
        }
        if let Some(ip) = self.pod_address(&name) {
            return Lookup::Answer(address_records(qname, qtype, &[ip]));
        }
        let Some(node) = self.names.get(&name) else {
            return if self.interior.contains(&name) { Lookup::Answer(vec![]) } else { Lookup::NxDomain };
        };
        if let Some(target) = &node.cname {
            let mut records = vec![Record::from_rdata(qname.clone(), TTL, RData::CNAME(CNAME(to_name(target))))];
            if qtype != RecordType::CNAME
                && let Lookup::Answer(more) = self.lookup(&to_name(target), qtype)
                && self.names.get(target).is_none_or(|n| n.cname.is_none())
            {
                // A target inside the cluster is answered here too (one level: no loops).
                records.extend(more);
            }
            return Lookup::Answer(records);
        }
        let mut records = Vec::new();
        if matches!(qtype, RecordType::A | RecordType::ANY) {
            records.extend(node.a.iter().map(|ip| Record::from_rdata(qname.clone(), TTL, RData::A(A(*ip)))));
        }
        if matches!(qtype, RecordType::AAAA | RecordType::ANY) {
            records.extend(node.aaaa.iter().map(|ip| Record::from_rdata(qname.clone(), TTL, RData::AAAA(AAAA(*ip)))));
        }
        if matches!(qtype, RecordType::SRV | RecordType::ANY) && !node.srv.is_empty() {
            // Equal weights summing to 100, as CoreDNS spreads them.
            let weight = (100 / node.srv.len()).max(1) as u16;
            records.extend(node.srv.iter().map(|(port, target)| {
                Record::from_rdata(qname.clone(), TTL, RData::SRV(SRV::new(0, weight, *port, to_name(target))))
            }));
        }
        Lookup::Answer(records)
    }

    /// Address records for the targets of SRV answers (the additional section).
    pub fn additionals(&self, answers: &[Record]) -> Vec<Record> {
        let mut out = Vec::new();
        for record in answers {
            if let RData::SRV(srv) = &record.data
                && let Some(node) = self.names.get(&lower(&srv.target.to_ascii()))
            {
                let target = srv.target.clone();
                out.extend(node.a.iter().map(|ip| Record::from_rdata(target.clone(), TTL, RData::A(A(*ip)))));
                out.extend(node.aaaa.iter().map(|ip| Record::from_rdata(target.clone(), TTL, RData::AAAA(AAAA(*ip)))));
            }
        }
        out.dedup();
        out
    }

    /// `a-b-c-d.<ns>.pod.<domain>`: answered for any namespace and address, as the `pods
    /// insecure` mode k3s and kubeadm configure.
    fn pod_address(&self, name: &str) -> Option<IpAddr> {
        let rest = name.strip_suffix(&format!(".pod.{}", self.domain))?;
        let (label, _ns) = rest.split_once('.').filter(|(_, ns)| !ns.contains('.'))?;
        if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
            return Some(IpAddr::V4(v4));
        }
        label.replace('-', ":").parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    }
}

fn address_records(qname: &Name, qtype: RecordType, ips: &[IpAddr]) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(*v4))),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|data| Record::from_rdata(qname.clone(), TTL, data))
        .collect()
}

/// A name the view built itself; they are always valid, so a failure is a bug worth a panic
/// only in tests: fall back to the root.
fn to_name(s: &str) -> Name {
    let mut name = Name::from_ascii(s).unwrap_or_else(|_| Name::root());
    name.set_fqdn(true);
    name
}

/// The address of an `in-addr.arpa` or `ip6.arpa` name with a full address.
pub fn parse_reverse(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets: Vec<u8> = rest.split('.').map(|o| o.parse().ok()).collect::<Option<_>>()?;
        if octets.len() != 4 {
            return None;
        }
        octets.reverse();
        return Some(IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3])));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> =
        rest.split('.').map(|n| u8::from_str_radix(n, 16).ok().filter(|_| n.len() == 1)).collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in nibbles.iter().rev().collect::<Vec<_>>().chunks(2).enumerate() {
        bytes[i] = (pair[0] << 4) | pair[1];
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;

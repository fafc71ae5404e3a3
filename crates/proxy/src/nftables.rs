//! The service datapath as one nftables table, `table ip kube-proxy`, laid out as upstream
//! kube-proxy's nftables mode lays it out (pkg/proxy/nftables): verdict maps from
//! `address . protocol . port` to a chain per service port, a chain per endpoint doing the
//! DNAT, `numgen random` spreading new connections, packets that need SNAT marked and
//! masqueraded in postrouting, and filter chains rejecting connections to services that have
//! no endpoints.
//!
//! The table is rendered whole from [`ServicePort`]s and applied in one `nft -f` transaction
//! (add table, delete table, table { ... }), so the kernel never holds half a ruleset and a
//! removed service leaves nothing behind. Between those full syncs (hourly), a change is applied as a
//! partial one ([`Ruleset::render_update`]): one transaction touching only the map elements,
//! chains and sets of the service ports that differ, which keeps a sync short however many
//! services there are.

use crate::serviceport::{Endpoint, ServicePort};

/// Our table, `table ip kube-proxy` (upstream's name).
pub const TABLE: &str = "kube-proxy";

/// The mark of packets to masquerade (upstream's default `--masquerade-bit` 14).
const MASQUERADE_MARK: &str = "0x4000";

pub use tug_network::nftables::NftError;
use tug_network::nftables::{quote, run_nft};

/// What the table is rendered from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// The pods' bridge: traffic arriving from it comes from this node's pods and is not
    /// masqueraded (upstream's `--detect-local-mode=BridgeInterface`); anything else reaching a
    /// service (the node itself, other hosts) is.
    pub pod_bridge: String,
    pub service_ports: Vec<ServicePort>,
}

/// Chain names: upstream's prefixes with the service port's id; nft identifiers may hold `/`
/// and `.`, and namespaces, names and port names are DNS labels.
fn service_chain(port: &ServicePort) -> String {
    format!("service-{}", port.id())
}

fn external_chain(port: &ServicePort) -> String {
    format!("external-{}", port.id())
}

fn endpoint_chain(port: &ServicePort, endpoint: &Endpoint) -> String {
    format!("endpoint-{}__{}/{}", port.id(), endpoint.ip, endpoint.port)
}

fn affinity_set(port: &ServicePort, endpoint: &Endpoint) -> String {
    format!("affinity-{}__{}/{}", port.id(), endpoint.ip, endpoint.port)
}

impl Ruleset {
    /// How many rules the table holds: the statements inside its chains (map declarations,
    /// chain headers and map elements are not rules), counted from the parts without rendering.
    pub fn rule_count(&self) -> usize {
        let skeleton = Ruleset { pod_bridge: self.pod_bridge.clone(), service_ports: Vec::new() };
        let bridge = quote(&self.pod_bridge);
        let ports: usize = self
            .service_ports
            .iter()
            .map(|p| port_parts(p, &bridge).chains.iter().map(|(_, rules)| rules.len()).sum::<usize>())
            .sum();
        rules_in(&skeleton.render()) + ports
    }

    /// The whole table as `nft -f` input that replaces any previous version atomically.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |indent: usize, text: &str| {
            out.push_str(&"\t".repeat(indent));
            out.push_str(text);
            out.push('\n');
        };
        line(0, &format!("add table ip {TABLE}"));
        line(0, &format!("delete table ip {TABLE}"));
        line(0, &format!("table ip {TABLE} {{"));

        let bridge = quote(&self.pod_bridge);
        let parts: Vec<Parts> = self.service_ports.iter().map(|port| port_parts(port, &bridge)).collect();
        let elements_of = |map: &str| -> Vec<String> {
            parts.iter().flat_map(|p| &p.elements).filter(|(m, _)| *m == map).map(|(_, e)| e.clone()).collect()
        };
        let (service_ips, service_nodeports) = (elements_of(SERVICE_IPS), elements_of(SERVICE_NODEPORTS));
        let no_endpoint_services = elements_of(NO_ENDPOINT_SERVICES);
        let no_endpoint_nodeports = elements_of(NO_ENDPOINT_NODEPORTS);
        let map = |line: &mut dyn FnMut(usize, &str), name: &str, key: &str, elements: &[String]| {
            line(1, &format!("map {name} {{"));
            line(2, &format!("type {key} : verdict"));
            if !elements.is_empty() {
                line(2, &format!("elements = {{ {} }}", elements.join(", ")));
            }
            line(1, "}");
        };
        let addr_key = "ipv4_addr . inet_proto . inet_service";
        let port_key = "inet_proto . inet_service";
        map(&mut line, SERVICE_IPS, addr_key, &service_ips);
        map(&mut line, SERVICE_NODEPORTS, port_key, &service_nodeports);
        map(&mut line, NO_ENDPOINT_SERVICES, addr_key, &no_endpoint_services);
        map(&mut line, NO_ENDPOINT_NODEPORTS, port_key, &no_endpoint_nodeports);

        // Session affinity: one set of recent clients per endpoint, each entry expiring.
        for (name, timeout) in parts.iter().flat_map(|p| &p.sets) {
            line(1, &format!("set {name} {{"));
            line(2, "type ipv4_addr");
            line(2, "flags dynamic,timeout");
            line(2, &format!("timeout {timeout}s"));
            line(1, "}");
        }

        // Base chains. The filter chains run before DNAT (-110) and reject new connections to a
        // service without endpoints; the nat chains dispatch through the maps.
        let base = |line: &mut dyn FnMut(usize, &str), name: &str, hook: &str, rules: &[&str]| {
            line(1, &format!("chain {name} {{"));
            line(2, &format!("{hook}; policy accept;"));
            for rule in rules {
                line(2, rule);
            }
            line(1, "}");
        };
        base(
            &mut line,
            "filter-input",
            "type filter hook input priority -110",
            &["ct state new jump nodeport-endpoints-check", "ct state new jump service-endpoints-check"],
        );
        base(
            &mut line,
            "filter-forward",
            "type filter hook forward priority -110",
            &["ct state new jump service-endpoints-check"],
        );
        base(
            &mut line,
            "filter-output",
            "type filter hook output priority -110",
            &["ct state new jump service-endpoints-check"],
        );
        base(&mut line, "nat-prerouting", "type nat hook prerouting priority dstnat", &["jump services"]);
        base(&mut line, "nat-output", "type nat hook output priority -100", &["jump services"]);
        base(&mut line, "nat-postrouting", "type nat hook postrouting priority srcnat", &["jump masquerading"]);

        let chain = |line: &mut dyn FnMut(usize, &str), name: &str, rules: &[String]| {
            line(1, &format!("chain {name} {{"));
            for rule in rules {
                line(2, rule);
            }
            line(1, "}");
        };
        // NodePorts on every local address but loopback (upstream's default).
        let local = "fib daddr type local ip daddr != 127.0.0.0/8";
        chain(
            &mut line,
            "nodeport-endpoints-check",
            &[format!("{local} meta l4proto . th dport vmap @no-endpoint-nodeports")],
        );
        chain(
            &mut line,
            "service-endpoints-check",
            &["ip daddr . meta l4proto . th dport vmap @no-endpoint-services".to_string()],
        );
        chain(&mut line, "reject-chain", &["meta l4proto tcp reject with tcp reset".to_string(), "reject".to_string()]);
        chain(
            &mut line,
            "services",
            &[
                "ip daddr . meta l4proto . th dport vmap @service-ips".to_string(),
                format!("{local} meta l4proto . th dport vmap @service-nodeports"),
            ],
        );
        chain(&mut line, "mark-for-masquerade", &[format!("meta mark set meta mark or {MASQUERADE_MARK}")]);
        chain(
            &mut line,
            "masquerading",
            &[
                format!("meta mark & {MASQUERADE_MARK} == 0 return"),
                format!("meta mark set meta mark xor {MASQUERADE_MARK}"),
                "masquerade fully-random".to_string(),
            ],
        );

        for (name, rules) in parts.iter().flat_map(|p| &p.chains) {
            chain(&mut line, name, rules);
        }
        line(0, "}");
        out
    }

    /// How many service ports have endpoints and how many endpoints in all (for logs).
    fn counts(&self) -> (usize, usize) {
        let active = self.service_ports.iter().filter(|p| !p.endpoints.is_empty()).count();
        let endpoints = self.service_ports.iter().map(|p| p.endpoints.len()).sum();
        (active, endpoints)
    }
}

/// The rules in rendered table text: the lines inside chains, except chain types and map
/// elements.
fn rules_in(text: &str) -> usize {
    let mut in_chain = false;
    let mut rules = 0;
    for line in text.lines() {
        if line.starts_with("\tchain ") {
            in_chain = true;
        } else if line == "\t}" {
            in_chain = false;
        } else if in_chain && !line.trim_start().starts_with("type ") {
            rules += 1;
        }
    }
    rules
}

/// The verdict maps the dispatch chains look packets up in.
const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";

/// One service port's share of the table: its elements in the verdict maps, its affinity sets
/// (name, timeout in seconds) and its chains (name, rules). The whole table is the fixed
/// skeleton plus every port's parts, and an update changes only the parts that differ.
#[derive(Debug, Default, PartialEq, Eq)]
struct Parts {
    elements: Vec<(&'static str, String)>,
    sets: Vec<(String, u32)>,
    chains: Vec<(String, Vec<String>)>,
}

fn port_parts(port: &ServicePort, bridge: &str) -> Parts {
    let mut parts = Parts::default();
    let proto = port.protocol.nft_name();
    if port.endpoints.is_empty() {
        parts
            .elements
            .push((NO_ENDPOINT_SERVICES, format!("{} . {proto} . {} : goto reject-chain", port.cluster_ip, port.port)));
        for ip in &port.external_ips {
            parts.elements.push((NO_ENDPOINT_SERVICES, format!("{ip} . {proto} . {} : goto reject-chain", port.port)));
        }
        if let Some(node_port) = port.node_port {
            parts.elements.push((NO_ENDPOINT_NODEPORTS, format!("{proto} . {node_port} : goto reject-chain")));
        }
        return parts;
    }
    if port.internal_local && port.local_endpoints.is_empty() {
        // internalTrafficPolicy Local without an endpoint here: dropped, as upstream.
        parts.elements.push((NO_ENDPOINT_SERVICES, format!("{} . {proto} . {} : drop", port.cluster_ip, port.port)));
    } else {
        parts.elements.push((
            SERVICE_IPS,
            format!("{} . {proto} . {} : goto {}", port.cluster_ip, port.port, service_chain(port)),
        ));
    }
    for ip in &port.external_ips {
        parts.elements.push((SERVICE_IPS, format!("{ip} . {proto} . {} : goto {}", port.port, external_chain(port))));
    }
    if let Some(node_port) = port.node_port {
        parts.elements.push((SERVICE_NODEPORTS, format!("{proto} . {node_port} : goto {}", external_chain(port))));
    }
    if let Some(timeout) = port.affinity_timeout_seconds {
        for endpoint in &all_endpoints(port) {
            parts.sets.push((affinity_set(port, endpoint), timeout));
        }
    }

    let mut rules = Vec::new();
    // Not from this node's pods (the node itself, another host): SNAT, so the answer comes back
    // through this node to be un-NATed.
    rules.push(format!("iifname != {bridge} jump mark-for-masquerade"));
    let targets = if port.internal_local { &port.local_endpoints } else { &port.endpoints };
    rules.extend(dispatch(port, targets));
    parts.chains.push((service_chain(port), rules));

    if port.node_port.is_some() || !port.external_ips.is_empty() {
        let rules = if port.external_local {
            // externalTrafficPolicy Local: from outside, only this node's endpoints and no
            // masquerade; this node's pods and processes get the cluster policy (upstream does
            // the same).
            let mut rules = vec![
                format!("iifname {bridge} goto {}", service_chain(port)),
                "fib saddr type local jump mark-for-masquerade".to_string(),
                format!("fib saddr type local goto {}", service_chain(port)),
            ];
            rules.extend(dispatch(port, &port.local_endpoints));
            rules
        } else {
            // From outside the cluster: always masqueraded.
            vec!["jump mark-for-masquerade".to_string(), format!("goto {}", service_chain(port))]
        };
        parts.chains.push((external_chain(port), rules));
    }

    for endpoint in &all_endpoints(port) {
        let mut rules = Vec::new();
        // Hairpin: a pod reaching its own service must see the answer come from the service,
        // so it is masqueraded to the node.
        rules.push(format!("ip saddr {} jump mark-for-masquerade", endpoint.ip));
        if port.affinity_timeout_seconds.is_some() {
            rules.push(format!("update @{} {{ ip saddr }}", affinity_set(port, endpoint)));
        }
        rules.push(format!("meta l4proto {proto} dnat to {}:{}", endpoint.ip, endpoint.port));
        parts.chains.push((endpoint_chain(port, endpoint), rules));
    }
    parts
}

impl Ruleset {
    /// The transaction that turns the table rendered from `old` into this one by touching only
    /// the service ports that differ (upstream's partial sync): map elements deleted and added,
    /// chains of changed ports flushed and refilled, chains and sets of gone ones deleted.
    /// `None` when nothing differs; callers fall back to [`Ruleset::render`] when `old` is not
    /// known to be what the kernel holds, or when the pod bridge changed.
    pub fn render_update(&self, old: &Ruleset) -> Option<String> {
        use std::collections::{BTreeMap, BTreeSet};
        let bridge = quote(&self.pod_bridge);
        let parts_of = |ruleset: &Ruleset| -> BTreeMap<String, Parts> {
            ruleset.service_ports.iter().map(|p| (p.id(), port_parts(p, &bridge))).collect()
        };
        let (before, after) = (parts_of(old), parts_of(self));
        let changed: Vec<&String> = before
            .keys()
            .chain(after.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|id| before.get(*id) != after.get(*id))
            .collect();
        if changed.is_empty() {
            return None;
        }
        let gather = |parts: &BTreeMap<String, Parts>| {
            let mut elements = BTreeSet::new();
            let mut sets = BTreeMap::new();
            let mut chains = BTreeMap::new();
            for id in &changed {
                let Some(p) = parts.get(*id) else { continue };
                elements.extend(p.elements.iter().cloned());
                sets.extend(p.sets.iter().cloned());
                chains.extend(p.chains.iter().cloned());
            }
            (elements, sets, chains)
        };
        let (old_elements, old_sets, old_chains) = gather(&before);
        let (new_elements, new_sets, new_chains) = gather(&after);

        let mut out = String::new();
        let mut cmd = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        // Elements first out: nothing may point at a chain about to change or go.
        for (map, element) in old_elements.difference(&new_elements) {
            let key = element.split(" : ").next().unwrap_or(element);
            cmd(format!("delete element ip {TABLE} {map} {{ {key} }}"));
        }
        // Chains that change or go are emptied, which also drops their references to each
        // other and to affinity sets.
        let gone: Vec<&String> = old_chains.keys().filter(|n| !new_chains.contains_key(*n)).collect();
        // A set that goes or changes must first lose the rules that name it.
        let replaced_sets: Vec<String> =
            old_sets.iter().filter(|(n, t)| new_sets.get(*n) != Some(*t)).map(|(n, _)| format!("@{n} ")).collect();
        let names_replaced_set =
            |rules: &[String]| rules.iter().any(|r| replaced_sets.iter().any(|s| r.contains(s.as_str())));
        let refilled: Vec<&String> = new_chains
            .iter()
            .filter(|(n, rules)| old_chains.get(*n).is_some_and(|old| old != *rules || names_replaced_set(rules)))
            .map(|(n, _)| n)
            .collect();
        for name in gone.iter().chain(&refilled) {
            cmd(format!("flush chain ip {TABLE} {name}"));
        }
        // Sets that go or change (their timeout) are deleted, then the new ones made.
        for (name, timeout) in &old_sets {
            if new_sets.get(name) != Some(timeout) {
                cmd(format!("delete set ip {TABLE} {name}"));
            }
        }
        for (name, timeout) in &new_sets {
            if old_sets.get(name) != Some(timeout) {
                cmd(format!(
                    "add set ip {TABLE} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
                ));
            }
        }
        // New chains exist before any rule jumps to them; then every new or emptied chain is
        // filled.
        for name in new_chains.keys().filter(|n| !old_chains.contains_key(*n)) {
            cmd(format!("add chain ip {TABLE} {name}"));
        }
        for (name, rules) in &new_chains {
            if old_chains.contains_key(name) && !refilled.contains(&name) {
                continue;
            }
            for rule in rules {
                cmd(format!("add rule ip {TABLE} {name} {rule}"));
            }
        }
        for (map, element) in new_elements.difference(&old_elements) {
            cmd(format!("add element ip {TABLE} {map} {{ {element} }}"));
        }
        for name in &gone {
            cmd(format!("delete chain ip {TABLE} {name}"));
        }
        Some(out)
    }
}

/// Every endpoint that gets a chain: the cluster-wide choice and the local one (which may be a
/// local serving-terminating fallback the cluster-wide choice does not hold).
fn all_endpoints(port: &ServicePort) -> Vec<Endpoint> {
    let mut all: Vec<Endpoint> = port.endpoints.iter().chain(&port.local_endpoints).copied().collect();
    all.sort();
    all.dedup();
    all
}

/// The rules that pick one of `targets` for a new connection: a client's affinity first when
/// the service has ClientIP affinity, else a random one; `drop` when there is none.
fn dispatch(port: &ServicePort, targets: &[Endpoint]) -> Vec<String> {
    if targets.is_empty() {
        return vec!["drop".to_string()];
    }
    let mut rules = Vec::new();
    if port.affinity_timeout_seconds.is_some() {
        for endpoint in targets {
            rules.push(format!("ip saddr @{} goto {}", affinity_set(port, endpoint), endpoint_chain(port, endpoint)));
        }
    }
    let arms: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, endpoint)| format!("{i} : goto {}", endpoint_chain(port, endpoint)))
        .collect();
    rules.push(format!("numgen random mod {} vmap {{ {} }}", arms.len(), arms.join(", ")));
    rules
}

/// Replaces our table with the rendered `text` of `ruleset`, atomically.
pub async fn apply(ruleset: &Ruleset, text: &str) -> Result<(), NftError> {
    run_nft(&["-f", "-"], text).await?;
    let (active, endpoints) = ruleset.counts();
    tracing::debug!(
        table = TABLE,
        service_ports = ruleset.service_ports.len(),
        active,
        endpoints,
        "applied the service rules"
    );
    Ok(())
}

/// Applies a partial update from [`Ruleset::render_update`] in one transaction.
pub async fn apply_update(update: &str) -> Result<(), NftError> {
    run_nft(&["-f", "-"], update).await
}

/// Asks the kernel whether `ruleset` would apply, without applying it (`nft --check`).
pub async fn check(ruleset: &Ruleset) -> Result<(), NftError> {
    run_nft(&["--check", "-f", "-"], &ruleset.render()).await
}

/// Removes our table; succeeds when it is absent.
pub async fn delete_table() -> Result<(), NftError> {
    run_nft(&["-f", "-"], &format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")).await
}

#[cfg(test)]
#[path = "nftables_tests.rs"]
mod tests;

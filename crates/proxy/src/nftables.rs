//! The service datapath as one nftables table, `table ip kube-proxy`, laid out as upstream
//! kube-proxy's nftables mode lays it out (pkg/proxy/nftables): verdict maps from
//! `address . protocol . port` to a chain per service port, a chain per endpoint doing the
//! DNAT, `numgen random` spreading new connections, packets that need SNAT marked and
//! masqueraded in postrouting, and filter chains rejecting connections to services that have
//! no endpoints.
//!
//! The table is rendered whole from [`ServicePort`]s and applied in one `nft -f` transaction
//! (add table, delete table, table { ... }), so the kernel never holds half a ruleset and a
//! removed service leaves nothing behind.

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
    /// The whole table as `nft -f` input that replaces any previous version atomically.
    /// The rules of a rendered table: the statements inside its chains (map declarations,
    /// chain headers and map elements are not rules).
    pub fn rule_count(text: &str) -> usize {
        text.lines()
            .filter_map(|l| l.strip_prefix("\t\t"))
            .filter(|l| !l.starts_with('\t') && !l.starts_with("type ") && !l.starts_with("elements = "))
            .count()
    }

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

        // The verdict maps the dispatch chains look packets up in.
        let mut service_ips = Vec::new();
        let mut service_nodeports = Vec::new();
        let mut no_endpoint_services = Vec::new();
        let mut no_endpoint_nodeports = Vec::new();
        for port in &self.service_ports {
            let proto = port.protocol.nft_name();
            if port.endpoints.is_empty() {
                no_endpoint_services.push(format!("{} . {proto} . {} : goto reject-chain", port.cluster_ip, port.port));
                for ip in &port.external_ips {
                    no_endpoint_services.push(format!("{ip} . {proto} . {} : goto reject-chain", port.port));
                }
                if let Some(node_port) = port.node_port {
                    no_endpoint_nodeports.push(format!("{proto} . {node_port} : goto reject-chain"));
                }
                continue;
            }
            if port.internal_local && port.local_endpoints.is_empty() {
                // internalTrafficPolicy Local without an endpoint here: dropped, as upstream.
                no_endpoint_services.push(format!("{} . {proto} . {} : drop", port.cluster_ip, port.port));
            } else {
                service_ips.push(format!(
                    "{} . {proto} . {} : goto {}",
                    port.cluster_ip,
                    port.port,
                    service_chain(port)
                ));
            }
            for ip in &port.external_ips {
                service_ips.push(format!("{ip} . {proto} . {} : goto {}", port.port, external_chain(port)));
            }
            if let Some(node_port) = port.node_port {
                service_nodeports.push(format!("{proto} . {node_port} : goto {}", external_chain(port)));
            }
        }
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
        map(&mut line, "service-ips", addr_key, &service_ips);
        map(&mut line, "service-nodeports", port_key, &service_nodeports);
        map(&mut line, "no-endpoint-services", addr_key, &no_endpoint_services);
        map(&mut line, "no-endpoint-nodeports", port_key, &no_endpoint_nodeports);

        // Session affinity: one set of recent clients per endpoint, each entry expiring.
        for port in &self.service_ports {
            let Some(timeout) = port.affinity_timeout_seconds else { continue };
            for endpoint in &all_endpoints(port) {
                line(1, &format!("set {} {{", affinity_set(port, endpoint)));
                line(2, "type ipv4_addr");
                line(2, "flags dynamic,timeout");
                line(2, &format!("timeout {timeout}s"));
                line(1, "}");
            }
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

        let bridge = quote(&self.pod_bridge);
        for port in self.service_ports.iter().filter(|p| !p.endpoints.is_empty()) {
            let mut rules = Vec::new();
            // Not from this node's pods (the node itself, another host): SNAT, so the answer
            // comes back through this node to be un-NATed.
            rules.push(format!("iifname != {bridge} jump mark-for-masquerade"));
            let targets = if port.internal_local { &port.local_endpoints } else { &port.endpoints };
            rules.extend(dispatch(port, targets));
            chain(&mut line, &service_chain(port), &rules);

            if port.node_port.is_some() || !port.external_ips.is_empty() {
                let rules = if port.external_local {
                    // externalTrafficPolicy Local: from outside, only this node's endpoints and
                    // no masquerade; this node's pods and processes get the cluster policy
                    // (upstream does the same).
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
                chain(&mut line, &external_chain(port), &rules);
            }

            for endpoint in &all_endpoints(port) {
                let mut rules = Vec::new();
                // Hairpin: a pod reaching its own service must see the answer come from the
                // service, so it is masqueraded to the node.
                rules.push(format!("ip saddr {} jump mark-for-masquerade", endpoint.ip));
                if port.affinity_timeout_seconds.is_some() {
                    rules.push(format!("update @{} {{ ip saddr }}", affinity_set(port, endpoint)));
                }
                rules.push(format!(
                    "meta l4proto {} dnat to {}:{}",
                    port.protocol.nft_name(),
                    endpoint.ip,
                    endpoint.port
                ));
                chain(&mut line, &endpoint_chain(port, endpoint), &rules);
            }
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

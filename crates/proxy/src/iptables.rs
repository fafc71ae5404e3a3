//! The service datapath as iptables chains, laid out as upstream kube-proxy's iptables mode
//! lays them out (pkg/proxy/iptables): `KUBE-SERVICES` in the nat table matching each
//! service address and sending it to a `KUBE-SVC-<hash>` chain per service port, which picks an
//! endpoint with `-m statistic --mode random` and jumps to its `KUBE-SEP-<hash>` chain doing the
//! DNAT; `KUBE-EXT-`/`KUBE-SVL-` chains for NodePorts, external IPs and the `Local` traffic
//! policies; packets that need SNAT marked by `KUBE-MARK-MASQ` and masqueraded in
//! `KUBE-POSTROUTING`; and filter-table chains rejecting connections to services without
//! endpoints.
//!
//! Every sync is one `iptables-restore --noflush` input for the filter and nat tables: a
//! `:CHAIN` line flushes the chain it names, so the top-level chains are rewritten whole each
//! time while other programs' rules stay untouched; stale service chains are flushed and
//! deleted (`-X`) in the same input. A full sync ([`Ruleset::render`]) writes every service's
//! chains and finds stale ones with `iptables-save`; a partial one ([`Ruleset::render_update`])
//! rewrites only the chains of the service ports that changed, as upstream's partial syncs do.
//! The jumps from the builtin chains (PREROUTING, OUTPUT, ...) are installed with `iptables -C`
//! and `-I` on full syncs, as upstream's `EnsureRule`. [`cleanup`] removes all of it.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{ExitStatus, Stdio};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::serviceport::{Endpoint, ServicePort};

/// The mark of packets to masquerade (upstream's default `--masquerade-bit` 14).
const MASQUERADE_MARK: &str = "0x4000";

/// The top-level chains (upstream's names).
const SERVICES: &str = "KUBE-SERVICES";
const EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
const NODEPORTS: &str = "KUBE-NODEPORTS";
const POSTROUTING: &str = "KUBE-POSTROUTING";
const MARK_MASQ: &str = "KUBE-MARK-MASQ";
const FORWARD: &str = "KUBE-FORWARD";
const PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// Upstream's canary chain; never created here, but removed by [`cleanup`] if an upstream
/// kube-proxy left one.
const PROXY_CANARY: &str = "KUBE-PROXY-CANARY";

/// The top-level chains of each table, rewritten whole on every sync.
const FILTER_CHAINS: [&str; 5] = [SERVICES, EXTERNAL_SERVICES, FORWARD, NODEPORTS, PROXY_FIREWALL];
const NAT_CHAINS: [&str; 4] = [SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ];

/// The prefixes of the per-service-port nat chains (cluster policy, local policy, external,
/// firewall, endpoint).
const SERVICE_CHAIN_PREFIXES: [&str; 5] = ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-"];

/// Above this many endpoints the per-endpoint rules lose their comments, which makes the
/// restore input much smaller (upstream's "large cluster mode").
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// The `iptables-save` and `iptables-restore` wait for the xtables lock (seconds), as upstream.
const LOCK_WAIT_SECONDS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("starting {program}: {source}")]
    Spawn { program: &'static str, source: std::io::Error },
    #[error("writing the rules to {program}: {source}")]
    Write { program: &'static str, source: std::io::Error },
    #[error("waiting for {program}: {source}")]
    Wait { program: &'static str, source: std::io::Error },
    #[error("{program} failed ({status}): {stderr}")]
    Failed { program: &'static str, status: ExitStatus, stderr: String },
}

impl IptablesError {
    /// The iptables tools are not installed (nothing of ours can be in the kernel then).
    pub fn is_not_installed(&self) -> bool {
        matches!(self, IptablesError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// A jump from a builtin chain to one of ours (upstream's `iptablesJumpChains`).
struct Jump {
    table: &'static str,
    from: &'static str,
    to: &'static str,
    /// The match and comment before `-j`.
    args: &'static [&'static str],
}

/// How the jumps from the builtin chains match: new connections only, and upstream's comments.
const NEW_EXTERNAL: &[&str] = &[
    "-m",
    "conntrack",
    "--ctstate",
    "NEW",
    "-m",
    "comment",
    "--comment",
    "kubernetes externally-visible service portals",
];
const NEW_PORTALS: &[&str] =
    &["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes service portals"];
const NEW_FIREWALL: &[&str] =
    &["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes load balancer firewall"];
const PORTALS: &[&str] = &["-m", "comment", "--comment", "kubernetes service portals"];

const JUMPS: [Jump; 12] = [
    Jump { table: "filter", from: "INPUT", to: EXTERNAL_SERVICES, args: NEW_EXTERNAL },
    Jump { table: "filter", from: "FORWARD", to: EXTERNAL_SERVICES, args: NEW_EXTERNAL },
    Jump {
        table: "filter",
        from: "INPUT",
        to: NODEPORTS,
        args: &["-m", "comment", "--comment", "kubernetes health check service ports"],
    },
    Jump { table: "filter", from: "FORWARD", to: SERVICES, args: NEW_PORTALS },
    Jump { table: "filter", from: "OUTPUT", to: SERVICES, args: NEW_PORTALS },
    Jump {
        table: "filter",
        from: "FORWARD",
        to: FORWARD,
        args: &["-m", "comment", "--comment", "kubernetes forwarding rules"],
    },
    Jump { table: "filter", from: "INPUT", to: PROXY_FIREWALL, args: NEW_FIREWALL },
    Jump { table: "filter", from: "OUTPUT", to: PROXY_FIREWALL, args: NEW_FIREWALL },
    Jump { table: "filter", from: "FORWARD", to: PROXY_FIREWALL, args: NEW_FIREWALL },
    Jump { table: "nat", from: "OUTPUT", to: SERVICES, args: PORTALS },
    Jump { table: "nat", from: "PREROUTING", to: SERVICES, args: PORTALS },
    Jump {
        table: "nat",
        from: "POSTROUTING",
        to: POSTROUTING,
        args: &["-m", "comment", "--comment", "kubernetes postrouting rules"],
    },
];

/// What the chains are rendered from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// The pods' bridge: traffic arriving from it comes from this node's pods and is not
    /// masqueraded (upstream's `--detect-local-mode=BridgeInterface`).
    pub pod_bridge: String,
    pub service_ports: Vec<ServicePort>,
    /// Drop packets conntrack finds INVALID in forwarding (upstream does unless the kernel's
    /// `nf_conntrack_tcp_be_liberal` is set, see [`conntrack_tcp_liberal`]).
    pub drop_invalid: bool,
}

/// `namespace/name:port-name` (`namespace/name` for an unnamed port): upstream's
/// `ServicePortName.String()`, which chain hashes and comments are made from.
fn port_name(port: &ServicePort) -> String {
    if port.port_name.is_empty() {
        format!("{}/{}", port.namespace, port.name)
    } else {
        format!("{}/{}:{}", port.namespace, port.name, port.port_name)
    }
}

/// The first 16 characters of the base32 (RFC 4648, upper case) sha256 of `text`, as
/// upstream's chain names carry (iptables chain names are at most 28 characters).
pub fn hash16(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(text.as_bytes());
    // 16 characters of 5 bits are the first 10 bytes.
    let mut bits: u128 = 0;
    for byte in &digest[..10] {
        bits = (bits << 8) | u128::from(*byte);
    }
    (0..16).rev().map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char).collect()
}

/// The chains of one service port, named as upstream names them.
struct Names {
    /// `namespace/name:port` for comments.
    port: String,
    /// KUBE-SVC-: the cluster traffic policy's endpoints.
    cluster: String,
    /// KUBE-SVL-: the local traffic policy's endpoints.
    local: String,
    /// KUBE-EXT-: NodePorts and external IPs.
    external: String,
}

impl Names {
    fn of(port: &ServicePort) -> Names {
        let name = port_name(port);
        let hash = hash16(&format!("{name}{}", port.protocol.nft_name()));
        Names {
            cluster: format!("KUBE-SVC-{hash}"),
            local: format!("KUBE-SVL-{hash}"),
            external: format!("KUBE-EXT-{hash}"),
            port: name,
        }
    }

    /// KUBE-SEP-: one endpoint's DNAT.
    fn endpoint(&self, port: &ServicePort, endpoint: &Endpoint) -> String {
        let text = format!("{}{}{}:{}", self.port, port.protocol.nft_name(), endpoint.ip, endpoint.port);
        format!("KUBE-SEP-{}", hash16(&text))
    }
}

/// One service port's share of the rules: rules appended to the top-level chains of each
/// table, and its own nat chains (name, rules), which a partial sync leaves alone when the
/// port did not change.
#[derive(Debug, Default, PartialEq, Eq)]
struct Parts {
    filter: Vec<String>,
    nat: Vec<String>,
    chains: Vec<(String, Vec<String>)>,
}

/// `-A chain rest`.
fn append(chain: &str, rest: &str) -> String {
    format!("-A {chain} {rest}")
}

fn port_parts(port: &ServicePort, bridge: &str, large: bool) -> Parts {
    let mut parts = Parts::default();
    let names = Names::of(port);
    let name = &names.port;
    let proto = port.protocol.nft_name();
    let has_endpoints = !port.endpoints.is_empty();
    let externally_accessible = port.node_port.is_some() || !port.external_ips.is_empty();
    // Cluster endpoints also serve the short-circuit of local traffic to external
    // destinations when the external policy is Local (upstream's UsesClusterEndpoints).
    let uses_cluster = !port.internal_local || externally_accessible;
    let uses_local = port.internal_local || (externally_accessible && port.external_local);
    let local_endpoints: &[Endpoint] = if uses_local { &port.local_endpoints } else { &[] };
    let uses_cluster_chain = uses_cluster && has_endpoints;
    let uses_local_chain = !local_endpoints.is_empty();

    let internal_chain = if port.internal_local { &names.local } else { &names.cluster };
    let has_internal = has_endpoints && (!port.internal_local || !local_endpoints.is_empty());
    let external_policy_chain = if port.external_local { &names.local } else { &names.cluster };
    let has_external = has_endpoints && (!port.external_local || !local_endpoints.is_empty());
    let uses_external_chain = has_endpoints && externally_accessible;

    // What the filter table does with traffic that has nowhere to go: rejected when the
    // service has no endpoint at all, dropped when only the Local policy leaves none here.
    let (target, comment) = if has_endpoints {
        ("DROP", format!("\"{name} has no local endpoints\""))
    } else {
        ("REJECT", format!("\"{name} has no endpoints\""))
    };

    let match_port = |ip: &dyn std::fmt::Display, port_number: u16| -> String {
        format!("-m {proto} -p {proto} -d {ip} --dport {port_number}")
    };
    let cluster_ip = match_port(&port.cluster_ip, port.port);
    if has_internal {
        parts.nat.push(append(
            SERVICES,
            &format!("-m comment --comment \"{name} cluster IP\" {cluster_ip} -j {internal_chain}"),
        ));
    } else {
        parts.filter.push(append(SERVICES, &format!("-m comment --comment {comment} {cluster_ip} -j {target}")));
    }
    for ip in &port.external_ips {
        let matched = match_port(ip, port.port);
        if has_endpoints {
            parts.nat.push(append(
                SERVICES,
                &format!("-m comment --comment \"{name} external IP\" {matched} -j {}", names.external),
            ));
        }
        if !has_external {
            parts
                .filter
                .push(append(EXTERNAL_SERVICES, &format!("-m comment --comment {comment} {matched} -j {target}")));
        }
    }
    if let Some(node_port) = port.node_port {
        if has_endpoints {
            parts.nat.push(append(
                NODEPORTS,
                &format!("-m comment --comment {name} -m {proto} -p {proto} --dport {node_port} -j {}", names.external),
            ));
        }
        if !has_external {
            parts.filter.push(append(
                EXTERNAL_SERVICES,
                &format!(
                    "-m comment --comment {comment} -m addrtype --dst-type LOCAL -m {proto} -p {proto} \
                     --dport {node_port} -j {target}"
                ),
            ));
        }
    }
    if let Some(health) = port.health_check_node_port {
        // The health check server must be reachable whether or not this node has endpoints.
        parts.filter.push(append(
            NODEPORTS,
            &format!("-m comment --comment \"{name} health check node port\" -m tcp -p tcp --dport {health} -j ACCEPT"),
        ));
    }

    let mut cluster_rules = Vec::new();
    let mut local_rules = Vec::new();
    if has_internal {
        // Not from this node's pods (the node itself, another host): SNAT, so the answer comes
        // back through this node to be un-NATed.
        let rule = format!("-m comment --comment \"{name} cluster IP\" {cluster_ip} ! -i {bridge} -j {MARK_MASQ}");
        if port.internal_local { local_rules.push(rule) } else { cluster_rules.push(rule) }
    }
    if uses_external_chain {
        let ext = &names.external;
        let mut rules = Vec::new();
        if !port.external_local {
            // From outside the cluster through another node: always masqueraded.
            rules.push(format!(
                "-m comment --comment \"masquerade traffic for {name} external destinations\" -j {MARK_MASQ}"
            ));
        } else {
            // externalTrafficPolicy Local keeps the client's address, but this node's pods and
            // processes get the cluster policy, as if they went out to a load balancer and came
            // back (upstream's short circuit).
            rules.push(format!(
                "-m comment --comment \"pod traffic for {name} external destinations\" -i {bridge} -j {}",
                names.cluster
            ));
            rules.push(format!(
                "-m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" \
                 -m addrtype --src-type LOCAL -j {MARK_MASQ}"
            ));
            rules.push(format!(
                "-m comment --comment \"route LOCAL traffic for {name} external destinations\" \
                 -m addrtype --src-type LOCAL -j {}",
                names.cluster
            ));
        }
        if has_external {
            rules.push(format!("-j {external_policy_chain}"));
        }
        parts.chains.push((ext.clone(), rules));
    }
    if uses_cluster_chain {
        cluster_rules.extend(dispatch(port, &names, &port.endpoints, large));
        parts.chains.push((names.cluster.clone(), cluster_rules));
    }
    if uses_local_chain {
        local_rules.extend(dispatch(port, &names, local_endpoints, large));
        parts.chains.push((names.local.clone(), local_rules));
    }

    // Every endpoint either policy chain can reach gets its DNAT chain.
    let mut reachable: Vec<Endpoint> = Vec::new();
    if uses_cluster_chain {
        reachable.extend(&port.endpoints);
    }
    reachable.extend(local_endpoints);
    reachable.sort();
    reachable.dedup();
    let comment = if large { String::new() } else { format!("-m comment --comment {name} ") };
    for endpoint in &reachable {
        let chain = names.endpoint(port, endpoint);
        // Hairpin: a pod reaching its own service must see the answer come from the service,
        // so it is masqueraded to the node.
        let mut rules = vec![format!("{comment}-s {} -j {MARK_MASQ}", endpoint.ip)];
        let recent = if port.affinity_timeout_seconds.is_some() {
            format!("-m recent --name {chain} --set ")
        } else {
            String::new()
        };
        rules.push(format!(
            "{comment}{recent}-m {proto} -p {proto} -j DNAT --to-destination {}:{}",
            endpoint.ip, endpoint.port
        ));
        parts.chains.push((chain, rules));
    }
    parts
}

/// The rules of a policy chain that pick one of `endpoints` for a new connection: a client's
/// recent endpoint first when the service has ClientIP affinity, else endpoint i with
/// probability 1/(n-i), which spreads connections evenly.
fn dispatch(port: &ServicePort, names: &Names, endpoints: &[Endpoint], large: bool) -> Vec<String> {
    let comment = |endpoint: &Endpoint| {
        if large {
            String::new()
        } else {
            format!("-m comment --comment \"{} -> {}:{}\" ", names.port, endpoint.ip, endpoint.port)
        }
    };
    let mut rules = Vec::new();
    if let Some(timeout) = port.affinity_timeout_seconds {
        for endpoint in endpoints {
            let chain = names.endpoint(port, endpoint);
            rules.push(format!(
                "{}-m recent --name {chain} --rcheck --seconds {timeout} --reap -j {chain}",
                comment(endpoint)
            ));
        }
    }
    let n = endpoints.len();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let chain = names.endpoint(port, endpoint);
        if i + 1 < n {
            rules.push(format!(
                "{}-m statistic --mode random --probability {} -j {chain}",
                comment(endpoint),
                probability(n - i)
            ));
        } else {
            rules.push(format!("{}-j {chain}", comment(endpoint)));
        }
    }
    rules
}

/// 1/n with ten decimals, as upstream writes it.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

fn is_service_chain(name: &str) -> bool {
    SERVICE_CHAIN_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

impl Ruleset {
    fn large(&self) -> bool {
        self.service_ports.iter().map(|p| p.endpoints.len()).sum::<usize>() > LARGE_CLUSTER_ENDPOINTS
    }

    fn parts(&self) -> Vec<Parts> {
        let large = self.large();
        self.service_ports.iter().map(|port| port_parts(port, &self.pod_bridge, large)).collect()
    }

    /// The per-service chains this ruleset has in the nat table.
    fn service_chains(&self) -> BTreeSet<String> {
        self.parts().into_iter().flat_map(|p| p.chains.into_iter().map(|(name, _)| name)).collect()
    }

    /// How many rules the filter and nat tables get (upstream's `iptables_total` of both).
    pub fn rule_count(&self) -> usize {
        let ports: usize = self
            .parts()
            .iter()
            .map(|p| p.filter.len() + p.nat.len() + p.chains.iter().map(|c| c.1.len()).sum::<usize>())
            .sum();
        // And KUBE-SERVICES' last rule, the jump to KUBE-NODEPORTS.
        let fixed = self.fixed_filter_rules().len() + self.fixed_nat_rules().len() + 1;
        ports + fixed
    }

    /// The rules of the top-level chains that belong to no service.
    fn fixed_filter_rules(&self) -> Vec<String> {
        let mut rules = Vec::new();
        if self.drop_invalid {
            // An out-of-window packet conntrack calls INVALID would otherwise be forwarded
            // un-NATed and reset the connection (kubernetes issue 74839).
            rules.push(append(FORWARD, "-m conntrack --ctstate INVALID -j DROP"));
        }
        rules.push(append(
            FORWARD,
            &format!(
                "-m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j ACCEPT"
            ),
        ));
        rules.push(append(
            FORWARD,
            "-m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ));
        rules
    }

    fn fixed_nat_rules(&self) -> Vec<String> {
        vec![
            append(POSTROUTING, &format!("-m mark ! --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j RETURN")),
            // The mark is cleared so a packet crossing the stack again is not masqueraded twice.
            append(POSTROUTING, &format!("-j MARK --xor-mark {MASQUERADE_MARK}")),
            append(
                POSTROUTING,
                "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
            ),
            append(MARK_MASQ, &format!("-j MARK --or-mark {MASQUERADE_MARK}")),
        ]
    }

    /// The whole ruleset as `iptables-restore --noflush` input, deleting the service chains of
    /// `existing` (the nat table's chains, from `iptables-save`) that are no longer used.
    pub fn render(&self, existing: &BTreeSet<String>) -> String {
        self.render_from(None, existing)
    }

    /// The input that turns the rules rendered from `old` (what the kernel holds) into these,
    /// rewriting the top-level chains and only the service chains of ports that changed
    /// (upstream's partial sync); `None` when nothing differs.
    pub fn render_update(&self, old: &Ruleset) -> Option<String> {
        if self == old {
            return None;
        }
        if self.pod_bridge != old.pod_bridge || self.large() != old.large() {
            // Every chain changes.
            return Some(self.render_from(None, &old.service_chains()));
        }
        Some(self.render_from(Some(old), &old.service_chains()))
    }

    fn render_from(&self, old: Option<&Ruleset>, existing: &BTreeSet<String>) -> String {
        // The ports rendered the same way before: their chains are in the kernel as they are.
        let before: BTreeMap<String, &ServicePort> =
            old.map(|old| old.service_ports.iter().map(|p| (p.id(), p)).collect()).unwrap_or_default();
        let parts = self.parts();

        let mut filter = String::from("*filter\n");
        for chain in FILTER_CHAINS {
            filter.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for part in &parts {
            for rule in &part.filter {
                filter.push_str(rule);
                filter.push('\n');
            }
        }
        for rule in self.fixed_filter_rules() {
            filter.push_str(&rule);
            filter.push('\n');
        }
        filter.push_str("COMMIT\n");

        let mut chains = String::new();
        let mut rules = String::new();
        for chain in NAT_CHAINS {
            chains.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for rule in self.fixed_nat_rules() {
            rules.push_str(&rule);
            rules.push('\n');
        }
        let mut active = BTreeSet::new();
        for (port, part) in self.service_ports.iter().zip(&parts) {
            for rule in &part.nat {
                rules.push_str(rule);
                rules.push('\n');
            }
            let skip = before.get(&port.id()) == Some(&port);
            for (name, chain_rules) in &part.chains {
                active.insert(name.as_str());
                if skip {
                    continue;
                }
                chains.push_str(&format!(":{name} - [0:0]\n"));
                for rule in chain_rules {
                    rules.push_str(&append(name, rule));
                    rules.push('\n');
                }
            }
        }
        // Stale chains: a chain line flushes them (dropping their jumps to each other), then
        // they go.
        for name in existing.iter().filter(|n| is_service_chain(n) && !active.contains(n.as_str())) {
            chains.push_str(&format!(":{name} - [0:0]\n"));
            rules.push_str(&format!("-X {name}\n"));
        }
        // NodePorts on every local address but loopback (upstream's default without
        // route_localnet, and what the nftables backend does); last, after every service IP.
        rules.push_str(&append(
            SERVICES,
            "-m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" \
             -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS\n",
        ));
        format!("{filter}*nat\n{chains}{rules}COMMIT\n")
    }
}

/// Whether the kernel accepts out-of-window TCP packets (`nf_conntrack_tcp_be_liberal`), in
/// which case upstream installs no INVALID drop.
pub fn conntrack_tcp_liberal() -> bool {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal").is_ok_and(|v| v.trim() != "0")
}

/// Applies the whole `ruleset`: stale service chains found with `iptables-save`, the restore,
/// then the jumps from the builtin chains.
pub async fn apply(ruleset: &Ruleset) -> Result<(), IptablesError> {
    let saved = run(IPTABLES_SAVE, &["-t", "nat"], None).await?;
    let existing = chains_of(&saved);
    restore(&ruleset.render(&existing)).await?;
    ensure_jumps().await?;
    tracing::debug!(service_ports = ruleset.service_ports.len(), "applied the service iptables rules");
    Ok(())
}

/// Applies a partial update from [`Ruleset::render_update`].
pub async fn apply_update(update: &str) -> Result<(), IptablesError> {
    restore(update).await
}

async fn restore(input: &str) -> Result<(), IptablesError> {
    let result = run(IPTABLES_RESTORE, &["-w", LOCK_WAIT_SECONDS, "--noflush"], Some(input)).await;
    if let Err(IptablesError::Failed { stderr, .. }) = &result {
        // Log the lines around the one it names, as upstream does.
        if let Some(line) = failed_line(stderr) {
            let around: Vec<&str> = input.lines().skip(line.saturating_sub(4)).take(7).collect();
            tracing::warn!(line, rules = ?around, "iptables-restore refused the rules");
        }
    }
    result.map(drop)
}

/// The input line `iptables-restore` says failed: "line 12 failed" (legacy), "Error occurred at
/// line: 12" (iptables-nft).
fn failed_line(stderr: &str) -> Option<usize> {
    let rest = stderr.split("line").nth(1)?;
    rest.trim_start_matches([':', ' ']).split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Installs each jump from a builtin chain unless it is there (`-C`, then `-I` at the top).
async fn ensure_jumps() -> Result<(), IptablesError> {
    for jump in &JUMPS {
        let mut args = vec!["-w", LOCK_WAIT_SECONDS, "-t", jump.table, "-C", jump.from];
        args.extend(jump.args);
        args.extend(["-j", jump.to]);
        match run(IPTABLES, &args, None).await {
            Ok(_) => continue,
            // 1: no such rule.
            Err(IptablesError::Failed { status, .. }) if status.code() == Some(1) => {}
            Err(error) => return Err(error),
        }
        args[4] = "-I";
        run(IPTABLES, &args, None).await?;
        tracing::debug!(table = jump.table, from = jump.from, to = jump.to, "installed an iptables jump");
    }
    Ok(())
}

/// The chains `iptables-save` output declares (`:NAME POLICY [counters]`).
fn chains_of(saved: &str) -> BTreeSet<String> {
    saved
        .lines()
        .filter_map(|line| line.strip_prefix(':'))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Whether `chain` is one of ours in `table`.
fn is_ours(table: &str, chain: &str) -> bool {
    match table {
        "nat" => NAT_CHAINS.contains(&chain) || chain == PROXY_CANARY || is_service_chain(chain),
        "filter" => FILTER_CHAINS.contains(&chain) || chain == PROXY_CANARY,
        _ => false,
    }
}

/// The `iptables-restore --noflush` input that removes, from the `iptables-save` output
/// `saved`, every jump to our chains and then our chains; `None` when there is nothing of ours.
pub fn render_cleanup(saved: &str) -> Option<String> {
    let mut out = String::new();
    let mut table = "";
    let mut chains = Vec::new();
    let mut deletes = Vec::new();
    fn flush(out: &mut String, table: &str, chains: &mut Vec<String>, deletes: &mut Vec<String>) {
        if !chains.is_empty() || !deletes.is_empty() {
            out.push_str(&format!("*{table}\n"));
            for chain in chains.iter() {
                out.push_str(&format!(":{chain} - [0:0]\n"));
            }
            for delete in deletes.iter() {
                out.push_str(delete);
                out.push('\n');
            }
            for chain in chains.iter() {
                out.push_str(&format!("-X {chain}\n"));
            }
            out.push_str("COMMIT\n");
        }
        chains.clear();
        deletes.clear();
    }
    for line in saved.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = match name {
                "nat" => "nat",
                "filter" => "filter",
                _ => "",
            };
        } else if line == "COMMIT" {
            flush(&mut out, table, &mut chains, &mut deletes);
            table = "";
        } else if let Some(chain) = line.strip_prefix(':').and_then(|l| l.split_whitespace().next()) {
            if is_ours(table, chain) {
                chains.push(chain.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            // A rule in someone else's chain jumping to one of ours (ours are flushed whole).
            let from = rule.split_whitespace().next().unwrap_or_default();
            let target = rule.split(" -j ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or_default();
            if !is_ours(table, from) && is_ours(table, target) {
                deletes.push(format!("-D {rule}"));
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Removes every rule and chain of ours from the filter and nat tables (upstream's
/// `CleanupLeftovers`); succeeds when there are none or iptables is not installed.
pub async fn cleanup() -> Result<(), IptablesError> {
    let saved = match run(IPTABLES_SAVE, &[], None).await {
        Ok(saved) => saved,
        Err(error) if error.is_not_installed() => return Ok(()),
        Err(error) => return Err(error),
    };
    if let Some(input) = render_cleanup(&saved) {
        restore(&input).await?;
        tracing::info!("removed the service proxy's iptables rules");
    }
    Ok(())
}

const IPTABLES: &str = "iptables";
const IPTABLES_SAVE: &str = "iptables-save";
const IPTABLES_RESTORE: &str = "iptables-restore";

/// Where `program` is: Debian puts the iptables tools in /usr/sbin, which a non-login PATH may
/// lack.
fn program_path(program: &str) -> String {
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| format!("{dir}/{program}"))
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or_else(|| program.to_string())
}

/// Runs `program` with `args`, `input` on its standard input; its standard output.
async fn run(program: &'static str, args: &[&str], input: Option<&str>) -> Result<String, IptablesError> {
    let mut child = tokio::process::Command::new(program_path(program))
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| IptablesError::Spawn { program, source })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // iptables-restore reads all of its input before it answers, so writing before
        // reading its output cannot deadlock; dropping stdin closes it.
        match stdin.write_all(input.as_bytes()).await {
            Ok(()) => {}
            // It exited early: its status and stderr below say why.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(source) => return Err(IptablesError::Write { program, source }),
        }
    }
    let output = child.wait_with_output().await.map_err(|source| IptablesError::Wait { program, source })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    // Short: iptables-restore names the failing line, not the input.
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    Err(IptablesError::Failed { program, status: output.status, stderr })
}

#[cfg(test)]
#[path = "iptables_tests.rs"]
mod tests;

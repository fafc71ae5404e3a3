//! The node's packet rules: one nftables table of our own, rendered whole from typed values
//! and applied atomically with `nft -f -` (upstream kube-proxy's nftables mode also drives the
//! `nft` binary, through knftables).
//!
//! The table does what flannel's masquerade rules and the CNI `portmap` plugin do:
//! - pods reaching anything outside the cluster's pod networks leave with the node's address;
//! - hostPorts: traffic to a node address and a hostPort is DNATed to the pod, from outside
//!   (prerouting) and from the node itself (output);
//! - a hostPort reached through localhost, or by a pod on the same bridge (hairpin), is also
//!   masqueraded, so the pod's answer comes back through the node and is un-NATed.
//!
//! Rendering replaces the whole table in one transaction (`add table`, `delete table`, then
//! the table), so a reader never sees half a ruleset and stale rules never survive.

use std::net::Ipv4Addr;
use std::process::{ExitStatus, Stdio};

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;

/// Our table, `table ip tugboat-network`.
pub const TABLE: &str = "tugboat-network";

/// The `nft` binary: Debian puts it in /usr/sbin, which a non-login PATH may lack.
const NFT_PATHS: [&str; 2] = ["/usr/sbin/nft", "/sbin/nft"];

/// nftables refuses comments longer than this (NFT_USERDATA_MAXLEN).
const MAX_COMMENT_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("starting nft: {source}")]
    Spawn { source: std::io::Error },
    #[error("writing the ruleset to nft: {source}")]
    Write { source: std::io::Error },
    #[error("waiting for nft: {source}")]
    Wait { source: std::io::Error },
    #[error("nft failed ({status}): {stderr}")]
    Failed { status: ExitStatus, stderr: String },
}

/// One hostPort mapping of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPortRule {
    pub sandbox_id: String,
    pub pod_ip: Ipv4Addr,
    pub port: crate::HostPort,
}

/// Everything the table holds; [`render`](Self::render) turns it into `nft -f` input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// The pods' bridge, e.g. "cni0".
    pub bridge: String,
    /// This node's podCIDR; no masquerade of pod egress until it is known.
    pub pod_cidr: Option<Ipv4Net>,
    /// Every node's podCIDR (the cluster's pod networks).
    pub cluster_cidrs: Vec<Ipv4Net>,
    pub host_ports: Vec<HostPortRule>,
}

impl Ruleset {
    /// The whole table as `nft -f` input that replaces any previous version atomically:
    /// "add table ip T\ndelete table ip T\ntable ip T { ... }" (add-then-delete so it works
    /// whether or not the table exists).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, indent: usize, text: &str| {
            out.push_str(&"\t".repeat(indent));
            out.push_str(text);
            out.push('\n');
        };
        line(&mut out, 0, &format!("add table ip {TABLE}"));
        line(&mut out, 0, &format!("delete table ip {TABLE}"));
        line(&mut out, 0, &format!("table ip {TABLE} {{"));

        // An interval set refuses overlapping elements, and the node's own podCIDR belongs to
        // the cluster's pod networks even before the Node list shows it: merge them all.
        let mut cidrs: Vec<Ipv4Net> = self.cluster_cidrs.iter().map(Ipv4Net::trunc).collect();
        cidrs.extend(self.pod_cidr.map(|cidr| cidr.trunc()));
        let cidrs = Ipv4Net::aggregate(&cidrs);
        line(&mut out, 1, "set cluster-cidrs {");
        line(&mut out, 2, "type ipv4_addr");
        line(&mut out, 2, "flags interval");
        if !cidrs.is_empty() {
            let elements: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
            line(&mut out, 2, &format!("elements = {{ {} }}", elements.join(", ")));
        }
        line(&mut out, 1, "}");

        let bridge = quote(&self.bridge);
        line(&mut out, 1, "chain postrouting {");
        line(&mut out, 2, "type nat hook postrouting priority srcnat; policy accept;");
        if let Some(pod_cidr) = self.pod_cidr {
            line(
                &mut out,
                2,
                &format!("ip saddr {} ip daddr != @cluster-cidrs ip daddr != 224.0.0.0/4 masquerade", pod_cidr.trunc()),
            );
        }
        line(&mut out, 2, &format!("ct status dnat ip saddr 127.0.0.0/8 oifname {bridge} masquerade"));
        if let Some(pod_cidr) = self.pod_cidr {
            // Hairpin: a pod reaching a hostPort that lands on a pod of this node (itself
            // included). Matched by addresses, not interfaces: with br_netfilter loaded the
            // DNATed packet may be bridged straight back rather than routed, and the answer must
            // still come back through the node to be un-NATed.
            let cidr = pod_cidr.trunc();
            line(&mut out, 2, &format!("ct status dnat ip saddr {cidr} ip daddr {cidr} masquerade"));
        }
        line(&mut out, 1, "}");

        line(&mut out, 1, "chain prerouting {");
        line(&mut out, 2, "type nat hook prerouting priority dstnat; policy accept;");
        line(&mut out, 2, "fib daddr type local jump hostports");
        line(&mut out, 1, "}");

        line(&mut out, 1, "chain output {");
        line(&mut out, 2, "type nat hook output priority -100; policy accept;");
        line(&mut out, 2, "fib daddr type local jump hostports");
        line(&mut out, 1, "}");

        line(&mut out, 1, "chain hostports {");
        for rule in &self.host_ports {
            line(&mut out, 2, &host_port_rule(rule));
        }
        line(&mut out, 1, "}");

        line(&mut out, 0, "}");
        out
    }
}

/// `[ip daddr H] tcp dport 8080 dnat to 10.42.0.5:80 comment "<sandbox>"`
fn host_port_rule(rule: &HostPortRule) -> String {
    let port = &rule.port;
    let mut text = String::new();
    if let Some(host_ip) = port.host_ip {
        text.push_str(&format!("ip daddr {host_ip} "));
    }
    text.push_str(&format!(
        "{} dport {} dnat to {}:{} comment {}",
        port.protocol.nft_name(),
        port.host_port,
        rule.pod_ip,
        port.container_port,
        quote(&rule.sandbox_id)
    ));
    text
}

/// A double-quoted nft string. Our strings are interface names and sandbox ids; anything that
/// would end the string or the line is dropped rather than escaped (nft has no escapes), and
/// the length is capped to what nft accepts.
pub fn quote(text: &str) -> String {
    let mut clean: String = text.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
    while clean.len() > MAX_COMMENT_LEN {
        clean.pop();
    }
    format!("\"{clean}\"")
}

/// Replaces our table with `ruleset`, atomically.
pub async fn apply(ruleset: &Ruleset) -> Result<(), NftError> {
    run_nft(&["-f", "-"], &ruleset.render()).await?;
    tracing::debug!(
        table = TABLE,
        host_ports = ruleset.host_ports.len(),
        cluster_cidrs = ruleset.cluster_cidrs.len(),
        "applied the nftables ruleset"
    );
    Ok(())
}

/// Asks the kernel whether `ruleset` would apply, without applying it (`nft --check`).
pub async fn check(ruleset: &Ruleset) -> Result<(), NftError> {
    run_nft(&["--check", "-f", "-"], &ruleset.render()).await
}

/// Removes our table; succeeds when it is absent.
pub async fn delete_table() -> Result<(), NftError> {
    // Add-then-delete in one transaction: no error for a missing table.
    run_nft(&["-f", "-"], &format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")).await?;
    tracing::debug!(table = TABLE, "deleted the nftables table");
    Ok(())
}

/// The `nft` binary to run (Debian puts it in /usr/sbin, which a non-login PATH may lack).
pub fn nft_program() -> &'static str {
    NFT_PATHS.into_iter().find(|path| std::path::Path::new(path).exists()).unwrap_or("nft")
}

/// Runs `nft` with `args`, `input` on its standard input (a whole transaction with `-f -`).
/// Shared by every component that owns an nftables table (the pod network, the service proxy).
pub async fn run_nft(args: &[&str], input: &str) -> Result<(), NftError> {
    let mut child = tokio::process::Command::new(nft_program())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NftError::Spawn { source })?;
    if let Some(mut stdin) = child.stdin.take() {
        // nft reads all of its input before it answers, so writing before reading stderr
        // cannot deadlock; dropping stdin closes it so nft sees the end.
        match stdin.write_all(input.as_bytes()).await {
            Ok(()) => {}
            // nft exited early: its status and stderr below say why.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(source) => return Err(NftError::Write { source }),
        }
    }
    let output = child.wait_with_output().await.map_err(|source| NftError::Wait { source })?;
    if output.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    // A huge ruleset's error can be long: keep the log line readable.
    if stderr.len() > 4000 {
        let mut cut = 4000;
        while !stderr.is_char_boundary(cut) {
            cut -= 1;
        }
        stderr.truncate(cut);
        stderr.push_str(" ...");
    }
    tracing::warn!(status = %output.status, %stderr, args = ?args, "nft failed");
    Err(NftError::Failed { status: output.status, stderr })
}

#[cfg(test)]
#[path = "nftables_tests.rs"]
mod tests;

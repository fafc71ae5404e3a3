//! Rendering of the table, and (as root) the kernel's verdict on it. Every test that talks to
//! the kernel does so from a thread moved into a new network namespace, so no rule ever lands
//! in the host's own namespace; the namespace vanishes with the thread.
// unshare(CLONE_NEWNET) is an unsafe call in rustix 1 (see `in_new_netns`).
#![allow(unsafe_code)]

use super::*;
use crate::{HostPort, Protocol};

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

fn rule(sandbox_id: &str, pod_ip: &str, protocol: Protocol, host_port: u16, container_port: u16) -> HostPortRule {
    HostPortRule {
        sandbox_id: sandbox_id.to_string(),
        pod_ip: pod_ip.parse().unwrap(),
        port: HostPort { protocol, host_port, container_port, host_ip: None },
    }
}

fn full_ruleset() -> Ruleset {
    let mut on_host_ip = rule("sandbox-c", "10.42.0.7", Protocol::Sctp, 9000, 9001);
    on_host_ip.port.host_ip = Some("192.0.2.10".parse().unwrap());
    Ruleset {
        bridge: "cni0".to_string(),
        pod_cidr: Some(net("10.42.0.0/24")),
        cluster_cidrs: vec![net("10.42.0.0/24"), net("10.42.1.0/24"), net("10.42.2.0/24")],
        host_ports: vec![
            rule("sandbox-a", "10.42.0.5", Protocol::Tcp, 8080, 80),
            rule("sandbox-b", "10.42.0.6", Protocol::Udp, 5353, 53),
            on_host_ip,
        ],
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(|line| line.trim().to_string()).collect()
}

#[test]
fn render_replaces_the_table_in_one_transaction() {
    let text = full_ruleset().render();
    let lines = lines(&text);
    assert_eq!(lines[0], "add table ip tugboat-network");
    assert_eq!(lines[1], "delete table ip tugboat-network");
    assert_eq!(lines[2], "table ip tugboat-network {");
    assert_eq!(lines.last().unwrap(), "}");
}

#[test]
fn render_masquerades_pod_egress_leaving_the_cluster_networks() {
    let lines = lines(&full_ruleset().render());
    assert!(lines.contains(&"type nat hook postrouting priority srcnat; policy accept;".to_string()));
    assert!(
        lines.contains(
            &"ip saddr 10.42.0.0/24 ip daddr != @cluster-cidrs ip daddr != 224.0.0.0/4 masquerade".to_string()
        ),
        "{lines:#?}"
    );
    // Adjacent podCIDRs merge: an interval set refuses overlaps.
    assert!(lines.contains(&"elements = { 10.42.0.0/23, 10.42.2.0/24 }".to_string()), "{lines:#?}");
    assert!(lines.contains(&"flags interval".to_string()));
}

#[test]
fn render_masquerades_hostports_reached_from_localhost_and_hairpin() {
    let lines = lines(&full_ruleset().render());
    assert!(lines.contains(&r#"ct status dnat ip saddr 127.0.0.0/8 oifname "cni0" masquerade"#.to_string()));
    assert!(lines.contains(&"ct status dnat ip saddr 10.42.0.0/24 ip daddr 10.42.0.0/24 masquerade".to_string()));
}

#[test]
fn render_sends_local_destinations_through_the_hostports_chain() {
    let text = full_ruleset().render();
    let lines = lines(&text);
    assert!(lines.contains(&"type nat hook prerouting priority dstnat; policy accept;".to_string()));
    assert!(lines.contains(&"type nat hook output priority -100; policy accept;".to_string()));
    assert_eq!(
        lines.iter().filter(|line| *line == "fib daddr type local jump hostports").count(),
        2,
        "from outside (prerouting) and from the node (output)"
    );
}

#[test]
fn render_writes_one_dnat_rule_per_host_port() {
    let lines = lines(&full_ruleset().render());
    for expected in [
        r#"tcp dport 8080 dnat to 10.42.0.5:80 comment "sandbox-a""#,
        r#"udp dport 5353 dnat to 10.42.0.6:53 comment "sandbox-b""#,
        r#"ip daddr 192.0.2.10 sctp dport 9000 dnat to 10.42.0.7:9001 comment "sandbox-c""#,
    ] {
        assert!(lines.contains(&expected.to_string()), "missing {expected}: {lines:#?}");
    }
}

#[test]
fn render_without_pod_cidr_has_no_egress_masquerade_and_an_empty_set() {
    let ruleset = Ruleset { bridge: "cni0".to_string(), ..Ruleset::default() };
    let text = ruleset.render();
    assert!(!text.contains("ip saddr 10."), "{text}");
    assert!(!text.contains("elements"), "an empty set has no elements line: {text}");
    assert!(text.contains("chain hostports {"));
    assert!(!text.contains("ip daddr 10."), "no hairpin rule without a podCIDR: {text}");
}

#[test]
fn render_keeps_quotes_and_newlines_out_of_strings() {
    let mut ruleset = full_ruleset();
    ruleset.host_ports[0].sandbox_id = "evil\" accept\n# x".to_string();
    let text = ruleset.render();
    assert!(text.contains(r#"comment "evil accept# x""#), "{text}");
    ruleset.host_ports[0].sandbox_id = "x".repeat(300);
    let text = ruleset.render();
    assert!(text.contains(&format!("comment \"{}\"", "x".repeat(128))));
    assert!(!text.contains(&"x".repeat(129)));
}

/// Root tests skip outside CI when not root, and fail under `CI=true`.
fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} needs root for nftables (CI=true)");
    eprintln!("skipping {test}: needs root for nftables");
    false
}

/// Runs `body` on a thread of its own in a new, empty network namespace (gone when the thread
/// ends), with a current-thread tokio runtime: `nft`, spawned from that thread, inherits the
/// namespace.
fn in_new_netns<T: Send>(body: impl AsyncFnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: only CLONE_NEWNET is unshared, which changes this thread's network
                // namespace and nothing another thread can observe (no descriptor table or
                // filesystem state is unshared).
                unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                    .expect("unshare(CLONE_NEWNET)");
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(body())
            })
            .join()
            .unwrap()
    })
}

async fn list_table() -> std::process::Output {
    tokio::process::Command::new(nft_program()).args(["list", "table", "ip", TABLE]).output().await.unwrap()
}

#[test]
fn kernel_accepts_rendered_rulesets() {
    if !require_root("kernel_accepts_rendered_rulesets") {
        return;
    }
    let without_pod_cidr =
        Ruleset { bridge: "cni0".to_string(), host_ports: full_ruleset().host_ports, ..Ruleset::default() };
    let empty = Ruleset { bridge: "cni0".to_string(), ..Ruleset::default() };
    let overlapping = Ruleset {
        cluster_cidrs: vec![net("10.42.0.0/16"), net("10.42.3.0/24"), net("10.42.3.0/24")],
        ..full_ruleset()
    };
    in_new_netns(async || {
        for ruleset in [full_ruleset(), without_pod_cidr, empty, overlapping] {
            if let Err(error) = check(&ruleset).await {
                panic!("nft --check refused:\n{}\n{error}", ruleset.render());
            }
        }
        // And it can fail: a rule nft does not understand is refused.
        let broken = run_nft(&["--check", "-f", "-"], "table ip tugboat-network { chain c { bogus } }\n").await;
        assert!(matches!(broken, Err(NftError::Failed { .. })), "{broken:?}");
    });
}

#[test]
fn applied_ruleset_is_listed_and_replaced_whole_in_a_new_netns() {
    if !require_root("applied_ruleset_is_listed_and_replaced_whole_in_a_new_netns") {
        return;
    }
    in_new_netns(async || {
        // Absent table: deleting it is fine.
        delete_table().await.unwrap();
        assert!(!list_table().await.status.success(), "a new namespace has no table");

        let ruleset = full_ruleset();
        apply(&ruleset).await.unwrap();
        let listed = list_table().await;
        assert!(listed.status.success(), "{listed:?}");
        let listed = String::from_utf8(listed.stdout).unwrap();
        assert!(listed.contains(r#"tcp dport 8080 dnat to 10.42.0.5:80 comment "sandbox-a""#), "{listed}");
        assert!(listed.contains("masquerade"), "{listed}");

        // A second apply replaces the table: the removed mapping is gone, the new one there.
        let mut next = ruleset.clone();
        next.host_ports = vec![rule("sandbox-d", "10.42.0.9", Protocol::Tcp, 8443, 443)];
        apply(&next).await.unwrap();
        let listed = String::from_utf8(list_table().await.stdout).unwrap();
        assert!(!listed.contains("sandbox-a"), "{listed}");
        assert!(listed.contains(r#"tcp dport 8443 dnat to 10.42.0.9:443 comment "sandbox-d""#), "{listed}");

        delete_table().await.unwrap();
        assert!(!list_table().await.status.success(), "the table is gone");
        delete_table().await.unwrap();
    });
}

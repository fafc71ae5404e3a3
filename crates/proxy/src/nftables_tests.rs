//! Rendering of the table, and (as root) the kernel's verdict on it. Tests that talk to the
//! kernel do so from a thread moved into a new network namespace, so no rule ever lands in the
//! host's own namespace; the namespace vanishes with the thread.
use super::*;
use crate::serviceport::Protocol;
use crate::test_support::{ep, has, in_new_netns, port, require_root};
use tug_network::nftables::nft_program;

fn full_ruleset() -> Ruleset {
    let mut node_port = port("np", "", Protocol::Tcp, "10.43.0.7", 80, vec![ep("10.42.1.5", 8080)]);
    node_port.node_port = Some(30080);
    node_port.external_ips = vec!["192.0.2.7".parse().unwrap()];
    let mut sticky = port("sticky", "", Protocol::Tcp, "10.43.0.8", 80, vec![ep("10.42.0.9", 80), ep("10.42.1.9", 80)]);
    sticky.affinity_timeout_seconds = Some(60);
    let mut local =
        port("local", "", Protocol::Tcp, "10.43.0.12", 80, vec![ep("10.42.0.12", 80), ep("10.42.1.12", 80)]);
    local.node_port = Some(30100);
    local.external_local = true;
    let mut remote_only = port("remote", "", Protocol::Tcp, "10.43.0.13", 80, vec![ep("10.42.1.13", 80)]);
    remote_only.node_port = Some(30101);
    remote_only.external_local = true;
    remote_only.internal_local = true;
    let mut empty_np = port("empty-np", "", Protocol::Tcp, "10.43.0.10", 80, Vec::new());
    empty_np.node_port = Some(30090);
    Ruleset {
        pod_bridge: "cni0".into(),
        service_ports: vec![
            port("web", "http", Protocol::Tcp, "10.43.0.5", 80, vec![ep("10.42.0.5", 8080), ep("10.42.1.6", 8080)]),
            port("web", "dns", Protocol::Udp, "10.43.0.5", 53, vec![ep("10.42.0.5", 5353)]),
            port("empty", "", Protocol::Tcp, "10.43.0.6", 443, Vec::new()),
            node_port,
            sticky,
            empty_np,
            local,
            remote_only,
        ],
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(|line| line.trim().to_string()).collect()
}

#[test]
fn render_replaces_the_table_in_one_transaction() {
    let lines = lines(&full_ruleset().render());
    assert_eq!(lines[..3], ["add table ip kube-proxy", "delete table ip kube-proxy", "table ip kube-proxy {"]);
    assert_eq!(lines.last().unwrap(), "}");
}

#[test]
fn render_dispatches_cluster_ips_through_the_service_map_to_a_chain_per_service_port() {
    let text = full_ruleset().render();
    let lines = lines(&text);
    has(&lines, "type nat hook prerouting priority dstnat; policy accept;");
    has(&lines, "type nat hook output priority -100; policy accept;");
    assert_eq!(lines.iter().filter(|l| *l == "jump services").count(), 2, "prerouting and output");
    has(&lines, "ip daddr . meta l4proto . th dport vmap @service-ips");
    let elements = lines.iter().find(|l| l.starts_with("elements") && l.contains("10.43.0.5 . tcp . 80")).unwrap();
    assert!(elements.contains("10.43.0.5 . tcp . 80 : goto service-default/web/tcp/http"), "{elements}");
    assert!(elements.contains("10.43.0.5 . udp . 53 : goto service-default/web/udp/dns"), "{elements}");
    assert!(!elements.contains("10.43.0.6"), "a service without endpoints is not dispatched: {elements}");
}

#[test]
fn render_spreads_connections_over_the_endpoints_with_numgen() {
    let lines = lines(&full_ruleset().render());
    has(
        &lines,
        "numgen random mod 2 vmap { 0 : goto endpoint-default/web/tcp/http__10.42.0.5/8080, \
         1 : goto endpoint-default/web/tcp/http__10.42.1.6/8080 }",
    );
    has(&lines, "chain endpoint-default/web/tcp/http__10.42.0.5/8080 {");
    has(&lines, "meta l4proto tcp dnat to 10.42.0.5:8080");
    has(&lines, "meta l4proto udp dnat to 10.42.0.5:5353");
}

#[test]
fn render_rejects_services_and_node_ports_without_endpoints() {
    let lines = lines(&full_ruleset().render());
    let text = lines.join("\n");
    assert!(
        text.contains(
            "elements = { 10.43.0.6 . tcp . 443 : goto reject-chain, 10.43.0.10 . tcp . 80 : goto reject-chain"
        )
    );
    assert!(text.contains("elements = { tcp . 30090 : goto reject-chain }"), "{text}");
    has(&lines, "meta l4proto tcp reject with tcp reset");
    has(&lines, "type filter hook output priority -110; policy accept;");
    has(&lines, "type filter hook forward priority -110; policy accept;");
    has(&lines, "type filter hook input priority -110; policy accept;");
    has(&lines, "ct state new jump service-endpoints-check");
    has(&lines, "ct state new jump nodeport-endpoints-check");
}

#[test]
fn render_sends_node_ports_and_external_ips_through_a_masquerading_external_chain() {
    let text = full_ruleset().render();
    let lines = lines(&text);
    assert!(text.contains("elements = { tcp . 30080 : goto external-default/np/tcp/80, "), "{text}");
    assert!(text.contains("192.0.2.7 . tcp . 80 : goto external-default/np/tcp/80"), "{text}");
    has(&lines, "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports");
    let external = text.split("chain external-default/np/tcp/80 {").nth(1).unwrap();
    let external = lines_until_close(external);
    assert_eq!(external, ["jump mark-for-masquerade", "goto service-default/np/tcp/80"]);
}

fn lines_until_close(text: &str) -> Vec<String> {
    lines(text).into_iter().skip_while(String::is_empty).take_while(|l| l != "}").collect()
}

#[test]
fn render_masquerades_hairpin_and_traffic_not_from_the_pod_bridge() {
    let text = full_ruleset().render();
    let service = lines_until_close(text.split("chain service-default/web/tcp/http {").nth(1).unwrap());
    assert_eq!(service[0], r#"iifname != "cni0" jump mark-for-masquerade"#);
    let endpoint =
        lines_until_close(text.split("chain endpoint-default/web/tcp/http__10.42.0.5/8080 {").nth(1).unwrap());
    assert_eq!(endpoint[0], "ip saddr 10.42.0.5 jump mark-for-masquerade");
    let lines = lines(&text);
    has(&lines, "type nat hook postrouting priority srcnat; policy accept;");
    has(&lines, "meta mark & 0x4000 == 0 return");
    has(&lines, "masquerade fully-random");
}

#[test]
fn render_keeps_client_ip_affinity_in_a_set_per_endpoint() {
    let text = full_ruleset().render();
    let lines = lines(&text);
    has(&lines, "set affinity-default/sticky/tcp/80__10.42.0.9/80 {");
    has(&lines, "flags dynamic,timeout");
    has(&lines, "timeout 60s");
    let service = lines_until_close(text.split("chain service-default/sticky/tcp/80 {").nth(1).unwrap());
    assert_eq!(
        service[1],
        "ip saddr @affinity-default/sticky/tcp/80__10.42.0.9/80 goto endpoint-default/sticky/tcp/80__10.42.0.9/80"
    );
    has(&lines, "update @affinity-default/sticky/tcp/80__10.42.1.9/80 { ip saddr }");
    // Other services have no affinity set.
    assert!(!text.contains("set affinity-default/web"), "{text}");
}

#[test]
fn render_of_nothing_is_the_empty_skeleton() {
    let text = Ruleset { pod_bridge: "cni0".into(), service_ports: Vec::new() }.render();
    assert!(!text.contains("elements"), "{text}");
    assert!(!text.contains("chain endpoint-"), "{text}");
    assert!(text.contains("chain services {"), "{text}");
}

async fn list_table() -> std::process::Output {
    tokio::process::Command::new(nft_program()).args(["list", "table", "ip", TABLE]).output().await.unwrap()
}

#[test]
fn kernel_accepts_rendered_rulesets() {
    if !require_root("kernel_accepts_rendered_rulesets", "nftables") {
        return;
    }
    let mut sctp = full_ruleset();
    sctp.service_ports.push(port("sctp", "", Protocol::Sctp, "10.43.0.11", 9000, vec![ep("10.42.0.5", 9001)]));
    let empty = Ruleset { pod_bridge: "cni0".into(), service_ports: Vec::new() };
    in_new_netns(async || {
        for ruleset in [full_ruleset(), empty, sctp] {
            if let Err(error) = check(&ruleset).await {
                panic!("nft --check refused:\n{}\n{error}", ruleset.render());
            }
        }
        // And it can fail: a rule nft does not understand is refused.
        let broken = run_nft(&["--check", "-f", "-"], "table ip kube-proxy { chain c { bogus } }\n").await;
        assert!(matches!(broken, Err(NftError::Failed { .. })), "{broken:?}");
    });
}

#[test]
fn applied_ruleset_is_replaced_whole_and_removed_in_a_new_netns() {
    if !require_root("applied_ruleset_is_replaced_whole_and_removed_in_a_new_netns", "nftables") {
        return;
    }
    in_new_netns(async || {
        delete_table().await.unwrap();
        let ruleset = full_ruleset();
        apply(&ruleset, &ruleset.render()).await.unwrap();
        let listed = String::from_utf8(list_table().await.stdout).unwrap();
        assert!(listed.contains("dnat to 10.42.0.5:8080"), "{listed}");

        let next = Ruleset {
            pod_bridge: "cni0".into(),
            service_ports: vec![port("other", "", Protocol::Tcp, "10.43.0.99", 80, vec![ep("10.42.0.77", 80)])],
        };
        apply(&next, &next.render()).await.unwrap();
        let listed = String::from_utf8(list_table().await.stdout).unwrap();
        assert!(listed.contains("dnat to 10.42.0.77:80"), "{listed}");
        assert!(!listed.contains("10.42.0.5"), "the old service is gone: {listed}");

        delete_table().await.unwrap();
        assert!(!list_table().await.status.success(), "the table is gone");
    });
}

#[test]
fn render_sends_external_traffic_with_policy_local_to_local_endpoints_without_masquerade() {
    let text = full_ruleset().render();
    let external = lines_until_close(text.split("chain external-default/local/tcp/80 {").nth(1).unwrap());
    assert_eq!(
        external,
        [
            r#"iifname "cni0" goto service-default/local/tcp/80"#,
            "fib saddr type local jump mark-for-masquerade",
            "fib saddr type local goto service-default/local/tcp/80",
            "numgen random mod 1 vmap { 0 : goto endpoint-default/local/tcp/80__10.42.0.12/80 }",
        ]
    );
    // The ClusterIP still spreads over every endpoint.
    let service = lines_until_close(text.split("chain service-default/local/tcp/80 {").nth(1).unwrap());
    assert!(service[1].starts_with("numgen random mod 2 "), "{service:?}");
    // Without a local endpoint, external traffic is dropped, and so is internal with
    // internalTrafficPolicy Local.
    let external = lines_until_close(text.split("chain external-default/remote/tcp/80 {").nth(1).unwrap());
    assert_eq!(external.last().unwrap(), "drop");
    assert!(text.contains("10.43.0.13 . tcp . 80 : drop"), "{text}");
}

/// A listed table as comparable blocks: each chain's rules in order, each map's and set's
/// contents as a sorted list (nft prints elements in its own order, and chains in the order
/// they were created, which partial syncs change).
fn blocks(listed: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut blocks = std::collections::BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in listed.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(header) = line
            .strip_suffix(" {")
            .filter(|h| h.starts_with("chain ") || h.starts_with("map ") || h.starts_with("set "))
        {
            current = Some((header.to_string(), Vec::new()));
        } else if line == "}" {
            if let Some((header, mut body)) = current.take() {
                if !header.starts_with("chain ") {
                    let joined = body.join(" ");
                    body = joined
                        .split(['{', '}', ','].as_ref())
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect();
                    body.sort();
                }
                blocks.insert(header, body);
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push(line.to_string());
        }
    }
    blocks
}

#[test]
fn a_partial_sync_leaves_the_table_a_full_sync_would() {
    if !require_root("a_partial_sync_leaves_the_table_a_full_sync_would", "nftables") {
        return;
    }
    let old = full_ruleset();
    // Every kind of change: a port gone, one added, endpoints moved, affinity changed, a
    // service losing its endpoints and one getting some.
    let mut new = full_ruleset();
    new.service_ports.retain(|p| p.name != "np");
    new.service_ports.push(port("fresh", "", Protocol::Udp, "10.43.0.20", 53, vec![ep("10.42.0.20", 53)]));
    for p in &mut new.service_ports {
        match p.name.as_str() {
            "web" if p.protocol == Protocol::Tcp => p.endpoints = vec![ep("10.42.0.5", 8080), ep("10.42.1.7", 8080)],
            "sticky" => p.affinity_timeout_seconds = Some(120),
            "local" => p.endpoints.clear(),
            "empty" => p.endpoints = vec![ep("10.42.1.30", 443)],
            _ => {}
        }
    }
    let update = new.render_update(&old).expect("the rulesets differ");
    assert!(new.render_update(&new).is_none(), "no change, no update");
    let partial = in_new_netns(async || {
        apply(&old, &old.render()).await.unwrap();
        if let Err(error) = apply_update(&update).await {
            panic!("the partial update was refused:\n{update}\n{error}");
        }
        String::from_utf8(list_table().await.stdout).unwrap()
    });
    let full = in_new_netns(async || {
        apply(&new, &new.render()).await.unwrap();
        String::from_utf8(list_table().await.stdout).unwrap()
    });
    assert_eq!(blocks(&partial), blocks(&full), "partial:\n{partial}\nfull:\n{full}");
    assert!(update.lines().count() < new.render().lines().count(), "touches less than the whole table");
}

#[test]
fn rule_count_counts_the_rules_of_the_rendered_table() {
    let ruleset = full_ruleset();
    assert_eq!(ruleset.rule_count(), super::rules_in(&ruleset.render()));
}

//! Rendering of the chains, and (as root) the kernel's verdict on them. Tests that talk to the
//! kernel do so from a thread moved into a new network namespace, so no rule ever lands in the
//! host's own namespace; the namespace vanishes with the thread.
use super::*;
use crate::serviceport::Protocol;
use crate::test_support::{ep, has, in_new_netns, port, require_root};

fn ruleset(service_ports: Vec<ServicePort>) -> Ruleset {
    Ruleset { pod_bridge: "cni0".into(), service_ports, drop_invalid: true }
}

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
    local.health_check_node_port = Some(32000);
    let mut remote_only = port("remote", "", Protocol::Tcp, "10.43.0.13", 80, vec![ep("10.42.1.13", 80)]);
    remote_only.node_port = Some(30101);
    remote_only.external_local = true;
    remote_only.internal_local = true;
    let mut empty_np = port("empty-np", "", Protocol::Tcp, "10.43.0.10", 80, Vec::new());
    empty_np.node_port = Some(30090);
    ruleset(vec![
        port(
            "web",
            "http",
            Protocol::Tcp,
            "10.43.0.5",
            80,
            vec![ep("10.42.0.5", 8080), ep("10.42.1.6", 8080), ep("10.42.2.7", 8080)],
        ),
        port("web", "dns", Protocol::Udp, "10.43.0.5", 53, vec![ep("10.42.0.5", 5353)]),
        port("empty", "", Protocol::Tcp, "10.43.0.6", 443, Vec::new()),
        node_port,
        sticky,
        empty_np,
        local,
        remote_only,
    ])
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

/// The rules of `chain` in `text` (after `-A CHAIN `), in order.
fn chain_rules(text: &str, chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    text.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_string).collect()
}

/// The section of one table (`*filter` ... `COMMIT`).
fn table<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text.find(&format!("*{name}\n")).unwrap_or_else(|| panic!("no *{name} in {text}"));
    let end = start + text[start..].find("COMMIT\n").unwrap();
    &text[start..end]
}

#[test]
fn chain_names_are_upstreams_hashes() {
    // The names upstream's own tests expect for ns1/svc1:p80 and its endpoint 10.180.0.1:80.
    let mut svc = port("svc1", "p80", Protocol::Tcp, "10.20.30.41", 80, vec![ep("10.180.0.1", 80)]);
    svc.namespace = "ns1".into();
    let names = Names::of(&svc);
    assert_eq!(names.cluster, "KUBE-SVC-XPGD46QRK7WJZT7O");
    assert_eq!(names.endpoint(&svc, &svc.endpoints[0]), "KUBE-SEP-SXIVWICOYRO3J4NJ");
    assert_eq!(names.external, "KUBE-EXT-XPGD46QRK7WJZT7O");
    assert_eq!(names.local, "KUBE-SVL-XPGD46QRK7WJZT7O");
    // An unnamed port is hashed by the service's name alone.
    let unnamed = port("svc1", "", Protocol::Tcp, "10.20.30.41", 80, Vec::new());
    assert_eq!(Names::of(&unnamed).port, "default/svc1");
    assert_eq!(Names::of(&unnamed).cluster, format!("KUBE-SVC-{}", hash16("default/svc1tcp")));
    // The protocol is part of the hash.
    let udp = port("svc1", "", Protocol::Udp, "10.20.30.41", 80, Vec::new());
    assert_ne!(Names::of(&udp).cluster, Names::of(&unnamed).cluster);
    assert!(Names::of(&unnamed).cluster.len() <= 28, "iptables' limit");
}

#[test]
fn probabilities_spread_connections_evenly_over_the_endpoints() {
    assert_eq!(probability(2), "0.5000000000");
    assert_eq!(probability(3), "0.3333333333");
    let rules = full_ruleset();
    let text = rules.render(&BTreeSet::new());
    // web:http, with three endpoints.
    let web = &rules.service_ports[0];
    let names = Names::of(web);
    let dispatch = chain_rules(&text, &names.cluster);
    let seps: Vec<String> = web.endpoints.iter().map(|e| names.endpoint(web, e)).collect();
    assert_eq!(
        dispatch,
        [
            "-m comment --comment \"default/web:http cluster IP\" -m tcp -p tcp -d 10.43.0.5 --dport 80 ! -i cni0 \
             -j KUBE-MARK-MASQ"
                .to_string(),
            format!(
                "-m comment --comment \"default/web:http -> 10.42.0.5:8080\" -m statistic --mode random \
                 --probability 0.3333333333 -j {}",
                seps[0]
            ),
            format!(
                "-m comment --comment \"default/web:http -> 10.42.1.6:8080\" -m statistic --mode random \
                 --probability 0.5000000000 -j {}",
                seps[1]
            ),
            format!("-m comment --comment \"default/web:http -> 10.42.2.7:8080\" -j {}", seps[2]),
        ]
    );
    // Each endpoint: hairpin masquerade, then the DNAT.
    assert_eq!(
        chain_rules(&text, &seps[0]),
        [
            "-m comment --comment default/web:http -s 10.42.0.5 -j KUBE-MARK-MASQ",
            "-m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.42.0.5:8080",
        ]
    );
}

#[test]
fn render_lays_out_upstreams_top_level_chains_in_both_tables() {
    let text = full_ruleset().render(&BTreeSet::new());
    let filter = lines(table(&text, "filter"));
    for chain in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"] {
        has(&filter, &format!(":{chain} - [0:0]"));
    }
    has(&filter, "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP");
    has(
        &filter,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
    );
    let nat = lines(table(&text, "nat"));
    for chain in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        has(&nat, &format!(":{chain} - [0:0]"));
    }
    has(&nat, "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000");
    has(&nat, "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN");
    has(
        &nat,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
    );
    let web = Names::of(&full_ruleset().service_ports[0]);
    has(
        &nat,
        &format!(
            "-A KUBE-SERVICES -m comment --comment \"default/web:http cluster IP\" -m tcp -p tcp -d 10.43.0.5 --dport 80 \
             -j {}",
            web.cluster
        ),
    );
    // NodePorts on local addresses but loopback, after every service address.
    let services = chain_rules(&text, "KUBE-SERVICES");
    assert!(services.last().unwrap().ends_with("-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"));
    // A conntrack-liberal kernel gets no INVALID drop.
    let liberal = Ruleset { drop_invalid: false, ..full_ruleset() }.render(&BTreeSet::new());
    assert!(!liberal.contains("INVALID"), "{liberal}");
}

#[test]
fn render_rejects_services_and_node_ports_without_endpoints_in_the_filter_table() {
    let text = full_ruleset().render(&BTreeSet::new());
    let filter = lines(table(&text, "filter"));
    has(
        &filter,
        "-A KUBE-SERVICES -m comment --comment \"default/empty has no endpoints\" -m tcp -p tcp -d 10.43.0.6 \
         --dport 443 -j REJECT",
    );
    has(
        &filter,
        "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"default/empty-np has no endpoints\" -m addrtype \
         --dst-type LOCAL -m tcp -p tcp --dport 30090 -j REJECT",
    );
    // And no nat chain for them.
    let empty = Names::of(&full_ruleset().service_ports[2]);
    assert!(!text.contains(&empty.cluster), "{text}");
    assert!(!text.contains("--dport 30090 -j KUBE-EXT"), "{text}");
}

#[test]
fn render_sends_node_ports_and_external_ips_through_a_masquerading_external_chain() {
    let np = full_ruleset().service_ports[3].clone();
    let names = Names::of(&np);
    let text = full_ruleset().render(&BTreeSet::new());
    assert_eq!(
        chain_rules(table(&text, "nat"), "KUBE-NODEPORTS"),
        [
            format!("-m comment --comment default/np -m tcp -p tcp --dport 30080 -j {}", names.external),
            format!(
                "-m comment --comment default/local -m tcp -p tcp --dport 30100 -j {}",
                Names::of(&full_ruleset().service_ports[6]).external
            ),
            format!(
                "-m comment --comment default/remote -m tcp -p tcp --dport 30101 -j {}",
                Names::of(&full_ruleset().service_ports[7]).external
            ),
        ]
    );
    has(
        &lines(&text),
        &format!(
            "-A KUBE-SERVICES -m comment --comment \"default/np external IP\" -m tcp -p tcp -d 192.0.2.7 --dport 80 -j {}",
            names.external
        ),
    );
    assert_eq!(
        chain_rules(&text, &names.external),
        [
            "-m comment --comment \"masquerade traffic for default/np external destinations\" -j KUBE-MARK-MASQ"
                .to_string(),
            format!("-j {}", names.cluster),
        ]
    );
}

#[test]
fn render_sends_external_traffic_with_policy_local_to_local_endpoints_without_masquerade() {
    let rules = full_ruleset();
    let text = rules.render(&BTreeSet::new());
    let local = &rules.service_ports[6];
    let names = Names::of(local);
    assert_eq!(
        chain_rules(&text, &names.external),
        [
            format!(
                "-m comment --comment \"pod traffic for default/local external destinations\" -i cni0 -j {}",
                names.cluster
            ),
            "-m comment --comment \"masquerade LOCAL traffic for default/local external destinations\" -m addrtype \
             --src-type LOCAL -j KUBE-MARK-MASQ"
                .to_string(),
            format!(
                "-m comment --comment \"route LOCAL traffic for default/local external destinations\" -m addrtype \
                 --src-type LOCAL -j {}",
                names.cluster
            ),
            format!("-j {}", names.local),
        ]
    );
    // The local chain holds only this node's endpoint; the cluster chain both.
    let local_rules = chain_rules(&text, &names.local);
    assert_eq!(local_rules.len(), 1, "{local_rules:?}");
    assert!(local_rules[0].ends_with(&format!("-j {}", names.endpoint(local, &local.endpoints[0]))));
    assert_eq!(chain_rules(&text, &names.cluster).len(), 3, "masquerade and two endpoints");
    // The health check node port is open in the filter table.
    has(
        &lines(&text),
        "-A KUBE-NODEPORTS -m comment --comment \"default/local health check node port\" -m tcp -p tcp --dport 32000 \
         -j ACCEPT",
    );

    // Without a local endpoint, external traffic from outside is dropped, and so is the
    // ClusterIP with internalTrafficPolicy Local; this node's own traffic still gets through.
    let remote = &rules.service_ports[7];
    let names = Names::of(remote);
    let filter = lines(table(&text, "filter"));
    has(
        &filter,
        "-A KUBE-SERVICES -m comment --comment \"default/remote has no local endpoints\" -m tcp -p tcp -d 10.43.0.13 \
         --dport 80 -j DROP",
    );
    has(
        &filter,
        "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"default/remote has no local endpoints\" -m addrtype \
         --dst-type LOCAL -m tcp -p tcp --dport 30101 -j DROP",
    );
    let external = chain_rules(&text, &names.external);
    assert_eq!(external.len(), 3, "the short circuit only: {external:?}");
    assert!(!text.contains(&names.local), "no local chain without local endpoints");
}

#[test]
fn render_keeps_client_ip_affinity_with_the_recent_match() {
    let rules = full_ruleset();
    let sticky = &rules.service_ports[4];
    let names = Names::of(sticky);
    let text = rules.render(&BTreeSet::new());
    let sep = names.endpoint(sticky, &sticky.endpoints[0]);
    let dispatch = chain_rules(&text, &names.cluster);
    assert_eq!(
        dispatch[1],
        format!(
            "-m comment --comment \"default/sticky -> 10.42.0.9:80\" -m recent --name {sep} --rcheck --seconds 60 \
             --reap -j {sep}"
        )
    );
    assert!(dispatch[3].contains("--probability 0.5000000000"), "{dispatch:?}");
    assert_eq!(
        chain_rules(&text, &sep)[1],
        format!(
            "-m comment --comment default/sticky -m recent --name {sep} --set -m tcp -p tcp -j DNAT \
             --to-destination 10.42.0.9:80"
        )
    );
    // Other services have no affinity.
    assert_eq!(text.matches("-m recent").count(), 4, "{text}");
}

#[test]
fn a_large_cluster_drops_the_per_endpoint_comments() {
    let endpoints: Vec<Endpoint> =
        (0..1001u16).map(|i| ep(&format!("10.42.{}.{}", i / 250 + 1, i % 250 + 1), 80)).collect();
    let big = ruleset(vec![port("big", "", Protocol::Tcp, "10.43.0.99", 80, endpoints)]);
    let text = big.render(&BTreeSet::new());
    let names = Names::of(&big.service_ports[0]);
    assert!(!chain_rules(&text, &names.cluster).iter().skip(1).any(|r| r.contains("--comment")));
    assert!(text.contains("\"default/big cluster IP\""), "the service rules keep theirs");
}

#[test]
fn a_full_render_deletes_stale_service_chains_and_leaves_other_chains_alone() {
    let existing: BTreeSet<String> =
        ["KUBE-SVC-STALESTALESTALE", "KUBE-SEP-STALESTALESTALE", "KUBE-SERVICES", "DOCKER", "KUBE-KUBELET-CANARY"]
            .into_iter()
            .map(str::to_string)
            .collect();
    let text = full_ruleset().render(&existing);
    let nat = lines(table(&text, "nat"));
    has(&nat, ":KUBE-SVC-STALESTALESTALE - [0:0]");
    has(&nat, "-X KUBE-SVC-STALESTALESTALE");
    has(&nat, "-X KUBE-SEP-STALESTALESTALE");
    assert!(!text.contains("DOCKER") && !text.contains("KUBELET"), "{text}");
    assert!(!text.contains("-X KUBE-SERVICES"), "{text}");
}

#[test]
fn an_update_rewrites_only_the_chains_of_changed_service_ports() {
    let old = full_ruleset();
    assert!(old.render_update(&old).is_none(), "no change, no update");
    let mut new = full_ruleset();
    // web:http loses an endpoint; np goes away; everything else stays.
    new.service_ports[0].endpoints.pop();
    let np = new.service_ports.remove(3);
    let update = new.render_update(&old).expect("the rulesets differ");
    let web = Names::of(&new.service_ports[0]);
    let sticky = Names::of(&new.service_ports[3]);
    let gone = Names::of(&np);
    let nat = lines(table(&update, "nat"));
    has(&nat, &format!(":{} - [0:0]", web.cluster));
    assert_eq!(chain_rules(&update, &web.cluster).len(), 3, "masquerade and two endpoints");
    // The removed endpoint's chain and the removed port's chains are deleted.
    let removed_sep = web.endpoint(&old.service_ports[0], &old.service_ports[0].endpoints[2]);
    has(&nat, &format!("-X {removed_sep}"));
    has(&nat, &format!("-X {}", gone.cluster));
    has(&nat, &format!("-X {}", gone.external));
    // An unchanged port's chains are not written, but the top-level chains still jump to them.
    assert!(!update.contains(&format!(":{} ", sticky.cluster)), "{update}");
    assert!(chain_rules(&update, &sticky.cluster).is_empty());
    assert!(chain_rules(&update, "KUBE-SERVICES").iter().any(|r| r.ends_with(&format!("-j {}", sticky.cluster))));
    assert!(update.len() < new.render(&BTreeSet::new()).len(), "smaller than a full render");
}

const SAVED: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
:OTHER - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j OTHER
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A OTHER -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -s 10.42.0.0/24 -j MASQUERADE
-A KUBE-SERVICES -d 10.43.0.5/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-AAAAAAAAAAAAAAAA
-A KUBE-SVC-AAAAAAAAAAAAAAAA -j KUBE-SEP-AAAAAAAAAAAAAAAA
COMMIT
";

#[test]
fn cleanup_removes_our_jumps_and_chains_and_nothing_else() {
    let input = render_cleanup(SAVED).expect("there is something to remove");
    let lines = lines(&input);
    let expected = [
        "*filter",
        ":KUBE-EXTERNAL-SERVICES - [0:0]",
        ":KUBE-FORWARD - [0:0]",
        ":KUBE-SERVICES - [0:0]",
        "-D INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" \
         -j KUBE-EXTERNAL-SERVICES",
        "-D FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
        "-X KUBE-EXTERNAL-SERVICES",
        "-X KUBE-FORWARD",
        "-X KUBE-SERVICES",
        "COMMIT",
        "*nat",
        ":KUBE-MARK-MASQ - [0:0]",
        ":KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]",
        "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-X KUBE-MARK-MASQ",
        "-X KUBE-SEP-AAAAAAAAAAAAAAAA",
        "-X KUBE-SERVICES",
        "-X KUBE-SVC-AAAAAAAAAAAAAAAA",
        "COMMIT",
    ];
    assert_eq!(lines, expected);
    assert!(render_cleanup("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j OTHER\nCOMMIT\n").is_none());
    assert!(render_cleanup("").is_none());
}

#[test]
fn the_failing_line_is_read_from_either_iptables_restore() {
    assert_eq!(failed_line("iptables-restore: line 12 failed"), Some(12));
    let nft = "iptables-restore v1.8.9 (nf_tables): Chain 'BOGUS' does not exist\nError occurred at line: 4\nTry ...";
    assert_eq!(failed_line(nft), Some(4));
    assert_eq!(failed_line("iptables-restore: unable to initialize table 'nat'"), None);
}

#[test]
fn rule_count_counts_every_rule_of_a_full_render() {
    let rules = full_ruleset();
    let rendered = rules.render(&BTreeSet::new());
    assert_eq!(rules.rule_count(), rendered.lines().filter(|l| l.starts_with("-A ")).count());
}

async fn save() -> String {
    run(IPTABLES_SAVE, &[], None).await.expect("iptables-save")
}

/// The lines of a saved ruleset without counters and comment lines, as a set, so two kernels'
/// rules compare regardless of the order chains were created in.
fn normalized(saved: &str) -> BTreeSet<String> {
    saved.lines().filter(|l| !l.starts_with('#')).map(|l| l.split(" [").next().unwrap_or(l).to_string()).collect()
}

#[test]
fn applied_rules_jump_from_the_builtin_chains_and_cleanup_removes_everything_in_a_new_netns() {
    if !require_root(
        "applied_rules_jump_from_the_builtin_chains_and_cleanup_removes_everything_in_a_new_netns",
        "iptables",
    ) {
        return;
    }
    let mut sctp = full_ruleset();
    sctp.service_ports.push(port("sctp", "", Protocol::Sctp, "10.43.0.11", 9000, vec![ep("10.42.0.5", 9001)]));
    let sctp_ok = std::path::Path::new("/proc/net/sctp").exists();
    let rules = if sctp_ok { sctp } else { full_ruleset() };
    in_new_netns(async || {
        apply(&rules).await.unwrap_or_else(|error| panic!("{error}\n{}", rules.render(&BTreeSet::new())));
        // Twice: the jumps are installed once.
        apply(&rules).await.unwrap();
        let saved = save().await;
        for jump in [
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
            "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
        ] {
            assert_eq!(saved.matches(jump).count(), 1, "{jump} once in:\n{saved}");
        }
        assert!(saved.contains("--to-destination 10.42.0.5:8080"), "{saved}");
        assert!(saved.contains("--rcheck --seconds 60 --reap"), "{saved}");

        // The kernel refuses nonsense, so the above could fail.
        assert!(restore("*nat\n-A KUBE-NOPE -j BOGUS\nCOMMIT\n").await.is_err());

        cleanup().await.unwrap();
        let saved = save().await;
        assert!(!saved.contains("KUBE-"), "{saved}");
        // Nothing left to remove is fine.
        cleanup().await.unwrap();
    });
}

#[test]
fn a_partial_update_leaves_the_rules_a_full_apply_would_in_a_new_netns() {
    if !require_root("a_partial_update_leaves_the_rules_a_full_apply_would_in_a_new_netns", "iptables") {
        return;
    }
    let old = full_ruleset();
    let mut new = full_ruleset();
    // Every kind of change: a port gone, one added, endpoints moved, affinity changed, a
    // service losing its endpoints and one getting some.
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
    let partial = in_new_netns(async || {
        apply(&old).await.unwrap();
        if let Err(error) = apply_update(&update).await {
            panic!("the partial update was refused:\n{update}\n{error}");
        }
        save().await
    });
    let full = in_new_netns(async || {
        apply(&new).await.unwrap();
        save().await
    });
    assert_eq!(normalized(&partial), normalized(&full), "partial:\n{partial}\nfull:\n{full}");
}

//! A pod's resolver settings from its dnsPolicy and dnsConfig, as upstream's
//! `pkg/kubelet/network/dns`: the cluster DNS with the search path
//! `<ns>.svc.<domain> svc.<domain> <domain>` and `ndots:5` for ClusterFirst, the node's own
//! resolv.conf for Default, only the pod's dnsConfig for None.

use k8s_openapi::api::core::v1::{Pod, PodDNSConfig};
use tug_runtime::cri::DnsConfig;

use crate::Config;

/// The node's resolver file (upstream's `--resolv-conf` default).
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Upstream's limits (`validation.MaxDNSNameservers`, `MaxDNSSearchPaths`, `MaxDNSSearchListChars`).
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCH_PATHS: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// None = use the host's /etc/resolv.conf as is (dnsPolicy Default, or ClusterFirst with
/// hostNetwork, as upstream).
pub fn dns_config(pod: &Pod, config: &Config) -> Option<DnsConfig> {
    let host = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
    dns_config_with_host(pod, config, &host)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodDnsType {
    Cluster,
    Host,
    None,
}

fn pod_dns_type(pod: &Pod) -> PodDnsType {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    match spec.and_then(|s| s.dns_policy.as_deref()).unwrap_or("ClusterFirst") {
        "None" => PodDnsType::None,
        "ClusterFirstWithHostNet" => PodDnsType::Cluster,
        "Default" => PodDnsType::Host,
        // ClusterFirst on the host network falls back to the node's resolver, as upstream.
        _ if host_network => PodDnsType::Host,
        _ => PodDnsType::Cluster,
    }
}

/// The servers, search domains and options of a resolv.conf (upstream's `parseResolvConf`).
fn parse_resolv_conf(text: &str) -> DnsConfig {
    let mut parsed = DnsConfig::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => parsed.servers.extend(fields.next().map(str::to_owned)),
            // The last search line wins, as in the resolver.
            Some("search") => parsed.searches = fields.map(|s| s.trim_end_matches('.').to_owned()).collect(),
            Some("domain") => parsed.searches = fields.next().map(|s| vec![s.to_owned()]).unwrap_or_default(),
            Some("options") => parsed.options.extend(fields.map(str::to_owned)),
            _ => {}
        }
    }
    parsed
}

fn omit_duplicates(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Upstream's `mergeDNSOptions`: by option name, the pod's value winning.
fn merge_options(existing: Vec<String>, pod: &PodDNSConfig) -> Vec<String> {
    let mut options: Vec<(String, Option<String>)> = Vec::new();
    let mut set = |name: &str, value: Option<String>| match options.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value,
        None => options.push((name.to_owned(), value)),
    };
    for op in &existing {
        match op.split_once(':') {
            Some((name, value)) => set(name, Some(value.to_owned())),
            None => set(op, None),
        }
    }
    for op in pod.options.iter().flatten() {
        set(op.name.as_deref().unwrap_or_default(), op.value.clone());
    }
    options
        .into_iter()
        .map(|(name, value)| match value.filter(|v| !v.is_empty()) {
            Some(v) => format!("{name}:{v}"),
            None => name,
        })
        .collect()
}

/// [`dns_config`] with the node's resolv.conf given as text.
pub fn dns_config_with_host(pod: &Pod, config: &Config, host_resolv_conf: &str) -> Option<DnsConfig> {
    let pod_dns = pod.spec.as_ref().and_then(|s| s.dns_config.as_ref());
    let mut dns = match pod_dns_type(pod) {
        PodDnsType::None => DnsConfig::default(),
        PodDnsType::Cluster if !config.cluster_dns.is_empty() => {
            let host = parse_resolv_conf(host_resolv_conf);
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            let domain = &config.cluster_domain;
            let mut searches = Vec::new();
            if !domain.is_empty() {
                searches = vec![format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.clone()];
            }
            searches.extend(host.searches);
            DnsConfig {
                servers: config.cluster_dns.iter().map(ToString::to_string).collect(),
                searches: omit_duplicates(searches),
                options: vec!["ndots:5".to_owned()],
            }
        }
        // Without a cluster DNS, ClusterFirst pods get the node's resolver, as upstream.
        PodDnsType::Cluster | PodDnsType::Host => {
            // Nothing to merge: the runtime copies the node's file unchanged.
            pod_dns?;
            parse_resolv_conf(host_resolv_conf)
        }
    };
    if let Some(pod_dns) = pod_dns {
        dns.servers =
            omit_duplicates(dns.servers.into_iter().chain(pod_dns.nameservers.iter().flatten().cloned()).collect());
        dns.searches =
            omit_duplicates(dns.searches.into_iter().chain(pod_dns.searches.iter().flatten().cloned()).collect());
        dns.options = merge_options(dns.options, pod_dns);
    }
    Some(fit_limits(dns))
}

/// Upstream's `formDNSConfigFitsLimits`: at most 3 servers, 32 search domains and 2048
/// characters of search list; the excess is dropped.
fn fit_limits(mut dns: DnsConfig) -> DnsConfig {
    if dns.servers.len() > MAX_NAMESERVERS {
        tracing::warn!(servers = ?dns.servers, "nameserver limits exceeded, some were omitted");
        dns.servers.truncate(MAX_NAMESERVERS);
    }
    if dns.searches.len() > MAX_SEARCH_PATHS {
        dns.searches.truncate(MAX_SEARCH_PATHS);
    }
    while !dns.searches.is_empty() && dns.searches.join(" ").len() > MAX_SEARCH_CHARS {
        dns.searches.pop();
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_config() -> Config {
        crate::volumemanager::test_config(std::path::Path::new("/nonexistent"))
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": "team"}, "spec": spec}))
            .unwrap()
    }

    const HOST: &str = "# generated\nnameserver 192.168.1.1\nnameserver 8.8.8.8\nsearch corp.example lab.example\noptions edns0 timeout:2\n";

    fn containers() -> serde_json::Value {
        serde_json::json!([{"name": "c"}])
    }

    #[test]
    fn cluster_first_uses_cluster_dns_search_path_and_ndots() {
        let dns =
            dns_config_with_host(&pod(serde_json::json!({"containers": containers()})), &test_config(), HOST).unwrap();
        assert_eq!(dns.servers, ["10.43.0.10"]);
        assert_eq!(
            dns.searches,
            ["team.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example", "lab.example"]
        );
        assert_eq!(dns.options, ["ndots:5"]);
    }

    #[test]
    fn host_network_cluster_first_uses_the_node_resolver_unless_with_host_net() {
        let p = pod(serde_json::json!({"containers": containers(), "hostNetwork": true, "dnsPolicy": "ClusterFirst"}));
        assert_eq!(dns_config_with_host(&p, &test_config(), HOST), None);
        let p = pod(
            serde_json::json!({"containers": containers(), "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
        );
        assert_eq!(dns_config_with_host(&p, &test_config(), HOST).unwrap().servers, ["10.43.0.10"]);
    }

    #[test]
    fn default_policy_is_the_node_resolver_merged_with_dns_config() {
        let p = pod(serde_json::json!({"containers": containers(), "dnsPolicy": "Default"}));
        assert_eq!(dns_config_with_host(&p, &test_config(), HOST), None);
        let p = pod(serde_json::json!({"containers": containers(), "dnsPolicy": "Default",
            "dnsConfig": {"nameservers": ["1.1.1.1"], "options": [{"name": "timeout", "value": "5"}]}}));
        let dns = dns_config_with_host(&p, &test_config(), HOST).unwrap();
        assert_eq!(dns.servers, ["192.168.1.1", "8.8.8.8", "1.1.1.1"]);
        assert_eq!(dns.searches, ["corp.example", "lab.example"]);
        assert_eq!(dns.options, ["edns0", "timeout:5"]);
    }

    #[test]
    fn none_policy_is_only_the_pod_dns_config() {
        let p = pod(serde_json::json!({"containers": containers(), "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["9.9.9.9"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}}));
        let dns = dns_config_with_host(&p, &test_config(), HOST).unwrap();
        assert_eq!(
            dns,
            DnsConfig {
                servers: vec!["9.9.9.9".into()],
                searches: vec!["a.example".into()],
                options: vec!["ndots:2".into(), "rotate".into()],
            }
        );
        let bare = pod(serde_json::json!({"containers": containers(), "dnsPolicy": "None"}));
        assert_eq!(dns_config_with_host(&bare, &test_config(), HOST), Some(DnsConfig::default()));
    }

    #[test]
    fn cluster_first_merges_dns_config_and_dedupes() {
        let p = pod(serde_json::json!({"containers": containers(),
            "dnsConfig": {"nameservers": ["10.43.0.10", "1.1.1.1"], "searches": ["svc.cluster.local", "x.example"],
                "options": [{"name": "ndots", "value": "1"}, {"name": "edns0"}]}}));
        let dns = dns_config_with_host(&p, &test_config(), "").unwrap();
        assert_eq!(dns.servers, ["10.43.0.10", "1.1.1.1"]);
        assert_eq!(dns.searches, ["team.svc.cluster.local", "svc.cluster.local", "cluster.local", "x.example"]);
        assert_eq!(dns.options, ["ndots:1", "edns0"]);
    }

    #[test]
    fn limits_drop_extra_servers_and_search_domains() {
        let searches: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let p = pod(serde_json::json!({"containers": containers(), "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"], "searches": searches}}));
        let dns = dns_config_with_host(&p, &test_config(), "").unwrap();
        assert_eq!(dns.servers.len(), 3);
        assert_eq!(dns.searches.len(), 32);
    }
}

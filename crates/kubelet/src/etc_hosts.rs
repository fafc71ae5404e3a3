//! The kubelet-managed `/etc/hosts` of a pod (upstream's `managedHostsFileContent`): localhost
//! entries, the pod's IPs with its hostname (and FQDN with a subdomain), and hostAliases. Pods
//! on the host network get the node's hosts file plus their hostAliases.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{HostAlias, Pod};

use crate::Config;

const MANAGED_HEADER: &str = "# Kubernetes-managed hosts file.\n";
const MANAGED_HEADER_HOST_NETWORK: &str = "# Kubernetes-managed hosts file (host network).\n";
const HOST_HOSTS_FILE: &str = "/etc/hosts";
/// Upstream's hostname length limit (a DNS label).
const MAX_HOSTNAME_LEN: usize = 63;

/// The pod's hostname and domain as upstream's `GeneratePodHostNameAndDomain`: `spec.hostname`
/// or the pod name (cut to 63 characters, without a trailing `-` or `.`), and
/// `<subdomain>.<namespace>.svc.<cluster domain>` when a subdomain is set.
pub fn pod_hostname_and_domain(pod: &Pod, cluster_domain: &str) -> (String, Option<String>) {
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let hostname = if name.len() > MAX_HOSTNAME_LEN {
        name[..MAX_HOSTNAME_LEN].trim_end_matches(['-', '.']).to_owned()
    } else {
        name
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let domain = spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty())
        .map(|sub| format!("{sub}.{namespace}.svc.{cluster_domain}"));
    (hostname, domain)
}

fn host_aliases_entries(aliases: &[HostAlias]) -> String {
    if aliases.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for alias in aliases {
        out.push_str(&format!("{}\t{}\n", alias.ip, alias.hostnames.as_deref().unwrap_or_default().join("\t")));
    }
    out
}

/// The managed hosts file's text for a pod on its own network.
pub fn managed_hosts_content(ips: &[String], hostname: &str, domain: Option<&str>, aliases: &[HostAlias]) -> String {
    let mut out = String::from(MANAGED_HEADER);
    out.push_str("127.0.0.1\tlocalhost\n");
    out.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str("fe00::0\tip6-localnet\n");
    out.push_str("fe00::0\tip6-mcastprefix\n");
    out.push_str("fe00::1\tip6-allnodes\n");
    out.push_str("fe00::2\tip6-allrouters\n");
    for ip in ips {
        match domain {
            Some(domain) => out.push_str(&format!("{ip}\t{hostname}.{domain}\t{hostname}\n")),
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    out.push_str(&host_aliases_entries(aliases));
    out
}

/// The hosts file of a host-network pod: the node's own, plus the pod's hostAliases.
fn node_hosts_content(node_hosts: &str, aliases: &[HostAlias]) -> String {
    let mut out = String::from(MANAGED_HEADER_HOST_NETWORK);
    out.push_str(node_hosts);
    if !node_hosts.is_empty() && !node_hosts.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&host_aliases_entries(aliases));
    out
}

/// The path of the pod's managed hosts file.
pub fn etc_hosts_path(config: &Config, pod_uid: &str) -> PathBuf {
    config.pod_dir(pod_uid).join("etc-hosts")
}

/// Writes the kubelet-managed hosts file for the pod (`# Kubernetes-managed hosts file.`, localhost
/// lines, the pod IP with hostname (and FQDN with subdomain), hostAliases) into the pod dir and
/// returns its path.
pub fn write_etc_hosts(config: &Config, pod: &Pod, pod_ips: &[String]) -> std::io::Result<PathBuf> {
    let spec = pod.spec.as_ref();
    let aliases = spec.and_then(|s| s.host_aliases.as_deref()).unwrap_or_default();
    let content = if spec.and_then(|s| s.host_network).unwrap_or(false) {
        node_hosts_content(&std::fs::read_to_string(HOST_HOSTS_FILE).unwrap_or_default(), aliases)
    } else {
        let (hostname, domain) = pod_hostname_and_domain(pod, &config.cluster_domain);
        managed_hosts_content(pod_ips, &hostname, domain.as_deref(), aliases)
    };
    let path = etc_hosts_path(config, pod.metadata.uid.as_deref().unwrap_or_default());
    write_file(&path, content.as_bytes())?;
    Ok(path)
}

/// Replaces the file's content in place: containers bind-mount this very inode, so it is
/// rewritten rather than renamed over.
fn write_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(path)?;
    file.write_all(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "uid-hosts"}, "spec": spec
        }))
        .unwrap()
    }

    const LOCAL: &str = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n";

    #[test]
    fn plain_pod_gets_localhost_and_its_ip_with_name() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::volumemanager::test_config(dir.path());
        let path =
            write_etc_hosts(&config, &pod(serde_json::json!({"containers": []})), &["10.42.0.5".into()]).unwrap();
        assert_eq!(path, config.pod_dir("uid-hosts").join("etc-hosts"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{LOCAL}10.42.0.5\tweb-0\n"));
    }

    #[test]
    fn hostname_subdomain_and_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::volumemanager::test_config(dir.path());
        let p = pod(serde_json::json!({"containers": [], "hostname": "db", "subdomain": "backend",
            "hostAliases": [{"ip": "1.2.3.4", "hostnames": ["foo.local", "bar.local"]}]}));
        let path = write_etc_hosts(&config, &p, &["10.42.0.5".into(), "fd00::5".into()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            format!(
                "{LOCAL}10.42.0.5\tdb.backend.shop.svc.cluster.local\tdb\nfd00::5\tdb.backend.shop.svc.cluster.local\tdb\n\n# Entries added by HostAliases.\n1.2.3.4\tfoo.local\tbar.local\n"
            )
        );
    }

    #[test]
    fn long_names_are_cut_to_a_dns_label() {
        let mut p = pod(serde_json::json!({"containers": []}));
        p.metadata.name = Some(format!("{}-{}", "a".repeat(62), "b"));
        let (hostname, domain) = pod_hostname_and_domain(&p, "cluster.local");
        assert_eq!(hostname, "a".repeat(62));
        assert_eq!(domain, None);
    }

    #[test]
    fn host_network_pod_gets_node_hosts_and_aliases() {
        let content = node_hosts_content(
            "127.0.0.1 localhost\n",
            &[HostAlias { ip: "5.6.7.8".into(), hostnames: Some(vec!["x".into()]) }],
        );
        assert_eq!(
            content,
            "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n\n# Entries added by HostAliases.\n5.6.7.8\tx\n"
        );
    }
}

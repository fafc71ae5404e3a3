//! The sandbox half of upstream's `kuberuntime_sandbox.go`: a pod's `PodSandboxConfig`.

use k8s_openapi::api::core::v1::Pod;
use tug_runtime::cri::{
    DnsConfig, Labels, NamespaceMode, NamespaceOptions, PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol,
};

use super::labels;
use crate::config::Config;

/// The longest hostname the kernel accepts (and upstream truncates to).
const HOSTNAME_MAX: usize = 63;

/// The pod's hostname: `spec.hostname`, else the pod name, truncated to 63 characters without a
/// trailing `-` or `.` (upstream's `truncatePodHostnameIfNeeded`).
pub fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    if name.len() <= HOSTNAME_MAX {
        return name;
    }
    name[..HOSTNAME_MAX].trim_end_matches(['-', '.']).to_string()
}

/// The longest FQDN the kernel's nodename field takes (upstream's `fqdnMaxLen`).
const FQDN_MAX: usize = 64;

/// The hostname the kernel gets (upstream's `GetNodenameForKernel`): the pod's FQDN when
/// `setHostnameAsFQDN` is set and it has a subdomain, else its hostname. Upstream refuses the
/// sandbox when the FQDN is longer than 64 characters; here the short hostname is kept then.
fn kernel_hostname(pod: &Pod, cluster_domain: &str) -> String {
    let as_fqdn = pod.spec.as_ref().and_then(|s| s.set_hostname_as_fqdn).unwrap_or(false);
    let (_, domain) = crate::etc_hosts::pod_hostname_and_domain(pod, cluster_domain);
    let short = hostname(pod);
    match domain {
        Some(domain) if as_fqdn && short.len() + 1 + domain.len() <= FQDN_MAX => format!("{short}.{domain}"),
        _ => short,
    }
}

/// The pod's namespace options (upstream's `namespacesForPod`).
pub fn namespace_options(pod: &Pod) -> NamespaceOptions {
    let spec = pod.spec.as_ref();
    let flag = |f: fn(&k8s_openapi::api::core::v1::PodSpec) -> Option<bool>| spec.and_then(f).unwrap_or(false);
    NamespaceOptions {
        network: if flag(|s| s.host_network) { NamespaceMode::Node } else { NamespaceMode::Pod },
        pid: if flag(|s| s.host_pid) {
            NamespaceMode::Node
        } else if flag(|s| s.share_process_namespace) {
            NamespaceMode::Pod
        } else {
            NamespaceMode::Container
        },
        ipc: if flag(|s| s.host_ipc) { NamespaceMode::Node } else { NamespaceMode::Pod },
    }
}

fn port_mappings(pod: &Pod) -> Vec<PortMapping> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    let mut out = Vec::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            let Some(host_port) = p.host_port.filter(|h| *h > 0) else { continue };
            let protocol = match p.protocol.as_deref() {
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            out.push(PortMapping {
                protocol,
                container_port: u16::try_from(p.container_port).unwrap_or_default(),
                host_port: u16::try_from(host_port).unwrap_or_default(),
                host_ip: p.host_ip.clone().filter(|h| !h.is_empty()),
            });
        }
    }
    out
}

/// The sandbox config of a pod. `dns_config` comes from `dns::dns_config`.
pub fn sandbox_config(
    pod: &Pod,
    config: &Config,
    attempt: u32,
    cgroup_parent: String,
    dns_config: Option<DnsConfig>,
) -> PodSandboxConfig {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut sandbox_labels: Labels = pod.metadata.labels.clone().unwrap_or_default();
    sandbox_labels.insert(labels::POD_NAME.into(), name.clone());
    sandbox_labels.insert(labels::POD_NAMESPACE.into(), namespace.clone());
    sandbox_labels.insert(labels::POD_UID.into(), uid.clone());
    let sysctls = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.sysctls.as_ref())
        .map(|l| l.iter().map(|s| (s.name.clone(), s.value.clone())).collect())
        .unwrap_or_default();
    PodSandboxConfig {
        metadata: PodSandboxMetadata { name: name.clone(), namespace: namespace.clone(), uid: uid.clone(), attempt },
        hostname: kernel_hostname(pod, &config.cluster_domain),
        log_directory: config.pod_log_dir(&namespace, &name, &uid),
        dns_config,
        port_mappings: port_mappings(pod),
        labels: sandbox_labels,
        annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        cgroup_parent,
        namespace_options: namespace_options(pod),
        sysctls,
        privileged: has_privileged_container(pod),
    }
}

/// Whether any container of the pod, init and ephemeral ones included, is privileged
/// (upstream's `kubecontainer.HasPrivilegedContainer`).
fn has_privileged_container(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    let privileged =
        |sc: Option<&k8s_openapi::api::core::v1::SecurityContext>| sc.and_then(|sc| sc.privileged).unwrap_or(false);
    spec.containers.iter().any(|c| privileged(c.security_context.as_ref()))
        || spec.init_containers.iter().flatten().any(|c| privileged(c.security_context.as_ref()))
        || spec.ephemeral_containers.iter().flatten().any(|c| privileged(c.security_context.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn config() -> Config {
        crate::kuberuntime::tests_support::config()
    }

    #[test]
    fn sandbox_config_carries_identity_hostname_ports_and_namespaces() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                labels: Some([("app".to_string(), "x".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                share_process_namespace: Some(true),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        container_port: 80,
                        host_port: Some(8080),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let sc = sandbox_config(&pod, &config(), 2, "/kubepods/besteffort/podu1".into(), None);
        assert_eq!(sc.metadata.attempt, 2);
        assert_eq!(sc.hostname, "web");
        assert_eq!(sc.labels["app"], "x");
        assert_eq!(sc.labels[labels::POD_UID], "u1");
        assert_eq!(sc.labels[labels::POD_NAME], "web");
        assert_eq!(sc.labels[labels::POD_NAMESPACE], "ns");
        assert!(sc.log_directory.ends_with("pods/ns_web_u1"));
        assert_eq!(sc.port_mappings.len(), 1);
        assert_eq!(sc.port_mappings[0].host_port, 8080);
        assert_eq!(sc.namespace_options.pid, NamespaceMode::Pod);
        assert_eq!(sc.namespace_options.network, NamespaceMode::Pod);
        assert!(!sc.privileged, "no container asks for privilege");
    }

    #[test]
    fn a_privileged_init_container_makes_the_sandbox_privileged() {
        use k8s_openapi::api::core::v1::SecurityContext;
        let privileged = Container {
            name: "init".into(),
            security_context: Some(SecurityContext { privileged: Some(true), ..Default::default() }),
            ..Default::default()
        };
        let mut pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container { name: "c".into(), ..Default::default() }],
                init_containers: Some(vec![privileged]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(sandbox_config(&pod, &config(), 0, String::new(), None).privileged);
        pod.spec.as_mut().unwrap().init_containers = None;
        assert!(!sandbox_config(&pod, &config(), 0, String::new(), None).privileged);
    }

    #[test]
    fn long_hostnames_are_truncated_without_trailing_dash() {
        let name = format!("{}-{}", "a".repeat(62), "bcd");
        let pod = Pod { metadata: ObjectMeta { name: Some(name), ..Default::default() }, ..Default::default() };
        assert_eq!(hostname(&pod), "a".repeat(62));
    }

    #[test]
    fn set_hostname_as_fqdn_gives_the_kernel_the_fqdn_when_it_fits() {
        let pod = |hostname: &str, fqdn: bool| Pod {
            metadata: ObjectMeta { name: Some("web".into()), namespace: Some("ns".into()), ..Default::default() },
            spec: Some(PodSpec {
                hostname: Some(hostname.into()),
                subdomain: Some("sub".into()),
                set_hostname_as_fqdn: Some(fqdn),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sc = |p: &Pod| sandbox_config(p, &config(), 0, String::new(), None).hostname;
        assert_eq!(sc(&pod("h", true)), "h.sub.ns.svc.cluster.local");
        assert_eq!(sc(&pod("h", false)), "h");
        // 64 characters at most, the kernel's nodename field.
        let long = "a".repeat(40);
        assert_eq!(sc(&pod(&long, true)), long);
    }
}

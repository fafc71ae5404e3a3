//! Pod sandboxes of the built-in runtime: a directory per sandbox holding the files its
//! containers share (hostname, resolv.conf, the /dev/shm tmpfs) and the pinned namespaces, and
//! a sandbox shim whose pause process keeps those namespaces alive.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::records::{self, SandboxRecord};
use super::{BuiltinRuntime, process};
use crate::cri::{
    DnsConfig, NamespaceMode, PodSandboxConfig, PodSandboxState, PodSandboxStatus, Protocol, RuntimeError,
};
use crate::shim::client as shim;

/// The size of a sandbox's /dev/shm, as Docker and containerd default it.
const SHM_SIZE: u64 = 64 * 1024 * 1024;

/// What a sandbox's directory holds, by name.
pub struct SandboxDir(pub PathBuf);

impl SandboxDir {
    pub fn record(&self) -> PathBuf {
        self.0.join("sandbox.json")
    }
    pub fn hostname(&self) -> PathBuf {
        self.0.join("hostname")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.0.join("resolv.conf")
    }
    pub fn shm(&self) -> PathBuf {
        self.0.join("shm")
    }
    pub fn ns(&self, kind: &str) -> PathBuf {
        self.0.join("ns").join(kind)
    }
}

/// The resolv.conf a sandbox gets: the kubelet's DNS config, or the host's file as it is.
pub fn resolv_conf(dns: Option<&DnsConfig>) -> std::io::Result<String> {
    let Some(dns) = dns else {
        return match std::fs::read_to_string("/etc/resolv.conf") {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e),
        };
    };
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(text)
}

impl BuiltinRuntime {
    pub(super) fn sandbox_dir(&self, id: &str) -> SandboxDir {
        SandboxDir(self.root.join("sandboxes").join(id))
    }

    pub(super) async fn create_sandbox(&self, config: &PodSandboxConfig) -> Result<String, RuntimeError> {
        let id = records::new_id();
        let dir = self.sandbox_dir(&id);
        let result = self.start_sandbox(&id, &dir, config).await;
        if let Err(e) = &result {
            tracing::warn!(sandbox = %id, pod = %config.metadata.name, error = %e, "sandbox failed to start; cleaning up");
            let _ = self.stop_sandbox_process(&id).await;
            if let Some(network) = &self.network {
                let _ = network.detach(&id).await;
            }
            let _ = self.destroy_sandbox_dir(&dir).await;
        }
        result.map(|()| id)
    }

    async fn start_sandbox(&self, id: &str, dir: &SandboxDir, config: &PodSandboxConfig) -> Result<(), RuntimeError> {
        let options = config.namespace_options;
        let host_network = options.network == NamespaceMode::Node;
        let host_ipc = options.ipc == NamespaceMode::Node;
        std::fs::create_dir_all(dir.0.join("ns")).map_err(|e| RuntimeError::io("creating", &dir.0, e))?;
        std::fs::create_dir_all(&config.log_directory)
            .map_err(|e| RuntimeError::io("creating", &config.log_directory, e))?;
        let hostname = if host_network { host_name() } else { config.hostname.clone() };
        std::fs::write(dir.hostname(), format!("{hostname}\n"))
            .map_err(|e| RuntimeError::io("writing", dir.hostname(), e))?;
        let resolv =
            resolv_conf(config.dns_config.as_ref()).map_err(|e| RuntimeError::io("reading", "/etc/resolv.conf", e))?;
        std::fs::write(dir.resolv_conf(), resolv).map_err(|e| RuntimeError::io("writing", dir.resolv_conf(), e))?;
        if !host_ipc {
            let shm = dir.shm();
            std::fs::create_dir_all(&shm).map_err(|e| RuntimeError::io("creating", &shm, e))?;
            tokio::task::spawn_blocking(move || crate::rootfs::mount_shm(&shm, SHM_SIZE))
                .await?
                .map_err(|e| RuntimeError::Unavailable(format!("mounting the sandbox's /dev/shm: {e}")))?;
        }
        let mut record = SandboxRecord {
            id: id.to_owned(),
            config: config.clone(),
            created_at: SystemTime::now(),
            ready: false,
            shim_pid: None,
            pid: None,
            ips: Vec::new(),
        };
        self.save_sandbox(&record)?;
        let args = shim::SandboxArgs {
            id: id.to_owned(),
            dir: dir.0.clone(),
            hostname: config.hostname.clone(),
            new_net: !host_network,
            new_ipc: !host_ipc,
            new_uts: !host_network,
            share_pid: options.pid == NamespaceMode::Pod,
            cgroup: sandbox_cgroup(config, id),
            sysctls: config.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        let started = shim::run_sandbox(&self.shim, &args)
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("starting the pod sandbox: {e}")))?;
        record.shim_pid = Some(started.shim_pid);
        record.pid = Some(started.pid);
        self.save_sandbox(&record)?;
        if !host_network && let Some(network) = &self.network {
            let request = attach_request(id, dir, config);
            let attachment = network.attach(&request).await.map_err(RuntimeError::Network)?;
            record.ips = attachment.ips.iter().map(|ip| ip.to_string()).collect();
        }
        record.ready = true;
        self.save_sandbox(&record)?;
        tracing::info!(sandbox = %id, pod = %config.metadata.name, namespace = %config.metadata.namespace, pid = started.pid, "sandbox ready");
        Ok(())
    }

    pub(super) fn sandbox_status(&self, record: &SandboxRecord) -> PodSandboxStatus {
        PodSandboxStatus {
            id: record.id.clone(),
            metadata: record.config.metadata.clone(),
            state: self.sandbox_state(record),
            created_at: record.created_at,
            ips: record.ips.clone(),
            namespace_options: record.config.namespace_options,
            labels: record.config.labels.clone(),
            annotations: record.config.annotations.clone(),
        }
    }

    pub(super) fn sandbox_state(&self, record: &SandboxRecord) -> PodSandboxState {
        if record.ready && record.pid.is_some_and(process::alive) {
            PodSandboxState::Ready
        } else {
            PodSandboxState::NotReady
        }
    }

    /// Kills the sandbox's pause process (its containers must be stopped first) and marks it
    /// not ready. Idempotent.
    pub(super) async fn stop_sandbox_process(&self, id: &str) -> Result<(), RuntimeError> {
        let Ok(mut record) = self.load_sandbox(id) else { return Ok(()) };
        if let Some(pid) = record.pid {
            process::signal_unless_exited(pid, 9, None);
            // The pause process is reaped by its shim, which then exits.
            for _ in 0..100 {
                if !process::alive(pid) && !record.shim_pid.is_some_and(process::alive) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        if record.ready {
            record.ready = false;
            self.save_sandbox(&record)?;
        }
        Ok(())
    }

    /// Unmounts the namespace pins and the shm tmpfs and deletes the directory.
    pub(super) async fn destroy_sandbox_dir(&self, dir: &SandboxDir) -> Result<(), RuntimeError> {
        let root = dir.0.clone();
        if let Some(id) = root.file_name().and_then(|n| n.to_str()) {
            self.forget_sandbox(id)?;
        }
        let shm = dir.shm();
        let pins: Vec<PathBuf> = ["net", "ipc", "uts", "pid"].iter().map(|k| dir.ns(k)).collect();
        tokio::task::spawn_blocking(move || {
            for pin in &pins {
                detach_mount(pin);
            }
            if shm.exists() {
                let _ = crate::rootfs::unmount_shm(&shm);
            }
            match std::fs::remove_dir_all(&root) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(RuntimeError::io("removing", &root, e)),
            }
        })
        .await?
    }
}

/// What the pod network needs to attach a sandbox: its namespace and hostPorts.
fn attach_request(id: &str, dir: &SandboxDir, config: &PodSandboxConfig) -> tug_network::AttachRequest {
    let host_ports = config
        .port_mappings
        .iter()
        .map(|m| tug_network::HostPort {
            protocol: match m.protocol {
                Protocol::Tcp => tug_network::Protocol::Tcp,
                Protocol::Udp => tug_network::Protocol::Udp,
                Protocol::Sctp => tug_network::Protocol::Sctp,
            },
            host_port: m.host_port,
            container_port: m.container_port,
            // An unset or 0.0.0.0 hostIP means every address of the node.
            host_ip: m
                .host_ip
                .as_deref()
                .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
                .filter(|ip| !ip.is_unspecified()),
        })
        .collect();
    tug_network::AttachRequest {
        sandbox_id: id.to_owned(),
        netns: dir.ns("net"),
        pod_namespace: config.metadata.namespace.clone(),
        pod_name: config.metadata.name.clone(),
        host_ports,
    }
}

/// Lazily unmounts whatever is mounted on `path` (a namespace pin), ignoring "not mounted".
fn detach_mount(path: &Path) {
    if path.exists() {
        let _ = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH);
    }
}

/// This machine's host name, for host-network sandboxes (they share the host's UTS namespace).
fn host_name() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// The cgroup the sandbox's pause process runs in: its own below the pod's, as containerd
/// gives the pause container one. cgroup v2 lets a cgroup hold processes or enable
/// controllers for children, not both, so the pod's cgroup itself must stay empty for the
/// containers' cgroups below it to get their limits.
pub(super) fn sandbox_cgroup(config: &PodSandboxConfig, id: &str) -> Option<String> {
    let parent = config.cgroup_parent.trim_end_matches('/');
    (!parent.is_empty()).then(|| format!("{parent}/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_the_kubelets_dns_config() {
        let dns = DnsConfig {
            servers: vec!["10.43.0.10".into()],
            searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns)).unwrap(),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
    }
}

//! Conversions between the kubelet's CRI types ([`crate::cri`], [`crate::Image`]) and the CRI v1
//! protobuf messages ([`super::v1`]).
//!
//! The CRI uses zero values for "not set" (0 for a timestamp, an empty string for a host IP, 0
//! for a cpu quota), where our types use `Option`; the conversions translate between the two.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::v1;
use crate::Image;
use crate::cri::{
    Container, ContainerConfig, ContainerMetadata, ContainerState, ContainerStats, ContainerStatus, CpuUsage, FsUsage,
    ImageFsInfo, LinuxResources, LinuxSecurityContext, MemoryUsage, MountPropagation, NamespaceMode, NamespaceOptions,
    PodSandbox, PodSandboxConfig, PodSandboxMetadata, PodSandboxState, PodSandboxStats, PodSandboxStatus, Protocol,
    SeccompProfile,
};

/// A CRI timestamp (nanoseconds since the epoch; 0 is "not set").
pub(crate) fn time(nanos: i64) -> Option<SystemTime> {
    u64::try_from(nanos).ok().filter(|n| *n > 0).map(|n| UNIX_EPOCH + Duration::from_nanos(n))
}

fn time_or_epoch(nanos: i64) -> SystemTime {
    time(nanos).unwrap_or(UNIX_EPOCH)
}

fn sandbox_metadata(m: &PodSandboxMetadata) -> v1::PodSandboxMetadata {
    v1::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

fn sandbox_metadata_from(m: Option<v1::PodSandboxMetadata>) -> PodSandboxMetadata {
    let m = m.unwrap_or_default();
    PodSandboxMetadata { name: m.name, namespace: m.namespace, uid: m.uid, attempt: m.attempt }
}

fn container_metadata_from(m: Option<v1::ContainerMetadata>) -> ContainerMetadata {
    let m = m.unwrap_or_default();
    ContainerMetadata { name: m.name, attempt: m.attempt }
}

fn namespace_mode(mode: NamespaceMode) -> i32 {
    match mode {
        NamespaceMode::Pod => v1::NamespaceMode::Pod,
        NamespaceMode::Container => v1::NamespaceMode::Container,
        NamespaceMode::Node => v1::NamespaceMode::Node,
    }
    .into()
}

fn namespace_mode_from(mode: i32) -> NamespaceMode {
    match v1::NamespaceMode::try_from(mode) {
        Ok(v1::NamespaceMode::Container) => NamespaceMode::Container,
        Ok(v1::NamespaceMode::Node) => NamespaceMode::Node,
        _ => NamespaceMode::Pod,
    }
}

/// Every mode is sent explicitly: the CRI's zero value for PID is POD, the pod spec's default is
/// one PID namespace per container.
fn namespace_options(ns: &NamespaceOptions) -> v1::NamespaceOption {
    v1::NamespaceOption {
        network: namespace_mode(ns.network),
        pid: namespace_mode(ns.pid),
        ipc: namespace_mode(ns.ipc),
        target_id: String::new(),
    }
}

fn namespace_options_from(ns: Option<v1::NamespaceOption>) -> NamespaceOptions {
    let ns = ns.unwrap_or_default();
    NamespaceOptions {
        network: namespace_mode_from(ns.network),
        pid: namespace_mode_from(ns.pid),
        ipc: namespace_mode_from(ns.ipc),
    }
}

pub(crate) fn sandbox_config(config: &PodSandboxConfig) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(sandbox_metadata(&config.metadata)),
        // A host-network sandbox keeps the node's UTS namespace and name: upstream's kubelet
        // sends no hostname then, and runtimes refuse one (runc: "unable to set hostname
        // without a private UTS namespace").
        hostname: if config.namespace_options.network == NamespaceMode::Node {
            String::new()
        } else {
            config.hostname.clone()
        },
        log_directory: config.log_directory.to_string_lossy().into_owned(),
        dns_config: config.dns_config.as_ref().map(|dns| v1::DnsConfig {
            servers: dns.servers.clone(),
            searches: dns.searches.clone(),
            options: dns.options.clone(),
        }),
        port_mappings: config
            .port_mappings
            .iter()
            .map(|p| v1::PortMapping {
                protocol: match p.protocol {
                    Protocol::Tcp => v1::Protocol::Tcp,
                    Protocol::Udp => v1::Protocol::Udp,
                    Protocol::Sctp => v1::Protocol::Sctp,
                }
                .into(),
                container_port: i32::from(p.container_port),
                host_port: i32::from(p.host_port),
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
            .collect(),
        labels: config.labels.clone().into_iter().collect(),
        annotations: config.annotations.clone().into_iter().collect(),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: config.cgroup_parent.clone(),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(&config.namespace_options)),
                privileged: config.privileged,
                ..Default::default()
            }),
            sysctls: config.sysctls.clone().into_iter().collect(),
        }),
    }
}

fn sandbox_state_from(state: i32) -> PodSandboxState {
    match v1::PodSandboxState::try_from(state) {
        Ok(v1::PodSandboxState::SandboxReady) => PodSandboxState::Ready,
        _ => PodSandboxState::NotReady,
    }
}

pub(crate) fn sandbox_from(s: v1::PodSandbox) -> PodSandbox {
    PodSandbox {
        id: s.id,
        metadata: sandbox_metadata_from(s.metadata),
        state: sandbox_state_from(s.state),
        created_at: time_or_epoch(s.created_at),
        labels: s.labels.into_iter().collect(),
        annotations: s.annotations.into_iter().collect(),
    }
}

pub(crate) fn sandbox_status_from(s: v1::PodSandboxStatus) -> PodSandboxStatus {
    let ips = s
        .network
        .map(|n| std::iter::once(n.ip).chain(n.additional_ips.into_iter().map(|ip| ip.ip)).filter(|ip| !ip.is_empty()))
        .into_iter()
        .flatten()
        .collect();
    PodSandboxStatus {
        id: s.id,
        metadata: sandbox_metadata_from(s.metadata),
        state: sandbox_state_from(s.state),
        created_at: time_or_epoch(s.created_at),
        ips,
        namespace_options: namespace_options_from(s.linux.and_then(|l| l.namespaces).and_then(|n| n.options)),
        labels: s.labels.into_iter().collect(),
        annotations: s.annotations.into_iter().collect(),
    }
}

fn resources(r: &LinuxResources) -> v1::LinuxContainerResources {
    v1::LinuxContainerResources {
        cpu_period: r.cpu_period.and_then(|v| i64::try_from(v).ok()).unwrap_or(0),
        cpu_quota: r.cpu_quota.unwrap_or(0),
        cpu_shares: r.cpu_shares.and_then(|v| i64::try_from(v).ok()).unwrap_or(0),
        memory_limit_in_bytes: r.memory_limit_in_bytes.unwrap_or(0),
        oom_score_adj: r.oom_score_adj.map_or(0, i64::from),
        // The pids limit has no CRI field: the kubelet sets it on the pod's cgroup.
        ..Default::default()
    }
}

/// The seccomp profile both as the `seccomp` message and in the deprecated path form, which
/// runtimes from before the message (and containerd 1.6 next to it) read.
fn seccomp(profile: &SeccompProfile) -> (v1::SecurityProfile, String) {
    use v1::security_profile::ProfileType;
    let (profile_type, localhost_ref, path) = match profile {
        SeccompProfile::Unconfined => (ProfileType::Unconfined, String::new(), "unconfined".to_owned()),
        SeccompProfile::RuntimeDefault => (ProfileType::RuntimeDefault, String::new(), "runtime/default".to_owned()),
        SeccompProfile::Localhost(p) => {
            let p = p.to_string_lossy().into_owned();
            (ProfileType::Localhost, p.clone(), format!("localhost/{p}"))
        }
    };
    (v1::SecurityProfile { profile_type: profile_type.into(), localhost_ref }, path)
}

fn security_context(sc: &LinuxSecurityContext) -> v1::LinuxContainerSecurityContext {
    let (seccomp, seccomp_profile_path) = seccomp(&sc.seccomp);
    #[allow(deprecated)]
    v1::LinuxContainerSecurityContext {
        capabilities: Some(v1::Capability {
            add_capabilities: sc.capabilities.add.clone(),
            drop_capabilities: sc.capabilities.drop.clone(),
            add_ambient_capabilities: Vec::new(),
        }),
        privileged: sc.privileged,
        namespace_options: Some(namespace_options(&sc.namespace_options)),
        run_as_user: sc.run_as_user.map(|uid| v1::Int64Value { value: i64::from(uid) }),
        run_as_username: sc.run_as_username.clone().unwrap_or_default(),
        readonly_rootfs: sc.readonly_rootfs,
        supplemental_groups: sc.supplemental_groups.iter().map(|g| i64::from(*g)).collect(),
        seccomp_profile_path,
        no_new_privs: sc.no_new_privs,
        run_as_group: sc.run_as_group.map(|gid| v1::Int64Value { value: i64::from(gid) }),
        masked_paths: sc.masked_paths.clone().unwrap_or_default(),
        readonly_paths: sc.readonly_paths.clone().unwrap_or_default(),
        seccomp: Some(seccomp),
        apparmor: None,
    }
}

pub(crate) fn container_config(config: &ContainerConfig) -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata { name: config.metadata.name.clone(), attempt: config.metadata.attempt }),
        image: Some(image_spec(&config.image)),
        command: config.command.clone(),
        args: config.args.clone(),
        working_dir: config.working_dir.clone().unwrap_or_default(),
        envs: config.envs.iter().map(|(key, value)| v1::KeyValue { key: key.clone(), value: value.clone() }).collect(),
        mounts: config
            .mounts
            .iter()
            .map(|m| v1::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.to_string_lossy().into_owned(),
                readonly: m.readonly,
                selinux_relabel: false,
                propagation: match m.propagation {
                    MountPropagation::Private => v1::MountPropagation::PropagationPrivate,
                    MountPropagation::HostToContainer => v1::MountPropagation::PropagationHostToContainer,
                    MountPropagation::Bidirectional => v1::MountPropagation::PropagationBidirectional,
                }
                .into(),
            })
            .collect(),
        labels: config.labels.clone().into_iter().collect(),
        annotations: config.annotations.clone().into_iter().collect(),
        log_path: config.log_path.to_string_lossy().into_owned(),
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        linux: Some(v1::LinuxContainerConfig {
            resources: Some(resources(&config.resources)),
            security_context: Some(security_context(&config.security_context)),
        }),
        // Runtimes that predate the field (containerd 1.6) ignore it and use the image's.
        stop_signal: config
            .stop_signal
            .as_deref()
            .and_then(v1::Signal::from_str_name)
            .unwrap_or(v1::Signal::RuntimeDefault)
            .into(),
    }
}

pub(crate) fn image_spec(image: &str) -> v1::ImageSpec {
    v1::ImageSpec { image: image.to_owned(), ..Default::default() }
}

pub(crate) fn container_state(state: ContainerState) -> i32 {
    match state {
        ContainerState::Created => v1::ContainerState::ContainerCreated,
        ContainerState::Running => v1::ContainerState::ContainerRunning,
        ContainerState::Exited => v1::ContainerState::ContainerExited,
        ContainerState::Unknown => v1::ContainerState::ContainerUnknown,
    }
    .into()
}

fn container_state_from(state: i32) -> ContainerState {
    match v1::ContainerState::try_from(state) {
        Ok(v1::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(v1::ContainerState::ContainerRunning) => ContainerState::Running,
        Ok(v1::ContainerState::ContainerExited) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

/// The image ID a container runs: `image_id` from runtimes that fill it (CRI 1.36), else
/// `image_ref`, which containerd sets to the image ID.
fn image_id(image_id: String, image_ref: String) -> String {
    if image_id.is_empty() { image_ref } else { image_id }
}

pub(crate) fn container_from(c: v1::Container) -> Container {
    Container {
        id: c.id,
        pod_sandbox_id: c.pod_sandbox_id,
        metadata: container_metadata_from(c.metadata),
        image: c.image.map(|i| i.image).unwrap_or_default(),
        image_ref: image_id(c.image_id, c.image_ref),
        state: container_state_from(c.state),
        created_at: time_or_epoch(c.created_at),
        labels: c.labels.into_iter().collect(),
        annotations: c.annotations.into_iter().collect(),
    }
}

pub(crate) fn container_status_from(s: v1::ContainerStatus) -> ContainerStatus {
    let state = container_state_from(s.state);
    let finished_at = time(s.finished_at);
    ContainerStatus {
        id: s.id,
        metadata: container_metadata_from(s.metadata),
        state,
        created_at: time_or_epoch(s.created_at),
        started_at: time(s.started_at),
        finished_at,
        // The CRI's exit code means something only once the container has finished.
        exit_code: (state == ContainerState::Exited || finished_at.is_some()).then_some(s.exit_code),
        image: s.image.map(|i| i.image).unwrap_or_default(),
        image_ref: image_id(s.image_id, s.image_ref),
        reason: Some(s.reason).filter(|r| !r.is_empty()),
        message: Some(s.message).filter(|m| !m.is_empty()),
        labels: s.labels.into_iter().collect(),
        annotations: s.annotations.into_iter().collect(),
        log_path: s.log_path.into(),
        pid: None,
    }
}

pub(crate) fn image_from(i: v1::Image) -> Image {
    let user = match (i.uid, i.username) {
        (Some(uid), _) => Some(uid.value.to_string()),
        (None, name) if !name.is_empty() => Some(name),
        _ => None,
    };
    Image { id: i.id, repo_tags: i.repo_tags, repo_digests: i.repo_digests, size: i.size, user }
}

/// The first image filesystem with a mountpoint, as upstream's stats provider reads
/// `ImageFsInfo` (containerd reports one: its snapshotter's root).
pub(crate) fn image_fs_from(filesystems: Vec<v1::FilesystemUsage>) -> Option<ImageFsInfo> {
    filesystems.into_iter().find_map(|fs| {
        let mountpoint = fs.fs_id.map(|id| id.mountpoint).filter(|m| !m.is_empty())?;
        Some(ImageFsInfo { mountpoint: mountpoint.into(), used_bytes: fs.used_bytes.map_or(0, |v| v.value) })
    })
}

fn cpu_from(cpu: Option<v1::CpuUsage>) -> CpuUsage {
    let cpu = cpu.unwrap_or_default();
    CpuUsage {
        timestamp: time_or_epoch(cpu.timestamp),
        usage_core_nano_seconds: cpu.usage_core_nano_seconds.map_or(0, |v| v.value),
    }
}

fn memory_from(memory: Option<v1::MemoryUsage>) -> MemoryUsage {
    let memory = memory.unwrap_or_default();
    MemoryUsage {
        timestamp: time_or_epoch(memory.timestamp),
        working_set_bytes: memory.working_set_bytes.map_or(0, |v| v.value),
        usage_bytes: memory.usage_bytes.map_or(0, |v| v.value),
    }
}

pub(crate) fn sandbox_stats_from(s: v1::PodSandboxStats) -> PodSandboxStats {
    let attributes = s.attributes.unwrap_or_default();
    let linux = s.linux.unwrap_or_default();
    PodSandboxStats {
        id: attributes.id,
        metadata: sandbox_metadata_from(attributes.metadata),
        labels: attributes.labels.into_iter().collect(),
        cpu: cpu_from(linux.cpu),
        memory: memory_from(linux.memory),
        containers: linux
            .containers
            .into_iter()
            .map(|c| {
                let attributes = c.attributes.unwrap_or_default();
                ContainerStats {
                    id: attributes.id,
                    metadata: container_metadata_from(attributes.metadata),
                    labels: attributes.labels.into_iter().collect(),
                    cpu: cpu_from(c.cpu),
                    memory: memory_from(c.memory),
                }
            })
            .collect(),
    }
}

/// A container's ID and writable layer, if the runtime reported the layer.
pub(crate) fn writable_layer_from(s: v1::ContainerStats) -> Option<(String, FsUsage)> {
    let id = s.attributes?.id;
    let layer = s.writable_layer?;
    let value = |v: Option<v1::UInt64Value>| v.map_or(0, |v| v.value);
    Some((id, FsUsage { bytes: value(layer.used_bytes), inodes: value(layer.inodes_used) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::{Capabilities, DnsConfig, Mount, PortMapping};
    use std::path::PathBuf;

    fn sandbox() -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: PodSandboxMetadata { name: "web".into(), namespace: "ns".into(), uid: "u1".into(), attempt: 2 },
            hostname: "web".into(),
            log_directory: PathBuf::from("/var/log/pods/ns_web_u1"),
            dns_config: Some(DnsConfig { servers: vec!["10.43.0.10".into()], searches: vec![], options: vec![] }),
            port_mappings: vec![PortMapping {
                protocol: Protocol::Udp,
                container_port: 53,
                host_port: 5353,
                host_ip: None,
            }],
            labels: [("a".to_owned(), "b".to_owned())].into(),
            annotations: Default::default(),
            cgroup_parent: "/kubepods/burstable/podu1".into(),
            namespace_options: NamespaceOptions {
                network: NamespaceMode::Node,
                pid: NamespaceMode::Container,
                ipc: NamespaceMode::Pod,
            },
            sysctls: Default::default(),
            privileged: true,
        }
    }

    #[test]
    fn the_image_filesystem_is_the_first_with_a_mountpoint() {
        let fs = |mountpoint: &str, used| v1::FilesystemUsage {
            fs_id: Some(v1::FilesystemIdentifier { mountpoint: mountpoint.into() }),
            used_bytes: Some(v1::UInt64Value { value: used }),
            ..Default::default()
        };
        let info = image_fs_from(vec![fs("", 1), fs("/var/lib/containerd/snapshots", 42)]).unwrap();
        assert_eq!(info.mountpoint, PathBuf::from("/var/lib/containerd/snapshots"));
        assert_eq!(info.used_bytes, 42);
        assert_eq!(image_fs_from(vec![]), None);
    }

    #[test]
    fn sandbox_config_sends_every_namespace_mode_and_the_log_directory() {
        let c = sandbox_config(&sandbox());
        let sc = c.linux.unwrap().security_context.unwrap();
        let ns = sc.namespace_options.unwrap();
        assert_eq!(ns.network, v1::NamespaceMode::Node as i32);
        assert_eq!(ns.pid, v1::NamespaceMode::Container as i32);
        assert_eq!(ns.ipc, v1::NamespaceMode::Pod as i32);
        assert_eq!(c.log_directory, "/var/log/pods/ns_web_u1");
        assert_eq!(c.hostname, "", "a host-network sandbox has the node's hostname");
        assert_eq!(c.port_mappings[0].protocol, v1::Protocol::Udp as i32);
        assert_eq!(c.port_mappings[0].host_ip, "");
        assert_eq!(c.metadata.unwrap().attempt, 2);
        assert!(sc.privileged, "containerd refuses privileged containers otherwise");
    }

    #[test]
    fn container_config_maps_security_resources_mounts_and_stop_signal() {
        let config = ContainerConfig {
            metadata: ContainerMetadata { name: "c".into(), attempt: 3 },
            image: "sha256:abc".into(),
            command: vec!["sh".into()],
            args: vec!["-c".into(), "true".into()],
            working_dir: None,
            envs: vec![("A".into(), "1".into())],
            mounts: vec![Mount {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                propagation: MountPropagation::HostToContainer,
            }],
            labels: Default::default(),
            annotations: Default::default(),
            log_path: PathBuf::from("c/3.log"),
            stdin: false,
            stdin_once: false,
            tty: false,
            resources: LinuxResources {
                cpu_period: Some(100_000),
                cpu_quota: Some(50_000),
                cpu_shares: Some(512),
                memory_limit_in_bytes: Some(64 << 20),
                oom_score_adj: Some(-997),
                pids_limit: None,
            },
            security_context: LinuxSecurityContext {
                capabilities: Capabilities { add: vec!["NET_ADMIN".into()], drop: vec!["ALL".into()] },
                run_as_user: Some(1000),
                run_as_group: Some(0),
                seccomp: SeccompProfile::RuntimeDefault,
                ..Default::default()
            },
            stop_signal: Some("SIGQUIT".into()),
        };
        let c = container_config(&config);
        let linux = c.linux.unwrap();
        let r = linux.resources.unwrap();
        assert_eq!((r.cpu_period, r.cpu_quota, r.cpu_shares), (100_000, 50_000, 512));
        assert_eq!((r.memory_limit_in_bytes, r.oom_score_adj), (64 << 20, -997));
        let sc = linux.security_context.unwrap();
        assert_eq!(sc.run_as_user.unwrap().value, 1000);
        // uid 0 and gid 0 are real values, sent as set wrappers.
        assert_eq!(sc.run_as_group.unwrap().value, 0);
        assert_eq!(sc.capabilities.unwrap().drop_capabilities, vec!["ALL"]);
        assert_eq!(sc.seccomp.unwrap().profile_type, v1::security_profile::ProfileType::RuntimeDefault as i32);
        #[allow(deprecated)]
        let path = sc.seccomp_profile_path;
        assert_eq!(path, "runtime/default");
        assert_eq!(sc.namespace_options.unwrap().pid, v1::NamespaceMode::Pod as i32);
        assert_eq!(c.mounts[0].propagation, v1::MountPropagation::PropagationHostToContainer as i32);
        assert_eq!(c.log_path, "c/3.log");
        assert_eq!(c.stop_signal, v1::Signal::Sigquit as i32);
        assert_eq!(c.image.unwrap().image, "sha256:abc");
    }

    #[test]
    fn container_status_has_an_exit_code_only_once_finished() {
        let running = v1::ContainerStatus {
            state: v1::ContainerState::ContainerRunning.into(),
            started_at: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        let s = container_status_from(running);
        assert_eq!(s.exit_code, None);
        assert!(s.started_at.is_some() && s.finished_at.is_none());
        let exited = v1::ContainerStatus {
            state: v1::ContainerState::ContainerExited.into(),
            finished_at: 1_700_000_000_000_000_000,
            exit_code: 0,
            reason: "Completed".into(),
            image_ref: "sha256:abc".into(),
            ..Default::default()
        };
        let s = container_status_from(exited);
        assert_eq!(s.exit_code, Some(0));
        assert_eq!(s.reason.as_deref(), Some("Completed"));
        assert_eq!(s.message, None);
        assert_eq!(s.image_ref, "sha256:abc");
    }

    #[test]
    fn sandbox_status_lists_the_primary_ip_first() {
        let s = sandbox_status_from(v1::PodSandboxStatus {
            network: Some(v1::PodSandboxNetworkStatus {
                ip: "10.42.0.5".into(),
                additional_ips: vec![v1::PodIp { ip: "fd00::5".into() }],
            }),
            ..Default::default()
        });
        assert_eq!(s.ips, vec!["10.42.0.5", "fd00::5"]);
        assert_eq!(s.state, PodSandboxState::Ready);
        let host = sandbox_status_from(v1::PodSandboxStatus {
            network: Some(v1::PodSandboxNetworkStatus::default()),
            ..Default::default()
        });
        assert!(host.ips.is_empty());
    }

    #[test]
    fn image_user_is_the_uid_or_else_the_name() {
        let by_uid = image_from(v1::Image { uid: Some(v1::Int64Value { value: 0 }), ..Default::default() });
        assert_eq!(by_uid.user.as_deref(), Some("0"));
        let by_name = image_from(v1::Image { username: "nobody".into(), ..Default::default() });
        assert_eq!(by_name.user.as_deref(), Some("nobody"));
        assert_eq!(image_from(v1::Image::default()).user, None);
    }

    #[test]
    fn a_containers_writable_layer_is_read_from_its_stats_when_reported() {
        let stats = |layer: Option<v1::FilesystemUsage>| v1::ContainerStats {
            attributes: Some(v1::ContainerAttributes { id: "c1".into(), ..Default::default() }),
            writable_layer: layer,
            ..Default::default()
        };
        let layer = v1::FilesystemUsage {
            used_bytes: Some(v1::UInt64Value { value: 4096 }),
            inodes_used: Some(v1::UInt64Value { value: 3 }),
            ..Default::default()
        };
        assert_eq!(
            writable_layer_from(stats(Some(layer))),
            Some(("c1".to_owned(), FsUsage { bytes: 4096, inodes: 3 }))
        );
        assert_eq!(writable_layer_from(stats(None)), None);
    }
}

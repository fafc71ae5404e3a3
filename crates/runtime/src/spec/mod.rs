//! The OCI runtime spec (`config.json`) of a container, built from the CRI `ContainerConfig`,
//! the image's config and the sandbox the container joins — what containerd's CRI plugin does
//! in `container_create_linux.go` with runc's defaults.
//!
//! Kubernetes rules decide the process (`command` replaces the image's Entrypoint, `args` its
//! Cmd), the user (`runAsUser`/`runAsGroup`, else the image's `User` looked up in the image's own
//! `/etc/passwd`), and the hardening (containerd's default capabilities, masked and read-only
//! kernel paths, runc's device allow-list, the `RuntimeDefault` seccomp profile when asked).
//! This module only computes; it mounts nothing and starts nothing.
//!
//! The spec is written for youki's libcontainer, which runs it: two fields are written the
//! way libcontainer reads them where it departs from runc (`noNewPrivileges` is omitted rather
//! than `false`, masked seccomp comparisons have their operands swapped; see
//! [`seccomp::swap_masked_operands_for_libcontainer`]).

mod defaults;
pub mod seccomp;
pub mod user;

use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capabilities, Linux, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, Process, Root, Spec, UserBuilder,
};

use crate::cri::{ContainerConfig, MountPropagation, SeccompProfile};

pub use defaults::{DEFAULT_CAPABILITIES, MASKED_PATHS, READONLY_PATHS};

/// The PATH a container gets when neither the image nor the pod sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's open-files limit for container processes.
const NOFILE_LIMIT: u64 = 1_048_576;

/// Where the sandbox's namespaces are pinned; `None` means the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxNamespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// `Some` when the pod shares its process namespace.
    pub pid: Option<PathBuf>,
    /// hostPID: no pid namespace at all.
    pub host_pid: bool,
}

/// Files the runtime keeps per sandbox, bind-mounted into each container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFiles {
    pub hostname: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    /// The sandbox's shared /dev/shm; `None` gives each container a private tmpfs.
    pub shm: Option<PathBuf>,
}

/// Why a container's spec cannot be built. The messages are the ones the kubelet shows.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command specified")]
    NoCommand,
    #[error("unable to find user {name}: no matching entries in passwd file")]
    UserNotFound { name: String },
    #[error("unable to find group {name}: no matching entries in group file")]
    GroupNotFound { name: String },
    #[error("reading {path}: {source}")]
    ReadRootfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown capability {name:?}")]
    UnknownCapability { name: String },
    #[error("failed to stat mount source {source_path} for {destination}: {source}")]
    MountSource {
        source_path: PathBuf,
        destination: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read seccomp profile {path}: {source}")]
    SeccompRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse seccomp profile {path}: {source}")]
    SeccompParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid runtime spec: {0}")]
    Invalid(#[from] oci_spec::OciSpecError),
}

/// Facts of this machine a spec depends on.
#[derive(Debug, Clone)]
struct Host {
    cgroup_v2: bool,
    /// `/proc/sys/kernel/cap_last_cap`: which capabilities the kernel knows.
    cap_last_cap: Option<usize>,
    /// The runtime's own effective capabilities (`CapEff`), the most it can grant.
    effective_caps: Option<u64>,
    /// Whether the memory controller accounts swap (`memory.memsw.*` on v1, `memory.swap.max`
    /// on v2): only then is the memory+swap limit set.
    swap_accounting: bool,
    seccomp: seccomp::Target,
    /// Where host devices are listed from for privileged containers.
    dev: PathBuf,
    /// The RLIMIT_NOFILE containers get (see [`nofile_limit`]).
    nofile: u64,
}

impl Host {
    fn detect() -> Host {
        let cgroup_v2 = crate::cgroups::detect() == crate::cgroups::CgroupVersion::V2;
        let cap_last_cap =
            std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|text| text.trim().parse().ok());
        let swap_accounting = if cgroup_v2 {
            Path::new("/sys/fs/cgroup/memory.swap.max").exists()
                || std::fs::read_dir("/sys/fs/cgroup")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|entry| entry.path().join("memory.swap.max").exists())
        } else {
            Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        };
        Host {
            cgroup_v2,
            cap_last_cap,
            effective_caps: effective_capabilities(),
            swap_accounting,
            seccomp: seccomp::Target::host(),
            dev: PathBuf::from("/dev"),
            nofile: nofile_limit(),
        }
    }
}

/// The open-files limit containers get: containerd's 1048576 where the runtime may raise limits
/// that far, else the runtime's own hard limit. Without CAP_SYS_RESOURCE (some hosts drop it
/// even for root) raising the hard limit fails with EPERM and no container would start.
fn nofile_limit() -> u64 {
    let current = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(NOFILE_LIMIT);
    let may_raise = effective_capabilities().is_some_and(|caps| caps & (1 << 24) != 0); // CAP_SYS_RESOURCE
    if may_raise { NOFILE_LIMIT } else { current.min(NOFILE_LIMIT) }
}

/// This process's effective capabilities, the `CapEff` mask of /proc/self/status.
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let effective = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(effective.trim(), 16).ok()
}

/// Builds the OCI runtime spec of a container whose root filesystem is mounted at `rootfs`.
pub fn build(
    config: &ContainerConfig,
    image: &ImageConfiguration,
    rootfs: &Path,
    cgroups_path: &str,
    namespaces: &SandboxNamespaces,
    files: &SandboxFiles,
) -> Result<Spec, SpecError> {
    build_for(&Host::detect(), config, image, rootfs, cgroups_path, namespaces, files)
}

fn build_for(
    host: &Host,
    config: &ContainerConfig,
    image: &ImageConfiguration,
    rootfs: &Path,
    cgroups_path: &str,
    namespaces: &SandboxNamespaces,
    files: &SandboxFiles,
) -> Result<Spec, SpecError> {
    let security = &config.security_context;
    let image_config = image.config().clone().unwrap_or_default();

    let resolved = user::resolve(
        rootfs,
        &user::UserRequest {
            run_as_user: security.run_as_user,
            run_as_username: security.run_as_username.as_deref(),
            run_as_group: security.run_as_group,
            supplemental_groups: &security.supplemental_groups,
            image_user: image_config.user().as_deref(),
        },
    )?;

    let all_caps = defaults::grantable_capabilities(host.cap_last_cap, host.effective_caps);
    let caps = if security.privileged {
        all_caps
    } else {
        defaults::capabilities(&security.capabilities.add, &security.capabilities.drop, &all_caps)?
    };
    // A non-root process keeps its capabilities only in the bounding set: execve clears the
    // others for it anyway, and saying so in the spec keeps the spec honest (as Docker does).
    let granted = if resolved.uid == 0 { caps.clone() } else { Capabilities::new() };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(granted.clone())
        .permitted(granted)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()?;

    let mut process = Process::default();
    process.set_args(Some(process_args(config, image_config.entrypoint(), image_config.cmd())?));
    process.set_env(Some(environment(image_config.env().as_deref().unwrap_or_default(), &config.envs)));
    let cwd = config
        .working_dir
        .as_deref()
        .filter(|dir| !dir.is_empty())
        .or(image_config.working_dir().as_deref().filter(|dir| !dir.is_empty()))
        .unwrap_or("/");
    process.set_cwd(PathBuf::from(cwd));
    process.set_terminal(Some(config.tty));
    process.set_user(
        UserBuilder::default()
            .uid(resolved.uid)
            .gid(resolved.gid)
            .additional_gids(resolved.additional_gids.clone())
            .build()?,
    );
    process.set_capabilities(Some(capabilities));
    process.set_rlimits(Some(vec![
        PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitNofile).hard(host.nofile).soft(host.nofile).build()?,
    ]));
    // Omitted rather than `false`: youki treats a present field as "set" and then loads the
    // seccomp filter only after dropping capabilities, which fails without CAP_SYS_ADMIN.
    process.set_no_new_privileges(security.no_new_privs.then_some(true));
    process.set_oom_score_adj(config.resources.oom_score_adj);

    let (mounts, rootfs_propagation) = mounts(config, files, security.privileged)?;

    let mut linux = Linux::default();
    linux.set_namespaces(Some(linux_namespaces(namespaces, host.cgroup_v2)?));
    linux.set_cgroups_path(Some(PathBuf::from(cgroups_path)));
    linux.set_resources(Some(resources(config, host, security.privileged)?));
    linux.set_rootfs_propagation(rootfs_propagation);
    linux.set_sysctl(None);
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_mount_label(None);
    if security.privileged {
        linux.set_devices(Some(defaults::host_devices(&host.dev)));
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
        // A privileged container runs without seccomp, whatever the pod asks (containerd).
        linux.set_seccomp(None);
    } else {
        linux.set_devices(Some(defaults::default_devices()?));
        let masked = security.masked_paths.clone().unwrap_or_else(|| MASKED_PATHS.map(str::to_owned).to_vec());
        let readonly = security.readonly_paths.clone().unwrap_or_else(|| READONLY_PATHS.map(str::to_owned).to_vec());
        linux.set_masked_paths(Some(masked));
        linux.set_readonly_paths(Some(readonly));
        let mut filter = match &security.seccomp {
            SeccompProfile::Unconfined => None,
            SeccompProfile::RuntimeDefault => {
                Some(seccomp::resolve(&seccomp::runtime_default(), &caps, &host.seccomp)?)
            }
            SeccompProfile::Localhost(path) => Some(seccomp::resolve(&seccomp::load(path)?, &caps, &host.seccomp)?),
        };
        // The spec is run by youki's libcontainer, which reads masked comparisons swapped.
        filter.iter_mut().for_each(seccomp::swap_masked_operands_for_libcontainer);
        linux.set_seccomp(filter);
    }

    let mut root = Root::default();
    root.set_path(rootfs.to_owned());
    root.set_readonly(Some(security.readonly_rootfs));

    let mut spec = Spec::default();
    spec.set_hostname(None);
    spec.set_annotations(None);
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The Kubernetes rule: `command` replaces the image's Entrypoint and `args` its Cmd; with a
/// `command` and no `args`, the image's Cmd is not used.
fn process_args(
    config: &ContainerConfig,
    entrypoint: &Option<Vec<String>>,
    cmd: &Option<Vec<String>>,
) -> Result<Vec<String>, SpecError> {
    let mut command = config.command.clone();
    let mut args = config.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = cmd.clone().unwrap_or_default();
        }
        // `ENTRYPOINT [""]` in a Dockerfile clears the entrypoint.
        command = entrypoint.clone().filter(|entrypoint| entrypoint != &[String::new()]).unwrap_or_default();
    }
    command.extend(args);
    if command.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(command)
}

/// PATH's default, then the image's environment, then the pod's, each replacing a variable of
/// the same name in place and appending new ones.
fn environment(image_env: &[String], envs: &[(String, String)]) -> Vec<String> {
    let mut env = vec![format!("PATH={DEFAULT_PATH}")];
    let mut set = |entry: String| {
        let name = entry.split_once('=').map_or(entry.as_str(), |(name, _)| name).to_owned();
        match env.iter_mut().find(|existing| existing.split_once('=').map_or(existing.as_str(), |(n, _)| n) == name) {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    };
    for entry in image_env {
        set(entry.clone());
    }
    for (name, value) in envs {
        set(format!("{name}={value}"));
    }
    env
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, SpecError> {
    let mut builder = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(path) = path {
        builder = builder.path(path);
    }
    Ok(builder.build()?)
}

/// A new mount namespace always; pid new unless shared (joined) or the host's; network, IPC and
/// UTS the sandbox's (joined) or the host's (omitted); a cgroup namespace on cgroup v2 only.
fn linux_namespaces(namespaces: &SandboxNamespaces, cgroup_v2: bool) -> Result<Vec<LinuxNamespace>, SpecError> {
    let mut list = vec![namespace(LinuxNamespaceType::Mount, None)?];
    if !namespaces.host_pid {
        list.push(namespace(LinuxNamespaceType::Pid, namespaces.pid.as_deref())?);
    }
    for (typ, path) in [
        (LinuxNamespaceType::Network, &namespaces.net),
        (LinuxNamespaceType::Ipc, &namespaces.ipc),
        (LinuxNamespaceType::Uts, &namespaces.uts),
    ] {
        if let Some(path) = path {
            list.push(namespace(typ, Some(path))?);
        }
    }
    if cgroup_v2 {
        list.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }
    Ok(list)
}

fn resources(config: &ContainerConfig, host: &Host, privileged: bool) -> Result<LinuxResources, SpecError> {
    let requested = &config.resources;
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(shares) = requested.cpu_shares {
        cpu = cpu.shares(shares);
    }
    if let Some(quota) = requested.cpu_quota {
        cpu = cpu.quota(quota);
    }
    if let Some(period) = requested.cpu_period {
        cpu = cpu.period(period);
    }
    let mut builder = LinuxResourcesBuilder::default().cpu(cpu.build()?).devices(if privileged {
        defaults::privileged_device_rules()
    } else {
        defaults::default_device_rules()
    });
    if let Some(limit) = requested.memory_limit_in_bytes.filter(|limit| *limit > 0) {
        let mut memory = LinuxMemoryBuilder::default().limit(limit);
        // memory+swap equal to memory: the container cannot swap.
        if host.swap_accounting {
            memory = memory.swap(limit);
        }
        builder = builder.memory(memory.build()?);
    }
    if let Some(limit) = requested.pids_limit.filter(|limit| *limit > 0) {
        builder = builder.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }
    Ok(builder.build()?)
}

/// A bind mount the CRI asks for (the sandbox's files and the pod's volumes).
struct BindMount {
    destination: String,
    source: PathBuf,
    readonly: bool,
    propagation: MountPropagation,
}

/// The kernel filesystems, then the sandbox's files and the pod's mounts sorted by depth (a
/// parent before what is mounted inside it). The pod's mounts replace the sandbox's and the
/// defaults at the same destination. Returns the mounts and the rootfs propagation the
/// mounts' own propagation needs.
fn mounts(
    config: &ContainerConfig,
    files: &SandboxFiles,
    privileged: bool,
) -> Result<(Vec<Mount>, Option<String>), SpecError> {
    let readonly_rootfs = config.security_context.readonly_rootfs;
    let sandbox = [
        ("/dev/shm", &files.shm, false),
        ("/etc/hostname", &files.hostname, readonly_rootfs),
        ("/etc/resolv.conf", &files.resolv_conf, readonly_rootfs),
    ];
    let given = |destination: &str| config.mounts.iter().any(|mount| clean(&mount.container_path) == destination);
    let mut binds: Vec<BindMount> = sandbox
        .into_iter()
        .filter_map(|(destination, source, readonly)| {
            let source = source.as_ref()?;
            (!given(destination)).then(|| BindMount {
                destination: destination.to_owned(),
                source: source.clone(),
                readonly,
                propagation: MountPropagation::Private,
            })
        })
        .collect();
    binds.extend(config.mounts.iter().map(|mount| BindMount {
        destination: clean(&mount.container_path),
        source: mount.host_path.clone(),
        readonly: mount.readonly,
        propagation: mount.propagation,
    }));
    binds.sort_by_key(|bind| bind.destination.split('/').count());

    let mut mounts: Vec<Mount> = defaults::kernel_mounts(privileged, files.shm.is_none())?
        .into_iter()
        .filter(|mount| {
            let destination = mount.destination().to_string_lossy();
            !binds.iter().any(|bind| {
                bind.destination == destination || (bind.destination == "/dev" && destination.starts_with("/dev/"))
            })
        })
        .collect();

    let mut rootfs_propagation = None;
    for bind in &binds {
        std::fs::metadata(&bind.source).map_err(|source| SpecError::MountSource {
            source_path: bind.source.clone(),
            destination: bind.destination.clone(),
            source,
        })?;
        let propagation = match bind.propagation {
            MountPropagation::Private => "rprivate",
            MountPropagation::HostToContainer => {
                if rootfs_propagation.is_none() {
                    rootfs_propagation = Some("rslave".to_owned());
                }
                "rslave"
            }
            MountPropagation::Bidirectional => {
                rootfs_propagation = Some("rshared".to_owned());
                "rshared"
            }
        };
        let access = if bind.readonly { "ro" } else { "rw" };
        mounts.push(
            MountBuilder::default()
                .destination(&bind.destination)
                .typ("bind")
                .source(&bind.source)
                .options(vec!["rbind".to_owned(), propagation.to_owned(), access.to_owned()])
                .build()?,
        );
    }
    Ok((mounts, rootfs_propagation))
}

/// `/data/` and `//data/./x/..` as `/data`, so that the same destination is recognised.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests;

use std::collections::HashSet;

use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};
use oci_spec::runtime::{Arch, Capability, LinuxDeviceType, LinuxSeccompAction};

use super::*;
use crate::cri::{ContainerMetadata, LinuxResources, LinuxSecurityContext, Mount as CriMount};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
            .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nwheel:x:10:root\napp:x:1000:\n").unwrap();
        for file in ["hostname", "resolv.conf", "hosts"] {
            std::fs::write(dir.path().join(file), "x\n").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("shm")).unwrap();
        std::fs::create_dir_all(dir.path().join("volume")).unwrap();
        Fixture { dir }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn files(&self) -> SandboxFiles {
        SandboxFiles {
            hostname: Some(self.path("hostname")),
            resolv_conf: Some(self.path("resolv.conf")),
            shm: Some(self.path("shm")),
        }
    }

    fn build(&self, config: &ContainerConfig, image: &ImageConfiguration) -> Result<Spec, SpecError> {
        self.build_with(config, image, &SandboxNamespaces::default(), &self.files())
    }

    fn build_with(
        &self,
        config: &ContainerConfig,
        image: &ImageConfiguration,
        namespaces: &SandboxNamespaces,
        files: &SandboxFiles,
    ) -> Result<Spec, SpecError> {
        build_for(&host(false), config, image, &self.rootfs(), "/kubepods/pod1/c1", namespaces, files)
    }
}

fn host(cgroup_v2: bool) -> Host {
    Host {
        cgroup_v2,
        cap_last_cap: Some(40),
        effective_caps: None,
        swap_accounting: true,
        seccomp: seccomp::Target { go_arch: "amd64", native: Arch::ScmpArchX86_64, kernel: (6, 18) },
        dev: PathBuf::from("/nonexistent-dev"),
        nofile: 1_048_576,
    }
}

fn config() -> ContainerConfig {
    ContainerConfig {
        metadata: ContainerMetadata { name: "c1".to_owned(), attempt: 0 },
        image: "busybox".to_owned(),
        command: Vec::new(),
        args: Vec::new(),
        working_dir: None,
        envs: Vec::new(),
        mounts: Vec::new(),
        labels: Default::default(),
        annotations: Default::default(),
        log_path: PathBuf::from("c1/0.log"),
        stdin: false,
        stdin_once: false,
        tty: false,
        resources: LinuxResources::default(),
        security_context: LinuxSecurityContext::default(),
        stop_signal: None,
    }
}

fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfiguration {
    let strings = |items: &[&str]| items.iter().map(|item| (*item).to_owned()).collect::<Vec<_>>();
    let mut builder = ConfigBuilder::default();
    if !entrypoint.is_empty() {
        builder = builder.entrypoint(strings(entrypoint));
    }
    if !cmd.is_empty() {
        builder = builder.cmd(strings(cmd));
    }
    image_with(builder)
}

fn image_with(builder: ConfigBuilder) -> ImageConfiguration {
    ImageConfigurationBuilder::default().config(builder.build().unwrap()).build().unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

fn args(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().args().clone().unwrap()
}

fn caps_of(spec: &Spec) -> oci_spec::runtime::LinuxCapabilities {
    spec.process().as_ref().unwrap().capabilities().clone().unwrap()
}

fn set(caps: &[Capability]) -> HashSet<Capability> {
    caps.iter().copied().collect()
}

fn destinations(spec: &Spec) -> Vec<String> {
    spec.mounts().iter().flatten().map(|mount| mount.destination().to_string_lossy().into_owned()).collect()
}

fn mount_at<'a>(spec: &'a Spec, destination: &str) -> &'a Mount {
    spec.mounts().iter().flatten().find(|mount| mount.destination() == Path::new(destination)).unwrap()
}

#[test]
fn image_entrypoint_and_cmd_run_when_the_pod_says_nothing() {
    let fixture = Fixture::new();
    let spec = fixture.build(&config(), &image(&["/entry"], &["a", "b"])).unwrap();
    assert_eq!(args(&spec), strings(&["/entry", "a", "b"]));
}

#[test]
fn args_replace_the_image_cmd_only() {
    let fixture = Fixture::new();
    let spec =
        fixture.build(&ContainerConfig { args: strings(&["x"]), ..config() }, &image(&["/entry"], &["a"])).unwrap();
    assert_eq!(args(&spec), strings(&["/entry", "x"]));
}

#[test]
fn command_replaces_the_entrypoint_and_drops_the_image_cmd() {
    let fixture = Fixture::new();
    let only_command = ContainerConfig { command: strings(&["/bin/sh"]), ..config() };
    assert_eq!(args(&fixture.build(&only_command, &image(&["/entry"], &["a"])).unwrap()), strings(&["/bin/sh"]));
    let both = ContainerConfig { command: strings(&["/bin/sh"]), args: strings(&["-c", "true"]), ..config() };
    assert_eq!(args(&fixture.build(&both, &image(&["/entry"], &["a"])).unwrap()), strings(&["/bin/sh", "-c", "true"]));
}

#[test]
fn nothing_to_run_is_no_command_specified() {
    let fixture = Fixture::new();
    let error = fixture.build(&config(), &image(&[], &[])).unwrap_err();
    assert_eq!(error.to_string(), "no command specified");
    // `ENTRYPOINT [""]` clears the entrypoint.
    assert!(matches!(fixture.build(&config(), &image(&[""], &[])), Err(SpecError::NoCommand)));
    assert_eq!(args(&fixture.build(&config(), &image(&[""], &["sh"])).unwrap()), strings(&["sh"]));
}

#[test]
fn environment_merges_image_then_pod_with_a_default_path() {
    let fixture = Fixture::new();
    let env = |image_env: &[&str], pod: &[(&str, &str)]| {
        let config = ContainerConfig {
            envs: pod.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
            ..config()
        };
        let image = image_with(ConfigBuilder::default().cmd(strings(&["sh"])).env(strings(image_env)));
        fixture.build(&config, &image).unwrap().process().as_ref().unwrap().env().clone().unwrap()
    };
    assert_eq!(env(&[], &[]), strings(&[&format!("PATH={DEFAULT_PATH}")]));
    assert_eq!(
        env(&["PATH=/opt/bin", "A=image", "B=image"], &[("B", "pod"), ("C", "pod=with=equals")]),
        strings(&["PATH=/opt/bin", "A=image", "B=pod", "C=pod=with=equals"])
    );
    assert_eq!(env(&[], &[("PATH", "/pod")]), strings(&["PATH=/pod"]));
}

#[test]
fn working_directory_tty_rlimits_and_oom_score() {
    let fixture = Fixture::new();
    let image_wd = image_with(ConfigBuilder::default().cmd(strings(&["sh"])).working_dir("/srv"));
    let spec = fixture.build(&config(), &image_wd).unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.cwd(), Path::new("/srv"));
    assert_eq!(process.terminal(), Some(false));
    let rlimit = process.rlimits().as_ref().unwrap()[0];
    assert_eq!((rlimit.typ(), rlimit.soft(), rlimit.hard()), (PosixRlimitType::RlimitNofile, 1_048_576, 1_048_576));
    assert_eq!(process.oom_score_adj(), None);

    let config = ContainerConfig {
        working_dir: Some("/work".to_owned()),
        tty: true,
        resources: LinuxResources { oom_score_adj: Some(999), ..LinuxResources::default() },
        ..config()
    };
    let spec = fixture.build(&config, &image_wd).unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.cwd(), Path::new("/work"));
    assert_eq!(process.terminal(), Some(true));
    assert_eq!(process.oom_score_adj(), Some(999));
    assert_eq!(
        fixture.build(&self::config(), &image(&["sh"], &[])).unwrap().process().as_ref().unwrap().cwd(),
        Path::new("/")
    );
}

#[test]
fn user_comes_from_run_as_or_the_image_user_in_the_rootfs() {
    let fixture = Fixture::new();
    let user_of = |config: &ContainerConfig, image_user: Option<&str>| {
        let mut builder = ConfigBuilder::default().cmd(strings(&["sh"]));
        if let Some(user) = image_user {
            builder = builder.user(user);
        }
        let spec = fixture.build(config, &image_with(builder))?;
        let user = spec.process().as_ref().unwrap().user().clone();
        Ok::<_, SpecError>((user.uid(), user.gid(), user.additional_gids().clone().unwrap_or_default()))
    };
    assert_eq!(user_of(&config(), None).unwrap(), (0, 0, vec![0, 10]));
    assert_eq!(user_of(&config(), Some("app")).unwrap(), (1000, 1000, vec![1000]));
    let run_as = ContainerConfig {
        security_context: LinuxSecurityContext {
            run_as_user: Some(2000),
            run_as_group: Some(3000),
            supplemental_groups: vec![4000],
            ..LinuxSecurityContext::default()
        },
        ..config()
    };
    assert_eq!(user_of(&run_as, Some("app")).unwrap(), (2000, 3000, vec![3000, 4000]));
    let error = user_of(&config(), Some("nope")).unwrap_err();
    assert_eq!(error.to_string(), "unable to find user nope: no matching entries in passwd file");
}

#[test]
fn default_capabilities_for_root_and_only_bounding_for_others() {
    let fixture = Fixture::new();
    let spec = fixture.build(&config(), &image(&["sh"], &[])).unwrap();
    let caps = caps_of(&spec);
    let defaults = set(&DEFAULT_CAPABILITIES);
    assert_eq!(caps.bounding().clone().unwrap(), defaults);
    assert_eq!(caps.effective().clone().unwrap(), defaults);
    assert_eq!(caps.permitted().clone().unwrap(), defaults);
    assert!(caps.inheritable().clone().unwrap().is_empty());
    assert!(caps.ambient().clone().unwrap().is_empty());

    let non_root = ContainerConfig {
        security_context: LinuxSecurityContext { run_as_user: Some(1000), ..LinuxSecurityContext::default() },
        ..config()
    };
    let caps = caps_of(&fixture.build(&non_root, &image(&["sh"], &[])).unwrap());
    assert_eq!(caps.bounding().clone().unwrap(), defaults);
    assert!(caps.effective().clone().unwrap().is_empty());
    assert!(caps.permitted().clone().unwrap().is_empty());
}

fn with_caps(add: &[&str], drop: &[&str]) -> ContainerConfig {
    ContainerConfig {
        security_context: LinuxSecurityContext {
            capabilities: crate::cri::Capabilities { add: strings(add), drop: strings(drop) },
            ..LinuxSecurityContext::default()
        },
        ..config()
    }
}

#[test]
fn capabilities_add_drop_and_all() {
    let fixture = Fixture::new();
    let bounding = |config: &ContainerConfig| {
        caps_of(&fixture.build(config, &image(&["sh"], &[])).unwrap()).bounding().clone().unwrap()
    };

    let added = bounding(&with_caps(&["NET_ADMIN", "sys_time"], &["CHOWN", "CAP_KILL"]));
    assert!(added.contains(&Capability::NetAdmin) && added.contains(&Capability::SysTime));
    assert!(!added.contains(&Capability::Chown) && !added.contains(&Capability::Kill));
    assert_eq!(added.len(), DEFAULT_CAPABILITIES.len());

    assert_eq!(bounding(&with_caps(&["NET_ADMIN"], &["ALL"])), set(&[Capability::NetAdmin]));
    let all_but_chown = bounding(&with_caps(&["ALL"], &["CHOWN"]));
    assert_eq!(all_but_chown.len(), 40);
    assert!(!all_but_chown.contains(&Capability::Chown));
    assert!(bounding(&with_caps(&[], &["ALL"])).is_empty());

    assert!(matches!(
        fixture.build(&with_caps(&["NOT_A_CAP"], &[]), &image(&["sh"], &[])),
        Err(SpecError::UnknownCapability { .. })
    ));
}

fn privileged() -> ContainerConfig {
    ContainerConfig {
        security_context: LinuxSecurityContext {
            privileged: true,
            seccomp: SeccompProfile::RuntimeDefault,
            ..LinuxSecurityContext::default()
        },
        ..config()
    }
}

#[test]
fn privileged_gets_every_capability_rw_sys_all_devices_and_no_masks() {
    let fixture = Fixture::new();
    let host_dev = fixture.path("dev");
    std::fs::create_dir_all(host_dev.join("pts")).unwrap();
    let mut host = host(false);
    host.dev = host_dev;
    host.cap_last_cap = Some(39);
    // A runtime without CAP_SYS_RESOURCE (bit 24) cannot grant it.
    host.effective_caps = Some(!(1 << 24));
    let spec = build_for(
        &host,
        &privileged(),
        &image(&["sh"], &[]),
        &fixture.rootfs(),
        "/p",
        &SandboxNamespaces::default(),
        &fixture.files(),
    )
    .unwrap();
    let caps = caps_of(&spec);
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 39, "capabilities the kernel knows and the runtime holds");
    assert!(!caps.bounding().as_ref().unwrap().contains(&Capability::CheckpointRestore));
    assert!(!caps.bounding().as_ref().unwrap().contains(&Capability::SysResource));
    assert!(caps.bounding().as_ref().unwrap().contains(&Capability::SysAdmin));
    let linux = spec.linux().as_ref().unwrap();
    assert!(linux.masked_paths().is_none() && linux.readonly_paths().is_none());
    assert!(linux.seccomp().is_none(), "privileged containers run unconfined");
    assert!(mount_at(&spec, "/sys").options().as_ref().unwrap().contains(&"rw".to_owned()));
    assert!(mount_at(&spec, "/sys/fs/cgroup").options().as_ref().unwrap().contains(&"rw".to_owned()));
    let rules = linux.resources().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow() && rules[0].typ() == Some(LinuxDeviceType::A));
}

#[test]
fn host_devices_are_listed_for_privileged_containers() {
    // /dev/null exists on every Linux host; the walk must find it as a character device.
    let devices = defaults::host_devices(Path::new("/dev"));
    let null = devices.iter().find(|device| device.path() == Path::new("/dev/null")).expect("/dev/null");
    assert_eq!((null.typ(), null.major(), null.minor()), (LinuxDeviceType::C, 1, 3));
    assert!(devices.iter().all(|device| !device.path().starts_with("/dev/pts")));
}

#[test]
fn unprivileged_containers_get_masked_paths_devices_and_ro_sys() {
    let fixture = Fixture::new();
    let spec = fixture.build(&config(), &image(&["sh"], &[])).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths().clone().unwrap(), MASKED_PATHS.map(str::to_owned).to_vec());
    assert_eq!(linux.readonly_paths().clone().unwrap(), READONLY_PATHS.map(str::to_owned).to_vec());
    assert!(mount_at(&spec, "/sys").options().as_ref().unwrap().contains(&"ro".to_owned()));
    let rules = linux.resources().as_ref().unwrap().devices().clone().unwrap();
    assert!(!rules[0].allow() && rules[0].typ() == Some(LinuxDeviceType::A));
    let allowed: Vec<(Option<i64>, Option<i64>)> =
        rules.iter().skip(1).filter(|rule| rule.allow()).map(|rule| (rule.major(), rule.minor())).collect();
    for device in [(Some(1), Some(3)), (Some(1), Some(9)), (Some(5), Some(2)), (Some(136), None)] {
        assert!(allowed.contains(&device), "{device:?} allowed");
    }
    let nodes: Vec<String> =
        linux.devices().iter().flatten().map(|device| device.path().to_string_lossy().into_owned()).collect();
    assert_eq!(nodes, strings(&["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"]));

    // procMount: Unmasked gives empty lists.
    let unmasked = ContainerConfig {
        security_context: LinuxSecurityContext {
            masked_paths: Some(Vec::new()),
            readonly_paths: Some(Vec::new()),
            ..LinuxSecurityContext::default()
        },
        ..config()
    };
    let spec = fixture.build(&unmasked, &image(&["sh"], &[])).unwrap();
    assert_eq!(spec.linux().as_ref().unwrap().masked_paths().clone().unwrap(), Vec::<String>::new());
}

#[test]
fn mounts_come_in_containerd_order_with_sandbox_files() {
    let fixture = Fixture::new();
    let spec = fixture.build(&config(), &image(&["sh"], &[])).unwrap();
    assert_eq!(
        destinations(&spec),
        strings(&[
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/dev/shm",
            "/etc/hostname",
            "/etc/resolv.conf"
        ])
    );
    let shm = mount_at(&spec, "/dev/shm");
    assert_eq!(shm.typ().as_deref(), Some("bind"));
    assert_eq!(shm.source().as_deref(), Some(fixture.path("shm").as_path()));
    assert_eq!(shm.options().clone().unwrap(), strings(&["rbind", "rprivate", "rw"]));
    let pts = mount_at(&spec, "/dev/pts");
    assert!(pts.options().as_ref().unwrap().contains(&"ptmxmode=0666".to_owned()));

    // Without a sandbox shm, each container gets a private 64m tmpfs.
    let files = SandboxFiles { shm: None, ..fixture.files() };
    let spec = fixture.build_with(&config(), &image(&["sh"], &[]), &SandboxNamespaces::default(), &files).unwrap();
    let shm = mount_at(&spec, "/dev/shm");
    assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
    assert!(shm.options().as_ref().unwrap().contains(&"size=65536k".to_owned()));
}

#[test]
fn pod_mounts_are_sorted_by_depth_and_replace_defaults() {
    let fixture = Fixture::new();
    let mount = |container_path: &str, host: &str, readonly: bool, propagation: MountPropagation| CriMount {
        container_path: container_path.to_owned(),
        host_path: fixture.path(host),
        readonly,
        propagation,
    };
    let config = ContainerConfig {
        mounts: vec![
            mount("/data/deep/er", "volume", true, MountPropagation::HostToContainer),
            mount("/data", "volume", false, MountPropagation::Private),
            mount("/etc/hosts", "hosts", false, MountPropagation::Private),
            mount("/etc/resolv.conf/", "resolv.conf", true, MountPropagation::Private),
            mount("/dev/shm", "volume", false, MountPropagation::Private),
        ],
        ..self::config()
    };
    let spec = fixture.build(&config, &image(&["sh"], &[])).unwrap();
    assert_eq!(
        destinations(&spec),
        strings(&[
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/data",
            "/etc/hostname",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/dev/shm",
            "/data/deep/er",
        ])
    );
    assert_eq!(mount_at(&spec, "/dev/shm").source().as_deref(), Some(fixture.path("volume").as_path()));
    assert_eq!(mount_at(&spec, "/etc/resolv.conf").options().clone().unwrap(), strings(&["rbind", "rprivate", "ro"]));
    assert_eq!(mount_at(&spec, "/data/deep/er").options().clone().unwrap(), strings(&["rbind", "rslave", "ro"]));
    assert_eq!(spec.linux().as_ref().unwrap().rootfs_propagation().as_deref(), Some("rslave"));

    let shared = ContainerConfig {
        mounts: vec![mount("/shared", "volume", false, MountPropagation::Bidirectional)],
        ..self::config()
    };
    let spec = fixture.build(&shared, &image(&["sh"], &[])).unwrap();
    assert_eq!(mount_at(&spec, "/shared").options().clone().unwrap(), strings(&["rbind", "rshared", "rw"]));
    assert_eq!(spec.linux().as_ref().unwrap().rootfs_propagation().as_deref(), Some("rshared"));
}

#[test]
fn a_missing_mount_source_is_an_error() {
    let fixture = Fixture::new();
    let config = ContainerConfig {
        mounts: vec![CriMount {
            container_path: "/data".to_owned(),
            host_path: fixture.path("does-not-exist"),
            readonly: false,
            propagation: MountPropagation::Private,
        }],
        ..config()
    };
    let error = fixture.build(&config, &image(&["sh"], &[])).unwrap_err();
    assert!(matches!(error, SpecError::MountSource { ref destination, .. } if destination == "/data"), "{error}");
}

#[test]
fn readonly_rootfs_makes_root_and_sandbox_files_read_only() {
    let fixture = Fixture::new();
    let config = ContainerConfig {
        security_context: LinuxSecurityContext { readonly_rootfs: true, ..LinuxSecurityContext::default() },
        ..config()
    };
    let spec = fixture.build(&config, &image(&["sh"], &[])).unwrap();
    let root = spec.root().as_ref().unwrap();
    assert_eq!(root.path(), &fixture.rootfs());
    assert_eq!(root.readonly(), Some(true));
    assert!(mount_at(&spec, "/etc/hostname").options().as_ref().unwrap().contains(&"ro".to_owned()));
    assert!(mount_at(&spec, "/dev/shm").options().as_ref().unwrap().contains(&"rw".to_owned()));
    assert!(spec.hostname().is_none());
}

fn namespaces_of(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    spec.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .iter()
        .flatten()
        .map(|namespace| (namespace.typ(), namespace.path().clone()))
        .collect()
}

#[test]
fn namespaces_join_the_sandbox_or_stay_on_the_host() {
    let fixture = Fixture::new();
    let sandbox = SandboxNamespaces {
        net: Some(PathBuf::from("/run/netns/pod")),
        ipc: Some(PathBuf::from("/proc/10/ns/ipc")),
        uts: Some(PathBuf::from("/proc/10/ns/uts")),
        pid: None,
        host_pid: false,
    };
    let spec = fixture.build_with(&config(), &image(&["sh"], &[]), &sandbox, &fixture.files()).unwrap();
    assert_eq!(
        namespaces_of(&spec),
        vec![
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Pid, None),
            (LinuxNamespaceType::Network, Some(PathBuf::from("/run/netns/pod"))),
            (LinuxNamespaceType::Ipc, Some(PathBuf::from("/proc/10/ns/ipc"))),
            (LinuxNamespaceType::Uts, Some(PathBuf::from("/proc/10/ns/uts"))),
        ]
    );
    assert_eq!(spec.linux().as_ref().unwrap().cgroups_path().as_deref(), Some(Path::new("/kubepods/pod1/c1")));

    let shared_pid = SandboxNamespaces { pid: Some(PathBuf::from("/proc/10/ns/pid")), ..SandboxNamespaces::default() };
    let spec = fixture.build_with(&config(), &image(&["sh"], &[]), &shared_pid, &fixture.files()).unwrap();
    assert_eq!(
        namespaces_of(&spec),
        vec![(LinuxNamespaceType::Mount, None), (LinuxNamespaceType::Pid, Some(PathBuf::from("/proc/10/ns/pid")))]
    );

    let host_pid = SandboxNamespaces { host_pid: true, ..SandboxNamespaces::default() };
    let spec = fixture.build_with(&config(), &image(&["sh"], &[]), &host_pid, &fixture.files()).unwrap();
    assert_eq!(namespaces_of(&spec), vec![(LinuxNamespaceType::Mount, None)]);

    let spec = build_for(
        &host(true),
        &config(),
        &image(&["sh"], &[]),
        &fixture.rootfs(),
        "/p",
        &SandboxNamespaces::default(),
        &fixture.files(),
    )
    .unwrap();
    assert!(namespaces_of(&spec).contains(&(LinuxNamespaceType::Cgroup, None)), "cgroup namespace on v2");
}

#[test]
fn resources_carry_cpu_memory_without_swap_and_pids() {
    let fixture = Fixture::new();
    let config = ContainerConfig {
        resources: LinuxResources {
            cpu_period: Some(100_000),
            cpu_quota: Some(50_000),
            cpu_shares: Some(512),
            memory_limit_in_bytes: Some(64 << 20),
            oom_score_adj: None,
            pids_limit: Some(100),
        },
        ..config()
    };
    let spec = fixture.build(&config, &image(&["sh"], &[])).unwrap();
    let resources = spec.linux().as_ref().unwrap().resources().clone().unwrap();
    let cpu = resources.cpu().clone().unwrap();
    assert_eq!((cpu.shares(), cpu.quota(), cpu.period()), (Some(512), Some(50_000), Some(100_000)));
    let memory = resources.memory().unwrap();
    assert_eq!((memory.limit(), memory.swap()), (Some(64 << 20), Some(64 << 20)));
    assert_eq!(resources.pids().unwrap().limit(), 100);

    let spec = fixture.build(&self::config(), &image(&["sh"], &[])).unwrap();
    let resources = spec.linux().as_ref().unwrap().resources().clone().unwrap();
    assert!(resources.memory().is_none() && resources.pids().is_none());
}

fn with_seccomp(profile: SeccompProfile, add: &[&str]) -> ContainerConfig {
    ContainerConfig {
        security_context: LinuxSecurityContext {
            seccomp: profile,
            capabilities: crate::cri::Capabilities { add: strings(add), drop: Vec::new() },
            ..LinuxSecurityContext::default()
        },
        ..config()
    }
}

#[test]
fn seccomp_runtime_default_localhost_and_unconfined() {
    let fixture = Fixture::new();
    let seccomp_of = |config: &ContainerConfig| {
        fixture.build(config, &image(&["sh"], &[])).map(|spec| spec.linux().as_ref().unwrap().seccomp().clone())
    };
    assert!(seccomp_of(&config()).unwrap().is_none(), "Unconfined is the default");

    let default = seccomp_of(&with_seccomp(SeccompProfile::RuntimeDefault, &[])).unwrap().unwrap();
    assert_eq!(default.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert!(!seccomp::allowed_names(&default).contains(&"mount"));
    // Masked comparisons are written the way youki's libcontainer reads them.
    let clone = default.syscalls().iter().flatten().find(|s| s.names() == &["clone".to_owned()]).unwrap();
    let arg = clone.args().as_ref().unwrap()[0];
    assert_eq!((arg.value(), arg.value_two()), (0, Some(0x7E02_0000)));
    // Capability-conditional rules follow the final capabilities.
    let admin = seccomp_of(&with_seccomp(SeccompProfile::RuntimeDefault, &["SYS_ADMIN"])).unwrap().unwrap();
    assert!(seccomp::allowed_names(&admin).contains(&"mount"));

    let profile = fixture.path("profile.json");
    std::fs::write(&profile, r#"{"defaultAction":"SCMP_ACT_LOG"}"#).unwrap();
    let local = seccomp_of(&with_seccomp(SeccompProfile::Localhost(profile), &[])).unwrap().unwrap();
    assert_eq!(local.default_action(), LinuxSeccompAction::ScmpActLog);
    assert!(matches!(
        seccomp_of(&with_seccomp(SeccompProfile::Localhost(fixture.path("missing.json")), &[])),
        Err(SpecError::SeccompRead { .. })
    ));
}

#[test]
fn no_new_privileges_follows_the_config() {
    let fixture = Fixture::new();
    let nnp = |no_new_privs: bool| {
        let config = ContainerConfig {
            security_context: LinuxSecurityContext { no_new_privs, ..LinuxSecurityContext::default() },
            ..config()
        };
        fixture.build(&config, &image(&["sh"], &[])).unwrap().process().as_ref().unwrap().no_new_privileges()
    };
    assert_eq!(nnp(true), Some(true));
    assert_eq!(nnp(false), None);
}

#[test]
fn the_spec_serialises_as_an_oci_config() {
    let fixture = Fixture::new();
    let spec = fixture.build(&with_seccomp(SeccompProfile::RuntimeDefault, &[]), &image(&["sh"], &[])).unwrap();
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["process"]["capabilities"]["bounding"].as_array().unwrap().len(), DEFAULT_CAPABILITIES.len());
    assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(json["linux"]["cgroupsPath"], "/kubepods/pod1/c1");
    assert!(json.get("hostname").is_none());
    let back: Spec = serde_json::from_value(json).unwrap();
    assert_eq!(back, spec);
}

//! The defaults of containerd's CRI plugin and runc that every container starts from: the
//! capability set, the kernel filesystems mounted in, the masked and read-only paths and the
//! devices a container may use.

use std::path::Path;

use oci_spec::runtime::{
    Capabilities, Capability, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, Mount, MountBuilder,
};

use super::SpecError;

/// Every capability, in the kernel's numbering (`CAP_CHOWN` is 0).
pub const ALL_CAPABILITIES: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// containerd's default set (the same as Docker's).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The capabilities a container can be granted: those this kernel knows (numbered up to
/// `cap_last_cap`) that the runtime itself holds (`effective`, the `CapEff` mask of
/// /proc/self/status; `None` when unknown). containerd grants a privileged container its own
/// current capabilities for the same reason: asking for one the runtime lacks fails the start.
pub fn grantable_capabilities(cap_last_cap: Option<usize>, effective: Option<u64>) -> Capabilities {
    let count = cap_last_cap.map_or(ALL_CAPABILITIES.len(), |last| (last + 1).min(ALL_CAPABILITIES.len()));
    ALL_CAPABILITIES[..count]
        .iter()
        .enumerate()
        .filter(|(bit, _)| effective.is_none_or(|mask| mask & (1 << bit) != 0))
        .map(|(_, cap)| *cap)
        .collect()
}

/// `NET_ADMIN`, `net_admin` or `CAP_NET_ADMIN` as a capability.
pub fn parse_capability(name: &str) -> Result<Capability, SpecError> {
    let upper = name.to_ascii_uppercase();
    upper
        .strip_prefix("CAP_")
        .unwrap_or(&upper)
        .parse()
        .map_err(|_| SpecError::UnknownCapability { name: name.to_owned() })
}

/// Applies the pod's `add` and `drop` lists to the default set as containerd does: `ALL` in
/// `add` first grants everything, `ALL` in `drop` then clears everything, and the named
/// capabilities are added and then dropped, so `drop: [ALL], add: [NET_ADMIN]` keeps only
/// NET_ADMIN and `add: [ALL], drop: [CHOWN]` keeps all but CHOWN.
pub fn capabilities(add: &[String], drop: &[String], all: &Capabilities) -> Result<Capabilities, SpecError> {
    let is_all = |name: &String| name.eq_ignore_ascii_case("ALL");
    let mut caps: Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
    if add.iter().any(is_all) {
        caps = all.clone();
    }
    if drop.iter().any(is_all) {
        caps.clear();
    }
    for name in add.iter().filter(|name| !is_all(name)) {
        caps.insert(parse_capability(name)?);
    }
    for name in drop.iter().filter(|name| !is_all(name)) {
        caps.remove(&parse_capability(name)?);
    }
    Ok(caps)
}

/// Paths under /proc and /sys a container may not read (containerd's defaults).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths under /proc a container may read but not write.
pub const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

fn kernel_mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|option| (*option).to_owned()).collect::<Vec<_>>())
        .build()?)
}

/// The kernel filesystems every container gets, in containerd's order, before the CRI's
/// mounts. `/dev/shm` is a private tmpfs only when the sandbox does not provide one.
pub fn kernel_mounts(privileged: bool, private_shm: bool) -> Result<Vec<Mount>, SpecError> {
    let sys_access = if privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        kernel_mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        kernel_mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        kernel_mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        kernel_mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        kernel_mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", sys_access])?,
    ];
    if private_shm {
        mounts.push(kernel_mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?);
    }
    mounts.push(kernel_mount(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", sys_access],
    )?);
    Ok(mounts)
}

fn char_device(path: &str, major: i64, minor: i64) -> Result<LinuxDevice, SpecError> {
    Ok(LinuxDeviceBuilder::default()
        .path(path)
        .typ(LinuxDeviceType::C)
        .major(major)
        .minor(minor)
        .file_mode(0o666u32)
        .uid(0u32)
        .gid(0u32)
        .build()?)
}

/// The device nodes runc creates in every container's /dev.
pub fn default_devices() -> Result<Vec<LinuxDevice>, SpecError> {
    Ok(vec![
        char_device("/dev/null", 1, 3)?,
        char_device("/dev/zero", 1, 5)?,
        char_device("/dev/full", 1, 7)?,
        char_device("/dev/random", 1, 8)?,
        char_device("/dev/urandom", 1, 9)?,
        char_device("/dev/tty", 5, 0)?,
    ])
}

fn device_rule(allow: bool, typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>) -> LinuxDeviceCgroup {
    let mut builder = LinuxDeviceCgroupBuilder::default().allow(allow).typ(typ).access("rwm");
    if let Some(major) = major {
        builder = builder.major(major);
    }
    if let Some(minor) = minor {
        builder = builder.minor(minor);
    }
    // Every field has a default: building cannot fail.
    builder.build().unwrap_or_default()
}

/// The devices cgroup rules of an unprivileged container: deny everything, then allow runc's
/// list (null, zero, full, random, urandom, tty, ptmx and the pty slaves).
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    let c = LinuxDeviceType::C;
    vec![
        device_rule(false, LinuxDeviceType::A, None, None),
        device_rule(true, c, Some(1), Some(3)),
        device_rule(true, c, Some(1), Some(5)),
        device_rule(true, c, Some(1), Some(7)),
        device_rule(true, c, Some(1), Some(8)),
        device_rule(true, c, Some(1), Some(9)),
        device_rule(true, c, Some(5), Some(0)),
        device_rule(true, c, Some(5), Some(2)),
        device_rule(true, c, Some(136), None),
    ]
}

/// A privileged container may use every device.
pub fn privileged_device_rules() -> Vec<LinuxDeviceCgroup> {
    vec![device_rule(true, LinuxDeviceType::A, None, None)]
}

/// Directories of the host's /dev that are not devices to copy (as containerd's
/// `HostDevices` skips them).
const SKIPPED_DEV_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Every character and block device under the host's `dev` (a privileged container sees the
/// host's devices). Devices that vanish while walking are skipped.
pub fn host_devices(dev: &Path) -> Vec<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut devices = Vec::new();
    let mut pending = vec![dev.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(metadata) = std::fs::symlink_metadata(&path) else { continue };
            let file_type = metadata.file_type();
            if file_type.is_dir() {
                if !SKIPPED_DEV_DIRS.iter().any(|skip| entry.file_name() == *skip) {
                    pending.push(path);
                }
                continue;
            }
            let typ = if file_type.is_char_device() {
                LinuxDeviceType::C
            } else if file_type.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            // /dev/console belongs to the container's terminal, not the host's.
            if path == dev.join("console") {
                continue;
            }
            let Ok(relative) = path.strip_prefix(dev) else { continue };
            let built = LinuxDeviceBuilder::default()
                .path(Path::new("/dev").join(relative))
                .typ(typ)
                .major(i64::from(rustix::fs::major(metadata.rdev())))
                .minor(i64::from(rustix::fs::minor(metadata.rdev())))
                .file_mode(metadata.mode() & 0o7777)
                .uid(metadata.uid())
                .gid(metadata.gid())
                .build();
            if let Ok(device) = built {
                devices.push(device);
            }
        }
    }
    devices.sort_by(|a, b| a.path().cmp(b.path()));
    devices
}

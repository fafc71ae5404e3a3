//! Seccomp profiles: the `RuntimeDefault` profile of Docker and containerd written as data, the
//! Docker-format profile files that `Localhost` names, and their resolution into the OCI
//! `linux.seccomp` section for this machine's architecture and the container's capabilities.
//!
//! A Docker-format profile is not an OCI one: its rules carry `includes`/`excludes` conditions
//! (architectures, capabilities, a minimum kernel) and it may name architectures through an
//! `archMap`. Runtimes resolve those conditions when they build the spec (moby's
//! `profiles/seccomp`, containerd's `contrib/seccomp`); this module does the same.

use std::path::Path;

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;

use super::SpecError;

/// A seccomp profile in the Docker/containerd JSON format (the format of `Localhost` profiles).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: LinuxSeccompAction,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Option<Vec<Arch>>,
    #[serde(default)]
    pub arch_map: Option<Vec<ArchMap>>,
    #[serde(default)]
    pub syscalls: Option<Vec<Rule>>,
}

/// An architecture and the sub-architectures a filter for it must also cover.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: Arch,
    #[serde(default)]
    pub sub_architectures: Option<Vec<Arch>>,
}

/// One rule of a profile: syscalls, an action and the conditions under which it applies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub names: Option<Vec<String>>,
    pub action: LinuxSeccompAction,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    pub includes: Option<Filter>,
    #[serde(default)]
    pub excludes: Option<Filter>,
}

/// A rule's condition: Go architecture names (`amd64`), capability names (`CAP_SYS_ADMIN`) and
/// a minimum kernel version (`4.8`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default)]
    pub arches: Option<Vec<String>>,
    #[serde(default)]
    pub caps: Option<Vec<String>>,
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// What a profile is resolved against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Go name of the architecture (`amd64`, `arm64`), as profiles' `arches` use it.
    pub go_arch: &'static str,
    /// The seccomp architecture of this machine.
    pub native: Arch,
    /// The running kernel as (major, minor).
    pub kernel: (u32, u32),
}

impl Target {
    /// This machine: the architecture the binary is built for, the kernel from `uname`.
    pub fn host() -> Target {
        let (go_arch, native) = match std::env::consts::ARCH {
            "aarch64" => ("arm64", Arch::ScmpArchAarch64),
            "riscv64" => ("riscv64", Arch::ScmpArchRiscv64),
            "s390x" => ("s390x", Arch::ScmpArchS390x),
            _ => ("amd64", Arch::ScmpArchX86_64),
        };
        let release = rustix::system::uname().release().to_string_lossy().into_owned();
        Target { go_arch, native, kernel: parse_kernel_version(&release).unwrap_or((0, 0)) }
    }
}

/// `6.18.44-foo` -> (6, 18).
fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|part| part.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// Reads a `Localhost` profile file.
pub fn load(path: &Path) -> Result<Profile, SpecError> {
    let bytes = std::fs::read(path).map_err(|source| SpecError::SeccompRead { path: path.to_owned(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| SpecError::SeccompParse { path: path.to_owned(), source })
}

/// Resolves `profile` into the OCI section for `target`, keeping the rules whose conditions the
/// container's final capabilities (its bounding set, as containerd uses) satisfy.
pub fn resolve(profile: &Profile, caps: &Capabilities, target: &Target) -> Result<LinuxSeccomp, SpecError> {
    let architectures = match &profile.arch_map {
        Some(map) => map
            .iter()
            .filter(|entry| entry.architecture == target.native)
            .flat_map(|entry| {
                std::iter::once(entry.architecture).chain(entry.sub_architectures.iter().flatten().copied())
            })
            .collect(),
        None => profile.architectures.clone().unwrap_or_default(),
    };
    let mut syscalls = Vec::new();
    for rule in profile.syscalls.iter().flatten() {
        if !applies(rule, caps, target) {
            continue;
        }
        let names: Vec<String> = rule.name.iter().chain(rule.names.iter().flatten()).cloned().collect();
        if names.is_empty() {
            continue;
        }
        let mut builder = LinuxSyscallBuilder::default().names(names).action(rule.action);
        if let Some(errno) = rule.errno_ret {
            builder = builder.errno_ret(errno);
        }
        if let Some(args) = &rule.args {
            builder = builder.args(args.clone());
        }
        syscalls.push(builder.build()?);
    }
    let mut builder = LinuxSeccompBuilder::default()
        .default_action(profile.default_action)
        .architectures(architectures)
        .syscalls(syscalls);
    if let Some(errno) = profile.default_errno_ret {
        builder = builder.default_errno_ret(errno);
    }
    Ok(builder.build()?)
}

/// Rewrites the masked comparisons of `seccomp` for youki's libcontainer (0.7), which runs our
/// containers and reads their operands the other way round from the OCI spec.
///
/// The OCI spec, as runc reads it, compares `arg & value == valueTwo`: Docker's clone rule is
/// `value: CLONE_NEW*, valueTwo: 0`, "no namespace flags". libcontainer hands `valueTwo` to
/// libseccomp as the mask and `value` as the datum, and libseccomp masks the datum, so that
/// rule becomes `arg & 0 == 0` and allows every clone, namespaces included (seen on this
/// host: `clone(CLONE_NEWUSER)` succeeded under the unswapped profile, fails once swapped).
/// Swapping the operands restores the meaning under libcontainer's reading.
pub fn swap_masked_operands_for_libcontainer(seccomp: &mut LinuxSeccomp) {
    let Some(syscalls) = seccomp.syscalls().clone() else { return };
    let swapped = syscalls
        .into_iter()
        .map(|mut syscall| {
            if let Some(args) = syscall.args().clone() {
                syscall.set_args(Some(args.into_iter().map(swap_masked).collect()));
            }
            syscall
        })
        .collect();
    seccomp.set_syscalls(Some(swapped));
}

fn swap_masked(arg: LinuxSeccompArg) -> LinuxSeccompArg {
    if arg.op() != LinuxSeccompOperator::ScmpCmpMaskedEq {
        return arg;
    }
    LinuxSeccompArgBuilder::default()
        .index(arg.index())
        .op(arg.op())
        .value(arg.value_two().unwrap_or(0))
        .value_two(arg.value())
        .build()
        .unwrap_or(arg)
}

fn applies(rule: &Rule, caps: &Capabilities, target: &Target) -> bool {
    let has_cap = |name: &String| parse_cap(name).is_some_and(|cap| caps.contains(&cap));
    if let Some(excludes) = &rule.excludes {
        if excludes.arches.iter().flatten().any(|arch| arch == target.go_arch) {
            return false;
        }
        if excludes.caps.iter().flatten().any(has_cap) {
            return false;
        }
        if excludes.min_kernel.as_deref().and_then(parse_kernel_version).is_some_and(|min| target.kernel >= min) {
            return false;
        }
    }
    if let Some(includes) = &rule.includes {
        if let Some(arches) = &includes.arches
            && !arches.is_empty()
            && !arches.iter().any(|arch| arch == target.go_arch)
        {
            return false;
        }
        if !includes.caps.iter().flatten().all(has_cap) {
            return false;
        }
        if includes.min_kernel.as_deref().and_then(parse_kernel_version).is_some_and(|min| target.kernel < min) {
            return false;
        }
    }
    true
}

fn parse_cap(name: &str) -> Option<Capability> {
    let upper = name.to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).parse().ok()
}

/// Syscalls the default profile allows to every container.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls the default profile allows only with a capability (capability, syscalls).
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// `personality(2)` personas the default profile allows: PER_LINUX, UNAME26, PER_LINUX32,
/// UNAME26|PER_LINUX32 and the query 0xffffffff.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The namespace flags `clone` may not carry without CAP_SYS_ADMIN (CLONE_NEWNS | NEWUTS |
/// NEWIPC | NEWUSER | NEWPID | NEWNET | NEWCGROUP).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// AF_VSOCK: the default profile refuses sockets of this family.
const AF_VSOCK: u64 = 40;

/// ENOSYS: what `clone3` returns without CAP_SYS_ADMIN, so that libcs fall back to `clone`,
/// whose flags the filter can inspect.
const ENOSYS: u32 = 38;

fn rule(names: &[&str]) -> Rule {
    Rule {
        names: Some(names.iter().map(|name| (*name).to_owned()).collect()),
        action: LinuxSeccompAction::ScmpActAllow,
        ..Rule::default()
    }
}

fn arg(index: usize, value: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    let builder = LinuxSeccompArgBuilder::default().index(index).value(value).op(op);
    // libseccomp compares `arg & value == value_two` for a masked comparison.
    let builder = if op == LinuxSeccompOperator::ScmpCmpMaskedEq { builder.value_two(0u64) } else { builder };
    // Every field is given: building cannot fail.
    builder.build().unwrap_or_default()
}

fn only(arches: &[&str]) -> Option<Filter> {
    Some(Filter { arches: Some(arches.iter().map(|arch| (*arch).to_owned()).collect()), ..Filter::default() })
}

fn with_cap(cap: &str) -> Option<Filter> {
    Some(Filter { caps: Some(vec![cap.to_owned()]), ..Filter::default() })
}

/// The `RuntimeDefault` profile: Docker's and containerd's default, denying with EPERM every
/// syscall it does not list.
pub fn runtime_default() -> Profile {
    let mut syscalls = vec![
        rule(ALLOWED),
        Rule {
            includes: Some(Filter { min_kernel: Some("4.8".to_owned()), ..Filter::default() }),
            ..rule(&["process_vm_readv", "process_vm_writev", "ptrace"])
        },
        Rule { args: Some(vec![arg(0, AF_VSOCK, LinuxSeccompOperator::ScmpCmpNe)]), ..rule(&["socket"]) },
    ];
    syscalls.extend(PERSONALITIES.iter().map(|persona| Rule {
        args: Some(vec![arg(0, *persona, LinuxSeccompOperator::ScmpCmpEq)]),
        ..rule(&["personality"])
    }));
    syscalls.push(Rule { includes: only(&["ppc64le"]), ..rule(&["sync_file_range2", "swapcontext"]) });
    syscalls.push(Rule {
        includes: only(&["arm", "arm64"]),
        ..rule(&["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"])
    });
    syscalls.push(Rule { includes: only(&["amd64", "x32"]), ..rule(&["arch_prctl"]) });
    syscalls.push(Rule { includes: only(&["amd64", "x32", "x86"]), ..rule(&["modify_ldt"]) });
    syscalls.push(Rule {
        includes: only(&["s390", "s390x"]),
        ..rule(&["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"])
    });
    syscalls.push(Rule { includes: only(&["riscv64"]), ..rule(&["riscv_flush_icache"]) });
    syscalls.extend(BY_CAPABILITY.iter().map(|(cap, names)| Rule { includes: with_cap(cap), ..rule(names) }));
    // Without CAP_SYS_ADMIN, clone may not create namespaces (its flags are the first argument,
    // the second on s390), and clone3 fails with ENOSYS since its flags are out of reach.
    syscalls.push(Rule {
        args: Some(vec![arg(0, CLONE_NAMESPACE_FLAGS, LinuxSeccompOperator::ScmpCmpMaskedEq)]),
        excludes: Some(Filter {
            caps: Some(vec!["CAP_SYS_ADMIN".to_owned()]),
            arches: Some(vec!["s390".to_owned(), "s390x".to_owned()]),
            min_kernel: None,
        }),
        ..rule(&["clone"])
    });
    syscalls.push(Rule {
        args: Some(vec![arg(1, CLONE_NAMESPACE_FLAGS, LinuxSeccompOperator::ScmpCmpMaskedEq)]),
        includes: only(&["s390", "s390x"]),
        excludes: with_cap("CAP_SYS_ADMIN"),
        ..rule(&["clone"])
    });
    syscalls.push(Rule {
        action: LinuxSeccompAction::ScmpActErrno,
        errno_ret: Some(ENOSYS),
        excludes: with_cap("CAP_SYS_ADMIN"),
        ..rule(&["clone3"])
    });
    Profile {
        default_action: LinuxSeccompAction::ScmpActErrno,
        default_errno_ret: Some(1),
        architectures: None,
        arch_map: Some(vec![
            ArchMap {
                architecture: Arch::ScmpArchX86_64,
                sub_architectures: Some(vec![Arch::ScmpArchX86, Arch::ScmpArchX32]),
            },
            ArchMap { architecture: Arch::ScmpArchAarch64, sub_architectures: Some(vec![Arch::ScmpArchArm]) },
            ArchMap { architecture: Arch::ScmpArchS390x, sub_architectures: Some(vec![Arch::ScmpArchS390]) },
            ArchMap { architecture: Arch::ScmpArchRiscv64, sub_architectures: None },
        ]),
        syscalls: Some(syscalls),
    }
}

/// The names a resolved filter allows unconditionally (no argument checks).
pub fn allowed_names(seccomp: &LinuxSeccomp) -> Vec<&str> {
    seccomp
        .syscalls()
        .iter()
        .flatten()
        .filter(|syscall: &&LinuxSyscall| {
            syscall.action() == LinuxSeccompAction::ScmpActAllow && syscall.args().is_none()
        })
        .flat_map(|syscall| syscall.names().iter().map(String::as_str))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Target {
        Target { go_arch: "amd64", native: Arch::ScmpArchX86_64, kernel: (6, 18) }
    }

    fn caps(names: &[Capability]) -> Capabilities {
        names.iter().copied().collect()
    }

    #[test]
    fn default_profile_denies_with_eperm_on_x86_arches() {
        let seccomp = resolve(&runtime_default(), &caps(&[]), &amd64()).unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(seccomp.default_errno_ret(), Some(1));
        assert_eq!(
            seccomp.architectures().clone().unwrap(),
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        let allowed = allowed_names(&seccomp);
        for name in ["read", "execve", "arch_prctl", "modify_ldt", "ptrace"] {
            assert!(allowed.contains(&name), "{name} should be allowed");
        }
        for name in ["mount", "unshare", "reboot", "set_tls", "open_by_handle_at"] {
            assert!(!allowed.contains(&name), "{name} should not be allowed");
        }
    }

    #[test]
    fn capability_rules_follow_the_final_capabilities() {
        let without = resolve(&runtime_default(), &caps(&[Capability::Chown]), &amd64()).unwrap();
        let clone3 = without.syscalls().iter().flatten().find(|s| s.names() == &["clone3".to_owned()]).unwrap();
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(38));
        let with = resolve(&runtime_default(), &caps(&[Capability::SysAdmin, Capability::SysBoot]), &amd64()).unwrap();
        let allowed = allowed_names(&with);
        assert!(allowed.contains(&"mount") && allowed.contains(&"clone3") && allowed.contains(&"reboot"));
        assert!(with.syscalls().iter().flatten().all(|s| s.action() == LinuxSeccompAction::ScmpActAllow));
    }

    fn clone_args(seccomp: &LinuxSeccomp) -> Vec<(u64, Option<u64>)> {
        seccomp
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.names() == &["clone".to_owned()])
            .map(|s| {
                let arg = s.args().as_ref().unwrap()[0];
                assert_eq!((arg.index(), arg.op()), (0, LinuxSeccompOperator::ScmpCmpMaskedEq));
                (arg.value(), arg.value_two())
            })
            .collect()
    }

    #[test]
    fn masked_comparisons_follow_oci_and_are_swapped_for_libcontainer() {
        let mut seccomp = resolve(&runtime_default(), &caps(&[]), &amd64()).unwrap();
        assert_eq!(clone_args(&seccomp), vec![(CLONE_NAMESPACE_FLAGS, Some(0))]);
        let socket_before: Vec<_> =
            seccomp.syscalls().iter().flatten().filter(|s| s.names() == &["socket".to_owned()]).cloned().collect();
        swap_masked_operands_for_libcontainer(&mut seccomp);
        assert_eq!(clone_args(&seccomp), vec![(0, Some(CLONE_NAMESPACE_FLAGS))]);
        let socket_after: Vec<_> =
            seccomp.syscalls().iter().flatten().filter(|s| s.names() == &["socket".to_owned()]).cloned().collect();
        assert_eq!(socket_before, socket_after, "other comparisons are left alone");
    }

    #[test]
    fn docker_format_profile_file_is_resolved() {
        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
            "syscalls":[{"name":"mkdir","action":"SCMP_ACT_ERRNO","errnoRet":1},
                        {"names":["chroot"],"action":"SCMP_ACT_ERRNO","includes":{"arches":["arm64"]}}]}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.json");
        std::fs::write(&path, json).unwrap();
        let seccomp = resolve(&load(&path).unwrap(), &caps(&[]), &amd64()).unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
        let syscalls = seccomp.syscalls().clone().unwrap();
        assert_eq!(syscalls.len(), 1);
        assert_eq!(syscalls[0].names(), &["mkdir".to_owned()]);
        assert!(matches!(load(&dir.path().join("missing.json")), Err(SpecError::SeccompRead { .. })));
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_version("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel_version("x"), None);
    }
}

//! `tug shim sandbox`: the pod sandbox's holder of namespaces, the role of the pause container.
//! It creates the pod's network, IPC and UTS namespaces (and its PID namespace with
//! `shareProcessNamespace`), sets them up (hostname, `lo` up, namespaced sysctls), pins them
//! by bind mounts under `DIR/ns/` so that containers join them by path and the network can be
//! torn down after the process is gone, and then waits for SIGTERM, reaping zombies.

use std::path::Path;
use std::process::ExitCode;

use super::daemon::{self, Side};
use super::protocol::{Report, SandboxArgs};
use super::{cgroup, sys};

pub fn main(args: SandboxArgs) -> ExitCode {
    match daemon::daemonize() {
        Err(e) => {
            daemon::send_report(&Report::Failed { error: format!("daemonize shim: {e}") });
            return ExitCode::FAILURE;
        }
        Ok(Side::Parent) => return ExitCode::SUCCESS,
        Ok(Side::Daemon) => {}
    }
    match run(&args) {
        Ok(code) => code,
        Err(error) => {
            daemon::send_report(&Report::Failed { error });
            ExitCode::FAILURE
        }
    }
}

fn run(args: &SandboxArgs) -> Result<ExitCode, String> {
    let ns_dir = args.dir.join("ns");
    std::fs::create_dir_all(&ns_dir).map_err(|e| format!("create {}: {e}", ns_dir.display()))?;
    let me = std::process::id();
    if let Some(path) = &args.cgroup {
        cgroup::join(path, me).map_err(|e| format!("join cgroup {path}: {e}"))?;
    }
    let sysctls = check_sysctls(args)?;
    let mut flags = 0;
    for (set, flag) in [
        (args.new_net, libc::CLONE_NEWNET),
        (args.new_ipc, libc::CLONE_NEWIPC),
        (args.new_uts, libc::CLONE_NEWUTS),
        (args.share_pid, libc::CLONE_NEWPID),
    ] {
        if set {
            flags |= flag;
        }
    }
    sys::unshare(flags).map_err(|e| format!("unshare namespaces: {e}"))?;
    if args.new_uts {
        rustix::system::sethostname(args.hostname.as_bytes()).map_err(|e| format!("set hostname: {e}"))?;
    }
    if args.new_net {
        sys::set_link_up("lo").map_err(|e| format!("bring lo up: {e}"))?;
    }
    for (key, value) in sysctls {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("set sysctl {key}: {e}"))?;
    }
    for (set, name) in [(args.new_net, "net"), (args.new_ipc, "ipc"), (args.new_uts, "uts")] {
        if set {
            pin(&format!("/proc/self/ns/{name}"), &ns_dir.join(name))?;
        }
    }
    // Blocked before any fork so that no SIGTERM falls between the fork and the wait.
    let signals = sys::SignalSet::block(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD])
        .map_err(|e| format!("block signals: {e}"))?;
    if !args.share_pid {
        daemon::send_report(&Report::Started { shim_pid: me, pid: me });
        pause(&signals, None);
        return Ok(ExitCode::SUCCESS);
    }
    // The first child in the new PID namespace is its init: the pause process.
    match sys::fork().map_err(|e| format!("fork the pause process: {e}"))? {
        sys::Fork::Child => {
            daemon::close_report();
            pause(&signals, None);
            std::process::exit(0);
        }
        sys::Fork::Parent(child) => {
            if let Err(e) = pin(&format!("/proc/{child}/ns/pid"), &ns_dir.join("pid")) {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(child).expect("fork returns a valid pid"),
                    rustix::process::Signal::KILL,
                );
                return Err(e);
            }
            daemon::send_report(&Report::Started { shim_pid: me, pid: child as u32 });
            pause(&signals, Some(child));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Bind-mounts a namespace file onto `target` (an empty file, created first).
fn pin(source: &str, target: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target)
        .map_err(|e| format!("create {}: {e}", target.display()))?;
    rustix::mount::mount_bind(source, target).map_err(|e| format!("pin {source} at {}: {e}", target.display()))
}

/// Waits for SIGTERM or SIGINT, reaping children on SIGCHLD. With `child`, the caller is the
/// shim above the pause process: it forwards termination to the child and returns once the
/// child is gone.
fn pause(signals: &sys::SignalSet, child: Option<i32>) {
    loop {
        let Ok(signal) = signals.wait() else { return };
        if signal == libc::SIGCHLD {
            while let Ok(Some((pid, _))) = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG) {
                if Some(pid.as_raw_nonzero().get()) == child {
                    return;
                }
            }
            continue;
        }
        match child.and_then(rustix::process::Pid::from_raw) {
            Some(pid) => {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            None => return,
        }
    }
}

/// The sysctls to set, refused unless they belong to a namespace this sandbox creates (a
/// sysctl of the host's namespaces would change the node).
fn check_sysctls(args: &SandboxArgs) -> Result<Vec<(String, String)>, String> {
    let mut out = vec![];
    for (key, value) in &args.sysctls {
        let ipc = key.starts_with("kernel.shm")
            || key.starts_with("kernel.msg")
            || key == "kernel.sem"
            || key.starts_with("fs.mqueue.");
        let net = key.starts_with("net.");
        let allowed = (net && args.new_net) || (ipc && args.new_ipc);
        if !allowed || key.contains("..") || key.contains('/') {
            return Err(format!("sysctl {key:?} is not allowed: it is not in a namespace of the pod"));
        }
        out.push((key.clone(), value.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(new_net: bool, new_ipc: bool, sysctls: &[(&str, &str)]) -> SandboxArgs {
        SandboxArgs {
            id: "s".into(),
            dir: "/d".into(),
            hostname: "h".into(),
            new_net,
            new_ipc,
            new_uts: true,
            share_pid: false,
            cgroup: None,
            sysctls: sysctls.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn namespaced_sysctls_are_allowed_only_with_their_namespace() {
        assert!(check_sysctls(&args(true, true, &[("net.ipv4.ip_unprivileged_port_start", "0")])).is_ok());
        assert!(check_sysctls(&args(true, true, &[("kernel.shm_rmid_forced", "1")])).is_ok());
        assert!(check_sysctls(&args(false, true, &[("net.ipv4.ip_forward", "1")])).is_err());
        assert!(check_sysctls(&args(true, false, &[("kernel.msgmax", "1")])).is_err());
        assert!(check_sysctls(&args(true, true, &[("vm.swappiness", "1")])).is_err());
    }
}

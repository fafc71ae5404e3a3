//! The few system calls the shim needs that rustix does not wrap safely: `fork`, `close_range`,
//! signal masks with `sigwaitinfo`, `unshare`, bringing an interface up, and mapping a
//! descriptor onto a fixed number in a spawned child. Everything else goes through rustix.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Which side of a `fork` the caller is on.
pub enum Fork {
    Parent(i32),
    Child,
}

/// `fork(2)`. Only called by the single-threaded shim, before any other thread exists, so the
/// child may allocate freely.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: the shim process is single-threaded (no tokio runtime, no helper threads), so the
    // child inherits a consistent heap and no held locks.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// Closes every descriptor numbered `from` and above (`close_range(2)`).
pub fn close_fds_from(from: u32) -> io::Result<()> {
    // SAFETY: a raw syscall with integer arguments; the descriptors it closes are owned by no
    // Rust object at this point (the shim calls it right after daemonizing).
    let r = unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
    if r == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `unshare(2)` with the given `CLONE_*` flags.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: called from the single-threaded shim; unsharing namespaces has no effect on
    // memory safety.
    let r = unsafe { libc::unshare(flags) };
    if r == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A set of signals, blocked for the whole process so that they are only taken by
/// [`SignalSet::wait`] (the way `pause` containers wait for SIGTERM and SIGCHLD).
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    pub fn block(signals: &[libc::c_int]) -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the signal numbers are valid constants.
        unsafe {
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
        }
        // SAFETY: `set` is initialised; the old mask is not needed.
        let r = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(SignalSet(set))
    }

    /// Waits for one of the blocked signals and returns its number.
    pub fn wait(&self) -> io::Result<libc::c_int> {
        loop {
            // SAFETY: `self.0` is an initialised sigset_t; no siginfo is requested.
            let r = unsafe { libc::sigwaitinfo(&self.0, std::ptr::null_mut()) };
            if r == -1 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            return Ok(r);
        }
    }
}

/// Brings a network interface up (`SIOCSIFFLAGS` with `IFF_UP`), as the pause container's
/// runtime does for `lo` in a new network namespace.
pub fn set_link_up(name: &str) -> io::Result<()> {
    let sock = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None)?;
    // SAFETY: ifreq is plain data; zero is a valid value for every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the socket is open.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether descriptor `fd` is open in this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Makes `fd` appear as descriptor `target` in the child that `cmd` spawns (and nowhere else:
/// the original keeps its close-on-exec flag).
pub fn map_fd_in_child(cmd: &mut tokio::process::Command, fd: OwnedFd, target: RawFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only calls dup2, which is
    // async-signal-safe; `fd` is kept alive by the closure until the Command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &fd;
            if libc::dup2(raw, target) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Restores the default SIGPIPE action, which the Rust runtime sets to "ignore" in the shim and
/// which an exec'd container process would otherwise inherit (and so never die of SIGPIPE).
pub fn reset_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Takes ownership of descriptor `fd` if it is open (one the spawner handed over at a fixed
/// number, such as the resize pipe on fd 3), marking it close-on-exec.
pub fn take_fd(fd: RawFd) -> Option<OwnedFd> {
    if !fd_is_open(fd) {
        return None;
    }
    // SAFETY: the descriptor is open and nothing else in this process owns it: the shim calls
    // this once, at start, for a number the spawner mapped explicitly.
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let _ = rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC);
    Some(owned)
}

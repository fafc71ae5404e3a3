//! Daemonizing and the start report: the spawner (the node agent) runs `tug shim run|sandbox`
//! with stdout on a pipe; the shim forks, the parent exits at once (so the spawner can reap
//! it), and the child becomes a session leader with no inherited descriptors but the report
//! pipe, which it closes after writing the one-line [`Report`].

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};

use super::protocol::Report;
use super::sys;

/// Which process the caller is after [`daemonize`].
pub enum Side {
    /// The short-lived parent: it should exit 0 now.
    Parent,
    /// The daemon: stdin and stderr on /dev/null, stdout still the report pipe.
    Daemon,
}

/// Forks; in the child, starts a new session, closes every descriptor above stderr and points
/// stdin and stderr at /dev/null.
pub fn daemonize() -> io::Result<Side> {
    match sys::fork()? {
        sys::Fork::Parent(_) => return Ok(Side::Parent),
        sys::Fork::Child => {}
    }
    rustix::process::setsid()?;
    sys::close_fds_from(3)?;
    let null = dev_null()?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    std::env::set_current_dir("/")?;
    Ok(Side::Daemon)
}

/// `/dev/null`, opened close-on-exec.
pub fn dev_null() -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// Writes `report` as one JSON line to stdout, then replaces stdout with /dev/null so the
/// spawner sees end of file.
pub fn send_report(report: &Report) {
    let mut line = serde_json::to_vec(report).expect("a report always serializes");
    line.push(b'\n');
    // Nothing can be done if the spawner went away; the shim carries on either way.
    let _ = io::stdout().lock().write_all(&line);
    let _ = io::stdout().lock().flush();
    close_report();
}

/// Replaces stdout (the report pipe) with /dev/null, so that this process no longer keeps the
/// spawner waiting for end of file (also in a child forked before the report is written).
pub fn close_report() {
    if let Ok(null) = dev_null() {
        let _ = rustix::stdio::dup2_stdout(null.as_fd());
    }
}

//! `tug shim run`: creates one container with libcontainer, then stays with it for its whole
//! life as containerd's shim does: logs its output in the CRI format, serves the attach
//! socket, waits for it, records how it ended in the exit file, and deletes it.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::ExitCode;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use super::attach::{AttachServer, Input, bind_unix};
use super::daemon::{self, Side};
use super::log_writer::{LogWriter, Stream};
use super::protocol::{ExitRecord, Report, RunArgs, frame, start_error_message};
use super::{cgroup, error_chain, executor::ShimExecutor};

/// How much stdin may wait for a container that does not read it before data is dropped.
const MAX_STDIN_BACKLOG: usize = 1 << 20;

/// A started container, as the supervising loop needs it.
struct Running {
    pid: i32,
    pidfd: OwnedFd,
    /// Output read ends: stdout and stderr pipes, or the terminal's master side.
    outputs: Vec<(OwnedFd, Stream)>,
    /// Where stdin goes: the pipe's write end, or (a duplicate of) the terminal's master.
    stdin: Option<OwnedFd>,
    /// The terminal's master, for resizes.
    pty: Option<OwnedFd>,
    cgroups_path: String,
    started_at: jiff::Timestamp,
    attach: AttachServer,
    log: LogWriter,
}

pub fn main(args: RunArgs) -> ExitCode {
    match daemon::daemonize() {
        Err(e) => {
            daemon::send_report(&Report::Failed { error: format!("daemonize shim: {e}") });
            return ExitCode::FAILURE;
        }
        Ok(Side::Parent) => return ExitCode::SUCCESS,
        Ok(Side::Daemon) => {}
    }
    // A container of that id already in the state root belongs to another shim: failing here
    // must not delete it, as a half-made container of our own is deleted below.
    if args.root.join(&args.id).exists() {
        daemon::send_report(&Report::Failed { error: format!("container {} already exists", args.id) });
        return ExitCode::FAILURE;
    }
    let running = match start(&args) {
        Ok(running) => running,
        Err(error) => {
            delete_container(&args.root, &args.id);
            daemon::send_report(&Report::Failed { error });
            return ExitCode::FAILURE;
        }
    };
    daemon::send_report(&Report::Started { shim_pid: std::process::id(), pid: running.pid as u32 });
    supervise(&args, running)
}

fn start(args: &RunArgs) -> Result<Running, String> {
    let config = args.bundle.join("config.json");
    let spec: serde_json::Value = std::fs::read(&config)
        .map_err(|e| format!("read {}: {e}", config.display()))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("parse {}: {e}", config.display())))?;
    let cgroups_path = spec.pointer("/linux/cgroupsPath").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    std::fs::create_dir_all(&args.root).map_err(|e| format!("create {}: {e}", args.root.display()))?;
    let state_dir = args.exit_file.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(state_dir).map_err(|e| format!("create {}: {e}", state_dir.display()))?;
    // Opened before the container exists: a log that cannot be written fails the start.
    let log = LogWriter::open(&args.log, args.log_max_size, args.log_max_files).map_err(|e| e.to_string())?;
    let attach_path = state_dir.join("attach.sock");
    let attach = AttachServer::bind(&attach_path).map_err(|e| format!("listen on {}: {e}", attach_path.display()))?;

    let mut builder = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.root)
        .map_err(|e| error_chain(&e))?
        .with_executor(ShimExecutor { die_with_shim: false });
    let mut outputs = vec![];
    let mut stdin = None;
    let mut console = None;
    if args.tty {
        let path = state_dir.join("console.sock");
        let listener = bind_unix(&path).map_err(|e| format!("listen on {}: {e}", path.display()))?;
        builder = builder.with_console_socket(Some(&path));
        console = Some((listener, path));
    } else {
        let (r, w) = pipe()?;
        builder = builder.with_stdout(w);
        outputs.push((r, Stream::Stdout));
        let (r, w) = pipe()?;
        builder = builder.with_stderr(w);
        outputs.push((r, Stream::Stderr));
        if args.stdin {
            let (r, w) = pipe()?;
            builder = builder.with_stdin(r);
            stdin = Some(w);
        }
    }
    let mut container = builder
        .validate_id()
        .map_err(|e| error_chain(&e))?
        .as_init(&args.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| start_error_message(&error_chain(&e)).0)?;
    container.start().map_err(|e| start_error_message(&error_chain(&e)).0)?;
    let started_at = jiff::Timestamp::now();
    let pid = container.pid().map(|p| p.as_raw()).ok_or("the container has no init process")?;

    let mut pty = None;
    if let Some((listener, path)) = console {
        let master = receive_pty(&listener).map_err(|e| format!("receive the terminal from the container: {e}"))?;
        let _ = std::fs::remove_file(path);
        if args.stdin {
            stdin = Some(rustix::io::dup(&master).map_err(|e| format!("dup terminal: {e}"))?);
        }
        pty = Some(rustix::io::dup(&master).map_err(|e| format!("dup terminal: {e}"))?);
        outputs.push((master, Stream::Stdout));
    }
    for (fd, _) in &outputs {
        set_nonblocking(fd)?;
    }
    if let Some(fd) = &stdin {
        set_nonblocking(fd)?;
    }
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).ok_or("invalid container pid")?,
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| format!("pidfd_open {pid}: {e}"))?;
    Ok(Running { pid, pidfd, outputs, stdin, pty, cgroups_path, started_at, attach, log })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), String> {
    rustix::io::ioctl_fionbio(fd, true).map_err(|e| format!("set non-blocking: {e}"))
}

/// Accepts libcontainer's connection on the console socket and takes the terminal's master
/// side from it (sent as SCM_RIGHTS before the container reported ready).
pub(super) fn receive_pty(listener: &OwnedFd) -> std::io::Result<OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketFlags};
    let conn = rustix::net::accept_with(listener, SocketFlags::CLOEXEC)?;
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 4096];
    rustix::net::recvmsg(&conn, &mut [std::io::IoSliceMut::new(&mut name)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "no descriptor in the console message"))
}

/// The shim's loop: copies output into the log and to attach clients, feeds stdin, and ends
/// when the container's init exits.
fn supervise(args: &RunArgs, mut c: Running) -> ExitCode {
    let mut stdin_pending: Vec<u8> = vec![];
    let mut close_stdin = false;
    let mut buf = vec![0u8; 64 * 1024];
    let status = loop {
        // The poll set borrows the attach server; it is dropped before anything is serviced.
        let polled = {
            let (listener, clients) = c.attach.poll_set();
            let mut fds = vec![PollFd::new(&c.pidfd, PollFlags::IN)];
            fds.extend(c.outputs.iter().map(|(fd, _)| PollFd::new(fd, PollFlags::IN)));
            let stdin_slot = match (&c.stdin, stdin_pending.is_empty()) {
                (Some(fd), false) => {
                    fds.push(PollFd::new(fd, PollFlags::OUT));
                    true
                }
                _ => false,
            };
            fds.push(PollFd::from_borrowed_fd(listener, PollFlags::IN));
            fds.extend(clients.iter().map(|(fd, has_out)| {
                PollFd::from_borrowed_fd(*fd, if *has_out { PollFlags::IN | PollFlags::OUT } else { PollFlags::IN })
            }));
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(Errno::INTR) => Some((fds.iter().map(|f| f.revents()).collect::<Vec<_>>(), stdin_slot)),
                Err(_) => None,
            }
        };
        let Some((revents, stdin_slot)) = polled else { break None };
        let ready = |r: PollFlags| r.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR);

        let now = jiff::Timestamp::now();
        let mut i = 1;
        let mut closed = vec![];
        for (n, (fd, stream)) in c.outputs.iter().enumerate() {
            if ready(revents[i]) && !copy_output(fd, *stream, &mut buf, &mut c.log, &mut c.attach, now) {
                closed.push(n);
            }
            i += 1;
        }
        for n in closed.into_iter().rev() {
            let (_, stream) = c.outputs.remove(n);
            let _ = c.log.finish(stream, now);
        }
        if stdin_slot {
            i += 1;
        }
        if ready(revents[i]) {
            c.attach.accept();
        }
        let mut inputs = vec![];
        for (n, r) in revents[i + 1..].iter().enumerate().rev() {
            let readable = ready(*r);
            let writable = r.contains(PollFlags::OUT);
            if readable || writable {
                c.attach.service(n, readable, writable, &mut inputs);
            }
        }
        for input in inputs {
            match input {
                Input::Stdin(data) => {
                    if c.stdin.is_some() && stdin_pending.len() + data.len() <= MAX_STDIN_BACKLOG {
                        stdin_pending.extend_from_slice(&data);
                    }
                }
                Input::Resize { cols, rows } => {
                    if let Some(pty) = &c.pty {
                        let size = rustix::termios::Winsize { ws_col: cols, ws_row: rows, ws_xpixel: 0, ws_ypixel: 0 };
                        let _ = rustix::termios::tcsetwinsize(pty, size);
                    }
                }
                Input::CloseStdin => close_stdin = true,
                Input::FirstClientLeft if args.stdin_once => close_stdin = true,
                Input::FirstClientLeft => {}
            }
        }
        flush_stdin(&mut c.stdin, &mut stdin_pending);
        // A terminal has no end of input to give: its stdin stays open (as with containerd).
        if close_stdin && stdin_pending.is_empty() && c.pty.is_none() {
            c.stdin = None;
        }
        if ready(revents[0]) {
            match rustix::process::waitpid(rustix::process::Pid::from_raw(c.pid), rustix::process::WaitOptions::NOHANG)
            {
                Ok(Some((_, status))) => break Some(status),
                Ok(None) => {}
                Err(_) => break None,
            }
        }
    };
    finish(args, c, status, &mut buf)
}

/// Reads what `fd` has and hands it to the log and the attach clients. Returns false at end of
/// output (end of file, or EIO from a terminal whose other side is closed).
fn copy_output(
    fd: &OwnedFd,
    stream: Stream,
    buf: &mut [u8],
    log: &mut LogWriter,
    attach: &mut AttachServer,
    now: jiff::Timestamp,
) -> bool {
    let n = match rustix::io::read(fd, &mut *buf) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(Errno::AGAIN) | Err(Errno::INTR) => return true,
        Err(_) => return false,
    };
    // A full disk loses log lines but must not stop the container or its attach clients.
    let _ = log.write(stream, &buf[..n], now);
    attach.broadcast(if stream == Stream::Stdout { frame::STDOUT } else { frame::STDERR }, &buf[..n]);
    true
}

fn flush_stdin(stdin: &mut Option<OwnedFd>, pending: &mut Vec<u8>) {
    let Some(fd) = stdin.as_ref() else {
        pending.clear();
        return;
    };
    while !pending.is_empty() {
        match rustix::io::write(fd, pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(Errno::AGAIN) => return,
            Err(Errno::INTR) => continue,
            Err(_) => {
                // The container closed its stdin: nothing more can go in.
                pending.clear();
                *stdin = None;
                return;
            }
        }
    }
}

/// After the init exited: drains the output, deletes the container, writes the exit file and
/// tells attach clients.
fn finish(args: &RunArgs, mut c: Running, status: Option<rustix::process::WaitStatus>, buf: &mut [u8]) -> ExitCode {
    let finished_at = jiff::Timestamp::now();
    for (fd, stream) in &c.outputs {
        while copy_output(fd, *stream, buf, &mut c.log, &mut c.attach, finished_at) {
            if matches!(rustix::event::poll(&mut [PollFd::new(fd, PollFlags::IN)], Some(&zero())), Ok(0)) {
                break;
            }
        }
        let _ = c.log.finish(*stream, finished_at);
    }
    let signal = status.and_then(|s| s.terminating_signal());
    let exit_code = match (status.and_then(|s| s.exit_status()), signal) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        // Lost track of the process: report it as runtimes report an unknown exit.
        (None, None) => 255,
    };
    let record = ExitRecord {
        exit_code,
        signal,
        oom_killed: !c.cgroups_path.is_empty() && cgroup::oom_kills(&c.cgroups_path) > 0,
        started_at: c.started_at,
        finished_at,
    };
    // Deleted before the exit file appears, so that whoever sees the exit file finds the
    // container's processes, cgroup and state gone (and may remove its root filesystem).
    delete_container(&args.root, &args.id);
    let written = write_exit_file(&args.exit_file, &record);
    c.attach.broadcast(frame::EXITED, &exit_code.to_be_bytes());
    c.attach.drain(std::time::Duration::from_secs(1));
    if written.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn zero() -> rustix::event::Timespec {
    rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 }
}

/// Writes the exit record atomically: readers see the whole file or none.
pub(super) fn write_exit_file(path: &Path, record: &ExitRecord) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Deletes the container's libcontainer state and cgroup (killing what is left of it).
fn delete_container(root: &Path, id: &str) {
    let dir = root.join(id);
    if let Ok(mut container) = Container::load(dir.clone()) {
        let _ = container.delete(true);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

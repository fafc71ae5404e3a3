//! `tug shim exec`: runs a process inside a running container (`kubectl exec`, probes), with
//! the shim's own standard streams, and exits with the process's exit code. The process gets
//! the container's process settings (user, capabilities, no_new_privs, env) with the command,
//! working directory, extra environment and terminal replaced, as `runc exec` does.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use super::attach::bind_unix;
use super::protocol::{ExecArgs, start_error_message};
use super::{error_chain, executor::ShimExecutor, sys};

/// The exit code when the process could not be started for a reason other than its
/// executable (the shell's "cannot execute").
const CANNOT_START: u8 = 126;

pub fn main(args: ExecArgs) -> ExitCode {
    // fd 3 carries terminal resizes with --tty; anything else inherited is closed so that it
    // does not leak into the container.
    let resize = if args.tty { sys::take_fd(3) } else { None };
    let _ = sys::close_fds_from(if resize.is_some() { 4 } else { 3 });
    match run(&args, resize) {
        Ok(code) => ExitCode::from(code),
        Err((message, code)) => {
            let _ = writeln!(std::io::stderr(), "{message}");
            ExitCode::from(code)
        }
    }
}

fn run(args: &ExecArgs, resize: Option<OwnedFd>) -> Result<u8, (String, u8)> {
    let fail = |m: String| (m, CANNOT_START);
    let container_dir = args.root.join(&args.id);
    let container =
        Container::load(container_dir.clone()).map_err(|_| fail(format!("container {} not found", args.id)))?;
    if !container.can_exec() {
        return Err(fail(format!("container {} is not running", args.id)));
    }
    let process = process_json(container.bundle(), args).map_err(fail)?;
    let process_file = container_dir.join(format!("exec-{}.json", std::process::id()));
    std::fs::write(&process_file, process).map_err(|e| fail(format!("write {}: {e}", process_file.display())))?;

    let mut builder = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.root)
        .map_err(|e| fail(error_chain(&e)))?
        .with_executor(ShimExecutor { die_with_shim: true });
    let mut console = None;
    if args.tty {
        let path = container_dir.join(format!("exec-{}.sock", std::process::id()));
        let listener = bind_unix(&path).map_err(|e| fail(format!("listen on {}: {e}", path.display())))?;
        builder = builder.with_console_socket(Some(&path));
        console = Some((listener, path));
    }
    let built = builder.as_tenant().with_process(Some(&process_file)).with_detach(args.tty).build();
    let _ = std::fs::remove_file(&process_file);
    if let Some((_, path)) = &console {
        let _ = std::fs::remove_file(path);
    }
    let pid = match built {
        Ok(pid) => pid.as_raw(),
        Err(e) => {
            let (message, code) = start_error_message(&error_chain(&e));
            return Err((message, code.map(|c| c as u8).unwrap_or(CANNOT_START)));
        }
    };
    let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| fail("invalid process id".into()))?;
    if let Some((listener, _)) = console {
        let master = super::run::receive_pty(&listener).map_err(|e| fail(format!("receive terminal: {e}")))?;
        copy_terminal(pid, &master, resize.as_ref());
    }
    Ok(wait(pid))
}

/// The process to run: the container's own, with the command, env, cwd and terminal of the
/// exec request.
fn process_json(bundle: &Path, args: &ExecArgs) -> Result<Vec<u8>, String> {
    let config = bundle.join("config.json");
    let spec: serde_json::Value = std::fs::read(&config)
        .map_err(|e| format!("read {}: {e}", config.display()))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("parse {}: {e}", config.display())))?;
    let mut process = spec.get("process").cloned().unwrap_or_else(|| serde_json::json!({}));
    let mut env: Vec<String> = process
        .get("env")
        .and_then(|e| e.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    for (k, v) in &args.env {
        let prefix = format!("{k}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{k}={v}"));
    }
    let object = process.as_object_mut().ok_or("the container's process is not an object")?;
    object.insert("args".into(), serde_json::json!(args.cmd));
    object.insert("env".into(), serde_json::json!(env));
    object.insert("terminal".into(), serde_json::json!(args.tty));
    object.remove("consoleSize");
    if let Some(cwd) = &args.cwd {
        object.insert("cwd".into(), serde_json::json!(cwd));
    }
    serde_json::to_vec(&process).map_err(|e| e.to_string())
}

/// Waits for the process and turns its status into an exit code (128 + signal when killed).
fn wait(pid: rustix::process::Pid) -> u8 {
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return code as u8;
                }
                if let Some(sig) = status.terminating_signal() {
                    return (128 + sig) as u8;
                }
            }
            Ok(None) | Err(Errno::INTR) => continue,
            Err(_) => return CANNOT_START,
        }
    }
}

/// Copies between the shim's stdin/stdout and the terminal until the process exits, applying
/// resizes (`<cols> <rows>` lines) read from `resize`.
fn copy_terminal(pid: rustix::process::Pid, master: &OwnedFd, resize: Option<&OwnedFd>) {
    let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else { return };
    // Non-blocking, so that draining after the exit stops when nothing is left even if a
    // leftover process still holds the terminal open.
    let _ = rustix::io::ioctl_fionbio(master, true);
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut stdin_open = true;
    let mut resize_open = resize.is_some();
    let mut resize_buf: Vec<u8> = vec![];
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let (revents, exited) = {
            let stdin_fd = stdin.as_fd();
            let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN), PollFd::new(master, PollFlags::IN)];
            // Resizes before input, so that a size sent before a command applies to it.
            if let (true, Some(r)) = (resize_open, resize) {
                fds.push(PollFd::new(r, PollFlags::IN));
            }
            if stdin_open {
                fds.push(PollFd::from_borrowed_fd(stdin_fd, PollFlags::IN));
            }
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(_) => return,
            }
            let revents: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
            let exited = !revents[0].is_empty();
            (revents, exited)
        };
        let ready = |r: PollFlags| r.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR);
        if ready(revents[1]) || exited {
            // Output first, and all of it once the process is gone.
            loop {
                match rustix::io::read(master, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut out = stdout.lock();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                }
                if !exited {
                    break;
                }
                if matches!(
                    rustix::event::poll(
                        &mut [PollFd::new(master, PollFlags::IN)],
                        Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })
                    ),
                    Ok(0)
                ) {
                    break;
                }
            }
        }
        if exited {
            return;
        }
        let mut slot = 2;
        if let (true, Some(r)) = (resize_open, resize) {
            if ready(revents[slot]) {
                match rustix::io::read(r, &mut buf) {
                    Ok(0) | Err(_) => resize_open = false,
                    Ok(n) => {
                        resize_buf.extend_from_slice(&buf[..n]);
                        while let Some(end) = resize_buf.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = resize_buf.drain(..=end).collect();
                            if let Some((cols, rows)) = parse_resize(&line) {
                                let size =
                                    rustix::termios::Winsize { ws_col: cols, ws_row: rows, ws_xpixel: 0, ws_ypixel: 0 };
                                let _ = rustix::termios::tcsetwinsize(master, size);
                            }
                        }
                    }
                }
            }
            slot += 1;
        }
        if stdin_open && ready(revents[slot]) {
            match rustix::io::read(stdin.as_fd(), &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let _ = write_all(master, &buf[..n]);
                }
            }
        }
    }
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => {
                let _ = rustix::event::poll(&mut [PollFd::new(fd, PollFlags::OUT)], None);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A resize request line: `<cols> <rows>\n`.
fn parse_resize(line: &[u8]) -> Option<(u16, u16)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    let cols = parts.next()?.parse().ok()?;
    let rows = parts.next()?.parse().ok()?;
    Some((cols, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_lines_carry_columns_then_rows() {
        assert_eq!(parse_resize(b"120 40\n"), Some((120, 40)));
        assert_eq!(parse_resize(b"x\n"), None);
    }

    #[test]
    fn exec_process_keeps_the_container_settings_and_replaces_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({"process": {"args": ["sleep", "1000"], "user": {"uid": 1000, "gid": 1000},
            "env": ["PATH=/bin", "A=1"], "cwd": "/", "terminal": false}});
        std::fs::write(dir.path().join("config.json"), spec.to_string()).unwrap();
        let args = ExecArgs {
            id: "c".into(),
            root: "/r".into(),
            tty: true,
            cwd: Some("/tmp".into()),
            env: vec![("A".into(), "2".into())],
            cmd: vec!["sh".into()],
        };
        let p: serde_json::Value = serde_json::from_slice(&process_json(dir.path(), &args).unwrap()).unwrap();
        assert_eq!(p["args"], serde_json::json!(["sh"]));
        assert_eq!(p["env"], serde_json::json!(["PATH=/bin", "A=2"]));
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["terminal"], true);
    }
}

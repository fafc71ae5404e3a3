//! The runtime's side of the shim, used inside the node agent's tokio runtime: spawning
//! `tug shim run|sandbox|exec` (a fork+exec, never libcontainer in this process), reading the
//! start report and the exit file, and joining a container's attach socket.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use super::protocol::{ExecArgs, ExitRecord, RunArgs, SandboxArgs};
use super::protocol::{Report, decode_frame, encode_frame, frame};
use super::sys;
use crate::cri::{StreamSession, TerminalSize};

/// The `tug` executable to re-execute as the shim (normally `std::env::current_exe()`).
#[derive(Debug, Clone)]
pub struct ShimBinary(pub PathBuf);

/// What a started shim reports: its own pid and the container's (or sandbox's) process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub shim_pid: u32,
    pub pid: u32,
}

/// Errors of the shim client.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("spawn the shim: {source}")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    /// The shim could not start the container; the message says why in the words runtimes use
    /// (`exec: "nope": executable file not found in $PATH`).
    #[error("{0}")]
    Report(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shim protocol: {0}")]
    Protocol(String),
}

/// Starts a container under a new `tug shim run`; returns once it runs (or failed to start).
pub async fn run_container(bin: &ShimBinary, args: &RunArgs) -> Result<Started, ShimError> {
    spawn_daemon(bin, args.to_argv()).await
}

/// Starts a pod sandbox under a new `tug shim sandbox`; returns once its namespaces are pinned.
pub async fn run_sandbox(bin: &ShimBinary, args: &SandboxArgs) -> Result<Started, ShimError> {
    spawn_daemon(bin, args.to_argv()).await
}

async fn spawn_daemon(bin: &ShimBinary, argv: Vec<std::ffi::OsString>) -> Result<Started, ShimError> {
    let mut child = tokio::process::Command::new(&bin.0)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ShimError::Spawn { source })?;
    let mut stdout = child.stdout.take().ok_or_else(|| ShimError::Protocol("no stdout pipe".into()))?;
    let mut stderr = child.stderr.take().ok_or_else(|| ShimError::Protocol("no stderr pipe".into()))?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    // The parent exits at once; the daemon holds stdout until it has written its report.
    let (status, read_out, _) = tokio::join!(child.wait(), stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
    let status = status.map_err(|source| ShimError::Spawn { source })?;
    read_out.map_err(|e| ShimError::Protocol(format!("read the shim's report: {e}")))?;
    let line = String::from_utf8_lossy(&out);
    let line = line.lines().next().unwrap_or_default();
    match serde_json::from_str::<Report>(line) {
        Ok(Report::Started { shim_pid, pid }) => Ok(Started { shim_pid, pid }),
        Ok(Report::Failed { error }) => Err(ShimError::Report(error)),
        Err(_) => Err(ShimError::Protocol(format!(
            "the shim ({status}) reported {line:?}: {}",
            String::from_utf8_lossy(&err).trim()
        ))),
    }
}

/// A running `tug shim exec`: the child (with piped stdin, stdout and stderr; its exit status
/// is the process's exit code), and with a TTY the writer of terminal resizes.
#[derive(Debug)]
pub struct ExecProcess {
    pub child: tokio::process::Child,
    pub resize: Option<ResizeWriter>,
}

/// Sends terminal size changes to a `tug shim exec --tty` (its fd 3).
#[derive(Debug)]
pub struct ResizeWriter(tokio::net::unix::pipe::Sender);

impl ResizeWriter {
    pub async fn resize(&mut self, size: TerminalSize) -> std::io::Result<()> {
        self.0.write_all(format!("{} {}\n", size.width, size.height).as_bytes()).await
    }
}

/// Spawns `tug shim exec` with piped standard streams (and fd 3 for resizes with a TTY). With
/// a TTY the process's output arrives on stdout only. A command that cannot be started exits
/// 127 (not found) or 126 with the runtime's message on stderr.
pub fn spawn_exec(bin: &ShimBinary, args: &ExecArgs) -> Result<ExecProcess, ShimError> {
    let mut cmd = tokio::process::Command::new(&bin.0);
    cmd.args(args.to_argv()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut resize = None;
    if args.tty {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| ShimError::Spawn { source: e.into() })?;
        rustix::io::ioctl_fionbio(&write, true).map_err(|e| ShimError::Spawn { source: e.into() })?;
        sys::map_fd_in_child(&mut cmd, read, 3);
        let sender =
            tokio::net::unix::pipe::Sender::from_owned_fd(write).map_err(|source| ShimError::Spawn { source })?;
        resize = Some(ResizeWriter(sender));
    }
    let child = cmd.spawn().map_err(|source| ShimError::Spawn { source })?;
    Ok(ExecProcess { child, resize })
}

/// Reads a container's exit file; `None` while the container has not exited (or its shim
/// died before writing it).
pub fn read_exit_file(path: &Path) -> Result<Option<ExitRecord>, ShimError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ShimError::Protocol(format!("exit file {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ShimError::Io { path: path.to_path_buf(), source }),
    }
}

/// Connects to a unix socket, also at a path longer than `sun_path` allows (through the
/// directory's `/proc/self/fd` entry).
async fn connect_unix(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let dir_fd: OwnedFd =
        rustix::fs::open(dir, rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())?;
    let short = format!("/proc/self/fd/{}/{}", rustix::fd::AsRawFd::as_raw_fd(&dir_fd), name.to_string_lossy());
    let stream = tokio::net::UnixStream::connect(&short).await;
    drop(dir_fd);
    stream
}

/// Connects to a running container's attach socket and returns a session wired to it: its
/// output (stdout and, without a TTY, stderr), optionally its stdin and terminal resizes, and
/// its exit code when it ends while attached.
pub async fn attach(socket: &Path, stdin: bool, tty: bool) -> Result<StreamSession, ShimError> {
    let stream = connect_unix(socket).await.map_err(|source| ShimError::Io { path: socket.to_path_buf(), source })?;
    let (mut sock_read, mut sock_write) = stream.into_split();
    let (stdout_session, mut stdout_task) = tokio::io::duplex(64 * 1024);
    let (stderr_session, mut stderr_task) = tokio::io::duplex(64 * 1024);
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    // The writing half must outlive the writer's loop: dropping it shuts the socket down for
    // writing, which the shim takes for the client leaving. It is dropped once reading ends.
    let (reading_tx, reading_rx) = tokio::sync::oneshot::channel::<()>();

    tokio::spawn(async move {
        let _reading = reading_tx;
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut code = None;
        let mut exit_tx = exit_tx;
        'read: loop {
            // A session dropped by its user (its exit receiver gone) stops the copying.
            let read = tokio::select! {
                read = sock_read.read_buf(&mut buf) => read,
                _ = exit_tx.closed() => break,
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let mut consumed = 0;
            while let Ok(Some((kind, payload, n))) = decode_frame(&buf[consumed..]) {
                consumed += n;
                // A reader that went away only loses its stream; the exit code still counts.
                match kind {
                    frame::STDOUT => {
                        let _ = stdout_task.write_all(payload).await;
                    }
                    frame::STDERR if tty => {
                        let _ = stdout_task.write_all(payload).await;
                    }
                    frame::STDERR => {
                        let _ = stderr_task.write_all(payload).await;
                    }
                    frame::EXITED if payload.len() == 4 => {
                        code = Some(i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]));
                        break 'read;
                    }
                    _ => {}
                }
            }
            if decode_frame(&buf[consumed..]).is_err() {
                break;
            }
            buf.drain(..consumed);
        }
        drop(stdout_task);
        drop(stderr_task);
        let _ = exit_tx.send(code);
    });

    let (stdin_session, stdin_task) = if stdin {
        let (session, task) = tokio::io::duplex(64 * 1024);
        (Some(session), Some(task))
    } else {
        (None, None)
    };
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::channel::<TerminalSize>(8);
    tokio::spawn(async move {
        let mut stdin_task = stdin_task;
        let mut buf = vec![0u8; 32 * 1024];
        let mut resizes_open = true;
        loop {
            let bytes = tokio::select! {
                read = async { stdin_task.as_mut().expect("guarded by the select condition").read(&mut buf).await },
                    if stdin_task.is_some() => match read {
                    Ok(0) | Err(_) => {
                        stdin_task = None;
                        encode_frame(frame::CLOSE_STDIN, &[])
                    }
                    Ok(n) => encode_frame(frame::STDIN, &buf[..n]),
                },
                size = resize_rx.recv(), if resizes_open => match size {
                    Some(size) => {
                        let mut payload = size.width.to_be_bytes().to_vec();
                        payload.extend_from_slice(&size.height.to_be_bytes());
                        encode_frame(frame::RESIZE, &payload)
                    }
                    None => {
                        resizes_open = false;
                        continue;
                    }
                },
                else => break,
            };
            if sock_write.write_all(&bytes).await.is_err() {
                break;
            }
        }
        // Resolves when the reading task ends (its sender is dropped).
        let _ = reading_rx.await;
        drop(sock_write);
    });

    Ok(StreamSession {
        stdin: stdin_session.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
        stdout: Some(Box::new(stdout_session)),
        stderr: if tty { None } else { Some(Box::new(stderr_session)) },
        resize: if tty { Some(resize_tx) } else { None },
        exit: exit_rx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_deeper_than_sun_path_allows_still_connect() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("attach.sock");
        assert!(path.as_os_str().len() > 108);
        let listener = super::super::attach::bind_unix(&path).unwrap();
        let _client = connect_unix(&path).await.expect("connects through /proc/self/fd");
        let accepted = rustix::net::accept_with(&listener, rustix::net::SocketFlags::CLOEXEC);
        assert!(accepted.is_ok());
    }

    #[test]
    fn an_absent_exit_file_means_still_running() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_exit_file(&dir.path().join("exit")).unwrap().is_none());
        std::fs::write(
            dir.path().join("exit"),
            r#"{"exit_code":137,"signal":9,"oom_killed":false,"started_at":"2026-01-02T03:04:05Z","finished_at":"2026-01-02T03:04:06.5Z"}"#,
        )
        .unwrap();
        let record = read_exit_file(&dir.path().join("exit")).unwrap().unwrap();
        assert_eq!((record.exit_code, record.signal), (137, Some(9)));
    }
}

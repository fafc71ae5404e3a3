//! The shim's side of the attach socket (`kubectl attach`, `kubectl run -i`): a unix stream
//! socket beside the exit file. Every client gets the container's output as it is read, and
//! may send stdin, terminal resizes and "close stdin" (frames in [`super::protocol`]).
//! Everything is non-blocking: a client that does not keep up loses output rather than
//! stalling the shim (and with it the container's log).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

use super::protocol::{decode_frame, encode_frame, frame};

/// How much output may wait for one slow client before frames are dropped.
const MAX_CLIENT_BACKLOG: usize = 1 << 20;

/// What clients asked of the container.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Stdin(Vec<u8>),
    Resize {
        cols: u16,
        rows: u16,
    },
    CloseStdin,
    /// The first client to connect went away (with `--stdin-once` this closes stdin).
    FirstClientLeft,
}

struct Client {
    sock: OwnedFd,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// The first client to connect: with `--stdin-once` its leaving closes stdin.
    first: bool,
}

/// The listening socket and its connected clients.
pub struct AttachServer {
    listener: OwnedFd,
    path: PathBuf,
    clients: Vec<Client>,
    connected_before: bool,
}

/// Binds a unix stream socket at `path`, also when the path is longer than `sun_path` allows
/// (the kubelet's directories can be deep): the bind goes through the directory's
/// `/proc/self/fd` entry.
pub fn bind_unix(path: &Path) -> io::Result<OwnedFd> {
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let _ = std::fs::remove_file(path);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let dir_fd =
        rustix::fs::open(dir, rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())?;
    let short = format!("/proc/self/fd/{}/{}", rustix::fd::AsRawFd::as_raw_fd(&dir_fd), name.to_string_lossy());
    rustix::net::bind(&sock, &SocketAddrUnix::new(short.as_str())?)?;
    rustix::net::listen(&sock, 16)?;
    Ok(sock)
}

impl AttachServer {
    pub fn bind(path: &Path) -> io::Result<Self> {
        Ok(AttachServer {
            listener: bind_unix(path)?,
            path: path.to_path_buf(),
            clients: vec![],
            connected_before: false,
        })
    }

    /// The descriptors to poll: the listener, then every client (with whether it has output
    /// waiting).
    pub fn poll_set(&self) -> (BorrowedFd<'_>, Vec<(BorrowedFd<'_>, bool)>) {
        (self.listener.as_fd(), self.clients.iter().map(|c| (c.sock.as_fd(), !c.out.is_empty())).collect())
    }

    /// Accepts every pending connection.
    pub fn accept(&mut self) {
        while let Ok(sock) = rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            let first = !self.connected_before;
            self.connected_before = true;
            self.clients.push(Client { sock, inbuf: vec![], out: vec![], first });
        }
    }

    /// Handles readiness of client `index` (as ordered by [`Self::poll_set`]): reads its frames
    /// into `inputs` and writes its waiting output; drops the client when it has left.
    pub fn service(&mut self, index: usize, readable: bool, writable: bool, inputs: &mut Vec<Input>) {
        let Some(client) = self.clients.get_mut(index) else { return };
        let mut gone = false;
        if readable {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match rustix::net::recv(&client.sock, &mut buf, RecvFlags::DONTWAIT) {
                    Ok((0, _)) => {
                        gone = true;
                        break;
                    }
                    Ok((n, _)) => client.inbuf.extend_from_slice(&buf[..n]),
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
            let mut consumed = 0;
            loop {
                match decode_frame(&client.inbuf[consumed..]) {
                    Ok(Some((kind, payload, n))) => {
                        consumed += n;
                        match kind {
                            frame::STDIN => inputs.push(Input::Stdin(payload.to_vec())),
                            frame::RESIZE if payload.len() == 4 => inputs.push(Input::Resize {
                                cols: u16::from_be_bytes([payload[0], payload[1]]),
                                rows: u16::from_be_bytes([payload[2], payload[3]]),
                            }),
                            frame::CLOSE_STDIN => inputs.push(Input::CloseStdin),
                            // Unknown kinds are skipped so that older shims tolerate newer clients.
                            _ => {}
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
            client.inbuf.drain(..consumed);
        }
        if writable && !gone && flush(client).is_err() {
            gone = true;
        }
        if gone {
            let client = self.clients.remove(index);
            if client.first {
                inputs.push(Input::FirstClientLeft);
            }
        }
    }

    /// Queues a frame for every client and writes what each can take now.
    pub fn broadcast(&mut self, kind: u8, payload: &[u8]) {
        if self.clients.is_empty() {
            return;
        }
        let bytes = encode_frame(kind, payload);
        self.clients.retain_mut(|client| {
            if client.out.len() + bytes.len() <= MAX_CLIENT_BACKLOG {
                client.out.extend_from_slice(&bytes);
            }
            flush(client).is_ok()
        });
    }

    /// Tries for up to `timeout` to hand every client its waiting output (after the exit frame).
    pub fn drain(&mut self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            self.clients.retain_mut(|c| flush(c).is_ok() && !c.out.is_empty());
            let now = std::time::Instant::now();
            if self.clients.is_empty() || now >= deadline {
                return;
            }
            let mut fds: Vec<_> = self
                .clients
                .iter()
                .map(|c| rustix::event::PollFd::new(&c.sock, rustix::event::PollFlags::OUT))
                .collect();
            let left = deadline - now;
            let ts = rustix::event::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as i64 };
            if rustix::event::poll(&mut fds, Some(&ts)).is_err() {
                return;
            }
        }
    }
}

impl Drop for AttachServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes as much of the client's waiting output as its socket takes.
fn flush(client: &mut Client) -> Result<(), rustix::io::Errno> {
    while !client.out.is_empty() {
        match rustix::net::send(&client.sock, &client.out, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(n) => {
                client.out.drain(..n);
            }
            Err(rustix::io::Errno::AGAIN) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

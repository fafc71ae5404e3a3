//! A throwaway etcd member on loopback, for the store's tests and the benchmarks: the real
//! `etcd` binary (Debian's etcd-server), its data in a directory the caller owns, killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a local etcd could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalEtcdError {
    #[error("cannot run {binary}: {source} (install Debian's etcd-server)")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the etcd log {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no free loopback port: {0}")]
    Port(#[source] std::io::Error),
    #[error("etcd at {endpoint} did not become healthy within {waited:?}; its log: {log}")]
    NotReady { endpoint: String, waited: Duration, log: String },
}

/// How often `start` tries new ports when one it picked was taken meanwhile.
const START_ATTEMPTS: u32 = 5;

/// One etcd process serving plain HTTP on 127.0.0.1.
pub struct LocalEtcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl LocalEtcd {
    /// The etcd binary: `$TUG_ETCD_BIN`, else `etcd` on the PATH.
    pub fn binary() -> String {
        std::env::var("TUG_ETCD_BIN").unwrap_or_else(|_| "etcd".into())
    }

    /// Whether an etcd binary can be run here.
    pub fn available() -> bool {
        Command::new(Self::binary()).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    }

    /// Starts a single-member cluster with its data under `dir` and waits until it serves.
    pub fn start(dir: &Path) -> Result<LocalEtcd, LocalEtcdError> {
        let mut attempt = 1;
        loop {
            let mut etcd =
                LocalEtcd { child: None, dir: dir.to_path_buf(), client_port: free_port()?, peer_port: free_port()? };
            match etcd.restart() {
                Ok(()) => return Ok(etcd),
                // Another process took a port between our probe and etcd's bind (tests start
                // many members at once): start afresh on new ports.
                Err(LocalEtcdError::NotReady { log, .. })
                    if attempt < START_ATTEMPTS && log.contains("address already in use") =>
                {
                    etcd.kill();
                    let _ = std::fs::remove_dir_all(dir.join("data"));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills the member at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member again on the same data and ports (killing it first if it runs) and
    /// waits until it serves.
    pub fn restart(&mut self) -> Result<(), LocalEtcdError> {
        self.kill();
        let endpoint = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = self.dir.join("etcd.log");
        let binary = Self::binary();
        std::fs::create_dir_all(&self.dir).map_err(|source| LocalEtcdError::Log { path: log.clone(), source })?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| LocalEtcdError::Log { path: log.clone(), source })?;
        let child = Command::new(&binary)
            .arg("--name=tug-local")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=tug-local={peer}"))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|source| LocalEtcdError::Spawn { binary, source })?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20))
    }

    /// Polls `/health` until etcd reports itself healthy (it has a leader and serves).
    fn wait_ready(&mut self, patience: Duration) -> Result<(), LocalEtcdError> {
        let started = Instant::now();
        let address = format!("127.0.0.1:{}", self.client_port);
        while started.elapsed() < patience {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                break;
            }
            if health(&address).unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(LocalEtcdError::NotReady {
            endpoint: self.endpoint(),
            waited: started.elapsed(),
            log: std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default(),
        })
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago. Another process could take it before etcd binds it;
/// etcd then fails to start, and `start` tries again with other ports.
fn free_port() -> Result<u16, LocalEtcdError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(LocalEtcdError::Port)?;
    Ok(listener.local_addr().map_err(LocalEtcdError::Port)?.port())
}

/// One plain HTTP/1.0 request to etcd's `/health`, read to the end.
fn health(address: &str) -> std::io::Result<bool> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.starts_with("HTTP/1.0 200") && answer.contains("\"health\":\"true\""))
}

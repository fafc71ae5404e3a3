//! The built-in runtime: the default [`RuntimeService`] of the node agent.
//!
//! It runs containers from the image store's unpacked layers (an overlayfs root per
//! container), with OCI runtime specs built by [`crate::spec`], each container created and
//! watched by its own shim process (the `tug` binary re-executed, see [`crate::shim`]) so that
//! no container is ever forked from the agent's async process and containers keep running
//! while the agent restarts.
//!
//! # On-disk layout (`DATA_DIR/agent/runtime/`)
//!
//! ```text
//! sandboxes/<id>/sandbox.json   the sandbox's config and state (records::SandboxRecord)
//!               /hostname, resolv.conf, shm/   shared by its containers (shm is a tmpfs)
//!               /ns/{net,ipc,uts,pid}          the sandbox's namespaces, pinned by bind mounts
//! containers/<id>/container.json  the container's config and state (records::ContainerRecord)
//!                /config.json, rootfs/        its OCI bundle (rootfs is an overlay mount)
//!                /upper, work                 the overlay's writable layer
//!                /exit.json                   written by the shim when the container ends
//!                /attach.sock                 the shim's attach socket while it runs
//! libcontainer/<id>/            libcontainer's own state, removed by the shim at exit
//! ```
//!
//! Logs are not here: the kubelet names each container's log path under its pod log directory.

mod cache;
mod container;
mod process;
mod records;
mod sandbox;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::cri::{
    Container, ContainerConfig, ContainerFilter, ContainerState, ContainerStatus, ExecRequest, ExecSyncResult,
    NamespaceMode, PodSandbox, PodSandboxConfig, PodSandboxState, PodSandboxStats, PodSandboxStatus, RuntimeError,
    RuntimeService, RuntimeStatus, StreamSession,
};
use crate::image::ImageStore;
use crate::shim::client::{self as shim, ShimBinary};

pub use container::find_image;
pub use sandbox::resolv_conf;

/// Container logs rotate at this size, keeping this many files in all (the kubelet's
/// `containerLogMaxSize` and `containerLogMaxFiles` defaults).
const CONTAINER_LOG_MAX_SIZE: u64 = 10 * 1024 * 1024;
const CONTAINER_LOG_MAX_FILES: u32 = 5;

/// The built-in runtime rooted at one directory.
pub struct BuiltinRuntime {
    root: PathBuf,
    images: ImageStore,
    shim: ShimBinary,
    cache: cache::RecordCache,
    /// The pod network sandboxes join; `None` leaves them with a loopback only.
    network: Option<Arc<dyn tug_network::PodNetwork>>,
}

impl BuiltinRuntime {
    /// A runtime keeping its state under `root`, running containers from `images`, with `shim`
    /// as the executable re-run for every shim (the `tug` binary).
    pub fn new(root: impl Into<PathBuf>, images: ImageStore, shim: ShimBinary) -> Result<Self, RuntimeError> {
        let runtime =
            BuiltinRuntime { root: root.into(), images, shim, cache: cache::RecordCache::default(), network: None };
        for dir in [runtime.root.join("sandboxes"), runtime.root.join("containers"), runtime.libcontainer_root()] {
            std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::io("creating", &dir, e))?;
        }
        Ok(runtime)
    }

    /// Sandboxes that do not use the host's network join `network` (as containerd calls its
    /// CNI plugins).
    pub fn with_network(mut self, network: Arc<dyn tug_network::PodNetwork>) -> Self {
        self.network = Some(network);
        self
    }

    /// Frees the network of every sandbox that is gone or stopped (after a restart: sandboxes
    /// removed while the agent was down, or a crash between setup and record).
    pub async fn reconcile_network(&self) -> Result<(), RuntimeError> {
        let Some(network) = &self.network else { return Ok(()) };
        let live: Vec<String> = self
            .sandbox_records()?
            .into_iter()
            .filter(|r| self.sandbox_state(r) == PodSandboxState::Ready)
            .map(|r| r.id)
            .collect();
        network.retain(&live).await.map_err(RuntimeError::Network)
    }

    fn libcontainer_root(&self) -> PathBuf {
        self.root.join("libcontainer")
    }

    fn running_container(&self, id: &str) -> Result<(records::ContainerRecord, u32), RuntimeError> {
        let mut record = self.load_container(id)?;
        let status = self.status_of(&mut record)?;
        match (status.state, status.pid) {
            (ContainerState::Running, Some(pid)) => Ok((record, pid)),
            _ => Err(RuntimeError::InvalidConfig(format!("container {id} is not running"))),
        }
    }
}

#[async_trait]
impl RuntimeService for BuiltinRuntime {
    async fn status(&self) -> RuntimeStatus {
        match self.network.as_ref().map(|n| n.status()) {
            Some(tug_network::NetworkStatus::NotReady(message)) => {
                RuntimeStatus { network_ready: false, network_message: message }
            }
            _ => RuntimeStatus { network_ready: true, network_message: String::new() },
        }
    }

    async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String, RuntimeError> {
        self.create_sandbox(config).await
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        if self.load_sandbox(id).is_err() {
            return Ok(());
        }
        let containers: Vec<_> =
            self.container_records()?.into_iter().filter(|c| c.sandbox_id == id).map(|c| c.id).collect();
        for container in containers {
            self.stop(&container, Duration::ZERO).await?;
        }
        self.stop_sandbox_process(id).await?;
        if let Some(network) = &self.network {
            network.detach(id).await.map_err(RuntimeError::Network)?;
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.sandbox_dir(id);
        if !dir.0.exists() {
            return Ok(());
        }
        self.stop_pod_sandbox(id).await?;
        let containers: Vec<_> =
            self.container_records()?.into_iter().filter(|c| c.sandbox_id == id).map(|c| c.id).collect();
        for container in containers {
            self.remove(&container).await?;
        }
        if let Some(cgroup) = self.load_sandbox(id).ok().and_then(|record| sandbox::sandbox_cgroup(&record.config, id))
        {
            tokio::task::spawn_blocking(move || crate::cgroups::remove(&cgroup))
                .await?
                .map_err(|e| RuntimeError::Unavailable(format!("removing the sandbox's cgroup: {e}")))?;
        }
        self.destroy_sandbox_dir(&dir).await
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError> {
        let record = self.load_sandbox(id)?;
        Ok(self.sandbox_status(&record))
    }

    async fn list_pod_sandboxes(&self) -> Result<Vec<PodSandbox>, RuntimeError> {
        let mut out = Vec::new();
        for record in self.sandbox_records()? {
            out.push(PodSandbox {
                id: record.id.clone(),
                metadata: record.config.metadata.clone(),
                state: self.sandbox_state(&record),
                created_at: record.created_at,
                labels: record.config.labels.clone(),
                annotations: record.config.annotations.clone(),
            });
        }
        Ok(out)
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError> {
        let sandbox = self.load_sandbox(sandbox_id)?;
        self.create(&sandbox, config, sandbox_config).await
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.start(id).await
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        match self.stop(id, timeout).await {
            Err(RuntimeError::ContainerNotFound(_)) => Ok(()),
            other => other,
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.remove(id).await
    }

    async fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<Container>, RuntimeError> {
        let mut out = Vec::new();
        for mut record in self.container_records()? {
            if filter.pod_sandbox_id.as_ref().is_some_and(|s| *s != record.sandbox_id) {
                continue;
            }
            let entry = self.list_entry(&mut record)?;
            if filter.state.is_some_and(|s| s != entry.state) {
                continue;
            }
            out.push(entry);
        }
        Ok(out)
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let mut record = self.load_container(id)?;
        self.status_of(&mut record)
    }

    async fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecSyncResult, RuntimeError> {
        self.running_container(id)?;
        let args = self.exec_args(id, cmd.to_vec(), false);
        let mut process = shim::spawn_exec(&self.shim, &args)
            .map_err(|e| RuntimeError::Unavailable(format!("starting exec: {e}")))?;
        // No input: the command sees end of file at once.
        drop(process.child.stdin.take());
        match tokio::time::timeout(timeout, process.child.wait_with_output()).await {
            Ok(Ok(output)) => Ok(ExecSyncResult {
                stdout: output.stdout,
                stderr: output.stderr,
                exit_code: exit_code_of(output.status),
            }),
            Ok(Err(e)) => Err(RuntimeError::io("waiting for", &self.shim.0, e)),
            // The child is killed when dropped; the process in the container goes with it.
            Err(_) => Err(RuntimeError::Unavailable(format!("command timed out after {timeout:?}"))),
        }
    }

    async fn exec(&self, id: &str, request: &ExecRequest) -> Result<StreamSession, RuntimeError> {
        self.running_container(id)?;
        let args = self.exec_args(id, request.cmd.clone(), request.tty);
        let process = shim::spawn_exec(&self.shim, &args)
            .map_err(|e| RuntimeError::Unavailable(format!("starting exec: {e}")))?;
        Ok(exec_session(process, request))
    }

    async fn attach(&self, id: &str, stdin: bool, tty: bool) -> Result<StreamSession, RuntimeError> {
        self.running_container(id)?;
        let socket = self.container_dir(id).attach_socket();
        shim::attach(&socket, stdin, tty)
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("attaching to container {id}: {e}")))
    }

    async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream, RuntimeError> {
        let record = self.load_sandbox(sandbox_id)?;
        let netns = (record.config.namespace_options.network != NamespaceMode::Node)
            .then(|| self.sandbox_dir(sandbox_id).ns("net"));
        connect_in_netns(netns, port).await
    }

    async fn list_pod_sandbox_stats(&self) -> Result<Vec<PodSandboxStats>, RuntimeError> {
        self.pod_sandbox_stats().await
    }

    async fn container_writable_layers(&self) -> Result<Vec<(String, crate::cri::FsUsage)>, RuntimeError> {
        self.writable_layers().await
    }
}

impl BuiltinRuntime {
    fn exec_args(&self, id: &str, cmd: Vec<String>, tty: bool) -> shim::ExecArgs {
        shim::ExecArgs { id: id.to_owned(), root: self.libcontainer_root(), tty, cwd: None, env: Vec::new(), cmd }
    }
}

/// Wires a spawned `tug shim exec` into a session: its pipes as the streams asked for, resizes
/// to its fd 3, and its exit status as the exit code.
fn exec_session(mut process: shim::ExecProcess, request: &ExecRequest) -> StreamSession {
    let stdin = process.child.stdin.take().filter(|_| request.stdin);
    let stdout = process.child.stdout.take().filter(|_| request.stdout || request.tty);
    let stderr = process.child.stderr.take().filter(|_| request.stderr && !request.tty);
    let resize = process.resize.take().map(|mut writer| {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::cri::TerminalSize>(8);
        tokio::spawn(async move {
            while let Some(size) = rx.recv().await {
                if writer.resize(size).await.is_err() {
                    break;
                }
            }
        });
        tx
    });
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    let mut child = process.child;
    tokio::spawn(async move {
        let code = child.wait().await.ok().map(exit_code_of);
        let _ = exit_tx.send(code);
    });
    StreamSession {
        stdin: stdin.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
        stdout: stdout.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        stderr: stderr.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        resize,
        exit: exit_rx,
    }
}

/// The exit code a process status means, as runtimes report it: 128 + the signal that killed it.
fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Connects to 127.0.0.1:`port` inside the network namespace pinned at `netns` (the host's
/// when `None`). A namespace switch applies to one thread only, so it happens on a thread of
/// its own that ends right after: the socket stays in the namespace it was made in.
async fn connect_in_netns(netns: Option<PathBuf>, port: u16) -> Result<tokio::net::TcpStream, RuntimeError> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Some(netns) = netns else {
        return tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| RuntimeError::io("connecting to", "127.0.0.1", e));
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tug-portforward".into())
        .spawn(move || {
            let result = (|| {
                let file = std::fs::File::open(&netns)?;
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                let stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(10))?;
                stream.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(stream)
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| RuntimeError::io("spawning a thread for", "port-forward", e))?;
    let stream = rx.await.map_err(|_| RuntimeError::Unavailable("port-forward thread ended".into()))?.map_err(|e| {
        RuntimeError::io("connecting in the pod's network namespace to", format!("127.0.0.1:{port}"), e)
    })?;
    tokio::net::TcpStream::from_std(stream).map_err(|e| RuntimeError::io("registering", "port-forward socket", e))
}

//! CRI's `RuntimeService` (pod sandboxes and containers) in plain Rust types.
//!
//! The shapes follow the CRI v1 protobuf messages (`k8s.io/cri-api/pkg/apis/runtime/v1`) closely
//! enough that the kubelet can drive the built-in runtime and an external CRI runtime
//! (containerd over gRPC) through the same trait, but they are Rust types: enums instead of
//! integer codes, `Option` where the CRI uses zero values, `Duration` and `SystemTime` for
//! times. Fields the kubelet does not set yet are left out rather than carried unused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Labels and annotations, as the CRI carries them.
pub type Labels = BTreeMap<String, String>;

/// A pod sandbox's identity, as the kubelet names it (CRI `PodSandboxMetadata`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodSandboxMetadata {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// How many sandboxes were created for this pod before this one.
    pub attempt: u32,
}

/// Where a namespace of a sandbox or container comes from (CRI `NamespaceMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum NamespaceMode {
    /// Shared by the pod's containers: the sandbox's own.
    #[default]
    Pod,
    /// Each container its own (only meaningful for PID).
    Container,
    /// The host's (hostNetwork, hostPID, hostIPC).
    Node,
}

/// Which namespaces a sandbox creates and its containers join (CRI `NamespaceOption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct NamespaceOptions {
    pub network: NamespaceMode,
    /// `Pod` with `shareProcessNamespace`, `Container` by default, `Node` with `hostPID`.
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
}

/// A hostPort mapping of a sandbox (CRI `PortMapping`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: u16,
    pub host_port: u16,
    pub host_ip: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// The DNS settings written into the sandbox's `/etc/resolv.conf` (CRI `DNSConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// What the kubelet asks of a new sandbox (CRI `PodSandboxConfig`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodSandboxConfig {
    pub metadata: PodSandboxMetadata,
    /// The pod's hostname (the pod name unless `spec.hostname` says otherwise).
    pub hostname: String,
    /// The directory under which the containers' logs go (`pods/<ns>_<name>_<uid>`).
    pub log_directory: PathBuf,
    pub dns_config: Option<DnsConfig>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: Labels,
    pub annotations: Labels,
    /// The pod's cgroup, relative to the cgroup root: `/kubepods/burstable/pod<uid>`.
    pub cgroup_parent: String,
    pub namespace_options: NamespaceOptions,
    /// Sysctls to set in the sandbox's namespaces (`spec.securityContext.sysctls`).
    pub sysctls: Labels,
    /// Whether any container of the pod is privileged (upstream's `HasPrivilegedContainer`):
    /// CRI runtimes refuse a privileged container in a sandbox not created privileged.
    /// (`default`: sandboxes the built-in runtime stored before this field read back.)
    #[serde(default)]
    pub privileged: bool,
}

/// The lifecycle state of a sandbox (CRI `PodSandboxState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PodSandboxState {
    Ready,
    NotReady,
}

/// A sandbox as listed (CRI `PodSandbox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSandbox {
    pub id: String,
    pub metadata: PodSandboxMetadata,
    pub state: PodSandboxState,
    pub created_at: SystemTime,
    pub labels: Labels,
    pub annotations: Labels,
}

/// A sandbox's status (CRI `PodSandboxStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSandboxStatus {
    pub id: String,
    pub metadata: PodSandboxMetadata,
    pub state: PodSandboxState,
    pub created_at: SystemTime,
    /// The pod's IP addresses, first the primary one; empty for host-network pods.
    pub ips: Vec<String>,
    pub namespace_options: NamespaceOptions,
    pub labels: Labels,
    pub annotations: Labels,
}

/// A container's identity within its sandbox (CRI `ContainerMetadata`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerMetadata {
    pub name: String,
    /// How many times this container was created in this sandbox before: the restart count.
    pub attempt: u32,
}

/// A file or directory bind-mounted into a container (CRI `Mount`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    pub container_path: String,
    pub host_path: PathBuf,
    pub readonly: bool,
    /// `rprivate` unless the pod asks for `HostToContainer` (`rslave`) or `Bidirectional` (`rshared`).
    pub propagation: MountPropagation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum MountPropagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

/// Resource settings of a container's cgroup (CRI `LinuxContainerResources`). `None` leaves the
/// kernel's default (no limit).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct LinuxResources {
    /// CFS period in microseconds (100000 as upstream when a quota is set).
    pub cpu_period: Option<u64>,
    /// CFS quota in microseconds per period: the cpu limit.
    pub cpu_quota: Option<i64>,
    /// Relative weight (cgroup v1 `cpu.shares`): from the cpu request, 2 at least.
    pub cpu_shares: Option<u64>,
    /// The memory limit in bytes.
    pub memory_limit_in_bytes: Option<i64>,
    /// The OOM score adjustment the kubelet computes from the QoS class.
    pub oom_score_adj: Option<i32>,
    /// The pids limit (`--pod-max-pids`).
    pub pids_limit: Option<i64>,
}

/// Capabilities to add to or drop from the runtime's default set.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Capabilities {
    /// Capability names as in the pod spec (`NET_ADMIN`, or `ALL`), without the `CAP_` prefix.
    pub add: Vec<String>,
    pub drop: Vec<String>,
}

/// A seccomp profile (CRI `SecurityProfile`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum SeccompProfile {
    /// No filter (upstream's default when the pod does not ask for one).
    #[default]
    Unconfined,
    /// The runtime's default profile (`RuntimeDefault`).
    RuntimeDefault,
    /// A profile file on the node (`Localhost`), relative to the seccomp profile root.
    Localhost(PathBuf),
}

/// A container's security settings (CRI `LinuxContainerSecurityContext`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct LinuxSecurityContext {
    pub capabilities: Capabilities,
    pub privileged: bool,
    pub namespace_options: NamespaceOptions,
    pub run_as_user: Option<u32>,
    /// A user name to resolve in the image's `/etc/passwd` when no uid is given (from the image's
    /// `User`).
    pub run_as_username: Option<String>,
    pub run_as_group: Option<u32>,
    pub supplemental_groups: Vec<u32>,
    pub readonly_rootfs: bool,
    /// `allowPrivilegeEscalation: false` (and the default for non-privileged containers without
    /// CAP_SYS_ADMIN) sets `no_new_privs`.
    pub no_new_privs: bool,
    pub seccomp: SeccompProfile,
    /// `procMount: Unmasked` clears these; otherwise the runtime's defaults apply.
    pub masked_paths: Option<Vec<String>>,
    pub readonly_paths: Option<Vec<String>>,
}

/// What the kubelet asks of a new container (CRI `ContainerConfig`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerConfig {
    pub metadata: ContainerMetadata,
    /// The image reference or image ID, already pulled.
    pub image: String,
    /// Overrides the image's entrypoint when not empty.
    pub command: Vec<String>,
    /// Overrides the image's cmd when not empty (or when `command` is set).
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    /// `NAME=value`, merged over the image's environment.
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub labels: Labels,
    pub annotations: Labels,
    /// Where the container's log goes, relative to the sandbox's log directory
    /// (`<container>/<attempt>.log`).
    pub log_path: PathBuf,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub resources: LinuxResources,
    pub security_context: LinuxSecurityContext,
    /// The signal that stops the container, when the pod or image names one (`SIGQUIT`).
    pub stop_signal: Option<String>,
}

/// A container's lifecycle state (CRI `ContainerState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// A container as listed (CRI `Container`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub pod_sandbox_id: String,
    pub metadata: ContainerMetadata,
    pub image: String,
    /// The image ID (`sha256:<config digest>`) the container runs.
    pub image_ref: String,
    pub state: ContainerState,
    pub created_at: SystemTime,
    pub labels: Labels,
    pub annotations: Labels,
}

/// A container's status (CRI `ContainerStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub metadata: ContainerMetadata,
    pub state: ContainerState,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// The exit code; 128 + signal for a container killed by a signal, as runtimes report it.
    pub exit_code: Option<i32>,
    pub image: String,
    pub image_ref: String,
    /// `OOMKilled`, `Error`, `Completed` or `StartError`, as containerd words it.
    pub reason: Option<String>,
    /// A human message: why the start failed, or the termination message.
    pub message: Option<String>,
    pub labels: Labels,
    pub annotations: Labels,
    pub log_path: PathBuf,
    /// The container's init process on the host while it runs.
    pub pid: Option<u32>,
}

/// Which containers [`RuntimeService::list_containers`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFilter {
    pub pod_sandbox_id: Option<String>,
    pub state: Option<ContainerState>,
}

/// The output of a command run to completion in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSyncResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// An interactive process in a container, started by [`RuntimeService::exec`] or joined by
/// [`RuntimeService::attach`]: its standard streams, a way to resize its terminal, and its exit.
/// With a TTY, `stderr` is `None` (the terminal carries both output streams).
pub struct StreamSession {
    pub stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    pub stdout: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    pub stderr: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    /// Terminal size changes (columns, rows), when the session has a TTY.
    pub resize: Option<tokio::sync::mpsc::Sender<TerminalSize>>,
    /// Resolves to the exit code once the process ends (for attach: once the container ends
    /// or the session is closed; `None` when the code is unknown).
    pub exit: tokio::sync::oneshot::Receiver<Option<i32>>,
}

impl std::fmt::Debug for StreamSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSession")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("tty", &self.resize.is_some())
            .finish()
    }
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// What an interactive exec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A runtime's name and version, as CRI `Version` reports them: upstream's kubelet shows
/// `<name>://<version>` as the Node's `containerRuntimeVersion` and `<name>://<id>` as container IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    pub name: String,
    pub version: String,
}

/// The filesystem a runtime keeps its images on (CRI `ImageFsInfo`'s image filesystem): the
/// kubelet statfs'es `mountpoint` for the image filesystem's capacity and availability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFsInfo {
    /// A directory on that filesystem (containerd: its snapshotter's root).
    pub mountpoint: PathBuf,
    /// Bytes the runtime's images take there.
    pub used_bytes: u64,
}

/// A streaming session a runtime may serve itself (see [`RuntimeService::streaming_url`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamingRequest {
    Exec { container_id: String, request: ExecRequest },
    Attach { container_id: String, stdin: bool, tty: bool, stdout: bool, stderr: bool },
    PortForward { sandbox_id: String },
}

/// Errors of a [`RuntimeService`].
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("pod sandbox {0} not found")]
    SandboxNotFound(String),
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("image {0} is not present on this node")]
    ImageNotPresent(String),
    /// The container's configuration cannot be turned into a runnable container (an env value
    /// the runtime refuses, a mount source that does not exist, a user not in the image).
    #[error("invalid container config: {0}")]
    InvalidConfig(String),
    /// The container could not be started: the message says why, as the kubelet shows it in
    /// `RunContainerError`/`StartError` (for example `exec: "nope": executable file not found in $PATH`).
    #[error("{0}")]
    StartFailed(String),
    #[error("{operation} on {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the runtime is not available: {0}")]
    Unavailable(String),
    #[error("runtime task failed")]
    Task(#[from] tokio::task::JoinError),
    /// The sandbox could not join the pod network (CNI's ADD failed, in containerd's terms).
    #[error("failed to set up the network for the sandbox: {0}")]
    Network(#[source] tug_network::NetworkError),
    /// A call to an external CRI runtime failed with this gRPC status ([`crate::remote`]).
    #[error("{operation}: {}", source.message())]
    Rpc {
        operation: &'static str,
        #[source]
        source: Box<tonic::Status>,
    },
}

/// Whether the runtime can run pods now (CRI `RuntimeStatus`'s `NetworkReady` condition; the
/// built-in runtime is always `RuntimeReady` while it answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeStatus {
    pub network_ready: bool,
    /// Why the network is not ready, for the Node's Ready condition.
    pub network_message: String,
}

/// CPU usage of a container or sandbox at one moment (CRI `CpuUsage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuUsage {
    pub timestamp: SystemTime,
    /// Cumulative CPU time consumed since the cgroup was created, in nanoseconds.
    pub usage_core_nano_seconds: u64,
}

/// Memory usage of a container or sandbox at one moment (CRI `MemoryUsage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    pub timestamp: SystemTime,
    /// Usage minus inactive file pages, as cadvisor computes it.
    pub working_set_bytes: u64,
    pub usage_bytes: u64,
}

/// A container's resource usage (CRI `ContainerStats`); its identity is that of the listing
/// (`Container`'s id, metadata and labels, CRI's `ContainerAttributes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStats {
    pub id: String,
    pub metadata: ContainerMetadata,
    pub labels: Labels,
    pub cpu: CpuUsage,
    pub memory: MemoryUsage,
}

/// The disk space and inodes a directory tree takes (a container's writable layer: the
/// `writable_layer` of CRI's `ContainerStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub bytes: u64,
    pub inodes: u64,
}

impl FsUsage {
    /// What the files under `dir` take, as `du` counts it: allocated blocks, every entry an
    /// inode, symbolic links not followed; what cannot be read counts as nothing. Blocking.
    pub fn of_tree(dir: &Path) -> FsUsage {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(meta) = std::fs::symlink_metadata(dir) else { return FsUsage::default() };
        let mut total = FsUsage { bytes: meta.blocks() * 512, inodes: 1 };
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for entry in entries.flatten() {
                let below = FsUsage::of_tree(&entry.path());
                total.bytes += below.bytes;
                total.inodes += below.inodes;
            }
        }
        total
    }
}

/// A sandbox's resource usage, the whole pod cgroup, and its containers' (CRI `PodSandboxStats`
/// with its `LinuxPodSandboxStats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSandboxStats {
    pub id: String,
    pub metadata: PodSandboxMetadata,
    pub labels: Labels,
    pub cpu: CpuUsage,
    pub memory: MemoryUsage,
    /// The sandbox's running containers.
    pub containers: Vec<ContainerStats>,
}

impl RuntimeError {
    pub fn io(operation: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io { operation, path: path.into(), source }
    }
}

/// CRI's `RuntimeService`: what the kubelet needs to run pods, whichever runtime does it.
///
/// Every call is idempotent where the CRI says so: stopping a stopped sandbox or container and
/// removing an absent one succeed.
#[async_trait::async_trait]
pub trait RuntimeService: Send + Sync {
    /// The runtime's readiness; ready unless the runtime says otherwise.
    async fn status(&self) -> RuntimeStatus {
        RuntimeStatus { network_ready: true, network_message: String::new() }
    }
    /// The runtime's name and version (`tug` and this crate's version for the built-in one).
    fn runtime_version(&self) -> RuntimeVersion {
        RuntimeVersion { name: "tug".into(), version: env!("CARGO_PKG_VERSION").into() }
    }
    /// Creates and starts a sandbox: its namespaces, hostname, DNS config and network.
    async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String, RuntimeError>;
    /// Stops every container of the sandbox (killing them) and tears down its network.
    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    /// Removes a stopped sandbox and its containers.
    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError>;
    async fn list_pod_sandboxes(&self) -> Result<Vec<PodSandbox>, RuntimeError>;

    /// Prepares a container in a sandbox (root filesystem, runtime spec) without starting it.
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError>;
    /// Starts a created container; returns once its process runs (or fails to start).
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Sends the stop signal, waits up to `timeout`, then kills. Returns once it has exited.
    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError>;
    /// Removes an exited container (its root filesystem and state; not its log).
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;
    async fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<Container>, RuntimeError>;
    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;
    /// Runs `cmd` in a running container to completion, killing it after `timeout`.
    async fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecSyncResult, RuntimeError>;
    /// Starts an interactive process in a running container (`kubectl exec`).
    async fn exec(&self, id: &str, request: &ExecRequest) -> Result<StreamSession, RuntimeError>;
    /// Joins a running container's own standard streams (`kubectl attach`).
    async fn attach(&self, id: &str, stdin: bool, tty: bool) -> Result<StreamSession, RuntimeError>;
    /// Opens a TCP connection to `port` inside the sandbox's network namespace
    /// (`kubectl port-forward`).
    async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream, RuntimeError>;
    /// The URL of the runtime's own streaming server for this session, when the runtime serves
    /// sessions itself (a CRI runtime answers `Exec`, `Attach` and `PortForward` with one); the
    /// kubelet's server then proxies the client's upgraded connection there. `None` (the
    /// built-in runtime): the session goes through [`exec`](Self::exec),
    /// [`attach`](Self::attach) and [`port_forward`](Self::port_forward).
    async fn streaming_url(&self, request: &StreamingRequest) -> Result<Option<String>, RuntimeError> {
        let _ = request;
        Ok(None)
    }
    /// Where the runtime keeps its images (CRI `ImageFsInfo`). `None`: in the kubelet's own image
    /// store (the built-in runtime), whose directory the kubelet knows.
    async fn image_fs_info(&self) -> Result<Option<ImageFsInfo>, RuntimeError> {
        Ok(None)
    }
    /// Whether the runtime rotates its containers' log files itself, as the built-in runtime's
    /// shim does. When not (a CRI runtime), the kubelet's container log manager renames them
    /// aside and calls [`reopen_container_log`](Self::reopen_container_log).
    fn rotates_container_logs(&self) -> bool {
        true
    }
    /// Makes a running container write to a new file at its log path, after the kubelet renamed
    /// the old one aside (CRI `ReopenContainerLog`).
    async fn reopen_container_log(&self, id: &str) -> Result<(), RuntimeError> {
        let _ = id;
        Ok(())
    }
    /// The resource usage of every ready sandbox and its running containers
    /// (`ListPodSandboxStats`, which the kubelet's CRI stats provider reads for
    /// `/metrics/resource`). A runtime that keeps no statistics says so.
    async fn list_pod_sandbox_stats(&self) -> Result<Vec<PodSandboxStats>, RuntimeError> {
        Err(RuntimeError::Unavailable("this runtime reports no statistics".into()))
    }
    /// The writable layer of every container the runtime holds, running or exited, by
    /// container ID (the `writable_layer` of CRI's `ListContainerStats`): what the node
    /// agent's eviction manager counts against a pod's ephemeral storage. A runtime that keeps
    /// no statistics says so.
    async fn container_writable_layers(&self) -> Result<Vec<(String, FsUsage)>, RuntimeError> {
        Err(RuntimeError::Unavailable("this runtime reports no statistics".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trees_usage_counts_allocated_blocks_and_not_what_links_point_to() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f"), vec![1u8; 64 * 1024]).unwrap();
        std::os::unix::fs::symlink("/usr", root.path().join("link")).unwrap();
        let usage = FsUsage::of_tree(root.path());
        assert!((64 * 1024..1 << 20).contains(&usage.bytes), "{usage:?}");
        assert_eq!(usage.inodes, 3, "the directory, the file and the link");
        assert_eq!(FsUsage::of_tree(&root.path().join("absent")), FsUsage::default());
    }
}

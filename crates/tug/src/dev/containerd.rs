//! Dev cluster nodes that run containerd (`up --container-runtime containerd`), as kind's nodes
//! do: a private containerd per node, started inside the node's network namespace with all
//! its state under `DIR/nodes/<i>/containerd`, which the node's `tug` drives over CRI
//! (`--container-runtime-endpoint`) and gives its CNI configuration.
//!
//! Images reach such a node through `ctr images import` (what `kind load` does), since CRI has
//! no import call. `down` removes the node's pods through CRI first (stopping a sandbox is
//! what tears its network down and unpins its namespace), then stops containerd.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tug_runtime::cri::RuntimeService;
use tug_runtime::remote::RemoteRuntime;

/// Where CNI plugins are looked for when `--cni-bin-dir` is not given: the upstream location,
/// then Debian's `containernetworking-plugins`.
const CNI_BIN_DIRS: [&str; 2] = ["/opt/cni/bin", "/usr/lib/cni"];

/// The longest path a unix socket address holds (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// One node's containerd: its directory and what lives there.
#[derive(Debug, Clone)]
pub struct NodeContainerd {
    dir: PathBuf,
}

impl NodeContainerd {
    pub fn for_node(node_dir: &Path) -> Self {
        NodeContainerd { dir: node_dir.join("containerd") }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The CRI endpoint, for `--container-runtime-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Where containerd reads the CNI configuration the node's agent writes.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Whether this node was made with containerd.
    pub fn exists(&self) -> bool {
        self.config_path().exists()
    }

    /// containerd's configuration: everything under the node's directory (network namespaces
    /// of pods included, so `down` finds their mounts), runc as the runtime, the node's CNI
    /// configuration directory.
    fn config(&self, sandbox_image: &str, cni_bin_dir: &Path) -> String {
        let d = self.dir.display();
        let socket = self.socket();
        let (socket, cni_conf, cni_bin) = (socket.display(), self.cni_conf_dir(), cni_bin_dir.display());
        let cni_conf = cni_conf.display();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = "{d}/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  # A node may not lower oom_score_adj below its own (a dev machine's session may have raised
  # it): clamp instead of failing every container.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"#
        )
    }

    /// Writes the configuration and returns containerd's command line.
    pub fn prepare(&self, containerd: &Path, sandbox_image: &str, cni_bin_dir: &Path) -> anyhow::Result<Vec<String>> {
        let socket = self.socket();
        if socket.as_os_str().len() + ".ttrpc".len() > MAX_SOCKET_PATH {
            bail!("{}.ttrpc is too long for a unix socket: use a shorter --dir", socket.display());
        }
        std::fs::create_dir_all(self.cni_conf_dir())
            .with_context(|| format!("creating {}", self.cni_conf_dir().display()))?;
        let config = self.config_path();
        std::fs::write(&config, self.config(sandbox_image, cni_bin_dir))
            .with_context(|| format!("writing {}", config.display()))?;
        Ok(vec![super::cluster::path_arg(containerd)?, "--config".into(), super::cluster::path_arg(&config)?])
    }

    /// The node agent's flags for this containerd.
    pub fn agent_args(&self) -> anyhow::Result<Vec<String>> {
        Ok(vec![
            "--container-runtime-endpoint".into(),
            self.endpoint(),
            "--cni-conf-dir".into(),
            super::cluster::path_arg(&self.cni_conf_dir())?,
        ])
    }

    /// Whether containerd answers CRI calls.
    pub async fn answers(&self) -> bool {
        if !self.socket().exists() {
            return false;
        }
        // Connecting asks for the CRI version.
        matches!(
            tokio::time::timeout(Duration::from_secs(2), RemoteRuntime::connect(&self.endpoint())).await,
            Ok(Ok(_))
        )
    }

    /// Stops and removes every pod sandbox (and so every container) through CRI, as
    /// `crictl rmp --all --force` does; nothing when containerd does not answer. The pods'
    /// own cgroups are the agent's, removed from its notes (`cleanup::kill_agent_leftovers`).
    pub async fn remove_all_pods(&self) {
        if !self.socket().exists() {
            return;
        }
        let runtime = match tokio::time::timeout(Duration::from_secs(5), RemoteRuntime::connect(&self.endpoint())).await
        {
            Ok(Ok(runtime)) => runtime,
            _ => return,
        };
        let sandboxes = match tokio::time::timeout(Duration::from_secs(10), runtime.list_pod_sandboxes()).await {
            Ok(Ok(sandboxes)) => sandboxes,
            _ => return,
        };
        for sandbox in sandboxes {
            let removed = tokio::time::timeout(Duration::from_secs(30), async {
                runtime.stop_pod_sandbox(&sandbox.id).await?;
                runtime.remove_pod_sandbox(&sandbox.id).await
            })
            .await;
            if !matches!(removed, Ok(Ok(()))) {
                tracing::warn!(sandbox = %sandbox.id, ?removed, "cannot remove a pod sandbox through CRI");
            }
        }
    }

    /// Imports an image archive with `ctr` into the namespace CRI reads; returns the names
    /// imported.
    pub fn import(&self, archive: &Path, name: Option<&str>) -> anyhow::Result<Vec<String>> {
        if archive.is_dir() {
            bail!("a containerd node imports archives, not directories: pack {} with skopeo first", archive.display());
        }
        let out = ctr(&self.socket(), &["images".as_ref(), "import".as_ref(), archive.as_os_str()])?;
        // ctr prints "unpacking <name> (sha256:...)...done" for each image.
        let mut names: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("unpacking "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        if let Some(name) = name {
            let source =
                names.first().ok_or_else(|| anyhow!("ctr imported no named image from {}", archive.display()))?;
            ctr(
                &self.socket(),
                &["images".as_ref(), "tag".as_ref(), "--force".as_ref(), source.as_ref(), name.as_ref()],
            )?;
            names = vec![name.to_owned()];
        }
        Ok(names)
    }
}

/// Runs `ctr` against the containerd at `socket`, in CRI's `k8s.io` namespace; its output.
fn ctr(socket: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let output = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .context("running ctr (it comes with containerd)")?;
    if !output.status.success() {
        bail!("ctr {:?} failed: {}", args, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `name` found on PATH, as an absolute path.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// The CNI plugin directory: `given`, or the first of the usual ones holding the bridge plugin.
pub fn cni_bin_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.to_path_buf());
    }
    CNI_BIN_DIRS.iter().map(PathBuf::from).find(|d| d.join("bridge").is_file()).ok_or_else(|| {
        anyhow!(
            "no CNI plugins in {}: install them (Debian: containernetworking-plugins) or pass --cni-bin-dir",
            CNI_BIN_DIRS.join(" or ")
        )
    })
}

/// Waits until containerd answers CRI calls, or fails when `deadline` passes or it exits.
pub async fn wait_until_up(
    containerd: &NodeContainerd,
    child: &mut std::process::Child,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for containerd")? {
            bail!("containerd exited ({status}); see {}", containerd.log().display());
        }
        if containerd.answers().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("containerd did not answer on {} in time; see {}", containerd.endpoint(), containerd.log().display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pids of the containers whose shims are gone or wedged: each task's `init.pid`.
pub fn task_pids(node_dir: &Path) -> Vec<i32> {
    let tasks = NodeContainerd::for_node(node_dir).dir.join("state").join("io.containerd.runtime.v2.task");
    std::fs::read_dir(&tasks)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|namespace| std::fs::read_dir(namespace.path()).into_iter().flatten().flatten())
        .filter_map(|task| std::fs::read_to_string(task.path().join("init.pid")).ok())
        .filter_map(|pid| pid.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_keeps_everything_under_the_node_directory() {
        let node = NodeContainerd::for_node(Path::new("/d/nodes/1"));
        let config = node.config("tugboat.test/pause:1", Path::new("/usr/lib/cni"));
        for line in [
            "root = \"/d/nodes/1/containerd/root\"",
            "state = \"/d/nodes/1/containerd/state\"",
            "  address = \"/d/nodes/1/containerd/containerd.sock\"",
            "  sandbox_image = \"tugboat.test/pause:1\"",
            "  netns_mounts_under_state_dir = true",
            "      Root = \"/d/nodes/1/containerd/runc\"",
            "    conf_dir = \"/d/nodes/1/containerd/net.d\"",
            "    bin_dir = \"/usr/lib/cni\"",
        ] {
            assert!(config.lines().any(|l| l == line), "{line:?} missing from\n{config}");
        }
        assert_eq!(node.endpoint(), "unix:///d/nodes/1/containerd/containerd.sock");
    }

    #[test]
    fn a_socket_path_too_long_for_the_kernel_is_refused_up_front() {
        let long = PathBuf::from("/").join("x".repeat(100));
        let node = NodeContainerd::for_node(&long);
        let error = node.prepare(Path::new("/usr/bin/containerd"), "p", Path::new("/usr/lib/cni")).unwrap_err();
        assert!(error.to_string().contains("too long for a unix socket"), "{error}");
    }
}

//! `tug dev cluster up|load-image|down|stop-node|start-node`.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::Node;
use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};
use serde::{Deserialize, Serialize};

use super::containerd::{self, NodeContainerd};
use super::hosts::{self, LinkNames};
use super::{DevRuntime, LoadImageArgs, NodeArgs, UpArgs, cleanup};

/// The server's port inside node 0's namespace.
const API_PORT: u16 = 6443;
/// kind turns disk-pressure eviction off: development machines are often nearly full.
const EVICTION_HARD: &str = "memory.available<100Mi,nodefs.available<1%,imagefs.available<1%";
/// How long stopped processes get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// DIR/cluster.json: what `up` made, for `down` and `load-image`.
#[derive(Debug, Serialize, Deserialize)]
struct ClusterState {
    name: String,
    bridge: String,
    subnet: String,
    server: String,
    nodes: Vec<NodeState>,
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeState {
    name: String,
    ip: Ipv4Addr,
    netns: PathBuf,
    host_veth: String,
    /// The process (and process group) running `tug server` or `tug agent`, once started.
    pid: Option<u32>,
    data_dir: PathBuf,
    /// The command line `up` started the node with (program first), for `start-node`.
    #[serde(default)]
    argv: Vec<String>,
    /// Whether `stop-node` stopped it (and `start-node` has not started it again).
    #[serde(default)]
    stopped: bool,
    /// The node's containerd (and its process group), with `--container-runtime containerd`.
    #[serde(default)]
    containerd_pid: Option<u32>,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

fn save(dir: &Path, state: &ClusterState) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_path(dir);
    let text = serde_json::to_string_pretty(state).context("encoding the cluster state")?;
    // The agents' command lines hold the cluster's join token.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all((text + "\n").as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// A path as a command-line argument stored in cluster.json (JSON strings are UTF-8).
pub(super) fn path_arg(path: &Path) -> anyhow::Result<String> {
    path.to_str().map(str::to_owned).ok_or_else(|| anyhow!("{} is not valid UTF-8", path.display()))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The command that runs `argv` (program first).
fn command(argv: &[String]) -> anyhow::Result<Command> {
    let (program, args) = argv.split_first().ok_or_else(|| anyhow!("an empty command line"))?;
    let mut command = Command::new(program);
    command.args(args);
    Ok(command)
}

fn load(dir: &Path) -> anyhow::Result<ClusterState> {
    let path = state_path(dir);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The data directories of the nodes in `dir`: DIR/nodes/<i>, whether or not a state file says so.
fn node_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir.join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// The `k`th address of `subnet`.
fn nth(subnet: &ipnet::Ipv4Net, k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + k)
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).context("reading /dev/urandom")?;
    Ok(hex::encode(buf))
}

/// The last lines of a node's log, for a failure report.
fn log_tail(dir: &Path, node: u32) -> String {
    let path = dir.join("nodes").join(node.to_string()).join("tug.log");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Why `up` failed, and which node's log explains it.
struct Failure {
    node: Option<u32>,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure { node: None, error: error.into() }
    }
}

fn on_node<T>(node: u32, result: anyhow::Result<T>) -> Result<T, Failure> {
    result.map_err(|error| Failure { node: Some(node), error })
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir).with_context(|| format!("resolving {}", args.dir.display()))?;
    // The broadcast address and the bridge's and network's own are not for nodes.
    let usable = (1u64 << (32 - u32::from(args.subnet.prefix_len()))).saturating_sub(3);
    if u64::from(args.nodes) > usable {
        bail!("the subnet {} has room for {usable} nodes, not {}", args.subnet, args.nodes);
    }
    if state_path(&dir).exists() || dir.join("nodes").exists() {
        eprintln!("removing the previous cluster in {}", dir.display());
        down(&dir).await.context("removing the previous cluster")?;
    }
    match build(&args, &dir).await {
        Ok(kubeconfig) => {
            println!("kubeconfig: {}", kubeconfig.display());
            Ok(())
        }
        Err(Failure { node, error }) => {
            if let Some(node) = node {
                eprintln!(
                    "--- the last lines of node {node}'s log ({}) ---",
                    dir.join("nodes").join(node.to_string()).join("tug.log").display()
                );
                eprintln!("{}", log_tail(&dir, node));
                eprintln!("---");
            }
            if let Err(cleanup) = down(&dir).await {
                eprintln!("tug: removing the failed cluster: {cleanup:#}");
            }
            Err(error.context("creating the dev cluster"))
        }
    }
}

async fn build(args: &UpArgs, dir: &Path) -> Result<PathBuf, Failure> {
    let started = Instant::now();
    let deadline = started + args.wait;
    let names = LinkNames::for_dir(dir);
    let prefix = args.subnet.prefix_len();
    let gateway = nth(&args.subnet, 1);
    let server_ip = nth(&args.subnet, 2);
    let server_url = format!("https://{server_ip}:{API_PORT}");
    let mut state = ClusterState {
        name: args.name.clone(),
        bridge: names.bridge(),
        subnet: args.subnet.to_string(),
        server: server_url.clone(),
        nodes: Vec::new(),
    };
    save(dir, &state)?;
    let switch = hosts::create_bridge(&names, gateway, prefix, &hosts::switch_pin(dir)).await?;
    for i in 0..args.nodes {
        let data_dir = dir.join("nodes").join(i.to_string());
        std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let netns = data_dir.join("netns");
        let ip = nth(&args.subnet, 2 + i);
        state.nodes.push(NodeState {
            name: format!("{}-{i}", args.name),
            ip,
            netns: netns.clone(),
            host_veth: names.host_veth(i),
            pid: None,
            data_dir,
            argv: Vec::new(),
            stopped: false,
            containerd_pid: None,
        });
        save(dir, &state)?;
        hosts::create_netns(&netns)?;
        hosts::attach_node(&names, &switch, i, &netns, ip, prefix, gateway).await?;
    }
    // Each node's own flags: those of its containerd, when it runs one.
    let mut runtime_args: Vec<Vec<String>> = vec![Vec::new(); state.nodes.len()];
    if args.container_runtime == DevRuntime::Containerd {
        let program = containerd::find_program("containerd")
            .ok_or_else(|| anyhow!("containerd is not on PATH: install it (Debian: apt-get install containerd)"))?;
        let cni_bin_dir = containerd::cni_bin_dir(args.cni_bin_dir.as_deref())?;
        for (i, node_args) in runtime_args.iter_mut().enumerate() {
            let runtime = NodeContainerd::for_node(&state.nodes[i].data_dir);
            let argv = on_node(i as u32, runtime.prepare(&program, &args.sandbox_image, &cni_bin_dir))?;
            let spawned = hosts::spawn_in(&state.nodes[i].netns, command(&argv)?, &runtime.log());
            let mut child = on_node(i as u32, spawned)?;
            state.nodes[i].containerd_pid = Some(child.id());
            save(dir, &state)?;
            on_node(i as u32, containerd::wait_until_up(&runtime, &mut child, deadline).await)?;
            *node_args = on_node(i as u32, runtime.agent_args())?;
        }
    }

    let exe = path_arg(&std::env::current_exe().context("finding the tug binary")?)?;
    let mut children: Vec<(u32, Child)> = Vec::new();
    let node0 = &state.nodes[0];
    let (server_ip_arg, port) = (server_ip.to_string(), API_PORT.to_string());
    let mut argv = strings(&[&exe, "server", "--data-dir", &path_arg(&node0.data_dir)?]);
    argv.extend(strings(&["--node-name", &node0.name, "--node-ip", &server_ip_arg]));
    argv.extend(strings(&["--https-listen-port", &port, "--tls-san", &server_ip_arg]));
    argv.extend(strings(&["--token", &random_hex(16)?, "--eviction-hard", EVICTION_HARD]));
    argv.extend(runtime_args[0].iter().cloned());
    argv.extend(args.server_args.iter().cloned());
    let child = on_node(0, hosts::spawn_in(&node0.netns, command(&argv)?, &node0.data_dir.join("tug.log")))?;
    state.nodes[0].pid = Some(child.id());
    state.nodes[0].argv = argv;
    children.push((0, child));
    save(dir, &state)?;

    let node0_dir = state.nodes[0].data_dir.clone();
    let (token_file, server_kubeconfig) = (node0_dir.join("node-token"), node0_dir.join("kubeconfig.yaml"));
    wait(deadline, &mut children, "the server to write its node token and kubeconfig", async || {
        Ok(token_file.exists() && server_kubeconfig.exists())
    })
    .await?;
    let token = std::fs::read_to_string(&token_file).with_context(|| format!("reading {}", token_file.display()))?;
    let kubeconfig = dir.join("kubeconfig.yaml");
    on_node(0, rewrite_kubeconfig(&server_kubeconfig, &kubeconfig, &server_url))?;
    let client = on_node(0, crate::client_from_kubeconfig(&kubeconfig).await)?;
    // From this (the machine's own) namespace, through the bridge: proves the kubeconfig works.
    wait(deadline, &mut children, "the API server to answer /readyz", async || {
        let request = http::Request::get("/readyz").body(Vec::new()).context("building a request")?;
        Ok(client.request_text(request).await.is_ok_and(|body| body.trim() == "ok"))
    })
    .await?;

    for i in 1..args.nodes {
        let node = &state.nodes[i as usize];
        let mut argv = strings(&[&exe, "agent", "--server", &server_url, "--token", token.trim()]);
        argv.extend(strings(&["--data-dir", &path_arg(&node.data_dir)?]));
        argv.extend(strings(&["--node-name", &node.name, "--node-ip", &node.ip.to_string()]));
        argv.extend(strings(&["--eviction-hard", EVICTION_HARD]));
        argv.extend(runtime_args[i as usize].iter().cloned());
        argv.extend(args.agent_args.iter().cloned());
        let child = on_node(i, hosts::spawn_in(&node.netns, command(&argv)?, &node.data_dir.join("tug.log")))?;
        state.nodes[i as usize].pid = Some(child.id());
        state.nodes[i as usize].argv = argv;
        children.push((i, child));
        save(dir, &state)?;
    }

    let nodes: kube::Api<Node> = kube::Api::all(client);
    let wanted: BTreeSet<String> = state.nodes.iter().map(|n| n.name.clone()).collect();
    let mut last_ready = BTreeSet::new();
    let waited = wait(deadline, &mut children, "every node to be Ready", async || {
        let list = nodes.list(&Default::default()).await.context("listing nodes")?;
        last_ready = list.items.iter().filter(|n| is_ready(n)).filter_map(|n| n.metadata.name.clone()).collect();
        Ok(wanted.is_subset(&last_ready))
    })
    .await;
    if let Err(mut failure) = waited {
        // A timeout is explained by the first node that is not Ready.
        if failure.node.is_none() {
            failure.node = state.nodes.iter().position(|n| !last_ready.contains(&n.name)).map(|i| i as u32);
        }
        return Err(failure);
    }
    tracing::info!(nodes = args.nodes, elapsed_ms = started.elapsed().as_millis() as u64, "dev cluster is up");
    Ok(kubeconfig)
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Polls `done` until it says yes, failing at `deadline` or as soon as one of `children` exits
/// (blaming that node).
async fn wait<F>(deadline: Instant, children: &mut [(u32, Child)], what: &str, mut done: F) -> Result<(), Failure>
where
    F: AsyncFnMut() -> anyhow::Result<bool>,
{
    loop {
        for (node, child) in children.iter_mut() {
            if let Some(status) = child.try_wait().context("checking a node's process")? {
                return Err(Failure {
                    node: Some(*node),
                    error: anyhow!("node {node}'s tug exited ({status}) while waiting for {what}"),
                });
            }
        }
        match done().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => tracing::debug!(%what, error = format!("{error:#}"), "not yet"),
        }
        if Instant::now() >= deadline {
            return Err(Failure { node: None, error: anyhow!("timed out waiting for {what}") });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Writes the server's admin kubeconfig to `to` with every cluster's server set to `url`.
fn rewrite_kubeconfig(from: &Path, to: &Path, url: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", from.display()))?;
    let clusters = config
        .get_mut("clusters")
        .and_then(|c| c.as_sequence_mut())
        .ok_or_else(|| anyhow!("{} has no clusters", from.display()))?;
    for entry in clusters {
        if let Some(cluster) = entry.get_mut("cluster").and_then(|c| c.as_mapping_mut()) {
            cluster.insert("server".into(), url.into());
        }
    }
    let text = serde_yaml::to_string(&config).context("encoding the kubeconfig")?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // It holds the cluster admin's credentials.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", to.display()))
}

pub async fn load_image(args: LoadImageArgs) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(&args.dir).with_context(|| format!("resolving {}", args.dir.display()))?;
    let node_dirs = match load(&dir) {
        Ok(state) => state.nodes.into_iter().map(|n| n.data_dir).collect(),
        Err(_) => node_dirs(&dir),
    };
    if node_dirs.is_empty() {
        bail!("{} holds no dev cluster (run `tug dev cluster up` first)", dir.display());
    }
    let archive = args.archive.clone();
    let name = args.name.clone();
    let imported = tokio::task::spawn_blocking(move || -> anyhow::Result<BTreeSet<String>> {
        let mut names = BTreeSet::new();
        for node_dir in &node_dirs {
            let runtime = NodeContainerd::for_node(node_dir);
            if runtime.exists() {
                let imported = runtime
                    .import(&archive, name.as_deref())
                    .with_context(|| format!("importing {} into {}", archive.display(), node_dir.display()))?;
                names.extend(imported);
                continue;
            }
            let store = tug_runtime::image::ImageStore::open_in_data_dir(node_dir)
                .with_context(|| format!("opening the image store of {}", node_dir.display()))?;
            let imported = tug_runtime::image::import_path(&store, &archive, name.as_deref())
                .with_context(|| format!("importing {} into {}", archive.display(), node_dir.display()))?;
            names.extend(imported.into_iter().map(|(name, _)| name));
        }
        Ok(names)
    })
    .await
    .context("the import task")??;
    for name in imported {
        println!("imported {name}");
    }
    Ok(())
}

pub async fn down(dir: &Path) -> anyhow::Result<()> {
    let Ok(dir) = std::fs::canonicalize(dir) else { return Ok(()) };
    let names = LinkNames::for_dir(&dir);
    let state = load(&dir).ok();
    let pids: Vec<u32> = state.iter().flat_map(|s| &s.nodes).filter_map(|n| n.pid).collect();
    let containerd_pids: Vec<u32> = state.iter().flat_map(|s| &s.nodes).filter_map(|n| n.containerd_pid).collect();
    let stopped = dir.clone();
    tokio::task::spawn_blocking(move || stop_groups(&stopped, &pids)).await.context("the stop task")?;
    // Pods of containerd nodes go through CRI while their containerd still runs: stopping a
    // sandbox is what tears its network down.
    for node_dir in node_dirs(&dir) {
        let runtime = NodeContainerd::for_node(&node_dir);
        if runtime.exists() {
            runtime.remove_all_pods().await;
        }
    }
    let cleaned = dir.clone();
    tokio::task::spawn_blocking(move || {
        stop_groups(&cleaned, &containerd_pids);
        for node_dir in node_dirs(&cleaned) {
            // Containers whose shims are gone (containerd killed before it could stop them).
            cleanup::kill_all(&containerd::task_pids(&node_dir));
            cleanup::kill_agent_leftovers(&node_dir);
        }
        cleanup::unmount_under(&cleaned);
    })
    .await
    .context("the cleanup task")?;
    hosts::delete_links(&names).await?;
    let left = cleanup::mounts_under(&dir);
    if !left.is_empty() {
        bail!("mounts are left under {}: {left:?}", dir.display());
    }
    for path in [dir.join("nodes"), dir.join("kubeconfig.yaml"), state_path(&dir), hosts::switch_pin(&dir)] {
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

/// The node `index` of `state`, or why there is none.
fn node_index(state: &ClusterState, index: u32) -> anyhow::Result<usize> {
    let i = index as usize;
    if i >= state.nodes.len() {
        bail!(
            "the cluster has {} nodes (0 to {}), not node {index}",
            state.nodes.len(),
            state.nodes.len().saturating_sub(1)
        );
    }
    Ok(i)
}

/// Whether `pid` is still the `tug` process of a node of the cluster in `dir` (not a reused pid,
/// not a zombie, whose command line is empty).
fn still_running(dir: &Path, pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()))
}

pub async fn stop_node(args: NodeArgs) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(&args.dir).with_context(|| format!("resolving {}", args.dir.display()))?;
    let mut state = load(&dir)?;
    let i = node_index(&state, args.node)?;
    if let Some(pid) = state.nodes[i].pid {
        // Only tug's own process group: the shims run in sessions of their own, so the node's
        // containers keep running, as they do when a real node agent restarts.
        let stopped = dir.clone();
        tokio::task::spawn_blocking(move || stop_groups(&stopped, &[pid])).await.context("the stop task")?;
        tracing::info!(node = args.node, pid, "stopped the node's tug process");
    }
    state.nodes[i].pid = None;
    state.nodes[i].stopped = true;
    save(&dir, &state)
}

pub async fn start_node(args: NodeArgs) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(&args.dir).with_context(|| format!("resolving {}", args.dir.display()))?;
    let deadline = Instant::now() + args.wait;
    let mut state = load(&dir)?;
    let i = node_index(&state, args.node)?;
    let node = &state.nodes[i];
    let mut children: Vec<(u32, Child)> = Vec::new();
    if node.pid.is_some_and(|pid| still_running(&dir, pid)) {
        tracing::info!(node = args.node, "the node's tug process is running already");
    } else {
        if node.argv.is_empty() {
            bail!("{} has no command line for node {} (made by an older `up`?)", state_path(&dir).display(), args.node);
        }
        let log = node.data_dir.join("tug.log");
        let child = hosts::spawn_in(&node.netns, command(&node.argv)?, &log)?;
        tracing::info!(node = args.node, pid = child.id(), "started the node's tug process");
        state.nodes[i].pid = Some(child.id());
        children.push((args.node, child));
    }
    state.nodes[i].stopped = false;
    save(&dir, &state)?;

    let waited = if i == 0 {
        match crate::client_from_kubeconfig(&dir.join("kubeconfig.yaml")).await {
            Ok(client) => {
                wait(deadline, &mut children, "the API server to answer /readyz", async || {
                    let request = http::Request::get("/readyz").body(Vec::new()).context("building a request")?;
                    Ok(client.request_text(request).await.is_ok_and(|body| body.trim() == "ok"))
                })
                .await
            }
            Err(error) => Err(Failure { node: Some(0), error }),
        }
    } else {
        // An agent that cannot start (a bad flag, its data directory locked) exits at once.
        let settled = Instant::now() + Duration::from_secs(1);
        wait(deadline, &mut children, "the node's process to settle", async || Ok(Instant::now() >= settled)).await
    };
    waited.map_err(|failure| {
        let tail = log_tail(&dir, args.node);
        failure.error.context(format!("starting node {}; the last lines of its log:\n{tail}", args.node))
    })
}

/// SIGTERM to the process groups `up` started, SIGKILL to what is left after a grace period.
fn stop_groups(dir: &Path, pids: &[u32]) {
    let groups: Vec<Pid> = pids
        .iter()
        .filter_map(|&p| Pid::from_raw(p as i32))
        // A leader still alive but no longer ours is a reused pid: leave it alone. (A group
        // whose leader died keeps its id reserved while any member lives.)
        .filter(|pid| {
            std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero()))
                .map_or(true, |cmdline| String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()))
        })
        .collect();
    for &group in &groups {
        let _ = kill_process_group(group, Signal::TERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while groups.iter().any(|&g| test_kill_process_group(g).is_ok()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &group in &groups {
        let _ = kill_process_group(group, Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_json_from_before_start_node_still_loads() {
        let old = r#"{"name":"n","bridge":"b","subnet":"172.30.0.0/24","server":"https://172.30.0.2:6443","nodes":[
            {"name":"n-0","ip":"172.30.0.2","netns":"/d/nodes/0/netns","host_veth":"v0","pid":7,"data_dir":"/d/nodes/0"}]}"#;
        let state: ClusterState = serde_json::from_str(old).unwrap();
        assert!(state.nodes[0].argv.is_empty() && !state.nodes[0].stopped);
        assert_eq!(node_index(&state, 0).unwrap(), 0);
        assert!(node_index(&state, 1).is_err());
    }

    #[test]
    fn a_stored_command_line_runs_its_first_word() {
        let cmd = command(&strings(&["/bin/tug", "agent", "--node-ip", "172.30.0.3"])).unwrap();
        assert_eq!(cmd.get_program(), "/bin/tug");
        assert_eq!(cmd.get_args().collect::<Vec<_>>(), ["agent", "--node-ip", "172.30.0.3"]);
        assert!(command(&[]).is_err());
    }
}

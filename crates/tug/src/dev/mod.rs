//! `tug dev ...`: tools for developing Tugboat and the software that runs on it. `tug dev cluster`
//! plays kind's role: a real multi-node cluster on one machine, each node a network namespace
//! on a shared bridge running `tug server` or `tug agent`.

mod cleanup;
pub(crate) mod cluster;
mod containerd;
pub mod hosts;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct DevArgs {
    #[command(subcommand)]
    command: DevCommand,
}

#[derive(Subcommand, Debug)]
enum DevCommand {
    /// A multi-node cluster on this machine: one network namespace per node on a shared
    /// bridge, `tug server` in the first and `tug agent` in the others (what kind does).
    ///
    /// `up` creates it and writes DIR/kubeconfig.yaml, usable from this machine's own network
    /// namespace; `load-image` imports an image archive into every node; `down` removes
    /// everything `up` created (processes, containers, mounts, cgroups, links, files).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Create the cluster (tearing down what a previous cluster left in DIR first) and wait
    /// until every node is Ready.
    Up(UpArgs),
    /// Import an OCI layout or archive, or a `docker save` archive, into every node's image
    /// store (like `kind load image-archive`; containerd nodes take archives only, through
    /// `ctr images import`); prints the names imported.
    LoadImage(LoadImageArgs),
    /// Stop the cluster's processes and remove everything it created. Idempotent; a DIR
    /// without a cluster is fine.
    Down(DownArgs),
    /// Stop one node's `tug` process (SIGTERM, SIGKILL after a grace period), leaving its
    /// containers running as an agent restart does. Idempotent.
    StopNode(NodeArgs),
    /// Start a stopped node's `tug` process again with the command line `up` gave it, and wait
    /// until it runs (for the first node, until the API server answers). Idempotent.
    StartNode(NodeArgs),
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// How many nodes: the first runs the control plane (and a node agent), the others join it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub nodes: u32,
    /// The cluster's directory: nodes' data directories (DIR/nodes/<i>), their logs
    /// (DIR/nodes/<i>/tug.log), DIR/kubeconfig.yaml and DIR/cluster.json.
    #[arg(long)]
    pub dir: PathBuf,
    /// The nodes' network: the bridge takes its first address, node i the (2+i)th.
    #[arg(long, default_value = "172.30.0.0/24")]
    pub subnet: ipnet::Ipv4Net,
    /// The cluster's name: nodes are called NAME-0, NAME-1, ...
    #[arg(long, default_value = "tug-dev")]
    pub name: String,
    /// How long to wait for the API server and for every node to be Ready.
    #[arg(long, default_value = "120s", value_parser = crate::server::parse_duration)]
    pub wait: Duration,
    /// An extra argument for `tug server` on the first node (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// An extra argument for `tug agent` on the other nodes (repeatable).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// The nodes' container runtime: tug's built-in one, or `containerd`: a private containerd
    /// (the machine's) per node, in the node's namespace with its state under
    /// DIR/nodes/<i>/containerd, driven over CRI, as kind's nodes run.
    #[arg(long, value_enum, default_value = "builtin")]
    pub container_runtime: DevRuntime,
    /// The sandbox ("pause") image of containerd nodes. Without a registry, `load-image` it
    /// before creating pods.
    #[arg(long, default_value = "registry.k8s.io/pause:3.10")]
    pub sandbox_image: String,
    /// The CNI plugins for containerd nodes (default: /opt/cni/bin, else /usr/lib/cni).
    #[arg(long, value_name = "DIR")]
    pub cni_bin_dir: Option<PathBuf>,
}

/// The runtimes of `up --container-runtime`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevRuntime {
    Builtin,
    Containerd,
}

#[derive(Args, Debug)]
pub struct LoadImageArgs {
    /// The cluster's directory, as given to `up`.
    #[arg(long)]
    pub dir: PathBuf,
    /// The archive or OCI layout directory to import.
    pub archive: PathBuf,
    /// The name to record the image under, overriding (or supplying) the archive's own.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// The cluster's directory, as given to `up`.
    #[arg(long)]
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The cluster's directory, as given to `up`.
    #[arg(long)]
    pub dir: PathBuf,
    /// The node's index: 0 is the control plane's node.
    #[arg(long)]
    pub node: u32,
    /// How long `start-node` waits for the process (and node 0's API server).
    #[arg(long, default_value = "60s", value_parser = crate::server::parse_duration)]
    pub wait: Duration,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    match args.command {
        DevCommand::Cluster(ClusterCommand::Up(args)) => cluster::up(args).await,
        DevCommand::Cluster(ClusterCommand::LoadImage(args)) => cluster::load_image(args).await,
        DevCommand::Cluster(ClusterCommand::Down(args)) => cluster::down(&args.dir).await,
        DevCommand::Cluster(ClusterCommand::StopNode(args)) => cluster::stop_node(args).await,
        DevCommand::Cluster(ClusterCommand::StartNode(args)) => cluster::start_node(args).await,
    }
}

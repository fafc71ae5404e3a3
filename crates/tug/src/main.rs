//! `tug`: Kubernetes in one binary. This file parses the command line and wires the concrete
//! components together; the components themselves live in their crates.

mod agent;
mod bench;
mod client;
mod cluster_secrets;
mod csi_controller;
mod datastore;
mod dev;
mod images;
mod join;
mod server;
mod sim_nodes;

use clap::{Parser, Subcommand};

/// Tugboat: a Kubernetes v1.36-compatible cluster in one small binary.
#[derive(Parser, Debug)]
#[command(name = "tug", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// More log output: -v for debug, -vv for trace. RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the server's flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run a control-plane server: the API server with its embedded datastore.
    ///
    /// On first start it creates the cluster's CA and certificates under DATA_DIR/tls, the admin
    /// kubeconfig at DATA_DIR/kubeconfig.yaml and the datastore at DATA_DIR/db/state.db; later
    /// starts reuse them.
    Server(server::ServerArgs),
    /// Join a cluster as a node: get the node's certificates from the server with the join
    /// token (kubelet TLS bootstrapping) and run the node agent.
    Agent(join::JoinArgs),
    /// Measure a component's throughput, latency and memory against a baseline.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The datastore's backups: `tug datastore snapshot save FILE`.
    Datastore(datastore::DatastoreCommandArgs),
    /// Run the controller manager alone against a cluster's API server.
    ControllerManager {
        /// The kubeconfig to reach the API server with.
        #[arg(long)]
        kubeconfig: std::path::PathBuf,
        /// The cluster CA bundle (PEM) published to every namespace as the `kube-root-ca.crt`
        /// ConfigMap. Defaults to the CA of the kubeconfig.
        #[arg(long)]
        root_ca_file: Option<std::path::PathBuf>,
        /// The CA certificate (PEM) the CSR signer issues cluster certificates with.
        #[arg(long, requires = "cluster_signing_key_file")]
        cluster_signing_cert_file: Option<std::path::PathBuf>,
        /// The CA's private key (PEM) for `--cluster-signing-cert-file`.
        #[arg(long, requires = "cluster_signing_cert_file")]
        cluster_signing_key_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        node_controllers: server::NodeControllerArgs,
        #[command(flatten)]
        horizontal_pod_autoscaler: server::HpaControllerArgs,
        #[command(flatten)]
        leader_election: server::LeaderElectionArgs,
    },
    /// Run the service proxy alone (kube-proxy's role): Services and EndpointSlices from the
    /// API programmed into this host's nftables table `ip kube-proxy` (or iptables chains).
    Proxy {
        /// The kubeconfig to reach the API server with.
        #[arg(long, required_unless_present = "cleanup")]
        kubeconfig: Option<std::path::PathBuf>,
        /// The node this host is (for `internalTrafficPolicy`/`externalTrafficPolicy: Local`);
        /// default: the host name, lower-cased.
        #[arg(long)]
        node_name: Option<String>,
        /// Remove the proxy's rules from this host (of every mode) and exit.
        #[arg(long)]
        cleanup: bool,
        /// Which packet filter to program: `nftables` or `iptables` (upstream's chain layout).
        #[arg(long, default_value = "nftables")]
        proxy_mode: tug_proxy::Mode,
        /// Where to serve `/metrics`; empty: nowhere.
        #[arg(long, default_value = "127.0.0.1:10249")]
        metrics_bind_address: tug_proxy::BindAddress,
        /// Where to serve `/healthz` and `/livez`; empty: nowhere.
        #[arg(long, default_value = "0.0.0.0:10256")]
        healthz_bind_address: tug_proxy::BindAddress,
    },
    /// Run the cluster DNS alone (CoreDNS's role): service and pod names from the API, other
    /// names forwarded.
    Dns {
        /// The kubeconfig to reach the API server with.
        #[arg(long)]
        kubeconfig: std::path::PathBuf,
        /// UDP and TCP address to serve on.
        #[arg(long, default_value = "0.0.0.0:53")]
        bind: std::net::SocketAddr,
        /// The cluster's DNS domain.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// Resolvers for names outside the cluster (IP:port; repeatable); default: the
        /// nameservers of /etc/resolv.conf.
        #[arg(long = "upstream")]
        upstreams: Vec<std::net::SocketAddr>,
        /// Where to serve /metrics.
        #[arg(long, default_value = "0.0.0.0:9153")]
        metrics_bind: std::net::SocketAddr,
    },
    /// Simulate nodes (no containers) for testing and measuring the control plane at scale.
    SimNodes(sim_nodes::SimNodesArgs),
    /// Manage the node's container images: pull, list, remove, import.
    Images(images::ImagesArgs),
    /// Development tools: a real multi-node cluster on this machine (kind's role).
    Dev(dev::DevArgs),
    /// Run the controller-side CSI sidecars for one driver (external-provisioner and
    /// external-attacher roles) against its CSI socket.
    CsiController(csi_controller::CsiControllerArgs),
    /// Run the scheduler alone against a cluster's API server.
    Scheduler {
        /// The kubeconfig to reach the API server with.
        #[arg(long)]
        kubeconfig: std::path::PathBuf,
        /// A KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1) file: profiles,
        /// plugins and their args.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[command(flatten)]
        leader_election: server::LeaderElectionArgs,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// The API server: creates, gets, lists and watch fan-out against the raw store.
    Apiserver(bench::apiserver::BenchArgs),
    /// The scheduler: pods bound per second with simulated nodes (scheduler_perf's shape).
    Scheduler(bench::scheduler::SchedulerBenchArgs),
    /// The controller manager: a large Deployment created, rolled and deleted on simulated nodes.
    Controllers(bench::controllers::ControllersBenchArgs),
    /// The node agent: pod startup latency with real containers, beside bare container starts.
    Pods(bench::pods::PodsBenchArgs),
    /// The pod network's datapath (same node, across the VXLAN overlay) against a bare veth pair.
    Network(bench::network::NetworkBenchArgs),
    /// Time from a node joining a dev cluster to its pods being reachable from every node (and
    /// back), beside the same pod start on a node already in the cluster.
    NetworkJoin(bench::network_join::JoinBenchArgs),
    /// The cluster DNS: queries per second and latency over UDP beside a trivial UDP echo.
    Dns(bench::dns::DnsBenchArgs),
    /// The service proxy: nftables rule sync time and EndpointSlice-change-to-rule latency at
    /// 1,000 and 10,000 services, in a private network namespace.
    Proxy(bench::proxy::ProxyBenchArgs),
}

/// mimalloc instead of glibc's malloc: the control plane allocates and frees small objects
/// (JSON values, decoded objects, HTTP/2 frames) from every thread at a high rate, and under
/// the scheduler benchmark glibc's allocator (arena locks, consolidation of fragmented free
/// lists) took over a quarter of the server's CPU; with mimalloc the same run binds pods about
/// half again as fast (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long an idle blocking-pool thread (SQLite reads, file and process work) lives on.
///
/// Idle threads wait on one condition variable and are woken in turn, so a pool that grew in a
/// burst (start-up on a busy machine makes twenty) never shrinks once a few blocking tasks a
/// second arrive: each thread gets one before tokio's default 10 s run out. Each such thread
/// keeps its stack and its allocator heap, some 180 KiB, so an idle server kept 2-5 MiB more
/// than it needed. With 1 s, the pool shrinks to what the steady rate of tasks keeps busy.
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> std::process::ExitCode {
    // The container shim: an internal, hidden subcommand that must stay single-threaded, so it
    // is dispatched before clap and before any tokio runtime exists.
    if std::env::args_os().nth(1).is_some_and(|a| a == "shim") {
        return tug_runtime::shim::main();
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tug: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Agent(args) => join::run(args).await,
            Command::Datastore(args) => datastore::run(args).await,
            Command::Bench(BenchCommand::Apiserver(args)) => bench::apiserver::run(args).await,
            Command::Bench(BenchCommand::Scheduler(args)) => bench::scheduler::run(args).await,
            Command::Bench(BenchCommand::Controllers(args)) => bench::controllers::run(args).await,
            Command::Bench(BenchCommand::Pods(args)) => bench::pods::run(args).await,
            Command::Bench(BenchCommand::Network(args)) => bench::network::run(args).await,
            Command::Bench(BenchCommand::NetworkJoin(args)) => bench::network_join::run(args).await,
            Command::Bench(BenchCommand::Dns(args)) => bench::dns::run(args).await,
            Command::Bench(BenchCommand::Proxy(args)) => bench::proxy::run(args).await,
            Command::Proxy {
                kubeconfig,
                node_name,
                cleanup,
                proxy_mode,
                metrics_bind_address,
                healthz_bind_address,
            } => {
                if cleanup {
                    return tug_proxy::cleanup(None).await.map_err(anyhow::Error::from);
                }
                let kubeconfig = kubeconfig.expect("clap requires --kubeconfig without --cleanup");
                let client = client_from_kubeconfig(&kubeconfig).await?;
                let node_name = node_name.unwrap_or_else(agent::default_node_name);
                let shutdown = tokio_util::sync::CancellationToken::new();
                let config = tug_proxy::Config {
                    node_name,
                    node_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
                    metrics_bind: metrics_bind_address.0,
                    healthz_bind: healthz_bind_address.0,
                    mode: proxy_mode,
                };
                let proxy = tokio::spawn(tug_proxy::run(client, config, shutdown.clone()));
                server::wait_for_signal().await;
                shutdown.cancel();
                let _ = proxy.await;
                Ok(())
            }
            Command::Dns { kubeconfig, bind, cluster_domain, upstreams, metrics_bind } => {
                let client = client_from_kubeconfig(&kubeconfig).await?;
                let upstreams = if upstreams.is_empty() {
                    tug_dns::forward::upstreams_from_resolv_conf(std::path::Path::new("/etc/resolv.conf"))?
                } else {
                    upstreams
                };
                let options = tug_dns::Options {
                    domain: cluster_domain,
                    listen: bind,
                    upstreams,
                    publish: None,
                    metrics: Some(metrics_bind),
                };
                let shutdown = tokio_util::sync::CancellationToken::new();
                let (_, serving) = tug_dns::start(client, options, shutdown.clone()).await?;
                server::wait_for_signal().await;
                shutdown.cancel();
                let _ = serving.await;
                Ok(())
            }
            Command::SimNodes(args) => sim_nodes::run(args).await,
            Command::CsiController(args) => csi_controller::run(args).await,
            Command::Images(args) => images::run(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::ControllerManager {
                kubeconfig,
                root_ca_file,
                cluster_signing_cert_file,
                cluster_signing_key_file,
                node_controllers,
                horizontal_pod_autoscaler,
                leader_election,
            } => {
                let client = client_from_kubeconfig(&kubeconfig).await?;
                let cluster_signing = match (cluster_signing_cert_file, cluster_signing_key_file) {
                    (Some(cert), Some(key)) => Some(tug_controllers::certificates::SigningCa {
                        cert_pem: read_file(&cert)?,
                        key_pem: read_file(&key)?,
                    }),
                    _ => None,
                };
                let mut options = tug_controllers::Options {
                    root_ca: root_ca(&kubeconfig, root_ca_file.as_deref())?,
                    cluster_signing,
                    ..Default::default()
                };
                node_controllers.apply(&mut options);
                horizontal_pod_autoscaler.apply(&mut options);
                let elected = leader_election.config("kube-controller-manager");
                let work = move |token| tug_controllers::run(client, options, token);
                run_until_signal(election(&kubeconfig, elected).await?, work).await
            }
            Command::Scheduler { kubeconfig, config, leader_election } => {
                let config = match config {
                    Some(path) => tug_scheduler::SchedulerConfig::load(&path)?,
                    None => tug_scheduler::SchedulerConfig::default(),
                };
                let client = client_from_kubeconfig(&kubeconfig).await?;
                let elected = leader_election.config("kube-scheduler");
                let work = move |token| tug_scheduler::run_with_config(client, config, token);
                run_until_signal(election(&kubeconfig, elected).await?, work).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tug: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `config`'s election with a client of its own for the cluster `kubeconfig` names (see
/// [`server::Election`]); none without a config.
async fn election(
    kubeconfig: &std::path::Path,
    config: Option<tug_controllers::leaderelection::Config>,
) -> anyhow::Result<Option<server::Election>> {
    match config {
        Some(config) => Ok(Some(server::Election { client: client_from_kubeconfig(kubeconfig).await?, config })),
        None => Ok(None),
    }
}

/// Runs a standalone component (under leader election if `election`) until a signal; losing
/// the lease is an error, so the process exits non-zero as upstream's components do.
async fn run_until_signal<F, Fut>(election: Option<server::Election>, work: F) -> anyhow::Result<()>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut run = tokio::spawn(server::run_elected(election, shutdown.clone(), work));
    tokio::select! {
        _ = server::wait_for_signal() => {
            shutdown.cancel();
            let _ = run.await;
            Ok(())
        }
        result = &mut run => Ok(result??),
    }
}

fn read_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// A Kubernetes client for the cluster a kubeconfig names.
pub async fn client_from_kubeconfig(path: &std::path::Path) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", path.display()))?;
    client::client(config).context("building the API client")
}

/// The CA bundle of `--root-ca-file`, or else the one the kubeconfig trusts for its current
/// cluster (`certificate-authority-data` or the `certificate-authority` file).
fn root_ca(kubeconfig: &std::path::Path, root_ca_file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    use anyhow::Context;
    use base64::Engine as _;
    if let Some(path) = root_ca_file {
        return std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display())).map(Some);
    }
    let config =
        kube::config::Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let context_name = config.current_context.clone().unwrap_or_default();
    let cluster_name = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = config
        .clusters
        .iter()
        .find(|c| cluster_name.as_ref().is_none_or(|n| &c.name == n))
        .and_then(|c| c.cluster.as_ref());
    let Some(cluster) = cluster else { return Ok(None) };
    if let Some(data) = &cluster.certificate_authority_data {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .context("decoding the kubeconfig's certificate-authority-data")?;
        return String::from_utf8(pem).context("the kubeconfig's certificate authority is not PEM text").map(Some);
    }
    match &cluster.certificate_authority {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}")).map(Some),
        None => Ok(None),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

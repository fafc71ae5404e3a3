//! `tug`: Kubernetes in one binary. This file parses the command line and wires the concrete
//! components together; the components themselves live in their crates.

mod bench;
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a control-plane server: the API server with its embedded datastore.
    ///
    /// On first start it creates the cluster's CA and certificates under DATA_DIR/tls, the admin
    /// kubeconfig at DATA_DIR/kubeconfig.yaml and the datastore at DATA_DIR/db/state.db; later
    /// starts reuse them.
    Server(server::ServerArgs),
    /// Measure a component's throughput, latency and memory against a baseline.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the controller manager alone against a cluster's API server.
    ControllerManager {
        /// The kubeconfig to reach the API server with.
        #[arg(long)]
        kubeconfig: std::path::PathBuf,
    },
    /// Simulate nodes (no containers) for testing and measuring the control plane at scale.
    SimNodes(sim_nodes::SimNodesArgs),
    /// Run the scheduler alone against a cluster's API server.
    Scheduler {
        /// The kubeconfig to reach the API server with.
        #[arg(long)]
        kubeconfig: std::path::PathBuf,
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tug: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Bench(BenchCommand::Apiserver(args)) => bench::apiserver::run(args).await,
            Command::Bench(BenchCommand::Scheduler(args)) => bench::scheduler::run(args).await,
            Command::Bench(BenchCommand::Controllers(args)) => bench::controllers::run(args).await,
            Command::SimNodes(args) => sim_nodes::run(args).await,
            Command::ControllerManager { kubeconfig } => {
                let client = client_from_kubeconfig(&kubeconfig).await?;
                let shutdown = tokio_util::sync::CancellationToken::new();
                let run = tokio::spawn(tug_controllers::run(client, shutdown.clone()));
                server::wait_for_signal().await;
                shutdown.cancel();
                let _ = run.await;
                Ok(())
            }
            Command::Scheduler { kubeconfig } => {
                let client = client_from_kubeconfig(&kubeconfig).await?;
                let shutdown = tokio_util::sync::CancellationToken::new();
                let run = tokio::spawn(tug_scheduler::run(client, shutdown.clone()));
                server::wait_for_signal().await;
                shutdown.cancel();
                let _ = run.await;
                Ok(())
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

/// A Kubernetes client for the cluster a kubeconfig names.
pub async fn client_from_kubeconfig(path: &std::path::Path) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", path.display()))?;
    kube::Client::try_from(config).context("building the API client")
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

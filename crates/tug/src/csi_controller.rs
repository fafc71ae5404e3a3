//! `tug csi-controller`: the controller-side CSI sidecars (external-provisioner and
//! external-attacher roles) for one driver, in one process beside the driver's controller
//! plugin. The sidecars live in `tug_csi::sidecar`; this file parses flags and wires them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::server::{LeaderElectionArgs, parse_duration};

#[derive(clap::Args, Debug)]
pub struct CsiControllerArgs {
    /// The kubeconfig to reach the API server with.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The driver's CSI endpoint: unix:///abs/path or /abs/path.
    #[arg(long)]
    pub csi_address: String,
    /// How long each call to the driver may take.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub leader_election: LeaderElectionArgs,
}

pub async fn run(args: CsiControllerArgs) -> anyhow::Result<()> {
    let client = crate::client_from_kubeconfig(&args.kubeconfig).await?;
    let driver = tug_csi::sidecar::probe(&args.csi_address, args.timeout)
        .await
        .with_context(|| format!("reading the CSI driver at {}", args.csi_address))?;
    tracing::info!(driver = %driver.name, "connected to the CSI driver");
    // One lease per driver, as each of upstream's sidecars takes one named after the driver.
    let lease = format!("csi-controller-{}", tug_csi::sidecar::sanitize_driver_name(&driver.name));
    let elected = args.leader_election.config(&lease);
    let timeout = args.timeout;
    let work = move |token| tug_csi::sidecar::run(client, driver, timeout, token);
    crate::run_until_signal(crate::election(&args.kubeconfig, elected).await?, work).await
}

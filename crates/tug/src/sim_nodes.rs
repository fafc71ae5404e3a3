//! `tug sim-nodes`: simulated nodes against a cluster (see the `tug-simnode` crate).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Taint;
use tug_simnode::{Config, NodeShape};

/// Register simulated nodes that keep their Leases and play their pods' lifecycle without
/// containers (KWOK's role), to test and measure the control plane at scale.
#[derive(clap::Args, Debug)]
pub struct SimNodesArgs {
    /// The kubeconfig to reach the API server with.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Node names are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "sim-node-")]
    name_prefix: String,
    /// Each node's cpu capacity (a Kubernetes quantity).
    #[arg(long, default_value = "16")]
    cpu: String,
    /// Each node's memory capacity (a Kubernetes quantity).
    #[arg(long, default_value = "64Gi")]
    memory: String,
    /// How many pods each node takes.
    #[arg(long, default_value = "110")]
    pods: String,
    /// Labels for every node, KEY=VALUE (comma-separated or repeated).
    #[arg(long = "labels", visible_alias = "label", value_name = "KEY=VALUE", value_delimiter = ',')]
    labels: Vec<String>,
    /// Taints for every node, KEY[=VALUE]:EFFECT (comma-separated or repeated).
    #[arg(long = "taints", visible_alias = "taint", value_name = "KEY[=VALUE]:EFFECT", value_delimiter = ',')]
    taints: Vec<String>,
    /// Spread the nodes over N zones: node i gets `topology.kubernetes.io/zone=zone-<i mod N>`.
    #[arg(long, default_value_t = 0)]
    zones: usize,
    /// Delete the nodes and their Leases on exit (by default they stay, and go NotReady).
    #[arg(long)]
    cleanup: bool,
}

fn parse_label(text: &str) -> anyhow::Result<(String, String)> {
    let Some((key, value)) = text.split_once('=') else { bail!("label {text:?} is not KEY=VALUE") };
    Ok((key.to_string(), value.to_string()))
}

fn parse_taint(text: &str) -> anyhow::Result<Taint> {
    let Some((key_value, effect)) = text.rsplit_once(':') else { bail!("taint {text:?} is not KEY[=VALUE]:EFFECT") };
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        bail!("taint {text:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute");
    }
    let (key, value) = match key_value.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (key_value, None),
    };
    Ok(Taint { key: key.to_string(), value, effect: effect.to_string(), time_added: None })
}

pub async fn run(args: SimNodesArgs) -> anyhow::Result<()> {
    let labels = args.labels.iter().map(|l| parse_label(l)).collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let taints = args.taints.iter().map(|t| parse_taint(t)).collect::<anyhow::Result<Vec<_>>>()?;
    let config = Config {
        name_prefix: args.name_prefix,
        count: args.count,
        shape: NodeShape { cpu: args.cpu, memory: args.memory, pods: args.pods, ..NodeShape::default() },
        labels,
        taints,
        zones: args.zones,
        play_pods: true,
        cleanup: args.cleanup,
    };
    let client = crate::client_from_kubeconfig(&args.kubeconfig).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(tug_simnode::run(client, config, shutdown.clone()));
    tokio::select! {
        finished = run => return finished.context("simulated nodes task")?.context("simulated nodes"),
        () = crate::server::wait_for_signal() => {}
    }
    shutdown.cancel();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_with_and_without_a_value() {
        let t = parse_taint("dedicated=gpu:NoSchedule").unwrap();
        assert_eq!((t.key.as_str(), t.value.as_deref(), t.effect.as_str()), ("dedicated", Some("gpu"), "NoSchedule"));
        let t = parse_taint("special:NoExecute").unwrap();
        assert_eq!((t.key.as_str(), t.value, t.effect.as_str()), ("special", None, "NoExecute"));
        assert!(parse_taint("x=y:Sometimes").is_err());
        assert!(parse_taint("novalue").is_err());
    }

    #[test]
    fn labels_need_an_equals_sign() {
        assert_eq!(parse_label("zone=a").unwrap(), ("zone".into(), "a".into()));
        assert!(parse_label("zone").is_err());
    }
}

//! `tug bench scheduler`: scheduling throughput in the shape of upstream's scheduler_perf.
//!
//! Two scenarios, each on a fresh server (with its built-in scheduler) and simulated nodes whose
//! pods are not played (only binding is measured, as scheduler_perf does): `SchedulingBasic`
//! (5,000 nodes, 10,000 pods) and a constrained one (500 nodes in 5 zones, 1,000 pods with a
//! zone topology spread constraint and preferred pod anti-affinity). Throughput is pods bound
//! per second from the first pod created to the last pod bound, as seen by a watch. The baseline,
//! measured on the same server just before, is the rate at which the same pods are merely
//! created (with a scheduler name nobody serves), so the ratio says what scheduling costs
//! beyond the API writes it needs.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, Pod, PodAffinityTerm, PodAntiAffinity, PodSpec, ResourceRequirements,
    TopologySpreadConstraint, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use super::{Scratch, ServerUnderTest, create_namespace};

/// Flags of `tug bench scheduler`.
#[derive(Args, Debug)]
pub struct SchedulerBenchArgs {
    /// Simulated nodes in the basic scenario.
    #[arg(long, default_value_t = 5000)]
    pub nodes: usize,
    /// Pods in the basic scenario.
    #[arg(long, default_value_t = 10000)]
    pub pods: usize,
    /// Simulated nodes in the constrained scenario (0 skips it).
    #[arg(long, default_value_t = 500)]
    pub constrained_nodes: usize,
    /// Pods in the constrained scenario.
    #[arg(long, default_value_t = 1000)]
    pub constrained_pods: usize,
    /// Concurrent clients creating pods.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
}

struct Scenario {
    name: &'static str,
    nodes: usize,
    pods: usize,
    zones: usize,
    constrained: bool,
}

struct Outcome {
    create_only_rate: f64,
    created_in: Duration,
    bound_in: Duration,
    pods: usize,
    peak_rss_mib: f64,
    register_in: Duration,
}

/// upstream's scheduler_perf `pod-default.yaml`: one pause container asking 100m cpu and
/// 500Mi memory.
fn pod(name: String, scheduler: &str, constrained: bool) -> Pod {
    let requests = BTreeMap::from([
        ("cpu".to_string(), Quantity("100m".into())),
        ("memory".to_string(), Quantity("500Mi".into())),
    ]);
    let labels = BTreeMap::from([("app".to_string(), "bench".to_string())]);
    let selector = LabelSelector { match_labels: Some(labels.clone()), ..Default::default() };
    let (affinity, spread) = if constrained {
        (
            Some(Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: PodAffinityTerm {
                            label_selector: Some(selector.clone()),
                            topology_key: "kubernetes.io/hostname".into(),
                            ..Default::default()
                        },
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            Some(vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "topology.kubernetes.io/zone".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                label_selector: Some(selector),
                ..Default::default()
            }]),
        )
    } else {
        (None, None)
    };
    Pod {
        metadata: ObjectMeta { name: Some(name), labels: Some(labels), ..Default::default() },
        spec: Some(PodSpec {
            scheduler_name: Some(scheduler.to_string()),
            containers: vec![Container {
                name: "pause".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                ports: Some(vec![ContainerPort { container_port: 80, ..Default::default() }]),
                resources: Some(ResourceRequirements {
                    requests: Some(requests.clone()),
                    limits: Some(requests),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            affinity,
            topology_spread_constraints: spread,
            ..Default::default()
        }),
        status: None,
    }
}

/// Creates `count` pods from `clients` concurrent tasks.
async fn create_pods(
    api: &Api<Pod>,
    count: usize,
    clients: usize,
    scheduler: &str,
    constrained: bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let body = pod(format!("pod-{i}"), scheduler, constrained);
            async move { api.create(&PostParams::default(), &body).await.map(|_| ()) }
        })
        .buffer_unordered(clients)
        .try_collect::<Vec<()>>()
        .await
        .context("creating pods")?;
    Ok(started.elapsed())
}

async fn run_scenario(scenario: &Scenario, clients: usize) -> anyhow::Result<Outcome> {
    let scratch = Scratch::new("scheduler")?;
    // The default cluster CIDR (10.42.0.0/16) has room for 256 nodes' /24s, as in k3s; a big
    // cluster needs a bigger one, or thousands of nodes wait for a podCIDR.
    let server = ServerUnderTest::start(&scratch.0, &["--cluster-cidr", "100.64.0.0/10"]).await?;
    let client = server.client.clone();
    let register_started = Instant::now();
    let config = tug_simnode::Config {
        name_prefix: "bench-node-".into(),
        count: scenario.nodes,
        shape: tug_simnode::NodeShape {
            cpu: "4".into(),
            memory: "32Gi".into(),
            pods: "110".into(),
            ..tug_simnode::NodeShape::default()
        },
        labels: BTreeMap::new(),
        taints: Vec::new(),
        zones: scenario.zones,
        play_pods: false,
        cleanup: false,
    };
    let registered = tug_simnode::register(client.clone(), config).await.context("registering simulated nodes")?;
    let register_in = register_started.elapsed();
    let shutdown = CancellationToken::new();
    let nodes = tokio::spawn(registered.run(shutdown.clone()));

    // Baseline: the same pods, created only.
    create_namespace(&client, "baseline").await?;
    let baseline: Api<Pod> = Api::namespaced(client.clone(), "baseline");
    let created = create_pods(&baseline, scenario.pods, clients, "no-such-scheduler", scenario.constrained).await?;
    let create_only_rate = scenario.pods as f64 / created.as_secs_f64();
    baseline
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .context("removing baseline pods")?;

    create_namespace(&client, "bench").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let expected = scenario.pods;
    let watch = tokio::spawn({
        let pods = pods.clone();
        async move {
            let mut bound = HashSet::with_capacity(expected);
            let mut events = watcher(pods, watcher::Config::default()).default_backoff().applied_objects().boxed();
            while bound.len() < expected {
                match events.next().await {
                    Some(Ok(pod)) => {
                        if pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
                            bound.insert(pod.metadata.name.unwrap_or_default());
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "watch failed; retrying"),
                    None => bail!("the pod watch ended after {} bound pods", bound.len()),
                }
            }
            Ok(Instant::now())
        }
    });
    // Let the watch establish before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let created_in = create_pods(&pods, scenario.pods, clients, "default-scheduler", scenario.constrained).await?;
    let last_bound = tokio::time::timeout(Duration::from_secs(1800), watch)
        .await
        .context("pods not all bound within 30 minutes")???;
    let bound_in = last_bound - started;
    let peak_rss_mib = server.peak_rss_mib();
    shutdown.cancel();
    let _ = nodes.await;
    server.stop().await;
    Ok(Outcome { create_only_rate, created_in, bound_in, pods: scenario.pods, peak_rss_mib, register_in })
}

pub async fn run(args: SchedulerBenchArgs) -> anyhow::Result<()> {
    let mut scenarios =
        vec![Scenario { name: "SchedulingBasic", nodes: args.nodes, pods: args.pods, zones: 0, constrained: false }];
    if args.constrained_nodes > 0 {
        scenarios.push(Scenario {
            name: "zone spread + preferred anti-affinity",
            nodes: args.constrained_nodes,
            pods: args.constrained_pods,
            zones: 5,
            constrained: true,
        });
    }
    let mut rows = Vec::new();
    for scenario in &scenarios {
        eprintln!("running {} ({} nodes, {} pods)...", scenario.name, scenario.nodes, scenario.pods);
        let outcome = run_scenario(scenario, args.clients).await.with_context(|| scenario.name.to_string())?;
        rows.push((scenario, outcome));
    }
    super::header("scheduler");
    println!(
        "| scenario | nodes | pods | bound pods/s (first create to last bind) | create-only pods/s (baseline) | ratio | pods created in | server peak RSS | nodes registered in |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (s, o) in &rows {
        let rate = o.pods as f64 / o.bound_in.as_secs_f64();
        println!(
            "| {} | {} | {} | {rate:.0} | {:.0} | {:.0}% | {:.1} s | {:.0} MiB | {:.1} s |",
            s.name,
            s.nodes,
            s.pods,
            o.create_only_rate,
            rate / o.create_only_rate * 100.0,
            o.created_in.as_secs_f64(),
            o.peak_rss_mib,
            o.register_in.as_secs_f64()
        );
    }
    Ok(())
}

//! `tug bench controllers`: the controller manager driving a large Deployment.
//!
//! A fresh server runs without its built-in controllers; `tug controller-manager` runs beside it
//! as its own process so its memory can be read alone. Simulated nodes (played in this process)
//! make pods Running and Ready without containers. Measured: time for a 1,000-replica Deployment
//! to become fully Available, to roll to a new image with the default strategy (25% surge, 25%
//! unavailable), and to be deleted with everything it owns; the controller manager's RSS idle
//! and at its peak. The baseline, on the same cluster just before, is the time for the same
//! number of bare pods created directly through the API to become Ready: what the controllers
//! add on top of the API and the simulated kubelets.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

use super::{Scratch, ServerUnderTest, create_namespace, rss_mib};

/// Flags of `tug bench controllers`.
#[derive(Args, Debug)]
pub struct ControllersBenchArgs {
    /// The Deployment's replicas.
    #[arg(long, default_value_t = 1000)]
    pub replicas: i32,
    /// Simulated nodes (110 pods each).
    #[arg(long, default_value_t = 20)]
    pub nodes: usize,
}

const POLL: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(900);

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), "bench".to_string())])
}

fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(labels()), ..Default::default() }),
        spec: Some(PodSpec {
            containers: vec![Container { name: "app".into(), image: Some(image.into()), ..Default::default() }],
            ..Default::default()
        }),
    }
}

/// Polls `done` until it holds, returning how long it took.
async fn until<F, Fut>(what: &str, started: Instant, mut done: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    loop {
        if done().await? {
            return Ok(started.elapsed());
        }
        if started.elapsed() > LIMIT {
            bail!("{what} not reached within {} s", LIMIT.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn ready_pods(pods: &Api<Pod>) -> anyhow::Result<usize> {
    let list = pods.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count())
}

async fn empty(pods: &Api<Pod>) -> anyhow::Result<bool> {
    Ok(pods.list(&ListParams::default().limit(1)).await?.items.is_empty())
}

pub async fn run(args: ControllersBenchArgs) -> anyhow::Result<()> {
    let scratch = Scratch::new("controllers")?;
    let server = ServerUnderTest::start(&scratch.0, &["--disable-controller-manager"]).await?;
    let client = server.client.clone();
    let exe = std::env::current_exe().context("finding the tug binary")?;
    let mut manager = tokio::process::Command::new(exe)
        .arg("controller-manager")
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting tug controller-manager")?;
    let manager_pid = manager.id().context("controller-manager pid")?;

    let config = tug_simnode::Config {
        name_prefix: "bench-node-".into(),
        count: args.nodes,
        shape: tug_simnode::NodeShape::default(),
        labels: BTreeMap::new(),
        taints: Vec::new(),
        zones: 0,
        play_pods: true,
        cleanup: false,
    };
    let registered = tug_simnode::register(client.clone(), config).await.context("registering simulated nodes")?;
    let shutdown = CancellationToken::new();
    let nodes = tokio::spawn(registered.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = rss_mib(manager_pid, "VmRSS:");
    let replicas = args.replicas as usize;

    // Baseline: bare pods created directly, until all are Ready.
    create_namespace(&client, "baseline").await?;
    let bare: Api<Pod> = Api::namespaced(client.clone(), "baseline");
    let started = Instant::now();
    futures::stream::iter(0..replicas)
        .map(|i| {
            let bare = bare.clone();
            let pod = Pod {
                metadata: ObjectMeta { name: Some(format!("pod-{i}")), labels: Some(labels()), ..Default::default() },
                spec: template("bench:1").spec,
                status: None,
            };
            async move { bare.create(&PostParams::default(), &pod).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .context("creating baseline pods")?;
    let baseline_ready =
        until("baseline pods Ready", started, || async { Ok(ready_pods(&bare).await? == replicas) }).await?;
    bare.delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
    until("baseline pods gone", Instant::now(), || empty(&bare)).await?;

    create_namespace(&client, "bench").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "bench");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let deployment = Deployment {
        metadata: ObjectMeta { name: Some("web".into()), ..Default::default() },
        spec: Some(DeploymentSpec {
            replicas: Some(args.replicas),
            selector: LabelSelector { match_labels: Some(labels()), ..Default::default() },
            template: template("bench:1"),
            ..Default::default()
        }),
        status: None,
    };
    let complete = |generation: i64| {
        let deployments = deployments.clone();
        move || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("web").await?;
                let s = d.status.unwrap_or_default();
                Ok(s.observed_generation.unwrap_or(0) >= generation
                    && s.updated_replicas == Some(args.replicas)
                    && s.replicas == Some(args.replicas)
                    && s.available_replicas == Some(args.replicas))
            }
        }
    };
    let started = Instant::now();
    let created = deployments.create(&PostParams::default(), &deployment).await?;
    let available = until("Deployment available", started, complete(created.metadata.generation.unwrap_or(1))).await?;

    let started = Instant::now();
    let patch = serde_json::json!({ "spec": { "template": { "spec": { "containers": [{ "name": "app", "image": "bench:2" }] } } } });
    let patched = deployments.patch("web", &PatchParams::default(), &Patch::Strategic(patch)).await?;
    let rolled = until("rollout complete", started, complete(patched.metadata.generation.unwrap_or(2))).await?;

    let started = Instant::now();
    deployments.delete("web", &DeleteParams::background()).await?;
    let deleted = until("Deployment and its pods gone", started, || empty(&pods)).await?;
    let peak_rss = rss_mib(manager_pid, "VmHWM:");

    shutdown.cancel();
    let _ = nodes.await;
    let _ = manager.kill().await;
    server.stop().await;

    super::header("controllers");
    println!("{} simulated nodes, a Deployment of {replicas} replicas", args.nodes);
    println!();
    println!("| step | time |");
    println!("|---|---|");
    println!(
        "| baseline: {replicas} bare pods created through the API to all Ready | {:.1} s |",
        baseline_ready.as_secs_f64()
    );
    println!("| Deployment created to {replicas} available | {:.1} s |", available.as_secs_f64());
    println!("| image changed to rollout complete (default RollingUpdate) | {:.1} s |", rolled.as_secs_f64());
    println!("| Deployment deleted (background) to all its pods gone | {:.1} s |", deleted.as_secs_f64());
    println!();
    println!(
        "Deployment to available / bare pods to Ready: {:.2}x",
        available.as_secs_f64() / baseline_ready.as_secs_f64()
    );
    println!("controller-manager RSS: idle {idle_rss:.1} MiB, peak {peak_rss:.1} MiB");
    Ok(())
}

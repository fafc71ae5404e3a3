//! `tug bench pods`: pod startup latency on a real node agent, and the agent's memory.
//!
//! A fresh server runs with its node agent; the image is imported into its store first, so no
//! pull is timed. Measured:
//! - pod startup latency: N pods created at once, each timed from just before its create call
//!   to the moment a watch sees it Running (upstream's pod startup SLI, image present);
//! - baselines in the same run: a bare container started by the same runtime without the
//!   API or the kubelet (sandbox + create + start through `RuntimeService`), and by `runc run -d`
//!   on a bundle prepared the same way;
//! - memory: the server's RSS idle with its agent, the same for a server without an agent
//!   (their difference is the agent's share), the server with N pods running, and the shims'
//!   total RSS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use tug_runtime::cri::{ContainerConfig, ContainerMetadata, PodSandboxConfig, PodSandboxMetadata, RuntimeService};

use super::{Scratch, ServerUnderTest};

/// Flags of `tug bench pods`.
#[derive(Args, Debug)]
pub struct PodsBenchArgs {
    /// An image archive (OCI archive or `docker save` tar) holding the image to run, with its
    /// name (e.g. made by `skopeo copy oci:DIR:1 oci-archive:FILE:tugboat.test/busybox:1`).
    #[arg(long)]
    pub image_archive: PathBuf,
    /// The image's name inside the archive; it must have `sleep`.
    #[arg(long, default_value = "tugboat.test/busybox:1")]
    pub image: String,
    /// Pods created at once.
    #[arg(long, default_value_t = 30)]
    pub pods: usize,
    /// Bare container starts timed for each baseline.
    #[arg(long, default_value_t = 10)]
    pub baseline_runs: usize,
}

/// The thresholds the bench's node runs with: this benchmark measures startup, not eviction,
/// and build machines often have less than upstream's 10% of disk free.
const EVICTION_HARD: &str = "memory.available<100Mi,nodefs.available<1%,imagefs.available<1%";

pub async fn run(args: PodsBenchArgs) -> anyhow::Result<()> {
    super::header("pods");
    let scratch = Scratch::new("pods")?;
    let data = scratch.0.join("server");
    let store = tug_runtime::image::ImageStore::open(data.join("agent").join("images"))?;
    {
        let (store, archive, name) = (store.clone(), args.image_archive.clone(), args.image.clone());
        tokio::task::spawn_blocking(move || tug_runtime::image::import_path(&store, &archive, Some(&name)))
            .await?
            .with_context(|| format!("importing {}", args.image_archive.display()))?;
    }

    // The control plane alone, for the agent's share of memory.
    let plain_dir = scratch.0.join("plain");
    let plain = ServerUnderTest::start(&plain_dir, &[]).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let control_plane_rss = plain.rss_mib();
    plain.stop().await;

    let node_name = "bench-node";
    let kubelet_port = super::free_port()?.to_string();
    let server = ServerUnderTest::start_with_agent(
        &scratch.0,
        &[
            "--node-name",
            node_name,
            "--node-ip",
            "127.0.0.1",
            "--kubelet-port",
            &kubelet_port,
            "--eviction-hard",
            EVICTION_HARD,
            "--image-gc-high-threshold",
            "100",
        ],
    )
    .await?;
    let client = server.client.clone();
    wait_node_ready(&client, node_name).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_rss = server.rss_mib();

    let baseline_ours = bare_starts_ours(&scratch.0, &store, &args).await?;
    let baseline_runc = bare_starts_runc(&scratch.0, &store, &args).await?;

    let latencies = pod_startup(&client, &args).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy_rss = server.rss_mib();
    let shims_pss = shim_pss(&data);
    let p = |q: f64| percentile(&latencies, q);
    println!("pod startup, {} pods created at once (image present), created -> Running seen by a watch:", args.pods);
    println!("  p50 {:>7.0} ms   p99 {:>7.0} ms   max {:>7.0} ms", p(0.50), p(0.99), p(1.0));
    println!("bare container start (sandbox + create + start), median of {}:", args.baseline_runs);
    println!("  tug runtime {:>7.1} ms", baseline_ours);
    match baseline_runc {
        Some(ms) => println!("  runc run -d {ms:>7.1} ms"),
        None => println!("  runc        (not installed)"),
    }
    println!("memory (RSS):");
    println!("  control plane alone, idle          {control_plane_rss:>7.1} MiB");
    println!(
        "  control plane + agent, idle        {idle_rss:>7.1} MiB  (agent share {:.1} MiB)",
        idle_rss - control_plane_rss
    );
    println!(
        "  control plane + agent, {} pods     {busy_rss:>7.1} MiB  (agent share {:.1} MiB)",
        args.pods,
        busy_rss - control_plane_rss
    );
    println!("  shims of {} pods, PSS all together {shims_pss:>7.1} MiB", args.pods);

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.delete_collection(
        &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
        &ListParams::default(),
    )
    .await?;
    let started = Instant::now();
    while !pods.list(&ListParams::default().limit(1)).await?.items.is_empty() {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("pods were not removed within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The API forgets pods deleted with grace 0 at once; the agent then stops and removes their
    // containers. Stopping the server before it is done would leave them running.
    let sandboxes = data.join("agent").join("runtime").join("sandboxes");
    let started = Instant::now();
    while std::fs::read_dir(&sandboxes).map(|d| d.count()).unwrap_or(0) > 0 {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the agent did not remove the pods' sandboxes within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
    Ok(())
}

async fn wait_node_ready(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        if let Some(node) = nodes.get_opt(name).await?
            && node.status.and_then(|s| s.conditions).is_some_and(|cs| {
                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                    && !cs.iter().any(|c| c.type_ != "Ready" && c.status == "True")
            })
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("node {name} did not become Ready without pressure within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the pods at once and returns each one's startup latency in milliseconds.
async fn pod_startup(client: &kube::Client, args: &PodsBenchArgs) -> anyhow::Result<Vec<f64>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut watch = pods.watch(&WatchParams::default().labels("bench=pods"), "0").await?.boxed();
    let mut created: BTreeMap<String, Instant> = BTreeMap::new();
    let names: Vec<String> = (0..args.pods).map(|i| format!("startup-{i}")).collect();
    let creates = futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let pods = pods.clone();
            let pod = pod(&name, &args.image);
            async move {
                let at = Instant::now();
                pods.create(&PostParams::default(), &pod).await.map(|_| (name, at))
            }
        })
        .buffer_unordered(args.pods.max(1))
        .try_collect::<Vec<_>>();
    let mut running: BTreeMap<String, Instant> = BTreeMap::new();
    let mut creates = Box::pin(creates);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut creates_done = false;
    while running.len() < args.pods {
        if Instant::now() > deadline {
            bail!("only {} of {} pods Running within 300 s", running.len(), args.pods);
        }
        tokio::select! {
            result = &mut creates, if !creates_done => {
                created.extend(result?);
                creates_done = true;
            }
            event = watch.next() => {
                let Some(event) = event else { bail!("the pod watch ended") };
                if let WatchEvent::Added(pod) | WatchEvent::Modified(pod) = event? {
                    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                    if phase == Some("Running") {
                        let name = pod.metadata.name.unwrap_or_default();
                        running.entry(name).or_insert_with(Instant::now);
                    }
                }
            }
        }
    }
    let mut latencies = Vec::new();
    for (name, at) in &running {
        let start = created.get(name).with_context(|| format!("no create time for {name}"))?;
        latencies.push(at.duration_since(*start).as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

fn pod(name: &str, image: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("bench".to_string(), "pods".to_string())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some(image.into()),
                image_pull_policy: Some("Never".into()),
                command: Some(vec!["sleep".into(), "3600".into()]),
                ..Default::default()
            }],
            termination_grace_period_seconds: Some(0),
            automount_service_account_token: Some(false),
            ..Default::default()
        }),
        status: None,
    }
}

fn sandbox_config(dir: &Path, name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: PodSandboxMetadata {
            name: name.into(),
            namespace: "bench".into(),
            uid: format!("bench-{name}"),
            attempt: 0,
        },
        hostname: name.into(),
        log_directory: dir.join("logs").join(name),
        dns_config: None,
        port_mappings: Vec::new(),
        labels: Default::default(),
        annotations: Default::default(),
        cgroup_parent: format!("/tugboat-bench/{name}"),
        namespace_options: Default::default(),
        sysctls: Default::default(),
        privileged: false,
    }
}

fn container_config(image: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: ContainerMetadata { name: "main".into(), attempt: 0 },
        image: image.into(),
        command: vec!["sleep".into(), "3600".into()],
        args: Vec::new(),
        working_dir: None,
        envs: Vec::new(),
        mounts: Vec::new(),
        labels: Default::default(),
        annotations: Default::default(),
        log_path: PathBuf::from("main/0.log"),
        stdin: false,
        stdin_once: false,
        tty: false,
        resources: Default::default(),
        security_context: Default::default(),
        stop_signal: None,
    }
}

/// The built-in runtime alone: median milliseconds of sandbox + create + start.
async fn bare_starts_ours(
    scratch: &Path,
    store: &tug_runtime::image::ImageStore,
    args: &PodsBenchArgs,
) -> anyhow::Result<f64> {
    let root = scratch.join("bare");
    let shim = tug_runtime::shim::client::ShimBinary(std::env::current_exe()?);
    let runtime = tug_runtime::builtin::BuiltinRuntime::new(root.join("runtime"), store.clone(), shim)?;
    let mut times = Vec::new();
    for i in 0..args.baseline_runs {
        let sandbox = sandbox_config(&root, &format!("bare-{i}"));
        let started = Instant::now();
        let id = runtime.run_pod_sandbox(&sandbox).await?;
        let container = runtime.create_container(&id, &container_config(&args.image), &sandbox).await?;
        runtime.start_container(&container).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        runtime.remove_pod_sandbox(&id).await?;
        let _ = tokio::task::spawn_blocking({
            let cgroup = sandbox.cgroup_parent.clone();
            move || tug_runtime::cgroups::remove(&cgroup)
        })
        .await;
    }
    let _ = tokio::task::spawn_blocking(|| tug_runtime::cgroups::remove("/tugboat-bench")).await;
    times.sort_by(f64::total_cmp);
    Ok(percentile(&times, 0.5))
}

/// `runc run -d` on a bundle made the same way (overlay rootfs, the same spec without the
/// sandbox's namespaces): median milliseconds, or `None` without runc.
async fn bare_starts_runc(
    scratch: &Path,
    store: &tug_runtime::image::ImageStore,
    args: &PodsBenchArgs,
) -> anyhow::Result<Option<f64>> {
    if std::process::Command::new("runc").arg("--version").output().is_err() {
        return Ok(None);
    }
    let dir = scratch.join("runc");
    std::fs::create_dir_all(&dir)?;
    let (_, image) = tug_runtime::builtin::find_image(store, &args.image)?.context("the image is not in the store")?;
    let image_config = store.image_config(&image)?;
    let rootfs = tug_runtime::rootfs::mount(&store.layer_paths(&image), &dir)?;
    let spec = tug_runtime::spec::build(
        &container_config(&args.image),
        &image_config,
        &rootfs,
        "/tugboat-bench/runc",
        &tug_runtime::spec::SandboxNamespaces::default(),
        &tug_runtime::spec::SandboxFiles::default(),
    )?;
    let mut spec = spec;
    // runc's own namespaces: a fresh set, as `runc run` would make for a lone container.
    if let Some(linux) = spec.linux_mut() {
        use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType};
        let kinds = [
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
        ];
        linux.set_namespaces(Some(
            kinds.iter().map(|k| LinuxNamespaceBuilder::default().typ(*k).build().unwrap()).collect(),
        ));
    }
    spec.save(dir.join("config.json"))?;
    let mut times = Vec::new();
    for i in 0..args.baseline_runs {
        let id = format!("tug-bench-{}-{i}", std::process::id());
        let started = Instant::now();
        let status = tokio::process::Command::new("runc")
            .args(["run", "-d", "--bundle"])
            .arg(&dir)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let _ = tokio::process::Command::new("runc").args(["delete", "-f", &id]).status().await;
        if !status.success() {
            tug_runtime::rootfs::unmount(&dir)?;
            bail!("runc run failed ({status})");
        }
    }
    tug_runtime::rootfs::unmount(&dir)?;
    let _ = tokio::task::spawn_blocking(|| tug_runtime::cgroups::remove("/tugboat-bench")).await;
    times.sort_by(f64::total_cmp);
    Ok(Some(percentile(&times, 0.5)))
}

/// The shims' memory in MiB: the proportional set size (shared pages of the binary counted
/// once across them) of every `tug shim` process whose command line names `data`.
fn shim_pss(data: &Path) -> f64 {
    let marker = data.to_string_lossy().into_owned();
    let mut total = 0.0;
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline);
        if text.contains("\0shim\0") && text.contains(&marker) {
            total += pss_mib(pid);
        }
    }
    total
}

/// A process's proportional set size in MiB, from /proc/PID/smaps_rollup; 0 when unreadable.
fn pss_mib(pid: u32) -> f64 {
    let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else { return 0.0 };
    let kib: u64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    kib as f64 / 1024.0
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

//! `tug bench network-join`: the time from a node joining a cluster to its pods being
//! reachable from every other node, beside the same pod start on a node already in it.
//!
//! A real multi-node cluster is built with the dev cluster's own code (`tug dev cluster`: one
//! network namespace per node on a shared bridge), on a subnet of its own so that it does not
//! collide with the tests' clusters. Every existing node runs a web pod (busybox `httpd` on
//! 8080). Then each run:
//!
//! - baseline: a web pod is created on node 0 (already Ready, already on the overlay); timed
//!   are "Running with an IP" and "answers TCP from every other node's namespace";
//! - join: a new node (a fresh index each run: cheaper than a new cluster, and every run is
//!   still a first join) gets its namespace and its image imported before the clock starts;
//!   t0 is the spawn of its `tug agent`, and its pod is created right then with `nodeName`
//!   set. Timed are: its Node Ready, its pod Running with an IP, that pod answering TCP from
//!   every other node's namespace, and every existing web pod answering from the new node's
//!   namespace.
//!
//! Reachability is probed from threads that entered a node's network namespace, with a TCP
//! connect every 10 ms. The cluster is taken down at the end, on failure too.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Node, Pod, PodSpec};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::wait::await_condition;
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::dev::cluster;
use crate::dev::hosts::{self, LinkNames};
use crate::dev::{LoadImageArgs, UpArgs};

/// Flags of `tug bench network-join`.
#[derive(Args, Debug)]
pub struct JoinBenchArgs {
    /// An image archive (OCI archive or `docker save` tar) holding a busybox image with `httpd`.
    #[arg(long)]
    pub image_archive: PathBuf,
    /// The image's name inside the archive.
    #[arg(long, default_value = "tugboat.test/busybox:1")]
    pub image: String,
    /// Nodes once the new one has joined: NODES-1 form the cluster first (at least 2, so that
    /// the baseline pod on node 0 has another node to be reached from).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(3..=20))]
    pub nodes: u32,
    /// Joins measured (each a new node), and baseline pod starts on node 0.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
    /// The dev cluster's node network. Not the dev cluster's default (tests use it).
    #[arg(long, default_value = "172.30.10.0/24")]
    pub subnet: Ipv4Net,
    /// How long any one step (cluster up, a pod Running, a reach) may take.
    #[arg(long, default_value = "180s", value_parser = crate::server::parse_duration)]
    pub timeout: Duration,
}

/// The cluster's name: nodes are called `joinbench-<i>`.
const NAME: &str = "joinbench";
/// As in `tug dev cluster`: the dev cluster's API server port inside node 0's namespace.
const API_PORT: u16 = 6443;
/// As in `tug dev cluster`: development machines are often nearly full.
const EVICTION_HARD: &str = "memory.available<100Mi,nodefs.available<1%,imagefs.available<1%";
const WEB_PORT: u16 = 8080;
/// How often a reachability probe tries, and how long one try waits (paths here are kernel-local:
/// an answer takes well under a millisecond).
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// A node of the cluster as the benchmark knows it.
#[derive(Debug, Clone)]
struct BenchNode {
    name: String,
    netns: PathBuf,
}

/// A web pod that every node must reach.
#[derive(Debug, Clone)]
struct WebPod {
    name: String,
    ip: Ipv4Addr,
}

/// One run's timings, all from its t0.
#[derive(Debug, Clone, Copy)]
struct RunTimes {
    base_pod: Duration,
    base_reach: Duration,
    join_ready: Duration,
    join_pod: Duration,
    join_reach: Duration,
    join_back: Duration,
}

pub async fn run(args: JoinBenchArgs) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("the network-join benchmark creates network namespaces and nodes: run it as root");
    }
    super::header("network-join");
    let dir = std::env::temp_dir().join(format!("tug-bench-network-join-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    let mut agents: Vec<Child> = Vec::new();
    let measured = measure_all(&args, &dir, &mut agents).await;
    // `down` kills every process naming a node directory, the joined agents' included.
    let removed = cluster::down(&dir).await;
    for agent in &mut agents {
        let _ = agent.wait();
    }
    match &removed {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(error) => eprintln!("tug: removing the cluster in {} (left in place): {error:#}", dir.display()),
    }
    let times = measured?;
    removed?;
    print_table(&args, &times);
    Ok(())
}

async fn measure_all(args: &JoinBenchArgs, dir: &Path, agents: &mut Vec<Child>) -> anyhow::Result<Vec<RunTimes>> {
    let existing = args.nodes - 1;
    let started = Instant::now();
    cluster::up(UpArgs {
        nodes: existing,
        dir: dir.to_path_buf(),
        subnet: args.subnet,
        name: NAME.into(),
        wait: args.timeout,
        server_args: Vec::new(),
        agent_args: Vec::new(),
        container_runtime: crate::dev::DevRuntime::Builtin,
        sandbox_image: String::new(),
        cni_bin_dir: None,
    })
    .await?;
    cluster::load_image(LoadImageArgs {
        dir: dir.to_path_buf(),
        archive: args.image_archive.clone(),
        name: Some(args.image.clone()),
    })
    .await?;
    eprintln!("cluster of {existing} nodes up in {:.1} s", started.elapsed().as_secs_f64());

    let client = crate::client_from_kubeconfig(&dir.join("kubeconfig.yaml")).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes_api: Api<Node> = Api::all(client.clone());
    let mut nodes: Vec<BenchNode> = (0..existing)
        .map(|i| BenchNode { name: format!("{NAME}-{i}"), netns: node_dir(dir, i).join("netns") })
        .collect();

    // One web pod per existing node, reachable from every node: the state a join starts from.
    let mut webs = Vec::new();
    for node in &nodes {
        pods.create(&PostParams::default(), &web_pod(&format!("web-{}", node.name), &node.name, &args.image))
            .await
            .with_context(|| format!("creating the web pod on {}", node.name))?;
    }
    for node in &nodes {
        let name = format!("web-{}", node.name);
        let ip = running_ip(&pods, &name, args.timeout).await?;
        webs.push(WebPod { name, ip });
    }
    let deadline = Instant::now() + args.timeout;
    for node in &nodes {
        reach_all(&node.netns, &webs, Instant::now(), deadline).await?;
    }

    let names = LinkNames::for_dir(dir);
    let prefix = args.subnet.prefix_len();
    let gateway = nth(&args.subnet, 1);
    let server_url = format!("https://{}:{API_PORT}", nth(&args.subnet, 2));
    let token_file = node_dir(dir, 0).join("node-token");
    let token = std::fs::read_to_string(&token_file).with_context(|| format!("reading {}", token_file.display()))?;
    let switch = hosts::create_bridge(&names, gateway, prefix, &hosts::switch_pin(dir)).await?;
    let exe = std::env::current_exe().context("finding the tug binary")?;

    let mut times = Vec::new();
    for run in 0..args.runs {
        // Baseline: the same pod started on node 0, reached from every other node.
        let name = format!("base-{run}");
        let t0 = Instant::now();
        pods.create(&PostParams::default(), &web_pod(&name, &nodes[0].name, &args.image))
            .await
            .with_context(|| format!("creating {name}"))?;
        let ip = running_ip(&pods, &name, args.timeout).await?;
        let base_pod = t0.elapsed();
        let base_reach = reach_from_nodes(&nodes[1..], WebPod { name, ip }, t0, t0 + args.timeout).await?;

        // The join.
        let index = existing + run;
        let node = BenchNode { name: format!("{NAME}-{index}"), netns: node_dir(dir, index).join("netns") };
        let data_dir = node_dir(dir, index);
        std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let node_ip = nth(&args.subnet, 2 + index);
        hosts::create_netns(&node.netns)?;
        hosts::attach_node(&names, &switch, index, &node.netns, node_ip, prefix, gateway).await?;
        import_image(&data_dir, &args.image_archive, &args.image).await?;
        let mut agent = Command::new(&exe);
        agent
            .args(["agent", "--server", &server_url, "--token", token.trim(), "--data-dir"])
            .arg(&data_dir)
            .args(["--node-name", &node.name, "--node-ip", &node_ip.to_string()])
            .args(["--eviction-hard", EVICTION_HARD]);
        let pod_name = format!("web-{}", node.name);
        let t0 = Instant::now();
        agents.push(hosts::spawn_in(&node.netns, agent, &data_dir.join("tug.log"))?);
        pods.create(&PostParams::default(), &web_pod(&pod_name, &node.name, &args.image))
            .await
            .with_context(|| format!("creating {pod_name}"))?;
        let deadline = t0 + args.timeout;

        let ready = async {
            let waited = tokio::time::timeout(args.timeout, await_condition(nodes_api.clone(), &node.name, is_ready));
            waited.await.map_err(|_| anyhow!("node {} was not Ready within {:?}", node.name, args.timeout))??;
            anyhow::Ok(t0.elapsed())
        };
        let pod_and_reach = async {
            let ip = running_ip(&pods, &pod_name, args.timeout).await?;
            let join_pod = t0.elapsed();
            let reach = reach_from_nodes(&nodes, WebPod { name: pod_name.clone(), ip }, t0, deadline).await?;
            anyhow::Ok((join_pod, reach, ip))
        };
        let back = reach_all(&node.netns, &webs, t0, deadline);
        let joined = async { tokio::try_join!(ready, pod_and_reach, back) };
        let (join_ready, (join_pod, join_reach, ip), join_back) = match joined.await {
            Ok(joined) => joined,
            Err(error) => {
                let log = data_dir.join("tug.log");
                return Err(error.context(format!("joining {} (its log: {})", node.name, log.display())));
            }
        };
        eprintln!(
            "run {run}: node {} ready {:.0} ms, pod {:.0} ms, reached {:.0} ms, reaches {:.0} ms",
            node.name,
            ms(join_ready),
            ms(join_pod),
            ms(join_reach),
            ms(join_back)
        );
        times.push(RunTimes { base_pod, base_reach, join_ready, join_pod, join_reach, join_back });
        webs.push(WebPod { name: pod_name, ip });
        nodes.push(node);
    }
    Ok(times)
}

fn node_dir(dir: &Path, i: u32) -> PathBuf {
    dir.join("nodes").join(i.to_string())
}

/// The `k`th address of `subnet` (the dev cluster's numbering: the bridge 1, node i 2+i).
fn nth(subnet: &Ipv4Net, k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + k)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Imports the image into a node's store before its agent starts, so that no pull is timed.
async fn import_image(data_dir: &Path, archive: &Path, image: &str) -> anyhow::Result<()> {
    let (data_dir, archive, image) = (data_dir.to_path_buf(), archive.to_path_buf(), image.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let store = tug_runtime::image::ImageStore::open_in_data_dir(&data_dir)
            .with_context(|| format!("opening the image store of {}", data_dir.display()))?;
        tug_runtime::image::import_path(&store, &archive, Some(&image))
            .with_context(|| format!("importing {} into {}", archive.display(), data_dir.display()))?;
        Ok(())
    })
    .await
    .context("the import task")?
}

/// A pod on `node` (bypassing the scheduler, as upstream's node e2e tests do) serving HTTP on
/// 8080 from its own network namespace.
fn web_pod(name: &str, node: &str, image: &str) -> Pod {
    Pod {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            termination_grace_period_seconds: Some(0),
            containers: vec![Container {
                name: "web".into(),
                image: Some(image.into()),
                image_pull_policy: Some("Never".into()),
                command: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    // busybox httpd exits when its home directory is missing.
                    format!("mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p {WEB_PORT} -h /www"),
                ]),
                ports: Some(vec![ContainerPort { container_port: WEB_PORT.into(), ..Default::default() }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn is_ready(node: Option<&Node>) -> bool {
    node.and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: Option<&Pod>) -> Option<Ipv4Addr> {
    let status = pod?.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    status.pod_ip.as_deref()?.parse().ok()
}

/// Waits (on a watch) until pod `name` is Running with an IP, and returns the IP.
async fn running_ip(pods: &Api<Pod>, name: &str, timeout: Duration) -> anyhow::Result<Ipv4Addr> {
    let waited =
        tokio::time::timeout(timeout, await_condition(pods.clone(), name, |p: Option<&Pod>| pod_ip(p).is_some()));
    let pod = waited.await.map_err(|_| anyhow!("pod {name} was not Running with an IP within {timeout:?}"))??;
    pod_ip(pod.as_ref()).ok_or_else(|| anyhow!("pod {name} is gone"))
}

/// The time from `t0` until `pod` answered TCP from every one of `nodes` (the slowest).
async fn reach_from_nodes(
    nodes: &[BenchNode],
    pod: WebPod,
    t0: Instant,
    deadline: Instant,
) -> anyhow::Result<Duration> {
    let probes: Vec<_> = nodes.iter().map(|n| probe(n.netns.clone(), pod.clone(), t0, deadline)).collect();
    let mut slowest = Duration::ZERO;
    for (node, probe) in nodes.iter().zip(probes) {
        let took = join_probe(probe?).await.with_context(|| format!("from node {}", node.name))?;
        slowest = slowest.max(took);
    }
    Ok(slowest)
}

/// The time from `t0` until every one of `pods` answered TCP from namespace `netns`.
async fn reach_all(netns: &Path, pods: &[WebPod], t0: Instant, deadline: Instant) -> anyhow::Result<Duration> {
    let probes: Vec<_> = pods.iter().map(|p| probe(netns.to_path_buf(), p.clone(), t0, deadline)).collect();
    let mut slowest = Duration::ZERO;
    for probe in probes {
        slowest = slowest.max(join_probe(probe?).await?);
    }
    Ok(slowest)
}

type Probe = std::thread::JoinHandle<anyhow::Result<Duration>>;

async fn join_probe(probe: Probe) -> anyhow::Result<Duration> {
    tokio::task::spawn_blocking(move || probe.join().map_err(|_| anyhow!("a probe thread panicked"))?)
        .await
        .context("the probe task")?
}

/// Starts a thread that enters `netns` and connects to `pod` on 8080 every 10 ms until it
/// succeeds (the time since `t0`) or `deadline` passes.
fn probe(netns: PathBuf, pod: WebPod, t0: Instant, deadline: Instant) -> anyhow::Result<Probe> {
    std::thread::Builder::new()
        .name("join-probe".into())
        .spawn(move || {
            let file = std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
            move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                .with_context(|| format!("entering {}", netns.display()))?;
            let address = SocketAddr::from((pod.ip, WEB_PORT));
            loop {
                let attempt = Instant::now();
                // A SYN the path drops is sent again only after a second: a fresh connect every
                // 10 ms is what gives the probe its resolution.
                match TcpStream::connect_timeout(&address, PROBE_EVERY) {
                    Ok(_) => return Ok(t0.elapsed()),
                    Err(error) if Instant::now() >= deadline => {
                        bail!("pod {} ({address}) did not answer: {error}", pod.name)
                    }
                    Err(_) => std::thread::sleep(PROBE_EVERY.saturating_sub(attempt.elapsed())),
                }
            }
        })
        .context("starting a probe thread")
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2 }
}

fn print_table(args: &JoinBenchArgs, times: &[RunTimes]) {
    println!(
        "node join to pod reachability, {} nodes after the join ({} before), {} runs; every time from t0 \
         (pod created; for a join, also the new node's `tug agent` spawned)",
        args.nodes,
        args.nodes - 1,
        times.len()
    );
    println!();
    println!(
        "| run | existing node: pod Running | existing node: pod reached from all | join: Node Ready \
         | join: pod Running | join: pod reached from all | join: new node reaches all pods |"
    );
    println!("|---|---|---|---|---|---|---|");
    let row = |label: &str, t: &RunTimes| {
        println!(
            "| {label} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
            ms(t.base_pod),
            ms(t.base_reach),
            ms(t.join_ready),
            ms(t.join_pod),
            ms(t.join_reach),
            ms(t.join_back)
        );
    };
    for (i, t) in times.iter().enumerate() {
        row(&i.to_string(), t);
    }
    let of = |f: fn(&RunTimes) -> Duration| median(times.iter().map(f).collect());
    let medians = RunTimes {
        base_pod: of(|t| t.base_pod),
        base_reach: of(|t| t.base_reach),
        join_ready: of(|t| t.join_ready),
        join_pod: of(|t| t.join_pod),
        join_reach: of(|t| t.join_reach),
        join_back: of(|t| t.join_back),
    };
    row("**median**", &medians);
    println!();
    println!(
        "joining adds (median): {:.0} ms to pod Running, {:.0} ms to reachable from every node",
        ms(medians.join_pod) - ms(medians.base_pod),
        ms(medians.join_reach) - ms(medians.base_reach)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
        assert_eq!(median(ms(&[30, 10, 20])), Duration::from_millis(20));
        assert_eq!(median(ms(&[40, 10, 20, 30])), Duration::from_millis(25));
    }

    #[test]
    fn nodes_are_numbered_as_the_dev_cluster_numbers_them() {
        let subnet: Ipv4Net = "172.30.10.0/24".parse().unwrap();
        assert_eq!(nth(&subnet, 1), Ipv4Addr::new(172, 30, 10, 1));
        assert_eq!(nth(&subnet, 2 + 3), Ipv4Addr::new(172, 30, 10, 5));
    }

    #[test]
    fn only_a_running_pod_with_an_address_counts() {
        use k8s_openapi::api::core::v1::PodStatus;
        let pod = |phase: &str, ip: Option<&str>| Pod {
            status: Some(PodStatus { phase: Some(phase.into()), pod_ip: ip.map(Into::into), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(pod_ip(Some(&pod("Running", Some("10.42.1.5")))), Some(Ipv4Addr::new(10, 42, 1, 5)));
        assert_eq!(pod_ip(Some(&pod("Pending", Some("10.42.1.5")))), None);
        assert_eq!(pod_ip(Some(&pod("Running", None))), None);
        assert_eq!(pod_ip(None), None);
    }
}

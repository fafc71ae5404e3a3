//! `tug bench network`: the pod network's datapath, measured against a bare veth pair.
//!
//! Everything happens in network namespaces the benchmark creates (and removes): two "nodes"
//! joined by a veth pair as if by a wire, each set up by the node agent's own code (the
//! bridge network with its IPAM and nftables rules, and the VXLAN overlay configured from
//! Node objects carrying each other's flannel annotations), with pod namespaces attached as
//! the runtime attaches sandboxes. TCP throughput and 1-byte round-trip latency are measured
//! between threads placed in those namespaces, for:
//!
//! - the baseline: two plain namespaces joined by one veth pair;
//! - two pods on one node (veth, bridge, veth);
//! - two pods on two nodes (veth, bridge, VXLAN over the wire, bridge, veth).
//!
//! It also times the overlay's convergence: from handing each node the other's Node object to
//! the first TCP connection between their pods.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use kube::api::ObjectMeta;
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use tug_network::bridge::BridgeConfig;
use tug_network::overlay::{self, Backend, Overlay};
use tug_network::{AttachRequest, BridgeNetwork, PodNetwork, link, netns};

use crate::dev::hosts::create_netns;

#[derive(Args, Debug)]
pub struct NetworkBenchArgs {
    /// MiB sent for each throughput measurement.
    #[arg(long, default_value_t = 512)]
    pub mib: u64,
    /// Round trips for each latency measurement.
    #[arg(long, default_value_t = 5000)]
    pub round_trips: u32,
}

/// The namespaces of the run, pinned under a scratch directory and removed at the end.
struct Lab {
    pins: Vec<PathBuf>,
    // Declared last: dropped (removed) after the pins are unmounted.
    dir: super::Scratch,
}

impl Lab {
    fn netns(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        let pin = self.dir.0.join(name);
        create_netns(&pin)?;
        self.pins.push(pin.clone());
        Ok(pin)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Unpinning a namespace with no process in it frees it, and its links with it.
        for pin in &self.pins {
            let _ = rustix::mount::unmount(pin, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

pub async fn run(args: NetworkBenchArgs) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("the network benchmark creates network namespaces: run it as root");
    }
    let mut lab = Lab { pins: Vec::new(), dir: super::Scratch::new("network")? };
    let bytes = args.mib << 20;

    // Baseline: a bare veth pair between two namespaces.
    let (a, b) = (lab.netns("plain-a")?, lab.netns("plain-b")?);
    wire(&a, &b, "10.250.0.1".parse()?, "10.250.0.2".parse()?).await?;
    let baseline = measure(&a, &b, "10.250.0.2".parse()?, bytes, args.round_trips)?;

    // Two nodes on a wire, each with the agent's pod network.
    let (n1, n2) = (lab.netns("node-1")?, lab.netns("node-2")?);
    let (ip1, ip2): (Ipv4Addr, Ipv4Addr) = ("172.31.250.1".parse()?, "172.31.250.2".parse()?);
    wire(&n1, &n2, ip1, ip2).await?;
    let (p1, p2, p3) = (lab.netns("pod-1")?, lab.netns("pod-2")?, lab.netns("pod-3")?);
    let state = lab.dir.0.clone();
    let subnet1: Ipv4Net = "10.42.0.0/24".parse()?;
    let subnet2: Ipv4Net = "10.42.1.0/24".parse()?;
    let (node1, pods1) = node_with_pods(&n1, ip1, subnet1, state.join("state-1"), &[&p1, &p2]).await?;
    let (node2, pods2) = node_with_pods(&n2, ip2, subnet2, state.join("state-2"), &[&p3]).await?;

    let same_node = measure(&p1, &p2, pods1[1], bytes, args.round_trips)?;

    let converge_started = Instant::now();
    join_overlay(&n1, ip1, subnet1, node2.clone()).await?;
    join_overlay(&n2, ip2, subnet2, node1.clone()).await?;
    first_connection(&p1, &p3, pods2[0])?;
    let convergence = converge_started.elapsed();
    let across = measure(&p1, &p3, pods2[0], bytes, args.round_trips)?;

    println!(
        "pod network datapath, {} MiB per throughput run, {} round trips per latency run",
        args.mib, args.round_trips
    );
    println!("| path | throughput | vs veth | RTT p50 | RTT p99 |");
    println!("|---|---|---|---|---|");
    for (name, m) in [
        ("veth pair between two namespaces (baseline)", &baseline),
        ("pod to pod, same node (veth, bridge, veth)", &same_node),
        ("pod to pod, across nodes (VXLAN overlay)", &across),
    ] {
        println!(
            "| {name} | {:.2} Gbit/s | {:.0}% | {:.1} µs | {:.1} µs |",
            m.gbits,
            100.0 * m.gbits / baseline.gbits,
            m.rtt_p50_us,
            m.rtt_p99_us
        );
    }
    println!(
        "overlay convergence (both nodes given the other's Node, to the first pod-to-pod TCP connection): {:.1} ms",
        convergence.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Joins namespaces `a` and `b` with a veth pair (`eth0` on both sides) addressed `ip_a`/`ip_b` /24.
async fn wire(a: &Path, b: &Path, ip_a: Ipv4Addr, ip_b: Ipv4Addr) -> anyhow::Result<()> {
    let b_file = std::fs::File::open(b)?;
    let b_fd = std::os::fd::AsRawFd::as_raw_fd(&b_file);
    netns::run_in(a, move |handle| async move {
        handle.link().add(rtnetlink::LinkVeth::new("wire-a", "wire-b").build()).execute().await?;
        link::move_to_netns(&handle, "wire-b", b_fd).await?;
        link::configure_pod_interface(&handle, "wire-a", "eth0", ip_a, 24, ip_b).await?;
        anyhow::Ok(())
    })
    .await??;
    drop(b_file);
    netns::run_in(b, move |handle| async move {
        link::configure_pod_interface(&handle, "wire-b", "eth0", ip_b, 24, ip_a).await
    })
    .await??;
    Ok(())
}

/// Runs `work` on a thread inside namespace `ns` with a runtime of its own, so that netlink
/// sockets, sysctls and `nft` processes it makes all belong to that namespace.
fn inside<F, Fut, T>(ns: &Path, work: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns)?;
        move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(work())
    })
    .join()
    .map_err(|_| anyhow!("a namespace thread panicked"))?
}

/// Sets up node `ns`'s bridge network for `subnet` and attaches `pods` to it, as the agent and
/// runtime do. Returns the node as the API would show it (podCIDR and flannel annotations)
/// and the pods' addresses.
async fn node_with_pods(
    ns: &Path,
    node_ip: Ipv4Addr,
    subnet: Ipv4Net,
    state_dir: PathBuf,
    pods: &[&Path],
) -> anyhow::Result<(Node, Vec<Ipv4Addr>)> {
    let pods: Vec<PathBuf> = pods.iter().map(|p| p.to_path_buf()).collect();
    inside(ns, move || async move {
        let config =
            BridgeConfig { bridge: "cni0".into(), state_dir, node_ip, overlay_overhead: Backend::Vxlan.overhead() };
        let network = BridgeNetwork::new(config)?;
        network.set_subnet(subnet).await?;
        let overlay = Overlay::new(Backend::Vxlan, node_ip, network.netlink());
        let annotations = overlay.setup(subnet).await?;
        let mut ips = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let request = AttachRequest {
                sandbox_id: format!("bench-{node_ip}-{i}"),
                netns: pod.clone(),
                pod_namespace: "bench".into(),
                pod_name: format!("pod-{i}"),
                host_ports: Vec::new(),
            };
            let attachment = network.attach(&request).await?;
            match attachment.ips.first() {
                Some(std::net::IpAddr::V4(ip)) => ips.push(*ip),
                other => bail!("attach gave no IPv4 address: {other:?}"),
            }
        }
        let node = Node {
            metadata: ObjectMeta {
                name: Some(format!("node-{node_ip}")),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(subnet.to_string()),
                pod_cidrs: Some(vec![subnet.to_string()]),
                ..Default::default()
            }),
            status: None,
        };
        Ok((node, ips))
    })
}

/// Gives node `ns` the other node, as the subnet watcher does when that Node appears.
async fn join_overlay(ns: &Path, node_ip: Ipv4Addr, subnet: Ipv4Net, other: Node) -> anyhow::Result<()> {
    inside(ns, move || async move {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let overlay = Overlay::new(Backend::Vxlan, node_ip, handle);
        overlay.setup(subnet).await?;
        let peer = overlay::peer_of(&other, Backend::Vxlan).context("the other node publishes no VTEP")?;
        overlay.sync(&[peer]).await?;
        Ok(())
    })
}

/// What one path measured.
struct Measured {
    gbits: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
}

const PORT: u16 = 5201;

/// Runs `serve` on a thread inside `ns` listening on `ip:PORT`; returns once it listens.
fn server_in(
    ns: &Path,
    ip: Ipv4Addr,
    serve: fn(TcpStream) -> std::io::Result<()>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let ns = ns.to_path_buf();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || -> anyhow::Result<()> {
        let file = std::fs::File::open(&ns)?;
        move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))?;
        let listener = TcpListener::bind(SocketAddr::from((ip, PORT)));
        let listener = match listener {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return Ok(());
            }
        };
        let (stream, _) = listener.accept()?;
        serve(stream)?;
        Ok(())
    });
    ready_rx.recv().context("the server thread ended")?.map_err(|e| anyhow!("listening on {ip}:{PORT}: {e}"))?;
    Ok(handle)
}

/// Runs `work` on a thread inside `ns`.
fn client_in<T: Send + 'static>(
    ns: &Path,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns)?;
        move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))?;
        work()
    })
    .join()
    .map_err(|_| anyhow!("a client thread panicked"))?
}

fn sink(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    while stream.read(&mut buf)? > 0 {}
    stream.write_all(b"k")
}

fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut byte = [0u8; 1];
    while stream.read(&mut byte)? == 1 {
        stream.write_all(&byte)?;
    }
    Ok(())
}

/// Waits until a TCP connection from `from` to `to_ip` succeeds (the overlay has converged).
fn first_connection(from: &Path, to: &Path, to_ip: Ipv4Addr) -> anyhow::Result<()> {
    let server = server_in(to, to_ip, |_| Ok(()))?;
    client_in(from, move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect_timeout(&SocketAddr::from((to_ip, PORT)), Duration::from_millis(200)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => bail!("no connection to {to_ip} across the overlay: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    })?;
    server.join().map_err(|_| anyhow!("server panicked"))?
}

fn measure(from: &Path, to: &Path, to_ip: Ipv4Addr, bytes: u64, round_trips: u32) -> anyhow::Result<Measured> {
    let address = SocketAddr::from((to_ip, PORT));
    let server = server_in(to, to_ip, sink)?;
    let elapsed = client_in(from, move || {
        let mut stream = TcpStream::connect(address)?;
        let chunk = vec![0x5au8; 1 << 16];
        let started = Instant::now();
        let mut sent = 0;
        while sent < bytes {
            stream.write_all(&chunk)?;
            sent += chunk.len() as u64;
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut ack = [0u8; 1];
        stream.read_exact(&mut ack)?;
        Ok(started.elapsed())
    })?;
    server.join().map_err(|_| anyhow!("server panicked"))??;
    let gbits = (bytes * 8) as f64 / elapsed.as_secs_f64() / 1e9;

    let server = server_in(to, to_ip, echo)?;
    let mut rtts = client_in(from, move || {
        let mut stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        let mut rtts = Vec::with_capacity(round_trips as usize);
        let mut byte = [7u8; 1];
        for _ in 0..round_trips {
            let started = Instant::now();
            stream.write_all(&byte)?;
            stream.read_exact(&mut byte)?;
            rtts.push(started.elapsed().as_secs_f64() * 1e6);
        }
        Ok(rtts)
    })?;
    server.join().map_err(|_| anyhow!("server panicked"))??;
    rtts.sort_by(f64::total_cmp);
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
    Ok(Measured { gbits, rtt_p50_us: at(0.5), rtt_p99_us: at(0.99) })
}

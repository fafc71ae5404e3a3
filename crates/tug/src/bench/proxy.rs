//! `tug bench proxy`: the service proxy's rule sync at scale, in a private network namespace.
//!
//! Everything runs inside a network namespace the benchmark creates (and removes), so the
//! machine's own nftables ruleset is never touched: a real `tug server --disable-agent`
//! (started from a thread inside the namespace, so it listens on that namespace's loopback),
//! the proxy's own `run()` on a current-thread runtime of its own, and every `nft` command.
//! For each size in `--services` it creates Services with one hand-made EndpointSlice each
//! (timed separately), then measures:
//!
//! - one full sync: rendering the table from the API's objects with the proxy's own functions,
//!   and applying it with `nft -f` (what each proxy sync costs at that size);
//! - change to rule: one EndpointSlice gains an address; the time from sending that update
//!   until `nft list chain` of that service's chain shows it (polled every 5 ms);
//! - the rule count: lines of `nft list table ip kube-proxy`.
//!
//! Optionally (`--connections`) the connection rate to a TCP listener through a ClusterIP,
//! beside connecting to the listener directly.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use tokio_util::sync::CancellationToken;

use super::{Scratch, ServerUnderTest};
use crate::dev::hosts::create_netns;

const NODE_NAME: &str = "bench-node";
const NAMESPACE: &str = "default";
/// The port the hand-made endpoints listen on.
const TARGET_PORT: i32 = 8080;

#[derive(Args, Debug)]
pub struct ProxyBenchArgs {
    /// Service counts to measure at, in increasing order (services are added between sizes).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1000usize, 10000])]
    pub services: Vec<usize>,
    /// EndpointSlice changes timed at each size.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Seconds the changes of one size may take: fewer are timed when each is slow (at
    /// 10,000 services one `nft -f` takes minutes on a small machine).
    #[arg(long, default_value_t = 180)]
    pub change_budget: u64,
    /// Concurrent API requests when creating the services and slices.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Also measure TCP connections per second through a ClusterIP against a direct connection.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub connections: bool,
}

/// The namespace of the run, pinned in the scratch directory, unpinned (and so freed, with its
/// table) when dropped.
struct Lab {
    pin: Option<PathBuf>,
    // Declared last: removed after the pin is unmounted.
    dir: Scratch,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(pin) = &self.pin {
            let _ = rustix::mount::unmount(pin, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// One size's results.
struct Row {
    services: usize,
    create: Duration,
    converge: Duration,
    render: Duration,
    apply: Duration,
    changes: usize,
    change_p50: Duration,
    change_p99: Duration,
    poll_cost: Duration,
    rule_lines: usize,
}

pub async fn run(args: ProxyBenchArgs) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("the proxy benchmark creates a network namespace and nftables rules in it: run it as root");
    }
    if args.services.is_empty() || args.services.windows(2).any(|w| w[0] >= w[1]) || args.services[0] == 0 {
        bail!("--services must be increasing counts above 0");
    }
    super::header("proxy");
    let mut lab = Lab { pin: None, dir: Scratch::new("proxy")? };
    let pin = lab.dir.0.join("netns");
    create_netns(&pin)?;
    lab.pin = Some(pin.clone());
    let dir = lab.dir.0.clone();
    let ns = pin.clone();
    // A thread inside the namespace; the runtime's workers, the server it starts and the
    // proxy's thread are all created from it and so inherit the namespace.
    let outcome = std::thread::spawn(move || -> anyhow::Result<(Vec<Row>, Option<Connections>)> {
        let file = std::fs::File::open(&ns)?;
        move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
            .context("entering the benchmark's network namespace")?;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(inside(args, dir))
    })
    .join()
    .map_err(|_| anyhow!("the namespace thread panicked"))?;
    drop(lab);
    let (rows, connections) = outcome?;

    println!("service proxy (nftables), one endpoint per service, in a private network namespace");
    println!(
        "| services | create svc+slice via API | proxy converged after | full sync: render | full sync: nft -f | changes timed | change→rule p50 | change→rule p99 | rule lines |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    for r in &rows {
        println!(
            "| {} | {:.1} s | {} | {} | {} | {} | {} | {} | {} |",
            r.services,
            r.create.as_secs_f64(),
            ms(r.converge),
            ms(r.render),
            ms(r.apply),
            r.changes,
            ms(r.change_p50),
            ms(r.change_p99),
            r.rule_lines
        );
    }
    println!();
    for r in &rows {
        println!(
            "at {} services one poll (`nft list chain`) takes {}: the change→rule figures include up to that much",
            r.services,
            ms(r.poll_cost)
        );
    }
    if let Some(c) = connections {
        println!();
        println!("TCP connections (connect, 1-byte request and reply, close) from the namespace, {} each", c.count);
        println!("| path | connections/s | vs direct |");
        println!("|---|---|---|");
        println!("| direct to the endpoint (baseline) | {:.0}/s | 100% |", c.direct);
        println!(
            "| through the ClusterIP (nftables DNAT, {} services) | {:.0}/s | {:.0}% |",
            c.services,
            c.cluster_ip,
            100.0 * c.cluster_ip / c.direct
        );
    }
    Ok(())
}

async fn inside(args: ProxyBenchArgs, dir: PathBuf) -> anyhow::Result<(Vec<Row>, Option<Connections>)> {
    loopback_up().await?;
    let server = ServerUnderTest::start(&dir, &["--disable", "coredns"]).await?;
    let client = server.client.clone();

    // The proxy on a current-thread runtime of its own, as it would run beside a small node agent.
    let stop = CancellationToken::new();
    let kubeconfig = server.kubeconfig.clone();
    let proxy_stop = stop.clone();
    let proxy = std::thread::Builder::new().name("bench-proxy".into()).spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let client = crate::client_from_kubeconfig(&kubeconfig).await?;
            let config = tug_proxy::Config {
                node_name: NODE_NAME.into(),
                node_ip: Ipv4Addr::LOCALHOST.into(),
                metrics_bind: None,
                healthz_bind: None,
                mode: tug_proxy::Mode::Nftables,
            };
            tug_proxy::run(client, config, proxy_stop).await;
            anyhow::Ok(())
        })
    })?;

    let result = measure_all(&args, &client).await;
    stop.cancel();
    let _ = proxy.join();
    server.stop().await;
    result
}

async fn measure_all(args: &ProxyBenchArgs, client: &kube::Client) -> anyhow::Result<(Vec<Row>, Option<Connections>)> {
    let mut rows = Vec::new();
    let mut connections = None;
    let mut have = 0;
    for &size in &args.services {
        let started = Instant::now();
        create_range(client, have, size, args.concurrency).await?;
        let create = started.elapsed();
        have = size;
        // Converged when the last service's chain holds its endpoint.
        let last = size - 1;
        wait_for_chain(last, &endpoint_ip(last).to_string(), Duration::from_secs(600)).await?;
        let converge = started.elapsed() - create;
        tracing::info!(services = size, ?create, ?converge, "services created and programmed");

        let (render, apply) = full_sync(client).await?;
        let budget = Duration::from_secs(args.change_budget);
        let (timed, change_p50, change_p99, poll_cost) = changes(client, size, args.changes, budget).await?;
        let table = nft(&["list", "table", "ip", tug_proxy::nftables::TABLE]).await?;
        rows.push(Row {
            services: size,
            create,
            converge,
            render,
            apply,
            changes: timed,
            change_p50,
            change_p99,
            poll_cost,
            rule_lines: table.lines().count(),
        });
        if args.connections && connections.is_none() {
            // At the first size: the datapath's per-connection cost barely depends on the count
            // (verdict maps are hashed), and one measurement keeps the run short.
            connections = Some(connection_rate(client, size).await?);
        }
    }
    Ok((rows, connections))
}

/// Brings up the namespace's loopback (a new namespace has it down): the server listens there.
async fn loopback_up() -> anyhow::Result<()> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(connection);
    let lo = tug_network::link::index_of(&handle, "lo").await?.context("no loopback in the namespace")?;
    handle.link().set(rtnetlink::LinkUnspec::new_with_index(lo).up().build()).execute().await?;
    Ok(())
}

fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

/// Service `i`'s one endpoint: 10.200.0.1 onwards (never routed: only the rules are measured).
fn endpoint_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 1)) + i as u32)
}

/// The chain of service `i`'s port, as the proxy names it.
fn service_chain(i: usize) -> String {
    format!("service-{NAMESPACE}/{}/tcp/80", service_name(i))
}

fn service(name: String) -> Service {
    Service {
        metadata: ObjectMeta { name: Some(name), ..Default::default() },
        // No selector: the EndpointSlice controller leaves the hand-made slices alone.
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port: 80,
                protocol: Some("TCP".into()),
                target_port: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(TARGET_PORT)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn endpoints(ips: &[Ipv4Addr]) -> Vec<Endpoint> {
    ips.iter()
        .map(|ip| Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            node_name: Some(NODE_NAME.into()),
            ..Default::default()
        })
        .collect()
}

fn slice(service: &str, ips: &[Ipv4Addr]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service}-bench")),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/service-name".into(), service.into()),
                ("endpointslice.kubernetes.io/managed-by".into(), "tug-bench".into()),
            ])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(endpoints(ips)),
        ports: Some(vec![EndpointPort { port: Some(TARGET_PORT), protocol: Some("TCP".into()), ..Default::default() }]),
    }
}

/// Creates services `from..to`, each with its slice, `concurrency` at a time.
async fn create_range(client: &kube::Client, from: usize, to: usize, concurrency: usize) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(from..to)
        .map(|i| {
            let (services, slices) = (services.clone(), slices.clone());
            async move {
                let name = service_name(i);
                services
                    .create(&PostParams::default(), &service(name.clone()))
                    .await
                    .with_context(|| format!("creating {name}"))?;
                slices
                    .create(&PostParams::default(), &slice(&name, &[endpoint_ip(i)]))
                    .await
                    .with_context(|| format!("creating the slice of {name}"))?;
                Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Runs `nft` in this namespace; its standard output.
async fn nft(args: &[&str]) -> anyhow::Result<String> {
    let program = ["/usr/sbin/nft", "/sbin/nft"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("nft");
    let output = tokio::process::Command::new(program).args(args).output().await.context("running nft")?;
    if !output.status.success() {
        bail!("nft {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether service `i`'s chain mentions `needle` (false while the chain does not exist).
async fn chain_has(i: usize, needle: &str) -> bool {
    nft(&["list", "chain", "ip", tug_proxy::nftables::TABLE, &service_chain(i)])
        .await
        .is_ok_and(|text| text.contains(&format!("__{needle}/")))
}

/// Polls every 5 ms until service `i`'s chain mentions `needle`.
async fn wait_for_chain(i: usize, needle: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !chain_has(i, needle).await {
        if Instant::now() > deadline {
            bail!("the rules of {} did not show {needle} within {within:?}", service_name(i));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// One full sync as the proxy does it: the table rendered from the API's objects with the
/// proxy's own functions, then applied with `nft -f`. The median of three of each.
async fn full_sync(client: &kube::Client) -> anyhow::Result<(Duration, Duration)> {
    let services = Api::<Service>::all(client.clone()).list(&ListParams::default()).await?.items;
    let slices = Api::<EndpointSlice>::all(client.clone()).list(&ListParams::default()).await?.items;
    let mut renders = Vec::new();
    let mut applies = Vec::new();
    for _ in 0..3 {
        // A slow apply is not repeated: one sample says enough, and the run stays bounded.
        if applies.first().is_some_and(|a: &Duration| *a > Duration::from_secs(10)) {
            break;
        }
        let started = Instant::now();
        let ruleset = tug_proxy::nftables::Ruleset {
            pod_bridge: tug_proxy::POD_BRIDGE.to_string(),
            service_ports: tug_proxy::serviceport::service_ports(NODE_NAME, &services, &slices),
        };
        let text = ruleset.render();
        renders.push(started.elapsed());
        let started = Instant::now();
        tug_proxy::nftables::apply(&ruleset, &text).await?;
        applies.push(started.elapsed());
    }
    renders.sort();
    applies.sort();
    Ok((renders[renders.len() / 2], applies[applies.len() / 2]))
}

/// Adds an address to `count` services' slices in turn, timing each until its rule shows it.
/// Returns p50, p99 and the cost of one poll.
async fn changes(
    client: &kube::Client,
    size: usize,
    count: usize,
    budget: Duration,
) -> anyhow::Result<(usize, Duration, Duration, Duration)> {
    let began = Instant::now();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let mut times = Vec::new();
    let mut polls = Vec::new();
    for k in 0..count.max(1) {
        if k > 0 && began.elapsed() > budget {
            break;
        }
        // Spread over the table; a fresh address each time (10.201.0.0/16).
        let i = (k * 7919 + size / 2) % size;
        let added = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 201, 0, 1)) + (size * 100 + k) as u32 % 65000);
        let name = service_name(i);
        let patch = serde_json::json!({ "endpoints": endpoints(&[endpoint_ip(i), added]) });
        let started = Instant::now();
        slices.patch(&format!("{name}-bench"), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let needle = added.to_string();
        loop {
            let poll = Instant::now();
            let seen = chain_has(i, &needle).await;
            polls.push(poll.elapsed());
            if seen {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("the rules of {name} did not show {added} within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(started.elapsed());
        // Back to one endpoint, so later sizes start from the same shape.
        let patch = serde_json::json!({ "endpoints": endpoints(&[endpoint_ip(i)]) });
        slices.patch(&format!("{name}-bench"), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        // And wait for that to be applied too: the next change must not queue behind its sync.
        let deadline = Instant::now() + Duration::from_secs(120);
        while chain_has(i, &needle).await {
            if Instant::now() > deadline {
                bail!("the rules of {name} still show {added} after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    times.sort();
    polls.sort();
    let at = |v: &[Duration], p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    Ok((times.len(), at(&times, 0.5), at(&times, 0.99), at(&polls, 0.5)))
}

struct Connections {
    services: usize,
    count: usize,
    direct: f64,
    cluster_ip: f64,
}

/// Connections per second to a listener on an address of the namespace's loopback, directly
/// and through a Service whose slice points at it (the output hook DNATs the latter).
async fn connection_rate(client: &kube::Client, services: usize) -> anyhow::Result<Connections> {
    const COUNT: usize = 3000;
    let backend = Ipv4Addr::new(10, 250, 0, 1);
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    // The backend's address on the loopback, and the namespace's default route through it: a
    // ClusterIP needs a route for connect() to get as far as the output hook's DNAT. (No dummy
    // link: this kernel may lack the module.)
    let lo = tug_network::link::index_of(&handle, "lo").await?.context("no loopback")?;
    tug_network::link::ensure_address(&handle, lo, backend, 32).await?;
    let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().output_interface(lo).build();
    handle.route().add(route).execute().await?;

    // The direct path gets an address of its own: its connections' conntrack and TIME_WAIT
    // entries then never clash with those of the ClusterIP path.
    let direct_ip = Ipv4Addr::new(10, 250, 0, 2);
    tug_network::link::ensure_address(&handle, lo, direct_ip, 32).await?;
    let server = listen_counting(backend)?;
    let direct_server = listen_counting(direct_ip)?;

    let name = "connections".to_string();
    let created = Api::<Service>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &service(name.clone()))
        .await?;
    Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &slice(&name, &[backend]))
        .await?;
    let cluster_ip: Ipv4Addr =
        created.spec.and_then(|s| s.cluster_ip).context("the service got no clusterIP")?.parse()?;
    let via = SocketAddr::from((cluster_ip, 80));
    let direct = SocketAddr::from((direct_ip, TARGET_PORT as u16));
    // Wait for the rule: a connection through the ClusterIP succeeds.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::task::spawn_blocking(move || connect_once(via, 1)).await?.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("no connection through {via} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = |target: SocketAddr| {
        tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
            let started = Instant::now();
            for _ in 0..COUNT {
                connect_once(target, 1)?;
            }
            Ok(COUNT as f64 / started.elapsed().as_secs_f64())
        })
    };
    let direct_rate = rate(direct).await??;
    let via_rate = rate(via).await??;
    let backend_address = SocketAddr::from((backend, TARGET_PORT as u16));
    for (listener, address, path) in [(server, backend_address, "the ClusterIP"), (direct_server, direct, "direct")] {
        tokio::task::spawn_blocking(move || connect_once(address, 0)).await??;
        let accepted = tokio::task::spawn_blocking(move || listener.join())
            .await?
            .map_err(|_| anyhow!("a listener thread panicked"))?;
        if accepted < COUNT {
            bail!("the listener behind {path} saw {accepted} connections of the {COUNT} made");
        }
    }
    Ok(Connections { services, count: COUNT, direct: direct_rate, cluster_ip: via_rate })
}

/// A thread answering one byte per connection on `ip:TARGET_PORT` until a connection sends
/// a 0 byte; returns how many it answered, so a connection that never reached it cannot pass
/// for one.
fn listen_counting(ip: Ipv4Addr) -> anyhow::Result<std::thread::JoinHandle<usize>> {
    let listener = TcpListener::bind(SocketAddr::from((ip, TARGET_PORT as u16)))?;
    Ok(std::thread::spawn(move || {
        let mut accepted = 0usize;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).is_err() || byte[0] == 0 {
                break;
            }
            // The reply paces the client (no backlog builds up, so no SYN is dropped); then
            // the client closes first, so TIME_WAIT stays on its side.
            let _ = std::io::Write::write_all(&mut stream, &byte);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.read(&mut byte);
            accepted += 1;
        }
        accepted
    }))
}

fn connect_once(target: SocketAddr, byte: u8) -> std::io::Result<()> {
    use std::io::Write;
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    stream.write_all(&[byte])?;
    if byte != 0 {
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut reply = [0u8; 1];
        stream.read_exact(&mut reply)?;
    }
    Ok(())
}

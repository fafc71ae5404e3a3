//! `tug bench dns`: the cluster DNS's query rate and latency over UDP, beside a trivial UDP
//! echo server measured with the same load generator in the same run.
//!
//! A real `tug server` serves the cluster DNS on a loopback port and forwards names outside
//! the cluster to a tiny responder run here (so nothing leaves the machine). After creating
//! `--services` Services, a load generator of `--threads` sockets, each keeping `--window`
//! queries in flight, measures for `--seconds` each:
//!
//! - cluster names: `svc-<i>.default.svc.cluster.local` A, cycling over the services;
//! - a forwarded name, answered from the cache after the first query;
//! - an NXDOMAIN inside the cluster domain;
//! - the baseline: a UDP echo server with the DNS server's loop shape (a tokio task per
//!   datagram), fed the same cluster-name queries.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;

use super::{Scratch, ServerUnderTest, free_port};

#[derive(Args, Debug)]
pub struct DnsBenchArgs {
    /// Services created (their names are queried in turn).
    #[arg(long, default_value_t = 100)]
    pub services: usize,
    /// Seconds of load for each kind of query.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Sockets (one thread each) of the load generator.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Queries each socket keeps in flight.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
}

/// What one load run measured.
struct Measured {
    answered: u64,
    lost: u64,
    elapsed: Duration,
    /// Every answer's latency, sorted.
    latencies: Vec<Duration>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let n = self.latencies.len();
        self.latencies[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
    }
}

pub async fn run(args: DnsBenchArgs) -> anyhow::Result<()> {
    if args.threads == 0 || args.window == 0 || args.services == 0 {
        bail!("--threads, --window and --services must be at least 1");
    }
    super::header("dns");
    let scratch = Scratch::new("dns")?;
    let stop = CancellationToken::new();
    let forwarded_count = Arc::new(AtomicU64::new(0));
    let upstream = spawn_upstream(stop.clone(), forwarded_count.clone())?;
    let dns_port = free_port()?;
    let dns: SocketAddr = (Ipv4Addr::LOCALHOST, dns_port).into();
    let metrics_port = free_port()?;
    let server = ServerUnderTest::start(
        &scratch.0,
        &[
            "--cluster-dns-bind",
            &dns.to_string(),
            "--cluster-dns-upstream",
            &upstream.to_string(),
            "--cluster-dns-metrics-bind",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    )
    .await?;

    let created = Instant::now();
    create_services(&server.client, args.services).await?;
    let last = format!("svc-{}.default.svc.cluster.local.", args.services - 1);
    wait_for_answer(dns, &last).await?;
    let ready = created.elapsed();

    let cluster_names: Vec<String> =
        (0..args.services).map(|i| format!("svc-{i}.default.svc.cluster.local.")).collect();
    let forwarded = vec!["example.org.".to_string()];
    let nxdomain = vec!["missing.default.svc.cluster.local.".to_string()];

    let echo = spawn_echo(stop.clone())?;
    let duration = Duration::from_secs(args.seconds);
    let (threads, window) = (args.threads, args.window);
    let load = move |target: SocketAddr, names: Vec<String>, expect: Expect| {
        tokio::task::spawn_blocking(move || generate(target, &names, expect, threads, window, duration))
    };
    // The baseline first and last: the machine's noise shows as their difference.
    let echo_before = load(echo, cluster_names.clone(), Expect::Echo).await??;
    let cluster = load(dns, cluster_names.clone(), Expect::Code(ResponseCode::NoError)).await??;
    let upstream_before = forwarded_count.load(Ordering::Relaxed);
    let cached = load(dns, forwarded, Expect::Code(ResponseCode::NoError)).await??;
    let upstream_queries = forwarded_count.load(Ordering::Relaxed) - upstream_before;
    let missing = load(dns, nxdomain, Expect::Code(ResponseCode::NXDomain)).await??;
    let echo_after = load(echo, cluster_names, Expect::Echo).await??;
    let server_rss = server.peak_rss_mib();
    stop.cancel();
    server.stop().await;

    println!(
        "cluster DNS over UDP on loopback, {} services, {} sockets x {} in flight, {} s per row",
        args.services, args.threads, args.window, args.seconds
    );
    println!("| queries | rate | vs echo | p50 | p99 | lost |");
    println!("|---|---|---|---|---|---|");
    let baseline = echo_before.rate().max(echo_after.rate());
    for (what, m) in [
        ("UDP echo, same loop shape (baseline, before)", &echo_before),
        ("cluster name: svc-<i>.default.svc.cluster.local A", &cluster),
        ("forwarded name, cached: example.org A", &cached),
        ("NXDOMAIN in the cluster domain", &missing),
        ("UDP echo, same loop shape (baseline, after)", &echo_after),
    ] {
        println!(
            "| {what} | {:.0}/s | {:.0}% | {:.0} µs | {:.0} µs | {} |",
            m.rate(),
            100.0 * m.rate() / baseline,
            m.pct(0.50).as_secs_f64() * 1e6,
            m.pct(0.99).as_secs_f64() * 1e6,
            m.lost
        );
    }
    println!();
    println!(
        "context: upstream CoreDNS answers about 33,000 cluster-name queries/s on 2 vCPUs; here the load \
         generator shares the same {} cores with the server",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "the forwarded-name row reached the upstream {upstream_queries} times for {} answers (the rest from the cache)",
        cached.answered
    );
    println!(
        "{} services created and the last one resolvable in {:.2} s; server peak RSS {:.0} MiB",
        args.services,
        ready.as_secs_f64(),
        server_rss
    );
    Ok(())
}

async fn create_services(client: &kube::Client, count: usize) -> anyhow::Result<()> {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &service(i)).await.with_context(|| format!("creating svc-{i}"))?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

fn service(i: usize) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(format!("svc-{i}")),
            labels: Some(BTreeMap::from([("bench".into(), "dns".into())])),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort { port: 80, protocol: Some("TCP".into()), ..Default::default() }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A query for `name` A, encoded, with id 0 (the generator writes each query's id in place).
fn encode_query(name: &str) -> anyhow::Result<Vec<u8>> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(m.to_vec()?)
}

/// Waits until the cluster DNS answers `name` (its view has caught up with the API).
async fn wait_for_answer(dns: SocketAddr, name: &str) -> anyhow::Result<()> {
    let query = encode_query(name)?;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    loop {
        if Instant::now() > deadline {
            bail!("the cluster DNS did not answer {name} within 60 s");
        }
        socket.send_to(&query, dns).await?;
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
            && let Ok(response) = Message::from_vec(&buf[..n])
            && response.metadata.response_code == ResponseCode::NoError
            && !response.answers.is_empty()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a reply must say to count as an answer.
#[derive(Clone, Copy)]
enum Expect {
    /// The same bytes back.
    Echo,
    /// A DNS response with this code (the RCODE in the low bits of byte 3).
    Code(ResponseCode),
}

/// Drives `target` from `threads` sockets, each keeping `window` queries (cycling over
/// `names`) in flight, for `duration`.
fn generate(
    target: SocketAddr,
    names: &[String],
    expect: Expect,
    threads: usize,
    window: usize,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let queries: Arc<Vec<Vec<u8>>> = Arc::new(names.iter().map(|n| encode_query(n)).collect::<Result<_, _>>()?);
    let code = match expect {
        Expect::Echo => None,
        Expect::Code(c) => Some(u16::from(c) as u8 & 0x0f),
    };
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let queries = queries.clone();
            std::thread::spawn(move || one_socket(target, &queries, code, t, window, started + duration))
        })
        .collect();
    let mut total = Measured { answered: 0, lost: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
    for h in handles {
        let m = h.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        total.answered += m.answered;
        total.lost += m.lost;
        total.latencies.extend(m.latencies);
    }
    total.elapsed = started.elapsed();
    total.latencies.sort();
    if total.answered == 0 {
        bail!("{target} answered no query");
    }
    Ok(total)
}

/// One socket of the generator: ids are slots of `sent` (each id's send time), so a late or
/// duplicate reply is recognised and ignored.
fn one_socket(
    target: SocketAddr,
    queries: &[Vec<u8>],
    code: Option<u8>,
    thread: usize,
    window: usize,
    until: Instant,
) -> anyhow::Result<Measured> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut sent: Vec<Option<Instant>> = vec![None; 1 << 16];
    let mut next_id: u16 = 0;
    let mut next_query = thread;
    let mut in_flight = 0usize;
    let mut m = Measured { answered: 0, lost: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
    let mut packet = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    let mut send = |sent: &mut Vec<Option<Instant>>| -> std::io::Result<()> {
        packet.clear();
        packet.extend_from_slice(&queries[next_query % queries.len()]);
        next_query += 1;
        packet[..2].copy_from_slice(&next_id.to_be_bytes());
        sent[next_id as usize] = Some(Instant::now());
        next_id = next_id.wrapping_add(1);
        socket.send(&packet).map(|_| ())
    };
    while Instant::now() < until {
        while in_flight < window {
            send(&mut sent)?;
            in_flight += 1;
        }
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                // Whatever is still in flight is taken as lost; start a fresh window.
                m.lost += in_flight as u64;
                in_flight = 0;
                sent.iter_mut().for_each(|s| *s = None);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if n < 12 {
            continue;
        }
        let id = u16::from_be_bytes([buf[0], buf[1]]);
        let Some(at) = sent[id as usize].take() else { continue };
        in_flight -= 1;
        let ok = match code {
            None => true,
            Some(code) => buf[2] & 0x80 != 0 && buf[3] & 0x0f == code,
        };
        if ok {
            m.answered += 1;
            m.latencies.push(at.elapsed());
        } else {
            m.lost += 1;
        }
    }
    Ok(m)
}

/// Runs `serve` on a runtime of its own (two workers, as a small server process would have),
/// on a thread, until `stop`.
fn spawn_server<F, Fut>(what: &'static str, stop: CancellationToken, serve: F) -> anyhow::Result<SocketAddr>
where
    F: FnOnce(tokio::net::UdpSocket, CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name(what.into()).spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(async move {
            let socket = match tokio::net::UdpSocket::bind("127.0.0.1:0").await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(socket.local_addr());
            serve(socket, stop).await;
        });
        Ok(())
    })?;
    Ok(rx.recv().context("the server thread ended")??)
}

/// The baseline: echoes each datagram from a task of its own, as the DNS server handles each
/// query on one.
fn spawn_echo(stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    spawn_server("bench-echo", stop, |socket, stop| async move {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                r = socket.recv_from(&mut buf) => match r { Ok(r) => r, Err(_) => continue },
            };
            let datagram = buf[..n].to_vec();
            let socket = socket.clone();
            tokio::spawn(async move {
                let _ = socket.send_to(&datagram, peer).await;
            });
        }
    })
}

/// The upstream resolver the cluster DNS forwards to: `example.org` A 192.0.2.7, anything
/// else NXDOMAIN; counts the queries it receives.
fn spawn_upstream(stop: CancellationToken, count: Arc<AtomicU64>) -> anyhow::Result<SocketAddr> {
    spawn_server("bench-upstream", stop, |socket, stop| async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                r = socket.recv_from(&mut buf) => match r { Ok(r) => r, Err(_) => continue },
            };
            count.fetch_add(1, Ordering::Relaxed);
            let Ok(request) = Message::from_vec(&buf[..n]) else { continue };
            let mut response = Message::response(request.metadata.id, request.metadata.op_code);
            response.metadata.recursion_desired = request.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.add_queries(request.queries.clone());
            match request.queries.first() {
                Some(q) if q.name.to_ascii() == "example.org." => {
                    response.add_answer(Record::from_rdata(
                        q.name.clone(),
                        300,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                    ));
                }
                _ => response.metadata.response_code = ResponseCode::NXDomain,
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    })
}
